"""The transport against servers that misbehave, and credentials that cannot be sent.

Each test talks to a server of its own on loopback (a thread with a socket, bounded in time
and in connections) or to one through the misbehaving proxy of ``_proxy``; only the UTF-8
password test needs a real Orthanc.
"""

from __future__ import annotations

import base64
import io
import shutil
import ssl
import subprocess
import threading
import time
import traceback
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kkorthanc import (
    InvalidRequest,
    NotFound,
    Orthanc,
    OrthancConnectionError,
    OrthancTimeout,
    ServerError,
    synthetic,
)
from kkorthanc._transport import Transport, split_credentials
from kkorthanc.sandbox import Sandbox, free_port

from ._proxy import FaultyProxy, read_message

pytestmark = pytest.mark.no_cassette

#: what a call may take beyond its limit on a busy machine
MARGIN = 0.7

Answer = Callable[["FakeServer", Any, bytes], None]


def reply(
    body: bytes = b"{}", status: str = "200 OK", headers: Iterable[str] = ()
) -> bytes:
    """A complete HTTP answer that closes its connection."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [*headers, "", ""]
    return "\r\n".join(head).encode() + body


def path_of(request: bytes) -> str:
    return request.split(b" ", 2)[1].decode()


def header_of(request: bytes, name: str) -> bytes | None:
    for line in request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip()
    return None


class FakeServer:
    """A loopback HTTP server of the test's own: ``answer(server, conn, request)`` answers
    each connection's first request. At most ``limit`` connections; every socket times out
    after 10 s; answers that go on (trickles) stop when the ``with`` block ends."""

    def __init__(
        self, answer: Answer, *, limit: int = 16, tls: ssl.SSLContext | None = None
    ) -> None:
        import socket

        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self._limit = limit
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        served = 0
        while not self.stopped.is_set() and served < self._limit:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            served += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: Any) -> None:
        with conn:
            conn.settimeout(10)
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                request = read_message(conn)
                if request:
                    self.requests.append(request)
                    self.answer(self, conn, request)
            except OSError:
                pass

    def trickle(self, conn: Any, data: bytes, every: float = 0.1) -> None:
        """Send ``data`` one byte every ``every`` seconds, until done or stopped."""
        for index in range(len(data)):
            if self.stopped.wait(every):
                return
            conn.sendall(data[index : index + 1])

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.sock.close()


def answering(data: bytes) -> Answer:
    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        conn.sendall(data)

    return answer


def transport_for(url: str, **options: Any) -> Transport:
    settings: dict[str, Any] = {"auth": ("kk", "pw"), "timeout": (1.0, 1.0), "backoff": 0.05}
    return Transport(url, **{**settings, **options})


def collected(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


# -- 1. deadlines -----------------------------------------------------------------------------


def trickled_headers(server: FakeServer, conn: Any, request: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
    server.trickle(conn, b"a" * 50)  # 5 s at most: the read timeout (1 s) never passes


def trickled_body(server: FakeServer, conn: Any, request: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n")
    server.trickle(conn, b"a" * 50)


CALLS: dict[str, Callable[[Transport], object]] = {
    "request": lambda transport: transport.request("GET", "/system"),
    "channel": lambda transport: transport.channel().send(
        "POST", "/instances", b"DICM", content_type="application/dicom"
    ),
    "download": lambda transport: transport.download("GET", "/system", collected),
    # a file sent as it is read (an upload of a large file): 4 bytes after 2 skipped
    "channel-file": lambda transport: transport.channel().send(
        "POST", "/instances", opened_at(b"--DICM", 2), content_type="application/dicom"
    ),
}


def opened_at(data: bytes, position: int) -> io.BufferedReader:
    """A binary file of ``data`` (on disk, as uploads send them), at ``position``."""
    import tempfile

    stream = tempfile.TemporaryFile()  # noqa: SIM115 - the caller sends it, the collector closes it
    stream.write(data)
    stream.seek(position)
    return stream  # type: ignore[return-value]


def body_of(request: bytes) -> bytes:
    return request.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", sorted(CALLS))
def test_a_header_trickle_ends_at_the_call_deadline(path: str) -> None:
    with FakeServer(trickled_headers) as server:
        transport = transport_for(server.url, deadline=1.5, retries=2)
        start = time.monotonic()
        with pytest.raises(OrthancTimeout) as caught:
            CALLS[path](transport)
        elapsed = time.monotonic() - start
    assert 1.4 < elapsed < 1.5 + MARGIN, elapsed
    message = str(caught.value)
    assert "1.5 s" in message and "headers" in message, message
    assert transport.request_count == 1  # no attempt is started once the deadline passed


@pytest.mark.parametrize("path", ["request", "channel"])
def test_a_body_trickle_ends_at_the_call_deadline(path: str) -> None:
    with FakeServer(trickled_body) as server:
        transport = transport_for(server.url, deadline=1.5, retries=2)
        start = time.monotonic()
        with pytest.raises(OrthancTimeout) as caught:
            CALLS[path](transport)
        elapsed = time.monotonic() - start
    assert 1.4 < elapsed < 1.5 + MARGIN, elapsed
    assert "the deadline of 1.5 s for the whole call" in str(caught.value)
    assert "body" in str(caught.value)


def test_the_client_passes_its_deadline_and_answer_limit_to_every_call() -> None:
    with FakeServer(trickled_body) as server:
        client = Orthanc(server.url, auth=("kk", "pw"), timeout=(1.0, 1.0), deadline=1.0)
        start = time.monotonic()
        with pytest.raises(OrthancTimeout, match="the deadline of 1 s"):
            client.system  # noqa: B018 - the request is the point
        assert time.monotonic() - start < 1.0 + MARGIN
    with FakeServer(trickled_body) as server:
        client = Orthanc(server.url, auth=("kk", "pw"), max_answer_bytes=10)
        with pytest.raises(OrthancConnectionError, match="max_answer_bytes"):
            client.system  # noqa: B018


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    names = "subjectAltName=IP:127.0.0.1"
    subprocess.run(
        ["openssl", *request.split(), "-keyout", str(key), "-out", str(cert), "-addext", names],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_a_header_trickle_over_tls_ends_at_the_call_deadline(
    certificate: tuple[Path, Path],
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    with FakeServer(trickled_headers, tls=context) as server:
        transport = transport_for(server.url, deadline=1.5, verify=str(certificate[0]))
        start = time.monotonic()
        with pytest.raises(OrthancTimeout, match=r"1\.5 s for the whole call"):
            transport.channel().send("POST", "/instances", b"DICM", content_type="x")
        elapsed = time.monotonic() - start
    assert 1.4 < elapsed < 1.5 + MARGIN, elapsed
    assert transport.request_count == 1


def test_a_download_that_stalls_ends_at_its_stall_limit() -> None:
    with FakeServer(trickled_body) as server:
        transport = transport_for(server.url, deadline=30, retries=2)
        start = time.monotonic()
        with pytest.raises(OrthancTimeout, match=r"stall limit \(64 KiB within 1 s\)"):
            transport.download("GET", "/instances/x/file", collected)
        elapsed = time.monotonic() - start
    assert elapsed < 1.0 + MARGIN, elapsed
    assert transport.request_count == 1  # a stall is not retried


def test_a_download_that_flows_is_not_cut_by_the_deadline() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 20

    def flowing(server: FakeServer, conn: Any, request: bytes) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {count * len(piece)}\r\n\r\n"
        conn.sendall(head.encode())
        for _ in range(count):
            if server.stopped.wait(0.1):
                return
            conn.sendall(piece)

    with FakeServer(flowing) as server:
        transport = transport_for(server.url, deadline=0.5)
        start = time.monotonic()
        body = transport.download("GET", "/studies/x/archive", collected)
        elapsed = time.monotonic() - start
    assert body == piece * count
    assert elapsed > 1.5  # three times the call deadline, and never stalled for 1 s


def test_retries_end_by_the_deadline() -> None:
    busy = reply(b"", "503 Service Unavailable", ["Retry-After: 2"])
    with FakeServer(answering(busy)) as server:
        transport = transport_for(server.url, deadline=1.0, retries=3)
        start = time.monotonic()
        with pytest.raises(ServerError):
            transport.request("GET", "/system")
        elapsed = time.monotonic() - start
    assert elapsed < 1.0, elapsed  # a retry 2 s later could not end by the deadline
    assert transport.request_count == 1


def test_the_default_deadline_covers_the_timeouts() -> None:
    assert Transport("http://127.0.0.1:1").deadline == 125.0  # (5, 120)
    assert Transport("http://127.0.0.1:1", timeout=(3, 5)).deadline == 30.0
    assert Transport("http://127.0.0.1:1", deadline=2).deadline == 2.0


# -- 2. credentials -----------------------------------------------------------------------------


SECRET = "s3cr3t-value"

CONTROL = "contains a control character"
BAD_CREDENTIALS: list[tuple[str, dict[str, Any], str]] = [
    ("token-newline", {"token": SECRET + "\n"}, f"the bearer token {CONTROL} (LF)"),
    ("token-space", {"token": "Bearer " + SECRET}, "the bearer token contains a space"),
    ("token-unicode", {"token": SECRET + "é"}, "the bearer token contains a character that"),
    ("token-empty", {"token": ""}, "the bearer token is empty"),
    ("password-cr", {"auth": ("kk", SECRET + "\r")}, f"the password {CONTROL} (CR)"),
    ("password-nul", {"auth": ("kk", "\x00" + SECRET)}, f"the password {CONTROL} (NUL)"),
    ("password-c1", {"auth": ("kk", SECRET + "\x85")}, f"the password {CONTROL} (U+0085)"),
    ("password-surrogate", {"auth": ("kk", SECRET + "\udcff")}, "the password is not valid"),
    ("password-type", {"auth": ("kk", 1234)}, "the password must be a string, not int"),
    ("user-colon", {"auth": (SECRET + ":x", "pw")}, "the user name contains ':'"),
    ("user-lf", {"auth": (SECRET + "\n", "pw")}, f"the user name {CONTROL} (LF)"),
    ("auth-shape", {"auth": (SECRET,)}, "auth must be a (user, password) pair"),
    ("url-lf", {"url": f"http://kk:{SECRET}%0A@127.0.0.1:1"}, f"the password {CONTROL}"),
    ("url-utf8", {"url": f"http://kk:{SECRET}%FF@127.0.0.1:1"}, "the password in the URL"),
    ("url-user", {"url": f"http://{SECRET}%0D:pw@127.0.0.1:1"}, f"the user name {CONTROL}"),
]


@pytest.mark.parametrize(
    ("options", "reason"),
    [case[1:] for case in BAD_CREDENTIALS],
    ids=[case[0] for case in BAD_CREDENTIALS],
)
def test_credentials_that_cannot_be_sent_are_refused_without_showing_them(
    options: dict[str, Any], reason: str
) -> None:
    url = options.pop("url", "http://127.0.0.1:1")
    with pytest.raises(InvalidRequest) as caught:
        Transport(url, **options)
    error = caught.value
    assert reason in str(error)
    shown = "".join(traceback.format_exception(error)) + str(error) + repr(error)
    assert SECRET not in shown
    assert "s3cr3t" not in shown


def closing(server: FakeServer, conn: Any, request: bytes) -> None:
    """Read the request and close without an answer."""


@pytest.mark.parametrize(
    "credentials",
    [{"auth": ("kk", SECRET)}, {"auth": None, "token": SECRET}],
    ids=["basic", "token"],
)
def test_a_traceback_with_every_frames_locals_does_not_show_the_credentials(
    credentials: dict[str, Any],
) -> None:
    # pytest prints each frame's arguments, the HTTP layer's header dictionary among them
    with FakeServer(closing) as server:
        transport = transport_for(server.url, **credentials)
        with pytest.raises(OrthancConnectionError, match="broke after the request") as pooled:
            transport.request("POST", "/studies/x/anonymize", json_body={})
        with transport.channel() as channel, pytest.raises(OrthancConnectionError) as upload:
            channel.send("POST", "/instances", b"DICM", content_type="application/dicom")
    sent = [header_of(request, "Authorization") for request in server.requests]
    expected = {basic("kk", SECRET), f"Bearer {SECRET}".encode()}
    assert sent and all(header in expected for header in sent)  # the real value is sent
    encoded = base64.b64encode(f"kk:{SECRET}".encode()).decode()
    for error in (pooled.value, upload.value):
        assert error.__traceback__ is not None  # its first frame is this test's own
        error.with_traceback(error.__traceback__.tb_next)
        trace = traceback.TracebackException.from_exception(error, capture_locals=True)
        shown = "".join(trace.format())
        assert "'Authorization': '<hidden>'" in shown  # the header's frames are there
        assert SECRET not in shown and encoded not in shown


def test_a_bad_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError, match="not an http") as caught:
        Transport(f"kk:{SECRET}@localhost")
    assert SECRET not in str(caught.value)


# -- 3. one encoding for basic credentials -----------------------------------------------------


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize("password", ["pässwörd", "€uro"])
def test_basic_credentials_are_utf8_on_every_path(password: str) -> None:
    with FakeServer(answering(reply())) as server:
        transport = transport_for(server.url, auth=("kk", password))
        transport.request("GET", "/system")
        with transport.channel() as channel:
            channel.send("POST", "/instances", b"DICM", content_type="application/dicom")
        transport.download("GET", "/instances/x/file", collected)
    sent = [header_of(request, "Authorization") for request in server.requests]
    assert sent == [basic("kk", password)] * 3


def test_percent_encoded_url_credentials_are_decoded() -> None:
    clean, auth = split_credentials("http://us%40er:p%C3%A4ss%3Aw%2Fd@127.0.0.1:8042/")
    assert clean == "http://127.0.0.1:8042"
    assert auth == ("us@er", "päss:w/d")
    with FakeServer(answering(reply())) as server:
        url = server.url.replace("http://", "http://kk:p%C3%A4ss@")
        transport_for(url, auth=None).request("GET", "/system")
    assert header_of(server.requests[0], "Authorization") == basic("kk", "päss")


@pytest.mark.live_only
@pytest.mark.parametrize("password", ["pässwörd", "€uro"])
def test_a_utf8_password_is_accepted_by_orthanc_on_every_path(password: str) -> None:
    (_, dicom), = synthetic.generate_bytes(synthetic.SyntheticSpec(1, 1, 1, 1, seed=41))
    with Sandbox(name="kk-utf8", password=password) as sandbox:
        transport = Transport(sandbox.url, auth=sandbox.auth)
        assert transport.request("GET", "/system").json()["Version"]
        with transport.channel() as channel:
            answer = channel.send("POST", "/instances", dicom, content_type="application/dicom")
        assert b'"Success"' in answer
        quoted = password.encode().hex("%").upper()
        from_url = Transport(sandbox.url.replace("http://", f"http://kk:%{quoted}@"))
        assert from_url.request("GET", "/statistics").json()["CountInstances"] == 1


# -- 4. answer limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """gzip of gzip of 100 MiB of zeros: a few hundred bytes."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    once = b"".join([inner.compress(zeros) for _ in range(100)] + [inner.flush()])
    outer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return outer.compress(once) + outer.flush()


