"""Uploads and forest builds on a PostgreSQL-backed site: one node, and a balancer over two.

Each round starts a fresh site of each shape (``Cluster(nodes=1)`` and ``Cluster(nodes=2)``,
both behind the loopback balancer, so that the balancer's own cost is on both sides), uploads
the same synthetic files, then builds the patient forest. The table shows the best and the
median round of each, and the ratio two nodes / one node of the medians of per-round
figures. On a machine whose cores the nodes, the database and the client share, a second
node adds no CPU: expect a ratio near 1, and read it as the cost of the balancer and of
sharing the index, not as scaling.

    python bench/cluster.py [--rounds 3] [--patients 20]

Exits 0; prints the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kkorthanc import synthetic
from kkorthanc.cluster import Cluster
from kkorthanc.forest import load_forest


def one_round(nodes: int, files: list[bytes]) -> tuple[float, float, int]:
    """Seconds to upload ``files`` and to build the forest through the balancer, and the
    build's request count."""
    with Cluster(nodes=nodes, stable_age=3600) as site, site.client() as client:
        start = time.perf_counter()
        report = client.upload(files, progress=False)
        upload = time.perf_counter() - start
        if not report.ok:
            raise SystemExit(f"upload failed on {nodes} node(s): {report!r}")
        before = client.request_count
        start = time.perf_counter()
        forest = load_forest(client)
        build = time.perf_counter() - start
        assert forest.counts.instances == len(files)
        return upload, build, client.request_count - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patients", type=int, default=20)
    args = parser.parse_args()
    spec = synthetic.SyntheticSpec(args.patients, 2, 3, 10)
    files = [data for _, data in synthetic.generate_bytes(spec)]
    print(f"{len(files)} files of {sum(map(len, files)) / len(files) / 1024:.1f} KB, "
          f"{args.rounds} rounds")
    results: dict[int, list[tuple[float, float, int]]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for nodes in (1, 2):
            results[nodes].append(one_round(nodes, files))
    print(f"{'site':<22}{'upload files/s best':>20}{'median':>9}{'build s best':>14}"
          f"{'median':>9}{'requests':>10}")
    for nodes, rows in results.items():
        rates = [len(files) / upload for upload, _, _ in rows]
        builds = [build for _, build, _ in rows]
        print(f"{f'{nodes} node(s), balancer':<22}{max(rates):>20.0f}"
              f"{statistics.median(rates):>9.0f}{min(builds):>14.3f}"
              f"{statistics.median(builds):>9.3f}{rows[0][2]:>10}")
    upload_ratio = statistics.median(
        one[0] / two[0] for one, two in zip(results[1], results[2], strict=True)
    )
    build_ratio = statistics.median(
        two[1] / one[1] for one, two in zip(results[1], results[2], strict=True)
    )
    print(f"two nodes / one node: upload speed {upload_ratio:.2f}x, build time {build_ratio:.2f}x")


if __name__ == "__main__":
    main()
