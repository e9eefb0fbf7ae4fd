"""``python -m bench.mailboxes [--mailboxes 2000 --per-mailbox 25]``: thousands of mailboxes, counted in calls.

Azurite + the Graph and Salesforce emulators (this process) and the real app code built from app settings, with
``SYNC_MAILBOXES`` naming every mailbox. The function runs that touch every mailbox at once each run in a fresh
child process (``--child <step>``), so their wall time and peak RSS (``VmHWM``) are the app's alone:

1. ``subscriptions_create``: the subscriptions timer's upkeep (``maintain_subscriptions``) with none stored: a sync
   folder and a subscription per mailbox, each create answered by the real ``graph_notifications`` function through
   a loopback bridge (Graph's validation handshake, docs/reference/graph.md §4.3);
2. ``subscriptions_renew``: the same upkeep when every stored subscription expires within a day (the stored expiry
   is moved forward 6 days, as the 6-hourly timer finds it a day before the end);
3. ``timer_fanout``: the reconcile timer (``reconcile_timer``) with the weekly full pass not due: one job, one queue
   message per mailbox;
4. ``no_change_delta``: each mailbox's delta pass (``reconcile_mailbox_delta``, what a ``reconcile`` queue message
   runs) when nothing changed anywhere, one after the other in one process (one instance serving the messages),
   twice: as a fresh instance (it looks each sync folder up first) and as the same instance at the next timer run
   (it knows the folders; ``sync.adapters.graph.folders.FOLDER_CHECK_EVERY_S``). Graph requests and Table requests
   per pass are counted by the child (the adapters); the emulators count both passes together.

Before step 3, in this process: the initial sync (a full pass per mailbox, as the timer's first run does), a first
delta pass per mailbox (its feeds start over: a full pass that stores both checkpoints), and a second one (it gets
again the Salesforce rows at the watermark of that full listing, see ``measure``).

Graph calls are counted by the Graph emulator (a ``$batch`` is one HTTP request), Salesforce calls by the
Salesforce emulator, Table requests by the adapter (``sync.adapters.storage.REQUESTS``, reported by each child,
tables only: queue sends are not in it). Prints a table and writes
``bench/results-mailboxes.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.scale import COMPANIES, Stack, contact_row, rss_mb, stack
from devhost.stack import webhook_bridge

GRAPH_ENDPOINTS = ("contactFolders.list", "contactFolders.create", "contactFolder.get", "subscriptions.create",
                   "subscription.get", "subscription.update", "subscription.delete", "contacts.delta")


def seed(s: Stack, per_mailbox: int, rows_per_load: int = 5000) -> None:
    """``per_mailbox`` Salesforce contacts per rep (as ``bench.scale.seed`` makes them), loaded in imports of
    ``rows_per_load`` rows across reps: the emulator's cost per transaction made one import per rep take minutes."""
    accounts = {name: s.sf.add_account(name) for name in COMPANIES}
    rows: list[dict[str, Any]] = []
    for r, mb in enumerate(s.mailboxes):
        for i in range(per_mailbox):
            rows.append(contact_row(r * per_mailbox + i, accounts, s.users[mb]))
            if len(rows) >= rows_per_load:
                s.sf.bulk_create_contacts(rows)
                rows = []
    if rows:
        s.sf.bulk_create_contacts(rows)


def graph_counts(s: Stack) -> dict[str, int]:
    c = s.graph.counters
    return {"http": c.http_requests(), **{e: c.count(endpoint=e) for e in GRAPH_ENDPOINTS}}


