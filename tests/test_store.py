"""The stored forest: the answers of the forest in memory, from a file reopened without listing.

Every test compares a stored forest with :func:`load_forest` of the same server (snapshots,
lookups, finds, update reports), counts the requests of reopening, and checks what the file
holds after a crash, an error inside the update's transaction, or for another server.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kkorthanc import ForestStoreError, Orthanc, Patient, synthetic
from kkorthanc.forest import (
    SCHEMA_VERSION,
    AmbiguousIdentifier,
    NotInForest,
    PatientForest,
    StoredForest,
    build_patient_forest,
    load_forest,
    open_forest,
)
from kkorthanc.forest import _file as store_file
from kkorthanc.forest._file import Codec, ForestFile

from .conftest import Servers

#: the sample with a fourth instance per series: its IM003 files join existing series
LONGER = synthetic.SyntheticSpec(4, 2, 2, 4)
#: finds whose answers must be the same in memory and from the file
FINDS: list[tuple[str, dict[str, Any]]] = [
    ("patient", {"PatientID": "KK-0-0001"}),
    ("instance", {"PatientID": "KK-0-0002"}),
    ("study", {"PatientID": "kk-0-0003"}),  # case-insensitive: the index's key, then the check
    ("series", {"StudyInstanceUID": synthetic.uid("study", 0, 1, 1)}),
    ("instance", {"SeriesInstanceUID": synthetic.uid("series", 0, 2, 0, 1)}),
    ("instance", {"SOPInstanceUID": synthetic.uid("instance", 0, 3, 1, 0, 2)}),
    ("study", {"AccessionNumber": "A00000003001"}),
    ("study", {"PatientID": ["KK-0-0000", "KK-0-0002"], "StudyDescription": "*CT*"}),
    ("instance", {"PatientID": "KK-0-0001", "StudyInstanceUID": synthetic.uid("study", 0, 2, 0)}),
    ("series", {"Modality": "CT"}),
    ("study", {"StudyDate": ("20000101", None)}),
    ("patient", {"PatientName": "*"}),
    ("instance", {}),
]


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    """Replayed servers share canonical URLs: no forest may leak from one test to the next."""
    build_patient_forest.cache_clear()
    yield
    build_patient_forest.cache_clear()


@pytest.fixture
def settled(client: Orthanc, kk_mode: str) -> None:
    """Wait until the shared server logged every Stable* change of the sample."""
    deadline = time.monotonic() + 30
    while client.last_change() < 76 + 28:  # 76 resources, 28 of them above instances
        assert time.monotonic() < deadline, "the shared server never became stable"
        if kk_mode != "replay":
            time.sleep(0.5)


def upload(client: Orthanc, spec: synthetic.SyntheticSpec, *only: str) -> list[str]:
    """POST the synthetic files of ``spec`` (or only those named); their instance IDs."""
    ids = []
    for name, body in synthetic.generate_bytes(spec):
        if only and name.removesuffix(".dcm") not in only:
            continue
        answer = client._transport.request(
            "POST", "/instances", data=body, headers={"Content-Type": "application/dicom"}
        ).json()
        ids.append(answer["ID"])
    return ids


def walk(forest: PatientForest) -> int:
    """Touch every level through the links and check they agree; the number of instances."""
    seen = 0
    for patient in forest.patients:
        assert [s.id for s in patient.studies] == list(patient.study_ids)
        for study in patient.studies:
            assert study.patient is patient
            assert [s.id for s in study.series] == list(study.series_ids)
            for series in study.series:
                assert series.study is study
                for instance in series.instances:
                    assert instance.series is series and instance.patient is patient
                    seen += 1
    return seen


def without_last_update(snapshot: dict[str, dict[str, dict[str, Any]]]) -> Any:
    return {
        level: {
            i: {k: v for k, v in fields.items() if k != "last_update"} for i, fields in rows.items()
        }
        for level, rows in snapshot.items()
    }


def ids(resources: list[Any]) -> list[str]:
    return [r.id for r in resources]


# -- the same answers ------------------------------------------------------------------------------


@pytest.mark.usefixtures("settled")
def test_a_stored_forest_answers_as_the_forest_in_memory(client: Orthanc, tmp_path: Path) -> None:
    memory = load_forest(client)
    path = tmp_path / "sample.forest"
    built = open_forest(client, path)
    assert isinstance(built, PatientForest) and built.build_reason is not None
    assert built.snapshot() == memory.snapshot()
    built.close()

    before = client.request_count
    with open_forest(client, path, update=False) as forest:
        assert forest.models_in_memory == 0 and forest.build_reason is None
        assert forest.counts == memory.counts and len(forest) == len(memory)
        assert forest.last_seq == memory.last_seq and forest.depth == "instance"
        for level in ("patients", "studies", "series", "instances"):
            view, held = getattr(forest, level), getattr(memory, level)
            assert len(view) == len(held)
            assert [view[i].id for i in range(len(view))] == ids(list(held))
            assert view[-1].id == held[-1].id
        for resource in memory.instances:  # every identifier of every level
            for key in (resource.id, resource.uid):
                assert key is not None
                assert ids(forest.lookup(key)) == ids(memory.lookup(key))
        for resource in [*memory.patients, *memory.studies, *memory.series]:
            assert ids(forest.lookup(str(resource.uid))) == ids(memory.lookup(str(resource.uid)))
            found = forest.get(resource.id)
            assert found is not None and found.model_dump() == resource.model_dump()
        study = memory.studies[5]
        assert forest.study(str(study.study_instance_uid)).id == study.id
        assert forest.patient(" KK-0-0001 ").id == memory.patient("KK-0-0001").id
        assert forest.studies(str(study.study_instance_uid)) is forest.study(study.id)
        accession = str(study.accession_number)
        assert ids(forest.by_accession_number(accession)) == ids(
            memory.by_accession_number(accession)
        )
        assert str(study.study_instance_uid) in forest.studies
        assert forest.get("KK-0-0009") is None and "KK-0-0009" not in forest
        with pytest.raises(NotInForest, match=r"forest\.update"):
            forest.series("1.2.3.4")
        for level, query in FINDS:
            assert ids(forest.find(level, query)) == ids(memory.find(level, query)), query
        assert forest.snapshot() == memory.snapshot()
        assert walk(forest) == 48
    assert client.request_count == before


@pytest.mark.usefixtures("settled")
def test_lookups_and_identifier_finds_make_only_the_patients_they_need(
    client: Orthanc, tmp_path: Path
) -> None:
    path = tmp_path / "sample.forest"
    open_forest(client, path).close()
    memory = load_forest(client)
    tree = 1 + 2 + 2 * 2 + 2 * 2 * 3  # a patient of the sample, with everything below it
    with open_forest(client, path, update=False) as forest:
        study = forest.study(synthetic.uid("study", 0, 1, 0))
        assert forest.models_in_memory == tree
        assert study.patient.studies[1].series[0].instances[2].study.patient is study.patient
        assert forest.models_in_memory == tree  # walking costs neither request nor file read
        assert forest.studies[0].id == memory.studies[0].id  # position: the file, one patient
        assert forest.models_in_memory == 2 * tree
        found = forest.find("instance", PatientID="KK-0-0002", InstanceNumber="2")
        assert ids(found) == ids(memory.find("instance", PatientID="KK-0-0002", InstanceNumber="2"))
        assert forest.models_in_memory == 3 * tree
        assert forest.find("series", SeriesInstanceUID="1.2.3.4") == []
        assert forest.models_in_memory == 3 * tree
        assert ids(forest.find("series", Modality="MR")) == ids(
            memory.find("series", Modality="MR")
        )
        assert forest.models_in_memory == memory.counts.total  # any other query: every model


def test_a_uid_shared_by_two_patients_is_reported_from_the_file(
    servers: Servers, tmp_path: Path
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    study = load_forest(client).study(synthetic.uid("study", 0, 0, 0))
    client._transport.post_json(  # the same patient, UIDs kept, under another PatientID
        f"/patients/{study.parent_patient_id}/modify",
        {
            "Replace": {"PatientID": "KK-OTHER"},
            "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            "Force": True,
        },
    )
    memory = load_forest(client)
    shared = str(study.study_instance_uid)
    assert len(memory.lookup(shared)) == 2
    with open_forest(client, tmp_path / "f.forest") as forest:
        with pytest.raises(AmbiguousIdentifier) as caught:
            forest.study(shared)
        assert ids(list(caught.value.matches)) == ids(memory.lookup(shared))
        instance = study.series[0].instances[0]
        assert ids(forest.lookup(str(instance.uid))) == ids(memory.lookup(str(instance.uid)))
        for level in ("study", "series", "instance"):
            query = {"StudyInstanceUID": shared}
            assert ids(forest.find(level, query)) == ids(memory.find(level, query))
        assert forest.snapshot() == memory.snapshot()


# -- reopening -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("settled")
def test_reopening_costs_no_listing(client: Orthanc, tmp_path: Path) -> None:
    path = tmp_path / "sample.forest"
    before = client.request_count
    first = build_patient_forest(client, store=path)
    # GET /system (the header), GET /changes?last, one page per level
    assert client.request_count - before == 6
    assert isinstance(first, StoredForest) and first.build_reason is not None
    assert build_patient_forest(client, store=path) is first
    assert client.request_count - before == 6
    first.close()  # the cache opens a closed forest's file again

    before = client.request_count
    forest = build_patient_forest(client, store=path)
    assert forest is not first and forest.build_reason is None
    assert client.request_count - before == 2  # the update: GET /changes, GET /statistics
    assert forest.snapshot() == load_forest(client).snapshot()
    forest.close()

    before = client.request_count
    with open_forest(client, path, update=False) as reopened:
        assert reopened.counts.total == 76 and reopened.models_in_memory == 0
        info = reopened.store_info
    assert client.request_count == before
    assert info.url == client.url and info.depth == "instance"
    assert info.schema_version == SCHEMA_VERSION and info.server_version == client.system.version
    assert info.last_seq == forest.last_seq and info.size == path.stat().st_size
    extra = client.system.model_extra or {}  # 1.12+: recorded, for information
    assert info.database_server_identifier == extra.get("DatabaseServerIdentifier")


def test_depth_series_is_stored_and_instances_load_lazily(client: Orthanc, tmp_path: Path) -> None:
    memory = load_forest(client, depth="series")
    path = tmp_path / "series.forest"
    open_forest(client, path, depth="series").close()
    with open_forest(client, path, depth="series", update=False) as forest:
        assert forest.counts == memory.counts == (4, 8, 16, 48)
        assert len(forest.instances) == 0
        series = forest.series(synthetic.uid("series", 0, 0, 0, 0))
        before = client.request_count
        assert len(series.instances) == 3  # below the depth: one request, as in memory
        assert client.request_count - before == 1
        assert forest.snapshot() == memory.snapshot()


# -- updating ------------------------------------------------------------------------------------


def test_an_update_after_uploads_and_deletions_equals_a_fresh_build(
    servers: Servers, tmp_path: Path
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    transport = client._transport
    path = tmp_path / "f.forest"
    stored = open_forest(client, path)
    memory = load_forest(client)
    kept = stored.patient("KK-0-0000")

    upload(client, synthetic.SyntheticSpec(1, 1, 2, 2, seed=9))  # a new patient
    upload(client, LONGER, "P001/ST00/SE00/IM003")  # an instance in an existing series
    p2 = memory.patients[2]
    transport.delete(f"/instances/{p2.studies[0].series[0].instance_ids[0]}")
    transport.delete(f"/series/{p2.studies[1].series[0].id}")
    for instance_id in p2.studies[1].series[1].instance_ids:
        transport.delete(f"/instances/{instance_id}")  # the study goes with its last instance
    p3 = memory.patients[3]
    transport.post_json(
        f"/studies/{p3.studies[0].id}/modify",
        {"Replace": {"StudyDescription": "Copy"}, "Force": True},
    )
    transport.post_json(
        f"/studies/{p3.studies[1].id}/modify",
        {"Replace": {"StudyDescription": "Moved"}, "Force": True, "KeepSource": False},
    )

    in_file = stored.update()
    in_memory = memory.update()
    for name in ("added", "removed", "updated", "changes", "from_seq", "to_seq", "rebuilt"):
        assert getattr(in_file, name) == getattr(in_memory, name), name
    assert in_file.requests == in_memory.requests
    fresh = load_forest(client)
    assert stored.snapshot() == memory.snapshot()
    # Orthanc 1.12 also moves the LastUpdate of a study whose instances are deleted, which
    # neither updater reads again (the forest in memory shows the same second)
    assert without_last_update(stored.snapshot()) == without_last_update(fresh.snapshot())
    assert stored.patient("KK-0-0000") is kept
    stored.close()

    with open_forest(client, path, update=False) as reopened:
        assert reopened.last_seq == fresh.last_seq
        assert reopened.counts == fresh.counts
        assert reopened.snapshot() == memory.snapshot()
        assert walk(reopened) == fresh.counts.instances
        for level, query in FINDS:
            assert ids(reopened.find(level, query)) == ids(fresh.find(level, query)), query
        before = client.request_count
        assert not reopened.update().changed
        assert client.request_count - before == 2


def test_stable_changes_and_new_instances_of_existing_series_are_written(
    servers: Servers, tmp_path: Path, kk_mode: str
) -> None:
    client = servers.new(sample=True, stable_age=3)
    path = tmp_path / "f.forest"
    open_forest(client, path).close()
    deadline = time.monotonic() + 30
    while client.last_change() < 76 + 28:  # every resource turns stable after three seconds
        assert time.monotonic() < deadline
        if kk_mode != "replay":
            time.sleep(0.5)
    with open_forest(client, path) as forest:  # reopened, then the Stable* changes applied
        assert all(s.is_stable for s in forest.series)
    upload(client, LONGER, "P000/ST00/SE00/IM003", "P002/ST01/SE01/IM003")
    with open_forest(client, path) as forest:
        assert len(forest.series(synthetic.uid("series", 0, 0, 0, 0)).instances) == 4
    with open_forest(client, path, update=False) as reopened:
        fresh = load_forest(client)
        assert reopened.snapshot() == fresh.snapshot()
        assert sum(s.is_stable is True for s in reopened.series) == 14


def test_a_cleared_feed_rebuilds_the_file_and_says_so(servers: Servers, tmp_path: Path) -> None:
    client = servers.new(sample=True, stable_age=3600)
    path = tmp_path / "f.forest"
    stored = open_forest(client, path)
    memory = load_forest(client)
    upload(client, synthetic.SyntheticSpec(1, 1, 1, 1, seed=4))
    client._transport.delete("/changes")
    in_file = stored.update()
    in_memory = memory.update()
    assert in_file.rebuilt and in_file.reason == in_memory.reason
    assert in_file.reason is not None and "no longer in the feed" in in_file.reason
    assert (in_file.added, in_file.removed, in_file.updated) == (
        in_memory.added,
        in_memory.removed,
        in_memory.updated,
    )
    stored.close()
    with open_forest(client, path, update=False) as reopened:
        assert reopened.snapshot() == load_forest(client).snapshot()
        assert reopened.update().rebuilt is False


def test_two_forests_on_one_file_see_each_others_writes(servers: Servers, tmp_path: Path) -> None:
    client = servers.new(sample=True, stable_age=3600)
    path = tmp_path / "f.forest"
    first = open_forest(client, path)
    second = open_forest(client, path, update=False)
    second.patient("KK-0-0000")
    upload(client, synthetic.SyntheticSpec(1, 1, 1, 2, seed=6))
    assert len(first.update().added.instances) == 2
    before = client.request_count
    report = second.update()  # reads the file again first: nothing left to replay
    assert client.request_count - before == 2 and not report.changed
    assert second.counts == first.counts
    assert second.snapshot() == first.snapshot() == load_forest(client).snapshot()
    first.close()
    second.close()


# -- identity, versions, crashes -------------------------------------------------------------------


def test_a_file_of_another_server_or_depth_is_rebuilt_or_refused(
    servers: Servers, tmp_path: Path
) -> None:
    one = servers.new(sample=True)
    two = servers.new(spec=synthetic.SyntheticSpec(1, 1, 1, 2, seed=8))
    path = tmp_path / "f.forest"
    open_forest(one, path).close()
    with pytest.raises(ForestStoreError, match=f"holds the forest of {one.url}, not of {two.url}"):
        open_forest(two, path, create=False)
    with open_forest(one, path, update=False) as forest:  # refused: left as it was
        assert forest.counts.instances == 48
    with open_forest(two, path) as forest:
        assert forest.build_reason is not None and one.url in forest.build_reason
        assert forest.counts == (1, 1, 1, 2) and forest.store_info.url == two.url
        assert forest.snapshot() == load_forest(two).snapshot()
    with pytest.raises(ForestStoreError, match="built with depth='instance', not depth='study'"):
        open_forest(two, path, depth="study", create=False)
    with open_forest(two, path, depth="study") as forest:
        assert forest.build_reason is not None and "depth" in forest.build_reason
        assert forest.snapshot() == load_forest(two, depth="study").snapshot()


@pytest.mark.no_cassette
def test_a_file_of_another_schema_version_or_not_a_forest_is_refused(tmp_path: Path) -> None:
    nowhere = Orthanc("http://127.0.0.1:9")  # never asked: the file is refused first
    newer = tmp_path / "newer.forest"
    with sqlite3.connect(newer) as db:
        db.execute("CREATE TABLE header (key TEXT PRIMARY KEY, value)")
        db.executemany(
            "INSERT INTO header VALUES (?, ?)",
            [("format", store_file.FORMAT), ("schema", SCHEMA_VERSION + 1)],
        )
    content = newer.read_bytes()
    with pytest.raises(ForestStoreError) as caught:
        open_forest(nowhere, newer)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"reads and writes version {SCHEMA_VERSION}" in message
    assert (caught.value.found, caught.value.expected) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert caught.value.path == str(newer) and newer.read_bytes() == content

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ForestStoreError, match="not a forest store"):
        open_forest(nowhere, other)
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, but long enough to be read as one\n" * 20)
    with pytest.raises(ForestStoreError, match="not a forest store"):
        open_forest(nowhere, text)
    with pytest.raises(ValueError, match="unknown depth"):
        open_forest(nowhere, tmp_path / "never.forest", depth="frames")
    assert not (tmp_path / "never.forest").exists()
    with pytest.raises(ForestStoreError, match="no forest is stored in it yet"):
        open_forest(nowhere, tmp_path / "empty.forest", create=False)


#: run in a child process: rewrite the whole file inside a transaction, then die before the
#: commit, as a killed process or a power cut would
_CRASH_MID_WRITE = """
import os, signal, sys
from kkorthanc.forest._file import ForestFile, Row
file = ForestFile.open(sys.argv[1])
file.header()
file.begin()
file.db.execute("DELETE FROM resources")
file.insert([Row(1, "junk", None, None, None, 0, b"junk")] * 1)
file.write_header({"last_seq": 123456})
file.db.execute("PRAGMA cache_spill = 1")  # let the dirty pages reach the file itself
file.db.execute("CREATE TABLE filler AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1"
                " FROM n WHERE i < 20000) SELECT i, randomblob(200) FROM n")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.usefixtures("settled")
