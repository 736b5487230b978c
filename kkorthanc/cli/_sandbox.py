"""``sandbox start|stop|status``: a local throwaway Orthanc that outlives the command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any, TextIO

from ..client import Orthanc
from ..errors import OrthancError, SandboxError
from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    _UsageError,
    add_command,
    note,
    print_json,
)

#: instances per synthetic patient: 2 studies x 2 series x 3 instances
PER_PATIENT = 12
DEFAULT_PATIENTS = 4
MAX_PATIENTS = 10_000
#: the flags that name a server to talk to: a sandbox is its own
_CONNECTION_FLAGS = (("url", "--url"), ("user", "--user"), ("password", "--password"))


def state_home() -> Path:
    """Where the command line keeps its state: ``$KKORTHANC_HOME`` or ``~/.kkorthanc``."""
    configured = os.environ.get("KKORTHANC_HOME")
    return Path(configured) if configured else Path.home() / ".kkorthanc"


def _state_path() -> Path:
    return state_home() / "sandbox.json"


def start_log_path() -> Path:
    """Where the log of a sandbox that failed to start is kept."""
    return state_home() / "sandbox-start.log"


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


def _answering(state: dict[str, Any]) -> tuple[bool, str, int | None]:
    """Whether the sandbox answers ``GET /system``, a short description, its instance count."""
    auth = (str(state.get("username", "")), str(state.get("password", "")))
    try:
        with Orthanc(str(state["url"]), auth=auth, timeout=(1.0, 5.0), retries=0) as probe:
            info = probe.system
            count = probe.statistics().get("CountInstances")
    except OrthancError as exc:
        return False, str(exc), None
    number = count if isinstance(count, int) else None
    return True, f"Orthanc {info.version}, {count if number is not None else '?'} instances", number


def _exports(state: dict[str, Any]) -> list[str]:
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


def _refuse_connection_flags(args: argparse.Namespace) -> None:
    given = [flag for name, flag in _CONNECTION_FLAGS if getattr(args, name, None) is not None]
    if given:
        raise _UsageError(
            f"sandbox {args.action} takes no {' or '.join(given)}: the sandbox is a server of "
            "its own on loopback (its address and credentials are printed by sandbox start)"
        )


def _log_cause(log: Path) -> str:
    """The first error Orthanc logged (``E1201 12:00:00.1 File.cpp:58] message``), if any."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith("E") and "] " in line:
            text = " ".join(line.split("] ", 1)[1].split())
            return re.sub(r":\s*\(", " (", text).rstrip(":")
    return ""


def _start_failure(exc: SandboxError, folder: Path) -> SandboxError:
    """A one-line error for a sandbox that did not start; its log is kept in a file."""
    head = str(exc).split("; log:", 1)[0].strip()
    log = folder / "orthanc.log"
    if not log.exists():
        return SandboxError(f"the sandbox did not start: {head}")
    kept = start_log_path()
    try:
        shutil.copyfile(log, kept)
    except OSError:
        kept = log
    cause = _log_cause(log)
    because = f": {cause}" if cause else ""
    return SandboxError(f"the sandbox did not start: {head}{because} (log: {kept})")


def cmd_sandbox_start(args: argparse.Namespace, out: TextIO) -> int:
    """Start a local Orthanc that outlives this command; print ``export`` lines for the shell."""
    from .. import sandbox as _sandbox

    _refuse_connection_flags(args)
    patients = args.sample
    if patients is not None and not 1 <= patients <= MAX_PATIENTS:
        raise _UsageError(f"--sample takes 1 to {MAX_PATIENTS} patients, not {patients}")
    state = _read_state()
    if state is not None and _pid_is_sandbox(state):
        alive, detail, _ = _answering(state)
        if alive:
            note(f"a sandbox already runs at {state['url']} ({detail})")
            if patients is not None:
                note(
                    "the sample was not loaded: it goes into a new sandbox only, and this one "
                    "keeps its data (for a new one: kkorthanc sandbox stop, then start again)"
                )
            _show_start({**state, "sample_loaded": False}, args, out)
            return EXIT_OK
        _stop_pid(int(state["pid"]))
    state_home().mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = state_home() / "sandbox"
    # leftovers of a sandbox that died without `stop` belong to us: start clean
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    box = _sandbox.Sandbox(name=args.name, folder=folder, http_port=args.port or 0)
    loaded = 0
    try:
        try:
            box.start()
        except SandboxError as exc:
            raise _start_failure(exc, folder) from exc
        if patients is not None:
            from .. import synthetic

            spec = synthetic.SyntheticSpec(patients=patients)
            note(f"loading {spec.total_instances} synthetic instances ({patients} patients)")
            loaded = box.load_synthetic(spec)
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
    note(
        f"sandbox started at {box.url} (pid {box.process.pid}, AET {box.aet} on DICOM port "
        f"{box.dicom_port}{f', {loaded} instances' if loaded else ''}); stop it with: "
        "kkorthanc sandbox stop"
    )
    _show_start({**state, "sample_loaded": patients is not None}, args, out)
    return EXIT_OK


