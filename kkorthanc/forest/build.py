"""Building a forest: the paged listings of each level, made into models and linked.

See ``docs/forest.md`` for how the listings are joined and why a server changing during the
build never leaves the forest half-linked.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._answers import reading
from ..models import LEVELS, Resource, Study, level_class
from ..server import Change
from ._factory import _FACTORIES, _GC_PAUSE, _new_memos, _Unsupported
from .state import _private, _State

if TYPE_CHECKING:
    from ..server import Server

#: resources per listing page; measured on 24,000 instances over loopback, 2,000 to 5,000
#: perform alike, and a smaller page leaves less model building after the last answer
DEFAULT_PAGE_SIZE = 4000

Depth = Literal["patient", "study", "series", "instance"]

#: the change a forest is up to date with: sequence number, change type, resource ID and
#: date (see ``docs/forest.md``, "A replaced database")
Anchor = tuple[int, str, str, str]


def _anchor_of(change: Change) -> Anchor:
    date = change.date.isoformat() if change.date is not None else ""
    return (change.seq, change.change_type, change.id, date)


def _feed_position(client: Server) -> tuple[int, Anchor | None]:
    """The newest sequence number of the change feed and its change (``GET /changes?last``,
    :meth:`Server.feed_end`)."""
    page = client.feed_end()
    last = page.last
    found = [c for c in page.changes if c.seq == last]
    return last, _anchor_of(found[0]) if found else None


def _listings(
    client: Server, levels: Sequence[type[Resource]], page_size: int
) -> Iterator[tuple[type[Resource], list[Any]]]:
    """Each level's expanded listing in turn, page by page, read ahead of the caller (see
    :mod:`kkorthanc._paging`): a level's child-ID lists tell how long the next level is."""
    by_path = {f"/{cls.collection}": cls for cls in levels}
    named_by = []
    for cls in levels[:-1]:
        key = cls.child_ids_key()
        assert key is not None
        named_by.append(key)
    pages = client.iter_listings(
        list(by_path), page_size=page_size, prefetch=True, named_by=named_by
    )
    for path, page in pages:
        yield by_path[path], page


def _link_level(
    state: _State,
    parent_cls: type[Resource],
    child_cls: type[Resource],
    groups: dict[str, list[Resource]],
) -> None:
    """Link every parent to its listed children and drop children no parent names."""
    children = state.tables[child_cls]
    ids_field = parent_cls.child_ids_field
    parent_field = child_cls.parent_field
    assert ids_field is not None and parent_field is not None
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
    orphans = [c for c in children.values() if c.linked_parent() is None]
    for orphan in orphans:
        del children[orphan.id]
        state.unindex(orphan)


def _load(client: Server, depth: Depth, page_size: int) -> _State:
    """List the levels down to ``depth`` and link them (see ``docs/forest.md``)."""
    levels = LEVELS[: level_class(depth).depth]
    state = _State(levels)
    # first: what changes during the listing is replayed
    state.last_seq, state.anchor = _feed_position(client)
    groups: dict[type[Resource], dict[str, list[Resource]]] = {cls: {} for cls in levels}
    memos = _new_memos()
    with _GC_PAUSE:
        for cls, page in _listings(client, levels, page_size):
            path = f"/{cls.collection}"
            make = _FACTORIES[cls]
            build = make.build or make
            table = state.tables[cls]
            uids = state.uids[cls]
            uid_field = cls.uid_field
            parent_field = cls.parent_field
            by_parent = groups[cls]
            with reading(f"GET {path}"):
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
