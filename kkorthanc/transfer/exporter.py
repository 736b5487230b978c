"""Exports: resolve resources to instances, plan each file, download them concurrently."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._answers import expect_list, reading
from ..errors import (
    Forbidden,
    OrthancConnectionError,
    OrthancError,
    ServerError,
    Unauthorized,
)
from ..models import Instance, Patient, Resource, Series, Study
from .breaker import DEFAULT_MAX_CONSECUTIVE_FAILURES, _Breaker
from .download import PART_NAME, _get_to_file, _refusal
from .layout import DEFAULT_LAYOUT, _parse_layout, _relative_path
from .part10 import read_sop_instance_uid
from .progress import AUTO, ProgressOption, _progress_bar
from .reports import ExportItem, ExportReport
from .sources import _os_reason

if TYPE_CHECKING:
    from ..server import Server


@dataclass(slots=True)
class _Target:
    instance: Instance
    tags: dict[str, str]


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
        parent = series.linked_parent()
        if isinstance(parent, Study):
            return parent
        study_id = series.parent_id or ""
        if study_id not in self.studies_by_id:
            self.studies_by_id[study_id] = series.study
        return self.studies_by_id[study_id]

    def series_of(self, instance: Instance) -> Series:
        parent = instance.linked_parent()
        if isinstance(parent, Series):
            return parent
        series_id = instance.parent_id or ""
        if series_id not in self.series_by_id:
            self.series_by_id[series_id] = instance.series
        return self.series_by_id[series_id]

    def patient_targets(self, patient: Patient) -> list[_Target]:
        return [t for study in patient.studies for t in self.study_targets(study, patient)]

    def study_targets(self, study: Study, patient: Patient | None) -> list[_Target]:
        series_list = study.series
        missing = [s for s in series_list if not s.relations_loaded]
        if len(missing) > 1:  # one study-wide listing instead of one per series
            path = f"{study.path}/{Instance.collection}"
            data = self.client.get_json(path)
            by_series: dict[str, list[Instance]] = {s.id: [] for s in missing}
            with reading(f"GET {path}"):
                for entry in expect_list(data, "the instances"):
                    instance = Instance.from_orthanc(entry, self.client)
                    if instance.parent_id in by_series:
                        by_series[instance.parent_id].append(instance)
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
            linked = study.linked_parent()
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


class _Planner:
    """Decides each instance before any download: skipped, failed, or to be written.

    Checks that each file's folder resolves inside the export root (once per folder) and
    creates it, so that downloads only write files. In a folder that was there before, a
    file already present is kept (skipped) when it is the instance's (same size, same
    SOPInstanceUID in its head), and the temporary files an interrupted export left for
    the paths planned now are removed.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.prefix = root.rstrip(os.sep) + os.sep
        self.claimed: dict[str, str] = {}
        #: folder -> (why it cannot be used or None, whether this export created it)
        self.folders: dict[str, tuple[str | None, bool]] = {}
        #: folder -> target file name -> temporary files found for it (``.name.hex.part``)
        self.stale: dict[str, dict[str, list[str]]] = {}

    def plan(self, instance: Instance, path: Path, *, create: bool = True) -> ExportItem:
        """The instance's fate; ``create=False`` creates no folder (nothing will be sent)."""
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
            self.folders[parent] = self.check_folder(parent, create)
        problem, created = self.folders[parent]
        if problem is not None:
            return ExportItem(instance.id, path, "failed", error=problem)
        if created:  # a folder made by this export holds nothing to skip
            return ExportItem(instance.id, path, "written")
        self.remove_stale(parent, path.name)
        refusal = _refusal(path)
        if refusal is not None:  # a link or a device is never replaced
            return ExportItem(instance.id, path, "failed", error=refusal)
        try:
            present = path.stat().st_size
        except OSError:
            return ExportItem(instance.id, path, "written")
        if self.is_the_instance(instance, path, present):
            return ExportItem(instance.id, path, "skipped", size=present)
        return ExportItem(instance.id, path, "written")  # replaced by the download

    @staticmethod
    def is_the_instance(instance: Instance, path: Path, size: int) -> bool:
        """Whether the file at ``path`` (``size`` bytes) is the instance's: the size the
        server reports (when it does) and the SOPInstanceUID read from the file's head."""
        if instance.file_size is not None and size != instance.file_size:
            return False
        expected = instance.sop_instance_uid
        return expected is None or read_sop_instance_uid(path) == expected

    def check_folder(self, folder: str, create: bool) -> tuple[str | None, bool]:
        real = os.path.realpath(folder)
        if real != self.root and not real.startswith(self.prefix):
            return "the path leaves the export folder", False
        if os.path.isdir(folder):
            self.stale[folder] = _stale_parts(folder)
            return None, False
        if not create:
            return None, False
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"cannot create {folder}: {_os_reason(exc)}", False
        return None, True

    def remove_stale(self, folder: str, name: str) -> None:
        """Remove the temporary files an interrupted export left for ``folder/name``."""
        for part in self.stale.get(folder, {}).pop(name, ()):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, part))


