"""What every command shares: exit codes, output, connecting, naming resources, the parser's
command factory."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from ..client import Orthanc
from ..errors import AmbiguousIdentifier, NotFound
from ..models import LEVELS as LEVEL_MODELS
from ..models import Instance, Patient, Resource, Series, Study, level_class

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

#: the level names the commands take, top down
LEVELS = tuple(cls.level.lower() for cls in LEVEL_MODELS)
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
RAW_TAGS = ("main_dicom_tags", "patient_main_dicom_tags")
#: the first study of the synthetic sample (``sandbox start --sample``), used in examples
SAMPLE_STUDY = "1.2.826.0.1.3680043.10.1234.68551291070766330988034577491"
#: the width descriptions in ``--help`` are wrapped to
HELP_WIDTH = 88
#: the longest error line, in characters (--debug shows the whole story)
MAX_ERROR = 400
#: candidates named in an "ambiguous" error line before "and N more"
SHOWN_CANDIDATES = 4


class _UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2); never leaves the package."""


# -- output ------------------------------------------------------------------------------------


def print_json(value: Any, out: TextIO) -> None:
    json.dump(value, out, ensure_ascii=False, indent=2, default=str)
    out.write("\n")


def note(message: str) -> None:
    """A line for the person at the terminal (standard error), not for the data stream."""
    print(f"kkorthanc: {message}", file=sys.stderr)


_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake(key: str) -> str:
    """``CountInstances`` -> ``count_instances``, ``TotalDiskSizeMB`` -> ``total_disk_size_mb``;
    a snake_case key stays as it is."""
    return _WORD_START.sub("_", key).lower()


#: mappings whose keys are data (DICOM keywords, level names, configured metadata names),
#: kept as the server wrote them
DATA_KEYED = frozenset(
    {
        "main_dicom_tags",
        "patient_main_dicom_tags",
        "requested_tags",
        "tags",
        "user_metadata",
        "user_content_type",
    }
)


