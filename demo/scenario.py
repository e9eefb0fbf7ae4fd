"""``make demo`` / ``make demo-up``: the real function app on the local functions host, end to end on emulators.

Starts Azurite, the Graph emulator, the Salesforce emulator (REST over TLS, OAuth JWT bearer, Pub/Sub CDC over gRPC)
and ``devhost.host.LocalHost`` serving ``function_app`` on 127.0.0.1, configured only through app settings
(``devhost.stack``). Then it seeds a small org, creates the Graph subscriptions (real handshake), runs the initial
reconcile through ``POST /api/reconcile``, plays six live edits on both sides (each travels as in Azure: webhook or
CDC timer -> queue -> worker) and measures their latency, and ends with a reconcile that finds nothing to do.

Every claim is checked (``check``): one that does not hold fails the run. ``--json`` prints a structured summary
(claims, latencies, the audit of the live edits, counts) on stdout; ``--keep-running`` (``make demo-up``) leaves
everything up until Ctrl-C. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devhost.host import LocalHost
from devhost.stack import EVERY_SECOND, app_settings, call, jwt_keys
from emulators.azurite import free_port, running_azurite
from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator

ANN, BOB, CAROL = "ann@contoso.com", "bob@contoso.com", "carol@contoso.com"
MAILBOXES = (ANN, BOB, CAROL)
REPS = {ANN: "Ann", BOB: "Bob", CAROL: "Carol"}
JWT_CLIENT = "contact-sync-demo"
FOLDER = "Salesforce_Sync"
DEADLINE = 30.0

FIRST = ("Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Zoe", "Omar", "Lea", "Ivan", "Nina",
         "Hugo", "Sara", "Theo", "Iris", "Felix", "Maya", "Jonas")
LAST = ("Berg", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kowalski", "Larsen",
        "Moreau", "Nakamura", "Okafor", "Petrov")
COMPANIES = ("Northwind Traders", "Adventure Works", "Tailspin Toys", "Wide World Importers", "Litware",
             "Proseware", "Woodgrove Bank", "Alpine Ski House", "Coho Winery", "Lucerne Publishing")
PER_REP = 100


@dataclass
class Run:
    """What one run has checked so far; with ``--json`` the story goes to stderr and stdout holds only the summary."""

    claims: list[tuple[str, bool]] = field(default_factory=list)
    json: bool = False

    @property
    def failed(self) -> list[str]:
        return [claim for claim, ok in self.claims if not ok]


RUN = Run()


def say(text: str = "") -> None:
    print(text, file=sys.stderr if RUN.json else sys.stdout, flush=True)


def check(ok: bool, claim: str) -> None:
    """The demo proves what it shows: a claim that does not hold fails the run."""
    say(f"   {'ok ' if ok else 'FAILED'} {claim}")
    RUN.claims.append((claim, ok))


@dataclass
class Demo:
    host: LocalHost
    graph: GraphEmulator
    sf: SalesforceEmulator
    users: dict[str, str]
    accounts: dict[str, str]
    people: dict[str, str] = field(default_factory=dict)
    latencies: list[tuple[str, float | None]] = field(default_factory=list)  # None: did not arrive
    live_since: datetime | None = None
    t0: float = field(default_factory=time.perf_counter)

    # ------------------------------------------------------------------------------------------ plumbing
    def phase(self, text: str) -> None:
        say(f"\n[{time.perf_counter() - self.t0:5.1f}s] {text}")

    def call(self, method: str, route: str, body: Any = None, *,
             key: str | None = None) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request to the host, the way an operator's script would send it."""
        return call(method, route if route.startswith("http") else self.host.url(route), body, key=key)

    def settle(self) -> None:
        """Until notifications are delivered and the host's queues are empty (echoes of our writes included)."""
        for _ in range(2):
            self.graph.wait_notifications(DEADLINE)
            self.host.wait_idle(DEADLINE)

    def measure(self, label: str, done: Callable[[], bool], started: float) -> float | None:
        """Poll the other side until ``done``; the latency counts from the user's edit (``started``)."""
        deadline = started + DEADLINE
        while time.perf_counter() < deadline:
            if done():
                latency = time.perf_counter() - started
                self.latencies.append((label, latency))
                say(f"   -> arrived in {latency * 1000:.0f} ms")
                return latency
            time.sleep(0.02)
        say(f"   -> did not arrive within {DEADLINE:.0f} s")
        self.latencies.append((label, None))
        return None

    def reconcile(self, body: dict[str, Any]) -> dict[str, Any]:
        status, _, headers = self.call("POST", "reconcile", body, key=self.host.host_key)
        check(status == 202 and "Location" in headers,
              f"POST /api/reconcile -> {status}, Location {headers.get('Location')}")
        location = headers.get("Location", "")
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _, job, _ = self.call("GET", self.host.base_url + location, key=self.host.host_key)
            state = job.get("state") if isinstance(job, dict) else None
            if not seen or seen[-1] != state:
                seen.append(str(state))
                progress = job.get("progress", {}) if isinstance(job, dict) else {}
                say(f"   job {location.rsplit('/', 1)[-1][:8]}: {state} "
                    f"({progress.get('done', 0)}/{progress.get('total', '?')} mailboxes)")
            if state not in ("queued", "running"):
                return job if isinstance(job, dict) else {}
            time.sleep(0.1)
        return {"state": "timeout"}

    # ------------------------------------------------------------------------------------------ what people see
    def folder_id(self, mailbox: str) -> str | None:
        return self.graph.find_folder(mailbox, FOLDER)

    def folder(self, mailbox: str) -> list[dict[str, Any]]:
        folder = self.folder_id(mailbox)
        return self.graph.list_contacts(mailbox, folder) if folder else []

    def in_folder(self, mailbox: str, surname: str) -> list[dict[str, Any]]:
        return [c for c in self.folder(mailbox) if c.get("surname") == surname]

    def sf_contact(self, sf_id: str) -> dict[str, Any]:
        return self.sf.get_record(sf_id) or {}

    def sf_by_last(self, last: str) -> list[dict[str, Any]]:
        return [c for c in self.sf.contacts() if c.get("LastName") == last]


