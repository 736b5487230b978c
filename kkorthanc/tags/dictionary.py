"""What kkorthanc knows of DICOM tags, and the one rule that turns a tag name into a keyword.

Orthanc's default main DICOM tags per level (:data:`MAIN_DICOM_TAGS`), their value
representations (:data:`VR_OF`, :func:`vr_of`), multiplicities (:data:`MULTI_VALUED`) and
tag numbers (:data:`TAG_NUMBERS`); snake_case <-> keyword conversion and "did you mean"
suggestions; and :func:`tag_keyword`, the one spelling of a tag name the server takes.
"""

from __future__ import annotations

import difflib
import functools
import re

from ..errors import InvalidRequest

__all__ = [
    "MAIN_DICOM_TAGS",
    "MULTI_VALUED",
    "TAG_NUMBERS",
    "VR_OF",
    "keyword_to_snake",
    "snake_to_keyword",
    "suggest_keywords",
    "tag_keyword",
    "vr_of",
]

# ---------------------------------------------------------------------------
# Keywords
# ---------------------------------------------------------------------------

MAIN_DICOM_TAGS: dict[str, tuple[str, ...]] = {
    "Patient": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
    ),
    "Study": (
        "StudyDate",
        "StudyTime",
        "StudyID",
        "StudyDescription",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureDescription",
        "InstitutionName",
        "RequestingPhysician",
        "ReferringPhysicianName",
    ),
    "Series": (
        "SeriesDate",
        "SeriesTime",
        "Modality",
        "Manufacturer",
        "StationName",
        "SeriesDescription",
        "BodyPartExamined",
        "SequenceName",
        "ProtocolName",
        "SeriesNumber",
        "CardiacNumberOfImages",
        "ImagesInAcquisition",
        "NumberOfTemporalPositions",
        "NumberOfSlices",
        "NumberOfTimeSlices",
        "SeriesInstanceUID",
        "ImageOrientationPatient",
        "SeriesType",
        "OperatorsName",
        "PerformedProcedureStepDescription",
        "AcquisitionDeviceProcessingDescription",
        "ContrastBolusAgent",
    ),
    "Instance": (
        "InstanceCreationDate",
        "InstanceCreationTime",
        "AcquisitionNumber",
        "ImageIndex",
        "InstanceNumber",
        "NumberOfFrames",
        "TemporalPositionIdentifier",
        "SOPInstanceUID",
        "ImagePositionPatient",
        "ImageComments",
        "ImageOrientationPatient",
    ),
}
"""Orthanc's default main DICOM tags (as of 1.10) per resource level, by keyword."""

VR_OF: dict[str, str] = {
    # Patient
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "OtherPatientIDs": "LO",
    # Study
    "StudyDate": "DA",
    "StudyTime": "TM",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "AccessionNumber": "SH",
    "StudyInstanceUID": "UI",
    "RequestedProcedureDescription": "LO",
    "InstitutionName": "LO",
    "RequestingPhysician": "PN",
    "ReferringPhysicianName": "PN",
    # Series
    "SeriesDate": "DA",
    "SeriesTime": "TM",
    "Modality": "CS",
    "Manufacturer": "LO",
    "StationName": "SH",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "SequenceName": "SH",
    "ProtocolName": "LO",
    "SeriesNumber": "IS",
    "CardiacNumberOfImages": "IS",
    "ImagesInAcquisition": "IS",
    "NumberOfTemporalPositions": "IS",
    "NumberOfSlices": "US",
    "NumberOfTimeSlices": "US",
    "SeriesInstanceUID": "UI",
    "ImageOrientationPatient": "DS",
    "SeriesType": "CS",
    "OperatorsName": "PN",
    "PerformedProcedureStepDescription": "LO",
    "AcquisitionDeviceProcessingDescription": "LO",
    "ContrastBolusAgent": "LO",
    # Instance
    "InstanceCreationDate": "DA",
    "InstanceCreationTime": "TM",
    "AcquisitionNumber": "IS",
    "ImageIndex": "US",
    "InstanceNumber": "IS",
    "NumberOfFrames": "IS",
    "TemporalPositionIdentifier": "IS",
    "SOPInstanceUID": "UI",
    "ImagePositionPatient": "DS",
    "ImageComments": "LT",
}
"""Value representation of every keyword in :data:`MAIN_DICOM_TAGS`."""

MULTI_VALUED: frozenset[str] = frozenset(
    {
        "OtherPatientIDs",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SeriesType",
        "OperatorsName",
    }
)
"""Keywords of :data:`MAIN_DICOM_TAGS` whose value multiplicity allows several values."""

