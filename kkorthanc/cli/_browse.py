"""Reading commands: ``tree``, ``find``, ``show`` and ``stats``."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any, TextIO

from ..models import LEVELS as LEVEL_MODELS
from ..models import Patient, Resource, level_class
from ._common import (
    EXIT_OK,
    RAW_TAGS,
    SAMPLE_STUDY,
    add_command,
    connect,
    counts_below,
    human_size,
    id_argument,
    normalize_level,
    parse_tags,
    patient_json,
    patient_label,
    patient_of,
    print_json,
    resolve,
    resource_json,
    snake_keys,
)

# -- tree --------------------------------------------------------------------------------------


def tree_json(resource: Resource, depth: int) -> dict[str, Any]:
    """A resource and, down to ``depth`` levels, its linked children, counted and nested."""
    data = resource_json(resource, children=False)
    for name in RAW_TAGS:
        data.pop(name, None)
    child_class = resource.child_class()
    if child_class is None:
        return data
    data[f"num_{child_class.collection}"] = len(resource.child_ids)
    linked = resource.linked_children()
    if linked is not None and depth > 1:
        data[child_class.collection] = [tree_json(child, depth - 1) for child in linked]
    return data


def cmd_tree(args: argparse.Namespace, out: TextIO) -> int:
    """Build the forest down to ``--depth`` and print it."""
    from .. import display
    from ..forest import build_patient_forest

    with connect(args) as client:
        forest = build_patient_forest(client, depth=args.depth)
        depth = level_class(args.depth).depth
        if args.json:
            print_json({"patients": [tree_json(p, depth) for p in forest.patients]}, out)
        else:
            display.print_tree(forest, max_depth=depth, file=out)
    return EXIT_OK


# -- find --------------------------------------------------------------------------------------


def cmd_find(args: argparse.Namespace, out: TextIO) -> int:
    """Resources matching ``Tag=value`` pairs, on the server or in a local forest, each with
    its patient."""
    from .. import display
    from .. import query as _query

    tags = parse_tags(args.tags)
    # refuse a bad query before connecting: the same rules serve both engines
    _query.compile_query(args.level, tags, case_sensitive=args.case_sensitive)
    with connect(args) as client:
        if args.local:
            from ..forest import build_patient_forest

            forest = build_patient_forest(client, depth=args.level)
            found: list[Resource] = _query.local_find(
                forest, args.level, tags, case_sensitive=args.case_sensitive
            )
            if args.limit is not None:
                found = found[: args.limit]
        else:
            found = client.find(
                args.level, tags, limit=args.limit, case_sensitive=args.case_sensitive
            )
        if args.json:
            rows = []
            for item in found:
                data = resource_json(item)
                if not isinstance(item, Patient):
                    data["patient"] = patient_json(item)
                rows.append(data)
            print_json(rows, out)
        else:
            for item in found:
                line = f"{item.id}  {display.describe(item)}"
                if not isinstance(item, Patient):
                    line += f"  [patient {patient_label(*patient_of(item))}]"
                print(line, file=out)
            noun = level_class(args.level).level.lower()
            print(f"{len(found)} {noun} match(es)", file=sys.stderr)
    return EXIT_OK


# -- show --------------------------------------------------------------------------------------

_NOT_SHOWN = {"id", "labels", "requested_tags", *RAW_TAGS}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, tuple):
        return "\\".join(_text(item) for item in value)
    return str(value)


def _field_rows(resource: Resource) -> list[tuple[str, str]]:
    """The fields that have a value, named by DICOM keyword (or Orthanc's name), then the main
    tags the model has no field for."""
    cls = type(resource)
    skip = {*_NOT_SHOWN, cls.child_ids_field, cls.parent_field}
    rows: list[tuple[str, str]] = []
    named: set[str] = set()
    for name, info in cls.model_fields.items():
        named.add(info.alias or name)
        value = getattr(resource, name)
        if name in skip or value is None or value in ((), ""):
            continue
        rows.append((info.alias or name, _text(value)))
    rows.extend(
        (keyword, value)
        for keyword, value in resource.main_dicom_tags.items()
        if keyword not in named and value
    )
    return rows


def _ancestors(resource: Resource) -> list[Resource]:
    """The parents above ``resource`` up to its study (fetched if not linked: one ``GET``
    each); the patient is described by the study's copy of its tags."""
    chain: list[Resource] = []
    node = resource
    while node.parent_class() not in (None, Patient):
        parent = node.linked_parent()
        if parent is None:
            parent = getattr(node, node.parent_class().level.lower())  # type: ignore[union-attr]
        assert parent is not None
        chain.append(parent)
        node = parent
    return chain


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    """One resource by Orthanc ID, PatientID or UID: its fields, its parents and what is
    below it (``GET /{level}/{id}/statistics``)."""
    with connect(args) as client:
        resource = resolve(client, args.id, args.level)
        ancestors = _ancestors(resource)
        stats = resource.statistics()
        counts = counts_below(resource, stats)
        disk = _number(stats.get("DiskSize"))
        if args.json:
            data = resource_json(resource)
            if not isinstance(resource, Patient):
                data["patient"] = patient_json(resource)
            data["parents"] = [
                {"level": item.level, "id": item.id, "uid": item.uid} for item in ancestors
            ]
            data["counts"] = counts
            data["disk_size"] = disk
            print_json(data, out)
            return EXIT_OK
        print(f"{resource.level} {resource.id}", file=out)
        rows: list[tuple[str, str]] = []
        if not isinstance(resource, Patient):
            patient_id, name = patient_of(resource)
            top = ancestors[-1] if ancestors else resource
            rows.append(
                ("patient", f"{patient_label(patient_id, name)}  (Orthanc ID {top.parent_id})")
            )
        for item in reversed(ancestors):
            rows.append((item.level.lower(), f"{item.uid or '?'}  (Orthanc ID {item.id})"))
        rows.extend(_field_rows(resource))
        if resource.labels:
            rows.append(("Labels", ", ".join(resource.labels)))
        for collection, count in counts.items():
            rows.append((collection, str(count)))
        if disk is not None:
            rows.append(("disk size", human_size(disk)))
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}", file=out)
    return EXIT_OK


