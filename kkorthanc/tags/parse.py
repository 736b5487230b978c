"""Parsers of the DICOM values Orthanc sends as strings, and :class:`PersonName`.

Every ``parse_*`` function takes ``None`` or a string and gives a Python value or ``None``:
blank and malformed input both give ``None``, and no parser raises, because one odd value
must not stop a resource from loading. The parsers run once per tag for tens of thousands
of resources, so they slice and check digits rather than use regular expressions.
See ``docs/tags.md`` for the forms each one accepts.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

__all__ = [
    "PersonName",
    "parse_da",
    "parse_ds",
    "parse_dt",
    "parse_is",
    "parse_multi",
    "parse_orthanc_datetime",
    "parse_pn",
    "parse_str",
    "parse_tm",
]

T = TypeVar("T")

# Characters removed around a value: DICOM pads with spaces (UIDs with NUL).
_PAD = " \t\r\n\x00"

_date = datetime.date
_time = datetime.time
_datetime = datetime.datetime


def _is_digits(s: str) -> bool:
    """True when *s* is non-empty and made only of ASCII digits."""
    return s.isdigit() and s.isascii()


# ---------------------------------------------------------------------------
# Dates and times
# ---------------------------------------------------------------------------


def parse_da(value: str | None) -> datetime.date | None:
    """Parse a DICOM DA value (``YYYYMMDD``, or the ACR-NEMA form ``YYYY.MM.DD``).

    Returns ``None`` for empty, malformed or impossible dates (``20211340``).
    """
    if not value:
        return None
    s = value.strip(_PAD)
    n = len(s)
    if n == 8:
        if not _is_digits(s):
            return None
        year, month, day = int(s[:4]), int(s[4:6]), int(s[6:])
    elif n == 10 and s[4] == "." and s[7] == ".":
        ys, ms, ds = s[:4], s[5:7], s[8:]
        if not (_is_digits(ys) and _is_digits(ms) and _is_digits(ds)):
            return None
        year, month, day = int(ys), int(ms), int(ds)
    else:
        return None
    try:
        return _date(year, month, day)
    except ValueError:
        return None


def _time_parts(s: str) -> tuple[int, int, int, int] | None:
    """Split ``HH``, ``HHMM``, ``HHMMSS`` or ``HHMMSS.F{1,6}`` into hour, minute, second, µs.

    No padding or colons are allowed.  A leap second (60) is read as 59.
    """
    dot = s.find(".")
    if dot < 0:
        main = s
        micro = 0
    else:
        main = s[:dot]
        frac = s[dot + 1 :]
        if len(main) != 6 or not 1 <= len(frac) <= 6 or not _is_digits(frac):
            return None
        micro = int(frac) * 10 ** (6 - len(frac))
    n = len(main)
    if n not in (2, 4, 6) or not _is_digits(main):
        return None
    hour = int(main[:2])
    minute = int(main[2:4]) if n >= 4 else 0
    second = int(main[4:6]) if n == 6 else 0
    if hour > 23 or minute > 59 or second > 60:
        return None
    if second == 60:  # leap second: Python's time cannot hold it
        second = 59
    return hour, minute, second, micro


def parse_tm(value: str | None) -> datetime.time | None:
    """Parse a DICOM TM value: ``HH``, ``HHMM``, ``HHMMSS`` or ``HHMMSS.F{1,6}``.

    The colon form ``HH:MM`` / ``HH:MM:SS[.F]`` written by some old devices is accepted too.
    A leap second (``60``) is read as second 59.  Malformed values give ``None``.
    """
    if not value:
        return None
    s = value.strip(_PAD)
    if ":" in s:
        n = len(s)
        if n < 5 or s[2] != ":" or (n > 5 and (n < 8 or s[5] != ":")):
            return None
        s = s[:2] + s[3:5] + s[6:]
    parts = _time_parts(s)
    return None if parts is None else _time(*parts)


@functools.lru_cache(maxsize=64)
def _offset_tz(minutes: int) -> datetime.timezone:
    """A fixed-offset timezone, shared between parses."""
    return datetime.timezone(datetime.timedelta(minutes=minutes))


def parse_dt(value: str | None) -> datetime.datetime | None:
    """Parse a DICOM DT value ``YYYYMMDDHHMMSS.FFFFFF&ZZXX``.

    Trailing components may be omitted (``YYYY``, ``YYYYMM``, ``YYYYMMDD``, ``YYYYMMDDHH``...);
    missing month/day default to 1 and missing time parts to 0.  When a ``+ZZXX``/``-ZZXX``
    offset is present the result is timezone-aware, otherwise it is naive.
    """
    if not value:
        return None
    s = value.strip(_PAD)
    tz: datetime.timezone | None = None
    if len(s) > 5 and s[-5] in "+-":
        off = s[-4:]
        if not _is_digits(off):
            return None
        oh, om = int(off[:2]), int(off[2:])
        if oh > 23 or om > 59:
            return None
        minutes = oh * 60 + om
        tz = _offset_tz(-minutes if s[-5] == "-" else minutes)
        s = s[:-5]
    n = len(s)
    if n < 4:
        return None
    head = s[:8]
    if len(head) not in (4, 6, 8) or not _is_digits(head):
        return None
    year = int(head[:4])
    month = int(head[4:6]) if n >= 6 else 1
    day = int(head[6:8]) if n >= 8 else 1
    if n > 8:
        parts = _time_parts(s[8:])
        if parts is None:
            return None
        hour, minute, second, micro = parts
    else:
        hour = minute = second = micro = 0
    try:
        return _datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def parse_orthanc_datetime(value: str | None) -> datetime.datetime | None:
    """Parse Orthanc's own timestamps such as ``LastUpdate``: ``20240102T030405``.

    A fractional part after ``.`` or ``,`` is accepted (truncated to microseconds).
    The result is naive: Orthanc does not say which timezone it used.
    """
    if not value:
        return None
    s = value.strip(_PAD)
    if len(s) < 15 or s[8] != "T":
        return None
    ds, ts = s[:8], s[9:15]
    if not (_is_digits(ds) and _is_digits(ts)):
        return None
    micro = 0
    rest = s[15:]
    if rest:
        frac = rest[1:]
        if rest[0] not in ".," or not _is_digits(frac):
            return None
        frac = frac[:6]
        micro = int(frac) * 10 ** (6 - len(frac))
    try:
        return _datetime(
            int(ds[:4]),
            int(ds[4:6]),
            int(ds[6:]),
            int(ts[:2]),
            int(ts[2:4]),
            int(ts[4:]),
            micro,
        )
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Numbers and strings
# ---------------------------------------------------------------------------


def parse_is(value: str | None) -> int | None:
    """Parse a DICOM IS value: an optionally signed decimal integer, maybe space padded."""
    if not value:
        return None
    s = value.strip(_PAD)
    if not s or not s.isascii() or "_" in s:
        return None
    try:
        return int(s)
    except ValueError:
        return None


def parse_ds(value: str | None) -> float | None:
    """Parse a DICOM DS value (decimal string, exponent allowed); NaN and infinities give None."""
    if not value:
        return None
    s = value.strip(_PAD)
    if not s or not s.isascii() or "_" in s:
        return None
    try:
        f = float(s)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def parse_str(value: str | None) -> str | None:
    """Strip leading/trailing padding from a text value; empty results give None."""
    if not value:
        return None
    s = value.strip(_PAD)
    return s or None


def parse_multi(
    parse: Callable[[str], T | None],
) -> Callable[[str | None], tuple[T, ...] | None]:
    """Wrap a single-value parser into one for backslash-separated multi-values.

    ``parse_multi(parse_ds)("1\\\\0\\\\0")`` gives ``(1.0, 0.0, 0.0)``.  Empty input gives
    None, and so does the whole value when any component is empty or malformed.
    """

    def parse_values(value: str | None) -> tuple[T, ...] | None:
        if not value or not value.strip(_PAD):
            return None
        out: list[T] = []
        for part in value.split("\\"):
            item = parse(part)
            if item is None:
                return None
            out.append(item)
        return tuple(out)

    name = getattr(parse, "__name__", "parse")
    parse_values.__name__ = parse_values.__qualname__ = f"parse_multi({name})"
    return parse_values


# ---------------------------------------------------------------------------
# Person names
# ---------------------------------------------------------------------------


class PersonName(str):
    """A DICOM PN value: a ``str`` holding the raw value, with accessors for its parts.

    The value has up to three ``=``-separated groups (alphabetic, ideographic, phonetic);
    each group has up to five ``^``-separated components
    (family, given, middle, prefix, suffix).  Component accessors read the alphabetic
    group and give ``""`` for absent parts.
    """

    __slots__ = ()

    def _group(self, index: int) -> str:
        groups = str.split(self, "=")
        return groups[index] if index < len(groups) else ""

    def _component(self, index: int) -> str:
        parts = self._group(0).split("^")
        return parts[index].strip(_PAD) if index < len(parts) else ""

    @property
    def alphabetic(self) -> str:
        """The first (single-byte / alphabetic) group, as written."""
        return self._group(0)

    @property
    def ideographic(self) -> str:
        """The second (ideographic) group, ``""`` when absent."""
        return self._group(1)

    @property
    def phonetic(self) -> str:
        """The third (phonetic) group, ``""`` when absent."""
        return self._group(2)

    @property
    def family(self) -> str:
        """Family name component of the alphabetic group."""
        return self._component(0)

    @property
    def given(self) -> str:
        """Given name component of the alphabetic group."""
        return self._component(1)

    @property
    def middle(self) -> str:
        """Middle name component of the alphabetic group."""
        return self._component(2)

    @property
    def prefix(self) -> str:
        """Name prefix (e.g. ``Dr``) of the alphabetic group."""
        return self._component(3)

    @property
    def suffix(self) -> str:
        """Name suffix (e.g. ``Jr``) of the alphabetic group."""
        return self._component(4)

    def __repr__(self) -> str:
        return f"PersonName({str.__repr__(self)})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        """Let pydantic models use ``PersonName`` fields: validated from str, dumped as str."""
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


def parse_pn(value: str | None) -> PersonName | None:
    """Parse a DICOM PN value into a :class:`PersonName` (padding stripped); blank gives None."""
    if not value:
        return None
    s = value.strip(_PAD)
    return PersonName(s) if s else None
