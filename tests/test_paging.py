"""Listings read ahead of their reader (kkorthanc._paging), against a server held in lists.

The fake server below is two levels, parents naming their children under ``Kids``, served
in pages; it records every page asked for, and can change between two requests, as a real
server does when another client writes during a build.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from kkorthanc._paging import next_step, read_ahead

PAGE = 3


class Listings:
    """Two listings, ``/parents`` and ``/kids``; each parent names its kids under ``Kids``."""

    def __init__(self, kids_per_parent: list[int]) -> None:
        self.parents: list[dict[str, Any]] = []
        self.kids: list[dict[str, Any]] = []
        for number, count in enumerate(kids_per_parent):
            names = [f"k{number}-{k}" for k in range(count)]
            self.parents.append({"ID": f"p{number}", "Kids": names})
            self.kids.extend({"ID": name} for name in names)
        self.asked: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.hooks: list[Callable[[str, int], None]] = []

    def fetch(self, path: str, since: int) -> list[dict[str, Any]]:
        with self.lock:
            self.asked.append((path, since))
        for hook in self.hooks:
            hook(path, since)
        items = self.parents if path == "/parents" else self.kids
        return list(items[since : since + PAGE])


def decoded(path: str, answer: list[dict[str, Any]]) -> list[Any]:
    return answer


def one_by_one(listings: Listings) -> list[tuple[str, int]]:
    """The pages a reader asks for when it reads one page after another."""
    asked: list[tuple[str, int]] = []
    paths = ["/parents", "/kids"]
    step: tuple[int, int] | None = (0, 0)
    while step is not None:
        asked.append((paths[step[0]], step[1]))
        page = listings.fetch(paths[step[0]], step[1])
        step = next_step(step, len(page), PAGE, len(paths))
    return asked


def read_all(listings: Listings, named_by: list[str] | None = ["Kids"]) -> list[Any]:  # noqa: B006
    pages = read_ahead(["/parents", "/kids"], PAGE, listings.fetch, decoded, named_by)
    return [(path, [item["ID"] for item in page]) for path, page in pages]


@pytest.mark.parametrize(
    "kids", [[], [0], [3], [2, 1], [3, 3, 3], [1, 2, 3, 4, 5], [6] * 7], ids=str
)
def test_the_pages_and_requests_are_those_of_reading_one_page_after_another(
    kids: list[int],
) -> None:
    expected = one_by_one(Listings(kids))
    listings = Listings(kids)
    pages = read_all(listings)
    assert listings.asked == expected
    assert [p for p, _ in pages] == [p for p, _ in expected]
    seen_kids = [k for path, ids in pages if path == "/kids" for k in ids]
    assert seen_kids == [k["ID"] for k in listings.kids]
    assert sum(len(ids) for path, ids in pages if path == "/parents") == len(kids)


def test_the_next_page_is_asked_for_before_the_reader_has_decoded_this_one() -> None:
    listings = Listings([3] * 4)  # 4 parents: 2 pages; 12 kids: 5 pages (the last empty)
    asked_after: dict[int, threading.Event] = {s: threading.Event() for s in range(0, 13, 3)}

    def note(path: str, since: int) -> None:
        if path == "/kids":
            asked_after[since].set()

    listings.hooks.append(note)

    def decode_once_the_next_is_asked(path: str, answer: list[Any]) -> list[Any]:
        since = int(answer[0]["ID"].split("-")[0][1:]) * 3 if answer else 12
        if path == "/kids" and since + PAGE <= 12:
            # the fetcher knows from the parents that this page is full: it must not wait
            assert asked_after[since + PAGE].wait(5), f"page {since + PAGE} waited for decoding"
        return answer

    pages = read_ahead(
        ["/parents", "/kids"], PAGE, listings.fetch, decode_once_the_next_is_asked, ["Kids"]
    )
    assert sum(len(page) for path, page in pages if path == "/kids") == 12
    assert listings.asked == one_by_one(Listings([3] * 4))


def test_without_named_by_the_fetcher_waits_for_each_length() -> None:
    listings = Listings([3] * 4)
    decoding = threading.Event()
    early: list[tuple[str, int]] = []

    def note(path: str, since: int) -> None:
        if decoding.is_set():
            early.append((path, since))

    listings.hooks.append(note)

    def slow_decode(path: str, answer: list[Any]) -> list[Any]:
        decoding.set()
        threading.Event().wait(0.01)
        decoding.clear()
        return answer

    pages = list(read_ahead(["/parents", "/kids"], PAGE, listings.fetch, slow_decode, None))
    assert len(pages) == len(one_by_one(Listings([3] * 4)))
    assert early == []  # no request was sent while a page was being decoded


def test_a_server_changing_between_listings_costs_only_the_wrong_guesses() -> None:
    listings = Listings([3, 3])  # the parents name 6 kids: pages 0 and 3 full, 6 empty

    def add_kids(path: str, since: int) -> None:
        if path == "/kids" and since == 0 and len(listings.kids) == 6:
            listings.kids.extend({"ID": f"late-{n}"} for n in range(4))  # 10 kids now

    listings.hooks.append(add_kids)
    pages = read_all(listings)
    kids = [k for path, ids in pages if path == "/kids" for k in ids]
    assert kids == [k["ID"] for k in listings.kids]  # every kid, each once, in order
    needed = [("/parents", 0), ("/kids", 0), ("/kids", 3), ("/kids", 6), ("/kids", 9)]
    assert [p for p, _ in pages] == [p for p, _ in needed]
    assert set(listings.asked) == set(needed)
    assert listings.asked[: len(needed)] == needed


def test_fewer_kids_than_named_end_the_listing_at_the_real_short_page() -> None:
    listings = Listings([3, 3, 3])  # 9 kids named

    def delete_kids(path: str, since: int) -> None:
        if path == "/kids" and since == 0 and len(listings.kids) == 9:
            del listings.kids[4:]  # 4 left: page 3 is short, the guess said full

    listings.hooks.append(delete_kids)
    pages = read_all(listings)
    kids = [k for path, ids in pages if path == "/kids" for k in ids]
    assert kids == ["k0-0", "k0-1", "k0-2", "k1-0"]
    assert [p for p, _ in pages] == ["/parents", "/parents", "/kids", "/kids"]
    # the page after the short one may have been asked for on the guess, and was dropped
    needed = [("/parents", 0), ("/parents", 3), ("/kids", 0), ("/kids", 3)]
    assert listings.asked[:4] == needed
    assert set(listings.asked) <= {*needed, ("/kids", 6)}


def test_an_error_on_a_needed_page_is_raised_and_one_on_a_wrong_guess_is_not() -> None:
    listings = Listings([3, 3])

    def fail(path: str, since: int) -> None:
        if path == "/kids" and since == 3:
            raise ConnectionError("the server went away")

    listings.hooks.append(fail)
    with pytest.raises(ConnectionError, match="went away"):
        read_all(listings)

    guessed = Listings([3, 3, 3])  # 9 named, 2 listed: pages 3 and 6 are asked on a guess

    def shrink_then_fail(path: str, since: int) -> None:
        if path == "/kids" and since == 0:
            del guessed.kids[2:]
        if path == "/kids" and since >= 3:
            raise ConnectionError("past the end")

    guessed.hooks.append(shrink_then_fail)
    pages = read_all(guessed)
    assert [k for path, ids in pages if path == "/kids" for k in ids] == ["k0-0", "k0-1"]


def test_a_reader_that_stops_early_stops_the_fetcher() -> None:
    listings = Listings([3] * 6)
    before = {t.name for t in threading.enumerate() if t.is_alive()}
    pages = read_ahead(["/parents", "/kids"], PAGE, listings.fetch, decoded, ["Kids"])
    next(pages)
    next(pages)
    pages.close()
    alive = [t for t in threading.enumerate() if t.name == "kkorthanc-page" and t.is_alive()]
    assert alive == [] or {t.name for t in alive} <= before
    assert len(listings.asked) <= 4  # at most two pages ahead of the reader
