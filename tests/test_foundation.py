"""Transport, errors, capability gates and the sandbox, against a real (or replayed) Orthanc."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import kkorthanc
from kkorthanc import (
    BadRequest,
    NotFound,
    Orthanc,
    OrthancConnectionError,
    Unauthorized,
    UnsupportedByServer,
)
from kkorthanc._transport import split_credentials
from kkorthanc.sandbox import PASSWORD_PREFIX, Sandbox, SandboxError, free_port

from ._proxy import FaultyProxy
from .conftest import CASSETTES, Servers


def test_system_info_is_typed_and_fetched_once(client: Orthanc) -> None:
    before = client.request_count
    info = client.system
    assert info.version.startswith("1.")
    assert info.api_version >= 16
    assert info.dicom_aet
    assert isinstance(info.dicom_port, int)
    assert client.system is info
    assert client.request_count - before == 1


def test_gate_refuses_fields_an_old_server_ignores(client: Orthanc) -> None:
    if client.system.api_version >= 20:
        pytest.skip("the server supports labels")
    with pytest.raises(UnsupportedByServer) as caught:
        client.require("Labels")
    assert "1.12.0" in str(caught.value)
    assert client.system.version in str(caught.value)
    assert not client.supports("RequestedTags")
    assert client.supports("numpy")
    with pytest.raises(KeyError):
        client.require("NoSuchFeature")


def test_non_dicom_upload_is_bad_request_with_details(client: Orthanc) -> None:
    with pytest.raises(BadRequest) as caught:
        client._transport.request("POST", "/instances", data=b"not dicom")
    error = caught.value
    assert error.status == 400
    assert error.method == "POST"
    assert error.details is not None and "DICOM" in error.details
    assert str(error).startswith("POST /instances: 400")


def test_unknown_id_is_not_found(client: Orthanc) -> None:
    with pytest.raises(NotFound) as caught:
        client.patient("0000000-unknown")
    assert caught.value.status == 404
    assert str(caught.value).startswith("GET /patients/0000000-unknown: 404")
    assert isinstance(caught.value, kkorthanc.OrthancError)


def test_wrong_password_is_unauthorized_without_the_password(client: Orthanc) -> None:
    secret = "wrong-" + "password-123"
    with Orthanc(client.url, auth=("kk", secret)) as intruder:
        with pytest.raises(Unauthorized) as caught:
            intruder.patients()
    error = caught.value
    assert error.status == 401
    for text in (str(error), repr(error), repr(intruder), error.url):
        assert secret not in text


def test_credentials_in_url_are_moved_out_of_it() -> None:
    clean, auth = split_credentials("http://user:s3cret@127.0.0.1:8042/")
    assert clean == "http://127.0.0.1:8042"
    assert auth == ("user", "s3cret")
    client = Orthanc("http://user:s3cret@127.0.0.1:8042")
    assert "s3cret" not in repr(client) and "s3cret" not in client.url


def test_environment_supplies_url_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORTHANC_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("ORTHANC_USERNAME", "alice")
    monkeypatch.setenv("ORTHANC_PASSWORD", "pw-from-env")
    client = Orthanc()
    assert client.url == "http://127.0.0.1:9999"
    assert client.username == "alice"
    assert "pw-from-env" not in repr(client)


def test_bad_url_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Orthanc("ftp://example")


def test_closed_port_fails_fast_with_connection_error() -> None:
    port = free_port()
    client = Orthanc(f"http://127.0.0.1:{port}", auth=("kk", "pw"))
    start = time.monotonic()
    with pytest.raises(OrthancConnectionError) as caught:
        client.system  # noqa: B018
    elapsed = time.monotonic() - start
    assert elapsed < 5
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert client.request_count == 4  # the first try and three retries: never sent, safe


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="apt-get install -y orthanc"):
        Sandbox(binary=str(tmp_path / "no-orthanc")).start()


def test_cassettes_hold_no_credentials() -> None:
    files = list(CASSETTES.rglob("*.yaml"))
    assert files, "no cassettes recorded"
    for path in files:
        text = path.read_text(errors="replace")
        assert PASSWORD_PREFIX not in text, path
        assert "authorization" not in text.lower(), path
        assert not re.search(r"(Basic|Bearer) [A-Za-z0-9+/=._-]{8,}", text), path


@pytest.mark.live_only
def test_dropped_connection_and_503_are_retried(servers: Servers) -> None:
    target = servers.new()
    sandbox = servers.sandbox_of(target)
    with FaultyProxy(sandbox.http_port, ["drop", "503"]) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=3, timeout=(2, 10)) as client:
            assert client.system.version
            assert proxy.applied[:2] == ["drop", "503"]
            assert client.request_count == 3


@pytest.mark.live_only
def test_upload_retried_after_lost_answer_is_stored_once(servers: Servers) -> None:
    from kkorthanc import synthetic

    target = servers.new()
    sandbox = servers.sandbox_of(target)
    _, body = next(synthetic.generate_bytes(synthetic.SAMPLE))
    with FaultyProxy(sandbox.http_port, ["swallow"]) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=2, timeout=(2, 10)) as client:
            response = client._transport.request("POST", "/instances", data=body)
            answer = response.json()
    assert proxy.applied[0] == "swallow"
    # the first POST reached the server; the retry found the instance there already
    assert answer["Status"] == "AlreadyStored"
    assert target.statistics()["CountInstances"] == 1


@pytest.mark.live_only
def test_non_repeatable_post_is_not_retried(servers: Servers) -> None:
    target = servers.new()
    sandbox = servers.sandbox_of(target)
    with FaultyProxy(sandbox.http_port, ["swallow"]) as proxy:
        with Orthanc(proxy.url, auth=sandbox.auth, retries=3, timeout=(2, 10)) as client:
            with pytest.raises(OrthancConnectionError):
                client._transport.post_json("/tools/find", {"Level": "Patient", "Query": {}})
            assert client.request_count == 1


@pytest.mark.live_only
def test_sandbox_stops_by_pid_and_removes_its_folder() -> None:
    sandbox = Sandbox(name="kk-lifecycle")
    with sandbox:
        folder = sandbox.folder
        assert folder is not None and folder.exists()
        assert sandbox.running
        assert sandbox.password not in repr(sandbox)
    assert not sandbox.running
    assert not folder.exists()
