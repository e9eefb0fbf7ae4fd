"""``python -m bench.cdc_latency``: a Salesforce edit -> Outlook written, through the deployed CDC path.

Azurite, the Graph and Salesforce emulators (Pub/Sub keep-alives every 270 s, as Salesforce) and the real
``function_app`` on the local host (``devhost``), with the deployed defaults: ``CDC_PULL_SCHEDULE`` and
``CDC_PULL_HOLD_SECONDS`` from ``sync/config.py`` (the hold did not exist before issue 16) and the repository's
``host.json`` (queue polling). Nothing is fired by hand: the timer pulls on its schedule, the queue trigger polls, the
worker writes Outlook. ``-n`` edits (default 100) of one Salesforce field each, on different contacts, spread at random
over several minutes (mean gap ``--gap`` s); each is timed from the Salesforce write to the moment the Graph emulator
holds the new value (polled every 20 ms), from the first scheduled pull on. An edit that has not arrived 180 s
after the last one counts as never
(quantiles over all edits; ``None`` = never). Prints p50/p99/max and writes ``cdc_latency[_<label>]`` in
``bench/results.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import threading
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cdc_latency")
    parser.add_argument("-n", type=int, default=100, help="edits (default 100)")
    parser.add_argument("--gap", type=float, default=2.5, help="mean seconds between edits (default 2.5)")
    parser.add_argument("--label", default="", help="a note stored with the result (e.g. before/after)")
    parser.add_argument("--out", default="bench/results.json", help="results file (default bench/results.json)")
    args = parser.parse_args(argv)

    import function_app
    from bench.scale import stack
    from devhost.host import LocalHost
    from emulators.azurite import free_port
    from sync import bootstrap
    from sync.config import SETTINGS
    from sync.reconcile import reconcile_mailbox

    logging.basicConfig(level=logging.WARNING)
    for name in ("sync", "emulators", "azure", "urllib3", "httpx", "devhost"):
        logging.getLogger(name).setLevel(logging.ERROR)
    defaults = {s.name: s.default or "" for s in SETTINGS}
    schedule, hold = defaults["CDC_PULL_SCHEDULE"], defaults.get("CDC_PULL_HOLD_SECONDS")
    mb, rng = "ann@contoso.com", random.Random(16)
    with stack([mb]) as s:
        s.sf.bulk_create_contacts([{"FirstName": f"F{i}", "LastName": f"L{i}", "Email": f"l{i}@bench.example",
                                    "OwnerId": s.users[mb]} for i in range(args.n)], as_user=s.users[mb])
        port = free_port()
        settings = {**s.settings(), "SF_PUBSUB_ENDPOINT": s.sf.grpc_target, "SF_PUBSUB_INSECURE": "true",
                    "CDC_PULL_SCHEDULE": schedule, "WEBHOOK_BASE_URL": f"http://127.0.0.1:{port}"}
        if hold is not None:  # the setting exists since issue 16
            settings["CDC_PULL_HOLD_SECONDS"] = hold
        root = bootstrap.install(bootstrap.Root(settings))
        try:
            reconcile_mailbox(root.engine, mb)  # the initial sync links everyone
            links = [lk for lk in root.links.list(mb) if lk.m365_id and lk.sf_id]
        finally:
            bootstrap.reset()
        assert len(links) == args.n, "the initial sync linked every contact"
        pending: dict[int, tuple[str, str, float]] = {}  # edit -> (Outlook id, value, written at)
        took: dict[int, float] = {}
        lock, done = threading.Lock(), threading.Event()

        def watch() -> None:
            while not done.is_set():
                with lock:
                    items = list(pending.items())
                for i, (m365_id, value, at) in items:
                    if (s.graph.get_contact(mb, m365_id) or {}).get("department") == value:
                        with lock:
                            took[i] = time.monotonic() - at
                            del pending[i]
                time.sleep(0.02)

        host = LocalHost(function_app, port=port, settings=settings)
        host.start()
        watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            # steady state: the product has pulled once (a fresh install's first pull starts at LATEST, after the
            # initial reconcile; edits before it are the reconcile's), then a random phase against the schedule
            while host.invocations.get("salesforce_cdc_pull") is None or \
                    host.invocations["salesforce_cdc_pull"].started < 1:
                time.sleep(0.2)
            time.sleep(2 + rng.uniform(0, 60))
            for i, link in enumerate(links):
                value = f"Dept {i}"
                s.sf.update_contact(link.sf_id or "", {"Department": value}, as_user=s.users[mb])
                with lock:
                    pending[i] = (link.m365_id or "", value, time.monotonic())
                time.sleep(rng.expovariate(1 / args.gap))
            deadline = time.monotonic() + 180
            while pending and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            done.set()
            watcher.join(5)
            host.stop()
            bootstrap.reset()
    lost = len(pending)
    samples = sorted(took.values())
    # an edit that never arrived counts as infinitely late: the quantiles are over every edit made
    everything = samples + [float("inf")] * lost

    def pct(p: int) -> float:  # nearest rank
        return everything[max(0, math.ceil(p / 100 * len(everything)) - 1)]

    def ms(x: float) -> float | None:
        return round(x * 1000) if x != float("inf") else None

    out: dict[str, Any] = {
        "label": args.label, "schedule": schedule, "edits": args.n, "arrived": len(samples), "lost": lost,
        "p50_ms": ms(pct(50)), "p99_ms": ms(pct(99)), "max_ms": ms(max(everything)),
        "mean_arrived_ms": ms(statistics.fmean(samples)) if samples else None,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(f"Salesforce edit -> Outlook via CDC ({args.label or 'run'}), schedule {schedule!r}, {args.n} edits: "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, max {out['max_ms']} ms, "
          f"{lost} not arrived within 180 s (None: never); "
          f"target p50 < 2000, p99 < 5000")
    from bench.results import record

    record("cdc_latency" + (f"_{args.label}" if args.label else ""), out, args.out)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
