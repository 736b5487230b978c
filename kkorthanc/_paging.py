"""Paged listings read ahead of their reader, so that the server never waits for the client.

A listing is read as pages (``GET /instances?expand&since=N&limit=M``) and ends at its first
short page, so which request comes next depends on the length of the current page, known
only once it is decoded. Reading one page after another leaves the server idle while each
page is decoded and until the next request reaches it.

:func:`read_ahead` splits the work in two. A thread of its own sends the requests and reads
each answer as bytes; the reader (the caller's thread) decodes the pages and works on them.
The fetcher sends the next request as soon as an answer has arrived, by predicting the
current page's length: the items of one listing name the resources of the next (a patient's
``Studies``), so once the reader has decoded a whole listing, how many resources the next one
holds is known, and with it which of its pages are full. Without a prediction (the first
listing, or no keys given) the fetcher waits for the reader to say how long the page was.

The reader alone decides which page comes next, from the pages' real lengths. A prediction
can only be wrong when the server changed between two listings: the fetcher then goes back to
the page the reader needs, and the reader drops the answers read ahead on the wrong guess.
The pages, the requests and their order are those of reading one page after another, unless
the server changes meanwhile (then a few more requests are sent).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

_A = TypeVar("_A")

#: (position of the listing in the list of paths, ``since`` of the page)
Step = tuple[int, int]

_CLOSED: Any = object()


def next_step(step: Step, length: int, page_size: int, listings: int) -> Step | None:
    """The page after ``step`` once it is known to hold ``length`` resources: the next page
    of the same listing after a full page, else the first page of the next listing."""
    position, since = step
    if length >= page_size:
        return position, since + page_size
    return (position + 1, 0) if position + 1 < listings else None


def named_count(page: list[Any], key: str) -> int:
    """How many resources the items of ``page`` name under ``key`` (a patient's ``Studies``);
    items of another shape count nothing (the reader refuses them later)."""
    count = 0
    for item in page:
        if isinstance(item, dict):
            named = item.get(key)
            if isinstance(named, list):
                count += len(named)
    return count


class _Fetcher(Generic[_A]):
    """The thread that sends the requests, one page ahead of the reader or more."""

    def __init__(
        self,
        paths: Sequence[str],
        page_size: int,
        fetch: Callable[[str, int], _A],
    ) -> None:
        self.paths = paths
        self.page_size = page_size
        self.fetch = fetch
        #: answers (or the exception a request raised), in the order they were read
        self.answers: queue.Queue[tuple[Step, _A | BaseException]] = queue.Queue(maxsize=1)
        #: the reader's word on each page it decoded: its real length
        self.lengths: queue.SimpleQueue[tuple[Step, int]] = queue.SimpleQueue()
        #: resources each listing holds, by position, set by the reader once the listing
        #: before it is read whole
        self.expected: dict[int, int] = {}
        self.stopped = threading.Event()
        self._known: dict[Step, int] = {}
        self._guessed: dict[Step, bool] = {}  # pages fetched past, and whether guessed full
        self._thread = threading.Thread(target=self._run, name="kkorthanc-page", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (after the request it is waiting for, if any) and wait for it."""
        self.stopped.set()
        self.lengths.put(((-1, -1), -1))  # wakes a fetcher waiting for a length
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # frees a fetcher blocked on a full queue
                self.answers.get(timeout=0.05)
        self._thread.join()

    def _run(self) -> None:
        step: Step | None = (0, 0)
        while step is not None and not self.stopped.is_set():
            try:
                answer: _A | BaseException = self.fetch(self.paths[step[0]], step[1])
            except BaseException as exc:  # the reader raises it, if it needs this page
                answer = exc
            self.answers.put((step, answer))
            step = self._after(step)
        self.answers.put(((-1, -1), _CLOSED))

    def _after(self, step: Step) -> Step | None:
        """The page to fetch after ``step``: known, predicted, or waited for."""
        while not self.stopped.is_set():
            corrected = self._take_lengths(block=False)
            if corrected is not None:
                return corrected[0]
            length = self._known.get(step)
            if length is not None:
                return next_step(step, length, self.page_size, len(self.paths))
            expected = self.expected.get(step[0])
            if expected is not None:
                full = expected >= step[1] + self.page_size
                predicted = next_step(step, self.page_size if full else 0, self.page_size,
                                      len(self.paths))
                if predicted is not None:  # the end is never predicted: it is waited for
                    self._guessed[step] = full
                    return predicted
            corrected = self._take_lengths(block=True)
            if corrected is not None:
                return corrected[0]
        return None

    def _take_lengths(self, *, block: bool) -> tuple[Step | None] | None:
        """Read the reader's lengths; when one shows a wrong guess, the page to go back to
        (in a 1-tuple: it may be ``None``, the end)."""
        while True:
            try:
                step, length = self.lengths.get(block=block)
            except queue.Empty:
                return None
            if length < 0:  # stopped
                return (None,)
            block = False
            self._known[step] = length
            guessed = self._guessed.pop(step, None)
            if guessed is not None and guessed != (length >= self.page_size):
                self._guessed.clear()  # what was fetched after it followed the wrong guess
                return (next_step(step, length, self.page_size, len(self.paths)),)


def read_ahead(
    paths: Sequence[str],
    page_size: int,
    fetch: Callable[[str, int], _A],
    decode: Callable[[str, _A], list[Any]],
    named_by: Sequence[str] | None = None,
) -> Iterator[tuple[str, list[Any]]]:
    """``(path, page)`` of each listing in turn, page by page, read ahead by a thread.

    ``fetch(path, since)`` reads one page's answer (in the fetching thread);
    ``decode(path, answer)`` makes it a list (in the caller's). ``named_by[i]`` is the key
    under which the items of listing ``i`` name the resources of listing ``i + 1``; without
    it, the fetcher waits for each page's length before asking for the next.
    """
    keys = list(named_by or ())
    fetcher: _Fetcher[_A] = _Fetcher(paths, page_size, fetch)
    fetcher.start()
    try:
        want: Step | None = (0, 0) if paths else None
        named = 0
        while want is not None:
            step, answer = fetcher.answers.get()
            if answer is _CLOSED:  # cannot happen: the fetcher ends where the reader does
                raise RuntimeError(f"the pages ended before {paths[want[0]]}?since={want[1]}")
            if step != want:
                continue  # read ahead on a wrong guess: the server changed meanwhile
            if isinstance(answer, BaseException):
                raise answer
            path = paths[step[0]]
            page = decode(path, answer)
            names_next = step[0] < len(keys)
            if names_next:
                named += named_count(page, keys[step[0]])
            want = next_step(step, len(page), page_size, len(paths))
            if names_next and (want is None or want[0] != step[0]):  # read whole
                fetcher.expected[step[0] + 1] = named
                named = 0
            fetcher.lengths.put((step, len(page)))
            yield path, page
    finally:
        fetcher.stop()
