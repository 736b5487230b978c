"""The exception hierarchy: everything kkorthanc raises derives from :class:`OrthancError`.

HTTP failures map to one class per status through :data:`STATUS_CLASSES`; each keeps the
status, the method, the URL (credentials removed) and the fields of Orthanc's JSON error body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .transfer import ExportItem, ExportReport, UploadItem, UploadReport


class OrthancError(Exception):
    """Root of every error raised by kkorthanc.

    Every one survives pickling (a process pool can raise it), whatever its constructor takes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy(), self.args))


class OrthancConnectionError(OrthancError):
    """The server could not be reached (refused, reset, DNS, TLS), after any retries."""


class OrthancTimeout(OrthancConnectionError):
    """The server did not connect or answer within the configured timeout."""


class ValidationFailed(OrthancError):
    """The server's answer does not have the shape its request gives: JSON of the wrong kind,
    a field of the wrong type, a value that cannot be read.

    Attributes:
        request: ``METHOD /path`` of the answer, when known; the message starts with it.
    """

    def __init__(self, message: str, *, request: str | None = None) -> None:
        self.request = request
        super().__init__(f"{request}: {message}" if request else message)


class InvalidRequest(OrthancError, ValueError):
    """An argument cannot be turned into a request the server would accept.

    Raised before anything is sent; the message names the argument that was wrong.
    """


class UnsupportedByServer(OrthancError):
    """A feature needs a newer Orthanc, or a database with a capability, than the server has.

    Raised before anything is sent: an older server would silently ignore the request field
    and return unfiltered results, a database without the capability would fail.

    Attributes:
        feature: the request field or operation, e.g. ``Labels``.
        needed: the oldest Orthanc version that has it.
        server_version: the server's version.
        api_version: the server's REST API version.
        database: what the database must do too, in words (empty when nothing).
        lacking: what this server's database lacks, in words (empty when only the version
            is too old).
    """

    def __init__(
        self,
        feature: str,
        needed: str,
        server_version: str,
        api_version: int,
        *,
        database: str = "",
        lacking: str = "",
    ) -> None:
        self.feature = feature
        self.needed = needed
        self.server_version = server_version
        self.api_version = api_version
        self.database = database
        self.lacking = lacking
        also = f" and {database}" if database else " or newer"
        server = f"{server_version} (REST API {api_version})"
        super().__init__(
            f"{feature} needs Orthanc {needed}{also}; this server: {server}"
            + (f", {lacking}" if lacking else "")
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


class NoResultingResource(OrthancError):
    """A job finished without producing a resource (e.g. a C-STORE job)."""


# -- refused before sending ---------------------------------------------------------------------


class QueryError(InvalidRequest):
    """A query that cannot be answered as written: the message says which part and why.

    Raised before any request is sent, by the server and the local engine alike.
    """


class UnknownKeyword(QueryError):
    """A tag name that is not a main DICOM tag keyword; ``suggestions`` holds close matches."""

    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {' or '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(
            f"unknown tag {name!r}: queries take the keyword (PatientName), snake_case name "
            f"(patient_name) or number (0010,0010) of a main DICOM tag{hint}"
        )



# -- the forest ---------------------------------------------------------------------------------


class NotInForest(OrthancError, KeyError):
    """The forest holds no resource with this identifier."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousIdentifier(OrthancError, LookupError):
    """Several resources share this identifier (e.g. one StudyInstanceUID under two PatientIDs).

    Attributes:
        matches: every resource with the identifier.
    """

    def __init__(self, message: str, matches: Sequence[Any]) -> None:
        super().__init__(message)
        self.matches = tuple(matches)


class ForestStoreError(OrthancError):
    """A stored forest's file cannot be used as asked.

    Raised for a file written by another schema version (the message names both versions,
    ``found`` and ``expected`` hold them), a file that is not a forest store (left
    untouched), a file that would have to be built when the caller asked to open it only,
    and a file that another process keeps locked.

    Attributes:
        path: the file.
        found: the schema version the file was written with, when that is the problem.
        expected: the schema version this kkorthanc reads and writes, likewise.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        *,
        found: int | None = None,
        expected: int | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.found = found
        self.expected = expected


class PaddedIdentifier(AmbiguousIdentifier):
    """Resources whose identifiers differ only by surrounding spaces (``"id11111"`` and
    ``" id11111"``): Orthanc keeps them apart (two patients), so a lookup by the identifier
    cannot choose and names them all.

    Attributes:
        matches: every resource with the identifier, up to the spaces.
    """



# -- remote modalities --------------------------------------------------------------------------


class ModalityError(OrthancError):
    """A DICOM operation with a remote modality failed.

    Attributes:
        modality: the modality's name on the server.
        operation: ``C-ECHO``, ``C-FIND`` or ``C-STORE``.
        reason: Orthanc's explanation (e.g. ``... TCP Initialization Error: Connection
            refused``).
        status: the HTTP status the server answered with.
    """

    operation: str = "DICOM operation"

    def __init__(self, modality: str, reason: str, status: int | None = None) -> None:
        self.modality = modality
        self.reason = reason
        self.status = status
        super().__init__(f"{self.operation} with modality {modality!r} failed: {reason}")



class EchoFailed(ModalityError):
    """C-ECHO failed: the modality is unreachable or refused the association."""

    operation = "C-ECHO"


class FindFailed(ModalityError):
    """C-FIND failed."""

    operation = "C-FIND"


class StoreFailed(ModalityError):
    """C-STORE failed, or some instances were not accepted."""

    operation = "C-STORE"


class UnknownModality(OrthancError, LookupError):
    """The server has no modality of that name."""


# -- transfers ----------------------------------------------------------------------------------


class _Described(Protocol):
    @property
    def label(self) -> str: ...


class _Summary(Protocol):
    @property
    def total(self) -> int: ...


class TransferFailed(OrthancError):
    """Some items of an upload or export did not make it; ``report`` has the full story.

    Attributes:
        report: the whole report.
        items: the items that failed.
    """

    verb = "transferred"

    def __init__(self, report: Any, items: Sequence[Any]) -> None:
        self.report = report
        self.items = list(items)
        count, total = len(self.items), report.total
        shown = "; ".join(item.label for item in self.items[:10])
        more = f"; and {count - 10} more" if count > 10 else ""
        super().__init__(f"{count} of {total} items were not {self.verb}: {shown}{more}")



class UploadFailed(TransferFailed):
    """Some items of an upload were not stored; ``report`` is the whole
    :class:`~kkorthanc.transfer.UploadReport`, ``items`` those not stored."""

    verb = "stored"
    report: UploadReport
    items: list[UploadItem]


class ExportFailed(TransferFailed):
    """Some instances of an export were not written; ``report`` is the whole
    :class:`~kkorthanc.transfer.ExportReport`, ``items`` those that failed."""

    verb = "written"
    report: ExportReport
    items: list[ExportItem]


class SandboxError(OrthancError):
    """A sandbox server could not be started."""


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


def _rebuild(cls: type[Exception], state: dict[str, Any], args: tuple[Any, ...]) -> Exception:
    """Unpickle an exception whose constructor takes other arguments than ``args``."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _path_of(url: str) -> str:
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url
    slash = url.find("/", scheme_end + 3)
    return url[slash:] if slash >= 0 else "/"
