"""The HTTP and timer functions of Graph change notifications (docs/reference/graph.md §4).

Functions:
    graph_notifications   POST /api/graph/notifications (anonymous: protected by clientState)
    graph_lifecycle       POST /api/graph/lifecycle (anonymous: protected by clientState)
    subscriptions_timer   %SUBSCRIPTION_SCHEDULE%: ``sync.subscriptions.maintain_subscriptions``

The notification webhook does no Graph or Salesforce I/O (Graph wants an answer within 3 s): per item it reads the
stored subscription (one Table point read per subscription id, kept 60 s per process), compares the digest of the
item's clientState with the stored one in constant time, and enqueues one ``ContactChange(source=m365, mailbox, id)``
per distinct contact, the mailbox taken from the stored subscription, never from the payload. Other items are
dropped and counted (``COUNTERS``); the answer is 202 whatever the mix, so a caller learns nothing about our
subscriptions. Bad JSON (or no ``value`` list) is 400, a body over 1 MiB is 413. The lifecycle webhook makes the same
checks and hands the events to ``sync.subscriptions.handle_lifecycle``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.model import Side
from sync.ports import ContactChange, StoredSubscription, SubscriptionStore, WorkQueue
from sync.subscriptions import handle_lifecycle, maintain_subscriptions
from sync.triggers.errors import http_response
from sync.triggers.http import MAX_NOTIFICATION_BODY, bounded_body, handshake, validation_token

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

COUNTERS: Counter[str] = Counter()  # per process: accepted, unknown_subscription, bad_client_state, invalid
# Graph subscription ids are GUIDs: anything else is counted invalid without a storage read or a log of its text.
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_CONTACT_ID = 1024  # Graph contact ids are about 150 characters; a longer one would not fit a queue message


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
    """The body is not a Graph notification collection."""


def _items(body: bytes) -> list[Mapping[str, Any]]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder's recursion limit
        raise BadPayload("body is not JSON") from exc
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, list):
        raise BadPayload("body has no 'value' list")
    return [item if isinstance(item, Mapping) else {} for item in value]


@dataclass
class Checked:
    """Notification items whose clientState matched, with their stored subscription; the rest counted."""

    valid: list[tuple[Mapping[str, Any], StoredSubscription]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def check_items(items: list[Mapping[str, Any]], subscriptions: SubscriptionStore) -> Checked:
    from sync.adapters.graph import client_state_matches

    out = Checked()
    cache: dict[str, StoredSubscription | None] = {}
    for item in items:
        sub_id = item.get("subscriptionId")
        if not isinstance(sub_id, str) or not _SUBSCRIPTION_ID.fullmatch(sub_id):
            out.dropped["invalid"] += 1
            continue
        if sub_id not in cache:
            cache[sub_id] = subscriptions.get(sub_id)
        stored = cache[sub_id]
        if stored is None:
            out.dropped["unknown_subscription"] += 1
            logger.warning("notification for unknown subscription %s dropped", sub_id[:64])
        elif not client_state_matches(_text(item.get("clientState")), stored.client_state_digest):
            out.dropped["bad_client_state"] += 1
            logger.warning("notification with a wrong clientState for subscription %s dropped", sub_id)
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


def accept_notifications(body: bytes, subscriptions: SubscriptionStore, queue: WorkQueue) -> Counter[str]:
    """Validate a notification batch and enqueue one hint per distinct contact. Raises BadPayload."""
    checked = check_items(_items(body), subscriptions)
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
        counts = accept_notifications(body, root.subscriptions, root.contact_queue)
    except BadPayload as exc:
        return func.HttpResponse(json.dumps({"error": str(exc)}), status_code=400, mimetype="application/json")
    except Exception as exc:  # storage down: 5xx so Graph retries (docs/reference/graph.md §4.5)
        return http_response(exc)
    logger.info("graph notifications: %s", dict(counts))
    return func.HttpResponse(status_code=202)


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
        checked = check_items(_items(body), root.subscriptions)
        events = [(str(item.get("lifecycleEvent") or ""), stored) for item, stored in checked.valid]
        counts = Counter(checked.dropped)
        counts.update(handle_lifecycle(events, root))
    except BadPayload as exc:
        return func.HttpResponse(json.dumps({"error": str(exc)}), status_code=400, mimetype="application/json")
    except Exception as exc:
        return http_response(exc)
    logger.info("graph lifecycle: %s", dict(counts))
    return func.HttpResponse(status_code=202)


@bp.function_name("subscriptions_timer")
@bp.timer_trigger(arg_name="timer", schedule="%SUBSCRIPTION_SCHEDULE%", run_on_startup=False)
def subscriptions_timer(timer: func.TimerRequest) -> None:
    counts = maintain_subscriptions(bootstrap.current())
    logger.info("subscriptions: %s", dict(counts))
