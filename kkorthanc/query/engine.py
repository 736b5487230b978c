"""The matching engine: Orthanc's two normalizations and one predicate per constraint.

Pure functions over strings; nothing here knows the server or the forest. Why the rules look
like this, stage by stage: ``docs/matching.md``. Where Orthanc versions and index backends
answer differently, a :class:`Dialect` says which server the answers must follow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ..models import Level

__all__ = [
    "DEFAULT_DIALECT",
    "IDENTIFIER_TAGS",
    "Constraint",
    "Dialect",
    "IndexSql",
    "Kind",
    "Matcher",
    "build_matcher",
    "build_stages",
    "normalize_identifier",
    "sql_lower",
    "upper_with_accents",
]

#: Tags that Orthanc's index compares in normalized form (see :func:`normalize_identifier`).
IDENTIFIER_TAGS: frozenset[str] = frozenset(
    {
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyDescription",
        "StudyDate",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    }
)

#: The SQL engine behind the index: the built-in SQLite, or the PostgreSQL plugin.
IndexSql = Literal["sqlite", "postgresql"]


class _SystemLike(Protocol):
    @property
    def api_version(self) -> int: ...
    @property
    def index(self) -> str: ...


@dataclass(frozen=True)
class Dialect:
    """Which server a local answer follows where Orthanc versions and backends differ.

    Read from ``GET /system`` (:meth:`of`). The default is Orthanc 1.10 on its SQLite index.
    """

    api_version: int = 16
    """The server's REST API version (16 for 1.10.x, 23 for 1.12.3)."""
    index_sql: IndexSql = "sqlite"
    """The index's SQL engine: its ``lower()`` and ``LIKE`` decide the first filtering stage."""

    @classmethod
    def of(cls, system: _SystemLike) -> Dialect:
        """The dialect of a server, from its ``/system`` (``SystemInfo``)."""
        sql: IndexSql = "postgresql" if system.index == "PostgreSQL index" else "sqlite"
        return cls(api_version=system.api_version, index_sql=sql)

    @property
    def patient_sample(self) -> Literal["first study", "smallest instance"]:
        """Which study's copy of the patient tags a patient-level query checks last.

        SQLite's index hands over an instance of the patient's first study (the one stored
        first); the PostgreSQL plugin the instance with the smallest Orthanc ID.
        """
        return "smallest instance" if self.index_sql == "postgresql" else "first study"


#: Orthanc 1.10 on its SQLite index: what a forest follows when it knows nothing better.
DEFAULT_DIALECT = Dialect()


# ---------------------------------------------------------------------------------------------
# The normalizations Orthanc applies
# ---------------------------------------------------------------------------------------------

_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]+")


def normalize_identifier(value: str) -> str:
    """The form in which Orthanc's index stores and compares :data:`IDENTIFIER_TAGS`.

    Characters outside printable ASCII are dropped, ``_`` and ``%`` become spaces, letters are
    upper-cased and surrounding spaces stripped: ``"Müller_J "`` gives ``"MLLER J"``.
    """
    if not (value.isascii() and value.isprintable()):
        value = _NOT_PRINTABLE_ASCII.sub("", value)
    return value.replace("%", " ").replace("_", " ").upper().strip(" ")


def upper_with_accents(value: str) -> str:
    """Upper-case character by character, keeping accents: ``"Müller"`` gives ``"MÜLLER"``.

    A character whose upper case is several characters (``ß``) is kept as it is, like the C
    library's ``towupper`` that Orthanc relies on.
    """
    upper = value.upper()
    if len(upper) == len(value):
        return upper
    out = []
    for char in value:
        big = char.upper()
        out.append(big if len(big) == 1 else char)
    return "".join(out)


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}
_LOWER_CHAR: dict[str, str] = {}


def _ascii_lower(value: str) -> str:
    """SQLite's ``lower()``: ASCII letters only."""
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


