"""What the forest reports: counts per level, IDs per level, update reports, cache statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..models import LEVELS, Resource


class ForestCounts(NamedTuple):
    """How many resources of each level the forest holds."""

    patients: int
    studies: int
    series: int
    instances: int
    """Instances linked in the forest; for a forest built above the instance level, the
    number of instance IDs its series list."""

    @property
    def total(self) -> int:
        """Resources of all levels."""
        return self.patients + self.studies + self.series + self.instances


class ByLevel(NamedTuple):
    """Orthanc IDs per level."""

    patients: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """IDs of all levels."""
        return len(self.patients) + len(self.studies) + len(self.series) + len(self.instances)

    def describe(self) -> str:
        """``"1 patient, 10 instances"`` (``"nothing"`` when empty)."""
        parts = [
            f"{len(ids)} {cls.level.lower() if len(ids) == 1 else cls.collection}"
            for ids, cls in zip(self, LEVELS, strict=True)
            if ids
        ]
        return ", ".join(parts) or "nothing"


def _by_level(
    ids: dict[type[Resource], list[str]], leave_out: dict[type[Resource], list[str]] | None = None
) -> ByLevel:
    """IDs per level, each once, in first-seen order, without those in ``leave_out``."""
    out = []
    for cls in LEVELS:
        skip = set(leave_out.get(cls, ())) if leave_out else set()
        out.append(tuple(i for i in dict.fromkeys(ids.get(cls, ())) if i not in skip))
    return ByLevel(*out)


@dataclass(frozen=True)
class UpdateReport:
    """What :meth:`PatientForest.update` changed, and what it cost."""

    added: ByLevel
    """Resources new to the forest."""
    removed: ByLevel
    """Resources no longer on the server, dropped from the forest."""
    updated: ByLevel
    """Resources still in the forest whose fields changed."""
    requests: int
    """HTTP requests the update sent (counted on the client)."""
    changes: int
    """Change-feed entries read."""
    from_seq: int
    """Sequence number the forest was at before the update."""
    to_seq: int
    """Sequence number the forest is at now."""
    rebuilt: bool = False
    """Whether the update fell back to a full rebuild."""
    reason: str | None = None
    """Why it rebuilt, or why it had to list IDs to find deletions."""

    @property
    def changed(self) -> bool:
        """Whether anything was added, removed or updated."""
        return bool(self.added.total or self.removed.total or self.updated.total)

    def __str__(self) -> str:
        how = "rebuilt" if self.rebuilt else "updated"
        text = (
            f"forest {how} from seq {self.from_seq} to {self.to_seq} ({self.changes} changes, "
            f"{self.requests} requests): added {self.added.describe()}; "
            f"removed {self.removed.describe()}; updated {self.updated.describe()}"
        )
        return f"{text} ({self.reason})" if self.reason else text


class CacheInfo(NamedTuple):
    """Statistics of the :func:`build_patient_forest` cache."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    ttl: float
