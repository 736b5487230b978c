"""The uploader: worker threads that read, pre-check and ``POST /instances`` each item."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from ..errors import (
    Forbidden,
    NotFound,
    OrthancConnectionError,
    OrthancHTTPError,
    ServerError,
    Unauthorized,
)
from .breaker import DEFAULT_MAX_CONSECUTIVE_FAILURES, _Breaker
from .progress import AUTO, ProgressOption, _progress_bar
from .reports import UploadItem, UploadReport, UploadStatus
from .sources import (
    PRECHECK_BYTES,
    _check_source,
    _not_dicom,
    _os_reason,
    _Producer,
    _Task,
)

if TYPE_CHECKING:
    from .._transport import BinaryChannel
    from ..server import Server

#: Largest file or archive member :func:`upload` reads (2 GiB); larger ones are rejected.
DEFAULT_MAX_MEMBER_SIZE = 2 * 1024**3


class _Changed(Exception):
    """A file changed, or could no longer be read, while it was being sent."""


class _FileBody:
    """An accepted file on its way to the server, read block by block as the transport sends
    it (so a worker holds one block, never the file), from the start again for each attempt.

    The file must stay as it was when its head was checked: the size then is the
    ``Content-Length``; a file that ends early, or whose size or modification time differ
    once its last block is read, raises :class:`_Changed` before that block goes out, so the
    server never gets a complete body and stores nothing.
    """

    def __init__(self, stream: IO[bytes], info: os.stat_result) -> None:
        self.stream = stream
        self.size = info.st_size
        self._mtime = info.st_mtime_ns
        self._position = stream.seek(0)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = self.stream.seek(offset, whence)
        return self._position

    def read(self, size: int = -1) -> bytes:
        try:
            block = self.stream.read(size)
            self._position += len(block)
            if not block and self._position < self.size:
                raise _Changed(
                    f"it shrank to {self._position} bytes while it was sent ({self.size} "
                    "when it was checked)"
                )
            if self._position >= self.size and (block or size == 0):
                info = os.fstat(self.stream.fileno())
                if info.st_size != self.size or info.st_mtime_ns != self._mtime:
                    raise _Changed(
                        f"it changed while it was sent ({self.size} bytes when it was "
                        f"checked, {info.st_size} now)"
                    )
        except OSError as exc:  # not the server's fault: never retried as a connection error
            raise _Changed(f"cannot read: {_os_reason(exc)}") from exc
        return block


class _Uploader:
    """Worker side of an upload: pre-check, POST, classify.

    A file is opened and its head pre-checked; one that passed is sent from the open file,
    block by block (:class:`_FileBody`), so a worker holds one block of it, whatever its
    size. Items already in memory (archive members, bytes, datasets) are sent as they are.
    """

    def __init__(self, max_member_size: int, max_consecutive_failures: int | None) -> None:
        self.cap = max_member_size
        self.breaker = _Breaker(max_consecutive_failures)

    @property
    def tripped(self) -> str | None:
        """Why the remaining items are not sent, once the server looked gone."""
        return self.breaker.tripped

    def run(self, task: _Task, channel: BinaryChannel) -> UploadItem:
        start = time.perf_counter()
        try:
            item = self._run(task, channel)
        except MemoryError:
            # the item's buffer is gone with the frames that held it; the run goes on
            item = UploadItem(
                task.source,
                "failed",
                size=task.size,
                error="not enough memory to read or send it; try fewer workers",
            )
        item.seconds = time.perf_counter() - start
        return item

    def _send_file(self, task: _Task, channel: BinaryChannel) -> UploadItem:
        """Open a file, pre-check its head, and send it from the open file."""
        assert task.path is not None
        try:
            stream = open(task.path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            return UploadItem(task.source, "failed", error=f"cannot read: {_os_reason(exc)}")
        with stream:
            try:
                info = os.fstat(stream.fileno())
                size = task.size = info.st_size
                if size > self.cap:
                    return UploadItem(
                        task.source,
                        "rejected",
                        error=f"larger than max_member_size ({self.cap} bytes)",
                    )
                reason = _not_dicom(stream.read(min(PRECHECK_BYTES, self.cap + 1)))
                if reason is not None:
                    return UploadItem(task.source, "rejected", size=size, error=reason)
                if self.tripped is not None:
                    return UploadItem(task.source, "failed", size=size, error=self.tripped)
                body = _FileBody(stream, info)
            except OSError as exc:
                return UploadItem(task.source, "failed", error=f"cannot read: {_os_reason(exc)}")
            try:
                return self._post(task, channel, body, size)
            except _Changed as exc:
                # the server got an incomplete body at most, so it stored nothing: failed,
                # and a rerun sends the file as it is then
                return UploadItem(task.source, "failed", size=size, error=f"not sent: {exc}")

    def _run(self, task: _Task, channel: BinaryChannel) -> UploadItem:
        if task.status is not None:
            return UploadItem(task.source, task.status, size=task.size, error=task.error)
        data = task.data
        if data is None:
            return self._send_file(task, channel)
        reason = _not_dicom(data[:PRECHECK_BYTES])
        if reason is not None:
            return UploadItem(task.source, "rejected", size=len(data), error=reason)
        if self.tripped is not None:
            return UploadItem(task.source, "failed", size=len(data), error=self.tripped)
        return self._post(task, channel, data, len(data))

    def _post(
        self, task: _Task, channel: BinaryChannel, data: bytes | _FileBody, size: int
    ) -> UploadItem:
        """``POST /instances`` and classify the answer (a file is sent as it is read)."""
        body: Any = data  # a _FileBody is a binary file as far as the channel is concerned
        try:
            content = channel.send(
                "POST", "/instances", body, content_type="application/dicom", length=size
            )
        except (Unauthorized, Forbidden):
            raise
        except NotFound as exc:
            # Orthanc refuses some files with 404 ("Inexistent tag" for a DICOMDIR); a 404
            # without Orthanc's own error, or "Unknown resource", means a wrong server URL
            if exc.orthanc_error in (None, "Unknown resource"):
                raise
            return self._refused(task, size, exc)
        except (OrthancConnectionError, ServerError) as exc:
            self.breaker.failed(exc)
            details = exc.details if isinstance(exc, OrthancHTTPError) else None
            return UploadItem(task.source, "failed", size=size, error=str(exc), details=details)
        except OrthancHTTPError as exc:  # 400 and other refusals of this one file
            return self._refused(task, size, exc)
        self.breaker.answered()
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
        self.breaker.answered()
        return UploadItem(task.source, "rejected", size=size, error=str(exc), details=exc.details)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def upload(
    client: Server,
    source: Any,
    *,
    workers: int = 4,
    progress: ProgressOption = AUTO,
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
        progress: ``"auto"`` (the default) shows a tqdm bar only where someone can see it
            (standard error is a terminal, or a Jupyter kernel: a text bar when ipywidgets
            is missing); ``True`` always, ``False`` never. Needs the ``progress`` extra.
        max_member_size: files and archive members larger than this are rejected unread
            (declared size) or as soon as reading passes it, so a zip bomb cannot fill memory.
        max_consecutive_failures: after this many "server unreachable" failures in a row the
            remaining items are reported failed without being sent (``None``: never give up).

    Returns:
        An :class:`UploadReport` with one item per file, member, byte string or dataset.
        Files that are clearly not DICOM (no ``DICM`` marker at byte 128 and no dataset at the
        start; ``DICOMDIR``, ``.DS_Store``, text) are rejected from their first 64 KiB,
        without being read further or sent; Orthanc's refusals are rejected with its
        ``details``; transport errors after the client's retries are failed. Local read
        errors, and items that cannot get the memory they need, are failed too, so a rerun
        tries them again. A worker holds one item at a time, at most ``max_member_size``.

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
    # bytes read ahead (archive members, encoded datasets) waiting in the queue: the
    # producer holds back while they pass max_member_size, so memory stays bounded by
    # about one item per worker, one in the queue and one in the producer's hand
    queued = threading.Condition()
    queued_bytes = [0]

    def taken(task: _Task) -> None:
        if task.data:
            with queued:
                queued_bytes[0] -= len(task.data)
                queued.notify_all()

    def make_room(task: _Task) -> None:
        weight = len(task.data) if task.data else 0
        with queued:
            while weight and queued_bytes[0] and queued_bytes[0] + weight > max_member_size:
                if stop.is_set() or not any(t.is_alive() for t in threads):
                    return
                queued.wait(0.1)
            queued_bytes[0] += weight

    def work() -> None:
        with client.channel() as channel:
            while True:
                task = tasks.get()
                if task is None or stop.is_set():
                    return
                taken(task)
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
            make_room(task)
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
