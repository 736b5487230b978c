"""HTML and text rendering of resources and forests, DataFrames of resources, progress bars.

The first tests build linked models offline (no server) to check escaping, caps, labels,
order and dtypes, and drive progress bars with a fake terminal or a fake Jupyter kernel; the
others use a real forest of the shared sample server, replayed or live. A real browser and a
real kernel check the views in tests/test_browser.py and tests/test_notebook.py.
"""

from __future__ import annotations

import datetime
import html
import io
import re
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from kkorthanc import Instance, Orthanc, Patient, Series, Study, display, frames, orthanc_id
from kkorthanc.models import LEVELS

# -- offline trees ---------------------------------------------------------------------------------


def make_forest(patients: int, *, studies: int = 1, series: int = 1, instances: int = 2) -> Any:
    """A linked forest built from JSON alone: ``patients`` x ``studies`` x ... resources."""
    forest = SimpleNamespace(patients=[], studies=[], series=[], instances=[])
    for p in range(patients):
        pid = f"P{p:04d}"
        patient = Patient.from_orthanc(
            {
                "ID": orthanc_id(pid),
                "MainDicomTags": {
                    "PatientID": pid,
                    "PatientName": f"Name^{p}",
                    "PatientBirthDate": "19800101",
                },
            }
        )
        study_list = []
        for s in range(studies):
            suid = f"1.2.{p}.{s}"
            study = Study.from_orthanc(
                {
                    "ID": orthanc_id(pid, suid),
                    "ParentPatient": patient.id,
                    "MainDicomTags": {
                        "StudyInstanceUID": suid,
                        "StudyDate": f"2020{s + 1:02d}01",
                        "StudyDescription": f"Study {s}",
                    },
                    "PatientMainDicomTags": {"PatientID": pid},
                }
            )
            series_list = []
            for r in range(series):
                ruid = f"{suid}.{r}"
                one = Series.from_orthanc(
                    {
                        "ID": orthanc_id(pid, suid, ruid),
                        "ParentStudy": study.id,
                        "MainDicomTags": {
                            "SeriesInstanceUID": ruid,
                            "Modality": "CT" if r % 2 == 0 else "MR",
                            "SeriesNumber": str(r + 1),
                        },
                    }
                )
                instance_list = [
                    Instance.from_orthanc(
                        {
                            "ID": orthanc_id(pid, suid, ruid, f"{ruid}.{i}"),
                            "ParentSeries": one.id,
                            "FileSize": 1000 + i,
                            "MainDicomTags": {
                                "SOPInstanceUID": f"{ruid}.{i}",
                                "InstanceNumber": str(i + 1),
                            },
                        }
                    )
                    for i in range(instances)
                ]
                for instance in instance_list:
                    instance._link(one, None)
                one.instance_ids = tuple(i.id for i in instance_list)
                one._link(study, instance_list)
                series_list.append(one)
                forest.instances.extend(instance_list)
            study.series_ids = tuple(s.id for s in series_list)
            study._link(patient, series_list)
            study_list.append(study)
            forest.series.extend(series_list)
        patient.study_ids = tuple(s.id for s in study_list)
        patient._link(None, study_list)
        forest.patients.append(patient)
        forest.studies.extend(study_list)
    return forest


def test_resource_html_escapes_server_text() -> None:
    patient = Patient.from_orthanc(
        {
            "ID": "p-1",
            "MainDicomTags": {
                "PatientID": "<b>42</b>",
                "PatientName": "O'Brien^<script>alert(1)</script>",
                "PatientBirthDate": "19800131",
                "PatientComments": "a & b",
            },
            "Studies": ["s1", "s2"],
        }
    )
    text = patient._repr_html_()
    assert "<script>" not in text and "<b>42</b>" not in text
    assert html.escape("O'Brien^<script>alert(1)</script>") in text
    assert "&lt;b&gt;42&lt;/b&gt;" in text
    assert "1980-01-31" in text
    assert re.search(r"<th[^>]*>studies</th><td[^>]*>2</td>", text)
    # a main tag the model has no field for is still shown, escaped
    assert "PatientComments" in text and "a &amp; b" in text


