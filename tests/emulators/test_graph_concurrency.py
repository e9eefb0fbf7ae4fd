"""The Graph emulator's per-mailbox concurrency gate (docs/reference/graph.md §5): counted across every client, and
for ``$batch`` items the way Graph dispatches them (up to four at a time, ``dependsOn`` in sequence).

Clients here are separate OS processes (plain urllib, no SDK) or separate connections, each started on a free
loopback port; a per-mailbox delay keeps requests in flight long enough to overlap.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from emulators.graph import GraphEmulator

USER = "carol@contoso.example"
OTHER = "dave@contoso.example"

# One client process: at ``start_at`` (wall clock), ``n`` concurrent GETs on its own connections; prints the statuses
# and error codes as JSON.
_CLIENT = r"""
import json, sys, threading, time, urllib.error, urllib.request
url, n, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = []
def one():
    req = urllib.request.Request(url, headers={"Authorization": "Bearer t"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            out.append([r.status, ""])
    except urllib.error.HTTPError as e:
        out.append([e.code, json.loads(e.read())["error"]["code"]])
threads = [threading.Thread(target=one) for _ in range(n)]
time.sleep(max(0.0, start_at - time.time()))
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[USER, OTHER]) as g:
        yield g


def _admin(emu: GraphEmulator, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(f"{emu.root_url}/_admin/{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _batch(emu: GraphEmulator, requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = json.dumps({"requests": requests}).encode()
    req = urllib.request.Request(f"{emu.base_url}/$batch", method="POST", data=data,
                                 headers={"Authorization": "Bearer t", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
        return {a["id"]: a for a in json.loads(resp.read())["responses"]}


def _get(emu: GraphEmulator, path: str) -> int:
    req = urllib.request.Request(emu.base_url + path, headers={"Authorization": "Bearer t"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_concurrency_is_counted_across_client_processes(emu: GraphEmulator) -> None:
    """Three processes send 2 + 2 + 2 requests for one mailbox at the same moment: 4 are admitted, 2 are refused with
    429 ApplicationThrottled, whichever process sent them; the gate reports peak 4 and 2 concurrency refusals."""
    uid = emu.user_id(USER)
    emu.faults.mailbox_delay_s[uid] = 2.0
    url = f"{emu.base_url}/users/{USER}/contactFolders"
    start_at = time.time() + 3.0  # every process is up and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _CLIENT, url, "2", str(start_at)], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    answers = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    flat = [a for per in answers for a in per]
    assert sorted(s for s, _ in flat) == [200, 200, 200, 200, 429, 429]
    assert {code for s, code in flat if s == 429} == {"ApplicationThrottled"}
    gate = _admin(emu, "gate")
    assert gate["mailboxes"][uid]["peak"] == 4 and gate["mailboxes"][uid]["refusedConcurrency"] == 2
    assert gate["refusedConcurrency"] == 2 and gate["mailboxes"][uid]["inFlight"] == 0
    _admin(emu, "gate/reset", "POST")
    assert _admin(emu, "gate")["refusedConcurrency"] == 0


def test_an_unordered_batch_runs_four_items_at_a_time(emu: GraphEmulator) -> None:
    """A 20-item batch for one mailbox: Graph sends Outlook four items at a time, so it reaches the limit and stays
    within it (no item refused); a batch holds the mailbox 5 rounds of the delay, not 20."""
    uid = emu.user_id(USER)
    emu.faults.mailbox_delay_s[uid] = 0.3
    path = f"/users/{USER}/contactFolders"
    started = time.monotonic()
    out = _batch(emu, [{"id": str(i), "method": "GET", "url": path} for i in range(20)])
    elapsed = time.monotonic() - started
    assert [out[str(i)]["status"] for i in range(20)] == [200] * 20
    assert emu.gate.peak(uid) == 4 and emu.gate.refused(uid, "concurrency") == 0
    assert elapsed < 20 * 0.3  # items overlapped (5 rounds of 0.3 s plus overhead)


def test_a_batch_beside_a_request_in_flight_is_throttled_per_item(emu: GraphEmulator) -> None:
    """One request holds a slot while a 20-item batch runs four at a time: 1 + 4 > 4, so some items answer 429
    ApplicationThrottled with their own Retry-After, and the gate counts each of them."""
    uid = emu.user_id(USER)
    emu.faults.mailbox_delay_s[uid] = 0.5
    path = f"/users/{USER}/contactFolders"
    held = threading.Thread(target=_get, args=(emu, path))
    held.start()
    time.sleep(0.2)  # the single request is in flight
    out = _batch(emu, [{"id": str(i), "method": "GET", "url": path} for i in range(20)])
    held.join()
    throttled = [a for a in out.values() if a["status"] == 429]
    assert throttled and all(a["body"]["error"]["code"] == "ApplicationThrottled" for a in throttled)
    assert all(a["headers"].get("Retry-After") for a in throttled)
    assert emu.gate.refused(uid, "concurrency") == len(throttled)
    assert emu.gate.peak(uid) == 4


def test_a_dependson_chain_holds_one_slot(emu: GraphEmulator) -> None:
    """``dependsOn`` runs the items in sequence (§5): one slot at a time, so three more requests fit beside it."""
    uid = emu.user_id(USER)
    emu.faults.mailbox_delay_s[uid] = 0.15
    path = f"/users/{USER}/contactFolders"
    items = [{"id": str(i), "method": "GET", "url": path, **({"dependsOn": [str(i - 1)]} if i else {})}
             for i in range(8)]
    statuses: list[int] = []
    beside = [threading.Thread(target=lambda: statuses.append(_get(emu, path))) for _ in range(3)]
    for t in beside:
        t.start()
    out = _batch(emu, items)
    for t in beside:
        t.join()
    assert [out[str(i)]["status"] for i in range(8)] == [200] * 8 and statuses == [200, 200, 200]
    assert emu.gate.refused(uid) == 0 and emu.gate.peak(uid) <= 4


def test_other_mailboxes_are_not_affected(emu: GraphEmulator) -> None:
    """The limit is per app and mailbox: a batch saturating one mailbox leaves another one free."""
    emu.faults.mailbox_delay_s[emu.user_id(USER)] = 0.4
    path = f"/users/{USER}/contactFolders"
    runner = threading.Thread(target=_batch, args=(emu, [{"id": str(i), "method": "GET", "url": path}
                                                          for i in range(8)]))
    runner.start()
    time.sleep(0.1)
    assert [_get(emu, f"/users/{OTHER}/contactFolders") for _ in range(3)] == [200, 200, 200]
    runner.join()
    assert emu.gate.refused() == 0
