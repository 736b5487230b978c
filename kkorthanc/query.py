"""DICOM matching: one query engine, sent to the server or applied to a forest.

A query is compiled once (:func:`compile_query`) into :class:`Constraint` objects. The same
compiled query becomes the body of ``POST /tools/find`` (:func:`server_find`) or filters the
resources of a patient forest in memory (:func:`local_find`); both give the same resources.

Orthanc 1.10 answers ``/tools/find`` in two stages, and a resource must pass both:

1. an SQL filter on its index. Nine *identifier* tags (:data:`IDENTIFIER_TAGS`) are compared
   in a normalized form: characters outside printable ASCII dropped, ``_`` and ``%`` turned into
   spaces, upper-cased, stripped (:func:`normalize_identifier`). Other main tags are compared as
   stored, with SQLite's ``lower()``, which folds ASCII letters only, when matching is
   case-insensitive; ``*`` and ``?`` become SQL ``LIKE`` wildcards (``?`` is one character).
2. an exact check of the main tags of one instance of the resource: values are compared as
   stored, or both upper-cased with accents kept (``ü`` -> ``Ü``) when matching is
   case-insensitive; ``*`` and ``?`` become a regular expression over UTF-8 bytes, so ``?``
   stands for one byte and never matches a non-ASCII character.

This module reproduces both stages, so that its answers agree with the server's, including
the surprising ones (``KLINIKUM SÜD`` does not find ``Klinikum Süd``, ``MÜLLER^JÜRGEN`` does
find ``Müller^Jürgen``). ``docs/matching.md`` has the rules with an example each.

Queries are limited to the main DICOM tags of the queried level and its parents: Orthanc reads
every candidate's file from disk for other tags, and answers queries on tags of lower levels
inconsistently, so both are refused before anything is sent.
"""

from __future__ import annotations

import datetime
import itertools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from .errors import QueryError, UnknownKeyword
from .models import Instance, Level, Patient, Resource, Series, Study, level_class
from .tags import (
    MAIN_DICOM_TAGS,
    VR_OF,
    date_to_dicom,
    datetime_to_dicom,
    snake_to_keyword,
    suggest_keywords,
    time_to_dicom,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "IDENTIFIER_TAGS",
    "LEVELS",
    "TAG_NUMBERS",
    "CompiledQuery",
    "Constraint",
    "QueryError",
    "UnknownKeyword",
    "compile_query",
    "local_find",
    "normalize_identifier",
    "queryable_tags",
    "server_find",
    "upper_with_accents",
]

R = TypeVar("R", bound=Resource)

#: Levels from the top of the hierarchy down.
LEVELS: tuple[Level, ...] = ("Patient", "Study", "Series", "Instance")

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

#: Value representations on which ``*`` and ``?`` are wildcards; on others they are refused.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: Value representations on which ``A-B`` is a range.
RANGE_VRS = frozenset({"DA", "DT", "TM"})

LabelsConstraint = Literal["All", "Any", "None"]
_LABELS_CONSTRAINTS: dict[str, LabelsConstraint] = {"all": "All", "any": "Any", "none": "None"}


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