def test_resource_html_shows_typed_values() -> None:
    series = Series.from_orthanc(
        {
            "ID": "s-1",
            "MainDicomTags": {
                "Modality": "MR",
                "SeriesNumber": "7",
                "OperatorsName": "Bauer^Jörg\\鈴木^一郎",
                "ImageOrientationPatient": "1\\0\\0\\0\\1\\0",
            },
            "Instances": ["a", "b", "c"],
        }
    )
    text = display.resource_html(series)
    assert "<b>Series</b>" in text and "<code>s-1</code>" in text
    assert "Bauer^Jörg\\鈴木^一郎" in text
    assert "1.0\\0.0\\0.0\\0.0\\1.0\\0.0" in text
    assert re.search(r"<th[^>]*>instances</th><td[^>]*>3</td>", text)


def test_forest_html_is_capped_and_quick_for_a_big_forest() -> None:
    forest = make_forest(120, studies=3, series=4, instances=25)  # 36,000 instances
    start = time.perf_counter()
    text = display.forest_html(forest)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert "120 patients, 360 studies, 1440 series, 36000 instances" in text
    assert text.count("<details") == 50 * (1 + 3 + 3 * 4)
    assert "… 70 more patients" in text
    assert f"… {25 - display.MAX_INSTANCES} more instances" in text
    assert "P0049" in text and "P0050" not in text
    assert len(text) < 2_000_000
    # every details element is closed
    assert text.count("<details") == text.count("</details>")


def test_forest_html_counts_per_node() -> None:
    forest = make_forest(2, studies=2, series=3, instances=2)
    text = display.forest_html(forest)
    assert "2 patients, 4 studies, 12 series, 24 instances" in text
    assert "(2 studies, 6 series, 12 instances)" in text
    assert "(3 series, 6 instances)" in text
    assert "(2 instances)" in text


