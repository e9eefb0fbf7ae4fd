"""What queue functions do with a message they failed on (the dispositions of ``sync.triggers.errors``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sync import bootstrap
from sync.ports import AuditEntry, WorkItem
from sync.triggers.errors import Decision, Disposition

logger = logging.getLogger(__name__)

POISON_TEXT_LIMIT = 40 * 1024  # leaves room for the reason within the 48 KiB queue message


def poison_copy(root: bootstrap.Root, queue_name: str, body: str, reason: str, *, error: str,
                dequeue_count: int, message_id: str | None) -> None:
    """Write ``{"message", "reason", "error", "queue", "dequeueCount", "messageId", "at"}`` to ``<queue>-poison``."""
    message: Any
    try:
        message = json.loads(body)
    except ValueError:
        message = body[:POISON_TEXT_LIMIT]
    doc = {"message": message, "reason": reason[:2000], "error": error, "queue": queue_name,
           "dequeueCount": dequeue_count, "messageId": message_id, "at": datetime.now(UTC).isoformat()}
    root.poison_queue(queue_name).send_text(json.dumps(doc))
    logger.error("message %s moved to %s-poison: %s", message_id, queue_name, error)


def settle(root: bootstrap.Root, queue_name: str, decision: Decision, exc: BaseException, *, body: str,
           item: WorkItem | None, dequeue_count: int, message_id: str | None,
           audit: AuditEntry | None = None) -> None:
    """Carry out ``decision``: re-raise (RETRY), re-send later (DEFER) or poison with an audit row (POISON)."""
    if decision.disposition is Disposition.RETRY:
        logger.warning("message %s attempt %s failed, the host retries: %s", message_id, dequeue_count,
                       type(exc).__name__)
        raise exc
    if decision.disposition is Disposition.DEFER and item is not None:
        root.work_queue.send(item, delay=decision.delay)
        logger.info("message %s throttled: sent again, visible in %.0f s", message_id, decision.delay)
        return
    if audit is not None:
        try:
            root.audit.write([audit])
        except Exception as audit_exc:  # the poison copy below still records the reason
            logger.warning("poison audit row not written: %s", type(audit_exc).__name__)
    poison_copy(root, queue_name, body, decision.reason, error=type(exc).__name__, dequeue_count=dequeue_count,
                message_id=message_id)
