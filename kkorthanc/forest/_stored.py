"""A forest's state kept in its file: rows listed into it, models made from it when touched.

:class:`_StoredState` takes the place of the in-memory :class:`~.state._State`: its tables
and indexes are backed by the file (:class:`~._file.ForestFile`) and hold only the models
touched so far. Touching a resource (a lookup, a walk, an update) makes models of its whole
patient, linked as a build links them, so that walking the links never asks the file or the
server; a level is read whole only when it is iterated. :func:`fill` lists the server into
the file without making models last; :class:`_StoreUpdater` is the change-feed updater of
:mod:`.update`, writing what it changed back to the file.
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import ItemsView, Iterable, Iterator, ValuesView
from typing import TYPE_CHECKING, Any, cast

from .._answers import reading
from ..models import LEVELS, Patient, Resource, Study, level_class
from ._factory import _FACTORIES, _GC_PAUSE, _new_memos
from ._file import (
    Codec,
    ForestFile,
    Listed,
    Row,
    identifier_key,
    make_dictionary,
    pos_range,
)
from .build import _feed_position, _listings
from .reports import UpdateReport
from .state import _Index, _private, _State, _TableOfModels
from .update import _Updater

if TYPE_CHECKING:
    from ..server import Server
    from .build import Depth
    from .model import PatientForest


def server_identity(client: Server) -> dict[str, Any]:
    """What the header records of the server (``GET /system``, once per client)."""
    info = client.system
    extra = info.model_extra or {}
    return {
        "name": info.name,
        "version": info.version,
        "api_version": info.api_version,
        "index": info.index,
        "database_server_identifier": extra.get("DatabaseServerIdentifier"),
    }


# -- building the file ----------------------------------------------------------------------


def fill(
    file: ForestFile, client: Server, depth: Depth, page_size: int, *, new_dictionaries: bool
) -> dict[str, Any]:
    """List the levels down to ``depth`` into the ``staging`` table; the header's values.

    The same requests and the same rule as an in-memory build (``docs/forest.md``): a
    resource is kept when its parent is and the parent's child-ID list names it, and child-ID
    lists are trimmed to the children kept. Models are made of each listed resource (so that
    the same odd values fail as they would in memory, and the columns hold the very values the
    models have) but not kept: only IDs and child-ID lists stay in memory until the linking.
    """
    levels = LEVELS[: level_class(depth).depth]
    identity = server_identity(client)
    # first: what changes during the listing is replayed
    last_seq, anchor = _feed_position(client)
    if new_dictionaries:
        file.codecs = {}
    file.create_staging()
    meta: dict[type[Resource], dict[str, _Listed]] = {cls: {} for cls in levels}
    counters = {cls: pos_range(cls)[0] for cls in levels}
    memos = _new_memos()
    with _GC_PAUSE, reading() as answer:
        for cls, page in _listings(client, levels, page_size):
            answer.request = f"GET /{cls.collection}"
            codec = file.codecs.get(cls.depth)
            if codec is None:
                codec = file.codecs[cls.depth] = Codec(cls, make_dictionary(cls, page))
            make = _FACTORIES[cls]
            uid_field = cls.uid_field
            is_study = cls is Study
            known = meta[cls]
            pos = counters[cls]
            rows = []
            again = []  # listed twice (pages shifted): the first position, the last content
            for item in page:
                obj = make(item, None, memos)
                fields = obj.__dict__
                kids = obj.child_ids
                row = (
                    obj.parent_id,
                    identifier_key(fields[uid_field]),
                    identifier_key(fields["accession_number"]) if is_study else None,
                    len(kids),
                    codec.encode(item),
                )
                first = known.get(obj.id)
                if first is None:
                    pos += 1
                    known[obj.id] = (obj.parent_id, kids, pos)
                    rows.append((pos, cls.depth, obj.id, *row))
                else:
                    known[obj.id] = (obj.parent_id, kids, first[2])
                    again.append((*row, first[2]))
            counters[cls] = pos
            file.stage(rows)
            file.restage(again)
            _GC_PAUSE.settle()
    counts, deepest_kept = _link_staged(file, levels, meta)
    deepest = meta[levels[-1]]
    below = sum(len(deepest[i][1]) for i in deepest_kept)
    return {
        "url": client.url,
        "server": identity,
        "depth": depth,
        "last_seq": last_seq,
        "anchor": list(anchor) if anchor is not None else None,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "counts": [counts.get(cls, 0) for cls in LEVELS],
        "below": below,
    }


#: what a build keeps of a listed resource until the linking: parent, child IDs, position
_Listed = tuple[str | None, tuple[str, ...], int]


def _link_staged(
    file: ForestFile,
    levels: tuple[type[Resource], ...],
    meta: dict[type[Resource], dict[str, _Listed]],
) -> tuple[dict[type[Resource], int], set[str]]:
    """Drop what no parent names, trim child-ID lists to what is kept; the counts and the
    resources kept at the deepest level."""
    kept = set(meta[levels[0]])
    counts = {levels[0]: len(kept)}
    orphans: list[int] = []
    trimmed: dict[int, tuple[str, ...]] = {}
    for parent_cls, child_cls in itertools.pairwise(levels):
        parents = meta[parent_cls]
        children = meta[child_cls]
        keep: set[str] = set()
        for parent_id in kept:  # an orphan's children are not kept either: no kept parent
            _, ids, pos = parents[parent_id]
            kids = tuple(c for c in ids if (m := children.get(c)) is not None and m[0] == parent_id)
            if len(kids) != len(ids):
                trimmed[pos] = kids
            keep.update(kids)
        orphans += [m[2] for c, m in children.items() if c not in keep]
        kept = keep
        counts[child_cls] = len(kept)
    file.unstage(orphans)
    if trimmed:
        staged = file.staged(list(trimmed))
        updates = []
        for pos, kids in trimmed.items():
            level, resource_id, parent, data = staged[pos]
            cls = LEVELS[level - 1]
            codec = file.codecs[level]
            item = codec.decode(data, resource_id, parent)
            key = cls.child_ids_key()
            assert key is not None
            item[key] = list(kids)
            updates.append((codec.encode(item), len(kids), pos))
        file.db.executemany("UPDATE staging SET json = ?, children = ? WHERE pos = ?", updates)
    for cls in levels:
        if cls.depth not in file.codecs:
            file.codecs[cls.depth] = Codec(cls, make_dictionary(cls, []))
    return counts, kept


# -- the state ------------------------------------------------------------------------------


class _StoredState(_State):
    """Tables and indexes backed by the file; models of the patients touched so far.

    Every method takes :attr:`lock` (the forest's lock): an update holds it throughout, so
    readers wait for it and see the forest before or after, never in between.
    """

    def __init__(self, file: ForestFile, client: Server, header: dict[str, Any]) -> None:
        super().__init__(LEVELS[: level_class(str(header["depth"])).depth])
        self.file = file
        self.client = client
        self.lock = threading.RLock()
        self.lazy: dict[type[Resource], _LazyTable] = {cls: _LazyTable(self, cls) for cls in LEVELS}
        self.tables = {cls: table for cls, table in self.lazy.items()}
        self.uids = {cls: _LazyIndex(self, cls, "uid", cls.uid_field) for cls in LEVELS}
        self.accession = _LazyIndex(self, Study, "accession", "accession_number")
        #: patients whose whole tree is in memory
        self.loaded: set[str] = set()
        self.all_loaded = False
        # what an update changes, until it is written to the file
        self.updating = False
        self.touched: set[str] = set()
        self.new: list[Resource] = []
        self.fetched: dict[str, dict[str, Any]] = {}
        self.read_header(header)

    def read_header(self, header: dict[str, Any]) -> None:
        self.last_seq = int(header["last_seq"])
        anchor = header.get("anchor")
        self.anchor = (
            (int(anchor[0]), str(anchor[1]), str(anchor[2]), str(anchor[3]))
            if isinstance(anchor, list) and len(anchor) == 4
            else None
        )
        self.built_at = datetime.datetime.fromisoformat(str(header["built_at"]))
        self.header = header
        self.below = int(header.get("below", 0))
        counts = header.get("counts") or [0] * len(LEVELS)
        for cls, count in zip(LEVELS, counts, strict=True):
            self.lazy[cls].count = int(count)

    def reset(self, header: dict[str, Any]) -> None:
        """Forget every model and pending change; read the state from the header."""
        for table in self.lazy.values():
            table.clear_memory()
        self.loaded.clear()
        self.all_loaded = False
        self.touched.clear()
        self.new.clear()
        self.fetched.clear()
        self.read_header(header)

    def header_values(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.header.items() if not k.startswith("dictionary:")},
            "last_seq": self.last_seq,
            "anchor": list(self.anchor) if self.anchor is not None else None,
            "counts": [self.lazy[cls].count for cls in LEVELS],
            "below": self.below,
            "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }

    def count(self, cls: type[Resource]) -> int:
        if cls in self.levels:
            return self.lazy[cls].count
        return self.below if cls.depth == len(self.levels) + 1 else 0

    def memory_size(self) -> int:
        """Models in memory, all levels."""
        return sum(len(table.mem) for table in self.lazy.values())

    # -- making models ------------------------------------------------------------------------

    def load(self, cls: type[Resource], resource_id: str) -> Resource | None:
        """The model of a resource of ``cls``, with its whole patient (``None``: not there)."""
        found = self.file.locate(resource_id)
        if found is None or found[0] != cls.depth:
            return None
        self.load_tree(found[1])
        obj: Resource | None = self.lazy[cls].mem.get(resource_id)
        return obj

    def load_tree(self, root: str) -> None:
        if root in self.loaded or self.all_loaded:
            return
        self._make(self.file.tree(root))
        self.loaded.add(root)

    def load_all(self) -> None:
        """Every model (a level is iterated): one pass over the file, in listing order."""
        with self.lock:
            if self.all_loaded:
                return
            with _GC_PAUSE:
                self._make(self.file.rows())
                _GC_PAUSE.settle()
            self.all_loaded = True
            for cls in self.levels:  # listing order from now on, kept by updates
                self.lazy[cls].reorder()

    def _make(self, rows: Iterable[tuple[int, str, str | None, bytes]]) -> None:
        memos = _new_memos()
        made: list[Resource] = []
        codecs = self.file.codecs
        client = self.client
        for level, resource_id, parent_id, data in rows:
            table = self.lazy[LEVELS[level - 1]]
            if resource_id in table.mem or resource_id in table.dead:
                continue
            item = codecs[level].decode(data, resource_id, parent_id)
            obj = _FACTORIES[table.cls](item, client, memos)
            table.mem[resource_id] = obj
            made.append(obj)
        linked = len(self.levels)
        for obj in made:
            cls = type(obj)
            if cls.depth >= linked:
                continue
            child_cls = cls.child_class()
            ids_field = cls.child_ids_field
            assert child_cls is not None and ids_field is not None
            children = self.lazy[child_cls].mem
            parent_field = child_cls.parent_field
            ids = obj.__dict__[ids_field]
            kids = tuple(
                children[i]
                for i in ids
                if i in children and children[i].__dict__[parent_field] == obj.id
            )
            if len(kids) != len(ids):  # not written by this module: linked by the same rule
                obj.__dict__[ids_field] = tuple(k.id for k in kids)
            for kid in kids:
                _private(kid)["_parent"] = obj
            _private(obj)["_children"] = kids

    # -- what an update changes ---------------------------------------------------------------

    def touch(self, obj: Resource) -> None:
        """Note the patient of a resource an update reached: its tree is compared when the
        update writes."""
        node = obj
        while (parent := node.linked_parent()) is not None:
            node = parent
        if type(node) is Patient:
            self.touched.add(node.id)

    def pending(self) -> bool:
        return bool(self.touched or self.new or any(t.dead or t.added for t in self.lazy.values()))

    def write_pending(self) -> None:
        """Write what the update changed so far into the open transaction."""
        if not self.pending():
            return
        for obj in self.new:
            if self.holds(obj):
                self.touch(obj)
        self.new.clear()
        file = self.file
        gone: set[str] = set()
        for table in self.lazy.values():
            gone |= table.dead
            gone.update(table.added)
        file.delete(sorted(gone))
        candidates: list[Resource] = []
        for root in sorted(self.touched):
            patient = self.lazy[Patient].mem.get(root)
            if patient is not None:
                candidates += self._tree_of(patient)
        existing = [o.id for o in candidates if o.id not in self.lazy[type(o)].added]
        stored = file.json_of(existing)
        changed: list[Row] = []
        for obj in candidates:
            if obj.id in stored:
                row = self._row(obj, stored[obj.id])
                if row is not None:
                    changed.append(row)
        file.update(changed)
        inserts: list[Row] = []
        for table in self.lazy.values():
            for resource_id in table.added:
                new = table.mem.get(resource_id)
                if new is not None:
                    row = self._row(new, None)
                    assert row is not None
                    inserts.append(row)
        file.insert(inserts)
        for table in self.lazy.values():
            table.dead.clear()
            table.added.clear()
        self.touched.clear()
        self.fetched.clear()
        deepest = self.levels[-1]
        if deepest.child_class() is not None:
            self.below = file.children_sum(deepest)

    def _tree_of(self, patient: Resource) -> list[Resource]:
        out = [patient]
        linked = len(self.levels)
        for obj in out:  # grows while it is read: breadth first
            if type(obj).depth < linked:
                out.extend(obj.linked_children() or ())
        return out

    def _row(self, obj: Resource, old: bytes | None) -> Row | None:
        """The row of a model (``None``: the stored ``old`` row says the same)."""
        cls = type(obj)
        codec = self.file.codecs[cls.depth]
        base = self.fetched.get(obj.id)
        if base is None:
            assert old is not None, f"{obj.level} {obj.id}: a new resource that was not read"
            base = codec.decode(old, obj.id, obj.parent_id)
            item, patched = _as_held(base, obj)
            if not patched:
                return None
            data = codec.encode(item)
        else:
            data = codec.encode(_as_held(base, obj)[0])
            if data == old:
                return None
        fields = obj.__dict__
        return Row(
            level=cls.depth,
            id=obj.id,
            parent=obj.parent_id,
            uid=identifier_key(fields[cls.uid_field]),
            accession=identifier_key(fields["accession_number"]) if cls is Study else None,
            children=len(obj.child_ids),
            json=data,
        )

    def child_owners(self, parent_cls: type[Resource]) -> dict[str, str]:
        """Child ID -> parent ID over a whole level, read from the file (what is written)."""
        key = parent_cls.child_ids_key()
        assert key is not None
        codec = self.file.codecs[parent_cls.depth]
        owners: dict[str, str] = {}
        for resource_id, parent_id, data in self.file.level_rows(parent_cls):
            obj = self.lazy[parent_cls].mem.get(resource_id)
            if obj is not None:
                ids = obj.child_ids
            else:
                ids = codec.decode(data, resource_id, parent_id)[key]
            for child_id in ids:
                owners[child_id] = resource_id
        return owners


def _as_held(item: dict[str, Any], obj: Resource) -> tuple[dict[str, Any], bool]:
    """Orthanc's JSON with what the forest changes in place (trimmed child lists, ``IsStable``
    from a change, labels) as the model holds it; whether anything differed."""
    cls = type(obj)
    fields = obj.__dict__
    changes: dict[str, Any] = {}
    key = cls.child_ids_key()
    if key is not None and item.get(key) != list(obj.child_ids):
        changes[key] = list(obj.child_ids)
    if "is_stable" in fields and item.get("IsStable") != fields["is_stable"]:
        changes["IsStable"] = fields["is_stable"]
    if item.get("Labels", []) != list(fields["labels"]):
        changes["Labels"] = list(fields["labels"])
    if not changes:
        return item, False
    return {**item, **changes}, True


class _LazyTable(_TableOfModels):
    """Orthanc ID -> model for one level: the models in memory, the rest read on demand.

    ``mem`` holds the models made so far; a miss asks the file and makes the resource's
    whole patient. While an update runs, ``dead`` and ``added`` hold what it removed and
    added until it is written, and every resource it reaches marks its patient as touched.
    """

    def __init__(self, state: _StoredState, cls: type[Resource]) -> None:
        self.state = state
        self.cls = cls
        self.mem: dict[str, Any] = {}
        self.count = 0
        self.dead: set[str] = set()
        self.added: dict[str, None] = {}
        self.ordered = False

    def clear_memory(self) -> None:
        self.mem = {}
        self.dead.clear()
        self.added.clear()
        self.ordered = False

    def reorder(self) -> None:
        """Put ``mem`` in listing order (once every model is in memory)."""
        mem = self.mem
        ordered = {i: mem[i] for i in self.state.file.ids(self.cls) if i in mem}
        for key, obj in mem.items():  # added by a running update, not written yet
            ordered.setdefault(key, obj)
        self.mem = ordered
        self.ordered = True

    def get(self, key: str, default: Any = None) -> Any:
        state = self.state
        with state.lock:
            obj = self.mem.get(key)
            if obj is None:
                if key in self.dead or state.all_loaded or type(key) is not str or not self.count:
                    return default
                obj = state.load(self.cls, key)
                if obj is None:
                    return default
            if state.updating:
                state.touch(obj)
            return obj

    def __setitem__(self, key: str, obj: Any) -> None:
        state = self.state
        with state.lock:
            if self.get(key) is None:
                self.count += 1
                self.added[key] = None
                if self.cls is Patient:
                    state.loaded.add(key)
            self.mem[key] = obj
            self.dead.discard(key)
            if state.updating:
                state.new.append(obj)

    def __delitem__(self, key: str) -> None:
        with self.state.lock:
            if self.get(key) is None:
                raise KeyError(key)
            del self.mem[key]
            self.count -= 1
            self.dead.add(key)
            self.added.pop(key, None)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        with self.state.lock:
            if self.ordered:
                return iter(list(self.mem))
            ids = self.state.file.ids(self.cls)
            if self.dead or self.added:
                skip = self.dead | set(self.added)
                ids = [i for i in ids if i not in skip] + list(self.added)
            return iter(ids)

    def values(self) -> ValuesView[Any]:
        self.state.load_all()
        return self.mem.values()

    def items(self) -> ItemsView[str, Any]:
        self.state.load_all()
        return self.mem.items()


class _LazyIndex(_Index):
    """Identifier -> resources for one level, answered by the file's ``uid`` (or
    ``accession``) column: candidates by key, then the models' own field compared exactly.

    Adding and removing do nothing: the column is written with the rows.
    """

    def __init__(self, state: _StoredState, cls: type[Resource], column: str, field: str) -> None:
        super().__init__()
        self.state = state
        self.cls = cls
        self.column = column
        self.field = field

    def add(self, key: str | None, obj: Resource) -> None:
        return None

    def remove(self, key: str | None, obj: Resource) -> None:
        return None

    def all(self, key: str) -> list[Resource]:
        wanted = identifier_key(key)
        state = self.state
        if wanted is None:
            return []
        with state.lock:
            table = state.lazy[self.cls]
            if not table.count:
                return []
            found: list[Resource] = []
            for resource_id in state.file.ids_by_key(self.column, self.cls, [wanted]):
                obj = table.get(resource_id)
                if obj is not None and obj.__dict__[self.field] == key:
                    found.append(obj)
            return found


# -- the updater ------------------------------------------------------------------------------


class _StoreUpdater(_Updater):
    """The change-feed updater of :mod:`.update`, on a state backed by the file.

    The same classification, fetching and applying; what each step changed is written into
    the update's transaction after it, so that counts and ID listings read from the file
    are those of the forest in memory. Tables and indexes are not journaled: a failed update
    rolls the file back and reads it again (:meth:`StoredForest.update`); the models it
    changed are put back.
    """

    journal_tables = False

    @property
    def stored(self) -> _StoredState:
        return cast(_StoredState, self.forest._state)

    def _apply(self, fetched: dict[str, dict[str, Any]], vanished: set[str]) -> None:
        self.stored.fetched.update(fetched)
        super()._apply(fetched, vanished)

    def _sync(self, *, new: set[str], refresh: set[str], gone: set[str]) -> None:
        super()._sync(new=new, refresh=refresh, gone=gone)
        self.stored.write_pending()

    def _reconcile(self) -> None:
        self.stored.write_pending()  # the Stable* changes
        super()._reconcile()

    def _child_owners(self, parent_cls: type[Resource]) -> dict[str, str]:
        return self.stored.child_owners(parent_cls)

    def _relabeled(self, obj: Resource) -> None:
        self.stored.touch(obj)

    def _rebuild(self, reason: str, start: int, from_seq: int, changes: int) -> UpdateReport:
        forest = self.forest
        added, removed, changed = rebuild(forest, new_dictionaries=False)
        for level, resource_id in added:
            self.added[LEVELS[level - 1]].append(resource_id)
        for level, resource_id in removed:
            self.removed[LEVELS[level - 1]].append(resource_id)
        for level, resource_id in changed:
            self.updated[LEVELS[level - 1]].append(resource_id)
        forest._version += 1
        return self._report(start, from_seq, changes, rebuilt=True, reason=reason)


def write_forest(
    file: ForestFile,
    client: Server,
    depth: Depth,
    page_size: int,
    *,
    new_dictionaries: bool,
    compare: bool,
) -> tuple[tuple[Listed, Listed, Listed], dict[str, Any]]:
    """List the server into the file, inside the open transaction, in place of what it held.

    Returns ``(added, removed, changed)`` as ``(level, id)`` against the previous rows (when
    ``compare``), and the new header.
    """
    values = fill(file, client, depth, page_size, new_dictionaries=new_dictionaries)
    file.create_header()
    had_rows = file.db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'resources'"
    ).fetchone()
    diff: tuple[Listed, Listed, Listed] = (
        file.compare_staging() if compare and had_rows else ([], [], [])
    )
    file.install_staging()
    file.db.execute("DELETE FROM header")
    file.stamp(values)
    header = file.header()
    assert header is not None
    return diff, header


def rebuild(forest: PatientForest, *, new_dictionaries: bool) -> tuple[Listed, Listed, Listed]:
    """List the server into the forest's file again and forget every model; what was added,
    removed and changed, as ``(level, id)``."""
    state = cast(_StoredState, forest._state)
    diff, header = write_forest(
        state.file,
        forest.client,
        forest.depth,
        forest.page_size,
        new_dictionaries=new_dictionaries,
        compare=True,
    )
    state.reset(header)
    return diff
