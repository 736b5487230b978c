"""Python values as DICOM text: the one conversion shared by queries, C-FIND and modifications.

:func:`to_dicom` turns a value into the text the server takes for a tag, checked against the
tag's value representation when it is known; :func:`value_to_dicom` is its rule for one
value of an unknown tag, without the error. The date, time and datetime formatters
(:func:`date_to_dicom`, :func:`time_to_dicom`, :func:`datetime_to_dicom`) write DA, TM and
DT values.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any, Literal, overload

from ..errors import InvalidRequest
from .dictionary import tag_keyword, vr_of

__all__ = [
    "RANGE_VRS",
    "date_to_dicom",
    "datetime_to_dicom",
    "time_match_bounds",
    "time_to_dicom",
    "to_dicom",
    "value_to_dicom",
]

_date = datetime.date
_time = datetime.time
_datetime = datetime.datetime

# ---------------------------------------------------------------------------
# Dates and times as DICOM text
# ---------------------------------------------------------------------------

_ONE_MINUTE = datetime.timedelta(minutes=1)


def date_to_dicom(d: datetime.date) -> str:
    """Format a date as DICOM DA ``YYYYMMDD`` (a datetime gives its date part)."""
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def time_to_dicom(t: datetime.time) -> str:
    """Format a time as DICOM TM ``HHMMSS``, or ``HHMMSS.ffffff`` when it has microseconds.

    Any tzinfo is ignored: TM carries no offset.
    """
    base = f"{t.hour:02d}{t.minute:02d}{t.second:02d}"
    if t.microsecond:
        return f"{base}.{t.microsecond:06d}"
    return base


def datetime_to_dicom(dt: datetime.datetime) -> str:
    """Format a datetime as DICOM DT ``YYYYMMDDHHMMSS[.ffffff][&ZZXX]``.

    The ``&ZZXX`` offset is written only for aware datetimes; seconds of the offset are dropped.
    """
    text = date_to_dicom(dt) + time_to_dicom(dt.time())
    offset = dt.utcoffset()
    if offset is None:
        return text
    minutes = int(offset / _ONE_MINUTE)  # truncates toward zero
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return f"{text}{sign}{hh:02d}{mm:02d}"


# ---------------------------------------------------------------------------
# Python values as DICOM text, for queries and modifications
# ---------------------------------------------------------------------------

#: Value representations on which ``A-B`` is a range.
RANGE_VRS: frozenset[str] = frozenset({"DA", "DT", "TM"})
#: Value representations that hold decimal numbers (a ``float`` is accepted on these).
_DECIMAL_VRS = frozenset({"DS", "FL", "FD", "OF", "OD"})
_DS_LENGTH = 16

Purpose = Literal["match", "write"]


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _decimal_text(value: float, vr: str | None) -> str:
    text = repr(value)
    if vr == "DS" and len(text) > _DS_LENGTH:  # a DS holds 16 characters at most
        for digits in range(_DS_LENGTH - 1, 0, -1):
            text = f"{value:.{digits}g}"
            if len(text) <= _DS_LENGTH:
                break
    return text


def _scalar_text(
    value: Any,
    keyword: str,
    vr: str | None,
    purpose: Purpose,
    where: str,
    error: type[InvalidRequest],
) -> str:
    """One Python value as DICOM text for a tag of value representation ``vr`` (or unknown)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise error(f"{where}{keyword}: a bool is not a DICOM value")
    if isinstance(value, int):
        return str(value)
    verb = "query with" if purpose == "match" else "write"
    if isinstance(value, float):
        if vr is not None and vr not in _DECIMAL_VRS:
            raise error(
                f"{where}{keyword} has value representation {vr}: cannot {verb} a float; "
                "pass an int or a string"
            )
        if not math.isfinite(value):
            raise error(f"{where}{keyword}: {value!r} is not a DICOM number")
        return _decimal_text(value, vr)
    if isinstance(value, _datetime):
        if vr is None or vr == "DT":
            return datetime_to_dicom(value)
        wanted = {"DA": "a datetime.date", "TM": "a datetime.time"}.get(vr)
        instead = f"{wanted} or a string" if wanted else "a string"
        raise error(
            f"{where}{keyword} has value representation {vr}: pass {instead}, not a datetime"
        )
    if isinstance(value, _date):
        if vr is None or vr in ("DA", "DT"):
            return date_to_dicom(value)
        raise error(f"{where}{keyword} has value representation {vr}, not a date")
    if isinstance(value, _time):
        if vr is None or vr == "TM":
            return time_to_dicom(value)
        raise error(f"{where}{keyword} has value representation {vr}, not a time")
    if purpose == "match":
        hint = "a date, a time, a (start, end) pair or a list of alternatives"
    else:
        hint = "a number, a date, a time, a list of values or a list of datasets"
    raise error(
        f"{where}{keyword}: cannot {verb} {_article(type(value).__name__)}; use a string in "
        f"DICOM syntax, {hint}"
    )


