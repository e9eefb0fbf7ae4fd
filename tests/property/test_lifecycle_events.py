"""Lifecycle events in any order, any number of times: one live subscription per mailbox, never one deleted for
nothing (issue 15 point 3; docs/reference/graph.md §4.6).

Graph is a small in-memory model: it removes subscriptions (sending ``subscriptionRemoved``), asks for
reauthorization and reports missed notifications; the events are delivered duplicated and reordered to
``sync.subscriptions.handle_notice`` over the in-memory stores.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sync.adapters.graph import NewSubscription, SubscriptionRecord
from sync.errors import NotFound
from sync.ports import LifecycleNotice, StoredSubscription
from sync.subscriptions import handle_notice, maintain_subscriptions
from tests.fakes import MemoryCheckpoints, MemoryJobs, MemorySubscriptions

MAILBOXES = ("ann@contoso.com", "bob@contoso.com")


class FakeGraph:
    """Graph's subscriptions: a create on a resource that has one is 409 for Graph, which the adapter answers by
    deleting what subscribes to the resource and creating again (``GraphSubscriptions._create``)."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}  # subscription id -> mailbox
        self.ids = itertools.count(1)
        self.calls: Counter[str] = Counter()

    def create(self, mailbox: str) -> NewSubscription:
        self.calls["create"] += 1
        for sid in [s for s, m in self.live.items() if m == mailbox]:  # the adapter's 409 path
            self.calls["delete_on_409"] += 1
            del self.live[sid]
        sid = f"sub-{next(self.ids)}"
        self.live[sid] = mailbox
        expires = datetime.now(UTC) + timedelta(days=6)
        return NewSubscription(SubscriptionRecord(sid, mailbox, f"users/AAD-UPN:{mailbox}/c", expires, "d"), "s")

    def exists(self, subscription_id: str) -> bool:
        return subscription_id in self.live

    def renew(self, record: SubscriptionRecord) -> SubscriptionRecord:
        if record.id not in self.live:
            raise NotFound("gone", item_id=record.id)
        self.calls["renew"] += 1
        return SubscriptionRecord(record.id, record.mailbox, record.resource,
                                  datetime.now(UTC) + timedelta(days=6), record.client_state_digest)

    def delete(self, subscription_id: str) -> None:
        self.calls["delete"] += 1
        self.live.pop(subscription_id, None)

    def renew_expiring(self, records: list[SubscriptionRecord], within: timedelta) -> list[SubscriptionRecord]:
        return []


class FakeFolders:
    def folder_id(self, mailbox: str) -> str:
        return "folder"


@dataclass
class Parts:
    graph_subscriptions: FakeGraph = field(default_factory=FakeGraph)
    subscriptions: MemorySubscriptions = field(default_factory=MemorySubscriptions)
    checkpoints: MemoryCheckpoints = field(default_factory=MemoryCheckpoints)
    jobs: MemoryJobs = field(default_factory=MemoryJobs)
    sent: list[object] = field(default_factory=list)
    graph: FakeFolders = field(default_factory=FakeFolders)
    mailboxes: tuple[str, ...] = MAILBOXES

    @property
    def work_queue(self) -> Parts:
        return self

    def send(self, item: object, *, delay: float = 0.0) -> None:
        self.sent.append(item)

    def refresh_scope(self) -> None:  # a fixed scope: MAILBOXES
        return None


ACTIONS = st.lists(st.tuples(st.sampled_from(["remove", "reauth", "missed", "deliver", "resend"]),
                             st.sampled_from(MAILBOXES), st.integers(0, 50)), max_size=30)


def _current(parts: Parts, mailbox: str) -> str | None:
    return next((s for s, m in parts.graph_subscriptions.live.items() if m == mailbox), None)


@given(ACTIONS, st.randoms(use_true_random=False))
def test_any_interleaving_leaves_exactly_one_live_subscription_per_mailbox(actions, rnd) -> None:
    parts = Parts()
    maintain_subscriptions(parts)
    graph = parts.graph_subscriptions
    pending: list[LifecycleNotice] = []
    delivered: list[LifecycleNotice] = []
    removals = 0
    for action, mailbox, k in actions:
        current = _current(parts, mailbox)
        if action in ("remove", "reauth", "missed") and current is not None:
            if action == "remove":  # Graph removed it, then tells us
                del graph.live[current]
                removals += 1
            event = {"remove": "subscriptionRemoved", "reauth": "reauthorizationRequired", "missed": "missed"}[action]
            pending.append(LifecycleNotice(event=event, subscription_id=current, mailbox=mailbox))
        elif action == "deliver" and pending:
            notice = pending.pop(k % len(pending))  # reordered
            handle_notice(notice, parts)
            delivered.append(notice)
        elif action == "resend" and delivered:
            handle_notice(delivered[k % len(delivered)], parts)  # duplicated, possibly long after
        assert all(list(graph.live.values()).count(m) <= 1 for m in MAILBOXES)
    rnd.shuffle(pending)
    for notice in pending + delivered[: len(delivered) // 2]:
        handle_notice(notice, parts)

    for mailbox in MAILBOXES:
        live = [s for s, m in graph.live.items() if m == mailbox]
        assert len(live) == 1, (mailbox, graph.live)
        stored = [s.id for s in parts.subscriptions.list_all() if s.mailbox == mailbox and graph.exists(s.id)]
        assert stored == live  # the store names the live one (the webhook accepts its notifications)
    # nothing live was ever deleted: one create at the start per mailbox and one per removal, no 409 replacement
    assert graph.calls["create"] == len(MAILBOXES) + removals
    assert graph.calls["delete_on_409"] == 0 and graph.calls["delete"] == 0
    reconciles = [m for m in parts.sent if getattr(m, "kind", "") == "reconcile"]
    assert all(r.mode == "delta" for r in reconciles)


def test_a_resent_removal_keeps_the_subscription_made_for_the_first() -> None:
    parts = Parts()
    maintain_subscriptions(parts)
    first = _current(parts, MAILBOXES[0])
    assert first is not None
    del parts.graph_subscriptions.live[first]
    notice = LifecycleNotice(event="subscriptionRemoved", subscription_id=first, mailbox=MAILBOXES[0])
    assert handle_notice(notice, parts) == "created"
    made = _current(parts, MAILBOXES[0])
    assert handle_notice(notice, parts) == "kept"
    assert _current(parts, MAILBOXES[0]) == made
    assert [s.id for s in parts.subscriptions.list_all() if s.mailbox == MAILBOXES[0]] == [made]
    assert isinstance(parts.subscriptions.get(made or ""), StoredSubscription)
