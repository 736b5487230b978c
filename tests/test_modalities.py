"""Remote modalities: C-ECHO, C-FIND, C-MOVE and C-STORE between two real (or replayed) servers.

``servers.pair()`` gives alpha and beta, each the other's modality. Beta holds a small
synthetic set and alpha a different one, so data can travel both ways. Failures use a third
server whose modalities point at a port that refuses connections ("nowhere") and at a socket
that accepts but never answers ("hole").
"""

from __future__ import annotations

import datetime
import re
import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from kkorthanc import JobFailed, NotFound, Orthanc, PersonName, Study, jobs, orthanc_id
from kkorthanc.errors import InvalidRequest
from kkorthanc.jobs import Job
from kkorthanc.modalities import (
    EchoFailed,
    FindAnswer,
    Modality,
    StoreFailed,
    StoreReport,
    UnknownModality,
    _query_keys,
)
from kkorthanc.sandbox import Sandbox
from kkorthanc.synthetic import SyntheticSpec

from .conftest import Servers

#: on beta: 2 patients x 2 studies x 1 series x 2 instances
BETA_DATA = SyntheticSpec(
    patients=2, studies_per_patient=2, series_per_study=1, instances_per_series=2, seed=7
)
#: on alpha: one study of its own, to send to beta
ALPHA_DATA = SyntheticSpec(
    patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=2, seed=8
)
#: one instance, for servers that only need something to send
TINY = SyntheticSpec(
    patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1, seed=3
)
#: answers of C-FIND in UTF-8, so non-ASCII names survive the trip
UTF8 = {"DefaultEncoding": "Utf8"}


def stop_together(sandboxes: Sequence[Sandbox]) -> None:
    """Stop sandboxes in parallel: each Orthanc takes seconds to shut down."""
    if sandboxes:
        with ThreadPoolExecutor(len(sandboxes)) as pool:
            list(pool.map(lambda sandbox: sandbox.stop(), sandboxes))


