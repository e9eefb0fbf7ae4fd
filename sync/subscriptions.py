"""Subscription upkeep: one live Graph subscription per mailbox in scope, and what lifecycle events call for.

``maintain_subscriptions`` (the 6-hourly timer, the app's start when a mailbox lacks one, ``POST
/api/subscriptions/refresh``) makes sure each mailbox in scope has its sync folder and one live subscription: it
creates missing ones, renews those expiring within a day, re-creates those Graph no longer has, and deletes
duplicates and the subscriptions of mailboxes that left the scope. With ``SYNC_MAILBOX_GROUP_ID`` it first reads the
group (``sync.scope``): a new member also gets an initial full reconcile job. ``handle_notice`` (the
``graph-lifecycle`` queue worker; the webhook only acknowledges) acts on one lifecycle event: ``missed`` and
``subscriptionRemoved`` start a delta reconcile job, ``subscriptionRemoved`` then ``ensure_mailbox``es,
``reauthorizationRequired`` renews.

What a reader must know: lifecycle handling is idempotent and order-free. It never acts on the subscription id an
event names except to renew it; everything else is ``ensure_mailbox``, which asks Graph which stored subscriptions
are alive, keeps the newest, and creates one only when none is alive. So a resent or late event never deletes the
subscription just made. Per mailbox the outcome of the last upkeep (``lastError`` or success) and the time of the
last notification are kept as checkpoints (scope = mailbox) for the status page.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sync.errors import NotFound, SyncError
from sync.jobs import start_job
from sync.ports import (
    CheckpointStore,
    JobStore,
    LifecycleNotice,
    StoredSubscription,
    SubscriptionStore,
    WorkQueue,
)

if TYPE_CHECKING:
    from sync.adapters.graph import GraphContactSide, GraphSubscriptions, SubscriptionRecord
    from sync.scope import ScopeChange

logger = logging.getLogger(__name__)

RENEW_WITHIN = timedelta(days=1)
LIFECYCLE_EVENTS = ("missed", "subscriptionRemoved", "reauthorizationRequired")
UPKEEP_STATE = "graph.subscription.upkeep"  # checkpoint name: {"lastError", "lastErrorAt", "lastOkAt"}
LAST_NOTIFICATION = "graph.subscription.lastNotification"  # checkpoint name: ISO time
# One upkeep at a time per process (the start-up run, the timer, the refresh endpoint and the lifecycle worker may
# overlap). Across instances they can still overlap: a duplicate made then is deleted by the next run.
UPKEEP_LOCK = threading.RLock()
UPKEEP_CONCURRENCY = 8  # mailboxes kept up at once by one upkeep run (``_maintain``)
# Subscription writes (create, renew, delete) per 20 s from this process: under the subscription API's lowest
# published write limit, 500 per 20 s per tenant (docs/reference/graph.md §4.7)
WRITES_PER_20S = 400


class WritePace:
    """At most ``limit`` calls of ``wait`` per ``window_s`` seconds (a sliding window); ``wait`` sleeps until the
    next call fits. Shared by the threads of one process."""

    def __init__(self, limit: int, window_s: float = 20.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._limit, self._window, self._clock, self._sleep = limit, window_s, clock, sleep
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0] >= self._window:
                    self._sent.popleft()
                if len(self._sent) < self._limit:
                    self._sent.append(now)
                    return
                delay = self._window - (now - self._sent[0])
            self._sleep(delay)


PACE = WritePace(WRITES_PER_20S)


class UpkeepParts(Protocol):
    """What subscription upkeep works with; each part is looked up only when it is needed."""

    @property
    def subscriptions(self) -> SubscriptionStore: ...

    @property
    def work_queue(self) -> WorkQueue: ...

    @property
    def checkpoints(self) -> CheckpointStore: ...

    @property
    def jobs(self) -> JobStore: ...

    @property
    def graph(self) -> GraphContactSide: ...

    @property
    def graph_subscriptions(self) -> GraphSubscriptions: ...

    @property
    def mailboxes(self) -> Sequence[str]: ...

    def refresh_scope(self) -> ScopeChange | None:
        """Read SYNC_MAILBOX_GROUP_ID's members into the scope (``sync.scope``); None when the scope is fixed."""
        ...


def to_record(sub: StoredSubscription) -> SubscriptionRecord:
    from sync.adapters.graph import SubscriptionRecord

    return SubscriptionRecord(id=sub.id, mailbox=sub.mailbox, resource=sub.resource, expires_at=sub.expires_at,
                              client_state_digest=sub.client_state_digest)


def to_stored(record: SubscriptionRecord) -> StoredSubscription:
    return StoredSubscription(id=record.id, mailbox=record.mailbox, resource=record.resource,
                              expires_at=record.expires_at, client_state_digest=record.client_state_digest)


