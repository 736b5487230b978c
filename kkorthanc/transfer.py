"""Import of files, folders, archives and datasets; downloads and exports; their reports.

Uploads (:func:`upload`) stream their sources: folders are walked lazily, archive members are
read straight from the archive (nothing is extracted to disk), and a bounded queue feeds a
few worker threads that each ``POST /instances`` one file at a time. Every item ends up in the
:class:`UploadReport` as ``stored``, ``already_stored``, ``rejected`` or ``failed``; nothing is
dropped. Orthanc de-duplicates, so running the same import again completes what failed and
stores nothing twice.

Exports (:func:`export`) list the instances of the given resources through the model
relations, name each file from a layout of DICOM keywords made safe for the file system, and
download concurrently, skipping files already present, so an interrupted export resumes.
Every download is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import queue
import re
import secrets
import stat
import string
import tarfile
import threading
import time
import typing
import warnings
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from . import tags as _tags
from .errors import (
    ExportFailed,
    Forbidden,
    NotFound,
    OrthancConnectionError,
    OrthancError,
    OrthancHTTPError,
    ServerError,
    Unauthorized,
    UploadFailed,
)
from .models import Instance, Patient, Resource, Series, Study

try:
    import lzma
except ImportError:  # pragma: no cover - Python built without liblzma
    lzma = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ._transport import BinaryChannel
    from .server import Server

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
    "download_archive",
    "export",
    "safe_component",
    "save_instance",
    "upload",
]

UploadStatus = Literal["stored", "already_stored", "rejected", "failed"]
ExportStatus = Literal["written", "skipped", "failed"]

#: Where :func:`export` puts each instance unless told otherwise.
DEFAULT_LAYOUT = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
#: Largest file or archive member :func:`upload` reads (2 GiB); larger ones are rejected.
DEFAULT_MAX_MEMBER_SIZE = 2 * 1024**3
#: Consecutive "server unreachable" failures after which :func:`upload` stops sending.
DEFAULT_MAX_CONSECUTIVE_FAILURES = 32

#: File names that are never DICOM instances, reported as rejected without being read.
JUNK_NAMES = frozenset({"dicomdir", ".ds_store", "thumbs.db", "desktop.ini"})
#: File name endings read as archives, members uploaded one by one.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz")

_CHUNK = 1 << 20
_ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    *((lzma.LZMAError,) if lzma is not None else ()),
)
# First data-element groups of a DICOM dataset written without the Part-10 preamble.
_RAW_DATASET_GROUPS = frozenset({0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


# -- errors ---------------------------------------------------------------------------------


# -- upload report --------------------------------------------------------------------------


@dataclass(slots=True)
class UploadItem:
    """The outcome of one uploaded file, archive member, byte string or dataset."""

    source: str
    """Where the item came from: a path, ``archive.zip!member``, ``<bytes #1>``, ..."""
    status: UploadStatus
    """``stored``, ``already_stored``, ``rejected`` (not DICOM or refused) or ``failed``."""
    instance_id: str | None = None
    """Orthanc ID of the instance (stored or already stored)."""
    parent_patient_id: str | None = None
    """Orthanc ID of the instance's patient."""
    parent_study_id: str | None = None
    """Orthanc ID of the instance's study."""
    parent_series_id: str | None = None
    """Orthanc ID of the instance's series."""
    size: int = 0
    """Bytes read for the item (0 when it was rejected before reading)."""
    seconds: float = 0.0
    """Time spent reading and sending the item."""
    error: str | None = None
    """Why the item was rejected or failed."""
    details: str | None = None
    """Orthanc's own ``Details`` when the server refused the item."""

    @property
    def label(self) -> str:
        """``source (status: error)``, for messages."""
        why = f": {self.error}" if self.error else ""
        return f"{self.source} ({self.status}{why})"


class _Entry(Protocol):
    @property
    def status(self) -> str: ...


_E = TypeVar("_E", bound=_Entry)


@dataclass
class _Report(Generic[_E]):
    """What upload and export reports share: entries with a status, time and cost."""

    items: list[_E] = field(default_factory=list)
    """One entry per item, in source or listing order."""
    elapsed: float = 0.0
    """Wall time of the whole run in seconds."""
    requests: int = 0
    """HTTP requests the client sent during the run, retries included."""

    #: every status an entry can have, in the order ``counts`` lists them
    statuses: ClassVar[tuple[str, ...]] = ()

    def _with(self, status: str) -> list[_E]:
        return [item for item in self.items if item.status == status]

    @property
    def counts(self) -> dict[str, int]:
        """Number of entries per status (every status present, zeros included)."""
        out = dict.fromkeys(self.statuses, 0)
        for item in self.items:
            out[item.status] += 1
        return out

    @property
    def total(self) -> int:
        """Number of entries."""
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[_E]:
        return iter(self.items)


