"""Uploads of files, folders, archives and datasets; downloads and exports; their reports.

:func:`upload` sends DICOM items to the server and returns an :class:`UploadReport`;
:func:`export` writes instances to a folder tree and returns an :class:`ExportReport`;
:func:`download_archive` and :func:`save_instance` stream one answer to a file. How they
work, what they cost and how the modules divide the work: ``docs/transfer.md``.
"""

from __future__ import annotations

from ..errors import ExportFailed, UploadFailed
from .breaker import DEFAULT_MAX_CONSECUTIVE_FAILURES
from .download import download_archive, save_instance
from .exporter import export
from .layout import DEFAULT_LAYOUT, check_layout, safe_component
from .reports import ExportItem, ExportReport, ExportStatus, UploadItem, UploadReport, UploadStatus
from .sources import ARCHIVE_SUFFIXES, JUNK_NAMES
from .uploader import DEFAULT_MAX_MEMBER_SIZE, upload

# Internals that tests reach through the package, re-exported explicitly.
from .layout import _parse_layout as _parse_layout  # isort: skip
from .layout import _relative_path as _relative_path  # isort: skip
from . import progress as progress  # isort: skip
from .sources import _Task as _Task  # isort: skip
from .uploader import _Uploader as _Uploader  # isort: skip

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEFAULT_LAYOUT",
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "DEFAULT_MAX_MEMBER_SIZE",
    "JUNK_NAMES",
    "ExportFailed",
    "ExportItem",
    "ExportReport",
    "ExportStatus",
    "UploadFailed",
    "UploadItem",
    "UploadReport",
    "UploadStatus",
    "check_layout",
    "download_archive",
    "export",
    "safe_component",
    "save_instance",
    "upload",
]
