"""What the transport refuses and bounds: deadlines, credentials, redirects, answers.

This module imports neither requests nor urllib3 (the HTTP libraries are
:mod:`kkorthanc._transport`'s alone); these are the checks the transport applies before a
request is sent and while an answer comes in:

- :class:`Watch` and the watchdog thread: a call's time limit, enforced by shutting down the
  socket of the call's current attempt when it passes, so that a read or write blocked on a
  server that trickles returns at once;
- :func:`authorization`: the one ``Authorization`` header of a transport, built and checked
  once, basic credentials encoded as UTF-8 (as Orthanc reads them);
- :func:`redirect_target`: which redirects are followed (same origin, a few hops) and why
  the others are refused;
- :func:`collect`, :func:`pieces` and :func:`decode_json`: an answer read up to a size
  limit, a download read piece by piece within its stall limit, and JSON decoded with an
  error that names the request;
- :func:`connection_error` and :func:`http_error`: what a failed request is reported as.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from .errors import (
    InvalidRequest,
    OrthancConnectionError,
    OrthancHTTPError,
    OrthancTimeout,
    error_class_for,
)

#: redirect statuses that may be followed; other 3xx answers are refused
FOLLOWED_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: same-origin redirects followed in a row before giving up
MAX_REDIRECTS = 3
_DEFAULT_PORTS = {"http": 80, "https": 443}

# -- deadlines --------------------------------------------------------------------------------


class Watch:
    """The time limit of one call (or one phase of a download).

    ``what`` names the limit in errors ("the deadline of 30 s for the whole call"). ``sock``
    is the socket of the attempt under way, or its connection (whose socket is read when the
    limit passes), or the answer that owns it (shut down through its ``shutdown()``), told
    by whoever connects, reuses one or receives the headers;
    ``stage`` says what is being waited for. When the limit passes, the watchdog sets
    ``fired`` (to the stage then awaited; empty until then) and shuts the socket down, again
    every 50 ms until the call lets go of the watch (a socket connected after the first
    shot is shut down as well).
    """

    __slots__ = ("deadline", "due", "fired", "sock", "stage", "what")

    def __init__(self, seconds: float, what: str) -> None:
        self.deadline = time.monotonic() + seconds
        self.due = self.deadline
        self.what = what
        self.sock: object = None
        self.stage = "the answer's headers"
        self.fired = ""

    def left(self) -> float:
        """Seconds until the limit (negative once passed)."""
        return self.deadline - time.monotonic()

    def shoot(self) -> None:
        self.fired = self.fired or self.stage  # what was awaited when the limit passed
        sock = self.sock
        if not isinstance(sock, socket.socket) and callable(getattr(sock, "shutdown", None)):
            with contextlib.suppress(OSError):  # an answer that owns its socket
                sock.shutdown()  # type: ignore[attr-defined]
            return
        if not isinstance(sock, socket.socket):  # a connection: its socket, once connected
            sock = getattr(sock, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # the plain socket's call, for TLS sockets too
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def expired(self, method: str, path: str, base_url: str) -> OrthancTimeout:
        """The error of a call whose limit passed."""
        return OrthancTimeout(
            f"{method} {path}: {self.what} passed while waiting for {self.fired or self.stage}"
            f" from {base_url}"
        )


class _Watchdog:
    """One daemon thread that shoots the watches whose time has come."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # also in a forked child: the parent's thread and lock are not ours
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self._cond:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="kkorthanc-watchdog", daemon=True
                )
                self._thread.start()
            if watch.due < self._wake_at:
                self._cond.notify()

    def remove(self, watch: Watch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def rearm(self, watch: Watch, seconds: float, what: str) -> None:
        """Move a watch's limit to ``seconds`` from now (``inf``: hold it)."""
        with self._cond:
            watch.deadline = watch.due = time.monotonic() + seconds
            watch.what = what
            if watch.due < self._wake_at:
                self._cond.notify()

    def _run(self) -> None:
        """Shoot what is due; wake for the next due time, or within a second (so that a new
        watch rarely needs a wake-up call); end after 10 s with nothing to watch."""
        idle_since = time.monotonic()
        with self._cond:
            while True:
                now = time.monotonic()
                for watch in self._watches:
                    if watch.due <= now:
                        watch.shoot()
                        watch.due = now + 0.05
                if self._watches:
                    idle_since = now
                elif now - idle_since > 10.0:
                    self._thread = None
                    return
                self._wake_at = min([now + 1.0, *(w.due for w in self._watches)])
                self._cond.wait(self._wake_at - now)


WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._reset)
_CURRENT = threading.local()


