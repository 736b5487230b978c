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

from ..errors import Forbidden, OrthancError, Unauthorized
from ..models import Instance, Patient, Resource, Series, Study
from .download import _get_to_file
from .layout import DEFAULT_LAYOUT, _parse_layout, _relative_path
from .progress import _progress_bar
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
            data = self.client.get_json(f"{study.path}/{Instance.collection}")
            by_series: dict[str, list[Instance]] = {s.id: [] for s in missing}
            for entry in data:
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
