"""The differential test on real-world files: pydicom's test and charset files in a real Orthanc.

One sandbox for the module (the run's index: SQLite, or PostgreSQL with
``KK_TEST_INDEX=postgresql``; the binary of ``ORTHANC_BINARY``). Every file is uploaded as it
is, through the client's upload: empty and shared PatientIDs, odd character sets, broken
values and all; what the server stores is kept. A few adversarial files are added (PatientIDs
that differ by a leading space, studies of one PatientID with different patient tags, a TM
value with fractions). Then queries are generated from the data's own values, with a seeded
generator, and three answers are compared for each:

- the server's own ``POST /tools/find`` (sent raw),
- ``client.find`` (the client's engine in front of the server),
- ``forest.find`` (the local engine on a forest of the same server).

Zero differences are required. Where a server version answers otherwise by design (Orthanc
1.10 merges the studies that share a StudyInstanceUID in a ``ModalitiesInStudy`` answer), the
raw answer is compared with that documented model instead (``docs/matching.md``).
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from kkorthanc import Orthanc, OrthancHTTPError, QueryError, Resource, synthetic
from kkorthanc.forest import PatientForest, load_forest
from kkorthanc.query import COMPUTED_TAGS, WILDCARD_VRS, compile_query, queryable_tags
from kkorthanc.sandbox import Sandbox
from kkorthanc.tags import RANGE_VRS, VR_OF, parse_da, parse_tm
from kkorthanc.transfer.sources import _not_dicom

pydicom_data = pytest.importorskip("pydicom.data")

#: queries per run: families of siblings, so a few thousand comparisons in all
FAMILIES = 420
SEED = 13


def corpus() -> list[str]:
    """pydicom's test and charset files (the files, not the folders), in a stable order."""
    paths = list(pydicom_data.get_testdata_files()) + list(pydicom_data.get_charset_files())
    return sorted({p for p in paths if os.path.isfile(p)}, key=lambda p: (os.path.basename(p), p))


def adversarial() -> list[bytes]:
    """Files a real archive holds and pydicom's corpus does not, each in its own patient."""
    spec = synthetic.SyntheticSpec(6, 1, 1, 1, seed=2024)
    out = []
    changes: list[dict[str, Any]] = [
        # two patients for Orthanc (it keeps a leading space, strips a trailing one)
        {"PatientID": "id11111", "PatientName": "Padded^One"},
        {"PatientID": " id11111", "PatientName": "Padded^Two"},
        # one PatientID, three studies with different patient tags (an ID collision)
        {"PatientID": "SHARED-1", "PatientName": "Smith^John", "PatientSex": "M",
         "PatientBirthDate": "19700101", "StudyTime": "141645.000000"},
        {"PatientID": "SHARED-1", "PatientName": "Smyth^Jon", "PatientSex": "F",
         "PatientBirthDate": "19710202", "StudyTime": "141645"},
        {"PatientID": "SHARED-1", "PatientName": "SSmith^Jöhn", "PatientSex": "O",
         "PatientBirthDate": "", "StudyTime": "1416"},
        # accents that fold on a PostgreSQL index and not on SQLite
        {"PatientID": "ACCENT-1", "PatientName": "ÉLODIE^Ørsted",
         "InstitutionName": "Hôpital SAINT-ÉTIENNE", "StudyDescription": "Épaule"},
    ]  # fmt: skip
    for dataset, change in zip(synthetic.generate(spec), changes, strict=True):
        for keyword, value in change.items():
            setattr(dataset, keyword, value)
        out.append(synthetic.dataset_to_bytes(dataset))
    return out


# ---------------------------------------------------------------------------------------------
# The server, its data and its forest
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    client: Orthanc
    forest: PatientForest
    files: int
    uploaded: dict[str, int]
    rejected_locally: list[str]
    pool: dict[str, list[str]]
    stats: collections.Counter[str] = field(default_factory=collections.Counter)


