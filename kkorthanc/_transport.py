"""HTTP transport: the only module that imports :mod:`requests`.

It owns the session (connection pool, authentication, timeouts), retries requests that are
safe to repeat, maps error statuses to exceptions, pages through listings and counts every
request it sends, so that tests can assert how many round trips an operation costs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from .errors import (
    OrthancConnectionError,
    OrthancHTTPError,
    OrthancTimeout,
    error_class_for,
)

Timeout = float | tuple[float, float]
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
        if auth is not None:
            self.session.auth = auth
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
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
        if repeatable is None:
            repeatable = method in IDEMPOTENT_METHODS or (
                method == "POST" and path.rstrip("/") == "/instances"
            )
        body: bytes | str | None = data
        if json_body is not None:
            body = json.dumps(json_body)
        attempt = 0
        while True:
            with self._lock:
                self._count += 1
            try:
                response = self.session.request(
                    method,
                    url,
                    params=_clean_params(params),
                    data=body,
                    headers=dict(headers) if headers else None,
                    stream=stream,
                    timeout=timeout if timeout is not None else self.timeout,
                )
            except requests.exceptions.RequestException as exc:
                never_sent = _never_sent(exc)
                if attempt < self.retries and (repeatable or never_sent):
                    attempt += 1
                    self._sleep(attempt)
                    continue
                raise _transport_error(method, path, self.base_url, exc) from exc
            if response.status_code in RETRY_STATUSES and repeatable and attempt < self.retries:
                response.close()
                attempt += 1
                self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            if response.status_code >= 400:
                raise _http_error(method, url, response)
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

        With ``prefetch`` the next page is requested while the caller works on the current
        one, so the caller's processing overlaps the server's. The pages and the number of
        requests are the same either way.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        base: dict[str, Any] = {"expand": "", **(params or {})}

        def fetch(since: int) -> list[Any]:
            page = self.get_json(path, {**base, "since": since, "limit": page_size})
            if not isinstance(page, list):
                raise OrthancConnectionError(f"GET {path}: expected a JSON list")
            return page

        if not prefetch:
            since = 0
            while True:
                page = fetch(since)
                yield page
                if len(page) < page_size:
                    return
                since += page_size
        with ThreadPoolExecutor(1, thread_name_prefix="kkorthanc-page") as pool:
            since = 0
            pending: Future[list[Any]] | None = pool.submit(fetch, since)
            while pending is not None:
                page = pending.result()
                since += page_size
                pending = pool.submit(fetch, since) if len(page) == page_size else None
                yield page

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
    method: str, path: str, base_url: str, exc: requests.exceptions.RequestException
) -> OrthancConnectionError:
    if isinstance(exc, requests.exceptions.Timeout):
        return OrthancTimeout(f"{method} {path}: no answer from {base_url} in time ({exc})")
    return OrthancConnectionError(f"{method} {path}: cannot reach {base_url} ({exc})")


def _http_error(method: str, url: str, response: requests.Response) -> OrthancHTTPError:
    body: dict[str, Any] | None = None
    text = ""
    try:
        content = response.content
        if content:
            decoded = json.loads(content)
            if isinstance(decoded, dict):
                body = decoded
            else:
                text = content.decode("utf-8", "replace")
    except ValueError:
        text = response.content.decode("utf-8", "replace")
    cls = error_class_for(response.status_code)
    return cls(response.status_code, method, url, body, text)