# -- stats -------------------------------------------------------------------------------------


def statistics_json(stats: dict[str, Any]) -> dict[str, Any]:
    """``GET /statistics`` with snake_case keys, and the sizes Orthanc sends as strings (they
    can exceed 32 bits) as numbers."""
    data = snake_keys(stats)
    for key, value in data.items():
        if isinstance(value, str) and value.isdigit():
            data[key] = int(value)
    return data


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """Server identity and counts: ``GET /system`` and ``GET /statistics``, two requests."""
    with connect(args) as client:
        info = client.system
        stats = client.statistics()
    if args.json:
        print_json(
            {
                "url": client.url,
                "system": snake_keys(info.model_dump(mode="json"), deep=True),
                "statistics": statistics_json(stats),
            },
            out,
        )
        return EXIT_OK
    rows = [
        ("server", f"{info.name or '?'} at {client.url}"),
        ("version", f"Orthanc {info.version} (REST API {info.api_version})"),
        ("dicom", f"AET {info.dicom_aet or '?'} on port {info.dicom_port or '?'}"),
        # Orthanc counts each level as CountPatients, CountStudies, ...
        *(
            (cls.collection, str(stats.get(f"Count{cls.collection.capitalize()}", "?")))
            for cls in LEVEL_MODELS
        ),
    ]
    disk = stats.get("TotalDiskSize")
    if disk is not None:
        rows.append(("disk", human_size(float(disk))))
    for name, value in rows:
        print(f"{name:<10} {value}", file=out)
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------


def register(commands: Any) -> None:
    tree = add_command(
        commands,
        "tree",
        "print the patient forest",
        ["kkorthanc tree --depth study", "kkorthanc tree --json | jq '.patients[0]'"],
    )
    tree.add_argument(
        "--depth",
        type=normalize_level,
        default="series",
        metavar="LEVEL",
        help="deepest level to load and print: patient, study, series (default) or instance",
    )
    tree.set_defaults(handler=cmd_tree)

    find = add_command(
        commands,
        "find",
        "find resources by DICOM tags, each shown with its patient",
        [
            "kkorthanc find study PatientName='MÜLLER*' StudyDate=20100101-",
            "kkorthanc find series Modality=CT --local --json",
        ],
    )
    find.add_argument(
        "level", type=normalize_level, metavar="LEVEL", help="patient, study, series or instance"
    )
    find.add_argument(
        "tags",
        nargs="*",
        metavar="Tag=value",
        help="DICOM keyword or snake_case name = value, with * ? wildcards and A-B date ranges",
    )
    find.add_argument(
        "--local",
        action="store_true",
        help="load the forest and match locally instead of /tools/find",
    )
    find.add_argument("--limit", type=int, default=None, help="at most this many results")
    find.add_argument("--case-sensitive", action="store_true", help="letter case matters")
    find.set_defaults(handler=cmd_find)

    show = add_command(
        commands,
        "show",
        "show one resource: its fields, its patient and parents, and the counts below it",
        ["kkorthanc show KK-0-0001", f"kkorthanc show {SAMPLE_STUDY} --json"],
        details="An identifier that several resources share (one StudyInstanceUID under two "
        "PatientIDs) is an error (exit 1) naming the candidates; give an Orthanc ID then.",
    )
    id_argument(show)
    show.set_defaults(handler=cmd_show)


def register_stats(commands: Any) -> None:
    stats = add_command(
        commands,
        "stats",
        "server version and counts",
        ["kkorthanc stats", "kkorthanc --json stats"],
    )
    stats.set_defaults(handler=cmd_stats)
