"""Typed ``Patient``, ``Study``, ``Series`` and ``Instance`` models and their relations.

Models are filled from Orthanc's expanded JSON. DICOM values are parsed into Python types
(see :mod:`kkorthanc.tags`); every main tag the server sent stays in ``main_dicom_tags``
as its raw string, so a malformed value leaves the typed field ``None`` and loses nothing.

Plain fields never touch the network. Relations (``.studies``, ``.series``, ``.instances``,
``.patient``, ``.study``) cost at most one request per resource, memoized; a forest links
them in advance so they cost none.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

from pydantic import ConfigDict, Field, PrivateAttr

from . import metadata as _metadata
from ._answers import expect_list, expect_object, reading
from ._base import ServerObject
from .metadata import Revisioned
from .server import BULK_CONTENT, checked_statistics, path_segment
from .values import DA, DS, DT, IS, PN, TM, MultiDS, MultiPN, MultiText, OrthancTime, Text

if TYPE_CHECKING:
    import numpy
    import pydicom

    from .jobs import Job
    from .server import Server

Level = Literal["Patient", "Study", "Series", "Instance"]
#: every spelling of a level that a typed ``find`` turns into that level's model
PatientLevel = Literal["patient", "Patient", "patients", "Patients"]
StudyLevel = Literal["study", "Study", "studies", "Studies"]
SeriesLevel = Literal["series", "Series"]
InstanceLevel = Literal["instance", "Instance", "instances", "Instances"]
T = TypeVar("T")
R = TypeVar("R", bound="Resource")


def orthanc_id(
    patient_id: str,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """The Orthanc ID of a resource, computed locally from its identifiers.

    Orthanc hashes ``PatientID`` (patients), ``PatientID|StudyInstanceUID`` (studies), and so
    on down to the SOPInstanceUID, with SHA-1 written as five dash-separated groups of 8.
    """
    parts = [patient_id]
    for uid in (study_instance_uid, series_instance_uid, sop_instance_uid):
        if uid is None:
            break
        parts.append(uid)
    digest = hashlib.sha1("|".join(parts).encode("utf-8")).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


# Relation loads hold one of these while they fetch, so that two threads asking for the
# same relation send one request; striping keeps the lock count independent of tree size.
_STRIPES = tuple(threading.Lock() for _ in range(64))


def _stripe(resource_id: str, relation: str) -> threading.Lock:
    return _STRIPES[hash((resource_id, relation)) % len(_STRIPES)]


class SharedFieldsSet(set[str]):
    """The fields set of many models at once (the forest gives one per level and shape).

    A model holding one takes a copy of its own before a field is assigned: see
    :meth:`Resource.__setattr__`.
    """

    __slots__ = ()


class Resource(ServerObject):
    """Fields and behaviour shared by the four levels."""

    model_config = ConfigDict(
        populate_by_name=True, extra="ignore", arbitrary_types_allowed=True, frozen=False
    )

    # Everything the package knows of a level lives in these class variables.
    level: ClassVar[Level]
    #: Orthanc's REST collection for this level (``patients``, ``studies``, ...)
    collection: ClassVar[str]
    #: 1 for patients down to 4 for instances
    depth: ClassVar[int]
    #: the DICOM keyword that identifies a resource of this level (``PatientID``, ...)
    uid_keyword: ClassVar[str]
    #: the field holding that identifier (``patient_id``, ``study_instance_uid``, ...)
    uid_field: ClassVar[str]
    #: the field holding the parent's Orthanc ID (``None`` for patients)
    parent_field: ClassVar[str | None] = None
    #: the key of the parent's Orthanc ID in Orthanc's JSON (``ParentPatient``, ...)
    parent_key: ClassVar[str | None] = None
    #: the field holding the children's Orthanc IDs (``None`` for instances)
    child_ids_field: ClassVar[str | None] = None

    id: str = Field(alias="ID")
    """The Orthanc ID (a SHA-1 of the DICOM identifiers)."""
    main_dicom_tags: dict[str, str] = Field(default_factory=dict, alias="MainDicomTags")
    """Every main DICOM tag the server sent, as raw strings, modelled or not."""
    labels: tuple[str, ...] = Field(default=(), alias="Labels")
    """Labels attached to the resource (Orthanc 1.12+; empty on older servers)."""
    requested_tags: dict[str, Any] = Field(default_factory=dict, alias="RequestedTags")
    """Tags asked for with ``requested_tags=`` in a find or listing, keyword -> value as
    Orthanc sent them (Orthanc 1.11+); empty when none were asked for."""

    _children: tuple[Resource, ...] | None = PrivateAttr(default=None)
    _parent: Resource | None = PrivateAttr(default=None)
    #: the result set this resource came in (a find, a listing, the children of one batch):
    #: a relation loaded for one of them is loaded for all, in the same requests
    _siblings: tuple[Resource, ...] | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self.__pydantic_fields_set__) is SharedFieldsSet:  # shared: copied on write
            object.__setattr__(self, "__pydantic_fields_set__", set(self.__pydantic_fields_set__))
        super().__setattr__(name, value)

    @classmethod
    def child_ids_key(cls) -> str | None:
        """The key of the children's Orthanc IDs in Orthanc's JSON (``Studies``, ``Series``,
        ``Instances``; ``None`` for instances): the alias of :attr:`child_ids_field`."""
        field = cls.child_ids_field
        return None if field is None else cls.model_fields[field].alias

    @classmethod
    def from_orthanc(cls: type[R], data: dict[str, Any], client: Server | None = None) -> R:
        """Build a model from an expanded Orthanc JSON object.

        Raises:
            ValidationFailed: ``data`` is not such an object (not an object, a field of the
                wrong type, ...).
        """
        what = cls.level.lower()
        expect_object(data, what)
        what = f"{what} {data.get('ID', '?')}"
        tags = expect_object(data.get("MainDicomTags") or {}, f"the MainDicomTags of {what}")
        return cls._attached({**tags, **data}, client, what)

    @classmethod
    def fetch(cls: type[R], server: Server, id: str) -> R:
        """One resource of this level by Orthanc ID (``GET /{level}/{id}``), one request.

        Raises:
            InvalidRequest: ``id`` cannot be an Orthanc ID (it would change the path).
            NotFound: the server has no such resource.
        """
        path_segment(id, f"{cls.level.lower()} ID")
        path = f"/{cls.collection}/{id}"
        data = server.get_json(path)
        with reading(f"GET {path}"):
            return cls.from_orthanc(data, server)

    @classmethod
    def parent_class(cls) -> type[Resource] | None:
        """The model of the level above (``None`` for patients)."""
        return LEVELS[cls.depth - 2] if cls.depth > 1 else None

    @classmethod
    def child_class(cls) -> type[Resource] | None:
        """The model of the level below (``None`` for instances)."""
        return LEVELS[cls.depth] if cls.depth < len(LEVELS) else None

    @property
    def parent_id(self) -> str | None:
        """The parent's Orthanc ID (``None`` for patients); no request."""
        field = self.parent_field
        found: str | None = self.__dict__[field] if field is not None else None
        return found

    @property
    def child_ids(self) -> tuple[str, ...]:
        """The children's Orthanc IDs as the server listed them (empty for instances)."""
        field = self.child_ids_field
        found: tuple[str, ...] = self.__dict__[field] if field is not None else ()
        return found

    @property
    def uid(self) -> str | None:
        """The DICOM identifier of this level (PatientID, StudyInstanceUID, ...)."""
        found: str | None = self.__dict__[self.uid_field]
        return found

    # -- identity ------------------------------------------------------------------------

    def _label(self) -> str:
        return f"{self.level} {self.id}"

    @property
    def path(self) -> str:
        """The REST path of the resource, e.g. ``/studies/<id>``."""
        return f"/{self.collection}/{self.id}"

    # -- linked relations, read without fetching ------------------------------------------------
    # Read straight from pydantic's private-attribute dict: the forest reads and sets tens of
    # thousands of links and the attribute protocol would cost more than the rest.

    def linked_parent(self) -> Resource | None:
        """The parent if it is already in memory, else ``None``; never a request."""
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        parent: Resource | None = private["_parent"]
        return parent

    def linked_children(self) -> tuple[Resource, ...] | None:
        """The children if they are already in memory, else ``None``; never a request."""
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        children: tuple[Resource, ...] | None = private["_children"]
        return children

    def _fetch_children(self, cls: type[R]) -> list[R]:
        """``GET /{level}/{id}/{children}``: the children, expanded, one request."""
        path = f"{self.path}/{cls.collection}"
        data = self.client.get_json(path)
        with reading(f"GET {path}"):
            return [cls.from_orthanc(item, self.client) for item in expect_list(data, path)]

    def _server_key(self) -> str:
        return self._client.url if self._client is not None else ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return (
            type(self) is type(other)
            and self.id == other.id
            and self._server_key() == other._server_key()
        )

    def __hash__(self) -> int:
        return hash((self.level, self.id, self._server_key()))

    def __str__(self) -> str:
        return repr(self)

    # -- relations -------------------------------------------------------------------------

    def _load_children(self, relation: str, fetch: Callable[[], Sequence[Resource]]) -> Any:
        children = self._children
        if children is not None:
            return children
        siblings = self._siblings
        if siblings is not None:
            with _stripe(str(id(siblings)), relation):
                if self._children is None:
                    self._load_siblings_children(siblings)
            if self._children is not None:
                return self._children
        with _stripe(self.id, relation):
            if self._children is None:
                loaded = tuple(fetch())
                for child in loaded:
                    child._parent = self
                group(loaded)
                self._children = loaded
            return self._children

    def _load_siblings_children(self, siblings: Sequence[Resource]) -> None:
        """The children of every sibling still without them, in one request per 1,000
        parents: ``POST /tools/bulk-content`` with the children's level."""
        child_class = self.child_class()
        waiting = [s for s in siblings if s._children is None and type(s) is type(self)]
        if child_class is None or not waiting:
            return
        server = self.client
        data = server.bulk_json([s.id for s in waiting], level=child_class.level)
        by_parent: dict[str, list[Resource]] = {}
        with reading(BULK_CONTENT):
            for item in data:
                child = child_class.from_orthanc(item, server)
                by_parent.setdefault(child.parent_id or "", []).append(child)
        everyone: list[Resource] = []
        for sibling in waiting:
            found = by_parent.get(sibling.id, [])
            order = {child_id: n for n, child_id in enumerate(sibling.child_ids)}
            found.sort(key=lambda child: (order.get(child.id, len(order)), child.id))
            for child in found:
                child._parent = sibling
            sibling._children = tuple(found)
            everyone.extend(found)
        group(everyone)

    def _load_parent(self, parent_id: str | None, cls: type[R]) -> R:
        parent = self._parent
        if parent is not None:
            return parent  # type: ignore[return-value]
        if parent_id is None:
            raise RuntimeError(f"{self.level} {self.id} has no parent")
        siblings = self._siblings
        if siblings is not None:
            with _stripe(str(id(siblings)), "parent"):
                if self._parent is None:
                    self._load_siblings_parents(siblings, cls)
        with _stripe(self.id, "parent"):
            if self._parent is None:
                self._parent = cls.fetch(self.client, parent_id)
            return self._parent  # type: ignore[return-value]

    def _load_siblings_parents(self, siblings: Sequence[Resource], cls: type[Resource]) -> None:
        """The parents of every sibling still without one, in one request per 1,000:
        ``POST /tools/bulk-content``; siblings that share a parent share its model."""
        waiting = [s for s in siblings if s._parent is None and type(s) is type(self)]
        ids = {s.parent_id for s in waiting if s.parent_id is not None}
        if not ids:
            return
        server = self.client
        data = server.bulk_json(ids)
        with reading(BULK_CONTENT):
            parents = {parent.id: parent for parent in (cls.from_orthanc(i, server) for i in data)}
        for sibling in waiting:
            found = parents.get(sibling.parent_id or "")
            if found is not None:
                sibling._parent = found
        group(list(parents.values()))

    def _link(self, parent: Resource | None, children: Sequence[Resource] | None) -> None:
        """Attach already loaded relations (used by the forest; costs nothing)."""
        if parent is not None:
            self._parent = parent
        if children is not None:
            self._children = tuple(children)

    @property
    def relations_loaded(self) -> bool:
        """Whether the children of this resource are in memory."""
        return self._children is not None

    def refresh(self: R) -> R:
        """Fetch the resource again (``GET /{level}/{id}``) and forget loaded relations.

        Returns the fresh copy; this object is updated in place too.
        """
        fresh = type(self).fetch(self.client, self.id)
        for name in type(self).model_fields:
            object.__setattr__(self, name, getattr(fresh, name))
        self._children = None
        self._parent = None
        return self

    # -- server-side operations ---------------------------------------------------------------

    def delete(self) -> None:
        """Delete the resource from the server (``DELETE /{level}/{id}``)."""
        from . import jobs

        jobs.delete_resource(self)

    @overload
    def anonymize(self: R, *, as_job: Literal[False] = False, **options: Any) -> R: ...
    @overload
    def anonymize(self: R, *, as_job: Literal[True], **options: Any) -> Job: ...
    def anonymize(self: R, *, as_job: bool = False, **options: Any) -> R | Job:
        """Anonymize on the server (``POST /{level}/{id}/anonymize``); see :mod:`kkorthanc.jobs`.

        Returns the new resource, or a :class:`~kkorthanc.jobs.Job` with ``as_job=True``.
        """
        from . import jobs

        return jobs.anonymize(self, as_job=as_job, **options)

    @overload
    def modify(self: R, *, as_job: Literal[False] = False, **options: Any) -> R: ...
    @overload
    def modify(self: R, *, as_job: Literal[True], **options: Any) -> Job: ...
    def modify(self: R, *, as_job: bool = False, **options: Any) -> R | Job:
        """Modify on the server (``POST /{level}/{id}/modify``); see :mod:`kkorthanc.jobs`.

        Options: ``replace``, ``remove``, ``keep``, ``keep_source``, ``force``, ... Returns the
        new resource, or a :class:`~kkorthanc.jobs.Job` with ``as_job=True``.
        """
        from . import jobs

        return jobs.modify(self, as_job=as_job, **options)

    def download_archive(self, path: str | Path) -> Path:
        """Stream the resource's ZIP archive (``GET /{level}/{id}/archive``) to ``path``."""
        from . import transfer

        return transfer.download_archive(self, Path(path))

    def statistics(self) -> dict[str, Any]:
        """Disk usage and counts (``GET /{level}/{id}/statistics``), one request."""
        path = f"{self.path}/statistics"
        return checked_statistics(self.client.get_json(path), f"GET {path}")

    # -- labels, metadata, attachments -----------------------------------------------------------

    def add_label(self, name: str) -> None:
        """Attach a label (``PUT /{level}/{id}/labels/{name}``), one request; ``labels`` is
        updated in place. Needs Orthanc 1.12.0 and a database that stores labels: refused
        with :class:`UnsupportedByServer` before sending otherwise; a name Orthanc would
        refuse raises :class:`InvalidRequest`."""
        _metadata.add_label(self.client, self.path, name)
        self.labels = tuple(sorted({*self.labels, name}))

    def remove_label(self, name: str) -> None:
        """Detach a label (``DELETE /{level}/{id}/labels/{name}``), one request; ``labels``
        is updated in place. Gated as :meth:`add_label`."""
        _metadata.remove_label(self.client, self.path, name)
        self.labels = tuple(label for label in self.labels if label != name)

    def metadata(self) -> dict[str, str]:
        """Every metadata, name -> value (``GET /{level}/{id}/metadata?expand``), one request."""
        return _metadata.list_metadata(self.client, self.path)

    def get_metadata(self, name: str) -> Revisioned:
        """One metadata with its revision (``GET /{level}/{id}/metadata/{name}``), one request.

        Raises:
            NotFound: there is no such metadata on this resource.
        """
        return _metadata.get_metadata(self.client, self.path, name)

    def set_metadata(self, name: str, value: str, *, revision: str | None = None) -> str | None:
        """Set a user metadata (``PUT /{level}/{id}/metadata/{name}``), one request.

        Returns the new revision. With ``revision``, the write happens only if the value did
        not change since it was read; otherwise :class:`Conflict`. A server with
        ``CheckRevisions`` requires ``revision`` to overwrite a value.
        """
        return _metadata.set_metadata(self.client, self.path, name, value, revision)

    def delete_metadata(self, name: str, *, revision: str | None = None) -> None:
        """Delete a user metadata (``DELETE /{level}/{id}/metadata/{name}``), one request;
        conditional on ``revision`` as :meth:`set_metadata`."""
        _metadata.delete_metadata(self.client, self.path, name, revision)

    def attachments(self) -> tuple[str, ...]:
        """The names of the attachments (``GET /{level}/{id}/attachments``), one request."""
        return _metadata.list_attachments(self.client, self.path)

    def get_attachment(self, name: str) -> Revisioned:
        """An attachment's content and revision (``GET .../attachments/{name}/data``)."""
        return _metadata.get_attachment(self.client, self.path, name)

    def set_attachment(self, name: str, data: bytes, *, revision: str | None = None) -> str | None:
        """Store a user attachment (``PUT /{level}/{id}/attachments/{name}``), one request;
        returns the new revision, conditional on ``revision`` as :meth:`set_metadata`."""
        return _metadata.set_attachment(self.client, self.path, name, data, revision)

    def delete_attachment(self, name: str, *, revision: str | None = None) -> None:
        """Delete a user attachment (``DELETE /{level}/{id}/attachments/{name}``)."""
        _metadata.delete_attachment(self.client, self.path, name, revision)

    def _repr_html_(self) -> str:
        from . import display

        return display.resource_html(self)


