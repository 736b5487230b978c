"""The patient forest: everything a server holds, linked and indexed, from a handful of requests.

>>> forest = build_patient_forest(client)            # cached for a minute
>>> forest.study("1.2.840.113619.2.1")                # O(1), no request
>>> forest.patients[0].studies[0].series[0].instances  # linked, no request
>>> report = forest.update()                         # replays the change feed

**Build.** :func:`build_patient_forest` reads the newest change-feed sequence number
(``GET /changes?last``), then the paged expanded listing of each level
(``GET /patients?expand&since=N&limit=M``, then studies, series and instances): one request
per page, never one per resource. A background thread fetches the next page while the
models of the current one are built, so model building overlaps the server's work. The levels
are joined by their parent IDs, and every model is linked to its parent and children, so
walking the tree afterwards costs no request.

**Consistency while the server changes.** The four listings are not one atomic snapshot: a
resource may be uploaded or deleted between two of them. One rule keeps the forest
consistent: *a resource is in the forest when its parent is, and the parent's child-ID list
(as the server sent it) names it; child-ID lists are trimmed to the children in the forest.*
So an instance whose series appeared after the series listing is left out, and so is a child
deleted after its parent was listed; nothing is ever half-linked and nothing raises.
Everything left out was created after the sequence number read before listing, so the next
:meth:`PatientForest.update` adds it.

**Update.** :meth:`PatientForest.update` pages through ``GET /changes?since=seq`` and fetches
the new and changed resources, then their ancestors (whose child lists and ``LastUpdate``
changed), with ``POST /tools/bulk-content``: a few requests whatever the size of the server.
``Stable*`` changes set ``is_stable`` without a request. Orthanc does not log deletions in
its feed, so the update compares the forest's counts with ``GET /statistics`` (one request);
only when they differ does it list the IDs of the affected level (one light request, IDs
only) to find what vanished, or what the feed did not tell. When the feed cannot cover the
gap (the server's sequence went backwards, or the changes after ``seq`` were cleared) or
holds more changes than a rebuild would cost, it rebuilds and says so in the report.
"""

from __future__ import annotations

import datetime
import gc
import itertools
import threading
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TextIO, TypeVar, overload

from cachetools import TTLCache
from pydantic.functional_validators import BeforeValidator

from .errors import AmbiguousIdentifier, NotInForest, OrthancError
from .models import (
    Instance,
    Patient,
    Resource,
    Series,
    Study,
    level_class,
)
from .server import Change, ChangePage

if TYPE_CHECKING:
    import pandas

    from .server import Server

R = TypeVar("R", bound=Resource)

#: resources per listing page; measured on 24,000 instances over loopback, 2,000 to 5,000
#: perform alike, and a smaller page leaves less model building after the last answer
DEFAULT_PAGE_SIZE = 4000
#: seconds a built forest stays in the cache of :func:`build_patient_forest`
DEFAULT_TTL = 60.0
#: forests kept in the cache (one per server, user, depth and page size)
DEFAULT_MAXSIZE = 16
#: changes per ``GET /changes`` page during :meth:`PatientForest.update`
CHANGES_PAGE = 2000
#: resources per ``POST /tools/bulk-content`` request
BULK_CHUNK = 1000
#: an update rebuilds instead when the feed holds more changes than this, or than half the
#: resources of the forest if that is more
REBUILD_AFTER_CHANGES = 1000

Depth = Literal["patient", "study", "series", "instance"]
LEVELS: tuple[type[Resource], ...] = (Patient, Study, Series, Instance)
_DEPTHS: dict[str, int] = {"patient": 1, "study": 2, "series": 3, "instance": 4}
_BY_LEVEL: dict[str, type[Resource]] = {cls.level: cls for cls in LEVELS}
#: field of a child holding its parent's Orthanc ID
_PARENT_FIELD: dict[type[Resource], str] = {
    Study: "parent_patient_id",
    Series: "parent_study_id",
    Instance: "parent_series_id",
}
#: key of the parent's Orthanc ID in a child's JSON
_PARENT_KEY: dict[type[Resource], str] = {
    Study: "ParentPatient",
    Series: "ParentStudy",
    Instance: "ParentSeries",
}
#: field of a parent holding its children's Orthanc IDs
_CHILD_IDS_FIELD: dict[type[Resource], str] = {
    Patient: "study_ids",
    Study: "series_ids",
    Series: "instance_ids",
}
#: the identifier each level is looked up by
_UID_FIELD: dict[type[Resource], str] = {
    Patient: "patient_id",
    Study: "study_instance_uid",
    Series: "series_instance_uid",
    Instance: "sop_instance_uid",
}
_UID_NAME: dict[type[Resource], str] = {
    Patient: "PatientID",
    Study: "StudyInstanceUID",
    Series: "SeriesInstanceUID",
    Instance: "SOPInstanceUID",
}


# -- errors -----------------------------------------------------------------------------------


# -- reports and counts -----------------------------------------------------------------------


class ForestCounts(NamedTuple):
    """How many resources of each level the forest holds."""

    patients: int
    studies: int
    series: int
    instances: int
    """Instances linked in the forest; for a forest built above the instance level, the
    number of instance IDs its series list."""

    @property
    def total(self) -> int:
        """Resources of all levels."""
        return self.patients + self.studies + self.series + self.instances


class ByLevel(NamedTuple):
    """Orthanc IDs per level."""

    patients: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """IDs of all levels."""
        return len(self.patients) + len(self.studies) + len(self.series) + len(self.instances)

    def describe(self) -> str:
        """``"1 patient, 10 instances"`` (``"nothing"`` when empty)."""
        names = [("patient", "patients"), ("study", "studies"), ("series", "series")]
        names.append(("instance", "instances"))
        parts = [
            f"{len(ids)} {one if len(ids) == 1 else many}"
            for ids, (one, many) in zip(self, names, strict=True)
            if ids
        ]
        return ", ".join(parts) or "nothing"


