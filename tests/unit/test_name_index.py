"""NameIndex: one listing per mailbox per life, shared by concurrent finds, keeping this process's own creates."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pytest

from sync.adapters.graph.names import NameIndex, NameKey

ADA: NameKey = ("ada", "byron", "analytical engines")
BOB: NameKey = ("bob", "smith", "acme")


class Folder:
    def __init__(self) -> None:
        self.rows: list[tuple[str, NameKey | None]] = []
        self.listings = 0
        self.gate: threading.Event | None = None
        self.fail = False

    def load(self, mailbox: str) -> Iterable[tuple[str, NameKey | None]]:
        self.listings += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("graph down")
        return list(self.rows)


def test_a_listing_serves_finds_until_it_is_older_than_its_life() -> None:
    folder, now = Folder(), [100.0]
    folder.rows = [("a1", ADA), ("b1", BOB), ("n1", None)]
    index = NameIndex(folder.load, max_age=30, clock=lambda: now[0])
    assert index.ids("MB@contoso.com", ADA) == ["a1"]
    folder.rows.append(("a2", ADA))
    now[0] += 29
    assert index.ids("mb@contoso.com", ADA) == ["a1"] and folder.listings == 1  # mailbox case does not matter
    now[0] += 1
    assert index.ids("mb@contoso.com", ADA) == ["a1", "a2"] and folder.listings == 2
    assert index.ids("mb@contoso.com", ("x", "y", "z")) == []


def test_creates_noted_are_found_and_survive_a_listing_that_ran_meanwhile() -> None:
    folder, now = Folder(), [0.0]
    index = NameIndex(folder.load, max_age=30, clock=lambda: now[0])
    index.note("mb", "early", ADA)  # no index yet: the first listing will hold it (nothing kept)
    assert index.ids("mb", ADA) == []
    index.note("mb", "a1", ADA)
    index.note("mb", "none", None)
    assert index.ids("mb", ADA) == ["a1"]
    # a create noted while the next listing runs, which did not see it
    now[0] += 60
    folder.gate = threading.Event()
    result: list[list[str]] = []
    t = threading.Thread(target=lambda: result.append(index.ids("mb", BOB)))
    t.start()
    while folder.listings < 2:
        time.sleep(0.01)
    index.note("mb", "a2", ADA)
    folder.gate.set()
    t.join(5)
    assert result == [[]]
    assert index.ids("mb", ADA) == ["a2"]  # a1 is gone from the folder's listing; a2 was noted during it


def test_concurrent_finds_of_one_mailbox_share_one_listing() -> None:
    folder = Folder()
    folder.rows = [("a1", ADA)]
    folder.gate = threading.Event()
    index = NameIndex(folder.load, max_age=30)
    out: list[list[str]] = []
    threads = [threading.Thread(target=lambda: out.append(index.ids("mb", ADA))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    folder.gate.set()
    for t in threads:
        t.join(5)
    assert out == [["a1"]] * 8 and folder.listings == 1


def test_a_failed_listing_raises_and_the_next_find_lists_again() -> None:
    folder = Folder()
    folder.fail = True
    index = NameIndex(folder.load, max_age=30)
    with pytest.raises(RuntimeError):
        index.ids("mb", ADA)
    folder.fail = False
    folder.rows = [("a1", ADA)]
    assert index.ids("mb", ADA) == ["a1"] and folder.listings == 2


def test_only_the_most_recently_used_mailboxes_are_kept() -> None:
    folder = Folder()
    folder.rows = [("a1", ADA)]
    index = NameIndex(folder.load, max_age=3600, max_mailboxes=2)
    for mb in ("m1", "m2", "m1", "m3"):
        index.ids(mb, ADA)
    assert folder.listings == 3  # m1, m2, m3; m1 again was fresh
    index.ids("m1", ADA)
    assert folder.listings == 3  # m1 was used last: kept
    index.ids("m2", ADA)
    assert folder.listings == 4  # m2 was dropped
