"""The patient forest of 24,000 instances: kkorthanc against the raw floor and pyorthanc.

Starts a sandbox, loads ``synthetic.BENCH`` (200 patients x 3 studies x 4 series x 10
instances), then measures in the same run, each several times with the best time kept:

- the server floor: the same listing requests over one plain ``http.client`` connection, the
  answers read as bytes and never decoded, once asking for identity and once for gzip (what
  the server itself takes to produce and send everything);
- the raw floor: the paged expanded listings of the four levels, decoded with ``json.loads``,
  no models (what any client must at least pay to see everything);
- ``build_patient_forest``: the same listings made into linked, indexed, typed models, then a
  walk of every level (which costs no request); also with ``Accept-Encoding`` set to identity
  and to gzip, each against the server floor of the same encoding;
- pyorthanc's ``find()`` followed by a walk of every level reading each resource's main tags
  (one request per resource), once: about half a minute on loopback. ``--subset N`` walks N
  patients only and extrapolates per resource, marked as such;
- ``forest.update()`` after 10 new instances, against a full build;
- memory per resource of the built forest (tracemalloc);
- the compact forest (``load_compact_forest``): memory, build, the first walk (which makes
  every model), later walks and a first update.

``--store`` measures the stored forest instead (:func:`kkorthanc.forest.open_forest`): the
build into a new file, the reopening of that file (in this process, and in a new Python
process from start to a usable forest), ``update()`` after 10 new instances on a reopened
forest, the file's size, and a lookup and a find on a reopened forest; each against the
in-memory build measured in the same run. ``--instances N`` loads N instances in the same
shape (3 studies x 4 series x 10 instances per patient) instead of 24,000; ``--folder DIR``
keeps the server's storage there, for a later run to reuse.

``--gc`` measures instead where the collection of a dropped forest's cyclic garbage lands
(builds in a loop, as a program refreshing its forest would run them), and ``--profile``
profiles one build with cProfile (the main thread: the page fetches run in a thread of
their own, so waiting for the server shows as the wait for the next page).

    python bench/forest.py [--repeat 5] [--subset N] [--page-size 4000] [--folder DIR]
    python bench/forest.py --store [--instances 240000] [--repeat 3]
    python bench/forest.py --gc | --profile [--instances N] [--folder DIR]

Exits 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core

from kkorthanc import Instance, Orthanc, Patient, Series, Study, synthetic
from kkorthanc.forest import (
    DEFAULT_PAGE_SIZE,
    PatientForest,
    load_compact_forest,
    load_forest,
    open_forest,
)
from kkorthanc.sandbox import Sandbox

sys.path.insert(0, str(Path(__file__).parent))
from listing import RawConnection, prepared

LEVEL_PATHS = ("/patients", "/studies", "/series", "/instances")
LEVEL_CLASSES = (Patient, Study, Series, Instance)


SERVER_FLOOR = {
    "identity": "server floor, bytes only, identity",
    "gzip": "server floor, bytes only, gzip",
}
BUILD = {
    "identity": "kkorthanc build, identity asked",
    "gzip": "kkorthanc build, gzip asked",
}


@dataclass
class Result:
    """One contender: best wall time, requests of one run, resources it saw."""

    name: str
    seconds: float
    requests: int
    resources: int
    note: str = ""


class ByteCounter:
    """Counts the bytes of every answer the client receives (a response hook)."""

    def __init__(self, client: Orthanc) -> None:
        self.received = 0
        client._transport.session.hooks["response"].append(self.count)

    def count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.received += len(response.content)


def timed(client: Orthanc, run: Callable[[], int]) -> tuple[float, int, int]:
    """Wall time, requests and the count ``run`` returns, for one run."""
    gc.collect()
    before = client.request_count
    start = time.perf_counter()
    count = run()
    return time.perf_counter() - start, client.request_count - before, count


def raw_floor(client: Orthanc, page_size: int, prefetch: bool = False) -> int:
    """Every level's paged expanded listing, decoded by json.loads; nothing else."""
    seen = 0
    for path in LEVEL_PATHS:
        for page in client._transport.iter_pages(path, page_size=page_size, prefetch=prefetch):
            seen += len(page)
    return seen


