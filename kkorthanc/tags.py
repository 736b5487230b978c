"""DICOM value parsing and tag keyword helpers.

Orthanc hands DICOM values over as strings: dates ``YYYYMMDD``, times ``HHMMSS.ffffff``,
date-times with an optional ``&ZZXX`` UTC offset, integer (IS) and decimal (DS) strings,
multiple values joined by a backslash, and person names ``Family^Given^Middle^Prefix^Suffix``
with optional ``=``-separated ideographic and phonetic groups.

Every ``parse_*`` function here accepts ``None`` or a string and returns a Python value or
``None``.  Empty or blank input gives ``None``, and so does malformed input: these parsers
never raise, because one odd value must not stop a resource from loading.  They run once per
tag for tens of thousands of resources, so they are written with slicing and digit checks
rather than regular expressions.

The module also knows Orthanc's default main DICOM tags per level (:data:`MAIN_DICOM_TAGS`),
their value representations (:data:`VR_OF`), converts between DICOM keywords and snake_case
names, and formats Python dates and times back into DICOM strings. It holds the one rule by
which a tag name becomes the keyword the server takes (:func:`tag_keyword`) and the one
conversion of Python values into DICOM query and modification text (:func:`to_dicom`), which
queries, C-FIND and modifications share.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .errors import InvalidRequest

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

__all__ = [
    "MAIN_DICOM_TAGS",
    "MULTI_VALUED",
    "RANGE_VRS",
    "TAG_NUMBERS",
    "VR_OF",
    "PersonName",
    "date_to_dicom",
    "datetime_to_dicom",
    "keyword_to_snake",
    "parse_da",
    "parse_ds",
    "parse_dt",
    "parse_is",
    "parse_multi",
    "parse_orthanc_datetime",
    "parse_pn",
    "parse_str",
    "parse_tm",
    "snake_to_keyword",
    "suggest_keywords",
    "tag_keyword",
    "time_to_dicom",
    "to_dicom",
    "value_to_dicom",
    "vr_of",
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


_ONE_MINUTE = datetime.timedelta(minutes=1)


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
# Numbers and strings
# ---------------------------------------------------------------------------



def value_to_dicom(value: object) -> str | None:
    """A string, number, date, time or datetime as DICOM text; ``None`` for anything else.

    Booleans are not DICOM values and give ``None`` too. This is :func:`to_dicom`'s rule for
    one value of a tag whose value representation is not known, without the error.
    """
    try:
        return _scalar_text(value, "value", None, "write", "", InvalidRequest)
    except InvalidRequest:
        return None


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


# ---------------------------------------------------------------------------
# Keywords
# ---------------------------------------------------------------------------

MAIN_DICOM_TAGS: dict[str, tuple[str, ...]] = {
    "Patient": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
    ),
    "Study": (
        "StudyDate",
        "StudyTime",
        "StudyID",
        "StudyDescription",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureDescription",
        "InstitutionName",
        "RequestingPhysician",
        "ReferringPhysicianName",
    ),
    "Series": (
        "SeriesDate",
        "SeriesTime",
        "Modality",
        "Manufacturer",
        "StationName",
        "SeriesDescription",
        "BodyPartExamined",
        "SequenceName",
        "ProtocolName",
        "SeriesNumber",
        "CardiacNumberOfImages",
        "ImagesInAcquisition",
        "NumberOfTemporalPositions",
        "NumberOfSlices",
        "NumberOfTimeSlices",
        "SeriesInstanceUID",
        "ImageOrientationPatient",
        "SeriesType",
        "OperatorsName",
        "PerformedProcedureStepDescription",
        "AcquisitionDeviceProcessingDescription",
        "ContrastBolusAgent",
    ),
    "Instance": (
        "InstanceCreationDate",
        "InstanceCreationTime",
        "AcquisitionNumber",
        "ImageIndex",
        "InstanceNumber",
        "NumberOfFrames",
        "TemporalPositionIdentifier",
        "SOPInstanceUID",
        "ImagePositionPatient",
        "ImageComments",
        "ImageOrientationPatient",
    ),
}
"""Orthanc's default main DICOM tags (as of 1.10) per resource level, by keyword."""

VR_OF: dict[str, str] = {
    # Patient
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "OtherPatientIDs": "LO",
    # Study
    "StudyDate": "DA",
    "StudyTime": "TM",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "AccessionNumber": "SH",
    "StudyInstanceUID": "UI",
    "RequestedProcedureDescription": "LO",
    "InstitutionName": "LO",
    "RequestingPhysician": "PN",
    "ReferringPhysicianName": "PN",
    # Series
    "SeriesDate": "DA",
    "SeriesTime": "TM",
    "Modality": "CS",
    "Manufacturer": "LO",
    "StationName": "SH",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "SequenceName": "SH",
    "ProtocolName": "LO",
    "SeriesNumber": "IS",
    "CardiacNumberOfImages": "IS",
    "ImagesInAcquisition": "IS",
    "NumberOfTemporalPositions": "IS",
    "NumberOfSlices": "US",
    "NumberOfTimeSlices": "US",
    "SeriesInstanceUID": "UI",
    "ImageOrientationPatient": "DS",
    "SeriesType": "CS",
    "OperatorsName": "PN",
    "PerformedProcedureStepDescription": "LO",
    "AcquisitionDeviceProcessingDescription": "LO",
    "ContrastBolusAgent": "LO",
    # Instance
    "InstanceCreationDate": "DA",
    "InstanceCreationTime": "TM",
    "AcquisitionNumber": "IS",
    "ImageIndex": "US",
    "InstanceNumber": "IS",
    "NumberOfFrames": "IS",
    "TemporalPositionIdentifier": "IS",
    "SOPInstanceUID": "UI",
    "ImagePositionPatient": "DS",
    "ImageComments": "LT",
}
"""Value representation of every keyword in :data:`MAIN_DICOM_TAGS`."""

