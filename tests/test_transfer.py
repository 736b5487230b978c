"""Uploads of files, folders, archives, bytes and datasets; downloads and exports."""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kkorthanc import (
    Instance,
    Orthanc,
    Series,
    Study,
    Unauthorized,
    orthanc_id,
    synthetic,
    transfer,
)
from kkorthanc._transport import BinaryChannel
from kkorthanc.sandbox import free_port
from kkorthanc.transfer import (
    ExportFailed,
    ExportItem,
    ExportReport,
    UploadFailed,
    UploadItem,
    UploadReport,
    safe_component,
)

from .conftest import Servers

pydicom = pytest.importorskip("pydicom")

FIXED_TIME = (2020, 1, 2, 3, 4, 6)


@pytest.fixture
def workers(kk_mode: str) -> int:
    """Concurrent transfers: 4 against a live server; 1 with cassettes, because the
    recorder loses interactions that overlap in time."""
    return 4 if kk_mode == "live" else 1


def sample_files(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """The first ``count`` synthetic files of a small spec (about 1.5 KB each)."""
    spec = synthetic.SyntheticSpec(1, 1, 1, count, seed=seed)
    return list(synthetic.generate_bytes(spec))


def instance_id_of(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data))
    return orthanc_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def nowhere() -> Orthanc:
    """A client for a port nothing listens on: any request it sends would fail."""
    return Orthanc(f"http://127.0.0.1:{free_port()}", auth=("kk", "unused"), retries=0)


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, FIXED_TIME), data)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str) -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


# -- guards, without a server -----------------------------------------------------------------


