"""Queries sent to the server: ``POST /tools/find``, or the level listing when nothing filters;
``POST /tools/count-resources`` for counts.

Requests go through the :class:`~kkorthanc.server.Server` methods ``iter_find``,
``iter_pages`` and ``require``; the query itself is compiled by :mod:`.compile`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._answers import expect_object, reading
from ..errors import QueryError, ValidationFailed
from ..models import Resource, Study, level_class
from ..server import BULK_CONTENT
from ..tags import TAG_NUMBERS, tag_keyword
from .compile import COMPUTED_TAGS, CompiledQuery, compile_query, labels_filter
from .extended import ExtendedFields, Parent, SortKeys, extended_fields, response_content

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["server_count", "server_find", "server_find_json"]

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
    order_by: SortKeys | None = None,
    metadata: Mapping[str, str] | None = None,
    parent: Parent | None = None,
    page_size: int = 1000,
    **tags: Any,
) -> list[Any]:
    """Resources of ``level`` that match, from the server, as typed models sorted by Orthanc ID
    (or in the order ``order_by`` asks the server for).

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
        order_by, metadata, parent: sort keys, metadata patterns and the resource whose
            descendants are found (Orthanc 1.12.5+ with extended find); see
            :func:`~kkorthanc.query.extended.extended_fields`. With ``order_by`` the result
            keeps the server's order, and a query that filters nothing still goes through
            ``/tools/find`` (the listing cannot sort).
        page_size: resources per request.

    Raises:
        QueryError, UnknownKeyword: the query is refused before anything is sent.
        UnsupportedByServer: labels, requested tags, sort keys, metadata patterns or a parent
            on a server too old to honour them (it would silently ignore them and answer
            unfiltered or unsorted).
    """
    compiled, extra, wanted, extended = _prepare(
        client, level, query, case_sensitive, limit, page_size, labels, labels_constraint,
        requested_tags, order_by, metadata, parent, tags,
    )
    cls = level_class(compiled.level)
    found: list[Resource]
    if compiled.is_universal and not extra.get("Labels") and not extended.fields:
        found = list(itertools.islice(_listing(client, cls, wanted, limit, page_size), limit))
    elif compiled.computed and client.system.api_version < _COMPUTED_PER_STUDY:
        found = list(_studies_by_series(client, compiled, extra, limit, page_size))
    else:
        found = list(_find_pages(client, cls, compiled, extra, limit, page_size))
    if not extended.ordered:
        found.sort(key=lambda r: r.id)
    return found


def server_find_json(
    client: Server,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    response_content: Iterable[str] | None = None,
    limit: int | None = None,
    case_sensitive: bool = False,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    requested_tags: Iterable[str] | None = None,
    order_by: SortKeys | None = None,
    metadata: Mapping[str, str] | None = None,
    parent: Parent | None = None,
    page_size: int = 1000,
    **tags: Any,
) -> list[dict[str, Any]]:
    """The server's own JSON answers to a find, in the server's order: ``POST /tools/find``,
    one request per page of ``page_size``, always (never the listing).

    With ``response_content`` (Orthanc 1.12.5+ with extended find) each answer holds ``ID``,
    ``Type`` and only the parts named (see
    :data:`~kkorthanc.query.extended.RESPONSE_CONTENT`); such answers may lack what the
    typed models need, which is why :func:`server_find` never asks for them. Without it, the
    answers are expanded as ``Expand`` gives them. Other arguments as :func:`server_find`.

    Raises:
        QueryError, UnknownKeyword, UnsupportedByServer: as :func:`server_find`, before
            anything is sent.
        ValidationFailed: an answer is not a JSON object.
    """
    compiled, extra, _, _ = _prepare(
        client, level, query, case_sensitive, limit, page_size, labels, labels_constraint,
        requested_tags, order_by, metadata, parent, tags,
    )
    content = None if response_content is None else _response_content(client, response_content)
    body: dict[str, Any] = {
        "Level": compiled.level,
        "Query": compiled.request_query(),
        **({"Expand": True} if content is None else {"ResponseContent": content}),
        "CaseSensitive": compiled.case_sensitive,
        **extra,
    }
    answers: list[dict[str, Any]] = []
    for page in client.iter_find(body, page_size=page_size, limit=limit):
        with reading("POST /tools/find"):
            answers.extend(expect_object(item, "a resource found") for item in page)
    return answers


def server_count(
    client: Server,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    metadata: Mapping[str, str] | None = None,
    parent: Parent | None = None,
    case_sensitive: bool = False,
    **tags: Any,
) -> int:
    """How many resources of ``level`` match: ``POST /tools/count-resources`` (Orthanc
    1.12.5+), one request, whatever the count.

    The body is the one :func:`server_find` sends, without ``Expand``, ``Since`` and
    ``Limit`` (the server ignores them in a count) and with ``CaseSensitive: false``: the
    server refuses ``CaseSensitive: true`` in a count, so ``case_sensitive`` is only there
    to be refused. Arguments as :func:`server_find`.

    Raises:
        QueryError, UnknownKeyword: the query is refused before anything is sent
            (``case_sensitive=True`` and ``ModalitiesInStudy`` too).
        UnsupportedByServer: the server is older than 1.12.5, or metadata patterns or a parent
            need extended find that its index lacks; nothing is sent.
        ValidationFailed: the answer holds no count.
    """
    if case_sensitive is not False:
        raise QueryError(
            "count() cannot match case-sensitively: Orthanc refuses CaseSensitive in "
            "/tools/count-resources; take len(find(...)) instead"
        )
    compiled, extra, _, _ = _prepare(
        client, level, query, False, None, 1, labels, labels_constraint, None, None,
        metadata, parent, tags, needs=("CountResources",),
    )
    if compiled.computed:
        raise QueryError(
            f"count() cannot filter on {compiled.computed[0].keyword}: Orthanc computes it "
            "from the children in a find, not in /tools/count-resources; take len(find(...)) "
            "instead"
        )
    body: dict[str, Any] = {
        "Level": compiled.level,
        "Query": compiled.request_query(),
        "CaseSensitive": False,
        **extra,
    }
    answer = client.post_json("/tools/count-resources", body, repeatable=True)
    count = answer.get("Count") if isinstance(answer, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        shown = repr(answer)[:80]
        raise ValidationFailed(
            f"no count in the answer {shown}", request="POST /tools/count-resources"
        )
    return count


def _prepare(
    client: Server,
    level: str,
    query: Mapping[str, Any] | None,
    case_sensitive: bool,
    limit: int | None,
    page_size: int,
    labels: Iterable[str] | None,
    labels_constraint: str | None,
    requested_tags: Iterable[str] | None,
    order_by: SortKeys | None,
    metadata: Mapping[str, str] | None,
    parent: Parent | None,
    tags: dict[str, Any],
    needs: tuple[str, ...] = (),
) -> tuple[CompiledQuery, dict[str, Any], list[str], ExtendedFields]:
    """The compiled query, the request fields besides it, the requested tags and the 1.12.5
    fields: every argument checked, then the features of ``needs`` and of the fields given
    required, before anything is sent (``GET /system`` aside)."""
    compiled = compile_query(level, query, case_sensitive=case_sensitive, **tags)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise QueryError(f"limit must be a positive integer, not {limit!r}")
    if page_size < 1:
        raise QueryError(f"page_size must be a positive integer, not {page_size!r}")
    label_names, constraint = labels_filter(labels, labels_constraint)
    extended = extended_fields(compiled.level, order_by=order_by, metadata=metadata, parent=parent)
    for feature in needs:
        client.require(feature)
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
    for feature in extended.features:
        client.require(feature)
    extra.update(extended.fields)
    return compiled, extra, wanted, extended


def _response_content(client: Server, names: Iterable[str]) -> list[str]:
    content = response_content(names)
    client.require("ResponseContent")
    return content


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
