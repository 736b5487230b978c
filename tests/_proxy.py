"""A small loopback TCP proxy that misbehaves on purpose, for retry tests.

Each accepted connection takes the next fault from a queue; once the queue is empty
connections are piped through untouched. Faults:

- ``"drop"``: close the connection before reading anything.
- ``"503"``: read the request, answer ``503 Service Unavailable`` and close.
- ``"swallow"``: forward the request, let the server answer, then close the connection
  without passing the answer on (the server did the work; the client can't know).
- ``"cut"``: forward the request, then pass on the answer's headers and only half of its
  body before closing (a connection lost in the middle of a download).
- ``"storage"``: read the request and answer 500 with the error body Orthanc sends when it
  cannot write to its storage folder, then close.
- ``"stall"``: read the request and answer nothing; close when the client does (or after
  10 s).
- ``"reset"``: read the request, then reset the connection (RST) without answering.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections import deque


def read_message(sock: socket.socket) -> bytes:
    """Read one HTTP message (headers, and a body of Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


_STORAGE_BODY = json.dumps(
    {
        "HttpError": "Internal Server Error",
        "HttpStatus": 500,
        "Message": "Unable to create a subdirectory or a file in the file storage",
        "Method": "POST",
        "OrthancError": "Unable to create a subdirectory or a file in the file storage",
        "OrthancStatus": 2001,
        "Uri": "/instances",
    }
).encode()
STORAGE_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_STORAGE_BODY)).encode() + b"\r\nConnection: close\r\n\r\n"
    + _STORAGE_BODY
)


class FaultyProxy:
    """Listen on a loopback port and forward to ``upstream_port`` with scripted faults."""

    def __init__(self, upstream_port: int, faults: list[str]) -> None:
        self.upstream_port = upstream_port
        self.faults: deque[str] = deque(faults)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port: int = self.server.getsockname()[1]
        self.connections = 0
        self.applied: list[str] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                fault = self.faults.popleft() if self.faults else "pass"
                self.applied.append(fault)
            threading.Thread(target=self._handle, args=(conn, fault), daemon=True).start()

    def _handle(self, conn: socket.socket, fault: str) -> None:
        with conn:
            if fault == "drop":
                return
            if fault == "503":
                read_message(conn)
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return
            if fault == "storage":
                read_message(conn)
                conn.sendall(STORAGE_ERROR)
                return
            if fault == "stall":
                read_message(conn)
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    conn.recv(1)
                return
            if fault == "reset":
                read_message(conn)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                if fault == "swallow":
                    upstream.sendall(read_message(conn))
                    read_message(upstream)
                    return
                if fault == "cut":
                    upstream.sendall(read_message(conn))
                    head, _, body = read_message(upstream).partition(b"\r\n\r\n")
                    conn.sendall(head + b"\r\n\r\n" + body[: len(body) // 2])
                    return
                self._pipe(conn, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=pump, args=(b, a), daemon=True)
        other.start()
        pump(a, b)
        other.join(timeout=30)

    def close(self) -> None:
        self._stopped = True
        self.server.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
