"""HTTP transport: the only module that imports :mod:`requests`.

It owns the session (connection pool, authentication, timeouts), retries requests that are
safe to repeat, maps error statuses to exceptions, pages through listings and counts every
request it sends, so that tests can assert how many round trips an operation costs. What it
refuses and bounds (deadlines, credentials, redirects, answer sizes) is decided in
:mod:`kkorthanc._limits`; this module applies it to both HTTP paths, the pooled session and
the upload channels.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import pydantic_core
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.wait import wait_for_read

from ._limits import (
    PIECE,
    Watch,
    _BrokenBody,
    _ConnectFailed,
    authorization,
    collect,
    connection_error,
    current_watch,
    decode_json,
    error_body,
    http_error,
    kind_of,
    never_sent,
    pair,
    pieces,
    read_limited,
    redirect_target,
    split_credentials,
    too_large,
    watching,
)
from ._paging import Step, next_step, read_ahead
from .errors import InvalidRequest, OrthancConnectionError

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
            OrthancConnectionError: the body is not JSON (the message names the request).
        """
        if not self.content:
            return None
        kind = self.headers.get("Content-Type")
        return decode_json(self.content, self.method, self.path, content_type=kind)


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
#: the largest answer read into memory by default (decoded size)
DEFAULT_MAX_ANSWER_BYTES = 256 << 20
#: at most this much of an error answer's body is read: its message is all that is shown
ERROR_BODY_LIMIT = 1 << 20
#: a streamed request body is read and sent in blocks of this size
SEND_BLOCK = 256 << 10
#: a request body: bytes, or a seekable binary file sent from where it stands
Body = bytes | IO[bytes]
#: what the HTTP layers raise for a request that got no (complete) answer
_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class _WatchedPool(urllib3.HTTPConnectionPool):
    """A pool that tells the calling thread's watch the connection its attempt uses, kept
    alive or new, when it is handed out."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        watch = current_watch()
        if watch is not None:
            # the connection, not its socket: a new one connects later, and the watch reads
            # its socket when it fires (wrapping ``connect`` instead would loop under
            # recorders that forward attributes to the real connection)
            watch.sock = conn
        return conn


class _WatchedHTTPSPool(_WatchedPool, urllib3.HTTPSConnectionPool):
    pass


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedPool,
            "https": _WatchedHTTPSPool,
        }


class _HeaderOnly(requests.auth.AuthBase):
    """The auth of every request: nothing, so that requests never encodes ``session.auth``
    (as latin-1); the ``Authorization`` header is the transport's own, built once."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


_HEADER_ONLY = _HeaderOnly()


