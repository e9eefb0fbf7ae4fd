"""The one place typed errors become HTTP answers and queue dispositions.

``http_response(exc)``: BadSignature 401, BadData 400, NotFound 404, PreconditionFailed / AlreadyExists 409, Throttled
503 with Retry-After, Transient 503, AuthFailed (of a downstream service) 502, ConfigError and anything else 500. The
body is a short JSON object with ids only.

``decide(exc, dequeue_count)`` tells a queue function what to do with a message it failed on:
    RETRY    retryable errors and unexpected exceptions: raise, so the host retries; the last attempt is POISON.
    DEFER    Throttled: send the message again, hidden for the service's ``retry_after`` (30 s when it gave none, at
             most an hour), and complete this one, so a throttled service does not use up the message's attempts.
             Busy (another worker holds the person's link claim) likewise, hidden for the rest of that claim's lease
             at most (a worker killed mid-plan holds its claim until then).
    POISON   permanent errors and unreadable messages: an audit row and a copy with the reason in ``<queue>-poison``
             (the runtime's own poison copy carries no reason), then complete.
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
    Busy,
    NotFound,
    PreconditionFailed,
    SyncError,
    Throttled,
    Transient,
)

logger = logging.getLogger(__name__)

MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount (a test keeps them equal)
DEFAULT_THROTTLE_DELAY_S = 30.0
BUSY_RECHECK_S = 15.0  # a Busy hint is looked at again after at most this long
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
    if isinstance(exc, Busy):  # a claim normally lives for one plan's writes: look again soon, at most at its end
        return Decision(Disposition.DEFER, describe(exc), min(max(exc.retry_after, 1.0), BUSY_RECHECK_S))
    if isinstance(exc, Throttled):
        delay = exc.retry_after if exc.retry_after and exc.retry_after > 0 else DEFAULT_THROTTLE_DELAY_S
        return Decision(Disposition.DEFER, describe(exc), min(delay, MAX_THROTTLE_DELAY_S))
    permanent = isinstance(exc, SyncError) and not exc.retryable
    if permanent:
        return Decision(Disposition.POISON, describe(exc))
    if dequeue_count >= max_dequeue:
        return Decision(Disposition.POISON, f"retries exhausted after {dequeue_count} attempts: {describe(exc)}")
    return Decision(Disposition.RETRY, describe(exc))


# on every answer of every HTTP function: browsers must not guess a type from the content (the audit keeps foreign
# error codes verbatim, and a handshake echoes the caller's token)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json",
                             headers={**NOSNIFF, **(headers or {})})


def empty_response(status: int) -> func.HttpResponse:
    return func.HttpResponse(status_code=status, headers=dict(NOSNIFF))


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


__all__ = ["MAX_DEQUEUE_COUNT", "NOSNIFF", "Decision", "Disposition", "decide", "describe", "empty_response",
           "http_response", "json_response"]
