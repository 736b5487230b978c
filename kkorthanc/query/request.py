"""One find as the server will be asked it: :class:`FindRequest`, every argument checked once.

``Orthanc.find``, ``find_json`` and ``count`` hand their arguments to :meth:`FindRequest.of`
or :meth:`FindRequest.for_count`; :mod:`.remote` sends the request and never checks an
argument again. Only what the server itself must be asked (its version and capabilities)
waits until the request is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import QueryError
from ..models import Resource
from ..tags import tag_keyword
from .compile import CompiledQuery, LabelsConstraint, compile_query, labels_filter
from .extended import ExtendedFields, Parent, SortKeys, extended_fields

if TYPE_CHECKING:
    from ..models import Level

__all__ = ["FindRequest"]


def _no_extended_fields() -> ExtendedFields:
    return ExtendedFields({}, ())


@dataclass(frozen=True)
class FindRequest:
    """A checked find (or count): the compiled query and the options around it.

    Made by :meth:`of` or :meth:`for_count`, which refuse a wrong argument before anything
    is sent; the server's support for the fields given is checked when the request is sent
    (see :attr:`features`).
    """

    query: CompiledQuery
    """The level, the constraints and whether letter case matters."""
    _: KW_ONLY
    limit: int | None = None
    """At most this many resources, the first ones in the server's order."""
    page_size: int = 1000
    """Resources per request."""
    labels: tuple[str, ...] | None = None
    """Only resources with these labels, sorted (Orthanc 1.12.0+); ``None`` when not given."""
    labels_constraint: LabelsConstraint | None = None
    """``All``, ``Any`` or ``None`` of :attr:`labels` (Orthanc 1.12.0+)."""
    requested_tags: tuple[str, ...] | None = None
    """Keywords of the tags added to each answer (Orthanc 1.11.0+); ``None`` when not given."""
    extended: ExtendedFields = field(default_factory=_no_extended_fields)
    """Sort keys, metadata patterns and parent (Orthanc 1.12.5+ with extended find)."""

    @classmethod
    def of(
        cls,
        level: str | type[Resource],
        query: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        case_sensitive: bool = False,
        labels: Iterable[str] | None = None,
        labels_constraint: str | None = None,
        requested_tags: Iterable[str] | None = None,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        page_size: int = 1000,
        **tags: Any,
    ) -> FindRequest:
        """The request of a find, from the arguments of :meth:`kkorthanc.Orthanc.find`.

        Args:
            level: a level name in any case, or a model class.
            query, case_sensitive, **tags: as in :func:`~kkorthanc.query.compile_query`.
            limit: at most this many resources: the first ones in the server's order.
            labels: only resources with these labels (Orthanc 1.12.0+).
            labels_constraint: ``All`` (default on the server), ``Any`` or ``None`` of
                ``labels`` (Orthanc 1.12.0+).
            requested_tags: tags to add to the server's answer (Orthanc 1.11.0+).
            order_by, metadata, parent: sort keys, metadata patterns and the resource whose
                descendants are found (Orthanc 1.12.5+ with extended find); see
                :func:`~kkorthanc.query.extended.extended_fields`.
            page_size: resources per request.

        Raises:
            QueryError, UnknownKeyword: the message names the argument.
        """
        compiled = compile_query(_level_name(level), query, case_sensitive=case_sensitive, **tags)
        return cls.from_query(
            compiled,
            limit=limit,
            labels=labels,
            labels_constraint=labels_constraint,
            requested_tags=requested_tags,
            order_by=order_by,
            metadata=metadata,
            parent=parent,
            page_size=page_size,
        )

    @classmethod
    def for_count(
        cls,
        level: str | type[Resource],
        query: Mapping[str, Any] | None = None,
        *,
        labels: Iterable[str] | None = None,
        labels_constraint: str | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        case_sensitive: bool = False,
        **tags: Any,
    ) -> FindRequest:
        """The request of a count, from the arguments of :meth:`kkorthanc.Orthanc.count`:
        those of :meth:`of` that a count takes. ``case_sensitive`` is there to be refused:
        Orthanc refuses ``CaseSensitive: true`` in ``/tools/count-resources``.

        Raises:
            QueryError, UnknownKeyword: as :meth:`of`; ``case_sensitive=True`` too.
        """
        if case_sensitive is not False:
            raise QueryError(
                "count() cannot match case-sensitively: Orthanc refuses CaseSensitive in "
                "/tools/count-resources; take len(find(...)) instead"
            )
        return cls.from_query(
            compile_query(_level_name(level), query, **tags),
            labels=labels,
            labels_constraint=labels_constraint,
            metadata=metadata,
            parent=parent,
        )

    @classmethod
    def from_query(
        cls,
        compiled: CompiledQuery,
        *,
        limit: int | None = None,
        labels: Iterable[str] | None = None,
        labels_constraint: str | None = None,
        requested_tags: Iterable[str] | None = None,
        order_by: SortKeys | None = None,
        metadata: Mapping[str, str] | None = None,
        parent: Parent | None = None,
        page_size: int = 1000,
    ) -> FindRequest:
        """The request of an already compiled query; the options as in :meth:`of`.

        Raises:
            QueryError: the message names the argument.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise QueryError(f"limit must be a positive integer, not {limit!r}")
        if page_size < 1:
            raise QueryError(f"page_size must be a positive integer, not {page_size!r}")
        label_names, constraint = labels_filter(labels, labels_constraint)
        extended = extended_fields(
            compiled.level, order_by=order_by, metadata=metadata, parent=parent
        )
        wanted = None if requested_tags is None else tuple(map(_requested, requested_tags))
        return cls(
            compiled,
            limit=limit,
            page_size=page_size,
            labels=None if labels is None else tuple(label_names),
            labels_constraint=constraint,
            requested_tags=wanted,
            extended=extended,
        )

    @property
    def level(self) -> Level:
        """The level of the resources found."""
        return self.query.level

    @property
    def fields(self) -> dict[str, Any]:
        """The request fields besides the query, only those given: ``Labels``,
        ``LabelsConstraint``, ``RequestedTags``, then those of Orthanc 1.12.5."""
        fields: dict[str, Any] = {}
        if self.labels is not None:
            fields["Labels"] = list(self.labels)
        if self.labels_constraint is not None:
            fields["LabelsConstraint"] = self.labels_constraint
        if self.requested_tags is not None:
            fields["RequestedTags"] = list(self.requested_tags)
        fields.update(self.extended.fields)
        return fields

    @property
    def features(self) -> tuple[str, ...]:
        """Keys of :data:`~kkorthanc.server.FEATURES` the server must honour, in the order
        they are required: each field of :attr:`fields` is the feature of its name (a
        server without it would ignore the field and answer unfiltered or unsorted)."""
        return tuple(self.fields)

    def body(self, **answer: Any) -> dict[str, Any]:
        """The body of ``POST /tools/find`` (``answer``: ``Expand=True`` or
        ``ResponseContent=[...]``) or, without ``answer``, of ``/tools/count-resources``."""
        return {
            "Level": self.query.level,
            "Query": self.query.request_query(),
            **answer,
            "CaseSensitive": self.query.case_sensitive,
            **self.fields,
        }


def _level_name(level: str | type[Resource]) -> str:
    return level if isinstance(level, str) else level.level


def _requested(name: object) -> str:
    # any tag is allowed here: the server looks it up in its own dictionary
    return tag_keyword(name, where="requested_tags: ", error=QueryError)
