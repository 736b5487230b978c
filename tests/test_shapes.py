"""Answers of the wrong shape, for every call: each ends as one kkorthanc error naming the
request whose answer was wrong, never a bare TypeError, KeyError or pydantic error.

A fake Orthanc (a thread in this process) answers one small tree well: a patient, its
study, series and instance, a job, a modality, the change feed. Each call is run once
against it to learn which requests it sends; then each of those answers in turn is
replaced by every wrong shape of it (another JSON kind, each field given another kind, the
first item of a list likewise) and the call is run again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from kkorthanc import Orthanc, OrthancError, ValidationFailed
from kkorthanc.forest import load_compact_forest, load_forest, open_forest

pytestmark = pytest.mark.no_cassette

P = "11111111-11111111-11111111-11111111-11111111"
S = "22222222-22222222-22222222-22222222-22222222"
R = "33333333-33333333-33333333-33333333-33333333"
INST = "44444444-44444444-44444444-44444444-44444444"
J = "55555555-5555-5555-5555-555555555555"
WHEN = "20260101T101010"

PATIENT = {
    "ID": P,
    "Type": "Patient",
    "IsStable": True,
    "LastUpdate": WHEN,
    "Labels": ["a"],
    "MainDicomTags": {
        "PatientID": "KK-1",
        "PatientName": "A^B",
        "PatientBirthDate": "20000101",
        "PatientSex": "F",
    },
    "Studies": [S],
}
STUDY = {
    "ID": S,
    "Type": "Study",
    "IsStable": True,
    "LastUpdate": WHEN,
    "Labels": [],
    "ParentPatient": P,
    "Series": [R],
    "MainDicomTags": {
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20200101",
        "StudyTime": "101010",
        "AccessionNumber": "A1",
        "StudyDescription": "x",
        "StudyID": "1",
    },
    "PatientMainDicomTags": {"PatientID": "KK-1", "PatientName": "A^B"},
}
SERIES = {
    "ID": R,
    "Type": "Series",
    "IsStable": True,
    "LastUpdate": WHEN,
    "Labels": [],
    "ParentStudy": S,
    "Instances": [INST],
    "Status": "Unknown",
    "ExpectedNumberOfInstances": None,
    "MainDicomTags": {
        "SeriesInstanceUID": "1.2.3.4",
        "Modality": "CT",
        "SeriesNumber": "1",
        "SeriesDate": "20200101",
    },
}
INSTANCE = {
    "ID": INST,
    "Type": "Instance",
    "IsStable": True,
    "LastUpdate": WHEN,
    "Labels": [],
    "ParentSeries": R,
    "FileSize": 1000,
    "FileUuid": "66666666-6666-6666-6666-666666666666",
    "IndexInSeries": 1,
    "MainDicomTags": {"SOPInstanceUID": "1.2.3.4.5", "InstanceNumber": "1"},
}
BY_LEVEL = {"patients": PATIENT, "studies": STUDY, "series": SERIES, "instances": INSTANCE}
JOB = {
    "ID": J,
    "Type": "Anonymization",
    "State": "Success",
    "Progress": 100,
    "Priority": 0,
    "CreationTime": WHEN,
    "CompletionTime": WHEN,
    "EffectiveRuntime": 0.1,
    "ErrorCode": 0,
    "ErrorDescription": "Success",
    "Timestamp": WHEN,
    "Content": {"ID": S, "Path": f"/studies/{S}", "Type": "Study"},
}
MODALITY = {
    "AET": "PEER",
    "Host": "127.0.0.1",
    "Port": 104,
    "Manufacturer": "Generic",
    "AllowEcho": True,
    "AllowFind": True,
    "AllowGet": True,
    "AllowMove": True,
    "AllowStore": True,
    "AllowStorageCommitment": True,
    "AllowTranscoding": True,
    "UseDicomTls": False,
    "Timeout": 0,
    "LocalAet": "",
}
SYSTEM = {
    "Name": "fake",
    "Version": "1.12.3",
    "ApiVersion": 23,
    "DicomAet": "ORTHANC",
    "DicomPort": 4242,
    "HttpPort": 8042,
    "DatabaseVersion": 6,
    "DatabaseBackendPlugin": None,
    "StorageAreaPlugin": None,
    "PluginsEnabled": True,
    "CheckRevisions": False,
    "HasLabels": True,
    "IsHttpServerSecure": True,
    "MaximumStorageSize": 0,
    "MaximumPatientCount": 0,
    "MaximumStorageMode": "Recycle",
    "UserMetadata": {},
    "OverwriteInstances": False,
    "StorageCompression": False,
    "Capabilities": {"HasExtendedChanges": False, "HasExtendedFind": False},
    "DatabaseServerIdentifier": "abc",
    "IngestTranscoding": "",
    "ReadOnly": False,
}
CHANGE = {
    "ChangeType": "NewInstance",
    "Date": WHEN,
    "ID": INST,
    "Path": f"/instances/{INST}",
    "ResourceType": "Instance",
    "Seq": 5,
}


#: what the fake answers to a request it does not know: 404
MISSING = object()


def good(method: str, path: str, query: str, body: bytes) -> Any:
    """What a real Orthanc would answer for the small tree above."""
    parts = path.strip("/").split("/")
    expand = "expand" in query
    if path == "/system":
        return SYSTEM
    if path == "/statistics":
        return {
            "CountPatients": 1,
            "CountStudies": 1,
            "CountSeries": 1,
            "CountInstances": 1,
            "TotalDiskSize": "1000",
            "TotalDiskSizeMB": 0,
            "TotalUncompressedSize": "1000",
            "TotalUncompressedSizeMB": 0,
        }
    if path == "/changes":
        if "last" in query:
            return {"Changes": [], "Done": True, "Last": 5}
        return {"Changes": [CHANGE], "Done": True, "Last": 5}
    if path == "/tools/find":
        request = json.loads(body)
        level = {
            "Patient": "patients",
            "Study": "studies",
            "Series": "series",
            "Instance": "instances",
        }[request["Level"]]
        item = BY_LEVEL[level]
        return [item] if request.get("Expand") else [item["ID"]]
    if path == "/tools/lookup":
        return [{"ID": P, "Path": f"/patients/{P}", "Type": "Patient"}]
    if path == "/tools/labels":
        return ["a"]
    if path == "/tools/bulk-content":
        request = json.loads(body)
        return [item for item in BY_LEVEL.values() if item["ID"] in request.get("Resources", [])]
    if path == "/jobs":
        return [JOB] if expand else [J]
    if path == f"/jobs/{J}":
        return JOB
    if path == "/modalities":
        return {"m": MODALITY} if expand else ["m"]
    if path == "/modalities/m/configuration":
        return MODALITY
    if len(parts) == 1 and parts[0] in BY_LEVEL:
        item = BY_LEVEL[parts[0]]
        return [item] if expand else [item["ID"]]
    if len(parts) >= 2 and parts[0] in BY_LEVEL and parts[1] == BY_LEVEL[parts[0]]["ID"]:
        item = BY_LEVEL[parts[0]]
        rest = parts[2:]
        if not rest:
            return item
        if rest == ["statistics"]:
            return {
                "CountInstances": 1,
                "DiskSize": "1000",
                "DiskSizeMB": 0,
                "UncompressedSize": "1000",
                "UncompressedSizeMB": 0,
            }
        if rest == ["metadata"]:
            return {"RemoteAET": "X", "kk": "v"} if expand else ["RemoteAET", "kk"]
        if rest == ["labels"]:
            return ["a"]
        if rest == ["attachments"]:
            return ["dicom"] if parts[0] == "instances" else []
        if rest in (["tags"],):
            return {"0010,0010": {"Name": "PatientName", "Type": "String", "Value": "A^B"}}
        if rest == ["studies"]:
            return [STUDY]
        if rest == ["series"]:
            return [SERIES]
        if rest == ["instances"]:
            return [INSTANCE]
        if rest in (["patient"],):
            return PATIENT
        if rest in (["study"],):
            return STUDY
    return MISSING


class Fake:
    """The fake Orthanc: :func:`good` answers, except ``corrupt = (path, answer)``."""

    def __init__(self) -> None:
        self.corrupt: tuple[str, Any] | None = None
        self.seen: list[str] = []
        self.missing: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.seen.append(f"{self.command} {url.path}")
                if fake.corrupt is not None and url.path == fake.corrupt[0]:
                    data = fake.corrupt[1]
                else:
                    data = good(self.command, url.path, url.query, body)
                if data is MISSING:
                    fake.missing.append(f"{self.command} {self.path}")
                    status, out = "404 Not Found", b'{"HttpStatus": 404}'
                else:
                    status, out = "200 OK", b"" if data is None else json.dumps(data).encode()
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(out)}\r\n\r\n"
                )
                self.wfile.write(head.encode() + out)  # one write: no delayed-ACK stall

            do_GET = do_POST = do_PUT = do_DELETE = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def wrong_shapes(value: Any) -> list[Any]:
    """Answers of the wrong shape for an answer like ``value``: other JSON kinds, then
    :func:`wrong_insides`."""
    kinds = [v for v in ([], {}, "text", 7, None, True) if type(v) is not type(value)]
    return kinds + wrong_insides(value)


def wrong_insides(value: Any) -> list[Any]:
    """``value`` of the right kind with something inside of the wrong kind: each field of an
    object given another kind (and, for a field holding an object or list, each wrong inside
    of it), a list's items replaced by items of other kinds, its first object item likewise."""
    other = {str: 7, int: "x", float: "x", bool: "x", list: {"a": 1}, dict: [1], type(None): [1]}
    out: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append({**value, key: other[type(item)]})
            if isinstance(item, (dict, list)) and item:
                out += [{**value, key: inner} for inner in wrong_insides(item)]
    elif isinstance(value, list) and value:
        out += [[7], ["x"], [[]], [None]]
        if isinstance(value[0], dict):
            out += [[changed] for changed in wrong_insides(value[0])]
    return out