class Patient(Resource):
    """A patient: the root of a tree of studies."""

    level: ClassVar[Level] = "Patient"
    collection: ClassVar[str] = "patients"
    depth: ClassVar[int] = 1
    uid_keyword: ClassVar[str] = "PatientID"
    uid_field: ClassVar[str] = "patient_id"
    child_ids_field: ClassVar[str | None] = "study_ids"

    patient_id: Text = Field(default=None, alias="PatientID")
    """PatientID (0010,0020)."""
    patient_name: PN = Field(default=None, alias="PatientName")
    """PatientName (0010,0010), with ``.family`` / ``.given`` components."""
    patient_birth_date: DA = Field(default=None, alias="PatientBirthDate")
    """PatientBirthDate (0010,0030)."""
    patient_sex: Text = Field(default=None, alias="PatientSex")
    """PatientSex (0010,0040): ``M``, ``F`` or ``O``."""
    other_patient_ids: MultiText = Field(default=None, alias="OtherPatientIDs")
    """OtherPatientIDs (0010,1000), one entry per value."""
    study_ids: tuple[str, ...] = Field(default=(), alias="Studies")
    """Orthanc IDs of the patient's studies."""
    is_stable: bool | None = Field(default=None, alias="IsStable")
    """Whether no new instance arrived for the server's ``StableAge`` seconds."""
    last_update: OrthancTime = Field(default=None, alias="LastUpdate")
    """When the server last changed this resource."""

    @property
    def studies(self) -> tuple[Study, ...]:
        """The patient's studies: one request (``GET /patients/{id}/studies``), memoized."""
        result: tuple[Study, ...] = self._load_children(
            "studies", lambda: self._fetch_children(Study)
        )
        return result

    def __repr__(self) -> str:
        name = str(self.patient_name) if self.patient_name is not None else ""
        return f"<Patient {self.patient_id or self.id!s} {name!r} {len(self.study_ids)} studies>"


