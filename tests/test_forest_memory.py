"""The in-memory forest: finds narrowed by the identifier indexes, compact storage.

Most forests here are built by the real builds (``load_forest``, ``load_compact_forest``)
from expanded JSON listings that a stand-in client serves: no server, no cassette. The
compact forest's update runs against a server (replayed, or ``--live``).
"""

from __future__ import annotations

import copy
import gc
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pydantic_core
import pytest

import kkorthanc.query as kq
from kkorthanc import Instance, Patient, Resource, Series, Study, orthanc_id, synthetic
from kkorthanc.forest import PatientForest, load_compact_forest, load_forest
from kkorthanc.server import Server

from .conftest import Servers
from .test_forest import LONGER, upload


class ListingClient:
    """Serves the four expanded listings of a made-up server, and counts the requests."""

    url = "http://listings.invalid"

    def __init__(self, listings: dict[str, list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.request_count = 0

    def get_json(self, path: str, params: Any = None) -> Any:
        assert (path, params) == ("/changes", {"last": ""}), path  # the feed position only
        self.request_count += 1
        return {"Changes": [], "Done": True, "Last": 7}

    feed_end = Server.feed_end  # read from get_json above, as the server reads its answer

    def iter_listings(
        self, paths: Sequence[str], *, page_size: int = 1000, prefetch: bool = False, **_: Any
    ) -> Iterator[tuple[str, list[Any]]]:
        for path in paths:
            items = self.listings[path]
            for start in range(0, max(len(items), 1), page_size):
                self.request_count += 1
                page = json.dumps(items[start : start + page_size]).encode()
                # fresh objects, and no string shared by the parser: every saving is the forest's
                yield path, pydantic_core.from_json(page, cache_strings=False)


def listings(patients: int, studies: int = 2, series: int = 2, instances: int = 3) -> Any:
    """Expanded JSON of ``patients`` x ``studies`` x ``series`` x ``instances``."""
    out: dict[str, list[dict[str, Any]]] = {
        "/patients": [],
        "/studies": [],
        "/series": [],
        "/instances": [],
    }
    for p in range(patients):
        pid = f"KK-{p:04d}"
        patient_tags = {"PatientID": pid, "PatientName": f"NAME^{p}", "PatientSex": "F"}
        pat = orthanc_id(pid)
        study_ids = []
        for s in range(studies):
            suid = f"1.2.{p}.{s}"
            st = orthanc_id(pid, suid)
            study_ids.append(st)
            series_ids = []
            for r in range(series):
                ruid = f"{suid}.{r}"
                se = orthanc_id(pid, suid, ruid)
                series_ids.append(se)
                instance_ids = []
                for i in range(instances):
                    iuid = f"{ruid}.{i}"
                    ins = orthanc_id(pid, suid, ruid, iuid)
                    instance_ids.append(ins)
                    out["/instances"].append(
                        {
                            "ID": ins,
                            "Type": "Instance",
                            "ParentSeries": se,
                            "FileSize": 1000 + i,
                            "FileUuid": f"f-{p}-{s}-{r}-{i}",
                            "IndexInSeries": i + 1,
                            "IsStable": True,
                            "LastUpdate": "20240101T120000",
                            "Labels": [],
                            "MainDicomTags": {"SOPInstanceUID": iuid, "InstanceNumber": str(i + 1)},
                        }
                    )
                out["/series"].append(
                    {
                        "ID": se,
                        "Type": "Series",
                        "ParentStudy": st,
                        "Instances": instance_ids,
                        "IsStable": True,
                        "Status": "Unknown",
                        "LastUpdate": "20240101T120000",
                        "Labels": [],
                        "MainDicomTags": {
                            "SeriesInstanceUID": ruid,
                            "Modality": "CT" if r % 2 == 0 else "MR",
                            "SeriesNumber": str(r + 1),
                        },
                    }
                )
            out["/studies"].append(
                {
                    "ID": st,
                    "Type": "Study",
                    "ParentPatient": pat,
                    "Series": series_ids,
                    "IsStable": True,
                    "LastUpdate": "20240101T120000",
                    "Labels": [],
                    "MainDicomTags": {
                        "StudyInstanceUID": suid,
                        "AccessionNumber": f"acc{p}x{s}",
                        "StudyDate": f"2020{s + 1:02d}01",
                    },
                    "PatientMainDicomTags": dict(patient_tags),
                }
            )
        out["/patients"].append(
            {
                "ID": pat,
                "Type": "Patient",
                "Studies": study_ids,
                "IsStable": True,
                "LastUpdate": "20240101T120000",
                "Labels": [],
                "MainDicomTags": patient_tags,
            }
        )
    return out


def offline_forest(patients: int = 20, **shape: int) -> PatientForest:
    return load_forest(ListingClient(listings(patients, **shape)))  # type: ignore[arg-type]


def ids(found: Sequence[Resource]) -> list[str]:
    return [r.id for r in found]


@pytest.fixture
def examined(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of resources (all levels) each ``local_find`` call could examine."""
    sizes: list[int] = []
    original = kq.local_find

    def counting(forest: Any, *args: Any, **kwargs: Any) -> list[Any]:
        sizes.append(
            sum(len(getattr(forest, c)) for c in ("patients", "studies", "series", "instances"))
        )
        return original(forest, *args, **kwargs)

    monkeypatch.setattr(kq, "local_find", counting)
    return sizes


def full_scan(forest: PatientForest, level: str, **tags: Any) -> list[str]:
    """The answer of a find over every resource, no index."""
    lists = SimpleNamespace(
        depth=forest.depth,
        patients=list(forest.patients),
        studies=list(forest.studies),
        series=list(forest.series),
        instances=list(forest.instances),
    )
    return ids(kq.local_find(lists, level, **tags))


#: (level, query, resources the find may examine: the anchor's ancestors, itself, below it)
INDEXED = [
    ("patient", {"PatientID": "kk-0003"}, 1 + 2 + 4 + 12),  # any letter case: normalized key
    ("instance", {"PatientID": "KK-0003"}, 1 + 2 + 4 + 12),
    ("instance", {"PatientID": "KK-0003\\KK-0005", "InstanceNumber": "2"}, 2 * 19),
    ("study", {"StudyInstanceUID": "1.2.4.1"}, 1 + 1 + 2 + 6),
    ("instance", {"StudyInstanceUID": "1.2.4.1"}, 1 + 1 + 2 + 6),
    ("study", {"AccessionNumber": "ACC4X1"}, 1 + 1 + 2 + 6),
    ("series", {"SeriesInstanceUID": "1.2.6.0.1"}, 1 + 1 + 1 + 3),
    ("instance", {"SeriesInstanceUID": "1.2.6.0.1", "Modality": "MR"}, 1 + 1 + 1 + 3),
    ("instance", {"SOPInstanceUID": "1.2.7.1.0.2"}, 4),
    ("instance", {"PatientID": "KK-0007", "SOPInstanceUID": "1.2.7.1.0.2"}, 4),  # the fewest
    ("series", {"SeriesInstanceUID": "9.9.9"}, 0),  # no such identifier: nothing to examine
]


@pytest.mark.parametrize(("level", "query", "size"), INDEXED)
def test_identifier_finds_examine_only_what_the_indexes_name(
    examined: list[int], level: str, query: dict[str, Any], size: int
) -> None:
    forest = offline_forest()
    total = forest.counts.total
    expected = full_scan(forest, level, **query)
    examined.clear()
    assert ids(forest.find(level, query)) == expected
    assert examined == [size] and size <= total / 10


def test_finds_without_an_indexed_identifier_examine_everything(examined: list[int]) -> None:
    forest = offline_forest()
    for level, query in [
        ("study", {"PatientName": "NAME^3"}),
        ("instance", {"PatientID": "KK-000*"}),  # a wildcard: not an index key
        ("series", {"Modality": "MR"}),
    ]:
        expected = full_scan(forest, level, **query)
        examined.clear()
        assert ids(forest.find(level, query)) == expected
        assert examined == [forest.counts.total]


def test_index_keys_are_normalized_but_lookups_stay_exact() -> None:
    data = listings(3, studies=1, series=1, instances=1)
    data["/patients"][1]["MainDicomTags"]["PatientID"] = "ab_c"
    data["/studies"][1]["PatientMainDicomTags"]["PatientID"] = "ab_c"
    data["/patients"][2]["MainDicomTags"]["PatientID"] = "AB C"
    data["/studies"][2]["PatientMainDicomTags"]["PatientID"] = "AB C"
    forest = load_forest(ListingClient(data))  # type: ignore[arg-type]
    assert [p.patient_id for p in forest.lookup("ab_c")] == ["ab_c"]  # exact, as before
    assert [p.patient_id for p in forest.lookup("AB C")] == ["AB C"]
    assert forest.lookup("AB_C") == []
    # a find compares normalized keys first, then Orthanc's exact check decides
    for value in ("ab_c", "AB C", "Ab_C", "ab%c"):
        assert ids(forest.find("patient", PatientID=value)) == full_scan(
            forest, "patient", PatientID=value
        )


# -- compact models ------------------------------------------------------------------------


def test_models_of_one_shape_share_their_fields_set_until_a_field_is_assigned() -> None:
    data = listings(3)
    forest = load_forest(ListingClient(data))  # type: ignore[arg-type]
    first, second = forest.instances[0], forest.instances[1]
    assert first.model_fields_set is second.model_fields_set
    for cls, made in [(Patient, forest.patients[0]), (Instance, first)]:
        validated = cls.from_orthanc(data[f"/{cls.collection}"][0])
        assert made.__dict__ == validated.__dict__
        assert made.model_fields_set == validated.model_fields_set
    expected = set(first.model_fields_set)
    first.file_size = 5
    assert first.model_fields_set == expected and second.model_fields_set == expected
    assert first.model_fields_set is not second.model_fields_set
    second.labels = ("new",)
    assert second.model_fields_set == expected | {"labels"}
    assert forest.instances[2].model_fields_set == expected  # the shared set is untouched
    assert forest.instances[2].labels == ()


def test_an_orthanc_id_is_one_string_wherever_the_forest_names_it() -> None:
    forest = offline_forest(3)
    for cls in (Study, Series, Instance):
        for obj in getattr(forest, cls.collection):
            parent = obj.linked_parent()
            assert parent is not None
            assert obj.parent_id is parent.id
            assert any(child_id is obj.id for child_id in parent.child_ids)


def test_a_built_forest_costs_far_less_memory_per_resource() -> None:
    client = ListingClient(listings(40))
    gc.collect()
    tracemalloc.start()
    forest = load_forest(client)  # type: ignore[arg-type]
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per = current / forest.counts.total
    # 2,510 bytes with a fields set and a plain dict per model and each ID string repeated
    # where it is named; about 1,310 with the shared sets, key-sharing dicts and one string
    assert per < 1_500, per


# -- the compact forest ----------------------------------------------------------------------


def memory_per_resource(load: Any, data: Any) -> float:
    client = ListingClient(data)
    gc.collect()
    tracemalloc.start()
    forest = load(client)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per: float = current / forest.counts.total
    return per


def test_a_compact_forest_holds_under_600_bytes_per_resource() -> None:
    per = memory_per_resource(load_compact_forest, listings(40))
    assert per < 600, per
    assert memory_per_resource(load_forest, listings(40)) > 2 * per


def same_models(a: Sequence[Resource], b: Sequence[Resource]) -> None:
    assert ids(a) == ids(b)
    for x, y in zip(a, b, strict=True):
        assert x.__dict__ == y.__dict__ and x.model_fields_set == y.model_fields_set


def test_a_compact_forest_makes_the_models_of_a_patient_when_one_is_touched() -> None:
    data = listings(6)
    plain = load_forest(ListingClient(copy.deepcopy(data)))  # type: ignore[arg-type]
    client = ListingClient(data)
    forest = load_compact_forest(client)  # type: ignore[arg-type]
    assert client.request_count == 5  # the feed, then one page per level
    state: Any = forest._state
    tree = 1 + 2 + 2 * 2 + 2 * 2 * 3
    assert state.held() == 0
    assert forest.counts == plain.counts and len(forest.instances) == 6 * 12
    study = forest.study("1.2.3.1")
    assert state.held() == tree
    assert study.patient.studies[1].series[0].instances[2].study.patient is study.patient
    assert study.patient.studies[1].series[0].instances[2].client is client
    assert forest.study(study.id) is study and forest.get("1.2.3.1") is study
    assert state.held() == tree  # walking and looking up within it make nothing
    same_models([study], [plain.study("1.2.3.1")])
    assert ids(forest.find("instance", PatientID="kk-0004")) == ids(
        plain.find("instance", PatientID="kk-0004")
    )
    assert state.held() == 2 * tree
    assert forest.find("series", SeriesInstanceUID="9.9.9") == [] and state.held() == 2 * tree
    assert ids(forest.by_accession_number("acc5x0")) == ids(plain.by_accession_number("acc5x0"))
    assert forest.by_accession_number("ACC5X0") == []  # exact, as in a forest of models
    assert state.held() == 3 * tree
    assert forest.patient("KK-0005").studies[0].accession_number == "acc5x0"
    assert state.held() == 3 * tree
    assert ids(forest.find("series", Modality="MR")) == ids(plain.find("series", Modality="MR"))
    assert state.held() == plain.counts.total  # any other query makes every model
    assert forest.snapshot() == plain.snapshot()
    for level in ("patients", "studies", "series", "instances"):
        same_models(getattr(forest, level), getattr(plain, level))
    assert forest.study("1.2.3.1") is study  # the same objects, once everything is made


def test_a_compact_forest_leaves_out_what_a_build_leaves_out() -> None:
    data = listings(3)
    dropped_study = data["/patients"][1]["Studies"].pop()  # stored after the patients' listing
    dropped_series = data["/series"].pop(0)  # deleted between two listings
    plain = load_forest(ListingClient(copy.deepcopy(data)))  # type: ignore[arg-type]
    forest = load_compact_forest(ListingClient(data))  # type: ignore[arg-type]
    assert forest.counts == plain.counts and forest.counts.studies == 5
    assert forest.get(dropped_study) is None and forest.get(dropped_series["ID"]) is None
    assert forest.studies(data["/studies"][0]["ID"]).series_ids == plain.studies[0].series_ids
    assert len(plain.studies[0].series_ids) == 1
    assert forest.snapshot() == plain.snapshot()


def test_a_compact_forest_at_series_depth_counts_instances_from_the_child_lists() -> None:
    data = listings(4)
    plain = load_forest(ListingClient(copy.deepcopy(data)), depth="series")  # type: ignore[arg-type]
    forest = load_compact_forest(ListingClient(data), depth="series")  # type: ignore[arg-type]
    assert forest.counts == plain.counts and forest.counts.instances == 48
    assert forest._state.held() == 0  # type: ignore[attr-defined]
    assert forest.snapshot() == plain.snapshot()


def test_a_compact_forest_updates_making_only_the_patients_the_changes_reach(
    servers: Servers,
) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_compact_forest(client)
    state: Any = forest._state
    assert state.held() == 0 and forest.counts == (4, 8, 16, 48)

    upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=3))  # a new patient
    report = forest.update()
    assert report.requests == 3 and report.changes == 13  # as in memory
    assert len(report.added.instances) == 10 and report.updated.total == 0
    assert state.held() == 13 and not state.full  # the new patient's models, nothing else
    assert forest.counts == (5, 9, 17, 58)

    # an instance joining an existing series: its patient is made, the others stay packed
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    report = forest.update()
    assert report.requests == 4 and len(report.added.instances) == 1
    tree = 1 + 2 + 2 * 2 + 2 * 2 * 3
    assert state.held() == 13 + tree + 1 and not state.full
    series = forest.series(synthetic.uid("series", 0, 0, 0, 0))
    assert set(report.updated.series) == {series.id}
    assert len(series.instances) == 4 == len(series.instance_ids)
    assert series.instances[-1].series is series
    assert forest.counts == (5, 9, 17, 59)
    assert forest.snapshot() == load_forest(client).snapshot()


def test_a_compact_forest_stays_compact_through_a_rebuild(servers: Servers) -> None:
    client = servers.new(sample=True, stable_age=3600)
    forest = load_compact_forest(client)

    upload(client, synthetic.SyntheticSpec(1, 1, 1, 10, seed=3))  # a new patient
    forest._state.last_seq += 1000  # a feed that went back: rebuilt
    report = forest.update()
    state: Any = forest._state
    assert report.rebuilt and "went back" in (report.reason or "")
    assert len(report.added.instances) == 10 and report.updated.total == 0
    assert report.removed.total == 0
    assert type(state).__name__ == "_CompactState" and state.held() == 0  # nothing made

    # an instance joining a series: only its patient is made to compare, and reported
    upload(client, LONGER, "P000/ST00/SE00/IM003")
    forest._state.last_seq += 1000
    report = forest.update()
    state = forest._state
    series = synthetic.uid("series", 0, 0, 0, 0)
    assert report.rebuilt and len(report.added.instances) == 1
    assert report.updated.series == (forest.series(series).id,)
    tree = 1 + 2 + 2 * 2 + 2 * 2 * 3 + 1
    assert state.held() == tree and not state.full
    assert forest.counts == (5, 9, 17, 59)
    assert forest.snapshot() == load_forest(client).snapshot()


def test_a_cached_compact_forest_catches_up_after_a_write_still_compact(
    servers: Servers, tmp_path: Any
) -> None:
    from kkorthanc.forest import build_patient_forest

    client = servers.new(sample=True, stable_age=3600)
    build_patient_forest.cache_clear()
    try:
        forest = build_patient_forest(client, compact=True)
        state: Any = forest._state
        assert type(state).__name__ == "_CompactState" and state.held() == 0
        assert build_patient_forest(client, compact=True) is forest  # cached
        assert build_patient_forest(client) is not forest  # the ordinary one is another

        spec = synthetic.SyntheticSpec(1, 1, 1, 2, seed=3)
        for _, data in synthetic.generate_bytes(spec):  # writes through the client: catch up
            client.post_bytes("/instances", data, content_type="application/dicom")
        made = 5  # the new patient's models
        if client.supports("Labels"):  # one label on one study: its patient is made too
            client.studies()[0].add_label("kk-seen")
            made += 1 + 2 + 2 * 2 + 2 * 2 * 3
        before = client.request_count
        assert build_patient_forest(client, compact=True) is forest
        # the feed, the new resources, the counts; where labels are stored /tools/labels and
        # an ID-only find per label and level
        labels = 1 + 4 if client.supports("Labels") else 0
        assert client.request_count - before == 3 + labels
        assert forest.counts == (5, 9, 17, 50)
        assert state.held() == made and not state.full  # the others stay packed
        with pytest.raises(ValueError, match="cannot go with store"):
            build_patient_forest(client, compact=True, store=tmp_path / "f.db")
    finally:
        build_patient_forest.cache_clear()