@contextlib.contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Arm ``watch`` for a call this thread makes; disarm it when the call is over."""
    previous = current_watch()
    _CURRENT.watch = watch
    WATCHDOG.add(watch)
    try:
        yield watch
    finally:
        WATCHDOG.remove(watch)
        _CURRENT.watch = previous


def current_watch() -> Watch | None:
    """The watch of the call this thread is making, if any (the connection pool hands it
    each connection it gives out)."""
    watch: Watch | None = getattr(_CURRENT, "watch", None)
    return watch


# -- credentials ------------------------------------------------------------------------------


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Remove ``user:password@`` from a URL; return the clean URL and the credentials.

    Percent-encoded credentials (``us%40er:p%C3%A4ss``) are decoded as UTF-8.

    Raises:
        InvalidRequest: the credentials are not valid percent-encoded UTF-8.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    decoded = []
    for what, raw in (("user name", parts.username), ("password", parts.password or "")):
        try:
            decoded.append(unquote(raw, errors="strict"))
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"the {what} in the URL is not valid percent-encoded UTF-8"
            ) from None
    return clean.rstrip("/"), (decoded[0], decoded[1])


_CONTROL_NAMES = {0: "NUL", 9: "TAB", 10: "LF", 13: "CR", 127: "DEL"}


def _check_text(value: object, what: str, *, token: bool = False) -> str:
    """``value`` if it can be sent as ``what``; the error never shows the value."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, not {type(value).__name__}")
    for char in value:
        category = unicodedata.category(char)
        code = ord(char)
        if category == "Cc":
            name = _CONTROL_NAMES.get(code, f"U+{code:04X}")
            raise InvalidRequest(
                f"{what} contains a control character ({name}); a stray newline from a "
                "file or an environment variable? Control characters cannot be sent"
            )
        if category == "Cs":
            raise InvalidRequest(f"{what} is not valid text (an unpaired surrogate)")
        if token and not 0x21 <= code <= 0x7E:
            kind = "a space" if char.isspace() else "a character that is not ASCII"
            raise InvalidRequest(
                f"{what} contains {kind}; a bearer token is printable ASCII without spaces"
            )
    return value