MULTI_VALUED: frozenset[str] = frozenset(
    {
        "OtherPatientIDs",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SeriesType",
        "OperatorsName",
    }
)
"""Keywords of :data:`MAIN_DICOM_TAGS` whose value multiplicity allows several values."""

_SPECIAL_WORDS: dict[str, str] = {
    "id": "ID",
    "ids": "IDs",
    "uid": "UID",
    "uids": "UIDs",
    "sop": "SOP",
}

# A keyword splits into acronyms from the table (when followed by a word boundary),
# runs of capitals before a capitalised word, capitalised or lower-case words, digit runs.
_WORD_RE = re.compile(
    r"(?:UIDs|UID|IDs|ID|SOP)(?=[A-Z0-9_]|$)"
    r"|[A-Z]+(?=[A-Z][a-z]|[0-9_]|$)"
    r"|[A-Z]?[a-z]+"
    r"|[0-9]+"
)


@functools.lru_cache(maxsize=1024)
def snake_to_keyword(name: str) -> str:
    """Convert a snake_case name to a DICOM keyword: ``study_instance_uid`` -> ``StudyInstanceUID``.

    ``id``, ``ids``, ``uid``, ``uids`` and ``sop`` become acronyms; other words get their first
    letter capitalised.  A name that is already a keyword comes back unchanged.
    """
    words = []
    for word in name.split("_"):
        if not word:
            continue
        special = _SPECIAL_WORDS.get(word.lower())
        words.append(special if special is not None else word[0].upper() + word[1:])
    return "".join(words)


@functools.lru_cache(maxsize=1024)
def keyword_to_snake(keyword: str) -> str:
    """Convert a DICOM keyword to snake_case: ``SOPInstanceUID`` -> ``sop_instance_uid``.

    The inverse of :func:`snake_to_keyword` for every keyword in :data:`MAIN_DICOM_TAGS`.
    A name that is already snake_case comes back unchanged.
    """
    return "_".join(m.lower() for m in _WORD_RE.findall(keyword))


def _suggestion_candidates() -> dict[str, str]:
    """Map lower-cased keyword and snake_case spellings to their keyword."""
    out: dict[str, str] = {}
    for keyword in VR_OF:
        out[keyword.lower()] = keyword
        out[keyword_to_snake(keyword)] = keyword
    return out


_CANDIDATES = _suggestion_candidates()


def suggest_keywords(name: str, n: int = 3) -> list[str]:
    """Known keywords closest to *name*, for "unknown keyword, did you mean ..." messages.

    Matching is case-insensitive over both DICOM keywords and their snake_case forms.
    Suggestions are spelled like *name*: snake_case when *name* is all lower case,
    DICOM keywords otherwise.  Each tag appears at most once, best match first.
    """
    if n <= 0 or not name:
        return []
    matches = difflib.get_close_matches(name.lower(), list(_CANDIDATES), n=3 * n, cutoff=0.6)
    snake = name == name.lower()
    out: list[str] = []
    for match in matches:
        keyword = _CANDIDATES[match]
        shown = keyword_to_snake(keyword) if snake else keyword
        if shown not in out:
            out.append(shown)
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------------------
# Tag names and numbers
# ---------------------------------------------------------------------------