def _stale_parts(folder: str) -> dict[str, list[str]]:
    """The temporary download files in ``folder`` (regular files named like those
    :func:`~kkorthanc.transfer.download._stream_to_file` writes), by target file name."""
    found: dict[str, list[str]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = PART_NAME.fullmatch(entry.name)
                if match is not None and entry.is_file(follow_symlinks=False):
                    found.setdefault(match["name"], []).append(entry.name)
    except OSError:
        pass
    return found


def export(
    client: Server,
    resources: Iterable[Resource] | Resource,
    folder: Path,
    *,
    layout: str = DEFAULT_LAYOUT,
    workers: int = 4,
    progress: ProgressOption = AUTO,
    max_consecutive_failures: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES,
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
        progress: ``"auto"`` (the default) shows a tqdm bar only where someone can see it
            (standard error is a terminal, or a Jupyter kernel: a text bar when ipywidgets
            is missing); ``True`` always, ``False`` never. Needs the ``progress`` extra.
        max_consecutive_failures: after this many "server unreachable" failures in a row
            (connection errors and timeouts, 502, 503, 504, each after the client's
            retries) the remaining instances are reported failed without being requested
            (``None``: never give up).

    Returns:
        An :class:`ExportReport` with one item per instance. A file already present with
        the instance's size and SOPInstanceUID is skipped without a request, so running an
        interrupted export again resumes it (and removes the temporary files the
        interruption left). Two instances landing on the same path are an error for the
        second, never an overwrite; a symbolic link or a device at a file's path is never
        replaced.

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
    _relative_path(components, {})  # an unknown keyword is refused before anything is sent
    started = time.perf_counter()
    first_request = client.request_count
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(folder)
    resolver = _Resolver(client)
    items: list[ExportItem] = []
    seen: set[str] = set()
    planner = _Planner(root)
    breaker = _Breaker(max_consecutive_failures)
    bar = _progress_bar(progress, None, "export", "file")
    lock = threading.Lock()

    def fetch(index: int, instance: Instance, path: Path) -> None:
        start = time.perf_counter()
        if breaker.tripped is not None:  # queued before the server looked gone
            items[index] = ExportItem(instance.id, path, "failed", error=breaker.tripped)
            with lock:
                bar.update(1)
            return
        try:
            size = _get_to_file(client, "GET", f"{instance.path}/file", path, make_parent=False)
        except (Unauthorized, Forbidden):
            raise
        except (OrthancConnectionError, ServerError) as exc:
            breaker.failed(exc)
            item = ExportItem(instance.id, path, "failed", error=str(exc))
        except (OrthancError, OSError) as exc:  # the server answered; this file failed
            breaker.answered()
            item = ExportItem(instance.id, path, "failed", error=str(exc))
        else:
            breaker.answered()
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
                    item = planner.plan(instance, path, create=breaker.tripped is None)
                    if item.status == "written" and breaker.tripped is not None:
                        item = ExportItem(instance.id, path, "failed", error=breaker.tripped)
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
