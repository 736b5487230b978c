"""HTTP transport: the only module that imports :mod:`requests`.

It owns the session (connection pool, authentication, timeouts), retries requests that are
safe to repeat, maps error statuses to exceptions, pages through listings and counts every
request it sends, so that tests can assert how many round trips an operation costs.
"""

from __future__ import annotations

import base64
import json
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


Params = Mapping[str, str | int | float | bool | None]

#: statuses that mean "try again later" for a request that is safe to repeat
RETRY_STATUSES = frozenset({502, 503, 504})
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
            connection failure or a 502/503/504 answer.
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
        # headers of the lean binary path, which bypasses the session's own handling
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
        stream: bool = False,
        timeout: Timeout | None = None,
        repeatable: bool | None = None,
    ) -> requests.Response:
        """Send one request and return the response, or raise an :class:`OrthancError`.

        ``repeatable`` says whether the request may be sent again after a dropped connection
        or a 502/503/504; by default GET-like methods and ``POST /instances`` are.
        """
        method = method.upper()
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

    def send_bytes(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        content_type: str,
        repeatable: bool | None = None,
    ) -> bytes:
        """Send a binary body and return the answer's body: the lean path for bulk uploads.

        It goes straight to the session's connection pool and skips the per-request work
        of :meth:`request` (cookie and hook handling, header merging), which is most of the
        client's CPU time when thousands of small files are posted. Retries, error mapping
        and request counting are the same.
        """
        method = method.upper()
        if self.base_url.startswith("https:"):
            # TLS settings (verify, client certificates) live in the session's adapter
            response = self.request(
                method,
                path,
                data=body,
                headers={"Content-Type": content_type},
                repeatable=repeatable,
            )
            return response.content
        pool = self._pool()
        headers = {**self._fast_headers, "Content-Type": content_type}
        connect, read = (
            self.timeout if isinstance(self.timeout, tuple) else (self.timeout, self.timeout)
        )
        timeout = urllib3.Timeout(connect=connect, read=read)

        def send() -> urllib3.BaseHTTPResponse:
            return pool.urlopen(
                method,
                self._base_path + path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=True,
                assert_same_host=False,
            )

        def answer(response: urllib3.BaseHTTPResponse) -> _Answer:
            return _Answer(
                response.status,
                response.headers.get("Retry-After"),
                lambda: response.data,
                response.release_conn,
            )

        return self._retrying(method, path, repeatable, send, answer).data

    def _pool(self) -> urllib3.HTTPConnectionPool:
        adapter = self.session.get_adapter(self.base_url)
        assert isinstance(adapter, HTTPAdapter)
        pool: urllib3.HTTPConnectionPool = adapter.poolmanager.connection_from_url(self.base_url)
        return pool

    def _retrying(
        self,
        method: str,
        path: str,
        repeatable: bool | None,
        send: Callable[[], _R],
        answer: Callable[[_R], _Answer],
    ) -> _R:
        """Send until answered, retrying what is safe to retry; map error statuses."""
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
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                if attempt < self.retries and (repeatable or _never_sent(exc)):
                    attempt += 1
                    self._sleep(attempt)
                    continue
                raise _transport_error(method, path, self.base_url, exc) from exc
            info = answer(response)
            if info.status in RETRY_STATUSES and repeatable and attempt < self.retries:
                info.close()
                attempt += 1
                self._sleep(attempt, info.retry_after)
                continue
            if info.status >= 400:
                raise _http_error(method, self.url_for(path), info.status, info.content())
            return response

    def get_json(self, path: str, params: Params | None = None) -> Any:
        """``GET path`` and decode the JSON answer."""
        return _decode(self.request("GET", path, params=params))

    def post_json(self, path: str, body: Any = None, *, repeatable: bool | None = None) -> Any:
        """``POST path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        return _decode(self.request("POST", path, json_body=body, repeatable=repeatable))

    def put_json(self, path: str, body: Any = None) -> Any:
        """``PUT path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        return _decode(self.request("PUT", path, json_body=body))

    def delete(self, path: str) -> Any:
        """``DELETE path``."""
        return _decode(self.request("DELETE", path))

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

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 10.0))
        time.sleep(min(delay, 10.0))


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


def _decode(response: requests.Response) -> Any:
    content = response.content
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError as exc:
        raise OrthancConnectionError(
            f"{response.request.method} {urlsplit(response.url).path}: "
            f"the server's answer is not JSON"
        ) from exc


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
    timed_out = isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError))
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
