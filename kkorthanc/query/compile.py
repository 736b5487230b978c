"""Compiling a query: tag names and Python values into :class:`Constraint` objects.

Names and values follow the package's one keyword rule and one value conversion
(:func:`kkorthanc.tags.tag_keyword`, :func:`kkorthanc.tags.to_dicom`); a query may use the
main DICOM tags of its level and of the levels above, and a study query ``ModalitiesInStudy``
too. Both engines start here.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import QueryError, UnknownKeyword
from ..models import LEVELS, level_class
from ..tags import (
    MAIN_DICOM_TAGS,
    RANGE_VRS,
    TAG_NUMBERS,
    VR_OF,
    suggest_keywords,
    tag_keyword,
    time_match_bounds,
    to_dicom,
)
from .engine import Constraint, Dialect, IndexSql, Kind, build_matcher, build_stages

if TYPE_CHECKING:
    from ..models import Level

__all__ = [
    "COMPUTED_TAGS",
    "TAG_NUMBERS",
    "WILDCARD_VRS",
    "CompiledQuery",
    "LabelsConstraint",
    "compile_query",
    "labels_filter",
    "queryable_tags",
    "resolve_keyword",
]

#: Value representations on which ``*`` and ``?`` are wildcards; on others they are refused.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})

#: Tags that Orthanc computes from the children instead of storing them: keyword -> (the only
#: level that may query it, its tag number, the child tag it is computed from).
COMPUTED_TAGS: dict[str, tuple[Level, str, str]] = {
    "ModalitiesInStudy": ("Study", "0008,0061", "Modality"),
}
_COMPUTED_NUMBERS = {number: keyword for keyword, (_, number, _) in COMPUTED_TAGS.items()}

LabelsConstraint = Literal["All", "Any", "None"]
_LABELS_CONSTRAINTS: dict[str, LabelsConstraint] = {"all": "All", "any": "Any", "none": "None"}
#: Depth of each level name (1 for patients), for sorting constraints top down.
_DEPTH: dict[str, int] = {cls.level: cls.depth for cls in LEVELS}

#: The forms a date or time query value may take: pattern, noun, DICOM form, Python type.
_FORMS: dict[str, tuple[re.Pattern[str], str, str, str]] = {
    "DA": (re.compile(r"[0-9]{8}"), "date", "YYYYMMDD", "datetime.date"),
    "TM": (
        re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?"),
        "time",
        "HHMMSS (or HH, HHMM, HHMMSS.FFFFFF)",
        "datetime.time",
    ),
}


def _tag_number(keyword: str) -> str:
    computed = COMPUTED_TAGS.get(keyword)
    return computed[1] if computed is not None else TAG_NUMBERS[keyword]


def queryable_tags(level: str) -> dict[str, Level]:
    """Keywords a query at ``level`` may use, each with the level that holds it.

    These are the main DICOM tags of the level and of its parents (a study query may filter on
    ``PatientName``), and the tags Orthanc computes for the level (``ModalitiesInStudy``).
    """
    cls = level_class(level)
    out: dict[str, Level] = {}
    for upper in LEVELS[: cls.depth]:
        for keyword in MAIN_DICOM_TAGS[upper.level]:
            out[keyword] = upper.level  # the lowest level wins: its own copy of a shared tag
    for keyword, (owner, _, _) in COMPUTED_TAGS.items():
        if owner == cls.level:
            out[keyword] = owner
    return out


def resolve_keyword(name: object) -> str:
    """The keyword of a main DICOM tag named by keyword, snake_case name or tag number.

    Raises:
        QueryError: ``name`` is not a string.
        UnknownKeyword: it names no main DICOM tag (close matches are suggested).
    """
    if not isinstance(name, str):
        raise QueryError(f"tag names must be strings, not {name!r}")
    try:
        keyword: str | None = tag_keyword(name, error=QueryError)
    except QueryError:
        keyword = None
    if keyword is not None:
        keyword = _COMPUTED_NUMBERS.get(keyword.lower(), keyword)
        if keyword in VR_OF or keyword in COMPUTED_TAGS:
            return keyword
    raise UnknownKeyword(name, suggest_keywords(name.strip()))


def _level_of_tag(keyword: str) -> Level:
    computed = COMPUTED_TAGS.get(keyword)
    if computed is not None:
        return computed[0]
    for cls in LEVELS:
        if keyword in MAIN_DICOM_TAGS[cls.level]:
            return cls.level
    raise UnknownKeyword(keyword, suggest_keywords(keyword))  # pragma: no cover - VR_OF in sync


def _vr(keyword: str) -> str:
    computed = COMPUTED_TAGS.get(keyword)
    return VR_OF[computed[2]] if computed is not None else VR_OF[keyword]


def _times_as_ranges(keyword: str, vr: str, value: Any) -> Any:
    """A ``time`` on a TM tag as the range of the instant it names (a bound: its end of it).

    Orthanc compares TM values as text: ``141645`` would miss a stored ``141645.000000``.
    """
    if vr != "TM":
        return value
    if isinstance(value, datetime.time):
        low, high = time_match_bounds(value)
        return f"{low}-{high}"
    if isinstance(value, tuple) and len(value) == 2:
        return tuple(
            time_match_bounds(bound)[side] if isinstance(bound, datetime.time) else bound
            for side, bound in enumerate(value)
        )
    if isinstance(value, (list, set, frozenset)) and any(
        isinstance(item, datetime.time) for item in value
    ):
        raise QueryError(
            f"{keyword}: a list of times would match their text only (a stored "
            "141645.000000 is not 141645); query one time, or a (start, end) range"
        )
    return value


def _check_form(keyword: str, vr: str, text: str, kind: Kind, values: tuple[str, ...]) -> None:
    """Refuse a date or time that the server would compare as text and never find."""
    form = _FORMS.get(vr)
    if form is None:
        return
    pattern, noun, written, python = form
    bad = [v for v in values if v and not pattern.fullmatch(v)]
    if bad:
        raise QueryError(
            f"{keyword}: {text!r} is not a DICOM {noun}, list of them or range of them "
            f"({bad[0]!r} is not of the form {written}); give {written}, a {python}, a "
            f"range START-END (either end may be left out) or a (start, end) tuple"
        )


def _parse_text(keyword: str, vr: str, text: str) -> tuple[Kind, tuple[str, ...]] | None:
    """Classify a DICOM query string like Orthanc does; ``None`` when it matches anything."""
    if text == "":
        return None
    parsed: tuple[Kind, tuple[str, ...]]
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
        parsed = "range", (lower, upper)
    elif "\\" in text:
        parsed = "list", tuple(text.split("\\"))
    elif "*" in text or "?" in text:
        if vr not in WILDCARD_VRS:
            raise QueryError(
                f"{keyword}: wildcards are not allowed on value representation {vr} "
                f"({text!r}); the server refuses them too. Use a range for dates and times."
            )
        parsed = "wildcard", (text,)
    else:
        parsed = "equal", (text,)
    _check_form(keyword, vr, text, *parsed)
    return parsed


def _check_computed(keyword: str, kind: Kind, values: tuple[str, ...], text: str) -> None:
    """What ``ModalitiesInStudy`` takes: modalities, or a list of them."""
    if kind == "wildcard":
        raise QueryError(
            f"{keyword}: no wildcards ({text!r}); Orthanc 1.10 matches them on the series, "
            "1.11 and later read every study's files instead: give modalities (CT, or a "
            "list such as ['CT', 'MR'])"
        )
    if "" in values:
        raise QueryError(
            f"{keyword}: an empty item in {text!r} would match studies without modalities "
            "on some servers only; give modalities (CT, or a list such as ['CT', 'MR'])"
        )


def _constraint(
    keyword: str,
    level: Level,
    kind: Kind,
    text: str,
    values: tuple[str, ...],
    case_sensitive: bool,
    index_sql: IndexSql,
) -> Constraint:
    # a computed tag matches like the child tag it is computed from
    matched = COMPUTED_TAGS[keyword][2] if keyword in COMPUTED_TAGS else keyword
    index_stage, exact_stage = build_stages(matched, kind, values, case_sensitive, index_sql)
    return Constraint(
        keyword=keyword,
        level=level,
        kind=kind,
        text=text,
        values=values,
        case_sensitive=case_sensitive,
        matches=build_matcher(matched, kind, values, case_sensitive, index_sql),
        index_stage=index_stage,
        exact_stage=exact_stage,
        index_sql=index_sql,
    )


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

    @property
    def depends_on_index(self) -> bool:
        """Whether the answer may differ between SQLite and PostgreSQL indexes (non-ASCII
        text compared without case on a tag that is not an identifier)."""
        return any(c.depends_on_index for c in self.constraints)

    @property
    def computed(self) -> tuple[Constraint, ...]:
        """The constraints on tags Orthanc computes from the children (``ModalitiesInStudy``)."""
        return tuple(c for c in self.constraints if c.keyword in COMPUTED_TAGS)

    def for_dialect(self, dialect: Dialect) -> CompiledQuery:
        """The same query, its matchers following the index of ``dialect``."""
        constraints = tuple(
            c
            if c.index_sql == dialect.index_sql
            else _constraint(
                c.keyword, c.level, c.kind, c.text, c.values, c.case_sensitive, dialect.index_sql
            )
            for c in self.constraints
        )
        return dataclasses.replace(self, constraints=constraints)

    def request_query(self) -> dict[str, str]:
        """The ``Query`` object of ``/tools/find``: tag number -> DICOM string, in tag order."""
        pairs = sorted((_tag_number(c.keyword), c.text) for c in self.constraints)
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
            its parents, or ``ModalitiesInStudy`` on a study query. Values are DICOM query
            strings, or Python values: a ``date``/``time``, a ``(start, end)`` tuple for a
            range (``None`` for an open end), a list or set for "any of", an ``int``; ``""``
            matches anything. Names and values follow :func:`~kkorthanc.tags.tag_keyword` and
            :func:`~kkorthanc.tags.to_dicom` (``purpose="match"``), as in every query
            kkorthanc sends.
        case_sensitive: whether letter case matters (Orthanc's ``CaseSensitive``).
        **tags: more tag names and values, merged with ``query``.

    Raises:
        UnknownKeyword: a name is not a main DICOM tag (close matches are suggested).
        QueryError: a tag of a lower level, a name given twice, ``None`` as a value,
            wildcards where the server refuses them, a date or time that is not of the DICOM
            form, a range on a tag that is not a date or time, a value of a wrong type.
    """
    cls = level_class(level)
    allowed = queryable_tags(cls.level)
    seen: dict[str, str] = {}
    constraints: list[Constraint] = []
    for name, value in itertools.chain((query or {}).items(), tags.items()):
        keyword = resolve_keyword(name)
        if keyword in seen:
            raise QueryError(f"{keyword} is given twice (as {seen[keyword]!r} and {name!r})")
        seen[keyword] = name
        if keyword not in allowed:
            owner = _level_of_tag(keyword)
            if keyword in COMPUTED_TAGS:
                raise QueryError(
                    f"{keyword} is computed for {owner.lower()} queries only; a "
                    f"{cls.level.lower()} query filters on the main tags of its level and "
                    f"above (on a series: Modality)"
                )
            uppers = " and ".join(upper.level for upper in LEVELS[cls.depth - 1 :: -1])
            raise QueryError(
                f"{keyword} is a {owner} tag: a {cls.level} query filters on {uppers} tags "
                f"only; find the {owner} resources instead and go up to their {cls.level}"
            )
        if value is None:
            raise QueryError(
                f"{keyword}=None would match every resource, which is seldom meant (a variable "
                "left unset?); leave the tag out, or give '' to match anything explicitly"
            )
        vr = _vr(keyword)
        value = _times_as_ranges(keyword, vr, value)
        text = to_dicom(keyword, value, purpose="match", error=QueryError)
        parsed = _parse_text(keyword, vr, text)
        if parsed is None:
            continue
        kind, values = parsed
        if keyword in COMPUTED_TAGS:
            _check_computed(keyword, kind, values, text)
        constraints.append(
            _constraint(keyword, allowed[keyword], kind, text, values, case_sensitive, "sqlite")
        )
    constraints.sort(key=lambda c: (_DEPTH[c.level], _tag_number(c.keyword)))
    return CompiledQuery(cls.level, tuple(constraints), case_sensitive)


def labels_filter(
    labels: Iterable[str] | None, labels_constraint: str | None
) -> tuple[list[str], LabelsConstraint | None]:
    """The sorted label names and the canonical ``LabelsConstraint`` of a query."""
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
