"""A compact forest in memory: each patient kept deflated, its models made when touched.

:func:`load_compact_forest` lists the server as :func:`~.model.load_forest` does and keeps the
same forest, but not as models: per patient, the deflated JSON of the patient and everything
below it (child-ID lists trimmed by the build's rule), plus, per level, the Orthanc IDs in
listing order and the identifier indexes by normalized key. Touching a resource (a lookup, a
find on an identifier, a link from a model already made) makes the models of its patient,
linked as a build links them; iterating a level and a find that cannot use an index make
every model, after which the forest is an ordinary one. ``update()`` makes the patients the
changes reach (new resources are kept as models), so that its cost still follows the number
of changes.
"""

from __future__ import annotations

import itertools
import threading
import zlib
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping, ValuesView
from typing import TYPE_CHECKING, Any

import pydantic_core

from .._answers import reading
from ..models import LEVELS, Resource, Study, level_class
from ._factory import _FACTORIES, _GC_PAUSE, _new_memos
from .build import (
    DEFAULT_PAGE_SIZE,
    Depth,
    _check_depth,
    _check_page_size,
    _feed_position,
    _listings,
)
from .model import PatientForest
from .state import _Index, _key, _private, _State, _TableOfModels

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["load_compact_forest"]

#: zlib level of the patients' JSON: 1 is several times faster than 6 for 10 % more bytes
_LEVEL = 1

#: what the build keeps of a listed resource: its JSON, parent ID, child IDs and index keys
_Meta = tuple[dict[str, Any], str | None, list[str], str | None, str | None]


def load_compact_forest(
    client: Server, *, depth: str = "instance", page_size: int = DEFAULT_PAGE_SIZE
) -> PatientForest:
    """Build a forest kept compact in memory (see the module); no cache.

    Requests: those of :func:`~.model.load_forest`: ``GET /changes?last``, then one
    ``GET /{level}?expand&since&limit`` per page of each level down to ``depth``.
    """
    checked = _check_depth(depth)
    size = _check_page_size(page_size)
    return PatientForest(client, checked, size, _load_compact(client, checked, size))


def _load_compact(client: Server, depth: Depth, page_size: int) -> _CompactState:
    levels = LEVELS[: level_class(depth).depth]
    state = _CompactState(levels, client)
    # first: what changes during the listing is replayed
    state.last_seq, state.anchor = _feed_position(client)
    meta: dict[type[Resource], dict[str, _Meta]] = {cls: {} for cls in levels}
    memos = _new_memos()
    with _GC_PAUSE, reading() as answer:
        for cls, page in _listings(client, levels, page_size):
            answer.request = f"GET /{cls.collection}"
            make = _FACTORIES[cls]
            uid_field = cls.uid_field
            is_study = cls is Study
            known = meta[cls]
            for item in page:
                # made and dropped: odd values fail here as in a build, and the keys are the
                # models' own values
                obj = make(item, None, memos)
                fields = obj.__dict__
                known[obj.id] = (  # listed twice: the first position, the latest content
                    item,
                    obj.parent_id,
                    list(obj.child_ids),
                    fields[uid_field],
                    fields["accession_number"] if is_study else None,
                )
            _GC_PAUSE.settle()
    state.fill(meta)
    return state


