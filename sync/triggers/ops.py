"""Operations over HTTP (function key), what the ops CLI (``python -m opscli``) talks to.

Functions:
    ops_jobs            GET /api/ops/jobs ``?limit=``: the newest reconcile jobs (any origin), shaped as
                        GET /api/reconcile/{job} answers
    ops_poison_list     GET /api/ops/poison/{queue}: the first 32 messages of ``<queue>-poison`` (queue:
                        ``contact-changes`` or ``reconcile``), each with its id, reason and error
    ops_poison_act      POST /api/ops/poison/{queue}/{id} ``{"action": "requeue"|"discard"}``: send the original
                        message back to its queue, or drop it; 404 when the message is not among the first 32
    ops_subscriptions   POST /api/ops/subscriptions ``{"action": "refresh"|"remove", "mailboxes"?: [...]}``: the
                        subscriptions timer's work now, or delete the Graph subscriptions of the mailboxes (all
                        stored ones by default: an uninstall need not wait for the timer)
Poison messages hold hints (ids) and reasons (error types and ids), no contact data.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.ports import ContactChange, ReconcileMailbox
from sync.subscriptions import maintain_subscriptions, remove_subscriptions
from sync.triggers.errors import http_response, json_response
from sync.triggers.http import BadJson, bounded_body, load_json
from sync.triggers.reconcile import job_json

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

QUEUES = (bootstrap.CONTACT_QUEUE, bootstrap.RECONCILE_QUEUE)
MAX_BODY = 16 * 1024


def _body(req: func.HttpRequest) -> dict[str, Any] | func.HttpResponse:
    raw = bounded_body(req, MAX_BODY)
    if isinstance(raw, func.HttpResponse):
        return raw
    try:
        doc = load_json(raw or b"{}")
    except BadJson as exc:
        return json_response({"error": str(exc)}, 400)
    return doc if isinstance(doc, dict) else json_response({"error": "body must be a JSON object"}, 400)


def poison_list(root: bootstrap.Root, queue: str) -> dict[str, Any]:
    out = []
    for msg in root.poison_queue(queue).peek(32):
        try:
            doc = json.loads(msg.text)
        except ValueError:
            doc = {}
        out.append({"id": msg.id, "at": doc.get("at") or (msg.inserted_on.isoformat() if msg.inserted_on else None),
                    "reason": doc.get("reason"), "error": doc.get("error"), "dequeueCount": doc.get("dequeueCount"),
                    "message": doc.get("message")})
    return {"queue": queue, "depth": root.poison_queue(queue).depth(), "messages": out}


def poison_act(root: bootstrap.Root, queue: str, message_id: str, action: str) -> tuple[int, dict[str, Any]]:
    if action not in ("requeue", "discard"):
        return 400, {"error": "action must be requeue or discard"}
    text = root.poison_queue(queue).take(message_id)
    if text is None:
        return 404, {"error": "no such poison message among the first 32"}
    if action == "requeue":
        message = json.loads(text).get("message")
        kind = ReconcileMailbox if queue == bootstrap.RECONCILE_QUEUE else ContactChange
        try:
            item = kind.model_validate(message)
        except ValueError:
            root.poison_queue(queue).send_text(text)  # not a message the queue can take: put it back
            return 409, {"error": "the poisoned message is not a valid message for its queue; kept"}
        (root.reconcile_queue if queue == bootstrap.RECONCILE_QUEUE else root.contact_queue).send(item)
    logger.info("poison message %s of %s: %s", message_id, queue, action)
    return 200, {"id": message_id, "queue": queue, "action": action}


@bp.function_name("ops_jobs")
@bp.route(route="ops/jobs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def ops_jobs(req: func.HttpRequest) -> func.HttpResponse:
    try:
        limit = min(max(int(req.params.get("limit") or 20), 1), 100)
    except ValueError:
        return json_response({"error": "limit must be a whole number"}, 400)
    try:
        return json_response({"jobs": [job_json(j) for j in bootstrap.current().jobs.recent(limit)]})
    except Exception as exc:
        return http_response(exc)


@bp.function_name("ops_poison_list")
@bp.route(route="ops/poison/{queue}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_list(req: func.HttpRequest) -> func.HttpResponse:
    queue = req.route_params.get("queue", "")
    if queue not in QUEUES:
        return json_response({"error": f"queue must be one of: {', '.join(QUEUES)}"}, 404)
    try:
        return json_response(poison_list(bootstrap.current(), queue))
    except Exception as exc:
        return http_response(exc)


@bp.function_name("ops_poison_act")
@bp.route(route="ops/poison/{queue}/{id}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def ops_poison_act(req: func.HttpRequest) -> func.HttpResponse:
    queue, message_id = req.route_params.get("queue", ""), req.route_params.get("id", "")
    if queue not in QUEUES or not message_id or len(message_id) > 64:
        return json_response({"error": "unknown queue or message"}, 404)
    doc = _body(req)
    if isinstance(doc, func.HttpResponse):
        return doc
    try:
        status, out = poison_act(bootstrap.current(), queue, message_id, str(doc.get("action")))
    except Exception as exc:
        return http_response(exc)
    return json_response(out, status)


@bp.function_name("ops_subscriptions")
@bp.route(route="ops/subscriptions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def ops_subscriptions(req: func.HttpRequest) -> func.HttpResponse:
    doc = _body(req)
    if isinstance(doc, func.HttpResponse):
        return doc
    action, mailboxes = doc.get("action"), doc.get("mailboxes")
    if action not in ("refresh", "remove") or set(doc) - {"action", "mailboxes"}:
        return json_response({"error": "body must be {\"action\": \"refresh\"|\"remove\", \"mailboxes\"?: [...]}"},
                             400)
    if mailboxes is not None and not (isinstance(mailboxes, list) and all(isinstance(m, str) for m in mailboxes)):
        return json_response({"error": "mailboxes must be a list of mailbox addresses"}, 400)
    root = bootstrap.current()
    try:
        if action == "refresh":
            counts = maintain_subscriptions(root)
        else:
            chosen = mailboxes if mailboxes is not None else sorted({s.mailbox for s in root.subscriptions.list_all()})
            counts = remove_subscriptions(root, chosen)
    except Exception as exc:
        return http_response(exc)
    out: dict[str, Any] = {"action": action, "counts": dict(counts)}
    if action == "refresh":
        out["scope"] = dict(root.mailbox_list.state())  # the mailbox group's last read (sync/scope.py)
    return json_response(out)
