"""pandas DataFrames of resources: one row per resource, typed columns (needs the ``pandas`` extra).

>>> from kkorthanc.frames import to_dataframe
>>> studies = to_dataframe(forest, "study")          # or forest.to_dataframe("study")
>>> studies.groupby(studies.study_date.dt.year).size()

Columns, in order:

- ``id``: the Orthanc ID;
- every typed field of the model by its snake_case name (``study_date``, ``modality``, ...):
  dates and Orthanc timestamps are ``datetime64[us]``, whole numbers nullable ``Int64``, decimal
  numbers ``float64``, flags nullable ``boolean``; times stay :class:`datetime.time`, person
  names :class:`~kkorthanc.tags.PersonName` and multi-values tuples (object columns);
- the child ID lists become counts: ``num_studies``, ``num_series``, ``num_instances``;
- the parents: Orthanc IDs (``parent_patient_id``, ``parent_study_id``, ``parent_series_id``)
  and DICOM identifiers (``patient_id``, ``study_instance_uid``, ``series_instance_uid``).

Building a frame never sends a request. Parents are read from relations already linked (a
forest links them all) and, for studies, from the patient tags Orthanc repeats on each study.
A resource whose parent is not linked gets the parent's Orthanc ID it carries itself and empty
(``None``) cells for what only the parent knows: build a forest first to fill them.
"""

from __future__ import annotations

import datetime
import types
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .models import Instance, Patient, Resource, Series, Study, level_class

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["column_names", "to_dataframe"]

#: fields that hold raw tag dictionaries: summarized elsewhere or not tabular
_SKIPPED = frozenset({"main_dicom_tags", "patient_main_dicom_tags"})
#: child ID lists, replaced by their lengths
_COUNTS = {"study_ids": "num_studies", "series_ids": "num_series", "instance_ids": "num_instances"}
#: parent columns added after the model's own fields, per level
_PARENT_COLUMNS: dict[type[Resource], tuple[str, ...]] = {
    Patient: (),
    Study: ("parent_patient_id", "patient_id"),
    Series: ("parent_study_id", "parent_patient_id", "patient_id", "study_instance_uid"),
    Instance: (
        "parent_series_id",
        "parent_study_id",
        "parent_patient_id",
        "patient_id",
        "study_instance_uid",
        "series_instance_uid",
    ),
}
_FOREST_LISTS = {Patient: "patients", Study: "studies", Series: "series", Instance: "instances"}


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("DataFrames need pandas: pip install 'kkorthanc[pandas]'") from exc
    return pandas


def _kind(annotation: Any) -> str:
    """The column kind of a field annotation: date, datetime, int, float, bool or object."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(arg) for arg in args if arg is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "object"
    if annotation is datetime.datetime:
        return "datetime"
    if annotation is datetime.date:
        return "date"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "object"


def _field_columns(cls: type[Resource]) -> list[tuple[str, str, str]]:
    """``(column, field, kind)`` for each typed field of a model, in declaration order."""
    columns: list[tuple[str, str, str]] = []
    parents = _PARENT_COLUMNS[cls]
    for name, info in cls.model_fields.items():
        if name in _SKIPPED or name in parents or name == "labels":
            continue
        if name in _COUNTS:
            columns.append((_COUNTS[name], name, "count"))
        else:
            columns.append((name, name, _kind(info.annotation)))
    # labels are empty before Orthanc 1.12: after the DICOM fields
    columns.append(("labels", "labels", "object"))
    return columns


def column_names(level: str) -> list[str]:
    """The columns :func:`to_dataframe` gives for a level (``"study"``, ``"Series"``, ...)."""
    cls = level_class(level)
    return [column for column, _, _ in _field_columns(cls)] + list(_PARENT_COLUMNS[cls])


def _linked_parent(resource: Resource) -> Resource | None:
    # the private link is read directly: the public relation would fetch when it is missing,
    # and pydantic's attribute protocol costs more than the rest of a row
    private = resource.__pydantic_private__
    parent: Resource | None = private.get("_parent") if private else None
    return parent


def _patient_id_of_study(study: Study) -> str | None:
    patient = _linked_parent(study)
    if isinstance(patient, Patient) and patient.patient_id is not None:
        return patient.patient_id
    return study.patient_main_dicom_tags.get("PatientID") or None


def _study_columns(study: Study | None) -> dict[str, Any]:
    if study is None:
        return {}
    return {
        "parent_patient_id": study.parent_patient_id,
        "patient_id": _patient_id_of_study(study),
        "study_instance_uid": study.study_instance_uid,
    }


def _series_columns(series: Series | None) -> dict[str, Any]:
    if series is None:
        return {}
    parent = _linked_parent(series)
    return {
        "parent_study_id": series.parent_study_id,
        "series_instance_uid": series.series_instance_uid,
        **_study_columns(parent if isinstance(parent, Study) else None),
    }


def _parents(resource: Resource, memo: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Parent IDs and UIDs known without a request; ``memo`` shares them between siblings."""
    if isinstance(resource, Study):
        own = _study_columns(resource)
        del own["study_instance_uid"]
        return own
    parent = _linked_parent(resource)
    if isinstance(resource, Series):
        key = id(parent)
        if key not in memo:
            memo[key] = _study_columns(parent if isinstance(parent, Study) else None)
        return {"parent_study_id": resource.parent_study_id, **memo[key]}
    if isinstance(resource, Instance):
        key = id(parent)
        if key not in memo:
            memo[key] = _series_columns(parent if isinstance(parent, Series) else None)
        return {"parent_series_id": resource.parent_series_id, **memo[key]}
    return {}