@pytest.fixture(scope="module")
def world(kk_mode: str, sandbox_options: dict[str, Any]) -> Iterator[World]:
    if kk_mode == "replay":
        pytest.skip("needs a real Orthanc")
    paths = corpus()
    extra = adversarial()
    with Sandbox(name="kk-realworld", **sandbox_options) as sandbox, sandbox.client() as client:
        # one worker: the same storage order, hence the same patient tags, every run
        report = client.upload(paths + extra, workers=1, progress=False)
        assert report.counts["failed"] == 0, report.failed
        # refused by the server: the error names the request; else refused before sending
        local = [i.source for i in report.rejected if not (i.error or "").startswith("POST ")]
        forest = load_forest(client)
        yield World(
            client,
            forest,
            files=len(paths) + len(extra),
            uploaded=dict(report.counts),
            rejected_locally=local,
            pool=value_pool(forest),
        )


def value_pool(forest: PatientForest) -> dict[str, list[str]]:
    """Every stored value of every main tag, the studies' copies of patient tags included."""
    pool: dict[str, set[str]] = collections.defaultdict(set)
    for level in (forest.patients, forest.studies, forest.series, forest.instances):
        for resource in level:
            for keyword, value in resource.main_dicom_tags.items():
                if keyword in VR_OF:
                    pool[keyword].add(value)
    for study in forest.studies:
        for keyword, value in study.patient_main_dicom_tags.items():
            if keyword in VR_OF:
                pool[keyword].add(value)
    pool["ModalitiesInStudy"] = {v for v in pool.get("Modality", ()) if v}
    return {keyword: sorted(values) for keyword, values in pool.items() if values}


@pytest.mark.no_cassette
def test_raw_datasets_of_either_byte_order_are_sent_for_the_server_to_judge() -> None:
    """No server needed: the pre-check passes pydicom's datasets without meta header, in
    little- and big-endian byte order, and still rejects text and archives unsent."""
    by_name = {os.path.basename(p): p for p in corpus()}
    for name in ("ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"):
        with open(by_name[name], "rb") as file:
            data = file.read()
        assert data[128:132] != b"DICM"
        assert _not_dicom(data) is None, name
    for junk in (b"not an image\n", b"{}", b"PK\x03\x04rest", b"\x1f\x8b\x08rest"):
        assert _not_dicom(junk) is not None, junk


def test_upload_leaves_every_verdict_to_the_server(world: World) -> None:
    """Nothing the server accepts is refused locally: the big-endian file without a meta
    header is stored, and every file refused before sending is refused by the server too."""
    client = world.client
    (big_endian,) = [p for p in corpus() if os.path.basename(p) == "ExplVR_BigEndNoMeta.dcm"]
    with open(big_endian, "rb") as file:
        data = file.read()
    assert data[128:132] != b"DICM" and _not_dicom(data) is None
    answer = client.post_bytes("/instances", data, content_type="application/dicom").json()
    assert answer["Status"] == "AlreadyStored"  # the upload stored it
    assert len(world.rejected_locally) > 5
    for path in world.rejected_locally:
        with open(path, "rb") as file:
            data = file.read()
        with pytest.raises(OrthancHTTPError):
            client.post_bytes("/instances", data, content_type="application/dicom")


# ---------------------------------------------------------------------------------------------
# Queries from the data's own values
# ---------------------------------------------------------------------------------------------

PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")
LEVELS = ("patient", "study", "series", "instance")


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _case(text: str, rng: random.Random) -> str:
    how = rng.choice(["upper", "lower", "swap", "mixed", "non-ascii up", "non-ascii down"])
    if how == "upper":
        return text.upper()
    if how == "lower":
        return text.lower()
    if how == "swap":
        return text.swapcase()
    if how == "mixed":
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
    up = how == "non-ascii up"
    return "".join(c if c.isascii() else (c.upper() if up else c.lower()) for c in text)