# ---------------------------------------------------------------------------------------------- setup


@contextlib.contextmanager
def services() -> Iterator[tuple[str, GraphEmulator, SalesforceEmulator]]:
    with running_azurite() as azurite, GraphEmulator(users=list(MAILBOXES)) as graph, \
            SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5) as sf:
        yield azurite.connection_string, graph, sf


def settings_for(conn: str, graph: GraphEmulator, sf: SalesforceEmulator, port: int, private: bytes) -> dict[str, str]:
    """App settings exactly as ``local.settings.json`` would hold them for the emulators (docs/configuration.md)."""
    return app_settings(conn, MAILBOXES, table_prefix="demo" + uuid.uuid4().hex[:8], graph=graph, salesforce=sf,
                        jwt_client=JWT_CLIENT, private_key=private, host_port=port, events_secret=uuid.uuid4().hex,
                        cdc_schedule=EVERY_SECOND)  # every second (Azure default: every 30 s)


def add_account(sf: SalesforceEmulator, name: str, website: str | None = None) -> str:
    account_id = sf.add_account(name)
    if website:
        from emulators.salesforce.store import UI_ORIGIN

        with sf.org.transaction(sf.org.run_as(None, UI_ORIGIN)) as txn:
            sf.org.update(txn, "Account", account_id, {"Website": website})
    return account_id


