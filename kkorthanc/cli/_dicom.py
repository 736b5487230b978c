"""Remote DICOM nodes the server knows: ``modality list|echo|find|move|store``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..client import Orthanc
from ..errors import UnknownModality
from ..modalities import FindAnswer, Modality
from ..models import level_class
from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    SAMPLE_STUDY,
    add_command,
    connect,
    error_line,
    named,
    normalize_level,
    parse_tags,
    patient_label,
    print_json,
    progress_wanted,
    resolve,
    snake_keys,
    summary,
)
from ._jobs import job_json, timeout_argument, wait_job


def _modality(client: Orthanc, name: str) -> Modality:
    """The modality called ``name``; an unknown name is told with the names the server knows."""
    try:
        return client.modality(name)
    except UnknownModality as exc:
        known = ", ".join(sorted(m.name for m in client.modalities())) or "none"
        raise UnknownModality(f"{exc} (it knows: {known})") from exc


def modality_json(modality: Modality) -> dict[str, Any]:
    return snake_keys(modality.model_dump(mode="json"))


def _describe(modality: Modality) -> str:
    return f"{modality.name} ({modality.aet}@{modality.host}:{modality.port})"


# -- list and echo -------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """The modalities configured on the server (``GET /modalities?expand``)."""
    with connect(args) as client:
        found = client.modalities()
    if args.json:
        print_json([modality_json(m) for m in found], out)
    else:
        for modality in found:
            print(_describe(modality), file=out)
    return EXIT_OK


def cmd_echo(args: argparse.Namespace, out: TextIO) -> int:
    """C-ECHO: exit 0 when the modality answers, 1 with the reason when it does not."""
    with connect(args) as client:
        modality = _modality(client, args.name)
        modality.echo(timeout=args.dicom_timeout)
    if args.json:
        print_json({"modality": modality_json(modality), "echo": "ok"}, out)
    else:
        print(f"C-ECHO {_describe(modality)}: ok", file=out)
    return EXIT_OK


# -- find and move -------------------------------------------------------------------------------


def answer_json(answer: FindAnswer) -> dict[str, Any]:
    return answer.model_dump(mode="json")


def answer_line(answer: FindAnswer) -> str:
    """The level's identifier, then what describes the answer, then its patient."""
    cls = level_class(answer.level)
    uid = getattr(answer, cls.uid_field) or "?"
    if answer.level == "Patient":
        parts = [str(answer.patient_name or ""), _iso(answer.patient_birth_date)]
    elif answer.level == "Study":
        parts = [
            _iso(answer.study_date) or "????-??-??",
            answer.study_description or "",
            answer.accession_number or "",
            "/".join(answer.modalities_in_study or ()),
        ]
    elif answer.level == "Series":
        number = f"#{answer.series_number}" if answer.series_number is not None else "#?"
        parts = [number, answer.modality or "?", answer.series_description or ""]
    else:
        number = f"#{answer.instance_number}" if answer.instance_number is not None else "#?"
        parts = [number]
    line = "  ".join(part for part in [uid, *parts] if part)
    if answer.level != "Patient":
        line += f"  [patient {patient_label(answer.patient_id, str(answer.patient_name or ''))}]"
    return line


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None else ""


def _query_text(tags: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in tags.items()) or "an empty query"


def cmd_find(args: argparse.Namespace, out: TextIO) -> int:
    """C-FIND on the modality; each answer on a line (exit 0 even with none)."""
    tags = parse_tags(args.tags)
    with connect(args) as client:
        modality = _modality(client, args.name)
        answers = modality.find(args.level, tags, timeout=args.dicom_timeout)
    if args.json:
        print_json([answer_json(a) for a in answers], out)
    else:
        for answer in answers:
            print(answer_line(answer), file=out)
        print(f"{len(answers)} answer(s) from {modality.name}", file=sys.stderr)
    return EXIT_OK


def cmd_move(args: argparse.Namespace, out: TextIO) -> int:
    """C-FIND on the modality, then C-MOVE of every answer to ``--target`` (this server by
    default), as one server job."""
    tags = parse_tags(args.tags)
    with connect(args) as client:
        modality = _modality(client, args.name)
        answers = modality.find(args.level, tags, timeout=args.dicom_timeout)
        noun = level_class(args.level)
        if not answers:
            error_line(
                f"{modality.name} has no {noun.level.lower()} matching {_query_text(tags)}: "
                "nothing to move"
            )
            return EXIT_PARTIAL
        target = args.target or client.system.dicom_aet
        job = modality.retrieve(answers, target=target)
        what = f"{len(answers)} {noun.collection if len(answers) != 1 else noun.level.lower()}"
        if args.no_wait:
            if args.json:
                print_json({"answers": len(answers), "target": target, "job": job_json(job)}, out)
            else:
                print(job.id, file=out)
                print(
                    f"kkorthanc: moving {what} from {modality.name} to {target} as job {job.id}: "
                    f"kkorthanc jobs wait {job.id}",
                    file=sys.stderr,
                )
            return EXIT_OK
        wait_job(job, timeout=args.timeout, progress=not args.json and progress_wanted(args))
    if args.json:
        print_json({"answers": len(answers), "target": target, "job": job_json(job)}, out)
    else:
        print(f"moved {what} from {modality.name} to {target} (job {job.id})", file=out)
    return EXIT_OK


