"""The patient forest itself: the levels, lookups by identifier, views, and updates."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, overload

from ..errors import AmbiguousIdentifier, NotInForest, PaddedIdentifier
from ..models import (
    LEVELS,
    Instance,
    InstanceLevel,
    Patient,
    PatientLevel,
    Resource,
    Series,
    SeriesLevel,
    Study,
    StudyLevel,
    level_class,
)
from .build import DEFAULT_PAGE_SIZE, Depth, _check_depth, _check_page_size, _load
from .reports import ForestCounts, UpdateReport
from .state import LevelView, _count, _State
from .update import _Updater

if TYPE_CHECKING:
    import pandas

    from ..server import Server

R = TypeVar("R", bound=Resource)


class PatientForest:
    """Every patient, study, series and instance of a server, linked and indexed in memory.

    Build one with :func:`build_patient_forest`. Everything here reads memory: walking
    ``forest.patients[0].studies[0].series`` and the parent links, the indexes and the counts
    cost no request. Only :meth:`update`, and relations below the forest's ``depth``
    (``series.instances`` in a forest built with ``depth="series"``), talk to the server.

    Attributes:
        client: the client that built the forest (lazy loads and updates go through it).
        depth: the deepest level listed: ``"patient"``, ``"study"``, ``"series"`` or
            ``"instance"``.
        page_size: resources per listing page.
    """

    def __init__(self, client: Server, depth: Depth, page_size: int, state: _State) -> None:
        self.client = client
        self.depth: Depth = depth
        self.page_size = page_size
        self._state = state
        self._version = 0
        self._lock = threading.RLock()
        self._patients: LevelView[Patient] = LevelView(self, Patient)
        self._studies: LevelView[Study] = LevelView(self, Study)
        self._series: LevelView[Series] = LevelView(self, Series)
        self._instances: LevelView[Instance] = LevelView(self, Instance)

    # -- identity -----------------------------------------------------------------------------

    @property
    def built_at(self) -> datetime.datetime:
        """When the forest was (last re)built, UTC."""
        return self._state.built_at

    @property
    def last_seq(self) -> int:
        """The change-feed sequence number the forest is up to date with."""
        return self._state.last_seq

    def __repr__(self) -> str:
        with self._lock:
            counts = self.counts
            seq = self.last_seq
        return (
            f"<PatientForest {self.client.url}: {counts.patients} patients, "
            f"{counts.studies} studies, {counts.series} series, {counts.instances} instances; "
            f"seq {seq}, depth {self.depth}>"
        )

    # -- collections --------------------------------------------------------------------------

    @property
    def patients(self) -> LevelView[Patient]:
        """Every patient, in the server's order; call it with a PatientID to find one."""
        return self._patients

    @property
    def studies(self) -> LevelView[Study]:
        """Every study of every patient; call it with a StudyInstanceUID to find one."""
        return self._studies

    @property
    def series(self) -> LevelView[Series]:
        """Every series; ``forest.series(series_instance_uid)`` finds one (O(1))."""
        return self._series

    @property
    def instances(self) -> LevelView[Instance]:
        """Every instance (empty unless the forest was built with ``depth="instance"``)."""
        return self._instances

    @property
    def counts(self) -> ForestCounts:
        """Resources per level. The level just below the forest's depth is counted from the
        child-ID lists of the deepest level; levels further down count 0."""
        with self._lock:  # a running update changes the tables: wait for it
            return ForestCounts(*(_count(self._state, cls) for cls in LEVELS))

    def __len__(self) -> int:
        """The number of patients."""
        return len(self._state.tables[Patient])

    def __iter__(self) -> Iterator[Patient]:
        """The patients."""
        return iter(self._patients)

    def __contains__(self, item: object) -> bool:
        """Whether a resource (or an identifier) is in the forest."""
        if isinstance(item, Resource):
            return self._state.holds(item)
        if isinstance(item, str):
            return bool(self.lookup(item))
        return False

    # -- lookups --------------------------------------------------------------------------------

    def patient(self, patient_id: str) -> Patient:
        """The patient with this PatientID (or Orthanc ID): O(1), no request.

        Surrounding spaces are ignored, as Orthanc's index ignores them. Orthanc strips
        trailing spaces when it stores a file but keeps leading ones, so ``"id11111"`` and
        ``" id11111"`` are two patients: such a lookup raises instead of choosing.

        Raises:
            NotInForest: no such patient.
            PaddedIdentifier: several patients have the PatientID, up to surrounding spaces.
        """
        found: Patient = self._one(Patient, patient_id)
        return found

    def study(self, study_instance_uid: str) -> Study:
        """The study with this StudyInstanceUID (or Orthanc ID): O(1), no request.

        Raises:
            NotInForest: no such study.
            AmbiguousIdentifier: studies of several patients share the UID.
        """
        found: Study = self._one(Study, study_instance_uid)
        return found

    def instance(self, sop_instance_uid: str) -> Instance:
        """The instance with this SOPInstanceUID (or Orthanc ID): O(1), no request.

        Raises:
            NotInForest: no such instance (or the forest holds no instances).
            AmbiguousIdentifier: several instances share the UID.
        """
        found: Instance = self._one(Instance, sop_instance_uid)
        return found

    def by_accession_number(self, value: str) -> list[Study]:
        """The studies with this AccessionNumber (any number of them): O(1), no request."""
        found = self._state.accession.all(value.strip()) if value else []
        return [study for study in found if isinstance(study, Study)]

    def get(self, key: str) -> Resource | None:
        """The resource with this Orthanc ID, UID or PatientID at any level, or ``None``.

        Raises:
            AmbiguousIdentifier: several resources share the identifier
                (:class:`~kkorthanc.PaddedIdentifier` when they differ by spaces only).
        """
        matches = self.lookup(key)
        if len(matches) > 1:
            raise self._ambiguous(key, matches)
        return matches[0] if matches else None

    def lookup(self, key: str) -> list[Resource]:
        """Every resource whose Orthanc ID, UID or PatientID is ``key``, at any level.

        Surrounding spaces are ignored: ``"id11111"`` finds the patients ``"id11111"`` and
        ``" id11111"``, which Orthanc keeps apart.
        """
        found: list[Resource] = []
        for cls in LEVELS:
            found.extend(self._matches(cls, key))
        return found

    def _matches(self, cls: type[Resource], key: str) -> list[Resource]:
        state = self._state
        key = key.strip()
        by_id = state.tables[cls].get(key)
        if by_id is not None:
            return [by_id]
        return state.uids[cls].all(key)

    def _one(self, cls: type[Any], key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"look a {cls.level.lower()} up by a string, not {type(key).__name__}")
        matches = self._matches(cls, key)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise self._ambiguous(key, matches)
        if level_class(self.depth).depth < cls.depth:
            hint = (
                f"; the forest was built with depth={self.depth!r}: build it with "
                f"depth={cls.level.lower()!r} to index this level"
            )
        else:
            hint = "; if it was stored since, forest.update() adds it"
        raise NotInForest(
            f"no {cls.level.lower()} with {cls.uid_keyword} or Orthanc ID {key!r} in the forest "
            f"of {self.client.url}{hint}"
        )

    @staticmethod
    def _ambiguous(key: str, matches: Sequence[Resource]) -> AmbiguousIdentifier:
        stored = {m.main_dicom_tags.get(m.uid_keyword) for m in matches}
        if len(stored) > 1:
            # "id11111" and " id11111": one identifier to the index, two resources to Orthanc
            listed = ", ".join(
                f"{m.main_dicom_tags.get(m.uid_keyword)!r} ({m.level.lower()} {m.id})"
                for m in matches[:5]
            )
            keywords = " or ".join(sorted({m.uid_keyword for m in matches}))
            return PaddedIdentifier(
                f"{len(matches)} resources have a {keywords} that differs from {key.strip()!r} "
                f"only by surrounding spaces: {listed}. Orthanc keeps them apart; look one up "
                "by its Orthanc ID, or get them all with forest.lookup()",
                matches,
            )
        listed = ", ".join(f"{m.level} {m.id}" for m in matches[:5])
        return AmbiguousIdentifier(
            f"{len(matches)} resources have the identifier {key!r} ({listed}): use an Orthanc ID "
            "or forest.lookup() to get them all",
            matches,
        )

    # -- views delegated to other modules -----------------------------------------------------

    @overload
    def find(
        self,
        level: PatientLevel,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Patient]: ...
    @overload
    def find(
        self,
        level: StudyLevel,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Study]: ...
    @overload
    def find(
        self,
        level: SeriesLevel,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Series]: ...
    @overload
    def find(
        self,
        level: InstanceLevel,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Instance]: ...
    @overload
    def find(
        self,
        level: type[R],
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[R]: ...
    @overload
    def find(
        self,
        level: str,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Resource]: ...
    def find(
        self,
        level: str | type[Resource],
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Any]:
        """Resources of ``level`` matching DICOM tags, matched in memory: no request.

        The same matching rules as ``/tools/find``; see :func:`kkorthanc.query.local_find`.
        ``level`` is a level name or a model class, and types the result as in
        :meth:`kkorthanc.Orthanc.find`.
        """
        name = level if isinstance(level, str) else level.level
        return self._search(name, query, case_sensitive, tags)

    def _search(
        self,
        level: str,
        query: dict[str, Any] | None,
        case_sensitive: bool,
        tags: dict[str, Any],
    ) -> list[Any]:
        """The matches of :meth:`find`. An equality (or a list) on an identifier of any level
        searches only what the identifier indexes name for it (see :mod:`._narrow`)."""
        from . import _narrow

        anchors = _narrow.memory_anchors(
            self._state,
            _narrow.keyed_constraints(level, query, case_sensitive, tags, self._state.levels),
        )
        return _narrow.search(self, level, query, case_sensitive, tags, anchors)

    def to_dataframe(self, level: str) -> pandas.DataFrame:
        """One row per resource of ``level``; see :func:`kkorthanc.frames.to_dataframe`."""
        from .. import frames

        frame: pandas.DataFrame = frames.to_dataframe(self, level)
        return frame

    def print_tree(self, max_depth: int | None = None, file: TextIO | None = None) -> None:
        """Print the forest as a text tree; see :func:`kkorthanc.display.print_tree`."""
        from .. import display

        display.print_tree(self, max_depth=max_depth, file=file)

    def _repr_html_(self) -> str:
        from .. import display

        html: str = display.forest_html(self)
        return html

    # -- comparison -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A plain, comparable copy of the forest: every resource's fields and links.

        ``{"Patient": {orthanc_id: {...fields, "parent": id, "children": (ids...)}}, ...}``;
        two forests of the same server state have equal snapshots. Children below the
        forest's depth (loaded lazily, or not) are left out.
        """
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        levels = self._state.levels
        for position, cls in enumerate(LEVELS):
            linked = position + 1 < len(levels)
            level: dict[str, dict[str, Any]] = {}
            for obj in self._state.tables[cls].values():
                fields = obj.model_dump()
                parent = obj.linked_parent()
                children = obj.linked_children() if linked else None
                fields["parent"] = parent.id if parent is not None else None
                fields["children"] = None if children is None else tuple(c.id for c in children)
                level[obj.id] = fields
            out[cls.level] = level
        return out

    # -- update -----------------------------------------------------------------------------

    def update(self, *, labels: bool = False, rebuild_if_replaced: bool = True) -> UpdateReport:
        """Bring the forest up to date with the server, from its change feed.

        Requests: the feed pages from :attr:`last_seq` (``GET /changes``, one per 2,000
        changes), one ``POST /tools/bulk-content`` per round of new or changed resources (two
        rounds when new resources join existing parents), and ``GET /statistics`` to detect
        deletions, which Orthanc does not log. Only when the counts disagree, one ID-only
        listing per disagreeing level (``GET /{level}``) finds what vanished. The cost grows
        with the number of changes, not with the size of the server. Model objects stay the
        same objects: fields are updated in place, so a forest shared through the cache of
        :func:`build_patient_forest` is brought up to date for every holder. ``requests`` in
        the report counts everything the client sent meanwhile, other threads included.

        Falls back to a full rebuild (``report.rebuilt``, with the reason) when the feed cannot
        cover the gap since :attr:`last_seq`, holds more changes than a rebuild costs, or
        shows that the server's database was replaced (the change at :attr:`last_seq` is
        not the one the forest read, or the feed went back); the forest then holds new model
        objects.

        All or nothing: when a request fails, every model, table and index the update had
        changed is put back, :attr:`last_seq` with them, and the next update replays the
        same changes. Readers that go over a level (``counts``, iteration, ``snapshot``)
        wait while an update runs.

        Args:
            labels: also read label membership again, which the change feed does not log:
                ``GET /tools/labels``, then one ``POST /tools/find`` (IDs only) per label and
                level held; nothing on a server that stores no labels. Changed labels are
                reported as updated.
            rebuild_if_replaced: when ``False``, a replaced database raises instead of
                rebuilding.

        Returns:
            what was added, removed and updated per level, and the requests it took.

        Raises:
            OrthancError: the server refused or could not be reached (the forest is left
                exactly as it was), or its database was replaced and
                ``rebuild_if_replaced`` is ``False``.
        """
        with self._lock:
            return _Updater(self, rebuild_if_replaced=rebuild_if_replaced, labels=labels).run()

    # -- internals ------------------------------------------------------------------------------

    def _swap(self, state: _State) -> None:
        self._state = state
        self._version += 1


def load_forest(
    client: Server, *, depth: str = "instance", page_size: int = DEFAULT_PAGE_SIZE
) -> PatientForest:
    """Build a forest now, without the cache (see :func:`build_patient_forest`).

    Requests: ``GET /changes?last``, then one ``GET /{level}?expand&since&limit`` per page of
    each level down to ``depth``.
    """
    checked = _check_depth(depth)
    size = _check_page_size(page_size)
    return PatientForest(client, checked, size, _load(client, checked, size))
