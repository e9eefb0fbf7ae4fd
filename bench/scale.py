"""``python -m bench.scale``: initial sync, no-change reconciles, and a 100,000-contact mailbox, counted in calls.

Azurite + the Graph emulator + the Salesforce emulator (this process), the real engine and adapters (msgraph-sdk,
simple-salesforce, azure-data-tables) built from app settings exactly as the function app builds them. Every request
is counted where it lands: the Graph emulator counts HTTP requests (a ``$batch`` is one), the Salesforce emulator
counts REST API calls (what the org's daily API limit counts), and the table adapter counts its own requests
(``sync.adapters.storage.REQUESTS``). The counts are compared with the theoretical minimum of the same run:

- Graph: one ``$batch`` per 20 writes (docs/reference/graph.md §5);
- Salesforce: one query call per 2,000 rows read (docs/reference/salesforce.md §2.2), one sObject Collections call per
200 writes
  (§2.5);
- Table Storage: one transaction per 100 rows (docs/reference/azure.md §4.2), one row per contact.

The 100,000-contact reconcile runs in a child process (``--child``) so that its peak RSS is the engine's alone, not
the emulators'. Prints a table and writes ``bench/results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

JWT_CLIENT = "contact-sync-bench"
COMPANIES = ("Northwind Traders", "Adventure Works", "Tailspin Toys", "Wide World Importers", "Litware")


@dataclass
class Stack:
    conn: str
    graph: Any
    sf: Any
    private: bytes
    mailboxes: list[str]
    users: dict[str, str]

    def settings(self) -> dict[str, str]:
        """App settings as local.settings.json would hold them for the emulators (docs/configuration.md)."""
        from devhost.stack import app_settings

        return app_settings(self.conn, self.mailboxes, table_prefix="bench" + uuid.uuid4().hex[:8], graph=self.graph,
                            salesforce=self.sf, jwt_client=JWT_CLIENT, private_key=self.private, pubsub=False)


@contextmanager
def stack(mailboxes: list[str]) -> Iterator[Stack]:
    from devhost.stack import jwt_keys
    from emulators.azurite import running_azurite
    from emulators.graph import GraphEmulator
    from emulators.salesforce import SalesforceEmulator

    private, public = jwt_keys()
    with running_azurite() as azurite, GraphEmulator(users=mailboxes) as graph, SalesforceEmulator() as sf:
        graph.faults.notification_drop_rate = 0.0
        sf.register_jwt_client(JWT_CLIENT, public)
        users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0].title()) for mb in mailboxes}
        yield Stack(azurite.connection_string, graph, sf, private, mailboxes, users)


def contact_row(n: int, accounts: dict[str, str], owner: str) -> dict[str, Any]:
    """The bench's Salesforce contact number ``n``: names, email, phone, title, account, mailing address."""
    return {"FirstName": f"First{n}", "LastName": f"Last{n}", "Email": f"p{n}@bench.example",
            "Phone": f"+1 425 555 {n % 10000:04d}", "Title": "Buyer", "Department": "Purchasing",
            "AccountId": accounts[COMPANIES[n % len(COMPANIES)]], "MailingCity": "Redmond",
            "MailingCountry": "United States", "OwnerId": owner}


def seed(s: Stack, per_mailbox: int) -> None:
    """``per_mailbox`` Salesforce contacts for each rep: names, email, phones, title, account, mailing address."""
    accounts = {name: s.sf.add_account(name) for name in COMPANIES}
    for r, mb in enumerate(s.mailboxes):
        for start in range(0, per_mailbox, 5000):
            rows = []
            for i in range(start, min(per_mailbox, start + 5000)):
                rows.append(contact_row(r * per_mailbox + i, accounts, s.users[mb]))
            s.sf.bulk_create_contacts(rows, as_user=s.users[mb])


# ---------------------------------------------------------------------------------------------- counting


@dataclass
class Calls:
    graph: int
    graph_batch: int
    graph_delta: int
    sf: int
    sf_query: int
    sf_collections: int
    contact_writes: int  # Graph contact creates/updates/deletes (batch items included) + Salesforce write calls
    tables: dict[str, int]

    @property
    def table_total(self) -> int:
        return sum(self.tables.values())

    def minus(self, before: Calls) -> Calls:
        keys = set(self.tables) | set(before.tables)
        return Calls(self.graph - before.graph, self.graph_batch - before.graph_batch,
                     self.graph_delta - before.graph_delta, self.sf - before.sf, self.sf_query - before.sf_query,
                     self.sf_collections - before.sf_collections, self.contact_writes - before.contact_writes,
                     {k: self.tables.get(k, 0) - before.tables.get(k, 0) for k in sorted(keys)})