def seed(graph: GraphEmulator, sf: SalesforceEmulator, public: str) -> tuple[dict[str, str], dict[str, str],
                                                                              dict[str, str]]:
    """3 reps with PER_REP Salesforce contacts each, and a few Outlook contacts already in Ann's and Bob's folders: one
    the same person as a Salesforce contact, one whose email matches two, one whose company is found by its domain."""
    sf.register_jwt_client(JWT_CLIENT, public)
    users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=REPS[mb]) for mb in MAILBOXES}
    accounts = {name: add_account(sf, name) for name in COMPANIES}
    accounts["Fabrikam, Inc."] = add_account(sf, "Fabrikam, Inc.", "https://www.fabrikam.example")
    for r, mb in enumerate(MAILBOXES):
        rows = []
        for i in range(PER_REP):
            n = r * PER_REP + i
            first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
            company = COMPANIES[n % len(COMPANIES)]
            rows.append({"FirstName": first, "LastName": last, "Title": "Buyer",
                         "Email": f"{first.lower()}.{last.lower()}{n}@{company.split()[0].lower()}.example",
                         "AccountId": accounts[company], "OwnerId": users[mb]})
        sf.bulk_create_contacts(rows, as_user=users[mb])

    def person(owner: str, first: str, last: str, email: str, company: str, title: str) -> str:
        return sf.create_contact({"FirstName": first, "LastName": last, "Email": email, "Title": title,
                                  "AccountId": accounts[company], "OwnerId": users[owner]}, as_user=users[owner])

    people = {
        "ada": person(ANN, "Ada", "Byron", "ada@analytical.example", "Litware", "Countess"),
        "grace": person(ANN, "Grace", "Hopper", "grace@navy.example", "Proseware", "Rear Admiral"),
        "alan": person(ANN, "Alan", "Turing", "alan@bletchley.example", "Woodgrove Bank", "Cryptanalyst"),
        "barbara": person(BOB, "Barbara", "Liskov", "liskov@mit.example", "Coho Winery", "Professor"),
        "sam1": person(BOB, "Sam", "Smith", "sam@northwind.example", "Northwind Traders", "Buyer"),
        "sam2": person(BOB, "Samantha", "Smith", "sam@northwind.example", "Northwind Traders", "Buyer"),
    }
    # Ann and Bob already keep a Salesforce_Sync folder with a few contacts (Carol has none: the timer makes hers).
    for mb, contacts in {
        ANN: [("Ada", "Byron", "ADA@analytical.example", "Litware"),
              ("Linus", "Torvalds", "linus@kernel.example", "Kernel Org")],
        BOB: [("Pat", "Quinn", "pat@fabrikam.example", "Fabrikam"),
              ("Sam", "Smith", "sam@northwind.example", "Northwind Traders")],
    }.items():
        folder = graph.create_folder(mb, FOLDER)
        for first, last, email, company in contacts:
            graph.create_contact(mb, {"givenName": first, "surname": last, "displayName": f"{first} {last}",
                                      "companyName": company, "emailAddresses": [{"address": email}]}, folder)
    return users, accounts, people


# ---------------------------------------------------------------------------------------------- the story


def initial(d: Demo) -> None:
    d.phase("Subscriptions: POST /admin/functions/subscriptions_timer (master key), Graph's handshake to the host")
    status, _, _ = d.call("POST", d.host.base_url + "/admin/functions/subscriptions_timer", {"input": ""},
                          key=d.host.master_key)
    check(status == 202, f"the host accepted the manual run ({status})")
    d.settle()
    subs = d.graph.list_subscriptions()
    check(sorted(s["notificationUrl"] for s in subs) == [d.host.url("graph/notifications")] * 3,
          f"{len(subs)} Graph subscriptions point at {d.host.url('graph/notifications')} (handshake answered)")
    check(all(d.folder_id(mb) for mb in MAILBOXES), "every rep has a Salesforce_Sync folder (Carol's was created)")
    say("   unauthenticated POST /api/reconcile -> "
        f"{d.call('POST', 'reconcile', {})[0]} (a function key is required)")

    d.phase(f"Initial reconcile of {len(MAILBOXES)} mailboxes ({len(d.sf.contacts())} Salesforce contacts, "
            f"{sum(len(d.folder(mb)) for mb in MAILBOXES)} Outlook contacts)")
    job = d.reconcile({"mailboxes": "all", "mode": "full"})
    d.settle()
    say(f"   planned {job.get('planned')}; applied {job.get('applied')}")
    races = sum(len(m.get("errors", [])) for m in job.get("mailboxes", []))
    if races:
        say(f"   {races} link(s) were written first by the webhook worker (the reconcile's own writes notify it): "
            "the reconcile's write got AlreadyExists and left them as they were")
    check(job.get("state") == "done", "the job is done")
    owned = {mb: sum(1 for c in d.sf.contacts() if c.get("OwnerId") == d.users[mb]) for mb in MAILBOXES}
    say("   folders: " + ", ".join(f"{REPS[mb]} {len(d.folder(mb))}" for mb in MAILBOXES)
        + ";  Salesforce owners: " + ", ".join(f"{REPS[mb]} {owned[mb]}" for mb in MAILBOXES))
    check(len(d.in_folder(ANN, "Byron")) == 1 and len(d.sf_by_last("Byron")) == 1,
          "Ada Byron (same email, other case) was linked, not duplicated")
    linus = d.sf_by_last("Torvalds")
    check(len(linus) == 1 and linus[0].get("OwnerId") == d.users[ANN],
          "Ann's Outlook-only contact Linus Torvalds was created in Salesforce, owned by Ann")
    pat = d.sf_by_last("Quinn")
    check(len(pat) == 1 and pat[0].get("AccountId") == d.accounts["Fabrikam, Inc."],
          "Pat Quinn's company 'Fabrikam' was resolved by email domain to the Account 'Fabrikam, Inc.'")
    reviews = [e for e in _audit(d, BOB) if e.outcome == "review"]
    check(len(d.sf_by_last("Smith")) == 2 and len(d.in_folder(BOB, "Smith")) == 1 and bool(reviews),
          "Sam Smith matches two Salesforce contacts: sent to review, nothing guessed or duplicated")
    expected = {mb: owned[mb] - (1 if mb == BOB else 0) for mb in MAILBOXES}  # 2 Salesforce Sams -> 1 in review
    check({mb: len(d.folder(mb)) for mb in MAILBOXES} == expected,
          "each folder holds its rep's Salesforce contacts (Bob's Sam Smith stays one contact until reviewed)")


