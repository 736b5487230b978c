"""HTTP transport: the only module that imports :mod:`requests`.

It owns the session (connection pool, authentication, timeouts), retries requests that are
safe to repeat, maps error statuses to exceptions, pages through listings and counts every
request it sends, so that tests can assert how many round trips an operation costs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pydantic_core
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.wait import wait_for_read

from .errors import (
    OrthancConnectionError,
    OrthancHTTPError,
    OrthancTimeout,
    error_class_for,
)

Timeout = float | tuple[float, float]
_R = TypeVar("_R")


class _Answer(NamedTuple):
    """What the retry loop needs to know of a response, whichever HTTP layer sent it."""

    status: int
    retry_after: str | None
    content: Callable[[], bytes]
    close: Callable[[], None]


class Reply(NamedTuple):
    """A complete answer of the server: what callers outside the transport get to see."""

    method: str
    """The request's method."""
    path: str
    """The request's server path, e.g. ``/instances``."""
    status: int
    """The HTTP status (always below 400: error statuses are raised)."""
    headers: Mapping[str, str]
    """The answer's headers (case-insensitive lookup)."""
    content: bytes
    """The answer's body."""

    def json(self) -> Any:
        """The body decoded as JSON, ``None`` when empty.

        Raises:
            OrthancConnectionError: the body is not JSON.
        """
        if not self.content:
            return None
        try:
            return json.loads(self.content)
        except ValueError as exc:
            raise OrthancConnectionError(
                f"{self.method} {self.path}: the server's answer is not JSON"
            ) from exc


class _BrokenBody(Exception):
    """The connection broke while an answer's body was being read."""


Params = Mapping[str, str | int | float | bool | None]

#: statuses that mean "try again later" for a request that is safe to repeat
RETRY_STATUSES = frozenset({502, 503, 504})
#: Orthanc's ``OrthancStatus`` for "Unable to create a subdirectory or a file in the file
#: storage": Orthanc 1.10 answers it (with 500) when two concurrent uploads create the same
#: storage folder at once, and the same request then goes through
FILE_STORAGE_CANNOT_WRITE = 2001
#: methods that are safe to repeat; POST /instances is added by path (Orthanc de-duplicates)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 120.0)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Remove ``user:password@`` from a URL; return the clean URL and the credentials."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean.rstrip("/"), (parts.username, parts.password or "")


