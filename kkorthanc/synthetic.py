"""Deterministic generator of small synthetic DICOM files.

The generated hierarchy (patients -> studies -> series -> instances) is fully
determined by a :class:`SyntheticSpec`: the same spec always produces
byte-identical DICOM Part-10 files, without any dependency on the current
date/time or on random UIDs.  The data deliberately contains the kinds of
values that tend to exercise client code: non-ASCII person names (Chinese,
Japanese, Korean, German, Spanish), multi-valued tags, empty values and
optional tags that are missing from some datasets.

Requires pydicom (``pip install 'kkorthanc[dicom]'``).
"""

from __future__ import annotations

import array
import hashlib
import io
import random
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

try:
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID, ExplicitVRLittleEndian
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kkorthanc.synthetic requires pydicom; install it with pip install 'kkorthanc[dicom]'"
    ) from exc

_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3

__all__ = [
    "BENCH",
    "CHARACTER_SET",
    "MODALITIES",
    "PATIENT_NAMES",
    "SAMPLE",
    "SOP_CLASS_BY_MODALITY",
    "UID_ROOT",
    "SyntheticSpec",
    "dataset_to_bytes",
    "generate",
    "generate_bytes",
    "uid",
    "write_tree",
]

#: Root of every UID produced by :func:`uid`.
UID_ROOT = "1.2.826.0.1.3680043.10.1234."

#: Character set declared on every generated dataset (UTF-8).
CHARACTER_SET = "ISO_IR 192"

#: Patient names, used cyclically.  ASCII names get the patient index appended
#: to the given name so that they are unique; non-ASCII names may repeat.
PATIENT_NAMES: tuple[str, ...] = (
    "王^小明",
    "Müller^Jürgen",
    "山田^太郎",
    "DOE^JOHN",
    "Groß^Änne",
    "Smith^Anna^B",
    "García^José",
    "김^민준",
)

#: Modalities, cycled over the series of a generation run.
MODALITIES: tuple[str, ...] = ("CT", "MR", "US", "CR", "PT")

#: Storage SOP class used for each modality.
SOP_CLASS_BY_MODALITY: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
}

_STUDY_DESCRIPTIONS = (
    "Brain MRI",
    "Chest CT",
    "Abdomen CT",
    "Knee MR",
    "Thorax",
    "Becken nativ",
    "Whole body PET",
)
_REFERRING_PHYSICIANS = (
    "HOUSE^GREGORY",
    "Weiß^Björn^Dr.",
    "佐藤^花子",
    "Schmidt^Klaus",
    "李^雷",
)
_INSTITUTIONS = ("General Hospital", "Klinikum Süd", "Kantonsspital Zürich")
_BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "KNEE", "PELVIS", "SPINE")
_STATIONS = ("CT01", "MR-3T", "US_ROOM2", "CR-A", "PETCT1")
_MANUFACTURERS = ("ACME Medical", "Orthanc Imaging", "Synthétique SA")
_OPERATORS = ("TECH^ALICE", "Bauer^Jörg", "鈴木^一郎", "TECH^BOB")
_SERIES_DESCRIPTIONS = {
    "CT": ("Axial 5mm", "Axial 1mm", "Coronal MPR"),
    "MR": ("T1 SE", "T2 TSE", "FLAIR"),
    "US": ("B-Mode", "Doppler"),
    "CR": ("PA", "Lateral"),
    "PT": ("PET AC", "PET NAC"),
}