def live(d: Demo) -> None:
    d.live_since = datetime.now(UTC)
    d.phase("Live: Ann adds Donald Knuth to her Salesforce_Sync folder in Outlook")
    started = time.perf_counter()
    d.graph.create_contact(ANN, {"givenName": "Donald", "surname": "Knuth", "companyName": "Stanford",
                                 "emailAddresses": [{"address": "knuth@stanford.example"}]}, d.folder_id(ANN))
    d.measure("Outlook add -> Salesforce", lambda: bool(d.sf_by_last("Knuth")), started)
    knuth = d.sf_by_last("Knuth")
    check(len(knuth) == 1 and knuth[0].get("OwnerId") == d.users[ANN], "Knuth is in Salesforce, owned by Ann")

    d.phase("Live: Ann changes Linus Torvalds' job title in Outlook")
    linus_m = d.in_folder(ANN, "Torvalds")[0]
    linus_sf = d.sf_by_last("Torvalds")[0]["Id"]
    started = time.perf_counter()
    d.graph.update_contact(ANN, linus_m["id"], {"jobTitle": "Chief Penguin"})
    d.measure("Outlook edit -> Salesforce", lambda: d.sf_contact(linus_sf).get("Title") == "Chief Penguin", started)
    check(d.sf_contact(linus_sf).get("Title") == "Chief Penguin", "Salesforce shows the new title")

    d.phase("Live: in Salesforce, Grace Hopper's title changes (CDC over gRPC, timer every second)")
    grace = d.in_folder(ANN, "Hopper")[0]
    started = time.perf_counter()
    d.sf.update_contact(d.people["grace"], {"Title": "Rear Admiral (ret.)"}, as_user=d.users[ANN])
    d.measure("Salesforce edit -> Outlook",
              lambda: (d.graph.get_contact(ANN, grace["id"]) or {}).get("jobTitle") == "Rear Admiral (ret.)", started)
    check((d.graph.get_contact(ANN, grace["id"]) or {}).get("jobTitle") == "Rear Admiral (ret.)",
          "Outlook shows the new title")

    d.phase("Live: the same field on both sides at once: Alan Turing's title")
    alan = d.in_folder(ANN, "Turing")[0]
    started = time.perf_counter()
    d.sf.update_contact(d.people["alan"], {"Title": "Computer Scientist"}, as_user=d.users[ANN])
    d.graph.update_contact(ANN, alan["id"], {"jobTitle": "Mathematician"})
    d.measure("conflict -> both sides agree",
              lambda: (d.graph.get_contact(ANN, alan["id"]) or {}).get("jobTitle")
              == d.sf_contact(d.people["alan"]).get("Title") == "Computer Scientist", started)
    d.settle()
    check((d.graph.get_contact(ANN, alan["id"]) or {}).get("jobTitle")
          == d.sf_contact(d.people["alan"]).get("Title") == "Computer Scientist",
          "both sides say 'Computer Scientist' (conflict policy: salesforce_wins)")
    check(any(e.action == "conflict" for e in _audit(d, ANN, since=d.live_since)), "the conflict is in the audit")

    d.phase("Live: Barbara Liskov is deleted in Salesforce")
    started = time.perf_counter()
    d.sf.delete_contact(d.people["barbara"], as_user=d.users[BOB])
    d.measure("Salesforce delete -> Outlook", lambda: not d.in_folder(BOB, "Liskov"), started)
    check(not d.in_folder(BOB, "Liskov"), "Barbara left Bob's folder (to Deleted Items)")

    d.phase("Live: Ada Byron is reassigned in Salesforce from Ann to Bob")
    started = time.perf_counter()
    d.sf.change_owner(d.people["ada"], d.users[BOB])
    d.measure("owner change -> folders",
              lambda: not d.in_folder(ANN, "Byron") and len(d.in_folder(BOB, "Byron")) == 1, started)
    check(not d.in_folder(ANN, "Byron") and len(d.in_folder(BOB, "Byron")) == 1, "Ada moved from Ann to Bob")
    d.settle()


