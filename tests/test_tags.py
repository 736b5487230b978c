"""Tests for kkorthanc.tags: DICOM value parsers, formatters and keyword helpers."""

from __future__ import annotations

import datetime as dt
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kkorthanc.errors import InvalidRequest, QueryError
from kkorthanc.tags import (
    MAIN_DICOM_TAGS,
    MULTI_VALUED,
    TAG_NUMBERS,
    VR_OF,
    PersonName,
    date_to_dicom,
    datetime_to_dicom,
    keyword_to_snake,
    parse_da,
    parse_ds,
    parse_dt,
    parse_is,
    parse_multi,
    parse_orthanc_datetime,
    parse_pn,
    parse_str,
    parse_tm,
    snake_to_keyword,
    suggest_keywords,
    tag_keyword,
    time_match_bounds,
    time_to_dicom,
    to_dicom,
    value_to_dicom,
    vr_of,
)

UTC = dt.timezone.utc


def tz(minutes: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(minutes=minutes))


# ---------------------------------------------------------------------------
# DA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240102", dt.date(2024, 1, 2)),
        ("19000101", dt.date(1900, 1, 1)),
        ("20240229", dt.date(2024, 2, 29)),
        (" 20240102 ", dt.date(2024, 1, 2)),
        ("20240102\x00", dt.date(2024, 1, 2)),
        ("2024.01.02", dt.date(2024, 1, 2)),
        ("1999.12.31", dt.date(1999, 12, 31)),
        # malformed or impossible
        (None, None),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("20211340", None),
        ("20230229", None),
        ("20210431", None),
        ("00000101", None),
        ("20210100", None),
        ("2021010", None),
        ("202101021", None),
        ("2021-01-02", None),
        ("2021.1.02", None),
        ("2021.13.01", None),
        ("2021/01/02", None),
        ("2021 0102", None),
        ("+2021010", None),
        ("２０２１０１０２", None),  # full-width digits
        ("2021010²", None),
    ],
)
def test_parse_da(raw: str | None, expected: dt.date | None) -> None:
    assert parse_da(raw) == expected


# ---------------------------------------------------------------------------
# TM
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", dt.time(12)),
        ("1234", dt.time(12, 34)),
        ("123456", dt.time(12, 34, 56)),
        ("123456.7", dt.time(12, 34, 56, 700000)),
        ("123456.78", dt.time(12, 34, 56, 780000)),
        ("123456.000001", dt.time(12, 34, 56, 1)),
        ("123456.123456", dt.time(12, 34, 56, 123456)),
        ("000000", dt.time(0)),
        ("235959.999999", dt.time(23, 59, 59, 999999)),
        ("235960", dt.time(23, 59, 59)),  # leap second
        (" 0830 ", dt.time(8, 30)),
        ("12:34", dt.time(12, 34)),
        ("12:34:56", dt.time(12, 34, 56)),
        ("12:34:56.25", dt.time(12, 34, 56, 250000)),
        # malformed
        (None, None),
        ("", None),
        (" ", None),
        ("abc", None),
        ("1", None),
        ("123", None),
        ("12345", None),
        ("1234567", None),
        ("240000", None),
        ("126000", None),
        ("123461", None),
        ("123456.", None),
        ("123456.1234567", None),
        ("1234.5", None),
        ("12.5", None),
        ("123456.12a", None),
        ("12:3:45", None),
        ("1:23:45", None),
        ("12:34:", None),
        ("1234:56", None),
        ("12:34:5", None),
        ("12-34-56", None),
        ("+12345", None),
    ],
)
def test_parse_tm(raw: str | None, expected: dt.time | None) -> None:
    assert parse_tm(raw) == expected


