"""Downloads streamed to a file: a temporary name next to the target, renamed when complete."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest
from ..models import Instance, Resource
from .layout import safe_component

if TYPE_CHECKING:
    from ..server import Server

#: The temporary name of a download: ``.{name}.{8 hex digits}.part`` next to its target.
PART_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.part", re.DOTALL)


def _part_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")


def _refusal(path: Path) -> str | None:
    """Why ``path`` must not be replaced by a download (a link, a device, a folder...), or
    ``None`` when it is free or a regular file."""
    try:
        info = os.lstat(path)
    except OSError:
        return None  # nothing there (or nothing readable: the write will say)
    if stat.S_ISLNK(info.st_mode):
        return f"will not replace {path}: it is a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
        return f"will not replace {path}: it is not a regular file but {kind}"
    return None


def _check_target(path: Path) -> None:
    """Raise :class:`InvalidRequest` when a download must not replace ``path``."""
    problem = _refusal(path)
    if problem is not None:
        raise InvalidRequest(problem)


def _stream_to_file(chunks: Iterable[bytes], path: Path, *, make_parent: bool = True) -> int:
    """Write ``chunks`` to a temporary name next to ``path``, then rename; return the size.

    Raises:
        InvalidRequest: ``path`` is (or became, meanwhile) a link or not a regular file.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _part_name(path)
    size = 0
    try:
        with open(temporary, "xb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        _check_target(path)  # again: the rename would replace whatever is there now
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return size


def _get_to_file(
    server: Server,
    method: str,
    route: str,
    path: Path,
    *,
    json_body: Any = None,
    long: bool = False,
    make_parent: bool = True,
) -> int:
    """Stream one answer to ``path``; a connection lost mid-body is retried like a fresh one."""
    return server.download(
        method,
        route,
        lambda chunks: _stream_to_file(chunks, path, make_parent=make_parent),
        json_body=json_body,
        long=long,
    )


def download_archive(resource: Resource, path: Path) -> Path:
    """Stream a resource's ZIP archive to ``path`` and return the path written.

    ``GET /{level}/{id}/archive`` for patients, studies and series, ``POST
    /tools/create-archive`` for an instance: one request. A folder as ``path`` receives
    ``{id}.zip``. Written under a temporary name and renamed when complete.

    Raises:
        InvalidRequest: ``path`` is a symbolic link or exists and is not a regular file (a
            device such as ``/dev/null``, a FIFO): it is never replaced, nothing is sent.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{resource.id}.zip"
    _check_target(path)
    server = resource.client
    if isinstance(resource, Instance):
        _get_to_file(
            server,
            "POST",
            "/tools/create-archive",
            path,
            json_body={"Resources": [resource.id]},
            long=True,
        )
    else:
        _get_to_file(server, "GET", f"{resource.path}/archive", path, long=True)
    return path


def save_instance(instance: Instance, path: Path) -> Path:
    """Stream an instance's DICOM file to ``path`` and return the path written.

    ``GET /instances/{id}/file``: one request. A folder as ``path`` receives
    ``{SOPInstanceUID}.dcm``. Written under a temporary name and renamed when complete.

    Raises:
        InvalidRequest: ``path`` is a symbolic link or exists and is not a regular file (a
            device such as ``/dev/null``, a FIFO): it is never replaced, nothing is sent.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{safe_component(instance.sop_instance_uid or instance.id)}.dcm"
    _check_target(path)
    _get_to_file(instance.client, "GET", f"{instance.path}/file", path)
    return path