class Hidden(str):
    """A header value that is sent as it is but shown as ``'<hidden>'``: the
    ``Authorization`` header passes through dictionaries of the HTTP layer, whose reprs
    tracebacks print (pytest does, with each frame's arguments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<hidden>'"


def authorization(auth: object, token: object) -> str | None:
    """The ``Authorization`` header for these credentials, checked, as a :class:`Hidden`
    value; ``None`` for none.

    A token wins over basic credentials. Basic credentials are encoded as UTF-8, which is
    what Orthanc compares them in, on every path (pooled requests and upload channels).

    Raises:
        InvalidRequest: a credential cannot be sent; the message names which and why,
            never its value.
    """
    header = None
    if auth is not None:
        if not isinstance(auth, (tuple, list)) or len(auth) != 2:
            raise InvalidRequest("auth must be a (user, password) pair of strings")
        user = _check_text(auth[0], "the user name")
        password = _check_text(auth[1], "the password")
        if ":" in user:
            raise InvalidRequest(
                "the user name contains ':', which basic authentication cannot carry "
                "(it separates the user name from the password)"
            )
        header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    if token is not None:
        if _check_text(token, "the bearer token", token=True) == "":
            raise InvalidRequest("the bearer token is empty")
        header = f"Bearer {token}"
    return None if header is None else Hidden(header)


# -- redirects --------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def redirect_target(
    method: str,
    path: str,
    url: str,
    status: int,
    location: str | None,
    base_url: str,
    hops: int,
) -> str:
    """The absolute URL to follow a 3xx answer of ``url`` to, or raise why not.

    Followed: 307 and 308 (the same method and body), and 301, 302 and 303 of a GET or HEAD,
    to the same origin (scheme, host and port) as ``base_url``, at most
    :data:`MAX_REDIRECTS` hops.

    Raises:
        OrthancConnectionError: the redirect is refused; the message says where to and why.
    """
    if not location:
        raise OrthancConnectionError(
            f"{method} {path}: the server answered {status} without a Location to follow"
        )
    target = urljoin(url, location.strip())
    parts = urlsplit(target)
    shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    scheme, host, port = _origin(target)
    home = _origin(base_url)
    why = ""
    if home[0] == "https" and scheme != "https":
        why = f"a downgrade from https to {scheme or 'no scheme'}"
    elif (scheme, host, port) != home:
        why = (
            f"another origin than {base_url} (the request, its body and its credentials go "
            "only to the server they were meant for)"
        )
    elif status not in FOLLOWED_REDIRECTS:
        why = f"{status} is not a redirect that can be followed"
    elif status in (301, 302, 303) and method not in ("GET", "HEAD"):
        why = f"a {method} redirected with {status} would be sent again as a GET, without its body"
    elif hops >= MAX_REDIRECTS:
        why = f"more than {MAX_REDIRECTS} redirects in a row"
    if why:
        raise OrthancConnectionError(
            f"{method} {path}: the server redirected ({status}) to {shown}; refused: {why}"
        )
    return target


# -- answers ----------------------------------------------------------------------------------

#: bodies are read in pieces of this size (a download must bring one within its stall limit)
PIECE = 64 << 10


class _BrokenBody(Exception):
    """The connection broke while an answer's body was being read."""


class _Streamed(Protocol):
    def iter_content(self, chunk_size: int) -> Iterator[bytes]: ...


def error_body(response: _Streamed, limit: int, errors: tuple[type[Exception], ...]) -> bytes:
    """At most ``limit`` bytes of an answer not read for its content (an error, a redirect):
    all of it, mostly, so that the connection can be used again. Never raises (``errors``
    are the HTTP layer's): a body that breaks is as good as none."""
    kept: list[bytes] = []
    size = 0
    with contextlib.suppress(*errors):
        for piece in response.iter_content(PIECE):
            kept.append(piece)
            size += len(piece)
            if size >= limit:
                break
    return b"".join(kept)[:limit]


def pieces(
    response: _Streamed, watch: Watch, stall: float, errors: tuple[type[Exception], ...]
) -> Iterator[bytes]:
    """A download's body in pieces of :data:`PIECE` bytes, each of which must come within
    ``stall`` seconds (the time the sink takes is not counted); a connection that breaks, or
    that the watch shuts, mid-body raises :class:`_BrokenBody`."""
    what = f"the download's stall limit ({PIECE >> 10} KiB within {stall:g} s)"
    chunks = response.iter_content(PIECE)
    while True:
        WATCHDOG.rearm(watch, stall, what)
        try:
            piece = next(chunks, None)
        except errors as exc:
            raise _BrokenBody() from exc
        finally:
            WATCHDOG.rearm(watch, math.inf, what)
        if piece is None:
            if watch.fired:  # a body that ends when the connection does was cut short
                raise _BrokenBody()
            return
        yield piece


def too_large(method: str, path: str, limit: int, size: str) -> OrthancConnectionError:
    return OrthancConnectionError(
        f"{method} {path}: the answer is larger than the limit of {limit} bytes ({size}); "
        "a larger limit is the transport's max_answer_bytes"
    )


def collect(chunks: Iterable[bytes], limit: int, method: str, path: str) -> bytes:
    """Join ``chunks`` (a decoded body), refusing more than ``limit`` bytes as they come."""
    kept: list[bytes] = []
    size = 0
    for piece in chunks:
        size += len(piece)
        if size > limit:
            raise too_large(method, path, limit, f"{size} bytes decoded so far")
        kept.append(piece)
    return b"".join(kept)


_KINDS = {dict: "object", list: "list", str: "string", int: "number", float: "number"}


