"""Remote DICOM modalities configured on the server: C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE.

The server does the DICOM networking; this module drives it over REST. A :class:`Modality`
is one entry of the server's ``DicomModalities``. :meth:`Modality.find` queries it and returns
typed :class:`FindAnswer` objects in two requests however many answers there are;
:meth:`Modality.retrieve` moves answers into the local server as one job;
:meth:`Modality.store` sends local resources to the modality.

Network failures come back from the server as HTTP 500 with Orthanc's reason in ``Details``;
they are raised here as :class:`EchoFailed`, :class:`FindFailed` or :class:`StoreFailed`
carrying that reason. A C-MOVE runs as a job, so its failure is a
:class:`~kkorthanc.errors.JobFailed` raised by :meth:`~kkorthanc.jobs.Job.wait`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import tags as _tags
from ._answers import expect_list, expect_object, reading, shown_error
from ._base import ServerObject
from .errors import (
    BadRequest,
    EchoFailed,
    FindFailed,
    InvalidRequest,
    ModalityError,
    NotFound,
    OrthancError,
    ServerError,
    StoreFailed,
    UnknownModality,
    ValidationFailed,
)
from .jobs import Job, submitted_job
from .models import LEVELS, Level, Resource, level_class
from .server import path_segment
from .values import DA, IS, PN, TM, MultiText, Text

if TYPE_CHECKING:
    from .server import Server


# -- errors ------------------------------------------------------------------------------------


def _modality_error(cls: type[ModalityError], name: str, error: ServerError) -> ModalityError:
    reason = error.details or error.message or error.orthanc_error or str(error)
    return cls(name, reason, error.status)


# -- models ------------------------------------------------------------------------------------


class Modality(ServerObject):
    """A remote DICOM node the server knows (one entry of its ``DicomModalities``)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    name: str
    """The modality's symbolic name on the server, used in REST routes."""
    aet: str = Field(alias="AET")
    """The modality's application entity title."""
    host: str = Field(alias="Host")
    """Host name or address."""
    port: int = Field(alias="Port")
    """DICOM port."""
    manufacturer: str = Field(default="Generic", alias="Manufacturer")
    """Manufacturer profile Orthanc uses for this peer's quirks."""
    local_aet: str = Field(default="", alias="LocalAet")
    """AET the server calls from for this peer; empty means the server's own."""
    timeout: int = Field(default=0, alias="Timeout")
    """DICOM timeout in seconds for this peer; 0 means the server's default."""
    use_dicom_tls: bool = Field(default=False, alias="UseDicomTls")
    """Whether associations with this peer use DICOM TLS."""
    allow_echo: bool = Field(default=True, alias="AllowEcho")
    """Whether the peer may C-ECHO the server."""
    allow_find: bool = Field(default=True, alias="AllowFind")
    """Whether the peer may C-FIND the server."""
    allow_move: bool = Field(default=True, alias="AllowMove")
    """Whether the peer may C-MOVE from the server."""
    allow_get: bool = Field(default=True, alias="AllowGet")
    """Whether the peer may C-GET from the server."""
    allow_store: bool = Field(default=True, alias="AllowStore")
    """Whether the peer may C-STORE to the server."""

    @classmethod
    def from_orthanc(cls, name: str, data: Any, client: Server | None = None) -> Modality:
        """Build a modality from its configuration as ``/modalities?expand`` gives it."""
        if isinstance(data, list) and len(data) >= 3:  # the short [AET, host, port] form
            data = {"AET": data[0], "Host": data[1], "Port": data[2]}
        if not isinstance(data, dict):
            raise ValidationFailed(f"cannot read modality {name!r}: {data!r}")
        return cls._attached({**data, "name": name}, client, f"modality {name!r}")

    def _label(self) -> str:
        return f"modality {self.name}"

    @property
    def path(self) -> str:
        """The REST path of the modality, ``/modalities/<name>``."""
        return f"/modalities/{self.name}"

    def __repr__(self) -> str:
        return f"<Modality {self.name} {self.aet}@{self.host}:{self.port}>"

    def __str__(self) -> str:
        return repr(self)

    # -- C-ECHO -------------------------------------------------------------------------------

    def echo(self, timeout: int | None = None) -> None:
        """Check the modality answers a C-ECHO (``POST /modalities/{name}/echo``), one request.

        Args:
            timeout: DICOM timeout in seconds for this echo; the server's default otherwise.

        Raises:
            EchoFailed: the modality could not be reached or refused; ``reason`` says why.
            NotFound: the server has no modality of this name (any more).
        """
        body: dict[str, Any] = {}
        if timeout is not None:
            body["Timeout"] = _positive_int("timeout", timeout)
        try:
            self.client.post_json(f"{self.path}/echo", body)
        except ServerError as exc:
            raise _modality_error(EchoFailed, self.name, exc) from exc

    # -- C-FIND -------------------------------------------------------------------------------

    def find(
        self,
        level: str,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: int | None = None,
        **tags: Any,
    ) -> list[FindAnswer]:
        """Query the modality (C-FIND) and return its answers, typed.

        ``POST /modalities/{name}/query`` then ``GET /queries/{id}/answers?expand&simplify``:
        two requests, however many answers.

        Args:
            level: ``"patient"``, ``"study"``, ``"series"`` or ``"instance"`` (any case).
            query: ``{name: value}`` to match; merged with ``tags`` (a tag named twice is
                refused).
            timeout: DICOM timeout in seconds for this query.
            **tags: more matches. Names are DICOM keywords, snake_case names or tag numbers
                (``PatientID="KK*"``, ``patient_id="KK*"``, ``"0010,0020"``), as everywhere
                in kkorthanc (:func:`~kkorthanc.tags.tag_keyword`). Values are converted
                like those of ``client.find`` (:func:`~kkorthanc.tags.to_dicom`): strings
                with ``*``/``?`` wildcards, a date or time, a ``(first, last)`` pair for a
                range on dates and times (either may be ``None``), a list for any of several
                literal values, or ``None``/``""`` to ask for the tag back.

        The usual tags of the level are asked for as well, so that the typed fields of
        :class:`FindAnswer` are filled when the modality supports them.

        Raises:
            FindFailed: the modality could not be queried; ``reason`` says why.
            InvalidRequest: a level, keyword or value that cannot be sent.
        """
        name = level_class(level).level
        keys = _query_keys(name, query, tags)
        body: dict[str, Any] = {"Level": name, "Query": keys}
        if timeout is not None:
            body["Timeout"] = _positive_int("timeout", timeout)
        transport = self.client
        try:
            created = transport.post_json(f"{self.path}/query", body)
        except ServerError as exc:
            raise _modality_error(FindFailed, self.name, exc) from exc
        except BadRequest as exc:
            raise _bad_query(keys, exc) from exc
        if not isinstance(created, dict) or not isinstance(created.get("ID"), str):
            shown = repr(created)[:200]
            raise ValidationFailed(
                f"no query in the answer {shown}", request=f"POST {self.path}/query"
            )
        with reading(f"POST {self.path}/query"):
            query_id = path_segment(created["ID"], "query ID")
        path = f"/queries/{query_id}/answers"
        answers = transport.get_json(path, {"expand": "", "simplify": ""})
        with reading(f"GET {path}?expand&simplify"):
            total = len(expect_list(answers, "the C-FIND answers"))
            return [
                FindAnswer.from_orthanc(
                    item,
                    level=name,
                    modality=self.name,
                    query_id=query_id,
                    index=index,
                    query_size=total,
                )
                for index, item in enumerate(answers)
            ]

    # -- C-MOVE -------------------------------------------------------------------------------

    def retrieve(
        self,
        answers: FindAnswer | Iterable[FindAnswer],
        *,
        target: str | Modality | None = None,
        priority: int | None = None,
    ) -> Job:
        """Move answers of :meth:`find` to the local server, or to ``target`` (C-MOVE).

        The move runs as one server job; call :meth:`~kkorthanc.jobs.Job.wait` on it.

        Cost: all the answers of one query, or a single answer, move with
        ``POST /queries/{id}/retrieve`` (or ``.../answers/{n}/retrieve``); any other set is
        first narrowed by a new query on its UIDs (``POST /modalities/{name}/query``), then
        moved the same way. One more request fetches the job.

        Args:
            answers: one answer or several, all from this modality and of one level.
            target: AET (or modality) to move to; the local server's own AET by default.
            priority: job priority (higher runs first).

        Raises:
            InvalidRequest: no answers, answers from another modality or of mixed levels.
            FindFailed: the narrowing query failed.
        """
        chosen = [answers] if isinstance(answers, FindAnswer) else list(answers)
        if not chosen:
            raise InvalidRequest("retrieve() needs at least one answer")
        for answer in chosen:
            if not isinstance(answer, FindAnswer):
                raise InvalidRequest(f"retrieve() takes FindAnswer objects, not {answer!r}")
            if answer.source_modality != self.name:
                raise InvalidRequest(
                    f"an answer from modality {answer.source_modality!r} cannot be retrieved "
                    f"through {self.name!r}"
                )
        levels = {answer.level for answer in chosen}
        if len(levels) > 1:
            raise InvalidRequest(f"retrieve() needs answers of one level, not {sorted(levels)}")
        body: dict[str, Any] = {"Synchronous": False}
        if target is not None:
            body["TargetAet"] = target.aet if isinstance(target, Modality) else str(target)
        if priority is not None:
            body["Priority"] = _int("priority", priority)
        unique = {(a.query_id, a.index): a for a in chosen}
        query_ids = {a.query_id for a in chosen}
        first = chosen[0]
        if len(unique) == 1:
            path = f"/queries/{first.query_id}/answers/{first.index}/retrieve"
        elif len(query_ids) == 1 and len(unique) == first.query_size:
            path = f"/queries/{first.query_id}/retrieve"
        else:
            path = f"/queries/{self._narrowing_query(list(unique.values()))}/retrieve"
        return submitted_job(self.client, self.client.post_json(path, body), f"POST {path}")

    def _narrowing_query(self, answers: Sequence[FindAnswer]) -> str:
        # the identifier of the level pins the set of answers down exactly
        level = answers[0].level
        keyword = level_class(level).uid_keyword
        values: list[str] = []
        for answer in answers:
            value = answer.tags.get(keyword)
            if not isinstance(value, str) or not value:
                raise InvalidRequest(
                    f"a {level} answer without {keyword} cannot be retrieved with others; "
                    "retrieve it alone"
                )
            if value not in values:
                values.append(value)
        keys = {keyword: "\\".join(values)}
        try:
            created = self.client.post_json(
                f"{self.path}/query", {"Level": level, "Query": keys}
            )
        except ServerError as exc:
            raise _modality_error(FindFailed, self.name, exc) from exc
        return str(created["ID"])

    # -- C-GET --------------------------------------------------------------------------------

    def get(
        self,
        resources: FindAnswer | Mapping[str, Any] | Iterable[FindAnswer | Mapping[str, Any]],
        *,
        level: str | None = None,
        timeout: int | None = None,
        priority: int | None = None,
    ) -> Job:
        """Fetch resources from the modality into the local server by C-GET, as one job
        (``POST /modalities/{name}/get``, Orthanc 1.12.6+); one more request fetches the job.

        Unlike :meth:`retrieve` (C-MOVE), the instances come back on the association the
        server opened, so the modality needs no network route back to the server.

        Args:
            resources: answers of :meth:`find` (their identifiers are sent: the UIDs of their
                level and of the levels above, down from the study), or mappings of
                identifiers (``{"StudyInstanceUID": "1.2.3"}``; names and values as in
                :meth:`find`, a list is joined with ``\\`` as for ``SOPClassesInStudy``).
            level: the query level; by default the level of the answers (needed for
                mappings).
            timeout: DICOM timeout in seconds for this C-GET.
            priority: job priority.

        Raises:
            UnsupportedByServer: the server is older than 1.12.6; nothing is sent.
            InvalidRequest: no resources, answers from another modality, mixed levels.
        """
        items = [resources] if isinstance(resources, FindAnswer | Mapping) else list(resources)
        if not items:
            raise InvalidRequest("get() needs at least one resource")
        levels = {item.level for item in items if isinstance(item, FindAnswer)}
        if level is not None:
            levels.add(level_class(level).level)
        if len(levels) != 1:
            raise InvalidRequest(
                "get() needs one level: give level= with mappings, and answers of that level"
                + (f" (got {sorted(levels)})" if levels else "")
            )
        chosen = levels.pop()
        keys = [self._get_keys(chosen, item) for item in items]
        body: dict[str, Any] = {"Level": chosen, "Resources": keys, "Synchronous": False}
        if timeout is not None:
            body["Timeout"] = _positive_int("timeout", timeout)
        if priority is not None:
            body["Priority"] = _int("priority", priority)
        self.client.require("C-GET")
        answer = self.client.post_json(f"{self.path}/get", body)
        return submitted_job(self.client, answer, f"POST {self.path}/get")

    def _get_keys(self, level: str, item: FindAnswer | Mapping[str, Any]) -> dict[str, str]:
        if isinstance(item, FindAnswer):
            if item.source_modality != self.name:
                raise InvalidRequest(
                    f"an answer from modality {item.source_modality!r} cannot be fetched "
                    f"through {self.name!r}"
                )
            cls = level_class(level)
            # a patient by its PatientID; below, the UIDs from the study down to the level
            above = LEVELS[: cls.depth] if cls.depth == 1 else LEVELS[1 : cls.depth]
            found: dict[str, str] = {}
            for upper in above:
                value = item.tags.get(upper.uid_keyword)
                if isinstance(value, str) and value:
                    found[upper.uid_keyword] = value
            if cls.uid_keyword not in found:
                raise InvalidRequest(
                    f"a {level} answer without {cls.uid_keyword} cannot be fetched by C-GET"
                )
            return found
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"get() takes FindAnswer objects or mappings, not {item!r}")
        keys: dict[str, str] = {}
        for name, value in item.items():
            keyword = _tags.tag_keyword(name, where="get(): ")
            keys[keyword] = _tags.to_dicom(keyword, value, purpose="match", where="get(): ")
        if not keys:
            raise InvalidRequest("get(): an empty mapping names no resource")
        return keys

    # -- C-STORE ------------------------------------------------------------------------------

    @overload
    def store(
        self,
        resources: Resource | str | Iterable[Resource | str],
        *,
        as_job: Literal[False] = False,
        timeout: int | None = None,
        priority: int | None = None,
    ) -> StoreReport: ...
    @overload
    def store(
        self,
        resources: Resource | str | Iterable[Resource | str],
        *,
        as_job: Literal[True],
        timeout: int | None = None,
        priority: int | None = None,
    ) -> Job: ...
    def store(
        self,
        resources: Resource | str | Iterable[Resource | str],
        *,
        as_job: bool = False,
        timeout: int | None = None,
        priority: int | None = None,
    ) -> StoreReport | Job:
        """Send local resources to the modality (C-STORE), ``POST /modalities/{name}/store``.

        Args:
            resources: patients, studies, series or instances, or their Orthanc IDs.
            as_job: return the server job at once instead of waiting (one more request
                fetches it); its failure is raised by :meth:`~kkorthanc.jobs.Job.wait`.
            timeout: DICOM timeout in seconds for this transfer.
            priority: job priority.

        Returns:
            A :class:`StoreReport` (one request), or the :class:`~kkorthanc.jobs.Job`.

        Raises:
            StoreFailed: the modality could not be reached, or refused instances.
            InvalidRequest: no resources, or something that is not a resource.
        """
        ids = _resource_ids(resources)
        body: dict[str, Any] = {"Resources": ids, "Synchronous": not as_job}
        if timeout is not None:
            body["Timeout"] = _positive_int("timeout", timeout)
        if priority is not None:
            body["Priority"] = _int("priority", priority)
        transport = self.client
        try:
            answer = transport.post_json(f"{self.path}/store", body)
        except ServerError as exc:
            raise _modality_error(StoreFailed, self.name, exc) from exc
        if as_job:
            return submitted_job(self.client, answer, f"POST {self.path}/store")
        with reading(f"POST {self.path}/store"):
            report = StoreReport.model_validate(expect_object(answer, "the C-STORE report"))
        if report.failed_instances_count:
            raise StoreFailed(
                self.name,
                f"{report.failed_instances_count} of {report.instances_count} instances "
                "were not stored",
            )
        return report


