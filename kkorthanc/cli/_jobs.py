"""Server jobs: ``jobs list|wait|cancel``, and the waiting that other commands share."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ..client import Orthanc
from ..errors import JobTimeout, NotFound
from ..jobs import Job
from ._common import (
    EXIT_OK,
    add_command,
    connect,
    note,
    print_json,
    progress_wanted,
    snake_keys,
)

#: how a wait sleeps between polls (replaceable, e.g. when replaying recordings)
_sleep = time.sleep
#: the longest pause between two polls of a job, in seconds
MAX_POLL = 1.0


def job_json(job: Job) -> dict[str, Any]:
    """A job as JSON-ready data, snake_case keys throughout (its content's too)."""
    data = snake_keys(job.model_dump(mode="json"))
    data["content"] = snake_keys(job.content)
    return data


def job_line(job: Job) -> str:
    """``<id>  ResourceModification  Success 100%``, and the reason of a failure."""
    line = f"{job.id}  {job.type or '?'}  {job.state} {job.progress}%"
    if job.state == "Failure":
        line += f"  ({job.error_details or job.error_description or 'no reason given'})"
    return line


class _Status:
    """One line on standard error, rewritten as a job advances (only at a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.width = 0

    def show(self, job: Job) -> None:
        if not self.enabled:
            return
        text = f"job {job.id[:8]} {job.type or '?'}: {job.state} {job.progress}%"
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = max(self.width, len(text))

    def close(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def wait_job(job: Job, *, timeout: float | None, progress: bool) -> Job:
    """Poll ``job`` until it ends (``GET /jobs/{id}`` per poll), showing its progress.

    Polls as :meth:`Job.wait` does: at once, then with pauses growing from 0.05 s to
    :data:`MAX_POLL`; the polls sent depend only on the states the server reports.

    Raises:
        JobFailed: the job ended in failure (Orthanc's reason in the message).
        JobTimeout: it had not ended after ``timeout`` seconds.
        KeyboardInterrupt: after saying that the job goes on on the server.
    """
    status = _Status(progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    try:
        while True:
            if not job.finished:
                job.refresh()
            status.show(job)
            if job.state == "Success":
                return job
            job.raise_for_failure()
            pause = delay
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobTimeout(
                        f"job {job.id} ({job.type}) still {job.state} at {job.progress}% after "
                        f"{timeout:g} s; it goes on: kkorthanc jobs wait {job.id}"
                    )
                pause = min(delay, remaining)
            _sleep(pause)
            delay = min(delay * 1.5, MAX_POLL)
    except KeyboardInterrupt:
        status.close()
        note(f"stopped waiting; job {job.id} goes on (kkorthanc jobs cancel {job.id} stops it)")
        raise
    finally:
        status.close()


def timeout_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up waiting after this long (exit 1); by default wait until the job ends",
    )


# -- commands ----------------------------------------------------------------------------------


def _job(client: Orthanc, job_id: str) -> Job:
    try:
        return client.job(job_id)
    except NotFound:
        raise LookupError(
            f"no job {job_id} on this server: Orthanc forgets ended jobs after a while "
            "(JobsHistorySize) and every job when it restarts"
        ) from None


def cmd_jobs_list(args: argparse.Namespace, out: TextIO) -> int:
    """The jobs the server remembers (``GET /jobs?expand``), oldest first."""
    with connect(args) as client:
        found = sorted(client.jobs(), key=lambda job: str(job.creation_time or ""))
    if args.json:
        print_json([job_json(job) for job in found], out)
        return EXIT_OK
    for job in found:
        created = job.creation_time.isoformat(sep=" ") if job.creation_time else "?"
        print(f"{job_line(job)}  created {created}", file=out)
    print(f"{len(found)} job(s)", file=sys.stderr)
    return EXIT_OK


def cmd_jobs_wait(args: argparse.Namespace, out: TextIO) -> int:
    """Wait for a job to end; exit 0 on success, 1 on failure or timeout."""
    with connect(args) as client:
        job = _job(client, args.job_id)
        started = time.monotonic()
        wait_job(job, timeout=args.timeout, progress=not args.json and progress_wanted(args))
        waited = time.monotonic() - started
    if args.json:
        print_json(job_json(job), out)
    else:
        print(f"{job_line(job)}  (waited {waited:.1f} s)", file=out)
    return EXIT_OK


def cmd_jobs_cancel(args: argparse.Namespace, out: TextIO) -> int:
    """Cancel a job (``POST /jobs/{id}/cancel``); a job that already ended is left alone."""
    with connect(args) as client:
        job = _job(client, args.job_id)
        if job.finished:
            note(f"job {job.id} already ended ({job.state}): nothing to cancel")
        else:
            job.cancel()
    if args.json:
        print_json(job_json(job), out)
    else:
        print(job_line(job), file=out)
    return EXIT_OK


def register(commands: Any) -> None:
    jobs = add_command(
        commands,
        "jobs",
        "list, wait for or cancel the server's jobs",
        [
            "kkorthanc jobs list",
            "kkorthanc jobs wait 5f0c1d9e-8a7b-4c3d-9e2f-0a1b2c3d4e5f",
            "kkorthanc jobs cancel 5f0c1d9e-8a7b-4c3d-9e2f-0a1b2c3d4e5f",
        ],
    )
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = add_command(
        actions,
        "list",
        "the jobs the server remembers, oldest first",
        ["kkorthanc jobs list", "kkorthanc jobs list --json"],
    )
    listing.set_defaults(handler=cmd_jobs_list)
    wait = add_command(
        actions,
        "wait",
        "wait for a job to end, showing its progress",
        ["kkorthanc jobs wait 5f0c1d9e-8a7b-4c3d-9e2f-0a1b2c3d4e5f --timeout 600"],
        details="Exit 0 when it succeeds, 1 when it fails (with Orthanc's reason) or the "
        "time runs out.",
    )
    wait.add_argument("job_id", metavar="JOB_ID")
    timeout_argument(wait)
    wait.set_defaults(handler=cmd_jobs_wait)
    cancel = add_command(
        actions,
        "cancel",
        "cancel a job (it stops after its current step)",
        ["kkorthanc jobs cancel 5f0c1d9e-8a7b-4c3d-9e2f-0a1b2c3d4e5f"],
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(handler=cmd_jobs_cancel)
