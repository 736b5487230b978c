"""The matching engine: one set of rules on the server (``client.find``) and on a forest.

The examples of ``docs/matching.md`` run against the server and the local engine; a
differential test has hypothesis generate queries from the data's own values and asserts that
both engines return the same resources (live), and a fixed sample of those queries replays.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kkorthanc import (
    AmbiguousIdentifier,
    BadRequest,
    Instance,
    Orthanc,
    PaddedIdentifier,
    Patient,
    Resource,
    Series,
    Study,
    UnsupportedByServer,
    synthetic,
)
from kkorthanc.models import level_class
from kkorthanc.query import (
    DEFAULT_DIALECT,
    RANGE_VRS,
    TAG_NUMBERS,
    WILDCARD_VRS,
    Dialect,
    FindRequest,
    QueryError,
    UnknownKeyword,
    compile_query,
    local_find,
    normalize_identifier,
    queryable_tags,
    server_find,
    upper_with_accents,
)
from kkorthanc.sandbox import Sandbox
from kkorthanc.tags import MAIN_DICOM_TAGS, VR_OF, parse_da, parse_tm

from .conftest import PORT_MAP, Servers

# ---------------------------------------------------------------------------------------------
# A forest for the local engine
# ---------------------------------------------------------------------------------------------


class ListForest:
    """The four level listings, linked to their parents: what ``local_find`` reads.

    Four requests (one page per level); used where the test must control the exact requests
    (replay) and as a fallback where ``build_patient_forest`` is not available.
    """

    def __init__(self, client: Orthanc, dialect: Dialect = DEFAULT_DIALECT) -> None:
        self.dialect = dialect  # which server the answers follow where servers differ
        self.patients = client.patients()
        self.studies = client.studies()
        self.series = client.series()
        self.instances = client.instances()
        link(self.studies, self.patients, lambda s: s.parent_patient_id)
        link(self.series, self.studies, lambda s: s.parent_study_id)
        link(self.instances, self.series, lambda s: s.parent_series_id)

    def find(self, level: str, query: dict[str, Any] | None = None, **kw: Any) -> list[Any]:
        return local_find(self, level, query, **kw)


class IndexedListForest(ListForest):
    """A list forest with ``lookup``, the UID index that ``local_find`` uses when offered."""

    def __init__(self, client: Orthanc, dialect: Dialect = DEFAULT_DIALECT) -> None:
        super().__init__(client, dialect)
        self.index: dict[str, list[Resource]] = {}
        levels = (self.patients, self.studies, self.series, self.instances)
        for level, keyword in zip(levels, ("PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                           "SOPInstanceUID"), strict=True):  # fmt: skip
            for resource in level:
                self.index.setdefault(resource.id, []).append(resource)
                value = resource.main_dicom_tags.get(keyword, "").strip()
                if value:
                    self.index.setdefault(value, []).append(resource)
        self.lookups = 0

    def lookup(self, key: str) -> list[Resource]:
        self.lookups += 1
        return list(self.index.get(key.strip(), []))


def link(children: Sequence[Resource], parents: Sequence[Resource], key: Callable[[Any], Any]):
    by_id = {parent.id: parent for parent in parents}
    for child in children:
        child._parent = by_id[key(child)]


def tag_of(resource: Resource, keyword: str) -> str | None:
    """A main tag of the resource or, through the parent links, of its parents."""
    current: Resource | None = resource
    while current is not None:
        if keyword in current.main_dicom_tags:
            return current.main_dicom_tags[keyword]
        current = current._parent
    return None


def ids(resources: Sequence[Resource]) -> list[str]:
    return [r.id for r in resources]


# ---------------------------------------------------------------------------------------------
# Compilation: no server
# ---------------------------------------------------------------------------------------------


def texts(level: str, **tags: Any) -> dict[str, str]:
    """The ``Query`` object a query compiles to, keyed back by keyword."""
    numbers = {number: keyword for keyword, number in TAG_NUMBERS.items()}
    numbers["0008,0061"] = "ModalitiesInStudy"
    return {numbers[k]: v for k, v in compile_query(level, **tags).request_query().items()}


def test_python_values_become_dicom_query_strings() -> None:
    assert texts("study", study_date=dt.date(2013, 6, 11)) == {"StudyDate": "20130611"}
    assert texts("study", StudyDate=(dt.date(2013, 1, 1), None)) == {"StudyDate": "20130101-"}
    assert texts("study", StudyDate=(None, "20131231")) == {"StudyDate": "-20131231"}
    # a time names its second (or, with microseconds, its instant): Orthanc compares TM text,
    # so "141645" alone would miss a stored "141645.000000"
    assert texts("study", study_time=dt.time(14, 16, 45)) == {
        "StudyTime": "141645-141645.999999"
    }
    assert texts("study", study_time=dt.time(14, 16, 45, 500000)) == {
        "StudyTime": "141645.5-141645.500000"
    }
    assert texts("study", study_time=(dt.time(8), dt.time(12, 30))) == {
        "StudyTime": "08-123000.999999"
    }
    assert texts("study", study_time=("0800", None)) == {"StudyTime": "0800-"}
    assert texts("series", modality=["CT", "MR"]) == {"Modality": "CT\\MR"}
    assert texts("series", modality={"MR", "CT"}) == {"Modality": "CT\\MR"}
    assert texts("series", modality=["CT"]) == {"Modality": "CT"}
    # list items are literal: a lone item with a wildcard stays a list
    assert texts("series", modality=["C*"]) == {"Modality": "C*\\C*"}
    assert texts("series", SeriesNumber=2) == {"SeriesNumber": "2"}
    assert texts("instance", sop_instance_uid="1.2.3") == {"SOPInstanceUID": "1.2.3"}
    assert texts("patient", other_patient_ids="A*") == {"OtherPatientIDs": "A*"}
    assert texts("patient", **{"0010,0010": "DOE*"}) == {"PatientName": "DOE*"}
    assert texts("series", PatientName="DOE*") == {"PatientName": "DOE*"}
    assert texts("study", ModalitiesInStudy=["CT", "MR"]) == {"ModalitiesInStudy": "CT\\MR"}
    assert texts("study", modalities_in_study="CT") == {"ModalitiesInStudy": "CT"}
    assert texts("study", **{"0008,0061": "US"}) == {"ModalitiesInStudy": "US"}
    # universal values are dropped: nothing left to filter
    assert compile_query("study", AccessionNumber="", StudyDate="-").is_universal
    assert not compile_query("study", AccessionNumber="*").is_universal


def test_query_is_sent_by_tag_number_in_a_stable_order() -> None:
    compiled = compile_query(
        "instance", {"SOPInstanceUID": "1.2", "PatientName": "A*"}, study_date="20200101"
    )
    assert list(compiled.request_query()) == ["0008,0018", "0008,0020", "0010,0010"]
    assert [c.level for c in compiled.constraints] == ["Patient", "Study", "Instance"]


def test_tag_numbers_agree_with_the_dicom_dictionary() -> None:
    from pydicom.datadict import tag_for_keyword

    assert set(TAG_NUMBERS) == set(VR_OF)
    for keyword, number in TAG_NUMBERS.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        assert number == f"{tag >> 16:04x},{tag & 0xFFFF:04x}", keyword


@pytest.mark.parametrize(
    ("level", "tags", "message"),
    [
        ("study", {"StudyDate": "2013*"}, "wildcards are not allowed on value representation DA"),
        ("series", {"SeriesNumber": "1?"}, "wildcards are not allowed on value representation IS"),
        ("study", {"StudyInstanceUID": "1.2.*"}, "value representation UI"),
        ("study", {"StudyDate": "2013*-2014"}, "wildcards are not allowed in a range"),
        ("study", {"Modality": "CT"}, "Modality is a Series tag: a Study query filters on"),
        ("patient", {"StudyDate": "20200101"}, "StudyDate is a Study tag"),
        ("patient", {"PatientID": ("A", "B")}, "ranges exist only for dates and times"),
        ("study", {"StudyDate": (dt.date(2020, 1, 1),)}, "needs two items, not 1"),
        ("study", {"StudyDate": dt.datetime(2020, 1, 1, 10)}, "not a datetime"),
        ("study", {"StudyTime": dt.date(2020, 1, 1)}, "value representation TM, not a date"),
        ("series", {"SeriesNumber": True}, "a bool is not a DICOM value"),
        ("series", {"SeriesNumber": 1.5}, "cannot query with a float"),
        ("series", {"Modality": []}, "an empty list of alternatives matches nothing"),
        ("series", {"Modality": ["CT\\MR"]}, "contains a backslash"),
        ("study", {"StudyDate": ["20200101-20200102"]}, "contains '-'"),
        ("patient", {"PatientName": "A", "patient_name": "B"}, "PatientName is given twice"),
        # malformed dates and times would be compared as text and silently match nothing
        ("study", {"StudyDate": "2010-01-01"}, "'2010-01-01' is not a DICOM date"),
        ("study", {"StudyDate": "2004"}, "'2004' is not of the form YYYYMMDD"),
        ("study", {"StudyDate": "garbage"}, "StudyDate: 'garbage' is not a DICOM date"),
        ("study", {"StudyDate": "20100101-2011"}, "'2011' is not of the form YYYYMMDD"),
        ("study", {"StudyDate": ["20100101", "2011"]}, "'2011' is not of the form YYYYMMDD"),
        ("patient", {"PatientBirthDate": "1959-09-12"}, "is not a DICOM date"),
        ("study", {"StudyTime": "14:16:45"}, "'14:16:45' is not a DICOM time"),
        ("study", {"StudyTime": "1416451"}, "'1416451' is not of the form HHMMSS"),
        ("study", {"StudyTime": [dt.time(1), dt.time(2)]}, "a list of times would match"),
        # None as a value would match everything: most likely a variable left unset
        ("patient", {"PatientName": None}, "PatientName=None would match every resource"),
        # ModalitiesInStudy: studies only, modalities only
        ("series", {"ModalitiesInStudy": "CT"}, "computed for study queries only"),
        ("study", {"ModalitiesInStudy": "C*"}, "ModalitiesInStudy: no wildcards"),
        ("study", {"ModalitiesInStudy": "CT\\"}, "an empty item"),
        ("study", {"ModalitiesInStudy": ("CT", "MR")}, "ranges exist only for dates"),
    ],
)
def test_refusals_name_what_is_wrong(level: str, tags: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("?", r"\?").replace("*", r"\*")):
        compile_query(level, tags)


def test_unknown_keyword_suggests_close_matches() -> None:
    with pytest.raises(UnknownKeyword) as caught:
        compile_query("patient", PatientNmae="DOE*")
    assert caught.value.suggestions[0] == "PatientName"
    assert "did you mean PatientName" in str(caught.value)
    with pytest.raises(UnknownKeyword) as caught:
        compile_query("study", study_descripton="Chest*")
    assert caught.value.suggestions[0] == "study_description"
    # a real DICOM keyword that is not a main tag: Orthanc would open every file for it
    with pytest.raises(UnknownKeyword, match="main DICOM tag"):
        compile_query("instance", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(ValueError, match="unknown level"):
        compile_query("studies-and-series", PatientName="x")


def test_queryable_tags_are_the_level_and_its_parents() -> None:
    assert set(queryable_tags("patient")) == set(MAIN_DICOM_TAGS["Patient"])
    instance_tags = queryable_tags("INSTANCE")
    assert instance_tags["PatientName"] == "Patient"
    assert instance_tags["StudyDate"] == "Study"
    assert instance_tags["ImageOrientationPatient"] == "Instance"
    assert queryable_tags("series")["ImageOrientationPatient"] == "Series"


def test_normalizations_match_orthanc() -> None:
    assert normalize_identifier(" Müller_J%x ") == "MLLER J X"
    assert normalize_identifier("王^小明") == "^"
    assert normalize_identifier("a\tb") == "AB"
    assert upper_with_accents("Müller^Jürgen") == "MÜLLER^JÜRGEN"
    assert upper_with_accents("straße") == "STRAßE"  # no 'SS': one character each
    assert upper_with_accents("王^小明") == "王^小明"


def test_local_find_applies_labels_and_refuses_requested_tags() -> None:
    def patient(pid: str, labels: list[str]) -> Patient:
        return Patient.from_orthanc(
            {"ID": pid, "MainDicomTags": {"PatientID": pid}, "Labels": labels}
        )

    @dataclass
    class Tiny:
        patients: list[Patient]
        studies: tuple[Study, ...] = ()
        series: tuple[Series, ...] = ()
        instances: tuple[Instance, ...] = ()

    forest = Tiny([patient("p1", ["a", "b"]), patient("p2", ["b"]), patient("p3", [])])
    found = lambda **kw: ids(local_find(forest, "patient", **kw))  # noqa: E731
    assert found(labels=["b"]) == ["p1", "p2"]
    assert found(labels=["a", "b"]) == ["p1"]
    assert found(labels=["a", "b"], labels_constraint="any") == ["p1", "p2"]
    assert found(labels=["a"], labels_constraint="None") == ["p2", "p3"]
    assert found(PatientID="p*", labels=[]) == ["p1", "p2", "p3"]
    with pytest.raises(QueryError, match="labels_constraint must be"):
        found(labels=["a"], labels_constraint="Some")
    with pytest.raises(QueryError, match="requested_tags shape a server's answer"):
        local_find(forest, "patient", requested_tags=["PatientWeight"])


def test_a_find_request_holds_the_checked_arguments_and_the_fields_they_become() -> None:
    request = FindRequest.of(
        Study,
        {"patient_name": "DOE*"},
        limit=5,
        labels=["b", "a", "b"],
        labels_constraint="any",
        requested_tags=["study_description"],
        order_by="StudyDate",
        page_size=10,
        StudyDate="20240101",
    )
    assert (request.level, request.limit, request.page_size) == ("Study", 5, 10)
    assert request.labels == ("a", "b") and request.labels_constraint == "Any"
    assert request.requested_tags == ("StudyDescription",)
    # each field is gated by the feature of its name, required in the order of the fields
    assert request.features == ("Labels", "LabelsConstraint", "RequestedTags", "OrderBy")
    body = request.body(Expand=True)
    assert body == {
        "Level": "Study",
        "Query": {"0008,0020": "20240101", "0010,0010": "DOE*"},
        "Expand": True,
        "CaseSensitive": False,
        "Labels": ["a", "b"],
        "LabelsConstraint": "Any",
        "RequestedTags": ["StudyDescription"],
        "OrderBy": [{"Type": "DicomTag", "Key": "StudyDate", "Direction": "ASC"}],
    }
    assert list(body)[:4] == ["Level", "Query", "Expand", "CaseSensitive"]  # the order sent
    plain = FindRequest.of("series")
    assert plain.fields == {} and plain.features == () and plain.labels is None
    assert FindRequest.of("series", labels=[]).fields == {"Labels": []}  # given, though empty
    # a count takes the options a count has; any other name is a tag, refused as one
    assert FindRequest.for_count("study", labels=["a"]).body() == {
        "Level": "Study",
        "Query": {},
        "CaseSensitive": False,
        "Labels": ["a"],
    }
    for option in ("limit", "page_size", "requested_tags", "order_by"):
        with pytest.raises(UnknownKeyword):
            FindRequest.for_count("study", **{option: ["StudyDate"]})
    with pytest.raises(UnknownKeyword):
        FindRequest.of("study", response_content=[])  # find_json's own argument
    with pytest.raises(QueryError, match="Orthanc refuses CaseSensitive"):
        FindRequest.for_count("study", NoSuchTag="x", case_sensitive=True)  # before the query
    with pytest.raises(QueryError, match="requested_tags: 42 is not a tag name"):
        FindRequest.of("study", requested_tags=[42])


# ---------------------------------------------------------------------------------------------
# The documented rules, on the sample data (docs/matching.md)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    level: str
    query: dict[str, Any]
    show: str
    expected: tuple[str, ...]
    count: int | None = None
    case_sensitive: bool = False
    postgresql: tuple[str, ...] | None = None  # where a PostgreSQL index answers otherwise


EXAMPLES: list[Example] = [
    # exact values, case-insensitive unless asked otherwise
    Example("patient", {"PatientName": "doe^john3"}, "PatientName", ("DOE^JOHN3",)),
    Example("patient", {"PatientName": "doe^john3"}, "PatientName", (), case_sensitive=True),
    Example("patient", {"patient_name": "王^小明"}, "PatientName", ("王^小明",)),
    # wildcards
    Example("patient", {"PatientName": "*ller*"}, "PatientName", ("Müller^Jürgen",)),
    Example(
        "patient",
        {"PatientID": "KK-0-000?"},
        "PatientID",
        ("KK-0-0000", "KK-0-0001", "KK-0-0002", "KK-0-0003"),
    ),
    Example("patient", {"PatientName": "M?ller*"}, "PatientName", ()),
    Example("patient", {"PatientName": "M??ller*"}, "PatientName", ()),
    Example("series", {"StationName": "us_room?"}, "StationName", ("US_ROOM2",)),
    # non-ASCII letters
    Example("patient", {"PatientName": "MÜLLER^JÜRGEN"}, "PatientName", ("Müller^Jürgen",)),
    Example("patient", {"PatientName": "muller^jurgen"}, "PatientName", ()),
    Example(
        "study",
        {"InstitutionName": "KLINIKUM SÜD"},
        "InstitutionName",
        (),
        postgresql=("Klinikum Süd",),  # its lower() folds Ü
    ),
    Example("study", {"InstitutionName": "KLINIKUM Süd"}, "InstitutionName", ("Klinikum Süd",)),
    Example("patient", {"PatientName": "??*"}, "PatientName", ("DOE^JOHN3", "Müller^Jürgen")),
    Example(
        "study",
        {"ReferringPhysicianName": "??*"},
        "ReferringPhysicianName",
        ("HOUSE^GREGORY", "Schmidt^Klaus", "Weiß^Björn^Dr.", "佐藤^花子", "李^雷"),
    ),
    # empty, universal and missing
    Example("study", {"AccessionNumber": ""}, "StudyID", ("1", "2"), count=8),
    Example(
        "study",
        {"AccessionNumber": "*"},
        "AccessionNumber",
        ("", "A00000000000", "A00000000001", "A00000001001", "A00000002001", "A00000003000"),
        count=6,
    ),
    Example(
        "study",
        {"AccessionNumber": "?*"},
        "AccessionNumber",
        ("A00000000000", "A00000000001", "A00000001001", "A00000002001", "A00000003000"),
        count=5,
    ),
    Example("patient", {"PatientSex": "*"}, "PatientSex", ("F", "O"), count=3),
    # ranges
    Example("study", {"StudyDate": "20130101-20131231"}, "StudyDate", ("20130611", "20130726")),
    Example("study", {"StudyDate": "-20100101"}, "StudyDate", ("20070403", "20071126")),
    Example("study", {"StudyDate": "20230101-"}, "StudyDate", ("20230106", "20231109", "20240706")),
    Example(
        "study",
        {"study_date": (dt.date(2013, 1, 1), dt.date(2013, 12, 31))},
        "StudyDate",
        ("20130611", "20130726"),
    ),
    Example("study", {"StudyTime": "132858-132859"}, "StudyTime", ("132858.333296",)),
    Example("study", {"StudyTime": dt.time(13, 28, 58)}, "StudyTime", ("132858.333296",)),
    Example(
        "study",
        {"study_time": (dt.time(13), dt.time(13, 37, 17))},
        "StudyTime",
        ("132858.333296", "133717.614476"),
    ),
    Example(
        "patient", {"PatientBirthDate": dt.date(1959, 9, 12)}, "PatientName", ("Müller^Jürgen",)
    ),
    Example("patient", {"PatientID": "KK-0-0001-KK-0-0003"}, "PatientID", ()),
    # lists
    Example("series", {"Modality": "CT\\MR"}, "Modality", ("CT", "MR"), count=7),
    Example("series", {"modality": ["ct", "MR"]}, "Modality", ("CT", "MR")),
    Example("series", {"Modality": "C*\\MR"}, "Modality", ("MR",)),
    Example(
        "study", {"AccessionNumber": "A00000000000\\"}, "AccessionNumber", ("", "A00000000000")
    ),
    # multi-valued stored values
    Example("patient", {"OtherPatientIDs": "ALT-0-0001"}, "PatientName", ()),
    Example("patient", {"OtherPatientIDs": "ALT-0-0001*"}, "PatientName", ("Müller^Jürgen",)),
    Example(
        "series",
        {"OperatorsName": "*bauer*"},
        "OperatorsName",
        ("Bauer^Jörg", "TECH^ALICE\\Bauer^Jörg"),
    ),
    # upper-level tags on lower-level queries
    Example("study", {"PatientName": "doe*"}, "StudyDate", ("20070403", "20201002")),
    Example(
        "instance",
        {"StudyDate": "20130611", "Modality": "MR"},
        "InstanceNumber",
        ("1", "2", "3"),
        count=3,
    ),
    Example("series", {"SeriesNumber": 2, "PatientSex": "O"}, "Modality", ("CT", "MR", "PT", "US")),
    # computed from the series
    Example(
        "study",
        {"ModalitiesInStudy": "PT"},
        "StudyDate",
        ("20071126", "20201002", "20240706"),
    ),
    Example(
        "study",
        {"modalities_in_study": ["cr", "MR"], "StudyDate": "20100101-"},
        "StudyDate",
        ("20130611", "20130726", "20230106", "20231109", "20240706"),
    ),
]


def test_documented_examples_on_server_and_forest(client: Orthanc) -> None:
    """Every example of docs/matching.md, on the server and on a forest of its listings.

    The forest follows the server's dialect (its index), as a patient forest does: on a
    PostgreSQL index, ``lower()`` folds accented letters, and one example answers otherwise.
    """
    dialect = Dialect.of(client.system)
    forest = ListForest(client, dialect)
    levels = (forest.patients, forest.studies, forest.series, forest.instances)
    by_id = {resource.id: resource for level in levels for resource in level}
    expected_requests = 5  # /system and the four listings
    for example in EXAMPLES:
        args = (example.level, example.query)
        cs = example.case_sensitive
        remote = client.find(*args, case_sensitive=cs)
        local = local_find(forest, *args, case_sensitive=cs)
        assert ids(remote) == ids(local), example
        assert all(type(r) is level_class(example.level) for r in remote), example
        shown = {tag_of(by_id[r.id], example.show) or "" for r in remote}
        expected = example.expected
        if dialect.index_sql == "postgresql" and example.postgresql is not None:
            expected = example.postgresql
        assert sorted(shown) == sorted(expected), example
        if example.count is not None:
            assert len(remote) == example.count, example
        computed = bool(compile_query(*args).computed)
        # 1.10 answers ModalitiesInStudy from the series: their query, then bulk-content
        expected_requests += 2 if computed and dialect.api_version < 17 else 1
    assert client.request_count == expected_requests


def test_documented_examples_appear_in_the_docs() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs" / "matching.md"
    text = docs.read_text(encoding="utf-8")
    for example in EXAMPLES:
        for value in example.query.values():
            if isinstance(value, str):
                assert value.replace("\\", "\\\\") in text or value in text, value


def test_refusals_agree_with_the_server(client: Orthanc, count_requests: Callable[[], int]) -> None:
    # wildcards where the server refuses them: refused locally before any request...
    for level, tags in [("study", {"StudyDate": "2013*"}), ("series", {"SeriesNumber": "1*"})]:
        with pytest.raises(QueryError, match="wildcards are not allowed"):
            client.find(level, **tags)
    # malformed dates, and None, which would silently match nothing or everything
    for value in ("2010-01-01", "2004", "garbage"):
        with pytest.raises(QueryError, match=f"StudyDate: '{value}' is not a DICOM date"):
            client.find("study", StudyDate=value)
    with pytest.raises(QueryError, match="PatientName=None would match every resource"):
        client.find("study", PatientName=None)
    assert count_requests() == 0
    # ...and the server says the same when asked directly
    for level, number, value in [("Study", "0008,0020", "2013*"), ("Series", "0020,0011", "1*")]:
        with pytest.raises(BadRequest, match="Wildcards are not allowed"):
            client._transport.post_json(
                "/tools/find", {"Level": level, "Query": {number: value}, "Expand": True}
            )
    # a lower-level tag: the server answers nothing, which would read as "no such study"
    assert client._transport.post_json(
        "/tools/find", {"Level": "Study", "Query": {"0008,0060": "CT"}}
    ) == []
    with pytest.raises(QueryError, match="Modality is a Series tag"):
        client.find("study", Modality="CT")


# ---------------------------------------------------------------------------------------------
# Requests: paging, listings, gates
# ---------------------------------------------------------------------------------------------


def test_find_returns_typed_resources_in_one_request(
    client: Orthanc, count_requests: Callable[[], int]
) -> None:
    studies = client.find("Study", PatientName="müller*", StudyDate=("20200101", None))
    assert count_requests() == 1
    assert len(studies) == 1 and isinstance(studies[0], Study)
    study = studies[0]
    assert study.study_date == dt.date(2023, 11, 9)
    assert study.patient_main_dicom_tags["PatientName"] == "Müller^Jürgen"
    assert study.client is client
    series = client.find("series", {"Modality": ["CT", "MR"]}, patient_id="KK-0-0001")
    assert sorted(s.modality or "" for s in series) == ["CT", "MR"]
    assert all(isinstance(s, Series) for s in series)
    assert ids(series) == sorted(ids(series))
    assert count_requests() == 2


def test_find_pages_with_since_and_limit(
    client: Orthanc, count_requests: Callable[[], int]
) -> None:
    everything = client._transport.post_json(
        "/tools/find", {"Level": "Instance", "Query": {"0010,0010": "*"}}
    )
    assert len(everything) == 48
    start = count_requests()
    paged = server_find(client, FindRequest.of("instance", PatientName="*", page_size=10))
    assert count_requests() - start == 5  # 10 + 10 + 10 + 10 + 8
    assert ids(paged) == sorted(everything)
    assert all(isinstance(r, Instance) for r in paged)
    start = count_requests()
    first = server_find(
        client, FindRequest.of("instance", PatientName="*", limit=15, page_size=10)
    )
    assert count_requests() - start == 2  # Limit 10, then Limit 5
    assert ids(first) == sorted(everything[:15])
    start = count_requests()
    assert len(client.find("instance", PatientName="*", limit=48)) == 48
    assert count_requests() - start == 1
    with pytest.raises(QueryError, match="limit must be a positive integer"):
        client.find("instance", PatientName="*", limit=0)


def test_enumeration_goes_through_the_listing(
    client: Orthanc, count_requests: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    posted: list[str] = []
    original = client._transport.post_json

    def spy(path: str, *args: Any, **kwargs: Any) -> Any:
        posted.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(client._transport, "post_json", spy)
    everything = client.find("series")
    assert count_requests() == 1 and posted == []
    assert len(everything) == 16 and ids(everything) == sorted(ids(everything))
    # values that filter nothing are the same as no query
    assert ids(client.find("series", PatientName="", SeriesDate=(None, None))) == ids(everything)
    assert count_requests() == 2 and posted == []
    three = client.find("patient", limit=3)
    assert len(three) == 3 and count_requests() == 3 and posted == []


def test_limit_without_constraint_takes_the_listings_first_page_then_sorts_it(
    client: Orthanc,
) -> None:
    """``find(level, limit=N)`` with nothing to filter reads the level listing (never an empty
    ``/tools/find``): its first page of N, returned sorted by Orthanc ID. On SQLite that is
    the first N stored; a PostgreSQL index promises no order (no ORDER BY), and neither does
    ``/tools/find`` with a ``Limit`` and no constraint. The forest has no ``limit``."""
    sqlite = client.system.index == "SQLite index"
    for level, collection in (("patient", "patients"), ("instance", "instances")):
        stored = client.get_json(f"/{collection}")  # IDs, in the index's order
        for n in (1, 3, 5):
            first = client.find(level, limit=n)
            page = client.get_json(f"/{collection}", {"since": 0, "limit": n})
            assert ids(first) == sorted(page), (level, n)  # the listing's first page, sorted
            if sqlite:  # whose order is the storage order on SQLite
                assert ids(first) == sorted(stored[:n]), (level, n)
        answer = client.post_json("/tools/find", {"Level": level.title(), "Query": {}, "Limit": 3})
        assert len(answer) == 3 and set(answer) <= set(stored)
    if sqlite:  # on the sample, the first stored instances are not the smallest IDs
        stored = client.get_json("/instances")
        assert sorted(stored[:3]) != sorted(stored)[:3]


def test_modalities_in_study_on_server_and_forest(client: Orthanc) -> None:
    """Computed from each study's series, paged correctly on every version.

    Orthanc 1.10 answers ``ModalitiesInStudy`` by a series query whose studies it merges by
    StudyInstanceUID, with ``Limit`` counted as an end position; the client asks 1.10 for the
    series and fetches their studies instead. 1.11 and later check it study by study.
    """
    forest = ListForest(client)
    modalities = {
        study.id: {s.modality for s in forest.series if s.parent_study_id == study.id}
        for study in forest.studies
    }
    for wanted in ("CT", "US", ["ct", "PT"], "XA"):
        items = {wanted} if isinstance(wanted, str) else set(wanted)
        expected = sorted(
            sid for sid, mods in modalities.items() if {m.upper() for m in mods if m} & {
                i.upper() for i in items}
        )  # fmt: skip
        paged = server_find(
            client, FindRequest.of("study", ModalitiesInStudy=wanted, page_size=2)
        )
        assert ids(paged) == expected, wanted
        assert ids(local_find(forest, "study", ModalitiesInStudy=wanted)) == expected, wanted
        assert all(isinstance(study, Study) for study in paged)
    with_ct = {sid for sid, mods in modalities.items() if "CT" in mods}
    two = server_find(client, FindRequest.of("study", ModalitiesInStudy="CT", limit=2))
    assert len(two) == 2 and set(ids(two)) < with_ct
    # what the server itself does with Since and Limit here: 1.10 reads Limit as an end
    body = {"Level": "Study", "Query": {"0008,0061": "CT"}, "Since": 2, "Limit": 3}
    answer = client.post_json("/tools/find", body)
    assert len(with_ct) == 4
    assert len(answer) == (1 if client.system.api_version < 17 else 2)


def _tiny_forest(dialect: Dialect) -> Any:
    """One patient (PatientID "P1") with two studies whose copies of the patient tags differ.

    The patient's own tags come from its first study (name A, sex M); the second study's
    copy says name B, sex F, and holds the instance with the smallest Orthanc ID.
    """
    patient = Patient.from_orthanc(
        {"ID": "p", "MainDicomTags": {"PatientID": "P1", "PatientName": "A", "PatientSex": "M"},
         "Studies": ["s1", "s2"]}
    )  # fmt: skip
    studies = [
        Study.from_orthanc(
            {"ID": sid, "ParentPatient": "p", "Series": [f"{sid}-x"],
             "MainDicomTags": {"StudyInstanceUID": f"1.{sid}", "StudyDate": "20200101"},
             "PatientMainDicomTags": {"PatientID": "P1", "PatientName": name, "PatientSex": sex}}
        )
        for sid, name, sex in (("s1", "A", "M"), ("s2", "B", "F"))
    ]  # fmt: skip
    series = [
        Series.from_orthanc(
            {"ID": f"{sid}-x", "ParentStudy": sid, "Instances": [first],
             "MainDicomTags": {"SeriesInstanceUID": f"2.{sid}", "Modality": modality}}
        )
        for sid, first, modality in (("s1", "f0", "CT"), ("s2", "a0", "MR"))
    ]  # fmt: skip

    @dataclass
    class Tiny:
        dialect: Dialect
        patients: list[Patient]
        studies: list[Study]
        series: list[Series]
        instances: tuple[Instance, ...] = ()

    return Tiny(dialect, [patient], studies, series)


def test_patient_tags_below_the_patient_level_are_the_study_copies() -> None:
    forest = _tiny_forest(DEFAULT_DIALECT)
    found = lambda level, **kw: ids(local_find(forest, level, **kw))  # noqa: E731
    # a study, and everything below it, matches on the patient tags stored with it
    assert found("study", PatientName="B") == ["s2"]
    assert found("study", PatientName="A") == ["s1"]
    assert found("series", PatientSex="F") == ["s2-x"]
    assert found("series", PatientName="*", PatientSex="M\\O") == ["s1-x"]
    assert found("study", PatientID="P1", PatientSex="F", ModalitiesInStudy="MR") == ["s2"]
    assert found("study", PatientID="P1", PatientSex="F", ModalitiesInStudy="CT") == []


@pytest.mark.parametrize(
    ("index_sql", "sample_sex"), [("sqlite", "M"), ("postgresql", "F")]
)
def test_a_patient_query_checks_its_own_tags_then_one_study_copy(
    index_sql: str, sample_sex: str
) -> None:
    """The index filters on the patient's tags (sex M); the exact check reads an instance's
    study copy: on SQLite the first study's (M), on PostgreSQL the study of the instance with
    the smallest Orthanc ID (F). ``M`` alone matches on SQLite only; ``F`` never passes the
    index; ``M\\F`` passes both stages everywhere."""
    forest = _tiny_forest(Dialect(index_sql=index_sql))  # type: ignore[arg-type]
    found = lambda **kw: ids(local_find(forest, "patient", **kw))  # noqa: E731
    assert found(PatientSex="M") == (["p"] if sample_sex == "M" else [])
    assert found(PatientSex="F") == []
    assert found(PatientSex="M\\F") == ["p"]
    assert found(PatientName="A", PatientSex="*") == (["p"] if sample_sex == "M" else [])


def test_padded_patient_ids_are_two_patients_and_lookups_say_so(
    servers: Servers, kk_mode: str
) -> None:
    """Orthanc strips trailing spaces from a PatientID but keeps leading ones: " id11111" and
    "id11111" are two patients, which the index (and the forest's lookups, which ignore
    surrounding spaces) see as one identifier."""
    target = servers.new()
    variants = ["id11111", " id11111", "id11111 "]
    if kk_mode != "replay":
        spec = synthetic.SyntheticSpec(len(variants), 1, 1, 1, seed=43)
        data = []
        for dataset, pid in zip(synthetic.generate(spec), variants, strict=True):
            dataset.PatientID = pid
            data.append(synthetic.dataset_to_bytes(dataset))
        with PORT_MAP.mute():
            servers.sandbox_of(target).load(data, workers=1)
    from kkorthanc.forest import load_forest

    forest = load_forest(target)
    stored = sorted(repr(p.main_dicom_tags["PatientID"]) for p in forest.patients)
    assert stored == ["' id11111'", "'id11111'"]  # the trailing space was stripped
    with pytest.raises(PaddedIdentifier) as caught:
        forest.patient("id11111")
    assert isinstance(caught.value, AmbiguousIdentifier)
    assert set(caught.value.matches) == set(forest.patients)
    assert "' id11111'" in str(caught.value) and "'id11111'" in str(caught.value)
    assert "only by surrounding spaces" in str(caught.value)
    with pytest.raises(PaddedIdentifier):
        forest.get(" id11111")
    assert set(forest.lookup("id11111")) == set(forest.patients)
    for patient in forest.patients:
        assert forest.patient(patient.id) is patient  # the Orthanc ID stays unique
    # find matches the whole stored value, spaces included, on the server and in the forest
    for value in ("id11111", " id11111", "ID11111"):
        remote = ids(target.find("patient", PatientID=value))
        assert remote == ids(forest.find("patient", PatientID=value)), value
        assert len(remote) == 1, value


def test_gated_fields_raise_instead_of_an_unfiltered_answer(
    client: Orthanc, count_requests: Callable[[], int]
) -> None:
    if client.system.api_version >= 17:
        pytest.skip("the server honours requested tags")
    for kwargs in (
        {"labels": ["urgent"]},
        {"labels": ["urgent"], "labels_constraint": "Any"},
        {"requested_tags": ["PatientWeight"]},
    ):
        with pytest.raises(UnsupportedByServer, match=client.system.version):
            client.find("study", PatientName="*", **kwargs)
    with pytest.raises(UnsupportedByServer, match=r"1\.12\.0"):
        client.find("study", labels=["urgent"])  # even without other constraints
    assert count_requests() == 1  # GET /system, once


# ---------------------------------------------------------------------------------------------
# Differential: the same queries on both engines
# ---------------------------------------------------------------------------------------------


class Picker:
    """Where the query generator gets its choices: hypothesis or a seeded ``random.Random``."""

    def choice(self, items: Sequence[Any]) -> Any:
        raise NotImplementedError

    def chance(self, percent: int) -> bool:
        return bool(self.choice(range(100)) < percent)


class DrawPicker(Picker):
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, items: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(items))


class RandomPicker(Picker):
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, items: Sequence[Any]) -> Any:
        return self.rng.choice(items)


def value_pool(forest: Any) -> dict[str, list[str]]:
    """Every stored value of every main tag, sorted."""
    pool: dict[str, set[str]] = {}
    for level in (forest.patients, forest.studies, forest.series, forest.instances):
        for resource in level:
            for keyword, value in resource.main_dicom_tags.items():
                if keyword in VR_OF:
                    pool.setdefault(keyword, set()).add(value)
    return {keyword: sorted(values) for keyword, values in pool.items()}


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _mixed_case(text: str, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def _cut(text: str, pick: Picker, mark: str) -> str:
    """Replace a slice of ``text`` by a wildcard mark."""
    start = pick.choice(range(len(text) + 1))
    end = pick.choice(range(start, len(text) + 1))
    return text[:start] + mark + text[end:]


def _non_ascii_to(text: str, mark: str) -> str:
    return "".join(mark if not c.isascii() else c for c in text)


def _case_of_non_ascii(text: str, upper: bool) -> str:
    return "".join(c if c.isascii() else (c.upper() if upper else c.lower()) for c in text)


def forms_for(vr: str) -> list[str]:
    """How a stored value may be turned into a query value, for a value representation."""
    if vr in WILDCARD_VRS:
        return [
            "same", "upper", "lower", "swapcase", "mixed", "mixed", "accents", "UPPER", "lower!",
            "wild", "wild", "wild", "star", "nonascii?", "nonascii??", "nonascii*", "list",
            "list", "space", "underscore", "empty", "python",
        ]  # fmt: skip
    if vr in RANGE_VRS:
        return ["same", "range", "range", "range", "range", "list", "python", "empty", "wild"]
    return ["same", "same", "same", "list", "python", "empty", "space", "wild", "range"]


def pick_value(keyword: str, pool: dict[str, list[str]], pick: Picker) -> str:
    """A stored value of ``keyword``, non-ASCII ones more often."""
    values = pool[keyword]
    non_ascii = [v for v in values if not v.isascii()]
    chosen: str = pick.choice(non_ascii if non_ascii and pick.chance(60) else values)
    return chosen


def make_value(
    keyword: str,
    pool: dict[str, list[str]],
    pick: Picker,
    value: str | None = None,
    form: str | None = None,
) -> Any:
    """A query value for ``keyword`` derived from a stored ``value`` in one of its forms."""
    vr = VR_OF[keyword]
    if value is None:
        value = pick_value(keyword, pool, pick)
    other: str = pick.choice(pool[keyword])
    if form is None:
        form = pick.choice(forms_for(vr))
    if form == "UPPER":  # only the non-ASCII letters change case
        return _case_of_non_ascii(value, upper=True)
    if form == "lower!":
        return _case_of_non_ascii(value.upper(), upper=False)
    if form == "same":
        return value
    if form == "upper":
        return value.upper()
    if form == "lower":
        return value.lower()
    if form == "swapcase":
        return value.swapcase()
    if form == "mixed":
        return _mixed_case(value, pick.choice(range(1000)))
    if form == "accents":
        return _strip_accents(value)
    if form == "list":
        second = other.lower() if pick.chance(30) else other
        if "\\" in value or "\\" in second or (vr in RANGE_VRS and "-" in value + second):
            return value
        return [value, second] if pick.chance(50) else f"{value}\\{second}"
    if form == "python":
        if vr == "DA" and parse_da(value):
            return parse_da(value)
        if vr == "TM" and parse_tm(value):
            return parse_tm(value)
        if vr in ("IS", "US") and value.isdigit():
            return int(value)
        return [value]
    if form == "empty":
        return ""
    if form == "star":
        return pick.choice(["*", "?*", "*?*", "??*"])
    if form == "wild":
        if vr not in WILDCARD_VRS and not pick.chance(25):
            return value  # now and then, a wildcard the server refuses
        return _cut(value, pick, pick.choice(["*", "?", "*?", "??"]))
    if form.startswith("nonascii"):
        return _non_ascii_to(value, form[len("nonascii") :])
    if form == "space":
        return pick.choice([f" {value}", f"{value} ", value.replace("^", " ")])
    if form == "underscore":
        return value.replace("^", "_").replace(" ", "_").replace("-", "_")
    # range
    if vr not in RANGE_VRS:
        return f"{value}-{other}"  # a literal on other tags
    low, high = sorted([value, other]) if pick.chance(80) else (value, other)
    shape = pick.choice(["both", "both", "from", "to", "python"])
    if shape == "from":
        return f"{low}-"
    if shape == "to":
        return f"-{high}"
    if shape == "python" and vr == "DA" and parse_da(low) and parse_da(high):
        return (parse_da(low), None if pick.chance(30) else parse_da(high))
    return f"{low}-{high}"


#: tags with letters, accents or dates in their values, picked more often (repeats weigh)
FAVOURITES = (
    "PatientName", "PatientName", "PatientName", "ReferringPhysicianName", "InstitutionName",
    "PatientID", "OtherPatientIDs", "StudyDescription", "AccessionNumber",
    "InstitutionName", "ReferringPhysicianName", "StudyDate", "StudyTime", "Manufacturer",
    "OperatorsName", "SeriesDescription", "StationName", "ImageComments", "PatientBirthDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
)  # fmt: skip


def make_query(pool: dict[str, list[str]], pick: Picker) -> tuple[str, dict[str, Any], bool]:
    """A level, a query of one to three tags, and the case sensitivity.

    The first tag is usually one of the favourites that the level can query.
    """
    level: str = pick.choice(["patient", "study", "series", "instance"])
    usable = sorted(k for k in queryable_tags(level) if k in pool)
    query: dict[str, Any] = {}
    if pick.chance(85):
        first: str = pick.choice([k for k in FAVOURITES if k in usable])
        query[first] = make_value(first, pool, pick)
    for _ in range(pick.choice([0, 0, 1, 1, 2])):
        keyword = pick.choice(usable)
        query[keyword] = make_value(keyword, pool, pick)
    if not query:
        keyword = pick.choice(usable)
        query[keyword] = make_value(keyword, pool, pick)
    return level, query, pick.chance(25)


def make_query_family(
    pool: dict[str, list[str]], pick: Picker
) -> list[tuple[str, dict[str, Any], bool]]:
    """A query and its siblings: the first tag's value in every form its VR allows.

    One drawn value, checked with each of its forms, finds the narrow cases where the rules
    differ (an accented letter's case, a ``?`` against a multi-byte character) far more often
    than independent draws.
    """
    level, query, cs = make_query(pool, pick)
    first = next(iter(query))
    value = pick_value(first, pool, pick)
    family = []
    for form in dict.fromkeys(forms_for(VR_OF[first])):
        sibling = dict(query)
        sibling[first] = make_value(first, pool, pick, value=value, form=form)
        family.append((level, sibling, cs))
    return family


def run_both(
    client: Orthanc, forest: Any, level: str, query: dict[str, Any], cs: bool
) -> tuple[list[str], list[str]] | QueryError:
    """Answers of ``client.find`` and ``forest.find`` for one query, or the shared refusal."""
    try:
        local = ids(forest.find(level, query, case_sensitive=cs))
    except QueryError as local_error:
        with pytest.raises(QueryError) as server_error:
            client.find(level, query, case_sensitive=cs)
        assert str(server_error.value) == str(local_error)
        return local_error
    return ids(client.find(level, query, case_sensitive=cs)), local


def test_replayed_sample_of_generated_queries(
    client: Orthanc, count_requests: Callable[[], int]
) -> None:
    forest = IndexedListForest(client, Dialect.of(client.system))
    scan = ListForest.__new__(ListForest)  # the same objects, without the index
    scan.__dict__.update(
        {k: getattr(forest, k) for k in ("dialect", "patients", "studies", "series", "instances")}
    )
    assert count_requests() == 5
    pool = value_pool(forest)
    pick = RandomPicker(0)
    sent = matched = 0
    for _ in range(40):
        level, query, cs = make_query(pool, pick)
        before = count_requests()
        outcome = run_both(client, forest, level, query, cs)
        if isinstance(outcome, QueryError):
            assert count_requests() == before  # refused before sending
            continue
        remote, local = outcome
        assert remote == local, (level, query, cs)
        assert ids(scan.find(level, query, case_sensitive=cs)) == local, (level, query, cs)
        sent += count_requests() - before
        matched += bool(remote)
    assert sent >= 30 and matched >= 15  # the sample exercises real matches
    assert forest.lookups >= 3  # and the indexed path


def test_uid_equality_uses_the_forest_index(client: Orthanc) -> None:
    forest = IndexedListForest(client)
    instance = forest.instances[5]
    uid = instance.main_dicom_tags["SOPInstanceUID"]
    assert ids(forest.find("instance", SOPInstanceUID=uid)) == [instance.id]
    assert forest.lookups == 1
    series_uids = [s.main_dicom_tags["SeriesInstanceUID"] for s in forest.series[:2]]
    assert len(forest.find("series", SeriesInstanceUID=series_uids)) == 2
    assert forest.lookups == 3
    # a PatientID with letters may match other spellings without case sensitivity: no index
    assert len(forest.find("study", PatientID="kk-0-0001")) == 2
    assert forest.lookups == 3
    assert len(forest.find("patient", PatientID="KK-0-0001", case_sensitive=True)) == 1
    assert forest.lookups == 4
    # padding would be stripped by an index: scanned, and matches nothing like the server
    assert forest.find("instance", SOPInstanceUID=f" {uid}") == []
    assert forest.lookups == 4


def test_a_shallow_forest_refuses_deeper_levels() -> None:
    @dataclass
    class Shallow:
        depth: str = "series"
        patients: tuple[Patient, ...] = ()
        studies: tuple[Study, ...] = ()
        series: tuple[Series, ...] = ()
        instances: tuple[Instance, ...] = ()

    assert local_find(Shallow(), "series", Modality="CT") == []
    with pytest.raises(QueryError, match="built with depth='series'"):
        local_find(Shallow(), "instance", InstanceNumber="1")


# -- live: hypothesis against a larger server ---------------------------------------------------

#: 10 patients (all eight names of the generator, some twice) x 2 x 2 x 2 = 80 instances
DIFF_SPEC = synthetic.SyntheticSpec(patients=10, studies_per_patient=2, series_per_study=2,
                                    instances_per_series=2, seed=3)


def odd_instances() -> Iterator[bytes]:
    """Values that exercise identifier normalization: '_' and '%', spaces, lower case."""
    spec = synthetic.SyntheticSpec(1, 1, 1, 2, seed=99)
    overrides = [
        {
            "PatientID": "kk_low%1 x",
            "PatientName": "Ünter^Süd",
            "StudyDescription": "Ünter Süd_x%y",
            "AccessionNumber": "acc_1",
            "InstitutionName": "ünter süd_x%y",
            "StationName": "st_1",
            "SeriesDescription": "desc with  spaces",
        },
        {"InstanceNumber": 7, "ImageComments": "Ça va?"},
    ]
    for dataset, extra in zip(synthetic.generate(spec), overrides, strict=True):
        for keyword, value in overrides[0].items():
            setattr(dataset, keyword, value)
        for keyword, value in extra.items():
            setattr(dataset, keyword, value)
        yield synthetic.dataset_to_bytes(dataset)


@pytest.fixture(scope="module")
def diff_setup(
    kk_mode: str, sandbox_options: dict[str, Any]
) -> Iterator[tuple[Orthanc, Any, dict[str, list[str]]]]:
    """A server with DIFF_SPEC and odd values, its forest and its value pool (live only)."""
    if kk_mode == "replay":
        pytest.skip("needs a real Orthanc")
    with Sandbox(name="kk-query-diff", **sandbox_options) as sandbox:
        sandbox.load_synthetic(DIFF_SPEC)
        sandbox.load(odd_instances())
        with sandbox.client() as client:
            try:
                from kkorthanc.forest import build_patient_forest
            except ImportError:
                forest: Any = ListForest(client)
            else:
                forest = build_patient_forest(client)
            yield client, forest, value_pool(forest)


@pytest.mark.live_only
def test_forest_and_server_agree_on_the_diff_data(
    diff_setup: tuple[Orthanc, Any, dict[str, list[str]]],
) -> None:
    client, forest, pool = diff_setup
    assert len(forest.instances) == DIFF_SPEC.total_instances + 2
    assert {"Groß^Änne", "García^José", "김^민준", "Ünter^Süd"} <= set(pool["PatientName"])
    before = client.request_count
    forest.find("instance", PatientName="*", StudyDate="20000101-")
    assert client.request_count == before  # local queries cost nothing


@pytest.mark.live_only
@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_generated_queries_match_the_server(
    diff_setup: tuple[Orthanc, Any, dict[str, list[str]]], data: st.DataObject
) -> None:
    """200 drawn queries, each with its siblings in every form: about 3,000 comparisons."""
    client, forest, pool = diff_setup
    for level, query, cs in make_query_family(pool, DrawPicker(data)):
        outcome = run_both(client, forest, level, query, cs)
        if isinstance(outcome, QueryError):
            event("refused before sending")
            if "wildcards are not allowed" in str(outcome):
                # the server refuses the same query when asked directly
                text = {TAG_NUMBERS[k]: v for k, v in query.items() if isinstance(v, str) and v}
                with pytest.raises(BadRequest):
                    client._transport.post_json(
                        "/tools/find", {"Level": level.title(), "Query": text}
                    )
            continue
        remote, local = outcome
        event(f"{level}: {'no match' if not remote else 'all' if len(remote) > 50 else 'some'}")
        assert remote == local, (level, query, cs)


def test_requested_tags_are_kept_on_each_result_or_refused(servers: Servers) -> None:
    client = servers.new(sample=True)
    wanted = ["StudyDescription", "ModalitiesInStudy", "number_of_study_related_instances"]
    if not client.supports("RequestedTags"):
        before = client.request_count
        with pytest.raises(UnsupportedByServer):
            client.find("study", requested_tags=wanted)
        assert client.request_count == before
        return
    # through /tools/find (a constraint) and through the level listing (none)
    for found in (
        client.find("study", PatientID="KK-*", requested_tags=wanted),
        client.find("study", requested_tags=wanted),
    ):
        assert len(found) == 8
        for study in found:
            tags = study.requested_tags
            assert tags["StudyDescription"] == study.study_description
            assert tags["NumberOfStudyRelatedInstances"] == "6"  # 2 series of 3
            assert tags["ModalitiesInStudy"]