def raw_floor_fast_json(client: Orthanc, page_size: int) -> int:
    """The same pages decoded by pydantic_core.from_json (the parser the forest uses)."""
    seen = 0
    for path in LEVEL_PATHS:
        since = 0
        while True:
            response = client._transport.request(
                "GET", path, params={"expand": "", "since": since, "limit": page_size}
            )
            page = pydantic_core.from_json(response.content)
            seen += len(page)
            if len(page) < page_size:
                break
            since += page_size
    return seen


def level_counts(client: Orthanc) -> dict[str, int]:
    """Resources per level, from ``GET /statistics``."""
    stats = client._transport.get_json("/statistics")
    return {path: int(stats[f"Count{path[1:].capitalize()}"]) for path in LEVEL_PATHS}


def server_floor(raw: RawConnection, counts: dict[str, int], page_size: int) -> int:
    """The requests of a build's listings, each answer read as bytes only and never decoded.

    The pages are those a build asks for: every level's listing up to its first short page,
    which the counts tell without decoding anything.
    """
    for path in LEVEL_PATHS:
        for since in range(0, counts[path] + 1, page_size):
            raw.get(f"{path}?expand&since={since}&limit={page_size}")
    return sum(counts.values())


def asking_for(client: Orthanc, encoding: str) -> Orthanc:
    """``client`` made to send ``Accept-Encoding: encoding`` on its session."""
    client._transport.session.headers["Accept-Encoding"] = encoding
    return client


def walk_forest(forest: PatientForest) -> int:
    """Every level through the links, reading a main tag of each resource."""
    seen = 0
    for patient in forest.patients:
        seen += bool(patient.patient_id) or 1
        for study in patient.studies:
            seen += bool(study.study_instance_uid) or 1
            for series in study.series:
                seen += bool(series.modality) or 1
                for instance in series.instances:
                    seen += bool(instance.sop_instance_uid) or 1
    return seen


def kk_build(client: Orthanc, page_size: int) -> int:
    return load_forest(client, page_size=page_size).counts.total


def kk_compact(client: Orthanc, page_size: int) -> int:
    return load_compact_forest(client, page_size=page_size).counts.total


def pyorthanc_walk(url: str, auth: tuple[str, str], patients: int | None) -> tuple[int, int]:
    """pyorthanc.find() then a walk reading every resource's main tags; (resources, requests)."""
    import httpx
    import pyorthanc

    sent = 0

    def count(request: httpx.Request) -> None:
        nonlocal sent
        sent += 1

    orthanc = pyorthanc.Orthanc(url, username=auth[0], password=auth[1])
    orthanc.event_hooks["request"].append(count)
    keep: set[str] | None = None
    if patients is not None:
        keep = set(orthanc.get_patients()[:patients])
    found = pyorthanc.find(
        orthanc, patient_filter=(lambda p: p.id_ in keep) if keep is not None else None
    )
    seen = 0
    for patient in found:
        seen += bool(patient.main_dicom_tags.get("PatientID")) or 1
        for study in patient.studies:
            seen += bool(study.main_dicom_tags.get("StudyInstanceUID")) or 1
            for series in study.series:
                seen += bool(series.main_dicom_tags.get("Modality")) or 1
                for instance in series.instances:
                    seen += bool(instance.main_dicom_tags.get("SOPInstanceUID")) or 1
    return seen, sent


def best(client: Orthanc, run: Callable[[], int], repeat: int) -> tuple[float, int, int]:
    runs = [timed(client, run) for _ in range(repeat)]
    return min(r[0] for r in runs), runs[0][1], runs[0][2]


def memory_per_resource(
    client: Orthanc, page_size: int, load: Callable[..., PatientForest] = load_forest
) -> tuple[float, float, int]:
    """Bytes per resource held by a built forest (and at the peak of the build)."""
    gc.collect()
    tracemalloc.start()
    forest = load(client, page_size=page_size)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    resources = forest.counts.total
    return current / resources, peak / resources, resources


def memory_of_validated_models(client: Orthanc, page_size: int) -> float:
    """Bytes per resource of plain ``from_orthanc`` models of every level, for comparison."""
    gc.collect()
    tracemalloc.start()
    models = [
        cls.from_orthanc(item, client)
        for cls, path in zip(LEVEL_CLASSES, LEVEL_PATHS, strict=True)
        for page in client._transport.iter_pages(path, page_size=page_size)
        for item in page
    ]
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / len(models)