#: Group and element of every main DICOM tag, as Orthanc writes them (``gggg,eeee``).
#: Queries are sent with these rather than keywords: the DICOM dictionary of 1.10.1 no longer
#: knows the retired keyword ``OtherPatientIDs`` and answers 500 for it.
TAG_NUMBERS: dict[str, str] = {
    "PatientName": "0010,0010",
    "PatientID": "0010,0020",
    "PatientBirthDate": "0010,0030",
    "PatientSex": "0010,0040",
    "OtherPatientIDs": "0010,1000",
    "StudyDate": "0008,0020",
    "StudyTime": "0008,0030",
    "StudyID": "0020,0010",
    "StudyDescription": "0008,1030",
    "AccessionNumber": "0008,0050",
    "StudyInstanceUID": "0020,000d",
    "RequestedProcedureDescription": "0032,1060",
    "InstitutionName": "0008,0080",
    "RequestingPhysician": "0032,1032",
    "ReferringPhysicianName": "0008,0090",
    "SeriesDate": "0008,0021",
    "SeriesTime": "0008,0031",
    "Modality": "0008,0060",
    "Manufacturer": "0008,0070",
    "StationName": "0008,1010",
    "SeriesDescription": "0008,103e",
    "BodyPartExamined": "0018,0015",
    "SequenceName": "0018,0024",
    "ProtocolName": "0018,1030",
    "SeriesNumber": "0020,0011",
    "CardiacNumberOfImages": "0018,1090",
    "ImagesInAcquisition": "0020,1002",
    "NumberOfTemporalPositions": "0020,0105",
    "NumberOfSlices": "0054,0081",
    "NumberOfTimeSlices": "0054,0101",
    "SeriesInstanceUID": "0020,000e",
    "ImageOrientationPatient": "0020,0037",
    "SeriesType": "0054,1000",
    "OperatorsName": "0008,1070",
    "PerformedProcedureStepDescription": "0040,0254",
    "AcquisitionDeviceProcessingDescription": "0018,1400",
    "ContrastBolusAgent": "0018,0010",
    "InstanceCreationDate": "0008,0012",
    "InstanceCreationTime": "0008,0013",
    "AcquisitionNumber": "0020,0012",
    "ImageIndex": "0054,1330",
    "InstanceNumber": "0020,0013",
    "NumberOfFrames": "0028,0008",
    "TemporalPositionIdentifier": "0020,0100",
    "SOPInstanceUID": "0008,0018",
    "ImagePositionPatient": "0020,0032",
    "ImageComments": "0020,4000",
}


_KEYWORD_OF_NUMBER = {number: keyword for keyword, number in TAG_NUMBERS.items()}

#: Value representations of the keywords kkorthanc sends besides the main DICOM tags (the
#: keys a C-FIND asks back).
_OTHER_VRS: dict[str, str] = {
    "SpecificCharacterSet": "CS",
    "ModalitiesInStudy": "CS",
    "SOPClassUID": "UI",
    "SOPClassesInStudy": "UI",
    "NumberOfPatientRelatedStudies": "IS",
    "NumberOfPatientRelatedSeries": "IS",
    "NumberOfPatientRelatedInstances": "IS",
    "NumberOfStudyRelatedSeries": "IS",
    "NumberOfStudyRelatedInstances": "IS",
    "NumberOfSeriesRelatedInstances": "IS",
}

_TAG_NUMBER_RE = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PATH_STEP_RE = re.compile(r"([^\[\]]+)(\[(?:[0-9]+|\*)\])?")


def vr_of(keyword: str) -> str | None:
    """The value representation of ``keyword`` when kkorthanc knows it, else ``None``.

    Known are the main DICOM tags (:data:`VR_OF`) and the keys a C-FIND asks back.
    """
    return VR_OF.get(keyword) or _OTHER_VRS.get(keyword)


def _one_name(text: str) -> str | None:
    number = _TAG_NUMBER_RE.fullmatch(text)
    if number is not None:
        group, element = number.groups()
        return _KEYWORD_OF_NUMBER.get(f"{group},{element}".lower(), f"{group},{element}")
    if _NAME_RE.fullmatch(text):
        return snake_to_keyword(text)
    return None


def _path_step(step: str) -> str | None:
    match = _PATH_STEP_RE.fullmatch(step)
    if match is None:
        return None
    name = _one_name(match[1])
    return None if name is None else name + (match[2] or "")


def tag_keyword(
    name: object,
    *,
    where: str = "",
    paths: bool = False,
    error: type[InvalidRequest] = InvalidRequest,
) -> str:
    """The spelling of a tag name that the server takes: the one keyword rule of kkorthanc.

    A DICOM keyword comes back as it is (``PatientName``), a snake_case name as its keyword
    (``study_instance_uid`` gives ``StudyInstanceUID``, see :func:`snake_to_keyword`), and a
    tag number (``gggg,eeee`` or ``ggggeeee``, in parentheses or not) as the keyword of a
    main DICOM tag (``0010,0010`` gives ``PatientName``) or, for any other tag, as
    ``gggg,eeee``. Spaces around the name are ignored. With ``paths``, a path into sequences
    is taken too, each step resolved the same way
    (``referenced_image_sequence[0].referenced_sop_instance_uid``).

    Whether the tag exists is left to the caller: a query takes main DICOM tags only, the
    server looks other keywords up in its own dictionary.

    Raises:
        InvalidRequest: (or ``error``) ``name`` is not a string of that form; the message
            starts with ``where``, which names the argument.
    """
    if isinstance(name, str):
        text = name.strip()
        if paths and ("." in text or "[" in text):
            steps = [_path_step(step) for step in text.split(".")]
            if all(step is not None for step in steps):
                return ".".join(step for step in steps if step is not None)
        else:
            found = _one_name(text)
            if found is not None:
                return found
    raise error(
        f"{where}{name!r} is not a tag name: give a DICOM keyword (PatientName), a snake_case "
        "name (patient_name) or a tag number (0010,0010)"
    )


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
    ``C*\\C*``, so that it stays a list); an empty list is refused.

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