# ---------------------------------------------------------------------------
# DT
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240102030405", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("20240102030405.123456", dt.datetime(2024, 1, 2, 3, 4, 5, 123456)),
        ("20240102030405.5", dt.datetime(2024, 1, 2, 3, 4, 5, 500000)),
        ("2024", dt.datetime(2024, 1, 1)),
        ("202403", dt.datetime(2024, 3, 1)),
        ("20240315", dt.datetime(2024, 3, 15)),
        ("2024031512", dt.datetime(2024, 3, 15, 12)),
        ("202403151230", dt.datetime(2024, 3, 15, 12, 30)),
        (" 20240102030405 ", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("20240102030405+0000", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("20240102030405+0130", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz(90))),
        ("20240102030405-0500", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz(-300))),
        ("20240102030405.25-0330", dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=tz(-210))),
        ("2024+0100", dt.datetime(2024, 1, 1, tzinfo=tz(60))),
        ("20240102+1400", dt.datetime(2024, 1, 2, tzinfo=tz(840))),
        # malformed
        (None, None),
        ("", None),
        ("  ", None),
        ("abc", None),
        ("202", None),
        ("20245", None),
        ("2024011", None),
        ("202401021", None),
        ("20240102123", None),
        ("20241302", None),
        ("20240230", None),
        ("20240102250000", None),
        ("20240102030405.", None),
        ("20240102030405.1234567", None),
        ("2024010203.5", None),
        ("20240102030405+01", None),
        ("20240102030405+0160", None),
        ("20240102030405+2400", None),
        ("20240102030405+01a0", None),
        ("20240102030405Z", None),
        ("2024-01-02T03:04:05", None),
        ("+0100", None),
        ("x+0100", None),
    ],
)
def test_parse_dt(raw: str | None, expected: dt.datetime | None) -> None:
    result = parse_dt(raw)
    assert result == expected
    if expected is not None:
        assert result is not None
        assert result.utcoffset() == expected.utcoffset()


def test_parse_dt_naive_without_offset() -> None:
    result = parse_dt("20240102030405")
    assert result is not None
    assert result.tzinfo is None


# ---------------------------------------------------------------------------
# Orthanc timestamps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240102T030405", dt.datetime(2024, 1, 2, 3, 4, 5)),
        (" 20240102T030405 ", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("20240102T030405.5", dt.datetime(2024, 1, 2, 3, 4, 5, 500000)),
        ("20240102T030405,123456789", dt.datetime(2024, 1, 2, 3, 4, 5, 123456)),
        (None, None),
        ("", None),
        ("abc", None),
        ("20240102030405", None),
        ("20240102 030405", None),
        ("20241302T030405", None),
        ("20240102T250405", None),
        ("20240102T0304", None),
        ("20240102T030405.", None),
        ("20240102T030405x", None),
        ("2024-01-02T03:04:05", None),
    ],
)
def test_parse_orthanc_datetime(raw: str | None, expected: dt.datetime | None) -> None:
    assert parse_orthanc_datetime(raw) == expected


