"""Rendering for notebooks and terminals: HTML for resources and forests, text trees.

Nothing here sends a request: the tree follows only relations that are already linked (a
forest links them), and counts come from the child ID lists every resource carries. All text
from the server is escaped, since names and descriptions are free text.
"""

from __future__ import annotations

import datetime
import html
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from .models import LEVELS, Instance, Patient, Resource, Series, Study

__all__ = [
    "MAX_CHILDREN",
    "MAX_INSTANCES",
    "MAX_PATIENTS",
    "describe",
    "forest_html",
    "print_tree",
    "resource_html",
    "tree_lines",
]

#: patients shown by :func:`forest_html` before "… N more"
MAX_PATIENTS = 50
#: studies per patient and series per study shown by :func:`forest_html`
MAX_CHILDREN = 50
#: instances per series shown by :func:`forest_html`
MAX_INSTANCES = 20


# -- shared helpers ---------------------------------------------------------------------------


def _plural(count: int, cls: type[Resource]) -> str:
    if count == 1:
        return f"1 {cls.level.lower()}"
    return f"{count} {cls.collection}"


def _text(value: Any) -> str:
    """A field value as display text (dates ISO, multi-values joined with a backslash)."""
    if value is None:
        return ""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, tuple):
        return "\\".join(_text(item) for item in value)
    return str(value)


def _sort_key(resource: Resource) -> tuple[Any, ...]:
    """Display order: studies by date and time, series and instances by number."""
    if isinstance(resource, Study):
        return (resource.study_date or datetime.date.max, resource.study_time or datetime.time.max)
    if isinstance(resource, Series):
        number = resource.series_number
        return (number is None, number or 0, resource.series_description or "")
    if isinstance(resource, Instance):
        number = resource.instance_number
        return (number is None, number or 0, resource.index_in_series or 0)
    return ()


def _linked_children(resource: Resource) -> Sequence[Resource] | None:
    """Children already in memory, in display order (never fetched)."""
    # not the public relations: they would fetch children that are not loaded
    children = resource.linked_children()
    if children is None:
        return None
    return sorted(children, key=_sort_key)


def _child_count(resource: Resource) -> int:
    if resource.child_class() is None:
        return 0
    linked = resource.linked_children()
    return len(linked) if linked is not None else len(resource.child_ids)


def _descendant_counts(resource: Resource) -> dict[type[Resource], int]:
    """Counts of each lower level, as far as children are linked (the first level always)."""
    counts: dict[type[Resource], int] = {}
    frontier: list[Resource] = [resource]
    while frontier:
        child_class = frontier[0].child_class()
        if child_class is None:
            break
        counts[child_class] = sum(_child_count(item) for item in frontier)
        following: list[Resource] = []
        for item in frontier:
            linked = _linked_children(item)
            if linked is None:
                return counts
            following.extend(linked)
        frontier = following
    return counts


def _counts_text(counts: dict[type[Resource], int]) -> str:
    return ", ".join(_plural(n, cls) for cls, n in counts.items())


def describe(resource: Resource) -> str:
    """One line naming a resource from its own fields (no counts, no request).

    Patients show PatientID, name, birth date and sex; studies their date, description and
    accession number; series number, modality and description; instances number and SOP UID.
    """
    if isinstance(resource, Patient):
        parts = [resource.patient_id or resource.id, _text(resource.patient_name)]
        if resource.patient_birth_date:
            parts.append(f"born {resource.patient_birth_date.isoformat()}")
        if resource.patient_sex:
            parts.append(resource.patient_sex)
    elif isinstance(resource, Study):
        parts = [
            _text(resource.study_date) or "????-??-??",
            resource.study_description or "",
            resource.accession_number or "",
        ]
    elif isinstance(resource, Series):
        number = f"#{resource.series_number}" if resource.series_number is not None else "#?"
        parts = [number, resource.modality or "?", resource.series_description or ""]
    else:
        assert isinstance(resource, Instance)
        number = f"#{resource.instance_number}" if resource.instance_number is not None else "#?"
        parts = [number, resource.sop_instance_uid or resource.id]
    return "  ".join(part for part in parts if part)


def _forest_counts(forest: Any) -> dict[type[Resource], int]:
    """Resources per level: the forest's own ``counts`` when it has them (they include the
    level just below its depth, from child-ID lists), else the lengths of its lists."""
    counts = getattr(forest, "counts", None)
    if counts is not None and all(hasattr(counts, cls.collection) for cls in LEVELS):
        return {cls: int(getattr(counts, cls.collection)) for cls in LEVELS}
    return {cls: len(getattr(forest, cls.collection)) for cls in LEVELS}


def _forest_summary(forest: Any) -> str:
    counts = _forest_counts(forest)
    parts = [_plural(n, cls) for cls, n in counts.items() if n]
    return ", ".join(parts) if parts else "0 patients"


# -- one resource ------------------------------------------------------------------------------