def upload(client: Orthanc, spec: synthetic.SyntheticSpec) -> int:
    for _, body in synthetic.generate_bytes(spec):
        client._transport.request(
            "POST", "/instances", data=body, headers={"Content-Type": "application/dicom"}
        )
    return spec.total_instances


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in pairs]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (best kept)")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument(
        "--subset", type=int, default=None, help="patients pyorthanc walks (default: all)"
    )
    parser.add_argument("--seed", type=int, default=1000, help="seed of the added instances")
    parser.add_argument(
        "--store", action="store_true", help="measure the forest stored in a file instead"
    )
    parser.add_argument(
        "--instances", type=int, default=synthetic.BENCH.total_instances,
        help="instances to load (a multiple of 120: patients of 3 x 4 x 10)",
    )
    parser.add_argument("--folder", type=Path, default=None,
                        help="keep the server's storage here (reused by a later run)")
    parser.add_argument("--gc", action="store_true",
                        help="measure where a dropped forest's collection lands instead")
    parser.add_argument("--profile", action="store_true", help="profile one build instead")
    args = parser.parse_args(argv)
    base = synthetic.BENCH
    per_patient = base.studies_per_patient * base.series_per_study * base.instances_per_series
    spec = synthetic.SyntheticSpec(
        max(1, args.instances // per_patient), base.studies_per_patient,
        base.series_per_study, base.instances_per_series,
    )
    print(f"loading {spec.total_instances:,} instances ({spec.patients} patients x "
          f"{spec.studies_per_patient} studies x {spec.series_per_study} series x "
          f"{spec.instances_per_series} instances) in a sandbox ...", flush=True)
    with prepared(spec, args.folder) as sandbox, sandbox.client() as client:
        print(f"Orthanc {client._transport.get_json('/system')['Version']}\n", flush=True)
        if args.store:
            report_store(client, sandbox, args)
        elif args.gc:
            report_gc(client, args)
        elif args.profile:
            report_profile(client, args)
        else:
            report(client, sandbox, args)
    return 0


def report(client: Orthanc, sandbox: Sandbox, args: Any) -> None:
    page_size = args.page_size
    url, auth = sandbox.url, sandbox.auth
    resources = load_forest(client, page_size=page_size).counts.total
    counts = level_counts(client)
    identity_raw = RawConnection(url, auth, "identity")
    gzip_raw = RawConnection(url, auth, "gzip")
    identity = asking_for(sandbox.client(), "identity")
    gzipped = asking_for(sandbox.client(), "gzip")
    floor_bytes = {"identity": 0, "gzip": 0}

    def floor_of(raw: RawConnection, name: str) -> Callable[[], int]:
        def run() -> int:
            before = raw.received
            total = server_floor(raw, counts, page_size)
            floor_bytes[name] = raw.received - before
            return total
        return run

    # the contenders take turns, so that all see the same load on the machine
    contenders: list[tuple[str, Callable[[], int], Orthanc]] = [
        (SERVER_FLOOR["identity"], floor_of(identity_raw, "identity"), client),
        (SERVER_FLOOR["gzip"], floor_of(gzip_raw, "gzip"), client),
        ("raw floor: paged listings + json.loads", lambda: raw_floor(client, page_size), client),
        ("kkorthanc build_patient_forest", lambda: kk_build(client, page_size), client),
        (BUILD["identity"], lambda: kk_build(identity, page_size), identity),
        (BUILD["gzip"], lambda: kk_build(gzipped, page_size), gzipped),
        ("raw floor, decoded by from_json", lambda: raw_floor_fast_json(client, page_size),
         client),
        ("raw floor, next page prefetched", lambda: raw_floor(client, page_size, True), client),
        ("kkorthanc load_compact_forest", lambda: kk_compact(client, page_size), client),
    ]
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name, _, _ in contenders}
    for _ in range(args.repeat):
        for name, run, counted in contenders:
            runs[name].append(timed(counted, run))
    pages = sum(counts[path] // page_size + 1 for path in LEVEL_PATHS)
    for name in SERVER_FLOOR.values():  # requests not sent through a client
        runs[name] = [(seconds, pages, seen) for seconds, _, seen in runs[name]]
    results = {
        name: Result(name, min(r[0] for r in got), got[0][1], got[0][2])
        for name, got in runs.items()
    }
    medians = {name: sorted(r[0] for r in got)[len(got) // 2] for name, got in runs.items()}
    identity_raw.close()
    gzip_raw.close()
    identity.close()
    gzipped.close()
    floor = results["raw floor: paged listings + json.loads"]
    build = results["kkorthanc build_patient_forest"]
    forest = load_forest(client, page_size=page_size)
    walk_seconds, walk_requests, walked = best(client, lambda: walk_forest(forest), args.repeat)
    built_walked = Result("kkorthanc build + walk of every level", build.seconds + walk_seconds,
                          build.requests + walk_requests, walked)

    subset = args.subset
    started = time.perf_counter()
    seen, sent = pyorthanc_walk(url, auth, subset)
    elapsed = time.perf_counter() - started
    if subset is None:
        pyo = Result("pyorthanc find() + walk", elapsed, sent, seen)
    else:
        scale = resources / seen
        pyo = Result(
            "pyorthanc find() + walk", elapsed * scale, round(sent * scale), resources,
            f"extrapolated from {subset} patients ({seen:,} resources, {sent:,} requests, "
            f"{elapsed:.1f} s)",
        )

    rows = [("contender", "requests", "resources", "best s", "median s", "x floor",
             "x kkorthanc")]
    ordered = [results[name] for name, _, _ in contenders] + [built_walked, pyo]
    for result in ordered:
        median = medians.get(result.name)
        rows.append((
            result.name, f"{result.requests:,}", f"{result.resources:,}",
            f"{result.seconds:.3f}", f"{median:.3f}" if median is not None else "",
            f"{result.seconds / floor.seconds:.2f}", f"{result.seconds / build.seconds:.2f}",
        ))
    print(f"Whole tree of {resources:,} resources, page size {page_size}, {args.repeat} runs "
          "each, taking turns:\n")
    print(table(rows))
    if pyo.note:
        print(f"\npyorthanc: {pyo.note}")
    floor_name = floor.name
    print(f"\nbuild / raw floor: best {build.seconds / floor.seconds:.3f}, median "
          f"{medians[build.name] / medians[floor_name]:.3f}; against the from_json floor: best "
          f"{build.seconds / results['raw floor, decoded by from_json'].seconds:.3f}")
    print(f"pyorthanc / (build + walk): {pyo.seconds / built_walked.seconds:.1f}x slower")
    plain, packed = floor_bytes["identity"], floor_bytes["gzip"]
    print(f"\nagainst the server floor (bytes only, same run; {plain:,} bytes sent as identity, "
          f"{packed:,} as gzip):")
    for encoding in ("identity", "gzip"):
        got, server = runs[BUILD[encoding]], runs[SERVER_FLOOR[encoding]]
        ratio = results[BUILD[encoding]].seconds / results[SERVER_FLOOR[encoding]].seconds
        median = medians[BUILD[encoding]] / medians[SERVER_FLOOR[encoding]]
        print(f"  build / server floor, {encoding}: best {ratio:.3f}, median {median:.3f} "
              f"(builds {', '.join(f'{r[0]:.3f}' for r in got)}; floors "
              f"{', '.join(f'{r[0]:.3f}' for r in server)})")
    best_floor = min(results[name].seconds for name in SERVER_FLOOR.values())
    best_build = min(results[name].seconds for name in [*BUILD.values(), build.name])
    gzip_over = results[BUILD["gzip"]].seconds / results[BUILD["identity"]].seconds
    print(f"  best build / best server floor: {best_build / best_floor:.3f}; gzip build / "
          f"identity build: best {gzip_over:.3f}")

    # update after 10 new instances, against a full build
    received = ByteCounter(client)
    update_runs = []
    for seed in range(args.repeat):
        # a kept folder already holds the instances of earlier runs' seeds: new ones each run
        fresh_seed = args.seed + seed + counts["/instances"]
        upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=fresh_seed))
        before = received.received
        seconds, requests, added = timed(client, lambda: len(forest.update().added.instances))
        if added != 10:
            raise SystemExit(f"the update added {added} instances, not 10")
        update_runs.append((seconds, requests, received.received - before))
    before = received.received
    quiet_seconds, quiet_requests, _ = timed(client, lambda: forest.update().added.total)
    quiet_bytes = received.received - before
    before = received.received
    build_requests = fresh_requests(client, page_size)
    build_bytes = received.received - before
    fresh = load_forest(client, page_size=page_size)
    same = forest.snapshot() == fresh.snapshot()
    up_seconds = min(r[0] for r in update_runs)
    up_requests, up_bytes = update_runs[0][1], update_runs[0][2]
    print("\nforest.update() after 10 new instances (1 patient, 1 study, 1 series), best of "
          f"{args.repeat}:\n")
    rows = [("operation", "requests", "bytes received", "wall s", "x build")]
    rows.append(("full build", f"{build_requests:,}", f"{build_bytes:,}",
                 f"{build.seconds:.3f}", "1.0000"))
    rows.append(("update after 10 new instances", f"{up_requests}", f"{up_bytes:,}",
                 f"{up_seconds:.4f}", f"{up_seconds / build.seconds:.4f}"))
    rows.append(("update with nothing new", f"{quiet_requests}", f"{quiet_bytes:,}",
                 f"{quiet_seconds:.4f}", f"{quiet_seconds / build.seconds:.4f}"))
    print(table(rows))
    print(f"\nupdate / build: {100 * up_seconds / build.seconds:.2f} % of the time, "
          f"{100 * up_bytes / build_bytes:.2f} % of the bytes, {up_requests} requests "
          f"against {build_requests}; the updated forest equals a fresh build: {same}")

    per, peak, counted = memory_per_resource(client, page_size)
    plain = memory_of_validated_models(client, page_size)
    print(f"\nmemory (tracemalloc): {per:,.0f} bytes per resource held by the forest "
          f"({per * counted / 2**20:.1f} MiB for {counted:,} resources; peak during the build "
          f"{peak:,.0f} bytes per resource); the same resources as pydantic-validated models "
          f"(from_orthanc, json.loads, no links or indexes): {plain:,.0f} bytes per resource")
    compact_report(client, page_size, results["kkorthanc load_compact_forest"], build, floor,
                   walk_seconds, args.repeat)


def compact_report(client: Orthanc, page_size: int, compact: Result, build: Result,
                   floor: Result, walk_seconds: float, repeat: int) -> None:
    """The compact forest: memory, build, making every model, walking, a first update."""
    per, peak, _ = memory_per_resource(client, page_size, load_compact_forest)
    forest = load_compact_forest(client, page_size=page_size)
    start = time.perf_counter()
    walk_forest(forest)
    first = time.perf_counter() - start
    walk, _, _ = best(client, lambda: walk_forest(forest), repeat)
    fresh = load_compact_forest(client, page_size=page_size)
    seed = 999 + int(client._transport.get_json("/statistics")["CountInstances"])
    upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=seed))
    update_seconds, update_requests, _ = timed(client, lambda: fresh.update().added.total)
    print(f"\ncompact forest (load_compact_forest): {per:,.0f} bytes per resource (tracemalloc; "
          f"peak during the build {peak:,.0f}); build {compact.seconds:.3f} s, "
          f"{compact.seconds / floor.seconds:.2f}x the raw floor, "
          f"{compact.seconds / build.seconds:.2f}x load_forest; the first walk makes every model: "
          f"{first:.3f} s; then a walk takes {walk * 1000:.1f} ms (load_forest's: "
          f"{walk_seconds * 1000:.1f} ms); a first update after 10 new instances (on a forest "
          f"with no model made): {update_seconds:.4f} s, {update_requests} requests")


