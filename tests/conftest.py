"""Test modes: replay recorded HTTP (default), run live against real sandboxes, or record.

    pytest              replay cassettes/ ; no server needed; an unrecorded request fails
    pytest --live       start sandbox Orthanc servers and talk to them; cassettes untouched
    pytest --record     like --live, and (re)write each test's cassette

Tests ask for ``client`` (a shared read-only server loaded with the synthetic sample) or
``servers`` (a factory of fresh servers for tests that change data). The same test code runs
in every mode: in replay the clients point at canonical loopback URLs and vcrpy answers.
Recordings keep no Authorization header, and ports are rewritten to canonical ones.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import vcr
from vcr.request import Request as VcrRequest

from kkorthanc import Orthanc
from kkorthanc.postgres import PostgresCluster
from kkorthanc.sandbox import Sandbox, start_pair

ROOT = Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "cassettes"
CANONICAL_HOST = "127.0.0.1"
SHARED_PORT = 8042
REPLAY_AUTH = ("kk", "replay-placeholder")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kkorthanc")
    group.addoption("--live", action="store_true", help="run against real sandbox servers")
    group.addoption("--record", action="store_true", help="run live and rewrite cassettes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live_only: needs a real Orthanc; skipped in replay")
    config.addinivalue_line("markers", "no_cassette: talks to no recorded server")


def _mode(config: pytest.Config) -> str:
    if config.getoption("--record") or os.environ.get("KK_TEST_MODE") == "record":
        return "record"
    if config.getoption("--live") or os.environ.get("KK_TEST_MODE") == "live":
        return "live"
    return "replay"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _mode(config) != "replay":
        return
    skip = pytest.mark.skip(reason="needs a real Orthanc: run with --live")
    for item in items:
        if "live_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kk_mode(pytestconfig: pytest.Config) -> str:
    """``replay``, ``live`` or ``record``."""
    return _mode(pytestconfig)


class PortMap:
    """Rewrites recorded URLs from a sandbox's random port to a canonical one."""

    def __init__(self) -> None:
        self.ports: dict[int, int] = {}
        self.muted = False

    @contextmanager
    def mute(self) -> Iterator[None]:
        """Record nothing meanwhile (setting up data that replays never need)."""
        self.muted = True
        try:
            yield
        finally:
            self.muted = False

    def __call__(self, request: VcrRequest) -> VcrRequest | None:
        if self.muted:
            return None
        parts = urlsplit(request.uri)
        if parts.port in self.ports:
            netloc = f"{CANONICAL_HOST}:{self.ports[parts.port]}"
            request.uri = urlunsplit(
                (parts.scheme, netloc, parts.path, parts.query, parts.fragment)
            )
        return request


PORT_MAP = PortMap()


#: held while vcrpy puts the real connection classes back for a moment, and while a pool
#: makes a connection: see :func:`_serialize_vcr_resets`
_VCR_LOCK = threading.RLock()


def _serialize_vcr_resets() -> None:
    """Make vcrpy's connection stubs safe to build from several threads at once.

    Each stub builds its real connection inside ``vcr.patch.force_reset()``, which puts the
    unpatched ``ConnectionCls`` back on urllib3's pool classes, for every thread, until it
    returns. A pool in another thread that makes a connection meanwhile gets a real one, which
    in replay reaches for the canonical port, is refused, and is sent again: one request more
    than recorded (an export that lists studies while it downloads, on Python 3.10, where pip
    installs vcrpy 8). Both now take one lock.
    """
    import urllib3.connectionpool
    import vcr.patch

    if getattr(vcr.patch.force_reset, "kk_serialized", False):
        return
    unlocked_reset = vcr.patch.force_reset

    @contextlib.contextmanager
    def force_reset() -> Iterator[None]:
        with _VCR_LOCK, unlocked_reset():
            yield

    force_reset.kk_serialized = True  # type: ignore[attr-defined]
    vcr.patch.force_reset = force_reset  # the stubs import it from there at each call
    for pool in (urllib3.connectionpool.HTTPConnectionPool, urllib3.HTTPSConnectionPool):
        pool._new_conn = _locked(pool._new_conn)  # type: ignore[method-assign]


def _locked(new_conn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def locked_new_conn(self: Any) -> Any:
        with _VCR_LOCK:
            return new_conn(self)

    return locked_new_conn


def recorder(mode: str, port_map: PortMap) -> vcr.VCR:
    """The recorder of every cassette: credentials dropped, requests matched in full."""
    _serialize_vcr_resets()
    return vcr.VCR(
        record_mode="all" if mode == "record" else "none",
        match_on=["method", "scheme", "host", "port", "path", "query", "body"],
        filter_headers=["authorization", "cookie", "set-cookie"],
        before_record_request=port_map,
        decode_compressed_response=True,
    )


#: ``postgresql``: live sandboxes keep their index in a PostgreSQL cluster (one database each)
INDEX = os.environ.get("KK_TEST_INDEX", "sqlite")


@pytest.fixture(scope="session")
def index_cluster(kk_mode: str) -> Iterator[PostgresCluster | None]:
    """The PostgreSQL cluster of a ``KK_TEST_INDEX=postgresql`` live run, else ``None``."""
    if kk_mode == "replay" or INDEX != "postgresql":
        yield None
        return
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sandbox_options(index_cluster: PostgresCluster | None) -> dict[str, Any]:
    """What every live sandbox of this run is started with (its index)."""
    return {"index": index_cluster} if index_cluster is not None else {}


@pytest.fixture(scope="session")
def sample_sandbox(kk_mode: str, sandbox_options: dict[str, Any]) -> Iterator[Sandbox | None]:
    """The shared server with the synthetic sample loaded (``None`` in replay)."""
    if kk_mode == "replay":
        yield None
        return
    with Sandbox(name="kk-shared", stable_age=2, **sandbox_options) as sandbox:
        sandbox.load_synthetic()
        PORT_MAP.ports[sandbox.http_port] = SHARED_PORT
        yield sandbox


def cassette_path(node: pytest.Item) -> Path:
    """``cassettes/<test module>/<test name>.yaml``."""
    module = Path(str(node.fspath)).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.name).strip("_")
    return CASSETTES / module / f"{name}.yaml"