class Transport:
    """One pooled HTTP session to one Orthanc server.

    Args:
        base_url: server URL; ``user:password@`` in it is moved into the credentials.
        auth: HTTP basic credentials ``(user, password)``.
        token: a bearer token, sent as ``Authorization: Bearer ...``.
        timeout: seconds, or ``(connect, read)`` seconds.
        retries: how many times a request that is safe to repeat is sent again after a
            connection failure, a 502/503/504 answer, or a storage file Orthanc could not
            write (500 with ``FileStorageCannotWrite``).
        backoff: first delay between retries in seconds; doubles each time.
        verify: TLS certificate verification, as in :mod:`requests`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        verify: bool | str = True,
        pool_size: int = 16,
    ) -> None:
        clean, url_auth = split_credentials(base_url)
        parts = urlsplit(clean)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server URL: {clean!r}")
        self.base_url = clean
        auth = auth or url_auth
        self.username: str | None = auth[0] if auth else None
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # headers of the upload channels, which bypass the session's own handling
        self._fast_headers: dict[str, str] = {"Accept": "application/json"}
        self._base_path = parts.path.rstrip("/")
        if auth is not None:
            self.session.auth = auth
            pair = f"{auth[0]}:{auth[1]}".encode()
            self._fast_headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
            self._fast_headers["Authorization"] = f"Bearer {token}"
        self._lock = threading.Lock()
        self._count = 0
        material = repr((auth, token))
        self.fingerprint = hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
        """A one-way digest of the credentials: equal for equal credentials, never reversible."""

    # -- bookkeeping -----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Number of HTTP requests sent so far, retries included."""
        return self._count

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def url_for(self, path: str) -> str:
        """The full URL of a server path (``/patients``)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
        repeatable: bool | None = None,
    ) -> Reply:
        """Send one request and return the whole answer, or raise an :class:`OrthancError`.

        ``repeatable`` says whether the request may be sent again after a dropped connection
        or a 502/503/504 (or 500 ``FileStorageCannotWrite``); by default GET-like methods and
        ``POST /instances`` are.
        """
        method = method.upper()
        response = self._send(
            method,
            path,
            params=params,
            json_body=json_body,
            data=data,
            headers=headers,
            timeout=timeout,
            repeatable=repeatable,
        )
        try:
            content = response.content
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _transport_error(method, path, self.base_url, exc) from exc
        return Reply(method, path, response.status_code, response.headers, content)

    def download(
        self,
        method: str,
        path: str,
        sink: Callable[[Iterator[bytes]], _R],
        *,
        json_body: Any = None,
        long: bool = False,
    ) -> _R:
        """Stream an answer's body into ``sink`` and return what ``sink`` returns.

        ``sink`` gets an iterator of chunks; when the connection breaks mid-body, the
        iterator raises, ``sink`` is expected to clean up what it wrote and let the error
        pass, and the request is sent again (with the backoff, up to ``retries`` times) to
        a fresh call of ``sink``. Errors that ``sink`` raises itself (a full disk) are not
        retried. ``long`` allows up to an hour for the first byte (archives are built
        before they are sent).
        """
        method = method.upper()
        timeout: Timeout | None = None
        if long:
            connect = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
            timeout = (connect, 3600.0)
        attempt = 0
        while True:
            response = self._send(
                method,
                path,
                json_body=json_body,
                stream=True,
                timeout=timeout,
                repeatable=True,
            )
            try:
                return sink(_body_chunks(response))
            except _BrokenBody as broken:
                exc = broken.__cause__ or broken
                if attempt >= self.retries:
                    raise OrthancConnectionError(
                        f"{method} {path}: the connection broke during the download ({exc})"
                    ) from exc
                attempt += 1
                self.pause_before_retry(attempt)
            finally:
                response.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        timeout: Timeout | None = None,
        repeatable: bool | None = None,
    ) -> requests.Response:
        url = self.url_for(path)
        body: bytes | str | None = data
        if json_body is not None:
            body = json.dumps(json_body)

        def send() -> requests.Response:
            return self.session.request(
                method,
                url,
                params=_clean_params(params),
                data=body,
                headers=dict(headers) if headers else None,
                stream=stream,
                timeout=timeout if timeout is not None else self.timeout,
            )

        def answer(response: requests.Response) -> _Answer:
            return _Answer(
                response.status_code,
                response.headers.get("Retry-After"),
                lambda: response.content,
                response.close,
            )

        return self._retrying(method, path, repeatable, send, answer)

    def channel(self) -> BinaryChannel:
        """A connection of its own for one thread's stream of binary uploads.

        See :class:`BinaryChannel`; close it when the thread is done.
        """
        return BinaryChannel(self)

    def _retrying(
        self,
        method: str,
        path: str,
        repeatable: bool | None,
        send: Callable[[], _R],
        answer: Callable[[_R], _Answer],
        errors: tuple[type[Exception], ...] = (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
        ),
    ) -> _R:
        """Send until answered, retrying what is safe to retry; map error statuses.

        ``errors`` are the HTTP layer's exceptions for a request that got no answer.
        """
        if repeatable is None:
            repeatable = method in IDEMPOTENT_METHODS or (
                method == "POST" and path.rstrip("/") == "/instances"
            )
        attempt = 0
        while True:
            with self._lock:
                self._count += 1
            try:
                response = send()
            except errors as exc:
                if attempt < self.retries and (repeatable or _never_sent(exc)):
                    attempt += 1
                    self.pause_before_retry(attempt)
                    continue
                raise _transport_error(method, path, self.base_url, exc) from exc
            info = answer(response)
            if repeatable and attempt < self.retries and _asks_to_retry(info):
                info.close()
                attempt += 1
                self.pause_before_retry(attempt, info.retry_after)
                continue
            if info.status >= 400:
                raise _http_error(method, self.url_for(path), info.status, info.content())
            return response

    def get_json(self, path: str, params: Params | None = None) -> Any:
        """``GET path`` and decode the JSON answer."""
        return self.request("GET", path, params=params).json()

    def post_json(self, path: str, body: Any = None, *, repeatable: bool | None = None) -> Any:
        """``POST path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        return self.request("POST", path, json_body=body, repeatable=repeatable).json()

    def put_json(self, path: str, body: Any = None) -> Any:
        """``PUT path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        return self.request("PUT", path, json_body=body).json()

    def delete(self, path: str) -> Any:
        """``DELETE path``."""
        return self.request("DELETE", path).json()

    def iter_pages(
        self,
        path: str,
        *,
        page_size: int = 1000,
        params: Params | None = None,
        prefetch: bool = False,
    ) -> Iterator[list[Any]]:
        """Page through an expanded listing with ``since``/``limit``: one request per page.

        See :meth:`iter_listings`, which this is for a single listing.
        """
        for _, page in self.iter_listings(
            [path], page_size=page_size, params=params, prefetch=prefetch
        ):
            yield page

    def iter_listings(
        self,
        paths: Sequence[str],
        *,
        page_size: int = 1000,
        params: Params | None = None,
        prefetch: bool = False,
    ) -> Iterator[tuple[str, list[Any]]]:
        """Page through expanded listings one after another: ``(path, page)`` pairs.

        ``GET path?expand&since=N&limit=page_size``: one request per page, a listing ending
        at its first short page. With ``prefetch`` the next page (of the same listing, or the
        first of the next one) is requested while the caller works on the current one, so
        the caller's processing overlaps the server's. The pages, the requests and their order
        are the same either way.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        base: dict[str, Any] = {"expand": "", **(params or {})}

        def after(position: int, since: int, page: list[Any]) -> tuple[int, int] | None:
            if len(page) == page_size:
                return position, since + page_size
            return (position + 1, 0) if position + 1 < len(paths) else None

        def fetch(step: tuple[int, int]) -> list[Any]:
            return self._listing_page(paths[step[0]], step[1], page_size, base)

        step: tuple[int, int] | None = (0, 0) if paths else None
        if not prefetch:
            while step is not None:
                page = fetch(step)
                yield paths[step[0]], page
                step = after(*step, page)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="kkorthanc-page") as pool:
            pending = pool.submit(fetch, step) if step is not None else None
            while pending is not None and step is not None:
                page = pending.result()
                current, step = step, after(*step, page)
                pending = pool.submit(fetch, step) if step is not None else None
                yield paths[current[0]], page

    def _listing_page(
        self, path: str, since: int, limit: int, params: Mapping[str, Any]
    ) -> list[Any]:
        """One page of an expanded listing.

        Decoded by pydantic's JSON parser: faster than :func:`json.loads`, and equal strings
        (tag values, parent IDs) come out as one shared object, which halves a page's memory.
        """
        response = self.request("GET", path, params={**params, "since": since, "limit": limit})
        try:
            page = pydantic_core.from_json(response.content)
        except ValueError as exc:
            raise OrthancConnectionError(f"GET {path}: the server's answer is not JSON") from exc
        if not isinstance(page, list):
            raise OrthancConnectionError(f"GET {path}: expected a JSON list")
        return page

    def pause_before_retry(self, attempt: int, retry_after: str | None = None) -> None:
        """Wait before sending attempt ``attempt`` (1 for the first retry) again: the
        backoff doubles each time, ``Retry-After`` is honoured up to 10 s."""
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 10.0))
        time.sleep(min(delay, 10.0))