def peak_memory(call: Callable[[], object]) -> tuple[BaseException | None, int]:
    """What ``call`` raised, and the peak of memory allocated meanwhile."""
    error: BaseException | None = None
    tracemalloc.start()
    try:
        call()
    except Exception as exc:  # returned for the test to look at
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def test_a_gzip_bomb_is_cut_at_the_answer_limit(gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 2048
    answer = reply(gzip_bomb, headers=["Content-Encoding: gzip, gzip"])
    with FakeServer(answering(answer)) as server:
        transport = transport_for(server.url, max_answer_bytes=8 << 20)
        error, peak = peak_memory(lambda: transport.request("GET", "/patients"))
    assert isinstance(error, OrthancConnectionError), error
    assert "GET /patients" in str(error) and str(8 << 20) in str(error)
    assert peak < 64 << 20, peak


def endless_chunks(server: FakeServer, conn: Any, request: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    for _ in range(1024):  # 64 MiB at most
        if server.stopped.is_set():
            return
        conn.sendall(chunk)
    conn.sendall(b"0\r\n\r\n")


@pytest.mark.parametrize("path", ["request", "channel"])
def test_an_oversized_answer_is_cut_while_it_is_read(path: str) -> None:
    with FakeServer(endless_chunks) as server:
        transport = transport_for(server.url, max_answer_bytes=4 << 20)
        error, peak = peak_memory(lambda: CALLS[path](transport))
    assert isinstance(error, OrthancConnectionError), error
    assert "the limit of 4194304 bytes" in str(error) and "max_answer_bytes" in str(error)
    assert peak < 64 << 20, peak


def test_an_announced_oversized_answer_is_refused_before_it_is_read() -> None:
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + b"x" * 1000
    with FakeServer(answering(huge)) as server:
        transport = transport_for(server.url)
        with pytest.raises(OrthancConnectionError, match="Content-Length 1000000000000"):
            transport.request("GET", "/patients")


# -- 5. malformed answers -----------------------------------------------------------------------


def test_answers_that_are_not_json_name_the_request() -> None:
    answers = {
        "/deep": reply(b"[" * 100_000),
        "/patients": reply(b"<html>busy</html>", headers=["Content-Type: text/html"]),
        "/series": reply(b'{"not": "a list"}'),
        "/missing": reply(b"[" * 100_000, "404 Not Found"),
    }

    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        conn.sendall(answers[path_of(request).partition("?")[0]])

    with FakeServer(answer) as server:
        transport = transport_for(server.url)
        with pytest.raises(OrthancConnectionError, match="GET /deep: the server's answer is not"):
            transport.request("GET", "/deep").json()
        with pytest.raises(OrthancConnectionError, match=r"GET /patients: .*not JSON \(text/html"):
            list(transport.iter_pages("/patients"))
        shape = "GET /series: expected a JSON list, got a JSON object"
        with pytest.raises(OrthancConnectionError, match=shape):
            list(transport.iter_pages("/series"))
        with pytest.raises(NotFound, match="GET /missing: 404"):
            transport.request("GET", "/missing")


# -- 6. redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("request", "302 Found"),
        ("channel", "307 Temporary Redirect"),
        ("channel-file", "307 Temporary Redirect"),
    ],
)
def test_a_redirect_to_another_origin_is_refused(path: str, status: str) -> None:
    with FakeServer(answering(reply())) as elsewhere:
        moved = reply(b"", status, [f"Location: {elsewhere.url}/system"])
        with FakeServer(answering(moved)) as server:
            transport = transport_for(server.url)
            with pytest.raises(OrthancConnectionError) as caught:
                CALLS[path](transport)
    message = str(caught.value)
    assert f"redirected ({status[:3]}) to {elsewhere.url}/system" in message
    assert "refused: another origin" in message
    assert elsewhere.requests == []  # neither the body nor the credentials went there
    assert transport.request_count == 1


