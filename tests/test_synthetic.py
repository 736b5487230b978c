"""Tests for the deterministic synthetic DICOM generator (no server needed)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from kkorthanc import synthetic  # noqa: E402
from kkorthanc.synthetic import (  # noqa: E402
    BENCH,
    PATIENT_NAMES,
    SAMPLE,
    SyntheticSpec,
    dataset_to_bytes,
    generate,
    generate_bytes,
    uid,
    write_tree,
)

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SMALL = SyntheticSpec(patients=9, studies_per_patient=2, series_per_study=3, instances_per_series=2)


def _parse(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _assert_valid_uid(value: str) -> None:
    assert UID_RE.match(value), value
    assert len(value) <= 64, value
    for component in value.split("."):
        assert component == "0" or not component.startswith("0"), value


@pytest.fixture(scope="module")
def sample_files() -> list[tuple[str, bytes]]:
    return list(generate_bytes(SAMPLE))


@pytest.fixture(scope="module")
def small_datasets() -> list[pydicom.Dataset]:
    return [_parse(data) for _, data in generate_bytes(SMALL)]


def test_specs() -> None:
    assert SAMPLE.total_instances == 48
    assert BENCH.total_instances == 24_000
    assert SyntheticSpec() == SAMPLE
    with pytest.raises(ValueError):
        SyntheticSpec(rows=0)
    with pytest.raises(ValueError):
        SyntheticSpec(patients=-1)


def test_counts(sample_files: list[tuple[str, bytes]]) -> None:
    assert len(sample_files) == 48
    names = [name for name, _ in sample_files]
    assert len(set(names)) == 48
    assert names[0] == "P000/ST00/SE00/IM000.dcm"
    assert names[-1] == "P003/ST01/SE01/IM002.dcm"
    assert names == sorted(names)

    datasets = [_parse(data) for _, data in sample_files]
    assert len({ds.PatientID for ds in datasets}) == 4
    assert len({ds.StudyInstanceUID for ds in datasets}) == 8
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 16
    assert len({ds.SOPInstanceUID for ds in datasets}) == 48
    assert sum(1 for _ in generate(SyntheticSpec(2, 1, 1, 5))) == 10
    assert list(generate_bytes(SyntheticSpec(0, 2, 2, 2))) == []


def test_deterministic(sample_files: list[tuple[str, bytes]]) -> None:
    assert list(generate_bytes(SAMPLE)) == sample_files
    assert list(generate_bytes(SyntheticSpec())) == sample_files


def test_deterministic_across_processes(sample_files: list[tuple[str, bytes]]) -> None:
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in sample_files))
    code = (
        "import hashlib\n"
        "from kkorthanc.synthetic import SAMPLE, generate_bytes\n"
        "h = hashlib.sha256(b''.join(n.encode() + d for n, d in generate_bytes(SAMPLE)))\n"
        "print(h.hexdigest())\n"
    )
    root = str(Path(synthetic.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == digest.hexdigest()


def test_different_seed_differs(sample_files: list[tuple[str, bytes]]) -> None:
    other = [_parse(data) for _, data in generate_bytes(SyntheticSpec(seed=1))]
    base = [_parse(data) for _, data in sample_files]
    assert {ds.PatientID for ds in base}.isdisjoint({ds.PatientID for ds in other})
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert {ds[attr].value for ds in base}.isdisjoint({ds[attr].value for ds in other})
    assert base[0].PatientID == "KK-0-0000"
    assert other[0].PatientID == "KK-1-0000"


def test_fast_encoder_matches_pydicom() -> None:
    for spec in (SAMPLE, SyntheticSpec(11, 2, 3, 2, seed=7, rows=5, columns=3)):
        fast = [data for _, data in generate_bytes(spec)]
        slow = [dataset_to_bytes(ds) for ds in generate(spec)]
        assert fast == slow


def test_part10_file_meta(sample_files: list[tuple[str, bytes]]) -> None:
    for _, data in sample_files:
        assert data[:128] == b"\x00" * 128
        assert data[128:132] == b"DICM"
        ds = _parse(data)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        _assert_valid_uid(meta.ImplementationClassUID)
        assert (
            meta.ImplementationClassUID
            == _parse(sample_files[0][1]).file_meta.ImplementationClassUID
        )
        assert synthetic.SOP_CLASS_BY_MODALITY[ds.Modality] == ds.SOPClassUID


def test_pixel_data(sample_files: list[tuple[str, bytes]]) -> None:
    spec = SyntheticSpec(1, 1, 1, 2, rows=6, columns=10)
    for _, data in generate_bytes(spec):
        ds = _parse(data)
        assert (ds.Rows, ds.Columns) == (6, 10)
        assert ds.BitsAllocated == 16
        assert ds.PixelRepresentation == 0
        assert ds.SamplesPerPixel == 1
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert len(ds.PixelData) == 6 * 10 * 2
        assert ds["PixelData"].VR == "OW"
        arr = ds.pixel_array
        assert arr.shape == (6, 10)
        assert int(arr.max()) < 4096
    sizes = [len(data) for _, data in sample_files]
    assert max(sizes) < 2048


def test_non_ascii_names_round_trip(small_datasets: list[pydicom.Dataset]) -> None:
    names = {str(ds.PatientName) for ds in small_datasets}
    for expected in (
        "王^小明",
        "山田^太郎",
        "Müller^Jürgen",
        "Groß^Änne",
        "김^민준",
        "García^José",
    ):
        assert expected in names
    assert "DOE^JOHN3" in names
    assert "Smith^Anna5^B" in names
    assert any(not name.isascii() for name in PATIENT_NAMES)
    for ds in small_datasets:
        assert ds.SpecificCharacterSet == "ISO_IR 192"
    by_patient = {ds.PatientID: str(ds.PatientName) for ds in small_datasets}
    assert by_patient["KK-0-0000"] == "王^小明"
    assert by_patient["KK-0-0008"] == "王^小明"  # non-ASCII names repeat...
    assert len(by_patient) == 9  # ...but patient IDs are unique
    physicians = {
        str(ds.ReferringPhysicianName) for ds in small_datasets if "ReferringPhysicianName" in ds
    }
    assert any(not name.isascii() for name in physicians)


def test_name_components_survive_raw_bytes() -> None:
    _, data = next(generate_bytes(SAMPLE))
    assert "王^小明".encode() in data


def test_multi_valued_tags(small_datasets: list[pydicom.Dataset]) -> None:
    ds = small_datasets[0]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert len(ds.ImagePositionPatient) == 3
    other_ids = [ds.OtherPatientIDs for ds in small_datasets if "OtherPatientIDs" in ds]
    assert any(isinstance(v, pydicom.multival.MultiValue) and len(v) == 2 for v in other_ids)
    assert any(isinstance(v, str) for v in other_ids)
    operators = [ds.OperatorsName for ds in small_datasets if "OperatorsName" in ds]
    assert any(isinstance(v, pydicom.multival.MultiValue) and len(v) == 2 for v in operators)
    assert any(isinstance(v, pydicom.valuerep.PersonName) for v in operators)


def test_instance_level_values(small_datasets: list[pydicom.Dataset]) -> None:
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in small_datasets:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    for items in series.values():
        assert [ds.InstanceNumber for ds in items] == list(range(1, len(items) + 1))
        positions = [float(ds.ImagePositionPatient[2]) for ds in items]
        assert len(set(positions)) == len(positions)
        for ds in items:
            assert ds.InstanceCreationDate == ds.StudyDate
            assert re.fullmatch(r"\d{6}", ds.InstanceCreationTime)
            if "SliceLocation" in ds:
                assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])


def test_study_and_series_values(small_datasets: list[pydicom.Dataset]) -> None:
    assert len({ds.Modality for ds in small_datasets}) >= 4
    for ds in small_datasets:
        assert re.fullmatch(r"\d{8}", ds.StudyDate)
        assert 2005 <= int(ds.StudyDate[:4]) <= 2024
        assert re.fullmatch(r"\d{6}(\.\d{6})?", ds.StudyTime)
        assert ds.SeriesDate == ds.StudyDate
        if "PatientSex" in ds:
            assert ds.PatientSex in ("M", "F", "O")
    times = {ds.StudyTime for ds in small_datasets}
    assert any("." in t for t in times)
    assert any("." not in t for t in times)
    years = {ds.StudyDate[:4] for ds in small_datasets}
    assert len(years) > 3
    accession = Counter(
        "missing"
        if "AccessionNumber" not in ds
        else ("empty" if ds.AccessionNumber == "" else "set")
        for ds in small_datasets
    )
    assert set(accession) == {"missing", "empty", "set"}


def test_optional_tags_missing(small_datasets: list[pydicom.Dataset]) -> None:
    optional = (
        "PatientSex",
        "PatientBirthDate",
        "OtherPatientIDs",
        "AccessionNumber",
        "ReferringPhysicianName",
        "BodyPartExamined",
        "SeriesDescription",
        "ProtocolName",
        "OperatorsName",
        "AcquisitionNumber",
        "SliceLocation",
    )
    for keyword in optional:
        present = sum(1 for ds in small_datasets if keyword in ds)
        assert 0 < present < len(small_datasets), keyword
    required = (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "InstanceNumber",
    )
    for ds in small_datasets:
        for keyword in required:
            assert keyword in ds, keyword
            assert ds[keyword].value not in (None, ""), keyword


def test_sample_has_missing_tags(sample_files: list[tuple[str, bytes]]) -> None:
    datasets = [_parse(data) for _, data in sample_files]
    assert any("PatientSex" not in ds for ds in datasets)
    assert any("AccessionNumber" not in ds for ds in datasets)
    assert any("BodyPartExamined" not in ds for ds in datasets)


def test_uids_valid(small_datasets: list[pydicom.Dataset]) -> None:
    for ds in small_datasets:
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "SOPClassUID",
            "FrameOfReferenceUID",
        ):
            _assert_valid_uid(str(ds[keyword].value))


def test_uid_function() -> None:
    assert uid("a", 1) == uid("a", 1)
    assert uid("a", 1) != uid("a", 2)
    assert uid("a", 1) != uid("a", "1")
    assert uid().startswith(synthetic.UID_ROOT)
    for i in range(2000):
        _assert_valid_uid(uid("x", i))


def test_write_tree(tmp_path: Path) -> None:
    spec = SyntheticSpec(2, 1, 2, 2)
    paths = write_tree(spec, tmp_path)
    assert len(paths) == 8
    assert paths[0] == tmp_path / "P000" / "ST00" / "SE00" / "IM000.dcm"
    expected = dict(generate_bytes(spec))
    for path in paths:
        assert path.is_file()
        assert path.read_bytes() == expected[path.relative_to(tmp_path).as_posix()]
        pydicom.dcmread(path)


def test_dataset_to_bytes_adds_file_meta() -> None:
    ds = next(generate(SAMPLE))
    del ds.file_meta
    data = dataset_to_bytes(ds)
    parsed = _parse(data)
    assert parsed.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID


def test_generated_datasets_are_independent() -> None:
    first, second = list(generate(SyntheticSpec(1, 1, 1, 2)))
    first.PatientName = "CHANGED^NAME"
    assert str(second.PatientName) == "王^小明"