class BinaryChannel:
    """One keep-alive connection, used by one thread, for a stream of binary uploads.

    Bulk uploads post thousands of small files, and then the client's own CPU time per
    request matters: it competes with the server for the same cores when both run on one
    machine. A plain :class:`http.client.HTTPConnection` that the thread keeps for itself
    costs about a third less CPU per request than the session's pooled path (no pool
    checkout, no second response object, no cookie or hook handling). Retries, error mapping
    and request counting are the transport's. HTTPS uploads go through
    :meth:`Transport.request`, where the session's TLS settings live.

    Not thread-safe: give each worker thread its own channel, and close it when done.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        parts = urlsplit(transport.base_url)
        self._plain = parts.scheme == "http"
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        timeout = transport.timeout
        self._connect_timeout, self._read_timeout = (
            timeout if isinstance(timeout, tuple) else (timeout, timeout)
        )
        self._conn: http.client.HTTPConnection | None = None

    def send(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        content_type: str,
        repeatable: bool | None = None,
    ) -> bytes:
        """Send ``body`` and return the answer's body; errors as :meth:`Transport.request`."""
        transport = self._transport
        method = method.upper()
        if not self._plain:
            return transport.request(
                method,
                path,
                data=body,
                headers={"Content-Type": content_type},
                repeatable=repeatable,
            ).content
        target = transport._base_path + path
        headers = {**transport._fast_headers, "Content-Type": content_type}

        def send() -> tuple[int, str | None, bytes]:
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.getheader("Retry-After"), response.read()
            except BaseException:
                self.close()  # a half-used connection is never reused
                raise

        def answer(reply: tuple[int, str | None, bytes]) -> _Answer:
            return _Answer(reply[0], reply[1], lambda: reply[2], _nothing)

        status_and_body = transport._retrying(
            method, path, repeatable, send, answer, (OSError, http.client.HTTPException)
        )
        return status_and_body[2]

    def _connection(self) -> http.client.HTTPConnection:
        """The open connection, or a new one when there is none or the server closed it."""
        conn = self._conn
        if conn is not None and _closed_by_peer(conn.sock):
            self.close()
            conn = None
        if conn is None:
            # looked up when used, so that recorders that patch http.client see it
            conn = http.client.HTTPConnection(
                self._host, self._port, timeout=self._connect_timeout
            )
            self._conn = conn
        if conn.sock is None:
            conn.connect()
            sock = conn.sock
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self._read_timeout)
        return conn

    def close(self) -> None:
        """Close the connection; the next :meth:`send` opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> BinaryChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _asks_to_retry(info: _Answer) -> bool:
    """Whether an answer means "send it again later": 502/503/504, or a 500 for a storage
    file Orthanc could not write (a race between concurrent uploads; a full disk fails every
    attempt and is reported after the retries)."""
    if info.status in RETRY_STATUSES:
        return True
    if info.status != 500:
        return False
    try:
        body = json.loads(info.content())
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("OrthancStatus") == FILE_STORAGE_CANNOT_WRITE


def _nothing() -> None:
    return None


def _closed_by_peer(sock: object) -> bool:
    """True when an idle keep-alive socket has become readable: the server closed it."""
    if not isinstance(sock, socket.socket):
        return False
    try:
        return wait_for_read(sock, timeout=0.0)
    except (OSError, ValueError):
        return True


def _clean_params(params: Params | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body in chunks of 1 MiB; a connection broken mid-body raises :class:`_BrokenBody`."""
    try:
        yield from response.iter_content(1 << 20)
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _BrokenBody() from exc


def _never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (connection refused, etc.)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in ("NewConnectionError", "ConnectionRefusedError"):
            return True
        nested = current.args[0] if current.args else None
        reason = getattr(current, "reason", None)
        candidates = [c for c in (reason, nested) if isinstance(c, BaseException)]
        current = candidates[0] if candidates else current.__cause__ or current.__context__
    return False


def _transport_error(
    method: str, path: str, base_url: str, exc: Exception
) -> OrthancConnectionError:
    timed_out = isinstance(
        exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    )
    # urllib3 files a refused connection under its timeouts
    if timed_out and not isinstance(exc, urllib3.exceptions.NewConnectionError):
        return OrthancTimeout(f"{method} {path}: no answer from {base_url} in time ({exc})")
    return OrthancConnectionError(f"{method} {path}: cannot reach {base_url} ({exc})")


def _http_error(method: str, url: str, status: int, content: bytes) -> OrthancHTTPError:
    body: dict[str, Any] | None = None
    text = ""
    try:
        decoded = json.loads(content) if content else None
        if isinstance(decoded, dict):
            body = decoded
        elif content:
            text = content.decode("utf-8", "replace")
    except ValueError:
        text = content.decode("utf-8", "replace")
    return error_class_for(status)(status, method, url, body, text)
