"""The patient forest: everything a server holds, linked and indexed, from a handful of requests.

>>> forest = build_patient_forest(client)            # cached for a minute
>>> forest.study("1.2.840.113619.2.1")                # O(1), no request
>>> forest.patients[0].studies[0].series[0].instances  # linked, no request
>>> report = forest.update()                         # replays the change feed

How the build, the consistency rule and the update work is described in ``docs/forest.md``.

Modules: :mod:`.model` (:class:`PatientForest`), :mod:`.build` (listing and linking),
:mod:`.update` (the change feed), :mod:`.cache` (:func:`build_patient_forest`),
:mod:`.state` (tables, indexes, :class:`LevelView`), :mod:`.reports` (counts and reports),
:mod:`._factory` (fast model building).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ..errors import AmbiguousIdentifier, NotInForest
from ..server import Change, ChangePage
from . import update
from ._factory import _FACTORIES as _FACTORIES  # the tests compare them with validation
from ._factory import _new_memos as _new_memos
from .build import DEFAULT_PAGE_SIZE
from .build import Depth as Depth
from .cache import DEFAULT_MAXSIZE as DEFAULT_MAXSIZE
from .cache import DEFAULT_TTL, ForestCache, build_patient_forest
from .model import PatientForest, load_forest
from .reports import ByLevel, CacheInfo, ForestCounts, UpdateReport
from .state import LevelView
from .update import BULK_CHUNK as BULK_CHUNK
from .update import CHANGES_PAGE as CHANGES_PAGE
from .update import REBUILD_AFTER_CHANGES as REBUILD_AFTER_CHANGES

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TTL",
    "AmbiguousIdentifier",
    "ByLevel",
    "CacheInfo",
    "Change",
    "ChangePage",
    "ForestCache",
    "ForestCounts",
    "LevelView",
    "NotInForest",
    "PatientForest",
    "UpdateReport",
    "build_patient_forest",
    "load_forest",
]

#: tuning constants of the update, re-exported above
_UPDATE_TUNING = frozenset({"BULK_CHUNK", "CHANGES_PAGE", "REBUILD_AFTER_CHANGES"})


class _Package(types.ModuleType):
    """This package. Setting one of the update's tuning constants on it (as in
    ``kkorthanc.forest.REBUILD_AFTER_CHANGES = 5000``, which worked before the forest was a
    package) also sets it in :mod:`.update`, where it is read."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _UPDATE_TUNING:
            setattr(update, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