def _by_level(
    ids: dict[type[Resource], list[str]], leave_out: dict[type[Resource], list[str]] | None = None
) -> ByLevel:
    """IDs per level, each once, in first-seen order, without those in ``leave_out``."""
    out = []
    for cls in LEVELS:
        skip = set(leave_out.get(cls, ())) if leave_out else set()
        out.append(tuple(i for i in dict.fromkeys(ids.get(cls, ())) if i not in skip))
    return ByLevel(*out)


@dataclass(frozen=True)
class UpdateReport:
    """What :meth:`PatientForest.update` changed, and what it cost."""

    added: ByLevel
    """Resources new to the forest."""
    removed: ByLevel
    """Resources no longer on the server, dropped from the forest."""
    updated: ByLevel
    """Resources still in the forest whose fields changed."""
    requests: int
    """HTTP requests the update sent (counted on the client)."""
    changes: int
    """Change-feed entries read."""
    from_seq: int
    """Sequence number the forest was at before the update."""
    to_seq: int
    """Sequence number the forest is at now."""
    rebuilt: bool = False
    """Whether the update fell back to a full rebuild."""
    reason: str | None = None
    """Why it rebuilt, or why it had to list IDs to find deletions."""

    @property
    def changed(self) -> bool:
        """Whether anything was added, removed or updated."""
        return bool(self.added.total or self.removed.total or self.updated.total)

    def __str__(self) -> str:
        how = "rebuilt" if self.rebuilt else "updated"
        text = (
            f"forest {how} from seq {self.from_seq} to {self.to_seq} ({self.changes} changes, "
            f"{self.requests} requests): added {self.added.describe()}; "
            f"removed {self.removed.describe()}; updated {self.updated.describe()}"
        )
        return f"{text} ({self.reason})" if self.reason else text


