"""Graph's per-mailbox slots shared through Table Storage (``sync.adapters.graph.permits``), over Azurite.

Two ``SharedPermits`` objects stand for two instances of the app: they share only the table. Then the real Graph
adapter, two of them (two "instances") driving one mailbox of the Graph emulator at once: the emulator never sees
more than 4 requests of that mailbox in flight and refuses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sync.adapters.graph import GraphContactSide, SharedPermits
from sync.adapters.storage import TableStorage
from sync.errors import SyncError
from sync.model import Contact
from tests.contract.graph_harness import MAILBOX, OTHER, make_side


@pytest.fixture
def table(azurite_connection_string: str) -> Any:
    return TableStorage.from_connection_string(azurite_connection_string, "perm" + uuid.uuid4().hex[:8]).graph_permits()


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_four_slots_across_two_instances(table: Any) -> None:
    """One instance holds all 4 slots of a mailbox: the other waits, gets one as soon as one is released, and
    another mailbox is not affected."""
    a, b = SharedPermits(table), SharedPermits(table)

    async def scenario() -> tuple[bool, float, bool]:
        held = [await a.acquire("ann@contoso.com", 1) for _ in range(4)]
        waiter = asyncio.ensure_future(b.acquire("ann@contoso.com", 1))
        await asyncio.sleep(0.5)
        blocked = not waiter.done()
        other = await asyncio.wait_for(b.acquire("bob@contoso.com", 4), 5)  # another mailbox: free
        started = time.monotonic()
        await a.release(held[0])
        got = await asyncio.wait_for(waiter, 5)
        waited = time.monotonic() - started
        await b.release(got)
        await b.release(other)
        for h in held[1:]:
            await a.release(h)
        # all four free again, for either instance, in one transaction
        again = await asyncio.wait_for(b.acquire("ann@contoso.com", 4), 5)
        await b.release(again)
        return blocked, waited, len(again.rows) == 4

    blocked, waited, all_four = _run(scenario())
    assert blocked and waited < 2.0 and all_four
    assert a.stats["acquired"] == 4 and b.stats["waits"] >= 1


def test_a_batch_takes_all_its_slots_or_none(table: Any) -> None:
    """A batch wanting 4 slots while another instance holds 1 takes none (it does not sit on 3 while waiting)."""
    a, b = SharedPermits(table), SharedPermits(table)

    async def scenario() -> tuple[int, int]:
        one = await a.acquire("ann@contoso.com", 1)
        batch = asyncio.ensure_future(b.acquire("ann@contoso.com", 4))
        await asyncio.sleep(0.4)
        # meanwhile three single requests still fit: the batch holds nothing while it waits
        three = [await asyncio.wait_for(a.acquire("ann@contoso.com", 1), 2) for _ in range(3)]
        for h in [one, *three]:
            await a.release(h)
        got = await asyncio.wait_for(batch, 5)
        await b.release(got)
        return len(three), len(got.rows)

    assert _run(scenario()) == (3, 4)


def test_a_dead_instance_gives_its_slots_back_when_they_lapse(table: Any) -> None:
    """An instance that dies holding slots (no release, no renewal) blocks the mailbox only until lease + skew."""
    clock = _Clock()
    dead = SharedPermits(table, lease_s=20, skew_s=5, clock=clock)
    alive = SharedPermits(table, lease_s=20, skew_s=5, clock=clock)

    async def scenario() -> tuple[bool, int]:
        for _ in range(4):
            await dead.acquire("ann@contoso.com", 1)  # never released: the instance died
        waiter = asyncio.ensure_future(alive.acquire("ann@contoso.com", 2))
        await asyncio.sleep(0.4)
        blocked = not waiter.done()
        clock.now += 26  # past lease + skew
        got = await asyncio.wait_for(waiter, 5)
        return blocked, len(got.rows)

    assert _run(scenario()) == (True, 2)


def test_renewal_keeps_a_long_request_holding_its_slot(table: Any) -> None:
    """A request that runs longer than the lease renews it: the slot does not lapse to another instance."""
    clock = _Clock()
    a = SharedPermits(table, lease_s=20, skew_s=5, clock=clock)
    b = SharedPermits(table, lease_s=20, skew_s=5, clock=clock)

    async def scenario() -> bool:
        held = [await a.acquire("ann@contoso.com", 1) for _ in range(4)]
        clock.now += 15
        for h in held:
            await a.renew(h)
        clock.now += 15  # 30 s after taking them, 15 s after the renewal: still held
        try:
            await asyncio.wait_for(b.acquire("ann@contoso.com", 1), 0.5)
        except TimeoutError:
            return True
        return False

    assert _run(scenario())
    assert a.stats["renewed"] == 4


@pytest.fixture
def emu() -> Iterator[Any]:
    from emulators.graph import GraphEmulator

    with GraphEmulator(users=[MAILBOX, OTHER]) as g:
        yield g


def test_two_adapters_sharing_the_table_stay_within_four(table: Any, emu: Any) -> None:
    """Two Graph adapters (two instances), 8 threads each, on one slow mailbox: with the shared slots the emulator
    admits at most 4 at once and refuses none; without them (the per-process baseline) the same load goes over."""
    uid = emu.user_id(MAILBOX)
    first = make_side(emu)
    try:
        created = first.create(MAILBOX, Contact(first_name="P", last_name="Load", emails=["p@example.com"]))
    finally:
        first.close()
    emu.faults.mailbox_delay_s[uid] = 0.1

    def load(permits: list[SharedPermits | None]) -> tuple[int, int]:
        emu.gate.reset()
        sides = [make_side(emu, permits=p, max_attempts=1) for p in permits]

        def worker(side: GraphContactSide) -> None:
            for _ in range(3):
                with contextlib.suppress(SyncError):  # a 429 surfaces as Throttled; the gate counts it
                    side.get(MAILBOX, created.id)

        try:
            threads = [threading.Thread(target=worker, args=(s,)) for s in sides for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for s in sides:
                s.close()
        return emu.gate.peak(uid), emu.gate.refused(uid, "concurrency")

    shared = load([SharedPermits(table), SharedPermits(table)])
    alone = load([None, None])
    assert shared == (4, 0)
    assert alone[0] == 4 and alone[1] > 0  # 2 processes x 4 each: Graph refuses the extra ones


def test_a_burst_reuses_its_slot_and_gives_it_back_after_the_linger(table: Any) -> None:
    """20 requests one after the other in one process: one transaction takes the slot, the next requests reuse it
    (each within the 50 ms linger), and it goes back to the table once the burst is over: another instance can take
    all 4 slots then."""
    a, b = SharedPermits(table), SharedPermits(table)

    async def scenario() -> int:
        for _ in range(20):
            held = await a.acquire("ann@contoso.com", 1)
            await a.release(held)
        await asyncio.sleep(0.3)  # past the linger: the slot went back
        everything = await asyncio.wait_for(b.acquire("ann@contoso.com", 4), 2)
        await b.release(everything)
        return len(everything.rows)

    assert _run(scenario()) == 4
    assert a.stats["reused"] == 19 and a.stats["transactions"] == 2  # one take, one give-back
