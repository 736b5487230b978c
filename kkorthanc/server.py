"""The :class:`Server`: what every other module needs of an Orthanc server, and nothing more.

It sits at the bottom of the package, just above the transport: models, the forest, queries,
jobs, modalities and transfers talk to a ``Server`` and never to the transport or to the
:class:`~kkorthanc.client.Orthanc` facade. It offers JSON requests, binary posts, streamed
downloads, the pager of expanded listings and of the change feed, bulk content, and the
capability gates read from ``/system``. It builds no models: it hands over JSON.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._answers import expect_list, expect_object, reading
from ._limits import kind_of
from ._transport import (
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_TIMEOUT,
    BinaryChannel,
    Body,
    Params,
    Reply,
    Timeout,
    Transport,
)
from .errors import InvalidRequest, UnsupportedByServer, ValidationFailed
from .values import OrthancTime

_R = TypeVar("_R")


class Capabilities(BaseModel):
    """Optional server features announced in ``/system`` (absent on older servers)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    has_extended_find: bool = Field(default=False, alias="HasExtendedFind")
    """The database supports ordering, metadata queries and response content in find."""
    has_extended_changes: bool = Field(default=False, alias="HasExtendedChanges")
    """The change feed can be filtered by type and read backwards."""
    has_labels: bool = Field(default=False, alias="HasLabels")
    """The database stores labels."""


class SystemInfo(BaseModel):
    """What ``GET /system`` says about the server."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    name: str = Field(default="", alias="Name")
    """The server's configured name."""
    version: str = Field(alias="Version")
    """Orthanc version, e.g. ``1.10.1``."""
    api_version: int = Field(alias="ApiVersion")
    """REST API version: 16 for 1.10.x, 20 for 1.12.0, ..."""
    dicom_aet: str = Field(default="", alias="DicomAet")
    """The server's own DICOM application entity title."""
    dicom_port: int | None = Field(default=None, alias="DicomPort")
    """The DICOM port the server listens on."""
    http_port: int | None = Field(default=None, alias="HttpPort")
    """The HTTP port the server listens on."""
    database_version: int | None = Field(default=None, alias="DatabaseVersion")
    """Schema version of the index database."""
    database_backend_plugin: str | None = Field(default=None, alias="DatabaseBackendPlugin")
    """Path of the database plugin, ``None`` for the built-in SQLite index."""
    storage_area_plugin: str | None = Field(default=None, alias="StorageAreaPlugin")
    """Path of the storage plugin, ``None`` for the built-in file storage."""
    plugins_enabled: bool = Field(default=False, alias="PluginsEnabled")
    """Whether the server loads plugins."""
    check_revisions: bool = Field(default=False, alias="CheckRevisions")
    """Whether metadata and attachments are protected by revisions."""
    capabilities: Capabilities = Field(default_factory=Capabilities, alias="Capabilities")
    """Optional features of the server's database."""
    has_labels: bool | None = Field(default=None, alias="HasLabels")
    """Whether the database stores labels, where Orthanc 1.12.0 to 1.12.4 say it (at the top
    level of ``/system``; 1.12.5 moved it under ``Capabilities``)."""

    @property
    def stores_labels(self) -> bool:
        """Whether the database stores labels, read from where this version says it."""
        return bool(self.has_labels) or self.capabilities.has_labels

    @property
    def has_extended_find(self) -> bool:
        """Whether the index orders, filters on metadata and trims answers in find (the
        ``HasExtendedFind`` capability, Orthanc 1.12.5+)."""
        return self.capabilities.has_extended_find

    @property
    def index(self) -> str:
        """The index database in words: ``SQLite index`` or ``PostgreSQL index``, ..."""
        plugin = self.database_backend_plugin
        if not plugin:
            return "SQLite index"
        name = plugin.rsplit("/", 1)[-1].lower()
        for known, words in (("postgresql", "PostgreSQL"), ("mysql", "MySQL"), ("odbc", "ODBC")):
            if known in name:
                return f"{words} index"
        return f"index plugin {plugin.rsplit('/', 1)[-1]}"


