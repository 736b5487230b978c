"""Server-side operations on stored resources, and the jobs that run them.

Deleting, anonymizing and modifying happen on the server. Small resources are handled
synchronously: the answer names the new resource, which is fetched once and returned typed.
Large ones can run as a server job (``as_job=True``): the call returns a :class:`Job` at once,
and :meth:`Job.wait` polls it until it ends, raising :class:`~kkorthanc.errors.JobFailed` with
Orthanc's own error when it fails and :class:`~kkorthanc.errors.JobTimeout` when time runs out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pydantic import ConfigDict, Field

from . import tags as _tags
from ._answers import expect_list, expect_object, reading
from ._base import ServerObject
from .errors import (
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NoResultingResource,
    NotFound,
    OrthancError,
    ValidationFailed,
)
from .models import LEVELS, Instance, Resource, level_class
from .server import BULK_CONTENT, path_segment
from .values import OrthancTime

if TYPE_CHECKING:
    from .server import Server

R = TypeVar("R", bound=Resource)

JobState = Literal["Pending", "Running", "Success", "Failure", "Paused", "Retry"]
#: states a job never leaves by itself
FINAL_STATES: frozenset[str] = frozenset({"Success", "Failure"})

#: how many more times a job poll answered 404 is sent, for the case of a balancer in front of
#: several Orthanc processes of which only one knows the job
NODE_RETRIES = 3

#: how :meth:`Job.wait` sleeps between polls (replaceable, e.g. when replaying recordings)
_sleep = time.sleep


class Job(ServerObject):
    """A job on the server, as ``GET /jobs/{id}`` describes it.

    Plain fields never touch the network; :meth:`refresh`, :meth:`wait` and the control
    methods do, and each says what it costs.
    """

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    id: str = Field(alias="ID")
    """The job's ID on the server (a UUID)."""
    type: str = Field(default="", alias="Type")
    """What the job does: ``DicomMoveScu``, ``DicomModalityStore``, ``ResourceModification``..."""
    state: JobState = Field(alias="State")
    """``Pending``, ``Running``, ``Success``, ``Failure``, ``Paused`` or ``Retry``."""
    progress: int = Field(default=0, alias="Progress")
    """Percentage done, 0 to 100."""
    priority: int = Field(default=0, alias="Priority")
    """Scheduling priority: higher runs first."""
    error_code: int | None = Field(default=None, alias="ErrorCode")
    """Orthanc's error code; 0 while nothing went wrong."""
    error_description: str = Field(default="", alias="ErrorDescription")
    """Orthanc's short description of the error code (``Success`` when none)."""
    error_details: str = Field(default="", alias="ErrorDetails")
    """Orthanc's detailed reason for a failure, often the most useful part."""
    creation_time: OrthancTime = Field(default=None, alias="CreationTime")
    """When the job was submitted (server time)."""
    completion_time: OrthancTime = Field(default=None, alias="CompletionTime")
    """When the job ended (server time); ``None`` while it runs."""
    timestamp: OrthancTime = Field(default=None, alias="Timestamp")
    """When the server produced this description."""
    effective_runtime: float | None = Field(default=None, alias="EffectiveRuntime")
    """Seconds the job actually ran."""
    content: dict[str, Any] = Field(default_factory=dict, alias="Content")
    """Job-specific details: for a modification ``ID``, ``Path`` and ``Type`` of the result."""

    @classmethod
    def from_orthanc(cls, data: Any, client: Server | None = None) -> Job:
        """Build a job from Orthanc's JSON description."""
        ident = data.get("ID", "?") if isinstance(data, dict) else "?"
        return cls._attached(data, client, f"job {ident}")

    def _label(self) -> str:
        return f"job {self.id}"

    @property
    def path(self) -> str:
        """The REST path of the job, ``/jobs/<id>``."""
        return f"/jobs/{self.id}"

    @property
    def finished(self) -> bool:
        """Whether the job ended, successfully or not (as of the last refresh)."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the job ended successfully (as of the last refresh)."""
        return self.state == "Success"

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.type or '?'} {self.state} {self.progress}%>"

    def __str__(self) -> str:
        return repr(self)

    # -- network ---------------------------------------------------------------------------

    def refresh(self) -> Job:
        """Fetch the job's current state (``GET /jobs/{id}``), one request.

        Updates this object in place and returns it. Behind a load balancer, a job lives in
        the one Orthanc process that created it and the other nodes answer 404: a 404 is
        asked again, up to :data:`NODE_RETRIES` more times (each may reach another node),
        before it is taken to mean the job is gone (see ``docs/cluster.md``).

        Raises:
            NotFound: no node knows the job.
        """
        fresh = _read_job(self.client, self.path, self._client)
        for name in type(self).model_fields:
            object.__setattr__(self, name, getattr(fresh, name))
        if fresh.__pydantic_extra__ is not None:
            object.__setattr__(self, "__pydantic_extra__", dict(fresh.__pydantic_extra__))
        return self

    def wait(self, timeout: float | None = 300.0, poll: float = 0.05, max_poll: float = 1.0) -> Job:
        """Poll the job until it ends (``GET /jobs/{id}``, one request per poll).

        The first poll is sent at once, unless the job is already known to have ended; the
        delay between polls starts at ``poll`` seconds and grows by half each time up to
        ``max_poll``. Polling stops at the first final state seen, so the requests sent
        depend only on the states the server reports, not on timing.

        Args:
            timeout: seconds to wait in all; ``None`` waits for ever; ``0`` checks once.
            poll: first delay between polls, in seconds.
            max_poll: longest delay between polls, in seconds.

        Returns:
            This job, refreshed, in state ``Success``.

        Raises:
            JobFailed: the job ended in failure; carries Orthanc's error code, description
                and details.
            JobTimeout: the job had not ended after ``timeout`` seconds.
        """
        if poll <= 0 or max_poll <= 0:
            raise InvalidRequest(f"poll and max_poll must be positive, not {poll}, {max_poll}")
        if timeout is not None and timeout < 0:
            raise InvalidRequest(f"timeout must be >= 0 or None, not {timeout}")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            if not self.finished:
                self.refresh()
            if self.state == "Success":
                return self
            if self.state == "Failure":
                raise self._failure()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobTimeout(
                        f"job {self.id} ({self.type}) still {self.state} at "
                        f"{self.progress}% after {timeout:g} s"
                    )
                _sleep(min(delay, remaining))
            else:
                _sleep(delay)
            delay = min(delay * 1.5, max_poll)

    def raise_for_failure(self) -> None:
        """Raise :class:`~kkorthanc.errors.JobFailed` if the job is known to have failed.

        Costs nothing: it looks at the state of the last refresh.
        """
        if self.state == "Failure":
            raise self._failure()

    def _failure(self) -> JobFailed:
        return JobFailed(self.id, self.error_code, self.error_description, self.error_details)

    def cancel(self) -> Job:
        """Ask the server to cancel the job (``POST /jobs/{id}/cancel``), then refresh.

        Two requests. A running job stops after its current step, ending in ``Failure``.
        """
        return self._control("cancel")

    def pause(self) -> Job:
        """Ask the server to pause the job (``POST /jobs/{id}/pause``), then refresh.

        Two requests. A pending job pauses at once; a running one after its current step.
        """
        return self._control("pause")

    def resume(self) -> Job:
        """Resume a paused job (``POST /jobs/{id}/resume``), then refresh; two requests."""
        return self._control("resume")

    def resubmit(self) -> Job:
        """Run a failed or canceled job again (``POST /jobs/{id}/resubmit``), then refresh.

        Two requests.
        """
        return self._control("resubmit")

    def _control(self, action: str) -> Job:
        self.client.post_json(f"{self.path}/{action}", {})
        return self.refresh()

    def result_resource(self, timeout: float | None = 300.0) -> Resource:
        """The resource a modification or anonymization job created, typed.

        Waits for the job first if it has not ended (see :meth:`wait`), then fetches the
        resource named in the job's content (``GET /{level}/{id}``): one request plus polls.

        Raises:
            JobFailed: the job failed.
            NoResultingResource: the job is of a kind that creates no resource.
        """
        self.wait(timeout)
        new_id = self.content.get("ID")
        level = self.content.get("Type")
        if not isinstance(new_id, str) or not isinstance(level, str):
            raise NoResultingResource(f"job {self.id} ({self.type}) created no resource")
        return level_class(level).fetch(self.client, new_id)


