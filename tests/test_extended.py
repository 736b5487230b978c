"""Orthanc 1.12.5+ requests: sort keys, metadata patterns, parents, response content, counts
and C-GET.

Our servers (1.10.1, 1.12.3) have none of these, so the request bodies are checked against a
fake server of the test's own on loopback whose ``/system`` says what a newer Orthanc says;
the bodies follow Orthanc's documentation and integration tests (``docs/server-facts.md``).
On the real servers, live and replayed, every one of them is refused before anything is sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kkorthanc import (
    InvalidRequest,
    Job,
    Modality,
    OrderBy,
    Orthanc,
    Patient,
    QueryError,
    Study,
    UnsupportedByServer,
    ValidationFailed,
    orthanc_id,
)
from kkorthanc.modalities import FindAnswer
from kkorthanc.query import RESPONSE_CONTENT

no_cassette = pytest.mark.no_cassette

PATIENT = orthanc_id("KK-1")
STUDY_A = "0a9b3153-2512774b-2d9580de-1fc3dcf6-3bd83918"
STUDY_B = "f2635388-f01d497a-15f7c06b-ad7dba06-c4c599fe"
SERIES = orthanc_id("KK-1", "1.2.3", "1.2.3.4")
JOB = "1c6a1fc8-40c5-4c56-9f2b-5d3c1b2a7e10"


def system(api_version: int, *, extended_find: bool = True) -> dict[str, Any]:
    """``/system`` as a newer Orthanc answers it."""
    version = {26: "1.12.5", 27: "1.12.6"}.get(api_version, "1.12.9")
    return {
        "Name": "fake",
        "Version": version,
        "ApiVersion": api_version,
        "DicomAet": "FAKE",
        "Capabilities": {"HasExtendedFind": extended_find, "HasLabels": True},
    }


def study_json(study_id: str, date: str) -> dict[str, Any]:
    return {
        "ID": study_id,
        "Type": "Study",
        "MainDicomTags": {"StudyDate": date, "StudyInstanceUID": f"1.2.{date}"},
        "ParentPatient": PATIENT,
        "Series": [],
        "IsStable": True,
    }


Route = Callable[[Any], Any]


class FakeOrthanc:
    """A loopback HTTP server answering JSON by ``METHOD /path``; it keeps every request."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path.split("?", 1)[0]
                fake.requests.append((self.command, self.path, body))
                route = fake.routes.get(f"{self.command} {path}")
                status, answer = (404, {"Message": "no route"}) if route is None else (200, None)
                if route is not None:
                    answer = route(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def posted(self, path: str) -> list[Any]:
        """The bodies posted to ``path``, in order."""
        return [body for method, sent, body in self.requests if method == "POST" and sent == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[FakeOrthanc, Orthanc]]]:
    """``fake(routes, api_version=27, extended_find=True)``: a fake server and its client."""
    made: list[tuple[FakeOrthanc, Orthanc]] = []

    def start(
        routes: dict[str, Route] | None = None, *, api_version: int = 27, extended_find: bool = True
    ) -> tuple[FakeOrthanc, Orthanc]:
        answers: dict[str, Route] = {
            "GET /system": lambda _: system(api_version, extended_find=extended_find)
        }
        server = FakeOrthanc({**answers, **(routes or {})})
        client = Orthanc(server.url, timeout=10, retries=0)
        made.append((server, client))
        return server, client

    yield start
    for server, client in made:
        client.close()
        server.close()


# -- OrderBy, the value -----------------------------------------------------------------------


@no_cassette
def test_order_by_is_a_checked_frozen_value() -> None:
    assert OrderBy("study_date") == OrderBy("StudyDate") == OrderBy("0008,0020")
    assert OrderBy("StudyDate").request == {
        "Type": "DicomTag",
        "Key": "StudyDate",
        "Direction": "ASC",
    }
    assert OrderBy(metadata="my-metadata", descending=True).request == {
        "Type": "Metadata",
        "Key": "my-metadata",
        "Direction": "DESC",
    }
    # the typed orders of Orthanc 1.12.5's own tests
    assert OrderBy("InstanceNumber", numeric=True).request["Type"] == "DicomTagAsInt"
    assert OrderBy(metadata="1234", numeric=True).request["Type"] == "MetadataAsFloat"
    key = OrderBy("StudyDate")
    with pytest.raises(AttributeError):
        key.descending = True  # type: ignore[misc]
    assert len({OrderBy("StudyDate"), OrderBy("study_date")}) == 1