def resource_html(resource: Resource) -> str:
    """A small HTML table of a resource's typed fields (``Resource._repr_html_``).

    Shows the fields that have a value, the number of children, and main DICOM tags the
    model has no field for. Costs no request.
    """
    cls = type(resource)
    rows: list[tuple[str, str]] = []
    aliases: set[str] = set()
    for name, info in cls.model_fields.items():
        if info.alias:
            aliases.add(info.alias)
        if name in ("id", "main_dicom_tags", "patient_main_dicom_tags"):
            continue
        value = getattr(resource, name)
        child_class = cls.child_class()
        if child_class is not None and name == cls.child_ids_field:
            rows.append((child_class.collection, str(_child_count(resource))))
            continue
        if value is None or value == ():
            continue
        rows.append((name, _text(value)))
    extra = [
        (keyword, value)
        for keyword, value in resource.main_dicom_tags.items()
        if keyword not in aliases and value
    ]
    out = [
        '<table class="kkorthanc-resource" style="border-collapse:collapse">',
        f'<caption style="text-align:left"><b>{html.escape(cls.level)}</b> '
        f"<code>{html.escape(resource.id)}</code></caption>",
    ]
    for name, text in rows:
        out.append(
            f'<tr><th style="text-align:left">{html.escape(name)}</th>'
            f'<td style="text-align:left">{html.escape(text)}</td></tr>'
        )
    for keyword, text in extra:
        out.append(
            f'<tr><th style="text-align:left;font-weight:normal"><i>{html.escape(keyword)}</i>'
            f'</th><td style="text-align:left">{html.escape(text)}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


# -- the forest as HTML --------------------------------------------------------------------------


def _summary_html(resource: Resource) -> str:
    counts = _descendant_counts(resource)
    count_text = f' <span style="color:#777">({html.escape(_counts_text(counts))})</span>'
    return f"<summary>{html.escape(describe(resource))}{count_text if counts else ''}</summary>"


def _more_html(hidden: int, cls: type[Resource]) -> str:
    return f'<div style="color:#777">… {hidden} more {cls.collection}</div>'


def _node_html(resource: Resource, out: list[str]) -> None:
    children = _linked_children(resource)
    child_class = resource.child_class()
    if child_class is None:
        out.append(f"<div>{html.escape(describe(resource))}</div>")
        return
    if not children:
        # nothing linked below: a plain line with the counts the resource carries
        counts = _descendant_counts(resource)
        tail = f" ({_counts_text(counts)})" if counts else ""
        out.append(f"<div>{html.escape(describe(resource) + tail)}</div>")
        return
    limit = MAX_INSTANCES if child_class is Instance else MAX_CHILDREN
    out.append(f'<details style="margin-left:1.2em">{_summary_html(resource)}')
    for child in children[:limit]:
        _node_html(child, out)
    if len(children) > limit:
        out.append(_more_html(len(children) - limit, type(children[0])))
    out.append("</details>")


def forest_html(forest: Any) -> str:
    """A collapsible HTML tree of a forest, with counts (the forest's ``_repr_html_``).

    One ``<details>`` per patient, study and series, closed; the first
    :data:`MAX_PATIENTS` patients, :data:`MAX_CHILDREN` studies or series per parent and
    :data:`MAX_INSTANCES` instances per series are listed, then "… N more", so that a forest
    of tens of thousands of instances renders at once. Costs no request.
    """
    patients: Sequence[Resource] = forest.patients
    out = [
        '<div class="kkorthanc-forest">',
        f"<div><b>Patient forest</b>: {html.escape(_forest_summary(forest))}</div>",
    ]
    for patient in patients[:MAX_PATIENTS]:
        _node_html(patient, out)
    if len(patients) > MAX_PATIENTS:
        out.append(_more_html(len(patients) - MAX_PATIENTS, Patient))
    out.append("</div>")
    return "\n".join(out)


# -- the forest as text ------------------------------------------------------------------------


def tree_lines(forest: Any, max_depth: int | None = None) -> Iterator[str]:
    """The lines :func:`print_tree` prints: a summary, then one line per resource."""
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth must be 0 or more, not {max_depth}")
    yield _forest_summary(forest)

    def walk(resources: Sequence[Resource], prefix: str) -> Iterator[str]:
        for index, resource in enumerate(resources):
            last = index == len(resources) - 1
            branch, stem = ("└── ", "    ") if last else ("├── ", "│   ")
            child_class = resource.child_class()
            tail = f"  ({_plural(_child_count(resource), child_class)})" if child_class else ""
            yield f"{prefix}{branch}{describe(resource)}{tail}"
            children = _linked_children(resource)
            deeper = max_depth is None or resource.depth < max_depth
            if children and deeper:
                yield from walk(children, prefix + stem)

    if max_depth is None or max_depth >= 1:
        yield from walk(list(forest.patients), "")


def print_tree(forest: Any, max_depth: int | None = None, file: TextIO | None = None) -> None:
    """Print a forest as a tree with box-drawing characters and child counts.

    Args:
        forest: a patient forest (anything with ``patients``, ``studies``, ``series`` and
            ``instances`` lists of linked resources).
        max_depth: levels to print: 1 patients, 2 down to studies, 3 series, 4 instances;
            ``None`` prints every level the forest holds.
        file: where to print; standard output by default.

    Costs no request.
    """
    out = file if file is not None else sys.stdout
    for line in tree_lines(forest, max_depth):
        print(line, file=out)
