"""``python -m bench.webhook_flood``: what one anonymous flood of made-up subscription ids costs the Graph webhook.

Azurite + the real function app on ``devhost.host.LocalHost``; one stored subscription. Probes, each a single
``POST /api/graph/notifications`` with no valid clientState:
    flood    ``-n`` (default 20,000) items, each a distinct made-up subscription id (~850 KB, under the 1 MiB limit),
             ``--floods`` times in a row
    wide     as many distinct ids as fit under the item cap, if there is one
    repeat   the same narrow batch of distinct made-up ids twice (the second costs nothing with a negative cache)
While the flood runs, real notifications (valid clientState, one contact each) are posted every 100 ms on another
connection. Per probe: status, time to the answer, Table point reads (``sync.adapters.storage.REQUESTS``) and
warning lines logged by ``sync``; then the slowest real ack seen meanwhile. Prints numbers only (issue 19 targets:
the flood answered < 1 s with a fixed number of reads, real acks < 3 s; docs/performance.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

PATH = "/api/graph/notifications"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _post(port: int, body: bytes, timeout: float) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t = time.perf_counter()
    try:
        conn.request("POST", PATH, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t
    except TimeoutError:
        return 0, time.perf_counter() - t
    finally:
        conn.close()


def _fake_ids(n: int) -> bytes:
    return json.dumps({"value": [{"subscriptionId": uuid.uuid4().hex[:20]} for _ in range(n)]},
                      separators=(",", ":")).encode()


def _probe(name: str, port: int, body: bytes, warnings: _Warnings, timeout: float,
           times: int = 1) -> dict[str, Any]:
    """``times`` posts of ``body`` one after the other: the slowest answer, and reads and warnings per post."""
    from sync.adapters.storage import REQUESTS

    reads, warned = REQUESTS.snapshot().get("read", 0), warnings.count
    answers = [_post(port, body, timeout) for _ in range(times)]
    status, elapsed = answers[0][0], max(s for _, s in answers)
    out = {"probe": name, "posts": times, "bytes": len(body), "status": status or "timeout",
           "max_seconds": round(elapsed, 3), "table_reads": (REQUESTS.snapshot().get("read", 0) - reads) / times,
           "warning_lines": (warnings.count - warned) / times}
    print(f"  {name:<7} {len(body):>9} B x{times:<4} status {out['status']!s:<7} max {elapsed:7.3f} s  "
          f"{out['table_reads']:>8.1f} table reads/post  {out['warning_lines']:>8.1f} warning lines/post")
    return out


def _real_acks(port: int, state: str, stop: threading.Event, acks: list[tuple[int, float]]) -> None:
    i = 0
    while not stop.is_set():
        body = json.dumps({"value": [{"subscriptionId": "bench-sub", "clientState": state, "changeType": "updated",
                                      "resource": f"Users/u/Contacts/r{i}", "resourceData": {"id": f"r{i}"}}]})
        acks.append(_post(port, body.encode(), 30.0))
        i += 1
        stop.wait(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_flood")
    parser.add_argument("-n", type=int, default=20_000, help="distinct made-up ids in the flood (default 20,000)")
    parser.add_argument("--floods", type=int, default=50, help="flood posts in a row (default 50; 1 before the cap)")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per probe, seconds")
    args = parser.parse_args(argv)

    import function_app
    from devhost.host import LocalHost
    from devhost.stack import app_settings
    from emulators.azurite import running_azurite
    from sync import bootstrap
    from sync.adapters.graph import client_state_digest
    from sync.ports import StoredSubscription
    from sync.triggers import graph

    state = "bench-client-state"
    logging.basicConfig(level=logging.CRITICAL)
    warnings = _Warnings()
    sync_log = logging.getLogger("sync")
    sync_log.addHandler(warnings)
    sync_log.propagate = False
    sync_log.setLevel(logging.WARNING)
    logging.getLogger("devhost").setLevel(logging.CRITICAL)
    cap = getattr(graph, "MAX_NOTIFICATIONS", None)
    results: list[dict[str, Any]] = []
    acks: list[tuple[int, float]] = []
    with running_azurite() as azurite:
        settings = app_settings(azurite.connection_string, ["ann@contoso.com"],
                                table_prefix="flood" + uuid.uuid4().hex[:8])
        bootstrap.reset()
        with LocalHost(function_app, settings=settings) as host:
            bootstrap.current().subscriptions.put(StoredSubscription(
                id="bench-sub", mailbox="ann@contoso.com", resource="users/u/contactFolders/f/contacts",
                expires_at=datetime.now(UTC) + timedelta(days=2), client_state_digest=client_state_digest(state)))
            _post(host.port, _fake_ids(1), 10.0)  # warm-up: first table read, first queue client
            print(f"webhook flood through the local host (item cap: {cap or 'none'})")
            stop = threading.Event()
            poster = threading.Thread(target=_real_acks, args=(host.port, state, stop, acks), daemon=True)
            poster.start()
            floods = args.floods if cap else 1  # without the cap one flood takes most of a minute
            results.append(_probe("flood", host.port, _fake_ids(args.n), warnings, args.timeout, floods))
            stop.set()
            poster.join(35)
            if cap:
                results.append(_probe("wide", host.port, _fake_ids(cap), warnings, args.timeout))
            narrow = _fake_ids(getattr(graph, "MIN_DISTINCT_SUBSCRIPTIONS", 50))
            results.append(_probe("repeat1", host.port, narrow, warnings, args.timeout))
            results.append(_probe("repeat2", host.port, narrow, warnings, args.timeout))
        bootstrap.reset()

    slowest = max((s for _, s in acks), default=0.0)
    bad = sum(1 for status, _ in acks if status != 202)
    print(f"  real notifications during the flood: {len(acks)} posted, slowest ack {slowest:.3f} s, "
          f"{bad} not 202")
    from bench.results import record

    record("webhook_flood", {"probes": results, "real_acks": len(acks), "real_ack_max_s": round(slowest, 3),
                             "real_ack_not_202": bad, "target": "flood < 1 s, fixed reads; real acks < 3 s"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