@pytest.mark.parametrize("path", ["request", "channel", "channel-file"])
def test_a_same_origin_redirect_is_followed_and_counted(path: str) -> None:
    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        if path_of(request) in ("/system", "/instances"):
            conn.sendall(reply(b"", "307 Temporary Redirect", ["Location: /moved?x=1"]))
        else:
            conn.sendall(reply(b'{"Status": "Success"}'))

    with FakeServer(answer) as server:
        transport = transport_for(server.url)
        CALLS[path](transport)
    assert [path_of(request) for request in server.requests][1] == "/moved?x=1"
    assert header_of(server.requests[1], "Authorization") == basic("kk", "pw")
    assert transport.request_count == 2
    if path.startswith("channel"):  # the body again, whole, from where the file stood
        assert [body_of(request) for request in server.requests] == [b"DICM", b"DICM"]
        assert [header_of(r, "Content-Length") for r in server.requests] == [b"4", b"4"]


@pytest.mark.parametrize("path", ["request", "channel"])
def test_a_relative_redirect_resolves_under_the_base_path(path: str) -> None:
    def answer(server: FakeServer, conn: Any, request: bytes) -> None:
        if path_of(request).endswith("/moved"):
            conn.sendall(reply(b'{"Status": "Success"}'))
        else:
            conn.sendall(reply(b"", "307 Temporary Redirect", ["Location: moved"]))

    with FakeServer(answer) as server:
        CALLS[path](transport_for(server.url + "/orthanc"))
    assert [path_of(request) for request in server.requests] == [
        "/orthanc/system" if path == "request" else "/orthanc/instances",
        "/orthanc/moved",
    ]


