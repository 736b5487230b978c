"""Two Orthanc nodes on one PostgreSQL index behind a round-robin balancer: uploads, the
forest and its update, finds and jobs work through the balancer as on one server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from kkorthanc import PatientForest, synthetic
from kkorthanc.cluster import Balancer, Cluster
from kkorthanc.forest import load_forest

pytestmark = pytest.mark.live_only


def shared(forest: PatientForest) -> dict[str, dict[str, dict[str, Any]]]:
    """The forest as the shared index has it: ``is_stable`` is each process's own view (a
    node that did not receive an upload never saw it as unstable), so it is left out."""
    return {
        level: {
            rid: {k: v for k, v in row.items() if k != "is_stable"} for rid, row in rows.items()
        }
        for level, rows in forest.snapshot().items()
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, stable_age=3600) as site:
        yield site


def test_the_balancer_alternates_requests_between_nodes(cluster: Cluster) -> None:
    assert cluster.balancer is not None
    before = list(cluster.balancer.counts)
    with cluster.client() as client:
        names = {client.get_json("/system")["Name"] for _ in range(6)}
    assert names == {"kk-node1", "kk-node2"}
    after = cluster.balancer.counts
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]


def test_the_balancers_answers_say_close(cluster: Cluster) -> None:
    # Orthanc's own answer says keep-alive although it closes after it: a client that
    # believed it would lose its next request (a POST, which it cannot send again)
    answer = requests.get(f"{cluster.url}/system", auth=cluster.auth, timeout=10)
    assert answer.ok and answer.headers["Connection"] == "close"
    assert "Keep-Alive" not in answer.headers


def test_upload_forest_update_find_and_a_job_through_the_balancer(cluster: Cluster) -> None:
    with cluster.client() as client, cluster.node_client(1) as other:
        files = [data for _, data in synthetic.generate_bytes(synthetic.SAMPLE)]
        report = client.upload(files, progress=False)
        assert report.ok and len(report.stored) == 48
        forest = load_forest(client)
        assert forest.counts == (4, 8, 16, 48)
        assert shared(forest) == shared(load_forest(other))  # one index, two nodes

        # changes made through one node show in the shared feed
        extra = synthetic.SyntheticSpec(1, 1, 1, 2, seed=5)
        other.upload([data for _, data in synthetic.generate_bytes(extra)], progress=False)
        other.study(forest.studies[0].id).delete()
        report = forest.update()
        assert forest.counts == (5, 8, 15, 44)  # +1 study of 1 series of 2, -1 of 2 of 3
        assert shared(forest) == shared(load_forest(client))
        assert report.requests < 12

        found = client.find("study", PatientID="KK-*")
        assert {s.id for s in found} == {s.id for s in forest.find("study", PatientID="KK-*")}

        # a job lives in the node that created it; polls that reach the other node retry
        job = forest.studies[0].anonymize(as_job=True)
        job.wait(timeout=60)
        assert job.succeeded
        assert client.study(job.content["ID"]).study_instance_uid


def test_a_balancer_without_upstreams_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one upstream"):
        Balancer([])
