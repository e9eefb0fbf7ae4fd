"""The HTTP and timer functions of Graph change notifications (docs/reference/graph.md §4).

Functions:
    graph_notifications   POST /api/graph/notifications (anonymous: protected by clientState)
    graph_lifecycle       POST /api/graph/lifecycle (anonymous: protected by clientState)
    subscriptions_timer   %SUBSCRIPTION_SCHEDULE%: ``sync.subscriptions.maintain_subscriptions``

The notification webhook does no Graph or Salesforce I/O (Graph wants an answer within 3 s): per item it reads the
stored subscription, compares the digest of the item's clientState with the stored one in constant time, and
enqueues one ``ContactChange(source=m365, mailbox, id)`` per distinct contact, the mailbox taken from the stored
subscription, never from the payload. Other items are dropped and counted (``COUNTERS``, and one log line per
request); the answer is 202 whatever the mix, so a caller learns nothing about our subscriptions.

What an anonymous caller can make it cost is bounded before any storage read (issue 19): a body over 1 MiB is 413,
more than ``MAX_NOTIFICATIONS`` items is 413, more distinct subscription ids than ``distinct_limit`` (what our own
subscriptions could ever produce) is 400; so one request costs at most ``distinct_limit`` Table point reads. Found
subscriptions are kept 60 s by the store; unknown ids are remembered ``UNKNOWN_TTL_S`` per process (``UnknownIds``),
so repeating them costs nothing. Bad JSON, duplicate keys or no ``value`` list is 400. The lifecycle webhook makes
the same checks and hands the events to ``sync.subscriptions.handle_lifecycle``.
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
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.model import Side
from sync.ports import ContactChange, StoredSubscription, SubscriptionStore, WorkQueue
from sync.subscriptions import handle_lifecycle, maintain_subscriptions
from sync.triggers.errors import empty_response, http_response, json_response
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
        counts = accept_notifications(body, root.subscriptions, root.contact_queue,
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
        checked = check_items(_items(body), root.subscriptions, distinct_limit(len(root.mailboxes)))
        events = [(str(item.get("lifecycleEvent") or ""), stored) for item, stored in checked.valid]
        counts = Counter(checked.dropped)
        counts.update(handle_lifecycle(events, root))
    except BadPayload as exc:
        return _refused("graph lifecycle", exc)
    except Exception as exc:
        return http_response(exc)
    _log_counts("graph lifecycle", counts)
    return empty_response(202)


@bp.function_name("subscriptions_timer")
@bp.timer_trigger(arg_name="timer", schedule="%SUBSCRIPTION_SCHEDULE%", run_on_startup=False)
def subscriptions_timer(timer: func.TimerRequest) -> None:
    counts = maintain_subscriptions(bootstrap.current())
    logger.info("subscriptions: %s", dict(counts))
