"""Queries sent to the server: ``POST /tools/find``, or the level listing when nothing filters;
``POST /tools/count-resources`` for counts.

Requests go through the :class:`~kkorthanc.server.Server` methods ``iter_find``,
``iter_pages`` and ``require``; what is asked arrives checked, as a
:class:`~kkorthanc.query.request.FindRequest`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .._answers import expect_object, reading
from ..errors import QueryError, ValidationFailed
from ..models import Resource, Study, level_class
from ..server import BULK_CONTENT
from ..tags import TAG_NUMBERS
from .compile import COMPUTED_TAGS
from .extended import response_content

if TYPE_CHECKING:
    from ..server import Server
    from .request import FindRequest

__all__ = ["server_count", "server_find", "server_find_json"]

R = TypeVar("R", bound=Resource)


def server_find(client: Server, request: FindRequest) -> list[Any]:
    """Resources that match ``request``, from the server, as typed models sorted by Orthanc
    ID (or in the order its ``order_by`` asks the server for).

    ``POST /tools/find`` with ``Expand``, in pages of ``page_size`` (``Since``/``Limit``): one
    request per page. A query that filters nothing goes through the paged level listing
    instead (``GET /{level}?expand``): a server configured with ``LimitFindResults`` silently
    truncates ``/tools/find`` answers, and paging them with ``Since`` then gives wrong pages.
    With ``order_by`` the result keeps the server's order, and a query that filters nothing
    still goes through ``/tools/find`` (the listing cannot sort).

    Args:
        client: the server.
        request: the find, its arguments checked (see
            :meth:`~kkorthanc.query.FindRequest.of`).

    Raises:
        UnsupportedByServer: labels, requested tags, sort keys, metadata patterns or a parent
            on a server too old to honour them (it would silently ignore them and answer
            unfiltered or unsorted); nothing is sent (``GET /system`` aside).
    """
    _require(client, request)
    compiled = request.query
    cls = level_class(compiled.level)
    found: list[Resource]
    if compiled.is_universal and not request.labels and not request.extended.fields:
        found = list(itertools.islice(_listing(client, cls, request), request.limit))
    elif compiled.computed and client.system.api_version < _COMPUTED_PER_STUDY:
        found = list(_studies_by_series(client, request))
    else:
        found = list(_find_pages(client, cls, request))
    if not request.extended.ordered:
        found.sort(key=lambda r: r.id)
    return found


def server_find_json(
    client: Server, request: FindRequest, response_content: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The server's own JSON answers to a find, in the server's order: ``POST /tools/find``,
    one request per page of ``page_size``, always (never the listing).

    With ``response_content`` (Orthanc 1.12.5+ with extended find) each answer holds ``ID``,
    ``Type`` and only the parts named (see
    :data:`~kkorthanc.query.extended.RESPONSE_CONTENT`); such answers may lack what the
    typed models need, which is why :func:`server_find` never asks for them. Without it, the
    answers are expanded as ``Expand`` gives them.

    Raises:
        QueryError, UnsupportedByServer: as :func:`server_find`, or a part of
            ``response_content`` that Orthanc does not know, before anything is sent.
        ValidationFailed: an answer is not a JSON object.
    """
    _require(client, request)
    content = None if response_content is None else _response_content(client, response_content)
    body = request.body(**({"Expand": True} if content is None else {"ResponseContent": content}))
    answers: list[dict[str, Any]] = []
    for page in client.iter_find(body, page_size=request.page_size, limit=request.limit):
        with reading("POST /tools/find"):
            answers.extend(expect_object(item, "a resource found") for item in page)
    return answers


def server_count(client: Server, request: FindRequest) -> int:
    """How many resources match ``request`` (made by
    :meth:`~kkorthanc.query.FindRequest.for_count`): ``POST /tools/count-resources``
    (Orthanc 1.12.5+), one request, whatever the count.

    The body is the one :func:`server_find` sends, without ``Expand``, ``Since`` and
    ``Limit`` (the server ignores them in a count).

    Raises:
        QueryError: ``ModalitiesInStudy``, which the server computes in a find only.
        UnsupportedByServer: the server is older than 1.12.5, or metadata patterns or a parent
            need extended find that its index lacks; nothing is sent.
        ValidationFailed: the answer holds no count.
    """
    client.require("CountResources")
    _require(client, request)
    compiled = request.query
    if compiled.computed:
        raise QueryError(
            f"count() cannot filter on {compiled.computed[0].keyword}: Orthanc computes it "
            "from the children in a find, not in /tools/count-resources; take len(find(...)) "
            "instead"
        )
    answer = client.post_json("/tools/count-resources", request.body(), repeatable=True)
    count = answer.get("Count") if isinstance(answer, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        shown = repr(answer)[:80]
        raise ValidationFailed(
            f"no count in the answer {shown}", request="POST /tools/count-resources"
        )
    return count


def _require(client: Server, request: FindRequest) -> None:
    """Refuse, before sending, the fields of ``request`` that the server would ignore."""
    for feature in request.features:
        client.require(feature)


def _response_content(client: Server, names: Iterable[str]) -> list[str]:
    content = response_content(names)
    client.require("ResponseContent")
    return content


def _listing(client: Server, cls: type[R], request: FindRequest) -> Iterator[R]:
    limit = request.limit
    size = min(request.page_size, limit) if limit is not None else request.page_size
    path = f"/{cls.collection}"
    if request.requested_tags:
        # the name this version reads, and a literal ";": 1.12.3 splits the raw value on
        # ";" before decoding it, so an encoded separator is one unknown tag to it
        path += f"?{client.requested_tags_parameter}={';'.join(request.requested_tags)}"
    for page in client.iter_pages(path, page_size=size):
        with reading(f"GET {path}"):
            models = [cls.from_orthanc(item, client) for item in page]
        yield from models


#: The REST API version (1.11.0) from which Orthanc checks ``ModalitiesInStudy`` study by
#: study; before, it collapses studies sharing a StudyInstanceUID and pages wrongly.
_COMPUTED_PER_STUDY = 17


def _studies_by_series(client: Server, request: FindRequest) -> list[Study]:
    """A ``ModalitiesInStudy`` query asked as Orthanc 1.10 would, but study by study.

    Orthanc 1.10 turns it into a series query on ``Modality`` and then merges the series of
    studies that share a StudyInstanceUID (across patients) into one answer, and its
    ``Since``/``Limit`` count studies wrongly. The same series query is sent here, paged
    like any other, and the parent studies are fetched with ``POST /tools/bulk-content``.
    """
    query = request.query.request_query()
    for _, number, source in COMPUTED_TAGS.values():
        if number in query:
            query[TAG_NUMBERS[source]] = query.pop(number)
    body = {**request.body(Expand=True), "Level": "Series", "Query": dict(sorted(query.items()))}
    limit = request.limit
    study_ids: dict[str, None] = {}
    for page in client.iter_find(body, page_size=request.page_size):
        with reading("POST /tools/find"):
            for item in page:
                study_ids[expect_object(item, "a series")["ParentStudy"]] = None
        if limit is not None and len(study_ids) >= limit:
            break
    wanted = list(study_ids)[:limit]
    data = client.bulk_json(wanted)
    with reading(BULK_CONTENT):
        return [Study.from_orthanc(item, client) for item in data]


def _find_pages(client: Server, cls: type[R], request: FindRequest) -> Iterator[R]:
    body = request.body(Expand=True)
    for page in client.iter_find(body, page_size=request.page_size, limit=request.limit):
        with reading("POST /tools/find"):
            models = [cls.from_orthanc(item, client) for item in page]
        yield from models
