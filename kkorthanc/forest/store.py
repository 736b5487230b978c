"""The stored forest: a patient forest kept in a local SQLite file, reopened in milliseconds.

>>> forest = open_forest(client, "orthanc.forest")   # built once, then reopened and caught up
>>> forest.study("1.2.840.113619.2.1")               # the file's index, then that patient only
>>> forest.update()                                  # the change feed, written in one transaction

:class:`StoredForest` is a :class:`~.model.PatientForest` whose tables live in the file
(:mod:`._file`) and whose models are made when touched (:mod:`._stored`). How the file is
laid out, what it never holds, when it is rebuilt and why a crash cannot damage it:
``docs/forest.md``, "The stored forest".
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from ..errors import ForestStoreError
from ..models import (
    LEVELS,
    Instance,
    Patient,
    Resource,
    Series,
    Study,
)
from . import _narrow
from ._file import SCHEMA_VERSION, ForestFile
from ._stored import _StoredState, _StoreUpdater, write_forest
from .build import DEFAULT_PAGE_SIZE, Depth, _check_depth, _check_page_size
from .model import PatientForest
from .state import LevelView

if TYPE_CHECKING:
    from ..server import Server
    from .reports import UpdateReport

R = TypeVar("R", bound=Resource)

__all__ = ["SCHEMA_VERSION", "StoreInfo", "StoredForest", "open_forest"]


@dataclass(frozen=True)
class StoreInfo:
    """What the header of a stored forest's file says, and the file's size."""

    path: Path
    """The file."""
    schema_version: int
    """The layout version the file was written with (:data:`SCHEMA_VERSION`)."""
    url: str
    """The server the forest is of (never with credentials)."""
    server_name: str
    """The server's ``Name`` when the file was built."""
    server_version: str
    """The server's Orthanc version when the file was built."""
    database_server_identifier: str | None
    """``DatabaseServerIdentifier`` from ``/system`` (Orthanc 1.12+), for information: it
    names an Orthanc process, not its database (see ``docs/forest.md``)."""
    depth: str
    """The deepest level listed."""
    last_seq: int
    """The change-feed sequence number the file is up to date with."""
    built_at: datetime.datetime
    """When the server was last listed into the file, UTC."""
    updated_at: datetime.datetime
    """When the file was last written, UTC."""
    size: int
    """Bytes on disk."""


class _StoredLevelView(LevelView[R]):
    """``forest.patients`` of a stored forest: ``len`` and ``view[i]`` read the file;
    iterating makes every model (once)."""

    @overload
    def __getitem__(self, index: int) -> R: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[R, ...]: ...
    def __getitem__(self, index: int | slice) -> R | tuple[R, ...]:
        state = cast(_StoredState, self._forest._state)
        if isinstance(index, int) and not state.all_loaded:
            with state.lock:
                size = len(self)
                position = index + size if index < 0 else index
                if not 0 <= position < size:
                    raise IndexError(f"{self._cls.collection} index out of range")
                if not state.pending():
                    key = state.file.id_at(self._cls, position)
                    found = state.lazy[self._cls].get(key) if key is not None else None
                    if found is not None:
                        return cast(R, found)
        return super().__getitem__(index)