def test_print_tree_draws_levels_up_to_max_depth() -> None:
    forest = make_forest(2, studies=2, series=1, instances=2)
    out = io.StringIO()
    display.print_tree(forest, max_depth=2, file=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "2 patients, 4 studies, 4 series, 8 instances"
    assert lines[1].startswith("├── P0000  Name^0  born 1980-01-01") and "(2 studies)" in lines[1]
    assert lines[2] == "│   ├── 2020-01-01  Study 0  (1 series)"
    assert lines[3] == "│   └── 2020-02-01  Study 1  (1 series)"
    assert lines[4].startswith("└── P0001")
    assert lines[5].startswith("    ├── 2020-01-01")
    assert len(lines) == 1 + 2 + 4

    full = list(display.tree_lines(forest))
    assert len(full) == 1 + 2 + 4 + 4 + 8
    assert full[-1].startswith("        └── #2  1.2.1.1.0.1") or "#2" in full[-1]
    assert list(display.tree_lines(forest, 0)) == full[:1]
    with pytest.raises(ValueError, match="max_depth"):
        list(display.tree_lines(forest, -1))


def test_tree_follows_only_linked_children() -> None:
    # a patient whose studies are not loaded: its line shows the count from the ID list
    patient = Patient.from_orthanc(
        {"ID": "p", "MainDicomTags": {"PatientID": "P"}, "Studies": ["a", "b", "c"]}
    )
    forest = SimpleNamespace(patients=[patient], studies=[], series=[], instances=[])
    lines = list(display.tree_lines(forest))
    assert lines == ["1 patient", "└── P  (3 studies)"]
    assert "(3 studies)" in display.forest_html(forest)


# -- DataFrames offline ----------------------------------------------------------------------------


def test_dataframe_columns_and_dtypes() -> None:
    forest = make_forest(2, studies=2, series=2, instances=3)
    studies = frames.to_dataframe(forest, "study")
    assert list(studies.columns) == frames.column_names("study")
    assert len(studies) == 4
    assert str(studies["study_date"].dtype).startswith("datetime64")
    assert studies["study_date"].iloc[1] == datetime.datetime(2020, 2, 1)
    assert studies["num_series"].tolist() == [2, 2, 2, 2]
    assert studies["patient_id"].tolist() == ["P0000", "P0000", "P0001", "P0001"]
    assert studies["parent_patient_id"].iloc[0] == orthanc_id("P0000")

    series = frames.to_dataframe(forest.series)  # the level is inferred
    assert str(series["series_number"].dtype) == "Int64"
    assert series["modality"].tolist()[:2] == ["CT", "MR"]
    assert series["study_instance_uid"].iloc[0] == "1.2.0.0"
    assert series["patient_id"].iloc[-1] == "P0001"

    instances = frames.to_dataframe(forest, "instance")
    assert len(instances) == 24
    assert str(instances["file_size"].dtype) == "Int64"
    first = instances.iloc[0]
    assert first["series_instance_uid"] == "1.2.0.0.0"
    assert first["study_instance_uid"] == "1.2.0.0"
    assert first["patient_id"] == "P0000"
    assert first["parent_patient_id"] == orthanc_id("P0000")
    assert first["parent_study_id"] == orthanc_id("P0000", "1.2.0.0")


def test_dataframe_of_unlinked_resources_keeps_raw_ids() -> None:
    study = Study.from_orthanc(
        {
            "ID": "st",
            "ParentPatient": "pa",
            "MainDicomTags": {"StudyDate": "not a date", "StudyInstanceUID": "1.2"},
            "PatientMainDicomTags": {"PatientID": "P9"},
        }
    )
    series = Series.from_orthanc({"ID": "se", "ParentStudy": "st", "MainDicomTags": {}})
    frame = frames.to_dataframe([study])
    assert frame["patient_id"].tolist() == ["P9"]  # from the tags repeated on the study
    assert frame["study_date"].isna().all()
    unlinked = frames.to_dataframe([series])
    assert unlinked["parent_study_id"].tolist() == ["st"]
    assert unlinked["study_instance_uid"].tolist() == [None]
    assert unlinked["series_number"].isna().all()


def test_dataframe_of_partly_linked_instances_fills_what_the_links_know() -> None:
    # instances linked to their series, the series not to its study: the series' own parent
    # ID is known, the study's UID and everything above it are not
    forest = make_forest(1, studies=1, series=1, instances=2)
    study = forest.studies[0]
    # a copy of the series without a server: a fetch of its study would raise
    detached = Series.from_orthanc(forest.series[0].model_dump(by_alias=True))
    for instance in forest.instances:
        instance._link(detached, None)
    frame = frames.to_dataframe(forest, "instance")
    assert frame["series_instance_uid"].tolist() == ["1.2.0.0.0"] * 2
    assert frame["parent_study_id"].tolist() == [study.id] * 2
    assert frame["study_instance_uid"].tolist() == [None, None]
    assert frame["parent_patient_id"].tolist() == [None, None]
    assert frame["patient_id"].tolist() == [None, None]


def test_dataframe_columns_follow_the_models() -> None:
    for cls in LEVELS:
        names = frames.column_names(cls.level)
        ancestors = []
        parent = cls.parent_class()
        while parent is not None:
            ancestors.append(parent)
            parent = parent.parent_class()
        own_ids = [c.parent_field for c in (cls, *ancestors) if c.parent_field]
        tail = own_ids + [c.uid_field for c in reversed(ancestors)]
        assert names[len(names) - len(tail) :] == tail
        child = cls.child_class()
        counts = [name for name in names if name.startswith("num_")]
        assert counts == ([f"num_{child.collection}"] if child is not None else [])
        assert cls.child_ids_field not in names


def test_dataframe_refuses_mixed_or_unknown_input() -> None:
    forest = make_forest(1)
    with pytest.raises(ValueError, match="several levels"):
        frames.to_dataframe([*forest.patients, *forest.studies])
    with pytest.raises(ValueError, match="needs a level"):
        frames.to_dataframe(forest)
    with pytest.raises(ValueError, match="needs a level"):
        frames.to_dataframe([])
    with pytest.raises(ValueError, match="holds Patient"):
        frames.to_dataframe(forest.patients, "study")
    with pytest.raises(ValueError, match="unknown level"):
        frames.to_dataframe(forest, "frame")
    with pytest.raises(TypeError, match="not one resource"):
        frames.to_dataframe(forest.patients[0])
    with pytest.raises(TypeError, match="int"):
        frames.to_dataframe([1, 2])
    empty = frames.to_dataframe([], "series")
    assert list(empty.columns) == frames.column_names("series") and len(empty) == 0


def test_dataframe_without_pandas_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'kkorthanc\[pandas\]'"):
        frames.to_dataframe([], "patient")


# -- the views: labels, order, UIDs, what a sanitizer keeps ----------------------------------------


def _patient(pid: str, name: str = "", studies: tuple[str, ...] = ()) -> Patient:
    return Patient.from_orthanc(
        {
            "ID": f"id-{pid or 'empty'}",
            "MainDicomTags": {"PatientID": pid, "PatientName": name},
            "Studies": list(studies),
        }
    )


def test_views_are_scoped_static_html() -> None:
    forest = make_forest(2, studies=2, series=2, instances=2)
    views = [display.forest_html(forest)] + [
        getattr(forest, cls.collection)[0]._repr_html_() for cls in LEVELS
    ]
    for text in views:
        assert text.startswith(f'<div class="{display.CSS_CLASS}">') and text.endswith("</div>")
        lowered = text.lower()
        assert "<script" not in lowered and "javascript:" not in lowered
        assert not re.search(r"\son\w+\s*=", lowered), "an event handler attribute"
        assert not re.search(r"<[a-z]+[^>]*\sstyle=", lowered), "an inline style attribute"
        assert text.count("<style>") == 1 and text.count("</style>") == 1
        css = re.search(r"<style>(.*)</style>", text, flags=re.DOTALL)
        assert css is not None
        # every selector of every rule, inside @media too, starts with the root class
        body = re.sub(r"@media[^{]*\{", "", css.group(1))
        selectors = [
            s.strip() for block in re.findall(r"([^{}]+)\{", body) for s in block.split(",")
        ]
        assert selectors and all(s.startswith(f".{display.CSS_CLASS}") for s in selectors), (
            selectors
        )
        # theme-aware: JupyterLab variables with fallbacks, no fixed text colour
        assert "var(--jp-content-font-color1,currentColor)" in text
        assert "prefers-color-scheme:dark" in text
        assert not re.search(r"[;{]color:#", css.group(1)), "a fixed text colour"
        assert text.count("<details") == text.count("</details>")


def test_forest_html_sorts_patients_and_names_an_empty_patient_id() -> None:
    patients = [_patient("P10", "Ten"), _patient("", "NO^ID"), _patient("P2", "Two")]
    patients += [_patient("p1", "One", ("s",))]
    forest = SimpleNamespace(patients=patients, studies=[], series=[], instances=[])
    text = display.forest_html(forest)
    order = [text.index(name) for name in ("One", "Two", "Ten", "NO^ID")]
    assert order == sorted(order)
    assert "(empty PatientID)" in text
    assert "<i>PatientID</i> <b>P2</b>" in text
    lines = list(display.tree_lines(forest))
    assert lines[1:] == [
        "├── p1  One  (1 study)",
        "├── P2  Two  (0 studies)",
        "├── P10  Ten  (0 studies)",
        "└── (empty PatientID)  NO^ID  (0 studies)",
    ]
    assert display.describe(patients[1]) == "(empty PatientID)  NO^ID"


def test_tree_lines_label_values() -> None:
    forest = make_forest(1, studies=1, series=2, instances=1)
    study = forest.studies[0]
    study.accession_number = "ACC-7"
    text = display.forest_html(forest)
    assert "<i>study</i> 2020-01-01" in text and "<i>accession</i> ACC-7" in text
    assert "<i>series</i> 1" in text and "<i>series</i> 2" in text
    assert '<span class="kk-m">CT</span>' in text and '<span class="kk-m">MR</span>' in text
    assert "<i>instance</i> 1" in text and "<i>born</i> 1980-01-01" in text


def test_long_uids_are_shortened_with_the_full_value_in_title() -> None:
    root = "1.2.826.0.1.3680043.10.1234."
    assert display.shorten_uid("1.2.3") == "1.2.3"
    long = root + "20240102030405.987654321"
    short = display.shorten_uid(long)
    assert len(short) <= display.UID_WIDTH and short.startswith("1.2.826.") and "…" in short
    assert long.endswith(short.split("…")[1])
    # siblings that differ in the middle keep that part
    siblings = [f"{root}{n}.20240102030405678901234" for n in (1, 2, 3)]
    shown = {display.shorten_uid(uid, differ=len(root)) for uid in siblings}
    assert len(shown) == 3
    series = Series.from_orthanc({"ID": "s", "MainDicomTags": {"SeriesNumber": "1"}})
    instances = [
        Instance.from_orthanc(
            {"ID": f"i{n}", "MainDicomTags": {"SOPInstanceUID": uid, "InstanceNumber": str(n)}}
        )
        for n, uid in enumerate(siblings, 1)
    ]
    series._link(None, instances)
    text = series._repr_html_()
    titles = re.findall(r'<code title="([^"]+)">([^<]+)</code>', text)
    assert [title for title, _ in titles] == siblings
    assert len({shown for _, shown in titles}) == 3
    # the fields table keeps full values
    assert re.search(r"<th[^>]*>instances</th><td[^>]*>3</td>", text)


def test_resource_html_is_a_tree_of_what_is_loaded() -> None:
    forest = make_forest(1, studies=1, series=2, instances=3)
    study = forest.studies[0]
    text = study._repr_html_()
    assert '<details open><summary><span class="kk-v"><i>study</i> 2020-01-01' in text
    assert "(2 series, 6 instances)" in text and text.count("(3 instances)") == 2
    assert '<div class="kk-path"><i>in</i> <span class="kk-v"><i>PatientID</i> <b>P0000</b>' in text
    # a study fetched alone: its patient from the tags Orthanc repeats, its series a count
    alone = Study.from_orthanc(
        {
            "ID": "st",
            "ParentPatient": "pa",
            "MainDicomTags": {"StudyDate": "20200101", "AccessionNumber": "A1"},
            "PatientMainDicomTags": {"PatientID": "P9", "PatientName": "Doe^Jane"},
            "Series": ["a", "b"],
        }
    )
    text = alone._repr_html_()
    assert "<b>P9</b>" in text and "Doe^Jane" in text and "(2 series)" in text
    assert "series not loaded" in text and "<details open><summary>" not in text
    instance = forest.instances[0]
    text = instance._repr_html_()
    path = re.search(r'<div class="kk-path">(.*?)</div>', text)
    assert path is not None
    assert all(piece in path.group(1) for piece in ("P0000", "2020-01-01", "<i>series</i> 1"))


# -- DataFrames: the patient on every row, empty selections ------------------------------------


def test_study_frames_carry_the_patient_name_and_id() -> None:
    forest = make_forest(2, studies=2, series=1, instances=1)
    studies = frames.to_dataframe(forest, "study")
    assert studies["patient_name"].tolist() == ["Name^0", "Name^0", "Name^1", "Name^1"]
    assert studies["patient_id"].tolist() == ["P0000", "P0000", "P0001", "P0001"]
    for level in ("series", "instance"):
        below = frames.to_dataframe(forest, level)
        assert below["patient_name"].notna().all() and "patient_name" in frames.column_names(level)
    # a study from a find (no linked patient): read from the tags repeated on the study
    found = Study.from_orthanc(
        {
            "ID": "st",
            "ParentPatient": "pa",
            "MainDicomTags": {"StudyDate": "20200101"},
            "PatientMainDicomTags": {"PatientID": "P9", "PatientName": "Doe^Jane"},
        }
    )
    frame = frames.to_dataframe([found])
    assert frame["patient_name"].tolist() == ["Doe^Jane"]
    assert frame["patient_name"].iloc[0].family == "Doe"
    assert frame["patient_id"].tolist() == ["P9"]


@pytest.mark.parametrize("level", [cls.level.lower() for cls in LEVELS])
def test_an_empty_selection_gives_typed_columns(level: str) -> None:
    full = frames.to_dataframe(make_forest(1), level)
    empty_forest = SimpleNamespace(patients=[], studies=[], series=[], instances=[])
    for empty in (frames.to_dataframe([], level), frames.to_dataframe(empty_forest, level)):
        assert len(empty) == 0
        assert list(empty.columns) == list(full.columns) == frames.column_names(level)
        assert empty.dtypes.to_dict() == full.dtypes.to_dict()


# -- progress bars -------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fake_jupyter(monkeypatch: pytest.MonkeyPatch, *, widgets: bool) -> None:
    shell = SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: shell))
    if not widgets:
        monkeypatch.setitem(sys.modules, "ipywidgets", None)