def test_a_crash_in_the_middle_of_a_write_leaves_the_previous_state(
    client: Orthanc, tmp_path: Path
) -> None:
    path = tmp_path / "f.forest"
    with open_forest(client, path) as forest:
        before, seq = forest.snapshot(), forest.last_seq
    child = subprocess.run(
        [sys.executable, "-c", _CRASH_MID_WRITE, str(path)], capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    journal = Path(f"{path}-journal")
    assert journal.exists() and journal.stat().st_size > 0  # the write had begun
    requests = client.request_count
    with open_forest(client, path, update=False) as reopened:  # the journal is rolled back
        assert reopened.last_seq == seq and reopened.snapshot() == before
    assert client.request_count == requests


def test_an_error_inside_the_update_rolls_the_file_back(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    path = tmp_path / "f.forest"
    forest = open_forest(client, path)
    before, seq = forest.snapshot(), forest.last_seq
    upload(client, synthetic.SyntheticSpec(1, 1, 1, 3, seed=5))
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    real_insert = ForestFile.insert

    def insert_then_fail(self: ForestFile, rows: Any) -> None:
        real_insert(self, rows)  # written into the transaction, never committed
        raise OSError("disk full")

    monkeypatch.setattr(ForestFile, "insert", insert_then_fail)
    with pytest.raises(OSError, match="disk full"):
        forest.update()
    monkeypatch.undo()
    assert forest.last_seq == seq and forest.snapshot() == before  # read again from the file
    with open_forest(client, path, update=False) as other:
        assert other.snapshot() == before
    report = forest.update()
    assert len(report.added.instances) == 4
    assert forest.snapshot() == load_forest(client).snapshot()
    forest.close()


def test_the_file_holds_no_credentials(servers: Servers, tmp_path: Path) -> None:
    client = servers.new(sample=True, stable_age=3600)
    user, password = servers.auth_of(client)
    path = tmp_path / "f.forest"
    with open_forest(client, path) as forest:
        upload(client, synthetic.SyntheticSpec(1, 1, 1, 1, seed=3))
        forest.update()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (password, client.credentials_fingerprint, f"{user}:{password}"):
        assert secret.encode() not in raw
    file = ForestFile.open(path)
    header = file.header()
    assert header is not None
    assert set(header) == {
        *("format", "schema", "url", "server", "depth", "last_seq", "built_at", "updated_at"),
        *("anchor", "counts", "below"),
        *("dictionary:1", "dictionary:2", "dictionary:3", "dictionary:4"),
    }
    assert header["url"] == client.url and "@" not in header["url"]
    assert set(header["server"]) == {
        *("name", "version", "api_version", "index", "database_server_identifier"),
    }
    texts = [str(v) for k, v in header.items() if not k.startswith("dictionary:")]
    assert user not in [*texts, *map(str, header["server"].values())]  # (user "kk" is short)
    assert not [t for t in texts if password in t or f"{user}@" in t]
    listed = {item["ID"]: item for item in client.get_json("/instances", {"expand": ""})}
    rows = list(file.db.execute("SELECT level, id, parent, json FROM resources"))
    for level, resource_id, parent_id, data in rows:
        item = file.codecs[level].decode(data, resource_id, parent_id)
        assert password not in repr(item) and "Metadata" not in item  # (it names the uploader)
        if level == 4:  # the rows are what the server sends, nothing more
            assert item == listed[resource_id]
    assert sum(level == 4 for level, *_ in rows) == len(listed)
    file.close()


@pytest.mark.no_cassette
def test_rows_are_orthanc_json_without_the_columns() -> None:
    codec = Codec(Patient, b"")
    item = {"ID": "p1", "Type": "Patient", "MainDicomTags": {"PatientID": "X"}, "Studies": ["s"]}
    data = codec.encode(item)
    assert b"p1" not in data and codec.decode(data, "p1", None) == item
    assert store_file.identifier_key(" kk_0%1 ") == "KK 0 1" and not store_file.identifier_key("")
