"""The ``kkorthanc`` command line.

    kkorthanc tree [--depth patient|study|series|instance]
    kkorthanc find LEVEL Tag=value ... [--local] [--limit N]
    kkorthanc upload PATH ... [--workers N]
    kkorthanc export (--patient X | --study X | --series X | --instance X)... [--all] DIR
    kkorthanc stats
    kkorthanc sandbox start [--sample] | stop | status

The server comes from ``--url`` or ``$ORTHANC_URL`` (default ``http://localhost:8042``), the
credentials from ``--user`` / ``--password`` or ``$ORTHANC_USERNAME`` / ``$ORTHANC_PASSWORD``.
``--json`` prints machine-readable output on standard output.

Exit codes: 0 success; 1 partial failure (rejected uploads, failed exports, nothing found by
``sandbox status``) or another server error; 2 bad usage; 3 server unreachable or credentials
refused; 130 interrupted. Errors are one line on standard error, never a traceback (``--debug``
shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .client import Orthanc
from .errors import Forbidden, OrthancConnectionError, OrthancError, Unauthorized
from .models import LEVELS as LEVEL_MODELS
from .models import Patient, Resource, level_class

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

#: the level names the commands take, top down
LEVELS = tuple(cls.level.lower() for cls in LEVEL_MODELS)
_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_RAW_TAGS = ("main_dicom_tags", "patient_main_dicom_tags")


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""


# -- output helpers ------------------------------------------------------------------------------


def _print_json(value: Any, out: TextIO) -> None:
    json.dump(value, out, ensure_ascii=False, indent=2, default=str)
    out.write("\n")


def resource_json(resource: Resource, *, children: bool = True) -> dict[str, Any]:
    """A resource as JSON-ready data: level, Orthanc ID and every field by snake_case name.

    Child ID lists are kept when ``children`` is true. Costs no request.
    """
    field = resource.child_ids_field
    exclude = {field} if field is not None and not children else set()
    data: dict[str, Any] = {"level": resource.level}
    data.update(resource.model_dump(mode="json", exclude=exclude))
    return data


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def _normalize_level(value: str) -> str:
    try:
        return level_class(value).level.lower()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- connecting --------------------------------------------------------------------------------


def connect(args: argparse.Namespace) -> Orthanc:
    """A client from ``--url/--user/--password``, falling back on ``$ORTHANC_*``."""
    url = args.url or os.environ.get("ORTHANC_URL") or "http://localhost:8042"
    user = args.user if args.user is not None else os.environ.get("ORTHANC_USERNAME")
    password = args.password if args.password is not None else os.environ.get("ORTHANC_PASSWORD")
    if password is not None and user is None:
        raise UsageError("a password was given without a user name (--user or ORTHANC_USERNAME)")
    if user is not None and password is None:
        if not sys.stdin.isatty():
            raise UsageError(
                f"no password for user {user!r}: set ORTHANC_PASSWORD (or use --password)"
            )
        password = getpass.getpass(f"password for {user} at {url}: ")
    auth = (user, password) if user is not None and password is not None else None
    try:
        return Orthanc(url, auth=auth)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


# -- tree --------------------------------------------------------------------------------------


def _tree_json(resource: Resource, depth: int) -> dict[str, Any]:
    data = resource_json(resource, children=False)
    for name in _RAW_TAGS:
        data.pop(name, None)
    child_class = resource.child_class()
    if child_class is None:
        return data
    data[f"num_{child_class.collection}"] = len(resource.child_ids)
    linked = resource.linked_children()
    if linked is not None and depth > 1:
        data[child_class.collection] = [_tree_json(child, depth - 1) for child in linked]
    return data


def cmd_tree(args: argparse.Namespace, out: TextIO) -> int:
    """Build the forest down to ``--depth`` and print it."""
    from . import display
    from .forest import build_patient_forest

    with connect(args) as client:
        forest = build_patient_forest(client, depth=args.depth)
        depth = level_class(args.depth).depth
        if args.json:
            _print_json({"patients": [_tree_json(p, depth) for p in forest.patients]}, out)
        else:
            display.print_tree(forest, max_depth=depth, file=out)
    return EXIT_OK


# -- find --------------------------------------------------------------------------------------


def _parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"expected Tag=value, got {pair!r} (e.g. PatientName='DOE*')")
        tags[name.strip()] = value
    return tags


def cmd_find(args: argparse.Namespace, out: TextIO) -> int:
    """Resources matching ``Tag=value`` pairs, on the server or in a local forest."""
    from . import display
    from . import query as _query

    tags = _parse_tags(args.tags)
    # refuse a bad query before connecting: the same rules serve both engines
    _query.compile_query(args.level, tags, case_sensitive=args.case_sensitive)
    with connect(args) as client:
        if args.local:
            from .forest import build_patient_forest

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
            _print_json([resource_json(item) for item in found], out)
        else:
            for item in found:
                print(f"{item.id}  {display.describe(item)}", file=out)
            noun = level_class(args.level).level.lower()
            print(f"{len(found)} {noun} match(es)", file=sys.stderr)
    return EXIT_OK


# -- upload ------------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace, out: TextIO) -> int:
    """Upload files, folders or archives; exit 1 when anything was rejected or failed."""
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing[0]}")
    with connect(args) as client:
        report = client.upload(
            [Path(path) for path in args.paths], workers=args.workers, progress=_progress(args)
        )
    counts = report.counts
    problems = report.rejected + report.failed
    if args.json:
        _print_json(
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


# -- export ------------------------------------------------------------------------------------


def _resolve(client: Orthanc, level: str, value: str) -> Resource:
    """A resource from an Orthanc ID (``GET``) or a PatientID/UID (``POST /tools/lookup``)."""
    cls = level_class(level)
    if _ORTHANC_ID.match(value):
        return client.get(level, value)
    matches = [item for item in client.lookup(value) if isinstance(item, cls)]
    if not matches:
        what = cls.uid_keyword if cls is Patient else "UID"
        raise LookupError(f"no {level} with Orthanc ID or {what} {value!r}")
    return matches[0]


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    """Write the instances of the selected resources under DIR."""
    selectors = [(level, value) for level in LEVELS for value in getattr(args, level) or ()]
    if not selectors and not args.all:
        raise UsageError(
            "nothing to export: give --patient, --study, --series, --instance or --all"
        )
    with connect(args) as client:
        resources: list[Resource] = []
        if args.all:
            resources.extend(client.patients())
        resources.extend(_resolve(client, level, value) for level, value in selectors)
        options: dict[str, Any] = {"progress": _progress(args), "workers": args.workers}
        if args.layout:
            options["layout"] = args.layout
        report = client.export(resources, Path(args.folder), **options)
    counts = report.counts
    if args.json:
        _print_json(
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


# -- stats -------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """Server identity and counts: ``GET /system`` and ``GET /statistics``, two requests."""
    with connect(args) as client:
        info = client.system
        stats = client.statistics()
    if args.json:
        _print_json(
            {"url": client.url, "system": info.model_dump(mode="json"), "statistics": stats}, out
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
        rows.append(("disk", _human_size(float(disk))))
    for name, value in rows:
        print(f"{name:<10} {value}", file=out)
    return EXIT_OK


# -- sandbox -----------------------------------------------------------------------------------


def state_home() -> Path:
    """Where the command line keeps its state: ``$KKORTHANC_HOME`` or ``~/.kkorthanc``."""
    configured = os.environ.get("KKORTHANC_HOME")
    return Path(configured) if configured else Path.home() / ".kkorthanc"


def _state_path() -> Path:
    return state_home() / "sandbox.json"


def _read_state() -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OrthancError(f"cannot read {_state_path()}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _write_state(state: dict[str, Any]) -> None:
    path = _state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)


def _pid_is_sandbox(state: dict[str, Any]) -> bool:
    """Whether the recorded PID is alive and still the Orthanc started with our config."""
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            status = (proc / "stat").read_text()
            if status.rpartition(")")[2].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return str(state.get("folder", "\0")) in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answering(state: dict[str, Any]) -> tuple[bool, str]:
    """Whether the sandbox answers ``GET /system``; a short description either way."""
    auth = (str(state.get("username", "")), str(state.get("password", "")))
    try:
        with Orthanc(str(state["url"]), auth=auth, timeout=(1.0, 5.0), retries=0) as probe:
            info = probe.system
            count = probe.statistics().get("CountInstances", "?")
    except OrthancError as exc:
        return False, str(exc)
    return True, f"Orthanc {info.version}, {count} instances"


def _exports(state: dict[str, Any]) -> list[str]:
    import shlex

    return [
        f"export ORTHANC_URL={shlex.quote(str(state['url']))}",
        f"export ORTHANC_USERNAME={shlex.quote(str(state['username']))}",
        f"export ORTHANC_PASSWORD={shlex.quote(str(state['password']))}",
    ]


def _public_state(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "password"}


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    state = {"pid": pid, "folder": ""}
    while time.monotonic() < deadline:
        if not _pid_is_sandbox(state):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def cmd_sandbox_start(args: argparse.Namespace, out: TextIO) -> int:
    """Start a local Orthanc that outlives this command; print ``export`` lines for the shell."""
    from . import sandbox as _sandbox

    state = _read_state()
    if state is not None and _pid_is_sandbox(state):
        alive, _ = _answering(state)
        if alive:
            print(f"kkorthanc: a sandbox already runs at {state['url']}", file=sys.stderr)
            _show_start(state, args, out)
            return EXIT_OK
        _stop_pid(int(state["pid"]))
    state_home().mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = state_home() / "sandbox"
    # leftovers of a sandbox that died without `stop` belong to us: start clean
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    box = _sandbox.Sandbox(name=args.name, folder=folder, http_port=args.port or 0)
    try:
        box.start()
        if args.sample:
            from . import synthetic

            box.load_synthetic(synthetic.SAMPLE)
    except BaseException:
        box.stop()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # the server must outlive this process
    box.detach()
    assert box.process is not None
    state = {
        "url": box.url,
        "pid": box.process.pid,
        "folder": str(folder),
        "username": box.username,
        "password": box.password,
        "http_port": box.http_port,
        "dicom_port": box.dicom_port,
        "aet": box.aet,
    }
    _write_state(state)
    print(
        f"kkorthanc: sandbox started at {box.url} (pid {box.process.pid}, AET {box.aet} on "
        f"DICOM port {box.dicom_port}); stop it with: kkorthanc sandbox stop",
        file=sys.stderr,
    )
    _show_start(state, args, out)
    return EXIT_OK


def _show_start(state: dict[str, Any], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _print_json(state, out)
    else:
        for line in _exports(state):
            print(line, file=out)


def cmd_sandbox_stop(args: argparse.Namespace, out: TextIO) -> int:
    """Stop the sandbox by PID and delete its folder."""
    state = _read_state()
    if state is None:
        print("kkorthanc: no sandbox to stop", file=sys.stderr)
        return EXIT_OK
    if _pid_is_sandbox(state):
        _stop_pid(int(state["pid"]))
    folder = state.get("folder")
    if isinstance(folder, str) and folder:
        shutil.rmtree(folder, ignore_errors=True)
    _state_path().unlink(missing_ok=True)
    if args.json:
        _print_json({"stopped": True, **_public_state(state)}, out)
    else:
        print(f"stopped the sandbox at {state.get('url')}", file=out)
    return EXIT_OK


def cmd_sandbox_status(args: argparse.Namespace, out: TextIO) -> int:
    """Whether the sandbox's PID is alive and the server answers (exit 0), or not (1 or 3)."""
    state = _read_state()
    if state is None:
        if args.json:
            _print_json({"status": "absent"}, out)
        else:
            print("no sandbox (start one with: kkorthanc sandbox start --sample)", file=out)
        return EXIT_PARTIAL
    alive = _pid_is_sandbox(state)
    answering, detail = _answering(state) if alive else (False, "process not running")
    status = "running" if answering else ("not answering" if alive else "stopped")
    if args.json:
        _print_json({"status": status, "detail": detail, **_public_state(state)}, out)
    else:
        print(f"{status}: {state.get('url')} pid {state.get('pid')} ({detail})", file=out)
    return EXIT_OK if answering else EXIT_UNREACHABLE