class _CompactState(_State):
    """The tables and indexes of a compact forest (:mod:`.compact`).

    Until :meth:`make_all`, the tables and indexes are the lazy mappings below, over the
    packed patients; afterwards they are the plain ones of :class:`~.state._State`.
    """

    def __init__(self, levels: Iterable[type[Resource]], client: Server) -> None:
        super().__init__(tuple(levels))
        self.client = client
        self.lock = threading.RLock()
        self.full = False
        #: per level: Orthanc ID -> its patient's Orthanc ID, in listing order
        self.order: dict[type[Resource], dict[str, str]] = {cls: {} for cls in LEVELS}
        #: per patient: the deflated JSON of its resources, level by level
        self.packed: dict[str, bytes] = {}
        #: per level: normalized identifier -> Orthanc ID(s); the same for AccessionNumber
        self.keys: dict[type[Resource], dict[str, Any]] = {cls: {} for cls in LEVELS}
        self.accession_keys: dict[str, Any] = {}
        #: the models made so far
        self.made: dict[type[Resource], dict[str, Resource]] = {cls: {} for cls in LEVELS}
        #: per patient: the children its resources of the deepest level list (below the depth)
        self.below: dict[str, int] = {}
        #: per level: the IDs listed with labels (the packed ones a label refresh must make)
        self.listed_with_labels: dict[type[Resource], set[str]] = {cls: set() for cls in LEVELS}
        self.tables = {cls: _CompactTable(self, cls) for cls in LEVELS}
        self.uids = {cls: _CompactIndex(self, cls, cls.uid_field) for cls in LEVELS}
        self.accession = _CompactIndex(self, Study, "accession_number")

    def reload(self, client: Server, depth: str, page_size: int) -> _CompactState:
        return _load_compact(client, _check_depth(depth), page_size)

    def labelled(self, cls: type[Resource]) -> list[Resource]:
        if self.full:
            return super().labelled(cls)
        made = self.made[cls]
        ids = self.listed_with_labels[cls] | {i for i, o in made.items() if o.__dict__["labels"]}
        table = self.tables[cls]
        return [obj for i in sorted(ids) if (obj := table.get(i)) is not None]

    def changes_from(self, old: _State) -> dict[str, dict[type[Resource], list[str]]]:
        """As a build's, but only the patients whose packed JSON differs from ``old``'s are
        made to compare their fields: a rebuild of an unchanged site stays packed."""
        if self.full:
            return super().changes_from(old)
        packed_before = old.packed if isinstance(old, _CompactState) and not old.full else {}
        changes: dict[str, dict[type[Resource], list[str]]] = {
            "added": {}, "removed": {}, "updated": {}
        }
        for cls in LEVELS:
            before_ids = set(old.tables[cls])
            order = self.order[cls]
            changes["added"][cls] = [i for i in order if i not in before_ids]
            changes["removed"][cls] = [i for i in before_ids if i not in order]
            updated = changes["updated"][cls] = []
            before = old.tables[cls]
            for resource_id, root in order.items():
                if resource_id not in before_ids:
                    continue
                data = self.packed.get(root)
                if data is not None and packed_before.get(root) == data:
                    continue  # listed the same, byte for byte
                obj = self.tables[cls].get(resource_id)
                if before[resource_id].__dict__ != obj.__dict__:
                    updated.append(resource_id)
        return changes

    # -- the build ----------------------------------------------------------------------------

    def fill(self, meta: dict[type[Resource], dict[str, _Meta]]) -> None:
        """Link by the build's rule, index, and pack each patient."""
        levels = self.levels
        roots: dict[str, str] = {i: i for i in meta[levels[0]]}
        for parent_cls, child_cls in itertools.pairwise(levels):
            parents = meta[parent_cls]
            children = meta[child_cls]
            key = parent_cls.child_ids_key()
            assert key is not None
            for parent_id in parents:
                if parent_id not in roots:  # left out: so are its children
                    continue
                item, ids = parents[parent_id][0], parents[parent_id][2]
                kids = [c for c in ids if (m := children.get(c)) is not None and m[1] == parent_id]
                if len(kids) != len(ids):
                    item[key] = kids
                root = roots[parent_id]
                for child_id in kids:
                    roots[child_id] = root
        deepest = levels[-1]
        if deepest.child_class() is not None:  # the level below the depth, counted per patient
            for resource_id, m in meta[deepest].items():
                if resource_id in roots:
                    root = roots[resource_id]
                    self.below[root] = self.below.get(root, 0) + len(m[2])
        grouped: dict[str, list[list[dict[str, Any]]]] = {}
        for depth, cls in enumerate(levels):
            order = self.order[cls]
            keys = self.keys[cls]
            for resource_id, (item, _parent, _kids, uid, accession) in meta[cls].items():
                found = roots.get(resource_id)
                if found is None:
                    continue
                root = found
                order[resource_id] = root
                if item.get("Labels"):
                    self.listed_with_labels[cls].add(resource_id)
                _add(keys, uid, resource_id)
                if accession is not None:
                    _add(self.accession_keys, accession, resource_id)
                if depth == 0:
                    grouped[root] = [[] for _ in levels]
                grouped[root][depth].append(item)
        for root, items in grouped.items():
            self.packed[root] = zlib.compress(pydantic_core.to_json(items), _LEVEL)

    # -- making models ------------------------------------------------------------------------

    def make(self, root: str) -> None:
        """The models of one patient and everything below it, linked."""
        with self.lock:
            data = self.packed.pop(root, None)
            if data is None:
                return
            memos = _new_memos()
            client = self.client
            made: list[dict[str, Resource]] = []
            levels = pydantic_core.from_json(zlib.decompress(data))
            for cls, items in zip(self.levels, levels, strict=True):
                make = _FACTORIES[cls]
                objs = [make(item, client, memos) for item in items]
                made.append({obj.id: obj for obj in objs})
            for parents, children in itertools.pairwise(made):
                for parent in parents.values():
                    kids = tuple(children[i] for i in parent.child_ids)
                    for kid in kids:
                        _private(kid)["_parent"] = parent
                    _private(parent)["_children"] = kids
            # published linked: a reader in another thread never sees a model without links
            for cls, level in zip(self.levels, made, strict=True):
                self.made[cls].update(level)

    def make_all(self) -> None:
        """Every model; the tables and indexes become the plain ones."""
        with self.lock:
            if self.full:
                return
            with _GC_PAUSE:
                for root in list(self.packed):
                    self.make(root)
                _GC_PAUSE.settle()
            tables: dict[type[Resource], MutableMapping[str, Any]] = {}
            uids = {cls: _Index(cls.uid_field) for cls in LEVELS}
            accession = _Index("accession_number")
            for cls in LEVELS:
                made = self.made[cls]
                table = tables[cls] = {i: made[i] for i in self.order[cls]}
                index = uids[cls]
                for obj in table.values():
                    index.add(obj.__dict__[cls.uid_field], obj)
                    if cls is Study:
                        accession.add(obj.__dict__["accession_number"], obj)
            self.tables, self.uids, self.accession = tables, uids, accession
            self.full = True
            self.order = {cls: {} for cls in LEVELS}
            self.keys = {cls: {} for cls in LEVELS}
            self.accession_keys = {}
            self.made = {cls: {} for cls in LEVELS}
            self.below = {}
            self.listed_with_labels = {cls: set() for cls in LEVELS}

    def count(self, cls: type[Resource]) -> int:
        if self.full:
            return super().count(cls)
        if cls in self.levels:
            return len(self.order[cls])
        if cls.depth != len(self.levels) + 1:
            return 0
        # the packed patients as listed, the models made as they are now (an update changes
        # their child lists in place)
        field = self.levels[-1].child_ids_field
        assert field is not None
        packed = sum(self.below.get(root, 0) for root in self.packed)
        made = self.made[self.levels[-1]].values()
        return packed + sum(len(obj.__dict__[field]) for obj in made)

    def held(self) -> int:
        """Models in memory, all levels (every one once the forest is full)."""
        if self.full:
            return sum(len(self.tables[cls]) for cls in self.levels)
        return sum(len(made) for made in self.made.values())