class StoredForest(PatientForest):
    """A :class:`PatientForest` kept in a local SQLite file (see :func:`open_forest`).

    Everything a forest offers, with the same answers: lookups, views, counts, ``find``,
    ``snapshot``, ``update``. What differs is where the models live:

    - Reopening reads the file's header only; models are made when touched. A lookup
      (``forest.get(x)``, ``forest.study(uid)``, ``forest.patient(pid)``) asks the file's
      index, then makes that resource's patient with everything below it, linked, so walking
      from there costs neither request nor file read.
    - ``find`` with an equality (or a list) on an identifier of any level (PatientID,
      StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, AccessionNumber) makes only the
      patients the file's index names; any other query, iterating a level
      (``for s in forest.series``), ``snapshot``, frames and the tree display make every
      model once (one pass over the file), after which the forest is as fast as in memory.
    - ``update`` replays the change feed as in memory and writes what changed into the file
      in one transaction; if it fails, the file keeps its previous state and so does the
      forest (the models it had made are let go).
    - ``len(forest.studies)``, ``forest.counts`` and ``forest.studies[i]`` read the header
      and the file, without making the level.

    Readers wait while an update runs (in memory they do not). Close the file with
    :meth:`close` (or use the forest as a context manager).

    Attributes:
        path: the file.
        build_reason: why :func:`open_forest` listed the server into the file (``None``
            when the file was reopened).
        closed: whether :meth:`close` was called.
    """

    def __init__(self, client: Server, depth: Depth, page_size: int, state: _StoredState) -> None:
        super().__init__(client, depth, page_size, state)
        self._lock = state.lock
        self._patients = _StoredLevelView(self, Patient)
        self._studies = _StoredLevelView(self, Study)
        self._series = _StoredLevelView(self, Series)
        self._instances = _StoredLevelView(self, Instance)
        self.path = state.file.path
        self.build_reason: str | None = None
        self.closed = False

    @property
    def _stored(self) -> _StoredState:
        return cast(_StoredState, self._state)

    # -- the file -----------------------------------------------------------------------------

    @property
    def store_info(self) -> StoreInfo:
        """The file's header: server, depth, sequence number, build time, size."""
        state = self._stored
        with state.lock:
            header = state.header
            server = header.get("server") or {}
            return StoreInfo(
                path=self.path,
                schema_version=SCHEMA_VERSION,
                url=str(header["url"]),
                server_name=str(server.get("name", "")),
                server_version=str(server.get("version", "")),
                database_server_identifier=server.get("database_server_identifier"),
                depth=str(header["depth"]),
                last_seq=state.last_seq,
                built_at=state.built_at,
                updated_at=datetime.datetime.fromisoformat(str(header["updated_at"])),
                size=state.file.size(),
            )

    @property
    def models_in_memory(self) -> int:
        """How many models the forest has made so far (all levels)."""
        return self._stored.memory_size()

    def close(self) -> None:
        """Close the file; the forest cannot be used afterwards (the cache of
        :func:`build_patient_forest` then opens the file again)."""
        with self._lock:
            self._stored.file.close()
            self.closed = True

    def __enter__(self) -> StoredForest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        counts = self.counts
        return (
            f"<StoredForest {self.client.url} in {self.path}: {counts.patients} patients, "
            f"{counts.studies} studies, {counts.series} series, {counts.instances} instances; "
            f"seq {self.last_seq}, depth {self.depth}>"
        )

    # -- find ---------------------------------------------------------------------------------

    def _search(
        self,
        level: str,
        query: dict[str, Any] | None,
        case_sensitive: bool,
        tags: dict[str, Any],
    ) -> list[Any]:
        """The matches of :meth:`find`, the same answers as in memory. An equality (or a
        list) on an identifier (PatientID, a UID, AccessionNumber) of any level narrows the
        search to the patients the file's index names, and only those are made into models;
        any other query makes every model first."""
        with self._lock:
            keyed = _narrow.keyed_constraints(
                level, query, case_sensitive, tags, self._state.levels
            )
            patients = self._candidates(keyed)
            return _narrow.search(self, level, query, case_sensitive, tags, patients)

    def _candidates(self, keyed: list[_narrow.Keyed]) -> list[Resource] | None:
        """The patients holding every match, from the file's index; ``None`` when no
        constraint of the query can use it."""
        if not keyed:
            return None
        state = self._stored
        roots: set[str] | None = None
        for cls, column, keys in keyed:
            found: set[str] = set()
            for resource_id in state.file.ids_by_key(column, cls, set(keys)):
                located = state.file.locate(resource_id)
                if located is not None:
                    found.add(located[1])
            roots = found if roots is None else roots & found
        assert roots is not None
        patients = state.lazy[Patient]
        return [p for root in sorted(roots) if (p := patients.get(root)) is not None]

    # -- update ---------------------------------------------------------------------------------

    def update(self, *, labels: bool = False, rebuild_if_replaced: bool = True) -> UpdateReport:
        """Bring the forest and its file up to date with the server, from its change feed.

        The requests, the report and the fallback to a rebuild are those of
        :meth:`PatientForest.update`; the models it touches are the patients the changes
        concern. Everything it changes is written into the file in one SQLite transaction,
        committed at the end: if the update fails (a request, the disk, a crash of the
        process), the file keeps its previous state, and the forest reads it again (models
        it had made are let go; those handed out are put back as they were before the
        update). A rebuild lists the server into the file, inside the same transaction.
        ``labels=True`` makes every model once (the labels of every resource are compared).

        When another process wrote the file since this forest last read it, the forest
        first reads it again.

        Raises:
            OrthancError: the server refused or could not be reached, or its database was
                replaced and ``rebuild_if_replaced`` is ``False``.
            ForestStoreError: another process held the file's write lock too long.
        """
        state = self._stored
        with self._lock:
            file = state.file
            if file.written_elsewhere():
                self._reload()
            file.begin()
            state.updating = True
            try:
                report = _StoreUpdater(
                    self, rebuild_if_replaced=rebuild_if_replaced, labels=labels
                ).run()
                state.write_pending()
                file.write_header(state.header_values())
                file.commit()
            except BaseException:
                file.rollback()
                self._reload()
                raise
            finally:
                state.updating = False
            return report

    def _reload(self) -> None:
        """Forget every model and read the file's header again."""
        header = self._stored.file.header()
        if header is None:
            raise ForestStoreError(f"{self.path} no longer holds a forest", str(self.path))
        self._stored.reset(header)
        self._version += 1