class Study(Resource):
    """A study: one imaging examination of a patient."""

    level: ClassVar[Level] = "Study"
    collection: ClassVar[str] = "studies"
    depth: ClassVar[int] = 2
    uid_keyword: ClassVar[str] = "StudyInstanceUID"
    uid_field: ClassVar[str] = "study_instance_uid"
    parent_field: ClassVar[str | None] = "parent_patient_id"
    parent_key: ClassVar[str | None] = "ParentPatient"
    child_ids_field: ClassVar[str | None] = "series_ids"

    study_instance_uid: Text = Field(default=None, alias="StudyInstanceUID")
    """StudyInstanceUID (0020,000D)."""
    study_date: DA = Field(default=None, alias="StudyDate")
    """StudyDate (0008,0020)."""
    study_time: TM = Field(default=None, alias="StudyTime")
    """StudyTime (0008,0030)."""
    study_id: Text = Field(default=None, alias="StudyID")
    """StudyID (0020,0010), the site's own study number."""
    accession_number: Text = Field(default=None, alias="AccessionNumber")
    """AccessionNumber (0008,0050)."""
    study_description: Text = Field(default=None, alias="StudyDescription")
    """StudyDescription (0008,1030)."""
    referring_physician_name: PN = Field(default=None, alias="ReferringPhysicianName")
    """ReferringPhysicianName (0008,0090)."""
    institution_name: Text = Field(default=None, alias="InstitutionName")
    """InstitutionName (0008,0080)."""
    requested_procedure_description: Text = Field(
        default=None, alias="RequestedProcedureDescription"
    )
    """RequestedProcedureDescription (0032,1060)."""
    patient_main_dicom_tags: dict[str, str] = Field(
        default_factory=dict, alias="PatientMainDicomTags"
    )
    """The patient's main tags as Orthanc repeats them on each study, raw."""
    parent_patient_id: str | None = Field(default=None, alias="ParentPatient")
    """Orthanc ID of the patient."""
    series_ids: tuple[str, ...] = Field(default=(), alias="Series")
    """Orthanc IDs of the study's series."""
    is_stable: bool | None = Field(default=None, alias="IsStable")
    """Whether no new instance arrived for the server's ``StableAge`` seconds."""
    last_update: OrthancTime = Field(default=None, alias="LastUpdate")
    """When the server last changed this resource."""

    @property
    def patient(self) -> Patient:
        """The patient: one request (``GET /patients/{id}``) unless already linked, memoized."""
        return self._load_parent(self.parent_patient_id, Patient)

    @property
    def series(self) -> tuple[Series, ...]:
        """The study's series: one request (``GET /studies/{id}/series``), memoized."""
        result: tuple[Series, ...] = self._load_children(
            "series", lambda: self._fetch_children(Series)
        )
        return result

    @property
    def instances(self) -> tuple[Instance, ...]:
        """All instances of the study, series by series.

        Costs one request per series whose instances are not loaded yet
        (``GET /series/{id}/instances``), plus the series listing if needed.
        """
        return tuple(instance for series in self.series for instance in series.instances)

    def __repr__(self) -> str:
        date = self.study_date.isoformat() if self.study_date else "????-??-??"
        desc = self.study_description or ""
        return f"<Study {date} {desc!r} {len(self.series_ids)} series>"