def test_junk_loops_and_bombs_are_reported_and_never_sent(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "a" / "b").mkdir(parents=True)
    (root / "notes.txt").write_text("not an image\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 300)
    (root / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    (root / "a" / "empty.dcm").write_bytes(b"")
    (root / "a" / "b" / "loop").symlink_to("../..")  # a directory link back to the root
    (root / "a" / "dangling").symlink_to(tmp_path / "gone")
    (root / "a" / "not-a-zip.zip").write_bytes(b"this is no archive")
    bomb = b"\x00" * (3 * 1024 * 1024)
    write_zip(root / "a" / "bomb.zip", [("big.dcm", bomb), ("inner.zip", b"PK\x03\x04")])
    liar = write_zip(root / "a" / "liar.zip", [("small.dcm", bomb)])
    patch_zip_sizes(liar, 100)
    tar_path = root / "b.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        link = tarfile.TarInfo("link.dcm")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    client = nowhere()
    start = time.monotonic()
    report = transfer.upload(client, root, progress=False, max_member_size=1024 * 1024)
    assert time.monotonic() - start < 10
    assert client.request_count == 0
    by_source = {
        Path(item.source.split("!")[0]).name + item.source.partition("!")[2]: item
        for item in report
    }
    assert len(by_source) == len(report.items), "an item was reported twice (loop followed)"
    assert set(by_source) == {
        "notes.txt",
        ".DS_Store",
        "DICOMDIR",
        "empty.dcm",
        "dangling",
        "not-a-zip.zip",
        "bomb.zipbig.dcm",
        "bomb.zipinner.zip",
        "liar.zipsmall.dcm",
        "b.tar.gzlink.dcm",
    }
    assert all(item.status == "rejected" for item in report), report.items
    reasons = {name: item.error or "" for name, item in by_source.items()}
    assert "not DICOM" in reasons["notes.txt"]
    assert "not a DICOM instance" in reasons["DICOMDIR"]
    assert "not a DICOM instance" in reasons[".DS_Store"]
    assert reasons["empty.dcm"] == "empty file"
    assert "No such file" in reasons["dangling"]
    assert "not a readable ZIP" in reasons["not-a-zip.zip"]
    assert "max_member_size" in reasons["bomb.zipbig.dcm"]
    assert "inside archives" in reasons["bomb.zipinner.zip"]
    assert "links inside archives" in reasons["b.tar.gzlink.dcm"]
    # a member that declares 100 bytes but inflates to 3 MiB is stopped at the declared size
    assert "Bad CRC" in reasons["liar.zipsmall.dcm"]
    assert report.counts == {"stored": 0, "already_stored": 0, "rejected": 10, "failed": 0}
    with pytest.raises(UploadFailed) as caught:
        report.raise_for_failures()
    assert "10 of 10 items were not stored" in str(caught.value)
    assert report.raise_for_failures(rejected=False) is report


def patch_zip_sizes(path: Path, declared: int) -> None:
    """Make a zip's headers claim ``declared`` uncompressed bytes for every member."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset : at + offset + 4] = struct.pack("<I", declared)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def test_wrong_sources_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    client = nowhere()
    with pytest.raises(TypeError, match="cannot upload a int"):
        client.upload(42, progress=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        client.upload(tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="workers"):
        client.upload(tmp_path, workers=0, progress=False)
    report = client.upload([tmp_path, 3.5], progress=False)  # inside an iterable: reported
    assert [(item.source, item.status) for item in report] == [("<float>", "rejected")]
    assert client.request_count == 0


def test_unreachable_server_fails_items_and_stops_sending(tmp_path: Path) -> None:
    files = [data for _, data in sample_files(6, seed=7)]
    client = nowhere()
    report = transfer.upload(client, files, workers=1, progress=False, max_consecutive_failures=2)
    assert [item.status for item in report] == ["failed"] * 6
    assert client.request_count == 2  # the rest were not sent once the server looked gone
    assert "cannot reach" in (report.items[0].error or "")
    assert "not sent: the server was unreachable" in (report.items[5].error or "")
    assert report.items[5].size == len(files[5])
    with pytest.raises(UploadFailed, match="6 of 6 items were not stored"):
        report.raise_for_failures(rejected=False)


def test_a_slow_server_loses_no_queued_item(monkeypatch: pytest.MonkeyPatch) -> None:
    run = transfer._Uploader._run

    def slow(
        self: transfer._Uploader, task: transfer._Task, channel: BinaryChannel
    ) -> UploadItem:
        time.sleep(0.15)  # longer than the producer waits on a full queue
        return run(self, task, channel)

    monkeypatch.setattr(transfer._Uploader, "_run", slow)
    junk = [f"junk {n}".encode() for n in range(8)]
    report = transfer.upload(nowhere(), junk, workers=1, progress=False)
    assert [item.source for item in report] == [f"<bytes #{n}>" for n in range(1, 9)]
    assert all(item.status == "rejected" for item in report)


def test_progress_bar_shows_and_works_without_tqdm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("junk")
    nowhere().upload(tmp_path, progress=True)
    assert "upload" in capsys.readouterr().err
    nowhere().upload(tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(transfer.progress, "_warned_tqdm", False)
    assert len(nowhere().upload(tmp_path, progress=False)) == 1
    with pytest.warns(UserWarning, match="kkorthanc\\[progress\\]"):
        assert len(nowhere().upload(tmp_path, progress=True)) == 1


def test_reports_count_and_name_what_failed() -> None:
    report = UploadReport(
        items=[
            UploadItem("a.dcm", "stored", instance_id="i1", size=10),
            UploadItem("b.dcm", "already_stored", instance_id="i2", size=5),
            UploadItem("c.txt", "rejected", error="not DICOM"),
            UploadItem("d.dcm", "failed", size=7, error="cannot reach"),
        ],
        elapsed=2.0,
    )
    assert [i.source for i in report.stored] == ["a.dcm"]
    assert [i.source for i in report.already_stored] == ["b.dcm"]
    assert report.bytes == 15
    assert report.instance_ids == ["i1", "i2"]
    assert not report.ok
    assert "1 stored, 1 already stored, 1 rejected, 1 failed" in repr(report)
    with pytest.raises(UploadFailed) as caught:
        report.raise_for_failures()
    assert [i.source for i in caught.value.items] == ["c.txt", "d.dcm"]
    assert "c.txt (rejected: not DICOM)" in str(caught.value)
    with pytest.raises(UploadFailed) as caught:
        report.raise_for_failures(rejected=False)
    assert [i.source for i in caught.value.items] == ["d.dcm"]
    exported = ExportReport(
        folder=Path("out"),
        items=[
            ExportItem("i1", Path("out/a.dcm"), "written", size=3),
            ExportItem("i2", Path("out/b.dcm"), "failed", error="boom"),
        ],
    )
    with pytest.raises(ExportFailed, match="1 of 2 items were not written"):
        exported.raise_for_failures()
    assert exported.paths == [Path("out/a.dcm")]


# -- layout and path safety -------------------------------------------------------------------


def test_tag_values_become_safe_file_names() -> None:
    assert safe_component("../../etc") == ".._.._etc"
    assert safe_component("..") == "_"
    assert safe_component("") == "_"
    assert safe_component("  ") == "_"
    assert safe_component("a/b\\c\x00d\ne:f") == "a_b_c_d_e_f"
    assert safe_component("王^小明") == "王^小明"
    assert len(safe_component("x" * 1000)) == 128


@pytest.mark.parametrize(
    "layout",
    [
        "",
        "/abs/{SOPInstanceUID}",
        "a/../{SOPInstanceUID}",
        "a//b",
        "{Bad Field}.dcm",
        "{PatientID!r}",
        "C:/x",
    ],
)
def test_bad_layouts_are_refused(layout: str) -> None:
    with pytest.raises(ValueError, match="layout"):
        transfer._parse_layout(layout)


def test_layout_fields_format_and_unknown_keywords() -> None:
    pieces = transfer._parse_layout(
        "{PatientID}/{Modality}-{SeriesNumber:03d}/{InstanceNumber:04d}.dcm"
    )
    tags = {"PatientID": "P1", "Modality": "CT", "SeriesNumber": "2", "InstanceNumber": "17 "}
    assert transfer._relative_path(pieces, tags) == os.path.join("P1", "CT-002", "0017.dcm")
    # a main tag this instance lacks gives "_"; a name that is no main tag is an error
    assert transfer._relative_path(transfer._parse_layout("{AccessionNumber}"), {}) == "_"
    with pytest.raises(ValueError, match="did you mean PatientID"):
        transfer._relative_path(transfer._parse_layout("{PatientId}"), tags)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=3, max_size=3))
def test_any_tag_values_stay_inside_the_folder(values: list[str]) -> None:
    pieces = transfer._parse_layout("{PatientID}/{StudyDescription}.{Modality}")
    tags = dict(zip(["PatientID", "StudyDescription", "Modality"], values, strict=True))
    relative = transfer._relative_path(pieces, tags)
    parts = relative.split(os.sep)
    assert len(parts) == 2
    assert all(part and part not in (".", "..") and "\x00" not in part for part in parts)
    root = os.path.abspath("/export-root")
    assert os.path.normpath(os.path.join(root, relative)).startswith(root + os.sep)


# -- uploads against a server -----------------------------------------------------------------


def test_upload_files_bytes_datasets_and_junk_then_again(
    servers: Servers, tmp_path: Path, workers: int
) -> None:
    target = servers.new()
    files = sample_files(4, seed=3)
    folder = tmp_path / "in"
    for name, data in files[:2]:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / "readme.txt").write_text("junk")
    (folder / "bad.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage!" * 4)
    dataset = pydicom.dcmread(io.BytesIO(files[3][1]))
    dataset.file_meta = pydicom.dataset.FileMetaDataset()  # the upload supplies one
    sources = [folder, files[2][1], dataset]

    start = target.request_count
    report = target.upload(sources, workers=workers, progress=False)
    assert report.requests == target.request_count - start == 5  # 4 instances + bad.dcm
    assert [Path(i.source).name for i in report][:4] == [
        "bad.dcm",
        "readme.txt",
        "IM000.dcm",
        "IM001.dcm",
    ]
    assert [i.source for i in report][4:] == ["<bytes #1>", f"<Dataset {dataset.SOPInstanceUID}>"]
    assert report.counts == {"stored": 4, "already_stored": 0, "rejected": 2, "failed": 0}
    expected_ids = [instance_id_of(data) for _, data in files]
    assert report.instance_ids == expected_ids
    first = report.stored[0]
    ds = pydicom.dcmread(io.BytesIO(files[0][1]))
    assert first.parent_patient_id == orthanc_id(ds.PatientID)
    assert first.parent_series_id == orthanc_id(
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    )
    assert first.size == len(files[0][1]) and first.seconds > 0
    bad, junk = report.rejected
    assert bad.source.endswith("bad.dcm")
    assert bad.details and bad.error and bad.details in bad.error  # Orthanc's own reason
    assert junk.details is None and "not DICOM" in (junk.error or "")  # junk is never sent
    assert "TransferSyntaxUID" not in dataset.file_meta  # the caller's dataset is unchanged
    assert target.statistics()["CountInstances"] == 4

    again = target.upload(sources, workers=workers, progress=False)
    assert again.counts == {"stored": 0, "already_stored": 4, "rejected": 2, "failed": 0}
    assert again.instance_ids == expected_ids
    assert again.requests == 5
    assert target.statistics()["CountInstances"] == 4


def test_unusual_files_are_sent_for_the_server_to_judge(servers: Servers, workers: int) -> None:
    target = servers.new()
    dataset = next(synthetic.generate(synthetic.SyntheticSpec(1, 1, 1, 1, seed=12)))
    raw = pydicom.filebase.DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(raw, dataset)  # no preamble, no file meta
    bare = raw.getvalue()
    assert bare[128:132] != b"DICM"
    # a DICOMDIR under another name: Orthanc answers 404 "Inexistent tag" for it
    index = pydicom.Dataset()
    index.file_meta = pydicom.dataset.FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    index.file_meta.MediaStorageSOPInstanceUID = synthetic.uid("dicomdir")
    index.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    index.FileSetID = "KKTEST"
    index.DirectoryRecordSequence = []
    report = target.upload([bare, index], workers=workers, progress=False)
    assert [item.status for item in report] == ["stored", "rejected"]
    assert "404 (Inexistent tag)" in (report.items[1].error or "")
    assert report.requests == 2


def test_archives_are_read_member_by_member(servers: Servers, tmp_path: Path, workers: int) -> None:
    target = servers.new()
    files = sample_files(4, seed=4)
    junk = ("notes/readme.txt", b"hello")
    archives = [
        write_zip(tmp_path / "one.zip", [files[0], junk]),
        write_tar(tmp_path / "two.tar.gz", [files[1], junk], "w:gz"),
        write_tar(tmp_path / "three.tar.bz2", [files[2]], "w:bz2"),
        write_tar(tmp_path / "four.tar", [files[3]], "w"),
    ]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = target.upload(archives, workers=workers, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing extracted
    assert [(i.source.replace(f"{tmp_path}{os.sep}", ""), i.status) for i in report] == [
        (f"one.zip!{files[0][0]}", "stored"),
        ("one.zip!notes/readme.txt", "rejected"),
        (f"two.tar.gz!{files[1][0]}", "stored"),
        ("two.tar.gz!notes/readme.txt", "rejected"),
        (f"three.tar.bz2!{files[2][0]}", "stored"),
        (f"four.tar!{files[3][0]}", "stored"),
    ]
    assert report.instance_ids == [instance_id_of(data) for _, data in files]
    assert report.requests == 4
    assert target.statistics()["CountInstances"] == 4


def test_wrong_credentials_stop_the_upload(client: Orthanc) -> None:
    files = [data for _, data in sample_files(3, seed=5)]
    with Orthanc(client.url, auth=("kk", "wrong-password")) as intruder:
        with pytest.raises(Unauthorized):
            intruder.upload(files, workers=1, progress=False)
        assert intruder.request_count == 1


# -- downloads and exports -----------------------------------------------------------------------


def test_export_writes_the_layout_and_resumes(
    client: Orthanc, tmp_path: Path, workers: int
) -> None:
    study = client.studies()[0]
    out = tmp_path / "export"
    start = client.request_count
    report = client.export(study, out, workers=workers, progress=False)
    count = len(report)
    series_count = len(study.series_ids)
    assert count == series_count * synthetic.SAMPLE.instances_per_series
    # the series listing, one instance listing for the study, one download per file
    assert client.request_count - start == report.requests == 2 + count
    assert len(report.written) == count and report.bytes > 0
    patient_id = study.patient_main_dicom_tags["PatientID"]
    for series in study.series:
        for instance in series.instances:
            path = (
                out
                / patient_id
                / str(study.study_instance_uid)
                / str(series.series_instance_uid)
                / f"{instance.sop_instance_uid}.dcm"
            )
            assert path.stat().st_size == instance.file_size
            assert pydicom.dcmread(path).SOPInstanceUID == instance.sop_instance_uid
    assert not list(out.rglob("*.part"))

    start = client.request_count
    again = client.export(
        study, out, workers=workers, progress=False
    )  # relations are loaded now: no request
    assert client.request_count == start
    assert len(again.skipped) == count and not again.written

    fresh = client.study(study.id)
    victim = report.items[0].path
    victim.unlink()
    start = client.request_count
    resumed = client.export(fresh, out, workers=workers, progress=False)
    assert client.request_count - start == 2 + 1  # the listings, then the one missing file
    assert [item.path for item in resumed.written] == [victim]
    assert len(resumed.skipped) == count - 1


def test_export_custom_layout_from_a_series(client: Orthanc, tmp_path: Path, workers: int) -> None:
    series = client.series(client.studies()[1].series_ids[0])  # not linked to its study
    start = client.request_count
    report = client.export(
        [series],
        tmp_path,
        layout="{PatientName}/{Modality}-{SeriesNumber:03d}/{InstanceNumber:04d}.dcm",
        progress=False,
        workers=workers,
    )
    # the series' study (for the patient's tags), its instances, then the files
    assert client.request_count - start == 2 + len(report)
    name = series.study.patient_main_dicom_tags["PatientName"]
    expected = {
        tmp_path
        / safe_component(name)
        / f"{series.modality}-{series.series_number:03d}"
        / f"{instance.instance_number:04d}.dcm"
        for instance in series.instances
    }
    assert {item.path for item in report} == expected
    assert all(path.exists() for path in expected)


def test_export_lists_patients_ahead_of_the_downloads(
    client: Orthanc, tmp_path: Path, workers: int
) -> None:
    patients = client.patients()[:2]
    start = client.request_count
    report = client.export(patients, tmp_path, workers=workers, progress=False)
    spec = synthetic.SAMPLE
    per_patient = spec.studies_per_patient * spec.series_per_study * spec.instances_per_series
    assert report.counts == {"written": 2 * per_patient, "skipped": 0, "failed": 0}
    # the studies of the listed patients (siblings: one bulk request), their series (one
    # more), per study its instances; then the files
    listings = 1 + 1 + 2 * spec.studies_per_patient
    assert client.request_count - start == report.requests == listings + 2 * per_patient
    for patient in patients:
        assert len(list((tmp_path / str(patient.patient_id)).rglob("*.dcm"))) == per_patient
    # items follow the resources' order
    first = {item.instance_id for item in report.items[:per_patient]}
    assert first == {i.id for s in patients[0].studies for se in s.series for i in se.instances}


def test_export_never_overwrites_or_leaves_the_folder(
    client: Orthanc, tmp_path: Path, workers: int
) -> None:
    study = client.studies()[0]
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside").mkdir()
    (out / "escape").symlink_to(tmp_path / "outside")
    start = client.request_count
    report = client.export(
        study, out, layout="escape/{SOPInstanceUID}.dcm", workers=workers, progress=False
    )
    assert client.request_count - start == 2  # the listings; nothing is downloaded
    assert report.counts["failed"] == len(report) > 0
    assert all(item.error == "the path leaves the export folder" for item in report)
    assert list((tmp_path / "outside").iterdir()) == []

    start = client.request_count
    clash = client.export(study, out, layout="{PatientID}.dcm", workers=workers, progress=False)
    assert client.request_count - start == 1  # listings are loaded; one file is fetched
    assert len(clash.written) == 1
    assert len(clash.failed) == len(clash) - 1
    assert all("the layout is not unique" in (item.error or "") for item in clash.failed)
    with pytest.raises(ExportFailed, match="not unique"):
        clash.raise_for_failures()


def test_export_keeps_a_hostile_patient_id_inside_the_folder(
    servers: Servers, tmp_path: Path, workers: int
) -> None:
    target = servers.new()
    dataset = next(synthetic.generate(synthetic.SyntheticSpec(1, 1, 1, 1, seed=11)))
    dataset.PatientID = "../../etc"
    target.upload(dataset, workers=workers, progress=False).raise_for_failures()
    out = tmp_path / "deep" / "out"
    report = target.export(
        target.patients(), out, workers=workers, progress=False
    ).raise_for_failures()
    (item,) = report.items
    assert item.status == "written"
    assert item.path.parent.parent.parent.name == ".._.._etc"
    assert item.path.is_relative_to(out.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert pydicom.dcmread(item.path).PatientID == "../../etc"


def test_download_archive_is_a_zip_of_the_study(client: Orthanc, tmp_path: Path) -> None:
    study = client.studies()[2]
    start = client.request_count
    path = study.download_archive(tmp_path / "study.zip")
    assert client.request_count - start == 1
    assert path == tmp_path / "study.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = [n for n in archive.namelist() if n.lower().endswith(".dcm")]
    assert len(names) == len(study.series_ids) * synthetic.SAMPLE.instances_per_series
    assert [p.name for p in tmp_path.iterdir()] == ["study.zip"]

    instance = study.series[0].instances[0]
    start = client.request_count
    single = instance.download_archive(tmp_path)  # a folder: named after the instance
    assert client.request_count - start == 1
    assert single == tmp_path / f"{instance.id}.zip"
    with zipfile.ZipFile(single) as archive:
        (entry,) = archive.namelist()
        assert archive.read(entry)[128:132] == b"DICM"


def test_save_writes_the_same_bytes_as_read_bytes(client: Orthanc, tmp_path: Path) -> None:
    instance = client.studies()[3].series[1].instances[2]
    start = client.request_count
    path = instance.save(tmp_path / "one.dcm")
    into_folder = instance.save(tmp_path)
    assert client.request_count - start == 2
    assert into_folder == tmp_path / f"{instance.sop_instance_uid}.dcm"
    data = instance.read_bytes()
    assert path.read_bytes() == data == into_folder.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["one.dcm", into_folder.name])


# -- a server that goes away in the middle of an import -------------------------------------------


@pytest.mark.live_only
def test_server_stopped_mid_import_then_import_again(servers: Servers, tmp_path: Path) -> None:
    target = servers.new()
    sandbox = servers.sandbox_of(target)
    spec = synthetic.SyntheticSpec(5, 2, 5, 6, seed=21)
    synthetic.write_tree(spec, tmp_path)
    total = spec.total_instances
    reports: list[UploadReport] = []
    with Orthanc(sandbox.url, auth=sandbox.auth, retries=1, timeout=(1, 5)) as fragile:

        def run() -> None:
            reports.append(fragile.upload(tmp_path, workers=2, progress=False))

        thread = threading.Thread(target=run)
        thread.start()
        while fragile.request_count < total // 4 and thread.is_alive():
            time.sleep(0.002)
        # SIGKILL: on SIGTERM Orthanc keeps serving open keep-alive connections until they
        # go idle, so an upload in full swing would simply finish
        assert sandbox.process is not None
        sandbox.process.kill()
        sandbox.process.wait(timeout=15)
        thread.join(timeout=60)
    assert not thread.is_alive()
    sandbox.restart()  # same storage, same ports
    (first,) = reports
    assert first.total == total
    counts = first.counts
    assert counts["failed"] > 0, counts
    assert (
        counts["stored"] + counts["already_stored"] + counts["rejected"] + counts["failed"] == total
    )
    assert counts["rejected"] == 0
    for item in first.failed:
        assert item.error and item.source.endswith(".dcm")
    with pytest.raises(UploadFailed, match="were not stored"):
        first.raise_for_failures()

    second = target.upload(tmp_path, progress=False)
    assert second.counts["failed"] == 0 and second.counts["rejected"] == 0
    assert target.statistics()["CountInstances"] == total
    status = {item.source: item.status for item in second}
    # what the first run stored is found there; only what it could not confirm is sent anew
    assert all(status[item.source] == "already_stored" for item in first.stored)
    failed_first = {item.source for item in first.failed}
    assert {item.source for item in second.stored} <= failed_first
    assert len(second.stored) + len(first.stored) <= total
    # items whose answer was lost when the server died were stored once, found the 2nd time
    lost = [item for item in first.failed if status[item.source] == "already_stored"]
    assert len(first.stored) + len(lost) + len(second.stored) == total


# -- the upload channel: storage races, idle connections -----------------------------------------


@pytest.mark.live_only
def test_storage_write_failure_is_sent_again_then_reported(servers: Servers) -> None:
    from ._proxy import FaultyProxy

    target = servers.new()
    sandbox = servers.sandbox_of(target)
    (_, first), (_, second) = sample_files(2, seed=31)
    # a passing glitch (two concurrent uploads creating one storage folder): sent again
    with FaultyProxy(sandbox.http_port, ["storage"]) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=2) as client:
            report = client.upload(first, progress=False)
            assert report.counts["stored"] == 1, report
            assert client.request_count == 2
        assert proxy.applied[:2] == ["storage", "pass"]
    # a lasting one (a full disk): every attempt fails, and the report says why
    with FaultyProxy(sandbox.http_port, ["storage"] * 3) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=2) as client:
            report = client.upload(second, progress=False)
            assert client.request_count == 3
    (item,) = report.failed
    assert "Unable to create a subdirectory or a file in the file storage" in (item.error or "")
    assert target.statistics()["CountInstances"] == 1


@pytest.mark.live_only
def test_channel_reconnects_after_the_server_closes_an_idle_connection(servers: Servers) -> None:
    target = servers.new()
    (_, first), (_, second) = sample_files(2, seed=32)
    with target._transport.channel() as channel:
        channel.send("POST", "/instances", first, content_type="application/dicom")
        before = target.request_count
        time.sleep(1.5)  # Orthanc closes keep-alive connections idle for 1 s
        answer = channel.send("POST", "/instances", second, content_type="application/dicom")
    assert b'"Success"' in answer
    assert target.request_count == before + 1  # a fresh connection, not a failed attempt
    assert target.statistics()["CountInstances"] == 2


def test_an_idle_socket_closed_by_the_peer_is_noticed() -> None:
    from kkorthanc._transport import _closed_by_peer

    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not _closed_by_peer(ours)
        theirs.close()
        assert _closed_by_peer(ours)
    assert not _closed_by_peer(None)


@pytest.mark.live_only
def test_a_download_cut_in_the_middle_is_fetched_again_or_leaves_nothing(
    servers: Servers, tmp_path: Path
) -> None:
    from kkorthanc import OrthancConnectionError

    from ._proxy import FaultyProxy

    target = servers.new()
    sandbox = servers.sandbox_of(target)
    ((_, data),) = sample_files(1, seed=33)
    instance_id = target.upload(data, progress=False).instance_ids[0]
    with FaultyProxy(sandbox.http_port, ["pass", "cut"]) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=2) as client:
            instance = client.instance(instance_id)
            client._transport.session.close()  # the download opens the next connection
            before = client.request_count
            saved = instance.save(tmp_path / "one.dcm")
            assert client.request_count == before + 2
        assert proxy.applied[:3] == ["pass", "cut", "pass"]
    assert saved.read_bytes() == data
    with FaultyProxy(sandbox.http_port, ["pass"] + ["cut"] * 3) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=2) as client:
            instance = client.instance(instance_id)
            client._transport.session.close()
            with pytest.raises(OrthancConnectionError, match="broke during the download"):
                instance.save(tmp_path / "two.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.dcm"]  # no partial file


# -- a dead server, huge files, links and leftovers (hostile conditions) -----------------------


def offline_instances(
    client: Orthanc, files: list[tuple[str, bytes]] | int
) -> tuple[Series, list[Instance]]:
    """A study, a series and its instances, linked in memory: an export needs no listing.

    ``files`` are the DICOM files the instances stand for (their size and SOPInstanceUID),
    or a count of made-up instances.
    """
    entries: list[dict[str, object]] = []
    if isinstance(files, int):
        for n in range(files):
            tags = {"SOPInstanceUID": f"1.2.826.0.1.3680043.10.1.{n}"}
            entries.append({"ID": f"i{n:05d}", "MainDicomTags": tags, "FileSize": 1000})
    else:
        for _, data in files:
            ds = pydicom.dcmread(io.BytesIO(data))
            tags = {"SOPInstanceUID": str(ds.SOPInstanceUID)}
            entry = {"ID": instance_id_of(data), "MainDicomTags": tags, "FileSize": len(data)}
            entries.append(entry)
    study = Study.from_orthanc(
        {
            "ID": "st",
            "MainDicomTags": {"StudyInstanceUID": "1.2.3"},
            "PatientMainDicomTags": {"PatientID": "P"},
            "ParentPatient": "pa",
        },
        client,
    )
    series = Series.from_orthanc(
        {"ID": "se", "MainDicomTags": {"SeriesInstanceUID": "1.2.3.4"}, "ParentStudy": "st"},
        client,
    )
    instances = [Instance.from_orthanc({**e, "ParentSeries": "se"}, client) for e in entries]
    for instance in instances:
        instance._link(series, None)
    series._link(study, instances)
    study._link(None, [series])
    return series, instances


def test_export_to_a_dead_server_stops_after_consecutive_failures(tmp_path: Path) -> None:
    count = 400
    dead = Orthanc(f"http://127.0.0.1:{free_port()}", auth=("kk", "unused"), retries=1)
    series, instances = offline_instances(dead, count)
    start = time.monotonic()
    report = transfer.export(dead, series, tmp_path, workers=4, progress=False)
    elapsed = time.monotonic() - start
    # each failure costs two attempts and a pause of 0.2 s: 400 of them took 20 s
    assert elapsed < 8, elapsed
    assert [item.instance_id for item in report] == [i.id for i in instances]  # every one
    assert report.counts == {"written": 0, "skipped": 0, "failed": count}
    limit = transfer.DEFAULT_MAX_CONSECUTIVE_FAILURES
    # the breaker trips at the limit; the downloads already under way end too
    assert dead.request_count <= 2 * (limit + 4)
    tried = [item for item in report if not (item.error or "").startswith("not sent")]
    assert limit <= len(tried) < limit + 4
    assert all("cannot reach" in (item.error or "") for item in tried), tried[0]
    not_sent = report.items[-1].error or ""
    assert f"not sent: the server was unreachable ({limit} failures in a row" in not_sent
    assert "cannot reach" in not_sent  # the last failure is named
    # nothing was created for the instances that were never sent
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(ExportFailed, match=f"{count} of {count} items were not written"):
        report.raise_for_failures()


def test_save_never_replaces_a_link_or_a_device(tmp_path: Path) -> None:
    from kkorthanc import InvalidRequest
    from kkorthanc.transfer.download import _stream_to_file

    client = nowhere()
    _, (instance,) = offline_instances(client, 1)
    kept = tmp_path / "kept.dcm"
    kept.write_bytes(b"precious")
    link = tmp_path / "link.dcm"
    link.symlink_to(kept)
    null_link = tmp_path / "null.dcm"
    null_link.symlink_to(os.devnull)
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    (tmp_path / "folder.dcm").mkdir()
    for target in (link, null_link, fifo):
        with pytest.raises(InvalidRequest, match=f"will not replace {target}"):
            instance.save(target)
        with pytest.raises(InvalidRequest, match="will not replace"):
            instance.download_archive(target)
    with pytest.raises(InvalidRequest, match="not a regular file"):
        instance.save(fifo)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        instance.save(link)
    assert client.request_count == 0  # refused before anything is sent
    # a link that appears while the download runs is not replaced either
    with pytest.raises(InvalidRequest, match="symbolic link"):
        _stream_to_file(iter([b"DICM"]), link)
    assert link.is_symlink() and null_link.is_symlink() and kept.read_bytes() == b"precious"
    assert fifo.is_fifo() and (tmp_path / "folder.dcm").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo.dcm",
        "folder.dcm",
        "kept.dcm",
        "link.dcm",
        "null.dcm",
    ]  # no temporary file left


def test_export_keeps_links_removes_its_leftovers_and_checks_what_it_skips(
    tmp_path: Path,
) -> None:
    files = sample_files(4, seed=41)
    client = nowhere()
    series, instances = offline_instances(client, files)
    layout = "{SOPInstanceUID}.dcm"
    paths = [tmp_path / f"{i.sop_instance_uid}.dcm" for i in instances]
    # 0: its own file, as a finished export left it; 1: another instance's file of the
    # same size under its name; 2: a link; 3: missing, an interrupted download left a part
    paths[0].write_bytes(files[0][1])
    uid = str(instances[1].sop_instance_uid)
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    impostor = files[1][1].replace(uid.encode(), other.encode())
    assert len(impostor) == instances[1].file_size and impostor != files[1][1]
    paths[1].write_bytes(impostor)
    paths[2].symlink_to(paths[0])
    stale = tmp_path / f".{paths[3].name}.0a1b2c3d.part"
    stale.write_bytes(files[3][1][:100])
    unrelated = [
        tmp_path / ".other.dcm.0a1b2c3d.part",  # a part of a file this export does not write
        tmp_path / f".{paths[3].name}.part",  # not a name a download gives
        tmp_path / f".{paths[3].name}.0A1B2C3D.part",
        tmp_path / "notes.txt",
    ]
    for path in unrelated:
        path.write_text("keep me")
    report = transfer.export(client, series, tmp_path, layout=layout, workers=1, progress=False)
    statuses = [item.status for item in report]
    assert statuses == ["skipped", "failed", "failed", "failed"]
    # the same-size file of another instance is not taken for this one: it is requested
    # (and fails here, the server being gone); the link is refused before any request
    assert client.request_count == 2
    assert "cannot reach" in (report.items[1].error or "")
    assert report.items[2].error == f"will not replace {paths[2]}: it is a symbolic link"
    assert paths[2].is_symlink() and paths[1].read_bytes() == impostor
    assert not stale.exists()
    assert all(path.read_text() == "keep me" for path in unrelated)


@pytest.mark.live_only
def test_export_ends_in_seconds_when_the_server_dies_after_the_listing(
    servers: Servers, tmp_path: Path
) -> None:
    spec = synthetic.SyntheticSpec(2, 1, 2, 40, seed=42)
    target = servers.new(spec=spec)
    sandbox = servers.sandbox_of(target)
    patients = target.patients()
    listed = [i for p in patients for st in p.studies for se in st.series for i in se.instances]
    assert len(listed) == spec.total_instances == 160
    assert sandbox.process is not None
    sandbox.process.kill()  # the listing is done; the downloads find nobody
    sandbox.process.wait(timeout=15)
    before = target.request_count
    start = time.monotonic()
    report = target.export(patients, tmp_path, progress=False)  # the client's 3 retries
    elapsed = time.monotonic() - start
    # without the breaker: 1.4 s of retries per file, 4 at a time, about 56 s
    assert elapsed < 20, elapsed
    assert sorted(item.instance_id for item in report) == sorted(i.id for i in listed)
    assert report.counts["failed"] == len(listed)
    limit = transfer.DEFAULT_MAX_CONSECUTIVE_FAILURES
    assert target.request_count - before <= 4 * (limit + 4)  # 4 attempts per file tried
    reasons = [item.error or "" for item in report]
    not_sent = [r for r in reasons if r.startswith("not sent: the server was unreachable")]
    assert all("cannot reach" in r for r in reasons if r not in not_sent)
    assert len(not_sent) >= len(listed) - limit - 4
    assert not list(tmp_path.rglob("*.part"))


class RefusingServer:
    """A loopback HTTP server that reads each request whole, without keeping it, and
    refuses it as Orthanc refuses a file it cannot parse (400, "Bad file format")."""

    BODY = (
        b'{"HttpError": "Bad Request", "HttpStatus": 400, "Message": "Bad file format", '
        b'"Method": "POST", "OrthancError": "Bad file format", "OrthancStatus": 15, '
        b'"Uri": "/instances", "Details": "Cannot parse an invalid DICOM file"}'
    )

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.received: list[int] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        buffer = bytearray(1 << 20)
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                left = length - len(rest)
                while left > 0:
                    got = conn.recv_into(buffer, min(left, len(buffer)))
                    if not got:
                        return
                    left -= got
                self.received.append(length)
                conn.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(self.BODY)).encode() + b"\r\n\r\n" + self.BODY
                )
                data = b""

    def close(self) -> None:
        self.server.close()


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def test_two_gigabyte_files_are_prechecked_from_their_head(tmp_path: Path) -> None:
    import tracemalloc

    size = 2 * 1024**3  # max_member_size: both are accepted by their size
    junk = tmp_path / "junk.dcm"  # no preamble: zeros
    with open(junk, "wb") as f:
        f.truncate(size)
    fake = tmp_path / "fake.dcm"  # a DICM preamble, then garbage, then zeros
    with open(fake, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 16)
        f.truncate(size)
    server = RefusingServer()
    client = Orthanc(f"http://127.0.0.1:{server.port}", auth=("kk", "unused"))
    limit = 200 * 1024**2
    try:
        tracemalloc.start()
        rss = peak_rss()
        start = time.monotonic()
        alone = transfer.upload(client, junk, workers=2, progress=False)
        elapsed = time.monotonic() - start
        traced = tracemalloc.get_traced_memory()[1]
        rss_growth = peak_rss() - rss
        # the whole file was 4 GiB of memory (read in pieces, then joined): now its head
        (item,) = alone.items
        assert item.status == "rejected" and item.error and item.size == size
        assert client.request_count == 0
        assert traced < limit, traced
        assert rss_growth < limit, rss_growth
        assert elapsed < 10, elapsed

        tracemalloc.reset_peak()
        start = time.monotonic()
        both = transfer.upload(client, [junk, fake], workers=2, progress=False)
        elapsed = time.monotonic() - start
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.close()
        client.close()
        junk.unlink()
        fake.unlink()
    # the junk is still refused from its head; the other passes the pre-check, so it is
    # sent, streamed from the file (a few blocks in memory, not 2 GiB), and the server
    # refuses it
    assert [Path(i.source).name for i in both] == ["junk.dcm", "fake.dcm"]
    assert [i.status for i in both] == ["rejected", "rejected"], both.items
    refused = both.items[1]
    if client.request_count:  # sent: the server's own refusal, with its details
        assert client.request_count == 1 and server.received == [size]
        assert refused.details == "Cannot parse an invalid DICOM file"
    assert traced < STREAM_MEMORY_LIMIT, traced
    assert elapsed < 60, elapsed


def test_export_again_replaces_a_same_size_file_of_another_instance(
    client: Orthanc, tmp_path: Path, workers: int
) -> None:
    series = client.studies()[1].series[0]
    layout = "{SeriesNumber}/{InstanceNumber}.dcm"
    first = client.export(series, tmp_path, layout=layout, workers=workers, progress=False)
    first.raise_for_failures()
    victim = first.items[0]
    data = victim.path.read_bytes()
    uid = str(series.instances[0].sop_instance_uid)
    assert uid.encode() in data
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    victim.path.write_bytes(data.replace(uid.encode(), other.encode()))  # same size
    assert victim.path.stat().st_size == len(data)
    # what an export killed in the middle of a download leaves behind
    stale = victim.path.with_name(f".{victim.path.name}.deadbeef.part")
    stale.write_bytes(data[:10])
    unrelated = victim.path.with_name(".notes.txt.deadbeef.part")
    unrelated.write_text("not the export's")
    start = client.request_count
    again = client.export(series, tmp_path, layout=layout, workers=workers, progress=False)
    assert client.request_count - start == 1  # the file that is not the instance's
    assert [item.path for item in again.written] == [victim.path]
    assert len(again.skipped) == len(first) - 1
    assert victim.path.read_bytes() == data
    assert not stale.exists() and unrelated.read_text() == "not the export's"
    assert not [p for p in tmp_path.rglob(".*.part") if p != unrelated]


def test_the_resume_check_reads_the_uid_from_the_head_in_any_encoding(tmp_path: Path) -> None:
    from kkorthanc.transfer.part10 import read_sop_instance_uid, sop_instance_uid

    ds = next(synthetic.generate(synthetic.SyntheticSpec(1, 1, 1, 1, seed=43)))
    uid = str(ds.SOPInstanceUID)
    uids = pydicom.uid
    for syntax in (
        uids.ExplicitVRLittleEndian,
        uids.ImplicitVRLittleEndian,
        uids.ExplicitVRBigEndian,
        uids.DeflatedExplicitVRLittleEndian,
    ):
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        assert sop_instance_uid(buffer.getvalue()) == uid, syntax
    for implicit in (True, False):  # a bare dataset, without preamble and file meta
        raw = pydicom.filebase.DicomBytesIO()
        raw.is_little_endian, raw.is_implicit_VR = True, implicit
        pydicom.filewriter.write_dataset(raw, ds)
        assert sop_instance_uid(raw.getvalue()) == uid
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.ImageType = ["ORIGINAL", *(["X" * 16] * 400)]  # 6.8 KB before the UID
    long_head = tmp_path / "long.dcm"
    pydicom.dcmwrite(long_head, ds, enforce_file_format=True)
    assert read_sop_instance_uid(long_head) == uid
    for junk in (b"", b"\x00" * 4096, b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4):
        assert sop_instance_uid(junk) is None
    assert read_sop_instance_uid(tmp_path / "missing.dcm") is None


# -- streamed uploads ------------------------------------------------------------------------


def large_dicom(path: Path, frames: int, *, uid: str = "1.2.826.0.1.3680043.10.1234.999") -> int:
    """Write a valid Part-10 file whose pixel data are ``frames`` frames of 1024 x 1024 16-bit
    zeros (2 MiB each), sparse on disk: the header is written, the pixel data is a hole.
    Returns the file's size."""

    def element(group: int, number: int, vr: str, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr in ("UI", "OB") else b" "
        tag = struct.pack("<HH", group, number) + vr.encode()
        if vr in ("OB", "OW"):
            return tag + b"\0\0" + struct.pack("<I", len(value)) + value
        return tag + struct.pack("<H", len(value)) + value

    def us(value: int) -> bytes:
        return struct.pack("<H", value)

    sop_class = b"1.2.840.10008.5.1.4.1.1.7"
    meta = b"".join(
        [
            element(0x0002, 0x0001, "OB", b"\0\1"),
            element(0x0002, 0x0002, "UI", sop_class),
            element(0x0002, 0x0003, "UI", f"{uid}.3".encode()),
            element(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1"),
        ]
    )
    dataset = b"".join(
        [
            element(0x0008, 0x0016, "UI", sop_class),
            element(0x0008, 0x0018, "UI", f"{uid}.3".encode()),
            element(0x0010, 0x0010, "PN", b"LARGE^FILE"),
            element(0x0010, 0x0020, "LO", b"KK-LARGE"),
            element(0x0020, 0x000D, "UI", f"{uid}.1".encode()),
            element(0x0020, 0x000E, "UI", f"{uid}.2".encode()),
            element(0x0028, 0x0002, "US", us(1)),
            element(0x0028, 0x0004, "CS", b"MONOCHROME2"),
            element(0x0028, 0x0008, "IS", str(frames).encode()),
            element(0x0028, 0x0010, "US", us(1024)),
            element(0x0028, 0x0011, "US", us(1024)),
            element(0x0028, 0x0100, "US", us(16)),
            element(0x0028, 0x0101, "US", us(16)),
            element(0x0028, 0x0102, "US", us(15)),
            element(0x0028, 0x0103, "US", us(0)),
        ]
    )
    pixels = frames * 1024 * 1024 * 2
    head = (
        bytes(128)
        + b"DICM"
        + element(0x0002, 0x0000, "UL", struct.pack("<I", len(meta)))
        + meta
        + dataset
        + struct.pack("<HH", 0x7FE0, 0x0010)
        + b"OW\0\0"
        + struct.pack("<I", pixels)
    )
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(len(head) + pixels)
    return len(head) + pixels


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    import hashlib

    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SinkServer:
    """A loopback server that takes ``POST /instances`` as Orthanc does (``Success``, on a
    keep-alive connection) and keeps of each body only its length and SHA-256, so that it
    costs no memory. ``on_headers(n)`` runs when the headers of request ``n`` are in, before
    its body is read; ``cut_first`` closes the first connection after that many body bytes,
    without an answer."""

    def __init__(self, on_headers: Any = None, cut_first: int | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.heads: list[bytes] = []
        self.bodies: list[tuple[int, str]] = []  # length and SHA-256 of each complete body
        self.on_headers = on_headers
        self.cut_first = cut_first
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        import hashlib

        buffer = bytearray(1 << 20)
        conn.settimeout(20)
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                number = len(self.heads)
                self.heads.append(head)
                if self.on_headers is not None:
                    self.on_headers(number)
                length = int(header_value(head, b"content-length") or 0)
                digest = hashlib.sha256(rest)
                left = length - len(rest)
                cut = self.cut_first if number == 0 else None
                while left > 0:
                    if cut is not None and length - left >= cut:
                        return  # the connection closes mid-body
                    got = conn.recv_into(buffer, min(left, len(buffer)))
                    if not got:
                        return
                    digest.update(memoryview(buffer)[:got])
                    left -= got
                self.bodies.append((length, digest.hexdigest()))
                body = b'{"ID": "a-b-c-d-e", "Status": "Success", "Path": "/instances/x"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                data = b""

    def close(self) -> None:
        self.server.close()


def header_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def traced_upload(client: Orthanc, source: Any, **options: Any) -> tuple[UploadReport, int]:
    """An upload and the peak of Python memory allocated meanwhile (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        report = transfer.upload(client, source, progress=False, **options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return report, peak


#: what an upload of one large file may hold at its peak: a few blocks, not the file
STREAM_MEMORY_LIMIT = 8 << 20


def test_a_large_file_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    size = large_dicom(path, frames=120)  # 240 MiB
    expected = file_digest(path)
    server = SinkServer()
    client = Orthanc(server.url, auth=("kk", "unused"))
    try:
        start = time.monotonic()
        report, peak = traced_upload(client, path, workers=2)
        elapsed = time.monotonic() - start
    finally:
        server.close()
        client.close()
    (item,) = report.items
    assert item.status == "stored", item
    assert item.size == size and item.instance_id == "a-b-c-d-e"
    assert server.bodies == [(size, expected)]  # every byte, once, in order
    (head,) = server.heads
    assert header_value(head, b"content-length") == str(size).encode()
    assert header_value(head, b"transfer-encoding") is None  # not chunked
    assert report.requests == client.request_count == 1
    # it used to be read whole: 240 MiB at the peak
    assert peak < STREAM_MEMORY_LIMIT, peak
    assert elapsed < 20, elapsed


def test_a_streamed_file_is_sent_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    size = large_dicom(path, frames=16)  # 32 MiB
    server = SinkServer(cut_first=5 << 20)  # the first connection drops after 5 MiB
    client = Orthanc(server.url, auth=("kk", "unused"))
    try:
        report, peak = traced_upload(client, path, workers=1)
    finally:
        server.close()
        client.close()
    assert [item.status for item in report] == ["stored"], report.items
    assert server.bodies == [(size, file_digest(path))]  # the retry sent it whole
    assert len(server.heads) == 2 and report.requests == client.request_count == 2
    assert peak < STREAM_MEMORY_LIMIT, peak


@pytest.mark.parametrize("change", ["shrinks", "grows", "vanishes"])
def test_a_file_that_changes_while_it_is_sent_is_reported(tmp_path: Path, change: str) -> None:
    path = tmp_path / "changing.dcm"
    size = large_dicom(path, frames=32)  # 64 MiB: more than the socket buffers hold
    other = tmp_path / "other.dcm"
    other_size = large_dicom(other, frames=1, uid="1.2.826.0.1.3680043.10.1234.998")
    original = file_digest(path)

    def on_headers(number: int) -> None:
        if number:
            return
        if change == "shrinks":
            os.truncate(path, 1 << 20)
        elif change == "grows":
            with open(path, "ab") as out:
                out.write(b"\0" * 1024)
        else:
            path.unlink()

    server = SinkServer(on_headers=on_headers)
    client = Orthanc(server.url, auth=("kk", "unused"))
    try:
        report = transfer.upload(client, [path, other], workers=1, progress=False)
    finally:
        server.close()
        client.close()
    first, second = report.items
    assert second.status == "stored" and second.size == other_size  # the run goes on
    if change == "vanishes":  # its open file is still whole: sent as it was checked
        assert first.status == "stored" and first.size == size
        assert server.bodies == [(size, original), (other_size, file_digest(other))]
        return
    assert first.status == "failed" and first.size == size, first
    assert first.error is not None
    verb = "shrank" if change == "shrinks" else "changed"
    assert first.error.startswith(f"not sent: it {verb}")
    assert "while it was sent" in first.error
    # the server never got the whole body of the first, so it stored nothing of it
    assert server.bodies == [(other_size, file_digest(other))]
    assert report.requests == 2  # the changed file is not sent again


@pytest.mark.live_only
def test_a_large_file_is_stored_intact_by_orthanc(servers: Servers, tmp_path: Path) -> None:
    client = servers.new()
    path = tmp_path / "large.dcm"
    size = large_dicom(path, frames=120)  # 240 MiB
    report, peak = traced_upload(client, path, workers=1)
    (item,) = report.items
    assert item.status == "stored" and item.size == size, item
    assert report.requests == 1
    assert peak < STREAM_MEMORY_LIMIT, peak
    assert item.instance_id is not None
    instance = client.get("instance", item.instance_id)
    assert isinstance(instance, Instance)
    assert instance.sop_instance_uid == "1.2.826.0.1.3680043.10.1234.999.3"
    assert instance.file_size == size
    stored_md5 = client.get_bytes(f"/instances/{item.instance_id}/attachments/dicom/md5")
    assert stored_md5.decode().strip() == file_digest(path, "md5")
