"""Forest updates under faults and change: all or nothing when a late request fails, readers
consistent with a running update, a database replaced behind the same URL, labels kept true.

Faults come from a loopback proxy that fails chosen requests (by method and target) a given
number of times; its port is recorded as a canonical one, so the failures replay too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kkorthanc import Orthanc, OrthancError, synthetic
from kkorthanc.forest import PatientForest, load_forest, open_forest
from kkorthanc.models import LEVELS
from kkorthanc.sandbox import Sandbox

from ._proxy import read_message
from .conftest import PORT_MAP, Servers
from .test_forest import LONGER, upload, walk

_FAILURE = json.dumps(
    {"HttpError": "Internal Server Error", "HttpStatus": 500, "Message": "Injected fault"}
).encode()


class FailingProxy:
    """Forward HTTP requests one by one to ``upstream_port``; answer 500 instead to the
    requests named in ``failures`` (``"GET /statistics"``: method and exact target), as
    many times as given."""

    def __init__(self, upstream_port: int, failures: dict[str, int]) -> None:
        self.upstream_port = upstream_port
        self.failures = dict(failures)
        self.failed: list[str] = []
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port: int = self.server.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _fails(self, request: bytes) -> bool:
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        key = " ".join(line.split(" ")[:2])
        with self._lock:
            if self.failures.get(key, 0) > 0:
                self.failures[key] -= 1
                self.failed.append(key)
                return True
        return False

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while request := read_message(conn):
                if self._fails(request):
                    conn.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json"
                        b"\r\nContent-Length: " + str(len(_FAILURE)).encode() + b"\r\n"
                        b"Connection: close\r\n\r\n" + _FAILURE
                    )
                    return
                with socket.create_connection(("127.0.0.1", self.upstream_port), 30) as up:
                    up.sendall(request)
                    conn.sendall(read_message(up))

    def close(self) -> None:
        self.server.close()


def through_proxy(servers: Servers, client: Orthanc, failures: dict[str, int]) -> Orthanc:
    """A client of ``client``'s server through a :class:`FailingProxy` (live), or of the
    canonical port its requests were recorded under (replay)."""
    if servers.mode == "replay":
        return servers._canonical(None)
    sandbox = servers.sandbox_of(client)
    proxy = FailingProxy(sandbox.http_port, failures)
    servers.stack.callback(proxy.close)
    port = servers.next_port
    servers.next_port += 1
    PORT_MAP.ports[proxy.port] = port
    proxied = Orthanc(proxy.url, auth=sandbox.auth, retries=0)
    servers.stack.callback(proxied.close)
    return proxied


def settle_statistics(servers: Servers, client: Orthanc, *, instances: int) -> None:
    """Wait until ``/statistics`` counts ``instances`` (the PostgreSQL index updates its
    counts a little after the change)."""
    deadline = time.monotonic() + 30
    while client.get_json("/statistics")["CountInstances"] != instances:
        assert time.monotonic() < deadline, "the server's statistics never settled"
        if servers.mode != "replay":
            time.sleep(0.2)


def state_of(forest: PatientForest) -> tuple[Any, ...]:
    """Everything a rollback must restore: fields and links, listing order, indexes, seq."""
    state = forest._state
    order = tuple(tuple(state.tables[cls]) for cls in LEVELS)
    indexes = tuple(
        tuple(sorted((k, tuple(o.id for o in index.all(k))) for k in index.entries))
        for index in (*state.uids.values(), state.accession)
    )
    anchor = getattr(state, "anchor", None)
    return forest.snapshot(), order, indexes, forest.last_seq, forest._version, anchor


@pytest.mark.parametrize("failing", ["GET /statistics", "GET /instances"])
def test_an_update_whose_late_request_fails_changes_nothing_and_the_retry_reports_all(
    servers: Servers, failing: str
) -> None:
    direct = servers.new(sample=True, stable_age=3600)
    client = through_proxy(servers, direct, {failing: 1})
    forest = load_forest(client)
    series = forest.series(synthetic.uid("series", 0, 0, 0, 0))
    held_ids = series.instance_ids
    before = state_of(forest)

    # a new patient and an instance joining a series (in the feed, applied first), and a
    # deleted instance (not in the feed: the counts differ, GET /instances lists the IDs)
    new_ids = upload(direct, synthetic.SyntheticSpec(1, 1, 1, 2, seed=6))
    joined = upload(direct, LONGER, "P000/ST00/SE00/IM003")
    gone = forest.patient("KK-0-0003").studies[1].series[1].instance_ids[0]  # not reread
    direct.delete(f"/instances/{gone}")
    settle_statistics(servers, direct, instances=50)

    with pytest.raises(OrthancError, match="Injected fault"):
        forest.update()
    assert state_of(forest) == before  # exactly as before: nothing half-applied
    assert series.instance_ids == held_ids and len(series.instances) == 3
    assert all(forest.get(i) is None for i in (*new_ids, *joined))
    assert walk(forest) == 48

    report = forest.update()
    assert set(report.added.instances) == {*new_ids, *joined}
    assert len(report.added.patients) == 1
    assert report.removed.instances == (gone,)
    assert series.id in report.updated.series
    assert forest.snapshot() == load_forest(direct).snapshot()


@pytest.mark.parametrize("failing", ["GET /statistics", "GET /instances"])
def test_a_stored_forest_whose_update_fails_puts_back_the_models_it_handed_out(
    servers: Servers, tmp_path: Path, failing: str
) -> None:
    direct = servers.new(sample=True, stable_age=3600)
    client = through_proxy(servers, direct, {failing: 1})
    path = tmp_path / "f.forest"
    forest = open_forest(client, path)
    series = forest.series(synthetic.uid("series", 0, 0, 0, 0))
    study = series.study
    held = (series.instance_ids, series.last_update, study.last_update)
    seq = forest.last_seq
    joined = upload(direct, LONGER, "P000/ST00/SE00/IM003")
    gone = forest.patient("KK-0-0003").studies[1].series[1].instance_ids[:2]
    for instance_id in gone:  # not in the feed: the counts differ
        direct.delete(f"/instances/{instance_id}")
    settle_statistics(servers, direct, instances=47)

    with pytest.raises(OrthancError, match="Injected fault"):
        forest.update()
    assert (series.instance_ids, series.last_update, study.last_update) == held
    assert len(series.instances) == 3 and series.instances[0].series is series
    assert forest.last_seq == seq == forest.store_info.last_seq
    assert forest.get(joined[0]) is None and forest.get(gone[0]) is not None

    report = forest.update()
    assert report.added.instances == tuple(joined)
    assert set(report.removed.instances) == set(gone)
    assert forest.snapshot() == load_forest(direct).snapshot()
    forest.close()
    with open_forest(direct, path, update=False) as reopened:
        assert reopened.get(joined[0]) is not None and reopened.get(gone[0]) is None


def test_readers_wait_for_a_running_update_and_see_before_or_after(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client, depth="series")
    seen: set[Any] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                counts = forest.counts
                repr(forest)
                assert all(s.study is not None for s in forest.series)
                seen.add(counts)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    states = {forest.counts}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    try:
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 60
        for seed in range(6):  # each round: 8 new series of one instance, one new patient
            upload(client, synthetic.SyntheticSpec(1, 2, 4, 1, seed=20 + seed))
            report = forest.update()
            assert len(report.added.series) == 8
            states.add(forest.counts)
            assert time.monotonic() < deadline
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        for reader in readers:
            reader.join(timeout=10)
    assert errors == []
    assert seen <= states  # never a half-applied update
    assert forest.counts == (10, 20, 64, 96)


# -- a database replaced behind the same URL ------------------------------------------------------


def replace_database(servers: Servers, client: Orthanc) -> None:
    """Stop the client's server and start one with a new, empty database on the same ports
    (live; in replay the recorded answers already come from the new one)."""
    if servers.mode == "replay":
        return
    old = servers.sandbox_of(client)
    old.stop()
    fresh = Sandbox(
        name=old.name,
        aet=old.aet,
        http_port=old.http_port,
        dicom_port=old.dicom_port,
        password=old.password,
        stable_age=old.stable_age,
        **servers.options,
    )
    servers.stack.enter_context(fresh)
    servers.sandboxes.append(fresh)


def test_a_replaced_database_with_the_same_sequence_number_is_rebuilt(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_forest(client)
    identity = client.get_json("/system").get("DatabaseServerIdentifier")
    old_patient = forest.patients[0]
    seq = forest.last_seq

    replace_database(servers, client)
    # the same shape, other patients: the same number of changes, up to the same seq
    upload(client, synthetic.SyntheticSpec(seed=11))
    assert client.last_change() == seq
    # Orthanc 1.12 derives it from the host and the ports, not from the database
    assert client.get_json("/system").get("DatabaseServerIdentifier") == identity

    report = forest.update()
    assert report.rebuilt
    assert report.reason is not None and "database was replaced" in report.reason
    assert old_patient.id in report.removed.patients and len(report.added.patients) == 4
    assert forest.snapshot() == load_forest(client).snapshot()
    assert forest.get(old_patient.id) is None
    assert forest.update().requests == 2  # up to date with the new database


def test_a_replaced_database_raises_when_asked_and_a_stored_forest_rebuilds(
    servers: Servers, tmp_path: Path
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    path = tmp_path / "f.forest"
    stored = open_forest(client, path)
    forest = load_forest(client)
    seq = forest.last_seq
    before = forest.snapshot()

    replace_database(servers, client)
    upload(client, synthetic.SyntheticSpec(4, 2, 2, 4, seed=12))  # more changes than before
    assert client.last_change() > seq

    with pytest.raises(OrthancError, match="database was replaced"):
        forest.update(rebuild_if_replaced=False)
    assert forest.snapshot() == before and forest.last_seq == seq

    report = stored.update()
    assert report.rebuilt and report.reason is not None
    assert "database was replaced" in report.reason
    fresh = load_forest(client)
    assert stored.snapshot() == fresh.snapshot()
    stored.close()
    with open_forest(client, path, update=False) as reopened:
        assert reopened.last_seq == fresh.last_seq
        assert reopened.snapshot() == fresh.snapshot()


# -- labels ---------------------------------------------------------------------------------------


@pytest.fixture
def other_client(servers: Servers) -> Iterator[Any]:
    """Makes a second client of a server (another user of it, for the forest)."""
    made: list[Orthanc] = []

    def make(client: Orthanc) -> Orthanc:
        other = Orthanc(client.url, auth=servers.auth_of(client))
        made.append(other)
        return other

    yield make
    for other in made:
        other.close()


def test_update_with_labels_reads_what_other_clients_labelled(
    servers: Servers, other_client: Any, tmp_path: Path
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    other = other_client(client)
    forest = load_forest(client)
    if not client.system.stores_labels:
        # Orthanc before 1.12 (or a database without labels): nothing to read, no request
        report = forest.update(labels=True)
        assert report.requests == 2 and not report.changed
        return
    study, kept, relabelled = forest.studies[0], forest.studies[1], forest.studies[2]
    instance, patient = forest.instances[7], forest.patients[3]
    kept.add_label("mine")  # through this client's model: true at once, in place
    assert kept.labels == ("mine",)
    stored = open_forest(client, tmp_path / "f.forest")

    other.put_json(f"/studies/{study.id}/labels/review")
    other.put_json(f"/instances/{instance.id}/labels/review")
    other.put_json(f"/patients/{patient.id}/labels/urgent")
    other.delete(f"/studies/{kept.id}/labels/mine")
    other.put_json(f"/studies/{relabelled.id}/labels/mine")
    assert forest.update().requests == 2 and study.labels == ()  # the feed does not say

    report = forest.update(labels=True)
    # feed, statistics, GET /tools/labels, then one find per label (3) and level (4)
    assert report.requests == 3 + 3 * 4
    assert set(report.updated.studies) == {study.id, kept.id, relabelled.id}
    assert report.updated.instances == (instance.id,)
    assert report.updated.patients == (patient.id,)
    assert (study.labels, kept.labels, relabelled.labels) == (("review",), (), ("mine",))
    assert forest.snapshot() == load_forest(client).snapshot()
    assert not forest.update(labels=True).changed

    report = stored.update(labels=True)
    assert set(report.updated.studies) == {study.id, kept.id, relabelled.id}
    stored.close()
    with open_forest(client, tmp_path / "f.forest", update=False) as reopened:
        assert reopened.study(study.id).labels == ("review",)
        assert reopened.snapshot() == load_forest(client).snapshot()