def sf_counts(s: Stack) -> dict[str, int]:
    c = s.sf.counters
    return {"requests": c["rest.requests"], "query": c["rest.query"] + c["rest.queryAll"] + c["rest.query_more"]}


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def run_child(step: str, settings: dict[str, str], upkeep_concurrency: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.mailboxes", "--child", step]
    if upkeep_concurrency:
        argv += ["--upkeep-concurrency", str(upkeep_concurrency)]
    proc = subprocess.run(argv, input=json.dumps(settings), capture_output=True, text=True,  # noqa: S603
                          timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"child {step} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure(mailboxes: int, per_mailbox: int, *, sync: bool = True, create_delay_s: float = 0.0,
            upkeep_concurrency: int | None = None) -> dict[str, Any]:
    from sync import bootstrap
    from sync.adapters.storage import REQUESTS, TableStorage
    from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta

    names = [f"rep{i:04d}@contoso.com" for i in range(mailboxes)]
    out: dict[str, Any] = {"mailboxes": mailboxes, "per_mailbox": per_mailbox, "create_delay_s": create_delay_s,
                           "upkeep_concurrency": upkeep_concurrency}
    with stack(names) as s, webhook_bridge() as base:
        s.graph.faults.subscription_create_delay_s = create_delay_s
        t = time.perf_counter()
        seed(s, per_mailbox)
        out["seed_s"] = round(time.perf_counter() - t, 1)
        print(f"  seeded {mailboxes} x {per_mailbox} Salesforce contacts in {out['seed_s']} s", flush=True)
        settings = {**s.settings(), "WEBHOOK_BASE_URL": base}
        root = bootstrap.install(bootstrap.Root(settings))  # the webhook bridge answers from this root
        try:
            def step(name: str) -> dict[str, Any]:
                g, f = graph_counts(s), sf_counts(s)
                child = run_child(name, settings, upkeep_concurrency if name.startswith("subscriptions") else None)
                result = {**child, "graph": minus(graph_counts(s), g), "sf": minus(sf_counts(s), f)}
                print(f"  {name}: {child['wall_s']} s, peak RSS {child['peak_rss_mb']} MB, "
                      f"Graph {result['graph']['http']}, outcome {child.get('outcome')}", flush=True)
                return result

            out["subscriptions_create"] = step("subscriptions_create")
            # six days later: every stored subscription expires within a day (Graph's own expiry is not moved; the
            # upkeep decides from the stored one and renews with a PATCH)
            store = TableStorage.from_connection_string(s.conn, settings["SYNC_TABLE_PREFIX"]).subscriptions()
            soon = datetime.now(UTC) + timedelta(hours=12)
            for sub in store.list_all():
                store.put(sub.model_copy(update={"expires_at": soon}))
            out["subscriptions_renew"] = step("subscriptions_renew")
            # from here on Graph drops its change notifications: the webhook's cost is bench.webhook_flood's, and in
            # this one process it would compete with the passes measured below (50,000 POSTs in the initial sync)
            s.graph.faults.notification_drop_rate = 1.0
            # the timer's first run is a full pass (the initial sync); the next one is a delta pass, whose change
            # feeds start over (no checkpoint yet): a full pass that changes nothing and stores both checkpoints.
            # The next delta pass gets again the Salesforce rows that share the newest SystemModstamp of the
            # org at that full listing (its watermark holds their ids only), and stores the new watermark: it is
            # measured too (second_delta) before the no-change pass
            delta = lambda mb: reconcile_mailbox_delta(root.engine, mb, root.checkpoints)  # noqa: E731
            passes = {"initial_sync": lambda mb: reconcile_mailbox(root.engine, mb), "first_delta": delta,
                      "second_delta": delta}
            for label, run in passes.items() if sync else ():
                g, f, tb, t = graph_counts(s), sf_counts(s), REQUESTS.snapshot(), time.perf_counter()
                errors = 0
                for mb in names:
                    errors += len(run(mb).errors)
                out[label] = {"wall_s": round(time.perf_counter() - t, 1), "errors": errors,
                              "graph": minus(graph_counts(s), g), "sf": minus(sf_counts(s), f),
                              "tables": minus(REQUESTS.snapshot(), tb)}
                print(f"  {label}: {out[label]['wall_s']} s, {errors} errors", flush=True)
            root.checkpoints.put("reconcile", "last-full", datetime.now(UTC).isoformat())  # the weekly pass: not due
            before = queued(s.conn)
            out["timer_fanout"] = step("timer_fanout")
            out["timer_fanout"]["messages"] = queued(s.conn) - before
            if sync:
                out["no_change_delta"] = step("no_change_delta")
        finally:
            bootstrap.reset()
    return out


def queued(conn: str) -> int:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    from sync.bootstrap import RECONCILE_QUEUE

    q = QueueClient.from_connection_string(conn, RECONCILE_QUEUE, api_version="2025-11-05")
    try:
        return int(q.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:  # made by the first send
        return 0


def child(step: str, upkeep_concurrency: int | None = None) -> int:
    """Run one step from app settings on stdin; print wall time, peak RSS, table requests and the outcome."""
    from sync import bootstrap, subscriptions
    from sync.adapters.storage import REQUESTS

    if upkeep_concurrency:
        subscriptions.UPKEEP_CONCURRENCY = upkeep_concurrency  # a non-default setting, named in the results

    logging.basicConfig(level=logging.WARNING)
    root = bootstrap.install(bootstrap.Root(json.loads(sys.stdin.read())))
    start_rss, t = rss_mb(), time.perf_counter()
    outcome: Any
    if step.startswith("subscriptions"):
        from sync.subscriptions import maintain_subscriptions

        outcome = dict(maintain_subscriptions(root))
    elif step == "timer_fanout":
        from azure.functions.timer import TimerRequest

        from sync.triggers import reconcile

        reconcile.reconcile_timer.build().get_user_function()(TimerRequest(past_due=False))
        outcome = "job started"
    elif step == "no_change_delta":
        from sync.model import Side
        from sync.reconcile import reconcile_mailbox_delta

        graph_stats = root.engine.sides[Side.M365].stats  # type: ignore[attr-defined]
        passes = []
        for label in ("fresh instance", "same instance, next run"):
            visited, ran, errors = 0, set(), 0
            g, tb, p0 = graph_stats["requests"], REQUESTS.snapshot(), time.perf_counter()
            for mb in root.mailboxes:
                report = reconcile_mailbox_delta(root.engine, mb, root.checkpoints)
                visited, errors = visited + report.visited, errors + len(report.errors)
                ran.add(report.ran)
            passes.append({"pass": label, "wall_s": round(time.perf_counter() - p0, 1),
                           "graph_requests": graph_stats["requests"] - g,
                           "tables": {k: v - tb.get(k, 0) for k, v in REQUESTS.snapshot().items()},
                           "visited": visited, "ran": sorted(ran), "errors": errors})
        outcome = {"passes": passes}
    else:
        raise SystemExit(f"unknown step {step}")
    wall = time.perf_counter() - t
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": round(rss_mb(), 1), "rss_before_mb": round(start_rss, 1),
                      "tables": REQUESTS.snapshot(), "outcome": outcome}))
    bootstrap.reset()
    return 0


