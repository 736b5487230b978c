"""The README's Python code, the demo's tour and the example notebook, run for real.

The README quickstart and the demo's ``tour()`` run in-process against the shared sample
server (replayed or live). The percent-format notebook runs as a script in a subprocess through
``tests.cli_runner``, with its own cassette. Starting their own sandboxes (the README's sandbox
block, ``make demo``, the notebook without ``ORTHANC_URL``) needs a real Orthanc: live only.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import kkorthanc
from kkorthanc import Orthanc

from .conftest import PORT_MAP, ROOT, cassette_path

README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def no_cached_forest() -> None:
    """Every test builds its own forest: one cached by an earlier test would change the
    requests a recording holds."""
    from kkorthanc.forest import build_patient_forest

    build_patient_forest.cache_clear()


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def redirected(client: Orthanc) -> type[Orthanc]:
    """An ``Orthanc`` class that connects to ``client``'s server whatever URL it is given."""
    auth = client._transport.session.auth
    assert isinstance(auth, tuple)
    url = client.url

    class Redirected(Orthanc):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("auth", None)
            kwargs.pop("token", None)
            super().__init__(url, auth=(str(auth[0]), str(auth[1])), **kwargs)

    return Redirected


def test_readme_quickstart_runs(
    client: Orthanc, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = [b for b in python_blocks(README.read_text()) if "Sandbox(" not in b]
    assert blocks, "the README has a ```python quickstart"
    assert "Orthanc(" in blocks[0]
    monkeypatch.setattr(kkorthanc, "Orthanc", redirected(client))
    kkorthanc.build_patient_forest.cache_clear()
    namespace = {"__name__": "readme"}
    for number, block in enumerate(blocks):  # in order, sharing names like a reader would
        exec(compile(block, f"README.md python block {number + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert client.system.version in out
    for name in ("王", "Müller", "山田", "DOE"):
        assert name in out


@pytest.mark.live_only
def test_readme_sandbox_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = [b for b in python_blocks(README.read_text()) if "Sandbox(" in b]
    assert blocks, "the README shows a throwaway server"
    for block in blocks:
        exec(compile(block, "README.md sandbox", "exec"), {"__name__": "readme"})
    assert "Patient" in capsys.readouterr().out


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_tour(client: Orthanc, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_example("demo")
    demo.tour(client)
    out = capsys.readouterr().out
    assert "4 patients, 8 studies, 16 series, 48 instances" in out
    assert "├── " in out and "王^小明" in out
    server = re.search(r"server \(POST /tools/find, 1 request\): (\d+) studies", out)
    local = re.search(r"forest \(local, 0 requests\): (\d+)", out)
    assert server and local and server.group(1) == local.group(1) != "0"
    assert re.search(r"^CT\s+\d+\s+\d+\s+\d+$", out, flags=re.MULTILINE)


def run_notebook(
    mode: str, env: dict[str, str], cassette: Path | None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tests.cli_runner", "--mode", mode]
    if cassette is not None:
        argv += ["--cassette", str(cassette)]
        for real, canonical in PORT_MAP.ports.items():
            argv += ["--port", f"{real}={canonical}"]
    argv += ["--script", str(EXAMPLES / "walk_forest.py")]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def base_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORTHANC_", "KK_"))}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@pytest.mark.no_cassette
def test_walk_forest_notebook_runs(
    client: Orthanc, kk_mode: str, request: pytest.FixtureRequest
) -> None:
    auth = client._transport.session.auth
    assert isinstance(auth, tuple)
    env = {
        **base_env(),
        "ORTHANC_URL": client.url,
        "ORTHANC_USERNAME": str(auth[0]),
        "ORTHANC_PASSWORD": str(auth[1]),
    }
    cassette = None
    if kk_mode != "live":
        cassette = cassette_path(request.node)
        if kk_mode == "replay" and not cassette.exists():
            pytest.fail(f"no recording at {cassette.relative_to(ROOT)}: run pytest --record")
        cassette.parent.mkdir(parents=True, exist_ok=True)
    done = run_notebook(kk_mode, env, cassette)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "4 patients, 8 studies, 16 series, 48 instances in" in out
    assert "an instance's patient:" in out
    assert "└── " in out
    assert "studies per year" in out
    assert "Traceback" not in done.stderr


@pytest.mark.live_only
def test_walk_forest_notebook_starts_its_own_sandbox() -> None:
    done = run_notebook("live", base_env(), None)
    assert done.returncode == 0, done.stderr
    assert "4 patients, 8 studies, 16 series, 48 instances in" in done.stdout


@pytest.mark.live_only
def test_make_demo_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded 48 synthetic instances" in done.stdout
    assert "kkorthanc tree" in done.stdout
