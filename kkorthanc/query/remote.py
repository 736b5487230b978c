"""Queries sent to the server: ``POST /tools/find``, or the level listing when nothing filters.

Requests go through the :class:`~kkorthanc.server.Server` methods ``iter_find``,
``iter_pages`` and ``require``; the query itself is compiled by :mod:`.compile`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._answers import expect_object, reading
from ..errors import QueryError
from ..models import Resource, Study, level_class
from ..server import BULK_CONTENT
from ..tags import TAG_NUMBERS, tag_keyword
from .compile import COMPUTED_TAGS, CompiledQuery, compile_query, labels_filter

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["server_find"]

R = TypeVar("R", bound=Resource)


def server_find(
    client: Server,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    limit: int | None = None,
    case_sensitive: bool = False,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    requested_tags: Iterable[str] | None = None,
    page_size: int = 1000,
    **tags: Any,
) -> list[Any]:
    """Resources of ``level`` that match, from the server, as typed models sorted by Orthanc ID.

    ``POST /tools/find`` with ``Expand``, in pages of ``page_size`` (``Since``/``Limit``): one
    request per page. A query that filters nothing goes through the paged level listing
    instead (``GET /{level}?expand``): a server configured with ``LimitFindResults`` silently
    truncates ``/tools/find`` answers, and paging them with ``Since`` then gives wrong pages.

    Args:
        client: the server.
        level, query, case_sensitive, **tags: as in :func:`compile_query`.
        limit: at most this many resources: the first ones in the server's order.
        labels: only resources with these labels (Orthanc 1.12.0+).
        labels_constraint: ``All`` (default on the server), ``Any`` or ``None`` of ``labels``
            (Orthanc 1.12.0+).
        requested_tags: tags to add to the server's answer (Orthanc 1.11.0+).
        page_size: resources per request.

    Raises:
        QueryError, UnknownKeyword: the query is refused before anything is sent.
        UnsupportedByServer: labels or requested tags on a server too old to honour them
            (it would silently ignore them and answer unfiltered).
    """
    compiled = compile_query(level, query, case_sensitive=case_sensitive, **tags)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise QueryError(f"limit must be a positive integer, not {limit!r}")
    if page_size < 1:
        raise QueryError(f"page_size must be a positive integer, not {page_size!r}")
    label_names, constraint = labels_filter(labels, labels_constraint)
    extra: dict[str, Any] = {}
    if labels is not None:
        client.require("Labels")
        extra["Labels"] = label_names
    if constraint is not None:
        client.require("LabelsConstraint")
        extra["LabelsConstraint"] = constraint
    wanted: list[str] = []
    if requested_tags is not None:
        client.require("RequestedTags")
        wanted = [_resolve_requested(name) for name in requested_tags]
        extra["RequestedTags"] = wanted

    cls = level_class(compiled.level)
    found: list[Resource]
    if compiled.is_universal and not label_names:
        found = list(itertools.islice(_listing(client, cls, wanted, limit, page_size), limit))
    elif compiled.computed and client.system.api_version < _COMPUTED_PER_STUDY:
        found = list(_studies_by_series(client, compiled, extra, limit, page_size))
    else:
        found = list(_find_pages(client, cls, compiled, extra, limit, page_size))
    found.sort(key=lambda r: r.id)
    return found


def _resolve_requested(name: object) -> str:
    # any tag is allowed here: the server looks it up in its own dictionary
    return tag_keyword(name, where="requested_tags: ", error=QueryError)


def _listing(
    client: Server, cls: type[R], wanted: list[str], limit: int | None, page_size: int
) -> Iterator[R]:
    size = min(page_size, limit) if limit is not None else page_size
    path = f"/{cls.collection}"
    if wanted:
        # the name this version reads, and a literal ";": 1.12.3 splits the raw value on
        # ";" before decoding it, so an encoded separator is one unknown tag to it
        path += f"?{client.requested_tags_parameter}={';'.join(wanted)}"
    for page in client.iter_pages(path, page_size=size):
        with reading(f"GET {path}"):
            models = [cls.from_orthanc(item, client) for item in page]
        yield from models


#: The REST API version (1.11.0) from which Orthanc checks ``ModalitiesInStudy`` study by
#: study; before, it collapses studies sharing a StudyInstanceUID and pages wrongly.
_COMPUTED_PER_STUDY = 17


def _studies_by_series(
    client: Server,
    compiled: CompiledQuery,
    extra: dict[str, Any],
    limit: int | None,
    page_size: int,
) -> list[Study]:
    """A ``ModalitiesInStudy`` query asked as Orthanc 1.10 would, but study by study.

    Orthanc 1.10 turns it into a series query on ``Modality`` and then merges the series of
    studies that share a StudyInstanceUID (across patients) into one answer, and its
    ``Since``/``Limit`` count studies wrongly. The same series query is sent here, paged
    like any other, and the parent studies are fetched with ``POST /tools/bulk-content``.
    """
    query = compiled.request_query()
    for _, number, source in COMPUTED_TAGS.values():
        if number in query:
            query[TAG_NUMBERS[source]] = query.pop(number)
    body: dict[str, Any] = {
        "Level": "Series",
        "Query": dict(sorted(query.items())),
        "Expand": True,
        "CaseSensitive": compiled.case_sensitive,
        **extra,
    }
    study_ids: dict[str, None] = {}
    for page in client.iter_find(body, page_size=page_size):
        with reading("POST /tools/find"):
            for item in page:
                study_ids[expect_object(item, "a series")["ParentStudy"]] = None
        if limit is not None and len(study_ids) >= limit:
            break
    wanted = list(study_ids)[:limit]
    data = client.bulk_json(wanted)
    with reading(BULK_CONTENT):
        return [Study.from_orthanc(item, client) for item in data]


def _find_pages(
    client: Server,
    cls: type[R],
    compiled: CompiledQuery,
    extra: dict[str, Any],
    limit: int | None,
    page_size: int,
) -> Iterator[R]:
    body: dict[str, Any] = {
        "Level": compiled.level,
        "Query": compiled.request_query(),
        "Expand": True,
        "CaseSensitive": compiled.case_sensitive,
        **extra,
    }
    for page in client.iter_find(body, page_size=page_size, limit=limit):
        with reading("POST /tools/find"):
            models = [cls.from_orthanc(item, client) for item in page]
        yield from models
