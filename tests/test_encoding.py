"""Which answer encoding the client asks for: identity by default, gzip when told to.

Identity is the default because decoding gzip cost a forest build about a fifth of its time
on loopback (``docs/forest.md``, "Build cost"); ``compress=True`` is for slow links. Each test
talks to a loopback server of its own that records the requests it gets.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from kkorthanc import Orthanc
from kkorthanc._transport import Transport

from .test_hostile import FakeServer, reply

pytestmark = pytest.mark.no_cassette

PAGE = [{"ID": f"id-{n}", "Type": "Patient", "MainDicomTags": {"PatientID": str(n)}}
        for n in range(3)]


def header(request: bytes, name: str) -> str | None:
    """The value of header ``name`` in a raw request, ``None`` when it is absent."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def json_answer(compress_when_asked: bool = True) -> Any:
    """Answers a JSON page, gzipped when the request accepts gzip (as Orthanc does with
    ``HttpCompressionEnabled``)."""

    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        body = json.dumps(PAGE).encode()
        accepted = header(request, "Accept-Encoding") or ""
        if compress_when_asked and "gzip" in accepted:
            conn.sendall(reply(gzip.compress(body), headers=["Content-Encoding: gzip",
                                                          "Content-Type: application/json"]))
        else:
            conn.sendall(reply(body, headers=["Content-Type: application/json"]))

    return answer


def test_a_client_asks_for_identity_by_default() -> None:
    with FakeServer(json_answer()) as server, Orthanc(server.url, auth=("kk", "pw")) as client:
        assert client.get_json("/patients") == PAGE
        pages = list(client._transport.iter_pages("/patients", page_size=10))
        assert pages == [PAGE]
    assert len(server.requests) == 2
    assert [header(r, "Accept-Encoding") for r in server.requests] == ["identity"] * 2


def test_a_forest_listing_is_asked_for_as_identity() -> None:
    with FakeServer(json_answer()) as server:
        transport = Transport(server.url, auth=("kk", "pw"))
        try:
            listed = list(transport.iter_listings(["/patients", "/studies"], page_size=10,
                                                  prefetch=True))
        finally:
            transport.close()
    assert [path for path, _ in listed] == ["/patients", "/studies"]
    assert len(server.requests) == 2
    assert {header(r, "Accept-Encoding") for r in server.requests} == {"identity"}


def test_compress_asks_for_gzip_and_decodes_it() -> None:
    with FakeServer(json_answer()) as server, Orthanc(
        server.url, auth=("kk", "pw"), compress=True
    ) as client:
        assert client.get_json("/patients") == PAGE
    assert len(server.requests) == 1
    assert header(server.requests[0], "Accept-Encoding") == "gzip, deflate"


def test_a_gzip_answer_not_asked_for_is_still_decoded() -> None:
    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        body = gzip.compress(json.dumps(PAGE).encode())
        conn.sendall(reply(body, headers=["Content-Encoding: gzip"]))

    with FakeServer(answer) as server, Orthanc(server.url, auth=("kk", "pw")) as client:
        assert client.get_json("/patients") == PAGE
    assert header(server.requests[0], "Accept-Encoding") == "identity"


def test_the_transport_says_what_it_asks_for() -> None:
    plain = Transport("http://127.0.0.1:1")
    packed = Transport("http://127.0.0.1:1", compress=True)
    try:
        assert (plain.compress, packed.compress) == (False, True)
        assert plain.session.headers["Accept-Encoding"] == "identity"
        assert packed.session.headers["Accept-Encoding"] == "gzip, deflate"
    finally:
        plain.close()
        packed.close()
