"""DICOM matching: one query engine, sent to the server or applied to a forest.

A query is compiled once (:func:`compile_query`) into :class:`Constraint` objects; the same
compiled query becomes the body of ``POST /tools/find`` (:func:`server_find`) or filters a
forest in memory (:func:`local_find`), and both give the same resources. The rules, and how
they reproduce Orthanc's two filtering stages, are in ``docs/matching.md``; where Orthanc
versions and index backends answer differently, a :class:`Dialect` names the server a
forest's answers follow.

Modules: :mod:`.engine` (normalizations and matchers), :mod:`.compile` (names and values to
constraints), :mod:`.request` (a find's arguments, checked once, as a :class:`FindRequest`),
:mod:`.remote` (the server), :mod:`.local` (a forest), :mod:`.extended` (the sort keys,
metadata patterns, parent and response content of Orthanc 1.12.5).
"""

from __future__ import annotations

from ..errors import QueryError, UnknownKeyword
from ..models import LEVELS as _LEVEL_CLASSES
from ..models import Level
from ..tags import RANGE_VRS, TAG_NUMBERS
from .compile import (
    COMPUTED_TAGS,
    WILDCARD_VRS,
    CompiledQuery,
    LabelsConstraint,
    compile_query,
    queryable_tags,
)
from .engine import (
    DEFAULT_DIALECT,
    IDENTIFIER_TAGS,
    Constraint,
    Dialect,
    Kind,
    normalize_identifier,
    upper_with_accents,
)
from .extended import RESPONSE_CONTENT, OrderBy
from .local import ForestLike, local_find
from .remote import server_count, server_find, server_find_json
from .request import FindRequest

#: Level names from the top down: the ``level`` of each class in ``kkorthanc.models.LEVELS``.
LEVELS: tuple[Level, ...] = tuple(cls.level for cls in _LEVEL_CLASSES)

__all__ = [
    "COMPUTED_TAGS",
    "DEFAULT_DIALECT",
    "IDENTIFIER_TAGS",
    "LEVELS",
    "RANGE_VRS",
    "RESPONSE_CONTENT",
    "TAG_NUMBERS",
    "WILDCARD_VRS",
    "CompiledQuery",
    "Constraint",
    "Dialect",
    "FindRequest",
    "ForestLike",
    "Kind",
    "LabelsConstraint",
    "OrderBy",
    "QueryError",
    "UnknownKeyword",
    "compile_query",
    "local_find",
    "normalize_identifier",
    "queryable_tags",
    "server_count",
    "server_find",
    "server_find_json",
    "upper_with_accents",
]