@dataclass(repr=False)
class UploadReport(_Report[UploadItem]):
    """Everything :func:`upload` did, one :class:`UploadItem` per item, in source order."""

    statuses: ClassVar[tuple[str, ...]] = typing.get_args(UploadStatus)

    @property
    def stored(self) -> list[UploadItem]:
        """Items the server stored now."""
        return self._with("stored")

    @property
    def already_stored(self) -> list[UploadItem]:
        """Items the server already had (nothing was stored twice)."""
        return self._with("already_stored")

    @property
    def rejected(self) -> list[UploadItem]:
        """Items that are not DICOM or that the server refused (see ``details``)."""
        return self._with("rejected")

    @property
    def failed(self) -> list[UploadItem]:
        """Items that could not be read or sent (server unreachable after retries, ...)."""
        return self._with("failed")

    @property
    def bytes(self) -> int:
        """Bytes of the items that are now on the server (stored or already stored)."""
        return sum(i.size for i in self.items if i.status in ("stored", "already_stored"))

    @property
    def instance_ids(self) -> list[str]:
        """Orthanc IDs of the instances stored or already stored, in source order."""
        return [i.instance_id for i in self.items if i.instance_id is not None]

    @property
    def ok(self) -> bool:
        """Whether every item is stored or already stored."""
        return all(i.status in ("stored", "already_stored") for i in self.items)

    def raise_for_failures(self, *, rejected: bool = True) -> UploadReport:
        """Raise :class:`UploadFailed` if any item failed (or was rejected); else return self.

        Args:
            rejected: count rejected items (junk files, refused instances) as failures too.
        """
        bad = [
            i for i in self.items if i.status == "failed" or (rejected and i.status == "rejected")
        ]
        if bad:
            raise UploadFailed(self, bad)
        return self

    def __repr__(self) -> str:
        c = self.counts
        rate = self.total / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"<UploadReport {self.total} items: {c['stored']} stored, "
            f"{c['already_stored']} already stored, {c['rejected']} rejected, "
            f"{c['failed']} failed; {self.bytes / 1e6:.1f} MB in {self.elapsed:.2f} s "
            f"({rate:.0f}/s), {self.requests} requests>"
        )


# -- upload sources -------------------------------------------------------------------------


@dataclass(slots=True)
class _Task:
    """One item on its way to a worker: a path to read, bytes in hand, or a verdict."""

    seq: int
    source: str
    path: str | None = None
    data: bytes | None = None
    status: UploadStatus | None = None
    error: str | None = None


def _is_dataset(value: object) -> bool:
    cls = type(value)
    return any(c.__name__ == "Dataset" and c.__module__.startswith("pydicom") for c in cls.__mro__)


def _archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def _is_junk_name(name: str) -> bool:
    return os.path.basename(name.rstrip("/")).lower() in JUNK_NAMES