@pytest.fixture(autouse=True)
def no_polling_delays_in_replay(kk_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replayed job polls answer at once: don't sleep between them."""
    if kk_mode == "replay":
        monkeypatch.setattr(jobs, "_sleep", lambda seconds: None)


@pytest.fixture
def nodes(servers: Servers) -> Iterator[Servers]:
    """The ``servers`` factory, with its sandboxes stopped all at once after the test."""
    yield servers
    stop_together(servers.sandboxes)


def loaded_pair(nodes: Servers, kk_mode: str) -> tuple[Orthanc, Orthanc]:
    """Alpha and beta, each the other's modality, each holding its own small data set."""
    alpha, beta = nodes.pair(config=UTF8)
    if kk_mode != "replay":
        nodes.sandbox_of(beta).load_synthetic(BETA_DATA)
        nodes.sandbox_of(alpha).load_synthetic(ALPHA_DATA)
    return alpha, beta


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections and that nothing else can take meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield sock.getsockname()[1]


@pytest.fixture
def hole_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def lonely_server(nodes: Servers, closed_port: int, hole_port: int) -> Orthanc:
    """A server with one instance whose modalities cannot be talked to.

    It runs one job at a time and gives up on silent peers after 2 s.
    """
    config = {
        "DicomModalities": {
            "nowhere": ["NOWHERE", "127.0.0.1", closed_port],
            "hole": ["HOLE", "127.0.0.1", hole_port],
        },
        "DicomScuTimeout": 2,
        "ConcurrentJobs": 1,
    }
    return nodes.new(spec=TINY, config=config)


# -- listing and C-ECHO ------------------------------------------------------------------------


def test_modalities_are_typed_and_cost_one_request(nodes: Servers) -> None:
    alpha, beta = nodes.pair()
    before = alpha.request_count
    listed = alpha.modalities()
    assert alpha.request_count - before == 1
    assert [m.name for m in listed] == ["beta"]
    peer = listed[0]
    assert isinstance(peer, Modality)
    assert peer.aet == beta.system.dicom_aet == "BETA"
    assert peer.host == "127.0.0.1"
    assert peer.port == beta.system.dicom_port
    assert repr(peer) == f"<Modality beta BETA@127.0.0.1:{peer.port}>"

    before = alpha.request_count
    one = alpha.modality("beta")
    assert alpha.request_count - before == 1
    assert (one.aet, one.host, one.port) == (peer.aet, peer.host, peer.port)

    with pytest.raises(UnknownModality, match="'gamma'") as caught:
        alpha.modality("gamma")
    assert isinstance(caught.value.__cause__, NotFound)

    # C-ECHO in both directions
    before = alpha.request_count
    one.echo()  # returns nothing; raises when the peer does not answer
    assert alpha.request_count - before == 1
    beta.modality("alpha").echo(timeout=5)


def test_echo_failure_raises_with_the_reason(
    nodes: Servers, closed_port: int, hole_port: int
) -> None:
    server = lonely_server(nodes, closed_port, hole_port)
    with pytest.raises(EchoFailed) as caught:
        server.modality("nowhere").echo()
    error = caught.value
    assert error.modality == "nowhere"
    assert error.status == 500
    assert "Connection refused" in error.reason
    assert "NOWHERE" in str(error) and "C-ECHO" in str(error)

    with pytest.raises(EchoFailed, match="timeout") as silent:
        server.modality("hole").echo(timeout=1)
    assert silent.value.modality == "hole"


# -- C-FIND, C-MOVE, C-STORE ---------------------------------------------------------------------


def test_find_on_b_move_to_a_and_store_back(nodes: Servers, kk_mode: str) -> None:
    alpha, beta = loaded_pair(nodes, kk_mode)
    remote = alpha.modality("beta")

    # C-FIND: typed answers in two requests, however many there are
    before = alpha.request_count
    answers = remote.find("Study")
    assert alpha.request_count - before == 2
    assert len(answers) == BETA_DATA.total_studies
    assert all(isinstance(a, FindAnswer) and a.level == "Study" for a in answers)
    assert len({a.study_instance_uid for a in answers}) == len(answers)
    assert all(isinstance(a.study_date, datetime.date) for a in answers)
    assert all(a.number_of_study_related_instances == 2 for a in answers)
    names = {a.patient_name for a in answers}
    assert all(isinstance(n, PersonName) for n in names)
    assert "王^小明" in names and "Müller^Jürgen" in names
    assert answers[0].tags["RetrieveAETitle"] == "BETA"

    # matching on the remote side: one patient, by snake_case keyword
    theirs = remote.find("study", patient_id="KK-7-0001")
    assert {a.patient_id for a in theirs} == {"KK-7-0001"}
    assert len(theirs) == BETA_DATA.studies_per_patient

    # C-MOVE one study from beta into alpha, as a job
    wanted = theirs[0]
    assert wanted.study_instance_uid and wanted.patient_id
    study_id = orthanc_id(wanted.patient_id, wanted.study_instance_uid)
    with pytest.raises(NotFound):
        alpha.study(study_id)
    job = remote.retrieve(wanted)
    assert isinstance(job, Job) and job.type == "DicomMoveScu"
    assert job.wait(timeout=60) is job and job.state == "Success"
    moved = alpha.study(study_id)
    assert moved.study_instance_uid == wanted.study_instance_uid
    assert moved.statistics()["CountInstances"] == wanted.number_of_study_related_instances

    # C-STORE alpha's own study back to beta
    own = [s for s in alpha.studies() if s.patient_main_dicom_tags["PatientID"] == "KK-8-0000"]
    assert len(own) == 1
    with pytest.raises(NotFound):
        beta.study(own[0].id)
    before = alpha.request_count
    report = remote.store(own[0])
    assert alpha.request_count - before == 1
    assert isinstance(report, StoreReport)
    assert (report.instances_count, report.failed_instances_count) == (2, 0)
    assert report.remote_aet == "BETA" and report.local_aet == "ALPHA"
    arrived = beta.study(own[0].id)
    assert isinstance(arrived, Study)
    assert arrived.statistics()["CountInstances"] == 2
    assert arrived.study_instance_uid == own[0].study_instance_uid


def test_retrieve_several_answers_as_one_job(nodes: Servers, kk_mode: str) -> None:
    alpha, _ = loaded_pair(nodes, kk_mode)
    remote = alpha.modality("beta")
    series = remote.find("Series")
    assert len(series) == BETA_DATA.total_series
    assert all(a.number_of_series_related_instances == 2 for a in series)
    assert {a.modality for a in series} <= {"CT", "MR", "US", "CR", "PT"}

    # a subset of the answers: narrowed by a new query on their UIDs, then one move
    chosen = series[1:3]
    before = alpha.request_count
    job = remote.retrieve(chosen)
    assert alpha.request_count - before == 3
    job.wait(timeout=60)
    assert len(job.content["Query"]) == 2
    assert alpha.statistics()["CountSeries"] == 1 + 2  # alpha's own series and the two
    for answer in chosen:
        assert answer.patient_id and answer.study_instance_uid and answer.series_instance_uid
        ident = orthanc_id(answer.patient_id, answer.study_instance_uid, answer.series_instance_uid)
        assert alpha.series(ident).series_instance_uid == answer.series_instance_uid

    # all the answers of one query: moved by the query itself
    patients = remote.find("Patient")
    before = alpha.request_count
    job = remote.retrieve(patients, target="ALPHA")
    assert alpha.request_count - before == 2
    job.wait(timeout=60)
    assert len(job.content["Query"]) == BETA_DATA.patients
    assert alpha.statistics()["CountInstances"] == 2 + BETA_DATA.total_instances

    # a move to an AET beta does not know fails on beta's side: Orthanc's reason is kept
    job = remote.retrieve(series[0], target="NOWHERE")
    with pytest.raises(JobFailed) as caught:
        job.wait(timeout=60)
    failure = caught.value
    assert failure.job_id == job.id
    assert failure.error_code == 9
    assert failure.description == "Error in the network protocol"
    assert "C-MOVE" in failure.details and "BETA" in failure.details
    assert failure.details in str(failure)


def test_store_failure_raises_with_the_reason(
    nodes: Servers, closed_port: int, hole_port: int
) -> None:
    server = lonely_server(nodes, closed_port, hole_port)
    study = server.studies()[0]
    nowhere = server.modality("nowhere")
    with pytest.raises(StoreFailed) as caught:
        nowhere.store(study)
    assert "Connection refused" in caught.value.reason
    assert caught.value.modality == "nowhere"

    job = nowhere.store([study.id], as_job=True)
    assert job.type == "DicomModalityStore"
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=30)
    assert "Connection refused" in failed.value.details
    assert failed.value.error_code == 9


