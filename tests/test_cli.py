"""The ``kkorthanc`` command line, run in subprocesses: replayed from cassettes or live.

Each invocation goes through ``python -m tests.cli_runner``, which replays (or records) its own
cassette ``cassettes/test_cli/<test>-<n>.yaml`` with the settings of the ``cassette`` fixture.
The in-process ``client`` fixture only says where the server is; tests here send nothing from
the test process itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kkorthanc import JobFailed, JobTimeout, Orthanc, Patient, Series, Study, orthanc_id, synthetic
from kkorthanc.cli import LEVELS, SAMPLE_STUDY, build_parser, resource_json, tree_json
from kkorthanc.sandbox import PASSWORD_PREFIX, free_port

from .conftest import PORT_MAP, ROOT, Servers, cassette_path
from .test_annotations import ORTHANC_112
from .test_hostile import FakeServer, path_of, reply

pytestmark = pytest.mark.no_cassette


@dataclass
class Result:
    """What one command printed and its exit code."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("kkorthanc: ")]


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a subprocess: no ORTHANC_* from outside, a private state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORTHANC_", "KK_"))}
    env["KKORTHANC_HOME"] = str(home)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run(
    argv: list[str], env: dict[str, str], timeout: float = 120, *, closed_stdout: bool = False
) -> Result:
    if closed_stdout:
        return _run_into_closed_pipe(argv, env, timeout)
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    result = Result(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _run_into_closed_pipe(argv: list[str], env: dict[str, str], timeout: float) -> Result:
    """Run with standard output a pipe whose reader is gone before anything is written, as
    with ``kkorthanc tree | head`` once head has had enough."""
    process = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    code = process.wait(timeout)
    result = Result(code, "", stderr.decode("utf-8", "replace"))
    assert "Traceback" not in result.stderr, result.stderr
    return result


class Cli:
    """Runs ``kkorthanc ARGS`` against a server, each call with its own cassette.

    Tests marked ``live_only`` run live in record mode too: they keep no recordings.
    """

    def __init__(self, mode: str, node: pytest.Item, home: Path) -> None:
        self.mode = "live" if node.get_closest_marker("live_only") else mode
        self.base = cassette_path(node)
        self.home = home
        self.calls = 0

    def cassette(self) -> Path:
        self.calls += 1
        return self.base.with_name(f"{self.base.stem}-{self.calls}.yaml")

    def __call__(
        self,
        *args: str,
        server: Orthanc | None = None,
        password: str | None = None,
        script: Path | None = None,
        closed_stdout: bool = False,
    ) -> Result:
        """Run the command against ``server``'s URL and credentials (``password`` overrides)."""
        env = clean_env(self.home)
        # without a server there is nothing to replay: the command must not reach any
        mode = self.mode if server is not None else "live"
        runner = ["-m", "tests.cli_runner", "--mode", mode]
        if server is not None:
            auth = server._transport.session.auth
            assert isinstance(auth, tuple)
            env["ORTHANC_URL"] = server.url
            env["ORTHANC_USERNAME"] = auth[0]
            env["ORTHANC_PASSWORD"] = password if password is not None else auth[1]
            if mode != "live":
                path = self.cassette()
                if mode == "replay" and not path.exists():
                    pytest.fail(f"no recording at {path.relative_to(ROOT)}: run pytest --record")
                path.parent.mkdir(parents=True, exist_ok=True)
                runner += ["--cassette", str(path)]
                for real, canonical in PORT_MAP.ports.items():
                    runner += ["--port", f"{real}={canonical}"]
        if script is not None:
            runner += ["--script", str(script)]
        return run([*runner, "--", *args], env, closed_stdout=closed_stdout)

    def recorded(self) -> list[str]:
        """``METHOD /path`` of every request the last call recorded (replay and record)."""
        path = self.base.with_name(f"{self.base.stem}-{self.calls}.yaml")
        interactions = yaml.safe_load(path.read_text())["interactions"]
        return [
            f"{item['request']['method']} {urlsplit(item['request']['uri']).path}"
            for item in interactions
        ]


@pytest.fixture
def cli(kk_mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return Cli(kk_mode, request.node, tmp_path / "home")


@pytest.fixture(scope="module")
def first_study() -> dict[str, str]:
    """Identifiers of the first synthetic study (computed locally, no server)."""
    ds = next(synthetic.generate(synthetic.SAMPLE))
    return {
        "PatientID": str(ds.PatientID),
        "PatientName": str(ds.PatientName),
        "PatientSex": str(ds.PatientSex),
        "StudyInstanceUID": str(ds.StudyInstanceUID),
        "SeriesInstanceUID": str(ds.SeriesInstanceUID),
        "SOPInstanceUID": str(ds.SOPInstanceUID),
        "StudyDescription": str(ds.StudyDescription),
    }


@pytest.fixture(scope="module")
def sample_studies() -> dict[str, list[dict[str, str]]]:
    """The synthetic sample's studies by PatientID, each with its first series (no server)."""
    studies: dict[str, list[dict[str, str]]] = {}
    for ds in synthetic.generate(synthetic.SAMPLE):
        found = studies.setdefault(str(ds.PatientID), [])
        if not any(item["StudyInstanceUID"] == ds.StudyInstanceUID for item in found):
            found.append(
                {
                    "StudyInstanceUID": str(ds.StudyInstanceUID),
                    "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                }
            )
    return studies


#: every command ``kkorthanc --help`` lists, in its order
COMMANDS = (
    "tree",
    "find",
    "show",
    "upload",
    "export",
    "anonymize",
    "modify",
    "delete",
    "labels",
    "jobs",
    "modality",
    "stats",
    "sandbox",
)
#: JSON keys whose values are keyed by data (DICOM keywords, level or metadata names)
RAW_KEYS = {
    "main_dicom_tags",
    "patient_main_dicom_tags",
    "requested_tags",
    "tags",
    "user_metadata",
    "user_content_type",
}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ORTHANC_ID = r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}"


def all_keys_snake_case(value: Any) -> bool:
    """Whether every key of a JSON document is snake_case (raw DICOM tag maps aside)."""
    if isinstance(value, dict):
        return all(
            re.fullmatch(r"[a-z][a-z0-9_]*", key) is not None
            and (key in RAW_KEYS or all_keys_snake_case(item))
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(all_keys_snake_case(item) for item in value)
    return True


def rows_of(text: str) -> dict[str, str]:
    """``show``'s ``  name  value`` lines as a mapping (names may hold one space)."""
    rows = {}
    for line in text.splitlines()[1:]:
        name, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[name] = value
    return rows


# -- server information ------------------------------------------------------------------------


def test_tree_json_nests_only_linked_children() -> None:
    patient = Patient.from_orthanc(
        {"ID": "p", "MainDicomTags": {"PatientID": "P"}, "Studies": ["st", "other"]}
    )
    study = Study.from_orthanc(
        {"ID": "st", "ParentPatient": "p", "Series": ["se"], "MainDicomTags": {}}
    )
    series = Series.from_orthanc({"ID": "se", "ParentStudy": "st", "Instances": ["i", "j"]})
    patient._link(None, [study])
    study._link(patient, [series])
    data = tree_json(patient, 4)
    assert data["num_studies"] == 2 and "study_ids" not in data
    assert [item["id"] for item in data["studies"]] == ["st"]
    nested = data["studies"][0]
    assert nested["num_series"] == 1 and nested["series"][0]["num_instances"] == 2
    assert "instances" not in nested["series"][0]  # not linked: counted, not listed
    assert "studies" not in tree_json(patient, 1)
    assert resource_json(series)["instance_ids"] == ["i", "j"]
    assert "instance_ids" not in resource_json(series, children=False)


def test_level_names_and_export_flags_come_from_the_models() -> None:
    assert LEVELS == ("patient", "study", "series", "instance")
    args = build_parser().parse_args(["export", "--study", "1.2", "--patient", "P", "out"])
    assert args.study == ["1.2"] and args.patient == ["P"] and args.series is None


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def test_every_command_is_listed_and_has_help_with_an_example() -> None:
    parser = build_parser()
    found = dict(_subcommands(parser))
    assert tuple(path[0] for path in found if len(path) == 1) == COMMANDS
    assert {path for path in found if len(path) == 2} == {
        *(("jobs", action) for action in ("list", "wait", "cancel")),
        *(("labels", action) for action in ("list", "add", "remove")),
        *(("modality", action) for action in ("list", "echo", "find", "move", "store")),
        *(("sandbox", action) for action in ("start", "stop", "status")),
    }
    overview = parser.format_help()
    assert "Exit codes: 0 ok, 1 partial failure" in overview
    for path, sub in found.items():
        text = sub.format_help()
        examples = text.partition("example")[2]
        assert examples, f"kkorthanc {' '.join(path)} --help shows no example"
        assert f"kkorthanc {' '.join(path)}" in examples, path
        # the overview at the end of `kkorthanc --help` names every command and action
        assert re.search(rf"\b{path[-1]}\b", overview), path


def test_examples_use_identifiers_of_the_sample() -> None:
    """The help's examples run as written against ``sandbox start --sample``."""
    studies = {str(ds.StudyInstanceUID) for ds in synthetic.generate(synthetic.SAMPLE)}
    patients = {str(ds.PatientID) for ds in synthetic.generate(synthetic.SAMPLE)}
    first = next(synthetic.generate(synthetic.SAMPLE))
    assert first.StudyInstanceUID == SAMPLE_STUDY
    # `--sample N` keeps the first patients as they are, UIDs included
    bigger = next(synthetic.generate(synthetic.SyntheticSpec(patients=10)))
    assert (bigger.PatientID, bigger.StudyInstanceUID) == (first.PatientID, SAMPLE_STUDY)
    help_texts = [sub.format_help() for _, sub in _subcommands(build_parser())]
    named_uids = {uid for text in help_texts for uid in re.findall(r"1\.2\.826\.[0-9.]+", text)}
    named_patients = {pid for text in help_texts for pid in re.findall(r"KK-0-\d{4}", text)}
    assert named_uids and named_uids <= studies
    assert named_patients and named_patients <= patients


@pytest.mark.parametrize(
    ("key", "snake"),
    [
        ("CountInstances", "count_instances"),
        ("TotalDiskSizeMB", "total_disk_size_mb"),
        ("IsHttpServerSecure", "is_http_server_secure"),
        ("DicomAet", "dicom_aet"),
        ("ID", "id"),
        ("patient_id", "patient_id"),
    ],
)
def test_json_keys_are_snake_case(key: str, snake: str) -> None:
    from kkorthanc.cli._common import snake as to_snake

    assert to_snake(key) == snake


class _FakeJob:
    """What :func:`wait_job` reads of a job, moving through given states one poll at a time."""

    def __init__(self, states: list[tuple[str, int]]) -> None:
        self.states = states
        self.id = "5f0c1d9e-8a7b-4c3d-9e2f-0a1b2c3d4e5f"
        self.type = "ResourceModification"
        self.state, self.progress = "Pending", 0
        self.polls = 0

    @property
    def finished(self) -> bool:
        return self.state in ("Success", "Failure")

    def refresh(self) -> _FakeJob:
        self.polls += 1
        self.state, self.progress = self.states.pop(0)
        return self

    def raise_for_failure(self) -> None:
        if self.state == "Failure":
            raise JobFailed(self.id, 1, "Error", "it broke")


def test_job_waits_show_progress_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from kkorthanc.cli import _jobs

    pauses: list[float] = []
    monkeypatch.setattr(_jobs, "_sleep", pauses.append)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    job = _FakeJob([("Pending", 0), ("Running", 40), ("Success", 100)])
    wait: Any = _jobs.wait_job  # fed stand-ins for jobs
    wait(job, timeout=None, progress=True)
    shown = err.getvalue()
    assert shown.count("\r") == 3 and "Running 40%" in shown
    assert shown.rstrip().endswith("ResourceModification: Success 100%") and shown.endswith("\n")
    assert job.polls == 3 and pauses == pytest.approx([0.05, 0.075])  # backing off like Job.wait

    err.truncate(0)
    wait(_FakeJob([("Success", 100)]), timeout=None, progress=False)
    assert err.getvalue() == ""
    with pytest.raises(JobFailed, match="it broke"):
        wait(_FakeJob([("Running", 10), ("Failure", 10)]), timeout=None, progress=False)
    with pytest.raises(JobTimeout, match="kkorthanc jobs wait 5f0c1d9e"):
        wait(_FakeJob([("Running", 10)]), timeout=0, progress=False)


def test_stats_prints_counts_and_json(cli: Cli, client: Orthanc) -> None:
    text = cli("stats", server=client)
    assert text.code == 0, text.stderr
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines())
    assert lines["patients"] == "4"
    assert lines["instances"] == "48"
    assert lines["version"].startswith("Orthanc 1.")
    # global flags are accepted after the subcommand too
    data = cli("stats", "--json", server=client)
    assert data.code == 0
    parsed = data.json()
    # one key style: snake_case throughout, sizes as numbers
    assert parsed["statistics"]["count_instances"] == 48
    assert parsed["statistics"]["count_studies"] == 8
    assert isinstance(parsed["statistics"]["total_disk_size"], int)
    assert parsed["system"]["api_version"] >= 16
    assert parsed["url"] == client.url
    assert all_keys_snake_case(parsed)


def test_tree_prints_the_forest_with_counts(cli: Cli, client: Orthanc) -> None:
    text = cli("tree", server=client)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "4 patients, 8 studies, 16 series, 48 instances"
    assert len(lines) == 1 + 4 + 8 + 16  # down to series by default
    assert sum(line.startswith(("├── KK-", "└── KK-")) for line in lines) == 4
    assert sum(line.endswith("(3 instances)") for line in lines) == 16
    assert any("王^小明" in line for line in lines)

    data = cli("tree", "--depth", "study", "--json", server=client)
    assert data.code == 0, data.stderr
    patients = data.json()["patients"]
    assert len(patients) == 4
    assert {p["patient_id"] for p in patients} == {f"KK-0-{n:04d}" for n in range(4)}
    for patient in patients:
        assert patient["num_studies"] == 2 and len(patient["studies"]) == 2
        for study in patient["studies"]:
            assert study["num_series"] == 2 and "series" not in study


def test_find_on_the_server_and_locally_agree(cli: Cli, client: Orthanc) -> None:
    server = cli("find", "study", "StudyDescription=Chest CT", "--json", server=client)
    assert server.code == 0, server.stderr
    local = cli("find", "study", "--local", "--json", "study_description=chest ct", server=client)
    assert local.code == 0, local.stderr
    found = server.json()
    assert len(found) >= 1
    assert [s["id"] for s in found] == [s["id"] for s in local.json()]
    assert all(s["level"] == "Study" and s["study_description"] == "Chest CT" for s in found)

    text = cli("find", "series", "Modality=CT", server=client)
    assert text.code == 0, text.stderr
    rows = text.stdout.splitlines()
    assert rows and all(re.match(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}  #\d+  CT\b", r) for r in rows)
    assert f"{len(rows)} series match(es)" in text.stderr


def test_find_names_the_patient_of_each_result(
    cli: Cli, client: Orthanc, first_study: dict[str, str]
) -> None:
    patient = f"[patient {first_study['PatientID']} {first_study['PatientName']}]"
    studies = cli("find", "study", f"PatientID={first_study['PatientID']}", server=client)
    assert studies.code == 0, studies.stderr
    lines = studies.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(f"  {patient}") for line in lines)

    series = cli("find", "series", "Modality=CT", server=client)
    assert series.code == 0, series.stderr
    rows = series.stdout.splitlines()
    assert rows and all(re.search(r"  \[patient KK-0-\d{4} \S+\]$", row) for row in rows)
    local = cli("find", "series", "--local", "Modality=CT", server=client)
    assert sorted(local.stdout.splitlines()) == sorted(rows)  # the forest knows them too

    instances = cli("find", "instance", "InstanceNumber=1", "--json", server=client)
    assert instances.code == 0, instances.stderr
    found = instances.json()
    assert len(found) == 16
    assert {item["patient"]["patient_id"] for item in found} == {
        f"KK-0-{n:04d}" for n in range(4)
    }
    assert all(set(item["patient"]) == {"patient_id", "patient_name"} for item in found)
    assert all_keys_snake_case(found)


def test_show_by_uid_patient_id_and_orthanc_id(
    cli: Cli, client: Orthanc, first_study: dict[str, str]
) -> None:
    pid, uid = first_study["PatientID"], first_study["StudyInstanceUID"]
    study_id = orthanc_id(pid, uid)
    study = cli("show", uid, server=client)
    assert study.code == 0, study.stderr
    assert study.stdout.splitlines()[0] == f"Study {study_id}"
    rows = rows_of(study.stdout)
    assert rows["patient"] == (
        f"{pid} {first_study['PatientName']}  (Orthanc ID {orthanc_id(pid)})"
    )
    assert rows["StudyInstanceUID"] == uid
    assert rows["StudyDescription"] == first_study["StudyDescription"]
    assert (rows["series"], rows["instances"]) == ("2", "6")
    assert rows["disk size"].endswith("KB")

    patient = cli("show", pid, "--json", server=client)
    assert patient.code == 0, patient.stderr
    data = patient.json()
    assert (data["level"], data["id"], data["patient_id"]) == ("Patient", orthanc_id(pid), pid)
    assert data["counts"] == {"studies": 2, "series": 4, "instances": 12}
    assert "patient" not in data and data["parents"] == []
    assert all_keys_snake_case(data)

    series_uid = first_study["SeriesInstanceUID"]
    series = cli("show", orthanc_id(pid, uid, series_uid), "--json", server=client)
    assert series.code == 0, series.stderr
    data = series.json()
    assert data["series_instance_uid"] == series_uid
    assert data["parents"] == [{"level": "Study", "id": study_id, "uid": uid}]
    assert data["patient"] == {"patient_id": pid, "patient_name": first_study["PatientName"]}
    assert data["counts"] == {"instances": 3} and data["disk_size"] > 0

    instance = cli("show", first_study["SOPInstanceUID"], server=client)
    assert instance.code == 0, instance.stderr
    rows = rows_of(instance.stdout)
    assert rows["study"] == f"{uid}  (Orthanc ID {study_id})"
    assert rows["series"].startswith(series_uid)
    assert rows["patient"].startswith(pid)
    assert int(rows["FileSize"]) > 0

    unknown = cli("show", "1.2.3.999", server=client)
    assert unknown.code == 1
    assert unknown.error_lines == [
        "kkorthanc: error: no resource with Orthanc ID, PatientID or UID '1.2.3.999'"
    ]
    wrong_level = cli("show", uid, "--level", "series", server=client)
    assert wrong_level.code == 1
    assert "no series with Orthanc ID or UID" in wrong_level.error_lines[0]


def test_output_into_a_closed_pipe_exits_0_quietly(
    cli: Cli, client: Orthanc, tmp_path: Path
) -> None:
    """``kkorthanc tree | head``: the reader leaving early is not an error."""
    tree = cli("tree", "--depth", "instance", server=client, closed_stdout=True)
    assert (tree.code, tree.stderr) == (0, "")
    listing = cli("find", "study", "--json", server=client, closed_stdout=True)
    assert (listing.code, listing.stderr) == (0, "")
    helped = run(["-m", "kkorthanc.cli", "--help"], clean_env(tmp_path), closed_stdout=True)
    assert (helped.code, helped.stderr) == (0, "")
    # and as a shell runs it
    shell = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m kkorthanc.cli --help | head -1"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (shell.returncode, shell.stderr) == (0, "")
    assert shell.stdout.startswith("usage: kkorthanc")


# -- exit codes and errors ---------------------------------------------------------------------


def test_closed_port_exits_3_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    start = time.monotonic()
    result = run(
        ["-m", "kkorthanc.cli", "--url", f"http://127.0.0.1:{port}", "stats"],
        clean_env(tmp_path),
    )
    assert result.code == 3
    assert time.monotonic() - start < 20
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("kkorthanc: error: ")
    assert f"127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_trickling_server_ends_at_the_timeout_with_one_line(tmp_path: Path, where: str) -> None:
    def trickle(fake: FakeServer, conn: Any, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        fake.trickle(conn, b"a" * 100, every=0.1)  # each read comes well within any timeout

    with FakeServer(trickle) as fake:
        env = clean_env(tmp_path)
        env["ORTHANC_URL"] = fake.url
        flag = ["--request-timeout", "1.5"] if where == "flag" else []
        if where == "environment":
            env["ORTHANC_REQUEST_TIMEOUT"] = "1.5"
        start = time.monotonic()
        result = run(["-m", "kkorthanc.cli", "--no-progress", *flag, "stats"], env, timeout=30)
        took = time.monotonic() - start
    assert result.code == 3, result.stderr
    assert took < 1.5 + 4  # the deadline, and the start of a Python process
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("kkorthanc: error: GET /system") and "1.5" in line, line


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_timeout_that_is_no_number_of_seconds_is_a_usage_error(
    tmp_path: Path, value: str
) -> None:
    argv = ["-m", "kkorthanc.cli", "--request-timeout", value, "stats"]
    result = run(argv, clean_env(tmp_path))
    assert result.code == 2
    assert f"not a positive number of seconds: {value!r}" in result.stderr


def test_console_script_is_installed_and_reports_usage(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("kkorthanc")
    assert script.exists(), "pip install -e . creates the kkorthanc console script"
    done = subprocess.run(
        [str(script), "--help"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        check=False,
    )
    assert done.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^    {command} ", done.stdout, flags=re.MULTILINE), command
    assert "Exit codes" in done.stdout


def test_wrong_password_exits_3_without_the_password(cli: Cli, client: Orthanc) -> None:
    secret = "wrong-" + "horse-battery"
    result = cli("stats", server=client, password=secret)
    assert result.code == 3
    assert result.error_lines and "401" in result.error_lines[0]
    assert "credentials" in result.error_lines[0]
    assert secret not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required"),
        (["find"], "required"),
        (["find", "galaxy", "PatientID=1"], "unknown level"),
        (["find", "study", "StudyDescription"], "expected Tag=value"),
        (["tree", "--depth", "frame"], "unknown level"),
        (["export", "out"], "nothing to export"),
        (["upload", "no/such/file.dcm"], "no such file"),
        (["--user", "kk", "stats"], "no password"),
        (["--password", "pw", "stats"], "without a user"),
        (["--url", "ftp://example", "stats"], "not an http"),
        (["sandbox"], "required"),
        (["find", "study", "Foo=1"], "unknown tag 'Foo'"),
        (["find", "study", "--local", "X=1", "--bogus"], "unrecognized arguments: --bogus"),
        (["find", "study", "SeriesDescription=CT"], "is a Series tag"),
        (["show"], "required"),
        (["delete", "1.2.3"], "add --yes"),
        (["modify", "1.2.3", "--replace", "StudyDescription"], "expected Tag=value"),
        (["labels", "list", "study"], "both LEVEL and ID"),
        (["labels", "add", "study", "1.2.3", "a b"], "not a label"),
        (["jobs"], "required"),
        (["modality", "find", "pacs", "galaxy"], "unknown level"),
        (["sandbox", "start", "--url", "http://127.0.0.1:1"], "sandbox start takes no --url"),
        (["--user", "kk", "sandbox", "status"], "sandbox status takes no --user"),
        (["sandbox", "start", "--sample", "0"], "1 to 10000 patients"),
        (["sandbox", "start", "--sample", "many"], "a number of patients"),
        (["export", "--all", "--layout", "{PatientId}/x.dcm", "out"], "did you mean PatientID"),
        (["upload", "--workers", "0", "x.dcm"], "must be at least 1"),
    ],
)
def test_bad_usage_exits_2_before_any_request(
    tmp_path: Path, args: list[str], message: str
) -> None:
    env = clean_env(tmp_path)
    # a closed port: reaching for the server would exit 3, not 2
    env["ORTHANC_URL"] = f"http://127.0.0.1:{free_port()}"
    result = run(["-m", "kkorthanc.cli", *args], env)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kkorthanc") and "error: " in last


# -- upload and export ---------------------------------------------------------------------------


def test_upload_with_junk_is_a_partial_failure(cli: Cli, servers: Servers, tmp_path: Path) -> None:
    target = servers.new()
    spec = synthetic.SyntheticSpec(1, 1, 1, 2, seed=7)
    good = []
    for n, (_, body) in enumerate(synthetic.generate_bytes(spec)):
        path = tmp_path / f"good-{n}.dcm"
        path.write_bytes(body)
        good.append(str(path))
    junk = tmp_path / "notes.txt"
    junk.write_text("not a DICOM file\n")

    first = cli("upload", "--workers", "1", *good, str(junk), server=target)
    assert first.code == 1
    assert first.stdout.strip() == "stored 2, already stored 0, rejected 1, failed 0"
    assert len(first.error_lines) == 1 and "notes.txt" in first.error_lines[0]

    again = cli("upload", "--json", "--workers", "1", good[0], str(junk), server=target)
    assert again.code == 1
    report = again.json()
    assert (report["stored"], report["already_stored"], report["rejected"]) == (0, 1, 1)
    assert report["problems"][0]["source"].endswith("notes.txt")
    assert "DICM" in report["problems"][0]["error"]

    clean = cli("upload", good[1], server=target)
    assert clean.code == 0
    assert clean.stdout.strip() == "stored 0, already stored 1, rejected 0, failed 0"


def test_export_by_uid_and_by_orthanc_id(
    cli: Cli, client: Orthanc, tmp_path: Path, first_study: dict[str, str]
) -> None:
    folder = tmp_path / "out"
    by_uid = cli(
        "export",
        "--workers",
        "1",
        "--study",
        first_study["StudyInstanceUID"],
        str(folder),
        server=client,
    )
    assert by_uid.code == 0, by_uid.stderr
    files = sorted(folder.rglob("*.dcm"))
    assert len(files) == 6  # 2 series x 3 instances
    assert all(f.read_bytes()[128:132] == b"DICM" for f in files)
    assert files[0].relative_to(folder).parts[:2] == (
        first_study["PatientID"],
        first_study["StudyInstanceUID"],
    )
    assert by_uid.stdout.startswith("wrote 6, skipped 0")

    # the patient by its Orthanc ID (computed locally), the same study's files already there
    patient = orthanc_id(first_study["PatientID"])
    again = cli(
        "export", "--json", "--workers", "1", "--patient", patient, str(folder), server=client
    )
    assert again.code == 0, again.stderr
    report = again.json()
    assert (report["written"], report["skipped"], report["failed"]) == (6, 6, 0)
    assert len(list(folder.rglob("*.dcm"))) == 12


def test_export_of_unknown_uid_fails_in_one_line(cli: Cli, client: Orthanc, tmp_path: Path) -> None:
    result = cli("export", "--series", "1.2.3.999", str(tmp_path / "none"), server=client)
    assert result.code == 1
    assert result.error_lines == ["kkorthanc: error: no series with Orthanc ID or UID '1.2.3.999'"]
    assert not (tmp_path / "none").exists()


# -- changing data -------------------------------------------------------------------------------


def test_modify_and_anonymize_print_the_new_resource(
    cli: Cli, servers: Servers, first_study: dict[str, str]
) -> None:
    target = servers.new(sample=True)
    pid, uid = first_study["PatientID"], first_study["StudyInstanceUID"]
    modified = cli(
        "modify", uid, "--replace", "StudyDescription=Research", "--remove", "InstitutionName",
        server=target,
    )
    assert modified.code == 0, modified.stderr
    source, result = modified.stdout.splitlines()
    assert source == (
        f"modified study {uid} (Orthanc ID {orthanc_id(pid, uid)}) of patient "
        f"{pid} {first_study['PatientName']}"
    )
    match = re.fullmatch(
        rf"    as study (\S+) \(Orthanc ID ({ORTHANC_ID})\) of patient (.*)", result
    )
    assert match and match.group(1) != uid
    assert match.group(3) == f"{pid} {first_study['PatientName']}"
    shown = cli("show", match.group(2), "--json", server=target)
    assert shown.code == 0, shown.stderr
    copy = shown.json()
    assert copy["study_description"] == "Research" and copy["institution_name"] is None
    assert copy["patient"]["patient_id"] == pid

    anonymized = cli("anonymize", pid, "--keep", "PatientSex", "--wait", "--json", server=target)
    assert anonymized.code == 0, anonymized.stderr
    report = anonymized.json()
    assert report["source"] == {"level": "Patient", "id": orthanc_id(pid), "uid": pid}
    assert report["result"]["level"] == "Patient"
    assert report["result"]["patient_id"] not in ("", pid)
    assert report["result"]["patient_sex"] == first_study["PatientSex"]
    assert all_keys_snake_case(report)

    # an instance is changed at once, never as a job: refused as usage
    instance_job = cli(
        "modify", first_study["SOPInstanceUID"], "--replace", "InstanceNumber=9", "--job",
        server=target,
    )
    assert instance_job.code == 2
    assert "synchronously" in instance_job.error_lines[0]


def test_jobs_list_wait_and_cancel(
    cli: Cli, servers: Servers, first_study: dict[str, str]
) -> None:
    target = servers.new(sample=True)
    started = cli(
        "modify", first_study["StudyInstanceUID"], "--replace", "StudyDescription=Later",
        "--job", server=target,
    )
    assert started.code == 0, started.stderr
    job_id = started.stdout.strip()
    assert re.fullmatch(UUID, job_id)
    assert f"kkorthanc jobs wait {job_id}" in started.stderr

    waited = cli("jobs", "wait", job_id, server=target)
    assert waited.code == 0, waited.stderr
    assert waited.stdout.startswith(f"{job_id}  ResourceModification  Success 100%  (waited ")

    listed = cli("jobs", "list", "--json", server=target)
    assert listed.code == 0, listed.stderr
    jobs = {job["id"]: job for job in listed.json()}
    assert jobs[job_id]["state"] == "Success" and jobs[job_id]["type"] == "ResourceModification"
    assert all_keys_snake_case(list(jobs.values()))
    text = cli("jobs", "list", server=target)
    assert any(
        line.startswith(f"{job_id}  ResourceModification  Success")
        for line in text.stdout.splitlines()
    )

    cancel = cli("jobs", "cancel", job_id, server=target)
    assert cancel.code == 0
    assert "already ended (Success): nothing to cancel" in cancel.stderr

    unknown = "00000000-0000-4000-8000-000000000000"
    for action in ("wait", "cancel"):
        missing = cli("jobs", action, unknown, server=target)
        assert missing.code == 1
        assert len(missing.error_lines) == 1
        assert missing.error_lines[0].startswith(f"kkorthanc: error: no job {unknown} on this")


def test_delete_needs_yes_and_prints_what_it_deleted(
    cli: Cli,
    servers: Servers,
    first_study: dict[str, str],
    sample_studies: dict[str, list[dict[str, str]]],
) -> None:
    target = servers.new(sample=True)
    pid, uid = first_study["PatientID"], first_study["StudyInstanceUID"]
    refused = cli("delete", uid)  # refused before connecting: no server needed
    assert refused.code == 2
    assert refused.error_lines == [
        "kkorthanc: error: delete removes the resources and everything under them for good: "
        "add --yes to confirm (nothing was deleted)"
    ]

    # every identifier is looked up first: one typo deletes nothing
    typo = cli("delete", "--yes", uid, "1.2.3.999", server=target)
    assert typo.code == 1 and "'1.2.3.999'" in typo.error_lines[0]
    if cli.mode != "live":
        assert not [request for request in cli.recorded() if request.startswith("DELETE")]
    assert cli("show", uid, server=target).code == 0

    deleted = cli("delete", "--yes", uid, "KK-0-0003", server=target)
    assert deleted.code == 0, deleted.stderr
    assert deleted.stdout.splitlines() == [
        f"deleted study {uid} (Orthanc ID {orthanc_id(pid, uid)}) of patient "
        f"{pid} {first_study['PatientName']}: 2 series, 6 instances",
        f"deleted patient KK-0-0003 (Orthanc ID {orthanc_id('KK-0-0003')}), DOE^JOHN3: "
        "2 studies, 4 series, 12 instances",
    ]
    assert cli("show", uid, server=target).code == 1

    series_uid = sample_studies["KK-0-0001"][0]["SeriesInstanceUID"]
    as_json = cli("delete", "--yes", "--json", series_uid, server=target)
    assert as_json.code == 0, as_json.stderr
    report = as_json.json()
    assert report["problems"] == []
    [gone] = report["deleted"]
    assert (gone["level"], gone["uid"], gone["counts"]) == ("Series", series_uid, {"instances": 3})
    assert gone["patient"]["patient_id"] == "KK-0-0001"

    # a patient, then one of its studies: the study went with the patient
    study_of_2 = sample_studies["KK-0-0002"][0]["StudyInstanceUID"]
    overlap = cli("delete", "--yes", "KK-0-0002", study_of_2, server=target)
    assert overlap.code == 1
    assert overlap.stdout.startswith("deleted patient KK-0-0002")
    assert "is no longer on the server" in overlap.stderr

    left = cli("--json", "stats", server=target).json()["statistics"]
    assert left["count_instances"] == 48 - 6 - 12 - 3 - 12


def test_an_ambiguous_uid_is_exit_1_naming_the_candidates(
    cli: Cli, servers: Servers, tmp_path: Path
) -> None:
    """One StudyInstanceUID under two PatientIDs: commands refuse to guess."""
    target = servers.new()
    ds = next(synthetic.generate(synthetic.SyntheticSpec(1, 1, 1, 1, seed=5)))
    first_pid, uid, series_uid = str(ds.PatientID), str(ds.StudyInstanceUID), str(
        ds.SeriesInstanceUID
    )
    (tmp_path / "first.dcm").write_bytes(synthetic.dataset_to_bytes(ds))
    ds.PatientID, ds.PatientName = "KK-TWIN", "TWIN^SECOND"
    (tmp_path / "second.dcm").write_bytes(synthetic.dataset_to_bytes(ds))
    uploaded = cli(
        "upload", "--workers", "1", str(tmp_path / "first.dcm"), str(tmp_path / "second.dcm"),
        server=target,
    )
    assert uploaded.stdout.strip() == "stored 2, already stored 0, rejected 0, failed 0"

    shown = cli("show", uid, server=target)
    assert shown.code == 1 and shown.stdout == ""
    [line] = shown.error_lines
    assert line.startswith(f"kkorthanc: error: '{uid}' names 2 studies: ")
    assert f"{orthanc_id(first_pid, uid)} of patient {first_pid} " in line
    assert f"{orthanc_id('KK-TWIN', uid)} of patient KK-TWIN TWIN^SECOND" in line
    assert line.endswith("give the Orthanc ID of the one you mean")

    series = cli("show", series_uid, server=target)
    assert series.code == 1 and "names 2 series" in series.error_lines[0]
    assert "KK-TWIN TWIN^SECOND" in series.error_lines[0]

    exported = cli("export", "--study", uid, str(tmp_path / "out"), server=target)
    assert exported.code == 1 and exported.error_lines == [line]
    assert not (tmp_path / "out").exists()
    deleted = cli("delete", "--yes", uid, server=target)
    assert deleted.code == 1 and deleted.error_lines == [line]

    chosen = cli("show", orthanc_id("KK-TWIN", uid), server=target)
    assert chosen.code == 0, chosen.stderr
    assert rows_of(chosen.stdout)["patient"].startswith("KK-TWIN TWIN^SECOND")
    left = cli("--json", "stats", server=target).json()["statistics"]
    assert left["count_instances"] == 2  # nothing was deleted


# -- labels --------------------------------------------------------------------------------------


def _labels_round_trip(cli: Cli, target: Orthanc, uid: str) -> None:
    added = cli("labels", "add", "study", uid, "reviewed", "urgent", server=target)
    assert added.code == 0, added.stderr
    assert added.stdout.startswith(f"added study {uid} (Orthanc ID ")
    assert added.stdout.rstrip().endswith(": labels reviewed, urgent")
    listed = cli("labels", "list", server=target)
    assert listed.stdout.splitlines() == ["reviewed", "urgent"]
    removed = cli("labels", "remove", "study", uid, "reviewed", "--json", server=target)
    assert removed.code == 0, removed.stderr
    assert removed.json()["labels"] == ["urgent"]
    one = cli("labels", "list", "study", uid, server=target)
    assert one.stdout.rstrip().endswith(": labels urgent")


def test_labels_are_refused_clearly_or_round_trip(
    cli: Cli, servers: Servers, first_study: dict[str, str]
) -> None:
    target = servers.new(sample=True)
    uid = first_study["StudyInstanceUID"]
    listed = cli("labels", "list", server=target)
    if listed.code == 0:  # a server that keeps labels (Orthanc 1.12 with SQLite)
        _labels_round_trip(cli, target, uid)
        return
    # Orthanc 1.10.1 (the recordings), or a database without labels
    assert listed.code == 1
    [line] = listed.error_lines
    assert line.startswith(
        "kkorthanc: error: this server keeps no labels: Labels needs Orthanc 1.12.0"
    )
    added = cli("labels", "add", "study", uid, "reviewed", server=target)
    assert added.code == 1 and added.error_lines == [line]
    if cli.mode != "live":
        assert cli.recorded() == ["GET /system"]  # refused before any label request


@pytest.mark.live_only
@pytest.mark.skipif(not ORTHANC_112, reason="Orthanc 1.12.3 not found (../shared/orthanc-1.12.3)")
def test_labels_round_trip_on_orthanc_1_12(
    cli: Cli, servers: Servers, first_study: dict[str, str]
) -> None:
    # its SQLite index keeps labels (Debian's PostgreSQL index plugin does not)
    target = servers.new(sample=True, binary=ORTHANC_112, index=None)
    _labels_round_trip(cli, target, first_study["StudyInstanceUID"])


# -- remote modalities ---------------------------------------------------------------------------

#: on beta: 2 patients x 2 studies x 1 series x 2 instances; on alpha: 1 study of 2 instances
BETA_DATA = synthetic.SyntheticSpec(2, 2, 1, 2, seed=7)
ALPHA_DATA = synthetic.SyntheticSpec(1, 1, 1, 2, seed=8)


def test_modality_echo_find_move_and_store(cli: Cli, servers: Servers, kk_mode: str) -> None:
    alpha, beta = servers.pair(config={"DefaultEncoding": "Utf8"})
    if kk_mode != "replay":
        servers.sandbox_of(beta).load_synthetic(BETA_DATA)
        servers.sandbox_of(alpha).load_synthetic(ALPHA_DATA)

    listed = cli("modality", "list", "--json", server=alpha)
    assert listed.code == 0, listed.stderr
    [peer] = listed.json()
    assert (peer["name"], peer["aet"], peer["host"]) == ("beta", "BETA", "127.0.0.1")
    assert all_keys_snake_case(peer)
    echo = cli("modality", "echo", "beta", server=alpha)
    assert echo.code == 0, echo.stderr
    assert echo.stdout.strip() == f"C-ECHO beta (BETA@127.0.0.1:{peer['port']}): ok"
    unknown = cli("modality", "echo", "gamma", server=alpha)
    assert unknown.code == 1
    assert unknown.error_lines == [
        "kkorthanc: error: the server has no modality named 'gamma' (it knows: beta)"
    ]

    found = cli("modality", "find", "beta", "study", "PatientID=KK-7-0000", server=alpha)
    assert found.code == 0, found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("  [patient KK-7-0000 王^小明]") for line in lines)
    assert "2 answer(s) from beta" in found.stderr
    series = cli("modality", "find", "beta", "series", "--json", "Modality=*", server=alpha)
    assert [answer["level"] for answer in series.json()] == ["Series"] * 4

    moved = cli("modality", "move", "beta", "study", "PatientID=KK-7-0000", server=alpha)
    assert moved.code == 0, moved.stderr
    assert re.fullmatch(rf"moved 2 studies from beta to ALPHA \(job {UUID}\)\n", moved.stdout)
    arrived = cli("find", "study", "PatientID=KK-7-0000", server=alpha)
    assert len(arrived.stdout.splitlines()) == 2

    nothing = cli("modality", "move", "beta", "study", "PatientID=nobody", server=alpha)
    assert nothing.code == 1
    assert nothing.error_lines == [
        "kkorthanc: error: beta has no study matching PatientID=nobody: nothing to move"
    ]
    failed = cli(
        "modality", "move", "beta", "study", "PatientID=KK-7-0001", "--target", "NOSUCH",
        server=alpha,
    )
    assert failed.code == 1
    [line] = failed.error_lines
    job = re.search(rf"job ({UUID}) failed: C-MOVE", line)
    assert job, line
    again = cli("jobs", "wait", job.group(1), server=alpha)
    assert again.code == 1 and again.error_lines == [line]

    stored = cli("modality", "store", "beta", "KK-8-0000", server=alpha)
    assert stored.code == 0, stored.stderr
    assert stored.stdout.splitlines() == [
        f"sent patient KK-8-0000 (Orthanc ID {orthanc_id('KK-8-0000')}), 王^小明",
        f"2 of 2 instances stored by beta (BETA@127.0.0.1:{peer['port']})",
    ]
    on_beta = cli("find", "patient", "PatientID=KK-8-0000", server=beta)
    assert len(on_beta.stdout.splitlines()) == 1

    later = cli("modality", "store", "beta", "KK-7-0000", "--no-wait", server=alpha)
    assert later.code == 0, later.stderr
    store_job = later.stdout.strip()
    assert re.fullmatch(UUID, store_job)
    done = cli("--json", "jobs", "wait", store_job, server=alpha)
    assert done.code == 0, done.stderr
    content = done.json()["content"]
    assert (content["instances_count"], content["failed_instances_count"]) == (4, 0)


# -- sandbox -----------------------------------------------------------------------------------


@pytest.fixture
def sandbox_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "kkhome"
    yield home
    # whatever happened in the test, leave no server running
    state = home / "sandbox.json"
    if state.exists():
        run(["-m", "kkorthanc.cli", "sandbox", "stop"], clean_env(home))


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.live_only
def test_sandbox_outlives_start_and_stops_by_pid(sandbox_home: Path) -> None:
    env = clean_env(sandbox_home)
    absent = run(["-m", "kkorthanc.cli", "sandbox", "status"], env)
    assert absent.code == 1 and "no sandbox" in absent.stdout

    started = run(["-m", "kkorthanc.cli", "sandbox", "start", "--sample"], env)
    assert started.code == 0, started.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
    )
    assert set(exports) == {"ORTHANC_URL", "ORTHANC_USERNAME", "ORTHANC_PASSWORD"}
    assert exports["ORTHANC_PASSWORD"].startswith(PASSWORD_PREFIX)
    state_file = sandbox_home / "sandbox.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert _alive(state["pid"])

    # the starting process has exited; the server still answers with the printed credentials
    stats = run(["-m", "kkorthanc.cli", "--json", "stats"], {**env, **exports})
    assert stats.code == 0, stats.stderr
    assert stats.json()["statistics"]["count_instances"] == 48

    status = run(["-m", "kkorthanc.cli", "--json", "sandbox", "status"], env)
    assert status.code == 0
    assert status.json()["status"] == "running"
    assert "password" not in status.json()

    twice = run(["-m", "kkorthanc.cli", "sandbox", "start"], env)
    assert twice.code == 0 and "already runs" in twice.stderr
    assert f"export ORTHANC_URL={exports['ORTHANC_URL']}" in twice.stdout
    assert "sample" not in twice.stderr
    # asked for a sample, the running sandbox says it did not load one, and why
    sample = run(["-m", "kkorthanc.cli", "sandbox", "start", "--sample", "2"], env)
    assert sample.code == 0
    assert f"export ORTHANC_URL={exports['ORTHANC_URL']}" in sample.stdout
    assert "already runs" in sample.stderr and "48 instances" in sample.stderr
    assert "the sample was not loaded" in sample.stderr
    assert "kkorthanc sandbox stop" in sample.stderr

    stopped = run(["-m", "kkorthanc.cli", "sandbox", "stop"], env)
    assert stopped.code == 0
    assert not _alive(state["pid"])
    assert not Path(state["folder"]).exists()
    assert not state_file.exists()
    after = run(["-m", "kkorthanc.cli", "sandbox", "status"], env)
    assert after.code == 1


@pytest.mark.live_only
def test_sandbox_sample_size_and_a_failed_start_in_one_line(sandbox_home: Path) -> None:
    env = clean_env(sandbox_home)
    started = run(["-m", "kkorthanc.cli", "--json", "sandbox", "start", "--sample", "1"], env)
    assert started.code == 0, started.stderr
    state = started.json()
    assert state["sample_loaded"] is True and "password" in state
    exports = {
        "ORTHANC_URL": state["url"],
        "ORTHANC_USERNAME": state["username"],
        "ORTHANC_PASSWORD": state["password"],
    }
    stats = run(["-m", "kkorthanc.cli", "--json", "stats"], {**env, **exports})
    counts = stats.json()["statistics"]
    assert (counts["count_patients"], counts["count_instances"]) == (1, 12)
    assert run(["-m", "kkorthanc.cli", "sandbox", "stop"], env).code == 0

    # a port already taken: Orthanc exits at start; one line names the cause and the log
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        failed = run(["-m", "kkorthanc.cli", "sandbox", "start", "--port", str(port)], env)
    assert failed.code == 1 and failed.stdout == ""
    [line] = failed.stderr.splitlines()
    assert line.startswith("kkorthanc: error: the sandbox did not start: Orthanc exited at start")
    assert "already in use" in line and str(port) in line
    log = re.search(r"\(log: (\S+)\)$", line)
    assert log, line
    assert Path(log.group(1)) == sandbox_home / "sandbox-start.log"
    assert "Orthanc has stopped" in Path(log.group(1)).read_text()
    assert not (sandbox_home / "sandbox.json").exists()
    assert not (sandbox_home / "sandbox").exists()


# -- servers that answer what no Orthanc would -----------------------------------------------------

SYSTEM_1_12 = (
    b'{"Version": "1.12.3", "ApiVersion": 23, "DicomAet": "ORTHANC", "Name": "hostile", '
    b'"HasLabels": true, "Capabilities": {"HasLabels": true}}'
)
SYSTEM_1_10 = b'{"Version": "1.10.1", "ApiVersion": 18, "DicomAet": "ORTHANC", "Name": "old"}'
ORTHANC_LIKE_ID = "0b0b0b0b-0b0b0b0b-0b0b0b0b-0b0b0b0b-0b0b0b0b"

#: (name, what /system answers, what every other path answers)
HOSTILE_ANSWERS: dict[str, tuple[bytes, bytes]] = {
    "a string for everything": (reply(SYSTEM_1_12), reply(b'"x"')),
    "a list of numbers": (reply(SYSTEM_1_12), reply(b"[1, 2, 3]")),
    "an object for everything": (reply(SYSTEM_1_12), reply(b'{"CountPatients": "many"}')),
    "resources of no level": (reply(SYSTEM_1_12), reply(b'[{"ID": "x"}]')),
    "a system answer of the wrong shape": (reply(b'{"Version": 12}'), reply(b"[]")),
    "409 Conflict": (
        reply(SYSTEM_1_12),
        reply(b'{"HttpStatus": 409, "Message": "Conflict"}', "409 Conflict"),
    ),
    "a redirect elsewhere": (
        reply(SYSTEM_1_12),
        reply(b"", "302 Found", ["Location: http://elsewhere.invalid:1/x"]),
    ),
    "an answer over the limit": (
        reply(SYSTEM_1_12),
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\nConnection: close\r\n\r\n",
    ),
    "no labels on 1.10": (reply(SYSTEM_1_10), reply(b"[]")),
}

#: (server, command, exit code, what the one error line must say)
HOSTILE_CASES: list[tuple[str, list[str], int, str]] = [
    # answers of the wrong shape: the library's own error, or one it did not foresee
    ("a string for everything", ["show", ORTHANC_LIKE_ID], 1, "POST /tools/bulk-content"),
    ("a string for everything", ["find", "study", "PatientID=x"], 1, "POST /tools/find"),
    ("a string for everything", ["stats"], 1, "GET /statistics"),
    ("a string for everything", ["jobs", "cancel", "abc"], 1, "GET /jobs/abc"),
    ("a list of numbers", ["show", ORTHANC_LIKE_ID], 1, "POST /tools/bulk-content"),
    ("resources of no level", ["show", ORTHANC_LIKE_ID], 1, "POST /tools/bulk-content"),
    ("resources of no level", ["delete", "--yes", ORTHANC_LIKE_ID], 1, "POST /tools/bulk-content"),
    ("a list of numbers", ["tree"], 1, "GET /changes?last"),  # a forest reads it first
    ("a list of numbers", ["labels", "list"], 1, "GET /tools/labels"),  # once printed 1 2 3
    ("a list of numbers", ["stats"], 1, "GET /statistics"),
    ("an object for everything", ["labels", "list"], 1, "GET /tools/labels"),
    ("an object for everything", ["stats", "--json"], 1, "GET /statistics"),
    ("a system answer of the wrong shape", ["stats"], 1, "GET /system"),
    ("a system answer of the wrong shape", ["labels", "list"], 1, "GET /system"),
    # statuses, redirects, limits, features
    ("409 Conflict", ["modify", ORTHANC_LIKE_ID, "--replace", "X=1"], 1, "409"),
    ("409 Conflict", ["jobs", "list"], 1, "GET /jobs: 409"),
    ("a redirect elsewhere", ["stats"], 3, "refused: another origin"),
    ("a redirect elsewhere", ["find", "study", "PatientID=x"], 3, "POST /tools/find"),
    ("an answer over the limit", ["tree"], 3, "Content-Length 1000000000000"),
    ("no labels on 1.10", ["labels", "list"], 1, "(last request: GET /system)"),
]


@pytest.mark.parametrize(("server", "argv", "code", "says"), HOSTILE_CASES)
def test_server_faults_exit_in_one_line_naming_the_request(
    tmp_path: Path, server: str, argv: list[str], code: int, says: str
) -> None:
    system, other = HOSTILE_ANSWERS[server]

    def answer(fake: FakeServer, conn: Any, request: bytes) -> None:
        conn.sendall(system if path_of(request).partition("?")[0] == "/system" else other)

    with FakeServer(answer, limit=64) as fake:
        env = clean_env(tmp_path)
        env["ORTHANC_URL"] = fake.url
        result = run(["-m", "kkorthanc.cli", "--no-progress", *argv], env, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    (line,) = lines
    assert result.code == code, line
    assert line.startswith("kkorthanc: error: ")
    assert says in line, line
    assert re.search(r"\b(GET|POST|PUT|DELETE) /", line), line  # the request, by name