def table(r: dict[str, Any]) -> str:
    n = r["mailboxes"]
    rows = [("step", "wall", "Graph HTTP requests", "Salesforce", "Table requests", "peak RSS")]
    for key in ("subscriptions_create", "subscriptions_renew", "initial_sync", "first_delta", "second_delta",
                "timer_fanout",
                "no_change_delta"):
        x = r.get(key)
        if not x:
            continue
        g = {k: v for k, v in x["graph"].items() if v and k != "http"}
        rows.append((key.replace("_", " "), f"{x['wall_s']} s", f"{x['graph']['http']} ({x['graph']['http'] / n:.2f}"
                     f"/mailbox) {g}", f"{x['sf']['requests']} ({x['sf']['query']} query)",
                     str(x.get("tables", "")), f"{x['peak_rss_mb']} MB" if "peak_rss_mb" in x else "(this process)"))
    for p in ((r.get("no_change_delta") or {}).get("outcome") or {}).get("passes") or []:
        rows.append((f"  {p['pass']}", f"{p['wall_s']} s", f"{p['graph_requests']} "
                     f"({p['graph_requests'] / n:.2f}/mailbox, counted by the adapter)", "", str(p["tables"]),
                     f"{p['visited']} visited, ran {p['ran']}, {p['errors']} errors"))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mailboxes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mailboxes", type=int, default=2000)
    ap.add_argument("--per-mailbox", type=int, default=25)
    ap.add_argument("--out", default="bench/results-mailboxes.json")
    ap.add_argument("--no-sync", action="store_true",
                    help="subscriptions and the timer's fan-out only (no initial sync, no delta passes)")
    ap.add_argument("--create-delay", type=float, default=0.0,
                    help="seconds the Graph emulator waits in each subscription create (Graph's latency; default 0)")
    ap.add_argument("--upkeep-concurrency", type=int, default=None,
                    help="mailboxes kept up at once (default: sync.subscriptions.UPKEEP_CONCURRENCY)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.upkeep_concurrency)
    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    results = measure(args.mailboxes, args.per_mailbox, sync=not args.no_sync, create_delay_s=args.create_delay,
                      upkeep_concurrency=args.upkeep_concurrency)
    results["total_s"] = round(time.perf_counter() - t, 1)
    print(table(results))
    print(f"total {results['total_s']} s")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

