"""The contact worker: one hint from queue ``contact-changes`` -> ``Engine.sync_contact``.

What happens to a message that fails is decided in ``sync.triggers.errors.decide``: retryable errors are raised so
the host retries (after host.json's 10 s visibility timeout, at most ``maxDequeueCount`` = 5 times); the last
attempt and permanent errors (BadData, AuthFailed, NotFound, an unreadable message) complete with an audit row and
a copy with the reason in ``contact-changes-poison``; Throttled re-sends the hint hidden for ``retry_after``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func
from pydantic import ValidationError

from sync import bootstrap
from sync.errors import BadData
from sync.model import Side
from sync.ports import AuditEntry, ContactChange
from sync.triggers.errors import decide
from sync.triggers.queue import settle

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]

UNROUTED = "~unrouted"  # audit partition of hints that name no mailbox


def _audit_for(change: ContactChange | None, reason: str, error: str) -> AuditEntry:
    mailbox = (change.mailbox if change is not None else None) or UNROUTED
    m365_id = change.item_id if change is not None and change.source is Side.M365 else None
    sf_id = change.item_id if change is not None and change.source is Side.SALESFORCE else None
    return AuditEntry(at=datetime.now(UTC), mailbox=mailbox, m365_id=m365_id, sf_id=sf_id, action="poison",
                      reason=reason[:500], outcome="failed", error=error)


def process_contact_message(root: bootstrap.Root, body: str, *, dequeue_count: int = 1,
                            message_id: str | None = None) -> int:
    """Run one hint; returns how many mailbox outcomes it produced. Raises to have the host retry."""
    change: ContactChange | None = None
    try:
        try:
            change = ContactChange.model_validate_json(body)
        except ValidationError as exc:
            raise BadData("unreadable contact-changes message", code="BAD_MESSAGE", side="queue") from exc
        try:
            outcomes = root.engine.sync_contact(change)
        except ValueError as exc:  # e.g. an Outlook hint without its mailbox
            if isinstance(exc, ValidationError) or type(exc) is not ValueError:
                raise
            raise BadData(str(exc), code="BAD_HINT", side="queue", item_id=change.item_id) from exc
    except Exception as exc:
        decision = decide(exc, dequeue_count)
        settle(root, bootstrap.CONTACT_QUEUE, decision, exc, body=body, item=change, dequeue_count=dequeue_count,
               message_id=message_id, audit=_audit_for(change, decision.reason, type(exc).__name__))
        return 0
    logger.info("hint %s (%s): %s outcome(s)", change.item_id, change.source.value, len(outcomes))
    return len(outcomes)


@bp.function_name("contact_worker")
@bp.queue_trigger(arg_name="msg", queue_name="contact-changes", connection="AzureWebJobsStorage")
def contact_worker(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode("utf-8", "replace")
    process_contact_message(bootstrap.current(), body, dequeue_count=int(getattr(msg, "dequeue_count", 1) or 1),
                            message_id=msg.id)