def _wild(text: str, rng: random.Random) -> str:
    how = rng.choice(["prefix", "suffix", "infix", "one", "many", "non-ascii", "cut"])
    if not text:
        return rng.choice(["*", "?*", "*?"])
    if how == "prefix":
        return text[: rng.randrange(len(text) + 1)] + "*"
    if how == "suffix":
        return "*" + text[rng.randrange(len(text) + 1) :]
    if how == "infix":
        start = rng.randrange(len(text))
        return "*" + text[start : start + rng.randrange(1, 4)] + "*"
    if how == "one":
        i = rng.randrange(len(text))
        return text[:i] + "?" + text[i + 1 :]
    if how == "many":
        return "".join("?" if rng.random() < 0.3 else c for c in text)
    if how == "non-ascii":
        mark = rng.choice(["?", "??", "*"])
        return "".join(mark if not c.isascii() else c for c in text)
    start = rng.randrange(len(text) + 1)
    end = rng.randrange(start, len(text) + 1)
    return text[:start] + rng.choice(["*", "?", "*?", "??"]) + text[end:]


def make_value(keyword: str, pool: dict[str, list[str]], rng: random.Random) -> Any:
    """A query value for ``keyword`` made from one (or two) of its stored values."""
    vr = VR_OF.get(keyword, "CS")
    values = pool[keyword]
    odd = [v for v in values if not v.isascii() or v != v.strip() or "^" in v]
    value = rng.choice(odd if odd and rng.random() < 0.5 else values)
    other = rng.choice(values)
    if keyword in COMPUTED_TAGS:
        return rng.choice([value, _case(value, rng), [value, other], f"{value}\\{other}"])
    if vr in RANGE_VRS:
        low, high = sorted([value, other])
        form = rng.choice(
            ["same", "range", "from", "to", "python", "python range", "list", "malformed"]
        )
        if form == "malformed":  # what people type: refused, on both engines alike
            if vr == "DA" and len(value) == 8:
                return rng.choice([f"{value[:4]}-{value[4:6]}-{value[6:]}", value[:4]])
            return rng.choice([f"{value}*", "garbage"])
        if form == "range":
            return f"{low}-{high}"
        if form == "from":
            return f"{low}-"
        if form == "to":
            return f"-{high}"
        parse = parse_da if vr == "DA" else parse_tm
        if form == "python" and parse(value) is not None:
            return parse(value)
        if form == "python range" and parse(low) is not None and parse(high) is not None:
            return (parse(low), None if rng.random() < 0.3 else parse(high))
        if form == "list" and "\\" not in value + other and "-" not in value + other:
            return [value, other]
        return value
    forms = ["same", "case", "case", "list", "empty", "space"]
    if vr in WILDCARD_VRS:
        forms += ["wild", "wild", "wild", "wild", "accents", "star"]
    if vr in ("IS", "US") and value.strip().isdigit():
        forms.append("int")
    form = rng.choice(forms)
    if form == "same":
        return value
    if form == "case":
        return _case(value, rng)
    if form == "list":
        second = _case(other, rng) if rng.random() < 0.3 else other
        if "\\" in value + second:
            return value
        return [value, second] if rng.random() < 0.5 else f"{value}\\{second}"
    if form == "empty":
        return ""
    if form == "space":
        return rng.choice([f" {value}", f"{value} ", value.replace("^", " "), value.strip()])
    if form == "wild":
        return _wild(value, rng)
    if form == "accents":
        return _strip_accents(value)
    if form == "star":
        return rng.choice(["*", "?*", "*?*", "??*", "?"])
    return int(value.strip())


