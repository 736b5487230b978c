"""The :class:`Orthanc` facade: server info, capability gates, listings, lookups, entry points.

Everything that goes over the wire passes through :class:`kkorthanc._transport.Transport`;
this module turns answers into typed models.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field

from ._transport import DEFAULT_TIMEOUT, Timeout, Transport
from .errors import UnsupportedByServer
from .models import Instance, Patient, Resource, Series, Study, level_class

if TYPE_CHECKING:
    from .forest import ChangePage
    from .jobs import Job
    from .modalities import Modality
    from .transfer import ExportReport, UploadReport

R = TypeVar("R", bound=Resource)


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


class Requirement(NamedTuple):
    """What a feature needs: a minimum REST API version and optionally a capability."""

    api_version: int
    orthanc: str
    capability: str | None = None


#: Features that an older server silently ignores instead of refusing: each is checked
#: against ``/system`` before anything is sent.
FEATURES: dict[str, Requirement] = {
    "RequestedTags": Requirement(17, "1.11.0"),
    "Labels": Requirement(20, "1.12.0"),
    "LabelsConstraint": Requirement(20, "1.12.0"),
    "OrderBy": Requirement(26, "1.12.5 with an extended-find database", "has_extended_find"),
    "MetadataQuery": Requirement(26, "1.12.5 with an extended-find database", "has_extended_find"),
    "ParentPatient": Requirement(26, "1.12.5 with an extended-find database", "has_extended_find"),
    "ParentStudy": Requirement(26, "1.12.5 with an extended-find database", "has_extended_find"),
    "ParentSeries": Requirement(26, "1.12.5 with an extended-find database", "has_extended_find"),
    "ResponseContent": Requirement(
        26, "1.12.5 with an extended-find database", "has_extended_find"
    ),
    "numpy": Requirement(16, "1.10.0"),
}


class Orthanc:
    """A client for one Orthanc server.

    Args:
        url: server URL; defaults to ``$ORTHANC_URL`` (then ``http://localhost:8042``).
            ``user:password@`` in the URL is taken as credentials and removed from it.
        auth: ``(user, password)`` for HTTP basic authentication; defaults to
            ``$ORTHANC_USERNAME`` / ``$ORTHANC_PASSWORD`` when both are set.
        token: a bearer token instead of basic authentication.
        timeout: seconds, or ``(connect, read)`` seconds.
        retries: retries of requests that are safe to repeat (GET, ``POST /instances``) after
            a dropped connection, a 502/503/504, or a storage file Orthanc could not write.
        verify: TLS verification, as in :mod:`requests`.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        verify: bool | str = True,
    ) -> None:
        if url is None:
            url = os.environ.get("ORTHANC_URL") or "http://localhost:8042"
        if auth is None and token is None:
            user = os.environ.get("ORTHANC_USERNAME")
            password = os.environ.get("ORTHANC_PASSWORD")
            if user is not None and password is not None:
                auth = (user, password)
        self._transport = Transport(
            url, auth=auth, token=token, timeout=timeout, retries=retries, verify=verify
        )
        self._system: SystemInfo | None = None
        self._system_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL, without credentials."""
        return self._transport.base_url

    @property
    def username(self) -> str | None:
        """The user name sent to the server, if any."""
        return self._transport.username

    @property
    def request_count(self) -> int:
        """HTTP requests this client has sent (retries included): the cost of what it did."""
        return self._transport.request_count

    def close(self) -> None:
        """Close pooled connections."""
        self._transport.close()

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        who = f" user={self.username!r}" if self.username else ""
        return f"<Orthanc {self.url}{who}>"

    # -- server info and gates -----------------------------------------------------------------

    @property
    def system(self) -> SystemInfo:
        """Server name, version and capabilities (``GET /system``), fetched once."""
        if self._system is None:
            with self._system_lock:
                if self._system is None:
                    self._system = SystemInfo.model_validate(self._transport.get_json("/system"))
        return self._system

    def supports(self, feature: str) -> bool:
        """Whether the server honours ``feature`` (a key of :data:`FEATURES`)."""
        need = FEATURES[feature]
        info = self.system
        if info.api_version < need.api_version:
            return False
        return need.capability is None or bool(getattr(info.capabilities, need.capability))

    def require(self, feature: str) -> None:
        """Raise :class:`UnsupportedByServer` unless the server honours ``feature``.

        Every request field that an older Orthanc would silently ignore goes through here.
        """
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(sorted(FEATURES))}")
        if not self.supports(feature):
            need = FEATURES[feature]
            info = self.system
            raise UnsupportedByServer(feature, need.orthanc, info.version, info.api_version)

    def statistics(self) -> dict[str, Any]:
        """Counts and disk usage of the whole server (``GET /statistics``), one request."""
        result: dict[str, Any] = self._transport.get_json("/statistics")
        return result

    # -- listings ------------------------------------------------------------------------------

    def iter_resources(
        self, cls: type[R], *, page_size: int = 1000, prefetch: bool = False
    ) -> Iterator[R]:
        """Every resource of one level from the paged expanded listing.

        ``GET /{level}?expand&since=N&limit=page_size``: one request per page.
        """
        for _, page in self.iter_listing_pages([cls], page_size=page_size, prefetch=prefetch):
            for item in page:
                yield cls.from_orthanc(item, self)

    def iter_listing_pages(
        self,
        levels: Sequence[type[Resource]],
        *,
        page_size: int = 1000,
        prefetch: bool = False,
    ) -> Iterator[tuple[type[Resource], list[Any]]]:
        """The raw JSON pages of several levels' expanded listings, level after level.

        ``GET /{level}?expand&since=N&limit=page_size``: one request per page. With
        ``prefetch`` the next page is on its way while the caller reads the current one,
        across level boundaries too.
        """
        by_path = {f"/{cls.collection}": cls for cls in levels}
        for path, page in self._transport.iter_listings(
            list(by_path), page_size=page_size, prefetch=prefetch
        ):
            yield by_path[path], page

    def patients(self, *, page_size: int = 1000) -> list[Patient]:
        """All patients, expanded: one request per page of ``page_size``."""
        return list(self.iter_resources(Patient, page_size=page_size))

    def studies(self, *, page_size: int = 1000) -> list[Study]:
        """All studies, expanded: one request per page of ``page_size``."""
        return list(self.iter_resources(Study, page_size=page_size))

    @overload
    def series(self, id: str) -> Series: ...
    @overload
    def series(self, *, page_size: int = 1000) -> list[Series]: ...
    def series(self, id: str | None = None, *, page_size: int = 1000) -> Series | list[Series]:
        """All series (paged, one request per page), or with an ID the one series
        (``GET /series/{id}``)."""
        if id is not None:
            return self._get_resource(Series, id)
        return list(self.iter_resources(Series, page_size=page_size))

    def instances(self, *, page_size: int = 1000) -> list[Instance]:
        """All instances, expanded: one request per page of ``page_size``."""
        return list(self.iter_resources(Instance, page_size=page_size))

    def patient(self, id: str) -> Patient:
        """One patient by Orthanc ID (``GET /patients/{id}``)."""
        return self._get_resource(Patient, id)

    def study(self, id: str) -> Study:
        """One study by Orthanc ID (``GET /studies/{id}``)."""
        return self._get_resource(Study, id)

    def instance(self, id: str) -> Instance:
        """One instance by Orthanc ID (``GET /instances/{id}``)."""
        return self._get_resource(Instance, id)

    def get(self, level: str, id: str) -> Resource:
        """One resource of any level by Orthanc ID."""
        return self._get_resource(level_class(level), id)

    def lookup(self, value: str) -> list[Resource]:
        """Resources whose PatientID or UID equals ``value``.

        ``POST /tools/lookup``, then one ``GET`` per match (usually one).
        """
        response = self._transport.request(
            "POST", "/tools/lookup", data=value.encode("utf-8"), repeatable=True
        )
        matches = response.json() if response.content else []
        found: list[Resource] = []
        for match in matches:
            cls = level_class(str(match["Type"]))
            found.append(self._get_resource(cls, str(match["ID"])))
        return found

    def _get_resource(self, cls: type[R], id: str) -> R:
        return cls.from_orthanc(self._transport.get_json(f"/{cls.collection}/{id}"), self)

    def _children(self, parent: Resource, cls: type[R], route: str) -> list[R]:
        data = self._transport.get_json(f"{parent.path}/{route}")
        return [cls.from_orthanc(item, self) for item in data]

    # -- entry points to other modules -------------------------------------------------------------

    def find(
        self,
        level: str,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Any]:
        """Resources matching DICOM tags (``POST /tools/find``); see :mod:`kkorthanc.query`."""
        from . import query as _query

        return _query.server_find(
            self, level, query, limit=limit, case_sensitive=case_sensitive, **tags
        )

    def upload(
        self,
        source: Any,
        *,
        workers: int = 4,
        progress: bool = True,
    ) -> UploadReport:
        """Upload files, folders, archives or datasets; see :func:`kkorthanc.transfer.upload`."""
        from . import transfer

        return transfer.upload(self, source, workers=workers, progress=progress)

    def export(
        self,
        resources: Iterable[Resource] | Resource,
        folder: str | Path,
        *,
        layout: str = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        workers: int = 4,
        progress: bool = True,
    ) -> ExportReport:
        """Write instances to a folder tree; see :func:`kkorthanc.transfer.export`."""
        from . import transfer

        return transfer.export(
            self, resources, Path(folder), layout=layout, workers=workers, progress=progress
        )

    def jobs(self) -> list[Job]:
        """All jobs the server knows (``GET /jobs?expand``), one request."""
        from . import jobs as _jobs

        return _jobs.list_jobs(self)

    def job(self, id: str) -> Job:
        """One job by ID (``GET /jobs/{id}``)."""
        from . import jobs as _jobs

        return _jobs.get_job(self, id)

    def modalities(self) -> list[Modality]:
        """The DICOM modalities configured on the server (``GET /modalities?expand``)."""
        from . import modalities as _modalities

        return _modalities.list_modalities(self)

    def modality(self, name: str) -> Modality:
        """One configured modality by its name on the server."""
        from . import modalities as _modalities

        return _modalities.get_modality(self, name)

    # -- change feed and bulk reads ----------------------------------------------------------------

    def last_change(self) -> int:
        """The newest sequence number of the change feed (``GET /changes?last``), one request."""
        answer = self._transport.get_json("/changes", {"last": ""})
        return int(answer.get("Last") or 0) if isinstance(answer, dict) else 0

    def changes(self, since: int = 0, limit: int = 1000) -> ChangePage:
        """One page of the change feed: the changes after sequence number ``since``.

        ``GET /changes?since=N&limit=M``, one request. Page on with ``since=page.last``
        until ``page.done``. Orthanc logs new, stable, modified and updated resources;
        it does not log deletions.
        """
        from .forest import ChangePage

        if since < 0 or limit < 1:
            raise ValueError(f"changes() needs since >= 0 and limit >= 1, not {since}, {limit}")
        answer = self._transport.get_json("/changes", {"since": since, "limit": limit})
        return ChangePage.model_validate(answer)

    def get_many(
        self, ids: Iterable[str], *, level: str | None = None, chunk_size: int = 1000
    ) -> list[Resource]:
        """Many resources by Orthanc ID, of any levels, expanded.

        ``POST /tools/bulk-content`` (Orthanc 1.9.4+): one request per ``chunk_size`` IDs.
        IDs the server does not know are left out, so the answer may be shorter than
        ``ids``. With ``level``, each ID is replaced by its ancestors or descendants of that
        level (an instance ID and ``level="patient"`` give its patient).
        """
        return [
            level_class(str(item.get("Type"))).from_orthanc(item, self)
            for item in self._bulk_json(ids, level=level, chunk_size=chunk_size)
        ]

    def _bulk_json(
        self, ids: Iterable[str], *, level: str | None = None, chunk_size: int = 1000
    ) -> list[dict[str, Any]]:
        """Expanded JSON of many resources, in the order the server sends them (see get_many)."""
        wanted = sorted(set(ids))  # sorted: the same request bodies every time
        found: list[dict[str, Any]] = []
        for part in chunks(wanted, max(1, chunk_size)):
            body: dict[str, Any] = {"Resources": list(part)}
            if level is not None:
                body["Level"] = level_class(level).level
            answer = self._transport.post_json("/tools/bulk-content", body, repeatable=True)
            found.extend(item for item in answer or () if isinstance(item, dict))
        return found


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """Split a sequence into slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
