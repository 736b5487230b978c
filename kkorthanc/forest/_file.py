"""The file of a stored forest: one SQLite database, its tables, and how a row is encoded.

Layout (``docs/forest.md``, "The stored forest"):

- ``header``: ``key -> value`` rows: the format name, the schema version, the server's URL
  and what ``/system`` said of it, the depth, the change-feed sequence reached, the counts,
  when the forest was built and last updated, and one compression dictionary per level.
- ``resources``: one row per resource: ``pos`` (the level in the top bits, the listing order
  below them), ``level`` (1 for patients to 4 for instances), ``id`` (Orthanc ID, unique),
  ``parent`` (the parent's Orthanc ID), ``uid`` (the level's identifier as Orthanc's index
  compares it), ``accession`` (studies: the AccessionNumber, likewise), ``children`` (the
  length of the child-ID list) and ``json``: the expanded JSON Orthanc sent, without the two
  keys held in columns (``ID`` and the parent's) and without ``Metadata``
  (:data:`NEVER_STORED`), deflated with the level's dictionary.
  Indexed on ``id``, ``parent``, ``uid`` and ``accession``.

Nothing here knows models beyond the level facts of the model classes; the forest that
reads and writes these rows is in :mod:`._stored`.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core

from ..errors import ForestStoreError
from ..models import LEVELS, Resource
from ..query import normalize_identifier

#: The version of the layout above; a file written with another one is refused, never
#: rewritten. Bump it when the tables, the encoding of a row or the normalization of the
#: ``uid``/``accession`` keys change.
SCHEMA_VERSION = 1
FORMAT = "kkorthanc patient forest"
#: seconds a write waits for another process that holds the file's write lock
LOCK_TIMEOUT = 60.0

#: ``(level, Orthanc ID)`` pairs, in listing order
Listed = list[tuple[int, str]]

_SHIFT = 40  # pos = level << _SHIFT | order within the level
_DICTIONARY_ITEMS = 16  # first items of a level whose JSON makes its compression dictionary
#: deflate's window (1 KiB) and the dictionary that fills it: most of the cost of deflating
#: a small object is setting the window up, and a larger one saves only a few bytes per row
_WINDOW_BITS = 10
_DICTIONARY_BYTES = 1 << _WINDOW_BITS
_CHUNK = 500  # IDs per "IN (...)" query

_COLUMNS = "pos, level, id, parent, uid, accession, children, json"
_TABLE = """CREATE TABLE {name} (
    pos INTEGER PRIMARY KEY,
    level INTEGER NOT NULL,
    id TEXT NOT NULL,
    parent TEXT,
    uid TEXT,
    accession TEXT,
    children INTEGER NOT NULL,
    json BLOB NOT NULL
)"""
_INDEXES = (  # made once the table is filled (faster than kept up while it is)
    "CREATE UNIQUE INDEX resources_id ON resources(id)",
    "CREATE INDEX resources_parent ON resources(parent)",
    "CREATE INDEX resources_uid ON resources(uid)",
    "CREATE INDEX resources_accession ON resources(accession) WHERE accession IS NOT NULL",
)


def pos_range(cls: type[Resource]) -> tuple[int, int]:
    """The ``pos`` values of one level: ``lo <= pos < hi``."""
    return cls.depth << _SHIFT, (cls.depth + 1) << _SHIFT


def identifier_key(value: Any) -> str | None:
    """An identifier as Orthanc's index compares it (the ``uid`` and ``accession`` columns).

    Every value that a find's equality on the identifier can match has this key (the index
    stage compares normalized identifiers), and so has every value a lookup can match; the
    rows found by key are then checked exactly.
    """
    if not isinstance(value, str) or not value:
        return None
    return normalize_identifier(value)


#: Keys of Orthanc's JSON never stored: ``POST /tools/bulk-content`` (what an update reads)
#: adds ``Metadata``, which the listings do not send and the models do not read, and which
#: names the HTTP user and the address that uploaded each instance.
NEVER_STORED = frozenset({"Metadata"})


def _dropped(cls: type[Resource]) -> frozenset[str]:
    return NEVER_STORED | {k for k in ("ID", cls.parent_key) if k}


class Codec:
    """Orthanc's JSON of one level to the bytes of a row, and back.

    ``ID`` and the parent's key live in their columns and are left out of the bytes, and so
    is :data:`NEVER_STORED`; the rest is compact JSON, deflated with a dictionary made from
    the level's first listed resources (small JSON objects that share their keys shrink to a
    third).
    """

    __slots__ = ("dictionary", "drop", "parent_key")

    def __init__(self, cls: type[Resource], dictionary: bytes) -> None:
        self.dictionary = dictionary
        self.parent_key = cls.parent_key
        self.drop = _dropped(cls)

    @staticmethod
    def plain(item: dict[str, Any], drop: frozenset[str]) -> bytes:
        return pydantic_core.to_json({k: v for k, v in item.items() if k not in drop})

    def encode(self, item: dict[str, Any]) -> bytes:
        packer = zlib.compressobj(
            6, zlib.DEFLATED, -_WINDOW_BITS, 4, zlib.Z_DEFAULT_STRATEGY, self.dictionary
        )
        return packer.compress(self.plain(item, self.drop)) + packer.flush()

    def decode(self, data: bytes, resource_id: str, parent_id: str | None) -> dict[str, Any]:
        unpacker = zlib.decompressobj(-_WINDOW_BITS, self.dictionary)
        item: dict[str, Any] = pydantic_core.from_json(unpacker.decompress(data) + unpacker.flush())
        item["ID"] = resource_id
        if parent_id is not None and self.parent_key is not None:
            item[self.parent_key] = parent_id
        return item


def make_dictionary(cls: type[Resource], items: Sequence[dict[str, Any]]) -> bytes:
    """A compression dictionary for a level: its keys, then JSON of its first resources."""
    drop = _dropped(cls)
    keys: dict[str, Any] = {"Type": cls.level, "MainDicomTags": {}}
    for info in cls.model_fields.values():
        if info.alias:
            keys.setdefault(info.alias, "")
    parts = [Codec.plain(keys, drop)]
    parts += [Codec.plain(item, drop) for item in items[:_DICTIONARY_ITEMS]]
    return b"".join(parts)[-_DICTIONARY_BYTES:]  # zlib prefers the end of a dictionary


@dataclass(frozen=True)
class Row:
    """One row of ``resources`` (``pos`` is given when the row is written)."""

    level: int
    id: str
    parent: str | None
    uid: str | None
    accession: str | None
    children: int
    json: bytes


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class ForestFile:
    """The SQLite connection of one stored forest, and every statement it runs.

    Writes happen inside :meth:`begin` ... :meth:`commit` (``BEGIN IMMEDIATE``: one writer
    at a time, readers go on); a crash before the commit leaves the file as it was, which
    SQLite's journal restores when the file is next opened. The caller serializes use of
    the connection (the forest's lock).
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.db = connection
        self.codecs: dict[int, Codec] = {}
        self.in_transaction = False
        self.seen_version = 0

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ForestFile:
        """Open (or create, empty) the file; refuse one that is not a forest store of this
        schema version.

        Raises:
            ForestStoreError: not an SQLite file, an SQLite file of something else, or a
                forest store of another schema version.
        """
        where = Path(path)
        try:
            db = sqlite3.connect(
                str(where), timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ForestStoreError(f"cannot open {where}: {exc}", str(where)) from exc
        file = cls(where, db)
        try:
            file._check()
        except BaseException:
            db.close()
            raise
        return file

    def _check(self) -> None:
        try:
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise ForestStoreError(
                f"{self.path} is not a forest store (not an SQLite database: {exc})",
                str(self.path),
            ) from exc
        if not tables:
            return  # a new, empty file: the first build creates the tables
        if "header" not in tables:
            raise ForestStoreError(
                f"{self.path} is an SQLite database but not a forest store (no header table);"
                " it is left untouched",
                str(self.path),
            )
        values = dict(self.db.execute("SELECT key, value FROM header"))
        if values.get("format") != FORMAT:
            raise ForestStoreError(
                f"{self.path} is not a forest store (format {values.get('format')!r})",
                str(self.path),
            )
        found = values.get("schema")
        if found != SCHEMA_VERSION:
            raise ForestStoreError(
                f"{self.path} was written with forest store schema version {found}; this "
                f"kkorthanc reads and writes version {SCHEMA_VERSION}: open it with the "
                "kkorthanc that wrote it, or delete the file to build it again",
                str(self.path),
                found=found if isinstance(found, int) else None,
                expected=SCHEMA_VERSION,
            )
        self.seen_version = self.data_version()

    def close(self) -> None:
        self.db.close()

    # -- header -------------------------------------------------------------------------------

    def header(self) -> dict[str, Any] | None:
        """The header's values (JSON decoded, dictionaries as bytes); ``None`` for a new file."""
        try:
            rows = list(self.db.execute("SELECT key, value FROM header"))
        except sqlite3.OperationalError:
            return None
        values: dict[str, Any] = {}
        for key, value in rows:
            values[key] = json.loads(value) if isinstance(value, str) and key != "format" else value
        for level in range(1, len(LEVELS) + 1):
            data = values.get(f"dictionary:{level}")
            if isinstance(data, bytes):
                self.codecs[level] = Codec(LEVELS[level - 1], data)
        return values

    def write_header(self, values: dict[str, Any]) -> None:
        rows = []
        for key, value in values.items():
            plain = isinstance(value, bytes | int) or key == "format"
            rows.append((key, value if plain else json.dumps(value)))
        self.db.executemany("INSERT OR REPLACE INTO header(key, value) VALUES (?, ?)", rows)

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file."""
        found: int = self.db.execute("PRAGMA data_version").fetchone()[0]
        return found

    def written_elsewhere(self) -> bool:
        """Whether another connection (another process) committed since this one last looked."""
        return self.data_version() != self.seen_version

    # -- transactions -------------------------------------------------------------------------

    def begin(self) -> None:
        """Start the one write transaction (waits for another writer, then gives up).

        Raises:
            ForestStoreError: another process kept the file locked for :data:`LOCK_TIMEOUT`.
        """
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise ForestStoreError(
                f"cannot write {self.path}: {exc} (another process holds it)", str(self.path)
            ) from exc
        self.in_transaction = True

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.in_transaction = False
        self.seen_version = self.data_version()

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.in_transaction = False
        self.seen_version = self.data_version()

    # -- building the whole table -------------------------------------------------------------

    def create_staging(self) -> None:
        """An empty ``staging`` table, filled by a build and then put in place."""
        self.db.execute("DROP TABLE IF EXISTS staging")
        self.db.execute(_TABLE.format(name="staging"))

    def stage(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert rows into ``staging`` (the caller gives each Orthanc ID one ``pos``)."""
        self.db.executemany(f"INSERT INTO staging({_COLUMNS}) VALUES ({_marks(_COLUMNS)})", rows)

    def restage(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """``(parent, uid, accession, children, json, pos)``: new content for staged rows."""
        self.db.executemany(
            "UPDATE staging SET parent = ?, uid = ?, accession = ?, children = ?, json = ? "
            "WHERE pos = ?",
            rows,
        )

    def staged(self, positions: Sequence[int]) -> dict[int, tuple[int, str, str | None, bytes]]:
        """``pos -> (level, id, parent, json)`` of staged rows."""
        return {
            row[0]: (row[1], row[2], row[3], row[4])
            for part in _chunks(positions)
            for row in self.db.execute(
                f"SELECT pos, level, id, parent, json FROM staging WHERE pos IN ({_marks(part)})",
                part,
            )
        }

    def unstage(self, positions: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM staging WHERE pos = ?", ((p,) for p in positions))

    def compare_staging(self) -> tuple[Listed, Listed, Listed]:
        """``(added, removed, changed)`` as ``(level, id)``: staging against resources."""
        query = self.db.execute
        added = list(
            query(
                "SELECT s.level, s.id FROM staging s LEFT JOIN resources r ON r.id = s.id "
                "WHERE r.id IS NULL ORDER BY s.pos"
            )
        )
        removed = list(
            query(
                "SELECT r.level, r.id FROM resources r LEFT JOIN staging s ON s.id = r.id "
                "WHERE s.id IS NULL ORDER BY r.pos"
            )
        )
        changed = list(
            query(
                "SELECT s.level, s.id FROM staging s JOIN resources r ON r.id = s.id WHERE "
                "r.json != s.json OR r.parent IS NOT s.parent OR r.level != s.level "
                "ORDER BY s.pos"
            )
        )
        return added, removed, changed

    def install_staging(self) -> None:
        """Put the staged table in the place of ``resources``, with its indexes."""
        self.db.execute("DROP TABLE IF EXISTS resources")
        self.db.execute("ALTER TABLE staging RENAME TO resources")
        for statement in _INDEXES:
            self.db.execute(statement)

    def create_header(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS header (key TEXT PRIMARY KEY, value)")

    def stamp(self, values: dict[str, Any]) -> None:
        """The header of a forest just built: identity, state, dictionaries."""
        self.write_header(
            {
                "format": FORMAT,
                "schema": SCHEMA_VERSION,
                **values,
                **{f"dictionary:{level}": c.dictionary for level, c in self.codecs.items()},
                "updated_at": _utc_now(),
            }
        )

    # -- reading ------------------------------------------------------------------------------

    def locate(self, resource_id: str) -> tuple[int, str] | None:
        """``(level, patient ID)`` of a resource: its level and the root of its tree."""
        found = self.db.execute(
            "WITH RECURSIVE up(id, parent, first) AS ("
            " SELECT id, parent, level FROM resources WHERE id = ?"
            " UNION ALL SELECT r.id, r.parent, u.first FROM resources r JOIN up u"
            " ON r.id = u.parent) SELECT first, id FROM up WHERE parent IS NULL",
            (resource_id,),
        ).fetchone()
        return (found[0], found[1]) if found else None

    def tree(self, root: str) -> list[tuple[int, str, str | None, bytes]]:
        """``(level, id, parent, json)`` of a patient and everything below it."""
        return list(
            self.db.execute(
                "WITH RECURSIVE t(level, id, parent, json) AS ("
                " SELECT level, id, parent, json FROM resources WHERE id = ?"
                " UNION ALL SELECT r.level, r.id, r.parent, r.json FROM resources r JOIN t"
                " ON r.parent = t.id) SELECT level, id, parent, json FROM t",
                (root,),
            )
        )

    def rows(self) -> Iterator[tuple[int, str, str | None, bytes]]:
        """``(level, id, parent, json)`` of every resource, level by level, in listing order."""
        return iter(self.db.execute("SELECT level, id, parent, json FROM resources ORDER BY pos"))

    def level_rows(self, cls: type[Resource]) -> list[tuple[str, str | None, bytes]]:
        lo, hi = pos_range(cls)
        return list(
            self.db.execute(
                "SELECT id, parent, json FROM resources WHERE pos >= ? AND pos < ? ORDER BY pos",
                (lo, hi),
            )
        )

    def ids(self, cls: type[Resource]) -> list[str]:
        """The Orthanc IDs of a level, in listing order."""
        lo, hi = pos_range(cls)
        return [
            row[0]
            for row in self.db.execute(
                "SELECT id FROM resources WHERE pos >= ? AND pos < ? ORDER BY pos", (lo, hi)
            )
        ]

    def id_at(self, cls: type[Resource], index: int) -> str | None:
        """The Orthanc ID at a position of a level (0 is the first listed)."""
        lo, hi = pos_range(cls)
        found = self.db.execute(
            "SELECT id FROM resources WHERE pos >= ? AND pos < ? ORDER BY pos LIMIT 1 OFFSET ?",
            (lo, hi, index),
        ).fetchone()
        return found[0] if found else None

    def ids_by_key(self, column: str, cls: type[Resource], keys: Iterable[str]) -> list[str]:
        """Orthanc IDs of a level whose ``uid`` (or ``accession``) is one of ``keys``."""
        assert column in ("uid", "accession")
        lo, hi = pos_range(cls)
        wanted = sorted(set(keys))
        found: list[str] = []
        for part in _chunks(wanted):
            found += [
                row[0]
                for row in self.db.execute(
                    f"SELECT id FROM resources WHERE {column} IN ({_marks(part)}) "
                    "AND pos >= ? AND pos < ? ORDER BY pos",
                    (*part, lo, hi),
                )
            ]
        return found

    def json_of(self, ids: Sequence[str]) -> dict[str, bytes]:
        return {
            row[0]: row[1]
            for part in _chunks(ids)
            for row in self.db.execute(
                f"SELECT id, json FROM resources WHERE id IN ({_marks(part)})", part
            )
        }

    def children_sum(self, cls: type[Resource]) -> int:
        """The lengths of the child-ID lists of one level, added up."""
        lo, hi = pos_range(cls)
        found = self.db.execute(
            "SELECT COALESCE(SUM(children), 0) FROM resources WHERE pos >= ? AND pos < ?",
            (lo, hi),
        ).fetchone()
        return int(found[0])

    # -- writing single rows ------------------------------------------------------------------

    def delete(self, ids: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM resources WHERE id = ?", ((i,) for i in ids))

    def insert(self, rows: Sequence[Row]) -> None:
        """Insert rows at the end of their levels, in the order given."""
        next_pos: dict[int, int] = {}
        values = []
        for row in rows:
            pos = next_pos.get(row.level)
            if pos is None:
                lo, hi = pos_range(LEVELS[row.level - 1])
                last = self.db.execute(
                    "SELECT MAX(pos) FROM resources WHERE pos >= ? AND pos < ?", (lo, hi)
                ).fetchone()[0]
                pos = (last if last is not None else lo) + 1
            next_pos[row.level] = pos + 1
            values.append(
                (pos, row.level, row.id, row.parent, row.uid, row.accession, row.children, row.json)
            )
        self.db.executemany(
            f"INSERT INTO resources({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values
        )

    def update(self, rows: Sequence[Row]) -> None:
        """Rewrite rows in place (their position in the listing order stays)."""
        self.db.executemany(
            "UPDATE resources SET parent = ?, uid = ?, accession = ?, children = ?, json = ? "
            "WHERE id = ?",
            ((r.parent, r.uid, r.accession, r.children, r.json, r.id) for r in rows),
        )

    def size(self) -> int:
        """Bytes on disk."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


def _marks(part: Sequence[Any] | str) -> str:
    """``?, ?, ?`` for the items of ``part`` (or the comma-separated names in a string)."""
    count = len(part.split(",")) if isinstance(part, str) else len(part)
    return ", ".join("?" * count)


def _chunks(ids: Sequence[Any]) -> Iterator[Sequence[Any]]:
    items = list(ids)
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
