"""Rendering for notebooks and terminals: HTML for resources and forests, text trees.

Nothing here sends a request: the tree follows only relations that are already linked (a
forest links them), and counts come from the child ID lists every resource carries. All text
from the server is escaped, since names and descriptions are free text.

The HTML works in Jupyter's sanitizer: no script, collapsing with ``<details>``/``<summary>``,
and one ``<style>`` whose rules are all scoped under the root class ``kkorthanc-repr``. Colours
come from JupyterLab's theme variables when they are defined, else from the surrounding text
colour (``currentColor``), so the view reads in light and dark themes alike; without the style
sheet it is still a readable nested list.
"""

from __future__ import annotations

import datetime
import html
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from .models import LEVELS, Instance, Patient, Resource, Series, Study

__all__ = [
    "CSS_CLASS",
    "MAX_CHILDREN",
    "MAX_INSTANCES",
    "MAX_PATIENTS",
    "describe",
    "forest_html",
    "print_tree",
    "resource_html",
    "shorten_uid",
    "tree_lines",
]

#: patients shown by :func:`forest_html` before "… N more"
MAX_PATIENTS = 50
#: studies per patient and series per study shown by :func:`forest_html`
MAX_CHILDREN = 50
#: instances per series shown by :func:`forest_html`
MAX_INSTANCES = 20
#: the class of the root element of every HTML view; every style rule is scoped under it
CSS_CLASS = "kkorthanc-repr"
#: UIDs longer than this are shortened in tree lines (the full value stays in ``title``)
UID_WIDTH = 26
EMPTY_PATIENT_ID = "(empty PatientID)"


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


