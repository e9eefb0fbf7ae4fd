"""The status page: GET /api/status (function key). HTML; JSON with ``?format=json`` or ``Accept: application/json``.

An overall verdict (healthy / degraded / failing, with its reasons), then per mailbox: subscription expiry, last
delta pass and its result, last reconcile, real lag (age of the oldest hint still queued for it), failures not
recovered within the hour, open review items, circuit-breaker refusals, recent audit rows; then the CDC stream, queue
and poison depths, recent jobs and config errors. Ids, counts, times and error *codes* only: no names, emails, phones
or audit reasons. Every string is escaped (error codes come from Salesforce and can hold markup); the page has no
script and no external asset, a Content-Security-Policy allowing only its own hashed style, and ``nosniff``.

Extension point: append a function to ``MAILBOX_BLOCKS``; it gets ``(root, mailbox, now)`` and returns
``{"title": str, "rows": [[label, value], ...]}`` (or None) that the JSON carries in the mailbox's ``blocks`` and the
page shows as a small table under the mailbox rows.

``salesforce``: whether the OAuth setup works (a wrong token host or audience is shown as the setting to fix,
docs/configuration.md), from a cached token or one token request.

The ``subscriptions`` block (JSON key, and its own table): per mailbox the Graph subscription id and expiry, the last
notification and the last upkeep error with its cause (e.g. the mailbox is outside the app's Exchange RBAC scope).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func

from sync import bootstrap
from sync.config import ConfigError
from sync.errors import SyncError
from sync.ports import AuditEntry, ContactChange, MailboxJob, ReconcileJob, StoredSubscription
from sync.subscriptions import mailbox_state
from sync.triggers.errors import json_response

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

RECENT, SHOWN, REFRESH_S = 200, 10, 30
LAG_DEGRADED, LAG_FAILING = timedelta(minutes=2), timedelta(minutes=15)
SUB_WARN = timedelta(hours=6)  # the subscriptions timer renews within a day, every 6 h: less left means it did not
REPLAY_WARN = timedelta(hours=60)  # Pub/Sub keeps events 72 h (docs/reference/salesforce.md §4.5)
CDC_CHECKPOINT = ("salesforce", "cdc-replay:/data/ContactChangeEvent")
MailboxBlock = Callable[[bootstrap.Root, str, datetime], dict[str, Any] | None]
MAILBOX_BLOCKS: list[MailboxBlock] = []


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _section(doc: dict[str, Any], name: str, build: Callable[[], Any]) -> None:
    """Fill one part of the page; a part that cannot be read says so instead of failing the page."""
    try:
        doc[name] = build()
    except Exception as exc:
        logger.warning("status page: %s unavailable: %s", name, type(exc).__name__)
        doc[name] = None
        doc["unavailable"].append(f"{name}: {type(exc).__name__}")


def _unrecovered(entries: list[AuditEntry], now: datetime) -> list[dict[str, Any]]:
    """Failures of the last hour with no later applied row for the same contact (a retried race recovered)."""
    later: set[str | None] = set()
    out = []
    for e in entries:  # newest first
        ids = {e.m365_id, e.sf_id} - {None}
        if e.outcome == "applied":
            later |= ids
        elif e.outcome == "failed" and now - e.at <= timedelta(hours=1) and not ids & later:
            out.append({"at": e.at.isoformat(), "action": e.action, "m365Id": e.m365_id, "sfId": e.sf_id,
                        "error": (e.error or "").split(":")[0] or None})
    return out


def _hint_ages(root: bootstrap.Root, now: datetime) -> dict[str | None, float]:
    """Per mailbox named by a queued hint (None: Salesforce hints, which name none), the oldest one's age (s)."""
    ages: dict[str | None, float] = {}
    for msg in root.contact_queue.peek(32):
        try:
            mailbox = ContactChange.model_validate_json(msg.text).mailbox
        except ValueError:
            continue
        age = (now - msg.inserted_on).total_seconds() if msg.inserted_on else 0.0
        ages[mailbox] = max(ages.get(mailbox, 0.0), age)
    return ages


def _job_row(job: ReconcileJob, state: MailboxJob) -> dict[str, Any]:
    return {"job": job.id, "origin": job.origin, "mode": job.mode, "ran": state.ran, "state": state.state,
            "at": _iso(state.finished_at or state.started_at or job.created), "errors": len(state.errors)}


