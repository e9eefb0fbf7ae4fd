"""CDC in: bitmap decoding (docs/reference/salesforce.md §4.4), the gRPC subscriber against the emulator end to end
(hints, resume, keep-alive, gaps, overflow, rejected replay id, errors) and the HMAC-signed push parser."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sync.adapters.salesforce.pubsub import (
    BadSignature,
    CdcSubscriber,
    ReplayStart,
    decode_bitmap_fields,
    parse_signed_events,
    sign_events,
)
from sync.errors import BadData, Throttled, Transient
from sync.model import Contact, Side
from sync.ports import ContactChange, ReconcileMailbox
from tests.contract.salesforce_harness import MAILBOX, OTHER, SalesforceHarness
from tests.fakes import MemoryCheckpoints, MemoryQueue

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"])


# -- bitmaps ---------------------------------------------------------------------------------------------------

def test_bitmap_worked_example_with_the_served_schema() -> None:
    h = SalesforceHarness()
    try:
        schema = h.emu.org.codec.schema
        # docs/reference/salesforce.md §4.4: ['0xC','1-0x2'] -> Email, LastModifiedDate, Name.FirstName
        assert decode_bitmap_fields(schema, ["0xC", "1-0x2"]) == ["Email", "LastModifiedDate", "Name.FirstName"]
    finally:
        h.close()


def test_bitmap_readme_example_positions() -> None:
    # forcedotcom README example ['0x650004E0', '4-0x10', '7-0x06'] on a synthetic 32-field schema.
    nested = {"type": "record", "name": "N", "fields": [{"name": f"c{j}", "type": "string"} for j in range(8)]}
    fields = [{"name": f"f{i}", "type": ["null", nested] if i in (4, 7) else ["null", "string"]} for i in range(32)]
    schema = {"type": "record", "name": "E", "fields": fields}
    got = decode_bitmap_fields(schema, ["0x650004E0", "4-0x10", "7-0x06"])
    assert got == [f"f{i}" for i in (5, 6, 7, 10, 24, 26, 29, 30)] + ["f4.c4", "f7.c1", "f7.c2"]
    assert decode_bitmap_fields(schema, ["Email"]) == ["Email"]  # CometD names pass through


# -- subscriber end to end --------------------------------------------------------------------------------------

@pytest.fixture
def h() -> Iterator[SalesforceHarness]:
    harness = SalesforceHarness()
    yield harness
    harness.close()


def subscriber(h: SalesforceHarness, queue: MemoryQueue, checkpoints: MemoryCheckpoints,
               start: ReplayStart = ReplayStart.EARLIEST) -> CdcSubscriber:
    return CdcSubscriber(h.tokens, target=h.emu.grpc_target, secure=False, queue=queue, checkpoints=checkpoints,
                         mailboxes=[MAILBOX, OTHER], start=start)


def hints(queue: MemoryQueue) -> list[str]:
    return [c.item_id for c in queue.contact_changes()]


def test_rest_write_arrives_as_a_contact_change_hint(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    created = h.side.create(MAILBOX, ADA)
    h.side.update(MAILBOX, created.id, ADA.with_values({"job_title": "Countess"}), fields=frozenset({"job_title"}),
                  if_match=created.version)
    result = subscriber(h, queue, cps).pull(max_events=10, max_seconds=10, idle_seconds=1)
    assert queue.contact_changes()[0] == ContactChange(source=Side.SALESFORCE, item_id=created.id)
    kinds = [(e.change_type, e.record_ids) for e in result.events]
    assert kinds == [("CREATE", (created.id,)), ("UPDATE", (created.id,))]
    update = result.events[1]
    assert set(update.changed_fields) >= {"Title", "LastModifiedDate"}
    assert update.change_origin.endswith("client=m365-sync") and result.own_origin == 2  # still enqueued
    assert cps.get("salesforce", "cdc-replay:/data/ContactChangeEvent") == base64.b64encode(update.replay_id).decode()


def test_resume_after_restart_from_the_stored_replay_id_loses_nothing(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    first = [h.user_create(ADA.with_values({"email": f"a{i}@example.com"})) for i in range(3)]
    subscriber(h, queue, cps).pull(max_events=2, max_seconds=10, idle_seconds=1)  # stops half way
    assert sorted(hints(queue)) == sorted(first[:2])  # a batch's hints are sent concurrently: in any order
    later = [h.user_create(ADA.with_values({"email": f"b{i}@example.com"})) for i in range(150)]
    restarted = subscriber(h, queue, cps, start=ReplayStart.LATEST)  # a new object: only the checkpoint survives
    result = restarted.pull(max_events=1000, max_seconds=15, idle_seconds=1)
    assert set(hints(queue)) == set(first + later) and len(result.events) == 151  # flow control: 100 + 51
    assert h.emu.counters["grpc.FetchRequest"] >= 3


def test_keepalive_latest_replay_id_is_checkpointed(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    h.user_create(ADA)
    result = subscriber(h, queue, cps, start=ReplayStart.LATEST).pull(max_events=10, max_seconds=5, idle_seconds=1.5)
    assert result.events == [] and result.keepalives >= 1 and result.replay_id is not None
    newer = h.user_create(ADA.with_values({"email": "new@example.com"}))
    subscriber(h, queue, cps).pull(max_events=10, max_seconds=5, idle_seconds=1)
    assert hints(queue) == [newer]  # resumed after the keep-alive position, not from EARLIEST


def test_gap_events_become_re_read_hints_and_overflow_a_reconcile(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    a, b = h.user_create(ADA), h.user_create(ADA.with_values({"email": "b@example.com"}))
    cps.put("salesforce", "cdc-replay:/data/ContactChangeEvent", base64.b64encode(
        h.emu.org.events[-1].replay_id).decode())
    h.emu.publish_gap("GAP_UPDATE", [a, b])
    h.emu.publish_gap_overflow()
    result = subscriber(h, queue, cps).pull(max_events=10, max_seconds=5, idle_seconds=1)
    assert result.gaps == 2 and result.overflow == 1
    assert sorted(hints(queue)) == sorted([a, b])
    reconciles = [i for i, _ in queue.sent if isinstance(i, ReconcileMailbox)]
    assert {(r.mailbox, r.mode) for r in reconciles} == {(MAILBOX, "delta"), (OTHER, "delta")}


def test_rejected_replay_id_enqueues_a_full_reconcile_and_resubscribes(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    item = h.user_create(ADA)
    cps.put("salesforce", "cdc-replay:/data/ContactChangeEvent", base64.b64encode(b"\xff" * 8).decode())
    result = subscriber(h, queue, cps).pull(max_events=10, max_seconds=5, idle_seconds=1)
    assert result.replay_rejected
    assert {(r.mailbox, r.mode) for r, _ in queue.sent if isinstance(r, ReconcileMailbox)} == {
        (MAILBOX, "full"), (OTHER, "full")}
    assert hints(queue) == [item]  # EARLIEST after the rejection
    assert cps.get("salesforce", "cdc-replay:/data/ContactChangeEvent") == base64.b64encode(
        result.events[-1].replay_id).decode()


def test_grpc_errors_are_typed_and_expired_sessions_renewed(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    h.user_create(ADA)
    h.emu.faults.fail_grpc_next(code="RESOURCE_EXHAUSTED",
                                error_code="sfdc.platform.eventbus.grpc.subscription.limit.exceeded")
    with pytest.raises(Throttled):
        subscriber(h, queue, cps).pull(max_events=10, max_seconds=5, idle_seconds=1)
    h.tokens.token()
    minted = h.tokens.minted
    h.emu.revoke_tokens()
    result = subscriber(h, queue, cps).pull(max_events=10, max_seconds=5, idle_seconds=1)
    assert h.tokens.minted == minted + 1 and len(result.events) == 1


# -- HMAC push ---------------------------------------------------------------------------------------------------

SECRET = b"push-secret"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _body() -> bytes:
    return json.dumps({"events": [
        {"ChangeEventHeader": {"entityName": "Contact", "changeType": "UPDATE", "recordIds": ["003A", "003B"],
                               "changedFields": ["Email"]}, "Email": "x@example.com"},
        {"ChangeEventHeader": {"entityName": "Contact", "changeType": "GAP_DELETE", "recordIds": ["003A"]}},
        {"ChangeEventHeader": {"entityName": "Contact", "changeType": "GAP_OVERFLOW", "recordIds": []}},
    ]}).encode()


def test_signed_push_is_accepted_and_deduplicated() -> None:
    body = _body()
    headers = sign_events(body, SECRET, int(NOW.timestamp()) - 10)
    got = parse_signed_events(body, {k.lower(): v for k, v in headers.items()}, SECRET, NOW)
    assert [c.item_id for c in got] == ["003A", "003B"] and all(c.source is Side.SALESFORCE for c in got)


@pytest.mark.parametrize("tamper", ["body", "secret", "missing", "old", "future", "garbage-ts"])
def test_signed_push_rejections(tamper: str) -> None:
    body, secret, ts = _body(), SECRET, int(NOW.timestamp())
    if tamper == "old":
        ts -= 301
    if tamper == "future":
        ts += 301
    headers = sign_events(body, secret, ts)
    if tamper == "body":
        body = body.replace(b"003B", b"003C")
    if tamper == "secret":
        secret = b"other"
    if tamper == "missing":
        headers = {}
    if tamper == "garbage-ts":
        headers["X-Sync-Timestamp"] = "soon"
    with pytest.raises(BadSignature):
        parse_signed_events(body, headers, secret, NOW)


def test_signed_but_malformed_body_is_bad_data() -> None:
    body = b'{"events": [{"no": "header"}]}'
    with pytest.raises(BadData):
        parse_signed_events(body, sign_events(body, SECRET, int(NOW.timestamp())), SECRET, NOW)


def test_a_quiet_first_pull_leaves_earliest_so_edits_between_pulls_are_not_skipped(h: SalesforceHarness) -> None:
    queue, cps = MemoryQueue(), MemoryCheckpoints()
    sub = subscriber(h, queue, cps, start=ReplayStart.LATEST)
    h.emu.keepalive_seconds = 3600  # no keep-alive within the pull: no replay id to store
    first = sub.pull(max_events=10, max_seconds=1, idle_seconds=1)
    assert first.events == [] and first.replay_id is None
    assert cps.get("salesforce", "cdc-replay:/data/ContactChangeEvent") == "preset:EARLIEST"
    between = h.user_create(ADA)  # committed while no pull runs
    sub.pull(max_events=10, max_seconds=5, idle_seconds=1)
    assert hints(queue) == [between]
    assert not cps.get("salesforce", "cdc-replay:/data/ContactChangeEvent").startswith("preset:")


def test_a_held_pull_reads_each_edit_as_it_commits_and_a_second_pull_does_not_start(h: SalesforceHarness) -> None:
    import threading
    import time

    queue, cps = MemoryQueue(), MemoryCheckpoints()
    sub = subscriber(h, queue, cps, start=ReplayStart.LATEST)
    results = []
    runner = threading.Thread(target=lambda: results.append(sub.pull(max_events=100, max_seconds=4,
                                                                     idle_seconds=4)))
    runner.start()
    time.sleep(1.0)
    assert sub.pull(max_events=10, max_seconds=1, idle_seconds=1).busy  # never two pulls at once
    made = h.user_create(ADA)
    deadline = time.monotonic() + 2
    while not hints(queue) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hints(queue) == [made] and runner.is_alive()  # enqueued while the pull still holds the stream
    runner.join(10)
    assert results and not results[0].busy and results[0].hints == 1


class _SlowQueue(MemoryQueue):
    """A queue whose sends each take a round trip; counts how many ran at once; ``fail`` refuses one id."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.fail, self.running, self.most = fail, 0, 0
        self._lock = threading.Lock()

    def send(self, item: Any, *, delay: float = 0.0) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            if isinstance(item, ContactChange) and item.item_id == self.fail:
                raise Transient("queue unavailable", side="queues")
            with self._lock:
                super().send(item, delay=delay)
        finally:
            with self._lock:
                self.running -= 1


