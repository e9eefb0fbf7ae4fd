"""The HTTP and timer functions of Graph change notifications (docs/reference/graph.md §4).

Functions:
    graph_notifications     POST /api/graph/notifications (anonymous: protected by clientState)
    graph_lifecycle         POST /api/graph/lifecycle (anonymous: protected by clientState): enqueues, answers 202
    graph_lifecycle_worker  queue ``graph-lifecycle``: ``sync.subscriptions.handle_notice``, one event a message
    subscriptions_timer     %SUBSCRIPTION_SCHEDULE%: ``sync.subscriptions.maintain_subscriptions``
    subscriptions_startup   once when the app starts: validates WEBHOOK_BASE_URL, then (SUBSCRIPTIONS_ON_START)
                            ``maintain_subscriptions`` when a mailbox in scope lacks a live stored subscription,
                            or with SYNC_MAILBOX_GROUP_ID when the group was not read in the last 10 minutes
    subscriptions_refresh   POST /api/subscriptions/refresh (function key): ``maintain_subscriptions`` now, the
                            counts, the mailbox scope (``scope``: source, group read, its error) and each
                            mailbox's subscription state as JSON

The notification webhook does no Graph or Salesforce I/O (Graph wants an answer within 3 s): per item it reads the
stored subscription, compares the digest of the item's clientState with the stored one in constant time, and
enqueues one ``ContactChange(source=m365, mailbox, id)`` per distinct contact, the mailbox taken from the stored
subscription, never from the payload. Other items are dropped and counted (``COUNTERS``, and one log line per
request); the answer is 202 whatever the mix, so a caller learns nothing about our subscriptions. The time of the
last accepted notification is kept per mailbox (at most one Table write per mailbox a minute per process) for the
status page.

What an anonymous caller can make it cost is bounded before any storage read: a body over 1 MiB is 413, more than
``MAX_NOTIFICATIONS`` items is 413, more distinct subscription ids than ``distinct_limit`` (what our own
subscriptions could ever produce) is 400; so one request costs at most ``distinct_limit`` Table point reads. Found
subscriptions are kept 60 s by the store; unknown ids are remembered ``UNKNOWN_TTL_S`` per process (``UnknownIds``),
so repeating them costs nothing. Bad JSON, duplicate keys or no ``value`` list is 400. The lifecycle webhook makes
the same checks and only enqueues one ``LifecycleNotice`` per valid event (Graph wants the 202 first, §4.6):
creating a subscription runs Graph's validation handshake and can take seconds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.config import ConfigError, setting_flag, webhook_base_url
from sync.model import Side
from sync.ports import (
    CheckpointStore,
    ContactChange,
    LifecycleNotice,
    StoredSubscription,
    SubscriptionStore,
    WorkQueue,
)
from sync.subscriptions import (
    LAST_NOTIFICATION,
    LIFECYCLE_EVENTS,
    handle_notice,
    mailbox_state,
    maintain_subscriptions,
    needs_upkeep,
)
from sync.triggers.errors import decide, empty_response, http_response, json_response
from sync.triggers.http import MAX_NOTIFICATION_BODY, BadJson, bounded_body, handshake, load_json, validation_token

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

COUNTERS: Counter[str] = Counter()  # per process: accepted, unknown_subscription, bad_client_state, invalid
# Graph subscription ids are GUIDs: anything else is counted invalid without a storage read or a log of its text.
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_CONTACT_ID = 1024  # Graph contact ids are about 150 characters; a longer one would not fit a queue message
# Graph documents no batch maximum (docs/reference/graph.md §4.4); its batches are small. Past these bounds a request
# is one Graph could never send, refused before any storage read.
MAX_NOTIFICATIONS = 1000
MIN_DISTINCT_SUBSCRIPTIONS = 50
UNKNOWN_TTL_S = 30.0
MAX_UNKNOWN = 10_000


def distinct_limit(mailboxes: int) -> int:
    """The most distinct subscription ids one request may name: we hold one subscription per mailbox in scope (two
    while one is being replaced), with a floor for small deployments."""
    return max(MIN_DISTINCT_SUBSCRIPTIONS, 2 * mailboxes)


class UnknownIds:
    """Subscription ids the store did not have, remembered ``ttl_s`` seconds (negative cache; at most ``size``, then
    it starts over). A subscription stored within ``ttl_s`` after a notification named it before it was stored loses
    its hints for that long; the scheduled delta reconcile repairs what they would have said."""

    def __init__(self, ttl_s: float = UNKNOWN_TTL_S, size: int = MAX_UNKNOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s, self._size, self._clock = ttl_s, size, clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, sub_id: object) -> bool:
        with self._lock:
            at = self._seen.get(str(sub_id))
        return at is not None and self._clock() - at < self._ttl_s

    def add(self, sub_id: str) -> None:
        with self._lock:
            if len(self._seen) >= self._size:
                self._seen.clear()
            self._seen[sub_id] = self._clock()


_UNKNOWN: weakref.WeakKeyDictionary[SubscriptionStore, UnknownIds] = weakref.WeakKeyDictionary()
_UNKNOWN_LOCK = threading.Lock()


def unknown_ids(store: SubscriptionStore) -> UnknownIds:
    """The negative cache of one subscription store (a new store, e.g. a new root, starts empty)."""
    with _UNKNOWN_LOCK:
        found = _UNKNOWN.get(store)
        if found is None:
            found = _UNKNOWN[store] = UnknownIds()
        return found


def _text(value: object) -> str | None:
    """``value`` if it is a non-empty string that UTF-8 can encode (JSON escapes can carry lone surrogates)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


