"""Pydantic field types for DICOM values: lenient parsers that keep the typed value or ``None``.

Orthanc sends every tag value as a string; these annotations turn them into Python types with
the parsers of :mod:`kkorthanc.tags` and let values that are already typed pass through.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator

from . import tags as _tags
from .tags import PersonName

T = TypeVar("T")


def _lenient(parse: Callable[[str | None], T | None], kind: type) -> BeforeValidator:
    """A validator that parses DICOM strings and passes through values already typed."""

    def validate(value: Any) -> Any:
        if isinstance(value, str):
            # PersonName is a str: it passes through; plain strings are always parsed
            return value if kind is not str and type(value) is kind else parse(value)
        if value is None or isinstance(value, kind):
            return value
        return None

    return BeforeValidator(validate)


def _lenient_multi(parse: Callable[[str | None], tuple[Any, ...] | None]) -> BeforeValidator:
    def validate(value: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        if isinstance(value, list):
            return tuple(value)
        if isinstance(value, str):
            return parse(value)
        return None

    return BeforeValidator(validate)


DA = Annotated[datetime.date | None, _lenient(_tags.parse_da, datetime.date)]
TM = Annotated[datetime.time | None, _lenient(_tags.parse_tm, datetime.time)]
DT = Annotated[datetime.datetime | None, _lenient(_tags.parse_dt, datetime.datetime)]
IS = Annotated[int | None, _lenient(_tags.parse_is, int)]
DS = Annotated[float | None, _lenient(_tags.parse_ds, float)]
Text = Annotated[str | None, _lenient(_tags.parse_str, str)]
PN = Annotated[PersonName | None, _lenient(_tags.parse_pn, PersonName)]
MultiDS = Annotated[tuple[float, ...] | None, _lenient_multi(_tags.parse_multi(_tags.parse_ds))]
MultiText = Annotated[tuple[str, ...] | None, _lenient_multi(_tags.parse_multi(_tags.parse_str))]
MultiPN = Annotated[
    tuple[PersonName, ...] | None, _lenient_multi(_tags.parse_multi(_tags.parse_pn))
]
OrthancTime = Annotated[
    datetime.datetime | None, _lenient(_tags.parse_orthanc_datetime, datetime.datetime)
]
