"""Salesforce change events in: the signed push endpoint and the Pub/Sub pull timer.

Functions:
    salesforce_events     POST /api/salesforce/events (anonymous; HMAC-SHA256 over "<timestamp>.<body>" in
                          X-Sync-Signature, Unix time in X-Sync-Timestamp, 300 s replay window): one hint per record
                          id -> 202 ``{"accepted": n}``; bad or missing signature, stale timestamp, or no
                          EVENTS_HMAC_SECRET configured -> 401; signed but malformed (not change events, a record
                          id that is not a Salesforce id, a duplicate JSON key) -> 400 and nothing enqueued; over
                          1 MiB -> 413
    salesforce_cdc_pull   %CDC_PULL_SCHEDULE% (every minute): the Pub/Sub subscription held open from the stored
                          replay id for ``CDC_PULL_HOLD_SECONDS`` (57 s of the 60), so an edit becomes a hint on
                          ``contact-changes`` as it commits; GAP_OVERFLOW / replay-rejected -> reconciles to
                          ``reconcile``. Runs never overlap (the timer is a singleton, docs/reference/azure.md §1.2;
                          the subscriber also refuses a second concurrent pull)
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import azure.functions as func

from sync import bootstrap
from sync.errors import BadData, SyncError
from sync.triggers.errors import describe, http_response, json_response
from sync.triggers.http import MAX_EVENTS_BODY, BadJson, bounded_body, load_json

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

REPLAY_WINDOW_S = 300.0
PULL_MAX_EVENTS = 20_000  # 100 outstanding at a time (flow control); this only bounds one run's work
_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def accept_events(root: bootstrap.Root, body: bytes, headers: dict[str, str], now: datetime) -> int:
    from sync.adapters.salesforce.pubsub import BadSignature, parse_signed_events

    secret = root.events_secret
    if not secret:
        raise BadSignature("the events relay is not enabled (EVENTS_HMAC_SECRET is not set)", side="salesforce")
    try:
        hints = parse_signed_events(body, headers, secret, now, window_s=REPLAY_WINDOW_S)
    except OverflowError as exc:  # a well-signed timestamp too far out to compare with the clock
        raise BadSignature("signature timestamp outside the replay window", side="salesforce") from exc
    except (TypeError, RecursionError) as exc:  # well signed, but e.g. recordIds is not a list, or absurdly nested
        raise BadData("pushed change events are malformed", code="BAD_EVENTS", side="salesforce") from exc
    try:
        load_json(body)  # well signed and JSON: refuse duplicate keys too (the last one would win silently)
    except BadJson as exc:
        raise BadData(f"pushed change events: {exc}", code="BAD_EVENTS", side="salesforce") from exc
    # every id is checked before any hint is sent: a refused batch enqueues nothing
    bad = sum(1 for hint in hints if not _RECORD_ID.fullmatch(hint.item_id))
    if bad:
        raise BadData(f"{bad} record id(s) are not Salesforce ids", code="BAD_EVENTS", side="salesforce")
    for hint in hints:
        root.contact_queue.send(hint)
    return len(hints)


def startup_check(root: bootstrap.Root) -> str | None:
    """At the app's start (called by ``subscriptions_startup``): Salesforce settings that only the org can judge
    (``SF_SOQL_FILTER``, ``SF_OUTLOOK_ID_FIELD``), logged as an error naming the setting; the status page shows the
    same under config errors. Returns the problem (None: none found, or Salesforce not configured or unreachable)."""
    if not (root.get("SF_SOQL_FILTER") or root.get("SF_OUTLOOK_ID_FIELD")):
        return None
    try:
        problem = root.salesforce.check()
    except Exception as exc:  # settings missing, Salesforce down: the status page and the first read report it
        logger.warning("salesforce settings not checked at start: %s", type(exc).__name__)
        return None
    if problem:
        logger.error("invalid app settings: %s", problem)
    return problem


@bp.function_name("salesforce_events")
@bp.route(route="salesforce/events", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def salesforce_events(req: func.HttpRequest) -> func.HttpResponse:
    body = bounded_body(req, MAX_EVENTS_BODY)
    if isinstance(body, func.HttpResponse):
        return body
    try:
        accepted = accept_events(bootstrap.current(), body, dict(req.headers.items()), datetime.now(UTC))
    except Exception as exc:
        return http_response(exc)
    logger.info("salesforce events: %s hint(s) enqueued", accepted)
    return json_response({"accepted": accepted}, 202)


@bp.function_name("salesforce_cdc_pull")
@bp.timer_trigger(arg_name="timer", schedule="%CDC_PULL_SCHEDULE%", run_on_startup=False)
def salesforce_cdc_pull(timer: func.TimerRequest) -> None:
    try:
        root = bootstrap.current()
        hold = root.cdc_hold_seconds
        # a quiet channel does not end the hold (idle = hold): the next edit is read as it commits
        result = root.cdc.pull(max_events=PULL_MAX_EVENTS, max_seconds=hold, idle_seconds=hold)
    except SyncError as exc:  # the checkpoint holds what was processed; the next run resumes from there
        log = logger.warning if exc.retryable else logger.error
        log("cdc pull failed: %s", describe(exc))
        return
    if result.busy:
        return
    logger.info("cdc pull: %s event(s), %s hint(s), %s gap(s), %s reconcile(s)", len(result.events), result.hints,
                result.gaps, result.reconciles)