def open_forest(
    client: Server,
    path: str | os.PathLike[str],
    *,
    depth: str = "instance",
    page_size: int = DEFAULT_PAGE_SIZE,
    create: bool = True,
    refresh: bool = False,
    update: bool = True,
) -> StoredForest:
    """The forest of a server, kept in a local SQLite file: reopened, or built into it.

    A file that holds this server's forest at this depth is reopened: its header is read
    (no request, whatever its size), then :meth:`StoredForest.update` catches up from the
    change feed (two requests when nothing changed). A missing or empty file, one of another
    server (another URL) or another depth, or ``refresh=True``, is built: the server is
    listed into the file as :func:`~.model.load_forest` lists it (plus ``GET /system`` for
    the header), in one transaction that replaces what the file held. The file never holds
    credentials; see ``docs/forest.md``.

    Args:
        client: the server to read.
        path: the file (created if missing).
        depth: the deepest level to list, as for :func:`~.model.load_forest`.
        page_size: resources per listing request.
        create: when ``False``, open only: a file that would have to be built raises
            instead.
        refresh: build the file again even if it holds this server's forest.
        update: catch up from the change feed after reopening (``False``: no request).

    Raises:
        ForestStoreError: the file was written by another schema version (both are named),
            is not a forest store, or (``create=False``) would have to be built.
        ValueError: an unknown depth or a bad page size.
        OrthancError: the server refused or could not be reached.
    """
    checked = _check_depth(depth)
    size = _check_page_size(page_size)
    file = ForestFile.open(path)
    try:
        header = file.header()
        reason = _why_build(header, client.url, checked, refresh)
        if reason is not None and not create:
            raise ForestStoreError(
                f"{file.path}: {reason}; open_forest(..., create=True) builds it",
                str(file.path),
            )
        if reason is None:
            assert header is not None
            forest = StoredForest(client, checked, size, _StoredState(file, client, header))
            if update:
                forest.update()
            return forest
        file.begin()
        try:
            header = file.header()  # another process may have built it while this one waited
            reason = _why_build(header, client.url, checked, refresh)
            if reason is not None:
                _, header = write_forest(
                    file, client, checked, size, new_dictionaries=True, compare=False
                )
            file.commit()
        except BaseException:
            file.rollback()
            raise
        assert header is not None
        forest = StoredForest(client, checked, size, _StoredState(file, client, header))
        forest.build_reason = reason
        if reason is None and update:
            forest.update()
        return forest
    except BaseException:
        file.close()
        raise


def _why_build(header: dict[str, Any] | None, url: str, depth: str, refresh: bool) -> str | None:
    """Why the file must be built (``None``: it can be reopened)."""
    if header is None:
        return "no forest is stored in it yet"
    if refresh:
        return "a rebuild was asked for (refresh=True)"
    if header.get("url") != url:
        return f"it holds the forest of {header.get('url')}, not of {url}"
    if header.get("depth") != depth:
        return f"it was built with depth={header.get('depth')!r}, not depth={depth!r}"
    if not isinstance(header.get("counts"), list) or len(header["counts"]) != len(LEVELS):
        return "its header is incomplete"
    return None
