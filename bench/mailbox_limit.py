"""``python -m bench.mailbox_limit``: Graph's 4 requests per mailbox with 1 and 3 app instances (issue 17 point 2).

The stack: Azurite, the Graph and Salesforce emulators (this process) and N **separate** ``python -m devhost``
processes serving the real ``function_app`` on the same Azurite and emulators, as Flex Consumption runs N instances.
The queue consumers of every instance compete for ``contact-changes``; only instance 0 runs the CDC pull timer
(``CDC_PULL_SCHEDULE`` = every 5 s, hold 4 s; ``NEVER`` on the others, as the platform's singleton timer lock would
have it) and receives Graph's webhooks (``WEBHOOK_BASE_URL``); the reconcile and subscription timers never fire.

Setup (not timed): ``--reps`` (20) mailboxes with ``--edits`` (200) Salesforce contacts each, synced by an initial
reconcile, and ``--contacts`` (5,000) contacts owned by a departed rep outside the sync scope (no account, unless
``--company``: then one account for all, and matching looks for first + last name + company too); Graph subscriptions
created through the subscriptions timer of instance 0 (real handshake); a CDC pull in this process moves the
checkpoint past the seeding, and the hints it produced are cleared.

Workload (timed, the product's real paths): the departed rep's ``--contacts`` contacts are reassigned in Salesforce to
one rep (``target``; one owner change each: CDC -> hint queue -> workers -> Graph creates in that one mailbox) while
each of the ``--reps`` mailboxes gets ``--edits`` Outlook edits (job title; Graph notification -> webhook -> hint ->
worker -> Salesforce). Drained = every reassigned contact is in the target's folder and every edit is in Salesforce.

Reported per run (``--instances`` 1 and 3, ``--permits`` process and shared): the peak number of Graph requests in
flight per mailbox as the emulator counted them across all processes (must be <= 4), 429s the emulator answered for
MailboxConcurrency (target 0), time to drain, Graph requests. Graph answers after ``--graph-delay`` seconds (default
0.05, a stand-in for Graph's own latency; the emulator's default is 0). The emulator's 10,000-requests-per-10-minutes
limit is raised for the run (``--keep-rate-limit`` keeps it) so the run measures concurrency, not the rate window,
and so is the emulated org's daily API request limit (15,000, ``--keep-api-limit`` keeps it: the full workload uses
more, about one Salesforce request per hint; the Salesforce calls are printed);
the Graph requests the target mailbox received tell what that limit costs on real Graph (printed). Prints a table
and writes ``mailbox_limit`` in ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

TARGET = "target@contoso.com"
DEPARTED = "departed@contoso.com"
PERMIT_CDC = {"CDC_PULL_SCHEDULE": "*/5 * * * * *", "CDC_PULL_HOLD_SECONDS": "4"}


def _wait_http(port: int, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/host/status", timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:  # 401 without the key: it answers
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    raise RuntimeError(f"devhost on port {port} did not answer within {timeout:.0f}s")


def _start_instances(n: int, base: dict[str, str], workdir: Path, master: str) -> tuple[list[subprocess.Popen[bytes]],
                                                                                     list[int]]:
    from emulators.azurite import free_port

    ports = [free_port() for _ in range(n)]
    procs = []
    for i, port in enumerate(ports):
        values = {**base, "WEBHOOK_BASE_URL": f"http://127.0.0.1:{ports[0]}"}
        values |= PERMIT_CDC if i == 0 else {"CDC_PULL_SCHEDULE": "0 0 0 1 1 *"}
        settings = workdir / f"instance{i}.settings.json"
        settings.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
        log = open(workdir / f"instance{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "devhost", "--settings", str(settings), "--port", str(port), "--master-key", master],
            stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), start_new_session=True))
    for port in ports:
        _wait_http(port, 60)
    return procs, ports


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def run(instances: int, permits: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.scale import stack
    from devhost.stack import call
    from sync import bootstrap
    from sync.reconcile import reconcile_mailbox

    reps = [f"rep{i:02d}@contoso.com" for i in range(args.reps)]
    with stack([*reps, TARGET]) as s:
        departed = s.sf.add_user(f"{DEPARTED}.sf", DEPARTED, last_name="Departed")
        for r, mb in enumerate(reps):  # no company: the match looks up the email only (see docs/performance.md)
            s.sf.bulk_create_contacts([{"FirstName": f"R{r}", "LastName": f"Edit{i}",
                                        "Email": f"r{r}e{i}@bench.example", "OwnerId": s.users[mb]}
                                       for i in range(args.edits)], as_user=s.users[mb])
        # --company: the reassigned contacts have an account, so matching also looks for first + last name + company
        account = {"AccountId": s.sf.add_account("Moved Co")} if args.company else {}
        moved = s.sf.bulk_create_contacts([{"FirstName": "Moved", "LastName": f"M{i}", "Email": f"m{i}@bench.example",
                                            "OwnerId": departed, **account} for i in range(args.contacts)],
                                          as_user=departed)
        settings = {**s.settings(), "SF_PUBSUB_ENDPOINT": s.sf.grpc_target, "SF_PUBSUB_INSECURE": "true",
                    "GRAPH_MAILBOX_PERMITS": permits}
        root = bootstrap.install(bootstrap.Root(settings))
        try:
            for mb in reps:
                reconcile_mailbox(root.engine, mb)
            reconcile_mailbox(root.engine, TARGET)  # its (empty) folder
            edits = {mb: [lk.m365_id for lk in root.links.list(mb) if lk.m365_id] for mb in reps}
            sentinel = next(lk.sf_id for lk in root.links.list(reps[0]) if lk.sf_id)
            # The first pull of a fresh install starts at LATEST: one edit while it holds the subscription gives the
            # checkpoint a replay id past the seeding (one hint on the queue, not one per seeded contact).
            puller = threading.Thread(target=root.cdc.pull, kwargs={"max_events": 100, "max_seconds": 8,
                                                                    "idle_seconds": 8})
            puller.start()
            time.sleep(3)
            s.sf.update_contact(sentinel or "", {"Department": "Sentinel"}, as_user=s.users[reps[0]])
            puller.join()
        finally:
            bootstrap.reset()
        assert all(len(v) == args.edits for v in edits.values()), "the initial sync linked every contact"
        from azure.storage.queue import QueueClient

        queued = QueueClient.from_connection_string(s.conn, "contact-changes").get_queue_properties()
        assert (queued.approximate_message_count or 0) <= 5, f"{queued.approximate_message_count} hints queued"
        s.graph.faults.delay_s = args.graph_delay
        if not args.keep_rate_limit:
            s.graph.faults.mailbox_rate_limit = 10**9
        if not args.keep_api_limit:  # the emulated org's 24-hour API request limit (15,000, a Developer org's)
            s.sf.org.api_max = 10**9
        master = uuid.uuid4().hex
        workdir = Path(tempfile.mkdtemp(prefix="bench-mailbox-limit-"))
        procs, ports = _start_instances(instances, settings, workdir, master)
        try:
            status, _, _ = call("POST", f"http://127.0.0.1:{ports[0]}/admin/functions/subscriptions_timer",
                                {"input": ""}, key=master, timeout=120)
            assert status in (200, 202), f"subscriptions timer: {status}"
            deadline = time.monotonic() + 60
            while len(s.graph.list_subscriptions()) < len(reps) + 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(6)  # the first CDC pull of instance 0 is holding the subscription
            s.graph.gate.reset()
            s.graph.counters.reset()
            s.sf.counters.reset()
            started = time.monotonic()

            def reassign() -> None:
                for cid in moved:
                    s.sf.change_owner(cid, s.users[TARGET], as_user=departed)

            def edit() -> None:
                for i in range(args.edits):
                    for mb in reps:
                        s.graph.update_contact(mb, edits[mb][i], {"jobTitle": f"Title {i}"})

            writers = [threading.Thread(target=reassign), threading.Thread(target=edit)]
            for w in writers:
                w.start()
            for w in writers:
                w.join()
            written = time.monotonic() - started
            folder = s.graph.find_folder(TARGET, "Salesforce_Sync")
            expected_titles = {f"r{r}e{i}@bench.example": f"Title {i}" for r in range(args.reps)
                               for i in range(args.edits)}
            deadline = time.monotonic() + args.timeout
            arrived = edited = 0
            checked = edits_in = 0.0
            # The emulators run in this process: the polling must not compete with them. The folder is counted every
            # second without rendering it; Salesforce (a copy of every contact) is read every 5 s until the edits are
            # all in, then no more (nothing in the workload undoes them).
            while time.monotonic() < deadline:
                arrived = s.graph.count_contacts(TARGET, folder) if folder else 0
                if edited < len(expected_titles) and time.monotonic() - checked >= 5.0:
                    checked = time.monotonic()
                    edited = len({c["Email"] for c in s.sf.contacts() if c.get("Email") in expected_titles
                                  and expected_titles[c["Email"]] == c.get("Title")})
                    edits_in = time.monotonic() - started
                if arrived >= args.contacts and edited >= len(expected_titles):
                    break
                time.sleep(1.0)
            drained = time.monotonic() - started
            rep_rows = [c for c in s.sf.contacts() if c.get("Email") in expected_titles]
            target_rows = [c for c in s.sf.contacts() if str(c.get("Email") or "").startswith("m")]
        finally:
            _stop(procs)
        gate = s.graph.gate.snapshot()
        target_uid = s.graph.user_id(TARGET)
        rep_uids = {s.graph.user_id(mb) for mb in reps}
        target = gate["mailboxes"].get(target_uid, {})
        out = {
            "instances": instances, "permits": permits, "contacts": args.contacts, "reps": args.reps,
            "edits_per_rep": args.edits, "graph_delay_s": args.graph_delay, "company": args.company,
            "rate_limit": "kept" if args.keep_rate_limit else "raised",
            "salesforce_api_limit": "kept" if args.keep_api_limit else "raised",
            "drained": arrived >= args.contacts and edited >= len(expected_titles),
            # Salesforce contacts of the edited people, and of the reassigned ones: more than one per person is a
            # duplicate made by the sync (the workload creates none)
            "sf_edited_people": len(rep_rows), "sf_edited_distinct": len({c.get("Email") for c in rep_rows}),
            "sf_moved_people": len(target_rows), "target_folder": arrived,
            "arrived": arrived, "edited": edited, "written_s": round(written, 1), "drain_s": round(drained, 1),
            "edits_in_s": round(edits_in, 1),  # when the edits were seen all in Salesforce (5 s polling)
            "peak_target": target.get("peak", 0),
            "peak_reps": max((v["peak"] for m, v in gate["mailboxes"].items() if m in rep_uids), default=0),
            "concurrency_429": gate["refusedConcurrency"],
            "concurrency_429_target": target.get("refusedConcurrency", 0),
            "rate_429": gate["refusedRate"],
            "graph_requests": s.graph.counters.http_requests(),
            "graph_requests_target": s.graph.counters.count(mailbox=target_uid),
            # what the target mailbox's requests were (batch items under their own endpoint): per reassigned contact
            "graph_target_per_contact": {e: round(n / max(1, args.contacts), 2) for (m, e), n in
                                         sorted(s.graph.counters.requests.items()) if m == target_uid},
            "salesforce_calls": {k: v for k, v in sorted(s.sf.counters.snapshot().items())
                                 if k.startswith(("rest.", "grpc.events"))},
            "logs": str(workdir),
        }
    print(f"  {instances} instance(s), permits={permits:<7}: drained {out['drained']} in {out['drain_s']:>6} s "
          f"(writes {out['written_s']} s, edits in by {out['edits_in_s']} s); "
          f"peak in flight: target {out['peak_target']}, reps {out['peak_reps']}; "
          f"MailboxConcurrency 429s {out['concurrency_429']} (target {out['concurrency_429_target']}); "
          f"Graph requests {out['graph_requests']} (target {out['graph_requests_target']}); Salesforce contacts of "
          f"the {out['sf_edited_distinct']} edited people: {out['sf_edited_people']}; target requests per reassigned "
          f"contact: {out['graph_target_per_contact']}; Salesforce calls: {out['salesforce_calls']}", flush=True)
    return out


def permit_cost(n: int = 200) -> dict[str, Any]:
    """What a shared slot costs one Graph request (one process, Graph answering at once): the request time with the
    per-process permits only, with shared slots in a burst (a slot lingers for the next request), and with shared
    slots when requests are 100 ms apart (every request takes and gives back its slot); table transactions per
    request."""
    from emulators.azurite import running_azurite
    from emulators.graph import GraphEmulator
    from sync.adapters.graph import GraphContactSide, SharedPermits
    from sync.adapters.storage import TableStorage
    from sync.bootstrap import StaticTokenCredential
    from sync.model import Contact

    mb = "cost@contoso.com"
    out: dict[str, Any] = {"requests": n}
    with running_azurite() as azurite, GraphEmulator(users=[mb]) as graph:
        table = TableStorage.from_connection_string(azurite.connection_string,
                                                    "cost" + uuid.uuid4().hex[:8]).graph_permits()
        for name, shared, gap in (("process", False, 0.0), ("shared_burst", True, 0.0), ("shared_spaced", True, 0.1)):
            permits = SharedPermits(table) if shared else None
            side = GraphContactSide(StaticTokenCredential(), base_url=graph.base_url, mailboxes=[mb], permits=permits)
            try:
                made = side.create(mb, Contact(first_name="C", last_name="Cost", emails=["c@example.com"]))
                for _ in range(10):  # warm-up: connections, SDK imports
                    side.get(mb, made.id)
                if permits is not None:
                    permits.stats["transactions"] = 0
                took = 0.0
                for _ in range(n):
                    t = time.perf_counter()
                    side.get(mb, made.id)
                    took += time.perf_counter() - t
                    if gap:
                        time.sleep(gap)
            finally:
                side.close()
                if permits is not None:
                    permits.close()
            stats = permits.stats if permits is not None else {}
            out[name] = {"mean_ms": round(1000 * took / n, 2),
                         "transactions_per_request": round(stats.get("transactions", 0) / n, 2)}
    print(f"  cost of a shared slot, {n} sequential Graph GETs (Graph answering at once): per-process permits "
          f"{out['process']['mean_ms']} ms/request; shared, burst {out['shared_burst']['mean_ms']} ms "
          f"({out['shared_burst']['transactions_per_request']} table transactions/request); shared, 100 ms apart "
          f"{out['shared_spaced']['mean_ms']} ms ({out['shared_spaced']['transactions_per_request']}/request)",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mailbox_limit")
    parser.add_argument("--contacts", type=int, default=5000, help="contacts reassigned to one rep (default 5,000)")
    parser.add_argument("--reps", type=int, default=20, help="mailboxes with Outlook edits (default 20)")
    parser.add_argument("--edits", type=int, default=200, help="Outlook edits per mailbox (default 200)")
    parser.add_argument("--instances", default="1,3", help="instance counts to run (default 1,3)")
    parser.add_argument("--permits", default="process,shared", help="GRAPH_MAILBOX_PERMITS values (default both)")
    parser.add_argument("--graph-delay", type=float, default=0.05, help="seconds Graph takes per request (0.05)")
    parser.add_argument("--company", action="store_true",
                        help="the reassigned contacts have an account (matching by name + company runs too)")
    parser.add_argument("--keep-rate-limit", action="store_true", help="keep Graph's 10,000 requests / 10 min")
    parser.add_argument("--keep-api-limit", action="store_true",
                        help="keep the emulated org's 15,000 Salesforce API requests a day")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the drain (default 1800)")
    parser.add_argument("--cost-only", action="store_true", help="only the cost of a shared slot")
    parser.add_argument("--out", default="bench/results.json", help="results file (default bench/results.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("sync", "emulators", "azure", "urllib3", "httpx", "devhost"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"Graph's per-mailbox limit: {args.contacts} contacts reassigned to one rep + {args.reps} mailboxes x "
          f"{args.edits} Outlook edits, Graph latency {args.graph_delay} s", flush=True)
    cost = permit_cost()
    if args.cost_only:
        return 0
    rows = [run(int(n), permits, args) for n in args.instances.split(",") for permits in args.permits.split(",")]
    from bench.results import record

    record("mailbox_limit", {"runs": rows, "permit_cost": cost,
                             "target": "peak <= 4 per mailbox, 0 MailboxConcurrency 429s"}, args.out)
    return 0 if all(r["drained"] and r["peak_target"] <= 4 and r["peak_reps"] <= 4 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