def make_family(pool: dict[str, list[str]], rng: random.Random) -> list[Query]:
    """One query and its siblings: the same tags, the first one's value drawn again."""
    level = rng.choice(LEVELS)
    usable = [k for k in queryable_tags(level) if k in pool]
    patient_tags = [k for k in PATIENT_TAGS if k in usable]
    first: str
    if level != "patient" and patient_tags and rng.random() < 0.4:
        first = rng.choice(patient_tags)  # patient tags below the Patient level
    elif level == "study" and rng.random() < 0.15:
        first = "ModalitiesInStudy"
    else:
        first = rng.choice(usable)
    others = rng.sample(usable, k=min(len(usable), rng.choice([0, 0, 1, 1, 2])))
    cs = rng.random() < 0.25
    family = []
    for _ in range(rng.choice([4, 6, 8])):
        query = {keyword: make_value(keyword, pool, rng) for keyword in others}
        query[first] = make_value(first, pool, rng)
        limit = rng.choice([1, 2, 5]) if rng.random() < 0.1 else None
        family.append(Query(level, query, cs, limit))
    return family


@dataclass(frozen=True)
class Query:
    level: str
    tags: dict[str, Any]
    case_sensitive: bool
    limit: int | None = None


def ids(resources: Sequence[Resource]) -> list[str]:
    return sorted(r.id for r in resources)


def raw_find(client: Orthanc, query: Query) -> list[str]:
    """The server's own answer: ``POST /tools/find`` with the compiled query, IDs only."""
    compiled = compile_query(query.level, query.tags, case_sensitive=query.case_sensitive)
    body = {
        "Level": compiled.level,
        "Query": compiled.request_query(),
        "CaseSensitive": compiled.case_sensitive,
    }
    answer = client.post_json("/tools/find", body)
    assert isinstance(answer, list)
    return sorted(answer)


def merged_by_study_uid(forest: PatientForest, study_ids: Sequence[str]) -> dict[str, set[str]]:
    """Orthanc 1.10's ModalitiesInStudy answer model: one study per StudyInstanceUID."""
    groups: dict[str, set[str]] = collections.defaultdict(set)
    for study_id in study_ids:
        study = forest.study(study_id)
        groups[study.main_dicom_tags.get("StudyInstanceUID", "")].add(study_id)
    return groups


def compare(world: World, query: Query) -> str:
    """Run one query three ways; the outcome's name for the statistics."""
    client, forest, stats = world.client, world.forest, world.stats
    args = (query.level, query.tags)
    cs = query.case_sensitive
    try:
        compiled = compile_query(*args, case_sensitive=cs)
    except QueryError as refused:
        before = client.request_count
        with pytest.raises(QueryError) as local_error:
            forest.find(*args, case_sensitive=cs)
        with pytest.raises(QueryError) as remote_error:
            client.find(*args, case_sensitive=cs)
        assert str(local_error.value) == str(remote_error.value) == str(refused), query
        assert client.request_count == before, query  # refused before sending
        return "refused"
    local = ids(forest.find(*args, case_sensitive=cs))
    remote = ids(client.find(*args, case_sensitive=cs))
    assert remote == local, query
    if query.limit is not None:
        limited = client.find(*args, case_sensitive=cs, limit=query.limit)
        assert len(limited) == min(query.limit, len(remote)), query
        assert set(ids(limited)) <= set(remote), query
        stats["with a limit"] += 1
    if compiled.is_universal:
        return "universal (listing)"
    raw = raw_find(client, query)
    if compiled.computed and client.system.api_version < 17:
        # 1.10 merges the studies that share a StudyInstanceUID (documented)
        groups = merged_by_study_uid(forest, local)
        assert set(raw) <= set(local), query
        assert all(len(group & set(raw)) == 1 for group in groups.values()), query
        assert len(raw) == len(groups), query
        stats["ModalitiesInStudy merged by 1.10 as documented"] += 1
    else:
        assert raw == local, query
    if query.level != "patient" and any(k in PATIENT_TAGS for k in query.tags):
        stats["patient tags below the Patient level"] += 1
    if any(isinstance(v, str) and not v.isascii() for v in query.tags.values()):
        stats["non-ASCII values"] += 1
    return "matched some" if local else "matched none"


