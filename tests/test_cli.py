"""The ``kkorthanc`` command line, run in subprocesses: replayed from cassettes or live.

Each invocation goes through ``python -m tests.cli_runner``, which replays (or records) its own
cassette ``cassettes/test_cli/<test>-<n>.yaml`` with the settings of the ``cassette`` fixture.
The in-process ``client`` fixture only says where the server is; tests here send nothing from
the test process itself.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kkorthanc import Orthanc, Patient, Series, Study, orthanc_id, synthetic
from kkorthanc.cli import LEVELS, build_parser, resource_json
from kkorthanc.cli import _tree_json as tree_json
from kkorthanc.sandbox import PASSWORD_PREFIX, free_port

from .conftest import PORT_MAP, ROOT, Servers, cassette_path

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


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> Result:
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


class Cli:
    """Runs ``kkorthanc ARGS`` against a server, each call with its own cassette."""

    def __init__(self, mode: str, node: pytest.Item, home: Path) -> None:
        self.mode = mode
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
        return run([*runner, "--", *args], env)


@pytest.fixture
def cli(kk_mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return Cli(kk_mode, request.node, tmp_path / "home")


@pytest.fixture(scope="module")
def first_study() -> dict[str, str]:
    """Identifiers of the first synthetic study (computed locally, no server)."""
    ds = next(synthetic.generate(synthetic.SAMPLE))
    return {
        "PatientID": str(ds.PatientID),
        "StudyInstanceUID": str(ds.StudyInstanceUID),
        "SeriesInstanceUID": str(ds.SeriesInstanceUID),
        "StudyDescription": str(ds.StudyDescription),
    }


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
    assert parsed["statistics"]["CountInstances"] == 48
    assert parsed["statistics"]["CountStudies"] == 8
    assert parsed["system"]["api_version"] >= 16
    assert parsed["url"] == client.url


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
    for command in ("tree", "find", "upload", "export", "stats", "sandbox"):
        assert command in done.stdout
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
    assert stats.json()["statistics"]["CountInstances"] == 48

    status = run(["-m", "kkorthanc.cli", "--json", "sandbox", "status"], env)
    assert status.code == 0
    assert status.json()["status"] == "running"
    assert "password" not in status.json()

    twice = run(["-m", "kkorthanc.cli", "sandbox", "start"], env)
    assert twice.code == 0 and "already runs" in twice.stderr
    assert f"export ORTHANC_URL={exports['ORTHANC_URL']}" in twice.stdout

    stopped = run(["-m", "kkorthanc.cli", "sandbox", "stop"], env)
    assert stopped.code == 0
    assert not _alive(state["pid"])
    assert not Path(state["folder"]).exists()
    assert not state_file.exists()
    after = run(["-m", "kkorthanc.cli", "sandbox", "status"], env)
    assert after.code == 1