def kind_of(value: object) -> str:
    """The JSON name of a decoded value's type (for shape errors)."""
    if value is None or isinstance(value, bool):
        return "a JSON null" if value is None else "a JSON boolean"
    return "a JSON " + _KINDS.get(type(value), type(value).__name__)


def decode_json(
    content: bytes,
    method: str,
    path: str,
    parse: Callable[[bytes], Any] = json.loads,
    content_type: str | None = None,
) -> Any:
    """``content`` decoded by ``parse``; not JSON (or nested too deep) raises an error that
    names the request."""
    try:
        return parse(content)
    except (ValueError, RecursionError) as exc:
        what = f"{content_type or 'no content type'}, {len(content)} bytes"
        raise OrthancConnectionError(
            f"{method} {path}: the server's answer is not JSON ({what}: {exc})"
        ) from exc


def pair(timeout: float | tuple[float, float]) -> tuple[float, float]:
    """``(connect, read)`` seconds of a timeout given as one number or a pair."""
    return (timeout[0], timeout[1]) if isinstance(timeout, tuple) else (timeout, timeout)


def read_limited(response: http.client.HTTPResponse, limit: int, method: str, path: str) -> bytes:
    """An upload channel's answer body, refused as soon as it passes ``limit`` bytes; one
    cut short raises :class:`http.client.IncompleteRead`."""
    if isinstance(response.length, int):
        if response.length > limit:
            raise too_large(method, path, limit, f"Content-Length {response.length}")
        return response.read()  # read(n) would return a body cut short as if complete
    return collect(iter(lambda: response.read(PIECE), b""), limit, method, path)


# -- failures ---------------------------------------------------------------------------------


class _ConnectFailed(OSError):
    """An upload channel could not connect: the request was never sent."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: ``reason``, the exception in ``args[0]``, or the cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nested = current.args[0] if current.args else None
        reason = getattr(current, "reason", None)
        candidates = [c for c in (reason, nested) if isinstance(c, BaseException)]
        current = candidates[0] if candidates else current.__cause__ or current.__context__


def _is(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is of a class named one of ``names`` (requests' and urllib3's
    exceptions are told apart by name: this module does not import them)."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (connection refused, etc.)."""
    if _is(exc, "ConnectTimeout"):
        return True
    unsent = ("NewConnectionError", "ConnectionRefusedError", "_ConnectFailed")
    return any(type(current).__name__ in unsent for current in _chain(exc))


def connection_error(
    method: str, path: str, base_url: str, exc: BaseException, watch: Watch | None = None
) -> OrthancConnectionError:
    """The error of a request that got no complete answer, telling apart a server that was
    never reached, one that did not answer in time, and a connection broken after the
    request was sent (and the call's own deadline passing, when ``watch`` fired)."""
    if watch is not None and watch.fired:
        return watch.expired(method, path, base_url)
    where = f"{method} {path}"
    chain = list(_chain(exc))
    if _is(exc, "ConnectTimeout") or any(
        isinstance(c, _ConnectFailed) and isinstance(c.__cause__, TimeoutError) for c in chain
    ):
        return OrthancTimeout(f"{where}: cannot reach {base_url}: no connection in time ({exc})")
    if never_sent(exc) or _is(exc, "SSLError"):
        return OrthancConnectionError(f"{where}: cannot reach {base_url} ({exc})")
    if any(_is(c, "ReadTimeout", "ReadTimeoutError", "TimeoutError") for c in chain):
        return OrthancTimeout(
            f"{where}: no answer from {base_url} in time: the request was sent, and nothing "
            f"came within the read timeout ({exc})"
        )
    return OrthancConnectionError(
        f"{where}: the connection to {base_url} broke after the request was sent, before the "
        f"whole answer came ({exc})"
    )


def http_error(method: str, url: str, status: int, content: bytes) -> OrthancHTTPError:
    """The exception for an error status, with Orthanc's JSON error fields when it sent them."""
    body: dict[str, Any] | None = None
    text = ""
    try:
        decoded = json.loads(content) if content else None
        if isinstance(decoded, dict):
            body = decoded
        elif content:
            text = content.decode("utf-8", "replace")
    except (ValueError, RecursionError):
        text = content.decode("utf-8", "replace")
    return error_class_for(status)(status, method, url, body, text)
