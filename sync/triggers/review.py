"""The review inbox over HTTP (function key): list the items, record a person's decision.

Functions:
    review_list      GET /api/review ``?mailbox=&state=open|decided|all&limit=&offset=&fields=true|false``: the
                     items, each with its record and candidates side by side (their synced fields, read live: shown
                     only to key holders, never logged nor stored); ``next`` is the offset of the next page
    review_decide    POST /api/review/{id} ``{"decision": "link"|"create"|"separate"|"ignore", "candidates"?: [id]}``
                     -> 202: the decision is stored, audited with the key that made it, and the record's hint queued
                     so the worker applies it in seconds; 400 for a decision that does not fit, 404 for an unknown
                     item, 409 when the record is gone (the item is closed)

The Python worker does not see which function key the host accepted (the host's ``keyid`` claim is not passed to
it), so the key is named by a digest of its value: ``key:<12 hex>``. ``docs/operations.md`` shows how to map it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.ports import AuditEntry, ContactChange, ReviewItem, SideRecord
from sync.review import BadDecision, decide
from sync.triggers.errors import http_response, json_response
from sync.triggers.http import BadJson, bounded_body, load_json

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

MAX_DECISION_BODY = 16 * 1024
PAGE, MAX_PAGE = 50, 200


def key_name(req: func.HttpRequest) -> str:
    """Who made a decision: a digest of the function key the request carried (never the key itself)."""
    key = req.headers.get("x-functions-key") or req.params.get("code") or ""
    return f"key:{hashlib.sha256(key.encode()).hexdigest()[:12]}" if key else "key:none"


def _fields(root: bootstrap.Root, mailbox: str, record: SideRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: record.contact.get(k) for k in root.engine.scope(mailbox).keys}


def item_json(root: bootstrap.Root, item: ReviewItem, *, values: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": item.id, "mailbox": item.mailbox, "side": item.side.value, "recordId": item.record_id,
        "reason": item.reason, "state": "open" if item.open else "decided", "decision": item.decision,
        "chosen": list(item.chosen), "decidedBy": item.decided_by,
        "decidedAt": item.decided_at.isoformat() if item.decided_at else None,
        "firstSeen": item.first_seen.isoformat(), "lastSeen": item.last_seen.isoformat(),
        "candidates": [{"id": c, "side": item.side.other.value} for c in item.candidate_ids],
    }
    if values:
        sides = root.engine.sides
        record = sides[item.side].get(item.mailbox, item.record_id)
        doc["record"] = {"id": item.record_id, "side": item.side.value, "fields": _fields(root, item.mailbox, record)}
        for cand in doc["candidates"]:
            found = sides[item.side.other].get(item.mailbox, cand["id"])
            cand["fields"] = _fields(root, item.mailbox, found)
            cand["owner"] = found.owner if found is not None else None
            cand["linked"] = root.links.get(item.mailbox, item.side.other, cand["id"]) is not None
    return doc


def list_items(root: bootstrap.Root, params: Any) -> dict[str, Any]:
    mailbox = (params.get("mailbox") or "").strip().casefold() or None
    state = params.get("state") or "open"
    if state not in ("open", "decided", "all"):
        raise BadDecision("state must be open, decided or all")
    try:
        limit = min(max(int(params.get("limit") or PAGE), 1), MAX_PAGE)
        offset = max(int(params.get("offset") or 0), 0)
    except ValueError:
        raise BadDecision("limit and offset must be whole numbers") from None
    items = [i for i in root.reviews.items(mailbox)
             if state == "all" or (i.open if state == "open" else not i.open)]
    page = items[offset:offset + limit]
    values = (params.get("fields") or "true").lower() != "false"
    return {"total": len(items), "offset": offset, "next": offset + limit if offset + limit < len(items) else None,
            "items": [item_json(root, i, values=values) for i in page]}


def record_decision(root: bootstrap.Root, item_id: str, body: bytes, by: str) -> tuple[int, dict[str, Any]]:
    try:
        doc = load_json(body or b"{}")
    except BadJson as exc:
        return 400, {"error": str(exc)}
    if not isinstance(doc, dict) or set(doc) - {"decision", "candidates"}:
        return 400, {"error": "body must be {\"decision\": ..., \"candidates\"?: [ids]}"}
    chosen = doc.get("candidates") or []
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        return 400, {"error": "candidates must be a list of ids"}
    item = root.reviews.by_id(item_id)
    if item is None:
        return 404, {"error": "unknown review item"}
    record = root.engine.sides[item.side].get(item.mailbox, item.record_id)
    if record is None:
        root.reviews.delete(item)
        return 409, {"error": "the contact is gone: the item is closed"}
    now = root.engine.clock()
    try:
        decided = decide(item, str(doc.get("decision")), chosen, by, record, root.engine.scope(item.mailbox).keys, now)
    except BadDecision as exc:
        return 400, {"error": str(exc)}
    root.reviews.put(decided)
    m365_id, sf_id = (item.record_id, None) if item.side.value == "m365" else (None, item.record_id)
    root.audit.write([AuditEntry(at=now, mailbox=item.mailbox, m365_id=m365_id, sf_id=sf_id, action="decision",
                                 reason=f"review decision {decided.decision} ({', '.join(decided.chosen) or '-'}) "
                                        f"by {by}", rule=decided.decision)])
    root.work_queue.send(ContactChange(source=item.side, item_id=item.record_id,
                                       mailbox=item.mailbox if m365_id else None))
    logger.info("review item %s decided (%s) by %s", item.id, decided.decision, by)
    return 202, {"id": item.id, "decision": decided.decision, "chosen": list(decided.chosen), "decidedBy": by}


@bp.function_name("review_list")
@bp.route(route="review", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def review_list(req: func.HttpRequest) -> func.HttpResponse:
    try:
        return json_response(list_items(bootstrap.current(), req.params))
    except BadDecision as exc:
        return json_response({"error": str(exc)}, 400)
    except Exception as exc:
        return http_response(exc)


@bp.function_name("review_decide")
@bp.route(route="review/{id}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def review_decide(req: func.HttpRequest) -> func.HttpResponse:
    item_id = req.route_params.get("id", "")
    if not item_id or len(item_id) > 64 or not item_id.isalnum():
        return json_response({"error": "unknown review item"}, 404)
    body = bounded_body(req, MAX_DECISION_BODY)
    if isinstance(body, func.HttpResponse):
        return body
    try:
        status, doc = record_decision(bootstrap.current(), item_id, body, key_name(req))
    except Exception as exc:
        return http_response(exc)
    return json_response(doc, status)