@pytest.mark.parametrize("path", ["request", "channel"])
def test_endless_redirects_are_refused(path: str) -> None:
    loop = reply(b"", "307 Temporary Redirect", ["Location: /again"])
    with FakeServer(answering(loop)) as server:
        transport = transport_for(server.url)
        with pytest.raises(OrthancConnectionError, match="more than 3 redirects"):
            CALLS[path](transport)
    assert transport.request_count == 4


REDIRECTS: list[tuple[str, str, int, str, str]] = [
    # base URL, method, status, Location, why it is refused ("" when followed)
    ("https://pacs:8443", "GET", 302, "http://pacs:8443/system", "a downgrade from https to http"),
    ("https://pacs", "GET", 301, "https://pacs:443/system", ""),
    ("http://pacs:8042", "GET", 302, "http://pacs:8043/system", "another origin"),
    ("http://pacs:8042", "GET", 302, "http://other:8042/system", "another origin"),
    ("http://pacs:8042", "POST", 302, "/x2", "a POST redirected with 302 would be sent again"),
    ("http://pacs:8042", "POST", 308, "/instances2", ""),
    ("http://pacs:8042", "GET", 304, "/system", "304 is not a redirect that can be followed"),
]


@pytest.mark.parametrize(("base", "method", "status", "location", "why"), REDIRECTS)
def test_which_redirects_are_followed(
    base: str, method: str, status: int, location: str, why: str
) -> None:
    from kkorthanc._limits import redirect_target

    def target() -> str:
        return redirect_target(method, "/x", base + "/x", status, location, base, 0)

    if not why:
        assert target().endswith(location.rpartition(":443")[2] or location)
        return
    with pytest.raises(OrthancConnectionError, match=f"refused: {why}"):
        target()


