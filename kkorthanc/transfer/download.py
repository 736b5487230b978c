"""Downloads streamed to a file: a temporary name next to the target, renamed when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import Instance, Resource
from .layout import safe_component

if TYPE_CHECKING:
    from ..server import Server


def _stream_to_file(chunks: Iterable[bytes], path: Path, *, make_parent: bool = True) -> int:
    """Write ``chunks`` to a temporary name next to ``path``, then rename; return the size."""
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    size = 0
    try:
        with open(temporary, "xb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
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
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{resource.id}.zip"
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
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{safe_component(instance.sop_instance_uid or instance.id)}.dcm"
    _get_to_file(instance.client, "GET", f"{instance.path}/file", path)
    return path
