"""Compiling a query: tag names and Python values into :class:`Constraint` objects.

Names and values follow the package's one keyword rule and one value conversion
(:func:`kkorthanc.tags.tag_keyword`, :func:`kkorthanc.tags.to_dicom`); a query may use the
main DICOM tags of its level and of the levels above. Both engines start here.
"""

from __future__ import annotations

import itertools
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
    to_dicom,
)
from .engine import Constraint, Kind, build_matcher

if TYPE_CHECKING:
    from ..models import Level

__all__ = [
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

LabelsConstraint = Literal["All", "Any", "None"]
_LABELS_CONSTRAINTS: dict[str, LabelsConstraint] = {"all": "All", "any": "Any", "none": "None"}
#: Depth of each level name (1 for patients), for sorting constraints top down.
_DEPTH: dict[str, int] = {cls.level: cls.depth for cls in LEVELS}


def queryable_tags(level: str) -> dict[str, Level]:
    """Keywords a query at ``level`` may use, each with the level that holds it.

    These are the main DICOM tags of the level and of its parents (a study query may filter on
    ``PatientName``).
    """
    cls = level_class(level)
    out: dict[str, Level] = {}
    for upper in LEVELS[: cls.depth]:
        for keyword in MAIN_DICOM_TAGS[upper.level]:
            out[keyword] = upper.level  # the lowest level wins: its own copy of a shared tag
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
    if keyword is not None and keyword in VR_OF:
        return keyword
    raise UnknownKeyword(name, suggest_keywords(name.strip()))


def _level_of_tag(keyword: str) -> Level:
    for cls in LEVELS:
        if keyword in MAIN_DICOM_TAGS[cls.level]:
            return cls.level
    raise UnknownKeyword(keyword, suggest_keywords(keyword))  # pragma: no cover - VR_OF in sync


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
            "any of", an ``int``; ``None`` and ``""`` match anything. Names and values follow
            :func:`~kkorthanc.tags.tag_keyword` and :func:`~kkorthanc.tags.to_dicom`
            (``purpose="match"``), as in every query kkorthanc sends.
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
        keyword = resolve_keyword(name)
        if keyword in seen:
            raise QueryError(f"{keyword} is given twice (as {seen[keyword]!r} and {name!r})")
        seen[keyword] = name
        if keyword not in allowed:
            owner = _level_of_tag(keyword)
            uppers = " and ".join(upper.level for upper in LEVELS[cls.depth - 1 :: -1])
            raise QueryError(
                f"{keyword} is a {owner} tag: a {cls.level} query filters on {uppers} tags "
                f"only; find the {owner} resources instead and go up to their {cls.level}"
            )
        vr = VR_OF[keyword]
        text = to_dicom(keyword, value, purpose="match", error=QueryError)
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
                matches=build_matcher(keyword, kind, values, case_sensitive),
            )
        )
    constraints.sort(key=lambda c: (_DEPTH[c.level], TAG_NUMBERS[c.keyword]))
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
