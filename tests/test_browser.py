"""The HTML views in a real browser: headless Chromium lays out a forest and a study.

Each theme gets one page holding the two views and a probe script (the views themselves hold
none), loaded with ``chromium --headless --dump-dom --screenshot``. The probe checks the DOM
as a person meets it: the structure and text, that closed ``<details>`` hide their children
and a click on a summary opens them, shortened UIDs with the full value in ``title``, text
contrast against the page (WCAG AA, 4.5:1) with and without JupyterLab's theme variables, and
style rules that never reach outside the view. It writes what it found into the page as JSON,
which ``--dump-dom`` hands back. The screenshots are kept under ``$KK_ARTIFACTS`` when that is
set, else in the test's temporary folder.

Needs Chromium (Debian's ``chromium`` package); skipped without it, except when ``CI`` is set.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kkorthanc import Instance, Patient, Series, Study, display, orthanc_id

pytestmark = pytest.mark.no_cassette

#: launch flags that keep a headless Chromium quiet and off the network
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,1500",
)

#: JupyterLab's own values of the theme variables the views read
JUPYTERLAB_LIGHT = {
    "--jp-content-font-color1": "rgba(0, 0, 0, 0.87)",
    "--jp-border-color2": "#e0e0e0",
    "--jp-layout-color2": "#eeeeee",
    "--jp-brand-color1": "#1976d2",
    "--jp-content-font-family": "system-ui, sans-serif",
    "--jp-content-font-size1": "14px",
    "--jp-code-font-family": "monospace",
}
JUPYTERLAB_DARK = {
    **JUPYTERLAB_LIGHT,
    "--jp-content-font-color1": "rgba(255, 255, 255, 1)",
    "--jp-border-color2": "#616161",
    "--jp-layout-color2": "#424242",
    "--jp-brand-color1": "#1976d2",
}
#: name -> (extra flags, page colours, theme variables on :root)
THEMES: dict[str, tuple[tuple[str, ...], str, dict[str, str]]] = {
    "light": ((), "background:#ffffff;color:#1a1a1a", {}),
    "dark": (("--force-dark-mode",), "background:#16181c;color:#e6e6e6", {}),
    "jupyterlab-light": ((), "background:#ffffff;color:rgba(0,0,0,0.87)", JUPYTERLAB_LIGHT),
    "jupyterlab-dark": (
        ("--force-dark-mode",),
        "background:#111111;color:#ffffff",
        JUPYTERLAB_DARK,
    ),
}

UID_ROOT = "1.2.826.0.1.3680043.10.1234."


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("no chromium on PATH: apt-get install chromium")
    pytest.skip("no chromium on PATH (apt-get install chromium)")


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ["KK_ARTIFACTS"]) if os.environ.get("KK_ARTIFACTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- a forest built from JSON, with what real archives hold ------------------------------------


def _uid(*parts: int) -> str:
    """A 60-odd character UID, as scanners write them."""
    return UID_ROOT + ".".join(str(p) for p in parts) + ".20240102030405678901234"


def sample_forest() -> Any:
    """Four patients given out of order (one with an empty PatientID, one whose name holds
    markup), two studies each, two series of three instances; a fifth patient whose studies
    are not loaded."""
    people = [
        ("KK-10", "Müller^Jürgen", "19590912", "M"),
        ("", "ANON^NOBODY", "", ""),
        ("KK-2", "王^小明", "19411001", "F"),
        ("KK-1", "O'Brien^<b>Pat</b> & co", "20150128", "O"),
    ]
    studies_of = [("Chest CT", "CT", "Axial 5mm"), ("Knee MR", "MR", "T1 sagittal")]
    forest = SimpleNamespace(patients=[], studies=[], series=[], instances=[])
    for p, (pid, name, born, sex) in enumerate(people):
        patient = Patient.from_orthanc(
            {
                "ID": orthanc_id(pid),
                "MainDicomTags": {
                    "PatientID": pid,
                    "PatientName": name,
                    "PatientBirthDate": born,
                    "PatientSex": sex,
                },
            }
        )
        studies = []
        for s, (description, modality, series_description) in enumerate(studies_of):
            suid = _uid(p, s)
            study = Study.from_orthanc(
                {
                    "ID": orthanc_id(pid, suid),
                    "ParentPatient": patient.id,
                    "MainDicomTags": {
                        "StudyInstanceUID": suid,
                        "StudyDate": f"20{10 + s}0{p + 1}15",
                        "StudyTime": "093000",
                        "StudyDescription": description,
                        "AccessionNumber": f"ACC{p}{s:03d}",
                    },
                    "PatientMainDicomTags": {"PatientID": pid, "PatientName": name},
                }
            )
            series_list = []
            for r in (2, 1):  # given out of order: shown by number
                ruid = _uid(p, s, r)
                one = Series.from_orthanc(
                    {
                        "ID": orthanc_id(pid, suid, ruid),
                        "ParentStudy": study.id,
                        "MainDicomTags": {
                            "SeriesInstanceUID": ruid,
                            "Modality": modality if r == 1 else "SR",
                            "SeriesNumber": str(r),
                            "SeriesDescription": series_description if r == 1 else "Report",
                        },
                    }
                )
                instances = [
                    Instance.from_orthanc(
                        {
                            "ID": orthanc_id(pid, suid, ruid, _uid(p, s, r, i)),
                            "ParentSeries": one.id,
                            "MainDicomTags": {
                                "SOPInstanceUID": _uid(p, s, r, i),
                                "InstanceNumber": str(i),
                            },
                        }
                    )
                    for i in (1, 2, 3)
                ]
                for instance in instances:
                    instance._link(one, None)
                one.instance_ids = tuple(i.id for i in instances)
                one._link(study, instances)
                series_list.append(one)
                forest.instances.extend(instances)
            study.series_ids = tuple(s.id for s in series_list)
            study._link(patient, series_list)
            studies.append(study)
            forest.series.extend(series_list)
        patient.study_ids = tuple(s.id for s in studies)
        patient._link(None, studies)
        forest.patients.append(patient)
        forest.studies.extend(studies)
    unloaded = Patient.from_orthanc(
        {"ID": "p-unloaded", "MainDicomTags": {"PatientID": "KK-3"}, "Studies": ["a", "b", "c"]}
    )
    forest.patients.append(unloaded)
    return forest


# -- the page and its probe ----------------------------------------------------------------------

PROBE = r"""
(function () {
  const R = {errors: []};
  const text = (el) => el.textContent.replace(/\s+/g, " ").trim();
  const visible = (el) => el.checkVisibility();
  const kids = (details) => [...details.querySelectorAll(":scope > ul > li")];
  const line = (li) => text(li.querySelector(":scope > details > summary") || li);
  try {
    R.dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const forest = document.querySelector("#forest > .kkorthanc-repr");
    const study = document.querySelector("#study > .kkorthanc-repr");
    R.head = text(forest.querySelector(".kk-head"));
    const all = [...forest.querySelectorAll("details")];
    R.forestDetails = all.length;
    R.allClosed = all.every((d) => !d.open);
    const top = [...forest.querySelectorAll(":scope > ul > li")];
    R.patients = top.map(line);
    // open the first patient, then its first study, then that study's first series
    let node = top[0].querySelector(":scope > details");
    R.steps = [];
    while (node) {
      const children = kids(node);
      const step = {hiddenBefore: children.every((li) => !visible(li))};
      node.querySelector(":scope > summary").click();
      step.open = node.open;
      step.visibleAfter = children.every((li) => visible(li));
      step.children = children.map(line);
      R.steps.push(step);
      node = children[0].querySelector(":scope > details");
    }
    const uids = [...forest.querySelectorAll("details[open] code[title]")];
    R.uids = uids.map((c) => ({shown: c.textContent, title: c.title}));
    // a second click closes again
    const again = top[1].querySelector(":scope > details");
    again.querySelector(":scope > summary").click();
    R.secondOpened = again.open;
    again.querySelector(":scope > summary").click();
    R.secondClosedAgain = !again.open && kids(again).every((li) => !visible(li));
    R.unloaded = top.map(line).filter((t) => t.includes("KK-3"));

    R.studyHead = text(study.querySelector(".kk-head"));
    R.studyPath = text(study.querySelector(".kk-path"));
    const root = study.querySelector(":scope > ul > li > details");
    R.studyRootOpen = root.open;
    R.studySeries = kids(root).map(line);
    R.studySeriesVisible = kids(root).every((li) => visible(li));
    R.studyFields = Object.fromEntries(
      [...study.querySelectorAll("table.kk-f tr")].map(
        (tr) => [text(tr.cells[0]), text(tr.cells[1])]
      )
    );

    // every style rule of the views is scoped under their root class
    R.selectors = [];
    const collect = (rules) => {
      for (const rule of rules) {
        if (rule.selectorText) R.selectors.push(rule.selectorText);
        else if (rule.cssRules) collect(rule.cssRules);
      }
    };
    for (const style of document.querySelectorAll(".kkorthanc-repr style")) {
      collect(style.sheet.cssRules);
    }
    const outside = document.getElementById("outside");
    R.outside = {
      list: getComputedStyle(outside.querySelector("li")).listStyleType,
      font: getComputedStyle(outside).fontFamily === getComputedStyle(document.body).fontFamily,
      details: getComputedStyle(outside.querySelector("summary")).display,
    };
    R.font = getComputedStyle(forest).fontFamily;

    // contrast of every piece of text against what lies behind it
    const parse = (value) => {
      let m = value.match(/^rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)$/);
      if (m) return [+m[1] / 255, +m[2] / 255, +m[3] / 255, m[4] === undefined ? 1 : +m[4]];
      m = value.match(/^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.e-]+))?\)$/);
      if (m) return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
      R.errors.push("colour " + value);
      return [0, 0, 0, 1];
    };
    const over = (top, under) =>
      [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
    const luminance = (c) => {
      const lin = c.slice(0, 3).map(
        (v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
      );
      return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
    };
    const page = parse(getComputedStyle(document.body).backgroundColor);
    R.worst = {ratio: 99, text: ""};
    for (const el of document.querySelectorAll(".kkorthanc-repr *")) {
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !visible(el) || el.closest("style")) continue;
      const chain = [];
      for (let a = el; a && a !== document.body; a = a.parentElement) chain.unshift(a);
      let behind = page;
      for (const a of chain) behind = over(parse(getComputedStyle(a).backgroundColor), behind);
      const fg = over(parse(getComputedStyle(el).color), behind);
      const [hi, lo] = [luminance(fg), luminance(behind)].sort((x, y) => y - x);
      const ratio = (hi + 0.05) / (lo + 0.05);
      if (ratio < R.worst.ratio) {
        R.worst = {ratio: ratio, text: text(el).slice(0, 60), tag: el.tagName};
      }
    }
  } catch (error) {
    R.errors.push(String(error && error.stack || error));
  }
  document.getElementById("kk-result").textContent = JSON.stringify(R);
})();
"""


def _page(theme: str, forest_html: str, study_html: str) -> str:
    _, colours, variables = THEMES[theme]
    root = "".join(f"{name}:{value};" for name, value in variables.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>kkorthanc views</title>"
        f"<style>:root{{{root}}} body{{{colours};margin:18px}}</style></head><body>"
        f"<section id='forest'>{forest_html}</section><hr>"
        f"<section id='study'>{study_html}</section>"
        "<div id='outside'><ul><li>a list outside the views</li></ul>"
        "<details><summary>a details outside</summary>hidden</details></div>"
        f"<pre id='kk-result'></pre><script>{PROBE}</script></body></html>"
    )


def _render(chromium: str, page: Path, screenshot: Path, extra: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kk-chromium-") as profile:
        done = subprocess.run(
            [
                chromium,
                *FLAGS,
                *extra,
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    found = re.search(r'<pre id="kk-result">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert done.returncode == 0 and found, (
        f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    )
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


@pytest.mark.parametrize("theme", list(THEMES))
def test_views_in_headless_chromium(theme: str, tmp_path: Path) -> None:
    chromium = _chromium()
    forest = sample_forest()
    study = forest.patients[3].studies[0]  # KK-1's first study, the name with markup
    page = tmp_path / f"views-{theme}.html"
    page.write_text(_page(theme, display.forest_html(forest), study._repr_html_()), "utf-8")
    screenshot = _artifacts(tmp_path) / f"kkorthanc-views-{theme}.png"
    started = time.perf_counter()
    found = _render(chromium, page, screenshot, THEMES[theme][0])
    elapsed = time.perf_counter() - started
    assert found["errors"] == []
    assert found["dark"] is ("--force-dark-mode" in THEMES[theme][0])

    # structure and text
    assert found["head"] == "Patient forest 5 patients, 8 studies, 16 series, 48 instances"
    assert found["forestDetails"] == 4 + 8 + 16 and found["allClosed"]
    order = [re.sub(r"\s*\(\d+ [^)]*\)$", "", line) for line in found["patients"]]
    assert [line.split()[1] if line.startswith("PatientID") else line for line in order] == [
        "KK-1",
        "KK-2",
        "KK-3",
        "KK-10",
        "(empty PatientID) ANON^NOBODY",
    ], order
    assert found["patients"][0] == (
        "PatientID KK-1 O'Brien^<b>Pat</b> & co born 2015-01-28 sex O "
        "(2 studies, 4 series, 12 instances)"
    )
    assert found["patients"][1].startswith("PatientID KK-2 王^小明")
    assert found["unloaded"] == ["PatientID KK-3 (3 studies)"]

    # closed details hide their children; a click opens them, down to the instances
    steps = found["steps"]
    assert len(steps) == 3
    assert all(s["hiddenBefore"] and s["open"] and s["visibleAfter"] for s in steps), steps
    assert steps[0]["children"][0].startswith("study 2010-04-15 09:30 Chest CT accession ACC3000")
    assert steps[1]["children"][0] == "series 1 CT Axial 5mm (3 instances)"
    assert steps[1]["children"][1] == "series 2 SR Report (3 instances)"
    assert [c.split()[:2] for c in steps[2]["children"]] == [
        ["instance", str(i)] for i in (1, 2, 3)
    ]
    assert found["secondOpened"] and found["secondClosedAgain"]
    # long UIDs shortened, the full value on hover
    assert found["uids"], "no shortened UID in the opened nodes"
    for uid in found["uids"]:
        assert uid["title"].startswith(UID_ROOT) and len(uid["shown"]) < len(uid["title"])
        assert "…" in uid["shown"]
        assert all(piece in uid["title"] for piece in uid["shown"].split("…"))
    instances = [c for c in found["uids"] if UID_ROOT + "3.0.1." in c["title"]]
    assert len({c["shown"] for c in instances}) == len(instances) == 3, instances

    # the study: where it sits, its series open below it, every field
    assert found["studyHead"].startswith("Study ")
    assert found["studyPath"] == "in PatientID KK-1 O'Brien^<b>Pat</b> & co born 2015-01-28 sex O"
    assert found["studyRootOpen"] and found["studySeriesVisible"]
    assert found["studySeries"] == [
        "series 1 CT Axial 5mm (3 instances)",
        "series 2 SR Report (3 instances)",
    ]
    assert found["studyFields"]["study_instance_uid"] == study.study_instance_uid
    assert found["studyFields"]["accession_number"] == "ACC3000"
    assert found["studyFields"]["series"] == "2"

    # readable in this theme, styles kept inside the views
    assert found["worst"]["ratio"] >= 4.5, found["worst"]
    assert found["selectors"] and all(
        part.strip().startswith(".kkorthanc-repr")
        for s in found["selectors"]
        for part in s.split(",")
    ), found["selectors"]
    assert found["outside"] == {"list": "disc", "font": True, "details": "list-item"}
    assert "serif" not in found["font"].replace("sans-serif", ""), found["font"]

    assert (
        screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    )
    print(f"{theme}: rendered and probed in {elapsed:.1f} s; screenshot {screenshot}")
