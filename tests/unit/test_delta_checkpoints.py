"""When a delta pass stores its change feeds' checkpoints: only when a feed reported something, or when the stored
one is ``CHECKPOINT_REFRESH`` old (Graph evicts old delta links, docs/reference/graph.md §3.3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sync.model import Contact
from sync.reconcile import CHECKPOINT_REFRESH, reconcile_mailbox_delta
from tests.fakes import MemoryCheckpoints
from tests.world import ANN, BOB, World, memory_world

M365, SF = "reconcile-delta:m365", "reconcile-delta:salesforce"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class CountingCheckpoints(MemoryCheckpoints):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, str]] = []

    def put(self, scope: str, name: str, value: str) -> None:
        self.puts.append((scope, name))
        super().put(scope, name, value)


def _settled() -> tuple[World, CountingCheckpoints, list[str]]:
    """A mailbox synced by a first delta pass (full) and a second one (our own writes coming back)."""
    w = memory_world()
    cps = CountingCheckpoints()
    ids = [w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"])) for i in range(3)]
    assert reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0).ran == "full"
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0)
    cps.puts.clear()
    return w, cps, ids


def test_a_no_change_delta_pass_writes_no_checkpoint() -> None:
    w, cps, _ = _settled()
    before = {n: cps.get(ANN, n) for n in (M365, SF)}
    report = reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0 + timedelta(minutes=30))
    assert report.ran == "delta" and report.visited == 0
    assert cps.puts == []
    assert {n: cps.get(ANN, n) for n in (M365, SF)} == before


def test_another_mailboxs_change_moves_the_shared_feed_but_writes_nothing_here() -> None:
    w, cps, _ = _settled()
    w.sf.user_create(BOB, Contact(last_name="Bob's", emails=["b@example.com"]))
    w.m365.user_create(BOB, Contact(last_name="Bob's", emails=["o@example.com"]))
    # the fakes' change logs are shared by all mailboxes: their position moved, nothing here changed
    assert reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0 + timedelta(minutes=30)).visited == 0
    assert cps.puts == []


def test_a_change_stores_the_checkpoint_of_the_feed_that_reported_it() -> None:
    w, cps, ids = _settled()
    w.sf.user_edit(ids[0], {"job_title": "CTO"})
    later = T0 + timedelta(minutes=30)
    report = reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: later)
    assert report.applied["update:m365"] == 1
    assert cps.puts == [(ANN, SF)]  # the Outlook feed reported nothing: its stored link stays
    assert json.loads(cps.get(ANN, SF) or "")["at"] == later.isoformat()


def test_a_stored_checkpoint_is_replaced_once_it_is_refresh_old_even_without_a_change() -> None:
    w, cps, _ = _settled()
    just_before = T0 + CHECKPOINT_REFRESH - timedelta(seconds=1)
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: just_before)
    assert cps.puts == []
    w.sf.user_create(BOB, Contact(last_name="Elsewhere", emails=["e@example.com"]))
    w.m365.user_create(BOB, Contact(last_name="Elsewhere", emails=["f@example.com"]))
    due = T0 + CHECKPOINT_REFRESH
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: due)
    # both feeds ended at a new position (the fakes' logs are shared) and both stored ones are due
    assert sorted(cps.puts) == [(ANN, M365), (ANN, SF)]
    assert {json.loads(cps.get(ANN, n) or "")["at"] for n in (M365, SF)} == {due.isoformat()}
    cps.puts.clear()
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: due + timedelta(minutes=30))
    assert cps.puts == []  # young again


def test_a_checkpoint_that_did_not_move_is_not_written_again_however_old() -> None:
    w, cps, _ = _settled()
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0 + timedelta(days=3))
    assert cps.puts == []  # the feeds ended where they were stored: nothing to refresh


def test_a_bare_checkpoint_from_before_the_time_was_kept_is_read_then_stored_with_its_time() -> None:
    w = memory_world()
    cps = CountingCheckpoints()
    w.sf.user_create(ANN, Contact(last_name="A", emails=["a@example.com"]))
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0)
    reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0)
    bare = {n: json.loads(cps.get(ANN, n) or "")["v"] for n in (M365, SF)}
    for name, value in bare.items():
        cps.put(ANN, name, value)  # as a version before this one stored it
    w.sf.user_create(BOB, Contact(last_name="B", emails=["b@example.com"]))  # moves the shared logs
    w.m365.user_create(BOB, Contact(last_name="B", emails=["c@example.com"]))
    cps.puts.clear()
    report = reconcile_mailbox_delta(w.engine, ANN, cps, clock=lambda: T0 + timedelta(minutes=1))
    assert report.ran == "delta"  # the bare values were read as checkpoints, not as a start over
    assert sorted(cps.puts) == [(ANN, M365), (ANN, SF)]  # no time known: stored again, with one