def test_unknown_keyword_is_refused_with_a_suggestion(nodes: Servers) -> None:
    alpha, _ = nodes.pair()
    with pytest.raises(InvalidRequest, match="did you mean PatientID") as caught:
        alpha.modality("beta").find("Study", PatientIdd="KK*")
    assert "PatientIdd" in str(caught.value)


# -- arguments checked before anything is sent -----------------------------------------------------


@pytest.mark.no_cassette
def test_query_keys_are_built_from_python_values() -> None:
    keys = _query_keys(
        "Study",
        {
            "patient_id": "KK*",
            "StudyDate": (datetime.date(2020, 1, 2), None),
            "ModalitiesInStudy": ["CT", "MR"],
            "AccessionNumber": None,
            "StudyTime": datetime.time(8, 30),
        },
    )
    assert keys["PatientID"] == "KK*"
    assert keys["StudyDate"] == "20200102-"
    assert keys["ModalitiesInStudy"] == "CT\\MR"
    assert keys["AccessionNumber"] == ""
    assert keys["StudyTime"] == "083000"
    assert keys["StudyInstanceUID"] == ""  # asked back by default
    assert "SpecificCharacterSet" not in keys
    assert _query_keys("Patient", {"PatientName": "王*"})["SpecificCharacterSet"] == "ISO_IR 192"
    ranged = _query_keys("Study", {"StudyDate": (None, datetime.date(2001, 2, 3))})
    assert ranged["StudyDate"] == "-20010203"
    with pytest.raises(InvalidRequest, match="StudyDate"):
        _query_keys("Study", {"StudyDate": object()})


@pytest.mark.no_cassette
def test_query_keys_follow_the_rules_of_client_find() -> None:
    """Names and values go through the same rule and conversion as ``client.find``."""
    keys = _query_keys(
        "Study",
        {"0010,0020": "KK*", "modality": ["C*"], "study_date": ("20200101", "20201231")},
        {"(0008,0016)": "1.2.3"},
    )
    assert keys["PatientID"] == "KK*"  # a main tag's number: its keyword, asked once
    assert "0010,0020" not in keys
    assert keys["Modality"] == "C*\\C*"  # list items are literal
    assert keys["StudyDate"] == "20200101-20201231"  # a tuple is a range
    assert keys["0008,0016"] == "1.2.3"
    for matches, message in [
        ({"PatientID": "A", "patient_id": "B"}, "PatientID is given twice"),
        ({"Patient Name": "A"}, "'Patient Name' is not a tag name"),
        ({"PatientID": ("A", "B")}, "ranges exist only for dates and times"),
        ({"StudyDate": datetime.datetime(2020, 1, 2, 3)}, "not a datetime"),
        ({"NumberOfStudyRelatedInstances": 2.0}, "cannot query with a float"),
        ({"Modality": []}, "an empty list of alternatives"),
        ({"PatientID": True}, "a bool is not a DICOM value"),
    ]:
        with pytest.raises(InvalidRequest, match=f"^find\\(\\): .*{re.escape(message)}"):
            _query_keys("Study", matches)


@pytest.mark.no_cassette
def test_bad_arguments_fail_before_any_request() -> None:
    offline = Orthanc("http://127.0.0.1:9", auth=("kk", "unused"))
    peer = Modality.from_orthanc("peer", ["PEER", "127.0.0.1", 104], offline)
    other = FindAnswer.from_orthanc(
        {"PatientID": "P"},
        level="Patient",
        modality="other",
        query_id="q",
        index=0,
        query_size=1,
    )
    with pytest.raises(ValueError, match="unknown level"):
        peer.find("Planet")
    with pytest.raises(InvalidRequest, match="at least one"):
        peer.retrieve([])
    with pytest.raises(InvalidRequest, match="'other'"):
        peer.retrieve(other)
    with pytest.raises(InvalidRequest, match="at least one"):
        peer.store([])
    with pytest.raises(InvalidRequest, match="not a resource"):
        peer.store([42])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="timeout"):
        peer.echo(timeout=0)
    with pytest.raises(InvalidRequest, match="modality name"):
        offline.modality("a/b")
    assert offline.request_count == 0