# -- jobs on a server ------------------------------------------------------------------------


def list_jobs(client: Server) -> list[Job]:
    """All jobs the server remembers (``GET /jobs?expand``), one request."""
    data = client.get_json("/jobs", {"expand": ""})
    with reading("GET /jobs?expand"):
        return [Job.from_orthanc(item, client) for item in expect_list(data or [], "the jobs")]


def get_job(client: Server, id: str) -> Job:
    """One job by ID (``GET /jobs/{id}``), one request.

    Raises:
        NotFound: the server knows no such job (it may have been forgotten: Orthanc keeps
            a bounded history, and jobs are per server process; see :meth:`Job.refresh`).
        InvalidRequest: ``id`` cannot be a job ID (it would change the request's path).
    """
    path = f"/jobs/{path_segment(id, 'job ID')}"
    answer = client.get_json(path)
    with reading(f"GET {path}"):
        return Job.from_orthanc(answer, client)


def _read_job(client: Server, path: str, attached: Server | None) -> Job:
    answer = _job_json(client, path)
    with reading(f"GET {path}"):
        return Job.from_orthanc(answer, attached)


def _job_json(client: Server, path: str) -> Any:
    """``GET /jobs/{id}`` of a job known to exist (just submitted, or seen before), asked
    again when a node that does not know it answers 404 (see :meth:`Job.refresh`)."""
    for attempt in range(NODE_RETRIES + 1):
        try:
            return client.get_json(path)
        except NotFound:
            if attempt == NODE_RETRIES:
                raise
    raise AssertionError("unreachable")