class CacheInfo(NamedTuple):
    """Statistics of the :func:`build_patient_forest` cache."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    ttl: float


# -- fast model construction ------------------------------------------------------------------

_MISSING: Any = object()
_REQUIRED: Any = object()


class _Unsupported(Exception):
    """A value the fast path does not handle: the model is built by pydantic instead."""


def _check_str(value: Any) -> Any:
    if type(value) is not str:
        raise _Unsupported
    return value


def _check_opt_str(value: Any) -> Any:
    if value is not None and type(value) is not str:
        raise _Unsupported
    return value


def _check_opt_int(value: Any) -> Any:
    if value is not None and type(value) is not int:
        raise _Unsupported
    return value


def _check_opt_bool(value: Any) -> Any:
    if value is not None and value is not True and value is not False:
        raise _Unsupported
    return value


def _check_str_tuple(value: Any) -> Any:
    if type(value) is not list and type(value) is not tuple:
        raise _Unsupported
    for item in value:
        if type(item) is not str:
            raise _Unsupported
    return tuple(value)


def _check_str_dict(value: Any) -> Any:
    if type(value) is not dict:
        raise _Unsupported
    for item in value.values():
        if type(item) is not str:
            raise _Unsupported
    return value  # kept, not copied: the listing's dict is not used elsewhere


def _check_choice(choices: frozenset[str]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and (type(value) is not str or value not in choices):
            raise _Unsupported
        return value

    return check


_PLAIN_CHECKS: list[tuple[Any, Callable[[Any], Any]]] = [
    (str, _check_str),
    (str | None, _check_opt_str),
    (int | None, _check_opt_int),
    (bool | None, _check_opt_bool),
    (tuple[str, ...], _check_str_tuple),
    (dict[str, str], _check_str_dict),
]


def _plain_check(annotation: Any) -> Callable[[Any], Any] | None:
    for known, check in _PLAIN_CHECKS:
        if annotation == known:
            return check
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and set(args) == {literals[0], type(None)}:
            values = typing.get_args(literals[0])
            if all(isinstance(v, str) for v in values):
                return _check_choice(frozenset(values))
    return None


_Build = Callable[[Any, "Server | None", "defaultdict[Any, dict[str, Any]]"], Resource]


class _FieldPlan(NamedTuple):
    name: str
    alias: str
    parse: Callable[[Any], Any] | None
    memoize: bool
    check: Callable[[Any], Any] | None
    default: Any
    factory: Callable[[], Any] | None


class _Factory:
    """Builds one model class from Orthanc's expanded JSON, like ``cls.from_orthanc``, faster.

    The plan is read from the model's own fields: the same aliases, the same ``BeforeValidator``
    parsers, the same defaults, so the objects equal what pydantic validation gives (a test
    checks it on odd values too). It is compiled into one straight-line function per class
    (as :mod:`dataclasses` does for ``__init__``), which takes a fifth less time than a loop
    over the fields. Parsed values are memoized per build (dates, names and numbers repeat a
    lot), which also lets equal values share one object. Anything unexpected (a non-string tag,
    a field type the plan does not know) goes through ``from_orthanc`` and its validation.
    """

    def __init__(self, cls: type[Resource]) -> None:
        self.cls = cls
        self.private = {
            name: attr.get_default() for name, attr in cls.__private_attributes__.items()
        }
        self.fields: tuple[_FieldPlan, ...] | None = self._plan(cls)
        self.build: _Build | None = self._compile() if self.fields is not None else None

    @staticmethod
    def _plan(cls: type[Resource]) -> tuple[_FieldPlan, ...] | None:
        plans: list[_FieldPlan] = []
        for name, info in cls.model_fields.items():
            if info.alias is None or not name.isidentifier():
                return None
            validators = [m for m in info.metadata if isinstance(m, BeforeValidator)]
            if len(info.metadata) != len(validators) or len(validators) > 1:
                return None
            parse = validators[0].func if validators else None
            check = None if parse is not None else _plain_check(info.annotation)
            if parse is None and check is None:
                return None
            if info.is_required():
                default, factory = None, _REQUIRED
            elif info.default_factory is not None:
                default, factory = None, info.default_factory
            else:
                default, factory = info.default, None
            memoize = parse is not None and info.annotation != (str | None)
            plans.append(
                _FieldPlan(name, info.alias, parse, memoize, check, default, factory)  # type: ignore[arg-type]
            )
        return tuple(plans)

    def _compile(self) -> _Build:
        """Write the plan out as one function: ``build(data, client, memos) -> model``.

        It raises :class:`_Unsupported` for anything the plan does not cover.
        """
        assert self.fields is not None
        names: dict[str, Any] = {
            "MISSING": _MISSING,
            "Unsupported": _Unsupported,
            "new": object.__new__,
            "setattr": object.__setattr__,
            "cls": self.cls,
            "private": self.private,
        }
        lines = [
            "def build(data, client, memos):",
            "    if type(data) is not dict: raise Unsupported",
            "    get = data.get",
            "    tags = get('MainDicomTags')",
            "    if tags is None: tags = {}",
            "    elif type(tags) is not dict: raise Unsupported",
            "    tag = tags.get",
            "    given = set()",
            "    add = given.add",
        ]
        for k, f in enumerate(self.fields):
            names[f"parse{k}"] = f.parse
            names[f"check{k}"] = f.check
            names[f"default{k}"] = f.default
            names[f"factory{k}"] = f.factory
            if f.factory is _REQUIRED:
                missing = "raise Unsupported"
            elif f.factory is None:
                missing = f"v{k} = default{k}"
            else:
                missing = f"v{k} = factory{k}()"
            lines += [
                f"    v{k} = get({f.alias!r}, MISSING)",  # the listing's own keys come first
                f"    if v{k} is MISSING: v{k} = tag({f.alias!r}, MISSING)",
                f"    if v{k} is MISSING: {missing}",
                "    else:",
                f"        add({f.name!r})",
            ]
            if f.parse is None:
                lines.append(f"        v{k} = check{k}(v{k})")
                continue
            lines += [
                f"        if type(v{k}) is str:",
                *(
                    [
                        f"            memo = memos[parse{k}]",
                        f"            parsed = memo.get(v{k}, MISSING)",
                        f"            if parsed is MISSING: parsed = memo[v{k}] = parse{k}(v{k})",
                        f"            v{k} = parsed",
                    ]
                    if f.memoize
                    else [f"            v{k} = parse{k}(v{k})"]
                ),
                f"        elif v{k} is not None: raise Unsupported",
            ]
        values = ", ".join(f"{f.name!r}: v{k}" for k, f in enumerate(self.fields))
        lines += [
            "    obj = new(cls)",
            f"    setattr(obj, '__dict__', {{{values}}})",
            "    setattr(obj, '__pydantic_fields_set__', given)",
            "    setattr(obj, '__pydantic_extra__', None)",
            "    links = private.copy()",
            "    links['_client'] = client",
            "    setattr(obj, '__pydantic_private__', links)",
            "    return obj",
        ]
        exec("\n".join(lines), names)  # the source comes from the model's own fields
        build: _Build = names["build"]
        return build

    def __call__(
        self, data: Any, client: Server | None, memos: defaultdict[Any, dict[str, Any]]
    ) -> Resource:
        """The model for one expanded JSON object (pydantic validation for odd input)."""
        if self.build is not None:
            try:
                return self.build(data, client, memos)
            except _Unsupported:
                pass
        return self.cls.from_orthanc(data, client)


_FACTORIES: dict[type[Resource], _Factory] = {cls: _Factory(cls) for cls in LEVELS}


def _new_memos() -> defaultdict[Any, dict[str, Any]]:
    return defaultdict(dict)


class _GcPause:
    """Pauses the automatic cyclic garbage collector while forests are built.

    A build allocates a hundred thousand containers that all stay alive. Left alone, the
    collector would scan the growing heap again and again (a third of the model-building
    time); switched off, it would scan the whole build at once when switched back on, after
    the last page. Instead, :meth:`settle` collects the young generations after each page,
    while the server works on the next one: each object is scanned once, early, and the
    build ends with little left to scan. Automatic collection resumes when the last
    concurrent build ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                gc.enable()

    @staticmethod
    def settle() -> None:
        """Scan what was allocated since the last call and move the survivors to the old
        generation (what the automatic collector would do, once per page)."""
        gc.collect(1)


_GC_PAUSE = _GcPause()


# -- accessing private links ------------------------------------------------------------------
# Links are written straight into pydantic's private-attribute dict: the forest sets tens of
# thousands of them and the attribute protocol would cost more than the rest of the linking.


def _private(obj: Resource) -> dict[str, Any]:
    private: dict[str, Any] = obj.__pydantic_private__  # type: ignore[assignment]
    return private


def _parent_of(obj: Resource) -> Resource | None:
    parent: Resource | None = _private(obj)["_parent"]
    return parent


def _children_of(obj: Resource) -> tuple[Resource, ...] | None:
    children: tuple[Resource, ...] | None = _private(obj)["_children"]
    return children


def _parent_id(obj: Resource) -> str | None:
    key = _PARENT_FIELD.get(type(obj))
    found: str | None = obj.__dict__[key] if key is not None else None
    return found


def _child_ids(obj: Resource) -> tuple[str, ...]:
    key = _CHILD_IDS_FIELD.get(type(obj))
    found: tuple[str, ...] = obj.__dict__[key] if key is not None else ()
    return found


def _count(state: _State, cls: type[Resource]) -> int:
    if cls in state.levels:
        return len(state.tables[cls])
    position = LEVELS.index(cls)
    if position == len(state.levels):
        deepest = state.tables[LEVELS[position - 1]].values()
        return sum(len(_child_ids(obj)) for obj in deepest)
    return 0


# -- the forest -------------------------------------------------------------------------------