def _show_start(state: dict[str, Any], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        print_json(state, out)
    else:
        for line in _exports(state):
            print(line, file=out)


def cmd_sandbox_stop(args: argparse.Namespace, out: TextIO) -> int:
    """Stop the sandbox by PID and delete its folder."""
    _refuse_connection_flags(args)
    state = _read_state()
    if state is None:
        note("no sandbox to stop")
        return EXIT_OK
    if _pid_is_sandbox(state):
        _stop_pid(int(state["pid"]))
    folder = state.get("folder")
    if isinstance(folder, str) and folder:
        shutil.rmtree(folder, ignore_errors=True)
    _state_path().unlink(missing_ok=True)
    if args.json:
        print_json({"stopped": True, **_public_state(state)}, out)
    else:
        print(f"stopped the sandbox at {state.get('url')}", file=out)
    return EXIT_OK


def cmd_sandbox_status(args: argparse.Namespace, out: TextIO) -> int:
    """Whether the sandbox's PID is alive and the server answers (exit 0), or not (1 or 3)."""
    _refuse_connection_flags(args)
    state = _read_state()
    if state is None:
        if args.json:
            print_json({"status": "absent"}, out)
        else:
            print("no sandbox (start one with: kkorthanc sandbox start --sample)", file=out)
        return EXIT_PARTIAL
    alive = _pid_is_sandbox(state)
    answering, detail, count = _answering(state) if alive else (False, "process not running", None)
    status = "running" if answering else ("not answering" if alive else "stopped")
    if args.json:
        print_json(
            {"status": status, "detail": detail, "instances": count, **_public_state(state)}, out
        )
    else:
        print(f"{status}: {state.get('url')} pid {state.get('pid')} ({detail})", file=out)
    return EXIT_OK if answering else EXIT_UNREACHABLE


def _patients(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sample takes a number of patients, not {value!r}"
        ) from None


def register(commands: Any) -> None:
    sandbox = add_command(
        commands,
        "sandbox",
        "a local throwaway Orthanc (needs /usr/sbin/Orthanc): start, stop, status",
        [
            'eval "$(kkorthanc sandbox start --sample)"',
            "kkorthanc sandbox status",
            "kkorthanc sandbox stop",
        ],
        details="The sandbox is its own server: its commands take no --url, --user or "
        "--password.",
        connection=False,
    )
    actions = sandbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = add_command(
        actions,
        "start",
        "start it and print export lines for the shell",
        [
            'eval "$(kkorthanc sandbox start --sample)"     # 4 patients, 48 instances',
            'eval "$(kkorthanc sandbox start --sample 100 --port 8042)"',
        ],
        details=(
            f"--sample N loads N synthetic patients (default {DEFAULT_PATIENTS}), each with 2 "
            f"studies of 2 series of 3 instances: {PER_PATIENT} instances per patient. The data "
            "is deterministic: the first patients, their UIDs and Orthanc IDs are the same "
            "whatever N.\n\nWhen a sandbox already runs it is reused as it is (exit 0, its "
            "export lines printed) and a sample is not loaded into it: stop it first for a "
            "fresh one.\n\nA sandbox that fails to start is one error line naming the cause "
            "and the file that keeps Orthanc's log (sandbox-start.log in $KKORTHANC_HOME, by "
            "default ~/.kkorthanc)."
        ),
        connection=False,
    )
    start.add_argument(
        "--sample",
        nargs="?",
        type=_patients,
        const=DEFAULT_PATIENTS,
        default=None,
        metavar="N",
        help=f"load N synthetic patients, {PER_PATIENT} instances each "
        f"(default N: {DEFAULT_PATIENTS}, 48 instances)",
    )
    start.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    start.add_argument("--name", default="kkorthanc", help="server name (default kkorthanc)")
    start.set_defaults(handler=cmd_sandbox_start)
    stop = add_command(
        actions,
        "stop",
        "stop it and delete its data",
        ["kkorthanc sandbox stop"],
        connection=False,
    )
    stop.set_defaults(handler=cmd_sandbox_stop)
    status = add_command(
        actions,
        "status",
        "is it running and answering? (exit 0 yes, 1 none, 3 not answering)",
        ["kkorthanc sandbox status --json"],
        connection=False,
    )
    status.set_defaults(handler=cmd_sandbox_status)