# ---------------------------------------------------------------------------
# IS / DS / strings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        (" 42 ", 42),
        ("+7", 7),
        ("-7", -7),
        ("0", 0),
        ("007", 7),
        ("-2147483648", -2147483648),
        (None, None),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("1.0", None),
        ("1e3", None),
        ("1 2", None),
        ("1_000", None),
        ("٤٢", None),  # Arabic-Indic digits
        ("+", None),
        ("--1", None),
    ],
)
def test_parse_is(raw: str | None, expected: int | None) -> None:
    assert parse_is(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.5", 1.5),
        (" 1.5 ", 1.5),
        ("-0.25", -0.25),
        ("+3", 3.0),
        ("12", 12.0),
        ("1e3", 1000.0),
        ("1.5E-2", 0.015),
        (".5", 0.5),
        ("5.", 5.0),
        (None, None),
        ("", None),
        ("  ", None),
        ("abc", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e400", None),
        ("1_0", None),
        ("1,5", None),
        ("1.5.2", None),
        ("١٫٥", None),
    ],
)
def test_parse_ds(raw: str | None, expected: float | None) -> None:
    assert parse_ds(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CT", "CT"),
        ("  CHEST ", "CHEST"),
        ("1.2.840.10008.1\x00", "1.2.840.10008.1"),
        ("Müller", "Müller"),
        ("a b", "a b"),
        (None, None),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_str(raw: str | None, expected: str | None) -> None:
    assert parse_str(raw) == expected


# ---------------------------------------------------------------------------
# Multi-values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parser", "raw", "expected"),
    [
        (parse_ds, "1\\0\\0\\0\\1\\0", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
        (parse_ds, " -12.5\\3e1 \\ 0 ", (-12.5, 30.0, 0.0)),
        (parse_ds, "7", (7.0,)),
        (parse_ds, "1\\x\\0", None),
        (parse_ds, "1\\\\0", None),
        (parse_ds, "1\\nan", None),
        (parse_is, "1\\2\\3", (1, 2, 3)),
        (parse_str, "ORIGINAL\\PRIMARY\\AXIAL", ("ORIGINAL", "PRIMARY", "AXIAL")),
        (parse_str, "ID1 \\ ID2", ("ID1", "ID2")),
        (parse_str, "A\\", None),
        (parse_da, "20240102\\2023.05.06", (dt.date(2024, 1, 2), dt.date(2023, 5, 6))),
        (parse_da, "20240102\\20241340", None),
        (parse_tm, "12\\1230", (dt.time(12), dt.time(12, 30))),
        (parse_pn, "Doe^John\\Roe^Jane", ("Doe^John", "Roe^Jane")),
        (parse_ds, None, None),
        (parse_ds, "", None),
        (parse_ds, "  ", None),
        (parse_str, "\\", None),
    ],
)
def test_parse_multi(parser: Callable[[str], Any], raw: str | None, expected: Any) -> None:
    assert parse_multi(parser)(raw) == expected


def test_parse_multi_pn_items_are_person_names() -> None:
    result = parse_multi(parse_pn)("Doe^John\\Roe^Jane")
    assert result is not None
    assert all(isinstance(name, PersonName) for name in result)
    assert [name.family for name in result] == ["Doe", "Roe"]


def test_parse_multi_has_descriptive_name() -> None:
    assert parse_multi(parse_ds).__name__ == "parse_multi(parse_ds)"


# ---------------------------------------------------------------------------
# PN
# ---------------------------------------------------------------------------

PN_CASES: list[tuple[str, dict[str, str]]] = [
    (
        "Doe^John",
        {"family": "Doe", "given": "John", "middle": "", "prefix": "", "suffix": ""},
    ),
    (
        "Adams^John Robert Quincy^^Rev.^B.A. M.Div.",
        {
            "family": "Adams",
            "given": "John Robert Quincy",
            "middle": "",
            "prefix": "Rev.",
            "suffix": "B.A. M.Div.",
        },
    ),
    (
        "Wang^Xiao^Ming^Dr^Jr",
        {"family": "Wang", "given": "Xiao", "middle": "Ming", "prefix": "Dr", "suffix": "Jr"},
    ),
    ("SMITH", {"family": "SMITH", "given": "", "ideographic": "", "phonetic": ""}),
    ("王^小明", {"family": "王", "given": "小明", "ideographic": ""}),
    ("Müller^Jürgen", {"family": "Müller", "given": "Jürgen", "middle": ""}),
    (
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        {
            "family": "Yamada",
            "given": "Tarou",
            "alphabetic": "Yamada^Tarou",
            "ideographic": "山田^太郎",
            "phonetic": "やまだ^たろう",
        },
    ),
    (
        "Hong^Gildong=洪^吉洞=홍^길동",
        {"family": "Hong", "given": "Gildong", "ideographic": "洪^吉洞", "phonetic": "홍^길동"},
    ),
    ("=山田^太郎", {"family": "", "given": "", "alphabetic": "", "ideographic": "山田^太郎"}),
    ("Doe^John=", {"family": "Doe", "ideographic": "", "phonetic": ""}),
    ("Doe ^ John ", {"family": "Doe", "given": "John"}),
    ("^John", {"family": "", "given": "John"}),
]


@pytest.mark.parametrize(("raw", "parts"), PN_CASES)
def test_parse_pn_components(raw: str, parts: dict[str, str]) -> None:
    name = parse_pn(raw)
    assert isinstance(name, PersonName)
    assert name == raw.strip()
    for attribute, expected in parts.items():
        assert getattr(name, attribute) == expected, attribute


@pytest.mark.parametrize("raw", [None, "", "   ", "\x00"])
def test_parse_pn_empty(raw: str | None) -> None:
    assert parse_pn(raw) is None


def test_parse_pn_strips_padding() -> None:
    name = parse_pn("Doe^John ")
    assert name == "Doe^John"
    assert type(name) is PersonName


def test_person_name_behaves_like_str() -> None:
    name = PersonName("Doe^John")
    assert name == "Doe^John"
    assert str.__eq__("Doe^John", name)
    assert hash(name) == hash("Doe^John")
    assert name < "Zed"
    assert sorted([PersonName("b"), "a"]) == ["a", "b"]
    assert {"Doe^John": 1}[name] == 1
    assert str(name) == "Doe^John"
    assert f"{name}" == "Doe^John"
    assert repr(name) == "PersonName('Doe^John')"
    assert pickle.loads(pickle.dumps(name)) == name
    assert type(pickle.loads(pickle.dumps(name))) is PersonName


def test_person_name_in_pydantic_model() -> None:
    from pydantic import BaseModel

    class Holder(BaseModel):
        name: PersonName | None = None

    held = Holder(name="Yamada^Tarou=山田^太郎")  # type: ignore[arg-type]
    assert isinstance(held.name, PersonName)
    assert held.name.ideographic == "山田^太郎"
    assert held.model_dump() == {"name": "Yamada^Tarou=山田^太郎"}
    assert Holder.model_validate_json(held.model_dump_json()) == held
    assert Holder().name is None


# ---------------------------------------------------------------------------
# Formatting and round trips
# ---------------------------------------------------------------------------


def test_formatters() -> None:
    assert date_to_dicom(dt.date(2024, 1, 2)) == "20240102"
    assert date_to_dicom(dt.date(5, 6, 7)) == "00050607"
    assert date_to_dicom(dt.datetime(2024, 1, 2, 3, 4)) == "20240102"
    assert time_to_dicom(dt.time(3, 4, 5)) == "030405"
    assert time_to_dicom(dt.time(3, 4, 5, 6)) == "030405.000006"
    assert time_to_dicom(dt.time(3, 4, 5, tzinfo=UTC)) == "030405"
    assert datetime_to_dicom(dt.datetime(2024, 1, 2, 3, 4, 5)) == "20240102030405"
    assert datetime_to_dicom(dt.datetime(2024, 1, 2, 3, 4, 5, 120000)) == "20240102030405.120000"
    assert datetime_to_dicom(dt.datetime(2024, 1, 2, tzinfo=UTC)) == "20240102000000+0000"
    assert datetime_to_dicom(dt.datetime(2024, 1, 2, tzinfo=tz(-210))) == "20240102000000-0330"
    assert datetime_to_dicom(dt.datetime(2024, 1, 2, tzinfo=tz(345))) == "20240102000000+0545"


def test_time_match_bounds_cover_the_instant_a_time_names() -> None:
    assert time_match_bounds(dt.time(14, 16, 45)) == ("141645", "141645.999999")
    assert time_match_bounds(dt.time(14, 16)) == ("1416", "141600.999999")
    assert time_match_bounds(dt.time(14)) == ("14", "140000.999999")
    assert time_match_bounds(dt.time(14, 16, 45, 500000)) == ("141645.5", "141645.500000")
    assert time_match_bounds(dt.time(0, 0, 0, 1)) == ("000000.000001", "000000.000001")


@given(st.times(), st.sampled_from([0, 1, 2, 3, 4, 5, 6]))
def test_time_match_bounds_hold_every_spelling_of_the_time_as_text(t: dt.time, digits: int) -> None:
    """Every TM text that parse_tm reads as ``t`` (to the precision of ``t``) lies within the
    bounds, compared as text like Orthanc compares them; the next second does not."""
    low, high = time_match_bounds(t)
    whole = f"{t.hour:02d}{t.minute:02d}{t.second:02d}"
    fraction = f"{t.microsecond:06d}"
    if t.microsecond:
        kept = max(digits, len(fraction.rstrip("0")))
        spellings = [f"{whole}.{fraction[:kept]}{'0' * (kept - 6)}"]
    else:
        spellings = [whole, f"{whole}.{'0' * max(digits, 1)}", f"{whole}.{'9' * max(digits, 1)}"]
        if whole.endswith("00"):
            spellings.append(whole[:4])
    for text in spellings:
        assert low <= text <= high, (t, text)
        assert parse_tm(text) is not None and parse_tm(text).replace(microsecond=0) == t.replace(
            microsecond=0
        )
    if t < dt.time(23, 59, 59):
        after = (dt.datetime.combine(dt.date(2000, 1, 1), t) + dt.timedelta(seconds=1)).time()
        assert f"{after.hour:02d}{after.minute:02d}{after.second:02d}" > high


@given(st.dates(min_value=dt.date(1, 1, 1)))
def test_date_round_trip(d: dt.date) -> None:
    assert parse_da(date_to_dicom(d)) == d


@given(st.times())
def test_time_round_trip(t: dt.time) -> None:
    assert parse_tm(time_to_dicom(t)) == t


@given(st.datetimes())
def test_naive_datetime_round_trip(value: dt.datetime) -> None:
    parsed = parse_dt(datetime_to_dicom(value))
    assert parsed == value
    assert parsed is not None
    assert parsed.tzinfo is None


@given(
    st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_aware_datetime_round_trip(value: dt.datetime, offset_minutes: int) -> None:
    aware = value.replace(tzinfo=tz(offset_minutes))
    parsed = parse_dt(datetime_to_dicom(aware))
    assert parsed == aware
    assert parsed is not None
    assert parsed.utcoffset() == aware.utcoffset()


@given(st.text(max_size=30))
def test_parsers_never_raise(text: str) -> None:
    for parser in (
        parse_da,
        parse_tm,
        parse_dt,
        parse_is,
        parse_ds,
        parse_str,
        parse_pn,
        parse_orthanc_datetime,
        parse_multi(parse_ds),
        parse_multi(parse_da),
    ):
        parser(text)


@given(st.text(alphabet="0123456789.:+-^=\\ eE", max_size=25))
def test_parsers_never_raise_on_near_misses(text: str) -> None:
    for parser in (parse_da, parse_tm, parse_dt, parse_is, parse_ds, parse_orthanc_datetime):
        parser(text)


# ---------------------------------------------------------------------------
# Keywords
# ---------------------------------------------------------------------------

ALL_KEYWORDS = sorted({k for level in MAIN_DICOM_TAGS.values() for k in level})


@pytest.mark.parametrize(
    ("snake", "keyword"),
    [
        ("patient_name", "PatientName"),
        ("study_instance_uid", "StudyInstanceUID"),
        ("sop_instance_uid", "SOPInstanceUID"),
        ("patient_id", "PatientID"),
        ("other_patient_ids", "OtherPatientIDs"),
        ("series_instance_uid", "SeriesInstanceUID"),
        ("accession_number", "AccessionNumber"),
        ("image_orientation_patient", "ImageOrientationPatient"),
        ("body_part_examined", "BodyPartExamined"),
        ("operators_name", "OperatorsName"),
        ("study_id", "StudyID"),
        ("number_of_frames", "NumberOfFrames"),
        ("temporal_position_identifier", "TemporalPositionIdentifier"),
        ("referenced_sop_instance_uids", "ReferencedSOPInstanceUIDs"),
        ("modality", "Modality"),
    ],
)
def test_snake_keyword_pairs(snake: str, keyword: str) -> None:
    assert snake_to_keyword(snake) == keyword
    assert keyword_to_snake(keyword) == snake


@pytest.mark.parametrize("keyword", ALL_KEYWORDS)
def test_keyword_round_trip(keyword: str) -> None:
    snake = keyword_to_snake(keyword)
    assert snake == snake.lower()
    assert snake_to_keyword(snake) == keyword


def test_conversions_are_idempotent() -> None:
    assert snake_to_keyword("PatientName") == "PatientName"
    assert snake_to_keyword("SOPInstanceUID") == "SOPInstanceUID"
    assert keyword_to_snake("patient_name") == "patient_name"
    assert keyword_to_snake("sop_instance_uid") == "sop_instance_uid"


def test_keyword_to_snake_generic_acronym() -> None:
    assert keyword_to_snake("HTTPServer") == "http_server"
    assert keyword_to_snake("IDs") == "ids"


def test_main_dicom_tags_table() -> None:
    assert set(MAIN_DICOM_TAGS) == {"Patient", "Study", "Series", "Instance"}
    assert MAIN_DICOM_TAGS["Patient"] == (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
    )
    assert "StudyInstanceUID" in MAIN_DICOM_TAGS["Study"]
    assert "SeriesInstanceUID" in MAIN_DICOM_TAGS["Series"]
    assert "SOPInstanceUID" in MAIN_DICOM_TAGS["Instance"]
    assert "ImageOrientationPatient" in MAIN_DICOM_TAGS["Series"]
    assert "ImageOrientationPatient" in MAIN_DICOM_TAGS["Instance"]
    for keywords in MAIN_DICOM_TAGS.values():
        assert len(keywords) == len(set(keywords))


def test_vr_table_covers_exactly_the_main_tags() -> None:
    assert set(VR_OF) == set(ALL_KEYWORDS)
    assert MULTI_VALUED.issubset(VR_OF)
    known_vrs = {"DA", "TM", "DT", "IS", "DS", "PN", "LO", "SH", "CS", "UI", "ST", "LT", "US"}
    assert set(VR_OF.values()) <= known_vrs
    assert VR_OF["PatientBirthDate"] == "DA"
    assert VR_OF["StudyTime"] == "TM"
    assert VR_OF["PatientName"] == "PN"
    assert VR_OF["SeriesNumber"] == "IS"
    assert VR_OF["ImagePositionPatient"] == "DS"
    assert VR_OF["SOPInstanceUID"] == "UI"


def test_suggest_keywords() -> None:
    assert suggest_keywords("PatientNme")[0] == "PatientName"
    assert suggest_keywords("patient_nme")[0] == "patient_name"
    assert suggest_keywords("PATIENTNAME")[0] == "PatientName"
    assert suggest_keywords("patientname")[0] == "patient_name"
    assert suggest_keywords("study_instance_id")[0] == "study_instance_uid"
    assert suggest_keywords("SopInstanceUid")[0] == "SOPInstanceUID"
    assert suggest_keywords("Modalty") == ["Modality"]
    assert suggest_keywords("zzzzzz") == []
    assert suggest_keywords("") == []
    assert suggest_keywords("PatientNme", n=0) == []
    assert len(suggest_keywords("Patient", n=2)) <= 2


def test_suggest_keywords_has_no_duplicates() -> None:
    for name in ("patient_id", "PatientID", "study_date", "series"):
        result = suggest_keywords(name, n=5)
        assert len(result) == len(set(result))
        assert len({snake_to_keyword(k) for k in result}) == len(result)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ABC", "ABC"),
        (dt.date(2021, 2, 3), "20210203"),
        (dt.time(4, 5, 6), "040506"),
        (dt.datetime(2021, 2, 3, 4, 5, 6), "20210203040506"),
        (7, "7"),
        (2.5, "2.5"),
        (True, None),
        ([1, 2], None),
        (None, None),
    ],
)
def test_value_to_dicom(value: object, expected: str | None) -> None:
    assert value_to_dicom(value) == expected


