"""What Orthanc's ``since`` paging costs as the offset grows, and reading a level IDs first.

Starts a sandbox (or reopens one kept with ``--folder``), loads N instances (200 patients x
3 studies x 4 series x 10 instances per 24,000), then measures on the instance level, with
one plain ``http.client`` connection whose answers are read as bytes and never decoded
(identity encoding unless ``--gzip``), each request several times, best and median kept:

- the offset alone: ``GET /instances?since=S&limit=1`` for S = 0 and S = N - 1 (Orthanc skips
  S rows to answer one ID): nanoseconds per skipped row;
- a page of expanded instances (``?expand&since=S&limit=P``) at the first, the middle and the
  last page, and the same pages of IDs only (no ``expand``);
- a whole level read two ways: paged expanded listings (what a forest build sends), against
  IDs first (``GET /instances``, one request, no offset) then ``POST /tools/bulk-content``
  with ``{"Resources": [...], "Metadata": false}`` in chunks of C IDs.

From these it fits ``paged(N) = a N + s N^2 / (2P)`` and ``ids_first(N) = b N`` and prints
the size at which IDs first would win, and what each would cost at 1M and 10M instances.

    python bench/listing.py [--instances 24000] [--folder DIR] [--page-size 4000]
                            [--chunk 4000] [--repeat 5] [--gzip]

``--folder`` keeps the server's storage in DIR: a later run with the same folder reuses the
instances already there (and loads only what is missing). Exits 0.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kkorthanc import synthetic
from kkorthanc.sandbox import Sandbox


class RawConnection:
    """One keep-alive HTTP connection to the server; every answer read as bytes only."""

    def __init__(self, url: str, auth: tuple[str, str], encoding: str = "identity") -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self.host, self.port = parts.hostname, parts.port or 80
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept-Encoding": encoding}
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
        self.received = 0

    def send(self, method: str, target: str, body: bytes | None = None) -> bytes:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, target, body=body, headers=headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # Orthanc closes a keep-alive connection left idle for a while: once more, anew
            self.connection.close()
            self.connection.request(method, target, body=body, headers=headers)
            response = self.connection.getresponse()
        data = response.read()  # http.client never decodes a Content-Encoding
        if response.status != 200:
            raise SystemExit(f"{method} {target}: HTTP {response.status} {data[:200]!r}")
        self.received += len(data)
        return data

    def get(self, target: str) -> bytes:
        return self.send("GET", target)

    def post_json(self, target: str, body: Any) -> bytes:
        return self.send("POST", target, json.dumps(body).encode())

    def close(self) -> None:
        self.connection.close()


def repeated(run: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best and median wall time of ``repeat`` runs, and what the last one returned."""
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), value


def paged_level(raw: RawConnection, level: str, count: int, page_size: int) -> int:
    """The pages a forest build requests for one level (until the first short page)."""
    received = 0
    for since in range(0, count + 1, page_size):
        received += len(raw.get(f"/{level}?expand&since={since}&limit={page_size}"))
    return received


def ids_first(raw: RawConnection, level: str, chunk: int) -> tuple[int, int]:
    """All IDs of a level in one request, then their content in chunks; (bytes, requests)."""
    listing = raw.get(f"/{level}")
    ids = json.loads(listing)
    received, requests = len(listing), 1
    for start in range(0, len(ids), chunk):
        body = {"Resources": ids[start : start + chunk], "Metadata": False}
        received += len(raw.post_json("/tools/bulk-content", body))
        requests += 1
    return received, requests


def prepared(spec: synthetic.SyntheticSpec, folder: Path | None, **kwargs: Any) -> Sandbox:
    """A started sandbox holding ``spec``'s instances; one kept in ``folder`` is reused."""
    sandbox = Sandbox(name="kk-bench-forest", stable_age=3600, folder=folder, **kwargs)
    sandbox.start()
    with sandbox.client() as client:
        have = int(client.get_json("/statistics")["CountInstances"])
    if have < spec.total_instances:
        start = time.perf_counter()
        print(f"loading {spec.total_instances - have:,} instances ...", flush=True)
        rest = (data for _, data in synthetic.generate_bytes(spec))
        sandbox.load(rest, workers=4)  # those already there are stored again, unchanged
        print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
    return sandbox