class BadPayload(ValueError):
    """The body is not a Graph notification collection (or not one Graph could send): answered with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _items(body: bytes) -> list[Mapping[str, Any]]:
    try:
        doc = load_json(body)
    except BadJson as exc:
        raise BadPayload(str(exc)) from exc
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, list):
        raise BadPayload("body has no 'value' list")
    if len(value) > MAX_NOTIFICATIONS:
        raise BadPayload(f"{len(value)} notifications in one request; at most {MAX_NOTIFICATIONS}", 413)
    return [item if isinstance(item, Mapping) else {} for item in value]


@dataclass
class Checked:
    """Notification items whose clientState matched, with their stored subscription; the rest counted."""

    valid: list[tuple[Mapping[str, Any], StoredSubscription]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def check_items(items: list[Mapping[str, Any]], subscriptions: SubscriptionStore, limit: int) -> Checked:
    """Items with a known subscription and its clientState; raises BadPayload (400) before any read when the items
    name more than ``limit`` distinct subscription ids."""
    from sync.adapters.graph import client_state_matches

    out = Checked()
    ids = [sub_id if isinstance(sub_id, str) and _SUBSCRIPTION_ID.fullmatch(sub_id) else None
           for sub_id in (item.get("subscriptionId") for item in items)]
    distinct = {sub_id for sub_id in ids if sub_id is not None}
    if len(distinct) > limit:
        raise BadPayload(f"{len(distinct)} distinct subscriptions in one request; at most {limit}")
    unknown = unknown_ids(subscriptions)
    found: dict[str, StoredSubscription | None] = {}
    for sub_id in distinct:
        if sub_id in unknown:  # remembered: no read, and the entry still expires on time
            found[sub_id] = None
            continue
        found[sub_id] = subscriptions.get(sub_id)
        if found[sub_id] is None:
            unknown.add(sub_id)
    for item, maybe_id in zip(items, ids, strict=True):
        stored = found[maybe_id] if maybe_id is not None else None
        if maybe_id is None:
            out.dropped["invalid"] += 1
        elif stored is None:
            out.dropped["unknown_subscription"] += 1
        elif not client_state_matches(_text(item.get("clientState")), stored.client_state_digest):
            out.dropped["bad_client_state"] += 1
        else:
            out.valid.append((item, stored))
    COUNTERS.update(out.dropped)
    return out


def _contact_id(item: Mapping[str, Any]) -> str | None:
    found = _raw_contact_id(item)
    return found if found is not None and len(found) <= MAX_CONTACT_ID and _text(found) else None


def _raw_contact_id(item: Mapping[str, Any]) -> str | None:
    data = item.get("resourceData")
    if isinstance(data, Mapping) and isinstance(data.get("id"), str) and data["id"]:
        return str(data["id"])
    resource = item.get("resource")
    if isinstance(resource, str) and "/" in resource:
        last = resource.rstrip("/").rsplit("/", 1)[1]
        # ".../contacts('<id>')" or ".../contacts/<id>"
        if last.lower().startswith("contacts(") and last.endswith(")"):
            return last[len("contacts("):-1].strip("'") or None
        if last.lower() != "contacts":
            return last
    return None


def accept_notifications(body: bytes, subscriptions: SubscriptionStore, queue: WorkQueue,
                         checkpoints: CheckpointStore | None = None,
                         limit: int = MIN_DISTINCT_SUBSCRIPTIONS) -> Counter[str]:
    """Validate a notification batch and enqueue one hint per distinct contact. Raises BadPayload."""
    checked = check_items(_items(body), subscriptions, limit)
    counts = Counter(checked.dropped)
    seen: set[tuple[str, str]] = set()
    for item, stored in checked.valid:
        contact_id = _contact_id(item)
        if contact_id is None:
            counts["invalid"] += 1
            COUNTERS["invalid"] += 1
            continue
        key = (stored.mailbox, contact_id)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        queue.send(ContactChange(source=Side.M365, item_id=contact_id, mailbox=stored.mailbox))
        counts["accepted"] += 1
    COUNTERS["accepted"] += counts["accepted"]
    if checkpoints is not None:
        note_arrivals(checkpoints, {stored.mailbox for _, stored in checked.valid})
    return counts


_NOTED: dict[str, float] = {}  # mailbox -> monotonic time its last notification was written (per process)
_NOTED_LOCK = threading.Lock()
NOTE_EVERY_S = 60.0


def note_arrivals(checkpoints: CheckpointStore, mailboxes: set[str]) -> None:
    """Keep the time of the last notification per mailbox; at most once a minute per mailbox, never raising."""
    now = time.monotonic()
    for mailbox in mailboxes:
        with _NOTED_LOCK:
            if now - _NOTED.get(mailbox, -NOTE_EVERY_S) < NOTE_EVERY_S:
                continue
            _NOTED[mailbox] = now
        try:
            checkpoints.put(mailbox, LAST_NOTIFICATION, datetime.now(UTC).isoformat())
        except Exception as exc:  # a status detail: the hints are already queued
            logger.warning("last notification time not written: %s", type(exc).__name__)


def accept_lifecycle(body: bytes, subscriptions: SubscriptionStore, queue: WorkQueue,
                     limit: int = MIN_DISTINCT_SUBSCRIPTIONS) -> Counter[str]:
    """Validate lifecycle events and enqueue one ``LifecycleNotice`` per valid one (no Graph call). Raises
    BadPayload."""
    checked = check_items(_items(body), subscriptions, limit)
    counts = Counter(checked.dropped)
    for item, stored in checked.valid:
        event = item.get("lifecycleEvent")
        if event not in LIFECYCLE_EVENTS:
            counts["invalid"] += 1
            continue
        queue.send(LifecycleNotice(event=event, subscription_id=stored.id, mailbox=stored.mailbox))
        counts["queued"] += 1
    return counts


def _log_counts(what: str, counts: Counter[str]) -> None:
    """One line per request: a warning when anything was dropped (counts only, never the dropped ids)."""
    dropped = sum(counts[k] for k in ("invalid", "unknown_subscription", "bad_client_state"))
    (logger.warning if dropped else logger.info)("%s: %s", what, dict(counts))


def _refused(what: str, exc: BadPayload) -> func.HttpResponse:
    logger.warning("%s: refused with %s (%s)", what, exc.status, exc)
    return json_response({"error": str(exc)}, exc.status)


# ---------------------------------------------------------------------------------------------- functions


@bp.function_name("graph_notifications")
@bp.route(route="graph/notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    token = validation_token(req)
    if token is not None:
        return handshake(token)
    body = bounded_body(req, MAX_NOTIFICATION_BODY)
    if isinstance(body, func.HttpResponse):
        return body
    root = bootstrap.current()
    try:
        counts = accept_notifications(body, root.subscriptions, root.contact_queue, root.checkpoints,
                                      distinct_limit(len(root.mailboxes)))
    except BadPayload as exc:
        return _refused("graph notifications", exc)
    except Exception as exc:  # storage down: 5xx so Graph retries (docs/reference/graph.md §4.5)
        return http_response(exc)
    _log_counts("graph notifications", counts)
    return empty_response(202)


@bp.function_name("graph_lifecycle")
@bp.route(route="graph/lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    token = validation_token(req)
    if token is not None:
        return handshake(token)
    body = bounded_body(req, MAX_NOTIFICATION_BODY)
    if isinstance(body, func.HttpResponse):
        return body
    root = bootstrap.current()
    try:
        counts = accept_lifecycle(body, root.subscriptions, root.lifecycle_queue, distinct_limit(len(root.mailboxes)))
    except BadPayload as exc:
        return _refused("graph lifecycle", exc)
    except Exception as exc:
        return http_response(exc)
    _log_counts("graph lifecycle", counts)
    return empty_response(202)


@bp.function_name("graph_lifecycle_worker")
@bp.queue_trigger(arg_name="msg", queue_name="graph-lifecycle", connection="AzureWebJobsStorage")
def graph_lifecycle_worker(msg: func.QueueMessage) -> None:
    process_lifecycle_message(bootstrap.current(), msg.get_body().decode("utf-8", "replace"),
                              dequeue_count=int(getattr(msg, "dequeue_count", 1) or 1), message_id=msg.id)


def process_lifecycle_message(root: bootstrap.Root, body: str, *, dequeue_count: int = 1,
                              message_id: str | None = None) -> str | None:
    """Run one lifecycle event; raises to have the host retry (``sync.triggers.errors.decide``)."""
    from pydantic import ValidationError

    from sync.errors import BadData
    from sync.triggers.queue import settle

    notice: LifecycleNotice | None = None
    try:
        try:
            notice = LifecycleNotice.model_validate_json(body)
        except ValidationError as exc:
            raise BadData("unreadable graph-lifecycle message", code="BAD_MESSAGE", side="queue") from exc
        outcome = handle_notice(notice, root)
    except Exception as exc:
        settle(root, bootstrap.LIFECYCLE_QUEUE, decide(exc, dequeue_count), exc, body=body, item=notice,
               dequeue_count=dequeue_count, message_id=message_id)
        return None
    logger.info("lifecycle %s for subscription %s: %s", notice.event, notice.subscription_id, outcome)
    return outcome


@bp.function_name("subscriptions_startup")
@bp.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def subscriptions_startup(timer: func.TimerRequest) -> None:
    startup_upkeep(bootstrap.current())


def startup_upkeep(root: bootstrap.Root) -> dict[str, int] | None:
    """At the app's start: a clear error for a refused SF_SOQL_FILTER or marker field and for a bad WEBHOOK_BASE_URL,
    then the subscriptions of mailboxes that lack one (the first start after deploy, and every change of
    SYNC_MAILBOXES, which restarts the app). With SYNC_MAILBOX_GROUP_ID the whole upkeep runs, reading the group,
    unless it was read within ``GROUP_FRESH_AT_START``."""
    from sync.triggers.salesforce import startup_check

    startup_check(root)  # SF_SOQL_FILTER and the marker field, judged by the org: logged, shown on the status page
    try:
        webhook_base_url(root.env)
        if not setting_flag("SUBSCRIPTIONS_ON_START", root.env):
            return None
        # With a group, a start reads it unless another instance did within GROUP_FRESH_AT_START (a scale-out
        # starts many instances at once; each full upkeep costs two Graph calls per mailbox).
        read = not group_is_fresh(root)
        if not read and not root.mailboxes:
            return None
        if not read and not needs_upkeep(root):
            logger.info("subscriptions at start: every mailbox has one")
            return {}
    except ConfigError as exc:
        logger.error("%s", exc)
        return None
    except Exception as exc:  # storage down at start: the 6-hourly timer repairs it
        logger.warning("subscriptions at start skipped: %s", type(exc).__name__)
        return None
    counts = dict(maintain_subscriptions(root))
    logger.info("subscriptions at start: %s", counts)
    return counts


@bp.function_name("subscriptions_refresh")
@bp.route(route="subscriptions/refresh", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def subscriptions_refresh(req: func.HttpRequest) -> func.HttpResponse:
    root = bootstrap.current()
    try:
        counts = maintain_subscriptions(root)
        subs = {s.mailbox: s for s in root.subscriptions.list_all()}
        mailboxes = [{"mailbox": m, "subscriptionId": subs[m].id if m in subs else None,
                      "expires": subs[m].expires_at.isoformat() if m in subs else None,
                      **mailbox_state(root.checkpoints, m)} for m in root.mailboxes]
    except Exception as exc:
        return http_response(exc)
    logger.info("subscriptions refresh: %s", dict(counts))
    return json_response({"counts": dict(counts), "scope": scope_state(root), "mailboxes": mailboxes})


GROUP_FRESH_AT_START = timedelta(minutes=10)


def group_is_fresh(root: bootstrap.Root) -> bool:
    """True without a group, or when the group was read within ``GROUP_FRESH_AT_START``."""
    scope = root.mailbox_list
    if scope.group_id is None:
        return True
    stored = scope.stored()
    if stored is None or stored.group_id != scope.group_id or not stored.read_at:
        return False
    return datetime.now(UTC) - datetime.fromisoformat(stored.read_at) < GROUP_FRESH_AT_START


def scope_state(root: bootstrap.Root) -> dict[str, Any]:
    """Where the mailbox scope comes from and the last group read (``sync.scope.MailboxList.state``)."""
    return dict(root.mailbox_list.state())


@bp.function_name("subscriptions_timer")
@bp.timer_trigger(arg_name="timer", schedule="%SUBSCRIPTION_SCHEDULE%", run_on_startup=False)
def subscriptions_timer(timer: func.TimerRequest) -> None:
    counts = maintain_subscriptions(bootstrap.current())
    logger.info("subscriptions: %s", dict(counts))
