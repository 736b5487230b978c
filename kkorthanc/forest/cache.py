"""The cached entry point, :func:`build_patient_forest`: one forest per server and user."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from cachetools import TTLCache

from .build import DEFAULT_PAGE_SIZE, _check_depth, _check_page_size
from .compact import load_compact_forest
from .model import PatientForest, load_forest
from .reports import CacheInfo
from .store import StoredForest, open_forest

if TYPE_CHECKING:
    from ..server import Server

#: seconds a built forest stays in the cache of :func:`build_patient_forest`
DEFAULT_TTL = 60.0
#: forests kept in the cache (one per server, user, depth and page size)
DEFAULT_MAXSIZE = 16


class ForestCache:
    """:func:`build_patient_forest`: builds forests and keeps them for a while.

    The cache is a :class:`cachetools.TTLCache` keyed by the server URL, the user name, a
    fingerprint of the credentials (never the credentials themselves), the depth and the page
    size (and the file, for a stored forest): two clients of the same server and user share a
    forest. A lock makes two threads asking at once build it once. A forest handed out after
    this process wrote to the server (an upload, a deletion, a modification, a label: see
    ``Server.write_epoch``) is first brought up to date with :meth:`PatientForest.update`
    (labels included, which the change feed does not log: ``update(labels=True)``), so it
    never shows the server as it was before a write made through any client of this
    process.
    """

    def __init__(self, ttl: float = DEFAULT_TTL, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self._lock = threading.Lock()
        self._building: dict[tuple[Any, ...], threading.Lock] = {}
        self._cache: TTLCache[tuple[Any, ...], tuple[PatientForest, int]] = TTLCache(maxsize, ttl)
        self._hits = 0
        self._misses = 0

    @overload
    def __call__(
        self,
        client: Server,
        *,
        depth: str = "instance",
        page_size: int = DEFAULT_PAGE_SIZE,
        refresh: bool = False,
        store: None = None,
        compact: bool = False,
    ) -> PatientForest: ...
    @overload
    def __call__(
        self,
        client: Server,
        *,
        depth: str = "instance",
        page_size: int = DEFAULT_PAGE_SIZE,
        refresh: bool = False,
        store: str | os.PathLike[str],
    ) -> StoredForest: ...
    def __call__(
        self,
        client: Server,
        *,
        depth: str = "instance",
        page_size: int = DEFAULT_PAGE_SIZE,
        refresh: bool = False,
        store: str | os.PathLike[str] | None = None,
        compact: bool = False,
    ) -> PatientForest:
        """The patient forest of a server, from the cache or built now.

        Args:
            client: the server to read.
            depth: the deepest level to list: ``"instance"`` (everything), ``"series"``
                (no instance listing; ``series.instances`` then loads lazily, one request
                per series), ``"study"`` or ``"patient"``.
            page_size: resources per listing request.
            refresh: build again even if a cached forest is still fresh (with ``store``:
                list the server into the file again).
            store: keep the forest in this local SQLite file (a :class:`StoredForest`,
                see :func:`open_forest`): a new process reopens it in milliseconds and
                catches up from the change feed instead of listing the server.
            compact: keep the forest compact in memory (:func:`load_compact_forest`): about
                a third of the memory, each patient's models made when first touched, so
                the first full walk costs what the models cost to make (not with ``store``,
                which keeps them in its file).

        Requests: none when cached and nothing was written since; those of
        :meth:`PatientForest.update` when cached but written to since; else
        ``GET /changes?last`` and one ``GET /{level}?expand&since&limit`` per page of each
        level down to ``depth``
        (200 patients, 600 studies, 2,400 series and 24,000 instances: 11 requests). With
        ``store``, a file that holds the forest costs only the update (two requests when
        nothing changed); building one costs ``GET /system`` more.

        Raises:
            ValueError: an unknown depth or a bad page size, or ``compact`` with ``store``.
            OrthancError: the server refused or could not be reached.
            ForestStoreError: the file was written by another schema version, or is not a
                forest store.
        """
        checked = _check_depth(depth)
        size = _check_page_size(page_size)
        if compact and store is not None:
            raise ValueError("compact=True keeps a forest in memory: it cannot go with store")
        where = str(Path(store).resolve()) if store is not None else None
        key = (
            client.url, client.username, client.credentials_fingerprint, checked, size, where,
            bool(compact),
        )
        if not refresh:
            cached = self._get(key, client.write_epoch)
            if cached is not None:
                return cached
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            epoch = client.write_epoch
            if not refresh:  # another thread may have built it while this one waited
                cached = self._get(key, epoch)
                if cached is not None:
                    return cached
                with self._lock:
                    stale = self._cache.get(key)
                # written to since it was built: catch up
                if stale is not None and not getattr(stale[0], "closed", False):
                    stale[0].update(labels=True)  # the write may have been a label
                    with self._lock:
                        self._hits += 1
                        self._cache[key] = (stale[0], epoch)
                    return stale[0]
            forest: PatientForest
            if compact:
                forest = load_compact_forest(client, depth=checked, page_size=size)
            elif store is None:
                forest = load_forest(client, depth=checked, page_size=size)
            else:
                forest = open_forest(client, store, depth=checked, page_size=size, refresh=refresh)
            with self._lock:
                self._misses += 1
                self._cache[key] = (forest, epoch)
            return forest

    def _get(self, key: tuple[Any, ...], epoch: int) -> PatientForest | None:
        """The cached forest if it has seen every write up to ``epoch``."""
        with self._lock:
            found = self._cache.get(key)
            if found is None or found[1] != epoch or getattr(found[0], "closed", False):
                return None
            self._hits += 1
            return found[0]

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

``build_patient_forest(client, *, depth="instance", page_size=4000, refresh=False,
store=None)``;
``build_patient_forest.cache_clear()`` empties the cache.
"""