def _add(keys: dict[str, Any], value: str | None, resource_id: str) -> None:
    if not value:
        return
    key = _key(value)
    previous = keys.get(key)
    if previous is None:
        keys[key] = resource_id
    elif type(previous) is list:
        previous.append(resource_id)
    else:
        keys[key] = [previous, resource_id]


class _CompactTable(_TableOfModels):
    """Orthanc ID -> model for one level; a miss makes the resource's patient."""

    def __init__(self, state: _CompactState, cls: type[Resource]) -> None:
        self.state = state
        self.cls = cls

    def _plain(self) -> MutableMapping[str, Any] | None:
        state = self.state
        return state.tables[self.cls] if state.full else None

    def get(self, key: str, default: Any = None) -> Any:
        plain = self._plain()
        if plain is not None:
            return plain.get(key, default)
        state = self.state
        obj = state.made[self.cls].get(key)
        if obj is not None:
            return obj
        root = state.order[self.cls].get(key) if type(key) is str else None
        if root is None:
            return default
        state.make(root)
        plain = self._plain()  # another thread may have made everything meanwhile
        found = plain.get(key) if plain is not None else state.made[self.cls].get(key)
        return default if found is None else found

    def __len__(self) -> int:
        plain = self._plain()
        return len(plain) if plain is not None else len(self.state.order[self.cls])

    def __iter__(self) -> Iterator[str]:
        plain = self._plain()
        return iter(list(plain if plain is not None else self.state.order[self.cls]))

    def _all(self) -> MutableMapping[str, Any]:
        self.state.make_all()
        plain = self._plain()
        assert plain is not None
        return plain

    def __setitem__(self, key: str, obj: Any) -> None:
        """A resource an update adds (or replaces): kept as a model, its patient unpacked."""
        state = self.state
        with state.lock:
            plain = self._plain()
            if plain is not None:
                plain[key] = obj
                return
            order = state.order[self.cls]
            if key in order:
                self.get(key)  # its patient is made first: never packed and made at once
            else:
                parent_cls = self.cls.parent_class()
                parent_id = obj.parent_id
                root = state.order[parent_cls].get(parent_id) if parent_cls and parent_id else None
                if root is not None:
                    state.make(root)  # the parent's patient is made before anything joins it
                order[key] = root or key
            state.made[self.cls][key] = obj

    def __delitem__(self, key: str) -> None:
        state = self.state
        with state.lock:
            plain = self._plain()
            if plain is not None:
                del plain[key]
                return
            if self.get(key) is None:
                raise KeyError(key)
            del state.made[self.cls][key]
            del state.order[self.cls][key]

    def values(self) -> ValuesView[Any]:
        return self._all().values()

    def items(self) -> ItemsView[str, Any]:
        return self._all().items()