# -- store -------------------------------------------------------------------------------------


def cmd_store(args: argparse.Namespace, out: TextIO) -> int:
    """C-STORE of local resources to the modality, as a server job; exit 1 when instances
    were not accepted."""
    with connect(args) as client:
        modality = _modality(client, args.name)
        resources = [resolve(client, value, args.level) for value in args.ids]
        job = modality.store(resources, as_job=True)
        if args.no_wait:
            if args.json:
                described = [summary(resource) for resource in resources]
                print_json({"resources": described, "job": job_json(job)}, out)
            else:
                print(job.id, file=out)
                print(
                    f"kkorthanc: sending to {modality.name} as job {job.id}: "
                    f"kkorthanc jobs wait {job.id}",
                    file=sys.stderr,
                )
            return EXIT_OK
        wait_job(job, timeout=args.timeout, progress=not args.json and progress_wanted(args))
        sent = int(job.content.get("InstancesCount") or 0)
        failed = int(job.content.get("FailedInstancesCount") or 0)
        lines = [named(resource) for resource in resources] if not args.json else []
        described = [summary(resource) for resource in resources] if args.json else []
    if args.json:
        print_json(
            {
                "resources": described,
                "instances": sent,
                "failed_instances": failed,
                "job": job_json(job),
            },
            out,
        )
    else:
        for line in lines:
            print(f"sent {line}", file=out)
        print(
            f"{sent - failed} of {sent} instances stored by {_describe(modality)}", file=out
        )
    if failed:
        error_line(f"{failed} of {sent} instances were not accepted by {modality.name}")
        return EXIT_PARTIAL
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------


def _dicom_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dicom-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="DICOM network timeout for this operation (the server's default otherwise)",
    )


def _query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the modality's name on the server")
    parser.add_argument(
        "level", type=normalize_level, metavar="LEVEL", help="patient, study, series or instance"
    )
    parser.add_argument(
        "tags",
        nargs="*",
        metavar="Tag=value",
        help="DICOM keyword or snake_case name = value, with * ? wildcards and A-B date ranges",
    )
    _dicom_timeout(parser)


def register(commands: Any) -> None:
    modality = add_command(
        commands,
        "modality",
        "talk to the DICOM nodes the server knows: list, echo, find, move, store",
        [
            "kkorthanc modality list",
            "kkorthanc modality echo pacs",
            "kkorthanc modality find pacs study PatientID='KK-*'",
            "kkorthanc modality move pacs study PatientID=KK-0-0001",
            f"kkorthanc modality store pacs {SAMPLE_STUDY}",
        ],
    )
    actions = modality.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = add_command(
        actions, "list", "the modalities configured on the server", ["kkorthanc modality list"]
    )
    listing.set_defaults(handler=cmd_list)

    echo = add_command(
        actions,
        "echo",
        "C-ECHO a modality (exit 1 with the reason when it does not answer)",
        ["kkorthanc modality echo pacs --dicom-timeout 5"],
    )
    echo.add_argument("name", metavar="NAME", help="the modality's name on the server")
    _dicom_timeout(echo)
    echo.set_defaults(handler=cmd_echo)

    find = add_command(
        actions,
        "find",
        "C-FIND on a modality, each answer with its patient",
        ["kkorthanc modality find pacs study StudyDate=20200101- ModalitiesInStudy=CT"],
    )
    _query_arguments(find)
    find.set_defaults(handler=cmd_find)

    move = add_command(
        actions,
        "move",
        "C-MOVE what a C-FIND on a modality answers, to this server or another AET",
        [
            "kkorthanc modality move pacs study PatientID=KK-0-0001",
            "kkorthanc modality move pacs series Modality=CT --target WORKSTATION --no-wait",
        ],
        details="The move is one server job, waited for with its progress unless --no-wait. "
        "Nothing matching is exit 1.",
    )
    _query_arguments(move)
    move.add_argument(
        "--target", metavar="AET", default=None, help="where to move to (default: this server)"
    )
    move.add_argument("--no-wait", action="store_true", help="print the job's ID and return")
    timeout_argument(move)
    move.set_defaults(handler=cmd_move)

    store = add_command(
        actions,
        "store",
        "C-STORE resources of this server to a modality",
        [f"kkorthanc modality store pacs {SAMPLE_STUDY} KK-0-0002"],
        details="The transfer is one server job, waited for with its progress unless "
        "--no-wait. Instances the modality refuses make the exit code 1.",
    )
    store.add_argument("name", metavar="NAME", help="the modality's name on the server")
    store.add_argument(
        "ids",
        nargs="+",
        metavar="ID",
        help="Orthanc ID, PatientID or UID of each resource to send",
    )
    store.add_argument(
        "--level", type=normalize_level, default=None, help="only look at this level"
    )
    store.add_argument("--no-wait", action="store_true", help="print the job's ID and return")
    timeout_argument(store)
    store.set_defaults(handler=cmd_store)