# ---------------------------------------------------------------------------------------------- per-mailbox state


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def record_outcome(checkpoints: CheckpointStore, mailbox: str, exc: BaseException | None = None) -> None:
    """Keep the last upkeep outcome of ``mailbox`` (an error keeps its text: ids and codes only, never names)."""
    now = datetime.now(UTC).isoformat()
    try:
        raw = checkpoints.get(mailbox, UPKEEP_STATE)
        state: dict[str, Any] = json.loads(raw) if raw else {}
        if exc is None:
            state |= {"lastOkAt": now, "lastError": None}
        else:
            state |= {"lastError": _error_text(exc)[:300], "lastErrorAt": now}
        checkpoints.put(mailbox, UPKEEP_STATE, json.dumps(state))
    except (SyncError, ValueError) as failure:  # the state is for people: never fail the upkeep because of it
        logger.warning("subscription upkeep state not written: %s", type(failure).__name__)


def mailbox_state(checkpoints: CheckpointStore, mailbox: str) -> dict[str, Any]:
    """``{"lastNotification", "lastError", "lastErrorAt", "lastOkAt"}`` of ``mailbox`` (None where unknown)."""
    raw = checkpoints.get(mailbox, UPKEEP_STATE)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    return {"lastNotification": checkpoints.get(mailbox, LAST_NOTIFICATION) or None,
            "lastError": state.get("lastError"), "lastErrorAt": state.get("lastErrorAt"),
            "lastOkAt": state.get("lastOkAt")}


# ---------------------------------------------------------------------------------------------- upkeep


def needs_upkeep(parts: UpkeepParts, now: datetime | None = None) -> bool:
    """Whether a mailbox in scope lacks a stored subscription (or has one expiring within a day), or a mailbox out of
    scope still has one: the app's start runs ``maintain_subscriptions`` only then (one Table query otherwise)."""
    horizon = (now or datetime.now(UTC)) + RENEW_WITHIN
    newest: dict[str, datetime] = {}
    for sub in parts.subscriptions.list_all():
        newest[sub.mailbox] = max(newest.get(sub.mailbox, sub.expires_at), sub.expires_at)
    scope = set(parts.mailboxes)
    return set(newest) != scope or any(expiry <= horizon for expiry in newest.values())


def ensure_mailbox(parts: UpkeepParts, mailbox: str, stored: Sequence[StoredSubscription] | None = None) -> str:
    """One live subscription for ``mailbox``: keep the newest stored one Graph still has (renewed when it expires
    within a day), drop the records of dead ones, delete live extras, create one when none is alive.
    Returns ``kept`` | ``renewed`` | ``created``. ``stored``: the mailbox's stored subscriptions, when known."""
    store, manager = parts.subscriptions, parts.graph_subscriptions
    mine = stored if stored is not None else [s for s in store.list_all() if s.mailbox == mailbox]
    live: list[StoredSubscription] = []
    for sub in sorted(mine, key=lambda s: s.expires_at, reverse=True):
        if manager.exists(sub.id):
            live.append(sub)
        else:
            store.delete(sub.id)
    for extra in live[1:]:
        PACE.wait()
        manager.delete(extra.id)
        store.delete(extra.id)
    if not live:
        PACE.wait()
        created = manager.create(mailbox)
        store.put(to_stored(created.record))
        return "created"
    current = live[0]
    if current.expires_at > datetime.now(UTC) + RENEW_WITHIN:
        return "kept"
    try:
        PACE.wait()
        store.put(to_stored(manager.renew(to_record(current))))
        return "renewed"
    except NotFound:  # expired between the two calls
        store.delete(current.id)
        PACE.wait()
        store.put(to_stored(manager.create(mailbox).record))
        return "created"


def handle_notice(notice: LifecycleNotice, parts: UpkeepParts) -> str:
    """Act on one lifecycle event (docs/reference/graph.md §4.6); idempotent. Raises SyncError for the queue's
    retry policy after recording it on the mailbox's state."""
    with UPKEEP_LOCK:
        return _handle_notice(notice, parts)