class Series(Resource):
    """A series: images of one acquisition within a study."""

    level: ClassVar[Level] = "Series"
    collection: ClassVar[str] = "series"
    depth: ClassVar[int] = 3
    uid_keyword: ClassVar[str] = "SeriesInstanceUID"
    uid_field: ClassVar[str] = "series_instance_uid"
    parent_field: ClassVar[str | None] = "parent_study_id"
    parent_key: ClassVar[str | None] = "ParentStudy"
    child_ids_field: ClassVar[str | None] = "instance_ids"

    series_instance_uid: Text = Field(default=None, alias="SeriesInstanceUID")
    """SeriesInstanceUID (0020,000E)."""
    modality: Text = Field(default=None, alias="Modality")
    """Modality (0008,0060), e.g. ``CT`` or ``MR``."""
    series_number: IS = Field(default=None, alias="SeriesNumber")
    """SeriesNumber (0020,0011)."""
    series_description: Text = Field(default=None, alias="SeriesDescription")
    """SeriesDescription (0008,103E)."""
    series_date: DA = Field(default=None, alias="SeriesDate")
    """SeriesDate (0008,0021)."""
    series_time: TM = Field(default=None, alias="SeriesTime")
    """SeriesTime (0008,0031)."""
    body_part_examined: Text = Field(default=None, alias="BodyPartExamined")
    """BodyPartExamined (0018,0015)."""
    protocol_name: Text = Field(default=None, alias="ProtocolName")
    """ProtocolName (0018,1030)."""
    station_name: Text = Field(default=None, alias="StationName")
    """StationName (0008,1010)."""
    manufacturer: Text = Field(default=None, alias="Manufacturer")
    """Manufacturer (0008,0070)."""
    operators_name: MultiPN = Field(default=None, alias="OperatorsName")
    """OperatorsName (0008,1070), one entry per operator."""
    image_orientation_patient: MultiDS = Field(default=None, alias="ImageOrientationPatient")
    """ImageOrientationPatient (0020,0037): six direction cosines."""
    expected_number_of_instances: int | None = Field(
        default=None, alias="ExpectedNumberOfInstances"
    )
    """How many instances the series should hold, when the server can tell."""
    status: Literal["Complete", "Missing", "Inconsistent", "Unknown"] | None = Field(
        default=None, alias="Status"
    )
    """Orthanc's completeness verdict for the series."""
    parent_study_id: str | None = Field(default=None, alias="ParentStudy")
    """Orthanc ID of the study."""
    instance_ids: tuple[str, ...] = Field(default=(), alias="Instances")
    """Orthanc IDs of the series' instances."""
    is_stable: bool | None = Field(default=None, alias="IsStable")
    """Whether no new instance arrived for the server's ``StableAge`` seconds."""
    last_update: OrthancTime = Field(default=None, alias="LastUpdate")
    """When the server last changed this resource."""

    @property
    def study(self) -> Study:
        """The study: one request (``GET /studies/{id}``) unless already linked, memoized."""
        return self._load_parent(self.parent_study_id, Study)

    @property
    def patient(self) -> Patient:
        """The patient, through the study (each link costs at most one request, memoized)."""
        return self.study.patient

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The series' instances: one request (``GET /series/{id}/instances``), memoized."""
        result: tuple[Instance, ...] = self._load_children(
            "instances", lambda: self._fetch_children(Instance)
        )
        return result

    def __repr__(self) -> str:
        number = f"#{self.series_number} " if self.series_number is not None else ""
        desc = self.series_description or ""
        return (
            f"<Series {number}{self.modality or '?'} {desc!r} "
            f"{len(self.instance_ids)} instances>"
        )