def test_a_batch_of_hints_is_enqueued_concurrently_and_checkpointed_only_when_all_are_in(
        h: SalesforceHarness) -> None:
    """A bulk change (here 40 records) reaches the queue several hints at a time, not one round trip per record;
    if one send fails, the pull raises before the batch's checkpoint, so the next pull reads the batch again."""
    made = [h.user_create(ADA.with_values({"email": f"bulk{i}@example.com"})) for i in range(40)]
    queue, cps = _SlowQueue(), MemoryCheckpoints()
    started = time.monotonic()
    subscriber(h, queue, cps).pull(max_events=40, max_seconds=15, idle_seconds=1)
    assert sorted(hints(queue)) == sorted(made)
    assert queue.most > 1 and time.monotonic() - started < 40 * 0.05
    failing, fresh = _SlowQueue(fail=made[7]), MemoryCheckpoints()
    with pytest.raises(Transient):
        subscriber(h, failing, fresh).pull(max_events=40, max_seconds=15, idle_seconds=1)
    assert fresh.get("salesforce", "cdc-replay:/data/ContactChangeEvent") in (None, "preset:EARLIEST")
    again = MemoryQueue()
    subscriber(h, again, fresh).pull(max_events=40, max_seconds=15, idle_seconds=1)
    assert sorted(hints(again)) == sorted(made)  # read again from where the failed pull started
