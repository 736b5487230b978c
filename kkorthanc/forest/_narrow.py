"""Narrowing a find through the identifier indexes, for the forest in memory and in a file.

An equality or a list on an identifier (PatientID, StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID at their level, AccessionNumber on studies) can only match resources whose
identifier has the normalized key of one of the values (Orthanc's index compares identifiers
normalized: :func:`~kkorthanc.query.engine.normalize_identifier`). :func:`keyed_constraints`
reads those constraints out of a query; the forest looks their keys up in its indexes (a
dict in memory, a column of the file), and :class:`Scope` holds the resources found with
their ancestors and descendants. :func:`~kkorthanc.query.local_find` then runs the whole
query on the scope alone, so the answers stay those of a full scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..models import Instance, Patient, Resource, Series, Study, level_class
from ._file import identifier_key

if TYPE_CHECKING:
    from .model import PatientForest
    from .state import _State

#: keyword arguments of ``find`` that are not DICOM tags
NOT_TAGS = frozenset({"labels", "labels_constraint", "requested_tags"})


class Keyed(NamedTuple):
    """One constraint an index can answer: the level, the index, the keys of its values."""

    cls: type[Resource]
    column: str  # "uid" (the level's identifier) or "accession" (studies)
    keys: frozenset[str]


def keyed_constraints(
    level: str,
    query: dict[str, Any] | None,
    case_sensitive: bool,
    tags: dict[str, Any],
    levels: Sequence[type[Resource]],
) -> list[Keyed]:
    """The constraints of a find that an identifier index narrows (empty: none)."""
    from .. import query as _query

    plain = {k: v for k, v in tags.items() if k not in NOT_TAGS}
    try:
        compiled = _query.compile_query(level, query, case_sensitive=case_sensitive, **plain)
    except Exception:  # the same error comes again from the full find, with its context
        return []
    found: list[Keyed] = []
    for check in compiled.constraints:
        if check.kind not in ("equal", "list"):
            continue
        cls = level_class(check.level)
        if check.keyword == cls.uid_keyword:
            column = "uid"
        elif check.keyword == "AccessionNumber" and cls is Study:
            column = "accession"
        else:
            continue
        if cls not in levels:
            continue
        keys = {identifier_key(v) for v in check.values}
        if not all(keys):  # a value the index normalizes to nothing matches too much
            continue
        found.append(Keyed(cls, column, frozenset(k for k in keys if k)))
    return found


def memory_anchors(state: _State, keyed: list[Keyed]) -> list[Resource] | None:
    """The resources the in-memory indexes name for the most selective constraint
    (``None``: no constraint uses an index, the whole forest is searched)."""
    best: tuple[int, int, list[Resource]] | None = None
    for cls, column, keys in keyed:
        index = state.accession if column == "accession" else state.uids[cls]
        found = index.candidates(sorted(keys))
        rank = (len(found), -cls.depth)  # as few as may be; the deepest has the least below it
        if best is None or rank < best[:2]:
            best = (*rank, found)
    return None if best is None else best[2]


class Scope:
    """Resources a find can match, with their ancestors and descendants (a ``ForestLike``).

    Built from anchors (resources of any level): each anchor's chain of parents, the anchor,
    and everything linked below it. A query whose constraints all hold on a resource only if
    one of the anchors is that resource, an ancestor or a descendant of it, gets the same
    answer from the scope as from the whole forest.
    """

    def __init__(self, forest: PatientForest, anchors: Iterable[Resource]) -> None:
        self.depth = forest.depth
        self.client = forest.client
        dialect = getattr(forest, "dialect", None)
        if dialect is not None:
            self.dialect = dialect
        linked = len(forest._state.levels)
        levels: list[dict[str, Any]] = [{}, {}, {}, {}]
        below: list[Resource] = []
        for anchor in anchors:
            depth = type(anchor).depth
            if anchor.id in levels[depth - 1]:
                continue
            levels[depth - 1][anchor.id] = anchor
            below.append(anchor)
            parent = anchor.linked_parent()
            while parent is not None and parent.id not in levels[type(parent).depth - 1]:
                levels[type(parent).depth - 1][parent.id] = parent
                parent = parent.linked_parent()
        for obj in below:  # grows while it is read
            depth = type(obj).depth
            if depth < linked:
                for child in obj.linked_children() or ():
                    if child.id not in levels[depth]:
                        levels[depth][child.id] = child
                        below.append(child)
        self.patients: list[Patient] = list(levels[0].values())
        self.studies: list[Study] = list(levels[1].values())
        self.series: list[Series] = list(levels[2].values())
        self.instances: list[Instance] = list(levels[3].values())

    @property
    def examined(self) -> int:
        """Resources in the scope, all levels."""
        return len(self.patients) + len(self.studies) + len(self.series) + len(self.instances)


def search(
    forest: PatientForest,
    level: str,
    query: dict[str, Any] | None,
    case_sensitive: bool,
    tags: dict[str, Any],
    anchors: list[Resource] | None,
) -> list[Any]:
    """``find`` on the scope of ``anchors`` (on the whole forest when ``None``)."""
    from .. import query as _query

    target: Any = forest if anchors is None else Scope(forest, anchors)
    found: list[Any] = _query.local_find(
        target, level, query, case_sensitive=case_sensitive, **tags
    )
    return found