# ---------------------------------------------------------------------------
# The one keyword rule and the one value conversion
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PatientName", "PatientName"),
        ("patient_name", "PatientName"),
        (" sop_instance_uid ", "SOPInstanceUID"),
        ("modality", "Modality"),  # snake_case without an underscore
        ("ModalitiesInStudy", "ModalitiesInStudy"),  # any keyword, not only main tags
        ("0010,0010", "PatientName"),
        ("(0020,000D)", "StudyInstanceUID"),
        ("0020000d", "StudyInstanceUID"),
        ("0008,0016", "0008,0016"),  # not a main tag: the number, as the server takes it
        ("(0019,10AB)", "0019,10AB"),
    ],
)
def test_tag_keyword_spellings(name: str, expected: str) -> None:
    assert tag_keyword(name) == expected


def test_tag_keyword_paths_only_where_asked() -> None:
    path = "referenced_image_sequence[0].referenced_sop_instance_uid"
    assert tag_keyword(path, paths=True) == "ReferencedImageSequence[0].ReferencedSOPInstanceUID"
    assert tag_keyword("OtherPatientIDsSequence[*].0010,0020", paths=True) == (
        "OtherPatientIDsSequence[*].PatientID"
    )
    with pytest.raises(InvalidRequest, match="is not a tag name"):
        tag_keyword(path)