def _check_source(source: object) -> None:
    """Refuse a top-level source of the wrong type or a path that does not exist."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"upload source {path!r} does not exist")
        return
    if isinstance(source, (bytes, bytearray, memoryview)) or _is_dataset(source):
        return
    if isinstance(source, Iterable):
        return
    raise TypeError(
        f"cannot upload a {type(source).__name__}: give a path (file, folder or archive), "
        "bytes, a pydicom Dataset, or an iterable of these"
    )


class _Producer:
    """Turns sources into tasks, lazily, never holding more than one archive member."""

    def __init__(self, max_member_size: int) -> None:
        self.cap = max_member_size
        self.seq = 0
        self.byte_count = 0
        self.dataset_count = 0
        self.seen_dirs: set[tuple[int, int]] = set()

    def task(self, source: str, **kwargs: Any) -> _Task:
        task = _Task(self.seq, source, **kwargs)
        self.seq += 1
        return task

    def tasks(self, source: object) -> Iterator[_Task]:
        if isinstance(source, (str, os.PathLike)):
            yield from self.path(os.fspath(source))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.byte_count += 1
            yield self.task(f"<bytes #{self.byte_count}>", data=bytes(source))
        elif _is_dataset(source):
            yield self.dataset(source)
        elif isinstance(source, Iterable):
            for element in source:
                yield from self.tasks(element)
        else:
            yield self.task(
                f"<{type(source).__name__}>",
                status="rejected",
                error=f"cannot upload a {type(source).__name__}",
            )

    def dataset(self, ds: Any) -> _Task:
        self.dataset_count += 1
        sop = getattr(ds, "SOPInstanceUID", None)
        label = f"<Dataset {sop}>" if sop else f"<Dataset #{self.dataset_count}>"
        try:
            data = _dataset_bytes(ds)
        except Exception as exc:  # pydicom raises many types; reported on the item
            return self.task(label, status="rejected", error=f"cannot encode the dataset: {exc}")
        return self.task(label, data=data)

    def path(self, path: str) -> Iterator[_Task]:
        try:
            info = os.stat(path)
        except OSError as exc:
            yield self.task(path, status="rejected", error=_os_reason(exc))
            return
        if stat.S_ISDIR(info.st_mode):
            yield from self.folder(path)
        else:
            yield from self.file(path, info)

    def file(self, path: str, info: os.stat_result | None) -> Iterator[_Task]:
        name = os.path.basename(path)
        if _is_junk_name(name):
            yield self.task(path, status="rejected", error=f"{name} is not a DICOM instance")
            return
        if info is not None and not stat.S_ISREG(info.st_mode):
            yield self.task(path, status="rejected", error="not a regular file")
            return
        kind = _archive_kind(name)
        if kind == "zip":
            yield from self.zip_members(path)
        elif kind == "tar":
            yield from self.tar_members(path)
        elif info is not None and info.st_size > self.cap:
            yield self.task(path, status="rejected", error=self.too_big(info.st_size))
        else:
            yield self.task(path, path=path)

    def folder(self, root: str) -> Iterator[_Task]:
        # depth first, sorted, following directory links once each: loops end
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                info = os.stat(folder)
                key = (info.st_dev, info.st_ino)
                if key in self.seen_dirs:
                    continue
                self.seen_dirs.add(key)
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
            except OSError as exc:
                yield self.task(folder, status="failed", error=_os_reason(exc))
                continue
            subfolders: list[str] = []
            for entry in entries:
                try:
                    if entry.is_dir():
                        subfolders.append(entry.path)
                        continue
                    # the directory listing tells regular files apart without a stat call
                    entry_info = None if entry.is_file() else entry.stat()
                except OSError as exc:  # a dangling link, a vanished file
                    yield self.task(entry.path, status="rejected", error=_os_reason(exc))
                    continue
                yield from self.file(entry.path, entry_info)
            stack.extend(reversed(subfolders))

    def too_big(self, size: int) -> str:
        return f"{size} bytes is more than max_member_size ({self.cap} bytes)"

    def member(self, label: str, name: str, size: int, read: Any) -> _Task:
        if _is_junk_name(name):
            base = os.path.basename(name)
            return self.task(label, status="rejected", error=f"{base} is not a DICOM instance")
        if size > self.cap:
            return self.task(label, status="rejected", error=self.too_big(size))
        if _archive_kind(name) is not None:
            return self.task(
                label, status="rejected", error="archives inside archives are not expanded"
            )
        try:
            with read() as stream:
                data = _read_capped(stream, self.cap, size)
        except _ARCHIVE_ERRORS as exc:
            return self.task(label, status="rejected", error=f"unreadable member: {exc}")
        if data is None:  # the declared size lied
            return self.task(label, status="rejected", error=self.too_big(self.cap + 1))
        return self.task(label, data=data)

    def zip_members(self, path: str) -> Iterator[_Task]:
        try:
            archive = zipfile.ZipFile(path)
        except _ARCHIVE_ERRORS as exc:
            yield self.task(path, status="rejected", error=f"not a readable ZIP archive: {exc}")
            return
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                yield self.member(
                    f"{path}!{info.filename}",
                    info.filename,
                    info.file_size,
                    lambda info=info: archive.open(info),
                )

    def tar_members(self, path: str) -> Iterator[_Task]:
        try:
            archive = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the with below
        except _ARCHIVE_ERRORS as exc:
            yield self.task(path, status="rejected", error=f"not a readable tar archive: {exc}")
            return
        with archive:
            members = iter(archive)
            while True:
                try:
                    member = next(members)
                except StopIteration:
                    return
                except _ARCHIVE_ERRORS as exc:
                    yield self.task(
                        path, status="rejected", error=f"archive damaged after a member: {exc}"
                    )
                    return
                label = f"{path}!{member.name}"
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    yield self.task(
                        label, status="rejected", error="links inside archives are not followed"
                    )
                    continue
                if not member.isfile():
                    yield self.task(label, status="rejected", error="not a regular file")
                    continue
                yield self.member(
                    label, member.name, member.size, lambda m=member: _tar_reader(archive, m)
                )


def _tar_reader(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(member)
    if stream is None:  # pragma: no cover - only for non-files, filtered before
        raise tarfile.ReadError(f"cannot read {member.name}")
    return stream


def _read_capped(stream: IO[bytes], cap: int, expected: int) -> bytes | None:
    """Read a whole stream, or return ``None`` as soon as it passes ``cap`` bytes.

    ``expected`` (the declared size) only sizes the reads; a stream longer than declared is
    still stopped at the cap.
    """
    parts: list[bytes] = []
    total = 0
    step = max(1, min(expected + 1, _CHUNK * 16))
    while True:
        chunk = stream.read(min(step, cap + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            return None


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _dataset_bytes(ds: Any) -> bytes:
    """Encode a pydicom dataset as a Part-10 file without changing the caller's object."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    for element in getattr(ds, "file_meta", None) or ():
        meta.add(element)
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    shallow = copy.copy(ds)
    shallow.file_meta = meta
    buffer = io.BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(buffer, shallow, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        pydicom.dcmwrite(buffer, shallow, write_like_original=False)
    return buffer.getvalue()


def _not_dicom(data: bytes) -> str | None:
    """Why ``data`` cannot be a DICOM instance, or ``None`` when it may be one.

    A Part-10 file has ``DICM`` at byte 128. Some valid files lack the preamble (a bare
    dataset): those start with a group 0002/0008/... element and are sent for the server to
    judge. Anything else is reported as rejected without being sent.
    """
    if data[128:132] == b"DICM":
        return None
    if len(data) >= 8 and int.from_bytes(data[0:2], "little") in _RAW_DATASET_GROUPS:
        return None
    if not data:
        return "empty file"
    if data[:4] == b"PK\x03\x04":
        return "a ZIP archive without a .zip name; rename it to have it expanded"
    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh":
        return "a compressed file, not DICOM"
    return "not DICOM: no 'DICM' marker at byte 128 and no DICOM dataset at the start"


# -- upload ---------------------------------------------------------------------------------


class _NoBar:
    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


_warned_tqdm = False


def _progress_bar(enabled: bool, total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar (``tqdm.auto``: a widget in notebooks), or a silent stand-in."""
    global _warned_tqdm
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned_tqdm:
            _warned_tqdm = True
            warnings.warn(
                "progress bars need tqdm: pip install 'kkorthanc[progress]'",
                stacklevel=3,
            )
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)


class _Uploader:
    """Worker side of an upload: read, pre-check, POST, classify."""

    def __init__(self, max_member_size: int, max_consecutive_failures: int | None) -> None:
        self.cap = max_member_size
        self.limit = max_consecutive_failures
        self.lock = threading.Lock()
        self.consecutive = 0
        self.tripped: str | None = None

    def run(self, task: _Task, channel: BinaryChannel) -> UploadItem:
        start = time.perf_counter()
        item = self._run(task, channel)
        item.seconds = time.perf_counter() - start
        return item

    def _run(self, task: _Task, channel: BinaryChannel) -> UploadItem:
        if task.status is not None:
            return UploadItem(task.source, task.status, error=task.error)
        data = task.data
        if data is None:
            assert task.path is not None
            try:
                with open(task.path, "rb", buffering=0) as stream:
                    expected = os.fstat(stream.fileno()).st_size
                    data = None if expected > self.cap else _read_capped(stream, self.cap, expected)
            except OSError as exc:
                return UploadItem(task.source, "failed", error=f"cannot read: {_os_reason(exc)}")
            if data is None:
                return UploadItem(
                    task.source, "rejected", error=f"larger than max_member_size ({self.cap} bytes)"
                )
        size = len(data)
        reason = _not_dicom(data)
        if reason is not None:
            return UploadItem(task.source, "rejected", size=size, error=reason)
        if self.tripped is not None:
            return UploadItem(task.source, "failed", size=size, error=self.tripped)
        try:
            content = channel.send("POST", "/instances", data, content_type="application/dicom")
        except (Unauthorized, Forbidden):
            raise
        except NotFound as exc:
            # Orthanc refuses some files with 404 ("Inexistent tag" for a DICOMDIR); a 404
            # without Orthanc's own error, or "Unknown resource", means a wrong server URL
            if exc.orthanc_error in (None, "Unknown resource"):
                raise
            return self._refused(task, size, exc)
        except (OrthancConnectionError, ServerError) as exc:
            unreachable = isinstance(exc, OrthancConnectionError) or exc.status in (502, 503, 504)
            self._count_failure(unreachable, exc)
            details = exc.details if isinstance(exc, OrthancHTTPError) else None
            return UploadItem(task.source, "failed", size=size, error=str(exc), details=details)
        except OrthancHTTPError as exc:  # 400 and other refusals of this one file
            return self._refused(task, size, exc)
        self._reset()
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return UploadItem(
                task.source, "failed", size=size, error="the server's answer is not a JSON object"
            )
        state = answer.get("Status")
        status: UploadStatus
        if state == "Success":
            status = "stored"
        elif state == "AlreadyStored":
            status = "already_stored"
        elif state == "FilteredOut":
            status = "rejected"
        else:
            status = "failed"
        return UploadItem(
            task.source,
            status,
            instance_id=_str(answer.get("ID")),
            parent_patient_id=_str(answer.get("ParentPatient")),
            parent_study_id=_str(answer.get("ParentStudy")),
            parent_series_id=_str(answer.get("ParentSeries")),
            size=size,
            error=None if status in ("stored", "already_stored") else f"server status {state}",
        )

    def _refused(self, task: _Task, size: int, exc: OrthancHTTPError) -> UploadItem:
        self._reset()
        return UploadItem(task.source, "rejected", size=size, error=str(exc), details=exc.details)

    def _reset(self) -> None:
        if self.consecutive:
            with self.lock:
                self.consecutive = 0

    def _count_failure(self, unreachable: bool, exc: Exception) -> None:
        with self.lock:
            self.consecutive = self.consecutive + 1 if unreachable else 0
            if self.limit is not None and self.consecutive >= self.limit and not self.tripped:
                self.tripped = (
                    f"not sent: the server was unreachable ({self.consecutive} failures in a "
                    f"row, the last: {exc})"
                )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def upload(
    client: Server,
    source: Any,
    *,
    workers: int = 4,
    progress: bool = True,
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
    max_consecutive_failures: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES,
) -> UploadReport:
    """Upload DICOM files to the server, ``workers`` at a time; one ``POST /instances`` each.

    Args:
        client: the server to upload to.
        source: a file, a folder (walked recursively, directory links followed once, so
            loops end), a ``.zip``/``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2`` archive (members
            read from the archive; archives found in folders are expanded too, archives inside
            archives are not), ``bytes``, a pydicom ``Dataset``, or an iterable of these.
        workers: concurrent uploads, each on a keep-alive connection of its own.
        progress: show a tqdm progress bar (a widget in notebooks); needs the ``progress``
            extra, and ``False`` works without it.
        max_member_size: files and archive members larger than this are rejected unread
            (declared size) or as soon as reading passes it, so a zip bomb cannot fill memory.
        max_consecutive_failures: after this many "server unreachable" failures in a row the
            remaining items are reported failed without being sent (``None``: never give up).

    Returns:
        An :class:`UploadReport` with one item per file, member, byte string or dataset.
        Files that are clearly not DICOM (no ``DICM`` marker at byte 128 and no dataset at the
        start; ``DICOMDIR``, ``.DS_Store``, text) are rejected without being sent; Orthanc's
        refusals are rejected with its ``details``; transport errors after the client's
        retries are failed. Local read errors are failed too, so a rerun tries them again.

    Raises:
        TypeError: ``source`` is of a type that cannot be uploaded.
        FileNotFoundError: ``source`` is a path that does not exist.
        Unauthorized, Forbidden: the server refuses every upload; the run stops.
        NotFound: the URL is not an Orthanc REST root (``POST /instances`` is unknown there).

    Costs one request per DICOM item (plus retries); nothing is parsed locally.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if max_member_size < 1:
        raise ValueError(f"max_member_size must be at least 1, not {max_member_size}")
    _check_source(source)
    started = time.perf_counter()
    first_request = client.request_count
    uploader = _Uploader(max_member_size, max_consecutive_failures)
    producer = _Producer(max_member_size)
    tasks: queue.Queue[_Task | None] = queue.Queue(maxsize=workers * 4)
    items: list[UploadItem] = []
    seqs: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    bar = _progress_bar(progress, None, "upload", "file")
    problems = [0, 0]

    def work() -> None:
        with client.channel() as channel:
            while True:
                task = tasks.get()
                if task is None or stop.is_set():
                    return
                try:
                    item = uploader.run(task, channel)
                except BaseException as exc:  # surfaced by the caller thread below
                    with lock:
                        errors.append(exc)
                    stop.set()
                    return
                record(task, item)

    def record(task: _Task, item: UploadItem) -> None:
        with lock:
            items.append(item)
            seqs.append(task.seq)
            bar.update(1)
            if item.status in ("rejected", "failed"):
                problems[item.status == "failed"] += 1
                bar.set_postfix_str(f"{problems[0]} rejected, {problems[1]} failed", refresh=False)

    threads = [
        threading.Thread(target=work, name=f"kkorthanc-upload-{n}", daemon=True)
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for task in producer.tasks(source):
            while not stop.is_set():
                try:
                    tasks.put(task, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                break
        bar.total = producer.seq
        bar.refresh()
    except BaseException:
        stop.set()
        raise
    finally:
        for _ in threads:
            while True:
                try:
                    tasks.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if not any(t.is_alive() for t in threads):
                        break
                    if stop.is_set():  # the run is abandoned: queued work is dropped
                        with contextlib.suppress(queue.Empty):
                            tasks.get_nowait()
        for thread in threads:
            thread.join()
        bar.close()
    if errors:
        raise errors[0]
    order = sorted(range(len(items)), key=seqs.__getitem__)
    return UploadReport(
        items=[items[n] for n in order],
        elapsed=time.perf_counter() - started,
        requests=client.request_count - first_request,
    )


# -- downloads ------------------------------------------------------------------------------


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


# -- export report --------------------------------------------------------------------------


@dataclass(slots=True)
class ExportItem:
    """The outcome of one exported instance."""

    instance_id: str
    """Orthanc ID of the instance."""
    path: Path
    """Where the file is (or would have been) written."""
    status: ExportStatus
    """``written``, ``skipped`` (already present with the right size) or ``failed``."""
    size: int = 0
    """Bytes written, or the size of the file already present."""
    seconds: float = 0.0
    """Time spent downloading."""
    error: str | None = None
    """Why the instance failed."""

    @property
    def label(self) -> str:
        """``path (status: error)``, for messages."""
        why = f": {self.error}" if self.error else ""
        return f"{self.path} ({self.status}{why})"


@dataclass(repr=False, kw_only=True)
class ExportReport(_Report[ExportItem]):
    """Everything :func:`export` did, one :class:`ExportItem` per instance."""

    folder: Path
    """The export's root folder."""

    statuses: ClassVar[tuple[str, ...]] = typing.get_args(ExportStatus)

    @property
    def written(self) -> list[ExportItem]:
        """Instances downloaded and written now."""
        return self._with("written")

    @property
    def skipped(self) -> list[ExportItem]:
        """Instances whose file was already present."""
        return self._with("skipped")

    @property
    def failed(self) -> list[ExportItem]:
        """Instances that could not be downloaded or written."""
        return self._with("failed")

    @property
    def bytes(self) -> int:
        """Bytes written by this export."""
        return sum(item.size for item in self.items if item.status == "written")

    @property
    def paths(self) -> list[Path]:
        """Files of the instances written or skipped."""
        return [item.path for item in self.items if item.status != "failed"]

    def raise_for_failures(self) -> ExportReport:
        """Raise :class:`ExportFailed` if any instance failed; else return self."""
        bad = self.failed
        if bad:
            raise ExportFailed(self, bad)
        return self

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<ExportReport {self.total} instances to {self.folder}: {c['written']} written, "
            f"{c['skipped']} skipped, {c['failed']} failed; {self.bytes / 1e6:.1f} MB in "
            f"{self.elapsed:.2f} s, {self.requests} requests>"
        )


# -- layout -----------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_VALUE = 128


def safe_component(text: str) -> str:
    """A tag value made safe as (part of) one file name.

    Separators, control and reserved characters become ``_``; surrounding spaces go; a value
    that is empty or only dots (``..``) becomes ``_``; long values are cut to 128 characters.
    """
    text = _UNSAFE.sub("_", text).strip()[:_MAX_VALUE]
    if not text.strip("."):
        return "_"
    return text


_Piece = tuple[str, str | None, str]


def _parse_layout(layout: str) -> list[list[_Piece]]:
    """Split a layout into components of ``(literal, field, format_spec)`` pieces."""
    if not layout or layout.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", layout):
        raise ValueError(f"layout must be a relative path template, not {layout!r}")
    components: list[list[_Piece]] = []
    for part in layout.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"layout {layout!r} has an empty, '.' or '..' component; use '/' only between names"
            )
        pieces: list[_Piece] = []
        try:
            parsed = list(string.Formatter().parse(part))
        except ValueError as exc:
            raise ValueError(f"layout {layout!r} is not a valid template: {exc}") from exc
        for literal, name, spec, conversion in parsed:
            if conversion:
                raise ValueError(f"layout {layout!r}: conversions like !{conversion} are not used")
            if name is not None and not name.isidentifier():
                raise ValueError(
                    f"layout {layout!r}: {{{name}}} is not a DICOM keyword "
                    "(write e.g. {PatientID})"
                )
            if _UNSAFE.search(literal):
                raise ValueError(f"layout {layout!r} has unsafe characters in {literal!r}")
            pieces.append((literal, name, spec or ""))
        components.append(pieces)
    return components


def _format_value(value: str, spec: str) -> str:
    if not spec:
        return value
    try:
        if spec[-1] in "bcdoxXn":
            return format(int(value.strip()), spec)
        if spec[-1] in "eEfFgG%":
            return format(float(value.strip()), spec)
        return format(value, spec)
    except ValueError:
        return value


def _relative_path(components: list[list[_Piece]], tags: dict[str, str]) -> str:
    parts: list[str] = []
    for pieces in components:
        text = ""
        for literal, name, spec in pieces:
            text += literal
            if name is not None:
                value = tags.get(name)
                if value is None and name not in _tags.VR_OF:
                    hint = _tags.suggest_keywords(name)
                    maybe = f"; did you mean {', '.join(hint)}?" if hint else ""
                    raise ValueError(
                        f"layout field {{{name}}} is not a main DICOM tag of the instance, "
                        f"its series, study or patient{maybe}"
                    )
                text += safe_component(_format_value(value or "", spec))
        parts.append(text if text.strip(".").strip() else "_")
    return os.path.join(*parts)


# -- export -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    instance: Instance
    tags: dict[str, str]


def _linked_parent(resource: Resource) -> Resource | None:
    return resource._parent


class _Resolver:
    """Lists the instances of resources with the main tags of their ancestors.

    Relations already loaded (a forest, an earlier export) cost nothing; otherwise a patient
    costs its study listing, a study its series listing and one instance listing, a series
    its instance listing (and its study once), an instance its series and study once each.
    Patients and studies are listed in worker threads (model relations are thread-safe);
    series and instances in the caller's thread, which owns the caches below.
    """

    def __init__(self, client: Server) -> None:
        self.client = client
        self.series_by_id: dict[str, Series] = {}
        self.studies_by_id: dict[str, Study] = {}

    def batches(
        self, resources: Iterable[object], pool: ThreadPoolExecutor | None
    ) -> Iterator[list[_Target]]:
        """Targets in resource order, a batch per resource; listings run ahead in ``pool``
        (or in this thread without one)."""
        pending: deque[Future[list[_Target]] | list[_Target]] = deque()
        for resource in resources:
            if isinstance(resource, Patient):
                if pool is None:
                    pending.append(self.patient_targets(resource))
                else:
                    pending.append(pool.submit(self.patient_targets, resource))
            elif isinstance(resource, Study):
                if pool is None:
                    pending.append(self.study_targets(resource, None))
                else:
                    pending.append(pool.submit(self.study_targets, resource, None))
            elif isinstance(resource, Series):
                study = self.study_of(resource)
                pending.append([self.target(i, resource, study) for i in resource.instances])
            elif isinstance(resource, Instance):
                series = self.series_of(resource)
                pending.append([self.target(resource, series, self.study_of(series))])
            else:
                raise TypeError(
                    f"cannot export a {type(resource).__name__}: give patients, studies, "
                    "series or instances"
                )
            while pending and (isinstance(pending[0], list) or pending[0].done()):
                yield _batch(pending.popleft())
        while pending:
            yield _batch(pending.popleft())

    def study_of(self, series: Series) -> Study:
        parent = _linked_parent(series)
        if isinstance(parent, Study):
            return parent
        study_id = series.parent_study_id or ""
        if study_id not in self.studies_by_id:
            self.studies_by_id[study_id] = series.study
        return self.studies_by_id[study_id]

    def series_of(self, instance: Instance) -> Series:
        parent = _linked_parent(instance)
        if isinstance(parent, Series):
            return parent
        series_id = instance.parent_series_id or ""
        if series_id not in self.series_by_id:
            self.series_by_id[series_id] = instance.series
        return self.series_by_id[series_id]

    def patient_targets(self, patient: Patient) -> list[_Target]:
        return [t for study in patient.studies for t in self.study_targets(study, patient)]

    def study_targets(self, study: Study, patient: Patient | None) -> list[_Target]:
        series_list = study.series
        missing = [s for s in series_list if not s.relations_loaded]
        if len(missing) > 1:  # one study-wide listing instead of one per series
            data = self.client.get_json(f"{study.path}/instances")
            by_series: dict[str, list[Instance]] = {s.id: [] for s in missing}
            for entry in data:
                instance = Instance.from_orthanc(entry, self.client)
                if instance.parent_series_id in by_series:
                    by_series[instance.parent_series_id].append(instance)
            for series in missing:
                children = by_series[series.id]
                for instance in children:
                    instance._link(series, None)
                series._link(None, children)
        return [
            self.target(instance, series, study, patient)
            for series in series_list
            for instance in series.instances
        ]

    @staticmethod
    def target(
        instance: Instance, series: Series, study: Study, patient: Patient | None = None
    ) -> _Target:
        if patient is None:
            linked = _linked_parent(study)
            patient = linked if isinstance(linked, Patient) else None
        tags: dict[str, str] = dict(study.patient_main_dicom_tags)
        if patient is not None:
            tags.update(patient.main_dicom_tags)
        tags.update(study.main_dicom_tags)
        tags.update(series.main_dicom_tags)
        tags.update(instance.main_dicom_tags)
        return _Target(instance, tags)


def _batch(entry: Future[list[_Target]] | list[_Target]) -> list[_Target]:
    return entry if isinstance(entry, list) else entry.result()


def export(
    client: Server,
    resources: Iterable[Resource] | Resource,
    folder: Path,
    *,
    layout: str = DEFAULT_LAYOUT,
    workers: int = 4,
    progress: bool = True,
) -> ExportReport:
    """Write the instances of resources to ``folder``, one DICOM file each, ``workers`` at a time.

    Args:
        client: the server to read from.
        resources: patients, studies, series or instances (one, or an iterable).
        folder: the root folder, created if needed.
        layout: the path of each file under ``folder``; ``{Keyword}`` placeholders are main
            DICOM tags of the instance or its series, study or patient (format specs work:
            ``{InstanceNumber:04d}``). Each value is made safe (:func:`safe_component`): a
            PatientID of ``../../etc`` stays inside the folder. A missing tag gives ``_``.
        workers: concurrent downloads.
        progress: show a tqdm progress bar (``False`` works without tqdm).

    Returns:
        An :class:`ExportReport`. A file already present with the instance's size is
        skipped without a request, so running an interrupted export again resumes it. Two
        instances landing on the same path are an error for the second, never an overwrite.

    Raises:
        ValueError: the layout is not a relative template of DICOM keywords.
        TypeError: something in ``resources`` is not a resource.

    Costs the listings of what is not loaded yet (a patient: its studies; a study: its series
    and its instances, two requests; a series: one), then one ``GET /instances/{id}/file``
    per file written. Patients and studies are listed by ``workers // 2`` threads while the
    files of those already listed download; ``workers=1`` sends one request at a time.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    components = _parse_layout(layout)
    started = time.perf_counter()
    first_request = client.request_count
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(folder)
    resolver = _Resolver(client)
    items: list[ExportItem] = []
    seen: set[str] = set()
    planner = _Planner(root)
    bar = _progress_bar(progress, None, "export", "file")
    lock = threading.Lock()

    def fetch(index: int, instance: Instance, path: Path) -> None:
        start = time.perf_counter()
        try:
            size = _get_to_file(client, "GET", f"{instance.path}/file", path, make_parent=False)
        except (Unauthorized, Forbidden):
            raise
        except (OrthancError, OSError) as exc:
            item = ExportItem(instance.id, path, "failed", error=str(exc))
        else:
            item = ExportItem(instance.id, path, "written", size=size)
        item.seconds = time.perf_counter() - start
        items[index] = item
        with lock:
            bar.update(1)

    sources = [resources] if isinstance(resources, Resource) else resources
    downloads: list[Future[None]] = []
    try:
        with contextlib.ExitStack() as stack:
            # with one worker everything happens one request at a time
            lister = None
            if workers > 1:
                lister = stack.enter_context(
                    ThreadPoolExecutor(workers // 2, thread_name_prefix="kkorthanc-list")
                )
            pool = stack.enter_context(
                ThreadPoolExecutor(workers, thread_name_prefix="kkorthanc-export")
            )
            for batch in resolver.batches(sources, lister):
                for target in batch:
                    instance = target.instance
                    if instance.id in seen:
                        continue
                    seen.add(instance.id)
                    path = Path(root) / _relative_path(components, target.tags)
                    item = planner.plan(instance, path)
                    items.append(item)
                    if item.status == "written":  # to be downloaded
                        downloads.append(pool.submit(fetch, len(items) - 1, instance, path))
                        continue
                    with lock:
                        bar.update(1)
                with lock:
                    bar.total = len(items)
                    bar.refresh()
            for download in downloads:
                download.result()
    finally:
        bar.close()
    return ExportReport(
        folder=folder,
        items=items,
        elapsed=time.perf_counter() - started,
        requests=client.request_count - first_request,
    )


class _Planner:
    """Decides each instance before any download: skipped, failed, or to be written.

    Checks that each file's folder resolves inside the export root (once per folder) and
    creates it, so that downloads only write files.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.prefix = root.rstrip(os.sep) + os.sep
        self.claimed: dict[str, str] = {}
        #: folder -> (why it cannot be used or None, whether this export created it)
        self.folders: dict[str, tuple[str | None, bool]] = {}

    def plan(self, instance: Instance, path: Path) -> ExportItem:
        key = os.path.normcase(str(path))
        if key in self.claimed:
            return ExportItem(
                instance.id,
                path,
                "failed",
                error=f"same path as instance {self.claimed[key]}; the layout is not unique",
            )
        self.claimed[key] = instance.id
        parent = os.path.dirname(key)
        if parent not in self.folders:
            self.folders[parent] = self.check_folder(parent)
        problem, created = self.folders[parent]
        if problem is not None:
            return ExportItem(instance.id, path, "failed", error=problem)
        if not created:  # a folder made by this export holds nothing to skip
            try:
                present = path.stat().st_size
            except OSError:
                pass
            else:
                if instance.file_size is None or present == instance.file_size:
                    return ExportItem(instance.id, path, "skipped", size=present)
        return ExportItem(instance.id, path, "written")

    def check_folder(self, folder: str) -> tuple[str | None, bool]:
        real = os.path.realpath(folder)
        if real != self.root and not real.startswith(self.prefix):
            return "the path leaves the export folder", False
        if os.path.isdir(folder):
            return None, False
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"cannot create {folder}: {_os_reason(exc)}", False
        return None, True
