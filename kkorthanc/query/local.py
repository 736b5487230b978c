"""Queries answered from a forest in memory: :func:`local_find`, no request.

The forest is anything shaped like :class:`ForestLike` (the patient forest, a test's lists);
an optional ``lookup`` index answers equalities on a level's identifier.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import QueryError
from ..models import LEVEL_CLASSES, LEVELS, Resource, level_class
from .compile import LabelsConstraint, compile_query, labels_filter

if TYPE_CHECKING:
    from ..models import Instance, Level, Patient, Series, Study
    from .engine import Constraint

__all__ = ["ForestLike", "local_find"]


class ForestLike(Protocol):
    """What :func:`local_find` needs: the resources of each level, linked to their parents."""

    @property
    def patients(self) -> Sequence[Patient]: ...
    @property
    def studies(self) -> Sequence[Study]: ...
    @property
    def series(self) -> Sequence[Series]: ...
    @property
    def instances(self) -> Sequence[Instance]: ...


def _linked_parent_id(resource: Resource) -> str | None:
    """The Orthanc ID of the parent linked in memory, when the plain field lacks it."""
    parent = resource.linked_parent()
    return parent.id if parent is not None else None


def _check_depth(forest: ForestLike, cls: type[Resource]) -> None:
    """Refuse a level that the forest does not hold (it would answer "nothing")."""
    depth = getattr(forest, "depth", None)
    held = LEVEL_CLASSES.get(depth.lower()) if isinstance(depth, str) else None
    if held is not None and held.depth < cls.depth:
        raise QueryError(
            f"the forest was built with depth={depth!r} and holds no {cls.level.lower()} "
            f"level: build it with depth={cls.level.lower()!r}, or use client.find"
        )


_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")


def _indexable(value: str, case_sensitive: bool) -> bool:
    """Whether every stored value matching ``value`` is found by an exact index lookup.

    Padding would be stripped by the index and an Orthanc ID is looked up as such. Without
    case sensitivity, a value with letters also matches other spellings; a value made of
    ASCII digits and punctuation only matches itself (no other character upper-cases to one).
    """
    if not value or value != value.strip(" \t\r\n\x00") or _ORTHANC_ID.fullmatch(value):
        return False
    return case_sensitive or (value.isascii() and not any(c.isalpha() for c in value))


def _indexed_candidates(
    forest: ForestLike, cls: type[Resource], checks: Sequence[Constraint]
) -> list[Resource] | None:
    """The resources an index lookup finds for an equality on the level's identifier.

    They are a superset of the matches (every check still runs on them); ``None`` when the
    forest has no ``lookup`` or no check allows it.
    """
    lookup = getattr(forest, "lookup", None)
    if not callable(lookup):
        return None
    uid_keyword = cls.uid_keyword
    for check in checks:
        if (
            check.keyword == uid_keyword
            and check.kind in ("equal", "list")
            and all(_indexable(v, check.case_sensitive) for v in check.values)
        ):
            found: dict[str, Resource] = {}
            for value in check.values:
                for resource in lookup(value):
                    if type(resource) is cls:
                        found[resource.id] = resource
            return list(found.values())
    return None


def local_find(
    forest: ForestLike,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    case_sensitive: bool = False,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    requested_tags: Iterable[str] | None = None,
    **tags: Any,
) -> list[Any]:
    """Resources of ``level`` in ``forest`` that match, sorted by Orthanc ID. No request.

    The rules are those of :func:`~kkorthanc.query.server_find` (same arguments, same
    refusals), applied to the main DICOM tags the forest holds; upper-level tags are read
    through the parent links (``study.patient``), which cost nothing in a forest. Labels are
    applied locally to the labels the forest's resources carry (none from servers older than
    1.12).

    Raises:
        QueryError, UnknownKeyword: as :func:`compile_query`; also for ``requested_tags``,
            which only shape a server's answer.
    """
    if requested_tags is not None:
        raise QueryError(
            "requested_tags shape a server's answer; a forest holds main DICOM tags only: "
            "use client.find(..., requested_tags=...)"
        )
    compiled = compile_query(level, query, case_sensitive=case_sensitive, **tags)
    label_names, constraint = labels_filter(labels, labels_constraint)
    target = level_class(compiled.level)
    _check_depth(forest, target)
    by_level: dict[Level, list[Constraint]] = {}
    for c in compiled.constraints:
        by_level.setdefault(c.level, []).append(c)

    # Filter from the highest constrained level down: at each level keep the resources whose
    # parent was kept, then apply that level's constraints, one pass each (tens of thousands
    # of resources: the loops stay flat, class variables read once per level).
    top = min((level_class(lvl).depth for lvl in by_level), default=target.depth)
    passing: set[str] | None = None
    selected: list[Resource] = []
    for cls in LEVELS[top - 1 : target.depth]:
        checks = by_level.get(cls.level, [])
        items: Sequence[Resource] | None = _indexed_candidates(forest, cls, checks)
        if items is None:
            items = getattr(forest, cls.collection)
        field = cls.parent_field
        if passing is not None and field is not None:
            # the plain field holding the parent's Orthanc ID: reading it costs no link
            parent_id: Callable[[Resource], str | None] = operator.attrgetter(field)
            linked_id = _linked_parent_id
            kept = passing
            items = [r for r in items if (parent_id(r) or linked_id(r)) in kept]
        for check in checks:
            matches, keyword = check.matches, check.keyword
            items = [r for r in items if matches(r.main_dicom_tags.get(keyword))]
        if cls is target:
            selected = list(items)
        else:
            passing = {r.id for r in items}
    if label_names:
        selected = [r for r in selected if _labels_ok(r.labels, label_names, constraint)]
    selected.sort(key=lambda r: r.id)
    return selected


def _labels_ok(have: Sequence[str], wanted: list[str], constraint: LabelsConstraint | None) -> bool:
    present = set(have)
    if constraint == "Any":
        return any(label in present for label in wanted)
    if constraint == "None":
        return not any(label in present for label in wanted)
    return all(label in present for label in wanted)