class StoreReport(BaseModel):
    """What the server says after a synchronous C-STORE."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    instances_count: int = Field(default=0, alias="InstancesCount")
    """Instances sent."""
    failed_instances_count: int = Field(default=0, alias="FailedInstancesCount")
    """Instances the modality did not accept."""
    local_aet: str = Field(default="", alias="LocalAet")
    """AET the server called from."""
    remote_aet: str = Field(default="", alias="RemoteAet")
    """AET of the modality."""
    parent_resources: tuple[str, ...] = Field(default=(), alias="ParentResources")
    """Orthanc IDs of the resources that were asked for."""


class FindAnswer(BaseModel):
    """One C-FIND answer from a modality, with typed fields for the usual tags.

    Every tag the modality sent stays in :attr:`tags` as Orthanc simplified it; a field is
    ``None`` when the tag was not sent or does not parse.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    level: Level
    """The query level."""
    source_modality: str
    """Name of the modality that answered (on the local server)."""
    query_id: str
    """ID of the query on the local server (``/queries/{id}``)."""
    index: int
    """Position of this answer in its query (``/queries/{id}/answers/{index}``)."""
    query_size: int
    """How many answers the query had."""
    tags: dict[str, Any] = Field(default_factory=dict)
    """Every tag of the answer, keyword -> value, as sent."""

    patient_id: Text = Field(default=None, alias="PatientID")
    """PatientID (0010,0020)."""
    patient_name: PN = Field(default=None, alias="PatientName")
    """PatientName (0010,0010)."""
    patient_birth_date: DA = Field(default=None, alias="PatientBirthDate")
    """PatientBirthDate (0010,0030)."""
    patient_sex: Text = Field(default=None, alias="PatientSex")
    """PatientSex (0010,0040)."""
    study_instance_uid: Text = Field(default=None, alias="StudyInstanceUID")
    """StudyInstanceUID (0020,000D)."""
    study_date: DA = Field(default=None, alias="StudyDate")
    """StudyDate (0008,0020)."""
    study_time: TM = Field(default=None, alias="StudyTime")
    """StudyTime (0008,0030)."""
    study_description: Text = Field(default=None, alias="StudyDescription")
    """StudyDescription (0008,1030)."""
    accession_number: Text = Field(default=None, alias="AccessionNumber")
    """AccessionNumber (0008,0050)."""
    modalities_in_study: MultiText = Field(default=None, alias="ModalitiesInStudy")
    """ModalitiesInStudy (0008,0061), one entry per modality."""
    number_of_study_related_series: IS = Field(default=None, alias="NumberOfStudyRelatedSeries")
    """NumberOfStudyRelatedSeries (0020,1206)."""
    number_of_study_related_instances: IS = Field(
        default=None, alias="NumberOfStudyRelatedInstances"
    )
    """NumberOfStudyRelatedInstances (0020,1208)."""
    series_instance_uid: Text = Field(default=None, alias="SeriesInstanceUID")
    """SeriesInstanceUID (0020,000E)."""
    modality: Text = Field(default=None, alias="Modality")
    """Modality (0008,0060) of a series, e.g. ``CT``."""
    series_number: IS = Field(default=None, alias="SeriesNumber")
    """SeriesNumber (0020,0011)."""
    series_description: Text = Field(default=None, alias="SeriesDescription")
    """SeriesDescription (0008,103E)."""
    number_of_series_related_instances: IS = Field(
        default=None, alias="NumberOfSeriesRelatedInstances"
    )
    """NumberOfSeriesRelatedInstances (0020,1209)."""
    sop_instance_uid: Text = Field(default=None, alias="SOPInstanceUID")
    """SOPInstanceUID (0008,0018)."""
    sop_class_uid: Text = Field(default=None, alias="SOPClassUID")
    """SOPClassUID (0008,0016)."""
    instance_number: IS = Field(default=None, alias="InstanceNumber")
    """InstanceNumber (0020,0013)."""

    @classmethod
    def from_orthanc(
        cls,
        data: Any,
        *,
        level: str,
        modality: str,
        query_id: str,
        index: int,
        query_size: int,
    ) -> FindAnswer:
        """Build an answer from one item of ``/queries/{id}/answers?expand&simplify``."""
        if not isinstance(data, dict):
            raise ValidationFailed(f"cannot read C-FIND answer {index}: {data!r}")
        fields = {key: value for key, value in data.items() if isinstance(value, str)}
        try:
            return cls.model_validate(
                {
                    **fields,
                    "level": level,
                    "source_modality": modality,
                    "query_id": query_id,
                    "index": index,
                    "query_size": query_size,
                    "tags": data,
                }
            )
        except ValidationError as exc:  # kept as the cause
            why = shown_error(exc)
            raise ValidationFailed(f"cannot read C-FIND answer {index}: {why}") from exc

    def __repr__(self) -> str:
        uid = getattr(self, level_class(self.level).uid_field)
        name = f" {str(self.patient_name)!r}" if self.patient_name else ""
        return f"<FindAnswer {self.level} {uid}{name} from {self.source_modality}>"

    def __str__(self) -> str:
        return repr(self)