def submitted_job(client: Server, answer: Any, request: str) -> Job:
    """The job named by the answer to ``request`` (``{ID, Path}``), fetched: one request."""
    if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str):
        shown = repr(answer)[:200]
        raise ValidationFailed(f"the server did not answer with a job: {shown}", request=request)
    with reading(request):
        path = f"/jobs/{path_segment(answer['ID'], 'job ID')}"
    return _read_job(client, path, client)


# -- delete, anonymize, modify -------------------------------------------------------------------


def delete_resource(resource: Resource) -> None:
    """Delete a resource and everything under it (``DELETE /{level}/{id}``), one request.

    Raises:
        NotFound: the resource is not (or no longer) on the server.
    """
    resource.client.delete(resource.path)


#: keyword argument -> Orthanc JSON field, for both operations
_COMMON_OPTIONS: dict[str, str] = {
    "replace": "Replace",
    "remove": "Remove",
    "keep": "Keep",
    "force": "Force",
    "keep_source": "KeepSource",
    "private_creator": "PrivateCreator",
    "transcode": "Transcode",
    "priority": "Priority",
}
_MODIFY_OPTIONS: dict[str, str] = {
    **_COMMON_OPTIONS,
    "remove_private_tags": "RemovePrivateTags",
    "keep_labels": "KeepLabels",
}
#: options that newer servers have: the feature (see ``kkorthanc.server.FEATURES``) each needs
_GATED_OPTIONS: dict[str, str] = {"keep_labels": "KeepLabels"}
_ANONYMIZE_OPTIONS: dict[str, str] = {
    **_COMMON_OPTIONS,
    "dicom_version": "DicomVersion",
    "keep_private_tags": "KeepPrivateTags",
}
_BOOL_OPTIONS = frozenset(
    {"force", "keep_source", "remove_private_tags", "keep_private_tags", "keep_labels"}
)
_STR_OPTIONS = frozenset({"private_creator", "transcode", "dicom_version"})


