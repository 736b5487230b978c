"""Upload sources turned into tasks: files, folders, archives, bytes and pydicom datasets.

Folders are walked lazily, archive members are read straight from the archive (nothing is
extracted), and every read stops at ``max_member_size``. :func:`_not_dicom` is the local
pre-check that rejects what cannot be DICOM before it is sent.
"""

from __future__ import annotations

import copy
import io
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .reports import UploadStatus

try:
    import lzma
except ImportError:  # pragma: no cover - Python built without liblzma
    lzma = None  # type: ignore[assignment]

#: File names that are never DICOM instances, reported as rejected without being read.
JUNK_NAMES = frozenset({"dicomdir", ".ds_store", "thumbs.db", "desktop.ini"})
#: File name endings read as archives, members uploaded one by one.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz")

_CHUNK = 1 << 20
#: How much of an item the pre-check sees: the 128-byte preamble, the ``DICM`` marker and
#: the start of the file meta group. :func:`_not_dicom` is called on this head only (on the
#: whole item when it is shorter), so that a large file that is not DICOM is rejected after
#: one small read, before anything else of it is read.
PRECHECK_BYTES = 64 * 1024
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


@dataclass(slots=True)
class _Task:
    """One item on its way to a worker: a path to read, bytes in hand, or a verdict."""

    seq: int
    source: str
    path: str | None = None
    data: bytes | None = None
    status: UploadStatus | None = None
    error: str | None = None
    size: int = 0


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
                # the pre-check first, on the head: a member that is not DICOM (a bomb of
                # zeros under a .dcm name) is never inflated further
                head = stream.read(min(PRECHECK_BYTES, self.cap + 1))
                reason = _not_dicom(head)
                if reason is not None:
                    return self.task(label, status="rejected", error=reason, size=size)
                data = _read_capped(stream, self.cap, size, head)
        except _ARCHIVE_ERRORS as exc:
            return self.task(label, status="rejected", error=f"unreadable member: {exc}")
        except MemoryError:
            return self.task(label, status="failed", error="not enough memory to read it")
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


def _read_capped(stream: IO[bytes], cap: int, expected: int, head: bytes = b"") -> bytes | None:
    """Read a whole stream, or return ``None`` as soon as it passes ``cap`` bytes.

    ``head`` is what was already read of the stream. ``expected`` (the declared size) sizes
    the buffer and the reads; a stream longer than declared is still stopped at the cap.
    The result is built in one buffer of the final size (no list of pieces joined at the
    end, which would hold the data twice).
    """
    total = len(head)
    if total > cap:
        return None
    step = max(1, min(expected + 1, _CHUNK * 16))
    chunk = stream.read(min(step, cap + 1 - total))
    if not chunk:  # nothing after the head: no copy at all
        return head
    buffer = io.BytesIO()
    planned = min(max(expected, total + len(chunk)), cap)
    if planned > 0:  # one allocation of the declared size, filled in place
        buffer.seek(planned - 1)
        buffer.write(b"\0")
        buffer.seek(0)
    buffer.write(head)
    while chunk:
        buffer.write(chunk)
        total += len(chunk)
        if total > cap:
            return None
        chunk = stream.read(min(step, cap + 1 - total))
    buffer.truncate(total)
    return buffer.getvalue()  # the buffer itself, not a copy


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
    dataset): those start with a group 0002/0008/... element, in little- or big-endian byte
    order (Orthanc reads an explicit-VR big-endian dataset without meta header too), and are
    sent for the server to judge. Only what is clearly something else (empty, an archive, a
    compressed file, text) is reported as rejected without being sent.
    """
    if data[128:132] == b"DICM":
        return None
    if len(data) >= 8 and (
        int.from_bytes(data[0:2], "little") in _RAW_DATASET_GROUPS
        or int.from_bytes(data[0:2], "big") in _RAW_DATASET_GROUPS
    ):
        return None
    if not data:
        return "empty file"
    if data[:4] == b"PK\x03\x04":
        return "a ZIP archive without a .zip name; rename it to have it expanded"
    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh":
        return "a compressed file, not DICOM"
    return "not DICOM: no 'DICM' marker at byte 128 and no DICOM dataset at the start"