def _unicode_lower(value: str) -> str:
    """PostgreSQL's ``lower()`` in a UTF-8 locale: every letter, one character for one.

    The C library's ``towlower`` maps each character on its own (no final sigma, ``İ`` gives
    ``i``), which is what a character-by-character ``str.lower`` does.
    """
    if value.isascii():
        return value.lower()
    out = []
    for char in value:
        low = _LOWER_CHAR.get(char)
        if low is None:
            low = char.lower()[:1] or char
            _LOWER_CHAR[char] = low
        out.append(low)
    return "".join(out)


def sql_lower(index_sql: IndexSql) -> Callable[[str], str]:
    """The index's ``lower()``: ASCII letters on SQLite, accented letters too on PostgreSQL."""
    return _unicode_lower if index_sql == "postgresql" else _ascii_lower


def _same(value: str) -> str:
    return value


def _like(pattern: str, ignore_ascii_case: bool) -> re.Pattern[str]:
    """SQL ``LIKE`` for a DICOM wildcard: ``?`` one character; SQLite ignores ASCII case."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if ignore_ascii_case else 0)
    return re.compile("".join(parts), flags)


def _byte_regex(pattern: str, case_sensitive: bool) -> re.Pattern[bytes]:
    """Orthanc's wildcard regular expression, which runs over UTF-8 bytes."""
    parts = [
        b".*" if c == "*" else b"." if c == "?" else re.escape(c.encode("utf-8")) for c in pattern
    ]
    flags = re.DOTALL if case_sensitive else re.DOTALL | re.IGNORECASE
    return re.compile(b"".join(parts), flags)


# ---------------------------------------------------------------------------------------------
# Constraints
# ---------------------------------------------------------------------------------------------

Kind = Literal["equal", "list", "range", "wildcard"]
#: Whether a stored value (``None`` when the tag is missing) satisfies a condition.
Matcher = Callable[[str | None], bool]


def _never(value: str | None) -> bool:  # pragma: no cover - placeholder default
    return False


@dataclass(frozen=True)
class Constraint:
    """One tag's condition, as Orthanc understands it.

    ``kind`` is ``equal`` (one value), ``list`` (any of ``values``, from ``A\\B``), ``range``
    (``values`` = lower and upper bound, ``""`` when open; dates and times only) or
    ``wildcard`` (``*`` and ``?``). A resource that lacks the tag never matches.
    """

    keyword: str
    """The tag's DICOM keyword."""
    level: Level
    """The level whose main tags hold the tag."""
    kind: Kind
    """How ``values`` are compared."""
    text: str
    """The DICOM query string sent to the server."""
    values: tuple[str, ...]
    """The operand(s): one value, the list items, or the range bounds."""
    case_sensitive: bool
    """Whether letter case matters."""
    matches: Matcher = field(repr=False, compare=False, hash=False)
    """Whether a stored value passes both of Orthanc's stages."""
    index_stage: Matcher = field(default=_never, repr=False, compare=False, hash=False)
    """Whether a stored value passes the index's SQL filter (the first stage)."""
    exact_stage: Matcher = field(default=_never, repr=False, compare=False, hash=False)
    """Whether a stored value passes the exact check on the main tags (the second stage)."""
    index_sql: IndexSql = "sqlite"
    """The SQL engine whose first stage ``matches`` and ``index_stage`` reproduce."""

    @property
    def depends_on_index(self) -> bool:
        """Whether SQLite and PostgreSQL may answer this constraint differently.

        Only case-insensitive comparisons of tags outside :data:`IDENTIFIER_TAGS` go
        through the index's ``lower()``, and it only matters for non-ASCII query text.
        """
        return (
            not self.case_sensitive
            and self.keyword not in IDENTIFIER_TAGS
            and not all(value.isascii() for value in self.values)
        )


def _keys(
    keyword: str, case_sensitive: bool, index_sql: IndexSql
) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """The value transforms of the index stage and of the exact stage."""
    index_key: Callable[[str], str]
    if keyword in IDENTIFIER_TAGS:
        index_key = normalize_identifier
    elif case_sensitive:
        index_key = _same
    else:
        index_key = sql_lower(index_sql)
    return index_key, (_same if case_sensitive else upper_with_accents)