@pytest.fixture
def cassette(request: pytest.FixtureRequest, kk_mode: str) -> Iterator[Any]:
    """The test's cassette: replayed, recorded, or ``None`` when live."""
    node = request.node
    if kk_mode == "live" or node.get_closest_marker("no_cassette") or node.get_closest_marker(
        "live_only"
    ):
        yield None
        return
    path = cassette_path(request.node)
    if kk_mode == "replay" and not path.exists():
        pytest.fail(f"no recording at {path.relative_to(ROOT)}: run pytest --record")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kk_mode == "record":
        path.unlink(missing_ok=True)  # vcrpy would append to an old recording
    with recorder(kk_mode, PORT_MAP).use_cassette(str(path)) as recorded:
        yield recorded


@pytest.fixture
def client(
    sample_sandbox: Sandbox | None, cassette: Any, kk_mode: str
) -> Iterator[Orthanc]:
    """A client for the shared sample server (read-only: tests must not change its data)."""
    if sample_sandbox is None:
        instance = Orthanc(f"http://{CANONICAL_HOST}:{SHARED_PORT}", auth=REPLAY_AUTH)
    else:
        instance = sample_sandbox.client()
    with instance:
        yield instance


class Servers:
    """Factory of fresh servers for tests that change data.

    ``servers.new(sample=True)`` gives a client for a new sandbox (live/record) or for the
    next canonical port (replay); ``servers.pair()`` gives two servers that know each other
    as DICOM modalities ``alpha`` and ``beta``.
    """

    def __init__(self, mode: str, stack: ExitStack, options: dict[str, Any]) -> None:
        self.mode = mode
        self.stack = stack
        self.options = options
        self.next_port = SHARED_PORT + 1
        self.sandboxes: list[Sandbox] = []

    def _canonical(self, sandbox: Sandbox | None) -> Orthanc:
        port = self.next_port
        self.next_port += 1
        if sandbox is None:
            client = Orthanc(f"http://{CANONICAL_HOST}:{port}", auth=REPLAY_AUTH)
        else:
            PORT_MAP.ports[sandbox.http_port] = port
            self.sandboxes.append(sandbox)
            client = sandbox.client()
        self.stack.callback(client.close)
        return client

    def new(self, *, sample: bool = False, spec: Any = None, **options: Any) -> Orthanc:
        """A fresh server, optionally loaded with the synthetic sample or ``spec``."""
        if self.mode == "replay":
            return self._canonical(None)
        sandbox = Sandbox(name=f"kk-test-{self.next_port}", **{**self.options, **options})
        self.stack.enter_context(sandbox)
        client = self._canonical(sandbox)
        if sample or spec is not None:
            with PORT_MAP.mute():
                sandbox.load_synthetic(spec)
        return client

    def pair(self, **options: Any) -> tuple[Orthanc, Orthanc]:
        """Two fresh servers, each the other's DICOM modality (``alpha`` knows ``beta``)."""
        if self.mode == "replay":
            return self._canonical(None), self._canonical(None)
        first, second = start_pair(**{**self.options, **options})
        self.stack.callback(first.stop)
        self.stack.callback(second.stop)
        return self._canonical(first), self._canonical(second)

    def auth_of(self, client: Orthanc) -> tuple[str, str]:
        """The credentials of a server's client: the sandbox's live, placeholders in replay."""
        return REPLAY_AUTH if self.mode == "replay" else self.sandbox_of(client).auth

    def sandbox_of(self, client: Orthanc) -> Sandbox:
        """The sandbox behind a live client (live and record modes only)."""
        for sandbox in self.sandboxes:
            if sandbox.url == client.url:
                return sandbox
        raise LookupError("no sandbox in replay mode")


@pytest.fixture
def servers(
    cassette: Any, kk_mode: str, sandbox_options: dict[str, Any]
) -> Iterator[Servers]:
    """Fresh servers for this test, stopped afterwards."""
    with ExitStack() as stack:
        yield Servers(kk_mode, stack, sandbox_options)
        for port in list(PORT_MAP.ports):
            if PORT_MAP.ports[port] != SHARED_PORT:
                del PORT_MAP.ports[port]


@pytest.fixture
def count_requests(client: Orthanc) -> Callable[[], int]:
    """Requests the shared client sent since the test started."""
    start = client.request_count
    return lambda: client.request_count - start