class _Index:
    """Identifier -> resource, keeping every resource when several share one identifier."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}

    def add(self, key: str | None, obj: Resource) -> None:
        if not key:
            return
        entries = self.entries
        previous = entries.get(key)
        if previous is None:
            entries[key] = obj
        elif type(previous) is list:
            previous.append(obj)
        else:
            entries[key] = [previous, obj]

    def remove(self, key: str | None, obj: Resource) -> None:
        if not key:
            return
        previous = self.entries.get(key)
        if previous is None:
            return
        if type(previous) is list:
            kept = [o for o in previous if o is not obj]
            if len(kept) == 1:
                self.entries[key] = kept[0]
            elif kept:
                self.entries[key] = kept
            else:
                del self.entries[key]
        elif previous is obj:
            del self.entries[key]

    def all(self, key: str) -> list[Resource]:
        found = self.entries.get(key)
        if found is None:
            return []
        return list(found) if type(found) is list else [found]


class _State:
    """Everything a build produces; an update edits it, a rebuild swaps it."""

    def __init__(self, levels: Sequence[type[Resource]]) -> None:
        self.levels = tuple(levels)
        self.tables: dict[type[Resource], dict[str, Any]] = {cls: {} for cls in LEVELS}
        self.uids: dict[type[Resource], _Index] = {cls: _Index() for cls in LEVELS}
        self.accession = _Index()
        self.last_seq = 0
        self.built_at = datetime.datetime.now(datetime.timezone.utc)

    def holds(self, obj: Resource) -> bool:
        """Whether this very object is in the forest."""
        return self.tables[type(obj)].get(obj.id) is obj

    def index(self, obj: Resource) -> None:
        cls = type(obj)
        self.uids[cls].add(obj.__dict__[_UID_FIELD[cls]], obj)
        if cls is Study:
            self.accession.add(obj.__dict__["accession_number"], obj)

    def unindex(self, obj: Resource) -> None:
        cls = type(obj)
        self.uids[cls].remove(obj.__dict__[_UID_FIELD[cls]], obj)
        if cls is Study:
            self.accession.remove(obj.__dict__["accession_number"], obj)


class LevelView(Sequence[R], Generic[R]):
    """All resources of one level of a forest, in listing order; no request.

    A read-only sequence (``len``, iteration, indexing, ``in``). Calling it looks one
    resource up by UID or Orthanc ID, so ``forest.series`` lists every series and
    ``forest.series(uid)`` finds one.
    """

    def __init__(self, forest: PatientForest, cls: type[R]) -> None:
        self._forest = forest
        self._cls = cls
        self._cache: tuple[int, tuple[R, ...]] | None = None

    def _items(self) -> tuple[R, ...]:
        forest = self._forest
        cache = self._cache
        if cache is None or cache[0] != forest._version:
            items: tuple[R, ...] = tuple(forest._state.tables[self._cls].values())
            cache = self._cache = (forest._version, items)
        return cache[1]

    def __len__(self) -> int:
        return len(self._forest._state.tables[self._cls])

    def __iter__(self) -> Iterator[R]:
        return iter(self._items())

    @overload
    def __getitem__(self, index: int) -> R: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[R, ...]: ...
    def __getitem__(self, index: int | slice) -> R | tuple[R, ...]:
        return self._items()[index]

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Resource):
            return type(item) is self._cls and self._forest._state.holds(item)
        if isinstance(item, str):
            return bool(self._forest._matches(self._cls, item))
        return False

    def __call__(self, key: str) -> R:
        """The resource with this UID (or PatientID) or Orthanc ID: O(1), no request.

        Raises:
            NotInForest: no such resource in the forest.
            AmbiguousIdentifier: several resources share the identifier.
        """
        found: R = self._forest._one(self._cls, key)
        return found

    def __repr__(self) -> str:
        plural = {"Patient": "patients", "Study": "studies", "Instance": "instances"}
        return f"<{len(self)} {plural.get(self._cls.level, 'series')}>"


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
        counts = self.counts
        return (
            f"<PatientForest {self.client.url}: {counts.patients} patients, "
            f"{counts.studies} studies, {counts.series} series, {counts.instances} instances; "
            f"seq {self.last_seq}, depth {self.depth}>"
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

        Raises:
            NotInForest: no such patient.
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
            AmbiguousIdentifier: several resources share the identifier.
        """
        matches = self.lookup(key)
        if len(matches) > 1:
            raise self._ambiguous(key, matches)
        return matches[0] if matches else None

    def lookup(self, key: str) -> list[Resource]:
        """Every resource whose Orthanc ID, UID or PatientID is ``key``, at any level."""
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
        hint = ""
        if _DEPTHS[self.depth] < _DEPTHS[cls.level.lower()]:
            hint = (
                f"; the forest was built with depth={self.depth!r}: build it with "
                f"depth={cls.level.lower()!r} to index this level"
            )
        else:
            hint = "; if it was stored since, forest.update() adds it"
        raise NotInForest(
            f"no {cls.level.lower()} with {_UID_NAME[cls]} or Orthanc ID {key!r} in the forest "
            f"of {self.client.url}{hint}"
        )

    @staticmethod
    def _ambiguous(key: str, matches: Sequence[Resource]) -> AmbiguousIdentifier:
        listed = ", ".join(f"{m.level} {m.id}" for m in matches[:5])
        return AmbiguousIdentifier(
            f"{len(matches)} resources have the identifier {key!r} ({listed}): use an Orthanc ID "
            "or forest.lookup() to get them all",
            matches,
        )

    # -- views delegated to other modules -----------------------------------------------------

    def find(
        self,
        level: str,
        query: dict[str, Any] | None = None,
        *,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> list[Resource]:
        """Resources of ``level`` matching DICOM tags, matched in memory: no request.

        The same matching rules as ``/tools/find``; see :func:`kkorthanc.query.local_find`.
        """
        from . import query as _query

        found: list[Resource] = _query.local_find(
            self, level, query, case_sensitive=case_sensitive, **tags
        )
        return found

    def to_dataframe(self, level: str) -> pandas.DataFrame:
        """One row per resource of ``level``; see :func:`kkorthanc.frames.to_dataframe`."""
        from . import frames

        frame: pandas.DataFrame = frames.to_dataframe(self, level)
        return frame

    def print_tree(self, max_depth: int | None = None, file: TextIO | None = None) -> None:
        """Print the forest as a text tree; see :func:`kkorthanc.display.print_tree`."""
        from . import display

        display.print_tree(self, max_depth=max_depth, file=file)

    def _repr_html_(self) -> str:
        from . import display

        html: str = display.forest_html(self)
        return html

    # -- comparison -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A plain, comparable copy of the forest: every resource's fields and links.

        ``{"Patient": {orthanc_id: {...fields, "parent": id, "children": (ids...)}}, ...}``;
        two forests of the same server state have equal snapshots. Children below the
        forest's depth (loaded lazily, or not) are left out.
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        levels = self._state.levels
        for position, cls in enumerate(LEVELS):
            linked = position + 1 < len(levels)
            level: dict[str, dict[str, Any]] = {}
            for obj in self._state.tables[cls].values():
                fields = obj.model_dump()
                parent = _parent_of(obj)
                children = _children_of(obj) if linked else None
                fields["parent"] = parent.id if parent is not None else None
                fields["children"] = None if children is None else tuple(c.id for c in children)
                level[obj.id] = fields
            out[cls.level] = level
        return out

    # -- update -----------------------------------------------------------------------------

    def update(self) -> UpdateReport:
        """Bring the forest up to date with the server, from its change feed.

        Requests: the feed pages after :attr:`last_seq` (``GET /changes``, one per 2,000
        changes), one ``POST /tools/bulk-content`` per round of new or changed resources (two
        rounds when new resources join existing parents), and ``GET /statistics`` to detect
        deletions, which Orthanc does not log. Only when the counts disagree, one ID-only
        listing per disagreeing level (``GET /{level}``) finds what vanished. The cost grows
        with the number of changes, not with the size of the server. Model objects stay the
        same objects: fields are updated in place, so a forest shared through the cache of
        :func:`build_patient_forest` is brought up to date for every holder. ``requests`` in
        the report counts everything the client sent meanwhile, other threads included.

        Falls back to a full rebuild (``report.rebuilt``, with the reason) when the feed cannot
        cover the gap since :attr:`last_seq`, or holds more changes than a rebuild costs; the
        forest then holds new model objects.

        Returns:
            what was added, removed and updated per level, and the requests it took.

        Raises:
            OrthancError: the server refused or could not be reached; the forest is left as
                it was before the failing request (possibly partly updated, never half-linked),
                and :attr:`last_seq` only moves once the feed has been applied.
        """
        with self._lock:
            return _Updater(self).run()

    # -- internals ------------------------------------------------------------------------------

    def _swap(self, state: _State) -> None:
        self._state = state
        self._version += 1


# -- building ---------------------------------------------------------------------------------


def _link_level(
    state: _State,
    parent_cls: type[Resource],
    child_cls: type[Resource],
    groups: dict[str, list[Resource]],
) -> None:
    """Link every parent to its listed children and drop children no parent names."""
    children = state.tables[child_cls]
    ids_field = _CHILD_IDS_FIELD[parent_cls]
    parent_field = _PARENT_FIELD[child_cls]
    for parent in state.tables[parent_cls].values():
        ids = parent.__dict__[ids_field]
        group = groups.get(parent.id, ())
        if len(group) == len(ids) and all(c.id == i for c, i in zip(group, ids, strict=True)):
            kids: Sequence[Resource] = group
        else:  # listed in another order, or the server changed between the listings
            kids = []
            for child_id in ids:
                child = children.get(child_id)
                if child is not None and child.__dict__[parent_field] == parent.id:
                    kids.append(child)
            if len(kids) != len(ids):
                parent.__dict__[ids_field] = tuple(c.id for c in kids)
        for child in kids:
            _private(child)["_parent"] = parent
        _private(parent)["_children"] = tuple(kids)
    orphans = [c for c in children.values() if _private(c)["_parent"] is None]
    for orphan in orphans:
        del children[orphan.id]
        state.unindex(orphan)


def _load(client: Server, depth: Depth, page_size: int) -> _State:
    """List the levels down to ``depth`` and link them (see the module documentation)."""
    levels = LEVELS[: _DEPTHS[depth]]
    state = _State(levels)
    state.last_seq = client.last_change()  # first: what changes during the listing is replayed
    groups: dict[type[Resource], dict[str, list[Resource]]] = {cls: {} for cls in levels}
    memos = _new_memos()
    with _GC_PAUSE:
        by_path = {f"/{cls.collection}": cls for cls in levels}
        listings = client.iter_listings(list(by_path), page_size=page_size, prefetch=True)
        for path, page in listings:
            cls = by_path[path]
            make = _FACTORIES[cls]
            build = make.build or make
            table = state.tables[cls]
            uids = state.uids[cls]
            uid_field = _UID_FIELD[cls]
            parent_field = _PARENT_FIELD.get(cls)
            by_parent = groups[cls]
            for item in page:
                try:
                    obj = build(item, client, memos)
                except _Unsupported:
                    obj = make(item, client, memos)
                fields = obj.__dict__
                previous = table.get(obj.id)
                if previous is not None:  # listed twice: the server changed between pages
                    state.unindex(previous)
                table[obj.id] = obj
                uids.add(fields[uid_field], obj)
                if cls is Study:
                    state.accession.add(fields["accession_number"], obj)
                if parent_field is not None:
                    parent_id = fields[parent_field]
                    siblings = by_parent.get(parent_id)
                    if siblings is None:
                        by_parent[parent_id] = [obj]
                    else:
                        siblings.append(obj)
            _GC_PAUSE.settle()
        for parent_cls, child_cls in itertools.pairwise(levels):
            _link_level(state, parent_cls, child_cls, groups[child_cls])
    return state


def _check_depth(depth: str) -> Depth:
    if not isinstance(depth, str):
        raise TypeError(f"depth must be a level name, not {type(depth).__name__}")
    try:
        name = level_class(depth).level.lower()
    except ValueError:
        raise ValueError(
            f"unknown depth {depth!r}: use 'patient', 'study', 'series' or 'instance'"
        ) from None
    return typing.cast(Depth, name)


def _check_page_size(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a positive integer, not {page_size!r}")
    return page_size


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


# -- updating ---------------------------------------------------------------------------------


class _FeedGap(Exception):
    """The change feed cannot bring a forest up to date: it is rebuilt instead."""

    def __init__(self, reason: str, changes: list[Change]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.changes = changes


@dataclass
class _Updater:
    """One run of :meth:`PatientForest.update`."""

    forest: PatientForest
    added: dict[type[Resource], list[str]] = field(default_factory=lambda: defaultdict(list))
    removed: dict[type[Resource], list[str]] = field(default_factory=lambda: defaultdict(list))
    updated: dict[type[Resource], list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)
    #: resources read from the server during this update: their state is the newest known
    fresh_ids: set[str] = field(default_factory=set)

    @property
    def state(self) -> _State:
        return self.forest._state

    @property
    def client(self) -> Server:
        return self.forest.client

    def run(self) -> UpdateReport:
        forest = self.forest
        start = self.client.request_count
        from_seq = forest.last_seq
        try:
            changes, last = self._read_feed(from_seq)
        except _FeedGap as gap:
            return self._rebuild(gap.reason, start, from_seq, len(gap.changes))
        new, refresh, stable, gone = self._classify(changes)
        self._sync(new=new, refresh=refresh, gone=gone)
        self._apply_stable(stable)
        self.state.last_seq = last
        self._reconcile()
        forest._version += 1
        return self._report(start, from_seq, len(changes))

    def _report(self, start: int, from_seq: int, changes: int, **extra: Any) -> UpdateReport:
        return UpdateReport(
            added=_by_level(self.added),
            removed=_by_level(self.removed),
            updated=_by_level(self.updated, leave_out=self.added),
            requests=self.client.request_count - start,
            changes=changes,
            from_seq=from_seq,
            to_seq=self.forest.last_seq,
            rebuilt=extra.get("rebuilt", False),
            reason=extra.get("reason") or ("; ".join(self.notes) or None),
        )

    # -- the feed ---------------------------------------------------------------------------

    def _read_feed(self, since: int) -> tuple[list[Change], int]:
        """The changes after ``since`` and the sequence number they reach.

        Raises:
            _FeedGap: the feed cannot bring the forest up to date (or would cost more than a
                rebuild); carries the reason.
        """
        budget = max(REBUILD_AFTER_CHANGES, self.forest.counts.total // 2)
        changes: list[Change] = []
        position = since
        for page in self.client.iter_changes(since, CHANGES_PAGE):
            if not page.changes:
                if page.last < position:
                    raise _FeedGap(
                        f"the server's change feed went back from seq {position} to "
                        f"{page.last} (a new or reset database)",
                        changes,
                    )
                if position == since and page.last > since:
                    raise _FeedGap(
                        f"the changes after seq {since} are no longer in the feed "
                        f"(it now starts after seq {page.last})",
                        changes,
                    )
                break
            if position == since and page.changes[0].seq != since + 1:
                raise _FeedGap(
                    f"the changes after seq {since} are no longer in the feed "
                    f"(it now starts at seq {page.changes[0].seq})",
                    changes,
                )
            changes.extend(page.changes)
            position = page.changes[-1].seq
            if len(changes) > budget:
                raise _FeedGap(
                    f"more than {budget} changes since seq {since}: rebuilding costs less",
                    changes,
                )
        return changes, position

    @staticmethod
    def _classify(changes: Iterable[Change]) -> tuple[set[str], set[str], set[str], set[str]]:
        """Sort the changes into resources to add, read again, mark stable, and remove.

        The last change of a resource decides (one deleted, then stored again, is new).
        Orthanc 1.10 to 1.12 never log ``Deleted``; should a server do so, it saves the
        count check the work of finding what vanished.
        """
        new: set[str] = set()
        refresh: set[str] = set()
        stable: set[str] = set()
        gone: set[str] = set()
        for change in changes:
            kind = change.change_type
            if kind == "Deleted":
                gone.add(change.id)
                new.discard(change.id)
                refresh.discard(change.id)
                stable.discard(change.id)
            elif kind.startswith("New") and kind != "NewChildInstance":
                new.add(change.id)
                gone.discard(change.id)
            elif kind.startswith("Stable"):
                stable.add(change.id)
            else:  # metadata, attachments, modified, completed, ...
                refresh.add(change.id)
        return new, refresh, stable, gone

    # -- fetching and applying --------------------------------------------------------------

    def _find(self, resource_id: str) -> Resource | None:
        for cls in LEVELS:
            found: Resource | None = self.state.tables[cls].get(resource_id)
            if found is not None:
                return found
        return None

    def _sync(self, *, new: set[str], refresh: set[str], gone: set[str]) -> None:
        """Fetch new and changed resources and the ancestors they affect; apply everything.

        New resources (and resources that were stored again) change their ancestors' child
        lists and ``LastUpdate``, so every ancestor is fetched again; a vanished resource
        changes its parent. Ancestors already in the forest are known locally, so this takes
        one bulk request for the resources and usually one more for their ancestors.
        """
        known_refresh = {i for i in refresh if self._find(i) is not None}
        pending: dict[str, bool] = {i: False for i in known_refresh}  # id -> ancestors needed
        pending.update({i: True for i in new})
        fetched: dict[str, dict[str, Any]] = {}
        vanished: set[str] = set(gone)
        for parent_id in {p for p in (self._parent_id_of(i) for i in gone) if p}:
            pending.setdefault(parent_id, False)
        asked: set[str] = set()
        while pending:
            batch = {i: up for i, up in pending.items() if i not in asked}
            pending = {}
            if not batch:
                break
            asked.update(batch)
            answer = {
                str(item.get("ID")): item
                for item in self.client.bulk_json(batch, chunk_size=BULK_CHUNK)
            }
            for resource_id, up in sorted(batch.items()):
                item = answer.get(resource_id)
                if item is None:
                    vanished.add(resource_id)
                    above = self._parent_id_of(resource_id)
                    if above and above not in asked:
                        pending.setdefault(above, False)
                    continue
                fetched[resource_id] = item
                self.fresh_ids.add(resource_id)
                if up:
                    self._schedule_ancestors(item, batch, asked, pending)
        self._apply(fetched, vanished)

    def _parent_id_of(self, resource_id: str) -> str | None:
        found = self._find(resource_id)
        if found is not None:
            return _parent_id(found)
        return None

    def _schedule_ancestors(
        self,
        item: dict[str, Any],
        batch: dict[str, bool],
        asked: set[str],
        pending: dict[str, bool],
    ) -> None:
        cls = _BY_LEVEL.get(str(item.get("Type")))
        if cls is None or cls is Patient:
            return
        parent_id = item.get(_PARENT_KEY[cls])
        if not isinstance(parent_id, str) or parent_id in batch:
            return  # its own fetch schedules the rest of the chain
        parent = self._find(parent_id)
        if parent is None:  # a new parent: its ancestors are scheduled once it is fetched
            if parent_id not in asked:
                pending[parent_id] = True
            return
        node: Resource | None = parent
        while node is not None:
            if node.id not in asked and node.id not in batch:
                pending.setdefault(node.id, False)
            up_id = _parent_id(node)
            node = self._find(up_id) if up_id else None

    def _apply(self, fetched: dict[str, dict[str, Any]], vanished: set[str]) -> None:
        state = self.state
        forest = self.forest
        deepest = _DEPTHS[forest.depth]
        for resource_id in sorted(vanished):
            found = self._find(resource_id)
            if found is not None:
                self._remove(found)
        memos = _new_memos()
        touched: list[Resource] = []
        new_objects: list[Resource] = []
        by_level: dict[type[Resource], list[dict[str, Any]]] = defaultdict(list)
        for item in fetched.values():
            cls = _BY_LEVEL.get(str(item.get("Type")))
            if cls is not None:
                by_level[cls].append(item)
        for cls in LEVELS[:deepest]:
            table = state.tables[cls]
            for item in sorted(by_level.get(cls, ()), key=lambda i: str(i.get("ID"))):
                obj = _FACTORIES[cls](item, forest.client, memos)
                old = table.get(obj.id)
                if old is None:
                    table[obj.id] = obj
                    state.index(obj)
                    new_objects.append(obj)
                    touched.append(obj)
                    continue
                if old.__dict__ != obj.__dict__:
                    state.unindex(old)
                    old.__dict__.update(obj.__dict__)
                    object.__setattr__(old, "__pydantic_fields_set__", obj.model_fields_set)
                    state.index(old)
                    self.updated[cls].append(old.id)
                touched.append(old)
        # children lists first, top-down, then whatever no parent claims is dropped
        for obj in touched:
            self._relink(obj)
        for obj in new_objects:
            if type(obj) is Patient:
                self.added[Patient].append(obj.id)
                continue
            parent = _parent_of(obj)
            if parent is None or not state.holds(parent):
                if state.holds(obj):
                    self._remove(obj, report=False)
                continue
            if state.holds(obj):
                self.added[type(obj)].append(obj.id)

    def _relink(self, parent: Resource) -> None:
        """Rebuild a resource's children from its child-ID list (trimmed to the forest)."""
        cls = type(parent)
        state = self.state
        if cls not in _CHILD_IDS_FIELD:
            return
        child_cls = LEVELS[LEVELS.index(cls) + 1]
        ids = parent.__dict__[_CHILD_IDS_FIELD[cls]]
        if child_cls not in state.levels:  # below the depth: lazy, reloaded on next access
            old = _children_of(parent)
            if old is not None and tuple(c.id for c in old) != ids:
                _private(parent)["_children"] = None
            return
        table = state.tables[child_cls]
        parent_field = _PARENT_FIELD[child_cls]
        kids = [
            table[i] for i in ids if i in table and table[i].__dict__[parent_field] == parent.id
        ]
        if len(kids) != len(ids):
            parent.__dict__[_CHILD_IDS_FIELD[cls]] = tuple(k.id for k in kids)
        keep = {k.id for k in kids}
        for old_child in _children_of(parent) or ():
            if old_child.id not in keep and table.get(old_child.id) is old_child:
                self._remove(old_child)
        for kid in kids:
            _private(kid)["_parent"] = parent
        _private(parent)["_children"] = tuple(kids)

    def _remove(self, obj: Resource, *, report: bool = True) -> None:
        """Drop a resource and everything below it from the forest."""
        state = self.state
        cls = type(obj)
        if not state.holds(obj):
            return
        del state.tables[cls][obj.id]
        state.unindex(obj)
        if report:
            self.removed[cls].append(obj.id)
        if cls in _CHILD_IDS_FIELD:
            child_cls = LEVELS[LEVELS.index(cls) + 1]
            table = state.tables[child_cls]
            for child_id in _child_ids(obj):
                child = table.get(child_id)
                if child is not None and _parent_of(child) is obj:
                    self._remove(child, report=report)
        parent = _parent_of(obj)
        if parent is None or not state.holds(parent):
            return
        siblings = _children_of(parent)
        if siblings is not None:
            _private(parent)["_children"] = tuple(s for s in siblings if s is not obj)
        key = _CHILD_IDS_FIELD[type(parent)]
        parent.__dict__[key] = tuple(i for i in parent.__dict__[key] if i != obj.id)

    def _apply_stable(self, stable: set[str]) -> None:
        """``Stable*`` changes: set ``is_stable`` without a request.

        Resources read during this update are skipped: what the server sent is newer than
        the change (a resource turns unstable again when an instance arrives).
        """
        for resource_id in sorted(stable - self.fresh_ids):
            found = self._find(resource_id)
            if found is None or found.__dict__.get("is_stable", True) is True:
                continue
            found.__dict__["is_stable"] = True
            self.updated[type(found)].append(resource_id)

    # -- deletions ------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Compare the counts with the server's; find what vanished (or was missed) by ID."""
        stats = self.client.get_json("/statistics") or {}
        keys = ("CountPatients", "CountStudies", "CountSeries", "CountInstances")
        state = self.state
        for position, (cls, key) in enumerate(zip(LEVELS, keys, strict=True)):
            if position > len(state.levels):
                break
            server = stats.get(key)
            have = _count(state, cls)
            if not isinstance(server, int) or have == server:
                continue
            on_server = self.client.get_json(f"/{cls.collection}")
            if not isinstance(on_server, list):
                raise OrthancError(f"GET /{cls.collection}: expected a JSON list of IDs")
            server_ids = {str(i) for i in on_server}
            self.notes.append(
                f"{have} {cls.collection} in the forest, {server} on the server: listed their IDs"
            )
            if cls in state.levels:
                mine = set(state.tables[cls])
                self._sync(new=server_ids - mine, refresh=set(), gone=mine - server_ids)
            else:  # the level below the depth: known only from the parents' child lists
                owners = {
                    child_id: parent.id
                    for parent in state.tables[LEVELS[position - 1]].values()
                    for child_id in _child_ids(parent)
                }
                parents = {owners[i] for i in set(owners) - server_ids}
                self._sync(new=server_ids - set(owners), refresh=parents, gone=set())

    # -- rebuild ----------------------------------------------------------------------------

    def _rebuild(self, reason: str, start: int, from_seq: int, changes: int) -> UpdateReport:
        forest = self.forest
        old = forest._state
        fresh = _load(forest.client, forest.depth, forest.page_size)
        for cls in LEVELS:
            before = old.tables[cls]
            after = fresh.tables[cls]
            self.added[cls] = [i for i in after if i not in before]
            self.removed[cls] = [i for i in before if i not in after]
            self.updated[cls] = [
                i for i, obj in after.items() if i in before and before[i].__dict__ != obj.__dict__
            ]
        forest._swap(fresh)
        return self._report(start, from_seq, changes, rebuilt=True, reason=reason)


# -- the cached entry point ---------------------------------------------------------------------


class ForestCache:
    """:func:`build_patient_forest`: builds forests and keeps them for a while.

    The cache is a :class:`cachetools.TTLCache` keyed by the server URL, the user name, a
    fingerprint of the credentials (never the credentials themselves), the depth and the page
    size: two clients of the same server and user share a forest. A lock makes two threads
    asking at once build it once.
    """

    def __init__(self, ttl: float = DEFAULT_TTL, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self._lock = threading.Lock()
        self._building: dict[tuple[Any, ...], threading.Lock] = {}
        self._cache: TTLCache[tuple[Any, ...], PatientForest] = TTLCache(maxsize, ttl)
        self._hits = 0
        self._misses = 0

    def __call__(
        self,
        client: Server,
        *,
        depth: str = "instance",
        page_size: int = DEFAULT_PAGE_SIZE,
        refresh: bool = False,
    ) -> PatientForest:
        """The patient forest of a server, from the cache or built now.

        Args:
            client: the server to read.
            depth: the deepest level to list: ``"instance"`` (everything), ``"series"``
                (no instance listing; ``series.instances`` then loads lazily, one request
                per series), ``"study"`` or ``"patient"``.
            page_size: resources per listing request.
            refresh: build again even if a cached forest is still fresh.

        Requests: none when cached; else ``GET /changes?last`` and one
        ``GET /{level}?expand&since&limit`` per page of each level down to ``depth``
        (200 patients, 600 studies, 2,400 series and 24,000 instances: 11 requests).

        Raises:
            ValueError: an unknown depth or a bad page size.
            OrthancError: the server refused or could not be reached.
        """
        checked = _check_depth(depth)
        size = _check_page_size(page_size)
        key = (client.url, client.username, client.credentials_fingerprint, checked, size)
        if not refresh:
            cached = self._get(key)
            if cached is not None:
                return cached
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            if not refresh:  # another thread may have built it while this one waited
                cached = self._get(key)
                if cached is not None:
                    return cached
            forest = load_forest(client, depth=checked, page_size=size)
            with self._lock:
                self._misses += 1
                self._cache[key] = forest
            return forest

    def _get(self, key: tuple[Any, ...]) -> PatientForest | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._hits += 1
            return found

    def cache_clear(self) -> None:
        """Forget every cached forest."""
        with self._lock:
            self._cache.clear()
            self._building.clear()
            self._hits = self._misses = 0

    def cache_info(self) -> CacheInfo:
        """Hits, misses, size and time-to-live of the cache."""
        with self._lock:
            return CacheInfo(
                self._hits,
                self._misses,
                int(self._cache.maxsize),
                len(self._cache),
                float(self._cache.ttl),
            )

    def configure(self, *, ttl: float | None = None, maxsize: int | None = None) -> None:
        """Change the time-to-live (seconds) or the size of the cache; empties it."""
        with self._lock:
            self._cache = TTLCache(
                maxsize if maxsize is not None else int(self._cache.maxsize),
                ttl if ttl is not None else float(self._cache.ttl),
            )
            self._building.clear()


build_patient_forest = ForestCache()
"""Build (or take from the cache) the patient forest of a server; see :class:`ForestCache`.

``build_patient_forest(client, *, depth="instance", page_size=4000, refresh=False)``;
``build_patient_forest.cache_clear()`` empties the cache.
"""

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TTL",
    "AmbiguousIdentifier",
    "ByLevel",
    "CacheInfo",
    "Change",
    "ChangePage",
    "ForestCache",
    "ForestCounts",
    "LevelView",
    "NotInForest",
    "PatientForest",
    "UpdateReport",
    "build_patient_forest",
    "load_forest",
]