def calls(s: Stack) -> Calls:
    from sync.adapters.storage import REQUESTS

    c = s.sf.counters
    return Calls(graph=s.graph.counters.http_requests(), graph_batch=s.graph.counters.count(endpoint="$batch"),
                 graph_delta=s.graph.counters.count(endpoint="contacts.delta"), sf=c["rest.requests"],
                 sf_query=c["rest.query"] + c["rest.queryAll"] + c["rest.query_more"],
                 sf_collections=c["rest.composite_sobjects"],
                 contact_writes=sum(s.graph.counters.count(endpoint=e) for e in
                                    ("contacts.create", "contact.update", "contact.delete"))
                 + sum(c[k] for k in ("rest.composite_sobjects", "rest.create", "rest.update", "rest.delete")),
                 tables=REQUESTS.snapshot())


def rss_mb() -> float:
    """Peak RSS of this process's own address space (``VmHWM``). Not ``ru_maxrss``: Linux keeps that across
    fork + exec, so a child would report its parent's size (here, the emulators holding every contact)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- measures


def initial_and_no_change(mailboxes: int, per_mailbox: int) -> dict[str, Any]:
    from sync import bootstrap
    from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta

    names = [f"rep{i:02d}@contoso.com" for i in range(mailboxes)]
    out: dict[str, Any] = {}
    with stack(names) as s:
        t = time.perf_counter()
        seed(s, per_mailbox)
        print(f"  seeded {mailboxes} x {per_mailbox} Salesforce contacts in {time.perf_counter() - t:.1f} s",
              flush=True)
        root = bootstrap.install(bootstrap.Root(s.settings()))
        try:
            n = mailboxes * per_mailbox
            # --- initial sync: every Salesforce contact copied into its owner's Outlook folder
            before, t = calls(s), time.perf_counter()
            applied = 0
            for mb in names:
                report = reconcile_mailbox(root.engine, mb)
                applied += report.applied.get("create:m365", 0)
                if report.errors:
                    raise SystemExit(f"initial sync of {mb} had errors: {report.errors[:3]}")
            wall = time.perf_counter() - t
            used = calls(s).minus(before)
            in_outlook = sum(len(s.graph.list_contacts(mb, s.graph.find_folder(mb, "Salesforce_Sync"))) for mb in names)
            minimum = {"graph": mailboxes * math.ceil(per_mailbox / 20),
                       "sf": mailboxes * math.ceil(per_mailbox / 2000),
                       "tables": mailboxes * math.ceil(per_mailbox / 100)}
            out["initial_sync"] = {
                "mailboxes": mailboxes, "contacts": n, "created_in_outlook": applied, "in_outlook_after": in_outlook,
                "wall_s": round(wall, 2), "contacts_per_s": round(n / wall, 1),
                "graph_calls": used.graph, "graph_batches": used.graph_batch, "sf_calls": used.sf,
                "sf_queries": used.sf_query, "sf_collections": used.sf_collections, "table_calls": used.table_total,
                "table_calls_by_kind": used.tables, "minimum": minimum,
                "ratio": {"graph": round(used.graph / minimum["graph"], 3), "sf": round(used.sf / minimum["sf"], 3),
                          "tables": round(used.table_total / minimum["tables"], 3)},
            }
            # --- no-change reconciles: a full pass, then the delta pass the timer runs (its first run starts over)
            for mb in names:
                reconcile_mailbox_delta(root.engine, mb, root.checkpoints)  # first delta: checkpoints, full pass
            for label, run in (("no_change_full", lambda mb: reconcile_mailbox(root.engine, mb)),
                               ("no_change_delta",
                                lambda mb: reconcile_mailbox_delta(root.engine, mb, root.checkpoints))):
                before, t = calls(s), time.perf_counter()
                planned: dict[str, int] = {}
                for mb in names:
                    report = run(mb)
                    for k, v in report.planned.items():
                        planned[k] = planned.get(k, 0) + v
                wall = time.perf_counter() - t
                used = calls(s).minus(before)
                writes = used.contact_writes
                table_writes = sum(v for k, v in used.tables.items() if k in ("transaction", "write", "delete"))
                out[label] = {"wall_s": round(wall, 2), "planned": planned, "graph_calls": used.graph,
                              "graph_delta_calls": used.graph_delta, "sf_calls": used.sf,
                              "sf_queries": used.sf_query, "table_calls": used.table_total,
                              "table_calls_by_kind": used.tables, "contact_writes": writes,
                              "table_writes": table_writes,
                              "graph_calls_per_mailbox": round(used.graph / mailboxes, 2),
                              "sf_calls_per_mailbox": round(used.sf / mailboxes, 2)}
        finally:
            bootstrap.reset()
    return out


def big_mailbox(contacts: int) -> dict[str, Any]:
    """One mailbox with ``contacts`` Salesforce contacts: the initial sync, then a no-change full reconcile, each
    in a fresh child process whose peak RSS is reported."""
    mb = "big@contoso.com"
    out: dict[str, Any] = {"contacts": contacts}
    with stack([mb]) as s:
        # this run measures memory: Graph's 10,000 requests per 10 minutes per mailbox (docs/reference/graph.md §5; a
        # $batch item counts) would make 100,000 creates take 100 minutes and the no-change pass wait for the window
        s.graph.faults.mailbox_rate_limit = 10**9
        t = time.perf_counter()
        seed(s, contacts)
        print(f"  seeded {contacts} Salesforce contacts in {time.perf_counter() - t:.1f} s", flush=True)
        settings = s.settings()
        for label in ("initial_sync", "no_change_full"):
            before = calls(s)
            proc = subprocess.run([sys.executable, "-m", "bench.scale", "--child", mb],  # noqa: S603
                                  input=json.dumps(settings), capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"child reconcile failed:\n{proc.stderr[-3000:]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            used = calls(s).minus(before)
            out[label] = {**child, "graph_calls": used.graph, "sf_calls": used.sf}
            print(f"  {label}: {child['wall_s']} s, peak RSS {child['peak_rss_mb']} MB", flush=True)
    return out


def child(mailbox: str) -> int:
    """Reconcile one mailbox from app settings on stdin; print wall time, peak RSS and the report as JSON."""
    from sync import bootstrap
    from sync.adapters.storage import REQUESTS
    from sync.reconcile import reconcile_mailbox

    logging.basicConfig(level=logging.WARNING)
    root = bootstrap.install(bootstrap.Root(json.loads(sys.stdin.read())))
    start_rss, t = rss_mb(), time.perf_counter()
    report = reconcile_mailbox(root.engine, mailbox, force=True)
    wall = time.perf_counter() - t
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": round(rss_mb(), 1),
                      "rss_before_mb": round(start_rss, 1), "visited": report.visited, "planned": report.planned,
                      "applied": report.applied, "errors": len(report.errors), "table_calls": REQUESTS.snapshot()}))
    bootstrap.reset()
    return 0


# ---------------------------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    init = results.get("initial_sync")
    if init:
        m = init["minimum"]
        rows += [
            ("initial sync", f"{init['mailboxes']} mailboxes x {init['contacts'] // init['mailboxes']} contacts",
             f"{init['wall_s']} s, {init['contacts_per_s']} contacts/s", ""),
            ("  Graph calls", f"{init['graph_calls']} ({init['graph_batches']} $batch)",
             f"min {m['graph']}: ratio {init['ratio']['graph']}", "<= 1.1"),
            ("  Salesforce calls", f"{init['sf_calls']} ({init['sf_queries']} query)",
             f"min {m['sf']}: ratio {init['ratio']['sf']}", "<= 1.1"),
            ("  Table calls", f"{init['table_calls']} {init['table_calls_by_kind']}",
             f"min {m['tables']}: ratio {init['ratio']['tables']}", "<= 1.1"),
        ]
    for key, label in (("no_change_full", "no-change full reconcile"),
                       ("no_change_delta", "no-change delta reconcile")):
        r = results.get(key)
        if r:
            rows.append((label, f"{r['wall_s']} s; Graph {r['graph_calls']} ({r['graph_delta_calls']} delta), "
                                f"Salesforce {r['sf_calls']} ({r['sf_queries']} query), tables {r['table_calls']}",
                         f"per mailbox: Graph {r['graph_calls_per_mailbox']}, SF {r['sf_calls_per_mailbox']}; "
                         f"contact writes {r['contact_writes']} (table writes {r['table_writes']}: checkpoints)",
                         "<= 1 delta, <= 1 query/owner page, 0 writes"
                         if key == "no_change_delta" else ""))
    big = results.get("big_mailbox")
    if big:
        for key in ("initial_sync", "no_change_full"):
            r = big.get(key)
            if r:
                rows.append((f"{big['contacts']:,} contacts, one mailbox: {key.replace('_', ' ')}",
                             f"{r['wall_s']} s, {r['visited']} visited, {r['errors']} errors",
                             f"peak RSS {r['peak_rss_mb']} MB (at start {r['rss_before_mb']} MB)", "< 250 MB"))
    width = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    lines = [f"cores: {os.cpu_count()}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--per-mailbox", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000, help="contacts in the one-mailbox run (0 skips it)")
    parser.add_argument("--out", default="bench/results.json", help="results file (default bench/results.json)")
    parser.add_argument("--child", metavar="MAILBOX", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    logging.basicConfig(level=logging.WARNING)
    for name in ("sync", "emulators", "azure", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    results: dict[str, Any] = {"cores": os.cpu_count()}
    print(f"initial sync and no-change reconciles: {args.mailboxes} mailboxes x {args.per_mailbox}", flush=True)
    results.update(initial_and_no_change(args.mailboxes, args.per_mailbox))
    if args.big:
        print(f"one mailbox with {args.big} contacts (child process)", flush=True)
        results["big_mailbox"] = big_mailbox(args.big)
    print(table(results))
    from bench.results import record

    record("scale", results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
