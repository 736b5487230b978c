"""Labels, metadata and attachments: names checked as Orthanc checks them, gates that name
version and database, revisions that turn a stale write into Conflict."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kkorthanc import Conflict, InvalidRequest, NotFound, Orthanc, UnsupportedByServer
from kkorthanc.forest import load_forest
from kkorthanc.metadata import check_label
from kkorthanc.postgres import PostgresCluster
from kkorthanc.sandbox import Sandbox

from .conftest import Servers

ORTHANC_112 = os.environ.get("KK_ORTHANC_112") or next(
    (
        str(path)
        for path in (
            Path(__file__).resolve().parents[2] / "shared/orthanc-1.12.3/Orthanc",
            Path("/work/shared/orthanc-1.12.3/Orthanc"),
        )
        if path.is_file()
    ),
    "",
)


@pytest.mark.no_cassette
@pytest.mark.parametrize("name", ["a", "0123456789-_", "Reviewed_by-KK", "x" * 64])
def test_label_names_orthanc_accepts(name: str) -> None:
    assert check_label(name) == name


@pytest.mark.no_cassette
@pytest.mark.parametrize("name", ["", " ", "&", ".", "a b", "é", "x" * 65, "../system", "a/b"])
def test_label_names_orthanc_refuses_are_refused_before_sending(name: str) -> None:
    client = Orthanc("http://127.0.0.1:9", auth=("u", "p"), retries=0)
    study_like = client  # nothing is sent: the name is checked first
    with pytest.raises(InvalidRequest, match="not a label"):
        from kkorthanc.metadata import add_label

        add_label(study_like, "/studies/x", name)
    assert client.request_count == 0


@pytest.mark.live_only
def test_labels_round_trip_or_refusal(servers: Servers) -> None:
    client = servers.new(sample=True)
    study, other = client.studies()[:2]
    if not client.supports("Labels"):
        before = client.request_count
        with pytest.raises(UnsupportedByServer) as caught:
            study.add_label("kk-reviewed")
        assert client.request_count == before  # refused before sending
        assert client.system.version in str(caught.value) and "1.12.0" in str(caught.value)
        return
    study.add_label("kk-reviewed")
    other.add_label("kk-urgent")
    study.add_label("kk-urgent")
    assert study.labels == ("kk-reviewed", "kk-urgent")  # updated in place, sorted
    assert client.study(study.id).labels == study.labels
    assert client.labels() == ("kk-reviewed", "kk-urgent")
    assert [s.id for s in client.find("study", labels=["kk-reviewed"])] == [study.id]
    both = {study.id, other.id}
    assert {s.id for s in client.find("study", labels=["kk-urgent"])} == both
    forest = load_forest(client, depth="study")
    assert [s.id for s in forest.find("study", labels=["kk-reviewed"])] == [study.id]
    assert {s.id for s in forest.find("study", labels=["kk-urgent"])} == both
    study.remove_label("kk-reviewed")
    assert study.labels == ("kk-urgent",)
    assert client.find("study", labels=["kk-reviewed"]) == []
    assert client.labels() == ("kk-urgent",)


@pytest.mark.live_only
@pytest.mark.skipif(not ORTHANC_112, reason="Orthanc 1.12.3 not found (../shared/orthanc-1.12.3)")
def test_labels_on_a_postgresql_index_without_labels_are_refused_before_sending() -> None:
    with PostgresCluster() as cluster, Sandbox(
        name="kk-pg-labels", binary=ORTHANC_112, index=cluster
    ) as sandbox:
        sandbox.load_synthetic()
        with sandbox.client() as client:
            assert client.system.version == "1.12.3" and not client.system.stores_labels
            study = client.studies()[0]
            before = client.request_count
            with pytest.raises(UnsupportedByServer) as caught:
                study.add_label("kk-reviewed")
            with pytest.raises(UnsupportedByServer):
                client.find("study", labels=["kk-reviewed"])
            with pytest.raises(UnsupportedByServer):
                client.labels()
            assert client.request_count == before
    assert str(caught.value) == (
        "Labels needs Orthanc 1.12.0 and a database that stores labels; "
        "this server: 1.12.3 (REST API 23), PostgreSQL index without labels"
    )


def test_metadata_round_trip_with_revisions(servers: Servers) -> None:
    client = servers.new(sample=True)
    series = client.series()[0]
    assert client.system.api_version >= 16  # read once; writes consult it
    before = client.request_count
    first = series.set_metadata("Note", "looked at")
    assert first is not None and client.request_count == before + 1
    read = series.get_metadata("Note")
    assert read.text() == "looked at" and read.revision == first
    assert series.metadata()["Note"] == "looked at"
    second = series.set_metadata("Note", "looked at twice", revision=read.revision)
    assert second is not None and second != first
    assert series.get_metadata("Note").revision == second  # what the server will check
    with pytest.raises(Conflict):  # someone else wrote since `read`
        series.set_metadata("Note", "stale", revision=read.revision)
    assert series.get_metadata("Note").text() == "looked at twice"
    with pytest.raises(Conflict):
        series.delete_metadata("Note", revision=read.revision)
    series.delete_metadata("Note", revision=second)
    with pytest.raises(NotFound):
        series.get_metadata("Note")
    with pytest.raises(InvalidRequest, match="metadata name"):
        series.get_metadata("../../system")


def test_attachment_round_trip_with_revisions(servers: Servers) -> None:
    client = servers.new(sample=True)
    study = client.studies()[0]
    payload = bytes(range(256)) * 8
    revision = study.set_attachment("Report", payload)
    assert "Report" in study.attachments()
    read = study.get_attachment("Report")
    assert read.value == payload
    newer = study.set_attachment("Report", b"v2", revision=read.revision)
    assert study.get_attachment("Report").revision == newer
    with pytest.raises(Conflict):
        study.set_attachment("Report", b"stale", revision=read.revision)
    assert study.get_attachment("Report").value == b"v2"
    study.delete_attachment("Report", revision=newer)
    assert "Report" not in study.attachments()
    assert revision is not None