class _CompactIndex(_Index):
    """Identifier -> resources for one level, from the normalized keys kept by the build."""

    def __init__(self, state: _CompactState, cls: type[Resource], field: str) -> None:
        super().__init__(field)
        self.state = state
        self.cls = cls

    def _plain(self) -> _Index | None:
        state = self.state
        if not state.full:
            return None
        return state.accession if self.field == "accession_number" else state.uids[self.cls]

    def _ids(self, key: str) -> list[str]:
        found = self._keys().get(key)
        if found is None:
            return []
        return list(found) if type(found) is list else [found]

    def _keys(self) -> dict[str, Any]:
        state = self.state
        return state.accession_keys if self.field == "accession_number" else state.keys[self.cls]

    def add(self, key: str | None, obj: Resource) -> None:
        with self.state.lock:
            plain = self._plain()
            if plain is not None:
                plain.add(key, obj)
            else:
                _add(self._keys(), key, obj.id)

    def remove(self, key: str | None, obj: Resource) -> None:
        with self.state.lock:
            plain = self._plain()
            if plain is not None:
                plain.remove(key, obj)
                return
            if not key:
                return
            keys = self._keys()
            index_key = _key(key)
            found = keys.get(index_key)
            if type(found) is list:
                kept = [i for i in found if i != obj.id]
                if len(kept) > 1:
                    keys[index_key] = kept
                elif kept:
                    keys[index_key] = kept[0]
                else:
                    del keys[index_key]
            elif found == obj.id:
                del keys[index_key]

    def candidates(self, keys: Iterable[str]) -> list[Resource]:
        plain = self._plain()
        if plain is not None:
            return plain.candidates(keys)
        table = self.state.tables[self.cls]
        found = [table.get(i) for key in keys for i in self._ids(key)]
        return [obj for obj in found if obj is not None]

    def all(self, key: str) -> list[Resource]:
        plain = self._plain()
        if plain is not None:
            return plain.all(key)
        if not key:
            return []
        field = self.field
        assert field is not None
        return [o for o in self.candidates([_key(key)]) if o.__dict__[field] == key]