def spec_for(instances: int) -> synthetic.SyntheticSpec:
    base = synthetic.BENCH
    per_patient = base.studies_per_patient * base.series_per_study * base.instances_per_series
    return synthetic.SyntheticSpec(
        max(1, instances // per_patient), base.studies_per_patient, base.series_per_study,
        base.instances_per_series,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=synthetic.BENCH.total_instances)
    parser.add_argument("--folder", type=Path, default=None, help="keep the storage here")
    parser.add_argument("--page-size", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=4000, help="IDs per bulk-content request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gzip", action="store_true", help="ask for gzip instead of identity")
    args = parser.parse_args(argv)
    sandbox = prepared(spec_for(args.instances), args.folder)
    try:
        raw = RawConnection(sandbox.url, sandbox.auth, "gzip" if args.gzip else "identity")
        report(raw, args)
        raw.close()
    finally:
        sandbox.stop()
    return 0


def report(raw: RawConnection, args: Any) -> None:
    system = json.loads(raw.get("/system"))
    count = int(json.loads(raw.get("/statistics"))["CountInstances"])
    page, repeat = args.page_size, args.repeat
    last = (count - 1) // page * page
    print(f"Orthanc {system.get('Version')}, {count:,} instances, page size {page}, "
          f"{'gzip' if args.gzip else 'identity'}, {repeat} runs each (best / median):\n")

    near, _, _ = repeated(lambda: raw.get("/instances?since=0&limit=1"), repeat * 4)
    far, far_median, _ = repeated(
        lambda: raw.get(f"/instances?since={count - 1}&limit=1"), repeat * 4
    )
    per_row = (far - near) / max(1, count - 1)
    print(f"offset alone: since=0 {near * 1e3:.2f} ms, since={count - 1:,} {far * 1e3:.2f} ms "
          f"(median {far_median * 1e3:.2f}): {per_row * 1e9:.1f} ns per skipped row\n")

    rows = [("page (since)", "expanded best ms", "median ms", "bytes", "IDs only best ms",
             "median ms")]
    for since in sorted({0, last // page // 2 * page, last}):
        target = f"/instances?expand&since={since}&limit={page}"
        best, median, body = repeated(lambda t=target: raw.get(t), repeat)
        ids_best, ids_median, _ = repeated(
            lambda s=since: raw.get(f"/instances?since={s}&limit={page}"), repeat
        )
        rows.append((f"{since:,}", f"{best * 1e3:.1f}", f"{median * 1e3:.1f}", f"{len(body):,}",
                     f"{ids_best * 1e3:.1f}", f"{ids_median * 1e3:.1f}"))
    print(table(rows))

    paged, paged_median, paged_bytes = repeated(
        lambda: paged_level(raw, "instances", count, page), repeat
    )
    listing, _, _ = repeated(lambda: raw.get("/instances"), repeat)
    bulk, bulk_median, (bulk_bytes, requests) = repeated(
        lambda: ids_first(raw, "instances", args.chunk), repeat
    )
    pages = count // page + 1
    print(f"\nthe whole instance level ({count:,}):")
    rows = [("way", "requests", "bytes", "best s", "median s")]
    rows.append((f"paged expanded listing (P={page})", f"{pages}", f"{paged_bytes:,}",
                 f"{paged:.3f}", f"{paged_median:.3f}"))
    rows.append((f"IDs first + bulk-content (C={args.chunk})", f"{requests}",
                 f"{bulk_bytes:,}", f"{bulk:.3f}", f"{bulk_median:.3f}"))
    rows.append(("  of which GET /instances (IDs)", "1", "", f"{listing:.3f}", ""))
    print(table(rows))

    # paged(N) = a N + s N^2 / (2P): the offset term from the measured cost per skipped row
    offset_term = per_row * count * count / (2 * page)
    a = max(paged - offset_term, 1e-9) / count
    b = bulk / count
    print(f"\noffset term now: {offset_term:.3f} s of {paged:.3f} s "
          f"({100 * offset_term / paged:.1f} %); per instance: paged without offsets "
          f"{a * 1e6:.1f} us, IDs first {b * 1e6:.1f} us")
    if b > a and per_row > 0:
        crossover = 2 * page * (b - a) / per_row
        print(f"IDs first wins above about {crossover:,.0f} instances")
    elif per_row > 0:
        print("IDs first wins at every size")
    for n in (1_000_000, 10_000_000):
        print(f"extrapolated at {n:,}: paged {a * n + per_row * n * n / (2 * page):,.0f} s "
              f"(offsets {per_row * n * n / (2 * page):,.0f} s), IDs first {b * n:,.0f} s")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