_IMPLEMENTATION_VERSION_NAME = "KKORTHANC_SYN1"


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic data set.

    The total number of instances is
    ``patients * studies_per_patient * series_per_study * instances_per_series``.
    """

    patients: int = 4
    studies_per_patient: int = 2
    series_per_study: int = 2
    instances_per_series: int = 3
    seed: int = 0
    rows: int = 8
    columns: int = 8

    def __post_init__(self) -> None:
        for name in (
            "patients",
            "studies_per_patient",
            "series_per_study",
            "instances_per_series",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rows <= 0 or self.columns <= 0:
            raise ValueError("rows and columns must be > 0")

    @property
    def total_studies(self) -> int:
        """Number of studies produced by this spec."""
        return self.patients * self.studies_per_patient

    @property
    def total_series(self) -> int:
        """Number of series produced by this spec."""
        return self.total_studies * self.series_per_study

    @property
    def total_instances(self) -> int:
        """Number of instances produced by this spec."""
        return self.total_series * self.instances_per_series


#: Small default data set: 4 patients x 2 studies x 2 series x 3 instances = 48.
SAMPLE = SyntheticSpec()
#: Benchmark data set: 200 x 3 x 4 x 10 = 24,000 instances.
BENCH = SyntheticSpec(200, 3, 4, 10)


def uid(*parts: object) -> str:
    """Return a deterministic DICOM UID derived from ``parts``.

    The UID is :data:`UID_ROOT` followed by a decimal number computed from a
    SHA-256 hash of the ``repr`` of the parts.  It only contains digits and
    dots, is at most 64 characters long and has no component with a leading
    zero.
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    # 96 bits -> at most 29 decimal digits; the root is 28 characters.
    number = int.from_bytes(digest[:12], "big")
    return f"{UID_ROOT}{number}"


_IMPLEMENTATION_CLASS_UID = uid("kkorthanc", "synthetic", "implementation")


def _rng(*parts: object) -> random.Random:
    """Return a random generator seeded from ``parts`` (stable across runs)."""
    return random.Random("/".join(str(p) for p in parts))


def _date(rng: random.Random, first_year: int, last_year: int) -> str:
    year = rng.randint(first_year, last_year)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    return f"{year:04d}{month:02d}{day:02d}"


def _time(rng: random.Random, fraction: bool) -> str:
    text = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
    if fraction:
        text += f".{rng.randint(0, 999999):06d}"
    return text


def _add_seconds(time_text: str, seconds: int) -> str:
    """Add ``seconds`` to a ``HHMMSS[.ffffff]`` value (clamped to the day)."""
    base = int(time_text[0:2]) * 3600 + int(time_text[2:4]) * 60 + int(time_text[4:6])
    total = min(base + seconds, 86399)
    return f"{total // 3600:02d}{total // 60 % 60:02d}{total % 60:02d}"


def _patient_name(index: int) -> str:
    name = PATIENT_NAMES[index % len(PATIENT_NAMES)]
    if not name.isascii():
        return name
    components = name.split("^")
    components[1] = f"{components[1]}{index}"
    return "^".join(components)


def _pixel_bytes(spec: SyntheticSpec, salt: int) -> bytes:
    """Deterministic 16-bit little-endian pixel data (values < 4096)."""
    rows, columns = spec.rows, spec.columns
    cy, cx = rows / 2.0, columns / 2.0
    radius2 = max(1.0, (min(rows, columns) / 2.5) ** 2)
    offset = salt * 7
    values = array.array("H")
    for r in range(rows):
        dy2 = (r - cy) ** 2
        for c in range(columns):
            base = 1000 if dy2 + (c - cx) ** 2 <= radius2 else 100
            values.append(base + (r * 31 + c * 17 + offset) % 512)
    if sys.byteorder == "big":  # pragma: no cover - platform dependent
        values.byteswap()
    return values.tobytes()


_Values = tuple[tuple[str, object], ...]


class _Record(NamedTuple):
    """One instance: its file name and the tags of each hierarchy level.

    Records of the same patient/study/series share the identical (``is``)
    level tuples, which lets the encoder reuse already encoded elements.
    """

    name: str
    sop_class_uid: str
    sop_instance_uid: str
    patient: _Values
    study: _Values
    series: _Values
    instance: _Values


