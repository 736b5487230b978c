"""The parser of every command, and the entry point that turns outcomes into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import Forbidden, OrthancConnectionError, OrthancError, Unauthorized
from . import _browse, _dicom, _edit, _jobs, _sandbox, _transfer
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _UsageError,
    error_line,
    global_options,
)

OVERVIEW = """\
commands (each has --help with examples):
  tree [--depth LEVEL]                      the patient forest, with counts
  find LEVEL Tag=value... [--local]         resources matching DICOM tags, with their patient
  show ID                                   one resource: fields, patient, parents, counts
  upload PATH...                            DICOM files, folders, ZIP archives
  export (--patient|--study|--series|--instance ID)... [--all] DIR
  anonymize ID [--keep Tag]... [--job | --wait]
  modify ID [--replace Tag=Value]... [--remove Tag]... [--keep Tag]... [--job | --wait]
  delete ID... --yes
  labels list [LEVEL ID] | add LEVEL ID NAME... | remove LEVEL ID NAME...
  jobs list | wait JOB_ID | cancel JOB_ID
  modality list | echo NAME | find NAME LEVEL Tag=value...
           | move NAME LEVEL Tag=value... [--target AET] | store NAME ID...
  stats
  sandbox start [--sample [N]] | stop | status

ID is an Orthanc ID, a PatientID or a UID (StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID); one that several resources share is exit 1, naming them.

Exit codes: 0 ok, 1 partial failure (rejected uploads, failed exports or jobs, nothing found,
an ambiguous ID, a feature the server lacks) or another server error, 2 usage, 3 server
unreachable or credentials refused, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kkorthanc`` command."""
    parser = argparse.ArgumentParser(
        prog="kkorthanc",
        description="Browse, query, change and move data on an Orthanc DICOM server.",
        epilog=OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kkorthanc {__version__}")
    global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _browse.register(commands)
    _transfer.register(commands)
    _edit.register(commands)
    _jobs.register(commands)
    _dicom.register(commands)
    _browse.register_stats(commands)
    _sandbox.register(commands)
    return parser


def _quiet_stdout() -> None:
    """The reader of standard output went away (``kkorthanc tree | head``): send what is
    still buffered nowhere, so that the exit flush cannot fail too."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    try:
        return _run(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "tags"):
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
    except _UsageError as exc:
        error_line(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kkorthanc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except (OrthancConnectionError, Unauthorized, Forbidden) as exc:
        if args.debug:
            raise
        hint = ""
        if isinstance(exc, Unauthorized):
            hint = " - the server refused the credentials (see --user and $ORTHANC_PASSWORD)"
        elif isinstance(exc, Forbidden):
            hint = " - the server does not let these credentials do this"
        error_line(f"{exc}{hint}")
        return EXIT_UNREACHABLE
    except ValueError as exc:
        # bad input the library refused before doing anything (queries, layouts, levels)
        if args.debug:
            raise
        error_line(str(exc))
        return EXIT_USAGE
    except (OrthancError, LookupError, ImportError, OSError) as exc:
        if args.debug:
            raise
        error_line(str(exc))
        return EXIT_PARTIAL
    except Exception as exc:
        if args.debug:
            raise
        error_line(f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)")
        return EXIT_PARTIAL