def _mailbox(root: bootstrap.Root, mailbox: str, sub: StoredSubscription | None, jobs: list[ReconcileJob],
             ages: dict[str | None, float], now: datetime) -> dict[str, Any]:
    entries = root.audit.recent(mailbox, RECENT)
    applied = [e.at for e in entries if e.outcome == "applied"]
    mine = [(j, j.mailboxes[mailbox]) for j in jobs if mailbox in j.mailboxes]
    delta = next(((j, s) for j, s in mine if (s.ran or j.mode) == "delta" and s.state != "queued"), None)
    day = now - timedelta(days=1)
    lag = max(ages.get(mailbox, 0.0), ages.get(None, 0.0))
    return {
        "mailbox": mailbox,
        "subscription": {"id": sub.id, "expires": sub.expires_at.isoformat(),
                         "hoursLeft": round((sub.expires_at - now).total_seconds() / 3600, 1)} if sub else None,
        "lastDelta": _job_row(*delta) if delta else None,
        "lastReconcile": _job_row(*mine[0]) if mine else None,
        "lagSeconds": round(lag),
        "lastSync": _iso(max(applied)) if applied else None,
        "failures": _unrecovered(entries, now),
        "openReview": sum(1 for i in root.reviews.items(mailbox) if i.open),
        "refusals": sum(1 for j, s in mine if s.state == "refused" and j.created >= day),
        "blocks": [b for b in (block(root, mailbox, now) for block in MAILBOX_BLOCKS) if b],
        "recent": [
            {"at": e.at.isoformat(), "action": e.action, "outcome": e.outcome, "m365Id": e.m365_id, "sfId": e.sf_id,
             "fields": list(e.fields), "rule": e.rule, "error": (e.error or "").split(":")[0] or None}
            for e in entries[:SHOWN]
        ],
    }


def _cdc(root: bootstrap.Root, now: datetime) -> dict[str, Any]:
    scope, name = CDC_CHECKPOINT
    saved, event = root.checkpoints.get(scope, f"{name}:saved"), root.checkpoints.get(scope, f"{name}:event")
    age = (now - datetime.fromisoformat(saved)).total_seconds() if saved else None
    return {"hasReplayId": root.checkpoints.get(scope, name) is not None, "lastEvent": event, "replaySaved": saved,
            "replayAgeSeconds": round(age) if age is not None else None}


def _queues(root: bootstrap.Root, ages: dict[str | None, float]) -> dict[str, Any]:
    return {
        bootstrap.CONTACT_QUEUE: {"depth": root.contact_queue.depth(), "oldestSeconds": round(max(ages.values(),
                                                                                                 default=0.0)),
                                  "poison": root.poison_queue(bootstrap.CONTACT_QUEUE).depth()},
        bootstrap.RECONCILE_QUEUE: {"depth": root.reconcile_queue.depth(), "oldestSeconds": None,
                                    "poison": root.poison_queue(bootstrap.RECONCILE_QUEUE).depth()},
    }


def missing_settings(root: bootstrap.Root) -> list[str]:
    """Settings without which one side cannot work (e.g. SF_CLIENT_ID before the second deployment)."""
    required = ["SF_CLIENT_ID"]
    if (root.get("GRAPH_CREDENTIAL") or "managed_identity") != "static":  # static: the local Graph emulator
        required.append("GRAPH_CLIENT_ID")
    if (root.get("SF_AUTH_FLOW") or "jwt_bearer") == "jwt_bearer":
        required.append("SF_USERNAME")
    return [f"{name} is not set" for name in required if not root.get(name)]