class Instance(Resource):
    """An instance: one DICOM file."""

    level: ClassVar[Level] = "Instance"
    collection: ClassVar[str] = "instances"
    depth: ClassVar[int] = 4
    uid_keyword: ClassVar[str] = "SOPInstanceUID"
    uid_field: ClassVar[str] = "sop_instance_uid"
    parent_field: ClassVar[str | None] = "parent_series_id"
    parent_key: ClassVar[str | None] = "ParentSeries"

    sop_instance_uid: Text = Field(default=None, alias="SOPInstanceUID")
    """SOPInstanceUID (0008,0018)."""
    instance_number: IS = Field(default=None, alias="InstanceNumber")
    """InstanceNumber (0020,0013)."""
    image_position_patient: MultiDS = Field(default=None, alias="ImagePositionPatient")
    """ImagePositionPatient (0020,0032): x, y, z in mm."""
    instance_creation_date: DA = Field(default=None, alias="InstanceCreationDate")
    """InstanceCreationDate (0008,0012)."""
    instance_creation_time: TM = Field(default=None, alias="InstanceCreationTime")
    """InstanceCreationTime (0008,0013)."""
    acquisition_number: IS = Field(default=None, alias="AcquisitionNumber")
    """AcquisitionNumber (0020,0012)."""
    number_of_frames: IS = Field(default=None, alias="NumberOfFrames")
    """NumberOfFrames (0028,0008), for multi-frame images."""
    file_size: int | None = Field(default=None, alias="FileSize")
    """Size of the stored DICOM file in bytes."""
    file_uuid: str | None = Field(default=None, alias="FileUuid")
    """Orthanc's storage UUID of the DICOM file."""
    index_in_series: int | None = Field(default=None, alias="IndexInSeries")
    """Position of the instance in its series, as Orthanc computed it."""
    parent_series_id: str | None = Field(default=None, alias="ParentSeries")
    """Orthanc ID of the series."""

    @property
    def series(self) -> Series:
        """The series: one request (``GET /series/{id}``) unless already linked, memoized."""
        return self._load_parent(self.parent_series_id, Series)

    @property
    def study(self) -> Study:
        """The study, through the series (each link at most one request, memoized)."""
        return self.series.study

    @property
    def patient(self) -> Patient:
        """The patient, through series and study (each link at most one request, memoized)."""
        return self.series.study.patient

    # -- content -------------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        """The DICOM file (``GET /instances/{id}/file``), one request."""
        return self.client.get_bytes(f"{self.path}/file")

    def save(self, path: str | Path) -> Path:
        """Stream the DICOM file to ``path`` (``GET /instances/{id}/file``), one request.

        The file is written under a temporary name and renamed when complete, so an
        interrupted download never leaves a truncated file behind.
        """
        from . import transfer

        return transfer.save_instance(self, Path(path))

    def tags(self) -> dict[str, Any]:
        """All tags, simplified to keyword -> value (``GET /instances/{id}/tags?simplify``)."""
        answer = self.client.get_json(f"{self.path}/tags", {"simplify": ""})
        with reading(f"GET {self.path}/tags?simplify"):
            return expect_object(answer, "the tags")

    def dataset(self) -> pydicom.Dataset:
        """The file parsed by pydicom (needs the ``dicom`` extra); one request."""
        try:
            import pydicom
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Instance.dataset() needs pip install 'kkorthanc[dicom]'") from exc
        from io import BytesIO

        return pydicom.dcmread(BytesIO(self.read_bytes()))

    def pixels(self) -> numpy.ndarray[Any, Any]:
        """The pixel data as a numpy array (needs the ``dicom`` extra); one request."""
        array: numpy.ndarray[Any, Any] = self.dataset().pixel_array
        return array

    def __repr__(self) -> str:
        number = self.instance_number if self.instance_number is not None else "?"
        return f"<Instance #{number} {self.sop_instance_uid or self.id}>"