def _natural(text: str) -> tuple[Any, ...]:
    """A sort key that orders ``P2`` before ``P10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
        for part in re.split(r"(\d+)", text)
        if part
    )


def _sort_key(resource: Resource) -> tuple[Any, ...]:
    """Display order: patients by PatientID (empty ones last), studies by date and time,
    series and instances by number."""
    if isinstance(resource, Patient):
        name = str(resource.patient_name or "")
        return (not resource.patient_id, _natural(resource.patient_id or ""), name, resource.id)
    if isinstance(resource, Study):
        return (resource.study_date or datetime.date.max, resource.study_time or datetime.time.max)
    if isinstance(resource, Series):
        number = resource.series_number
        return (number is None, number or 0, resource.series_description or "")
    if isinstance(resource, Instance):
        number = resource.instance_number
        return (number is None, number or 0, resource.index_in_series or 0)
    return ()


def _sorted(resources: Sequence[Resource]) -> list[Resource]:
    return sorted(resources, key=_sort_key)


def _linked_children(resource: Resource) -> Sequence[Resource] | None:
    """Children already in memory, in display order (never fetched)."""
    # not the public relations: they would fetch children that are not loaded
    children = resource.linked_children()
    if children is None:
        return None
    return _sorted(children)


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
            linked = item.linked_children()
            if linked is None:
                return counts
            following.extend(linked)
        frontier = following
    return counts


def _counts_text(counts: dict[type[Resource], int]) -> str:
    return ", ".join(_plural(n, cls) for cls, n in counts.items())


def describe(resource: Resource) -> str:
    """One line naming a resource from its own fields (no counts, no request).

    Patients show PatientID (``(empty PatientID)`` when it is empty), name, birth date and
    sex; studies their date, description and accession number; series number, modality and
    description; instances number and SOP UID.
    """
    if isinstance(resource, Patient):
        parts = [resource.patient_id or EMPTY_PATIENT_ID, _text(resource.patient_name)]
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


def shorten_uid(uid: str, width: int = UID_WIDTH, differ: int | None = None) -> str:
    """A long UID cut to about ``width`` characters; short ones unchanged.

    Its start and its end are kept (``1.2.826.…45678.9012``): UIDs share their root and
    usually differ at the end. ``differ`` is where the UIDs of its siblings start to differ:
    when the cut would hide that place, the part of the UID from there is kept instead
    (``1.2.826.…7.1.20240…``), so that siblings never look alike.
    """
    if len(uid) <= width:
        return uid
    head = max(4, width // 3)
    tail = max(4, width - head - 1)
    if differ is None or differ < head or differ >= len(uid) - tail:
        return f"{uid[:head]}…{uid[-tail:]}"
    start = uid.rfind(".", 0, differ) + 1  # the component where siblings differ
    room = max(4, width - head - 2)
    if start + room >= len(uid):
        return f"{uid[:head]}…{uid[start:]}"
    return f"{uid[:head]}…{uid[start : start + room]}…"


def _differ(uids: Sequence[str | None]) -> int | None:
    """Where sibling UIDs start to differ (the length of their common start)."""
    known = [uid for uid in uids if uid]
    if len(known) < 2:
        return None
    first, last = min(known), max(known)
    size = min(len(first), len(last))
    index = 0
    while index < size and first[index] == last[index]:
        index += 1
    return index


# -- HTML pieces ---------------------------------------------------------------------------------

_CSS = """
.kkorthanc-repr{
  --kk-line:var(--jp-border-color2,color-mix(in srgb,currentColor 22%,transparent));
  --kk-dim:color-mix(in srgb,currentColor 72%,transparent);
  --kk-soft:var(--jp-layout-color2,color-mix(in srgb,currentColor 7%,transparent));
  --kk-accent:var(--jp-brand-color1,#1d64b0);
  font-family:var(--jp-content-font-family,system-ui,-apple-system,"Segoe UI",Roboto,
    "Noto Sans",sans-serif);
  font-size:var(--jp-content-font-size1,13px);line-height:1.5;text-align:left;
  color:var(--jp-content-font-color1,currentColor);background:transparent;
}
@media (prefers-color-scheme:dark){.kkorthanc-repr{--kk-accent:var(--jp-brand-color1,#7cb6f2)}}
.kkorthanc-repr div.kk-head{display:flex;flex-wrap:wrap;gap:.25em .8em;align-items:baseline;
  padding:.2em .5em;margin:0 0 .3em;border-bottom:1px solid var(--kk-line);
  background:var(--kk-soft)}
.kkorthanc-repr div.kk-path{margin:0 0 .25em .2em}
.kkorthanc-repr ul.kk-t{list-style:none;margin:0;padding:0 0 0 .2em}
.kkorthanc-repr ul.kk-t ul.kk-t{margin:0 0 0 .45em;padding:0 0 0 .8em;
  border-left:1px solid var(--kk-line)}
.kkorthanc-repr ul.kk-t li{list-style:none;margin:0;padding:0}
.kkorthanc-repr ul.kk-t summary{display:block;list-style:none;cursor:pointer;
  border-radius:3px;padding:0 .2em 0 0}
.kkorthanc-repr ul.kk-t summary::-webkit-details-marker{display:none}
.kkorthanc-repr ul.kk-t summary::before,.kkorthanc-repr ul.kk-t li.kk-l::before{
  display:inline-block;width:1.1em;color:var(--kk-dim);content:""}
.kkorthanc-repr ul.kk-t summary::before{content:"\\25B8"}
.kkorthanc-repr ul.kk-t details[open]>summary::before{content:"\\25BE"}
.kkorthanc-repr ul.kk-t summary:hover{background:var(--kk-soft)}
.kkorthanc-repr ul.kk-t summary:focus-visible{outline:1px solid var(--kk-accent)}
.kkorthanc-repr i{font-style:normal;color:var(--kk-dim);font-size:.9em}
.kkorthanc-repr span.kk-v{margin-right:.35em}
.kkorthanc-repr span.kk-n,.kkorthanc-repr li.kk-more,.kkorthanc-repr span.kk-dim{
  color:var(--kk-dim)}
.kkorthanc-repr span.kk-e{font-style:italic;color:var(--kk-dim);margin-right:.35em}
.kkorthanc-repr span.kk-m{display:inline-block;border:1px solid var(--kk-accent);
  border-radius:3px;padding:0 .3em;font-size:.85em;line-height:1.3}
.kkorthanc-repr code{font-family:var(--jp-code-font-family,ui-monospace,SFMono-Regular,
  Menlo,Consolas,monospace);font-size:.9em;background:transparent;color:inherit;padding:0}
.kkorthanc-repr details.kk-sec{margin:.4em 0 0}
.kkorthanc-repr details.kk-sec>summary{cursor:pointer;font-weight:600}
.kkorthanc-repr table.kk-f{border-collapse:collapse;margin:.2em 0 0 1.1em;
  background:transparent;color:inherit;font-size:inherit;table-layout:auto}
.kkorthanc-repr table.kk-f tr,.kkorthanc-repr table.kk-f tr:nth-child(odd),
.kkorthanc-repr table.kk-f tr:hover{background:transparent;color:inherit}
.kkorthanc-repr table.kk-f th,.kkorthanc-repr table.kk-f td{text-align:left;
  vertical-align:top;padding:.05em 1em .05em 0;border:none;white-space:normal;
  overflow-wrap:anywhere;max-width:none}
.kkorthanc-repr table.kk-f th{font-weight:normal;color:var(--kk-dim);white-space:nowrap}
.kkorthanc-repr table.kk-f th.kk-x{font-style:italic}
"""


def _style() -> str:
    return f"<style>{_CSS}</style>"


def _esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _value(label: str | None, content: str) -> str:
    """One labelled value: ``<i>label</i> content``, ``content`` already HTML."""
    prefix = f"<i>{label}</i> " if label else ""
    return f'<span class="kk-v">{prefix}{content}</span>'


def _uid_html(uid: str, differ: int | None = None) -> str:
    short = shorten_uid(uid, differ=differ)
    if short == uid:
        return f"<code>{html.escape(uid)}</code>"
    return f'<code title="{html.escape(uid, quote=True)}">{html.escape(short)}</code>'


def _modality_html(modality: str) -> str:
    return f'<span class="kk-m">{html.escape(modality)}</span>'


def _patient_line(patient: Patient) -> list[str]:
    parts = []
    if patient.patient_id:
        parts.append(_value("PatientID", f"<b>{html.escape(patient.patient_id)}</b>"))
    else:
        parts.append(f'<span class="kk-e">{EMPTY_PATIENT_ID}</span>')
    if patient.patient_name:
        parts.append(f'<span class="kk-v">{_esc(patient.patient_name)}</span>')
    if patient.patient_birth_date:
        parts.append(_value("born", _esc(patient.patient_birth_date)))
    if patient.patient_sex:
        parts.append(_value("sex", _esc(patient.patient_sex)))
    return parts


def _study_line(study: Study, differ: int | None) -> list[str]:
    when = _text(study.study_date)
    if when and study.study_time is not None:
        when += " " + study.study_time.strftime("%H:%M")
    parts = [_value("study", _esc(when) if when else '<span class="kk-dim">no date</span>')]
    if study.study_description:
        parts.append(f'<span class="kk-v"><b>{_esc(study.study_description)}</b></span>')
    if study.accession_number:
        parts.append(_value("accession", _esc(study.accession_number)))
    if study.study_id:
        parts.append(_value("study ID", _esc(study.study_id)))
    series = study.linked_children()
    if series:
        modalities = sorted({s.modality for s in series if isinstance(s, Series) and s.modality})
        parts.extend(_modality_html(modality) for modality in modalities)
    if not study.study_description and not study.accession_number and study.study_instance_uid:
        parts.append(_value("UID", _uid_html(study.study_instance_uid, differ)))
    return parts


def _series_line(series: Series, differ: int | None) -> list[str]:
    number = _esc(series.series_number) if series.series_number is not None else "?"
    parts = [_value("series", number)]
    if series.modality:
        parts.append(_modality_html(series.modality))
    if series.series_description:
        parts.append(f'<span class="kk-v"><b>{_esc(series.series_description)}</b></span>')
    if series.body_part_examined:
        parts.append(_value("body part", _esc(series.body_part_examined)))
    if not series.series_description and series.series_instance_uid:
        parts.append(_value("UID", _uid_html(series.series_instance_uid, differ)))
    return parts


def _instance_line(instance: Instance, differ: int | None) -> list[str]:
    number = _esc(instance.instance_number) if instance.instance_number is not None else "?"
    parts = [_value("instance", number)]
    if instance.number_of_frames is not None and instance.number_of_frames > 1:
        parts.append(_value(None, f"{instance.number_of_frames} frames"))
    parts.append(_uid_html(instance.sop_instance_uid or instance.id, differ))
    return parts


def _line_html(resource: Resource, differ: int | None = None) -> str:
    """A resource's own values, labelled (no counts); ``differ`` as in :func:`shorten_uid`."""
    if isinstance(resource, Patient):
        parts = _patient_line(resource)
    elif isinstance(resource, Study):
        parts = _study_line(resource, differ)
    elif isinstance(resource, Series):
        parts = _series_line(resource, differ)
    else:
        assert isinstance(resource, Instance)
        parts = _instance_line(resource, differ)
    return " ".join(parts)


def _counts_html(resource: Resource) -> str:
    counts = _descendant_counts(resource)
    if not counts:
        return ""
    return f' <span class="kk-n">({html.escape(_counts_text(counts))})</span>'


def _more_html(hidden: int, cls: type[Resource]) -> str:
    return f'<li class="kk-l kk-more">… {hidden} more {cls.collection}</li>'


def _node_html(
    resource: Resource, out: list[str], *, opened: bool = False, differ: int | None = None
) -> None:
    """One ``<li>``: a ``<details>`` when children are linked, else a plain line."""
    children = _linked_children(resource)
    child_class = resource.child_class()
    if child_class is None or not children:
        # an instance, or nothing linked below: a line with the counts the resource carries
        out.append(f'<li class="kk-l">{_line_html(resource, differ)}{_counts_html(resource)}</li>')
        return
    limit = MAX_INSTANCES if child_class is Instance else MAX_CHILDREN
    out.append(
        f"<li><details{' open' if opened else ''}><summary>{_line_html(resource, differ)}"
        f'{_counts_html(resource)}</summary><ul class="kk-t">'
    )
    shown = children[:limit]
    differ = _differ([child.uid for child in shown])
    for child in shown:
        _node_html(child, out, differ=differ)
    if len(children) > limit:
        out.append(_more_html(len(children) - limit, child_class))
    out.append("</ul></details></li>")


def _public_url(url: str) -> str:
    """A server URL without credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- one resource ------------------------------------------------------------------------------


def _field_rows(resource: Resource) -> list[tuple[str, str, str, bool]]:
    """``(name, title, value HTML, extra)`` for each field with a value, then main tags and
    requested tags the model has no field for (``extra``)."""
    cls = type(resource)
    rows: list[tuple[str, str, str, bool]] = []
    aliases: set[str] = set()
    child_class = cls.child_class()
    for name, info in cls.model_fields.items():
        alias = info.alias or ""
        aliases.add(alias)
        if name in ("id", "main_dicom_tags", "patient_main_dicom_tags", "requested_tags"):
            continue
        if child_class is not None and name == cls.child_ids_field:
            rows.append((child_class.collection, alias, str(_child_count(resource)), False))
            continue
        value = getattr(resource, name)
        if value is None or value == ():
            continue
        text = _esc(value)
        if name == cls.uid_field or name.endswith("_uid"):
            text = f"<code>{text}</code>"
        rows.append((name, alias, text, False))
    for keyword, raw in resource.main_dicom_tags.items():
        if keyword not in aliases and raw:
            rows.append((keyword, "main DICOM tag", _esc(raw), True))
    for keyword, requested in resource.requested_tags.items():
        if keyword not in aliases and requested not in (None, ""):
            rows.append((keyword, "requested tag", _esc(requested), True))
    return rows


def _ancestors_html(resource: Resource) -> str:
    """Where a resource sits: its linked ancestors top down, else what it knows of them."""
    parts: list[str] = []
    parent = resource.linked_parent()
    child: Resource = resource
    while parent is not None:
        parts.append(_line_html(parent))
        child, parent = parent, parent.linked_parent()
    parent_class = child.parent_class()
    if isinstance(child, Study) and child.patient_main_dicom_tags:
        # Orthanc repeats the patient's main tags on each study
        tags = child.patient_main_dicom_tags
        known = Patient.from_orthanc({"ID": child.parent_id or "", "MainDicomTags": tags})
        parts.append(_line_html(known))
    elif parent_class is not None and child.parent_id:
        label = parent_class.level.lower()
        parts.append(_value(label, _uid_html(child.parent_id)))
    if not parts:
        return ""
    return f'<div class="kk-path"><i>in</i> {" <i>›</i> ".join(reversed(parts))}</div>'


def resource_html(resource: Resource) -> str:
    """A resource as a tree (``Resource._repr_html_``): its labelled values, the linked
    children below it with counts (a study shows its series, each with its instances),
    where it sits (patient, study...), and a table of every field with a value, main DICOM
    tags the model has no field for included. Costs no request: children that are not
    loaded show as a count.
    """
    cls = type(resource)
    out = [
        f'<div class="{CSS_CLASS}">',
        _style(),
        f'<div class="kk-head"><span><b>{html.escape(cls.level)}</b> '
        f"<code>{html.escape(resource.id)}</code></span></div>",
        _ancestors_html(resource),
        '<ul class="kk-t">',
    ]
    _node_html(resource, out, opened=True)
    out.append("</ul>")
    child_class = cls.child_class()
    if child_class is not None and resource.linked_children() is None and resource.child_ids:
        out.append(
            f'<div class="kk-path">{html.escape(child_class.collection)} not loaded: '
            f"<code>.{html.escape(child_class.collection)}</code> fetches them</div>"
        )
    out.append('<details class="kk-sec" open><summary>Fields</summary><table class="kk-f">')
    for name, title, text, extra in _field_rows(resource):
        css = ' class="kk-x"' if extra else ""
        out.append(
            f'<tr><th{css} title="{html.escape(title, quote=True)}">{html.escape(name)}</th>'
            f"<td>{text}</td></tr>"
        )
    out.append("</table></details></div>")
    return "\n".join(part for part in out if part)


# -- the forest as HTML --------------------------------------------------------------------------


def forest_html(forest: Any) -> str:
    """A collapsible HTML tree of a forest, with counts (the forest's ``_repr_html_``).

    One ``<details>`` per patient, study and series, closed; patients sorted by PatientID,
    studies by date, series and instances by number. The first :data:`MAX_PATIENTS` patients,
    :data:`MAX_CHILDREN` studies or series per parent and :data:`MAX_INSTANCES` instances per
    series are listed, then "… N more", so that a forest of tens of thousands of instances
    renders at once. Costs no request.
    """
    patients = _sorted(forest.patients)
    client = getattr(forest, "client", None)
    url = _public_url(str(getattr(client, "url", "") or ""))
    where = f' <span class="kk-dim">{html.escape(url)}</span>' if url else ""
    out = [
        f'<div class="{CSS_CLASS}">',
        _style(),
        f'<div class="kk-head"><span><b>Patient forest</b></span>{where}'
        f" <span>{html.escape(_forest_summary(forest))}</span></div>",
        '<ul class="kk-t">',
    ]
    for patient in patients[:MAX_PATIENTS]:
        _node_html(patient, out)
    if len(patients) > MAX_PATIENTS:
        out.append(_more_html(len(patients) - MAX_PATIENTS, Patient))
    out.append("</ul></div>")
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
        yield from walk(_sorted(forest.patients), "")


def print_tree(forest: Any, max_depth: int | None = None, file: TextIO | None = None) -> None:
    """Print a forest as a tree with box-drawing characters and child counts.

    Args:
        forest: a patient forest (anything with ``patients``, ``studies``, ``series`` and
            ``instances`` lists of linked resources).
        max_depth: levels to print: 1 patients, 2 down to studies, 3 series, 4 instances;
            ``None`` prints every level the forest holds.
        file: where to print; standard output by default.

    Patients come sorted by PatientID, studies by date, series and instances by number.
    Costs no request.
    """
    out = file if file is not None else sys.stdout
    for line in tree_lines(forest, max_depth):
        print(line, file=out)