def _build_matcher(
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


# ---------------------------------------------------------------------------------------------
# Compilation: names and Python values to constraints
# ---------------------------------------------------------------------------------------------


def queryable_tags(level: str) -> dict[str, Level]:
    """Keywords a query at ``level`` may use, each with the level that holds it.

    These are the main DICOM tags of the level and of its parents (a study query may filter on
    ``PatientName``).
    """
    cls = level_class(level)
    out: dict[str, Level] = {}
    for lvl in LEVELS[: LEVELS.index(cls.level) + 1]:
        for keyword in MAIN_DICOM_TAGS[lvl]:
            out[keyword] = lvl  # the lowest level wins: its own copy of a shared tag
    return out


def _resolve_keyword(name: str) -> str:
    text = name.strip()
    number = text.lower().replace("(", "").replace(")", "")
    if number in _KEYWORD_OF_NUMBER:
        return _KEYWORD_OF_NUMBER[number]
    keyword = snake_to_keyword(text)
    if keyword in VR_OF:
        return keyword
    raise UnknownKeyword(name, suggest_keywords(text))


def _level_of_tag(keyword: str) -> Level:
    for lvl in LEVELS:
        if keyword in MAIN_DICOM_TAGS[lvl]:
            return lvl
    raise UnknownKeyword(keyword, suggest_keywords(keyword))  # pragma: no cover - VR_OF in sync


def _scalar_text(keyword: str, vr: str, value: Any) -> str:
    """One Python value as DICOM query text for a tag of value representation ``vr``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise QueryError(f"{keyword}: a bool is not a DICOM value")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.datetime):
        if vr == "DT":
            return datetime_to_dicom(value)
        raise QueryError(
            f"{keyword} has value representation {vr}: pass a datetime.date or a string, "
            "not a datetime"
        )
    if isinstance(value, datetime.date):
        if vr in ("DA", "DT"):
            return date_to_dicom(value)
        raise QueryError(f"{keyword} has value representation {vr}, not a date")
    if isinstance(value, datetime.time):
        if vr == "TM":
            return time_to_dicom(value)
        raise QueryError(f"{keyword} has value representation {vr}, not a time")
    raise QueryError(
        f"{keyword}: cannot query with a {type(value).__name__}; use a string in DICOM syntax, "
        "a date, a time, a (start, end) pair or a list of alternatives"
    )


def _value_text(keyword: str, vr: str, value: Any) -> str:
    """A query value (string, Python value, range pair or list) as one DICOM query string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise QueryError(
                f"{keyword}: a tuple is a (start, end) range and needs two items, "
                f"not {len(value)}; use a list for alternatives"
            )
        if vr not in RANGE_VRS:
            raise QueryError(
                f"{keyword} has value representation {vr}: ranges exist only for dates and "
                "times (DA, TM, DT)"
            )
        start, end = (
            "" if bound is None else _scalar_text(keyword, vr, bound) for bound in value
        )
        for bound in (start, end):
            if "-" in bound or "\\" in bound:
                raise QueryError(f"{keyword}: range bound {bound!r} contains '-' or '\\'")
        return f"{start}-{end}"
    if isinstance(value, (list, set, frozenset)):
        items = [_scalar_text(keyword, vr, item) for item in value]
        if isinstance(value, (set, frozenset)):
            items.sort()
        if not items:
            raise QueryError(f"{keyword}: an empty list of alternatives matches nothing")
        for item in items:
            if "\\" in item:
                raise QueryError(f"{keyword}: list item {item!r} contains a backslash")
            if vr in RANGE_VRS and "-" in item:
                # the server would read the whole list as a range
                raise QueryError(f"{keyword}: list item {item!r} contains '-'")
        if len(items) == 1:
            (item,) = items
            if "*" in item or "?" in item:
                # list items are literal; repeating the item keeps the list semantics
                return f"{item}\\{item}"
            return item
        return "\\".join(items)
    return _scalar_text(keyword, vr, value)


def _parse_text(keyword: str, vr: str, text: str) -> tuple[Kind, tuple[str, ...]] | None:
    """Classify a DICOM query string like Orthanc does; ``None`` when it matches anything."""
    if text == "":
        return None
    if vr in RANGE_VRS and "-" in text:
        lower, _, upper = text.partition("-")
        for bound in (lower, upper):
            if "*" in bound or "?" in bound:
                raise QueryError(
                    f"{keyword}: wildcards are not allowed in a range ({text!r}); "
                    "the server refuses them too"
                )
        if not lower and not upper:
            return None
        return "range", (lower, upper)
    if "\\" in text:
        return "list", tuple(text.split("\\"))
    if "*" in text or "?" in text:
        if vr not in WILDCARD_VRS:
            raise QueryError(
                f"{keyword}: wildcards are not allowed on value representation {vr} "
                f"({text!r}); the server refuses them too. Use a range for dates and times."
            )
        return "wildcard", (text,)
    return "equal", (text,)


@dataclass(frozen=True)
class CompiledQuery:
    """A validated query: the level, its constraints and the matching mode."""

    level: Level
    """The level of the resources returned."""
    constraints: tuple[Constraint, ...]
    """The conditions, all of which must hold (universal ones are dropped)."""
    case_sensitive: bool
    """Whether letter case matters."""

    @property
    def is_universal(self) -> bool:
        """True when nothing is filtered: every resource of the level matches."""
        return not self.constraints

    def request_query(self) -> dict[str, str]:
        """The ``Query`` object of ``/tools/find``: tag number -> DICOM string, in tag order."""
        pairs = sorted((TAG_NUMBERS[c.keyword], c.text) for c in self.constraints)
        return dict(pairs)


def compile_query(
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    case_sensitive: bool = False,
    **tags: Any,
) -> CompiledQuery:
    """Validate and compile a query; the single source of truth for both engines.

    Args:
        level: ``patient``, ``study``, ``series`` or ``instance``, in any case.
        query: tag name -> value. Names are DICOM keywords (``PatientName``), snake_case names
            (``patient_name``) or numbers (``0010,0010``) of main DICOM tags of the level or
            its parents. Values are DICOM query strings, or Python values: a ``date``/``time``,
            a ``(start, end)`` tuple for a range (``None`` for an open end), a list or set for
            "any of", an ``int``; ``None`` and ``""`` match anything.
        case_sensitive: whether letter case matters (Orthanc's ``CaseSensitive``).
        **tags: more tag names and values, merged with ``query``.

    Raises:
        UnknownKeyword: a name is not a main DICOM tag (close matches are suggested).
        QueryError: a tag of a lower level, a name given twice, wildcards where the server
            refuses them, a range on a tag that is not a date or time, a value of a wrong type.
    """
    cls = level_class(level)
    allowed = queryable_tags(cls.level)
    seen: dict[str, str] = {}
    constraints: list[Constraint] = []
    for name, value in itertools.chain((query or {}).items(), tags.items()):
        if not isinstance(name, str):
            raise QueryError(f"tag names must be strings, not {name!r}")
        keyword = _resolve_keyword(name)
        if keyword in seen:
            raise QueryError(f"{keyword} is given twice (as {seen[keyword]!r} and {name!r})")
        seen[keyword] = name
        if keyword not in allowed:
            owner = _level_of_tag(keyword)
            uppers = " and ".join(LEVELS[: LEVELS.index(cls.level) + 1][::-1])
            raise QueryError(
                f"{keyword} is a {owner} tag: a {cls.level} query filters on {uppers} tags "
                f"only; find the {owner} resources instead and go up to their {cls.level}"
            )
        vr = VR_OF[keyword]
        text = _value_text(keyword, vr, value)
        parsed = _parse_text(keyword, vr, text)
        if parsed is None:
            continue
        kind, values = parsed
        constraints.append(
            Constraint(
                keyword=keyword,
                level=allowed[keyword],
                kind=kind,
                text=text,
                values=values,
                case_sensitive=case_sensitive,
                matches=_build_matcher(keyword, kind, values, case_sensitive),
            )
        )
    constraints.sort(key=lambda c: (LEVELS.index(c.level), TAG_NUMBERS[c.keyword]))
    return CompiledQuery(cls.level, tuple(constraints), case_sensitive)


def _labels_filter(
    labels: Iterable[str] | None, labels_constraint: str | None
) -> tuple[list[str], LabelsConstraint | None]:
    if isinstance(labels, str):
        raise QueryError("labels must be a list of strings, not one string")
    names = sorted(set(labels or ()))
    for name in names:
        if not isinstance(name, str) or not name:
            raise QueryError(f"labels must be non-empty strings, not {name!r}")
    if labels_constraint is None:
        return names, None
    canonical = _LABELS_CONSTRAINTS.get(str(labels_constraint).lower())
    if canonical is None:
        raise QueryError(
            f"labels_constraint must be 'All', 'Any' or 'None', not {labels_constraint!r}"
        )
    return names, canonical


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


def server_find(
    client: Server,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    limit: int | None = None,
    case_sensitive: bool = False,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    requested_tags: Iterable[str] | None = None,
    page_size: int = 1000,
    **tags: Any,
) -> list[Any]:
    """Resources of ``level`` that match, from the server, as typed models sorted by Orthanc ID.

    ``POST /tools/find`` with ``Expand``, in pages of ``page_size`` (``Since``/``Limit``): one
    request per page. A query that filters nothing goes through the paged level listing
    instead (``GET /{level}?expand``): a server configured with ``LimitFindResults`` silently
    truncates ``/tools/find`` answers, and paging them with ``Since`` then gives wrong pages.

    Args:
        client: the server.
        level, query, case_sensitive, **tags: as in :func:`compile_query`.
        limit: at most this many resources: the first ones in the server's order.
        labels: only resources with these labels (Orthanc 1.12.0+).
        labels_constraint: ``All`` (default on the server), ``Any`` or ``None`` of ``labels``
            (Orthanc 1.12.0+).
        requested_tags: tags to add to the server's answer (Orthanc 1.11.0+).
        page_size: resources per request.

    Raises:
        QueryError, UnknownKeyword: the query is refused before anything is sent.
        UnsupportedByServer: labels or requested tags on a server too old to honour them
            (it would silently ignore them and answer unfiltered).
    """
    compiled = compile_query(level, query, case_sensitive=case_sensitive, **tags)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise QueryError(f"limit must be a positive integer, not {limit!r}")
    if page_size < 1:
        raise QueryError(f"page_size must be a positive integer, not {page_size!r}")
    label_names, constraint = _labels_filter(labels, labels_constraint)
    extra: dict[str, Any] = {}
    if labels is not None:
        client.require("Labels")
        extra["Labels"] = label_names
    if constraint is not None:
        client.require("LabelsConstraint")
        extra["LabelsConstraint"] = constraint
    wanted: list[str] = []
    if requested_tags is not None:
        client.require("RequestedTags")
        wanted = [_resolve_requested(name) for name in requested_tags]
        extra["RequestedTags"] = wanted

    cls = level_class(compiled.level)
    if compiled.is_universal and not label_names:
        found = list(itertools.islice(_listing(client, cls, wanted, limit, page_size), limit))
    else:
        found = list(_find_pages(client, cls, compiled, extra, limit, page_size))
    found.sort(key=lambda r: r.id)
    return found


def _resolve_requested(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise QueryError(f"requested_tags must be tag names, not {name!r}")
    text = name.strip()
    if re.fullmatch(r"\(?[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)?", text):
        return text.strip("()")
    # any DICOM keyword is allowed here: the server looks it up in its own dictionary
    return snake_to_keyword(text)


def _listing(
    client: Server, cls: type[R], wanted: list[str], limit: int | None, page_size: int
) -> Iterator[R]:
    size = min(page_size, limit) if limit is not None else page_size
    params = {"requested-tags": ";".join(wanted)} if wanted else None
    for page in client.iter_pages(f"/{cls.collection}", page_size=size, params=params):
        for item in page:
            yield cls.from_orthanc(item, client)


def _find_pages(
    client: Server,
    cls: type[R],
    compiled: CompiledQuery,
    extra: dict[str, Any],
    limit: int | None,
    page_size: int,
) -> Iterator[R]:
    body: dict[str, Any] = {
        "Level": compiled.level,
        "Query": compiled.request_query(),
        "Expand": True,
        "CaseSensitive": compiled.case_sensitive,
        **extra,
    }
    for page in client.iter_find(body, page_size=page_size, limit=limit):
        for item in page:
            yield cls.from_orthanc(item, client)


# ---------------------------------------------------------------------------------------------
# A forest
# ---------------------------------------------------------------------------------------------


class ForestLike(Protocol):
    """What :func:`local_find` needs: the resources of each level, linked to their parents."""

    @property
    def patients(self) -> Sequence[Patient]: ...
    @property
    def studies(self) -> Sequence[Study]: ...
    @property
    def series(self) -> Sequence[Series]: ...
    @property
    def instances(self) -> Sequence[Instance]: ...


def _parent(resource: Resource) -> Resource:
    if isinstance(resource, Study):
        return resource.patient
    if isinstance(resource, Series):
        return resource.study
    if isinstance(resource, Instance):
        return resource.series
    raise QueryError(f"{resource.level} has no parent")  # pragma: no cover


#: The plain field holding the parent's Orthanc ID, per level: reading it costs no link.
_PARENT_ID = {
    "Study": operator.attrgetter("parent_patient_id"),
    "Series": operator.attrgetter("parent_study_id"),
    "Instance": operator.attrgetter("parent_series_id"),
}


def _level_list(forest: ForestLike, lvl: Level) -> Sequence[Resource]:
    if lvl == "Patient":
        return forest.patients
    if lvl == "Study":
        return forest.studies
    if lvl == "Series":
        return forest.series
    return forest.instances


def _check_depth(forest: ForestLike, level: Level) -> None:
    """Refuse a level that the forest does not hold (it would answer "nothing")."""
    depth = getattr(forest, "depth", None)
    if not isinstance(depth, str) or depth.title() not in LEVELS:
        return
    if LEVELS.index(depth.title()) < LEVELS.index(level):
        raise QueryError(
            f"the forest was built with depth={depth!r} and holds no {level.lower()} level: "
            f"build it with depth={level.lower()!r}, or use client.find"
        )


#: The identifier a forest indexes at each level (``forest.lookup``).
_INDEXED_TAG: dict[Level, str] = {
    "Patient": "PatientID",
    "Study": "StudyInstanceUID",
    "Series": "SeriesInstanceUID",
    "Instance": "SOPInstanceUID",
}
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")


def _indexable(value: str, case_sensitive: bool) -> bool:
    """Whether every stored value matching ``value`` is found by an exact index lookup.

    Padding would be stripped by the index and an Orthanc ID is looked up as such. Without
    case sensitivity, a value with letters also matches other spellings; a value made of
    ASCII digits and punctuation only matches itself (no other character upper-cases to one).
    """
    if not value or value != value.strip(" \t\r\n\x00") or _ORTHANC_ID.fullmatch(value):
        return False
    return case_sensitive or (value.isascii() and not any(c.isalpha() for c in value))


def _indexed_candidates(
    forest: ForestLike, lvl: Level, checks: Sequence[Constraint]
) -> list[Resource] | None:
    """The resources an index lookup finds for an equality on the level's identifier.

    They are a superset of the matches (every check still runs on them); ``None`` when the
    forest has no ``lookup`` or no check allows it.
    """
    lookup = getattr(forest, "lookup", None)
    if not callable(lookup):
        return None
    cls = level_class(lvl)
    for check in checks:
        if (
            check.keyword == _INDEXED_TAG[lvl]
            and check.kind in ("equal", "list")
            and all(_indexable(v, check.case_sensitive) for v in check.values)
        ):
            found: dict[str, Resource] = {}
            for value in check.values:
                for resource in lookup(value):
                    if type(resource) is cls:
                        found[resource.id] = resource
            return list(found.values())
    return None


def local_find(
    forest: ForestLike,
    level: str,
    query: Mapping[str, Any] | None = None,
    *,
    case_sensitive: bool = False,
    labels: Iterable[str] | None = None,
    labels_constraint: str | None = None,
    requested_tags: Iterable[str] | None = None,
    **tags: Any,
) -> list[Any]:
    """Resources of ``level`` in ``forest`` that match, sorted by Orthanc ID. No request.

    The rules are those of :func:`server_find` (same arguments, same refusals), applied to
    the main DICOM tags the forest holds; upper-level tags are read through the parent links
    (``study.patient``), which cost nothing in a forest. Labels are applied locally to the
    labels the forest's resources carry (none from servers older than 1.12).

    Raises:
        QueryError, UnknownKeyword: as :func:`compile_query`; also for ``requested_tags``,
            which only shape a server's answer.
    """
    if requested_tags is not None:
        raise QueryError(
            "requested_tags shape a server's answer; a forest holds main DICOM tags only: "
            "use client.find(..., requested_tags=...)"
        )
    compiled = compile_query(level, query, case_sensitive=case_sensitive, **tags)
    label_names, constraint = _labels_filter(labels, labels_constraint)
    _check_depth(forest, compiled.level)
    depth = LEVELS.index(compiled.level)
    by_level: dict[Level, list[Constraint]] = {}
    for c in compiled.constraints:
        by_level.setdefault(c.level, []).append(c)

    # Filter from the highest constrained level down: at each level keep the resources whose
    # parent was kept, then apply that level's constraints, one pass each (tens of thousands
    # of resources: the loops stay flat).
    top = min((LEVELS.index(lvl) for lvl in by_level), default=depth)
    passing: set[str] | None = None
    selected: list[Resource] = []
    for index in range(top, depth + 1):
        lvl = LEVELS[index]
        checks = by_level.get(lvl, [])
        items: Sequence[Resource] | None = _indexed_candidates(forest, lvl, checks)
        if items is None:
            items = _level_list(forest, lvl)
        if passing is not None:
            parent_id = _PARENT_ID[lvl]
            kept = passing
            items = [r for r in items if (parent_id(r) or _parent(r).id) in kept]
        for check in checks:
            matches, keyword = check.matches, check.keyword
            items = [r for r in items if matches(r.main_dicom_tags.get(keyword))]
        if index == depth:
            selected = list(items)
        else:
            passing = {r.id for r in items}
    if label_names:
        selected = [r for r in selected if _labels_ok(r.labels, label_names, constraint)]
    selected.sort(key=lambda r: r.id)
    return selected


def _labels_ok(have: Sequence[str], wanted: list[str], constraint: LabelsConstraint | None) -> bool:
    present = set(have)
    if constraint == "Any":
        return any(label in present for label in wanted)
    if constraint == "None":
        return not any(label in present for label in wanted)
    return all(label in present for label in wanted)
