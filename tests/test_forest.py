"""The patient forest: request counts of the build, links, indexes, cache, and the change feed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kkorthanc import Instance, Orthanc, Patient, Series, Study, ValidationFailed, synthetic
from kkorthanc import forest as forest_module
from kkorthanc._transport import Reply, Transport
from kkorthanc.forest import (
    AmbiguousIdentifier,
    Change,
    ChangePage,
    NotInForest,
    PatientForest,
    build_patient_forest,
    load_forest,
)
from kkorthanc.forest import _factory as forest_factory
from kkorthanc.forest import update as forest_update
from kkorthanc.models import Resource

from .conftest import REPLAY_AUTH, Servers

#: the sample (4 patients x 2 studies x 2 series x 3 instances) with a fourth instance per
#: series: its IM003 files join existing series
LONGER = synthetic.SyntheticSpec(4, 2, 2, 4)
LEVELS = (Patient, Study, Series, Instance)


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    """Replayed servers share canonical URLs: no forest may leak from one test to the next."""
    build_patient_forest.cache_clear()
    yield
    build_patient_forest.cache_clear()


@pytest.fixture
def settled(client: Orthanc, kk_mode: str) -> None:
    """Wait until the shared server logged every Stable* change of the sample.

    The shared server turns resources stable two seconds after the sample is loaded; tests
    that compare two reads of it wait for that first, so that nothing changes in between.
    """
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
        assert len(patient.studies) == len(patient.study_ids)
        for study in patient.studies:
            assert study.patient is patient
            assert study.parent_patient_id == patient.id
            assert [s.id for s in study.series] == list(study.series_ids)
            for series in study.series:
                assert series.study is study
                assert series.patient is patient
                for instance in series.instances:
                    assert instance.series is series
                    assert instance.patient is patient
                    seen += 1
    return seen


# -- build ----------------------------------------------------------------------------------------


def test_build_costs_only_the_listing_pages_and_walking_costs_nothing(client: Orthanc) -> None:
    before = client.request_count
    forest = build_patient_forest(client)
    # GET /changes?last, then one page per level: 4 + 8 + 16 + 48 resources < one page each
    assert client.request_count - before == 5
    assert forest.counts == (4, 8, 16, 48)
    assert forest.counts.total == 76
    assert len(forest) == 4 and list(forest) == list(forest.patients)
    assert forest.last_seq >= 76 and forest.depth == "instance"

    before = client.request_count
    assert walk(forest) == 48
    for instance in forest.instances:
        assert instance.patient.patient_id and instance.study.study_instance_uid
    assert client.request_count == before

    assert build_patient_forest(client) is forest
    assert client.request_count == before
    info = build_patient_forest.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)


def test_the_cached_forest_follows_writes_made_through_any_client(
    servers: Servers, kk_mode: str
) -> None:
    client = servers.new(sample=True)
    forest = build_patient_forest(client, depth="series")
    assert forest.counts == (4, 8, 16, 48)
    extra = synthetic.SyntheticSpec(patients=1, studies_per_patient=1, series_per_study=1, seed=7)
    files = [data for _, data in synthetic.generate_bytes(extra)]
    # one worker with cassettes: the recorder loses interactions that overlap in time
    report = client.upload(files, progress=False, workers=4 if kk_mode == "live" else 1)
    assert len(report.stored) == 3
    before = client.request_count
    again = build_patient_forest(client, depth="series")
    assert again is forest and forest.counts == (5, 9, 17, 51)
    assert 0 < client.request_count - before <= 6  # an update, not a rebuild
    before = client.request_count
    assert build_patient_forest(client, depth="series") is forest
    assert client.request_count == before  # nothing written since: no request
    with Orthanc(client.url, auth=servers.auth_of(client)) as other:
        other.study(forest.studies[0].id).delete()  # another client of this process
        assert build_patient_forest(client, depth="series").counts.studies == 8
        if client.system.stores_labels:  # a label is not in the change feed: read again
            study = forest.studies[0]
            other.put_json(f"/studies/{study.id}/labels/seen")
            assert build_patient_forest(client, depth="series") is forest
            assert study.labels == ("seen",)


@pytest.mark.usefixtures("settled")
def test_small_pages_cost_one_request_per_page_and_give_the_same_forest(
    client: Orthanc,
) -> None:
    whole = load_forest(client)
    before = client.request_count
    paged = load_forest(client, page_size=5)
    # 1 (seq) + patients 1 page (4) + studies 2 (5+3) + series 4 (5+5+5+1) + instances 10
    assert client.request_count - before == 1 + 1 + 2 + 4 + 10
    assert paged.snapshot() == whole.snapshot()
    assert [p.id for p in paged.patients] == [p.id for p in whole.patients]


@pytest.mark.usefixtures("settled")
def test_models_equal_what_pydantic_validation_gives(client: Orthanc) -> None:
    forest = build_patient_forest(client)
    for cls in LEVELS:
        listed = list(client.iter_resources(cls))
        assert len(listed) == len(getattr(forest, cls.collection))
        for reference in listed:
            built = forest.get(reference.id)
            assert type(built) is cls
            assert built.model_dump() == reference.model_dump()
            assert built.model_fields_set == reference.model_fields_set
            for name in cls.model_fields:
                assert type(getattr(built, name)) is type(getattr(reference, name)), name
            assert built.client is client


def test_depth_series_skips_instances_which_then_load_lazily(client: Orthanc) -> None:
    before = client.request_count
    forest = build_patient_forest(client, depth="series")
    assert client.request_count - before == 4  # seq + patients, studies, series
    assert forest.depth == "series"
    assert len(forest.instances) == 0
    assert forest.counts == (4, 8, 16, 48)  # instances counted from the series' lists
    assert forest.series[0].study.patient in forest.patients
    with pytest.raises(NotInForest, match="depth='series'"):
        forest.instance(forest.series[0].instance_ids[0])

    before = client.request_count
    loaded = [instance for series in forest.series for instance in series.instances]
    assert len(loaded) == 48
    assert client.request_count - before == 16  # one GET /series/{id}/instances per series
    assert all(i.series.study.patient for i in loaded)
    assert client.request_count - before == 16


def test_depth_study_counts_series_from_the_child_lists(client: Orthanc) -> None:
    before = client.request_count
    forest = build_patient_forest(client, depth="Study")
    assert client.request_count - before == 3
    assert forest.counts == (4, 8, 16, 0)
    assert not forest.series and not forest.instances
    with pytest.raises(NotInForest, match="depth='series'"):
        forest.series("1.2.3")


# -- indexes --------------------------------------------------------------------------------------


def test_indexes_find_every_level_by_uid_and_orthanc_id_without_requests(
    client: Orthanc,
) -> None:
    forest = build_patient_forest(client)
    before = client.request_count
    for patient in forest.patients:
        assert patient.patient_id is not None
        assert forest.patient(patient.patient_id) is patient
        assert forest.patient(patient.id) is patient
        assert forest.get(patient.patient_id) is patient
    for study in forest.studies:
        assert study.study_instance_uid is not None
        assert forest.study(study.study_instance_uid) is study
        assert forest.get(study.id) is study
        assert study in forest and study in forest.studies
        if study.accession_number:
            assert study in forest.by_accession_number(study.accession_number)
    for series in forest.series:
        assert series.series_instance_uid is not None
        assert forest.series(series.series_instance_uid) is series
        assert forest.get(series.series_instance_uid) is series
    for instance in forest.instances:
        assert instance.sop_instance_uid is not None
        assert forest.instance(instance.sop_instance_uid) is instance
        assert forest.get(instance.id) is instance
        assert forest.lookup(instance.sop_instance_uid) == [instance]
    with_accession = [s for s in forest.studies if s.accession_number]
    assert with_accession and len(with_accession) < len(forest.studies)  # some have none
    assert forest.by_accession_number("no-such-accession") == []
    assert forest.by_accession_number("") == []
    assert forest.get("1.2.3.4.5") is None
    assert "1.2.3.4.5" not in forest
    with pytest.raises(NotInForest, match=r"StudyInstanceUID or Orthanc ID '1\.2\.3'"):
        forest.study("1.2.3")
    with pytest.raises(KeyError):
        forest.patient("nobody")
    assert forest.instances[0] is next(iter(forest.instances))
    assert forest.studies[1:3] == tuple(list(forest.studies)[1:3])
    assert client.request_count == before


def test_a_uid_shared_by_two_resources_is_reported_not_guessed(client: Orthanc) -> None:
    forest = build_patient_forest(client, depth="study")
    first, second = forest.studies[0], forest.studies[1]
    shared = first.study_instance_uid
    assert shared is not None
    state = forest._state  # simulate one StudyInstanceUID under two PatientIDs
    state.unindex(second)
    second.__dict__["study_instance_uid"] = shared
    state.index(second)
    with pytest.raises(AmbiguousIdentifier) as caught:
        forest.study(shared)
    assert set(caught.value.matches) == {first, second}
    assert set(forest.lookup(shared)) == {first, second}
    assert forest.study(second.id) is second  # the Orthanc ID stays unique


def test_find_frames_and_rendering_read_the_forest_without_requests(client: Orthanc) -> None:
    import io

    forest = build_patient_forest(client)
    before = client.request_count
    chest = forest.find("study", StudyDescription="chest*")
    assert chest and all(s.study_description == "Chest CT" for s in chest)
    expected = {s.id for s in forest.studies if (s.study_description or "").lower() == "chest ct"}
    assert {s.id for s in chest} == expected
    assert [p.id for p in forest.find("patient", {"PatientID": "KK-0-0001"})] == [
        forest.patient("KK-0-0001").id
    ]
    frame = forest.to_dataframe("series")
    assert len(frame) == 16 and set(frame["id"]) == {s.id for s in forest.series}
    out = io.StringIO()
    forest.print_tree(max_depth=2, file=out)
    assert "4 patients" in out.getvalue()
    assert "<" in forest._repr_html_()
    assert client.request_count == before


# -- cache ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("settled")
def test_cache_is_keyed_by_server_user_and_options_not_the_client_object(
    client: Orthanc, kk_mode: str
) -> None:
    forest = build_patient_forest(client, depth="study")
    auth = REPLAY_AUTH if kk_mode == "replay" else client._transport.session.auth
    assert isinstance(auth, tuple)
    with Orthanc(client.url, auth=auth) as other:
        assert build_patient_forest(other, depth="study") is forest
        assert other.request_count == 0
        shallow = build_patient_forest(other, depth="patient")
        assert shallow is not forest and other.request_count == 2
        assert build_patient_forest(client, depth="patient") is shallow
    again = build_patient_forest(client, depth="study", refresh=True)
    assert again is not forest and again.snapshot() == forest.snapshot()
    assert build_patient_forest(client, depth="study") is again
    build_patient_forest.cache_clear()
    before = client.request_count
    assert build_patient_forest(client, depth="study") is not again
    assert client.request_count - before == 3


def test_two_threads_asking_at_once_build_once(client: Orthanc) -> None:
    before = client.request_count
    results: list[PatientForest] = []
    start = threading.Barrier(2)

    def ask() -> None:
        start.wait()
        results.append(build_patient_forest(client, depth="study"))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] is results[1]
    assert client.request_count - before == 3


def test_cache_expires_after_its_ttl(client: Orthanc) -> None:
    build_patient_forest.configure(ttl=0.2)
    try:
        forest = build_patient_forest(client, depth="patient")
        time.sleep(0.3)
        assert build_patient_forest(client, depth="patient") is not forest
        assert build_patient_forest.cache_info().ttl == 0.2
    finally:
        build_patient_forest.configure(ttl=forest_module.DEFAULT_TTL)


@pytest.mark.no_cassette
def test_bad_arguments_are_refused_before_any_request() -> None:
    client = Orthanc("http://127.0.0.1:9", auth=("kk", "pw"))
    with pytest.raises(ValueError, match="unknown depth 'leaf'"):
        build_patient_forest(client, depth="leaf")
    with pytest.raises(ValueError, match="page_size"):
        build_patient_forest(client, page_size=0)
    assert client.request_count == 0


def test_reprs_hold_no_credentials(client: Orthanc) -> None:
    forest = build_patient_forest(client, depth="series")
    report = forest.update()
    auth = client._transport.session.auth
    assert isinstance(auth, tuple)
    for text in (repr(forest), str(report), repr(report), repr(forest.studies)):
        assert auth[1] not in text
    assert repr(forest).startswith(f"<PatientForest {client.url}: 4 patients, 8 studies")
    assert repr(forest.series) == "<16 series>"


# -- model construction ---------------------------------------------------------------------------

tag_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["20240102", "2024", "120000.5", "1\\2\\3", " 7 ", "DOE^JOHN", "x\\"]),
    st.integers(-5, 5),
    st.none(),
)


@pytest.mark.no_cassette
@settings(max_examples=300, deadline=None)
@given(
    level=st.sampled_from(LEVELS),
    tags=st.dictionaries(
        st.sampled_from(
            ["PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime",
             "SeriesNumber", "ImageOrientationPatient", "OperatorsName", "InstanceNumber",
             "ImagePositionPatient", "AccessionNumber", "OtherPatientIDs", "Modality"]
        ),
        tag_values,
    ),
    extra=st.dictionaries(
        st.sampled_from(["IsStable", "LastUpdate", "FileSize", "Status", "Labels", "Studies"]),
        st.one_of(tag_values, st.booleans(), st.lists(st.text(max_size=3), max_size=2)),
    ),
    with_id=st.booleans(),
)
def test_fast_construction_matches_validation_on_odd_values(
    level: type[Resource], tags: dict[str, Any], extra: dict[str, Any], with_id: bool
) -> None:
    data: dict[str, Any] = {"MainDicomTags": tags, "Type": level.level, **extra}
    if with_id:
        data["ID"] = "0a-1b"
    factory = forest_factory._FACTORIES[level]
    try:
        expected = level.from_orthanc(data)
    except ValidationFailed:
        with pytest.raises(ValidationFailed):
            factory(data, None, forest_factory._new_memos())
        return
    built = factory(data, None, forest_factory._new_memos())
    assert built.model_dump() == expected.model_dump()
    assert built.model_fields_set == expected.model_fields_set


@pytest.mark.no_cassette
def test_every_level_takes_the_fast_path() -> None:
    for cls in LEVELS:
        assert forest_factory._FACTORIES[cls].fields is not None, cls


# -- update ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("settled")
def test_update_without_changes_costs_two_requests(client: Orthanc) -> None:
    forest = build_patient_forest(client)
    before = client.request_count
    report = forest.update()
    assert client.request_count - before == 2  # GET /changes, GET /statistics
    assert report.requests == 2 and not report.changed and not report.rebuilt
    assert report.from_seq == report.to_seq == forest.last_seq
    assert "added nothing" in str(report)


@pytest.mark.usefixtures("settled")
def test_replaying_the_whole_feed_changes_nothing(client: Orthanc) -> None:
    forest = load_forest(client)
    before = forest.snapshot()
    patient = forest.patients[0]
    forest._state.last_seq = 0  # as if built before the first upload
    report = forest.update()
    assert report.changes >= 104 and not report.rebuilt
    assert not report.changed
    assert forest.snapshot() == before
    assert forest.patients[0] is patient


@pytest.mark.usefixtures("settled")
def test_too_many_changes_rebuild_instead(
    client: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    forest = load_forest(client)
    old_patient = forest.patients[0]
    monkeypatch.setattr(forest_update, "REBUILD_AFTER_CHANGES", 10)
    forest._state.last_seq = 0
    report = forest.update()
    assert report.rebuilt and report.reason is not None
    assert "more than 38 changes since seq 0: rebuilding costs less" in report.reason
    assert not report.changed  # same server state: nothing added, removed or updated
    assert forest.patients[0] is not old_patient and forest.patients[0].id == old_patient.id
    assert forest.last_seq >= 104


@pytest.mark.usefixtures("settled")
def test_a_feed_that_went_back_means_a_new_database(client: Orthanc) -> None:
    forest = load_forest(client)
    forest._state.last_seq += 1000
    report = forest.update()
    assert report.rebuilt and report.reason is not None and "went back" in report.reason
    assert forest.last_seq == client.last_change()


@pytest.mark.usefixtures("settled")
def test_a_resource_skipped_by_paging_is_found_by_the_next_update(
    client: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fetch = Transport._listing_answer
    skipped: list[str] = []

    def fetch_skipping_one(
        self: Transport, path: str, since: int, limit: int, params: Mapping[str, Any]
    ) -> Reply:
        reply = real_fetch(self, path, since, limit, params)
        if path == "/instances" and not skipped:  # as when a deletion shifts the later pages
            page = json.loads(reply.content)
            skipped.append(page.pop(5)["ID"])
            return reply._replace(content=json.dumps(page).encode())
        return reply

    monkeypatch.setattr(Transport, "_listing_answer", fetch_skipping_one)
    forest = load_forest(client)
    monkeypatch.undo()
    assert forest.counts.instances == 47 and forest.get(skipped[0]) is None
    assert walk(forest) == 47

    report = forest.update()
    # changes, statistics (47 != 48), the instance IDs, the instance, its ancestors
    assert report.requests == 5
    assert report.added.instances == (skipped[0],)
    assert report.reason is not None and "47 instances in the forest, 48 on the server" in (
        report.reason
    )
    assert forest.snapshot() == load_forest(client).snapshot()


def test_update_after_new_instances_costs_a_few_requests(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client)
    patient = forest.patients[0]
    series = forest.series(synthetic.uid("series", 0, 0, 0, 0))

    upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=3))  # a new patient
    report = forest.update()
    # GET /changes, one bulk read of the 13 new resources, GET /statistics
    assert report.requests == 3
    assert report.changes == 13
    assert len(report.added.instances) == 10
    assert (len(report.added.patients), len(report.added.studies)) == (1, 1)
    assert report.removed.total == 0 and report.updated.total == 0
    assert forest.counts == (5, 9, 17, 58)
    assert forest.patients[0] is patient  # the same objects, still linked
    assert forest.patient("KK-3-0000").studies[0].series[0].instances[9].series.study

    # an instance joining an existing series: its series, study and patient change too
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    report = forest.update()
    assert report.requests == 4  # changes, the instance, its ancestors, statistics
    assert len(report.added.instances) == 1
    assert set(report.updated.series) == {series.id}
    assert len(series.instances) == 4 == len(series.instance_ids)
    assert series.instances[-1].series is series
    assert forest.snapshot() == load_forest(client).snapshot()


def test_updated_forest_equals_a_fresh_build(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    transport = client._transport
    forest = load_forest(client)
    kept_patient = forest.patients[0]

    # additions: a new patient, and an instance in an existing series
    upload(client, synthetic.SyntheticSpec(1, 1, 2, 2, seed=9))
    upload(client, LONGER, "P001/ST00/SE00/IM003")
    # deletions: one instance, one whole series, and every instance of another series
    p2 = forest.patients[2]
    emptied = p2.studies[1].id
    transport.delete(f"/instances/{p2.studies[0].series[0].instance_ids[0]}")
    transport.delete(f"/series/{p2.studies[1].series[0].id}")
    for instance_id in p2.studies[1].series[1].instance_ids:
        transport.delete(f"/instances/{instance_id}")  # the study goes with its last instance
    # modifications: a modified copy, and a modification that replaces its source
    p3 = forest.patients[3]
    copied = transport.post_json(
        f"/studies/{p3.studies[0].id}/modify",
        {"Replace": {"StudyDescription": "Copy"}, "Force": True},
    )
    moved = transport.post_json(
        f"/studies/{p3.studies[1].id}/modify",
        {"Replace": {"StudyDescription": "Moved"}, "Force": True, "KeepSource": False},
    )
    source_of_move = p3.studies[1].id

    report = forest.update()
    fresh = load_forest(client)
    assert forest.snapshot() == fresh.snapshot()
    assert forest.counts == fresh.counts
    assert walk(forest) == fresh.counts.instances

    assert not report.rebuilt
    assert copied["ID"] in report.added.studies and moved["ID"] in report.added.studies
    assert source_of_move in report.removed.studies
    assert emptied in report.removed.studies and emptied not in forest  # with its last instance
    assert len(p2.studies) == 1
    assert len(report.added.patients) == 1
    assert forest.study(copied["ID"]).study_description == "Copy"
    assert forest.study(moved["ID"]).patient is p3
    assert forest.patients[0] is kept_patient
    # deletions are not in the feed: the counts disagreed, and ID listings found them
    assert report.reason is not None and "listed their IDs" in report.reason
    # when the change the forest read last went with a deleted resource (which one it is
    # depends on the upload order), the IDs of every level are listed: 4 more requests
    assert report.requests <= 8 + 4 * ("is no longer in the feed" in report.reason)


def test_upload_between_two_listings_is_left_out_then_added(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    real_fetch = Transport._listing_answer
    uploaded: list[str] = []

    def fetch_then_upload(
        self: Transport, path: str, since: int, limit: int, params: Mapping[str, Any]
    ) -> Reply:
        reply = real_fetch(self, path, since, limit, params)
        listed = len(json.loads(reply.content))
        if path == "/series" and listed < limit and not uploaded:  # the series listing is done
            uploaded.extend(upload(client, synthetic.SyntheticSpec(1, 1, 1, 2, seed=5)))
            upload(client, LONGER, "P000/ST00/SE00/IM003")
        return reply

    monkeypatch.setattr(Transport, "_listing_answer", fetch_then_upload)
    forest = load_forest(client)
    monkeypatch.undo()

    # the instances listing saw 51 instances; those whose series was not listed are out,
    # and so is the one its (earlier listed) series did not name yet
    assert forest.counts == (4, 8, 16, 48)
    assert walk(forest) == 48
    assert all(forest.get(i) is None for i in uploaded)

    report = forest.update()
    assert len(report.added.instances) == 3
    assert forest.snapshot() == load_forest(client).snapshot()
    assert forest.instance(uploaded[0]).patient.patient_id == "KK-5-0000"


def test_deletion_between_two_listings_trims_the_parent(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    real_fetch = Transport._listing_answer
    deleted: list[str] = []

    def fetch_then_delete(
        self: Transport, path: str, since: int, limit: int, params: Mapping[str, Any]
    ) -> Reply:
        reply = real_fetch(self, path, since, limit, params)
        if path == "/series" and not deleted:
            deleted.append(json.loads(reply.content)[0]["Instances"][0])
            client._transport.delete(f"/instances/{deleted[0]}")
        return reply

    monkeypatch.setattr(Transport, "_listing_answer", fetch_then_delete)
    forest = load_forest(client)
    monkeypatch.undo()
    assert forest.counts.instances == 47
    assert walk(forest) == 47
    assert deleted[0] not in forest.series[0].instance_ids
    before = client.request_count
    report = forest.update()
    assert client.request_count - before == 2 and not report.changed
    assert forest.snapshot() == load_forest(client).snapshot()


def test_deleted_series_is_found_through_the_statistics(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client)
    study = forest.studies[0]
    gone = study.series[0]
    client._transport.delete(f"/series/{gone.id}")
    report = forest.update()
    # changes (none logged), statistics, the series IDs, the study read again
    assert report.requests == 4
    assert report.removed.series == (gone.id,)
    assert set(report.removed.instances) == set(gone.instance_ids)
    assert gone not in forest and forest.get(gone.instance_ids[0]) is None
    assert len(study.series) == 1 and study.series[0].id == study.series_ids[0] != gone.id
    assert report.reason is not None and "listed their IDs" in report.reason
    assert forest.snapshot() == load_forest(client).snapshot()


def test_a_logged_deletion_spares_the_id_listing(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client)
    gone = forest.studies[0].series[0]
    client._transport.delete(f"/series/{gone.id}")
    real_changes = client.changes

    def changes_with_deletion(since: int = 0, limit: int = 1000) -> ChangePage:
        page = real_changes(since, limit)  # Orthanc 1.10 does not log deletions: add one
        anchor = page.changes[:1]  # the change the forest read last, which the update checks
        deleted = Change(seq=since + 2, change_type="Deleted", resource_type="Series", id=gone.id)
        return page.model_copy(update={"changes": (*anchor, deleted), "last": since + 2})

    monkeypatch.setattr(client, "changes", changes_with_deletion)
    report = forest.update()
    assert report.requests == 3  # the feed, the study read again, statistics: no ID listing
    assert report.removed.series == (gone.id,) and report.reason is None
    monkeypatch.undo()
    forest._state.last_seq = client.last_change()
    assert forest.snapshot() == load_forest(client).snapshot()


def test_series_depth_update_resets_lazy_instances(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client, depth="series")
    series = forest.series(synthetic.uid("series", 0, 0, 0, 0))
    assert len(series.instances) == 3
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    report = forest.update()
    assert report.updated.series == (series.id,) and report.added.instances == ()
    assert len(series.instance_ids) == 4
    before = client.request_count
    assert len(series.instances) == 4  # reloaded: one request
    assert client.request_count - before == 1
    assert forest.snapshot() == load_forest(client, depth="series").snapshot()


def test_cleared_feed_makes_update_rebuild_and_say_so(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client)
    upload(client, synthetic.SyntheticSpec(1, 1, 1, 1, seed=4))
    client._transport.delete("/changes")
    report = forest.update()
    assert report.rebuilt
    assert report.reason is not None and "no longer in the feed" in report.reason
    assert len(report.added.instances) == 1 and len(report.added.patients) == 1
    assert forest.snapshot() == load_forest(client).snapshot()
    assert forest.update().rebuilt is False


def test_stable_changes_set_is_stable_without_requests(
    servers: Servers, kk_mode: str
) -> None:
    client = servers.new(sample=True, stable_age=3)
    forest = load_forest(client)
    kept = load_forest(client)  # updated only later, across more changes
    # every resource logs a Stable* change once no instance arrived for three seconds
    deadline = time.monotonic() + 30
    while client.last_change() < 76 + 28:
        assert time.monotonic() < deadline
        if kk_mode != "replay":
            time.sleep(0.5)
    above = (Patient, Study, Series)
    unstable = [r for cls in above for r in getattr(forest, cls.collection) if not r.is_stable]
    report = forest.update()
    assert report.requests == 2  # the feed and the statistics: no resource is read again
    assert report.updated.total == len(unstable)
    assert all(r.is_stable for cls in above for r in getattr(forest, cls.collection))
    assert forest.snapshot() == load_forest(client).snapshot()

    # a new instance makes its series, study and patient unstable again: for the forest
    # that still has the Stable* changes to read, what the server sends now wins
    series = kept.series(synthetic.uid("series", 0, 0, 0, 0))
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    report = kept.update()
    assert report.changes == 28 + 1
    assert (series.is_stable, series.study.is_stable, series.patient.is_stable) == (
        False,
        False,
        False,
    )
    assert sum(s.is_stable is True for s in kept.series) == 15
    forest.update()
    assert kept.snapshot() == forest.snapshot()


def test_change_feed_and_bulk_reads_on_the_client(client: Orthanc) -> None:
    last = client.last_change()
    page = client.changes(0, limit=10)
    assert len(page.changes) == 10 and not page.done and page.last == 10
    assert page.changes[0].seq == 1 and page.changes[0].change_type == "NewInstance"
    assert {c.resource_type for c in page.changes} <= {"Patient", "Study", "Series", "Instance"}
    assert client.changes(last).last >= last
    with pytest.raises(ValueError):
        client.changes(-1)
    ids = [page.changes[0].id, page.changes[1].id, "00000000-unknown"]
    before = client.request_count
    found = client.get_many(ids)
    assert client.request_count - before == 1
    assert sorted(r.id for r in found) == sorted(ids[:2])
    patients = client.get_many([page.changes[0].id], level="patient")
    assert [type(p) for p in patients] == [Patient]