class GcClock:
    """The time the cyclic collector spends, by generation (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.spent = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.spent[info["generation"]] += time.perf_counter() - self._started
            self.runs[info["generation"]] += 1


def report_gc(client: Orthanc, args: Any) -> None:
    """Builds in a loop, as a program refreshing its forest runs them: where does the full
    collection of the forest it drops land, and what does it cost?"""
    page_size, repeat = args.page_size, args.repeat
    clock = GcClock()
    gc.callbacks.append(clock)
    forest: PatientForest | None = None

    scenarios: list[tuple[str, str]] = [
        ("rebind", "forest = load_forest(...) in a loop (old forest dropped when rebound)"),
        ("drop", "forest = None, then load_forest(...)"),
        ("collect", "forest = None; gc.collect() (untimed), then load_forest(...)"),
    ]
    rows = [("loop", "best s", "median s", "full collections in builds", "their s",
             "young s in builds", "full s between")]
    for key, label in scenarios:
        forest = load_forest(client, page_size=page_size)
        gc.collect()
        builds: list[float] = []
        inside = [0.0, 0.0, 0.0]
        full_runs = 0
        between = 0.0
        for _ in range(repeat + 1):
            if key == "drop":
                forest = None
            elif key == "collect":
                forest = None
                gc.collect()
            before_spent, before_runs = list(clock.spent), list(clock.runs)
            start = time.perf_counter()
            forest = load_forest(client, page_size=page_size)
            builds.append(time.perf_counter() - start)
            spent = [a - b for a, b in zip(clock.spent, before_spent, strict=True)]
            full_runs += clock.runs[2] - before_runs[2]
            inside = [a + b for a, b in zip(inside, spent, strict=True)]
            # what the program does next: a little work that allocates
            before_full = clock.spent[2]
            walk_forest(forest)
            between += clock.spent[2] - before_full
        timed_builds = builds[1:]  # the first build of each loop only sets it up
        rows.append((label, f"{min(timed_builds):.3f}", f"{sorted(timed_builds)[repeat // 2]:.3f}",
                     f"{full_runs}", f"{inside[2]:.3f}", f"{inside[0] + inside[1]:.3f}",
                     f"{between:.3f}"))
    gc.callbacks.remove(clock)
    print(f"Builds in a loop, {repeat + 1} per loop (the first not counted), page size "
          f"{page_size}; collector time measured through gc.callbacks:\n")
    print(table(rows))

    forest = load_forest(client, page_size=page_size)
    gc.collect()
    live = min(timed_collect() for _ in range(3))
    dropped = []
    for _ in range(3):
        extra = load_forest(client, page_size=page_size)
        gc.collect()
        del extra
        dropped.append(timed_collect())
    print(f"\ngc.collect() with one live forest of {forest.counts.total:,} resources: "
          f"{live:.3f} s; with one more dropped (its garbage freed): {min(dropped):.3f} s; "
          f"tracked objects: {len(gc.get_objects()):,}")


def timed_collect() -> float:
    start = time.perf_counter()
    gc.collect()
    return time.perf_counter() - start


def report_profile(client: Orthanc, args: Any) -> None:
    """cProfile of one build (after one unprofiled): the main thread's functions."""
    import cProfile
    import io
    import pstats

    load_forest(client, page_size=args.page_size)
    gc.collect()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    forest = load_forest(client, page_size=args.page_size)
    profiler.disable()
    wall = time.perf_counter() - start
    print(f"one build of {forest.counts.total:,} resources under cProfile: {wall:.3f} s\n")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(18)
        print(f"--- by {order} ---")
        print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
        print()