def snake_keys(data: Mapping[str, Any], *, deep: bool = False) -> dict[str, Any]:
    """``data`` with snake_case keys, and with ``deep`` those of nested mappings too, except
    mappings keyed by data (:data:`DATA_KEYED`)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = snake(str(key))
        if deep and isinstance(value, Mapping) and name not in DATA_KEYED:
            value = snake_keys(value, deep=True)
        out[name] = value
    return out


def resource_json(resource: Resource, *, children: bool = True) -> dict[str, Any]:
    """A resource as JSON-ready data: level, Orthanc ID and every field by snake_case name.

    Child ID lists are kept when ``children`` is true. Costs no request.
    """
    field = resource.child_ids_field
    exclude = {field} if field is not None and not children else set()
    data: dict[str, Any] = {"level": resource.level}
    data.update(resource.model_dump(mode="json", exclude=exclude))
    return data


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def plural(count: int, cls: type[Resource]) -> str:
    return f"1 {cls.level.lower()}" if count == 1 else f"{count} {cls.collection}"


def positive_int(value: str) -> int:
    """An argument that must be a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def normalize_level(value: str) -> str:
    try:
        return level_class(value).level.lower()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_tags(pairs: Sequence[str], *, example: str = "PatientName='DOE*'") -> dict[str, str]:
    """``["Tag=value", ...]`` as a mapping; anything else is a usage error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise _UsageError(f"expected Tag=value, got {pair!r} (e.g. {example})")
        tags[name.strip()] = value
    return tags


# -- connecting --------------------------------------------------------------------------------


def connect(args: argparse.Namespace) -> Orthanc:
    """A client from ``--url/--user/--password``, falling back on ``$ORTHANC_*``."""
    url = args.url or os.environ.get("ORTHANC_URL") or "http://localhost:8042"
    user = args.user if args.user is not None else os.environ.get("ORTHANC_USERNAME")
    password = args.password if args.password is not None else os.environ.get("ORTHANC_PASSWORD")
    if password is not None and user is None:
        raise _UsageError("a password was given without a user name (--user or ORTHANC_USERNAME)")
    if user is not None and password is None:
        if not sys.stdin.isatty():
            raise _UsageError(
                f"no password for user {user!r}: set ORTHANC_PASSWORD (or use --password)"
            )
        password = getpass.getpass(f"password for {user} at {url}: ")
    auth = (user, password) if user is not None and password is not None else None
    deadline = args.request_timeout
    if deadline is None and os.environ.get("ORTHANC_REQUEST_TIMEOUT"):
        try:
            deadline = _seconds(os.environ["ORTHANC_REQUEST_TIMEOUT"])
        except argparse.ArgumentTypeError as exc:
            raise _UsageError(f"ORTHANC_REQUEST_TIMEOUT: {exc}") from None
    options: dict[str, Any] = {}
    if deadline is not None:  # the connect timeout stays the client's, bounded by the call's
        options = {"deadline": deadline, "timeout": (min(5.0, deadline), deadline)}
    try:
        client = Orthanc(url, auth=auth, **options)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    connected.append(client)
    return client


def _seconds(text: str) -> float:
    """A ``--request-timeout`` value: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def progress_wanted(args: argparse.Namespace) -> bool:
    """Progress on standard error: only for a person at a terminal, and not with --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


# -- naming resources ----------------------------------------------------------------------------


def _what(cls: type[Resource] | None) -> str:
    if cls is None:
        return "resource with Orthanc ID, PatientID or UID"
    return f"{cls.level.lower()} with Orthanc ID or " + ("PatientID" if cls is Patient else "UID")


def resolve(client: Orthanc, value: str, level: str | None = None) -> Resource:
    """The one resource named by an Orthanc ID, a PatientID or a DICOM UID.

    An Orthanc ID costs one request (``GET /{level}/{id}`` with a level, else
    ``POST /tools/bulk-content``, which says the level); anything else ``POST /tools/lookup``
    and one ``GET`` per match.

    Raises:
        LookupError: nothing has that identifier (at that level).
        AmbiguousIdentifier: several resources have it (a StudyInstanceUID under two
            PatientIDs, say); the message lists them with their patients.
    """
    cls = level_class(level) if level else None
    if ORTHANC_ID.match(value):
        if cls is not None:
            try:
                return client.get(cls.level, value)
            except NotFound:
                pass  # a PatientID may look like an Orthanc ID: look it up below
        else:
            found = client.get_many([value])
            if found:
                return found[0]
    matches = [item for item in client.lookup(value) if cls is None or isinstance(item, cls)]
    if not matches:
        raise LookupError(f"no {_what(cls)} {value!r}")
    if len(matches) > 1:
        raise ambiguous(client, value, matches)
    return matches[0]


def ambiguous(client: Orthanc, value: str, matches: Sequence[Resource]) -> AmbiguousIdentifier:
    """The error for an identifier that names several resources, each with its patient."""
    levels = {type(item) for item in matches}
    what = (
        plural(len(matches), matches[0].__class__)
        if len(levels) == 1
        else f"{len(matches)} resources of different levels (choose one with --level)"
    )
    shown = []
    for item in matches[:SHOWN_CANDIDATES]:
        patient_id, name = patient_of(item, client)
        who = f"patient {patient_label(patient_id, name)}"
        kind = f"{item.level.lower()} " if len(levels) > 1 else ""
        shown.append(f"{kind}{item.id} of {who}")
    more = len(matches) - len(shown)
    listing = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return AmbiguousIdentifier(
        f"{value!r} names {what}: {listing}; give the Orthanc ID of the one you mean", matches
    )


def patient_label(patient_id: str | None, name: str) -> str:
    """``KK-0-0001 Müller^Jürgen``, with an empty PatientID said as such."""
    shown = patient_id if patient_id else "(empty PatientID)"
    return f"{shown} {name}".strip()


def patient_of(resource: Resource, client: Orthanc | None = None) -> tuple[str | None, str]:
    """PatientID and name of the patient a resource belongs to.

    Studies carry their patient's tags: no request. Series and instances go up through
    their parents, which load together for every resource of the same result (one bulk
    request per level), or come for free from a forest.
    """
    if isinstance(resource, Patient):
        return resource.patient_id, str(resource.patient_name or "")
    node: Resource = resource
    while not isinstance(node, Study):
        linked = node.linked_parent()
        if linked is not None:
            node = linked
        elif isinstance(node, Instance):
            node = node.series
        else:
            assert isinstance(node, Series)
            node = node.study
    patient = node.linked_parent()
    if isinstance(patient, Patient):
        return patient.patient_id, str(patient.patient_name or "")
    tags = node.patient_main_dicom_tags
    if "PatientID" in tags:
        return tags.get("PatientID") or None, tags.get("PatientName", "")
    fetched = node.patient
    return fetched.patient_id, str(fetched.patient_name or "")


def patient_json(resource: Resource) -> dict[str, Any]:
    patient_id, name = patient_of(resource)
    return {"patient_id": patient_id, "patient_name": name}


def named(resource: Resource) -> str:
    """``study 1.2.3 (Orthanc ID ...) of patient KK-0-0001 Müller^Jürgen``: how a line names a
    resource (a series or instance may cost a request per level to reach its patient)."""
    uid = f" {resource.uid}" if resource.uid else ""
    text = f"{resource.level.lower()}{uid} (Orthanc ID {resource.id})"
    if isinstance(resource, Patient):
        return f"{text}, {resource.patient_name or 'no name'}"
    return f"{text} of patient {patient_label(*patient_of(resource))}"


def summary(resource: Resource) -> dict[str, Any]:
    """Level, Orthanc ID, UID and patient of a resource, JSON-ready."""
    data: dict[str, Any] = {"level": resource.level, "id": resource.id, "uid": resource.uid}
    if not isinstance(resource, Patient):
        data["patient"] = patient_json(resource)
    return data


def counts_below(resource: Resource, stats: Mapping[str, Any]) -> dict[str, int]:
    """Resources below, per level, from ``GET /{level}/{id}/statistics``:
    ``{"series": 2, "instances": 6}`` for a study."""
    counts: dict[str, int] = {}
    for cls in LEVEL_MODELS[resource.depth :]:
        value = stats.get(f"Count{cls.collection.capitalize()}")
        if value is not None:
            counts[cls.collection] = int(value)
    return counts


def counts_text(counts: Mapping[str, int]) -> str:
    """``2 series, 6 instances``."""
    return ", ".join(plural(count, level_class(name)) for name, count in counts.items())


def error_line(message: str, suffix: str = "") -> None:
    """``kkorthanc: error: <message><suffix>`` on one line of standard error; a long message
    is cut, never the suffix."""
    line = " ".join(str(message).split())
    room = MAX_ERROR - len(suffix)
    if len(line) > room:
        line = line[: room - 2].rstrip() + " …"
    print(f"kkorthanc: error: {line}{suffix}", file=sys.stderr)


#: the clients that ``connect`` made for the command under way
connected: list[Orthanc] = []
_NAMES_A_REQUEST = re.compile(r"\b(GET|POST|PUT|DELETE|HEAD) /")


def last_request() -> str | None:
    """``METHOD /path`` of the request the command sent last, ``None`` before any."""
    for client in reversed(connected):
        if client.last_request is not None:
            return client.last_request
    return None


def request_suffix(message: str) -> str:
    """`` (last request: GET /x)`` for an error line whose message names no request, once the
    command has sent one; empty otherwise."""
    endpoint = last_request()
    if endpoint is None or _NAMES_A_REQUEST.search(message):
        return ""
    return f" (last request: {endpoint.partition('?')[0]})"


# -- the parser -----------------------------------------------------------------------------------


def global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, connection: bool = True
) -> None:
    """The connection and output flags, accepted before or after the subcommand.

    Without ``connection`` the connection flags are still parsed but not shown, so that the
    command can refuse them in one line.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    def shown(text: str) -> str:
        return text if connection else argparse.SUPPRESS

    group = parser.add_argument_group("server and output" if connection else "output")
    group.add_argument(
        "--url",
        default=default(None),
        help=shown("server URL (default $ORTHANC_URL or localhost:8042)"),
    )
    group.add_argument(
        "--user", default=default(None), help=shown("user name ($ORTHANC_USERNAME)")
    )
    group.add_argument(
        "--password",
        default=default(None),
        help=shown("password; prefer $ORTHANC_PASSWORD: a flag shows in the process list"),
    )
    group.add_argument(
        "--request-timeout",
        type=_seconds,
        default=default(None),
        metavar="SECONDS",
        help=shown(
            "the longest one request may take, retries included ($ORTHANC_REQUEST_TIMEOUT; "
            "default: the client's, 125 s)"
        ),
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    group.add_argument(
        "--no-progress", action="store_true", default=default(False), help="no progress display"
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks"
    )


def add_command(
    group: Any,
    name: str,
    help: str,
    examples: Iterable[str],
    *,
    details: str = "",
    connection: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand with the shared flags, a description and examples in its ``--help``."""
    lines = [f"  {example}" for example in examples]
    epilog = ("examples:\n" if len(lines) > 1 else "example:\n") + "\n".join(lines)
    paragraphs = [f"{help[0].upper()}{help[1:]}.", *(details.split("\n\n") if details else ())]
    sub: argparse.ArgumentParser = group.add_parser(
        name,
        help=help,
        description="\n\n".join(textwrap.fill(text, HELP_WIDTH) for text in paragraphs),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(sub, suppress=True, connection=connection)
    return sub


def id_argument(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """The resource(s) a command acts on, and ``--level`` to say which level is meant."""
    parser.add_argument(
        "ids" if many else "id",
        nargs="+" if many else None,
        metavar="ID",
        help="Orthanc ID, PatientID or UID (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID)",
    )
    parser.add_argument(
        "--level",
        type=normalize_level,
        default=None,
        help="only look at this level (when a value could name resources of several)",
    )
