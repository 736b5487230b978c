"""Throwaway local Orthanc servers for demos, tests and benchmarks.

A :class:`Sandbox` runs Debian's ``/usr/sbin/Orthanc`` on a free loopback port with its own
configuration and temporary storage, authentication on and a random password. It is stopped
by PID and its folder deleted on ``stop()``, at the end of a ``with`` block, or at interpreter
exit, whichever comes first.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import Orthanc
from .errors import OrthancError, SandboxError
from .postgres import PostgresCluster

DEFAULT_BINARY = "/usr/sbin/Orthanc"
#: Debian's orthanc-postgresql index plugin
POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
#: user metadata and attachment types every sandbox declares (name -> index)
USER_METADATA = {"Note": 1024, "Reviewer": 1025}
USER_CONTENT_TYPES = {"Report": 1024}
USERNAME = "kk"
#: every sandbox password starts with this, so recordings can be checked for leaks
PASSWORD_PREFIX = "kk-secret-"


def find_binary(binary: str | None = None) -> str:
    """Locate the Orthanc executable or explain how to install it."""
    candidates = [binary] if binary else [os.environ.get("ORTHANC_BINARY"), DEFAULT_BINARY]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("Orthanc")
    if found and not binary:
        return found
    raise SandboxError(
        f"the Orthanc server binary was not found (looked for {binary or DEFAULT_BINARY}); "
        "install it with: apt-get update && apt-get install -y orthanc "
        "(or set ORTHANC_BINARY to its path)"
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Peer:
    """Another DICOM node that a sandbox knows as a modality."""

    name: str
    aet: str
    port: int
    host: str = "127.0.0.1"


_live: set[Sandbox] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        running = list(_live)
    for sandbox in running:
        sandbox.stop()


@dataclass(eq=False)
class Sandbox:
    """A throwaway Orthanc on loopback.

    Args:
        name: the server's ``Name`` and the base of its AE title.
        aet: DICOM AE title (defaults to ``name`` upper-cased, at most 16 characters).
        peers: other DICOM nodes to list as modalities.
        stable_age: seconds without new instances before a resource is stable.
        config: extra configuration keys, merged last.
        folder: where storage and logs go; a new temporary folder by default, deleted on stop.
        binary: path of the Orthanc executable.
        index: a PostgreSQL cluster to keep the index in (Debian's ``orthanc-postgresql``
            plugin), instead of SQLite in the folder.
        index_database: the cluster's database to use; a new one by default. Several
            sandboxes given the same database share one index, as the nodes of a
            scaled-out site do.
    """

    name: str = "kkorthanc"
    aet: str = ""
    peers: Sequence[Peer] = ()
    stable_age: int = 60
    config: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    binary: str | None = None
    http_port: int = 0
    dicom_port: int = 0
    password: str = field(default="", repr=False)
    username: str = USERNAME
    index: PostgresCluster | None = None
    index_database: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owns_folder: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.aet = (self.aet or self.name.upper().replace("-", ""))[:16]
        self.http_port = self.http_port or free_port()
        while not self.dicom_port or self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.password = self.password or PASSWORD_PREFIX + secrets.token_hex(12)

    def __repr__(self) -> str:
        state = f"pid {self.process.pid}" if self.running and self.process else "stopped"
        return f"<Sandbox {self.name} {self.url} aet={self.aet} {state}>"

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The HTTP URL, without credentials."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        """The ``(user, password)`` the server accepts."""
        return (self.username, self.password)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        assert self.folder is not None
        return self.folder / "orthanc.log"

    def as_peer(self, name: str | None = None) -> Peer:
        """This server described as a DICOM modality for another server."""
        return Peer(name or self.name, self.aet, self.dicom_port)

    def configuration(self) -> dict[str, Any]:
        """The JSON configuration the server is started with."""
        assert self.folder is not None
        storage = str(self.folder / "storage")
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomModalities": {p.name: [p.aet, p.host, p.port] for p in self.peers},
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "StableAge": self.stable_age,
            "HttpDescribeErrors": True,
            "SaveJobs": False,
            "DicomScuTimeout": 10,
            "UserMetadata": USER_METADATA,
            "UserContentType": USER_CONTENT_TYPES,
        }
        if self.index is not None:
            config["Plugins"] = [POSTGRESQL_INDEX_PLUGIN]
            config["PostgreSQL"] = self.index.orthanc_config(self.index_database)
        config.update(self.config)
        return config

    def start(self, timeout: float = 30.0) -> Sandbox:
        """Start the server and wait until ``GET /system`` answers."""
        if self.running:
            return self
        binary = find_binary(self.binary)
        if self.index is not None:
            if not Path(POSTGRESQL_INDEX_PLUGIN).is_file():
                raise SandboxError(
                    "the PostgreSQL index plugin is not installed: "
                    "apt-get install -y orthanc-postgresql"
                )
            self.index_database = self.index_database or self.index.create_database()
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix=f"kkorthanc-{self.name}-"))
            self._owns_folder = True
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(self.configuration(), indent=2))
        config_path.chmod(0o600)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                [binary, str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                start_new_session=True,
            )
        finally:
            log.close()
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with Orthanc(self.url, auth=self.auth, timeout=(1.0, 2.0), retries=0) as probe:
            while True:
                if not self.running:
                    raise SandboxError(
                        f"Orthanc exited at start (code {self.process and self.process.poll()});"
                        f" log:\n{self._log_tail()}"
                    )
                try:
                    probe.system  # noqa: B018 - the request is the check
                    return
                except OrthancError:
                    if time.monotonic() > deadline:
                        raise SandboxError(
                            f"Orthanc did not answer on {self.url} within {timeout:.0f} s; "
                            f"log:\n{self._log_tail()}"
                        ) from None
                    time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, keep_folder: bool = False) -> None:
        """Stop the server by PID and delete its folder (unless ``keep_folder``)."""
        process = self.process
        discard = not keep_folder and self._owns_folder
        if process is not None and process.poll() is None:
            # storage that is about to be deleted needs no orderly shutdown
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL if discard else signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        with _live_lock:
            _live.discard(self)
        if discard and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self, timeout: float = 30.0) -> Sandbox:
        """Stop the server, keeping its storage, and start it again on the same ports."""
        self.stop(keep_folder=True)
        return self.start(timeout)

    def detach(self) -> None:
        """Let the server outlive this interpreter: no stop at exit (stop it by its PID)."""
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> Orthanc:
        """A client for this server, logged in."""
        return Orthanc(self.url, auth=self.auth, **kwargs)

    def load(self, files: Iterable[bytes], *, workers: int = 4) -> int:
        """POST raw DICOM files to the server, ``workers`` at a time; returns how many."""
        with self.client() as client:

            def post(body: bytes) -> None:
                client.post_bytes("/instances", body, content_type="application/dicom")

            with ThreadPoolExecutor(workers) as pool:
                return sum(1 for _ in pool.map(post, files))

    def load_synthetic(self, spec: Any = None, *, workers: int = 4) -> int:
        """Load deterministic synthetic data (:mod:`kkorthanc.synthetic`); returns the count."""
        from . import synthetic

        spec = spec or synthetic.SAMPLE
        return self.load((data for _, data in synthetic.generate_bytes(spec)), workers=workers)


def start_pair(
    names: tuple[str, str] = ("alpha", "beta"), **kwargs: Any
) -> tuple[Sandbox, Sandbox]:
    """Two sandboxes, each listed as the other's DICOM modality (under the other's name)."""
    first = Sandbox(name=names[0], **kwargs)
    second = Sandbox(name=names[1], **kwargs)
    first.peers = (second.as_peer(),)
    second.peers = (first.as_peer(),)
    first.start()
    try:
        second.start()
    except BaseException:
        first.stop()
        raise
    return first, second