REOPEN_IN_A_NEW_PROCESS = """
import sys, time
start = time.perf_counter()
from kkorthanc import Orthanc
from kkorthanc.forest import open_forest
imported = time.perf_counter()
with Orthanc(sys.argv[1], auth=(sys.argv[2], sys.argv[3])) as client:
    forest = open_forest(client, sys.argv[4])
    ready = time.perf_counter()
    assert forest.counts.total > 0
print(imported - start, ready - imported, client.request_count)
"""


def report_store(client: Orthanc, sandbox: Sandbox, args: Any) -> None:
    """The stored forest against the in-memory build, measured in the same run."""
    page_size = args.page_size
    folder = Path(tempfile.mkdtemp(prefix="kk-bench-store-"))
    path = folder / "bench.forest"
    memory_runs, store_runs = [], []
    for attempt in range(args.repeat):  # taking turns, as the other contenders do
        memory_runs.append(timed(client, lambda: kk_build(client, page_size)))
        target = folder / f"build-{attempt}.forest"
        store_runs.append(timed(client, lambda t=target: stored_build(client, t, page_size)))
        os.replace(target, path)
    memory = min(r[0] for r in memory_runs)
    build = min(r[0] for r in store_runs)
    resources, size = store_runs[0][2], path.stat().st_size

    reopen_runs = []
    for _ in range(args.repeat):
        reopen_runs.append(timed(client, lambda: reopened_total(client, path)))
    reopen = min(r[0] for r in reopen_runs)

    update_runs = []
    for seed in range(args.repeat):
        base = int(client._transport.get_json("/statistics")["CountInstances"])
        upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=args.seed + seed + base))
        gc.collect()
        before = client.request_count
        start = time.perf_counter()
        forest = open_forest(client, path, update=False)
        opened = time.perf_counter()
        report = forest.update()
        done = time.perf_counter()
        if len(report.added.instances) != 10 or report.rebuilt:
            raise SystemExit(f"the update did not add 10 instances: {report}")
        update_runs.append((opened - start, done - opened, client.request_count - before))
        forest.close()
    best_pair = min(update_runs, key=lambda r: r[0] + r[1])

    fresh = load_forest(client, page_size=page_size)
    with open_forest(client, path) as reopened:
        same = reopened.snapshot() == fresh.snapshot()
    study = fresh.studies[len(fresh.studies) // 2]
    patient = fresh.patients[len(fresh.patients) // 2]
    with open_forest(client, path, update=False) as reopened:
        start = time.perf_counter()
        found = reopened.study(str(study.study_instance_uid))
        lookup = time.perf_counter() - start
        assert found.id == study.id
        start = time.perf_counter()
        hits = reopened.find("instance", PatientID=patient.patient_id)
        find = time.perf_counter() - start
        made = reopened.models_in_memory
    expected = fresh.find("instance", PatientID=patient.patient_id)
    assert [h.id for h in hits] == [e.id for e in expected]

    user, password = sandbox.auth
    process = subprocess.run(
        [sys.executable, "-c", REOPEN_IN_A_NEW_PROCESS, client.url, user, password, str(path)],
        capture_output=True, text=True, check=True,
    )
    imports, ready, sent = process.stdout.split()

    print(f"Stored forest of {resources:,} resources ({args.instances:,} instances wanted), "
          f"page size {page_size}, best of {args.repeat}:\n")
    rows = [("operation", "requests", "wall s", "x in-memory build")]
    rows.append(("in-memory build (load_forest)", f"{memory_runs[0][1]}", f"{memory:.3f}",
                 "1.000"))
    rows.append(("build into a new file (open_forest)", f"{store_runs[0][1]}", f"{build:.3f}",
                 f"{build / memory:.3f}"))
    rows.append(("reopen, no update", "0", f"{reopen:.4f}", f"{reopen / memory:.4f}"))
    rows.append(("reopen, then update() after 10 new instances", f"{best_pair[2]}",
                 f"{best_pair[0] + best_pair[1]:.4f}",
                 f"{(best_pair[0] + best_pair[1]) / memory:.4f}"))
    rows.append(("  of which update()", "", f"{best_pair[1]:.4f}", ""))
    rows.append(("study(uid) on a reopened forest", "0", f"{lookup:.4f}", ""))
    rows.append(("find('instance', PatientID=...) on it", "0", f"{find:.4f}", ""))
    print(table(rows))
    print(f"\nfile: {size:,} bytes, {size / resources:,.0f} bytes per resource; after the lookup "
          f"and the find the reopened forest held {made:,} models of {resources:,}")
    print(f"a new Python process: imports {float(imports):.3f} s, open_forest + update() "
          f"{float(ready):.3f} s, {sent} requests")
    print(f"the reopened, updated forest equals a fresh build: {same}")
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()


def stored_build(client: Orthanc, path: Path, page_size: int) -> int:
    with open_forest(client, path, page_size=page_size) as forest:
        return forest.counts.total


def reopened_total(client: Orthanc, path: Path) -> int:
    with open_forest(client, path, update=False) as forest:
        return forest.counts.total


def fresh_requests(client: Orthanc, page_size: int) -> int:
    before = client.request_count
    load_forest(client, page_size=page_size)
    return client.request_count - before


if __name__ == "__main__":
    sys.exit(main())
