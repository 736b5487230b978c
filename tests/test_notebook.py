"""The example notebook, executed in a real Jupyter kernel against a sandbox.

``examples/walk_forest.ipynb`` is ``examples/walk_forest.py`` (a percent-format notebook) as
an ``.ipynb``, plus cells tagged ``notebook-only`` that write nothing on the server but send
requests the script's recording does not hold (an export with its progress bar). After an edit
of the ``.py``, rebuild the ``.ipynb`` with ``python -m tests.test_notebook``: its shared cells
are taken from the ``.py``, its notebook-only cells kept. The first test checks that the two
files agree; the second runs the notebook with nbclient and an ipykernel, as Jupyter would.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "walk_forest.py"
NOTEBOOK = ROOT / "examples" / "walk_forest.ipynb"
NOTEBOOK_ONLY = "notebook-only"
#: what the script needs for its linter and a notebook reader does not
_SCRIPT_ONLY = re.compile(r"\s*# noqa: [A-Z0-9, ]+$", flags=re.MULTILINE)
#: what ``tqdm.auto`` prints in a kernel without ipywidgets
WIDGET_WARNINGS = ("IProgress", "ipywidgets", "TqdmWarning", "jupyter and ipywidgets")


def percent_cells(text: str) -> list[tuple[str, str]]:
    """``(cell_type, source)`` for each ``# %%`` cell of a percent-format script."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        marker = re.fullmatch(r"# %%(?:\s+\[(\w+)\])?.*", line)
        if marker is not None:
            cells.append(("markdown" if marker.group(1) == "markdown" else "code", []))
            continue
        if not cells:
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            lines.append(re.sub(r"^# ?", "", line))
        else:
            lines.append(_SCRIPT_ONLY.sub("", line))
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def build_notebook(existing: Any | None = None) -> Any:
    """The notebook: the script's cells, then the notebook-only cells of ``existing``."""
    import nbformat

    new = nbformat.v4
    cells = [
        # ids from the position: a rebuild leaves the file unchanged
        new.new_markdown_cell(source, id=f"walk-{n:02d}")
        if kind == "markdown"
        else new.new_code_cell(source, id=f"walk-{n:02d}")
        for n, (kind, source) in enumerate(percent_cells(SCRIPT.read_text(encoding="utf-8")))
    ]
    if existing is not None:
        for cell in existing.cells:
            if NOTEBOOK_ONLY in cell.get("metadata", {}).get("tags", []):
                cells.append(cell)
    notebook = new.new_notebook(cells=cells)
    notebook.metadata.update(
        {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    return notebook


def _clean(cell: Any) -> tuple[str, str]:
    return cell.cell_type, cell.source


@pytest.mark.no_cassette
def test_notebook_follows_the_percent_example() -> None:
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(committed)
    rebuilt = build_notebook(committed)
    assert [_clean(c) for c in committed.cells] == [_clean(c) for c in rebuilt.cells], (
        "examples/walk_forest.ipynb differs from walk_forest.py: python -m tests.test_notebook"
    )
    extra = [c for c in committed.cells if NOTEBOOK_ONLY in c.metadata.get("tags", [])]
    assert any("export" in c.source for c in extra if c.cell_type == "code")
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit it unexecuted"


def _texts(outputs: list[Any], name: str) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("name") == name)


def _ipywidgets_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


@pytest.mark.live_only
def test_walk_forest_notebook_runs_in_a_kernel(
    monkeypatch: pytest.MonkeyPatch, sandbox_options: dict[str, Any]
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from kkorthanc.sandbox import Sandbox

    started = time.perf_counter()
    with Sandbox(name="kk-notebook", **sandbox_options) as sandbox:
        sandbox.load_synthetic()
        user, password = sandbox.auth
        # the kernel inherits the environment: the notebook's Orthanc() reads these
        monkeypatch.setenv("ORTHANC_URL", sandbox.url)
        monkeypatch.setenv("ORTHANC_USERNAME", user)
        monkeypatch.setenv("ORTHANC_PASSWORD", password)
        monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
        monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            timeout=180,
            kernel_name="python3",
            resources={"metadata": {"path": str(SCRIPT.parent)}},
        )
        client.execute()
    elapsed = time.perf_counter() - started

    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{o.ename}: {o.evalue}" for o in errors)
    stdout, stderr = _texts(outputs, "stdout"), _texts(outputs, "stderr")
    assert "4 patients, 8 studies, 16 series, 48 instances in" in stdout
    assert "studies per year" in stdout and "patient_name" in stdout

    # the forest's cell and the study's cell show the HTML views
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    forest = [h for h in html if "<b>Patient forest</b>" in h]
    study = [h for h in html if "<b>Study</b>" in h]
    assert len(forest) == 1 and len(study) == 1, f"{len(html)} HTML outputs"
    assert "kkorthanc-repr" in forest[0] and "<script" not in forest[0]
    assert "4 patients, 8 studies, 16 series, 48 instances" in forest[0]
    assert forest[0].count("<details") == 4 + 8 + 16
    assert "Müller^Jürgen" in forest[0] and "王^小明" in forest[0]
    # the study's values are labelled; which study comes first depends on the index, and
    # some synthetic studies have no accession number
    assert "<i>series</i>" in study[0]
    has_accession = re.search(r"accession_number</th><td>A\d+</td>", study[0]) is not None
    assert ("<i>accession</i>" in study[0]) == has_accession

    # the export's bar: text on stderr without ipywidgets, a widget with it; never a warning
    for text in (stderr, *(str(o.get("data", "")) for o in outputs)):
        for warning in WIDGET_WARNINGS:
            assert warning not in text, f"{warning!r} in the notebook's output"
    warnings = [o for o in outputs if o.get("name") == "stderr" and "Warning" in o.text]
    assert not warnings, warnings
    if _ipywidgets_installed():
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    else:
        assert re.search(r"export: 100%\|[^\r\n]*\| 6/6", stderr), stderr[-500:]
    assert "6 files written" in stdout
    print(f"notebook executed in {elapsed:.1f} s")


if __name__ == "__main__":
    import nbformat

    previous = nbformat.read(NOTEBOOK, as_version=4) if NOTEBOOK.exists() else None
    nbformat.write(build_notebook(previous), NOTEBOOK)
    print(f"wrote {NOTEBOOK.relative_to(ROOT)}")