# -- 7. reached or not -------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer(answering(reply(b'{"Version": "1.10.1"}'))) as server:
        yield server


@pytest.mark.parametrize("path", ["request", "channel", "channel-file"])
@pytest.mark.parametrize(
    ("fault", "wording"),
    [
        ("swallow", "broke after the request was sent"),
        ("reset", "broke after the request was sent"),
        ("cut", "broke after the request was sent"),
        ("stall", "in time: the request was sent, and nothing came within the read timeout"),
    ],
)
def test_failures_say_the_server_was_reached(
    upstream: FakeServer, fault: str, wording: str, path: str
) -> None:
    with FaultyProxy(upstream.port, [fault]) as proxy:
        transport = transport_for(proxy.url, timeout=(1.0, 0.5), retries=0)
        with pytest.raises(OrthancConnectionError) as caught:
            CALLS[path](transport)
    message = str(caught.value)
    assert wording in message, message
    assert "cannot reach" not in message
    assert isinstance(caught.value, OrthancTimeout) == (fault == "stall")


@pytest.mark.parametrize("path", ["request", "channel"])
def test_a_refused_connection_says_cannot_reach(path: str) -> None:
    transport = transport_for(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(OrthancConnectionError, match=r"cannot reach http://127\.0\.0\.1") as caught:
        CALLS[path](transport)
    assert not isinstance(caught.value, OrthancTimeout)


# -- 8. file bodies ------------------------------------------------------------------------------


def test_a_file_body_is_sent_with_its_length_over_tls_too(
    certificate: tuple[Path, Path],
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    data = bytes(range(256)) * 4096  # 1 MiB
    answer = answering(reply(b'{"Status": "Success"}'))
    with FakeServer(answer, tls=context) as server:
        transport = transport_for(server.url, verify=str(certificate[0]))
        channel = transport.channel()
        channel.send("POST", "/instances", opened_at(data, 0), content_type="application/dicom")
    (request,) = server.requests
    assert header_of(request, "Content-Length") == str(len(data)).encode()
    assert header_of(request, "Transfer-Encoding") is None
    assert body_of(request) == data


def test_a_file_body_that_ends_early_is_refused_and_not_retried() -> None:
    answer = answering(reply(b'{"Status": "Success"}'))
    with FakeServer(answer) as server:
        transport = transport_for(server.url, retries=3)
        with pytest.raises(InvalidRequest, match="POST /instances: the body ended 6 bytes short"):
            transport.channel().send(
                "POST", "/instances", opened_at(b"DICM", 0), content_type="x", length=10
            )
    assert transport.request_count == 1
