"""DICOM tags and values: parsing what Orthanc sends, naming tags, writing Python values back.

Orthanc hands DICOM values over as strings; the ``parse_*`` functions read them into Python
values and never raise (blank or malformed input gives ``None``). Every tag name a user
writes goes through :func:`tag_keyword`, and every Python value sent in a query, a C-FIND
or a modification through :func:`to_dicom`. The value forms, the keyword rule and the
conversion are described in ``docs/tags.md``.

Modules: :mod:`.parse` (parsers and :class:`PersonName`), :mod:`.dictionary` (main DICOM tags,
value representations, keywords and :func:`tag_keyword`), :mod:`.convert` (Python values
as DICOM text: :func:`to_dicom` and the date/time formatters).
"""

from __future__ import annotations

from .convert import (
    RANGE_VRS,
    date_to_dicom,
    datetime_to_dicom,
    time_match_bounds,
    time_to_dicom,
    to_dicom,
    value_to_dicom,
)
from .dictionary import (
    MAIN_DICOM_TAGS,
    MULTI_VALUED,
    TAG_NUMBERS,
    VR_OF,
    keyword_to_snake,
    snake_to_keyword,
    suggest_keywords,
    tag_keyword,
    vr_of,
)
from .parse import (
    PersonName,
    parse_da,
    parse_ds,
    parse_dt,
    parse_is,
    parse_multi,
    parse_orthanc_datetime,
    parse_pn,
    parse_str,
    parse_tm,
)

__all__ = [
    "MAIN_DICOM_TAGS",
    "MULTI_VALUED",
    "RANGE_VRS",
    "TAG_NUMBERS",
    "VR_OF",
    "PersonName",
    "date_to_dicom",
    "datetime_to_dicom",
    "keyword_to_snake",
    "parse_da",
    "parse_ds",
    "parse_dt",
    "parse_is",
    "parse_multi",
    "parse_orthanc_datetime",
    "parse_pn",
    "parse_str",
    "parse_tm",
    "snake_to_keyword",
    "suggest_keywords",
    "tag_keyword",
    "time_match_bounds",
    "time_to_dicom",
    "to_dicom",
    "value_to_dicom",
    "vr_of",
]