_SPECIAL_WORDS: dict[str, str] = {
    "id": "ID",
    "ids": "IDs",
    "uid": "UID",
    "uids": "UIDs",
    "sop": "SOP",
}

# A keyword splits into acronyms from the table (when followed by a word boundary),
# runs of capitals before a capitalised word, capitalised or lower-case words, digit runs.
_WORD_RE = re.compile(
    r"(?:UIDs|UID|IDs|ID|SOP)(?=[A-Z0-9_]|$)"
    r"|[A-Z]+(?=[A-Z][a-z]|[0-9_]|$)"
    r"|[A-Z]?[a-z]+"
    r"|[0-9]+"
)


@functools.lru_cache(maxsize=1024)
def snake_to_keyword(name: str) -> str:
    """Convert a snake_case name to a DICOM keyword: ``study_instance_uid`` -> ``StudyInstanceUID``.

    ``id``, ``ids``, ``uid``, ``uids`` and ``sop`` become acronyms; other words get their first
    letter capitalised.  A name that is already a keyword comes back unchanged.
    """
    words = []
    for word in name.split("_"):
        if not word:
            continue
        special = _SPECIAL_WORDS.get(word.lower())
        words.append(special if special is not None else word[0].upper() + word[1:])
    return "".join(words)


@functools.lru_cache(maxsize=1024)
def keyword_to_snake(keyword: str) -> str:
    """Convert a DICOM keyword to snake_case: ``SOPInstanceUID`` -> ``sop_instance_uid``.

    The inverse of :func:`snake_to_keyword` for every keyword in :data:`MAIN_DICOM_TAGS`.
    A name that is already snake_case comes back unchanged.
    """
    return "_".join(m.lower() for m in _WORD_RE.findall(keyword))


def _suggestion_candidates() -> dict[str, str]:
    """Map lower-cased keyword and snake_case spellings to their keyword."""
    out: dict[str, str] = {}
    for keyword in VR_OF:
        out[keyword.lower()] = keyword
        out[keyword_to_snake(keyword)] = keyword
    return out


_CANDIDATES = _suggestion_candidates()


def suggest_keywords(name: str, n: int = 3) -> list[str]:
    """Known keywords closest to *name*, for "unknown keyword, did you mean ..." messages.

    Matching is case-insensitive over both DICOM keywords and their snake_case forms.
    Suggestions are spelled like *name*: snake_case when *name* is all lower case,
    DICOM keywords otherwise.  Each tag appears at most once, best match first.
    """
    if n <= 0 or not name:
        return []
    matches = difflib.get_close_matches(name.lower(), list(_CANDIDATES), n=3 * n, cutoff=0.6)
    snake = name == name.lower()
    out: list[str] = []
    for match in matches:
        keyword = _CANDIDATES[match]
        shown = keyword_to_snake(keyword) if snake else keyword
        if shown not in out:
            out.append(shown)
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------------------
# Tag names and numbers
# ---------------------------------------------------------------------------

#: Group and element of every main DICOM tag, as Orthanc writes them (``gggg,eeee``).
#: Queries are sent with these rather than keywords: the DICOM dictionary of 1.10.1 no longer
#: knows the retired keyword ``OtherPatientIDs`` and answers 500 for it.
TAG_NUMBERS: dict[str, str] = {
    "PatientName": "0010,0010",
    "PatientID": "0010,0020",
    "PatientBirthDate": "0010,0030",
    "PatientSex": "0010,0040",
    "OtherPatientIDs": "0010,1000",
    "StudyDate": "0008,0020",
    "StudyTime": "0008,0030",
    "StudyID": "0020,0010",
    "StudyDescription": "0008,1030",
    "AccessionNumber": "0008,0050",
    "StudyInstanceUID": "0020,000d",
    "RequestedProcedureDescription": "0032,1060",
    "InstitutionName": "0008,0080",
    "RequestingPhysician": "0032,1032",
    "ReferringPhysicianName": "0008,0090",
    "SeriesDate": "0008,0021",
    "SeriesTime": "0008,0031",
    "Modality": "0008,0060",
    "Manufacturer": "0008,0070",
    "StationName": "0008,1010",
    "SeriesDescription": "0008,103e",
    "BodyPartExamined": "0018,0015",
    "SequenceName": "0018,0024",
    "ProtocolName": "0018,1030",
    "SeriesNumber": "0020,0011",
    "CardiacNumberOfImages": "0018,1090",
    "ImagesInAcquisition": "0020,1002",
    "NumberOfTemporalPositions": "0020,0105",
    "NumberOfSlices": "0054,0081",
    "NumberOfTimeSlices": "0054,0101",
    "SeriesInstanceUID": "0020,000e",
    "ImageOrientationPatient": "0020,0037",
    "SeriesType": "0054,1000",
    "OperatorsName": "0008,1070",
    "PerformedProcedureStepDescription": "0040,0254",
    "AcquisitionDeviceProcessingDescription": "0018,1400",
    "ContrastBolusAgent": "0018,0010",
    "InstanceCreationDate": "0008,0012",
    "InstanceCreationTime": "0008,0013",
    "AcquisitionNumber": "0020,0012",
    "ImageIndex": "0054,1330",
    "InstanceNumber": "0020,0013",
    "NumberOfFrames": "0028,0008",
    "TemporalPositionIdentifier": "0020,0100",
    "SOPInstanceUID": "0008,0018",
    "ImagePositionPatient": "0020,0032",
    "ImageComments": "0020,4000",
}


