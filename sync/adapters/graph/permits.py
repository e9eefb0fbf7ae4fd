"""Graph's 4 concurrent requests per mailbox, held across every instance of the app (docs/reference/graph.md §5).

Each process already queues its own requests per mailbox (``transport._Permits``, FIFO, 4 slots). ``SharedPermits``
adds a slot that every instance sees: a mailbox has ``total`` (4) rows in a Table Storage partition
(``PartitionKey`` = the mailbox's digest, never the UPN; ``RowKey`` = "0".."3"), and a request holds one row while
it runs (a ``$batch`` holds min(4, items), §5.1). A row is taken by an update conditioned on the ETag
read (docs/reference/azure.md §4.4), all the rows a request needs in one entity group transaction (§4.2), so two
instances never hold the same row and nobody waits holding part of what it needs (no deadlock).

A row carries its holder and ``Until`` (epoch seconds). The holder renews it every ``lease_s / 3`` while the request
runs; a row whose ``Until`` has passed by more than ``skew_s`` is free: an instance that dies holding a slot gives
it back within ``lease_s + skew_s`` (the instances' clocks are NTP-synchronised; ``skew_s`` absorbs the rest).

Cost per Graph request, no contention: one transaction to take the row (the ETag of a row this process released
last is remembered, so no read first) and one to give it back. In a burst, slots given back are kept ``LINGER_S``
(50 ms) for this process's next request to the same mailbox wanting as many (a request, or a ``$batch``'s slots), at
most ``MAX_HOLD_S`` (5 s) in all, so a busy instance pays about two transactions per 5 s per slot, and then gives the
slots back so that others get a turn.
Under contention, one partition query per retry, with a backoff from 20 ms to 0.5 s. Design and measurements:
docs/performance.md "Graph's per-mailbox limit across instances".

The table client is any object with azure-data-tables' ``query_entities`` and ``submit_transaction`` (blocking
calls; they run on a small thread pool so the transport's event loop never blocks).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sync.model import mailbox_ref

logger = logging.getLogger(__name__)

LEASE_S = 20.0  # how long a taken slot stays taken without a renewal
SKEW_S = 5.0  # clock difference between instances tolerated before a slot is considered abandoned
MIN_BACKOFF_S = 0.02
MAX_BACKOFF_S = 0.5
LINGER_S = 0.05  # a slot given back waits this long for the next request of this process before it is released
MAX_HOLD_S = 5.0  # ... unless this process has held it that long: then it goes back, so other instances get a turn


class PermitsUnavailable(Exception):
    """The permit store could not be reached or answered something unexpected (the request was not sent)."""


@dataclass
class _Row:
    key: str
    etag: str | None  # None: the row does not exist yet
    holder: str = ""
    until: float = 0.0


@dataclass(eq=False)
class Held:
    """Slots one request holds: which mailbox, the rows and the ETags they have now, since when."""

    partition: str
    rows: dict[str, str] = field(default_factory=dict)  # row key -> ETag
    holder: str = ""
    until: float = 0.0
    taken_at: float = 0.0
    parked: int = 0  # how often it was given back to the spares (a flush timer acts only on its own parking)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


class SharedPermits:
    """At most ``total`` requests per mailbox in flight across every instance; see the module docstring."""

    def __init__(
        self,
        table: Any,
        *,
        total: int = 4,
        lease_s: float = LEASE_S,
        skew_s: float = SKEW_S,
        clock: Callable[[], float] = time.time,
        workers: int = 8,
        linger_s: float = LINGER_S,
        max_hold_s: float = MAX_HOLD_S,
    ) -> None:
        self.table = table
        self.total = total
        self.lease_s = lease_s
        self.skew_s = skew_s
        self.clock = clock
        self.linger_s = linger_s
        self.max_hold_s = max_hold_s
        self.instance = uuid.uuid4().hex[:12]
        self.stats: dict[str, int] = {"acquired": 0, "released": 0, "renewed": 0, "waits": 0, "conflicts": 0,
                                      "queries": 0, "transactions": 0, "reused": 0}
        self._known: dict[str, dict[str, _Row]] = {}  # partition -> row key -> what we last saw
        self._locks: dict[str, threading.Lock] = {}  # one taker per mailbox in this process: no self-conflicts
        self._spare: dict[str, list[Held]] = {}  # slots just given back, kept ``linger_s`` for the next request
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graph-permits")

    def close(self) -> None:
        """Give back the slots kept for reuse (best effort: they lapse by themselves otherwise)."""
        spares = [h for held in self._spare.values() for h in held]
        self._spare.clear()
        for held in spares:
            self._release(held)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- async API used by the transport -----------------------------------------------------------------------
    async def acquire(self, mailbox: str, n: int) -> Held:
        """Take ``n`` (1..total) slots of ``mailbox``, waiting while other instances hold them."""
        n = max(1, min(n, self.total))
        partition = mailbox_ref(mailbox)
        loop = asyncio.get_running_loop()
        spares = self._spare.get(partition) or []
        while True:  # slots this process gave back moments ago, as many as wanted: no storage round trip
            held = next((h for h in reversed(spares) if len(h.rows) == n), None)
            if held is None:
                break
            spares.remove(held)
            now = self.clock()
            if now - held.taken_at < self.max_hold_s and held.until - now > self.lease_s / 2:
                self.stats["reused"] += 1
                return held
            await loop.run_in_executor(self._pool, self._release, held)
        backoff = MIN_BACKOFF_S
        while True:
            got = await loop.run_in_executor(self._pool, self._try_take, partition, n)
            if got is not None:
                return got
            self.stats["waits"] += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def renew(self, held: Held) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._renew, held)

    async def release(self, held: Held) -> None:
        """Give the slots back. Slots held less than ``max_hold_s`` are first kept ``linger_s`` for the next request
        of this process that wants as many (a burst of requests, or of ``$batch``es, costs no round trip each); after
        ``max_hold_s`` they go back to the table, so other instances get their turn."""
        loop = asyncio.get_running_loop()
        if self.clock() - held.taken_at < self.max_hold_s:
            held.parked += 1
            parked = held.parked
            self._spare.setdefault(held.partition, []).append(held)
            loop.call_later(self.linger_s, lambda: asyncio.ensure_future(self._flush(held, parked)))
            return
        await loop.run_in_executor(self._pool, self._release, held)

    async def _flush(self, held: Held, parked: int) -> None:
        spares = self._spare.get(held.partition)
        if held.parked == parked and spares is not None and held in spares:
            spares.remove(held)
            await asyncio.get_running_loop().run_in_executor(self._pool, self._release, held)

    async def keep(self, held: Held) -> None:
        """Renew ``held`` every ``lease_s / 3`` until cancelled (runs beside a request)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew(held)
            except PermitsUnavailable as exc:  # the slot may lapse; the request itself goes on
                logger.warning("could not renew a Graph permit: %s", exc)

    # --- blocking work (thread pool) ---------------------------------------------------------------------------
    def _query(self, partition: str) -> dict[str, _Row]:
        self.stats["queries"] += 1
        try:
            entities = list(self.table.query_entities("PartitionKey eq @p", parameters={"p": partition}))
        except Exception as exc:
            raise PermitsUnavailable(f"permit query failed: {type(exc).__name__}") from exc
        rows = {str(i): _Row(str(i), None) for i in range(self.total)}
        for e in entities:
            key = str(e["RowKey"])
            if key in rows:
                rows[key] = _Row(key, e.metadata.get("etag"), str(e.get("Holder") or ""), float(e.get("Until") or 0))
        self._known[partition] = rows
        return rows

    def _free(self, row: _Row, now: float) -> bool:
        return not row.holder or row.until + self.skew_s < now

    def _try_take(self, partition: str, n: int) -> Held | None:
        """One attempt: take ``n`` free slots in one transaction; None when they are not free (or someone was
        faster). Uses what this process saw last and reads the partition only when that did not work."""
        lock = self._locks.setdefault(partition, threading.Lock())
        with lock:
            return self._take(partition, n)

    def _take(self, partition: str, n: int) -> Held | None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        for fresh in (False, True):
            rows = self._known.get(partition) if not fresh else None
            if rows is None:
                rows = self._query(partition)
                fresh = True
            now = self.clock()
            free = [r for r in rows.values() if self._free(r, now)]
            if len(free) < n:
                if fresh:
                    return None
                continue
            random.shuffle(free)  # spread instances over the slots
            chosen = free[:n]
            holder = f"{self.instance}/{uuid.uuid4().hex[:8]}"
            until = now + self.lease_s
            ops: list[Any] = []
            for r in chosen:
                entity = {"PartitionKey": partition, "RowKey": r.key, "Holder": holder, "Until": until}
                if r.etag is None:
                    ops.append(("create", entity))
                else:
                    ops.append(("update", entity, {"mode": UpdateMode.REPLACE, "etag": r.etag,
                                                   "match_condition": MatchConditions.IfNotModified}))
            self.stats["transactions"] += 1
            try:
                answers = self.table.submit_transaction(ops)
            except Exception as exc:
                if _status(exc) in (409, 412):  # taken (or created) by another instance since we looked
                    self.stats["conflicts"] += 1
                    self._known.pop(partition, None)
                    if fresh:
                        return None
                    continue
                raise PermitsUnavailable(f"permit transaction failed: {type(exc).__name__}") from exc
            held = Held(partition, holder=holder, until=until, taken_at=now)
            for r, answer in zip(chosen, answers, strict=True):
                etag = _etag(answer)
                held.rows[r.key] = etag
                rows[r.key] = _Row(r.key, etag, holder, until)
            self.stats["acquired"] += n
            return held
        return None

    def _write(self, held: Held, holder: str, until: float) -> dict[str, str]:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        ops = [("update", {"PartitionKey": held.partition, "RowKey": key, "Holder": holder, "Until": until},
                {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified})
               for key, etag in held.rows.items()]
        self.stats["transactions"] += 1
        answers = self.table.submit_transaction(ops)
        return {key: _etag(a) for key, a in zip(held.rows, answers, strict=True)}

    def _renew(self, held: Held) -> None:
        until = self.clock() + self.lease_s
        try:
            held.rows = self._write(held, held.holder, until)
        except Exception as exc:
            if _status(exc) == 412:  # it lapsed and another instance took it: nothing to renew
                self._known.pop(held.partition, None)
                return
            raise PermitsUnavailable(f"permit renewal failed: {type(exc).__name__}") from exc
        held.until = until
        self.stats["renewed"] += 1

    def _release(self, held: Held) -> None:
        try:
            etags = self._write(held, "", 0.0)
        except Exception as exc:  # lapsed and taken by another (412), or storage down: it expires by itself
            self._known.pop(held.partition, None)
            if _status(exc) != 412:
                logger.warning("could not release a Graph permit (it expires in %.0f s): %s",
                               self.lease_s + self.skew_s, type(exc).__name__)
            return
        rows = self._known.get(held.partition)
        if rows is not None:
            for key, etag in etags.items():
                rows[key] = _Row(key, etag)
        self.stats["released"] += len(etags)


def _etag(answer: Any) -> str:
    etag = answer.get("etag") if isinstance(answer, dict) else None
    if not etag:
        raise PermitsUnavailable("the permit store answered without an ETag")
    return str(etag)
