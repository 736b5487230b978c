"""Delete, anonymize and modify on the server, and the jobs that run them.

Each test that changes data gets its own server. Waiting on jobs replays deterministically:
polling stops at the first final state, so the recorded polls are consumed exactly.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import pytest

from kkorthanc import (
    BadRequest,
    Instance,
    JobFailed,
    JobTimeout,
    NotFound,
    Orthanc,
    Study,
    UnsupportedByServer,
)
from kkorthanc.errors import InvalidRequest
from kkorthanc.jobs import (
    _MODIFY_OPTIONS,
    Job,
    NoResultingResource,
    _operation_body,
)
from kkorthanc.synthetic import SyntheticSpec

from .conftest import Servers
from .test_modalities import (
    closed_port,
    hole_port,
    lonely_server,
    no_polling_delays_in_replay,
    nodes,
)

# fixtures shared with test_modalities
__all__ = ["closed_port", "hole_port", "no_polling_delays_in_replay", "nodes"]

#: 2 patients (王^小明 and Müller^Jürgen), one study each, 1 series of 2 instances
DATA = SyntheticSpec(
    patients=2, studies_per_patient=1, series_per_study=1, instances_per_series=2, seed=5
)
#: tags whose values name people or places in the synthetic data
IDENTIFYING = (
    "PatientName",
    "ReferringPhysicianName",
    "OperatorsName",
    "PerformingPhysicianName",
    "InstitutionName",
    "OtherPatientNames",
)


def study_of(server: Orthanc, patient_id: str) -> Study:
    """The study of one synthetic patient (one expanded listing)."""
    found = [s for s in server.studies() if s.patient_main_dicom_tags["PatientID"] == patient_id]
    assert len(found) == 1, patient_id
    return found[0]


def names_in(tags: dict[str, object]) -> set[str]:
    """Identifying names in a tag set, whole and by component (components of 2+ characters)."""
    names: set[str] = set()
    for keyword in IDENTIFYING:
        value = tags.get(keyword)
        if not isinstance(value, str) or not value:
            continue
        for person in value.split("\\"):
            names.add(person)
            names.update(part for part in person.replace("=", "^").split("^") if len(part) >= 2)
    return names


def test_anonymized_study_has_new_uids_and_none_of_the_names(nodes: Servers) -> None:
    server = nodes.new(spec=DATA)
    original = study_of(server, "KK-5-0000")
    source = original.instances[0].tags()
    names = names_in(source)
    assert "王^小明" in names and "小明" in names  # non-ASCII names are among them

    before = server.request_count
    anonymized = original.anonymize()
    assert server.request_count - before == 2  # the anonymization, the new study
    assert isinstance(anonymized, Study)
    assert anonymized.id != original.id
    assert anonymized.study_instance_uid != original.study_instance_uid
    assert anonymized.patient_main_dicom_tags["PatientID"] != "KK-5-0000"
    assert anonymized.patient_main_dicom_tags["PatientName"] not in ("", "王^小明")

    copy = anonymized.instances[0].tags()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert copy[keyword] and copy[keyword] != source[keyword], keyword
    text = json.dumps(copy, ensure_ascii=False)
    leaked = sorted(name for name in names if name in text)
    assert not leaked, f"identifying names left in the anonymized study: {leaked}"
    assert copy["PatientIdentityRemoved"] == "YES"
    assert server.study(original.id).study_instance_uid == original.study_instance_uid  # kept

    # options: keep a tag, replace another; the source can go
    again = original.anonymize(
        keep=["StudyDescription"], replace={"PatientName": "ANON^ONE"}, keep_source=False
    )
    assert again.study_description == original.study_description
    assert again.patient_main_dicom_tags["PatientName"] == "ANON^ONE"
    with pytest.raises(NotFound):
        server.study(original.id)
    with pytest.raises(BadRequest, match="DICOM standard"):
        again.anonymize(dicom_version="1999")


def test_modify_replaces_removes_keeps_and_delete_removes(nodes: Servers) -> None:
    server = nodes.new(spec=DATA, config={"OverwriteInstances": True})  # for in-place
    study = study_of(server, "KK-5-0001")
    assert study.accession_number

    before = server.request_count
    changed = study.modify(
        replace={"StudyDescription": "Renamed", "StudyDate": datetime.date(2020, 1, 2)},
        remove=["AccessionNumber"],
    )
    assert server.request_count - before == 2
    assert changed.id != study.id
    assert changed.study_instance_uid != study.study_instance_uid
    assert changed.study_description == "Renamed"
    assert changed.study_date == datetime.date(2020, 1, 2)
    assert changed.accession_number is None
    assert server.study(study.id).study_description == study.study_description  # source kept

    # identifiers kept: modified in place
    before = server.request_count
    same = changed.modify(
        replace={"StudyDescription": "In place"},
        keep=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        force=True,
    )
    assert server.request_count - before == 3  # modify, reconstruct the index, fetch
    assert same.id == changed.id
    assert same.study_instance_uid == changed.study_instance_uid
    assert same.study_description == "In place"
    with pytest.raises(InvalidRequest, match="delete the result"):
        same.modify(keep=["StudyInstanceUID"], force=True, keep_source=False)
    with pytest.raises(BadRequest, match="Force"):
        same.modify(replace={"StudyInstanceUID": "1.2.3"})

    # delete: gone afterwards, and deleting again says so
    before = server.request_count
    same.delete()
    assert server.request_count - before == 1
    with pytest.raises(NotFound):
        server.study(same.id)
    with pytest.raises(NotFound):
        same.delete()
    assert server.statistics()["CountStudies"] == DATA.total_studies  # the source is left


def test_instance_modify_stores_the_new_file(nodes: Servers) -> None:
    server = nodes.new(spec=DATA)
    instance = study_of(server, "KK-5-0000").instances[0]

    before = server.request_count
    copy = instance.modify(replace={"InstanceNumber": 42})
    assert server.request_count - before == 3  # modify, store, fetch
    assert isinstance(copy, Instance)
    assert copy.id != instance.id and copy.sop_instance_uid != instance.sop_instance_uid
    assert copy.instance_number == 42
    assert copy.parent_series_id == instance.parent_series_id
    assert server.instance(instance.id).instance_number == instance.instance_number

    keep_uid: dict[str, Any] = {"keep": ["SOPInstanceUID"], "force": True}
    with pytest.raises(InvalidRequest, match="keep_source=False"):
        instance.modify(replace={"InstanceNumber": 7}, **keep_uid)
    before = server.request_count
    in_place = instance.modify(replace={"InstanceNumber": 7}, keep_source=False, **keep_uid)
    assert server.request_count - before == 6  # modify, store, read, delete, store, fetch
    assert in_place.id == instance.id
    assert in_place.instance_number == 7

    anonymized = copy.anonymize(keep_source=False)
    assert anonymized.sop_instance_uid != copy.sop_instance_uid
    assert anonymized.tags()["PatientIdentityRemoved"] == "YES"
    with pytest.raises(NotFound):
        server.instance(copy.id)


def test_modification_as_job_and_the_jobs_listing(nodes: Servers) -> None:
    server = nodes.new(spec=DATA)
    study = study_of(server, "KK-5-0000")

    before = server.request_count
    job = study.modify(as_job=True, replace={"StudyDescription": "By job"})
    assert server.request_count - before == 2  # submit, fetch the job
    assert isinstance(job, Job)
    assert job.type == "ResourceModification"
    assert repr(job).startswith(f"<Job {job.id} ResourceModification ")
    assert job.wait(timeout=60) is job
    assert job.state == "Success" and job.succeeded and job.finished
    assert job.progress == 100
    assert job.error_code == 0
    assert isinstance(job.completion_time, datetime.datetime)
    assert job.creation_time is not None and job.creation_time <= job.completion_time

    before = server.request_count
    result = job.result_resource()
    assert server.request_count - before == 1  # finished already: only the new study
    assert isinstance(result, Study)
    assert result.study_description == "By job"
    assert result.id == job.content["ID"] != study.id

    anonymizing = study.anonymize(as_job=True)
    anonymized = anonymizing.result_resource(timeout=60)
    assert isinstance(anonymized, Study)
    assert anonymized.patient_main_dicom_tags["PatientName"] != "王^小明"

    before = server.request_count
    listed = server.jobs()
    assert server.request_count - before == 1
    by_id = {j.id: j for j in listed}
    assert {job.id, anonymizing.id} <= set(by_id)
    assert all(isinstance(j, Job) for j in listed)
    assert by_id[job.id].state == "Success"
    fetched = server.job(job.id)
    assert fetched.content["ID"] == result.id
    assert fetched.type == "ResourceModification"
    with pytest.raises(NotFound):
        server.job("no-such-job")


def test_failing_job_raises_job_failed_and_wait_times_out(
    nodes: Servers, closed_port: int, hole_port: int
) -> None:
    server = lonely_server(nodes, closed_port, hole_port)
    study = server.studies()[0]

    # a C-STORE to a port that refuses: the job fails with Orthanc's reason
    failing = server.modality("nowhere").store(study, as_job=True)
    with pytest.raises(JobFailed) as caught:
        failing.wait(timeout=30)
    error = caught.value
    assert error.job_id == failing.id
    assert error.error_code == 9
    assert error.description == "Error in the network protocol"
    assert "NOWHERE" in error.details and "Connection refused" in error.details
    assert error.details in str(error)
    assert failing.state == "Failure" and not failing.succeeded
    before = server.request_count
    with pytest.raises(JobFailed):
        failing.wait()  # known to have failed: nothing sent
    with pytest.raises(JobFailed):
        failing.raise_for_failure()
    assert server.request_count == before
    with pytest.raises(NoResultingResource):
        Job.model_validate({"ID": "x", "State": "Success"}).result_resource()
    resubmitted = failing.resubmit()
    assert resubmitted is failing
    with pytest.raises(JobFailed, match="Connection refused"):
        failing.wait(timeout=30)

    # a C-STORE to a peer that never answers holds the only job slot for 2 s
    stuck = server.modality("hole").store(study, as_job=True)
    before = server.request_count
    with pytest.raises(JobTimeout, match=stuck.id):
        stuck.wait(timeout=0)
    assert server.request_count - before == 1  # timeout 0: one look

    queued = study.anonymize(as_job=True)
    assert queued.state == "Pending"
    assert queued.pause().state == "Paused"
    with pytest.raises(JobTimeout):
        queued.wait(timeout=0)
    assert queued.resume().state in ("Pending", "Running")
    stuck.cancel()
    with pytest.raises(JobFailed):
        stuck.wait(timeout=30)
    anonymized = queued.result_resource(timeout=30)
    assert isinstance(anonymized, Study) and anonymized.id != study.id


# -- arguments checked before anything is sent -----------------------------------------------------


@pytest.mark.no_cassette
def test_bad_options_fail_before_any_request() -> None:
    offline = Orthanc("http://127.0.0.1:9", auth=("kk", "unused"))
    study = Study.from_orthanc({"ID": "s"}, offline)
    instance = Instance.from_orthanc({"ID": "i"}, offline)
    with pytest.raises(InvalidRequest, match="unknown option 'replce'"):
        study.modify(replce={"StudyDescription": "x"})
    with pytest.raises(InvalidRequest, match="'dicom_version'"):
        study.modify(dicom_version="2008")
    with pytest.raises(InvalidRequest, match="force must be True or False"):
        study.anonymize(force="yes")
    with pytest.raises(InvalidRequest, match="replace must map"):
        study.modify(replace=["StudyDescription"])
    with pytest.raises(InvalidRequest, match="remove must be a list"):
        study.modify(remove="AccessionNumber")
    with pytest.raises(InvalidRequest, match="as_job"):
        instance.modify(as_job=True, replace={"InstanceNumber": 1})
    with pytest.raises(InvalidRequest, match="cannot write"):
        study.modify(replace={"StudyDescription": object()})
    with pytest.raises(ValueError):  # InvalidRequest is a ValueError too
        study.anonymize(priority="high")
    job = Job.from_orthanc({"ID": "j", "State": "Running"}, offline)
    with pytest.raises(InvalidRequest, match="poll"):
        job.wait(poll=0)
    assert offline.request_count == 0

    body = _operation_body(
        "modify",
        _MODIFY_OPTIONS,
        {
            "replace": {
                "study_date": datetime.date(2021, 3, 4),
                "StudyTime": datetime.time(7, 5, 9),
                "SeriesNumber": 3,
                "OperatorsName": ["A^B", "C^D"],
                "ReferencedStudySequence": [{"ReferencedSOPInstanceUID": "1.2"}],
            },
            "remove": ["accession_number"],
            "keep_source": False,
            "private_creator": None,
        },
    )
    assert body == {
        "Replace": {
            "StudyDate": "20210304",
            "StudyTime": "070509",
            "SeriesNumber": "3",
            "OperatorsName": "A^B\\C^D",
            "ReferencedStudySequence": [{"ReferencedSOPInstanceUID": "1.2"}],
        },
        "Remove": ["AccessionNumber"],
        "KeepSource": False,
    }


@pytest.mark.no_cassette
def test_options_follow_the_one_keyword_rule_and_value_conversion() -> None:
    body = _operation_body(
        "modify",
        _MODIFY_OPTIONS,
        {
            "replace": {
                "0008,1030": "By number",
                "referenced_study_sequence": [
                    {"referenced_sop_instance_uid": "1.2", "study_date": datetime.date(2020, 1, 2)}
                ],
                "SeriesType": ("STATIC", "IMAGE"),
            },
            "remove": ["modality", "0019,1001", "referenced_image_sequence[0].sop_instance_uid"],
            "keep": ["study_instance_uid"],
        },
    )
    assert body == {
        "Replace": {
            "StudyDescription": "By number",
            "ReferencedStudySequence": [
                {"ReferencedSOPInstanceUID": "1.2", "StudyDate": "20200102"}
            ],
            "SeriesType": "STATIC\\IMAGE",  # values of a multi-valued tag, not a range
        },
        "Remove": ["Modality", "0019,1001", "ReferencedImageSequence[0].SOPInstanceUID"],
        "Keep": ["StudyInstanceUID"],
    }
    for options, message in [
        ({"replace": {"StudyDate": datetime.datetime(2020, 1, 2, 3)}}, "not a datetime"),
        ({"replace": {"InstanceNumber": 1.5}}, "value representation IS: cannot write a float"),
        ({"replace": {"StudyDescription": None}}, "None is not a DICOM value"),
        ({"replace": {"StudyDescription": True}}, "a bool is not a DICOM value"),
        ({"replace": {"PatientName": "A", "patient_name": "B"}}, "names PatientName twice"),
        ({"remove": ["Patient Name"]}, "remove: 'Patient Name' is not a tag name"),
        ({"keep": [""]}, "keep: '' is not a tag name"),
    ]:
        with pytest.raises(InvalidRequest, match="^modify\\(\\): .*" + re.escape(message)):
            _operation_body("modify", _MODIFY_OPTIONS, options)


def test_many_resources_modified_anonymized_and_deleted_in_one_call(servers: Servers) -> None:
    server = servers.new(sample=True)
    studies = server.studies()[:2]
    before = server.request_count
    modified = server.modify_many(studies, replace={"StudyDescription": "BULK"}, level="study")
    assert server.request_count - before == 2  # the bulk call, then the new ones in bulk
    assert isinstance(modified, list)
    new_studies = [r for r in modified if isinstance(r, Study)]
    assert len(new_studies) == 2
    assert all(s.study_description == "BULK" for s in new_studies)
    assert {s.id for s in new_studies}.isdisjoint({s.id for s in studies})

    job = server.anonymize_many(new_studies, as_job=True, level="study")
    assert isinstance(job, Job)
    job.wait(timeout=60)
    assert job.succeeded

    count = server.statistics()["CountStudies"]
    before = server.request_count
    server.delete_many([*studies, new_studies[0].id])
    assert server.request_count - before == 1
    assert server.statistics()["CountStudies"] == count - 3
    with pytest.raises(InvalidRequest, match="not a resource or an Orthanc ID"):
        server.delete_many([42])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="no resources"):
        server.delete_many([])


def test_keep_labels_is_refused_before_sending_where_the_server_lacks_it(
    servers: Servers,
) -> None:
    server = servers.new(sample=True)
    study = server.studies()[0]
    if not server.supports("KeepLabels"):
        before = server.request_count
        with pytest.raises(UnsupportedByServer, match=r"1\.12\.3"):
            study.modify(replace={"StudyDescription": "X"}, keep_labels=True)
        assert server.request_count == before
        return
    if server.supports("Labels"):
        study.add_label("kk-kept")
        copy = study.modify(replace={"StudyDescription": "X"}, keep_labels=True)
        assert copy.labels == ("kk-kept",)
        plain = study.modify(replace={"StudyDescription": "Y"})
        assert plain.labels == ()