_KEYWORD_OF_NUMBER = {number: keyword for keyword, number in TAG_NUMBERS.items()}

#: Value representations of the keywords kkorthanc sends besides the main DICOM tags (the
#: keys a C-FIND asks back).
_OTHER_VRS: dict[str, str] = {
    "SpecificCharacterSet": "CS",
    "ModalitiesInStudy": "CS",
    "SOPClassUID": "UI",
    "SOPClassesInStudy": "UI",
    "NumberOfPatientRelatedStudies": "IS",
    "NumberOfPatientRelatedSeries": "IS",
    "NumberOfPatientRelatedInstances": "IS",
    "NumberOfStudyRelatedSeries": "IS",
    "NumberOfStudyRelatedInstances": "IS",
    "NumberOfSeriesRelatedInstances": "IS",
}

_TAG_NUMBER_RE = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PATH_STEP_RE = re.compile(r"([^\[\]]+)(\[(?:[0-9]+|\*)\])?")


def vr_of(keyword: str) -> str | None:
    """The value representation of ``keyword`` when kkorthanc knows it, else ``None``.

    Known are the main DICOM tags (:data:`VR_OF`) and the keys a C-FIND asks back.
    """
    return VR_OF.get(keyword) or _OTHER_VRS.get(keyword)


def _one_name(text: str) -> str | None:
    number = _TAG_NUMBER_RE.fullmatch(text)
    if number is not None:
        group, element = number.groups()
        return _KEYWORD_OF_NUMBER.get(f"{group},{element}".lower(), f"{group},{element}")
    if _NAME_RE.fullmatch(text):
        return snake_to_keyword(text)
    return None


def _path_step(step: str) -> str | None:
    match = _PATH_STEP_RE.fullmatch(step)
    if match is None:
        return None
    name = _one_name(match[1])
    return None if name is None else name + (match[2] or "")


def tag_keyword(
    name: object,
    *,
    where: str = "",
    paths: bool = False,
    error: type[InvalidRequest] = InvalidRequest,
) -> str:
    """The spelling of a tag name that the server takes: the one keyword rule of kkorthanc.

    A DICOM keyword comes back as it is (``PatientName``), a snake_case name as its keyword
    (``study_instance_uid`` gives ``StudyInstanceUID``, see :func:`snake_to_keyword`), and a
    tag number (``gggg,eeee`` or ``ggggeeee``, in parentheses or not) as the keyword of a
    main DICOM tag (``0010,0010`` gives ``PatientName``) or, for any other tag, as
    ``gggg,eeee``. Spaces around the name are ignored. With ``paths``, a path into sequences
    is taken too, each step resolved the same way
    (``referenced_image_sequence[0].referenced_sop_instance_uid``).

    Whether the tag exists is left to the caller: a query takes main DICOM tags only, the
    server looks other keywords up in its own dictionary.

    Raises:
        InvalidRequest: (or ``error``) ``name`` is not a string of that form; the message
            starts with ``where``, which names the argument.
    """
    if isinstance(name, str):
        text = name.strip()
        if paths and ("." in text or "[" in text):
            steps = [_path_step(step) for step in text.split(".")]
            if all(step is not None for step in steps):
                return ".".join(step for step in steps if step is not None)
        else:
            found = _one_name(text)
            if found is not None:
                return found
    raise error(
        f"{where}{name!r} is not a tag name: give a DICOM keyword (PatientName), a snake_case "
        "name (patient_name) or a tag number (0010,0010)"
    )
