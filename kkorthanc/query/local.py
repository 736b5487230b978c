"""Queries answered from a forest in memory: :func:`local_find`, no request.

The forest is anything shaped like :class:`ForestLike` (the patient forest, a test's lists);
an optional ``lookup`` index answers equalities on a level's identifier. Where Orthanc
versions and index backends answer differently, the answers follow the server the forest
came from (its ``client.system``, read once and only when the query needs it), or the
forest's ``dialect`` when it has one.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import QueryError
from ..models import LEVEL_CLASSES, LEVELS, Patient, Resource, Series, Study, level_class
from .compile import COMPUTED_TAGS, LabelsConstraint, compile_query, labels_filter
from .engine import DEFAULT_DIALECT, Dialect

if TYPE_CHECKING:
    from ..models import Instance, Level
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


#: Where a check reads a resource's tags: its own main tags, or (a study's) copy of the
#: patient tags, which Orthanc matches below the Patient level.
_OWN = "main_dicom_tags"
_PATIENT_COPY = "patient_main_dicom_tags"


def _linked_parent_id(resource: Resource) -> str | None:
    """The Orthanc ID of the parent linked in memory, when the plain field lacks it."""
    parent = resource.linked_parent()
    return parent.id if parent is not None else None


def _held(forest: ForestLike) -> type[Resource] | None:
    depth = getattr(forest, "depth", None)
    return LEVEL_CLASSES.get(depth.lower()) if isinstance(depth, str) else None


def _check_depth(forest: ForestLike, cls: type[Resource]) -> None:
    """Refuse a level that the forest does not hold (it would answer "nothing")."""
    held = _held(forest)
    if held is not None and held.depth < cls.depth:
        raise QueryError(
            f"the forest was built with depth={forest.depth!r} and holds no "  # type: ignore[attr-defined]
            f"{cls.level.lower()} level: build it with depth={cls.level.lower()!r}, or use "
            "client.find"
        )


class _Dialect:
    """The dialect of the forest's server, looked up the first time a query needs it."""

    def __init__(self, forest: ForestLike) -> None:
        self.forest = forest
        self._found: Dialect | None = None

    def get(self) -> Dialect:
        if self._found is None:
            self._found = _dialect_of(self.forest)
        return self._found


def _dialect_of(forest: ForestLike) -> Dialect:
    explicit = getattr(forest, "dialect", None)
    if isinstance(explicit, Dialect):
        return explicit
    client = getattr(forest, "client", None)
    if client is None or not hasattr(type(client), "system"):
        return DEFAULT_DIALECT
    return Dialect.of(client.system)  # GET /system once per client, then cached


class _Children:
    """Children of a level's resources: the links in memory, or one grouping pass."""

    def __init__(self, forest: ForestLike, cls: type[Resource]) -> None:
        self.forest = forest
        self.cls = cls
        self._grouped: dict[str, list[Resource]] | None = None

    def __call__(self, parent: Resource) -> Sequence[Resource]:
        linked = parent.linked_children()
        if linked is not None:
            return linked
        if self._grouped is None:
            field = self.cls.parent_field
            assert field is not None
            parent_id = operator.attrgetter(field)
            grouped: dict[str, list[Resource]] = {}
            for child in getattr(self.forest, self.cls.collection):
                key = parent_id(child) or _linked_parent_id(child)
                if key is not None:
                    grouped.setdefault(key, []).append(child)
            self._grouped = grouped
        return self._grouped.get(parent.id, ())


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


def _index_lookup(
    forest: ForestLike, cls: type[Resource], keyword: str, checks: Iterable[Constraint]
) -> list[Resource] | None:
    """The resources of ``cls`` an index lookup finds for an equality on ``keyword``.

    They are a superset of the matches (every check still runs on them); ``None`` when the
    forest has no ``lookup`` or no check allows it.
    """
    lookup = getattr(forest, "lookup", None)
    if not callable(lookup):
        return None
    for check in checks:
        if (
            check.keyword == keyword
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

    The rules are those of :func:`~kkorthanc.query.server_find` (the same query arguments
    and refusals), applied to the main DICOM tags the forest holds. As on the server, below the
    Patient level the patient tags are those stored with each study (``Study.
    patient_main_dicom_tags``), and a patient-level query checks the patient's own tags,
    then the copy stored with one of its studies (which one depends on the index: see
    ``docs/matching.md``). ``ModalitiesInStudy`` is computed from the study's series. Labels
    are applied locally to the labels the forest's resources carry (none from servers older
    than 1.12).

    Requests: none, except ``GET /system`` (once per client) when the answer depends on the
    server's index: non-ASCII text without case on a tag that is not an identifier, or a
    patient whose studies carry different patient tags.

    Raises:
        QueryError, UnknownKeyword: as :func:`compile_query`; also for ``requested_tags``,
            which only shape a server's answer, and for ``ModalitiesInStudy`` on a forest
            without series.
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
    dialect = _Dialect(forest)
    if compiled.depends_on_index:
        compiled = compiled.for_dialect(dialect.get())

    # Each check reads the resource's own main tags, or below the Patient level the study's
    # copy of the patient tags (Orthanc's NormalizeLookup moves those constraints there).
    by_level: dict[Level, list[tuple[Constraint, str]]] = {}
    computed: list[Constraint] = []
    for c in compiled.constraints:
        if c.keyword in COMPUTED_TAGS:
            computed.append(c)
        elif c.level == Patient.level and target is not Patient:
            by_level.setdefault(Study.level, []).append((c, _PATIENT_COPY))
        else:
            by_level.setdefault(c.level, []).append((c, _OWN))
    if computed:
        _check_computed_depth(forest, computed[0])
        by_level.setdefault(Study.level, [])

    # Filter from the highest constrained level down: at each level keep the resources whose
    # parent was kept, then apply that level's constraints, one pass each (tens of thousands
    # of resources: the loops stay flat, class variables read once per level).
    top = min((level_class(lvl).depth for lvl in by_level), default=target.depth)
    passing: set[str] | None = None
    selected: list[Resource] = []
    for cls in LEVELS[top - 1 : target.depth]:
        checks = by_level.get(cls.level, [])
        own = [c for c, where in checks if where == _OWN]
        items: Sequence[Resource] | None = _index_lookup(forest, cls, cls.uid_keyword, own)
        if items is None and passing is None and cls is Study:
            copies = [c for c, where in checks if where == _PATIENT_COPY]
            patients = _index_lookup(forest, Patient, "PatientID", copies)
            if patients is not None:  # the study's PatientID is its patient's
                passing = {p.id for p in patients}
        if items is None:
            items = getattr(forest, cls.collection)
        field = cls.parent_field
        if passing is not None and field is not None:
            # the plain field holding the parent's Orthanc ID: reading it costs no link
            parent_id: Callable[[Resource], str | None] = operator.attrgetter(field)
            linked_id = _linked_parent_id
            kept = passing
            items = [r for r in items if (parent_id(r) or linked_id(r)) in kept]
        if cls is Patient and checks:
            items = _patient_checks(forest, items, [c for c, _ in checks], dialect)
        else:
            for check, where in checks:
                matches, keyword = check.matches, check.keyword
                tags_of = operator.attrgetter(where)
                items = [r for r in items if matches(tags_of(r).get(keyword))]
        if cls is Study and computed:
            items = _computed_checks(forest, items, computed)
        if cls is target:
            selected = list(items)
        else:
            passing = {r.id for r in items}
    if label_names:
        selected = [r for r in selected if _labels_ok(r.labels, label_names, constraint)]
    selected.sort(key=lambda r: r.id)
    return selected


