"""Local queries on a 24,000-instance forest against the server's round trip for the same query.

Starts a sandbox, loads ``synthetic.BENCH`` (200 patients x 3 studies x 4 series x 10
instances), builds the patient forest once, then times each query with ``forest.find`` (no
request) and with ``client.find`` (``POST /tools/find`` with ``Expand``), checks that both
return the same resources, and prints the median times, request counts and the ratio.

    python bench/query.py [--repeat 7]

Exits 0; exits 1 only if the two engines disagree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from kkorthanc import Resource, synthetic
from kkorthanc.forest import build_patient_forest
from kkorthanc.sandbox import Sandbox


def median_ms(run: Callable[[], Sequence[Resource]], repeat: int) -> tuple[float, list[str]]:
    times = []
    ids: list[str] = []
    for _ in range(repeat):
        start = time.perf_counter()
        found = run()
        times.append(time.perf_counter() - start)
        ids = [r.id for r in found]
    return statistics.median(times) * 1000, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per query")
    args = parser.parse_args()
    spec = synthetic.BENCH
    with Sandbox(name="kk-bench-query") as sandbox:
        start = time.perf_counter()
        sandbox.load_synthetic(spec)
        print(f"loaded {spec.total_instances} instances in {time.perf_counter() - start:.1f} s")
        with sandbox.client() as client:
            start = time.perf_counter()
            before = client.request_count
            forest = build_patient_forest(client)
            print(
                f"forest: {time.perf_counter() - start:.2f} s, "
                f"{client.request_count - before} requests"
            )
            some = forest.instances[len(forest.instances) // 2]
            some_study = forest.studies[len(forest.studies) // 3]
            queries: list[tuple[str, str, dict[str, Any]]] = [
                ("instance by SOPInstanceUID", "instance",
                 {"SOPInstanceUID": some.main_dicom_tags["SOPInstanceUID"]}),
                ("study by StudyInstanceUID", "study",
                 {"StudyInstanceUID": some_study.main_dicom_tags["StudyInstanceUID"]}),
                ("patient by PatientID", "patient", {"PatientID": "KK-0-0123"}),
                ("patients MÜLLER^JÜRGEN (case)", "patient", {"PatientName": "MÜLLER^JÜRGEN"}),
                ("studies PatientName=*ller*", "study", {"PatientName": "*ller*"}),
                ("studies in 2013 (range)", "study",
                 {"StudyDate": (dt.date(2013, 1, 1), dt.date(2013, 12, 31))}),
                ("series CT/MR of 2020-", "series",
                 {"Modality": ["CT", "MR"], "StudyDate": "20200101-"}),
                ("instances of one patient", "instance", {"PatientID": "KK-0-0042"}),
            ]  # fmt: skip
            rows = []
            agree = True
            for label, level, query in queries:
                local_ms, local_ids = median_ms(
                    lambda lv=level, q=query: forest.find(lv, q), args.repeat
                )
                before = client.request_count
                server_ms, server_ids = median_ms(
                    lambda lv=level, q=query: client.find(lv, q), args.repeat
                )
                requests = (client.request_count - before) / args.repeat
                same = local_ids == server_ids
                agree &= same
                rows.append((label, len(local_ids), local_ms, server_ms, requests, same))
            uid = some.main_dicom_tags["SOPInstanceUID"]
            before = client.request_count
            lookup_ms, _ = median_ms(lambda: client.lookup(uid), args.repeat)
            lookup_requests = (client.request_count - before) / args.repeat
    print()
    print(f"{'query':34} {'found':>6} {'local ms':>9} {'server ms':>10} {'requests':>9} "
          f"{'server/local':>13}  same")  # fmt: skip
    for label, found, local_ms, server_ms, requests, same in rows:
        ratio = server_ms / local_ms if local_ms else float("inf")
        print(
            f"{label:34} {found:>6} {local_ms:>9.2f} {server_ms:>10.2f} {requests:>9.0f} "
            f"{ratio:>12.1f}x  {'yes' if same else 'NO'}"
        )
    print(
        f"\nthe server's own UID lookup, client.lookup(uid): {lookup_ms:.2f} ms, "
        f"{lookup_requests:.0f} requests (POST /tools/lookup, then GET the instance)"
    )
    print("local: forest.find, no request; server: client.find, POST /tools/find with Expand")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
