"""The exception hierarchy: everything kkorthanc raises derives from :class:`OrthancError`.

HTTP failures map to one class per status through :data:`STATUS_CLASSES`; each keeps the
status, the method, the URL (credentials removed) and the fields of Orthanc's JSON error body.
"""

from __future__ import annotations

from typing import Any


class OrthancError(Exception):
    """Root of every error raised by kkorthanc."""


class OrthancConnectionError(OrthancError):
    """The server could not be reached (refused, reset, DNS, TLS), after any retries."""


class OrthancTimeout(OrthancConnectionError):
    """The server did not connect or answer within the configured timeout."""


class ValidationFailed(OrthancError):
    """The server sent JSON that does not fit the model it should fill."""


class InvalidRequest(OrthancError, ValueError):
    """An argument cannot be turned into a request the server would accept.

    Raised before anything is sent; the message names the argument that was wrong.
    """


class UnsupportedByServer(OrthancError):
    """A feature needs a newer Orthanc than the server runs.

    Raised before anything is sent: an older server would silently ignore the request field
    and return unfiltered results.
    """

    def __init__(self, feature: str, needed: str, server_version: str, api_version: int) -> None:
        self.feature = feature
        self.needed = needed
        self.server_version = server_version
        self.api_version = api_version
        super().__init__(
            f"{feature} needs Orthanc {needed} or newer; the server runs {server_version} "
            f"(REST API {api_version})"
        )


class OrthancHTTPError(OrthancError):
    """The server answered with an HTTP error status.

    Attributes:
        status: the HTTP status code.
        method: the HTTP method of the request.
        url: the request URL, never with credentials.
        orthanc_error: Orthanc's ``OrthancError`` field (e.g. ``"Inexistent item"``).
        orthanc_status: Orthanc's internal ``OrthancStatus`` code.
        message: Orthanc's ``Message`` field.
        details: Orthanc's ``Details`` field, often the most useful part.
        body: the decoded JSON body, or ``None`` when there was none.
    """

    def __init__(
        self,
        status: int,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        text: str = "",
    ) -> None:
        self.status = status
        self.method = method
        self.url = url
        self.body = body
        fields = body or {}
        self.orthanc_error: str | None = _str_or_none(fields.get("OrthancError"))
        raw_status = fields.get("OrthancStatus")
        self.orthanc_status: int | None = raw_status if isinstance(raw_status, int) else None
        self.message: str | None = _str_or_none(fields.get("Message"))
        self.details: str | None = _str_or_none(fields.get("Details"))
        reason = self.details or self.message or self.orthanc_error or text.strip()[:200]
        path = _path_of(url)
        summary = f"{method} {path}: {status}"
        super().__init__(f"{summary} ({reason})" if reason else summary)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r})"


class BadRequest(OrthancHTTPError):
    """400: the request was malformed or refused (e.g. a non-DICOM upload)."""


class Unauthorized(OrthancHTTPError):
    """401: missing or wrong credentials."""


class Forbidden(OrthancHTTPError):
    """403: the credentials are not allowed to do this."""


class NotFound(OrthancHTTPError):
    """404: unknown route or unknown resource ID."""


class Conflict(OrthancHTTPError):
    """409: the request conflicts with the server's state."""


class ServerError(OrthancHTTPError):
    """5xx: the server failed."""


class JobFailed(OrthancError):
    """A server job ended in failure; carries Orthanc's error description."""

    def __init__(self, job_id: str, error_code: int | None, description: str, details: str) -> None:
        self.job_id = job_id
        self.error_code = error_code
        self.description = description
        self.details = details
        why = details or description or "no reason given"
        super().__init__(f"job {job_id} failed: {why}")


class JobTimeout(OrthancError, TimeoutError):
    """A job did not finish within the time allowed."""


STATUS_CLASSES: dict[int, type[OrthancHTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def error_class_for(status: int) -> type[OrthancHTTPError]:
    """The exception class for an HTTP status code."""
    if status in STATUS_CLASSES:
        return STATUS_CLASSES[status]
    if status >= 500:
        return ServerError
    return OrthancHTTPError


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _path_of(url: str) -> str:
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url
    slash = url.find("/", scheme_end + 3)
    return url[slash:] if slash >= 0 else "/"