def time_match_bounds(t: datetime.time) -> tuple[str, str]:
    """The lowest and highest TM text of the instant a time names, for range matching.

    ``find()`` queries (:func:`kkorthanc.query.compile_query`) match a ``time`` this way.

    Orthanc compares TM values as text, so ``141645`` is not equal to a stored
    ``141645.000000``. A time without microseconds names its whole second, and is found
    where a stored value lies between ``HHMMSS`` (shortened to ``HHMM`` or ``HH`` when the
    trailing fields are zero, so that a stored ``1416`` is found by ``time(14, 16)``) and
    ``HHMMSS.999999``; a time with microseconds names that instant, written with the fewest
    and with all six fraction digits (``141645.5`` to ``141645.500000``).
    """
    hhmmss = f"{t.hour:02d}{t.minute:02d}{t.second:02d}"
    if t.microsecond:
        fraction = f"{t.microsecond:06d}"
        return f"{hhmmss}.{fraction.rstrip('0')}", f"{hhmmss}.{fraction}"
    low = hhmmss
    while len(low) > 2 and low.endswith("00"):
        low = low[:-2]
    return low, f"{hhmmss}.999999"


def _match_text(
    keyword: str, vr: str | None, value: Any, where: str, error: type[InvalidRequest]
) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise error(
                f"{where}{keyword}: a tuple is a (start, end) range and needs two items, "
                f"not {len(value)}; use a list for alternatives"
            )
        if vr is not None and vr not in RANGE_VRS:
            raise error(
                f"{where}{keyword} has value representation {vr}: ranges exist only for dates "
                "and times (DA, TM, DT)"
            )
        start, end = (
            "" if bound is None else _scalar_text(bound, keyword, vr, "match", where, error)
            for bound in value
        )
        for bound in (start, end):
            if "-" in bound or "\\" in bound:
                raise error(f"{where}{keyword}: range bound {bound!r} contains '-' or '\\'")
        return f"{start}-{end}"
    if isinstance(value, (list, set, frozenset)):
        items = [_scalar_text(item, keyword, vr, "match", where, error) for item in value]
        if isinstance(value, (set, frozenset)):
            items.sort()
        if not items:
            raise error(f"{where}{keyword}: an empty list of alternatives matches nothing")
        for item in items:
            if "\\" in item:
                raise error(f"{where}{keyword}: list item {item!r} contains a backslash")
            if vr in RANGE_VRS and "-" in item:
                # the server would read the whole list as a range
                raise error(f"{where}{keyword}: list item {item!r} contains '-'")
        if len(items) == 1:
            (item,) = items
            if "*" in item or "?" in item:
                # list items are literal; repeating the item keeps the list semantics
                return f"{item}\\{item}"
            return item
        return "\\".join(items)
    return _scalar_text(value, keyword, vr, "match", where, error)


