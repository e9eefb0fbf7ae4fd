"""Several instances of one app on the local host (``python -m devhost --instances N``; devhost/instances.py), as the
platform scales out: three child processes of ``tests/host/scale_app.py`` over one Azurite, behind a front door.

Queue consumers compete (every message processed once, the work spread over the instances); a timer runs on exactly
one instance at a time (its singleton lock, docs/reference/azure.md §1.6); an instance killed with SIGKILL mid-batch
loses no message (they come back after the message lease and a survivor processes them) and its timer moves to a
survivor once the lease it can no longer renew runs out. The tests run in file order on one set of instances; the
kill comes last.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from devhost.front import FrontDoor
from devhost.host import QUEUE_API_VERSION
from devhost.instances import Instance, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
MASTER_KEY = "instances-master-" + uuid.uuid4().hex
LOCK_PERIOD_S = 15  # the shortest lease Blob storage grants; recovery polling every 15 s too (the minimum)
MESSAGE_LEASE_S = 3


@dataclass
class Fleet:
    conn: str
    work: QueueClient
    done: QueueClient
    instances: list[Instance]
    front: FrontDoor
    records: list[dict[str, Any]]

    def drain_done(self) -> list[dict[str, Any]]:
        """Read (and delete) what the functions wrote since the last call; all records so far."""
        while True:
            batch = list(self.done.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=30))
            if not batch:
                return self.records
            for message in batch:
                self.records.append(json.loads(message.content))
                self.done.delete_message(message)

    def pids(self) -> dict[int, str]:
        return {i.process.pid: i.name for i in self.instances if i.process is not None}

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {i.name: s for i in self.instances if i.alive and (s := i.status(MASTER_KEY)) is not None}

    def timer_holder(self) -> Instance | None:
        statuses = self.statuses()
        held = [i for i in self.instances if statuses.get(i.name, {}).get("timers", {}).get("tick") == "held"]
        assert len(held) <= 1, f"the tick lock is held by {[i.name for i in held]}"
        return held[0] if held else None


def _wait(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def fleet(azurite_connection_string: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    conn = azurite_connection_string
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path_factory.mktemp("instances")
    host_json = folder / "host.json"
    host_json.write_text(json.dumps({
        "version": "2.0",
        "extensions": {"queues": {"maxPollingInterval": "00:00:00.5", "batchSize": 2, "newBatchThreshold": 0,
                                  "visibilityTimeout": "00:00:00"}},
        "singleton": {"listenerLockPeriod": f"00:00:{LOCK_PERIOD_S}",
                      "listenerLockRecoveryPollingInterval": f"00:00:{LOCK_PERIOD_S}"},
    }))
    env = {**os.environ, "AzureWebJobsStorage": conn, "SCALE_WORK_QUEUE": f"scale-work-{tag}",
           "SCALE_DONE_QUEUE": f"scale-done-{tag}", "SCALE_TICK_SCHEDULE": "* * * * * *"}
    argv = ["--app", "tests.host.scale_app", "--host-json", str(host_json), "--master-key", MASTER_KEY,
            "--host-id", f"scale-{tag}", "--message-lease", str(MESSAGE_LEASE_S), "--no-auth"]
    instances = [Instance(f"i{n}", free_port(), argv, env=env, cwd=REPO, log_path=folder / f"i{n}.log")
                 for n in (1, 2, 3)]
    work = QueueClient.from_connection_string(conn, env["SCALE_WORK_QUEUE"], api_version=QUEUE_API_VERSION,
                                              message_encode_policy=TextBase64EncodePolicy())
    done = QueueClient.from_connection_string(conn, env["SCALE_DONE_QUEUE"], api_version=QUEUE_API_VERSION,
                                              message_decode_policy=TextBase64DecodePolicy())
    work.create_queue()
    done.create_queue()
    try:
        for instance in instances:
            instance.start()
        for instance in instances:
            assert instance.wait_ready(MASTER_KEY, timeout=90), f"{instance.name} did not start: {instance.log_path}"
        with FrontDoor(0, [i.port for i in instances]) as front:
            yield Fleet(conn, work, done, instances, front, [])
    finally:
        for instance in instances:
            instance.stop()


def _send(fleet: Fleet, count: int, seconds: float) -> set[str]:
    ids = {f"m{n}-{uuid.uuid4().hex[:6]}" for n in range(count)}
    for message_id in sorted(ids):
        fleet.work.send_message(json.dumps({"id": message_id, "seconds": seconds}))
    return ids


def _worked(fleet: Fleet, ids: set[str]) -> list[dict[str, Any]]:
    return [r for r in fleet.drain_done() if r["kind"] == "work" and r["id"] in ids]


def test_queue_consumers_compete_and_each_message_is_processed_once(fleet: Fleet) -> None:
    ids = _send(fleet, 30, 0.3)  # one instance alone would need 4.5 s; the others poll every 0.5 s at most
    assert _wait(lambda: {r["id"] for r in _worked(fleet, ids)} == ids, timeout=60), "not every message was processed"
    records = _worked(fleet, ids)
    assert len(records) == len(ids), "a message was processed twice without any instance failing"
    by_instance = {fleet.pids().get(r["pid"], "?") for r in records}
    assert by_instance == {"i1", "i2", "i3"}, f"work went to {by_instance} only"


def test_timer_runs_on_one_instance_at_a_time(fleet: Fleet) -> None:
    assert _wait(lambda: fleet.timer_holder() is not None, timeout=LOCK_PERIOD_S + 5)
    statuses = fleet.statuses()
    assert sorted(s["timers"]["tick"] for s in statuses.values()) == ["held", "waiting", "waiting"]
    assert len({s["id"] for s in statuses.values()}) == 1  # one host id: that is what makes them share the lock
    first = len([r for r in fleet.drain_done() if r["kind"] == "tick"])
    time.sleep(4)
    ticks = [r for r in fleet.drain_done() if r["kind"] == "tick"][first:]
    assert len(ticks) >= 3, ticks
    holder = fleet.timer_holder()
    assert holder is not None and holder.process is not None
    assert {r["pid"] for r in ticks} == {holder.process.pid}
    spans = sorted((r["start"], r["end"]) for r in ticks)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), "runs overlapped"


def test_front_door_spreads_requests_over_the_instances(fleet: Fleet) -> None:
    answers = []
    for _ in range(9):
        with urllib.request.urlopen(f"{fleet.front.base_url}/api/whoami", timeout=10) as response:  # noqa: S310
            answers.append(int(response.read()))
    assert {fleet.pids()[pid] for pid in answers} == {"i1", "i2", "i3"}


def test_sigkill_mid_batch_loses_nothing_and_the_timer_moves_to_a_survivor(fleet: Fleet) -> None:
    victim = fleet.timer_holder()
    assert victim is not None and victim.process is not None
    ids = _send(fleet, 24, 1.0)
    statuses = fleet.statuses()
    assert _wait(lambda: (fleet.statuses().get(victim.name) or {}).get("busy", 0) > 0, timeout=20)
    time.sleep(0.3)  # mid-batch: the victim holds messages it has not finished
    held = (fleet.statuses().get(victim.name) or {}).get("invocations", {}).get("work", {})
    killed_at = time.time()
    victim.kill()
    dead_pid = victim.process.pid
    assert held.get("started", 0) > held.get("succeeded", 0)  # it died with work in hand

    # every message is processed, the ones the victim held by a survivor after the message lease
    assert _wait(lambda: {r["id"] for r in _worked(fleet, ids)} == ids, timeout=90), "a message was lost"
    redone = [r for r in _worked(fleet, ids) if r["dequeue"] > 1]
    assert redone and all(r["pid"] != dead_pid for r in redone)

    # the timer: the dead instance's lease runs out (renewed every 7.5 s, so 7.5 to 15 s after the kill), and a
    # survivor takes it at its next recovery poll (every 15 s)
    assert _wait(lambda: (h := fleet.timer_holder()) is not None and h is not victim, timeout=2 * LOCK_PERIOD_S + 10)
    taken_after = time.time() - killed_at
    assert taken_after >= LOCK_PERIOD_S / 2 - 1, f"taken {taken_after:.1f} s after the kill, while the lease held"
    count = len(fleet.drain_done())
    assert _wait(lambda: len(fleet.drain_done()) > count + 1, timeout=10)
    later = [r for r in fleet.drain_done()[count:] if r["kind"] == "tick"]
    assert later and {r["pid"] for r in later} <= {i.process.pid for i in fleet.instances if i.alive and i.process}
    # the HTTP front door leaves the dead instance out
    for _ in range(6):
        with urllib.request.urlopen(f"{fleet.front.base_url}/api/whoami", timeout=10) as response:  # noqa: S310
            assert int(response.read()) != dead_pid
    assert statuses  # the snapshot before the kill answered for all three