# -- parser ------------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The connection and output flags, accepted before or after the subcommand."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("server and output")
    group.add_argument(
        "--url", default=default(None), help="server URL (default $ORTHANC_URL or localhost:8042)"
    )
    group.add_argument("--user", default=default(None), help="user name ($ORTHANC_USERNAME)")
    group.add_argument(
        "--password",
        default=default(None),
        help="password; prefer $ORTHANC_PASSWORD: a flag shows in the process list",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    group.add_argument(
        "--no-progress", action="store_true", default=default(False), help="no progress bars"
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kkorthanc`` command."""
    parser = argparse.ArgumentParser(
        prog="kkorthanc",
        description="Browse, query and move data on an Orthanc DICOM server.",
        epilog="Exit codes: 0 ok, 1 partial failure, 2 usage, 3 server unreachable or "
        "credentials refused.",
    )
    parser.add_argument("--version", action="version", version=f"kkorthanc {__version__}")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _global_options(sub, suppress=True)
        return sub

    tree = command("tree", "print the patient forest")
    tree.add_argument(
        "--depth",
        type=_normalize_level,
        default="series",
        metavar="LEVEL",
        help="deepest level to load and print: patient, study, series (default) or instance",
    )
    tree.set_defaults(handler=cmd_tree)

    find = command("find", "find resources by DICOM tags")
    find.add_argument(
        "level", type=_normalize_level, metavar="LEVEL", help="patient, study, series or instance"
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

    upload = command("upload", "upload DICOM files, folders or ZIP archives")
    upload.add_argument("paths", nargs="+", metavar="PATH")
    upload.add_argument("--workers", type=int, default=4, help="parallel uploads (default 4)")
    upload.set_defaults(handler=cmd_upload)

    export = command("export", "write instances to a folder tree")
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
    export.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    export.add_argument("folder", metavar="DIR")
    export.set_defaults(handler=cmd_export)

    stats = command("stats", "server version and counts")
    stats.set_defaults(handler=cmd_stats)

    sandbox = command("sandbox", "a local throwaway Orthanc (needs /usr/sbin/Orthanc)")
    actions = sandbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start it and print export lines for the shell")
    _global_options(start, suppress=True)
    start.add_argument("--sample", action="store_true", help="load 48 synthetic instances")
    start.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    start.add_argument("--name", default="kkorthanc", help="server name (default kkorthanc)")
    start.set_defaults(handler=cmd_sandbox_start)
    stop = actions.add_parser("stop", help="stop it and delete its data")
    _global_options(stop, suppress=True)
    stop.set_defaults(handler=cmd_sandbox_stop)
    status = actions.add_parser("status", help="is it running and answering?")
    _global_options(status, suppress=True)
    status.set_defaults(handler=cmd_sandbox_status)
    return parser


# -- entry point -------------------------------------------------------------------------------


def _error(message: str) -> None:
    first = " ".join(str(message).split())
    print(f"kkorthanc: error: {first}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "find":
        # `find study --local Tag=value`: argparse ends the tags at the first option
        pairs = [item for item in extra if "=" in item and not item.startswith("-")]
        args.tags = [*args.tags, *pairs]
        extra = [item for item in extra if item not in pairs]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.handler(args, sys.stdout)
        sys.stdout.flush()
        return code
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kkorthanc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`kkorthanc tree | head`): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PARTIAL
    except (OrthancConnectionError, Unauthorized, Forbidden) as exc:
        if args.debug:
            raise
        hint = ""
        if isinstance(exc, Unauthorized):
            hint = " - the server refused the credentials (see --user and $ORTHANC_PASSWORD)"
        elif isinstance(exc, Forbidden):
            hint = " - the server does not let these credentials do this"
        _error(f"{exc}{hint}")
        return EXIT_UNREACHABLE
    except ValueError as exc:
        # bad input the library refused before doing anything (queries, layouts, levels)
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_USAGE
    except (OrthancError, LookupError, ImportError, OSError) as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_PARTIAL
    except Exception as exc:
        if args.debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)")
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