class Requirement(NamedTuple):
    """What a feature needs: a minimum REST API version and optionally a capability."""

    api_version: int
    """The oldest REST API version that has it."""
    orthanc: str
    """That version as users know it, e.g. ``1.12.0``."""
    capability: str | None = None
    """A boolean property of :class:`SystemInfo` that must be true too."""
    database: str = ""
    """What the capability asks of the database, in words (for error messages)."""
    missing: str = ""
    """How a database without the capability is described, in words."""


_EXTENDED_FIND = Requirement(
    26, "1.12.5", "has_extended_find", "an index with extended find", "without extended find"
)
_LABELS = Requirement(
    20, "1.12.0", "stores_labels", "a database that stores labels", "without labels"
)


#: Features that an older server silently ignores instead of refusing: each is checked
#: against ``/system`` before anything is sent.
FEATURES: dict[str, Requirement] = {
    "RequestedTags": Requirement(17, "1.11.0"),
    "KeepLabels": Requirement(23, "1.12.3"),
    "Labels": _LABELS,
    "LabelsConstraint": _LABELS,
    "OrderBy": _EXTENDED_FIND,
    "MetadataQuery": _EXTENDED_FIND,
    "ParentPatient": _EXTENDED_FIND,
    "ParentStudy": _EXTENDED_FIND,
    "ParentSeries": _EXTENDED_FIND,
    "ResponseContent": _EXTENDED_FIND,
    "CountResources": Requirement(26, "1.12.5"),
    # 1.12.6's REST API version is not in the sources read here; 27 is assumed (26 + 1)
    "C-GET": Requirement(27, "1.12.6"),
    "numpy": Requirement(16, "1.10.0"),
}


class Change(BaseModel):
    """One entry of Orthanc's change feed (``GET /changes``)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    seq: int = Field(alias="Seq")
    """Sequence number: increases with every logged change."""
    change_type: str = Field(alias="ChangeType")
    """``NewInstance``, ``NewSeries``, ``StableStudy``, ``UpdatedMetadata``, ..."""
    resource_type: str = Field(alias="ResourceType")
    """``Patient``, ``Study``, ``Series`` or ``Instance``."""
    id: str = Field(alias="ID")
    """Orthanc ID of the resource."""
    path: str = Field(default="", alias="Path")
    """REST path of the resource."""
    date: OrthancTime = Field(default=None, alias="Date")
    """When the change was logged (server time, naive)."""


class ChangePage(BaseModel):
    """One page of the change feed."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    changes: tuple[Change, ...] = Field(default=(), alias="Changes")
    """The changes, oldest first."""
    done: bool = Field(default=True, alias="Done")
    """Whether this page reaches the end of the feed."""
    last: int = Field(default=0, alias="Last")
    """The sequence number to ask from next (``since=last``)."""


#: the request of :meth:`Server.bulk_json`, as errors name it
BULK_CONTENT = "POST /tools/bulk-content"
#: POST routes that change nothing on the server (everything else but GET may)
_READ_ONLY_POSTS = frozenset(
    {
        "/tools/find",
        "/tools/count-resources",
        "/tools/lookup",
        "/tools/bulk-content",
        "/tools/create-archive",
    }
)
_READ_ONLY_POST_ENDS = ("/echo", "/query")
#: how many writes were sent to each server URL in this process (see Server.write_epoch)
_write_epochs: dict[str, int] = {}
_write_epochs_lock = threading.Lock()