def final(d: Demo) -> None:
    d.phase("A last reconcile of every mailbox (what the timer does every 30 minutes)")
    job = d.reconcile({"mailboxes": "all"})
    d.settle()
    applied = {k: v for k, v in job.get("applied", {}).items() if k not in ("nothing", "review")}
    say(f"   applied {job.get('applied')}")
    check(job.get("state") == "done" and not applied, "nothing left to do (echoes died; only the review remains)")
    emails = [str(c.get("Email", "")).casefold() for c in d.sf.contacts()]
    dupes = {e for e in emails if emails.count(e) > 1} - {"sam@northwind.example"}
    check(not dupes, "no duplicate contacts in Salesforce (the two Sam Smiths were already there)")
    for mb in MAILBOXES:
        names = [(c.get("givenName"), c.get("surname"), c.get("companyName")) for c in d.folder(mb)]
        check(len(names) == len(set(names)), f"no duplicates in {REPS[mb]}'s folder")
    status, page, _ = d.call("GET", "status", key=d.host.host_key)
    private = ("Knuth", "Torvalds", "Hopper", "Turing", "Liskov", "Byron", ".example")
    check(status == 200 and not any(p in json.dumps(page) for p in private),
          "GET /api/status: per-mailbox lag, subscription and audit ids, no names or emails")


def _audit(d: Demo, mailbox: str, since: datetime | None = None) -> list[Any]:
    from sync import bootstrap

    entries = bootstrap.current().audit.recent(mailbox, limit=1000)
    return [e for e in entries if since is None or e.at >= since]


def facts(d: Demo) -> dict[str, Any]:
    """What the run shows, as data: latencies of the live edits, their audit trail (ids and reasons only), counts."""
    sf_counters = d.sf.counters.snapshot()
    sf_rest = sum(v for k, v in sf_counters.items() if k.startswith("rest.") and k != "rest.requests")
    return {
        "edits": [{"edit": label, "arrived": latency is not None,
                   "ms": None if latency is None else latency * 1000} for label, latency in d.latencies],
        "audit": [{"rep": REPS[mb], "action": e.action, "m365_id": e.m365_id, "sf_id": e.sf_id, "reason": e.reason,
                   "rule": e.rule, "outcome": e.outcome}
                  for mb in MAILBOXES for e in sorted(_audit(d, mb, since=d.live_since), key=lambda e: e.at)
                  if e.action != "nothing"],
        "counts": {
            "folders": {REPS[mb]: len(d.folder(mb)) for mb in MAILBOXES},
            "salesforce_contacts": len(d.sf.contacts()),
            "requests": {
                "graph": d.graph.counters.count(),
                "salesforce_rest": sf_rest,
                "pubsub_subscribes": sf_counters.get("grpc.Subscribe", 0),
                "graph_webhook_posts": len(d.graph.deliveries()),
            },
            "function_runs": {name: {"succeeded": s.succeeded, "failed": s.failed}
                              for name, s in sorted(d.host.invocations.items()) if s.started},
        },
        "wall_s": time.perf_counter() - d.t0,
        "status_page": f"{d.host.url('status')}?code={d.host.host_key}",
    }