def build_stages(
    keyword: str,
    kind: Kind,
    values: tuple[str, ...],
    case_sensitive: bool,
    index_sql: IndexSql = "sqlite",
) -> tuple[Matcher, Matcher]:
    """The two stages of Orthanc's filtering for one constraint, as separate predicates.

    The first is the index's SQL filter (normalized identifiers, or the index's ``lower()``
    and ``LIKE``), the second the exact check on the main tags. Both must pass; they only
    need to be told apart where Orthanc applies them to different copies of a tag (a
    patient-level query: the patient's own tags, then those stored with one of its studies).
    """
    ik, ek = _keys(keyword, case_sensitive, index_sql)

    if kind in ("equal", "list"):
        index_items = frozenset(ik(v) for v in values)
        exact_items = frozenset(ek(v) for v in values)

        def index_in(value: str | None) -> bool:
            return value is not None and ik(value) in index_items

        def exact_in(value: str | None) -> bool:
            return value is not None and ek(value) in exact_items

        return index_in, exact_in

    if kind == "range":
        lower, upper = values
        low_i, high_i = ik(lower), ik(upper)
        low_e, high_e = ek(lower), ek(upper)

        def index_range(value: str | None) -> bool:
            if value is None:
                return False
            key = ik(value)
            return (not lower or key >= low_i) and (not upper or key <= high_i)

        def exact_range(value: str | None) -> bool:
            if value is None:
                return False
            key = ek(value)
            return (not lower or key >= low_e) and (not upper or key <= high_e)

        return index_range, exact_range

    # wildcard: SQLite's LIKE ignores ASCII case, PostgreSQL's does not (lower() both sides)
    (pattern,) = values
    like = _like(ik(pattern), ignore_ascii_case=index_sql == "sqlite")
    regex = _byte_regex(ek(pattern), case_sensitive)

    def index_like(value: str | None) -> bool:
        return value is not None and like.fullmatch(ik(value)) is not None

    def exact_regex(value: str | None) -> bool:
        return value is not None and regex.fullmatch(ek(value).encode("utf-8")) is not None

    return index_like, exact_regex


def build_matcher(
    keyword: str,
    kind: Kind,
    values: tuple[str, ...],
    case_sensitive: bool,
    index_sql: IndexSql = "sqlite",
) -> Matcher:
    """A predicate reproducing both of Orthanc's filtering stages for one constraint.

    The same answers as ``index_stage(v) and exact_stage(v)`` of :func:`build_stages`,
    written out per kind: it runs once per resource of a forest level.
    """
    ik, ek = _keys(keyword, case_sensitive, index_sql)

    if kind == "equal":
        (query,) = values
        size = len(query)
        if case_sensitive:
            # An exact match passes the index comparison too.
            def equal_cs(value: str | None) -> bool:
                return value is not None and value == query

            return equal_cs
        query_i, query_e = ik(query), ek(query)

        def equal_ci(value: str | None) -> bool:
            if value is None or len(value) != size:  # upper-casing keeps the length
                return False
            return ek(value) == query_e and ik(value) == query_i

        return equal_ci

    if kind == "list":
        items = frozenset(values)
        if case_sensitive:

            def list_cs(value: str | None) -> bool:
                return value is not None and value in items

            return list_cs
        items_i = frozenset(ik(v) for v in values)
        items_e = frozenset(ek(v) for v in values)

        def list_ci(value: str | None) -> bool:
            return value is not None and ek(value) in items_e and ik(value) in items_i

        return list_ci

    if kind == "wildcard":
        (pattern,) = values
        like = _like(ik(pattern), ignore_ascii_case=index_sql == "sqlite")
        regex = _byte_regex(ek(pattern), case_sensitive)
        like_match, regex_match = like.fullmatch, regex.fullmatch
        seen: dict[str, bool] = {}  # stored values repeat (a patient's name on each study)

        def wildcard(value: str | None) -> bool:
            if value is None:
                return False
            known = seen.get(value)
            if known is None:
                known = seen[value] = (
                    regex_match(ek(value).encode("utf-8")) is not None
                    and like_match(ik(value)) is not None
                )
            return known

        return wildcard

    index_stage, exact_stage = build_stages(keyword, kind, values, case_sensitive, index_sql)

    def both(value: str | None) -> bool:
        return exact_stage(value) and index_stage(value)

    return both
