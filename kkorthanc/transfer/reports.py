"""Upload and export reports: one entry per item with its status, and what they share.

Both report kinds count entries per status, time the run and count its requests;
``raise_for_failures`` turns failed entries into :class:`~kkorthanc.errors.UploadFailed`
or :class:`~kkorthanc.errors.ExportFailed`.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, Literal, Protocol, TypeVar

from ..errors import ExportFailed, UploadFailed

UploadStatus = Literal["stored", "already_stored", "rejected", "failed"]
ExportStatus = Literal["written", "skipped", "failed"]


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
    """Size of the item in bytes (0 when it was rejected or failed before it was opened:
    by its name, its declared size, an unreadable file)."""
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


@dataclass(slots=True)
class ExportItem:
    """The outcome of one exported instance."""

    instance_id: str
    """Orthanc ID of the instance."""
    path: Path
    """Where the file is (or would have been) written."""
    status: ExportStatus
    """``written``, ``skipped`` (already present: the instance's size and SOPInstanceUID)
    or ``failed``."""
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