#: every call that reads answers: on a client of the fake, in a temporary folder
CALLS: dict[str, Callable[[Orthanc, Any], object]] = {
    "system": lambda c, tmp: c.system,
    "statistics": lambda c, tmp: c.statistics(),
    "patients": lambda c, tmp: c.patients(),
    "studies": lambda c, tmp: c.studies(),
    "all series": lambda c, tmp: c.series(),
    "instances": lambda c, tmp: c.instances(),
    "patient": lambda c, tmp: c.patient(P),
    "study": lambda c, tmp: c.study(S),
    "series": lambda c, tmp: c.series(R),
    "instance": lambda c, tmp: c.instance(INST),
    "lookup": lambda c, tmp: c.lookup("KK-1"),
    "find": lambda c, tmp: c.find("study", PatientID="KK-1"),
    "find by label": lambda c, tmp: c.find("study", labels=["a"]),
    "labels": lambda c, tmp: c.labels(),
    "jobs": lambda c, tmp: c.jobs(),
    "job": lambda c, tmp: c.job(J),
    "modalities": lambda c, tmp: c.modalities(),
    "modality": lambda c, tmp: c.modality("m"),
    "last change": lambda c, tmp: c.last_change(),
    "changes": lambda c, tmp: c.changes(),
    "get many": lambda c, tmp: c.get_many([P, S]),
    "walk down": lambda c, tmp: [
        i for p in c.patients() for s in p.studies for r in s.series for i in r.instances
    ],
    "walk up": lambda c, tmp: c.instance(INST).patient,
    "resource statistics": lambda c, tmp: c.patient(P).statistics(),
    "metadata": lambda c, tmp: c.patient(P).metadata(),
    "resource labels": lambda c, tmp: c.patient(P).labels,
    "attachments": lambda c, tmp: c.instance(INST).attachments(),
    "tags": lambda c, tmp: c.instance(INST).tags(),
    "forest": lambda c, tmp: load_forest(c),
    "forest update": lambda c, tmp: load_forest(c).update(),
    "forest labels": lambda c, tmp: load_forest(c).update(labels=True),
    "compact forest": lambda c, tmp: list(load_compact_forest(c).instances),
    "stored forest": lambda c, tmp: open_forest(c, tmp / "forest.db").close(),
}


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    server = Fake()
    yield server
    server.server.shutdown()
    server.server.server_close()


