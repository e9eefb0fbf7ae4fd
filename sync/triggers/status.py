"""The status page: GET /api/status (function key). HTML, or JSON with ``Accept: application/json``.

Per mailbox in scope: last sync (newest applied audit row), lag (now - last sync), the Graph subscription's id and
expiry, failures and pending review items among the recent audit rows, and those recent rows themselves as ids,
actions, outcomes and field names. Never contact names, emails, phones or the audit reasons (which may quote them).
Above them, ``salesforce``: whether the OAuth setup works (a wrong token host or audience is shown here as the
setting to fix, docs/configuration.md), from a cached token or one token request.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.config import ConfigError
from sync.errors import SyncError
from sync.ports import StoredSubscription
from sync.triggers.errors import http_response, json_response

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

RECENT = 50
SHOWN = 10


def collect(root: bootstrap.Root, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    subs: dict[str, StoredSubscription] = {}
    for stored in root.subscriptions.list_all():
        if stored.mailbox not in subs or stored.expires_at > subs[stored.mailbox].expires_at:
            subs[stored.mailbox] = stored
    out = []
    for mailbox in root.mailboxes:
        entries = root.audit.recent(mailbox, RECENT)
        applied = [e.at for e in entries if e.outcome == "applied"]
        last = max(applied) if applied else None
        sub = subs.get(mailbox)
        out.append({
            "mailbox": mailbox,
            "lastSync": last.isoformat() if last else None,
            "lagSeconds": round((now - last).total_seconds()) if last else None,
            "subscription": {"id": sub.id, "expires": sub.expires_at.isoformat()} if sub else None,
            "errors": sum(e.outcome == "failed" for e in entries),
            "pendingReview": sum(e.outcome == "review" for e in entries),
            "recent": [
                {"at": e.at.isoformat(), "action": e.action, "outcome": e.outcome, "m365Id": e.m365_id,
                 "sfId": e.sf_id, "fields": list(e.fields), "rule": e.rule, "error": (e.error or "").split(":")[0]
                 or None}
                for e in entries[:SHOWN]
            ],
        })
    return {"generated": now.isoformat(), "salesforce": salesforce_auth(root), "mailboxes": out}


def salesforce_auth(root: bootstrap.Root) -> dict[str, Any]:
    """``{"ok", "flow", "error"}``: the settings' problem or the token endpoint's refusal, never a secret."""
    try:
        tokens = root.tokens
    except ConfigError as exc:
        return {"ok": False, "flow": None, "error": str(exc)}
    try:
        tokens.token()
    except SyncError as exc:
        return {"ok": False, "flow": tokens.flow, "error": str(exc)}
    return {"ok": True, "flow": tokens.flow, "error": None}


def render_html(doc: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for mb in doc["mailboxes"]:
        sub = mb["subscription"]
        rows.append(
            f"<tr><td>{e(mb['mailbox'])}</td><td>{e(str(mb['lastSync'] or '-'))}</td>"
            f"<td>{e(str(mb['lagSeconds'] if mb['lagSeconds'] is not None else '-'))}</td>"
            f"<td>{e(sub['id'] if sub else '-')}</td><td>{e(sub['expires'] if sub else '-')}</td>"
            f"<td>{mb['errors']}</td><td>{mb['pendingReview']}</td></tr>"
        )
    audit = []
    for mb in doc["mailboxes"]:
        for r in mb["recent"]:
            audit.append(
                f"<tr><td>{e(mb['mailbox'])}</td><td>{e(r['at'])}</td><td>{e(r['action'])}</td>"
                f"<td>{e(r['outcome'])}</td><td>{e(r['m365Id'] or '')}</td><td>{e(r['sfId'] or '')}</td>"
                f"<td>{e(', '.join(r['fields']))}</td><td>{e(r['error'] or '')}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Contact sync status</title></head><body>"
        f"<h1>Contact sync status</h1><p>generated {e(doc['generated'])}</p>"
        f"<p>Salesforce sign-in: {'ok' if doc['salesforce']['ok'] else 'FAILED: ' + e(doc['salesforce']['error'])}</p>"
        "<h2>Mailboxes</h2><table border='1'><tr><th>mailbox</th><th>last sync</th><th>lag (s)</th>"
        "<th>subscription</th><th>expires</th><th>errors</th><th>pending review</th></tr>"
        + "".join(rows) + "</table><h2>Recent audit rows</h2><table border='1'><tr><th>mailbox</th><th>at</th>"
        "<th>action</th><th>outcome</th><th>Outlook id</th><th>Salesforce id</th><th>fields</th><th>error</th></tr>"
        + "".join(audit) + "</table></body></html>"
    )


@bp.function_name("status_page")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    try:
        doc = collect(bootstrap.current())
    except Exception as exc:
        return http_response(exc)
    if "application/json" in (req.headers.get("accept") or "").lower():  # media types ignore case (RFC 9110 §8.3.1)
        return json_response(doc)
    return func.HttpResponse(render_html(doc), status_code=200, mimetype="text/html", charset="utf-8")