# -- server entry points -------------------------------------------------------------------------


def list_modalities(client: Server) -> list[Modality]:
    """The modalities configured on the server (``GET /modalities?expand``), one request."""
    data = client.get_json("/modalities", {"expand": ""}) or {}
    with reading("GET /modalities?expand"):
        configs = expect_object(data, "the modalities").items()
        return [Modality.from_orthanc(name, config, client) for name, config in configs]


def get_modality(client: Server, name: str) -> Modality:
    """One configured modality by name (``GET /modalities/{name}/configuration``), one request.

    Raises:
        UnknownModality: the server has no modality of that name.
    """
    if not name or "/" in name:
        raise InvalidRequest(f"not a modality name: {name!r}")
    try:
        data = client.get_json(f"/modalities/{name}/configuration")
    except NotFound as exc:
        raise UnknownModality(f"the server has no modality named {name!r}") from exc
    with reading(f"GET /modalities/{name}/configuration"):
        return Modality.from_orthanc(name, data, client)


# -- query building ------------------------------------------------------------------------------

#: keys asked back by default at each level, so the typed answer fields get filled
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "Patient": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"),
    "Study": (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "Series": (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
    "Instance": (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}


def _query_keys(
    level: str, query: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The ``Query`` of a C-FIND: the level's default keys, then the matches given.

    Names and values follow the package's one keyword rule and value conversion
    (:func:`~kkorthanc.tags.tag_keyword`, :func:`~kkorthanc.tags.to_dicom` for matching).
    """
    keys: dict[str, str] = dict.fromkeys(DEFAULT_KEYS[level], "")
    given: dict[str, object] = {}
    for name, value in itertools.chain((query or {}).items(), (tags or {}).items()):
        keyword = _tags.tag_keyword(name, where="find(): ")
        if keyword in given:
            raise InvalidRequest(
                f"find(): {keyword} is given twice (as {given[keyword]!r} and {name!r})"
            )
        given[keyword] = name
        keys[keyword] = _tags.to_dicom(keyword, value, purpose="match", where="find(): ")
    if "SpecificCharacterSet" not in keys and not all(v.isascii() for v in keys.values()):
        # ask for UTF-8, so the query and the answers can carry any character
        keys["SpecificCharacterSet"] = "ISO_IR 192"
    return keys


def _bad_query(keys: Mapping[str, str], error: BadRequest) -> OrthancError:
    """Explain a refused query by the keywords kkorthanc does not know, if any."""
    unknown = [k for k in keys if _tags.vr_of(k) is None and "," not in k]
    if not unknown:
        return error
    hints = []
    for keyword in unknown:
        close = _tags.suggest_keywords(keyword)
        hints.append(f"{keyword!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    reason = error.details or error.message or str(error)
    return InvalidRequest(
        f"the server refused the query ({reason}); keywords it may not know: {'; '.join(hints)}"
    )


def _resource_ids(resources: Resource | str | Iterable[Resource | str]) -> list[str]:
    items: Iterable[Resource | str]
    items = [resources] if isinstance(resources, Resource | str) else resources
    ids: list[str] = []
    for item in items:
        if isinstance(item, Resource):
            ids.append(item.id)
        elif isinstance(item, str) and item:
            ids.append(item)
        else:
            raise InvalidRequest(f"store(): not a resource or an Orthanc ID: {item!r}")
    if not ids:
        raise InvalidRequest("store() needs at least one resource")
    return ids


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, not {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if _int(name, value) <= 0:
        raise InvalidRequest(f"{name} must be a positive number of seconds, not {value!r}")
    return int(value)


__all__ = [
    "DEFAULT_KEYS",
    "EchoFailed",
    "FindAnswer",
    "FindFailed",
    "Modality",
    "ModalityError",
    "StoreFailed",
    "StoreReport",
    "UnknownModality",
    "get_modality",
    "list_modalities",
]