def _write_value(
    keyword: str, vr: str | None, value: Any, where: str, error: type[InvalidRequest]
) -> str | list[dict[str, Any]]:
    if value is None:
        raise error(
            f"{where}{keyword}: None is not a DICOM value; remove the tag, or write '' to "
            "empty it"
        )
    if isinstance(value, (list, tuple, set, frozenset)):
        unordered = isinstance(value, (set, frozenset))
        if value and not unordered and all(isinstance(item, Mapping) for item in value):
            return [_dataset(item, where, error) for item in value]  # a sequence's items
        texts = [_scalar_text(item, keyword, vr, "write", where, error) for item in value]
        if unordered:
            texts.sort()
        for text in texts:
            if "\\" in text:
                raise error(
                    f"{where}{keyword}: value {text!r} contains a backslash, which separates "
                    "values: give the values as a list"
                )
        return "\\".join(texts)
    return _scalar_text(value, keyword, vr, "write", where, error)


def _dataset(
    item: Mapping[Any, Any], where: str, error: type[InvalidRequest]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        keyword = tag_keyword(key, where=where, error=error)
        out[keyword] = _write_value(keyword, vr_of(keyword), value, where, error)
    return out


@overload
def to_dicom(
    keyword: str,
    value: Any,
    *,
    purpose: Literal["match"],
    where: str = "",
    error: type[InvalidRequest] = InvalidRequest,
) -> str: ...
@overload
def to_dicom(
    keyword: str,
    value: Any,
    *,
    purpose: Literal["write"],
    where: str = "",
    error: type[InvalidRequest] = InvalidRequest,
) -> str | list[dict[str, Any]]: ...
def to_dicom(
    keyword: str,
    value: Any,
    *,
    purpose: Purpose,
    where: str = "",
    error: type[InvalidRequest] = InvalidRequest,
) -> str | list[dict[str, Any]]:
    """A Python value as the DICOM text the server takes for tag ``keyword``.

    The one conversion of kkorthanc, used by queries (``find``), C-FIND and modifications.
    ``keyword`` comes from :func:`tag_keyword`; when its value representation is known
    (:func:`vr_of`) the value must fit it, otherwise the value's type decides.

    Every purpose takes a string as it is (DICOM syntax), an ``int``, a ``float`` on decimal
    tags (DS, FL, FD), a ``date`` on DA and DT tags, a ``time`` on TM tags and a ``datetime``
    on DT tags. A ``bool`` is refused.

    ``purpose="match"`` (a query's value): ``None`` matches anything (``""``); a
    ``(start, end)`` tuple is a range on dates and times (``None`` for an open end); a list or
    set means any of its items, which are literal (a lone item with a wildcard is repeated,
    ``C*\\C*``, so that it stays a list); an empty list is refused. A ``time`` is written
    as TM text; the queries of ``find()`` turn it into the range of the instant it names
    first (:func:`time_match_bounds`), which a C-FIND leaves to the peer.

    ``purpose="write"`` (a modification's value): a list, tuple or set holds the values of a
    multi-valued tag, joined by ``\\`` (a set sorted); a list of mappings is a sequence, each
    item a dataset whose names and values follow the same rules; ``None`` is refused.

    Raises:
        InvalidRequest: (or ``error``) a value that does not fit; the message starts with
            ``where`` and names ``keyword``.
    """
    vr = vr_of(keyword)
    if purpose == "match":
        return _match_text(keyword, vr, value, where, error)
    return _write_value(keyword, vr, value, where, error)


def value_to_dicom(value: object) -> str | None:
    """A string, number, date, time or datetime as DICOM text; ``None`` for anything else.

    Booleans are not DICOM values and give ``None`` too. This is :func:`to_dicom`'s rule for
    one value of a tag whose value representation is not known, without the error.
    """
    try:
        return _scalar_text(value, "value", None, "write", "", InvalidRequest)
    except InvalidRequest:
        return None