class Server:
    """One Orthanc server as the rest of the package sees it.

    Args:
        url: server URL; ``user:password@`` in it is moved into the credentials.
        auth: ``(user, password)`` for HTTP basic authentication.
        token: a bearer token instead of basic authentication.
        timeout: seconds, or ``(connect, read)`` seconds.
        retries: retries of requests that are safe to repeat.
        verify: TLS verification, as in :mod:`requests`.
        deadline: seconds for a whole call, retries included (by default the connect and
            read timeouts together, at least 30 s); downloads bound the wait for their first
            byte and each stall instead.
        max_answer_bytes: the largest answer (decoded) read into memory; a larger one is
            refused with :class:`~kkorthanc.errors.OrthancConnectionError`.
        compress: ask for gzip answers (``Accept-Encoding: gzip, deflate``) instead of
            identity: for a slow link; off by default, as decoding costs more than it saves
            on a fast one.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        verify: bool | str = True,
        deadline: float | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        compress: bool = False,
    ) -> None:
        self._transport = Transport(
            url,
            auth=auth,
            token=token,
            timeout=timeout,
            retries=retries,
            verify=verify,
            deadline=deadline,
            max_answer_bytes=max_answer_bytes,
            compress=compress,
        )
        self._system: SystemInfo | None = None
        self._system_lock = threading.Lock()

    # -- identity ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL, without credentials."""
        return self._transport.base_url

    @property
    def username(self) -> str | None:
        """The user name sent to the server, if any."""
        return self._transport.username

    @property
    def credentials_fingerprint(self) -> str:
        """A one-way digest of the credentials (caches keyed by server and user use it)."""
        return self._transport.fingerprint

    @property
    def request_count(self) -> int:
        """HTTP requests this client has sent (retries included): the cost of what it did."""
        return self._transport.request_count

    @property
    def last_request(self) -> str | None:
        """``METHOD /path`` of the request this client sent last, ``None`` before any."""
        return self._transport.last_request

    def close(self) -> None:
        """Close pooled connections."""
        self._transport.close()

    @property
    def write_epoch(self) -> int:
        """How many requests that may change data were sent to this server's URL by any
        client of this process; caches built from the server compare it to stay true."""
        return _write_epochs.get(self.url, 0)

    def _note(self, method: str, path: str) -> None:
        """Count a request that may change the server's data in :attr:`write_epoch`."""
        if method == "GET" or (
            method == "POST"
            and (path in _READ_ONLY_POSTS or path.endswith(_READ_ONLY_POST_ENDS))
        ):
            return
        with _write_epochs_lock:
            _write_epochs[self.url] = _write_epochs.get(self.url, 0) + 1

    # -- server info and gates -----------------------------------------------------------------

    @property
    def system(self) -> SystemInfo:
        """Server name, version and capabilities (``GET /system``), fetched once."""
        if self._system is None:
            with self._system_lock:
                if self._system is None:
                    answer = self.get_json("/system")
                    with reading("GET /system"):
                        system = expect_object(answer, "the system")
                        self._system = SystemInfo.model_validate(system)
        return self._system

    def supports(self, feature: str) -> bool:
        """Whether the server honours ``feature`` (a key of :data:`FEATURES`)."""
        need = FEATURES[feature]
        info = self.system
        if info.api_version < need.api_version:
            return False
        return need.capability is None or bool(getattr(info, need.capability))

    def require(self, feature: str) -> None:
        """Raise :class:`UnsupportedByServer` unless the server honours ``feature``.

        Every request field that an older Orthanc would silently ignore, or that a database
        without the capability would answer with an error, goes through here: the version
        AND the capability are checked, and the error names both.
        """
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(sorted(FEATURES))}")
        if not self.supports(feature):
            need = FEATURES[feature]
            info = self.system
            lacking = ""
            if need.capability is not None and info.api_version >= need.api_version:
                lacking = f"{info.index} {need.missing}"
            raise UnsupportedByServer(
                feature,
                need.orthanc,
                info.version,
                info.api_version,
                database=need.database,
                lacking=lacking,
            )

    @property
    def requested_tags_parameter(self) -> str:
        """The listing parameter for requested tags this server reads: ``requestedTags``
        (1.11.0 to 1.12.3), ``requested-tags`` (1.12.4 renamed it; the old name stays)."""
        return "requested-tags" if self.system.api_version >= 24 else "requestedTags"

    # -- requests ------------------------------------------------------------------------------

    def get_json(self, path: str, params: Params | None = None) -> Any:
        """``GET path`` and decode the JSON answer (``None`` if empty)."""
        return self._transport.get_json(path, params)

    def post_json(self, path: str, body: Any = None, *, repeatable: bool | None = None) -> Any:
        """``POST path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        self._note("POST", path)
        return self._transport.post_json(path, body, repeatable=repeatable)

    def put_json(self, path: str, body: Any = None) -> Any:
        """``PUT path`` with a JSON body and decode the JSON answer (``None`` if empty)."""
        self._note("PUT", path)
        return self._transport.put_json(path, body)

    def delete(self, path: str) -> Any:
        """``DELETE path`` and decode the answer (``None`` if empty)."""
        self._note("DELETE", path)
        return self._transport.delete(path)

    def send(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        params: Params | None = None,
        repeatable: bool | None = None,
    ) -> Reply:
        """Any request; the whole answer (status, headers, body). Error statuses raise."""
        self._note(method.upper(), path)
        return self._transport.request(
            method,
            path,
            data=data,
            json_body=json_body,
            headers=headers,
            params=params,
            repeatable=repeatable,
        )

    def get_bytes(self, path: str) -> bytes:
        """``GET path`` and return the raw body."""
        return self._transport.request("GET", path).content

    def post_bytes(
        self,
        path: str,
        data: Body,
        *,
        content_type: str | None = None,
        length: int | None = None,
        repeatable: bool | None = None,
    ) -> Reply:
        """``POST path`` with a raw body and return the whole answer.

        ``data`` is bytes, or a seekable binary file streamed from where it stands
        (``length`` bytes, by default up to its end; read again for each attempt).
        """
        self._note("POST", path)
        headers = {"Content-Type": content_type} if content_type else None
        return self._transport.request(
            "POST", path, data=data, length=length, headers=headers, repeatable=repeatable
        )

    def post_for_bytes(self, path: str, body: Any = None) -> bytes:
        """``POST path`` with a JSON body and return the raw answer (e.g. a modified file)."""
        self._note("POST", path)
        return self._transport.request("POST", path, json_body=body).content

    def download(
        self,
        method: str,
        path: str,
        sink: Callable[[Iterator[bytes]], _R],
        *,
        json_body: Any = None,
        long: bool = False,
    ) -> _R:
        """Stream an answer into ``sink``; a body broken midway is fetched again.

        See :meth:`kkorthanc._transport.Transport.download`.
        """
        return self._transport.download(method, path, sink, json_body=json_body, long=long)

    def channel(self) -> BinaryChannel:
        """A keep-alive connection of its own for one thread's stream of binary uploads
        (counted as a write in :attr:`write_epoch`: it exists to store files)."""
        self._note("POST", "/instances")
        return self._transport.channel()

    # -- paging ------------------------------------------------------------------------------

    def iter_listings(
        self,
        paths: Sequence[str],
        *,
        page_size: int = 1000,
        params: Params | None = None,
        prefetch: bool = False,
        named_by: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, list[Any]]]:
        """The raw JSON pages of expanded listings, one listing after another.

        ``GET path?expand&since=N&limit=page_size``: one request per page. With
        ``prefetch`` the requests are sent ahead of the caller, who decodes and reads the
        pages meanwhile; ``named_by`` lets them be sent without waiting for the decoding
        (see :meth:`kkorthanc._transport.Transport.iter_listings`).
        """
        return self._transport.iter_listings(
            paths, page_size=page_size, params=params, prefetch=prefetch, named_by=named_by
        )

    def iter_pages(
        self, path: str, *, page_size: int = 1000, params: Params | None = None
    ) -> Iterator[list[Any]]:
        """The raw JSON pages of one expanded listing (see :meth:`iter_listings`)."""
        for _, page in self.iter_listings([path], page_size=page_size, params=params):
            yield page

    def last_change(self) -> int:
        """The newest sequence number of the change feed (``GET /changes?last``), one request."""
        return self.feed_end().last

    def feed_end(self) -> ChangePage:
        """The end of the change feed (``GET /changes?last``), one request: ``last`` is the
        newest sequence number, ``changes`` holds its change when the feed still has it."""
        answer = self.get_json("/changes", {"last": ""})
        with reading("GET /changes?last"):
            return ChangePage.model_validate(expect_object(answer, "the change feed"))

    def changes(self, since: int = 0, limit: int = 1000) -> ChangePage:
        """One page of the change feed: the changes after sequence number ``since``.

        ``GET /changes?since=N&limit=M``, one request. Page on with ``since=page.last``
        until ``page.done``. Orthanc logs new, stable, modified and updated resources;
        it does not log deletions.
        """
        if since < 0 or limit < 1:
            raise ValueError(f"changes() needs since >= 0 and limit >= 1, not {since}, {limit}")
        answer = self.get_json("/changes", {"since": since, "limit": limit})
        with reading("GET /changes"):
            return ChangePage.model_validate(expect_object(answer, "the change feed"))

    def iter_changes(self, since: int = 0, page_size: int = 1000) -> Iterator[ChangePage]:
        """The change feed after ``since``, page by page, up to the page that says ``done``.

        ``GET /changes?since=N&limit=page_size``, one request per page; a page with no
        changes ends the feed too. The caller may stop early.
        """
        position = since
        while True:
            page = self.changes(position, page_size)
            yield page
            if page.done or not page.changes:
                return
            position = page.changes[-1].seq

    def iter_find(
        self, body: dict[str, Any], *, page_size: int = 1000, limit: int | None = None
    ) -> Iterator[list[Any]]:
        """Pages of ``POST /tools/find`` answers, ``Since``/``Limit`` set page by page.

        One request per page of ``page_size``, ending at a short page or at ``limit``
        resources in all.

        Raises:
            ValidationFailed: the server's answer is not a JSON list.
        """
        since = 0
        while True:
            want = page_size if limit is None else min(page_size, limit - since)
            page = self.post_json(
                "/tools/find", {**body, "Since": since, "Limit": want}, repeatable=True
            )
            with reading("POST /tools/find"):
                expect_list(page, "the resources found")
            yield page
            since += len(page)
            if len(page) < want or (limit is not None and since >= limit):
                return

    def bulk_json(
        self, ids: Iterable[str], *, level: str | None = None, chunk_size: int = 1000
    ) -> list[dict[str, Any]]:
        """Expanded JSON of many resources by Orthanc ID, in the order the server sends them.

        ``POST /tools/bulk-content`` (Orthanc 1.9.4+): one request per ``chunk_size`` IDs.
        IDs the server does not know are left out. ``level`` is Orthanc's level name
        (``"Patient"``, ...): each ID is then replaced by its ancestors or descendants of
        that level.
        """
        wanted = sorted(set(ids))  # sorted: the same request bodies every time
        found: list[dict[str, Any]] = []
        for part in chunks(wanted, max(1, chunk_size)):
            body: dict[str, Any] = {"Resources": list(part)}
            if level is not None:
                body["Level"] = level
            answer = self.post_json("/tools/bulk-content", body, repeatable=True)
            with reading(BULK_CONTENT):
                items = expect_list(answer or [], "the resources")
                found.extend(expect_object(item, "a resource") for item in items)
        return found


__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_TIMEOUT",
    "FEATURES",
    "BinaryChannel",
    "Capabilities",
    "Change",
    "ChangePage",
    "Reply",
    "Requirement",
    "Server",
    "SystemInfo",
    "Timeout",
    "checked_statistics",
    "chunks",
    "path_segment",
]


_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def checked_statistics(answer: Any, request: str) -> dict[str, Any]:
    """The answer of a ``/statistics`` route, checked: counts (``Count...``) are integers,
    sizes (``...Size``, sent as strings of digits since they can exceed 32 bits) are digits,
    megabytes (``...MB``) are numbers.

    Raises:
        ValidationFailed: a value of another kind, naming ``request``.
    """
    with reading(request):
        stats = expect_object(answer, "the statistics")
        for key, value in stats.items():
            if key.startswith("Count"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif key.endswith("Size"):
                ok = (isinstance(value, str) and value.isdigit()) or type(value) is int
            elif key.endswith("MB"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                continue
            if not ok:
                raise ValidationFailed(f"{key} is {kind_of(value)}, not a number")
    return stats


def path_segment(value: str, what: str) -> str:
    """``value`` if it is safe as one segment of a REST path (an Orthanc ID, a job ID, ...).

    Raises:
        InvalidRequest: it would change the path (``/``, ``..``, ``?``, ``%``, spaces...), so
            it cannot be what ``what`` names; nothing is sent.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise InvalidRequest(f"not a valid {what}: {value!r}")
    return value


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """Split a sequence into slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