def test_progress_auto_shows_a_bar_only_where_someone_watches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kkorthanc.transfer import progress

    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe, CI
    assert progress.wants_bar("auto") is False and progress.wants_bar(None) is False
    assert progress.wants_bar(True) is True and progress.wants_bar(False) is False
    with pytest.raises(ValueError, match="'auto'"):
        progress.wants_bar("yes")  # type: ignore[arg-type]
    bar = progress._progress_bar("auto", None, "upload", "file")
    bar.update(3)
    bar.close()
    assert sys.stderr.getvalue() == ""
    forced = progress._progress_bar(True, 2, "upload", "file")  # True asks for it anyway
    forced.update(2)
    forced.close()
    assert "upload: 100%" in sys.stderr.getvalue()

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress.wants_bar("auto") is True
    bar = progress._progress_bar("auto", 4, "export", "file")
    bar.update(4)
    bar.close()
    assert "export: 100%" in sys.stderr.getvalue()


def test_progress_in_jupyter_without_ipywidgets_is_a_text_bar_without_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from kkorthanc.transfer import progress

    _fake_jupyter(monkeypatch, widgets=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a kernel's stderr is no terminal
    assert progress.wants_bar("auto") is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm.auto would warn "IProgress not found"
        bar = progress._progress_bar("auto", 3, "upload", "file")
        for _ in range(3):
            bar.update(1)
        bar.close()
    out = sys.stderr.getvalue()
    assert "upload: 100%" in out and "3/3" in out and "IProgress" not in out


def test_progress_never_moves_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    from kkorthanc.transfer import progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress._progress_bar(True, None, "upload", "file")
    bar.update(5)
    bar.total = 10  # learnt: 50 %
    bar.refresh()
    bar.update(3)  # 80 %
    bar.refresh()
    bar.total = 20  # 40 % would be a step back: count without a total
    assert bar.total is None
    bar.refresh()
    bar.update(-2)  # ignored
    bar.update(2)
    bar.total = 4  # below what is done: the count is the total
    assert bar.total == 10 and bar.n == 10
    bar.refresh()
    bar.update(1)  # more than announced: stays at 100 %
    assert bar.total == 11
    bar.close()
    shown = [int(p) for p in re.findall(r"(\d+)%", sys.stderr.getvalue())]
    assert shown and shown == sorted(shown) and shown[-1] == 100, shown


def test_progress_without_tqdm_warns_only_when_a_bar_would_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from kkorthanc.transfer import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setattr(progress, "_warned_tqdm", False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        progress._progress_bar("auto", None, "upload", "file").update(1)
    with pytest.warns(UserWarning, match=r"kkorthanc\[progress\]"):
        progress._progress_bar(True, None, "upload", "file").update(1)


# -- a real forest -------------------------------------------------------------------------------


@pytest.fixture
def forest(client: Orthanc) -> Any:
    from kkorthanc.forest import build_patient_forest

    # a fresh build: a forest cached by another test would leave this recording empty
    return build_patient_forest(client, refresh=True)


def test_forest_html_holds_names_and_counts(forest: Any, client: Orthanc) -> None:
    before = client.request_count
    text = forest._repr_html_()
    assert client.request_count == before
    assert "4 patients, 8 studies, 16 series, 48 instances" in text
    for patient in forest.patients:
        assert html.escape(str(patient.patient_name)) in text
        assert patient.patient_id in text
    assert "王^小明" in text and "Müller^Jürgen" in text
    assert text.count("(2 studies, 4 series, 12 instances)") == 4
    assert text.count("(2 series, 6 instances)") == 8
    assert text.count("(3 instances)") == 16
    assert text.count("<details") == 4 + 8 + 16


def test_print_tree_of_the_sample(forest: Any, client: Orthanc) -> None:
    before = client.request_count
    out = io.StringIO()
    forest.print_tree(max_depth=3, file=out)
    lines = out.getvalue().splitlines()
    assert client.request_count == before
    assert lines[0] == "4 patients, 8 studies, 16 series, 48 instances"
    assert len(lines) == 1 + 4 + 8 + 16
    assert sum("(2 studies)" in line for line in lines) == 4
    assert sum("(3 instances)" in line for line in lines) == 16
    assert any("王^小明" in line for line in lines)
    everything = io.StringIO()
    forest.print_tree(file=everything)
    assert len(everything.getvalue().splitlines()) == 1 + 4 + 8 + 16 + 48


def test_dataframes_of_the_sample_cost_nothing(forest: Any, client: Orthanc) -> None:
    before = client.request_count
    series = forest.to_dataframe("series")
    instances = forest.to_dataframe("instance")
    patients = frames.to_dataframe(forest.patients)
    assert client.request_count == before
    assert len(series) == 16 and len(instances) == 48 and len(patients) == 4
    studies = forest.to_dataframe("study")
    assert set(studies["patient_name"].map(str)) == {str(p.patient_name) for p in forest.patients}
    assert studies["patient_id"].notna().all() and series["patient_name"].notna().all()
    assert series["patient_id"].notna().all()
    assert instances["series_instance_uid"].notna().all()
    assert str(patients["patient_birth_date"].dtype).startswith("datetime64")
    # parents line up: every instance's series UID is the one of its series row
    merged = instances.merge(
        series[["id", "series_instance_uid"]],
        left_on="parent_series_id",
        right_on="id",
        suffixes=("", "_of_series"),
    )
    assert len(merged) == 48
    assert (merged["series_instance_uid"] == merged["series_instance_uid_of_series"]).all()
    per_modality = series.groupby("modality")["num_instances"].sum()
    assert per_modality.sum() == 48


def test_resource_repr_html_of_a_served_study(forest: Any) -> None:
    study = forest.studies[0]
    text = study._repr_html_()
    assert study.study_instance_uid in text
    assert html.escape(study.study_description or "") in text
    assert re.search(r"<th[^>]*>series</th><td[^>]*>2</td>", text)