def collect(root: bootstrap.Root, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    doc: dict[str, Any] = {"generated": now.isoformat(), "unavailable": [], "config": {"errors": []},
                           "mailboxes": []}
    doc["config"]["errors"] = missing_settings(root)
    doc["config"]["errors"] += _problems(root)
    doc["salesforce"] = salesforce_auth(root)
    try:
        _ = root.policy
        mailboxes = list(root.mailboxes)
    except Exception as exc:  # a ConfigError lists every bad setting at once
        doc["config"]["errors"] += [line.strip(" -") for line in str(exc).splitlines()[1:] or [str(exc)]]
        doc["verdict"] = verdict(doc, now)
        return doc
    subs: dict[str, StoredSubscription] = {}
    _section(doc, "subscriptions", root.subscriptions.list_all)
    for stored in doc.pop("subscriptions") or []:
        if stored.mailbox not in subs or stored.expires_at > subs[stored.mailbox].expires_at:
            subs[stored.mailbox] = stored
    _section(doc, "jobList", lambda: root.jobs.recent(20))
    jobs: list[ReconcileJob] = doc.pop("jobList") or []
    _section(doc, "ages", lambda: _hint_ages(root, now))
    ages = doc.pop("ages") or {}
    _section(doc, "mailboxes", lambda: [_mailbox(root, m, subs.get(m), jobs, ages, now) for m in mailboxes])
    doc["mailboxes"] = doc["mailboxes"] or []
    _section(doc, "cdc", lambda: _cdc(root, now))
    _section(doc, "queues", lambda: _queues(root, ages))
    from sync.triggers.reconcile import job_json

    doc["jobs"] = [{k: v for k, v in job_json(j).items() if k != "mailboxes"} for j in jobs[:SHOWN]]
    _section(doc, "subscriptions", lambda: subscription_block(root, subs))
    doc["subscriptions"] = doc["subscriptions"] or []
    _section(doc, "scope", lambda: scope_block(root, doc["subscriptions"]))
    doc["verdict"] = verdict(doc, now)
    return doc


def subscription_block(root: bootstrap.Root, subs: dict[str, StoredSubscription]) -> list[dict[str, Any]]:
    """Per mailbox: subscription id, expiry, last notification, last upkeep error (ids and codes only)."""
    rows = []
    for mailbox in root.mailboxes:
        sub = subs.get(mailbox)
        rows.append({"mailbox": mailbox, "id": sub.id if sub else None,
                     "expires": sub.expires_at.isoformat() if sub else None,
                     **mailbox_state(root.checkpoints, mailbox)})
    return rows


def scope_block(root: bootstrap.Root, subscriptions: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the mailbox scope comes from (SYNC_MAILBOXES, the group, both), the last group read and its error,
    and the mailboxes Exchange refuses (ErrorAccessDenied): with a group, most likely members through a nested group,
    which a ``MemberOfGroup`` management scope does not include (docs/admin-guide.md section 4)."""
    out = dict(root.mailbox_list.state())
    out["refusedByExchange"] = [row["mailbox"] for row in subscriptions if "ErrorAccessDenied" in str(row.get(
        "lastError") or "")]
    return out


def salesforce_auth(root: bootstrap.Root) -> dict[str, Any]:
    """``{"ok", "flow", "error"}``: the settings' problem or the token endpoint's refusal, never a secret. ``ok`` is
    None (not checked) while a credential setting is still missing: the first deployment has none yet."""
    try:
        tokens = root.tokens
    except ConfigError as exc:
        return {"ok": None if " is required" in str(exc) else False, "flow": None, "error": str(exc)}
    try:
        tokens.token()
    except SyncError as exc:
        return {"ok": False, "flow": tokens.flow, "error": str(exc)}
    return {"ok": True, "flow": tokens.flow, "error": None}


def _problems(root: bootstrap.Root) -> list[str]:
    """Set-up problems a side found on its own (the Salesforce marker field, from Contact's describe): the setting
    and what is wrong, never a value."""
    try:
        check = getattr(root.salesforce, "check", None)
        problem = check() if callable(check) else None
    except ConfigError:  # settings missing or invalid: already listed by missing_settings / the policy
        return []
    except Exception as exc:  # noqa: BLE001 - the page must render; the error is shown, not raised
        problem = f"Salesforce: {type(exc).__name__}"
    return [problem] if isinstance(problem, str) and problem else []


def verdict(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    """failing / degraded / healthy, with the reasons (most serious first)."""
    failing: list[str] = [f"config error: {e}" for e in doc["config"]["errors"]]
    degraded: list[str] = [f"could not read {u}" for u in doc["unavailable"]]
    sign_in = doc.get("salesforce") or {}
    if sign_in and sign_in.get("ok") is False:
        failing.append(f"Salesforce sign-in failed: {sign_in.get('error')}")
    for mb in doc.get("mailboxes") or []:
        name, sub = mb["mailbox"], mb["subscription"]
        if sub is None or sub["hoursLeft"] <= 0:
            failing.append(f"{name}: no live Graph subscription (Outlook changes are not heard)")
        elif sub["hoursLeft"] * 3600 < SUB_WARN.total_seconds():
            degraded.append(f"{name}: subscription expires in {sub['hoursLeft']} h")
        if mb["lagSeconds"] >= LAG_FAILING.total_seconds():
            failing.append(f"{name}: oldest change waiting {mb['lagSeconds']} s")
        elif mb["lagSeconds"] >= LAG_DEGRADED.total_seconds():
            degraded.append(f"{name}: oldest change waiting {mb['lagSeconds']} s")
        if mb["failures"]:
            degraded.append(f"{name}: {len(mb['failures'])} failure(s) not recovered in the last hour")
        if mb["refusals"]:
            degraded.append(f"{name}: circuit breaker refused {mb['refusals']} reconcile(s) today")
    scope = doc.get("scope") or {}
    if scope.get("lastError"):
        degraded.append(f"mailbox group: the last read failed at {scope.get('lastErrorAt')} ({scope['lastError']}); "
                        f"the last list ({scope.get('members')} members, read {scope.get('readAt')}) is kept")
    if scope.get("refusedByExchange") and scope.get("groupId"):
        degraded.append(f"{len(scope['refusedByExchange'])} mailbox(es) refused by Exchange (ErrorAccessDenied): "
                        "members through a nested group are outside a MemberOfGroup management scope")
    for queue, q in (doc.get("queues") or {}).items():
        if q["poison"]:
            degraded.append(f"{queue}: {q['poison']} message(s) in the poison queue")
    cdc = doc.get("cdc") or {}
    if cdc.get("replayAgeSeconds") is not None and cdc["replayAgeSeconds"] >= REPLAY_WARN.total_seconds():
        degraded.append("CDC: replay id older than 60 h (events are kept 72 h)")
    state = "failing" if failing else "degraded" if degraded else "healthy"
    return {"state": state, "reasons": failing + degraded}


# ---------------------------------------------------------------------------------------------- HTML

STYLE = (
    "body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1240px;padding:16px;color:#1b1b1b}"
    "h1{font-size:1.5em;margin:0 0 8px}h2{font-size:1.15em;margin:24px 0 8px}"
    ".verdict{padding:12px 16px;border-radius:6px;border-left:8px solid;font-size:1.1em}"
    ".healthy{background:#e7f5ea;border-color:#1e7b34}.degraded{background:#fff4dc;border-color:#a86400}"
    ".failing{background:#fde8e8;border-color:#b3261e}"
    "table{border-collapse:collapse;width:100%;table-layout:fixed;margin-bottom:8px}"
    "th,td{border:1px solid #c9c9c9;padding:4px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}"
    "th{background:#f1f1f1}caption{text-align:left;font-weight:600;padding:4px 0}"
    "small{color:#555}table.mailboxes th:first-child,table.audit th:nth-child(5){width:18%}"
    "table.mailboxes th:nth-child(n+5){width:8%}table.audit th:nth-child(-n+2){width:14%}"
)
CSP = ("default-src 'none'; style-src 'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
       + "'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Referrer-Policy": "no-referrer"}


def _e(value: object) -> str:
    return html.escape("-" if value is None or value == "" else str(value), quote=True)


def _table(caption: str, head: list[str], rows: list[list[object]], *, kind: str = "") -> str:
    th = "".join(f"<th scope='col'>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) or (
        f"<tr><td colspan='{len(head)}'>none</td></tr>")
    cls = f" class='{kind}'" if kind else ""
    return f"<table{cls}><caption>{_e(caption)}</caption><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _mailbox_rows(doc: dict[str, Any]) -> list[list[object]]:
    rows = []
    for mb in doc["mailboxes"]:
        sub, delta, last = mb["subscription"], mb["lastDelta"], mb["lastReconcile"]
        rows.append([
            mb["mailbox"], f"{sub['expires']} ({sub['hoursLeft']} h)" if sub else "none",
            f"{delta['at']}: {delta['state']}" if delta else None,
            f"{last['at']}: {last['ran'] or last['mode']} {last['state']} ({last['origin']})" if last else None,
            mb["lagSeconds"], len(mb["failures"]), mb["openReview"], mb["refusals"]])
    return rows


def _sign_in_line(sign_in: dict[str, Any] | None) -> str:
    if not sign_in:
        return ""
    ok = sign_in.get("ok")
    state = "ok" if ok else ("not checked: " if ok is None else "FAILED: ") + _e(sign_in.get("error"))
    return f"<p>Salesforce sign-in: {state}</p>"


def _scope_line(scope: dict[str, Any] | None) -> str:
    if not scope:
        return ""
    text = {"list": "SYNC_MAILBOXES", "group": "the Entra group", "list+group": "SYNC_MAILBOXES and the Entra group"}
    line = f"Mailbox scope: {_e(text.get(str(scope.get('source')), scope.get('source')))}"
    if scope.get("groupId"):
        line += (f" {_e(scope['groupId'])}, {_e(scope.get('members'))} member(s), read {_e(scope.get('readAt'))}")
        if scope.get("lastError"):
            line += f"; last read FAILED at {_e(scope.get('lastErrorAt'))}: {_e(scope['lastError'])}"
    refused = scope.get("refusedByExchange") or []
    if refused:
        line += (f"; refused by Exchange (ErrorAccessDenied, a nested member?): {_e(', '.join(refused))}")
    return f"<p>{line}</p>"


def render_html(doc: dict[str, Any]) -> str:
    v = doc["verdict"]
    reasons = "".join(f"<li>{_e(r)}</li>" for r in v["reasons"])
    parts = [
        f"<p class='verdict {_e(v['state'])}' role='status'><strong>{_e(v['state'].upper())}</strong>"
        f"{' — ' + _e(v['reasons'][0]) if v['reasons'] else ' — every check passed'}</p>",
        f"<ul>{reasons}</ul>" if len(v["reasons"]) > 1 else "",
        _sign_in_line(doc.get("salesforce")),
        _scope_line(doc.get("scope")),
        "<h2>Mailboxes</h2>",
        _table("Per mailbox", ["mailbox", "subscription expires", "last delta pass", "last reconcile", "lag (s)",
                               "failures (1 h)", "open review", "breaker refusals"], _mailbox_rows(doc),
               kind="mailboxes"),
    ]
    for mb in doc["mailboxes"]:
        for block in mb["blocks"]:
            parts.append(_table(f"{mb['mailbox']}: {block['title']}", ["", ""], [list(r) for r in block["rows"]]))
        if mb["failures"]:
            parts.append(_table(f"{mb['mailbox']}: failures not recovered", ["at", "action", "Outlook id",
                                "Salesforce id", "error"], [[f["at"], f["action"], f["m365Id"], f["sfId"], f["error"]]
                                                           for f in mb["failures"]]))
    parts.append(_other_sections(doc))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_S}'><meta name='viewport' content='width=device-width'>"
        f"<title>Contact sync status: {_e(v['state'])}</title><style>{STYLE}</style></head><body><main>"
        f"<h1>Contact sync status</h1><p><small>generated {_e(doc['generated'])}; refreshes every {REFRESH_S} s"
        "</small></p>" + "".join(parts) + "</main></body></html>"
    )


def _other_sections(doc: dict[str, Any]) -> str:
    cdc = doc.get("cdc") or {}
    queues = doc.get("queues") or {}
    audit = [[mb["mailbox"], r["at"], r["action"], r["outcome"], r["m365Id"], r["sfId"], ", ".join(r["fields"]),
              r["error"]] for mb in doc["mailboxes"] for r in mb["recent"]]
    return "".join([
        "<h2>Graph subscriptions</h2>",
        _table("Graph subscriptions", ["mailbox", "subscription", "expires", "last notification", "last error",
                                       "error at"],
               [[r["mailbox"], r["id"], r["expires"], r["lastNotification"], r["lastError"], r["lastErrorAt"]]
                for r in doc.get("subscriptions") or []]),
        "<h2>Salesforce change stream</h2>",
        _table("CDC (Pub/Sub)", ["replay id stored", "last event", "replay id saved", "replay age (s)"],
               [[cdc.get("hasReplayId"), cdc.get("lastEvent"), cdc.get("replaySaved"), cdc.get("replayAgeSeconds")]]),
        "<h2>Queues</h2>",
        _table("Queue and poison depths", ["queue", "depth", "oldest visible (s)", "poison"],
               [[n, q["depth"], q["oldestSeconds"], q["poison"]] for n, q in queues.items()]),
        "<h2>Recent jobs</h2>",
        _table("Reconcile jobs", ["created", "origin", "mode", "ran", "state", "progress", "dry run"],
               [[j["created"], j["origin"], j["mode"], j["ran"], j["state"],
                 f"{j['progress']['done']}/{j['progress']['total']}", j["dryRun"]] for j in doc.get("jobs") or []]),
        "<h2>Configuration</h2>",
        _table("Config errors", ["error"], [[e] for e in doc["config"]["errors"]]),
        "<h2>Recent audit rows</h2>",
        _table("Newest audit rows per mailbox (ids only)", ["mailbox", "at", "action", "outcome", "Outlook id",
                                                            "Salesforce id", "fields", "error"], audit,
               kind="audit"),
    ])


def wants_json(req: func.HttpRequest) -> bool:
    if (req.params.get("format") or "").lower() == "json":
        return True
    return "application/json" in (req.headers.get("accept") or "").lower()  # media types ignore case (RFC 9110)


@bp.function_name("status_page")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    doc = collect(bootstrap.current())
    if wants_json(req):
        return json_response(doc, 200, {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
    return func.HttpResponse(render_html(doc), status_code=200, mimetype="text/html", charset="utf-8",
                             headers=HEADERS)