class Transport:
    """One pooled HTTP session to one Orthanc server.

    Args:
        base_url: server URL; ``user:password@`` in it (percent-encoded) is moved into the
            credentials.
        auth: HTTP basic credentials ``(user, password)``, sent encoded as UTF-8 (as Orthanc
            compares them) on every path.
        token: a bearer token, sent as ``Authorization: Bearer ...`` (instead of ``auth``
            when both are given).
        timeout: seconds, or ``(connect, read)`` seconds: how long connecting may take, and
            how long any one read may wait for the next bytes.
        retries: how many times a request that is safe to repeat is sent again after a
            connection failure, a 502/503/504 answer, or a storage file Orthanc could not
            write (500 with ``FileStorageCannotWrite``).
        backoff: first delay between retries in seconds; doubles each time.
        verify: TLS certificate verification, as in :mod:`requests`.
        deadline: seconds a whole call may take: connecting, sending, the answer's headers
            and its body, retries and their pauses included (a server that trickles its
            answer byte by byte is cut off when it passes, with :class:`OrthancTimeout`).
            By default the connect and read timeouts added up, and at least 30 s. A
            request given a longer ``timeout`` of its own gets that long. Downloads are
            bounded differently, see :meth:`download`.
        max_answer_bytes: the largest answer (decoded, e.g. after gzip) that is read into
            memory, 256 MiB by default; a larger one raises :class:`OrthancConnectionError`
            as soon as the limit is passed, without reading the rest. Downloads streamed to
            a sink have no size limit.
        compress: ask the server for gzip (``Accept-Encoding: gzip, deflate``) instead of
            identity. Off by default: over loopback or a fast network, decompressing costs
            the client more than the smaller answers save (see ``docs/forest.md``, "Build
            cost"); worth it over a slow link to a server with ``HttpCompressionEnabled``.

    Raises:
        InvalidRequest: a credential cannot be sent (a control character, ``:`` in the user
            name, ...); the message names which one and why, never its value.
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
        deadline: float | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        compress: bool = False,
    ) -> None:
        clean, url_auth = split_credentials(base_url)
        parts = urlsplit(clean)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = re.sub(r"^([^/]*//)?[^/]*@", r"\1...@", clean)  # never a password
            raise ValueError(f"not an http(s) server URL: {shown!r}")
        auth = auth or url_auth
        header = authorization(auth, token)
        connect, read = pair(timeout)
        self.deadline = float(deadline) if deadline is not None else max(30.0, connect + read)
        if not self.deadline > 0 or max_answer_bytes < 1:
            raise ValueError("deadline and max_answer_bytes must be positive")
        self.max_answer_bytes = max_answer_bytes
        self.base_url = clean
        self.username: str | None = auth[0] if auth else None
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False
        self.compress = bool(compress)
        self.session.headers["Accept-Encoding"] = "gzip, deflate" if compress else "identity"
        adapter = _Adapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # the pair stays readable here, but requests never encodes it: every request passes
        # an auth of its own that leaves the transport's header alone (see _HEADER_ONLY)
        self.session.auth = (auth[0], auth[1]) if auth else None
        # headers of the upload channels, which bypass the session's own handling
        self._fast_headers: dict[str, str] = {"Accept": "application/json"}
        self._base_path = parts.path.rstrip("/")
        if header is not None:
            self.session.headers["Authorization"] = header
            self._fast_headers["Authorization"] = header
        self._lock = threading.Lock()
        self._count = 0
        self.last_request: str | None = None
        """``METHOD /path`` of the request sent last (by any thread), ``None`` before any:
        what an error that does not say names as the request it followed."""
        material = repr((auth, token))
        self.fingerprint = hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
        """A one-way digest of the credentials: equal for equal credentials, never reversible."""

    # -- bookkeeping -----------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Number of HTTP requests sent so far, retries and followed redirects included."""
        return self._count

    def _counted(self) -> None:
        with self._lock:
            self._count += 1

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def url_for(self, path: str) -> str:
        """The full URL of a server path (``/patients``)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _call_watch(self, timeout: Timeout | None = None) -> Watch:
        """The deadline of one call: the transport's, or longer for a longer ``timeout``."""
        seconds = self.deadline if timeout is None else max(self.deadline, sum(pair(timeout)))
        return Watch(seconds, f"the deadline of {seconds:g} s for the whole call")

    def _attempt_timeout(self, timeout: Timeout | None, watch: Watch) -> tuple[float, float]:
        """One attempt's ``(connect, read)`` timeouts, never beyond the call's deadline."""
        connect, read = pair(timeout if timeout is not None else self.timeout)
        left = max(watch.left(), 0.01)
        return min(connect, left), min(read, left)

    # -- requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        data: Body | str | None = None,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
        repeatable: bool | None = None,
    ) -> Reply:
        """Send one request and return the whole answer, or raise an :class:`OrthancError`.

        ``repeatable`` says whether the request may be sent again after a dropped connection
        or a 502/503/504 (or 500 ``FileStorageCannotWrite``); by default GET-like methods and
        ``POST /instances`` are. The call, retries included, ends by the transport's
        ``deadline``; its answer may be at most ``max_answer_bytes`` long.

        ``data`` may be a seekable binary file: ``length`` bytes of it (by default up to its
        end) are sent from where it stands, in blocks, with a ``Content-Length``, and read
        again from there for each attempt. One that ends early raises
        :class:`InvalidRequest`.
        """
        method = method.upper()
        watch = self._call_watch(timeout)
        with watching(watch):
            response = self._send(
                method,
                path,
                watch,
                params=params,
                json_body=json_body,
                data=data,
                length=length,
                headers=headers,
                timeout=timeout,
                repeatable=repeatable,
            )
            try:
                content = self._read(response, method, path)
            except _ERRORS as exc:
                raise connection_error(method, path, self.base_url, exc, watch) from exc
            finally:
                response.close()
            if watch.fired:  # a body that ends when the connection does was cut short
                raise watch.expired(method, path, self.base_url)
        return Reply(method, path, response.status_code, response.headers, content)

    def _read(self, response: requests.Response, method: str, path: str) -> bytes:
        """The whole (decoded) body, refused as soon as it passes ``max_answer_bytes``."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_answer_bytes:
            raise too_large(method, path, self.max_answer_bytes, f"Content-Length {length}")
        return collect(response.iter_content(PIECE), self.max_answer_bytes, method, path)

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
        retried.

        A download is not bounded by the call deadline, which would cut a large file that
        flows well: the answer's headers must come within the deadline (``long``: within
        an hour, for archives that are built before they are sent), and then every 64 KiB
        of the body within the read timeout (the stall limit; at least 64 KiB per 120 s
        with the default timeout, about 0.5 KB/s). Either limit passing raises
        :class:`OrthancTimeout`, which is not retried.
        """
        method = method.upper()
        connect, read = pair(self.timeout)
        timeout: Timeout | None = (connect, 3600.0) if long else None
        first_byte = connect + 3600.0 if long else self.deadline
        attempt = 0
        while True:
            watch = Watch(first_byte, f"the download's time to first byte ({first_byte:g} s)")
            with watching(watch):
                response = self._send(
                    method, path, watch, json_body=json_body, timeout=timeout, repeatable=True
                )
                try:
                    return sink(pieces(response, watch, read, _ERRORS))
                except _BrokenBody as broken:
                    exc = broken.__cause__ or broken
                    if watch.fired:
                        raise watch.expired(method, path, self.base_url) from exc
                    if attempt >= self.retries:
                        raise OrthancConnectionError(
                            f"{method} {path}: the connection broke during the download ({exc})"
                        ) from exc
                finally:
                    response.close()
            attempt += 1
            self.pause_before_retry(attempt)

    def _send(
        self,
        method: str,
        path: str,
        watch: Watch,
        *,
        params: Params | None = None,
        json_body: Any = None,
        data: Body | str | None = None,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
        repeatable: bool | None = None,
    ) -> requests.Response:
        """Send until answered (an answer with its headers read, its body not yet)."""
        url = self.url_for(path)
        body: bytes | str | _BodyStream | None = (
            _BodyStream(data, length, method, path)
            if data is not None and not isinstance(data, (bytes, str))
            else data
        )
        if json_body is not None:
            body = json.dumps(json_body)

        def send() -> requests.Response:
            target, query, hops = url, _clean_params(params), 0
            while True:
                if isinstance(body, _BodyStream):
                    body.rewind()  # each attempt, and a followed redirect, from the start
                watch.stage = "the answer's headers"
                response = self.session.request(
                    method,
                    target,
                    params=query,
                    data=body,
                    headers=dict(headers) if headers else None,
                    stream=True,
                    timeout=self._attempt_timeout(timeout, watch),
                    allow_redirects=False,
                    auth=_HEADER_ONLY,
                )
                watch.stage = "the answer's body"
                # the answer now owns the socket (an answer that closes the connection takes
                # it from the connection): the watch shuts it down through the answer
                watch.sock = response.raw
                if not 300 <= response.status_code < 400:
                    return response
                error_body(response, ERROR_BODY_LIMIT, _ERRORS)
                response.close()
                location = response.headers.get("Location")
                target = redirect_target(
                    method, path, response.url, response.status_code, location, self.base_url, hops
                )
                query, hops = None, hops + 1
                self._counted()

        def answer(response: requests.Response) -> _Answer:
            cached: list[bytes] = []

            def content() -> bytes:
                if not cached:
                    cached.append(error_body(response, ERROR_BODY_LIMIT, _ERRORS))
                return cached[0]

            def close() -> None:
                content()  # read to the end, so that the connection goes back to the pool
                response.close()

            return _Answer(
                response.status_code, response.headers.get("Retry-After"), content, close
            )

        return self._retrying(method, path, repeatable, send, answer, watch)

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
        watch: Watch,
        errors: tuple[type[Exception], ...] = _ERRORS,
    ) -> _R:
        """Send until answered, retrying what is safe to retry, within ``watch``'s deadline
        (no retry is started that could not end by then); map error statuses.

        ``errors`` are the HTTP layer's exceptions for a request that got no answer.
        """
        if repeatable is None:
            repeatable = method in IDEMPOTENT_METHODS or (
                method == "POST" and path.rstrip("/") == "/instances"
            )
        attempt = 0
        while True:
            self.last_request = f"{method} {path}"
            self._counted()
            try:
                response = send()
            except errors as exc:
                if (
                    attempt < self.retries
                    and (repeatable or never_sent(exc))
                    and not watch.fired
                    and self._retry_delay(attempt + 1) < watch.left()
                ):
                    attempt += 1
                    self.pause_before_retry(attempt)
                    continue
                raise connection_error(method, path, self.base_url, exc, watch) from exc
            info = answer(response)
            if watch.fired:  # headers that end when the connection does were cut short
                info.close()
                raise watch.expired(method, path, self.base_url)
            if (
                repeatable
                and attempt < self.retries
                and _asks_to_retry(info)
                and self._retry_delay(attempt + 1, info.retry_after) < watch.left()
            ):
                info.close()
                attempt += 1
                self.pause_before_retry(attempt, info.retry_after)
                continue
            if info.status >= 400:
                content = info.content()
                info.close()
                raise http_error(method, self.url_for(path), info.status, content)
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
        named_by: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, list[Any]]]:
        """Page through expanded listings one after another: ``(path, page)`` pairs.

        ``GET path?expand&since=N&limit=page_size``: one request per page, a listing ending
        at its first short page. With ``prefetch`` a thread sends the requests and reads the
        answers ahead of the caller, who decodes them and works on them meanwhile (see
        :mod:`kkorthanc._paging`); ``named_by[i]`` is the key under which the items of
        listing ``i`` name the resources of listing ``i + 1`` (``"Studies"`` for
        ``/patients`` before ``/studies``), which lets the thread ask for the next page
        without waiting for the current one to be decoded. The pages, the requests and their
        order are the same either way, unless the server changes meanwhile.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        base: dict[str, Any] = {"expand": "", **(params or {})}

        def fetch(path: str, since: int) -> Reply:
            return self._listing_answer(path, since, page_size, base)

        if prefetch:
            yield from read_ahead(paths, page_size, fetch, _listing_page, named_by)
            return
        step: Step | None = (0, 0) if paths else None
        while step is not None:
            path = paths[step[0]]
            page = _listing_page(path, fetch(path, step[1]))
            yield path, page
            step = next_step(step, len(page), page_size, len(paths))

    def _listing_answer(
        self, path: str, since: int, limit: int, params: Mapping[str, Any]
    ) -> Reply:
        """One page of an expanded listing, as the server sent it (not yet decoded)."""
        return self.request("GET", path, params={**params, "since": since, "limit": limit})

    def pause_before_retry(self, attempt: int, retry_after: str | None = None) -> None:
        """Wait before sending attempt ``attempt`` (1 for the first retry) again: the
        backoff doubles each time, ``Retry-After`` is honoured up to 10 s."""
        time.sleep(self._retry_delay(attempt, retry_after))

    def _retry_delay(self, attempt: int, retry_after: str | None = None) -> float:
        delay = self.backoff * 2.0 ** (attempt - 1)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 10.0))
        return min(delay, 10.0)


def _listing_page(path: str, reply: Reply) -> list[Any]:
    """One page of an expanded listing, decoded.

    Decoded by pydantic's JSON parser: faster than :func:`json.loads`, and equal strings
    (tag values, parent IDs) come out as one shared object, which halves a page's memory.
    """
    kind = reply.headers.get("Content-Type")
    page = decode_json(reply.content, "GET", path, pydantic_core.from_json, kind)
    if not isinstance(page, list):
        raise OrthancConnectionError(f"GET {path}: expected a JSON list, got {kind_of(page)}")
    return page


class BinaryChannel:
    """One keep-alive connection, used by one thread, for a stream of binary uploads.

    Bulk uploads post thousands of small files, and then the client's own CPU time per
    request matters: it competes with the server for the same cores when both run on one
    machine. A plain :class:`http.client.HTTPConnection` that the thread keeps for itself
    costs about a third less CPU per request than the session's pooled path (no pool
    checkout, no second response object, no cookie or hook handling). Retries, error mapping,
    request counting, the call deadline, the answer limit and the redirect rules are the
    transport's. HTTPS uploads go through :meth:`Transport.request`, where the session's TLS
    settings live.

    Not thread-safe: give each worker thread its own channel, and close it when done.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        parts = urlsplit(transport.base_url)
        self._plain = parts.scheme == "http"
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._connect_timeout, self._read_timeout = pair(transport.timeout)
        self._conn: http.client.HTTPConnection | None = None

    def send(
        self,
        method: str,
        path: str,
        body: Body,
        *,
        content_type: str,
        length: int | None = None,
        repeatable: bool | None = None,
    ) -> bytes:
        """Send ``body`` and return the answer's body; errors as :meth:`Transport.request`.

        ``body`` is bytes, or a seekable binary file: then ``length`` bytes of it (by default
        up to its end) are sent from where it stands, in blocks of :data:`SEND_BLOCK` bytes
        with a ``Content-Length`` (never chunked: Orthanc's HTTP server wants the length), so
        that memory stays bounded whatever its size; each attempt, and a followed redirect,
        reads it again from there. A file that ends early raises :class:`InvalidRequest`;
        what the file object raises itself while it is read passes through unchanged.
        """
        transport = self._transport
        method = method.upper()
        if not self._plain:
            return transport.request(
                method,
                path,
                data=body,
                length=length,
                headers={"Content-Type": content_type},
                repeatable=repeatable,
            ).content
        headers = {**transport._fast_headers, "Content-Type": content_type}
        payload = body if isinstance(body, bytes) else _BodyStream(body, length, method, path)
        if isinstance(payload, _BodyStream):
            headers["Content-Length"] = str(payload.length)
        limit = transport.max_answer_bytes
        watch = transport._call_watch()

        def send() -> tuple[int, str | None, bytes]:
            target, hops = transport._base_path + path, 0
            try:
                while True:
                    conn = self._connection(watch)
                    if isinstance(payload, _BodyStream):
                        payload.rewind()
                    watch.stage = "the server to take the request's body"
                    conn.request(method, target, body=payload, headers=headers)
                    watch.stage = "the answer's headers"
                    response = conn.getresponse()
                    watch.stage = "the answer's body"
                    status = response.status
                    if status < 300:
                        return status, None, read_limited(response, limit, method, path)
                    content = response.read(ERROR_BODY_LIMIT)
                    if not response.isclosed():
                        self.close()  # the rest of a huge error body is not read
                    if status >= 400:
                        return status, response.getheader("Retry-After"), content
                    self.close()
                    url = self._origin + target
                    location = response.getheader("Location")
                    parts = urlsplit(
                        redirect_target(
                            method, path, url, status, location, transport.base_url, hops
                        )
                    )
                    target = parts.path + (f"?{parts.query}" if parts.query else "")
                    hops += 1
                    transport._counted()
            except BaseException:
                self.close()  # a half-used connection is never reused
                raise

        def answer(reply: tuple[int, str | None, bytes]) -> _Answer:
            return _Answer(reply[0], reply[1], lambda: reply[2], _nothing)

        with watching(watch):
            status_and_body = transport._retrying(method, path, repeatable, send, answer, watch)
        return status_and_body[2]

    def _connection(self, watch: Watch) -> http.client.HTTPConnection:
        """The open connection, or a new one when there is none or the server closed it;
        its timeouts never reach beyond ``watch``'s deadline."""
        conn = self._conn
        if conn is not None and _closed_by_peer(conn.sock):
            self.close()
            conn = None
        if conn is None:
            # looked up when used, so that recorders that patch http.client see it
            conn = http.client.HTTPConnection(
                self._host, self._port, timeout=self._connect_timeout, blocksize=SEND_BLOCK
            )
            self._conn = conn
        left = max(watch.left(), 0.01)
        if conn.sock is None:
            conn.timeout = min(self._connect_timeout, left)
            try:
                conn.connect()
            except OSError as exc:
                raise _ConnectFailed(str(exc)) from exc
            sock = conn.sock
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = watch.sock = conn.sock
        if isinstance(sock, socket.socket):
            sock.settimeout(min(self._read_timeout, left))
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


class _BodyStream:
    """A file sent as a request body: ``length`` bytes from where it stood when given, read
    block by block as the HTTP layer sends them (never whole), and from the start again for
    each attempt. ``len()`` is what ``requests`` announces as the ``Content-Length``."""

    def __init__(self, stream: IO[bytes], length: int | None, method: str, path: str) -> None:
        self._stream = stream
        self._start = stream.tell()
        if length is None:
            length = os.fstat(stream.fileno()).st_size - self._start
        if length < 0:
            raise ValueError(f"a body cannot be {length} bytes long")
        self.length = length
        self._left = length
        self._what = f"{method} {path}"

    def rewind(self) -> None:
        self._stream.seek(self._start)
        self._left = self.length

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # the rest at once: only recorders ask for that
            return b"".join(iter(lambda: self.read(SEND_BLOCK), b""))
        if self._left <= 0:
            return b""
        block = self._stream.read(min(size, self._left))
        if not block:
            raise InvalidRequest(
                f"{self._what}: the body ended {self._left} bytes short of the "
                f"{self.length} announced"
            )
        self._left -= len(block)
        return block

    def __len__(self) -> int:
        return self.length


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
    except (ValueError, RecursionError):
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
