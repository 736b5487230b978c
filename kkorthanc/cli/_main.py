"""The parser of every command, and the entry point that turns outcomes into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import (
    Forbidden,
    InvalidRequest,
    OrthancConnectionError,
    OrthancError,
    Unauthorized,
)
from . import _browse, _dicom, _edit, _jobs, _sandbox, _transfer
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _UsageError,
    connected,
    error_line,
    global_options,
    last_request,
    request_suffix,
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
    connected.clear()
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
    except InvalidRequest as exc:
        # arguments the library refused before sending them (queries, labels, layouts)
        if args.debug:
            raise
        error_line(str(exc))
        return EXIT_USAGE
    except (OrthancConnectionError, Unauthorized, Forbidden) as exc:
        # unreachable, refused credentials, and answers that are not HTTP the client can use
        # (deadlines, refused redirects, bodies that are not JSON or too large)
        if args.debug:
            raise
        hint = ""
        if isinstance(exc, Unauthorized):
            hint = " - the server refused the credentials (see --user and $ORTHANC_PASSWORD)"
        elif isinstance(exc, Forbidden):
            hint = " - the server does not let these credentials do this"
        error_line(f"{exc}{hint}", request_suffix(str(exc)))
        return EXIT_UNREACHABLE
    except (OrthancError, LookupError) as exc:
        if args.debug:
            raise
        if isinstance(exc, (KeyError, IndexError)) and not isinstance(exc, OrthancError):
            return _unexpected(exc)  # a key an answer lacked, not "nothing found"
        # nothing found, or several found, is a true answer: the request does not matter
        found = isinstance(exc, LookupError)
        error_line(str(exc), "" if found else request_suffix(str(exc)))
        return EXIT_PARTIAL
    except (ImportError, OSError) as exc:  # local: a missing extra, a file or folder
        if args.debug:
            raise
        error_line(str(exc))
        return EXIT_PARTIAL
    except ValueError as exc:
        if args.debug:
            raise
        if last_request() is None:  # input the library refused before anything was sent
            error_line(str(exc))
            return EXIT_USAGE
        # after the server answered: an answer of a shape the library did not expect
        error_line(f"cannot use the server's answer: {exc}", request_suffix(str(exc)))
        return EXIT_PARTIAL
    except Exception as exc:
        if args.debug:
            raise
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """One line for an error kkorthanc did not foresee, with the request it followed."""
    message = f"unexpected {type(exc).__name__}: {exc}"
    suffix = request_suffix(message)
    debug = "--debug shows the traceback"
    error_line(message, f"{suffix[:-1]}; {debug})" if suffix else f" ({debug})")
    return EXIT_PARTIAL
