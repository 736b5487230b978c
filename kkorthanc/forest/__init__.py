"""The patient forest: everything a server holds, linked and indexed, from a handful of requests.

>>> forest = build_patient_forest(client)            # cached for a minute
>>> forest.study("1.2.840.113619.2.1")                # O(1), no request
>>> forest.patients[0].studies[0].series[0].instances  # linked, no request
>>> report = forest.update()                         # replays the change feed
>>> stored = build_patient_forest(client, store="orthanc.forest")  # kept in a file

How the build, the consistency rule and the update work is described in ``docs/forest.md``.

Modules: :mod:`.model` (:class:`PatientForest`), :mod:`.build` (listing and linking),
:mod:`.update` (the change feed), :mod:`.cache` (:func:`build_patient_forest`),
:mod:`.state` (tables, indexes, :class:`LevelView`), :mod:`.reports` (counts and reports),
:mod:`._factory` (fast model building), :mod:`.store` (:class:`StoredForest`,
:func:`open_forest`), :mod:`._stored` (its state backed by the file), :mod:`._file` (the
SQLite file), :mod:`.compact` (:func:`load_compact_forest`: a forest kept deflated per
patient in memory), :mod:`._narrow` (finds narrowed by the identifier indexes).
"""

from __future__ import annotations

from ..errors import AmbiguousIdentifier, ForestStoreError, NotInForest
from ..server import Change, ChangePage
from .build import DEFAULT_PAGE_SIZE
from .build import Depth as Depth
from .cache import DEFAULT_MAXSIZE as DEFAULT_MAXSIZE
from .cache import DEFAULT_TTL, ForestCache, build_patient_forest
from .compact import load_compact_forest
from .model import PatientForest, load_forest
from .reports import ByLevel, CacheInfo, ForestCounts, UpdateReport
from .state import LevelView
from .store import SCHEMA_VERSION, StoredForest, StoreInfo, open_forest

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TTL",
    "SCHEMA_VERSION",
    "AmbiguousIdentifier",
    "ByLevel",
    "CacheInfo",
    "Change",
    "ChangePage",
    "ForestCache",
    "ForestCounts",
    "ForestStoreError",
    "LevelView",
    "NotInForest",
    "PatientForest",
    "StoreInfo",
    "StoredForest",
    "UpdateReport",
    "build_patient_forest",
    "load_compact_forest",
    "load_forest",
    "open_forest",
]
