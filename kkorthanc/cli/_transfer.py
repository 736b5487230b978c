"""Moving files: ``upload`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from ..models import LEVELS as LEVEL_MODELS
from ..models import Patient, Resource
from ..transfer import check_layout
from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    LEVELS,
    SAMPLE_STUDY,
    _UsageError,
    add_command,
    connect,
    positive_int,
    print_json,
    progress_wanted,
    resolve,
)


def cmd_upload(args: argparse.Namespace, out: TextIO) -> int:
    """Upload files, folders or archives; exit 1 when anything was rejected or failed."""
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise _UsageError(f"no such file or folder: {missing[0]}")
    with connect(args) as client:
        report = client.upload(
            [Path(path) for path in args.paths],
            workers=args.workers,
            progress=progress_wanted(args),
        )
    counts = report.counts
    problems = report.rejected + report.failed
    if args.json:
        print_json(
            {
                **counts,
                "bytes": report.bytes,
                "problems": [
                    {
                        "source": item.source,
                        "status": item.status,
                        "error": item.error,
                        "details": item.details,
                    }
                    for item in problems
                ],
            },
            out,
        )
    else:
        print(
            f"stored {counts['stored']}, already stored {counts['already_stored']}, "
            f"rejected {counts['rejected']}, failed {counts['failed']}",
            file=out,
        )
    for item in problems:
        print(f"kkorthanc: {item.label}", file=sys.stderr)
    return EXIT_PARTIAL if problems else EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    """Write the instances of the selected resources under DIR."""
    selectors = [(level, value) for level in LEVELS for value in getattr(args, level) or ()]
    if not selectors and not args.all:
        raise _UsageError(
            "nothing to export: give --patient, --study, --series, --instance or --all"
        )
    if args.layout:
        try:
            check_layout(args.layout)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    with connect(args) as client:
        resources: list[Resource] = []
        if args.all:
            resources.extend(client.patients())
        resources.extend(resolve(client, value, level) for level, value in selectors)
        options: dict[str, Any] = {"progress": progress_wanted(args), "workers": args.workers}
        if args.layout:
            options["layout"] = args.layout
        report = client.export(resources, Path(args.folder), **options)
    counts = report.counts
    if args.json:
        print_json(
            {
                **counts,
                "bytes": report.bytes,
                "folder": str(report.folder),
                "paths": [str(path) for path in report.paths],
                "problems": [
                    {"instance": item.instance_id, "path": str(item.path), "error": item.error}
                    for item in report.failed
                ],
            },
            out,
        )
    else:
        print(
            f"wrote {counts['written']}, skipped {counts['skipped']} already present, "
            f"failed {counts['failed']} under {report.folder}",
            file=out,
        )
    for item in report.failed:
        print(f"kkorthanc: {item.label}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def register(commands: Any) -> None:
    upload = add_command(
        commands,
        "upload",
        "upload DICOM files, folders or ZIP archives",
        ["kkorthanc upload incoming/ archive.zip", "kkorthanc upload --json scan.dcm"],
        details="Exit 1 when a file was rejected (not DICOM) or failed; each is named on "
        "standard error.",
    )
    upload.add_argument("paths", nargs="+", metavar="PATH")
    upload.add_argument(
        "--workers", type=positive_int, default=4, help="parallel uploads (default 4)"
    )
    upload.set_defaults(handler=cmd_upload)

    export = add_command(
        commands,
        "export",
        "write instances to a folder tree",
        [
            f"kkorthanc export --study {SAMPLE_STUDY} out/",
            "kkorthanc export --patient KK-0-0001 --layout '{PatientID}/{SOPInstanceUID}.dcm' out/",
        ],
    )
    for cls in LEVEL_MODELS:
        level = cls.level.lower()
        export.add_argument(
            f"--{level}",
            action="append",
            metavar="ID",
            help=f"a {level} to export by Orthanc ID or "
            + (cls.uid_keyword if cls is Patient else "DICOM UID")
            + "; repeatable",
        )
    export.add_argument("--all", action="store_true", help="export every patient")
    export.add_argument(
        "--layout", default=None, help="file path template, e.g. '{PatientID}/{SOPInstanceUID}.dcm'"
    )
    export.add_argument(
        "--workers", type=positive_int, default=4, help="parallel downloads (default 4)"
    )
    export.add_argument("folder", metavar="DIR")
    export.set_defaults(handler=cmd_export)
