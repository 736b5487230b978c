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
- below the patient level, the patient's name: ``patient_name``;
- the parents: Orthanc IDs (``parent_patient_id``, ``parent_study_id``, ``parent_series_id``)
  and DICOM identifiers (``patient_id``, ``study_instance_uid``, ``series_instance_uid``).

Building a frame never sends a request. Parents are read from relations already linked (a
forest links them all) and, for studies, from the patient tags Orthanc repeats on each study
(so a study frame names the patient, PatientID and PatientName, even from a plain ``find``).
A resource whose parent is not linked gets the parent's Orthanc ID it carries itself and empty
(``None``) cells for what only the parent knows: build a forest first to fill them.

An empty selection gives an empty frame with the same columns and dtypes as a full one
(``to_dataframe([], "study")``; a list cannot tell its level when it is empty, so it is given).
"""

from __future__ import annotations

import datetime
import types
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .models import LEVELS, Patient, Resource, Study, level_class

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["column_names", "to_dataframe"]

#: fields that hold raw tag dictionaries: summarized elsewhere or not tabular
_SKIPPED = frozenset({"main_dicom_tags", "patient_main_dicom_tags"})


def _ancestors(cls: type[Resource]) -> list[type[Resource]]:
    """The models above ``cls``, nearest first."""
    found: list[type[Resource]] = []
    parent = cls.parent_class()
    while parent is not None:
        found.append(parent)
        parent = parent.parent_class()
    return found


def _parent_columns(cls: type[Resource]) -> tuple[str, ...]:
    """The Orthanc IDs of the ancestors, nearest first, then their UIDs, top down."""
    ancestors = _ancestors(cls)
    ids = [level.parent_field for level in (cls, *ancestors) if level.parent_field is not None]
    return (*ids, *(level.uid_field for level in reversed(ancestors)))


def _count_column(cls: type[Resource]) -> str | None:
    """The column that replaces the child ID list by its length (``num_studies``, ...)."""
    child = cls.child_class()
    return f"num_{child.collection}" if child is not None else None


#: parent columns added after the model's own fields, per level
_PARENT_COLUMNS: dict[type[Resource], tuple[str, ...]] = {
    cls: _parent_columns(cls) for cls in LEVELS
}

#: fields of an ancestor that its descendants' frames carry besides its UID: every row below
#: the patient level names the patient
_CARRIED: dict[type[Resource], tuple[str, ...]] = {Patient: ("patient_name",)}


def _carried_columns(cls: type[Resource]) -> tuple[str, ...]:
    """The ancestors' carried fields, top down (``patient_name`` below the patient level)."""
    return tuple(
        column for ancestor in reversed(_ancestors(cls)) for column in _CARRIED.get(ancestor, ())
    )


#: carried columns, placed between the model's own fields and the parent columns
_CARRIED_COLUMNS: dict[type[Resource], tuple[str, ...]] = {
    cls: _carried_columns(cls) for cls in LEVELS
}


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
    count_column = _count_column(cls)
    for name, info in cls.model_fields.items():
        if name in _SKIPPED or name in parents or name == "labels":
            continue
        if count_column is not None and name == cls.child_ids_field:
            columns.append((count_column, name, "count"))
        else:
            columns.append((name, name, _kind(info.annotation)))
    # labels are empty before Orthanc 1.12: after the DICOM fields
    columns.append(("labels", "labels", "object"))
    return columns


def column_names(level: str) -> list[str]:
    """The columns :func:`to_dataframe` gives for a level (``"study"``, ``"Series"``, ...)."""
    cls = level_class(level)
    return [
        *(column for column, _, _ in _field_columns(cls)),
        *_CARRIED_COLUMNS[cls],
        *_PARENT_COLUMNS[cls],
    ]


def _own_columns(resource: Resource) -> dict[str, Any]:
    """What a resource gives the rows of its descendants: its UID and carried fields."""
    values = resource.__dict__
    columns = {resource.uid_field: values[resource.uid_field]}
    columns.update((name, values[name]) for name in _CARRIED.get(type(resource), ()))
    return columns


def _parents(resource: Resource, memo: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Parent IDs, UIDs and carried fields known without a request; ``memo`` shares them
    between siblings.

    The resource's own parent ID, then for each ancestor linked in memory its UID, its
    carried fields and its own parent ID, as far up as the links go. A study whose patient is
    not linked reads PatientID and PatientName from the patient tags Orthanc repeats on it.
    """
    cls = type(resource)
    columns: dict[str, Any] = {}
    if cls.parent_field is not None:
        columns[cls.parent_field] = resource.parent_id
        parent = resource.linked_parent()
        parent_class = cls.parent_class()
        if parent is not None and parent_class is not None and isinstance(parent, parent_class):
            key = id(parent)
            above = memo.get(key)
            if above is None:
                above = memo[key] = {**_own_columns(parent), **_parents(parent, memo)}
            columns.update(above)
    if isinstance(resource, Study) and Patient.uid_field not in columns:
        tags = resource.patient_main_dicom_tags
        key = id(tags)
        known = memo.get(key)
        if known is None:
            # parsed as the patient model parses them: the same types as a linked patient's
            patient = Patient.from_orthanc({"ID": resource.parent_id or "", "MainDicomTags": tags})
            known = memo[key] = _own_columns(patient)
        columns.update(known)
    return columns


def _resources_of(source: Any, level: str | None) -> tuple[type[Resource], Sequence[Resource]]:
    """The model class and the resources of ``source`` (a forest or an iterable)."""
    cls = level_class(level) if level is not None else None
    if not isinstance(source, (Resource, str, bytes)) and all(
        hasattr(source, level.collection) for level in LEVELS
    ):
        if cls is None:
            raise ValueError(
                "to_dataframe(forest, level) needs a level: "
                "'patient', 'study', 'series' or 'instance'"
            )
        return cls, list(getattr(source, cls.collection))
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
            raise ValueError(
                "to_dataframe() of an empty list needs a level, e.g. to_dataframe(found, 'study')"
            )
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
    parent_columns = (*_CARRIED_COLUMNS[cls], *_PARENT_COLUMNS[cls])
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
