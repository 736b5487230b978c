"""Bringing a forest up to date from the server's change feed (:meth:`PatientForest.update`).

The feed is replayed, new and changed resources are fetched in bulk with their ancestors,
and the counts are compared with ``GET /statistics`` to find deletions, which Orthanc does
not log. When the feed cannot cover the gap, the forest is rebuilt. See ``docs/forest.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .._answers import expect_names, reading
from ..errors import OrthancError
from ..models import LEVELS, Patient, Resource, Study, level_class
from ..server import BULK_CONTENT, checked_statistics
from ._factory import _FACTORIES, _new_memos
from .build import Anchor, _anchor_of, _load
from .reports import UpdateReport, _by_level
from .state import _count, _Index, _level_of, _private, _State

if TYPE_CHECKING:
    from ..server import Change, Server
    from .model import PatientForest

#: changes per ``GET /changes`` page during :meth:`PatientForest.update`
CHANGES_PAGE = 2000
#: resources per ``POST /tools/bulk-content`` request
BULK_CHUNK = 1000
#: an update rebuilds instead when the feed holds more changes than this, or than half the
#: resources of the forest if that is more
REBUILD_AFTER_CHANGES = 1000


class _FeedGap(Exception):
    """The change feed cannot bring a forest up to date: it is rebuilt instead."""

    def __init__(self, reason: str, changes: list[Change], *, replaced: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.changes = changes
        #: the server's database is not the one the forest was built from
        self.replaced = replaced


_MISSING: Any = object()


def _describe(anchor: Anchor) -> str:
    _, kind, resource_id, date = anchor
    return f"{kind} of {resource_id} at {date or 'an unknown time'}"


class _Journal:
    """What an update changed in place, kept so that a failed update can put it back.

    Each model, table entry and index entry is saved the first time the update is about to
    change it; :meth:`undo` restores the saved copies. The cost grows with what the update
    touches, except that a table from which a resource is removed keeps its key order once
    (so that a rolled-back forest lists its resources in the same order).
    """

    def __init__(self, *, tables: bool) -> None:
        #: whether tables and indexes are journaled (a stored forest reads them again)
        self.tables = tables
        self.models: dict[int, tuple[Resource, dict[str, Any], dict[str, Any], set[str]]] = {}
        self.entries: dict[tuple[int, str], tuple[MutableMapping[str, Any], str, Any]] = {}
        self.orders: dict[int, tuple[MutableMapping[str, Any], list[str]]] = {}

    def model(self, obj: Resource) -> None:
        key = id(obj)
        if key not in self.models:
            fields_set = set(obj.model_fields_set)
            self.models[key] = (obj, dict(obj.__dict__), dict(_private(obj)), fields_set)

    def entry(self, mapping: MutableMapping[str, Any], key: str | None) -> None:
        if not self.tables or not key or (id(mapping), key) in self.entries:
            return
        value = mapping.get(key, _MISSING)
        self.entries[(id(mapping), key)] = (
            mapping,
            key,
            list(value) if type(value) is list else value,
        )

    def removing(self, table: MutableMapping[str, Any], key: str) -> None:
        """Before ``del table[key]``: the entry, and the table's order the first time."""
        if not self.tables:
            return
        if id(table) not in self.orders:
            self.orders[id(table)] = (table, list(table))
        self.entry(table, key)

    def undo(self) -> None:
        for mapping, key, value in self.entries.values():
            if value is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = value
        for table, order in self.orders.values():
            held = dict(table)
            table.clear()
            table.update((k, held[k]) for k in order if k in held)
        for obj, fields, private, fields_set in self.models.values():
            obj.__dict__.clear()
            obj.__dict__.update(fields)
            kept = _private(obj)
            kept.clear()
            kept.update(private)
            object.__setattr__(obj, "__pydantic_fields_set__", fields_set)


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
    #: whether a replaced database is rebuilt (else the update raises)
    rebuild_if_replaced: bool = True
    #: whether label membership is read again (``update(labels=True)``)
    labels: bool = False
    #: list the IDs of every level, whatever the counts (the anchor change is gone)
    verify_all: bool = False
    #: whether tables and indexes are journaled too (a stored forest reads its file again)
    journal_tables: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.journal = _Journal(tables=self.journal_tables)

    @property
    def state(self) -> _State:
        return self.forest._state

    @property
    def client(self) -> Server:
        return self.forest.client

    def run(self) -> UpdateReport:
        """The update, all or nothing: if anything fails (a request, above all), every model,
        table and index it changed is put back, with ``last_seq``, and the error raised."""
        state = self.state
        position = (state.last_seq, state.anchor)
        try:
            return self._run()
        except BaseException:
            if self.forest._state is state:
                self.journal.undo()
                state.last_seq, state.anchor = position
            raise

    def _run(self) -> UpdateReport:
        forest = self.forest
        start = self.client.request_count
        from_seq = forest.last_seq
        try:
            changes, last, anchor = self._read_feed(from_seq)
        except _FeedGap as gap:
            if gap.replaced and not self.rebuild_if_replaced:
                raise OrthancError(
                    f"{self.client.url}: {gap.reason}; update(rebuild_if_replaced=True) "
                    "builds the forest again"
                ) from None
            return self._rebuild(gap.reason, start, from_seq, len(gap.changes))
        new, refresh, stable, gone = self._classify(changes)
        self._sync(new=new, refresh=refresh, gone=gone)
        self._apply_stable(stable)
        self.state.last_seq = last
        self.state.anchor = anchor
        self._reconcile()
        if self.labels:
            self._refresh_labels()
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

    def _read_feed(self, since: int) -> tuple[list[Change], int, Anchor | None]:
        """The changes after ``since``, the sequence number they reach and its change.

        The feed is read from the change at ``since`` itself: the forest keeps that change
        (its anchor, from the build or the last update), and the server must still hold
        the same one (type, resource and date), or its database is not the one the forest
        was built from. Same request count as reading after ``since``.

        Raises:
            _FeedGap: the feed cannot bring the forest up to date (or would cost more than a
                rebuild); carries the reason.
        """
        budget = max(REBUILD_AFTER_CHANGES, self.forest.counts.total // 2)
        anchor = self.state.anchor if since else None
        if anchor is not None and anchor[0] != since:
            anchor = None
        changes: list[Change] = []
        position = since
        pages = self.client.iter_changes(since - 1 if since else 0, CHANGES_PAGE)
        for number, page in enumerate(pages):
            entries = list(page.changes)
            if number == 0:
                anchor = self._check_start(since, anchor, page.last, entries, changes)
            changes.extend(entries)
            if entries:
                position = entries[-1].seq
            if len(changes) > budget:
                raise _FeedGap(
                    f"more than {budget} changes since seq {since}: rebuilding costs less",
                    changes,
                )
        return changes, position, _anchor_of(changes[-1]) if changes else anchor

    def _check_start(
        self,
        since: int,
        anchor: Anchor | None,
        last: int,
        entries: list[Change],
        read: list[Change],
    ) -> Anchor | None:
        """Check the first page of the feed (and take the change at ``since`` out of it);
        the change at ``since`` as the server holds it, if it does."""
        if since and entries and entries[0].seq == since:
            found = _anchor_of(entries.pop(0))
            if anchor is not None and found != anchor:
                raise _FeedGap(
                    f"the server's change {since} is {_describe(found)}, not "
                    f"{_describe(anchor)} as when this forest read it: its database was "
                    "replaced",
                    read,
                    replaced=True,
                )
            return found
        if not entries and last < since:
            raise _FeedGap(
                f"the server's change feed went back from seq {since} to {last} "
                "(a new or reset database)",
                read,
                replaced=True,
            )
        if anchor is not None and entries:
            # Orthanc drops the changes of a deleted resource with it: the anchor's resource
            # was deleted, or the feed was cleared, or the database replaced
            self.verify_all = True
            self.notes.append(
                f"the change at seq {since} ({_describe(anchor)}) is no longer in the feed"
            )
            return None
        if not entries:
            if last > since:
                raise _FeedGap(
                    f"the changes after seq {since} are no longer in the feed "
                    f"(it now starts after seq {last})",
                    read,
                )
            if anchor is not None:
                self.verify_all = True
                self.notes.append(
                    f"the change at seq {since} ({_describe(anchor)}) is no longer in the feed"
                )
            return None
        if entries[0].seq != since + 1:
            raise _FeedGap(
                f"the changes after seq {since} are no longer in the feed "
                f"(it now starts at seq {entries[0].seq})",
                read,
            )
        return None

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
        changes its parent, and on Orthanc 1.12 the ``LastUpdate`` of every ancestor.
        Ancestors already in the forest are known locally, so this takes one bulk request
        for the resources and usually one more for their ancestors.
        """
        known_refresh = {i for i in refresh if self._find(i) is not None}
        pending: dict[str, bool] = {i: False for i in known_refresh}  # id -> ancestors needed
        pending.update({i: True for i in new})
        fetched: dict[str, dict[str, Any]] = {}
        vanished: set[str] = set(gone)
        for resource_id in gone:  # every ancestor: 1.12 moves their LastUpdate too
            above = self._parent_id_of(resource_id)
            while above:
                pending.setdefault(above, False)
                above = self._parent_id_of(above)
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
        with reading(BULK_CONTENT):
            self._apply(fetched, vanished)

    def _parent_id_of(self, resource_id: str) -> str | None:
        found = self._find(resource_id)
        if found is not None:
            return found.parent_id
        return None

    def _schedule_ancestors(
        self,
        item: dict[str, Any],
        batch: dict[str, bool],
        asked: set[str],
        pending: dict[str, bool],
    ) -> None:
        cls = _level_of(item)
        if cls is None or cls.parent_key is None:
            return
        parent_id = item.get(cls.parent_key)
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
            up_id = node.parent_id
            node = self._find(up_id) if up_id else None

    def _apply(self, fetched: dict[str, dict[str, Any]], vanished: set[str]) -> None:
        state = self.state
        forest = self.forest
        journal = self.journal
        deepest = level_class(forest.depth).depth
        for resource_id in sorted(vanished):
            found = self._find(resource_id)
            if found is not None:
                self._remove(found)
        memos = _new_memos()
        touched: list[Resource] = []
        new_objects: list[Resource] = []
        by_level: dict[type[Resource], list[dict[str, Any]]] = defaultdict(list)
        for item in fetched.values():
            cls = _level_of(item)
            if cls is not None:
                by_level[cls].append(item)
        for cls in LEVELS[:deepest]:
            table = state.tables[cls]
            for item in sorted(by_level.get(cls, ()), key=lambda i: str(i.get("ID"))):
                obj = _FACTORIES[cls](item, forest.client, memos)
                old = table.get(obj.id)
                if old is None:
                    journal.entry(table, obj.id)
                    table[obj.id] = obj
                    self._index(obj, add=True)
                    new_objects.append(obj)
                    touched.append(obj)
                    continue
                if old.__dict__ != obj.__dict__:
                    journal.model(old)
                    self._index(old, add=False)
                    old.__dict__.update(obj.__dict__)
                    object.__setattr__(old, "__pydantic_fields_set__", obj.model_fields_set)
                    self._index(old, add=True)
                    self.updated[cls].append(old.id)
                touched.append(old)
        # children lists first, top-down, then whatever no parent claims is dropped
        for obj in touched:
            self._relink(obj)
        for obj in new_objects:
            if type(obj) is Patient:
                self.added[Patient].append(obj.id)
                continue
            parent = obj.linked_parent()
            if parent is None or not state.holds(parent):
                if state.holds(obj):
                    self._remove(obj, report=False)
                continue
            if state.holds(obj):
                self.added[type(obj)].append(obj.id)

    def _index(self, obj: Resource, *, add: bool) -> None:
        """Index (or unindex) a resource, its index entries journaled first."""
        state = self.state
        cls = type(obj)
        entries: list[tuple[_Index, str | None]] = [(state.uids[cls], obj.__dict__[cls.uid_field])]
        if cls is Study:
            entries.append((state.accession, obj.__dict__["accession_number"]))
        for index, key in entries:
            self.journal.entry(index.entries, key)
        if add:
            state.index(obj)
        else:
            state.unindex(obj)

    def _relink(self, parent: Resource) -> None:
        """Rebuild a resource's children from its child-ID list (trimmed to the forest)."""
        cls = type(parent)
        state = self.state
        journal = self.journal
        ids_field = cls.child_ids_field
        child_cls = cls.child_class()
        if ids_field is None or child_cls is None:
            return
        ids = parent.__dict__[ids_field]
        if child_cls not in state.levels:  # below the depth: lazy, reloaded on next access
            old = parent.linked_children()
            if old is not None and tuple(c.id for c in old) != ids:
                journal.model(parent)
                _private(parent)["_children"] = None
            return
        table = state.tables[child_cls]
        parent_field = child_cls.parent_field
        assert parent_field is not None
        kids = [
            table[i] for i in ids if i in table and table[i].__dict__[parent_field] == parent.id
        ]
        journal.model(parent)
        if len(kids) != len(ids):
            parent.__dict__[ids_field] = tuple(k.id for k in kids)
        keep = {k.id for k in kids}
        for old_child in parent.linked_children() or ():
            if old_child.id not in keep and table.get(old_child.id) is old_child:
                self._remove(old_child)
        for kid in kids:
            links = _private(kid)
            if links.get("_parent") is not parent:
                journal.model(kid)
                links["_parent"] = parent
        _private(parent)["_children"] = tuple(kids)

    def _remove(self, obj: Resource, *, report: bool = True) -> None:
        """Drop a resource and everything below it from the forest."""
        state = self.state
        cls = type(obj)
        if not state.holds(obj):
            return
        table = state.tables[cls]
        self.journal.removing(table, obj.id)
        del table[obj.id]
        self._index(obj, add=False)
        if report:
            self.removed[cls].append(obj.id)
        child_cls = cls.child_class()
        if child_cls is not None:
            children = state.tables[child_cls]
            for child_id in obj.child_ids:
                child = children.get(child_id)
                if child is not None and child.linked_parent() is obj:
                    self._remove(child, report=report)
        parent = obj.linked_parent()
        if parent is None or not state.holds(parent):
            return
        self.journal.model(parent)
        siblings = parent.linked_children()
        if siblings is not None:
            _private(parent)["_children"] = tuple(s for s in siblings if s is not obj)
        key = type(parent).child_ids_field
        assert key is not None
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
            self.journal.model(found)
            found.__dict__["is_stable"] = True
            self.updated[type(found)].append(resource_id)

    # -- deletions ------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Compare the counts with the server's; find what vanished (or was missed) by ID."""
        stats = checked_statistics(self.client.get_json("/statistics"), "GET /statistics")
        state = self.state
        if self.verify_all:
            self.notes.append("listed the IDs of every level to check the forest")
        for cls in LEVELS:
            if cls.depth > len(state.levels) + 1:
                break
            server = stats.get(f"Count{cls.collection.capitalize()}")  # CountPatients, ...
            have = _count(state, cls)
            if not self.verify_all and (not isinstance(server, int) or have == server):
                continue
            on_server = self.client.get_json(f"/{cls.collection}")
            server_ids = set(expect_names(on_server, f"GET /{cls.collection}"))
            if have != server:
                self.notes.append(
                    f"{have} {cls.collection} in the forest, {server} on the server: "
                    "listed their IDs"
                )
            if cls in state.levels:
                mine = set(state.tables[cls])
                self._sync(new=server_ids - mine, refresh=set(), gone=mine - server_ids)
            else:  # the level below the depth: known only from the parents' child lists
                parent_cls = cls.parent_class()
                assert parent_cls is not None
                owners = self._child_owners(parent_cls)
                parents = {owners[i] for i in set(owners) - server_ids}
                self._sync(new=server_ids - set(owners), refresh=parents, gone=set())

    def _child_owners(self, parent_cls: type[Resource]) -> dict[str, str]:
        """Child ID -> parent ID, from the child-ID lists of every resource of ``parent_cls``."""
        ids_field = parent_cls.child_ids_field
        assert ids_field is not None
        return {
            child_id: parent.id
            for parent in self.state.tables[parent_cls].values()
            for child_id in parent.__dict__[ids_field]
        }

    # -- labels ---------------------------------------------------------------------------------

    def _refresh_labels(self) -> None:
        """Read label membership again (``update(labels=True)``): Orthanc does not log label
        changes in its feed.

        Requests: ``GET /tools/labels``, then one ``POST /tools/find`` (IDs only) per label
        and level the forest holds; none on a server whose database stores no labels (its
        ``/system`` is read once per client). Every model held whose labels differ is
        updated in place and reported as updated.
        """
        client = self.client
        if not client.supports("Labels"):
            return
        names = expect_names(client.get_json("/tools/labels"), "GET /tools/labels")
        for cls in self.state.levels:
            members: dict[str, set[str]] = defaultdict(set)
            for name in sorted(names):
                found = client.post_json(
                    "/tools/find",
                    {
                        "Level": cls.level,
                        "Query": {},
                        "Labels": [name],
                        "LabelsConstraint": "All",
                        "Expand": False,
                    },
                    repeatable=True,
                )
                for resource_id in expect_names(found, "POST /tools/find"):
                    members[resource_id].add(name)
            table = self.state.tables[cls]
            held = self.state.labelled(cls)
            held += [obj for i in members if (obj := table.get(i)) is not None]
            for obj in held:
                labels = tuple(sorted(members.get(obj.id, ())))
                if obj.__dict__["labels"] != labels:
                    self.journal.model(obj)
                    obj.__dict__["labels"] = labels
                    self._relabeled(obj)
                    self.updated[cls].append(obj.id)

    def _relabeled(self, obj: Resource) -> None:
        """A model's labels were changed in place (a stored forest writes its row)."""

    # -- rebuild ----------------------------------------------------------------------------

    def _rebuild(self, reason: str, start: int, from_seq: int, changes: int) -> UpdateReport:
        forest = self.forest
        old = forest._state
        fresh = old.reload(forest.client, forest.depth, forest.page_size) or _load(
            forest.client, forest.depth, forest.page_size
        )
        diff = fresh.changes_from(old)
        self.added.update(diff["added"])
        self.removed.update(diff["removed"])
        self.updated.update(diff["updated"])
        forest._swap(fresh)
        return self._report(start, from_seq, changes, rebuilt=True, reason=reason)
