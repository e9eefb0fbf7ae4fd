"""The ``$batch`` scheduler behind ``create_many`` and ``update_many``: many contact requests, few round trips.

``_Batches.run`` sends a mailbox's ``_Op``s in ``$batch`` requests of at most 20 (§5), one batch at a time, and
fills each op's ``result``. Items answered 429/503/504 are re-queued with their own Retry-After and go out in a later
batch together with fresh items, so one throttled item does not stall the rest; a failure of the whole batch
re-queues all its items the same way.

A guarded write (a PATCH of ``update_many``) carries ``before_retry``: its guard read again before a re-send, so a
rep's edit made while it waited out a Retry-After is not written over (If-Match may be ignored on contacts, §1.5).
A create is never re-sent blindly: after an ambiguous answer (5xx, no answer) an op with a create key is first
looked up by that key (``find_created``) and re-sent only when nothing was created; a create without a key fails
``Transient`` at once (the engine's match-before-create protects its retry).
Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sync.adapters.graph.transport import IMMUTABLE_ID, _Failure, _GraphHttp, _map_error, _Response
from sync.errors import SyncError

logger = logging.getLogger(__name__)

MAX_BATCH = 20  # §5 JSON batching


@dataclass(eq=False)
class _Op:
    """One item of a bulk call as a ``$batch`` request, with its retry state and its outcome."""

    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    marker: str | None = None
    create: bool = False
    key: str | None = None  # a create's create key (CREATE_KEY_PROPERTY_ID), looked up after an ambiguous answer
    attempts: int = 0
    not_before: float = 0.0
    check_key: bool = False  # an earlier attempt of this create may have executed: look before re-sending
    result: _Response | _Failure | None = None
    # a guarded write's check before each retry (a rep may have edited the contact while it waited): None to send
    # it again, else its result (the contact changed, or an earlier attempt landed)
    before_retry: Callable[[_Op], Awaitable[_Response | _Failure | None]] | None = None

    def as_item(self, item_id: str) -> dict[str, Any]:
        headers = {"Prefer": IMMUTABLE_ID, **self.headers}
        item: dict[str, Any] = {"id": item_id, "method": self.method, "url": self.url}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
            item["body"] = self.body
        item["headers"] = headers
        return item


def item_error(result: _Response | _Failure | None, item_id: str | None) -> SyncError:
    """The error an op that did not succeed reports (no result at all: ``Transient``)."""
    if isinstance(result, _Failure):
        return result.error(item_id)
    return _map_error(None, item_id=item_id)


class _Batches:
    """Runs ``_Op``s of one mailbox through ``http``; ``find_created(mailbox, key)`` finds a create by its key."""

    def __init__(
        self, http: _GraphHttp, find_created: Callable[[str, str], Awaitable[dict[str, Any] | None]]
    ) -> None:
        self._http = http
        self._find_created = find_created

    async def run(self, mailbox: str, ops: list[_Op]) -> None:
        """Send ``ops`` in ``$batch`` requests of <= 20, retrying per item; fills each op's ``result``."""
        loop = asyncio.get_running_loop()
        pending: list[_Op] = list(ops)
        while pending:
            now = loop.time()
            ready = [op for op in pending if op.not_before <= now][:MAX_BATCH]
            if not ready:
                await asyncio.sleep(max(0.0, min(op.not_before for op in pending) - now))
                continue
            chosen = set(map(id, ready))
            pending = [op for op in pending if id(op) not in chosen]
            sending: list[_Op] = []
            for op in ready:
                if op.check_key and op.key is not None:
                    try:
                        found = await self._find_created(mailbox, op.key)
                    except _Failure as failure:
                        op.result = failure
                        continue
                    if found is not None:
                        logger.info("batch create had happened after all: contact %s", found.get("id"))
                        op.result = _Response(201, {}, found)
                        continue
                    op.check_key = False
                if op.attempts and op.before_retry is not None:
                    try:
                        settled = await op.before_retry(op)
                    except _Failure as failure:
                        settled = failure
                    if settled is not None:
                        op.result = settled
                        continue
                sending.append(op)
            if not sending:
                continue
            for op in sending:
                op.attempts += 1
            try:
                answers = await self._http.batch(mailbox, [op.as_item(str(n)) for n, op in enumerate(sending)])
            except _Failure as failure:  # the whole batch failed: every item shares its fate
                self._http.stats["throttled"] += failure.status == 429
                for op in sending:
                    self._settle(op, failure, pending, loop.time())
                continue
            for n, op in enumerate(sending):
                answer = answers.get(str(n))
                if answer is None:
                    self._settle(op, _Failure(None), pending, loop.time())
                    continue
                status = int(answer.get("status") or 0)
                headers = answer.get("headers") or {}
                body = answer.get("body")
                if 200 <= status < 300:
                    op.result = _Response(status, headers, body)
                else:
                    self._http.stats["throttled"] += status == 429
                    self._settle(op, self._http.failure(status, headers, body), pending, loop.time())

    def _settle(self, op: _Op, failure: _Failure, pending: list[_Op], now: float) -> None:
        """Give up on ``op`` with ``failure``, or re-queue it after the wait Graph asked for."""
        if op.create and failure.ambiguous:
            if op.key is None:
                op.result = failure  # Transient: the engine's match-before-create protects the retry
                return
            op.check_key = True
        retry = failure.retryable or (op.create and failure.ambiguous)
        wait = self._http.wait_for(failure, op.attempts) if retry else None
        if wait is None:
            op.result = failure
            return
        self._http.stats["retries"] += 1  # items re-queued (429s are counted once per answer, in run)
        self._http.stats["waited_ms"] += int(wait * 1000)
        op.not_before = now + wait
        pending.append(op)