def group(resources: Sequence[Resource]) -> None:
    """Make ``resources`` (a find's result, a listing) siblings: when one of them loads a
    relation, all of them load it, in a few bulk requests instead of one each."""
    if len(resources) < 2:
        return
    batch = tuple(resources)
    for resource in batch:
        resource._siblings = batch


#: the four levels, top down
LEVELS: tuple[type[Resource], ...] = (Patient, Study, Series, Instance)
LEVEL_CLASSES: dict[str, type[Resource]] = {cls.level.lower(): cls for cls in LEVELS}
_LEVEL_NAMES: dict[str, type[Resource]] = {
    **LEVEL_CLASSES,
    **{cls.collection: cls for cls in LEVELS},
}


def level_class(level: str) -> type[Resource]:
    """The model class for a level name in any case (``"Study"``, ``"study"``, ``"STUDIES"``)."""
    try:
        return _LEVEL_NAMES[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown level {level!r}: use 'patient', 'study', 'series' or 'instance'"
        ) from None


__all__ = [
    "DA",
    "DS",
    "DT",
    "IS",
    "LEVELS",
    "LEVEL_CLASSES",
    "PN",
    "TM",
    "Instance",
    "InstanceLevel",
    "Level",
    "Patient",
    "PatientLevel",
    "Resource",
    "Series",
    "SeriesLevel",
    "Study",
    "StudyLevel",
    "Text",
    "group",
    "level_class",
    "orthanc_id",
]
