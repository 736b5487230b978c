"""The :class:`Orthanc` facade: typed listings, lookups and the entry points users call.

The wire-level part (requests, paging, the change feed, capability gates) is the
:class:`~kkorthanc.server.Server` this class extends; this module turns answers into typed
models and hands the rest to the modules that own each operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._answers import expect_list, expect_object, reading
from .metadata import all_labels
from .models import (
    Instance,
    InstanceLevel,
    Patient,
    PatientLevel,
    Resource,
    Series,
    SeriesLevel,
    Study,
    StudyLevel,
    group,
    level_class,
)
from .server import (
    BULK_CONTENT,
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_TIMEOUT,
    FEATURES,
    Capabilities,
    Requirement,
    Server,
    SystemInfo,
    Timeout,
    checked_statistics,
    chunks,
    path_segment,
)
from .transfer import DEFAULT_LAYOUT, DEFAULT_MAX_CONSECUTIVE_FAILURES
from .transfer.progress import ProgressOption

if TYPE_CHECKING:
    from .jobs import Job
    from .modalities import Modality
    from .query.extended import Parent, SortKeys
    from .transfer import ExportReport, UploadReport

R = TypeVar("R", bound=Resource)


class Orthanc(Server):
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
        deadline: seconds for a whole call, retries included (default: the timeouts
            together, at least 30 s); see :class:`~kkorthanc.server.Server`.
        max_answer_bytes: the largest answer read into memory (default 256 MiB).
        compress: ask for gzip answers instead of identity, for a slow link (off by
            default: on a fast one decoding costs more than it saves).

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
        deadline: float | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        compress: bool = False,
    ) -> None:
        if url is None:
            url = os.environ.get("ORTHANC_URL") or "http://localhost:8042"
        if auth is None and token is None:
            user = os.environ.get("ORTHANC_USERNAME")
            password = os.environ.get("ORTHANC_PASSWORD")
            if user is not None and password is not None:
                auth = (user, password)
        super().__init__(
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

    # -- plumbing ---------------------------------------------------------------------------

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        who = f" user={self.username!r}" if self.username else ""
        return f"<Orthanc {self.url}{who}>"

    # -- server info and gates -----------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counts and disk usage of the whole server (``GET /statistics``), one request."""
        return checked_statistics(self.get_json("/statistics"), "GET /statistics")

    # -- listings ------------------------------------------------------------------------------

    def iter_resources(
        self, cls: type[R], *, page_size: int = 1000, prefetch: bool = False
    ) -> Iterator[R]:
        """Every resource of one level from the paged expanded listing.

        ``GET /{level}?expand&since=N&limit=page_size``: one request per page.
        """
        for _, page in self.iter_listing_pages([cls], page_size=page_size, prefetch=prefetch):
            with reading(f"GET /{cls.collection}"):
                models = [cls.from_orthanc(item, self) for item in page]
            yield from models

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
        for path, page in self.iter_listings(
            list(by_path), page_size=page_size, prefetch=prefetch
        ):
            yield by_path[path], page

    def patients(self, *, page_size: int = 1000) -> list[Patient]:
        """All patients, expanded: one request per page of ``page_size``. Walking their
        relations loads each level for all of them at once (see :meth:`find`)."""
        return _grouped(list(self.iter_resources(Patient, page_size=page_size)))

    def studies(self, *, page_size: int = 1000) -> list[Study]:
        """All studies, expanded: one request per page of ``page_size``; relations load
        for all of them at once."""
        return _grouped(list(self.iter_resources(Study, page_size=page_size)))

    @overload
    def series(self, id: str) -> Series: ...
    @overload
    def series(self, *, page_size: int = 1000) -> list[Series]: ...
    def series(self, id: str | None = None, *, page_size: int = 1000) -> Series | list[Series]:
        """All series (paged, one request per page), or with an ID the one series
        (``GET /series/{id}``)."""
        if id is not None:
            return self._get_resource(Series, id)
        return _grouped(list(self.iter_resources(Series, page_size=page_size)))

    def instances(self, *, page_size: int = 1000) -> list[Instance]:
        """All instances, expanded: one request per page of ``page_size``; relations load
        for all of them at once."""
        return _grouped(list(self.iter_resources(Instance, page_size=page_size)))

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
        reply = self.post_bytes(
            "/tools/lookup", value.encode("utf-8"), repeatable=True
        )
        matches: list[tuple[type[Resource], str]] = []
        with reading("POST /tools/lookup"):
            for match in expect_list(reply.json() or [], "the matches"):
                cls = level_class(expect_object(match, "a match")["Type"])
                matches.append((cls, path_segment(match["ID"], f"{cls.level.lower()} ID")))
        return [self._get_resource(cls, id) for cls, id in matches]

    def _get_resource(self, cls: type[R], id: str) -> R:
        return cls.fetch(self, id)

    # -- entry points to other modules -------------------------------------------------------------

    @overload
    def find(
        self,
        level: PatientLevel,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Patient]: ...
    @overload
    def find(
        self,
        level: StudyLevel,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Study]: ...
    @overload
    def find(
        self,
        level: SeriesLevel,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Series]: ...
    @overload
    def find(
        self,
        level: InstanceLevel,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Instance]: ...
    @overload
    def find(
        self,
        level: type[R],
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[R]: ...
    @overload
    def find(
        self,
        level: str,
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Resource]: ...
    def find(
        self,
        level: str | type[Resource],
        query: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[Any]:
        """Resources matching DICOM tags (``POST /tools/find``); see :mod:`kkorthanc.query`.

        ``level`` is a level name (``"study"``, ``"Study"``, ``"studies"``) or a model class;
        the result is typed by it: ``find("study", ...)`` is a ``list[Study]``.

        The results are loaded together: when one of them loads a relation (``.series``,
        ``.patient``), all of them do, with ``POST /tools/bulk-content`` (one request per
        1,000), so a find and a walk down to instances costs a request per level, not
        one per resource.

        Orthanc 1.12.5 and later, on an index with extended find, also take ``order_by``
        (sort keys: :class:`~kkorthanc.query.OrderBy` objects or tag names; the result then
        keeps the server's order instead of Orthanc IDs'), ``metadata`` (``{name: pattern}``)
        and ``parent`` (a resource, or ``(level, Orthanc ID)``, whose descendants are found).
        Older servers would ignore them, so they are refused there with
        :class:`~kkorthanc.errors.UnsupportedByServer` before anything is sent.
        """
        from . import query as _query

        request = _query.FindRequest.of(
            level,
            query,
            limit=limit,
            case_sensitive=case_sensitive,
            order_by=order_by,
            metadata=metadata,
            parent=parent,
            **tags,
        )
        return _grouped(_query.server_find(self, request))

    def find_json(
        self,
        level: str | type[Resource],
        query: dict[str, Any] | None = None,
        *,
        response_content: Iterable[str] | None = None,
        limit: int | None = None,
        case_sensitive: bool = False,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> list[dict[str, Any]]:
        """The server's JSON answers to a find (``POST /tools/find``), in its order, one
        request per 1,000; see :func:`kkorthanc.query.server_find_json`.

        ``response_content`` (Orthanc 1.12.5+ with extended find) names the parts each answer
        holds besides ``ID`` and ``Type`` (``["Metadata", "Attachments"]``, ...). Such trimmed
        answers cannot fill the typed models, which is why :meth:`find` never asks for them.
        """
        from . import query as _query

        request = _query.FindRequest.of(
            level,
            query,
            limit=limit,
            case_sensitive=case_sensitive,
            order_by=order_by,
            metadata=metadata,
            parent=parent,
            **tags,
        )
        return _query.server_find_json(self, request, response_content)

    def count(
        self,
        level: str | type[Resource],
        query: dict[str, Any] | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        **tags: Any,
    ) -> int:
        """How many resources match (``POST /tools/count-resources``, Orthanc 1.12.5+), one
        request; the query as in :meth:`find`, ``labels=`` too, without ``case_sensitive``
        (the server refuses it in a count). See :func:`kkorthanc.query.server_count`.
        """
        from . import query as _query

        request = _query.FindRequest.for_count(
            level, query, metadata=metadata, parent=parent, **tags
        )
        return _query.server_count(self, request)

    def upload(
        self,
        source: Any,
        *,
        workers: int = 4,
        progress: ProgressOption = "auto",
    ) -> UploadReport:
        """Upload files, folders, archives or datasets; see :func:`kkorthanc.transfer.upload`."""
        from . import transfer

        return transfer.upload(self, source, workers=workers, progress=progress)

    def export(
        self,
        resources: Iterable[Resource] | Resource,
        folder: str | Path,
        *,
        layout: str = DEFAULT_LAYOUT,
        workers: int = 4,
        progress: ProgressOption = "auto",
        max_consecutive_failures: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ) -> ExportReport:
        """Write instances to a folder tree; see :func:`kkorthanc.transfer.export`."""
        from . import transfer

        return transfer.export(
            self,
            resources,
            Path(folder),
            layout=layout,
            workers=workers,
            progress=progress,
            max_consecutive_failures=max_consecutive_failures,
        )

    def labels(self) -> tuple[str, ...]:
        """Every label in use on the server (``GET /tools/labels``), one request.

        Needs Orthanc 1.12.0 and a database that stores labels (refused before sending
        otherwise, with :class:`~kkorthanc.errors.UnsupportedByServer`).
        """
        return all_labels(self)

    def delete_many(self, resources: Iterable[Resource | str]) -> None:
        """Delete many resources of any levels (``POST /tools/bulk-delete``), one request."""
        from . import jobs as _jobs

        _jobs.delete_many(self, resources)

    def modify_many(
        self,
        resources: Iterable[Resource | str],
        *,
        as_job: bool = False,
        level: str | None = None,
        **options: Any,
    ) -> list[Resource] | Job:
        """Modify many resources in one call (``POST /tools/bulk-modify``): the new resources
        (two requests), or the job with ``as_job=True``; options as :meth:`Resource.modify`."""
        from . import jobs as _jobs

        return _jobs.transform_many(
            self, "modify", resources, as_job=as_job, level=level, **options
        )

    def anonymize_many(
        self,
        resources: Iterable[Resource | str],
        *,
        as_job: bool = False,
        level: str | None = None,
        **options: Any,
    ) -> list[Resource] | Job:
        """Anonymize many resources in one call (``POST /tools/bulk-anonymize``): the new
        resources (two requests), or the job with ``as_job=True``; options as
        :meth:`Resource.anonymize`."""
        from . import jobs as _jobs

        return _jobs.transform_many(
            self, "anonymize", resources, as_job=as_job, level=level, **options
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

    # -- bulk reads ----------------------------------------------------------------------------

    def get_many(
        self, ids: Iterable[str], *, level: str | None = None, chunk_size: int = 1000
    ) -> list[Resource]:
        """Many resources by Orthanc ID, of any levels, expanded.

        ``POST /tools/bulk-content`` (Orthanc 1.9.4+): one request per ``chunk_size`` IDs.
        IDs the server does not know are left out, so the answer may be shorter than
        ``ids``. With ``level``, each ID is replaced by its ancestors or descendants of that
        level (an instance ID and ``level="patient"`` give its patient).
        """
        data = self.bulk_json(
            ids, level=level_class(level).level if level else None, chunk_size=chunk_size
        )
        with reading(BULK_CONTENT):
            found = [level_class(item["Type"]).from_orthanc(item, self) for item in data]
        return _grouped(found)


_L = TypeVar("_L", bound=list[Any])


def _grouped(resources: _L) -> _L:
    """``resources``, made siblings that load their relations together (see :func:`group`)."""
    group(resources)
    return resources


__all__ = [
    "FEATURES",
    "Capabilities",
    "Orthanc",
    "Requirement",
    "SystemInfo",
    "chunks",
]
