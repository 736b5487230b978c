"""The matching engine: Orthanc's two normalizations and one predicate per constraint.

Pure functions over strings; nothing here knows the server or the forest. Why the rules look
like this, stage by stage: ``docs/matching.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..models import Level

__all__ = [
    "IDENTIFIER_TAGS",
    "Constraint",
    "Kind",
    "build_matcher",
    "normalize_identifier",
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


# ---------------------------------------------------------------------------------------------
# The two normalizations Orthanc applies
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


def _ascii_lower(value: str) -> bytes:
    """SQLite's ``lower()``: ASCII letters only, compared as UTF-8 bytes like the index does."""
    return value.encode("utf-8").lower()


def _like(pattern: str) -> re.Pattern[str]:
    """SQLite ``LIKE`` for a DICOM wildcard: ``?`` one character, ASCII case ignored."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL | re.IGNORECASE | re.ASCII)


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
    matches: Callable[[str | None], bool] = field(repr=False, compare=False, hash=False)
    """Whether a stored value (``None`` when the tag is missing) satisfies the constraint."""


def build_matcher(
    keyword: str, kind: Kind, values: tuple[str, ...], case_sensitive: bool
) -> Callable[[str | None], bool]:
    """A predicate reproducing both of Orthanc's filtering stages for one constraint."""
    identifier = keyword in IDENTIFIER_TAGS
    ni = normalize_identifier
    up = upper_with_accents

    if kind == "equal":
        (query,) = values
        size = len(query)
        if case_sensitive:
            # An exact match passes the normalized index comparison too.
            def equal_cs(value: str | None) -> bool:
                return value is not None and value == query

            return equal_cs
        query_up = up(query)
        if identifier:
            query_ni = ni(query)

            def equal_id(value: str | None) -> bool:
                if value is None or len(value) != size:  # upper-casing keeps the length
                    return False
                return up(value) == query_up and ni(value) == query_ni

            return equal_id
        query_lower = _ascii_lower(query)

        def equal_ci(value: str | None) -> bool:
            if value is None or len(value) != size:
                return False
            return _ascii_lower(value) == query_lower and up(value) == query_up

        return equal_ci

    if kind == "list":
        items = frozenset(values)
        if case_sensitive:

            def list_cs(value: str | None) -> bool:
                return value is not None and value in items

            return list_cs
        items_up = frozenset(up(v) for v in values)
        if identifier:
            items_ni = frozenset(ni(v) for v in values)

            def list_id(value: str | None) -> bool:
                return value is not None and up(value) in items_up and ni(value) in items_ni

            return list_id
        items_lower = frozenset(_ascii_lower(v) for v in values)

        def list_ci(value: str | None) -> bool:
            return (
                value is not None
                and _ascii_lower(value) in items_lower
                and up(value) in items_up
            )

        return list_ci

    if kind == "range":
        lower, upper = values

        # Orthanc adds one constraint per bound; each must pass the index (on normalized
        # identifiers, or ASCII-lowered values) and the exact check.
        def index_key(value: str) -> bytes:
            if identifier:
                return ni(value).encode("utf-8")
            return value.encode("utf-8") if case_sensitive else _ascii_lower(value)

        def exact_key(value: str) -> str:
            return value if case_sensitive else up(value)

        low_index, low_exact = index_key(lower), exact_key(lower)
        high_index, high_exact = index_key(upper), exact_key(upper)

        def in_range(value: str | None) -> bool:
            if value is None:
                return False
            if lower and (index_key(value) < low_index or exact_key(value) < low_exact):
                return False
            return not (
                upper and (index_key(value) > high_index or exact_key(value) > high_exact)
            )

        return in_range

    # wildcard
    (pattern,) = values
    if identifier:
        like = _like(ni(pattern))

        def like_ok(value: str) -> bool:
            return like.fullmatch(ni(value)) is not None

    else:
        like = _like(pattern)

        def like_ok(value: str) -> bool:
            return like.fullmatch(value) is not None

    if case_sensitive:
        regex = _byte_regex(pattern, True)

        def wildcard_cs(value: str | None) -> bool:
            return (
                value is not None
                and regex.fullmatch(value.encode("utf-8")) is not None
                and like_ok(value)
            )

        return wildcard_cs
    regex = _byte_regex(up(pattern), False)

    def wildcard_ci(value: str | None) -> bool:
        return (
            value is not None
            and regex.fullmatch(up(value).encode("utf-8")) is not None
            and like_ok(value)
        )

    return wildcard_ci