def _patient_values(spec: SyntheticSpec, p: int) -> _Values:
    rng = _rng("patient", spec.seed, p)
    values: list[tuple[str, object]] = [
        ("SpecificCharacterSet", CHARACTER_SET),
        ("PatientName", _patient_name(p)),
        ("PatientID", f"KK-{spec.seed}-{p:04d}"),
    ]
    birth_date = _date(rng, 1930, 2015)
    if p % 5 != 4:
        values.append(("PatientBirthDate", birth_date))
    sex = ("M", "F", "O")[rng.randrange(3)]
    if p % 4 != 3:
        values.append(("PatientSex", sex))
    if p % 3 == 1:
        other_ids = [f"ALT-{spec.seed}-{p:04d}", f"MRN{rng.randint(100000, 999999)}"]
        values.append(("OtherPatientIDs", other_ids))
    elif p % 3 == 2:
        values.append(("OtherPatientIDs", f"OLD-{spec.seed}-{p:04d}"))
    return tuple(values)


def _study_values(spec: SyntheticSpec, p: int, s: int) -> tuple[_Values, str, str]:
    """Return the study-level tags, the study date and the study time."""
    rng = _rng("study", spec.seed, p, s)
    g = p * spec.studies_per_patient + s
    study_date = _date(rng, 2005, 2024)
    study_time = _time(rng, fraction=g % 3 == 1)
    values: list[tuple[str, object]] = [
        ("StudyInstanceUID", uid("study", spec.seed, p, s)),
        ("StudyDate", study_date),
        ("StudyTime", study_time),
        ("StudyID", f"{s + 1}"),
        ("StudyDescription", rng.choice(_STUDY_DESCRIPTIONS)),
        ("InstitutionName", _INSTITUTIONS[g % len(_INSTITUTIONS)]),
    ]
    if g % 5 == 4:
        values.append(("AccessionNumber", ""))
    elif g % 5 != 2:  # missing when g % 5 == 2
        values.append(("AccessionNumber", f"A{spec.seed % 1000:03d}{p:05d}{s:03d}"))
    if g % 6 != 5:
        physician = _REFERRING_PHYSICIANS[g % len(_REFERRING_PHYSICIANS)]
        values.append(("ReferringPhysicianName", physician))
    return tuple(values), study_date, study_time


