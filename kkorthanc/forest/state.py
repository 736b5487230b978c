"""What a build produces, and the read-only views over it.

:class:`_State` holds one table per level (Orthanc ID -> model, in listing order) and the
identifier indexes; an update edits it in place, a rebuild replaces it whole.
:class:`LevelView` is ``forest.patients``, ``forest.studies``, ...
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..models import LEVELS, Resource, Study
from ..query.engine import normalize_identifier

if TYPE_CHECKING:
    from ..server import Server
    from .model import PatientForest

R = TypeVar("R", bound=Resource)


# Links are written straight into pydantic's private-attribute dict: the forest sets tens of
# thousands of them and the attribute protocol would cost more than the rest of the linking.
def _private(obj: Resource) -> dict[str, Any]:
    private: dict[str, Any] = obj.__pydantic_private__  # type: ignore[assignment]
    return private


def _level_of(item: dict[str, Any]) -> type[Resource] | None:
    """The model class of an expanded JSON object, by its ``Type`` (``"Patient"``, ...)."""
    kind = str(item.get("Type"))
    for cls in LEVELS:
        if cls.level == kind:
            return cls
    return None


def _count(state: _State, cls: type[Resource]) -> int:
    """Resources of one level; the level just below the depth is counted from child IDs."""
    return state.count(cls)


def _key(value: str) -> str:
    """The index key of an identifier: normalized as Orthanc's index compares it (the value
    itself, same object, when normalizing changes nothing or leaves nothing)."""
    key = normalize_identifier(value)
    return value if key == value or not key else key


class _Index:
    """Identifier -> resource, keeping every resource when several share one identifier.

    Keyed by the normalized identifier (:func:`_key`), so that a find's equality reaches
    every resource it can match (:meth:`candidates`); :meth:`all` keeps the exact ones.
    """

    __slots__ = ("entries", "field")

    def __init__(self, field: str | None = None) -> None:
        self.entries: dict[str, Any] = {}
        self.field = field  # the model field compared exactly by all()

    def add(self, key: str | None, obj: Resource) -> None:
        if not key:
            return
        key = _key(key)
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
        key = _key(key)
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
        if not key:
            return []
        found = self.entries.get(_key(key))
        if found is None:
            return []
        field = self.field
        if type(found) is not list:
            return [found] if field is None or found.__dict__[field] == key else []
        return [o for o in found if field is None or o.__dict__[field] == key]

    def candidates(self, keys: Iterable[str]) -> list[Resource]:
        """Every resource whose normalized identifier is one of ``keys``."""
        out: list[Resource] = []
        for key in keys:
            found = self.entries.get(key)
            if type(found) is list:
                out.extend(found)
            elif found is not None:
                out.append(found)
        return out


class _TableOfModels(MutableMapping[str, Any]):
    """A table whose ``get`` may make a model on the way: indexing and ``in`` go through it."""

    def __getitem__(self, key: str) -> Any:
        obj = self.get(key)
        if obj is None:
            raise KeyError(key)
        return obj

    def __contains__(self, key: object) -> bool:
        return type(key) is str and self.get(key) is not None


class _State:
    """Everything a build produces; an update edits it, a rebuild swaps it.

    The tables are plain dicts; a stored forest (:mod:`.store`) puts mappings backed by its
    file in their place, which is why they are typed as mappings.
    """

    def __init__(self, levels: Sequence[type[Resource]]) -> None:
        self.levels = tuple(levels)
        self.tables: dict[type[Resource], MutableMapping[str, Any]] = {cls: {} for cls in LEVELS}
        self.uids: dict[type[Resource], _Index] = {cls: _Index(cls.uid_field) for cls in LEVELS}
        self.accession = _Index("accession_number")
        self.last_seq = 0
        #: the change at ``last_seq`` (see :data:`~.build.Anchor`), when the feed holds it
        self.anchor: tuple[int, str, str, str] | None = None
        self.built_at = datetime.datetime.now(datetime.timezone.utc)

    def reload(self, client: Server, depth: str, page_size: int) -> _State | None:
        """The state a rebuild swaps in, listed again from ``client`` the way this one was;
        ``None``: as a build lists it (a compact forest stays compact)."""
        return None

    def labelled(self, cls: type[Resource]) -> list[Resource]:
        """The models of ``cls`` that have labels (those a label refresh may have to clear)."""
        return [obj for obj in self.tables[cls].values() if obj.__dict__["labels"]]

    def changes_from(self, old: _State) -> dict[str, dict[type[Resource], list[str]]]:
        """What a rebuild changed: per level, the IDs ``added``, ``removed`` and ``updated``
        (their fields differ) from ``old`` to this state."""
        changes: dict[str, dict[type[Resource], list[str]]] = {
            "added": {}, "removed": {}, "updated": {}
        }
        for cls in LEVELS:
            before = old.tables[cls]
            after = self.tables[cls]
            changes["added"][cls] = [i for i in after if i not in before]
            changes["removed"][cls] = [i for i in before if i not in after]
            changes["updated"][cls] = [
                i for i, obj in after.items() if i in before and before[i].__dict__ != obj.__dict__
            ]
        return changes

    def count(self, cls: type[Resource]) -> int:
        """Resources of one level; the level just below the depth is counted from child IDs."""
        if cls in self.levels:
            return len(self.tables[cls])
        parent_cls = cls.parent_class()
        if parent_cls is None or cls.depth != len(self.levels) + 1:
            return 0
        field = parent_cls.child_ids_field
        assert field is not None
        return sum(len(obj.__dict__[field]) for obj in self.tables[parent_cls].values())

    def holds(self, obj: Resource) -> bool:
        """Whether this very object is in the forest."""
        return self.tables[type(obj)].get(obj.id) is obj

    def index(self, obj: Resource) -> None:
        cls = type(obj)
        self.uids[cls].add(obj.__dict__[cls.uid_field], obj)
        if cls is Study:
            self.accession.add(obj.__dict__["accession_number"], obj)

    def unindex(self, obj: Resource) -> None:
        cls = type(obj)
        self.uids[cls].remove(obj.__dict__[cls.uid_field], obj)
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
            with forest._lock:  # not while an update changes the table
                version = forest._version
                items: tuple[R, ...] = tuple(forest._state.tables[self._cls].values())
                cache = self._cache = (version, items)
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
        return f"<{len(self)} {self._cls.collection}>"
