"""A throwaway PostgreSQL cluster on loopback, for sandbox servers with a PostgreSQL index.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<n>/bin``);
the cluster lives in a temporary folder, listens on a free loopback port, trusts local
connections, runs as the ``postgres`` user when started by root, and is stopped by PID.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import SandboxError

#: the user that owns the cluster when started by root (PostgreSQL refuses to run as root)
CLUSTER_USER = "postgres"
DATABASE = "orthanc"


def find_bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl`` (the newest Debian PostgreSQL), or explain."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    raise SandboxError(
        "PostgreSQL is not installed: apt-get install -y postgresql orthanc-postgresql"
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """A PostgreSQL cluster of its own with one database, ``orthanc``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`; a cluster still
    running when the interpreter exits is stopped then. Several Orthanc processes may share
    its database (the sandbox disables Orthanc's lock for that).
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = CLUSTER_USER
        self.database = DATABASE
        self.folder: Path | None = None
        self.pid: int | None = None
        self._bin: Path | None = None
        self._created = 0

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """``initdb``, ``pg_ctl start`` and ``createdb orthanc``; returns ``self``."""
        self._bin = find_bin_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="kk-pg-"))
        data = self.folder / "data"
        data.mkdir()
        for path in (self.folder, data):
            self._own(path)
        try:
            self._run("initdb", "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8")
            options = f"-p {self.port} -k {self.folder} -c listen_addresses={self.host}"
            self._run(
                "pg_ctl",
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.folder / "log"),
                "-w",
                "-t",
                "60",
                "start",
            )
            self.pid = int((data / "postmaster.pid").read_text().split()[0])
            atexit.register(self.stop)
            self._run(
                "createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, self.database
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server by PID (a fast shutdown) and delete the cluster's folder."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"<PostgresCluster {self.host}:{self.port} {state}>"

    # -- what Orthanc needs ------------------------------------------------------------------

    def create_database(self) -> str:
        """A new empty database in the cluster (one per sandbox server); returns its name."""
        self._created += 1
        name = f"{self.database}{self._created}"
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return name

    def orthanc_config(self, database: str | None = None) -> dict[str, Any]:
        """The ``PostgreSQL`` section of an Orthanc configuration using this cluster's index
        (in ``database``, by default the cluster's first).

        ``Lock: false`` lets several Orthanc processes share the database.
        """
        return {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": self.host,
            "Port": self.port,
            "Database": database or self.database,
            "Username": self.user,
            "Password": "",
            "Lock": False,
        }

    # -- helpers -----------------------------------------------------------------------------

    def _as_cluster_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid}

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        assert self._bin is not None
        command = [str(self._bin / program), *args]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=self.folder,
            timeout=120,
            check=False,
            **self._as_cluster_user(),
        )
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SandboxError(f"PostgreSQL {program} failed: {last[0]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True