def _handle_notice(notice: LifecycleNotice, parts: UpkeepParts) -> str:
    if notice.mailbox not in parts.mailboxes:  # queued before the mailbox left the scope: nothing to keep alive
        logger.info("lifecycle %s for a mailbox out of scope ignored: subscription %s", notice.event,
                    notice.subscription_id)
        return "out of scope"
    if notice.event in ("missed", "subscriptionRemoved"):
        start_job(parts.jobs, parts.work_queue, [notice.mailbox], "delta", origin="lifecycle")
    if notice.event == "missed":
        return "reconcile"
    try:
        stored = parts.subscriptions.get(notice.subscription_id)
        outcome = ""
        if notice.event == "reauthorizationRequired" and stored is not None:
            try:  # a PATCH of the expiry reauthorizes too (never both within 10 minutes)
                parts.subscriptions.put(to_stored(parts.graph_subscriptions.renew(to_record(stored))))
                outcome = "renewed"
            except NotFound:
                parts.subscriptions.delete(stored.id)
        if not outcome:
            outcome = ensure_mailbox(parts, notice.mailbox)
    except SyncError as exc:
        record_outcome(parts.checkpoints, notice.mailbox, exc)
        raise
    record_outcome(parts.checkpoints, notice.mailbox)
    return outcome


def maintain_subscriptions(parts: UpkeepParts) -> Counter[str]:
    """Ensure each mailbox in scope has its folder and one live subscription (``ensure_mailbox``: Graph is asked
    whether the stored ones still exist); delete subscriptions of mailboxes that left the scope. Failures are
    counted, logged and kept on the mailbox's state, never raised: the next run repairs what is missing."""
    with UPKEEP_LOCK:
        return _maintain(parts)


def _maintain(parts: UpkeepParts) -> Counter[str]:
    store = parts.subscriptions
    counts: Counter[str] = Counter()
    # With SYNC_MAILBOX_GROUP_ID the group is read first (``sync.scope``; ``refresh_scope`` returns None for a
    # fixed scope). A failed read keeps the last list and is counted; a new member gets its folder and subscription
    # below, then an initial full reconcile job; a member gone loses its subscription below, nothing else.
    change = parts.refresh_scope()
    if change is not None:
        counts["scope_members"] = change.members
        counts["scope_added"], counts["scope_removed"] = len(change.added), len(change.removed)
        if change.error:
            counts["scope_failed"] += 1
            logger.warning("mailbox group read failed, the last list is kept: %s", change.error)
    by_mailbox: dict[str, list[StoredSubscription]] = {}
    for sub in store.list_all():
        by_mailbox.setdefault(sub.mailbox, []).append(sub)
    scope = set(parts.mailboxes)  # duplicates within the scope are ensure_mailbox's
    counts += _delete_all(parts, [sub for m, subs in by_mailbox.items() if m not in scope for sub in subs])
    # Mailboxes are kept up UPKEEP_CONCURRENCY at a time, each by one thread: Graph's 4 concurrent requests per
    # mailbox are never approached, and the subscription API's per-app rate (docs/reference/graph.md §4.7) is far
    # off at Graph's create latency (a create waits for the validation handshake, §4.3)
    with ThreadPoolExecutor(UPKEEP_CONCURRENCY, thread_name_prefix="upkeep") as pool:
        for outcome in pool.map(lambda mailbox: _keep_up(parts, mailbox, by_mailbox.get(mailbox, [])),
                                parts.mailboxes):
            counts[outcome] += 1
    if change is not None and change.added:
        start_job(parts.jobs, parts.work_queue, list(change.added), "full", origin="scope")
    return +counts


def _keep_up(parts: UpkeepParts, mailbox: str, stored: Sequence[StoredSubscription]) -> str:
    """One mailbox of ``_maintain``: its folder and subscription, and the outcome kept on its state."""
    try:
        parts.graph.folder_id(mailbox)  # creates the sync folder when missing
        outcome = ensure_mailbox(parts, mailbox, stored)
    except SyncError as exc:
        record_outcome(parts.checkpoints, mailbox, exc)
        logger.warning("subscription upkeep failed for a mailbox: %s", _error_text(exc))
        return "failed"
    record_outcome(parts.checkpoints, mailbox)
    return outcome


def remove_subscriptions(parts: UpkeepParts, mailboxes: Sequence[str]) -> Counter[str]:
    """Delete the Graph subscriptions of ``mailboxes`` (and their rows) now: for an uninstall, or a mailbox taken
    out of scope, without waiting for the subscriptions timer. A mailbox still in scope gets a new one on its next
    run."""
    wanted = {m.casefold() for m in mailboxes}
    return _delete_all(parts, [sub for sub in parts.subscriptions.list_all() if sub.mailbox in wanted])


def _delete_all(parts: UpkeepParts, subs: Sequence[StoredSubscription]) -> Counter[str]:
    """Delete ``subs`` in Graph, then their rows; a failure is counted and logged by subscription id."""
    counts: Counter[str] = Counter()
    for sub in subs:
        try:
            PACE.wait()
            parts.graph_subscriptions.delete(sub.id)
            parts.subscriptions.delete(sub.id)
            counts["deleted"] += 1
        except SyncError as exc:
            counts["failed"] += 1
            logger.warning("deleting subscription %s failed: %s", sub.id, type(exc).__name__)
    return counts
