"""Reconcile jobs: started by API or timer, one mailbox per queue message, status by API.

Functions:
    reconcile_start      POST /api/reconcile ``{"mailboxes": "all"|[...], "mode": "delta"|"full", "dryRun", "force"}``
                         -> 202 and ``Location: /api/reconcile/<job>``; 400 with the reason for a bad body (the
                         scope is required: no body, ``{}`` or a typo never becomes a run over every mailbox; a
                         duplicate key is refused); over 64 KiB -> 413
    reconcile_status     GET /api/reconcile/{job} -> the job as JSON; 404 for an unknown job
    reconcile_timer      %RECONCILE_SCHEDULE%: every mailbox in scope, ``full`` when the last full pass is 7 days old
    mailbox_reconciler   queue ``reconcile``: one mailbox, delta or full; the result goes to the job row

A ``delta`` pass reads both change feeds from their checkpoints and reconciles the whole mailbox when a feed starts
over; the job says which pass ran (``"ran"``). A circuit-breaker refusal is recorded in the job (state ``refused``)
and completes the message: re-run with ``force: true`` to apply it.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import azure.functions as func
from pydantic import ValidationError

from sync import bootstrap, jobs
from sync.errors import BadData, CircuitBreakerTripped
from sync.jobs import Origin
from sync.ports import MailboxJob, ReconcileJob, ReconcileMailbox
from sync.triggers.errors import Disposition, decide, describe, http_response, json_response
from sync.triggers.http import MAX_RECONCILE_BODY, BadJson, bounded_body, load_json
from sync.triggers.queue import settle

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

FULL_EVERY = timedelta(days=7)
_KEYS = frozenset({"mailboxes", "mode", "dryRun", "force"})
ALL = "all"
SHOWN = 5  # names quoted in a refusal; the rest are counted


class BadRequest(ValueError):
    """A reconcile request body that cannot be accepted (the message is the 400 answer)."""


def _quote(names: list[str]) -> str:
    """At most ``SHOWN`` names, each cut to 64 characters, and how many more: an answer never echoes the body."""
    shown = ", ".join(n if len(n) <= 64 else n[:64] + "..." for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _scope(value: object, scope: tuple[str, ...]) -> list[str]:
    if value is None:
        raise BadRequest('name the scope: "mailboxes": "all" or a list of mailbox addresses')
    if not scope:
        raise BadRequest("no mailboxes are in scope (SYNC_MAILBOXES is empty)")
    if value == ALL:
        return list(scope)
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise BadRequest('mailboxes must be "all" or a list of mailbox addresses')
    if not value:
        raise BadRequest('mailboxes is empty: send "mailboxes": "all" to reconcile every mailbox in scope')
    chosen = list(dict.fromkeys(m.strip().casefold() for m in value))
    outside = [m for m in chosen if m not in scope]
    if outside:
        raise BadRequest(f"{len(outside)} mailbox(es) not in scope: {_quote(outside)}")
    return chosen


def parse_request(body: bytes, scope: tuple[str, ...]) -> tuple[list[str], Literal["delta", "full"], bool, bool]:
    try:
        doc = load_json(body)
    except BadJson as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise BadRequest(f"unknown key(s): {_quote(unknown)}; allowed: mailboxes, mode, dryRun, force")
    mode = doc.get("mode", "delta")
    if mode not in ("delta", "full"):
        raise BadRequest("mode must be 'delta' or 'full'")
    flags = []
    for key in ("dryRun", "force"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{key} must be true or false")
        flags.append(value)
    return _scope(doc.get("mailboxes"), scope), mode, flags[0], flags[1]


def start_job(root: bootstrap.Root, mailboxes: list[str], mode: Literal["delta", "full"], *, dry_run: bool = False,
              force: bool = False, origin: Origin = "api") -> ReconcileJob:
    """Write the job row, then enqueue one ``ReconcileMailbox`` per mailbox (``sync.jobs.start_job``)."""
    return jobs.start_job(root.jobs, root.reconcile_queue, mailboxes, mode, dry_run=dry_run, force=force,
                          origin=origin)


def job_json(job: ReconcileJob) -> dict[str, Any]:
    states = [m.state for m in job.mailboxes.values()]
    if not states or all(s == "queued" for s in states):
        overall = "queued"
    elif any(s in ("queued", "running") for s in states):
        overall = "running"
    elif all(s == "done" for s in states):
        overall = "done"
    else:
        overall = "finished_with_problems"
    planned: Counter[str] = Counter()
    applied: Counter[str] = Counter()
    for m in job.mailboxes.values():
        planned.update(m.planned)
        applied.update(m.applied)
    return {
        "id": job.id, "created": job.created.isoformat(), "origin": job.origin, "mode": job.mode,
        "ran": _ran(job),
        "dryRun": job.dry_run, "force": job.force, "state": overall,
        "progress": {"total": len(states), "done": sum(s in ("done", "failed", "refused") for s in states)},
        "planned": dict(sorted(planned.items())), "applied": dict(sorted(applied.items())),
        "refusals": [m.mailbox for m in job.mailboxes.values() if m.state == "refused"],
        "mailboxes": [
            {"mailbox": m.mailbox, "state": m.state, "attempts": m.attempts, "ran": m.ran, "visited": m.visited,
             "linkedBefore": m.linked_before, "planned": dict(m.planned), "applied": dict(m.applied),
             "errors": list(m.errors), "refusal": m.refusal, "report": list(m.report),
             "started": m.started_at.isoformat() if m.started_at else None,
             "finished": m.finished_at.isoformat() if m.finished_at else None}
            for m in job.mailboxes.values()
        ],
    }


def run_mailbox(root: bootstrap.Root, body: str, *, dequeue_count: int = 1, message_id: str | None = None) -> None:
    """One mailbox of a job (or a job-less reconcile from CDC/lifecycle). Raises to have the host retry."""
    from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta

    item: ReconcileMailbox | None = None
    state: MailboxJob | None = None
    try:
        try:
            item = ReconcileMailbox.model_validate_json(body)
        except ValidationError as exc:
            raise BadData("unreadable reconcile message", code="BAD_MESSAGE", side="queue") from exc
        mailbox = item.mailbox.casefold()
        state = MailboxJob(mailbox=mailbox, state="running", attempts=dequeue_count, started_at=datetime.now(UTC))
        _put(root, item, state)
        if mailbox not in root.mailboxes:
            raise BadData("mailbox is not in scope", code="OUT_OF_SCOPE", side="queue")
        try:
            # while the links are rebuilt after a loss, a full pass goes through the delta path too: it runs full
            # and first decides the Outlook deletes the feed reports (their links are gone; see reconcile.py)
            if item.mode == "delta" or root.engine.links.rebuilding(mailbox):
                report = reconcile_mailbox_delta(root.engine, mailbox, root.checkpoints, dry_run=item.dry_run,
                                                 force=item.force)
            else:
                report = reconcile_mailbox(root.engine, mailbox, dry_run=item.dry_run, force=item.force)
        except CircuitBreakerTripped as exc:
            logger.warning("reconcile job %s: circuit breaker refused a mailbox (%s of %s)", item.job_id,
                           exc.destructive, exc.total)
            _put(root, item, state.model_copy(update={
                "state": "refused", "refusal": str(exc), "report": tuple(exc.report)[:200],
                "finished_at": datetime.now(UTC)}))
            return
        _put(root, item, state.model_copy(update={
            "state": "done", "ran": report.ran, "visited": report.visited, "linked_before": report.linked_before,
            "planned": dict(report.planned), "applied": dict(report.applied), "errors": tuple(report.errors)[:100],
            "finished_at": datetime.now(UTC)}))
        logger.info("reconcile job %s: mailbox done, %s visited, %s error(s)", item.job_id, report.visited,
                    len(report.errors))
    except Exception as exc:
        decision = decide(exc, dequeue_count)
        if item is not None and state is not None:
            final = decision.disposition is Disposition.POISON
            try:
                _put(root, item, state.model_copy(update={
                    "state": "failed" if final else "queued", "errors": (*state.errors, describe(exc))[-20:],
                    "finished_at": datetime.now(UTC) if final else None}))
            except Exception as put_exc:
                logger.warning("job row not updated: %s", type(put_exc).__name__)
        settle(root, bootstrap.RECONCILE_QUEUE, decision, exc, body=body, item=item, dequeue_count=dequeue_count,
               message_id=message_id)


def _ran(job: ReconcileJob) -> str | None:
    """The pass that actually ran: ``delta``, ``full`` (a delta falls back to full when a change feed starts
    over), ``mixed`` across mailboxes, or None before any mailbox finished."""
    ran = {m.ran for m in job.mailboxes.values() if m.ran}
    return None if not ran else ran.pop() if len(ran) == 1 else "mixed"


def _put(root: bootstrap.Root, item: ReconcileMailbox, state: MailboxJob) -> None:
    if item.job_id:
        root.jobs.put_mailbox(item.job_id, state)


def timer_mode(root: bootstrap.Root, now: datetime) -> Literal["delta", "full"]:
    """``full`` once every 7 days (checkpoint ``reconcile``/``last-full``), ``delta`` otherwise."""
    last = root.checkpoints.get("reconcile", "last-full")
    due = last is None or now - datetime.fromisoformat(last) >= FULL_EVERY
    if due:
        root.checkpoints.put("reconcile", "last-full", now.isoformat())
        return "full"
    return "delta"


# ---------------------------------------------------------------------------------------------- functions


@bp.function_name("reconcile_start")
@bp.route(route="reconcile", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def reconcile_start(req: func.HttpRequest) -> func.HttpResponse:
    body = bounded_body(req, MAX_RECONCILE_BODY)
    if isinstance(body, func.HttpResponse):
        return body
    root = bootstrap.current()
    try:
        mailboxes, mode, dry_run, force = parse_request(body, root.mailboxes)
        job = start_job(root, mailboxes, mode, dry_run=dry_run, force=force)
    except BadRequest as exc:
        return json_response({"error": str(exc)}, 400)
    except Exception as exc:
        return http_response(exc)
    location = f"/api/reconcile/{job.id}"
    return json_response({"id": job.id, "status": location, "mailboxes": len(mailboxes), "mode": mode,
                          "dryRun": dry_run, "force": force}, 202, {"Location": location})


@bp.function_name("reconcile_status")
@bp.route(route="reconcile/{job}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def reconcile_status(req: func.HttpRequest) -> func.HttpResponse:
    job_id = req.route_params.get("job", "")
    if not job_id or len(job_id) > 64 or not job_id.isalnum():
        return json_response({"error": "unknown job"}, 404)
    try:
        job = bootstrap.current().jobs.get(job_id)
    except Exception as exc:
        return http_response(exc)
    if job is None:
        return json_response({"error": "unknown job"}, 404)
    return json_response(job_json(job))


@bp.function_name("reconcile_timer")
@bp.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False)
def reconcile_timer(timer: func.TimerRequest) -> None:
    root = bootstrap.current()
    if not root.mailboxes:
        logger.info("scheduled reconcile: no mailboxes in scope")
        return
    start_job(root, list(root.mailboxes), timer_mode(root, datetime.now(UTC)), origin="timer")


@bp.function_name("mailbox_reconciler")
@bp.queue_trigger(arg_name="msg", queue_name="reconcile", connection="AzureWebJobsStorage")
def mailbox_reconciler(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode("utf-8", "replace")
    run_mailbox(bootstrap.current(), body, dequeue_count=int(getattr(msg, "dequeue_count", 1) or 1),
                message_id=msg.id)
