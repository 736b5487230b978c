"""What users attach to a resource: labels, metadata and attachments, with revisions.

Functions here take the :class:`~kkorthanc.server.Server` and the resource's REST path; the
models call them from their methods (``study.add_label(...)``, ``study.set_metadata(...)``).

Revisions: Orthanc answers metadata and attachments with an ``ETag`` (``"revision-md5"``).
Sending it back as ``If-Match`` makes a write conditional: a value changed meanwhile by
someone else gives 409, raised as :class:`~kkorthanc.errors.Conflict`. A server with
``CheckRevisions: true`` requires ``If-Match`` to change or delete an existing value.
The built-in SQLite index keeps every revision at 0 while the answer to a write announces
the next number, so after a write the revision is taken as the server will check it
(``docs/server-facts.md``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from ._answers import expect_names, expect_texts
from .errors import InvalidRequest

if TYPE_CHECKING:
    from .server import Server

_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: metadata and attachment names: a configured name (UserMetadata, UserContentType) or an index
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


class Revisioned(NamedTuple):
    """A value read with its revision."""

    value: bytes
    """The stored value (metadata are text: decode it, or use :meth:`text`)."""
    revision: str | None
    """The ``ETag`` to pass as ``revision=`` to a later write, ``None`` when not sent."""

    def text(self) -> str:
        """The value decoded as UTF-8."""
        return self.value.decode("utf-8")


def check_label(name: str) -> str:
    """``name`` if Orthanc accepts it as a label: 1 to 64 letters, digits, ``_`` or ``-``.

    Raises:
        InvalidRequest: it is not (checked before anything is sent, as Orthanc checks it).
    """
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise InvalidRequest(
            f"not a label: {name!r}; a label is 1 to 64 ASCII letters, digits, '_' or '-'"
        )
    return name


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"not a {what} name: {name!r}; use a name configured on the server "
            f"(letters, digits, '_' or '-') or its index"
        )
    return name


def _written(server: Server, etag: str | None) -> str | None:
    """The revision a write leaves, as later writes must name it.

    The SQLite index stores no revision numbers (always 0) although the write's ``ETag``
    counts up; its MD5 half is what protects the value there.
    """
    if etag is None or server.system.database_backend_plugin:
        return etag
    _, dash, md5 = etag.strip('"').partition("-")
    return f'"0-{md5}"' if dash else etag


def _if_match(revision: str | None) -> dict[str, str]:
    if revision is None:
        return {}
    if not isinstance(revision, str) or not revision or "\n" in revision or "\r" in revision:
        raise InvalidRequest(f"not a revision: {revision!r}; pass the ETag a read returned")
    return {"If-Match": revision if revision.startswith('"') else f'"{revision}"'}


# -- labels --------------------------------------------------------------------------------------


def add_label(server: Server, path: str, name: str) -> None:
    """``PUT {path}/labels/{name}``: one request (Orthanc 1.12.0+ with a database that
    stores labels; refused before sending otherwise)."""
    check_label(name)
    server.require("Labels")
    server.send("PUT", f"{path}/labels/{name}", data=b"")


def remove_label(server: Server, path: str, name: str) -> None:
    """``DELETE {path}/labels/{name}``: one request (same gate as :func:`add_label`)."""
    check_label(name)
    server.require("Labels")
    server.send("DELETE", f"{path}/labels/{name}")


def resource_labels(server: Server, path: str) -> tuple[str, ...]:
    """``GET {path}/labels``: the labels of one resource, sorted; one request."""
    server.require("Labels")
    answer = server.get_json(f"{path}/labels")
    return tuple(sorted(expect_names(answer, f"GET {path}/labels")))


def all_labels(server: Server) -> tuple[str, ...]:
    """``GET /tools/labels``: every label in use on the server, sorted; one request."""
    server.require("Labels")
    answer = server.get_json("/tools/labels")
    return tuple(sorted(expect_names(answer, "GET /tools/labels")))


# -- metadata ------------------------------------------------------------------------------------


def list_metadata(server: Server, path: str) -> dict[str, str]:
    """``GET {path}/metadata?expand``: every metadata of the resource, name -> value."""
    answer = server.get_json(f"{path}/metadata", {"expand": ""})
    return dict(expect_texts(answer, f"GET {path}/metadata?expand"))


def get_metadata(server: Server, path: str, name: str) -> Revisioned:
    """``GET {path}/metadata/{name}``: the value and its revision; one request.

    Raises:
        NotFound: the resource has no such metadata.
    """
    reply = server.send("GET", f"{path}/metadata/{_check_name(name, 'metadata')}")
    return Revisioned(reply.content, reply.headers.get("ETag"))


def set_metadata(
    server: Server, path: str, name: str, value: str, revision: str | None = None
) -> str | None:
    """``PUT {path}/metadata/{name}``: set a user metadata; returns the new revision.

    With ``revision`` (from :func:`get_metadata` or an earlier set) the write happens only
    if nobody changed the value since; otherwise :class:`~kkorthanc.errors.Conflict`.
    """
    if not isinstance(value, str):
        raise InvalidRequest(f"metadata values are text, not {type(value).__name__}")
    reply = server.send(
        "PUT",
        f"{path}/metadata/{_check_name(name, 'metadata')}",
        data=value.encode("utf-8"),
        headers={"Content-Type": "text/plain", **_if_match(revision)},
    )
    return _written(server, reply.headers.get("ETag"))


def delete_metadata(server: Server, path: str, name: str, revision: str | None = None) -> None:
    """``DELETE {path}/metadata/{name}``; conditional on ``revision`` as :func:`set_metadata`."""
    server.send(
        "DELETE", f"{path}/metadata/{_check_name(name, 'metadata')}", headers=_if_match(revision)
    )


# -- attachments ---------------------------------------------------------------------------------


def list_attachments(server: Server, path: str) -> tuple[str, ...]:
    """``GET {path}/attachments``: the names of the resource's attachments; one request."""
    answer = server.get_json(f"{path}/attachments")
    return tuple(expect_names(answer, f"GET {path}/attachments"))


def get_attachment(server: Server, path: str, name: str) -> Revisioned:
    """``GET {path}/attachments/{name}/data``: the content and its revision; one request."""
    reply = server.send("GET", f"{path}/attachments/{_check_name(name, 'attachment')}/data")
    return Revisioned(reply.content, reply.headers.get("ETag"))


def set_attachment(
    server: Server, path: str, name: str, data: bytes, revision: str | None = None
) -> str | None:
    """``PUT {path}/attachments/{name}``: store a user attachment; returns the new revision.

    Conditional on ``revision`` as :func:`set_metadata`.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidRequest(f"attachments are bytes, not {type(data).__name__}")
    reply = server.send(
        "PUT",
        f"{path}/attachments/{_check_name(name, 'attachment')}",
        data=bytes(data),
        headers={"Content-Type": "application/octet-stream", **_if_match(revision)},
    )
    return _written(server, reply.headers.get("ETag"))


def delete_attachment(
    server: Server, path: str, name: str, revision: str | None = None
) -> None:
    """``DELETE {path}/attachments/{name}``; conditional on ``revision``."""
    server.send(
        "DELETE",
        f"{path}/attachments/{_check_name(name, 'attachment')}",
        headers=_if_match(revision),
    )