@no_cassette
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OrderBy(), "exactly one"),
        (lambda: OrderBy("StudyDate", metadata="my-metadata"), "exactly one"),
        (lambda: OrderBy(42), "OrderBy: "),
        (lambda: OrderBy(metadata="my metadata"), "not a metadata name: 'my metadata'"),
        (lambda: OrderBy(metadata=""), "not a metadata name"),
        (lambda: OrderBy("StudyDate", descending="yes"), "descending must be True or False"),
    ],
)
def test_order_by_refuses_what_cannot_be_sent(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        make()


# -- find: the bodies sent ----------------------------------------------------------------------


@no_cassette
def test_find_sends_the_extended_fields_and_keeps_the_servers_order(fake: Any) -> None:
    # the server sorts B (2021) before A (2019): the result keeps that, not the ID order
    server, client = fake(
        {
            "POST /tools/find": lambda _: [
                study_json(STUDY_B, "20211231"),
                study_json(STUDY_A, "20190101"),
            ]
        }
    )
    found = client.find(
        "study",
        StudyDate=("20190101", None),
        order_by=[OrderBy("StudyDate", descending=True), OrderBy(metadata="my-metadata")],
        metadata={"my-metadata": "value*"},
        parent=("patient", PATIENT),
    )
    assert [study.id for study in found] == [STUDY_B, STUDY_A]
    assert all(isinstance(study, Study) for study in found)
    assert server.posted("/tools/find") == [
        {
            "Level": "Study",
            "Query": {"0008,0020": "20190101-"},
            "Expand": True,
            "CaseSensitive": False,
            "OrderBy": [
                {"Type": "DicomTag", "Key": "StudyDate", "Direction": "DESC"},
                {"Type": "Metadata", "Key": "my-metadata", "Direction": "ASC"},
            ],
            "MetadataQuery": {"my-metadata": "value*"},
            "ParentPatient": PATIENT,
            "Since": 0,
            "Limit": 1000,
        }
    ]
    assert client.request_count == 2  # GET /system, one find


@no_cassette
def test_without_order_by_the_result_is_sorted_by_orthanc_id(fake: Any) -> None:
    server, client = fake(
        {
            "POST /tools/find": lambda _: [
                study_json(STUDY_B, "20211231"),
                study_json(STUDY_A, "20190101"),
            ]
        }
    )
    found = client.find("study", metadata={"my-metadata": "value*"})
    assert [study.id for study in found] == [STUDY_A, STUDY_B]
    assert "OrderBy" not in server.posted("/tools/find")[0]


@no_cassette
def test_a_sorted_find_of_everything_asks_the_server_not_the_listing(fake: Any) -> None:
    server, client = fake({"POST /tools/find": lambda _: []})
    assert client.find("series", order_by="SeriesNumber", limit=5) == []
    assert server.posted("/tools/find") == [
        {
            "Level": "Series",
            "Query": {},
            "Expand": True,
            "CaseSensitive": False,
            "OrderBy": [{"Type": "DicomTag", "Key": "SeriesNumber", "Direction": "ASC"}],
            "Since": 0,
            "Limit": 5,
        }
    ]
    assert [method for method, _, _ in server.requests] == ["GET", "POST"]


@no_cassette
def test_the_parent_field_follows_the_parents_level(fake: Any) -> None:
    server, client = fake({"POST /tools/find": lambda _: []})
    patient = Patient.from_orthanc({"ID": PATIENT, "Type": "Patient"}, client)
    client.find("instance", parent=patient)
    client.find("instance", parent=("study", STUDY_A))
    client.find("instance", parent=("Series", SERIES))
    sent = server.posted("/tools/find")
    assert [{k: v for k, v in body.items() if k.startswith("Parent")} for body in sent] == [
        {"ParentPatient": PATIENT},
        {"ParentStudy": STUDY_A},
        {"ParentSeries": SERIES},
    ]


@no_cassette
@pytest.mark.parametrize(
    ("level", "kwargs", "message"),
    [
        (
            "study",
            {"order_by": [OrderBy("InstanceNumber")]},
            "InstanceNumber is not a main DICOM tag of a study",
        ),
        ("study", {"order_by": "NoSuchKeyword"}, "NoSuchKeyword is not a main DICOM tag"),
        ("study", {"order_by": "ModalitiesInStudy"}, "ModalitiesInStudy is not a main DICOM tag"),
        ("study", {"order_by": []}, "order_by is empty"),
        ("study", {"order_by": ["StudyDate", "study_date"]}, "given twice"),
        ("study", {"order_by": [42]}, "takes OrderBy objects or tag names, not 42"),
        ("study", {"metadata": {}}, "metadata is empty"),
        (
            "study",
            {"metadata": {"my-metadata": ""}},
            "pattern for 'my-metadata' must be a non-empty",
        ),
        ("study", {"metadata": {"my-metadata": 3}}, "must be a non-empty string"),
        ("study", {"metadata": {"bad/name": "x"}}, "not a metadata name: 'bad/name'"),
        ("study", {"metadata": ["my-metadata"]}, "must map metadata names to patterns"),
        ("study", {"parent": ("study", STUDY_A)}, "a study holds no study"),
        ("patient", {"parent": ("patient", PATIENT)}, "a patient holds no patient"),
        ("series", {"parent": ("planet", STUDY_A)}, "parent: unknown level 'planet'"),
        ("series", {"parent": ("study", "ABC")}, "'ABC' is not an Orthanc ID"),
        ("series", {"parent": ("study", STUDY_A.upper())}, "is not an Orthanc ID"),
        ("series", {"parent": STUDY_A}, "a resource or a \\(level, Orthanc ID\\) pair"),
    ],
)
def test_find_arguments_are_refused_before_anything_is_sent(
    level: str, kwargs: dict[str, Any], message: str
) -> None:
    client = Orthanc("http://127.0.0.1:9", retries=0)  # nothing listens there: nothing is sent
    with pytest.raises(QueryError, match=message):
        client.find(level, **kwargs)
    with pytest.raises(QueryError, match=message):
        client.count(level, **kwargs) if "order_by" not in kwargs else client.find_json(
            level, **kwargs
        )
    assert client.request_count == 0


# -- find_json: response content ----------------------------------------------------------------


@no_cassette
def test_find_json_asks_for_the_content_named_and_keeps_the_answers(fake: Any) -> None:
    answers = [{"ID": SERIES, "Type": "Series", "Metadata": {"LastUpdate": "20240101T000000"}}]
    server, client = fake({"POST /tools/find": lambda _: answers})
    got = client.find_json(
        "series",
        Modality="CT",
        response_content=["metadata", "MainDicomTags", "Metadata"],
        order_by=OrderBy("SeriesNumber", numeric=True),
    )
    assert got == answers
    assert server.posted("/tools/find") == [
        {
            "Level": "Series",
            "Query": {"0008,0060": "CT"},
            "ResponseContent": ["MainDicomTags", "Metadata"],
            "CaseSensitive": False,
            "OrderBy": [{"Type": "DicomTagAsInt", "Key": "SeriesNumber", "Direction": "ASC"}],
            "Since": 0,
            "Limit": 1000,
        }
    ]
    client.find_json("series", response_content=[])  # ID and Type only
    client.find_json("series")  # expanded, as find() asks
    later = server.posted("/tools/find")[1:]
    assert later[0]["ResponseContent"] == [] and "Expand" not in later[0]
    assert later[1]["Expand"] is True and "ResponseContent" not in later[1]


@no_cassette
def test_response_content_names_are_checked(fake: Any) -> None:
    _, client = fake()
    assert "IsProtected" not in RESPONSE_CONTENT  # 1.12.8, whose API version is unknown
    for names, message in (
        (["Everything"], "'Everything' is not a part of Orthanc's answer; choose among"),
        ("Metadata", "a list of names, not one string"),
        (["IsProtected"], "'IsProtected' is not a part"),
    ):
        with pytest.raises(QueryError, match=message):
            client.find_json("study", response_content=names)
    assert client.request_count == 0


@no_cassette
def test_find_json_refuses_an_answer_that_is_not_an_object(fake: Any) -> None:
    _, client = fake({"POST /tools/find": lambda _: [SERIES]})
    with pytest.raises(ValidationFailed, match="POST /tools/find: cannot read a resource found"):
        client.find_json("series", response_content=[])


# -- count ----------------------------------------------------------------------------------------


@no_cassette
def test_count_sends_the_find_body_without_paging_and_reads_the_count(fake: Any) -> None:
    server, client = fake({"POST /tools/count-resources": lambda _: {"Count": 7}})
    count = client.count(
        "study",
        PatientName="doe*",
        labels=["urgent"],
        metadata={"my-metadata": "*2*"},
        parent=("patient", PATIENT),
    )
    assert count == 7
    assert server.posted("/tools/count-resources") == [
        {
            "Level": "Study",
            "Query": {"0010,0010": "doe*"},
            "CaseSensitive": False,
            "Labels": ["urgent"],
            "MetadataQuery": {"my-metadata": "*2*"},
            "ParentPatient": PATIENT,
        }
    ]
    assert client.count(Study) == 7
    assert server.posted("/tools/count-resources")[1] == {
        "Level": "Study",
        "Query": {},
        "CaseSensitive": False,
    }
    assert client.request_count == 3  # GET /system once, one request per count
    before = client.write_epoch
    client.count("patient")
    assert client.write_epoch == before  # a count changes nothing: caches stay valid


@no_cassette
def test_count_refuses_what_the_server_cannot_count(fake: Any) -> None:
    _, client = fake()
    with pytest.raises(QueryError, match="Orthanc refuses CaseSensitive"):
        client.count("patient", PatientName="DOE*", case_sensitive=True)
    assert client.request_count == 0
    with pytest.raises(QueryError, match="cannot filter on ModalitiesInStudy"):
        client.count("study", ModalitiesInStudy="MR")
    assert client.request_count == 1  # GET /system, to know the server counts at all


@no_cassette
@pytest.mark.parametrize("answer", [{"Count": -1}, {"Count": "7"}, {"Count": True}, [7], None])
def test_count_refuses_an_answer_without_a_count(fake: Any, answer: Any) -> None:
    _, client = fake({"POST /tools/count-resources": lambda _: answer})
    no_count = "POST /tools/count-resources: no count in the answer"
    with pytest.raises(ValidationFailed, match=no_count):
        client.count("patient")


# -- gates on a 1.12.5 server without extended find --------------------------------------------


@no_cassette
def test_an_index_without_extended_find_refuses_the_find_fields(fake: Any) -> None:
    server, client = fake(
        {"POST /tools/count-resources": lambda _: {"Count": 2}}, api_version=26, extended_find=False
    )
    for kwargs, feature in (
        ({"order_by": "StudyDate"}, "OrderBy"),
        ({"metadata": {"my-metadata": "x"}}, "MetadataQuery"),
        ({"parent": ("patient", PATIENT)}, "ParentPatient"),
    ):
        with pytest.raises(UnsupportedByServer, match="without extended find") as caught:
            client.find("study", **kwargs)
        assert caught.value.feature == feature
    with pytest.raises(UnsupportedByServer, match="ResponseContent"):
        client.find_json("study", response_content=["Labels"])
    with pytest.raises(UnsupportedByServer, match="MetadataQuery"):
        client.count("study", metadata={"my-metadata": "x"})
    assert server.posted("/tools/find") == []
    assert client.count("study") == 2  # a plain count needs 1.12.5 only
    modality = Modality.from_orthanc("remote", ["REMOTE", "127.0.0.1", 104], client)
    with pytest.raises(UnsupportedByServer, match=r"C-GET needs Orthanc 1\.12\.6"):
        modality.get({"StudyInstanceUID": "1.2.3"}, level="study")
    assert client.request_count == 2  # GET /system, the plain count


# -- C-GET ----------------------------------------------------------------------------------------


def _job_routes() -> dict[str, Route]:
    return {
        "POST /modalities/remote/get": lambda _: {"ID": JOB, "Path": f"/jobs/{JOB}"},
        f"GET /jobs/{JOB}": lambda _: {"ID": JOB, "Type": "DicomGetScu", "State": "Pending"},
    }


@no_cassette
def test_c_get_of_identifiers_is_one_job(fake: Any) -> None:
    server, client = fake(_job_routes())
    modality = Modality.from_orthanc("remote", ["REMOTE", "127.0.0.1", 104], client)
    job = modality.get(
        [
            {"StudyInstanceUID": "1.2.3"},
            {
                "study_instance_uid": "1.2.4",
                "SOPClassesInStudy": ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"],
            },
        ],
        level="studies",
        timeout=60,
        priority=3,
    )
    assert isinstance(job, Job) and job.id == JOB
    assert server.posted("/modalities/remote/get") == [
        {
            "Level": "Study",
            "Resources": [
                {"StudyInstanceUID": "1.2.3"},
                {
                    "StudyInstanceUID": "1.2.4",
                    "SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4",
                },
            ],
            "Synchronous": False,
            "Timeout": 60,
            "Priority": 3,
        }
    ]
    assert client.request_count == 3  # GET /system, the C-GET, GET /jobs/{id}


def _answer(level: str, modality: str = "remote", **tags: str) -> FindAnswer:
    return FindAnswer.from_orthanc(
        tags, level=level, modality=modality, query_id="q", index=0, query_size=1
    )


@no_cassette
def test_c_get_of_find_answers_sends_their_identifiers(fake: Any) -> None:
    server, client = fake(_job_routes())
    modality = Modality.from_orthanc("remote", ["REMOTE", "127.0.0.1", 104], client)
    ids = {"PatientID": "KK-1", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}
    modality.get(_answer("Series", Modality="CT", **ids))
    modality.get(_answer("Patient", PatientID="KK-1", PatientName="DOE^JOHN"))
    assert server.posted("/modalities/remote/get") == [
        {
            "Level": "Series",
            "Resources": [{"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}],
            "Synchronous": False,
        },
        {"Level": "Patient", "Resources": [{"PatientID": "KK-1"}], "Synchronous": False},
    ]


@no_cassette
def test_c_get_arguments_are_refused_before_anything_is_sent(fake: Any) -> None:
    _, client = fake(_job_routes())
    modality = Modality.from_orthanc("remote", ["REMOTE", "127.0.0.1", 104], client)
    series = _answer("Series", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4")
    for args, kwargs, message in (
        (([],), {}, "at least one resource"),
        (({"StudyInstanceUID": "1.2.3"},), {}, "give level= with mappings"),
        (([series, _answer("Study", StudyInstanceUID="1.2.3")],), {}, r"got \['Series', 'Study'\]"),
        ((series,), {"level": "study"}, "one level"),
        ((_answer("Study", modality="other", StudyInstanceUID="1"),), {}, "from modality 'other'"),
        ((_answer("Study", PatientID="KK-1"),), {}, "without StudyInstanceUID"),
        (({},), {"level": "study"}, "an empty mapping"),
        (([42],), {"level": "study"}, "FindAnswer objects or mappings, not 42"),
        (({"StudyInstanceUID": "1"},), {"level": "study", "timeout": 0}, "timeout must be"),
        (({"StudyInstanceUID": "1"},), {"level": "study", "priority": "high"}, "priority must"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            modality.get(*args, **kwargs)
    assert client.request_count == 0


# -- the real servers refuse everything, before sending ----------------------------------------


def test_our_servers_refuse_every_extended_request_before_sending(client: Orthanc) -> None:
    if client.system.api_version >= 26:
        pytest.skip("the server has Orthanc 1.12.5's find")
    before = client.request_count  # GET /system is behind us
    for kwargs, feature in (
        ({"order_by": "StudyDate"}, "OrderBy"),
        ({"order_by": [OrderBy(metadata="my-metadata", descending=True)]}, "OrderBy"),
        ({"metadata": {"my-metadata": "value*"}}, "MetadataQuery"),
        ({"parent": ("patient", PATIENT)}, "ParentPatient"),
        ({"parent": ("series", SERIES)}, "ParentSeries"),
    ):
        with pytest.raises(UnsupportedByServer, match=r"needs Orthanc 1\.12\.5") as caught:
            client.find("instance", **kwargs)
        assert caught.value.feature == feature
        assert client.system.version in str(caught.value)
    with pytest.raises(UnsupportedByServer, match="ResponseContent"):
        client.find_json("study", response_content=["MainDicomTags"])
    with pytest.raises(UnsupportedByServer, match="CountResources") as counted:
        client.count("study", PatientName="*")
    assert counted.value.lacking == ""  # the version is too old, whatever the index
    with pytest.raises(UnsupportedByServer, match="CountResources"):
        client.count("study", metadata={"my-metadata": "x"})  # the count itself comes first
    modality = Modality.from_orthanc("remote", ["REMOTE", "127.0.0.1", 104], client)
    with pytest.raises(UnsupportedByServer, match=r"C-GET needs Orthanc 1\.12\.6"):
        modality.get({"StudyInstanceUID": "1.2.3"}, level="study")
    assert client.request_count == before
