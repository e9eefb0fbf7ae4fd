"""Subscription upkeep: one live Graph subscription per mailbox in scope, and what lifecycle events call for.

``maintain_subscriptions`` (run by the subscriptions timer) makes sure each mailbox in scope has its sync folder and
one live subscription: it creates missing ones, renews those expiring within a day, re-creates those Graph no longer
has, and deletes duplicates and the subscriptions of mailboxes that left the scope. ``handle_lifecycle`` (run by the
lifecycle webhook once the clientState matched) starts a delta reconcile job for ``missed`` and ``subscriptionRemoved``,
re-creates a removed subscription and renews one that needs reauthorization.

What a reader must know: a failed Graph call is counted and logged, never raised. The next timer run repairs what is
missing or expiring, and an error answer to a lifecycle event would only make Graph send it again. Both functions
take their parts from ``UpkeepParts`` (``bootstrap.Root`` is one), read only when an event needs them, so a
``missed`` event never builds a Graph client.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from sync.errors import SyncError
from sync.jobs import start_job
from sync.ports import JobStore, StoredSubscription, SubscriptionStore, WorkQueue

if TYPE_CHECKING:
    from sync.adapters.graph import GraphContactSide, GraphSubscriptions, SubscriptionRecord

logger = logging.getLogger(__name__)

RENEW_WITHIN = timedelta(days=1)
LIFECYCLE_EVENTS = ("missed", "subscriptionRemoved", "reauthorizationRequired")


class UpkeepParts(Protocol):
    """What subscription upkeep works with; each part is looked up only when it is needed."""

    @property
    def subscriptions(self) -> SubscriptionStore: ...

    @property
    def work_queue(self) -> WorkQueue: ...

    @property
    def jobs(self) -> JobStore: ...

    @property
    def graph(self) -> GraphContactSide: ...

    @property
    def graph_subscriptions(self) -> GraphSubscriptions: ...

    @property
    def mailboxes(self) -> Sequence[str]: ...


def to_record(sub: StoredSubscription) -> SubscriptionRecord:
    from sync.adapters.graph import SubscriptionRecord

    return SubscriptionRecord(id=sub.id, mailbox=sub.mailbox, resource=sub.resource, expires_at=sub.expires_at,
                              client_state_digest=sub.client_state_digest)


def to_stored(record: SubscriptionRecord) -> StoredSubscription:
    return StoredSubscription(id=record.id, mailbox=record.mailbox, resource=record.resource,
                              expires_at=record.expires_at, client_state_digest=record.client_state_digest)


def handle_lifecycle(events: Iterable[tuple[str, StoredSubscription]], parts: UpkeepParts) -> Counter[str]:
    """Act on lifecycle ``events`` (event name, the stored subscription it is for); the reconcile is enqueued first."""
    counts: Counter[str] = Counter()
    manager: GraphSubscriptions | None = None
    for event, stored in events:
        if event in ("missed", "subscriptionRemoved"):
            start_job(parts.jobs, parts.work_queue, [stored.mailbox], "delta", origin="lifecycle")
            counts["reconcile"] += 1
        if event not in LIFECYCLE_EVENTS:
            counts["invalid"] += 1
            continue
        if event == "missed":
            continue
        try:
            manager = manager or parts.graph_subscriptions
            outcome = manager.on_lifecycle(event, to_record(stored))
            if outcome.record is not None:
                parts.subscriptions.put(to_stored(outcome.record))
                counts["renewed"] += 1
            if outcome.created is not None:
                parts.subscriptions.put(to_stored(outcome.created.record))
                parts.subscriptions.delete(stored.id)
                counts["recreated"] += 1
        except SyncError as exc:  # the subscriptions timer repairs it; Graph must not resend the event
            counts["failed"] += 1
            logger.warning("lifecycle %s for subscription %s failed: %s", event, stored.id, type(exc).__name__)
    return counts


def maintain_subscriptions(parts: UpkeepParts) -> Counter[str]:
    """Ensure each mailbox in scope has its folder and one live subscription; renew those expiring within a day;
    delete subscriptions of mailboxes that left the scope (and duplicates)."""
    from sync.adapters.graph import NewSubscription

    store, manager = parts.subscriptions, parts.graph_subscriptions
    counts: Counter[str] = Counter()
    by_mailbox: dict[str, list[StoredSubscription]] = {}
    for sub in store.list_all():
        by_mailbox.setdefault(sub.mailbox, []).append(sub)
    scope = set(parts.mailboxes)
    for mailbox, subs in by_mailbox.items():
        extra = subs if mailbox not in scope else sorted(subs, key=lambda s: s.expires_at)[:-1]
        for sub in extra:
            try:
                manager.delete(sub.id)
                store.delete(sub.id)
                counts["deleted"] += 1
            except SyncError as exc:
                counts["failed"] += 1
                logger.warning("deleting subscription %s failed: %s", sub.id, type(exc).__name__)
    for mailbox in parts.mailboxes:
        try:
            parts.graph.folder_id(mailbox)  # creates the sync folder when missing
            subs = by_mailbox.get(mailbox, [])
            if not subs:
                created = manager.create(mailbox)
                store.put(to_stored(created.record))
                counts["created"] += 1
                continue
            current = max(subs, key=lambda s: s.expires_at)
            for changed in manager.renew_expiring([to_record(current)], within=RENEW_WITHIN):
                record = changed.record if isinstance(changed, NewSubscription) else changed
                store.put(to_stored(record))
                if record.id != current.id:
                    store.delete(current.id)
                    counts["recreated"] += 1
                else:
                    counts["renewed"] += 1
        except SyncError as exc:
            counts["failed"] += 1
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            logger.warning("subscription upkeep failed for a mailbox: %s", detail)
    return counts


def remove_subscriptions(parts: UpkeepParts, mailboxes: Sequence[str]) -> Counter[str]:
    """Delete the Graph subscriptions of ``mailboxes`` (and their rows) now: for an uninstall, or a mailbox taken
    out of scope, without waiting for the subscriptions timer. A mailbox still in scope gets a new one on its next
    run."""
    counts: Counter[str] = Counter()
    wanted = {m.casefold() for m in mailboxes}
    for sub in parts.subscriptions.list_all():
        if sub.mailbox not in wanted:
            continue
        try:
            parts.graph_subscriptions.delete(sub.id)
            parts.subscriptions.delete(sub.id)
            counts["deleted"] += 1
        except SyncError as exc:
            counts["failed"] += 1
            logger.warning("deleting subscription %s failed: %s", sub.id, type(exc).__name__)
    return counts