@overload
def anonymize(resource: R, *, as_job: Literal[False] = False, **options: Any) -> R: ...
@overload
def anonymize(resource: R, *, as_job: Literal[True], **options: Any) -> Job: ...
@overload
def anonymize(resource: R, *, as_job: bool, **options: Any) -> R | Job: ...
def anonymize(resource: R, *, as_job: bool = False, **options: Any) -> R | Job:
    """Anonymize a resource on the server (``POST /{level}/{id}/anonymize``).

    Orthanc gives the copy new UIDs and a new PatientID and PatientName, and removes or
    empties identifying tags following the DICOM de-identification profile.

    Args:
        resource: a patient, study, series or instance.
        as_job: run as a server job and return the :class:`Job` at once (not for instances).
        replace: ``{name: value}`` to set in the copy; dates, times, numbers and lists
            are written as DICOM strings, a list of mappings as a sequence
            (:func:`~kkorthanc.tags.to_dicom`). Names here and in ``remove`` and ``keep``
            are keywords, snake_case names, tag numbers or paths into sequences
            (:func:`~kkorthanc.tags.tag_keyword`).
        remove: keywords to remove.
        keep: keywords to keep as they are (UIDs need ``force=True``).
        force: allow changing identifiers (UIDs, PatientID).
        keep_source: keep the original (Orthanc's default); ``False`` deletes it.
        dicom_version: the de-identification profile (``"2008"``, ``"2017c"``, ``"2021b"``).
        keep_private_tags: keep private tags (removed by default).
        private_creator: private creator for private tags in ``replace``.
        transcode: transfer syntax UID to transcode the copy to.
        priority: job priority (with ``as_job``).

    Returns:
        The new resource, of the same level, fetched typed: two requests. An instance costs
        three (the server answers with the new file, which is stored back), one more with
        ``keep_source=False``. With ``as_job=True`` the job instead: two requests; see
        :meth:`Job.result_resource`.

    Raises:
        InvalidRequest: an unknown option or a value of the wrong type, before any request.
        BadRequest: the server refused the options (its reason is in the message).
    """
    return _transform(resource, "anonymize", _ANONYMIZE_OPTIONS, as_job, options)


@overload
def modify(resource: R, *, as_job: Literal[False] = False, **options: Any) -> R: ...
@overload
def modify(resource: R, *, as_job: Literal[True], **options: Any) -> Job: ...
@overload
def modify(resource: R, *, as_job: bool, **options: Any) -> R | Job: ...
def modify(resource: R, *, as_job: bool = False, **options: Any) -> R | Job:
    """Modify a resource on the server (``POST /{level}/{id}/modify``).

    Unless told to keep them, Orthanc gives the modified copy new UIDs below the patient
    level, so the result is a new resource; the original stays unless ``keep_source=False``.

    Args:
        resource: a patient, study, series or instance.
        as_job: run as a server job and return the :class:`Job` at once (not for instances).
        replace: ``{name: value}`` to set; dates, times, numbers and lists are written as
            DICOM strings, a list of mappings as a sequence (:func:`~kkorthanc.tags.to_dicom`).
            Names here and in ``remove`` and ``keep`` are keywords, snake_case names, tag
            numbers or paths into sequences (:func:`~kkorthanc.tags.tag_keyword`).
            Changing identifiers needs ``force=True``.
        remove: keywords to remove.
        keep: keywords to keep, e.g. ``["StudyInstanceUID", "SeriesInstanceUID",
            "SOPInstanceUID"]`` with ``force=True`` to modify in place. Above the instance
            level this needs the server's ``OverwriteInstances`` option (otherwise the
            server fails to store the copy: a 500), and ``keep_source=False`` is refused:
            the server would delete the result, which is the source. The resource is then
            reconstructed (``POST /{level}/{id}/reconstruct``, one more request) so that the
            server's index shows the new main tags.
        force: allow changing or keeping identifiers.
        keep_source: keep the original (Orthanc's default); ``False`` deletes it.
        remove_private_tags: remove all private tags.
        keep_labels: give the copy the labels of the original (Orthanc 1.12.3+; refused
            with :class:`~kkorthanc.errors.UnsupportedByServer` before sending elsewhere).
        private_creator: private creator for private tags in ``replace``.
        transcode: transfer syntax UID to transcode the copy to.
        priority: job priority (with ``as_job``).

    Returns:
        The new resource, of the same level, fetched typed: two requests. An instance costs
        three (the server answers with the new file, which is stored back), one more with
        ``keep_source=False``, three more when the copy replaces an original with the same
        identifiers (the original is read, deleted, and put back if the copy cannot be
        stored). With ``as_job=True`` the job instead: two requests.

    Raises:
        InvalidRequest: an unknown option or a value of the wrong type, before any request.
        BadRequest: the server refused the options (its reason is in the message).
    """
    return _transform(resource, "modify", _MODIFY_OPTIONS, as_job, options)


