"""Typed models and lazy relations, against the synthetic sample server."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kkorthanc import Instance, Orthanc, Patient, PersonName, Series, Study, orthanc_id, synthetic
from kkorthanc.errors import ValidationFailed

from .conftest import ROOT, Servers

NAMES = {"王^小明", "Müller^Jürgen", "山田^太郎"}


def walk(patients: list[Patient]) -> int:
    """Touch every level and return the number of instances seen."""
    seen = 0
    for patient in patients:
        for study in patient.studies:
            for series in study.series:
                seen += len(series.instances)
    return seen


def test_walk_costs_one_request_per_level_and_nothing_the_second_time(client: Orthanc) -> None:
    start = client.request_count
    patients = client.patients()
    assert client.request_count - start == 1
    spec = synthetic.SAMPLE
    assert len(patients) == spec.patients

    start = client.request_count
    assert walk(patients) == spec.total_instances
    # studies, series, instances: one bulk request per level for all siblings, not
    # patients + studies + series = 28 requests, one per parent
    assert client.request_count - start == 3

    start = client.request_count
    assert walk(patients) == spec.total_instances
    for patient in patients:
        for study in patient.studies:
            assert study.patient is patient
            for series in study.series:
                assert series.study is study
                for instance in series.instances:
                    assert instance.series is series
                    assert instance.patient is patient
    assert client.request_count == start


def test_a_lone_resource_walks_one_request_per_parent(client: Orthanc) -> None:
    study = client.study(client.studies()[0].id)  # fetched alone: no siblings
    start = client.request_count
    series = study.series
    assert client.request_count - start == 1
    assert sum(len(s.instances) for s in series) == 6  # siblings now: one request
    assert client.request_count - start == 2
    assert study.patient.patient_id and client.request_count - start == 3


def test_a_find_and_a_walk_cost_a_request_per_level(client: Orthanc) -> None:
    start = client.request_count
    studies = client.find("study", PatientID="KK-*")
    assert len(studies) == 8 and client.request_count - start == 1
    assert sum(len(study.series) for study in studies) == 16
    assert client.request_count - start == 2
    assert sum(len(series.instances) for study in studies for series in study.series) == 48
    assert client.request_count - start == 3
    assert len({study.patient.id for study in studies}) == 4  # patients, shared: one request
    assert client.request_count - start == 4
    instances = client.find("instance", PatientID="KK-*")
    start = client.request_count
    assert {i.patient.id for i in instances} == {s.patient.id for s in studies}
    assert client.request_count - start == 3  # series, studies, patients


def test_plain_fields_never_touch_the_network(client: Orthanc) -> None:
    studies = client.studies()
    start = client.request_count
    for study in studies:
        for name in type(study).model_fields:
            getattr(study, name)
        repr(study)
        str(study)
        hash(study)
        study.path  # noqa: B018
    assert client.request_count == start


def test_typed_fields_have_python_types(client: Orthanc) -> None:
    series = client.series()
    assert series and all(isinstance(s, Series) for s in series)
    for one in series:
        assert one.modality in synthetic.MODALITIES
        assert isinstance(one.series_number, int)
        assert one.image_orientation_patient == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        assert one.last_update is not None and one.last_update.year >= 2020
        assert one.main_dicom_tags["SeriesInstanceUID"] == one.series_instance_uid
    multi = [s for s in series if s.operators_name and len(s.operators_name) > 1]
    assert multi, "the sample has series with two operators"
    assert all(isinstance(name, PersonName) for name in multi[0].operators_name or ())
    for study in client.studies():
        assert isinstance(study.study_date, datetime.date)
        assert study.study_time is None or isinstance(study.study_time, datetime.time)
        assert study.patient_main_dicom_tags["PatientID"].startswith("KK-")


def test_non_ascii_names_come_back_exactly(client: Orthanc) -> None:
    patients = client.patients()
    names = {str(p.patient_name) for p in patients}
    assert names >= NAMES
    chinese = next(p for p in patients if p.patient_name == "王^小明")
    assert chinese.patient_name is not None
    assert chinese.patient_name.family == "王"
    assert chinese.patient_name.given == "小明"
    german = next(p for p in patients if p.patient_name == "Müller^Jürgen")
    assert german.main_dicom_tags["PatientName"] == "Müller^Jürgen"


def test_lookup_by_uid_and_patient_id_and_local_ids(client: Orthanc) -> None:
    study = client.studies()[0]
    assert study.study_instance_uid and study.parent_patient_id
    patient_id = study.patient_main_dicom_tags["PatientID"]
    start = client.request_count
    found = client.lookup(study.study_instance_uid)
    assert found == [study]
    assert isinstance(found[0], Study)
    assert client.request_count - start == 2
    assert orthanc_id(patient_id, study.study_instance_uid) == study.id
    assert orthanc_id(patient_id) == study.parent_patient_id
    (patient,) = client.lookup(patient_id)
    assert isinstance(patient, Patient) and patient.id == study.parent_patient_id
    assert client.lookup("1.2.3.4.5.does.not.exist") == []


def test_parent_links_load_once_and_refresh_forgets(client: Orthanc) -> None:
    instance = client.instances(page_size=5)[7]
    start = client.request_count
    patient = instance.patient
    assert client.request_count - start == 3  # series, study, patient
    assert instance.patient is patient
    assert client.request_count - start == 3
    series = instance.series
    series.refresh()
    assert client.request_count - start == 4
    assert series.relations_loaded is False
    assert len(series.instances) == synthetic.SAMPLE.instances_per_series
    assert client.request_count - start == 5


def test_paging_costs_one_request_per_page(client: Orthanc) -> None:
    start = client.request_count
    instances = client.instances(page_size=10)
    total = synthetic.SAMPLE.total_instances
    assert len(instances) == total
    assert len({i.id for i in instances}) == total
    assert client.request_count - start == total // 10 + 1


def test_concurrent_relation_access_sends_one_request(client: Orthanc) -> None:
    study = client.studies()[0]
    start = client.request_count
    results: list[tuple[Series, ...]] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        results.append(study.series)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.request_count - start == 1
    assert all(r is results[0] for r in results)


def test_equality_and_hash_by_server_and_id(client: Orthanc) -> None:
    first = client.patients()
    second = client.patients()
    assert first == second
    assert first[0] is not second[0]
    assert len(set(first) | set(second)) == len(first)
    elsewhere = Patient.from_orthanc(first[0].model_dump(by_alias=True), None)
    assert elsewhere != first[0]


def test_reprs_are_short_and_informative(client: Orthanc) -> None:
    study = client.studies()[0]
    text = repr(study)
    assert text.startswith("<Study ") and "series>" in text
    assert study.study_date is not None and study.study_date.isoformat() in text
    patient = client.patients()[0]
    assert repr(patient).startswith(f"<Patient {patient.patient_id}")
    assert "kk-secret" not in repr(client)


def test_instance_content(client: Orthanc, tmp_path: Path) -> None:
    instance = client.instances(page_size=100)[0]
    start = client.request_count
    data = instance.read_bytes()
    assert data[128:132] == b"DICM"
    assert instance.file_size == len(data)
    tags = instance.tags()
    assert tags["SOPInstanceUID"] == instance.sop_instance_uid
    dataset = instance.dataset()
    assert dataset.SOPInstanceUID == instance.sop_instance_uid
    pixels = instance.pixels()
    assert pixels.shape == (synthetic.SAMPLE.rows, synthetic.SAMPLE.columns)
    assert client.request_count - start == 4


def test_malformed_values_load_with_raw_strings_kept(servers: Servers, kk_mode: str) -> None:
    target = servers.new()
    if kk_mode != "replay":
        dataset = next(synthetic.generate(synthetic.SyntheticSpec(1, 1, 1, 1, seed=99)))
        # written with VR LO so that the writer doesn't refuse them; Orthanc reads strings
        dataset.add_new(0x00080020, "LO", "20211345")  # StudyDate
        dataset.add_new(0x00200011, "LO", "x1")  # SeriesNumber
        dataset.add_new(0x00100030, "LO", "1980")  # PatientBirthDate
        servers.sandbox_of(target).load([synthetic.dataset_to_bytes(dataset)])
    (study,) = target.studies()
    assert study.study_date is None
    assert study.main_dicom_tags["StudyDate"] == "20211345"
    (series,) = target.series()
    assert series.series_number is None
    assert series.main_dicom_tags["SeriesNumber"] == "x1"
    (patient,) = target.patients()
    assert patient.patient_birth_date is None
    assert patient.main_dicom_tags["PatientBirthDate"] == "1980"


def test_unmodelled_tags_are_kept_and_newer_fields_ignored() -> None:
    data = {
        "ID": "abc",
        "Type": "Series",
        "MainDicomTags": {"Modality": "CT", "SeriesNumber": "3", "SomeFutureTag": "x"},
        "Instances": ["i1", "i2"],
        "ParentStudy": "s1",
        "Status": "Unknown",
        "FieldFromANewerServer": {"nested": True},
        "Labels": ["teaching"],
    }
    series = Series.from_orthanc(data)
    assert series.main_dicom_tags["SomeFutureTag"] == "x"
    assert series.series_number == 3
    assert series.instance_ids == ("i1", "i2")
    assert series.labels == ("teaching",)


def test_invalid_json_raises_our_error_with_cause() -> None:
    with pytest.raises(ValidationFailed, match="cannot read instance") as caught:
        Instance.from_orthanc({"MainDicomTags": {}})
    assert caught.value.__cause__ is not None


def test_relation_without_client_is_a_clear_error() -> None:
    study = Study.from_orthanc({"ID": "s", "MainDicomTags": {}, "ParentPatient": "p"})
    with pytest.raises(RuntimeError, match="not attached to a client"):
        study.patient  # noqa: B018


def test_types_reach_the_ide() -> None:
    """mypy --strict accepts a typed usage example: the field types are visible statically."""
    example = ROOT / "tests" / "typing_example.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(example)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_code_is_a_type_error() -> None:
    """mypy --strict rejects each marked line of the wrong-code example, and only those:
    a misspelt field, a field of another level, a result of the wrong level, a wrong value
    type, and a field of another level reached through a relation."""
    example = ROOT / "tests" / "typing_errors.py"
    lines = example.read_text().splitlines()
    expected = {
        (number, line.rsplit("# error: ", 1)[1].strip())
        for number, line in enumerate(lines, start=1)
        if "# error: " in line
    }
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(example)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    found = {
        (int(match[1]), match[2])
        for match in re.finditer(r"typing_errors\.py:(\d+): error: .*\[([a-z-]+)\]", result.stdout)
    }
    assert len(expected) == 5 and found == expected, result.stdout