@pytest.mark.parametrize("name", ["", "  ", "Patient Name", "_x", "1abc", "a[0]", 7, None])
def test_tag_keyword_refusals_name_the_argument(name: object) -> None:
    with pytest.raises(InvalidRequest, match=r"^find\(\): .* is not a tag name") as caught:
        tag_keyword(name, where="find(): ")
    assert type(caught.value) is InvalidRequest
    with pytest.raises(QueryError):
        tag_keyword(name, error=QueryError)


def test_tag_numbers_resolve_to_their_keywords() -> None:
    for keyword, number in TAG_NUMBERS.items():
        assert tag_keyword(number) == keyword
        assert tag_keyword(f"({number.upper()})") == keyword


def test_vr_of_knows_main_tags_and_find_keys() -> None:
    assert vr_of("StudyDate") == "DA"
    assert vr_of("NumberOfStudyRelatedInstances") == "IS"
    assert vr_of("ModalitiesInStudy") == "CS"
    assert vr_of("PatientWeight") is None
    assert vr_of("0019,1001") is None


def test_to_dicom_match() -> None:
    def match(keyword: str, value: Any) -> str:
        return to_dicom(keyword, value, purpose="match")

    assert match("PatientName", "DOE*") == "DOE*"
    assert match("PatientName", None) == ""
    assert match("SeriesNumber", 3) == "3"
    assert match("StudyDate", dt.date(2020, 1, 2)) == "20200102"
    assert match("StudyTime", dt.time(8, 30)) == "083000"  # as text: find() makes it a range first
    assert match("StudyDate", (dt.date(2020, 1, 2), None)) == "20200102-"
    assert match("StudyDate", (None, "20201231")) == "-20201231"
    assert match("StudyDate", ("20200101", "20201231")) == "20200101-20201231"
    assert match("Modality", ["CT", "MR"]) == "CT\\MR"
    assert match("Modality", {"MR", "CT"}) == "CT\\MR"
    assert match("Modality", ["C*"]) == "C*\\C*"  # a list's items are literal
    assert match("ImagePositionPatient", 1.5) == "1.5"
    # a tag whose value representation is not known: the value's type decides
    assert match("AcquisitionDateTime", dt.datetime(2020, 1, 2, 3, 4, 5)) == "20200102030405"
    assert match("ScheduledProcedureStepStartDate", (dt.date(2020, 1, 2), None)) == "20200102-"
    assert match("PatientWeight", 72.5) == "72.5"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("SeriesNumber", True, "SeriesNumber: a bool is not a DICOM value"),
        ("SeriesNumber", 1.5, "value representation IS: cannot query with a float"),
        ("StudyDate", dt.datetime(2020, 1, 1, 10), "pass a datetime.date or a string, not a"),
        ("StudyTime", dt.date(2020, 1, 1), "value representation TM, not a date"),
        ("StudyDate", dt.time(1), "value representation DA, not a time"),
        ("PatientID", ("A", "B"), "ranges exist only for dates and times"),
        ("StudyDate", (dt.date(2020, 1, 1),), "needs two items, not 1"),
        ("StudyDate", ("2020-", None), "contains '-'"),
        ("Modality", [], "an empty list of alternatives matches nothing"),
        ("Modality", ["CT\\MR"], "contains a backslash"),
        ("Modality", [["CT"]], "cannot query with a list"),
        ("StudyDate", ["20200101-20200102"], "contains '-'"),
        ("ModalitiesInStudy", ("CT", "MR"), "value representation CS: ranges exist only"),
        ("PatientWeight", float("nan"), "is not a DICOM number"),
        ("PatientName", object(), "cannot query with an object"),
    ],
)
def test_to_dicom_match_refusals(keyword: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        to_dicom(keyword, value, purpose="match", where="find(): ")
    assert str(caught.value).startswith(f"find(): {keyword}")
    with pytest.raises(QueryError, match=re.escape(message)):
        to_dicom(keyword, value, purpose="match", error=QueryError)


def test_to_dicom_write() -> None:
    def write(keyword: str, value: Any) -> Any:
        return to_dicom(keyword, value, purpose="write")

    assert write("StudyDescription", "Chest") == "Chest"
    assert write("StudyDate", dt.date(2021, 3, 4)) == "20210304"
    assert write("InstanceNumber", 42) == "42"
    assert write("OperatorsName", ["A^B", "C^D"]) == "A^B\\C^D"
    assert write("OperatorsName", ("A^B", "C^D")) == "A^B\\C^D"  # a tuple is no range here
    assert write("SeriesType", {"STATIC", "IMAGE"}) == "IMAGE\\STATIC"
    assert write("ImageComments", []) == ""
    assert write("ImagePositionPatient", [0.5, -1, 2.25]) == "0.5\\-1\\2.25"
    # a DS holds 16 characters: longer decimals lose digits, not validity
    assert write("ImagePositionPatient", 1 / 3) == "0.33333333333333"
    assert write("PatientWeight", 1 / 3) == repr(1 / 3)  # not a DS: as Python writes it
    assert write(
        "ReferencedStudySequence",
        [{"referenced_sop_instance_uid": "1.2", "0008,0020": dt.date(2020, 1, 2), "X": 3}],
    ) == [{"ReferencedSOPInstanceUID": "1.2", "StudyDate": "20200102", "X": "3"}]


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("StudyDescription", None, "None is not a DICOM value"),
        ("StudyDescription", True, "a bool is not a DICOM value"),
        ("StudyDate", dt.datetime(2020, 1, 2, 3), "not a datetime"),
        ("InstanceNumber", 7.5, "value representation IS: cannot write a float"),
        ("OperatorsName", ["A\\B"], "contains a backslash"),
        ("StudyDescription", object(), "cannot write an object"),
        ("OperatorsName", [["A"]], "cannot write a list"),
        ("ReferencedStudySequence", [{"Bad Name": "1"}], "'Bad Name' is not a tag name"),
    ],
)
def test_to_dicom_write_refusals(keyword: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        to_dicom(keyword, value, purpose="write", where="modify(): ")
    assert str(caught.value).startswith("modify(): ")


scalars = st.one_of(
    st.text(max_size=5),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.times(),
    st.datetimes(),
    st.booleans(),
    st.none(),
)


@given(scalars)
def test_one_conversion_for_single_values(value: object) -> None:
    """value_to_dicom, matching and writing agree on one value of a tag of unknown VR."""
    expected = value_to_dicom(value)

    def converted(purpose: str) -> object:
        try:
            if purpose == "match":
                return to_dicom("PatientWeight", value, purpose="match")
            return to_dicom("PatientWeight", value, purpose="write")
        except InvalidRequest:
            return None

    assert converted("write") == expected
    assert converted("match") == ("" if value is None else expected)  # None matches anything