def _transform(
    resource: R,
    operation: str,
    allowed: Mapping[str, str],
    as_job: bool,
    options: Mapping[str, Any],
) -> R | Job:
    server = resource.client
    body = _operation_body(operation, allowed, options, server)
    path = f"{resource.path}/{operation}"
    if isinstance(resource, Instance):
        if as_job:
            raise InvalidRequest(
                f"an instance is {'anonymized' if operation == 'anonymize' else 'modified'} "
                "synchronously: as_job applies to patients, studies and series"
            )
        return _transform_instance(resource, path, body)  # type: ignore[return-value]
    if body.get("KeepSource") is False and _keeps_identity(type(resource), operation, body):
        raise InvalidRequest(
            f"{operation}() keeps the identifiers of {resource.level.lower()} {resource.id}, so "
            "the result replaces it in place; keep_source=False would make the server delete "
            "the result itself: leave keep_source out"
        )
    if as_job:
        body["Asynchronous"] = True
        return submitted_job(server, server.post_json(path, body), f"POST {path}")
    answer = server.post_json(path, body)
    if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str):
        shown = repr(answer)[:200]
        raise ValidationFailed(f"no new resource in the answer {shown}", request=f"POST {path}")
    with reading(f"POST {path}"):
        path_segment(answer["ID"], f"{resource.level.lower()} ID")
    if answer["ID"] == resource.id:
        # Modified in place: the files changed, but the server's index may still hold the
        # old main tags (Orthanc 1.10 does) until it re-reads them.
        server.post_json(f"{resource.path}/reconstruct", {})
    return type(resource).fetch(server, answer["ID"])


def _keeps_identity(cls: type[Resource], operation: str, body: Mapping[str, Any]) -> bool:
    """Whether the result will have the source's Orthanc ID (all its identifiers unchanged).

    The Orthanc ID is computed from the identifiers of the level and the levels above.
    Anonymization regenerates every identifier unless kept; modification regenerates only
    the UID of the level itself (a patient keeps its PatientID unless replaced).
    """
    replaced = body.get("Replace") or {}
    kept = set(body.get("Keep") or ())
    own_uid = cls.uid_keyword if cls.parent_class() is not None else None
    for upper in LEVELS[: cls.depth]:
        tag = upper.uid_keyword
        if tag in replaced:
            return False
        regenerated = operation == "anonymize" or tag == own_uid
        if regenerated and tag not in kept:
            return False
    return True


def _transform_instance(instance: Instance, path: str, body: dict[str, Any]) -> Instance:
    # The instance routes answer with the new file instead of storing it: store it here.
    keep_source = body.pop("KeepSource", True)
    server = instance.client
    data = server.post_for_bytes(path, body)

    def store() -> dict[str, Any]:
        answer: dict[str, Any] = server.post_bytes(
            "/instances", data, content_type="application/dicom"
        ).json()
        return answer

    stored = store()
    if stored.get("ID") == instance.id and stored.get("Status") == "AlreadyStored":
        # Same identifiers as the original: the server kept the old file.
        if keep_source:
            raise InvalidRequest(
                f"the modified instance keeps the identifiers of {instance.id}, so it cannot "
                "be stored beside it: pass keep_source=False to replace the original"
            )
        original = server.get_bytes(f"{instance.path}/file")
        delete_resource(instance)
        try:
            stored = store()
        except OrthancError:
            # put the original back rather than lose both versions
            server.post_bytes("/instances", original, content_type="application/dicom")
            raise
    elif not keep_source:
        delete_resource(instance)
    return Instance.fetch(server, str(stored["ID"]))


# -- many resources at once ----------------------------------------------------------------------


def delete_many(server: Server, resources: Iterable[Resource | str]) -> None:
    """Delete many resources of any levels in one request (``POST /tools/bulk-delete``).

    Raises:
        InvalidRequest: something in ``resources`` is neither a resource nor an Orthanc ID.
    """
    server.post_json("/tools/bulk-delete", {"Resources": _ids("delete_many", resources)})


