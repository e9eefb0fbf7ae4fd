"""The one edge where typed errors become HTTP answers and queue dispositions (STYLE.md habit 9).

Public API:
    http_response(exc) -> func.HttpResponse      4xx/5xx with a short JSON body (ids only)
    decide(exc, dequeue_count) -> Decision       what a queue function does with a failed message
    Disposition, Decision, MAX_DEQUEUE_COUNT

Queue dispositions (contact_worker, mailbox_reconciler):
    RETRY    raise: the host makes the message visible again after host.json ``visibilityTimeout`` (10 s) and
             retries it; used for retryable errors (Transient, PreconditionFailed, AlreadyExists) and unexpected
             exceptions, until the last attempt (``dequeue_count >= MAX_DEQUEUE_COUNT``), which becomes POISON
             ("retries exhausted") so the poison copy carries the reason.
    DEFER    Throttled: send the same message again hidden for ``retry_after`` seconds (30 s when the service gave
             none; at most an hour) and complete this one. The host's fixed 10 s visibility would ignore the
             service's Retry-After and burn an attempt per throttled answer; a throttled service is not a broken
             message, so deferring does not count towards the poison limit.
    POISON   permanent errors (BadData, AuthFailed, NotFound, any non-retryable SyncError, an unreadable message):
             the function writes an audit row and a copy ``{"message", "reason", "error", ...}`` to
             ``<queue>-poison`` itself (the runtime's own poison copy carries no reason), then completes.
HTTP: BadSignature 401, BadData 400, NotFound 404, PreconditionFailed / AlreadyExists 409, Throttled 503 with
Retry-After, Transient 503, AuthFailed (of a downstream service) 502, ConfigError 500, anything else 500.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum

import azure.functions as func

from sync.config import ConfigError
from sync.errors import (
    AlreadyExists,
    AuthFailed,
    BadData,
    NotFound,
    PreconditionFailed,
    SyncError,
    Throttled,
    Transient,
)

logger = logging.getLogger(__name__)

MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount (a test keeps them equal)
DEFAULT_THROTTLE_DELAY_S = 30.0
MAX_THROTTLE_DELAY_S = 3600.0


class Disposition(StrEnum):
    RETRY = "retry"
    DEFER = "defer"
    POISON = "poison"


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    reason: str
    delay: float = 0.0


def describe(exc: BaseException) -> str:
    """``<ErrorType>: message`` (our messages carry ids and field names only; foreign ones are cut short)."""
    text = str(exc) if isinstance(exc, SyncError | ConfigError) else str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide(exc: BaseException, dequeue_count: int, max_dequeue: int = MAX_DEQUEUE_COUNT) -> Decision:
    if isinstance(exc, Throttled):
        delay = exc.retry_after if exc.retry_after and exc.retry_after > 0 else DEFAULT_THROTTLE_DELAY_S
        return Decision(Disposition.DEFER, describe(exc), min(delay, MAX_THROTTLE_DELAY_S))
    permanent = isinstance(exc, SyncError) and not exc.retryable
    if permanent:
        return Decision(Disposition.POISON, describe(exc))
    if dequeue_count >= max_dequeue:
        return Decision(Disposition.POISON, f"retries exhausted after {dequeue_count} attempts: {describe(exc)}")
    return Decision(Disposition.RETRY, describe(exc))


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json",
                             headers=headers)


def http_status(exc: BaseException) -> int:
    from sync.adapters.salesforce.pubsub import BadSignature  # light: no SDK at module import

    if isinstance(exc, BadSignature):
        return 401
    if isinstance(exc, BadData):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PreconditionFailed | AlreadyExists):
        return 409
    if isinstance(exc, Throttled | Transient):
        return 503
    if isinstance(exc, AuthFailed):
        return 502
    return 500


def http_response(exc: BaseException) -> func.HttpResponse:
    status = http_status(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, Throttled):
        headers["Retry-After"] = str(int(exc.retry_after or DEFAULT_THROTTLE_DELAY_S))
    if status == 401:
        message = "signature verification failed"
    elif isinstance(exc, ConfigError):
        message = "the app is misconfigured: see the function logs"
        logger.error("%s", exc)
    elif status == 500:
        message = "internal error"
        logger.exception("unexpected %s", type(exc).__name__, exc_info=exc)
    else:
        message = describe(exc)
    if status != 500:
        logger.warning("answering %s: %s", status, type(exc).__name__)
    return json_response({"error": message}, status, headers or None)


__all__ = ["MAX_DEQUEUE_COUNT", "Decision", "Disposition", "decide", "describe", "http_response", "json_response"]