def summary(d: Demo) -> dict[str, Any]:
    """Print the audit trail of the live edits and the summary; return them as ``facts``."""
    f = facts(d)
    say("\nAudit trail of the live edits (ids and reasons only)")
    say("-" * 100)
    for row in f["audit"]:
        ids = "/".join(x[-8:] for x in (row["m365_id"], row["sf_id"]) if x)
        rule = f" ({row['rule']})" if row["rule"] else ""
        say(f"  {row['rep']:<6} {row['action']:<16} {ids:<18} {row['reason'][:70]}{rule}")

    counts = f["counts"]
    say("\nSummary")
    say("-" * 100)
    say("  latency from the edit to the other side being written:")
    for edit in f["edits"]:
        if edit["arrived"]:
            say(f"    {edit['edit']:<32} {edit['ms']:7.0f} ms")
    say("  folders: " + ", ".join(f"{rep} {n}" for rep, n in counts["folders"].items())
        + f";  Salesforce contacts: {counts['salesforce_contacts']}")
    calls = counts["requests"]
    say(f"  requests: Graph {calls['graph']}, Salesforce REST {calls['salesforce_rest']}, Pub/Sub subscribes "
        f"{calls['pubsub_subscribes']}, Graph webhook POSTs {calls['graph_webhook_posts']}")
    runs = ", ".join(f"{name} {r['succeeded']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
                     for name, r in counts["function_runs"].items())
    say(f"  function runs: {runs}")
    say(f"  wall time {f['wall_s']:.1f} s")
    say(f"\n  status page: {f['status_page']}")
    return f


def structured(f: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: every claim checked with its result, then ``facts``."""
    failed = RUN.failed
    return {
        "passed": not failed,
        "claims": [{"claim": claim, "ok": ok} for claim, ok in RUN.claims],
        "failed": failed,
        **f,
        "edits": [{**e, "ms": None if e["ms"] is None else round(e["ms"], 1)} for e in f["edits"]],
        "wall_s": round(f["wall_s"], 1),
        "counts": {"claims": len(RUN.claims), "held": len(RUN.claims) - len(failed), "failed": len(failed),
                   **f["counts"]},
    }


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)  # also when started in the background, where SIGINT is ignored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep-running", action="store_true", help="leave everything up until Ctrl-C")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary (claims checked, pass/fail, counts) on stdout; the story on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A worker racing the reconcile for the same contact fails once (AlreadyExists / 412) and is retried by the
    # host: expected, counted in the summary, not worth a traceback here.
    logging.getLogger("devhost").setLevel(logging.CRITICAL)
    logging.getLogger("sync.triggers.queue").setLevel(logging.ERROR)
    logging.getLogger("sync.reconcile").setLevel(logging.ERROR)  # the same races, reported from the job row
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # 16 concurrent workers, pool of 10
    RUN.claims.clear()
    RUN.json = args.json
    _stop_on_sigterm()
    import function_app
    from sync import bootstrap

    t0 = time.perf_counter()
    say("Microsoft 365 <-> Salesforce contact sync: the function app on the local host, end to end on emulators")
    say("=" * 100)
    try:
        with services() as (conn, graph, sf):
            private, public = jwt_keys()
            say(f"[{time.perf_counter() - t0:5.1f}s] Azurite, Graph emulator {graph.base_url}, Salesforce emulator "
                f"{sf.instance_url} + gRPC {sf.grpc_target}")
            users, accounts, people = seed(graph, sf, public)
            say(f"[{time.perf_counter() - t0:5.1f}s] Seeded: 3 reps, {len(sf.contacts())} Salesforce contacts, "
                f"{sum(len(graph.list_contacts(mb, graph.find_folder(mb, FOLDER))) for mb in (ANN, BOB))} "
                "Outlook contacts in Ann's and Bob's folders")
            port = free_port()
            bootstrap.reset()
            host = LocalHost(function_app, port=port, settings=settings_for(conn, graph, sf, port, private))
            host.start()
            try:
                say(f"[{time.perf_counter() - t0:5.1f}s] Local functions host {host.base_url} serving "
                    f"{len(host.functions)} functions (host key {host.host_key[:6]}...)")
                d = Demo(host, graph, sf, users, accounts, people, t0=t0)
                initial(d)
                live(d)
                final(d)
                shown = summary(d)
                if args.json:
                    print(json.dumps(structured(shown), indent=2), flush=True)
                if args.keep_running:
                    say("\nEverything keeps running (CDC timer every second, webhooks live). Ctrl-C to stop.")
                    with contextlib.suppress(KeyboardInterrupt):
                        while True:
                            time.sleep(3600)
                    say("stopping...")
            finally:
                host.stop()
                bootstrap.reset()
    except KeyboardInterrupt:
        say("interrupted: stopped everything")
        return 130
    if RUN.failed:
        say(f"\nDEMO FAILED: {len(RUN.failed)} claim(s) did not hold: {'; '.join(RUN.failed)}")
        return 1
    say("\nEvery claim held.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