def test_generated_queries_agree_on_real_world_data(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(FAMILIES):
        for query in make_family(world.pool, rng):
            outcomes[compare(world, query)] += 1
            outcomes[f"level {query.level}"] += 1
    total = sum(v for k, v in outcomes.items() if not k.startswith("level "))
    counts = world.forest.counts
    with capsys.disabled():
        print(
            f"\nreal-world differential ({world.client.system.version}, "
            f"{world.client.system.index}): {world.files} files uploaded {world.uploaded} "
            f"({len(world.rejected_locally)} of the rejected refused before sending); "
            f"{counts.patients} patients, {counts.studies} studies, {counts.series} series, "
            f"{counts.instances} instances; {total} queries, 0 differences"
        )
        for name, count in sorted({**outcomes, **world.stats}.items()):
            print(f"  {name}: {count}")
    assert total >= 2000
    assert outcomes["matched some"] >= 600 and outcomes["matched none"] >= 300
    assert outcomes["refused"] >= 50  # malformed dates and times, wildcards on them
    assert world.stats["patient tags below the Patient level"] >= 300
    assert world.stats["non-ASCII values"] >= 100


# ---------------------------------------------------------------------------------------------
# The cases the differential test exists for, checked by name
# ---------------------------------------------------------------------------------------------


def test_studies_match_on_their_own_copy_of_the_patient_tags(world: World) -> None:
    """SHARED-1 has three studies with three names: each is found by its own name only."""
    client, forest = world.client, world.forest
    for name in ("Smith^John", "Smyth^Jon", "SSmith^Jöhn"):
        found = forest.find("study", PatientID="SHARED-1", PatientName=name)
        assert len(found) == 1 and found[0].patient_main_dicom_tags["PatientName"] == name
        assert ids(client.find("study", PatientID="SHARED-1", PatientName=name)) == ids(found)
    # the pydicom files with no PatientID: one Orthanc patient, studies with their own names
    anonymous = [s for s in forest.studies if not s.patient_main_dicom_tags.get("PatientID")]
    names = {s.patient_main_dicom_tags.get("PatientName") for s in anonymous}
    assert len(anonymous) >= 3 and len(names) >= 3
    for level in ("study", "series", "instance"):
        query: dict[str, Any] = {"PatientName": "*", "PatientID": ""}
        assert ids(client.find(level, query)) == ids(forest.find(level, query)), level


def test_a_time_finds_stored_fractions(world: World) -> None:
    """time(14, 16, 45) finds 141645.000000 and 141645; time(14, 16) finds 1416."""
    client, forest = world.client, world.forest
    shown: Callable[[Sequence[Any]], list[str]] = lambda found: sorted(  # noqa: E731
        s.main_dicom_tags["StudyTime"] for s in found
    )
    query = {"PatientID": "SHARED-1", "StudyTime": dt.time(14, 16, 45)}
    assert shown(client.find("study", query)) == ["141645", "141645.000000"]
    assert ids(forest.find("study", query)) == ids(client.find("study", query))
    query = {"PatientID": "SHARED-1", "StudyTime": dt.time(14, 16)}
    assert shown(forest.find("study", query)) == ["1416"]
    assert raw_find(client, Query("study", {"StudyTime": "141645", "PatientID": "SHARED-1"},
                                  False)) == ids(forest.find("study", StudyTime="141645",
                                                            PatientID="SHARED-1"))  # fmt: skip


def test_accents_follow_the_index_of_the_server(world: World) -> None:
    """PostgreSQL's lower() folds É to é, SQLite's does not: the forest follows its server."""
    client, forest = world.client, world.forest
    query = {"InstitutionName": "hôpital saint-étienne"}
    found = ids(forest.find("study", query))
    assert found == ids(client.find("study", query))
    postgresql = client.system.index == "PostgreSQL index"
    assert len(found) == (1 if postgresql else 0)
    # identifiers drop the accents in the index and fold them in the exact check: everywhere
    assert len(forest.find("patient", PatientName="élodie^ØRSTED")) == 1
