"""Commands that change data on the server: ``anonymize``, ``modify``, ``delete``, ``labels``."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from .. import jobs as _jobs
from ..errors import NotFound, UnsupportedByServer
from ..metadata import check_label
from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    SAMPLE_STUDY,
    _UsageError,
    add_command,
    connect,
    counts_below,
    counts_text,
    error_line,
    id_argument,
    named,
    normalize_level,
    note,
    parse_tags,
    print_json,
    progress_wanted,
    request_suffix,
    resolve,
    resource_json,
    summary,
)
from ._jobs import job_json, timeout_argument, wait_job

# -- anonymize and modify ----------------------------------------------------------------------


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.replace:
        options["replace"] = parse_tags(args.replace, example="StudyDescription=Research")
    if args.remove:
        options["remove"] = list(args.remove)
    if args.keep:
        options["keep"] = list(args.keep)
    if args.force:
        options["force"] = True
    return options


def _transform(args: argparse.Namespace, out: TextIO, operation: str) -> int:
    options = _options(args)
    transform = _jobs.anonymize if operation == "anonymize" else _jobs.modify
    verb = "anonymized" if operation == "anonymize" else "modified"
    with connect(args) as client:
        source = resolve(client, args.id, args.level)
        if args.job or args.wait:
            job = transform(source, as_job=True, **options)
            if not args.wait:
                if args.json:
                    print_json({"source": summary(source), "job": job_json(job)}, out)
                else:
                    print(job.id, file=out)
                    note(f"{operation} runs as job {job.id}: kkorthanc jobs wait {job.id}")
                return EXIT_OK
            wait_job(job, timeout=args.timeout, progress=not args.json and progress_wanted(args))
            result = job.result_resource(timeout=0)
        else:
            result = transform(source, **options)
        if args.json:
            print_json({"source": summary(source), "result": resource_json(result)}, out)
        else:
            print(f"{verb} {named(source)}", file=out)
            print(f"    as {named(result)}", file=out)
    return EXIT_OK


def cmd_anonymize(args: argparse.Namespace, out: TextIO) -> int:
    """An anonymized copy of a resource (``POST /{level}/{id}/anonymize``)."""
    return _transform(args, out, "anonymize")


def cmd_modify(args: argparse.Namespace, out: TextIO) -> int:
    """A modified copy of a resource (``POST /{level}/{id}/modify``)."""
    return _transform(args, out, "modify")


# -- delete ------------------------------------------------------------------------------------


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    """Delete resources and everything under them; every one is named first, so a typo
    deletes nothing."""
    if not args.yes:
        raise _UsageError(
            "delete removes the resources and everything under them for good: "
            "add --yes to confirm (nothing was deleted)"
        )
    deleted: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    with connect(args) as client:
        targets = [resolve(client, value, args.level) for value in args.ids]
        for resource in targets:
            try:
                counts = counts_below(resource, resource.statistics())
                described = summary(resource)
                line = named(resource)
                resource.delete()
            except NotFound:
                # gone meanwhile, e.g. with a patient named before it
                problems.append({"id": resource.id, "error": "no longer on the server"})
                note(f"{resource.level.lower()} {resource.id} is no longer on the server")
                continue
            deleted.append({**described, "counts": counts})
            if not args.json:
                print(f"deleted {line}" + (f": {counts_text(counts)}" if counts else ""), file=out)
    if args.json:
        print_json({"deleted": deleted, "problems": problems}, out)
    return EXIT_PARTIAL if problems else EXIT_OK


# -- labels ------------------------------------------------------------------------------------


def _labels_refused(exc: UnsupportedByServer) -> int:
    message = f"this server keeps no labels: {exc}"
    error_line(message, request_suffix(message))
    return EXIT_PARTIAL


def cmd_labels(args: argparse.Namespace, out: TextIO) -> int:
    """``labels list [LEVEL ID]``, ``labels add|remove LEVEL ID NAME...``."""
    names = list(getattr(args, "names", ()) or ())
    for name in names:
        check_label(name)
    if args.action == "list" and (args.level is None) != (args.id is None):
        raise _UsageError("labels list takes both LEVEL and ID, or neither")
    with connect(args) as client:
        try:
            # refused before anything else is sent when the server cannot keep labels
            client.require("Labels")
        except UnsupportedByServer as exc:
            return _labels_refused(exc)
        if args.id is None:
            labels = list(client.labels())
            if args.json:
                print_json({"labels": labels}, out)
            else:
                for label in labels:
                    print(label, file=out)
            return EXIT_OK
        resource = resolve(client, args.id, args.level)
        for name in names:
            if args.action == "add":
                resource.add_label(name)
            else:
                resource.remove_label(name)
        if args.json:
            print_json({**summary(resource), "labels": list(resource.labels)}, out)
        else:
            done = {"add": "added ", "remove": "removed "}.get(args.action, "")
            which = ", ".join(resource.labels) or "none"
            print(f"{done}{named(resource)}: labels {which}", file=out)
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------


def _transform_arguments(parser: argparse.ArgumentParser, *, anonymize: bool) -> None:
    id_argument(parser)
    parser.add_argument(
        "--replace",
        action="append",
        metavar="Tag=Value",
        help="set a tag in the copy; repeatable",
    )
    parser.add_argument(
        "--remove", action="append", metavar="Tag", help="remove a tag from the copy; repeatable"
    )
    parser.add_argument(
        "--keep",
        action="append",
        metavar="Tag",
        help="keep a tag as it is"
        + (" (anonymization would change or remove it)" if anonymize else "")
        + "; repeatable; UIDs need --force",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="allow changing or keeping identifiers (UIDs, PatientID)",
    )
    parser.add_argument(
        "--job",
        action="store_true",
        help="run as a server job and print its ID at once (not for instances)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="run as a job and wait for it, showing its progress"
    )
    timeout_argument(parser)


def register(commands: Any) -> None:
    anonymize = add_command(
        commands,
        "anonymize",
        "make an anonymized copy of a patient, study, series or instance",
        [
            f"kkorthanc anonymize {SAMPLE_STUDY}",
            "kkorthanc anonymize KK-0-0001 --keep PatientSex --wait",
        ],
        details="The copy gets new UIDs, PatientID and PatientName; the original stays. "
        "Prints the new resource.",
    )
    _transform_arguments(anonymize, anonymize=True)
    anonymize.set_defaults(handler=cmd_anonymize)

    modify = add_command(
        commands,
        "modify",
        "make a modified copy of a patient, study, series or instance",
        [
            f"kkorthanc modify {SAMPLE_STUDY} --replace StudyDescription=Research "
            "--remove InstitutionName",
            "kkorthanc modify KK-0-0001 --replace PatientName=DOE^JANE --job",
        ],
        details="Below the patient level the copy gets new UIDs (unless kept with --keep and "
        "--force); the original stays.",
    )
    _transform_arguments(modify, anonymize=False)
    modify.set_defaults(handler=cmd_modify)

    delete = add_command(
        commands,
        "delete",
        "delete resources and everything under them (needs --yes)",
        [f"kkorthanc delete --yes {SAMPLE_STUDY}", "kkorthanc delete --yes KK-0-0001 KK-0-0002"],
        details="Without --yes nothing is sent and the exit code is 2. Every identifier is "
        "looked up before anything is deleted; each deletion is printed.",
    )
    id_argument(delete, many=True)
    delete.add_argument("--yes", action="store_true", help="really delete")
    delete.set_defaults(handler=cmd_delete)

    labels = add_command(
        commands,
        "labels",
        "list, add or remove labels (Orthanc 1.12 with a database that keeps them)",
        [
            "kkorthanc labels list",
            f"kkorthanc labels add study {SAMPLE_STUDY} reviewed",
        ],
        details="A server that cannot keep labels is named as such (exit 1) before any "
        "label request is sent.",
    )
    actions = labels.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = add_command(
        actions,
        "list",
        "every label in use, or those of one resource",
        ["kkorthanc labels list", "kkorthanc labels list patient KK-0-0001"],
    )
    listing.add_argument("level", nargs="?", type=normalize_level, metavar="LEVEL")
    listing.add_argument("id", nargs="?", metavar="ID")
    listing.set_defaults(handler=cmd_labels)
    for action, help in (("add", "attach labels to"), ("remove", "detach labels from")):
        sub = add_command(
            actions,
            action,
            f"{help} a resource",
            [f"kkorthanc labels {action} study {SAMPLE_STUDY} reviewed urgent"],
        )
        sub.add_argument("level", type=normalize_level, metavar="LEVEL")
        sub.add_argument("id", metavar="ID")
        sub.add_argument("names", nargs="+", metavar="NAME", help="1 to 64 letters, digits, _ or -")
        sub.set_defaults(handler=cmd_labels)