def _check_computed_depth(forest: ForestLike, check: Constraint) -> None:
    held = _held(forest)
    if held is not None and held.depth < Series.depth:
        raise QueryError(
            f"{check.keyword} is computed from the series, and the forest was built with "
            f"depth={forest.depth!r}: build it with depth='series', or use client.find"  # type: ignore[attr-defined]
        )


def _computed_checks(
    forest: ForestLike, studies: Sequence[Resource], checks: Sequence[Constraint]
) -> list[Resource]:
    """``ModalitiesInStudy``: a study matches when one of its series' Modality does."""
    series_of = _Children(forest, Series)
    kept = list(studies)
    for check in checks:
        matches = check.matches
        source = COMPUTED_TAGS[check.keyword][2]
        kept = [
            study
            for study in kept
            if any(matches(series.main_dicom_tags.get(source)) for series in series_of(study))
        ]
    return kept


def _patient_checks(
    forest: ForestLike,
    patients: Sequence[Resource],
    checks: Sequence[Constraint],
    dialect: _Dialect,
) -> list[Resource]:
    """A patient-level query, in Orthanc's two stages on two copies of the patient tags.

    The index filters on the patient's own tags; the exact check reads the main tags of one
    instance, whose patient tags are the copy stored with that instance's study.
    """
    kept = list(patients)
    for check in checks:
        stage, keyword = check.index_stage, check.keyword
        kept = [p for p in kept if stage(p.main_dicom_tags.get(keyword))]
    if not kept:
        return kept
    sample = _Samples(forest, dialect)
    out = []
    for patient in kept:
        tags = sample.patient_tags(patient)
        if all(check.exact_stage(tags.get(check.keyword)) for check in checks):
            out.append(patient)
    return out


class _Samples:
    """The copy of the patient tags that Orthanc's exact check reads for a patient."""

    def __init__(self, forest: ForestLike, dialect: _Dialect) -> None:
        self.dialect = dialect
        self.studies_of = _Children(forest, Study)
        self.series_of = _Children(forest, Series)

    def patient_tags(self, patient: Resource) -> Mapping[str, str]:
        studies: Sequence[Any] = self.studies_of(patient)
        if not studies:  # a forest without studies: the patient's own tags
            return patient.main_dicom_tags
        first: Mapping[str, str] = studies[0].patient_main_dicom_tags
        if all(study.patient_main_dicom_tags == first for study in studies[1:]):
            return first  # no choice to make: every study carries the same tags
        chosen = self._sample_study(patient, studies)
        tags: Mapping[str, str] = chosen.patient_main_dicom_tags
        return tags

    def _sample_study(self, patient: Resource, studies: Sequence[Any]) -> Any:
        if self.dialect.get().patient_sample == "smallest instance":
            # PostgreSQL: MIN(instances.publicId) over the patient's instances
            best: tuple[str, Any] | None = None
            for study in studies:
                for series in self.series_of(study):
                    ids = series.child_ids
                    if ids and (best is None or min(ids) < best[0]):
                        best = (min(ids), study)
            if best is not None:
                return best[1]
        # SQLite: an instance of the first study stored (the patient's first in its list)
        order = {study_id: n for n, study_id in enumerate(patient.child_ids)}
        return min(studies, key=lambda study: order.get(study.id, len(order)))


def _labels_ok(have: Sequence[str], wanted: list[str], constraint: LabelsConstraint | None) -> bool:
    present = set(have)
    if constraint == "Any":
        return any(label in present for label in wanted)
    if constraint == "None":
        return not any(label in present for label in wanted)
    return all(label in present for label in wanted)