def _series_values(
    spec: SyntheticSpec,
    p: int,
    s: int,
    se: int,
    study_date: str,
    study_time: str,
) -> tuple[_Values, str, str]:
    """Return the series-level tags, the SOP class UID and the series time.

    Besides the series module this also holds the tags that are identical for
    all instances of the series (image pixel description, dates, ...).
    """
    rng = _rng("series", spec.seed, p, s, se)
    g = (p * spec.studies_per_patient + s) * spec.series_per_study + se
    modality = MODALITIES[g % len(MODALITIES)]
    sop_class_uid = SOP_CLASS_BY_MODALITY[modality]
    series_uid = uid("series", spec.seed, p, s, se)
    series_time = _add_seconds(study_time, 60 * (se + 1) + rng.randint(0, 59))
    projection = modality in ("US", "CR")
    values: list[tuple[str, object]] = [
        ("SeriesInstanceUID", series_uid),
        ("Modality", modality),
        ("SeriesNumber", se + 1),
        ("SeriesDate", study_date),
        ("SeriesTime", series_time),
        ("StationName", _STATIONS[MODALITIES.index(modality)]),
        ("Manufacturer", rng.choice(_MANUFACTURERS)),
        ("ImageOrientationPatient", ["1", "0", "0", "0", "1", "0"]),
        ("SOPClassUID", sop_class_uid),
        ("InstanceCreationDate", study_date),
        ("ContentDate", study_date),
        ("FrameOfReferenceUID", uid("frame", spec.seed, p, s, se)),
        ("ImageType", ["ORIGINAL", "PRIMARY"] if projection else ["ORIGINAL", "PRIMARY", "AXIAL"]),
        ("PixelSpacing", ["0.5", "0.5"]),
        ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME2"),
        ("Rows", spec.rows),
        ("Columns", spec.columns),
        ("BitsAllocated", 16),
        ("BitsStored", 12),
        ("HighBit", 11),
        ("PixelRepresentation", 0),
        ("WindowCenter", "600"),
        ("WindowWidth", "1200"),
    ]
    description = rng.choice(_SERIES_DESCRIPTIONS[modality])
    if g % 7 != 6:
        values.append(("SeriesDescription", description))
    if g % 3 != 2:
        values.append(("BodyPartExamined", _BODY_PARTS[(p + s + se) % len(_BODY_PARTS)]))
    if g % 4 != 3:
        values.append(("ProtocolName", f"{modality} protocol {se % 3 + 1}"))
    if g % 4 == 0:
        values.append(("OperatorsName", [_OPERATORS[0], _OPERATORS[1]]))
    elif g % 4 != 2:
        values.append(("OperatorsName", _OPERATORS[(g // 4 + 2) % len(_OPERATORS)]))
    if not projection:
        values.append(("SliceThickness", "2.5"))
    if modality in ("CT", "PT"):
        values.append(("RescaleIntercept", "-1024" if modality == "CT" else "0"))
        values.append(("RescaleSlope", "1"))
    return tuple(values), sop_class_uid, series_time


def _instance_values(
    spec: SyntheticSpec,
    p: int,
    s: int,
    se: int,
    i: int,
    g: int,
    series_time: str,
    projection: bool,
) -> _Values:
    z = f"{-50.0 + 2.5 * i:.1f}"
    values: list[tuple[str, object]] = [
        ("SOPInstanceUID", uid("instance", spec.seed, p, s, se, i)),
        ("InstanceNumber", i + 1),
        ("InstanceCreationTime", _add_seconds(series_time, i + 1)),
        ("ContentTime", _add_seconds(series_time, i)),
        (
            "ImagePositionPatient",
            [f"{-0.25 * spec.columns:.2f}", f"{-0.25 * spec.rows:.2f}", z],
        ),
        ("PixelData", _pixel_bytes(spec, g)),
    ]
    if g % 5 != 3:
        values.append(("AcquisitionNumber", 1 + i // 4))
    if not projection:
        values.append(("SliceLocation", z))
    return tuple(values)


def _walk(spec: SyntheticSpec) -> Iterator[_Record]:
    """Yield one record per instance, in patient/study/series/instance order."""
    g = 0
    for p in range(spec.patients):
        patient = _patient_values(spec, p)
        for s in range(spec.studies_per_patient):
            study, study_date, study_time = _study_values(spec, p, s)
            for se in range(spec.series_per_study):
                series, sop_class_uid, series_time = _series_values(
                    spec, p, s, se, study_date, study_time
                )
                projection = sop_class_uid in (
                    SOP_CLASS_BY_MODALITY["US"],
                    SOP_CLASS_BY_MODALITY["CR"],
                )
                for i in range(spec.instances_per_series):
                    instance = _instance_values(spec, p, s, se, i, g, series_time, projection)
                    yield _Record(
                        name=f"P{p:03d}/ST{s:02d}/SE{se:02d}/IM{i:03d}.dcm",
                        sop_class_uid=sop_class_uid,
                        sop_instance_uid=str(instance[0][1]),
                        patient=patient,
                        study=study,
                        series=series,
                        instance=instance,
                    )
                    g += 1


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME
    return meta


def _apply(ds: Dataset, values: Sequence[tuple[str, object]]) -> None:
    for keyword, value in values:
        setattr(ds, keyword, value)


def generate(spec: SyntheticSpec = SAMPLE) -> Iterator[Dataset]:
    """Yield the datasets described by ``spec`` in a stable order.

    The order is patient, study, series, instance (all ascending).  Every
    dataset carries its file meta information (Explicit VR Little Endian) so
    it can be written with :func:`dataset_to_bytes`.  Each yielded dataset is
    a new, independent object.
    """
    for record in _walk(spec):
        ds = Dataset()
        ds.file_meta = _file_meta(record.sop_class_uid, record.sop_instance_uid)
        _apply(ds, record.patient)
        _apply(ds, record.study)
        _apply(ds, record.series)
        _apply(ds, record.instance)
        yield ds


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as DICOM Part-10 bytes (preamble, file meta, dataset).

    If ``ds`` has no transfer syntax in its file meta, file meta information
    for Explicit VR Little Endian is added (``ds`` is modified in place).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    buffer = io.BytesIO()
    if _PYDICOM_3:
        dcmwrite(buffer, ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()


# --- direct Explicit VR Little Endian encoder -------------------------------
#
# Writing tens of thousands of files through pydicom's generic writer is slow
# (a few milliseconds per file).  The values produced by ``_walk`` only use a
# handful of VRs, so they are encoded here directly; shared levels are encoded
# once per series.  The test-suite checks that the result is byte-identical
# to ``dataset_to_bytes`` applied to the datasets from ``generate``.

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_VR_OVERRIDES = {"PixelData": "OW"}
_Piece = tuple[int, bytes]


@cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - programming error
        raise KeyError(keyword)
    vr = _VR_OVERRIDES.get(keyword) or dictionary_VR(tag)
    return tag, vr


def _encode_value(vr: str, value: object) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif vr == "US":
        items = value if isinstance(value, list) else [value]
        data = struct.pack(f"<{len(items)}H", *items)
    elif vr == "UL":
        items = value if isinstance(value, list) else [value]
        data = struct.pack(f"<{len(items)}I", *items)
    else:
        items = value if isinstance(value, list) else [value]
        text = "\\".join(str(item) for item in items)
        data = text.encode("utf-8" if vr in _TEXT_VRS else "ascii")
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB", "OW", "UN") else b" "
    return data


def _encode_element(keyword: str, value: object) -> _Piece:
    tag, vr = _tag_and_vr(keyword)
    data = _encode_value(vr, value)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        head += struct.pack("<HI", 0, len(data))
    else:
        head += struct.pack("<H", len(data))
    return tag, head + data


def _encode_values(values: _Values) -> list[_Piece]:
    return [_encode_element(keyword, value) for keyword, value in values]


def _join(pieces: list[_Piece]) -> bytes:
    pieces.sort(key=itemgetter(0))
    return b"".join(data for _, data in pieces)


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _encode_file_meta(sop_class_uid: str, sop_instance_uid: str) -> bytes:
    body = _join(
        _encode_values(
            (
                ("FileMetaInformationVersion", b"\x00\x01"),
                ("MediaStorageSOPClassUID", sop_class_uid),
                ("MediaStorageSOPInstanceUID", sop_instance_uid),
                ("TransferSyntaxUID", str(ExplicitVRLittleEndian)),
                ("ImplementationClassUID", _IMPLEMENTATION_CLASS_UID),
                ("ImplementationVersionName", _IMPLEMENTATION_VERSION_NAME),
            )
        )
    )
    _, group_length = _encode_element("FileMetaInformationGroupLength", len(body))
    return _PREAMBLE + group_length + body


def generate_bytes(spec: SyntheticSpec = SAMPLE) -> Iterator[tuple[str, bytes]]:
    """Yield ``(relative_path, part10_bytes)`` for every dataset of ``spec``.

    Relative paths look like ``"P000/ST00/SE00/IM000.dcm"`` (POSIX
    separators).  The bytes are identical to ``dataset_to_bytes(ds)`` for the
    corresponding dataset of :func:`generate`, but produced much faster.
    """
    series: _Values | None = None
    shared: list[_Piece] = []
    for record in _walk(spec):
        if record.series is not series:
            series = record.series
            shared = (
                _encode_values(record.patient)
                + _encode_values(record.study)
                + _encode_values(record.series)
            )
        pieces = shared + _encode_values(record.instance)
        data = _encode_file_meta(record.sop_class_uid, record.sop_instance_uid) + _join(pieces)
        yield record.name, data


def write_tree(spec: SyntheticSpec, folder: Path) -> list[Path]:
    """Write all files of ``spec`` below ``folder`` and return their paths."""
    folder = Path(folder)
    paths: list[Path] = []
    for name, data in generate_bytes(spec):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths
