"""A scaled-out sandbox: several Orthanc nodes on one PostgreSQL index, behind a balancer.

Sites with millions of instances run Orthanc on a PostgreSQL index, often as several
processes that share the database (and the storage) behind one URL. :class:`Cluster` builds
that on loopback for tests and benchmarks: a throwaway :class:`~kkorthanc.postgres.
PostgresCluster`, ``nodes`` sandboxes sharing its database and one storage folder, and a
:class:`Balancer` that sends each request to the next node in turn.

What differs from one server (see ``docs/cluster.md``): jobs and ``IsStable`` live in the
process that created them; everything in the index (resources, the change feed, labels,
metadata) is shared.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .client import Orthanc
from .postgres import PostgresCluster
from .sandbox import Sandbox

_HEADER_END = b"\r\n\r\n"


class Balancer:
    """A round-robin HTTP balancer on loopback, one request per upstream connection.

    Each request is sent to the next upstream in turn. Both heads, the request's and the
    answer's, say ``Connection: close``, so that the node closes after its answer and the
    client's next request opens a new connection, balanced again. Bodies are passed through
    unread.
    """

    def __init__(self, upstreams: Sequence[tuple[str, int]]) -> None:
        if not upstreams:
            raise ValueError("a balancer needs at least one upstream")
        self.upstreams = list(upstreams)
        self._next = itertools.cycle(range(len(self.upstreams)))
        self._lock = threading.Lock()
        self.counts = [0] * len(self.upstreams)
        """Requests sent to each upstream so far."""
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="kk-balancer", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The balancer's HTTP URL."""
        return f"http://127.0.0.1:{self.port}"

    def _pick(self) -> tuple[str, int]:
        with self._lock:
            index = next(self._next)
            self.counts[index] += 1
            return self.upstreams[index]

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(conn)
            request = _read_head(conn)
            if request is None:
                return
            try:
                upstream = socket.create_connection(self._pick(), timeout=30)
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            stack.enter_context(upstream)
            upstream.sendall(request)
            forward = threading.Thread(target=_pump, args=(conn, upstream), daemon=True)
            forward.start()
            # Orthanc says "keep-alive" in its answer even when it closes after it, as asked;
            # a client that believed it would send its next request into a closed upstream.
            answer = _read_head(upstream)
            if answer is not None:
                conn.sendall(answer)
                _pump(upstream, conn)

    def close(self) -> None:
        """Stop accepting connections."""
        self._closed = True
        self._server.close()

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_head(source: socket.socket) -> bytes | None:
    """Read up to the end of an HTTP head and return what was read, with the head's
    ``Connection`` and ``Keep-Alive`` lines replaced by ``Connection: close``; ``None`` when
    the connection ends first."""
    head = b""
    while _HEADER_END not in head:
        try:
            chunk = source.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        head += chunk
    header, _, rest = head.partition(_HEADER_END)
    lines = [
        line
        for line in header.split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + _HEADER_END + rest


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes until ``source`` ends, then end ``target``'s writing side."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class Cluster:
    """``nodes`` Orthanc sandboxes on one PostgreSQL index and storage, behind a balancer.

    Args:
        nodes: how many Orthanc processes.
        binary: the Orthanc executable (as for :class:`~kkorthanc.sandbox.Sandbox`).
        options: more :class:`~kkorthanc.sandbox.Sandbox` arguments for every node.
    """

    def __init__(self, nodes: int = 2, *, binary: str | None = None, **options: Any) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        self.size = nodes
        self.binary = binary
        self.options = options
        self.index: PostgresCluster | None = None
        self.nodes: list[Sandbox] = []
        self.balancer: Balancer | None = None
        self._storage: Path | None = None

    def start(self) -> Cluster:
        """Start the database, the nodes and the balancer; returns ``self``."""
        try:
            self.index = PostgresCluster().start()
            database = self.index.create_database()
            self._storage = Path(tempfile.mkdtemp(prefix="kk-cluster-storage-"))
            shared = str(self._storage)
            options: dict[str, Any] = dict(self.options)
            for number in range(self.size):
                node = Sandbox(
                    name=f"kk-node{number + 1}",
                    binary=self.binary,
                    index=self.index,
                    index_database=database,
                    config={"StorageDirectory": shared, "IndexDirectory": shared},
                    **options,
                )
                node.start()
                options["password"] = node.password  # one set of credentials for the site
                self.nodes.append(node)
            self.balancer = Balancer([("127.0.0.1", node.http_port) for node in self.nodes])
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        """The balancer's URL: the site as its users see it."""
        if self.balancer is None:
            raise RuntimeError("the cluster is not started")
        return self.balancer.url

    @property
    def auth(self) -> tuple[str, str]:
        """The credentials every node accepts."""
        return self.nodes[0].auth

    def client(self, **kwargs: Any) -> Orthanc:
        """A client of the site, through the balancer."""
        return Orthanc(self.url, auth=self.auth, **kwargs)

    def node_client(self, number: int, **kwargs: Any) -> Orthanc:
        """A client of one node (0-based), bypassing the balancer."""
        return self.nodes[number].client(**kwargs)

    def stop(self) -> None:
        """Stop the balancer, the nodes and the database; delete their folders."""
        if self.balancer is not None:
            self.balancer.close()
            self.balancer = None
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self.index is not None:
            self.index.stop()
            self.index = None
        if self._storage is not None:
            shutil.rmtree(self._storage, ignore_errors=True)
            self._storage = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
