"""The ``/tools/find`` fields of Orthanc 1.12.5: sort keys, metadata filters, a parent, content.

``OrderBy``, ``MetadataQuery``, ``ParentPatient``/``ParentStudy``/``ParentSeries`` and
``ResponseContent`` exist from Orthanc 1.12.5 (REST API 26), on an index with extended find
(``/system`` says ``HasExtendedFind``). An older server ignores them and answers as if they
were not there: unsorted, unfiltered. So each one is checked here, turned into the request
field, and named as a feature of :data:`~kkorthanc.server.FEATURES` that the caller requires
before anything is sent. The facts behind the checks are in ``docs/server-facts.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ..errors import InvalidRequest, QueryError
from ..metadata import _check_name
from ..models import Resource, level_class
from ..tags import tag_keyword
from .compile import COMPUTED_TAGS, queryable_tags
from .local import _ORTHANC_ID

__all__ = [
    "RESPONSE_CONTENT",
    "ExtendedFields",
    "OrderBy",
    "Parent",
    "SortKeys",
    "extended_fields",
    "response_content",
]

#: What ``ResponseContent`` may ask for (Orthanc 1.12.5); ``ID`` and ``Type`` always come.
#: ``IsProtected`` is left out: it needs 1.12.8, whose REST API version is not known here.
RESPONSE_CONTENT = (
    "MainDicomTags",
    "Metadata",
    "Children",
    "Parent",
    "Labels",
    "Attachments",
    "Status",
    "IsStable",
    "RequestedTags",
)
_CONTENT_NAMES = {name.lower(): name for name in RESPONSE_CONTENT}


@dataclass(frozen=True)
class OrderBy:
    """One sort key of a find (Orthanc's ``OrderBy``, 1.12.5+), by a main DICOM tag or a
    metadata of the resources.

    ``OrderBy("StudyDate")``, ``OrderBy(metadata="my-metadata", descending=True)``. A tag is
    named as everywhere in kkorthanc (keyword, snake_case or number); it must be a main DICOM
    tag of the find's level or of a level above. ``numeric`` compares numbers instead of text:
    a tag as an integer (``DicomTagAsInt``), a metadata as a decimal (``MetadataAsFloat``).
    Resources without the value come last.
    """

    tag: str | None = None
    """The DICOM keyword of the tag to sort on (set from any spelling of it)."""
    _: KW_ONLY
    metadata: str | None = None
    """The name (or index) of the metadata to sort on, instead of a tag."""
    descending: bool = False
    """Largest first."""
    numeric: bool = False
    """Compare as numbers, not as text."""

    def __post_init__(self) -> None:
        if (self.tag is None) == (self.metadata is None):
            raise QueryError(
                "OrderBy takes a tag or metadata=name, exactly one of them "
                f"(got tag={self.tag!r}, metadata={self.metadata!r})"
            )
        for name in ("descending", "numeric"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise QueryError(f"OrderBy: {name} must be True or False, not {value!r}")
        if self.tag is not None:
            keyword = tag_keyword(self.tag, where="OrderBy: ", error=QueryError)
            object.__setattr__(self, "tag", keyword)
        else:
            _metadata_name(self.metadata, "OrderBy")

    @property
    def request(self) -> dict[str, str]:
        """The item of Orthanc's ``OrderBy`` list: ``{"Type", "Key", "Direction"}``."""
        if self.tag is not None:
            kind, key = ("DicomTagAsInt" if self.numeric else "DicomTag"), self.tag
        else:
            assert self.metadata is not None
            kind, key = ("MetadataAsFloat" if self.numeric else "Metadata"), self.metadata
        return {"Type": kind, "Key": key, "Direction": "DESC" if self.descending else "ASC"}


#: what ``order_by`` takes: one sort key or several, each an :class:`OrderBy` or a tag name
SortKeys = OrderBy | str | Iterable[OrderBy | str]
#: what ``parent`` takes: a model, or ``(level, Orthanc ID)``
Parent = Resource | tuple[str, str]


@dataclass(frozen=True)
class ExtendedFields:
    """The checked 1.12.5 fields of one find: the request fields and the features they need."""

    fields: dict[str, Any]
    """``OrderBy``, ``MetadataQuery``, ``Parent<Level>``: only those that were given."""
    features: tuple[str, ...]
    """Keys of :data:`~kkorthanc.server.FEATURES` to require before sending."""

    @property
    def ordered(self) -> bool:
        """Whether the server sorts the answer (its order is then the result's)."""
        return "OrderBy" in self.fields


def extended_fields(
    level: str,
    *,
    order_by: SortKeys | None = None,
    metadata: Mapping[str, str] | None = None,
    parent: Parent | None = None,
) -> ExtendedFields:
    """Check a find's sort keys, metadata filters and parent against its ``level``.

    Args:
        level: the level of the resources found.
        order_by: sort keys, first the most significant; a plain string is a tag sorted
            ascending (``"StudyDate"`` is ``OrderBy("StudyDate")``).
        metadata: metadata name -> pattern the value must match (``*`` and ``?`` are
            wildcards), Orthanc's ``MetadataQuery``.
        parent: only descendants of this resource: a model, or ``(level, Orthanc ID)``.

    Raises:
        QueryError: the message names the argument and what is wrong with it.
    """
    cls = level_class(level)
    fields: dict[str, Any] = {}
    if order_by is not None:
        fields["OrderBy"] = [key.request for key in _sort_keys(cls.level, order_by)]
    if metadata is not None:
        fields["MetadataQuery"] = _metadata_query(metadata)
    if parent is not None:
        name, parent_id = _parent(cls.level, parent)
        fields[name] = parent_id
    return ExtendedFields(fields, tuple(fields))


def response_content(names: Iterable[str]) -> list[str]:
    """Orthanc's ``ResponseContent``: the canonical names, in the order of
    :data:`RESPONSE_CONTENT`, any case taken. An empty list asks for ``ID`` and ``Type`` only.

    Raises:
        QueryError: a name Orthanc does not know, or a single string instead of a list.
    """
    if isinstance(names, str):
        raise QueryError(f"response_content must be a list of names, not one string {names!r}")
    wanted: set[str] = set()
    for name in names:
        canonical = _CONTENT_NAMES.get(name.lower()) if isinstance(name, str) else None
        if canonical is None:
            raise QueryError(
                f"response_content: {name!r} is not a part of Orthanc's answer; "
                f"choose among {', '.join(RESPONSE_CONTENT)}"
            )
        wanted.add(canonical)
    return [name for name in RESPONSE_CONTENT if name in wanted]


def _sort_keys(level: str, order_by: SortKeys) -> list[OrderBy]:
    items = [order_by] if isinstance(order_by, (OrderBy, str)) else list(order_by)
    if not items:
        raise QueryError("order_by is empty: give at least one OrderBy, or leave it out")
    allowed = queryable_tags(level)
    keys: list[OrderBy] = []
    for item in items:
        key = OrderBy(item) if isinstance(item, str) else item
        if not isinstance(key, OrderBy):
            raise QueryError(f"order_by takes OrderBy objects or tag names, not {item!r}")
        if key.tag is not None and (key.tag not in allowed or key.tag in COMPUTED_TAGS):
            raise QueryError(
                f"order_by: {key.tag} is not a main DICOM tag of a {level.lower()} or of a "
                "level above; the server sorts on the tags it indexes only"
            )
        if key in keys:
            raise QueryError(f"order_by: {key} is given twice")
        keys.append(key)
    return keys


def _metadata_name(name: object, where: str) -> str:
    try:
        return _check_name(name, "metadata")  # type: ignore[arg-type]
    except InvalidRequest as exc:
        raise QueryError(f"{where}: {exc}") from None


def _metadata_query(metadata: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise QueryError(f"metadata must map metadata names to patterns, not {metadata!r}")
    if not metadata:
        raise QueryError("metadata is empty: give {name: pattern}, or leave it out")
    query: dict[str, str] = {}
    for name, pattern in metadata.items():
        _metadata_name(name, "metadata")
        if not isinstance(pattern, str) or not pattern:
            raise QueryError(
                f"metadata: the pattern for {name!r} must be a non-empty string (* and ? are "
                f"wildcards), not {pattern!r}"
            )
        query[name] = pattern
    return dict(sorted(query.items()))


def _parent(level: str, parent: Parent) -> tuple[str, str]:
    """The request field and Orthanc ID restricting a find of ``level`` to descendants."""
    if isinstance(parent, Resource):
        owner, parent_id = type(parent), parent.id
    elif isinstance(parent, tuple) and len(parent) == 2 and all(isinstance(p, str) for p in parent):
        try:
            owner = level_class(parent[0])
        except ValueError as exc:
            raise QueryError(f"parent: {exc}") from None
        parent_id = parent[1]
    else:
        raise QueryError(
            f"parent must be a resource or a (level, Orthanc ID) pair, not {parent!r}"
        )
    if not _ORTHANC_ID.fullmatch(parent_id):
        raise QueryError(f"parent: {parent_id!r} is not an Orthanc ID")
    depth = level_class(level).depth
    if owner.depth >= depth:
        raise QueryError(
            f"parent: a {owner.level.lower()} holds no {level.lower()}; a parent must be of a "
            "level above the one found"
        )
    return f"Parent{owner.level}", parent_id
