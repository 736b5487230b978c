"""Run the ``kkorthanc`` command line (or an example script) in a subprocess, under a cassette.

Tests start it as ``python -m tests.cli_runner [options] -- ARGS...``:

    --mode replay|record|live   replay or record HTTP with vcrpy, or talk to the server as is
    --cassette PATH             the recording to replay or write (replay and record modes)
    --port REAL=CANONICAL       in record mode, rewrite a sandbox's port in the recording
    --script FILE               run FILE as ``__main__`` with ARGS instead of the command line

The cassette settings are those of the ``cassette`` fixture in ``tests/conftest.py``, so a
subprocess replays exactly like an in-process test. In replay, job polls do not sleep: the
recorded answers come at once. The process exits with the command's code.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tests.conftest import PortMap, recorder


def _cassette(mode: str, path: str | None, ports: Sequence[str]) -> AbstractContextManager[Any]:
    if mode == "live":
        return nullcontext()
    if not path:
        raise SystemExit("cli_runner: --cassette is needed in replay and record modes")
    port_map = PortMap()
    for pair in ports:
        real, _, canonical = pair.partition("=")
        port_map.ports[int(real)] = int(canonical)
    return recorder(mode, port_map).use_cassette(path)


def _run_script(path: str, args: Sequence[str]) -> int:
    sys.argv = [path, *args]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 0


def _no_polling_delays() -> None:
    from kkorthanc import jobs
    from kkorthanc.cli import _jobs

    def no_sleep(seconds: float) -> None:
        pass

    jobs._sleep = no_sleep
    _jobs._sleep = no_sleep


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cli_runner")
    parser.add_argument("--mode", choices=("replay", "record", "live"), default="replay")
    parser.add_argument("--cassette")
    parser.add_argument("--port", action="append", default=[])
    parser.add_argument("--script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    args = list(options.args)
    if args[:1] == ["--"]:
        args = args[1:]
    if options.mode == "replay":
        _no_polling_delays()
    with _cassette(options.mode, options.cassette, options.port):
        if options.script:
            return _run_script(options.script, args)
        from kkorthanc.cli import main as cli_main

        return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