def transform_many(
    server: Server,
    operation: Literal["modify", "anonymize"],
    resources: Iterable[Resource | str],
    *,
    as_job: bool = False,
    level: str | None = None,
    **options: Any,
) -> list[Resource] | Job:
    """Modify or anonymize many resources in one call (``POST /tools/bulk-modify`` or
    ``/tools/bulk-anonymize``); the options are those of :func:`modify` / :func:`anonymize`.

    Returns the new resources (the answer names them; they are fetched with
    ``/tools/bulk-content``: two requests in all), or the :class:`Job` with ``as_job=True``.
    ``level`` is the level of the modification (Orthanc infers it from the identifiers that
    change when it is left out).
    """
    allowed = _MODIFY_OPTIONS if operation == "modify" else _ANONYMIZE_OPTIONS
    body = _operation_body(f"{operation}_many", allowed, options, server)
    body["Resources"] = _ids(f"{operation}_many", resources)
    if level is not None:
        body["Level"] = level_class(level).level
    path = f"/tools/bulk-{operation}"
    if as_job:
        body["Asynchronous"] = True
        return submitted_job(server, server.post_json(path, body), f"POST {path}")
    answer = server.post_json(path, body)
    created = answer.get("Resources") if isinstance(answer, dict) else None
    if not isinstance(created, list):
        shown = repr(answer)[:200]
        raise ValidationFailed(f"no resources in the answer {shown}", request=f"POST {path}")
    with reading(f"POST {path}"):
        ids = [expect_object(item, "a resource")["ID"] for item in created]
    data = server.bulk_json(ids)
    with reading(BULK_CONTENT):
        found = [level_class(item["Type"]).from_orthanc(item, server) for item in data]
    return found


def _ids(operation: str, resources: Iterable[Resource | str]) -> list[str]:
    if isinstance(resources, (str, Resource)):
        resources = [resources]
    ids: list[str] = []
    for item in resources:
        if isinstance(item, Resource):
            ids.append(item.id)
        elif isinstance(item, str):
            ids.append(path_segment(item, "Orthanc ID"))
        else:
            raise InvalidRequest(f"{operation}(): not a resource or an Orthanc ID: {item!r}")
    if not ids:
        raise InvalidRequest(f"{operation}(): no resources given")
    return sorted(set(ids))


def _operation_body(
    operation: str,
    allowed: Mapping[str, str],
    options: Mapping[str, Any],
    server: Server | None = None,
) -> dict[str, Any]:
    """The JSON body of a modification or anonymization; ``server`` checks the options
    that only newer servers have."""
    body: dict[str, Any] = {}
    for name, value in options.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise InvalidRequest(f"{operation}() got an unknown option {name!r}; known: {known}")
        if value is None:
            continue
        if name in _GATED_OPTIONS and server is not None:
            server.require(_GATED_OPTIONS[name])
        if name in _BOOL_OPTIONS and not isinstance(value, bool):
            raise InvalidRequest(f"{operation}(): {name} must be True or False, not {value!r}")
        if name in _STR_OPTIONS and not isinstance(value, str):
            raise InvalidRequest(f"{operation}(): {name} must be a string, not {value!r}")
        if name == "replace":
            value = _replacements(operation, value)
        elif name in ("remove", "keep"):
            value = _keywords(operation, name, value)
        elif name == "priority" and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"{operation}(): priority must be an integer, not {value!r}")
        body[allowed[name]] = value
    return body


def _keywords(operation: str, name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest(f"{operation}(): {name} must be a list of tag keywords, not {value!r}")
    where = f"{operation}(): {name}: "
    return [_tags.tag_keyword(item, where=where, paths=True) for item in value]


def _replacements(operation: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            f"{operation}(): replace must map tag keywords to values, not {value!r}"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        keyword = _tags.tag_keyword(key, where=f"{operation}(): replace: ", paths=True)
        if keyword in out:
            raise InvalidRequest(f"{operation}(): replace names {keyword} twice")
        out[keyword] = _tags.to_dicom(keyword, item, purpose="write", where=f"{operation}(): ")
    return out


__all__ = [
    "FINAL_STATES",
    "InvalidRequest",
    "Job",
    "JobState",
    "NoResultingResource",
    "anonymize",
    "delete_resource",
    "get_job",
    "list_jobs",
    "modify",
    "submitted_job",
]