def _resources_of(source: Any, level: str | None) -> tuple[type[Resource], Sequence[Resource]]:
    """The model class and the resources of ``source`` (a forest or an iterable)."""
    cls = level_class(level) if level is not None else None
    if not isinstance(source, (Resource, str, bytes)) and all(
        hasattr(source, name) for name in _FOREST_LISTS.values()
    ):
        if cls is None:
            raise ValueError(
                "to_dataframe(forest, level) needs a level: "
                "'patient', 'study', 'series' or 'instance'"
            )
        return cls, list(getattr(source, _FOREST_LISTS[cls]))
    if isinstance(source, Resource):
        raise TypeError("to_dataframe() takes a list of resources or a forest, not one resource")
    if not isinstance(source, Iterable) or isinstance(source, (str, bytes)):
        raise TypeError(
            f"to_dataframe() takes a list of resources or a forest, not {type(source).__name__}"
        )
    resources = list(source)
    for item in resources:
        if not isinstance(item, Resource):
            raise TypeError(f"to_dataframe() got a {type(item).__name__}, not a resource")
    found = {type(item) for item in resources}
    if cls is None:
        if len(found) > 1:
            names = ", ".join(sorted(c.level for c in found))
            raise ValueError(f"resources of several levels ({names}): give one level at a time")
        cls = found.pop() if found else None
        if cls is None:
            raise ValueError("to_dataframe() of an empty list needs a level")
    elif found - {cls}:
        names = ", ".join(sorted(c.level for c in found - {cls}))
        raise ValueError(f"level {cls.level} asked, but the list holds {names} resources")
    return cls, resources


def to_dataframe(resources_or_forest: Any, level: str | None = None) -> pd.DataFrame:
    """One row per resource, with typed columns (see the module documentation).

    Args:
        resources_or_forest: a list (or any iterable) of resources of one level, or a
            patient forest.
        level: ``"patient"``, ``"study"``, ``"series"`` or ``"instance"``; required for a
            forest and for an empty list, checked against the resources otherwise.

    Returns:
        a :class:`pandas.DataFrame` with a default integer index; ``id`` holds Orthanc IDs.

    Raises:
        ImportError: pandas is not installed (``pip install 'kkorthanc[pandas]'``).
        ValueError: mixed levels, an unknown level, or a forest without a level.
        TypeError: something that is neither resources nor a forest.

    Costs no request.
    """
    pandas = _import_pandas()
    cls, resources = _resources_of(resources_or_forest, level)
    fields = _field_columns(cls)
    parent_columns = _PARENT_COLUMNS[cls]
    data: dict[str, list[Any]] = {column: [] for column, _, _ in fields}
    data.update({column: [] for column in parent_columns})
    memo: dict[int, dict[str, Any]] = {}
    for resource in resources:
        values = resource.__dict__  # pydantic keeps field values here; plain reads
        for column, name, kind in fields:
            value = values[name]
            data[column].append(len(value) if kind == "count" else value)
        parents = _parents(resource, memo)
        for column in parent_columns:
            data[column].append(parents.get(column))
    columns: dict[str, Any] = {}
    for column, _, kind in fields:
        columns[column] = _typed(pandas, data[column], kind)
    for column in parent_columns:
        columns[column] = pandas.Series(data[column], dtype=object)
    frame: pd.DataFrame = pandas.DataFrame(columns, index=pandas.RangeIndex(len(resources)))
    return frame


def _typed(pandas: Any, values: list[Any], kind: str) -> Any:
    if kind in ("date", "datetime"):
        # one resolution for every date column, wide enough for any DICOM date
        return pandas.to_datetime(pandas.Series(values, dtype=object)).astype("datetime64[us]")
    if kind in ("int", "count"):
        return pandas.Series(values, dtype="Int64" if kind == "int" else "int64")
    if kind == "float":
        return pandas.Series([float("nan") if v is None else v for v in values], dtype="float64")
    if kind == "bool":
        return pandas.Series(values, dtype="boolean")
    return pandas.Series(values, dtype=object)