def run(
    fake: Fake, name: str, tmp: Any, corrupt: tuple[str, Any] | None = None
) -> Exception | None:
    fake.corrupt = corrupt
    for old in tmp.iterdir():
        old.unlink()
    client = Orthanc(fake.url, auth=("kk", "pw"), retries=0)
    try:
        CALLS[name](client, tmp)
    except Exception as exc:  # what the call raised is the test's subject
        return exc
    finally:
        client.close()
    return None


@pytest.mark.parametrize("name", list(CALLS))
def test_a_wrongly_shaped_answer_is_one_error_naming_its_request(
    fake: Fake, name: str, tmp_path: Any
) -> None:
    fake.seen.clear()
    fake.missing.clear()
    assert run(fake, name, tmp_path) is None  # the good answers are read
    assert fake.missing == []
    requests = sorted(set(fake.seen))
    refused = 0
    for request in requests:
        method, path = request.split(" ", 1)
        body = json.dumps({"Level": "Study", "Expand": True, "Resources": [P, S]}).encode()
        for shape in wrong_shapes(good(method, path, "expand", body)):
            error = run(fake, name, tmp_path, (path, shape))
            if error is None:
                continue  # a shape the call can read (an empty list, a missing optional field)
            shown = f"{type(error).__name__}: {error}"
            assert isinstance(error, OrthancError), f"{request} answering {shape!r}: {shown}"
            assert path in str(error), f"{request} answering {shape!r}: {shown}"
            if isinstance(error, ValidationFailed):
                assert error.request is not None and path in error.request
            refused += 1
    assert refused  # wrong shapes are found out, not taken in
