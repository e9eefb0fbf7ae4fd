"""Soak with faults: the real function app on the local host, people editing both sides for a while, every fault
the emulators can inject switched on, then one last reconcile and a strict check of the result.

Public API:
    Profile(seconds=40, per_rep=20, seed=1, ...)   how long, how big, how faulty; ``skip`` leaves events out
    Soak(connection_string, profile).run() -> Report   the whole run; ``Report.render()`` prints the counts,
                                                       ``Report.violations`` lists what broke (empty = pass)

The stack is the one of ``make demo`` (demo/scenario.py): Azurite, the Graph emulator, the Salesforce emulator and
``function_app`` on ``Profile.instances`` instances of the local host, as a scaled-out app: instance i1 is a
``devhost.host.LocalHost`` in this process, i2.. are ``python -m devhost`` child processes with the same settings,
keys and host id, and a ``devhost.front.FrontDoor`` spreads HTTP (webhooks, the ops API) over them. Queue consumers
compete, each timer runs on the instance holding its singleton lock (docs/reference/azure.md §1.6; leases of 15 s,
recovery polling every 15 s). Edits travel webhook -> queue -> worker and CDC pull timer -> queue -> worker, as in
Azure. While people act (a thread doing about ``actions_per_second`` user actions: edits,
creates, deletes on both sides, owner changes), the emulators answer ``throttle_rate`` 429 with Retry-After (Graph;
Salesforce's equivalent is 403 REQUEST_LIMIT_EXCEEDED, without Retry-After), ``unavailable_rate`` 503 and
``reset_rate`` connection resets (half of them after the request ran), drop, duplicate and reorder Graph
notifications and CDC events; and at fixed points of the run:
    missed       a Graph ``missed`` lifecycle notification for one mailbox (docs/reference/graph.md §4.6)
    links-loss   the links table is deleted in Azurite while the host runs
    kill         one child instance (the one pulling CDC events, if a child holds that timer) is killed with SIGKILL
                 while it works (a worker dying mid-batch): its messages come back after the message lease
                 (``--message-lease``) and the others process them, its timer locks run out and another instance
                 takes its timers; a new instance replaces it (with one instance, i1 is stopped and a child takes
                 over first)
    overflow     a CDC ``GAP_OVERFLOW`` event (docs/reference/salesforce.md §4.3)
With ``strict_graph`` (``--strict-graph``) the Graph emulator also ignores If-Match on contacts and drops delta tokens
at random (``delta_reset_rate``; docs/emulator-fidelity-graph.md).
Then faults stop, the queues drain, ``POST /api/reconcile`` (full) runs until a pass applies nothing (at most
``max_final_passes``), and the check reads both emulators, the audit table and the poison queues:
    agreement       every pair (a folder contact and a live Salesforce contact of that rep, joined by the marker on
                    either side) holds the same value in every synced field
    duplicates      no two live Salesforce contacts, and no two contacts of one folder, share an email or a marker
    completeness    each live Salesforce contact of a rep has its copy in the rep's folder (unless the rep deleted it
                    there: delete policy unlink), each folder contact a live Salesforce partner (unless it was
                    deleted in Salesforce after an unsynced Outlook edit: rule 28)
    lost edits      the latest user edit of each field of each person is what the edited record holds (or, if the
                    product moved it away, the person's Salesforce record), unless the audit records a conflict on
                    that field after the edit (salesforce_wins) or a match that filled a field the user had cleared
    resurrections   nothing a user deleted comes back: no engine-made copy in the folder it was deleted from
                    (unless its owner changed since), no new or undeleted Salesforce record for it. A contact whose
                    copy a rep deleted, that went to another owner and came back to that rep without the product
                    seeing it leave (lost CDC events; no hand-off in the audit) may stay deleted: its tombstone holds
    throttling      the Graph emulator never refused a request for going over 4 concurrent requests or 10,000 per
                    10 minutes per mailbox (docs/reference/graph.md §5)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devhost.front import FrontDoor
from devhost.host import LocalHost
from devhost.instances import Instance
from devhost.stack import EVERY_SECOND, app_settings, call, jwt_keys
from emulators.azurite import free_port
from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MAILBOXES = ("ann@contoso.com", "bob@contoso.com", "carol@contoso.com")
FOLDER = "Salesforce_Sync"
JWT_CLIENT = "contact-sync-soak"
MARKER_FIELD = "Outlook_Id__c"
COMPANIES = ("Northwind Traders", "Adventure Works", "Tailspin Toys", "Litware", "Proseware", "Woodgrove Bank")
FIRST = ("Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Zoe", "Omar", "Lea", "Ivan")
LAST = ("Berg", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kowalski")
# Fields people edit: canonical key -> (Graph property, Salesforce field). Names and emails are left alone: they
# are how people are matched, and a rename is not what this soak is about.
EDITED = {
    "job_title": ("jobTitle", "Title"),
    "department": ("department", "Department"),
    "mobile_phone": ("mobilePhone", "MobilePhone"),
    "city": ("businessAddress.city", "MailingCity"),
    "notes": ("personalNotes", "Description"),
}
EVENTS = ("missed", "links-loss", "kill", "overflow")
LOG_LINES_PER_TIMELINE = 40  # the host's log lines naming the people of a violation, latest kept
ACTIONS = {  # relative weights of what people do
    "outlook.edit": 36, "salesforce.edit": 36, "outlook.create": 5, "salesforce.create": 5,
    "outlook.delete": 5, "salesforce.delete": 5, "salesforce.owner": 8,
    # automation (Profile.automation): a scheduled flow writing a synced field as Automated Process, and a roll-up
    # that moves only SystemModstamp (no field, no change event)
    "salesforce.flow.edit": 6, "salesforce.bump": 6,
}
AUTOMATION = ("salesforce.flow.edit", "salesforce.bump")


@dataclass(frozen=True)
class Profile:
    """One soak run. ``seconds`` of people acting; the events happen at the given shares of that time."""

    seconds: float = 40.0
    per_rep: int = 20
    outlook_only_per_rep: int = 2
    actions_per_second: float = 4.0
    seed: int = 1
    clear_share: float = 0.08  # share of edits that empty the field
    # faults (docs/reference/graph.md §5, §7.4; docs/reference/salesforce.md §2.1, §4.5, §6)
    throttle_rate: float = 0.10
    throttle_retry_after: int = 1
    unavailable_rate: float = 0.03
    reset_rate: float = 0.01
    notification_drop_rate: float = 0.20
    notification_duplicate_rate: float = 0.10
    event_drop_rate: float = 0.20
    event_duplicate_rate: float = 0.10
    event_reorder_rate: float = 0.10
    # the strict Graph switches (docs/emulator-fidelity-graph.md): If-Match ignored on contacts, delta tokens dropped
    # at random (410 SyncStateNotFound, 400 SyncStateInvalid, 410 resyncRequired in turn)
    strict_graph: bool = False
    delta_reset_rate: float = 0.2
    delta_every_s: float = 15.0  # strict: a delta reconcile of every mailbox this often, so delta tokens are used
    at: tuple[tuple[str, float], ...] = (("missed", 0.15), ("links-loss", 0.30), ("kill", 0.50), ("overflow", 0.70))
    skip: frozenset[str] = frozenset()  # events (EVENTS) left out, e.g. to tell which one a failure needs
    automation: bool = True  # flows and SystemModstamp bumps among the actions (AUTOMATION)
    message_lease_s: float = 8.0  # every instance's message lease (renewed while it works): a killed one's reappear
    instances: int = 2  # host instances (processes): i1 in this process, the others children
    lock_period: str = "00:00:15"  # host.json singleton.listenerLockPeriod and its recovery polling (the minimum)
    settle_timeout_s: float = 120.0
    max_final_passes: int = 3
    evidence: int = 8  # timelines printed for the first N violations
    # The org as Salesforce ships it (emulators/salesforce/store.py OrgSettings): whole-second stamps and the
    # standard Contact duplicate rule in Alert mode. False: millisecond stamps, no duplicate rule (the old emulator).
    strict_org: bool = False


# ---------------------------------------------------------------------------------------------- what people did


def _made_before(doc: dict[str, Any], at: datetime) -> bool:
    """Whether an Outlook contact was created before ``at`` (Graph stamps whole seconds: one second of slack)."""
    created = doc.get("createdDateTime")
    if not created:
        return False
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")) < at - timedelta(seconds=1)


@dataclass(frozen=True)
class Action:
    seq: int
    at: datetime
    kind: str  # a key of ACTIONS
    mailbox: str  # the folder (Outlook) or the owner's mailbox (Salesforce) at the time
    item_id: str  # the Outlook id or the Salesforce id acted on
    partner: str | None = None  # the other side's id known at the time (Outlook marker / Salesforce Outlook_Id__c)
    field: str | None = None
    value: str | None = None
    to_mailbox: str | None = None  # owner change
    noop: bool = False  # an edit that set the value the record already held: nothing for anyone to sync


@dataclass
class Report:
    profile: Profile
    actions: Counter[str] = field(default_factory=Counter)
    failed_actions: Counter[str] = field(default_factory=Counter)  # the target vanished under the user
    faults: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    guards: Counter[str] = field(default_factory=Counter)  # Graph writes refused by the adapter's guard read
    delta_jobs: Counter[str] = field(default_factory=Counter)  # strict: delta reconciles while people act, by state
    events: list[str] = field(default_factory=list)
    event_times: list[tuple[datetime, str]] = field(default_factory=list)  # events and links rebuilds, for timelines
    invocations: Counter[str] = field(default_factory=Counter)  # successful runs of the main functions
    instances: dict[str, str] = field(default_factory=dict)  # per instance: its runs, HTTP share, timer locks
    conflicts: int = 0
    audit: Counter[str] = field(default_factory=Counter)
    poisoned: Counter[str] = field(default_factory=Counter)
    final: dict[str, Any] = field(default_factory=dict)
    checked: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # timelines of the people the first violations concern
    wall_s: float = 0.0

    def render(self) -> str:
        def counts(c: Counter[str] | dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        edits = sum(n for k, n in self.actions.items() if k.endswith(".edit"))
        lines = [
            f"soak: {self.profile.seconds:.0f} s of edits, seed {self.profile.seed}, "
            f"{len(MAILBOXES)} mailboxes, {self.profile.per_rep} Salesforce contacts per rep, "
            f"{self.profile.instances} instance(s); wall {self.wall_s:.0f} s",
            f"  edits made        {edits} ({sum(self.actions.values())} user actions: {counts(self.actions)})",
            f"  user actions lost to a vanished target: {counts(self.failed_actions)}",
            f"  faults injected   {sum(self.faults.values())}: {counts(self.faults)}",
            f"  events            {'; '.join(self.events) or 'none'}",
            f"  function runs     {counts(self.invocations)}",
            f"  instances         {'; '.join(f'{k}: {v}' for k, v in sorted(self.instances.items())) or 'none'}",
            f"  retries           {counts(self.retries)}",
            f"  strict Graph      {'on' if self.profile.strict_graph else 'off'}; guard reads refused: "
            f"{counts(self.guards)}; delta reconciles while acting: {counts(self.delta_jobs)}",
            f"  conflicts         {self.conflicts} (audit: {counts(self.audit)})",
            f"  poisoned messages {sum(self.poisoned.values())}: {counts(self.poisoned)}",
            f"  final state       {counts(self.final)}",
            f"  checked           {counts(self.checked)}",
            f"  final mismatches  {len(self.violations)}"
            + (f" ({counts(Counter(v.split(':', 1)[0] for v in self.violations))})" if self.violations else ""),
        ]
        lines += [f"    - {v}" for v in self.violations[:60]]
        if len(self.violations) > 60:
            lines.append(f"    ... and {len(self.violations) - 60} more")
        if self.evidence:
            lines += ["  evidence (user actions, product writes seen in the audit; times from the start of the edits)"]
            lines += [f"    {e}" for e in self.evidence]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run


class LogTap(logging.Handler):
    """The in-process host's log lines (ids only, never personal data: the product's own rule), kept for the
    evidence timelines: which function decided what, and why, around a violation."""

    LOGGERS = ("sync", "function_app", "devhost")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rows: list[tuple[datetime, str]] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.rows.append((datetime.fromtimestamp(record.created, UTC),
                              f"log {record.threadName} {record.name} {record.levelname}: {record.getMessage()}"))
        if record.levelno >= self._passed.get(record.name.split(".")[0], logging.WARNING):
            logging.getLogger().handle(record)  # what would have reached the root's handlers (pytest's capture)

    def __enter__(self) -> LogTap:
        self._passed: dict[str, int] = {}
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            self._levels[name] = log.level
            self._passed[name] = log.getEffectiveLevel()
            log.setLevel(logging.INFO)
            log.addHandler(self)
            log.propagate = False  # INFO lines are kept here only, not thousands of them in pytest's report
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            log.removeHandler(self)
            log.setLevel(self._levels.get(name, logging.NOTSET))
            log.propagate = True



def _marker(doc: dict[str, Any]) -> str | None:
    from sync.adapters.graph import MARKER_PROPERTY_ID

    for prop in doc.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).casefold() == MARKER_PROPERTY_ID.casefold():
            return str(prop["value"]) if prop.get("value") else None
    return None


def _email(doc: dict[str, Any]) -> str | None:
    emails = doc.get("emailAddresses") or []
    return str(emails[0].get("address")).casefold() if emails and emails[0].get("address") else None


class Soak:
    def __init__(self, connection_string: str, profile: Profile, *, say: Callable[[str], None] = print) -> None:
        self.conn = connection_string
        self.p = profile
        self.say = say
        self.rng = random.Random(profile.seed)
        self.actions: list[Action] = []
        self.report = Report(profile)
        self.prefix = "soak" + uuid.uuid4().hex[:8]
        self.t0 = time.monotonic()
        self._seq = 0
        self._stop_users = threading.Event()
        self.host: LocalHost | None = None  # instance i1, in this process
        self.children: list[Instance] = []  # instances i2.., child processes (alive or killed)
        self.front: FrontDoor | None = None  # self.port: HTTP spread over the instances
        self.host_port = 0
        self._instance_seq = 1
        self.graph: GraphEmulator
        self.sf: SalesforceEmulator
        self.users: dict[str, str] = {}  # mailbox -> Salesforce user id
        self.accounts: dict[str, str] = {}
        self.settings: dict[str, str] = {}
        self.port = 0
        self.host_key = "soak-host-" + uuid.uuid4().hex
        self.master_key = "soak-master-" + uuid.uuid4().hex
        self.live_since: datetime = datetime.now(UTC)
        self.logs = LogTap()

    # ------------------------------------------------------------------------------------------ plumbing
    def log(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    def call(self, method: str, route: str, body: Any = None, *,
             key: str | None = None) -> tuple[int, Any, dict[str, str]]:
        url = route if route.startswith("http") else f"http://127.0.0.1:{self.port}/api/{route}"
        return call(method, url, body, key=key or self.host_key)

    def settle(self, timeout: float | None = None) -> bool:
        """Notifications delivered, the queues empty (invisible messages included) and no instance running
        anything, twice in a row."""
        deadline = time.monotonic() + (timeout or self.p.settle_timeout_s)
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            left = max(0.1, deadline - time.monotonic())
            ok = (self.graph.wait_notifications(left) and self.host is not None and self.host.wait_idle(left)
                  and self.children_idle())
            quiet = quiet + 1 if ok else 0
        return quiet >= 2

    def children_idle(self) -> bool:
        """No live child instance runs an invocation (its /admin/host/status ``busy``)."""
        for child in self.children:
            if child.alive and (child.status(self.master_key) or {}).get("busy", 1):
                return False
        return True

    def folder_id(self, mailbox: str) -> str:
        folder = self.graph.find_folder(mailbox, FOLDER)
        if folder is None:
            raise AssertionError(f"no {FOLDER} folder in {mailbox}")
        return folder

    def folder(self, mailbox: str) -> list[dict[str, Any]]:
        return self.graph.list_contacts(mailbox, self.folder_id(mailbox))

    def mailbox_of_user(self, user_id: str | None) -> str | None:
        return next((mb for mb, uid in self.users.items() if uid == user_id), None)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------------------------------ setup
    @contextlib.contextmanager
    def stack(self) -> Iterator[None]:
        from sync import bootstrap

        with GraphEmulator(users=list(MAILBOXES), seed=self.p.seed) as graph, \
                SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5, api_max=1_000_000,
                                   delivery_max=1_000_000) as sf:
            self.graph, self.sf = graph, sf
            sf.faults.seed = self.p.seed
            sf.faults.rng.seed(self.p.seed)
            sf.org.settings.whole_seconds = self.p.strict_org
            sf.org.settings.duplicate_rule = "alert" if self.p.strict_org else "off"
            private, public = jwt_keys()
            self.seed_org(public)
            self.port = free_port()  # the front door: WEBHOOK_BASE_URL and the ops API
            self.host_port = free_port()
            self.settings = app_settings(
                self.conn, MAILBOXES, table_prefix=self.prefix, graph=graph, salesforce=sf, jwt_client=JWT_CLIENT,
                private_key=private, host_port=self.port, events_secret=uuid.uuid4().hex, cdc_schedule=EVERY_SECOND,
                overrides={"SF_OUTLOOK_ID_FIELD": MARKER_FIELD,  # markers on both sides: links can be rebuilt
                           # instances share timers by host id; leases and recovery polling as short as allowed
                           "AzureFunctionsWebHost__hostid": self.prefix,
                           "AzureFunctionsJobHost__singleton__listenerLockPeriod": self.p.lock_period,
                           "AzureFunctionsJobHost__singleton__listenerLockRecoveryPollingInterval": self.p.lock_period})
            self.clear_queues()
            bootstrap.reset()
            try:
                with FrontDoor(self.port) as front:
                    self.front = front
                    for _ in range(self.p.instances - 1):  # first: a child takes the timer locks, so the kill
                        self.start_child()                  # event also moves timers
                    self.start_host()
                    yield
            finally:
                self._stop_users.set()
                self.stop_children()
                self.stop_host()
                bootstrap.reset()

    def clear_queues(self) -> None:
        from azure.storage.queue import QueueClient

        for name in ("contact-changes", "reconcile", "contact-changes-poison", "reconcile-poison"):
            client = QueueClient.from_connection_string(self.conn, name, api_version="2025-11-05")
            with contextlib.suppress(Exception):
                client.create_queue()
            client.clear_messages()

    def seed_org(self, public: str) -> None:
        sf, graph = self.sf, self.graph
        sf.register_jwt_client(JWT_CLIENT, public)
        self.users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0].title()) for mb in MAILBOXES}
        self.accounts = {name: sf.add_account(name) for name in COMPANIES}
        n = 0
        for mb in MAILBOXES:
            rows = []
            for _ in range(self.p.per_rep):
                n += 1
                first, last, company = FIRST[n % len(FIRST)], LAST[n % len(LAST)], COMPANIES[n % len(COMPANIES)]
                rows.append({"FirstName": first, "LastName": f"{last}{n}", "Title": "Buyer",
                             "Email": f"{first.lower()}.{last.lower()}{n}@seed.example",
                             "AccountId": self.accounts[company], "OwnerId": self.users[mb]})
            sf.bulk_create_contacts(rows, as_user=self.users[mb])
            folder = graph.create_folder(mb, FOLDER)
            for _ in range(self.p.outlook_only_per_rep):
                n += 1
                first, last = FIRST[n % len(FIRST)], LAST[n % len(LAST)]
                graph.create_contact(mb, {"givenName": first, "surname": f"{last}{n}", "companyName": COMPANIES[0],
                                          "emailAddresses": [{"address": f"{first.lower()}{n}@outlook.example"}]},
                                     folder)

    def start_host(self) -> None:
        import function_app
        from sync import bootstrap

        bootstrap.reset()
        self.host = LocalHost(function_app, port=self.host_port, settings=self.settings, host_key=self.host_key,
                              master_key=self.master_key, instance="i1", message_lease_s=self.p.message_lease_s)
        self.host.start()
        self.route()

    def route(self) -> None:
        """The front door sends HTTP to the live instances."""
        if self.front is not None:
            ports = ([self.host_port] if self.host is not None else []) + [c.port for c in self.children if c.alive]
            self.front.set_backends(ports)

    def start_child(self) -> Instance:
        """One more instance: ``python -m devhost`` on its own port, the same settings, keys and host id."""
        self._instance_seq += 1
        name = f"i{self._instance_seq}"
        log = Path(tempfile.gettempdir()) / f"{self.prefix}-{name}.log"
        child = Instance(name, free_port(), ["--app", "function_app", "--host-key", self.host_key, "--master-key",
                                             self.master_key, "--message-lease", str(self.p.message_lease_s)],
                         env={**os.environ, **self.settings}, cwd=REPO, log_path=log).start()
        if not child.wait_ready(self.master_key, timeout=90):
            child.kill()
            raise AssertionError(f"instance {name} did not start: see {log}")
        self.children.append(child)
        self.route()
        return child

    def stop_children(self) -> None:
        for child in self.children:
            if child.alive:
                self._collect_child_stats(child)
                child.stop(timeout=20)

    def _collect_child_stats(self, child: Instance, *, killed: bool = False) -> None:
        status = child.status(self.master_key) or {}
        runs = 0
        for name, stats in (status.get("invocations") or {}).items():
            if name in ("mailbox_reconciler", "contact_worker", "graph_lifecycle", "graph_notifications"):
                self.report.invocations[name] += int(stats.get("succeeded", 0))
            runs += int(stats.get("succeeded", 0))
            if stats.get("redelivered"):
                self.report.retries[f"redelivered queue messages ({name})"] += int(stats["redelivered"])
            if stats.get("failed"):
                self.report.retries[f"failed invocations retried by the host ({name})"] += int(stats["failed"])
        self._note_instance(child.name, child.port, runs, status.get("timers") or {},
                            "killed; runs counted until shortly before" if killed else "")

    def _note_instance(self, name: str, port: int, runs: int, timers: dict[str, str], note: str = "") -> None:
        served = self.front.served.get(port, 0) if self.front is not None else 0
        held = ",".join(sorted(t for t, state in timers.items() if state == "held")) or "no timer"
        self.report.instances[name] = f"{runs} runs, {served} HTTP requests, holding {held}" + (
            f" ({note})" if note else "")

    def read_child_logs(self) -> None:
        """The children's log lines of the product and the host, for the evidence timelines (as ``LogTap``)."""
        for child in self.children:
            if child.log_path is None or not child.log_path.exists():
                continue
            for line in child.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split(" ", 5)  # date time [iN] LEVEL logger [thread] message
                if len(parts) < 6 or not parts[4].startswith(LogTap.LOGGERS):
                    continue
                try:
                    at = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
                except ValueError:
                    continue
                self.logs.rows.append((at, f"log {parts[2]} {parts[3]} {parts[4]}: {parts[5]}"))

    def stop_host(self) -> None:
        from sync import bootstrap

        if self.host is None:
            return
        self._collect_host_stats()
        self.host.stop(timeout=20)
        self.host = None
        self.route()
        bootstrap.reset()

    def _collect_host_stats(self) -> None:
        from sync import bootstrap

        if self.host is None:
            return
        self._note_instance("i1", self.host_port, sum(s.succeeded for s in self.host.invocations.values()),
                            self.host.status()["timers"], "in process; adapter retries counted for it alone")
        for name, stats in self.host.invocations.items():
            if name in ("mailbox_reconciler", "contact_worker", "graph_lifecycle", "graph_notifications"):
                self.report.invocations[name] += stats.succeeded
            if stats.redelivered:
                self.report.retries[f"redelivered queue messages ({name})"] += stats.redelivered
            if stats.failed:
                self.report.retries[f"failed invocations retried by the host ({name})"] += stats.failed
        parts = getattr(bootstrap.current(), "_parts", {})  # only what this host built: reading builds nothing
        if "graph" in parts:
            for key in ("retries", "throttled"):
                self.report.retries[f"graph adapter {key}"] += int(parts["graph"].stats.get(key, 0))
            for key in ("guard: changed since read", "guard: not in the folder"):  # writes the guard read refused
                self.report.guards[key] += int(parts["graph"].stats.get(key, 0))
        if "salesforce" in parts:
            self.report.retries["salesforce adapter retries"] += int(parts["salesforce"].retries)

    def initial_sync(self) -> None:
        if self.host is None:
            raise AssertionError("the host is not running")
        self.host.fire_timer("subscriptions_timer")
        subs = self.graph.list_subscriptions()
        if len(subs) != len(MAILBOXES):
            raise AssertionError(f"expected {len(MAILBOXES)} Graph subscriptions, got {len(subs)}")
        job = self.reconcile({"mailboxes": "all", "mode": "full"})
        if job.get("state") != "done":
            raise AssertionError(f"initial reconcile: {job}")
        if not self.settle():
            raise AssertionError("the initial reconcile did not settle")
        problems = self.check(initial=True)
        if problems:
            raise AssertionError("the initial sync is not clean: " + "; ".join(problems[:10]))

    def reconcile(self, body: dict[str, Any]) -> dict[str, Any]:
        status, doc, headers = self.call("POST", "reconcile", body)
        if status != 202:
            raise AssertionError(f"POST /api/reconcile -> {status} {doc}")
        location = f"http://127.0.0.1:{self.port}{headers['Location']}"
        deadline = time.monotonic() + self.p.settle_timeout_s
        while time.monotonic() < deadline:
            _, job, _ = self.call("GET", location)
            if isinstance(job, dict) and job.get("state") not in ("queued", "running"):
                return job
            time.sleep(0.2)
        return {"state": "timeout"}

    # ------------------------------------------------------------------------------------------ faults
    def faults_on(self) -> None:
        g, f, p = self.graph.faults, self.sf.faults, self.p
        g.throttle_rate, g.throttle_retry_after = p.throttle_rate, p.throttle_retry_after
        g.unavailable_rate, g.reset_rate = p.unavailable_rate, p.reset_rate
        g.notification_drop_rate = p.notification_drop_rate
        g.notification_duplicate_rate = p.notification_duplicate_rate
        g.notification_reorder = True
        if p.strict_graph:
            g.ignore_if_match, g.delta_reset_rate = True, p.delta_reset_rate
        with self.sf.org.lock:
            f.limit_rate, f.unavailable_rate, f.reset_rate = p.throttle_rate, p.unavailable_rate, p.reset_rate
            f.event_drop_rate, f.event_duplicate_rate = p.event_drop_rate, p.event_duplicate_rate
            f.event_reorder_rate = p.event_reorder_rate

    def faults_off(self) -> None:
        g, f = self.graph.faults, self.sf.faults
        g.throttle_rate = g.unavailable_rate = g.reset_rate = 0.0
        g.notification_drop_rate = g.notification_duplicate_rate = 0.0
        g.notification_reorder = False
        g.delay_s = g.delta_reset_rate = 0.0  # ignore_if_match stays: it is how that Graph behaves, not a fault
        with self.sf.org.lock:
            f.limit_rate = f.unavailable_rate = f.reset_rate = 0.0
            f.event_drop_rate = f.event_duplicate_rate = f.event_reorder_rate = 0.0
            f.latency_seconds = 0.0
            self.sf.org.release_held_event()
            self.sf.org.changed.notify_all()

    def count_faults(self) -> None:
        injected = self.graph.faults.snapshot()["injected"]
        for kind, n in injected.items():
            self.report.faults[f"graph {kind}"] += n
        c = self.sf.counters.snapshot()
        for key, label in (("rest.fault.403", "salesforce 403 REQUEST_LIMIT_EXCEEDED"),
                           ("rest.fault.503", "salesforce 503"), ("rest.reset.before", "salesforce reset.before"),
                           ("rest.reset.after", "salesforce reset.after"), ("events.dropped", "cdc dropped"),
                           ("events.duplicated", "cdc duplicated"), ("events.reordered", "cdc reordered")):
            if c.get(key):
                self.report.faults[label] += c[key]

    # ------------------------------------------------------------------------------------------ people
    def users_loop(self) -> None:
        kinds = [k for k in ACTIONS if self.p.automation or k not in AUTOMATION]
        weights = [ACTIONS[k] for k in kinds]
        pause = 1.0 / self.p.actions_per_second
        while not self._stop_users.wait(self.rng.uniform(0.5, 1.5) * pause):
            kind = self.rng.choices(kinds, weights)[0]
            try:
                done = getattr(self, "_" + kind.replace(".", "_"))()
            except Exception as exc:  # noqa: BLE001 - the contact vanished between the pick and the action
                self.report.failed_actions[kind] += 1
                logger.debug("user action %s failed: %s", kind, exc)
                continue
            if done is not None:
                self.actions.append(done)
                self.report.actions[kind] += 1

    def _value(self, key: str, seq: int) -> str | None:
        if self.rng.random() < self.p.clear_share:
            return None
        if key == "mobile_phone":
            return f"+47 9{seq:07d}"
        return f"{key.split('_')[0]}-{self.p.seed}-{seq}"

    def _outlook_edit(self) -> Action | None:
        mb = self.rng.choice(MAILBOXES)
        contacts = self.folder(mb)
        if not contacts:
            return None
        doc = self.rng.choice(contacts)
        key = self.rng.choice(list(EDITED))
        seq = self._next()
        value = self._value(key, seq)
        prop = EDITED[key][0]
        held = (doc.get("businessAddress") or {}).get("city") if prop.startswith("businessAddress.") else doc.get(prop)
        noop = (held or None) == value
        if prop.startswith("businessAddress."):
            address = dict(doc.get("businessAddress") or {})
            address["city"] = value
            changes: dict[str, Any] = {"businessAddress": address}
        else:
            changes = {prop: value}
        at = datetime.now(UTC)
        self.graph.update_contact(mb, doc["id"], changes)
        return Action(seq, at, "outlook.edit", mb, doc["id"], _marker(doc), key, value, noop=noop)

    def _rep_contacts(self) -> list[dict[str, Any]]:
        owners = set(self.users.values())
        return [c for c in self.sf.contacts() if c.get("OwnerId") in owners]

    def _salesforce_edit(self, *, by_flow: bool = False) -> Action | None:
        contacts = self._rep_contacts()
        if not contacts:
            return None
        rec = self.rng.choice(contacts)
        key = self.rng.choice(list(EDITED))
        seq = self._next()
        value = self._value(key, seq)
        at = datetime.now(UTC)
        noop = (rec.get(EDITED[key][1]) or None) == value
        if by_flow:  # a scheduled flow: Automated Process, no Call Options
            self.sf.run_flow([rec["Id"]], {EDITED[key][1]: value})
        else:
            self.sf.update_contact(rec["Id"], {EDITED[key][1]: value}, as_user=rec["OwnerId"])
        mb = self.mailbox_of_user(rec["OwnerId"]) or ""
        kind = "salesforce.flow.edit" if by_flow else "salesforce.edit"
        return Action(seq, at, kind, mb, rec["Id"], rec.get(MARKER_FIELD), key, value, noop=noop)

    def _salesforce_flow_edit(self) -> Action | None:
        return self._salesforce_edit(by_flow=True)

    def _salesforce_bump(self) -> Action | None:
        contacts = self._rep_contacts()
        if not contacts:
            return None
        picked = self.rng.sample(contacts, min(len(contacts), 5))
        at = datetime.now(UTC)
        self.sf.bump_system_modstamp([c["Id"] for c in picked])
        rec = picked[0]
        return Action(self._next(), at, "salesforce.bump", self.mailbox_of_user(rec["OwnerId"]) or "", rec["Id"],
                      rec.get(MARKER_FIELD))

    def _person(self, seq: int) -> tuple[str, str, str, str]:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        return first, f"{last}S{seq}", f"{first.lower()}.s{seq}.{self.p.seed}@soak.example", self.rng.choice(COMPANIES)

    def _outlook_create(self) -> Action:
        mb = self.rng.choice(MAILBOXES)
        seq = self._next()
        first, last, email, company = self._person(seq)
        at = datetime.now(UTC)
        doc = self.graph.create_contact(mb, {"givenName": first, "surname": last, "companyName": company,
                                             "jobTitle": f"job-{self.p.seed}-{seq}",
                                             "emailAddresses": [{"address": email}]}, self.folder_id(mb))
        return Action(seq, at, "outlook.create", mb, doc["id"])

    def _salesforce_create(self) -> Action:
        mb = self.rng.choice(MAILBOXES)
        seq = self._next()
        first, last, email, company = self._person(seq)
        at = datetime.now(UTC)
        sf_id = self.sf.create_contact({"FirstName": first, "LastName": last, "Email": email,
                                        "Title": f"job-{self.p.seed}-{seq}", "AccountId": self.accounts[company],
                                        "OwnerId": self.users[mb]}, as_user=self.users[mb])
        return Action(seq, at, "salesforce.create", mb, sf_id)

    def _outlook_delete(self) -> Action | None:
        mb = self.rng.choice(MAILBOXES)
        contacts = self.folder(mb)
        if not contacts:
            return None
        doc = self.rng.choice(contacts)
        at = datetime.now(UTC)
        self.graph.delete_contact(mb, doc["id"])
        return Action(self._next(), at, "outlook.delete", mb, doc["id"], _marker(doc))

    def _salesforce_delete(self) -> Action | None:
        contacts = self._rep_contacts()
        if not contacts:
            return None
        rec = self.rng.choice(contacts)
        at = datetime.now(UTC)
        self.sf.delete_contact(rec["Id"], as_user=rec["OwnerId"])
        return Action(self._next(), at, "salesforce.delete", self.mailbox_of_user(rec["OwnerId"]) or "", rec["Id"],
                      rec.get(MARKER_FIELD))

    def _salesforce_owner(self) -> Action | None:
        contacts = self._rep_contacts()
        if not contacts:
            return None
        rec = self.rng.choice(contacts)
        old = self.mailbox_of_user(rec["OwnerId"]) or ""
        new = self.rng.choice([mb for mb in MAILBOXES if mb != old])
        at = datetime.now(UTC)
        self.sf.change_owner(rec["Id"], self.users[new], as_user=rec["OwnerId"])
        return Action(self._next(), at, "salesforce.owner", old, rec["Id"], rec.get(MARKER_FIELD), to_mailbox=new)

    # ------------------------------------------------------------------------------------------ events
    def _event(self, text: str, at: datetime | None = None) -> None:
        self.report.events.append(text)
        self.report.event_times.append((at or datetime.now(UTC), text))

    def event_missed(self) -> None:
        mb = self.rng.choice(MAILBOXES)
        uid = self.graph.user_id(mb)
        sub = next(s for s in self.graph.list_subscriptions() if uid in s["resource"] or mb in s["resource"])
        drop = self.graph.faults.notification_drop_rate
        self.graph.faults.notification_drop_rate = 0.0  # the one lifecycle event must arrive
        try:
            before = len(self.graph.deliveries())
            self.graph.send_lifecycle(sub["id"], "missed")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                    d.status == 202 and "lifecycleEvent" in json.dumps(d.payload)
                    for d in self.graph.deliveries()[before:]):
                time.sleep(0.05)
        finally:
            self.graph.faults.notification_drop_rate = drop
        self._event(f"Graph 'missed' for {mb.split('@')[0]}")

    def event_links_loss(self) -> None:
        from azure.data.tables import TableServiceClient

        with TableServiceClient.from_connection_string(self.conn) as service:
            at = datetime.now(UTC)
            service.delete_table(f"{self.prefix}links")
        self._event("links table deleted", at)

    def event_overflow(self) -> None:
        f = self.sf.faults
        with self.sf.org.lock:  # the one GAP_OVERFLOW must be published as is
            rates = (f.event_drop_rate, f.event_duplicate_rate, f.event_reorder_rate)
            f.event_drop_rate = f.event_duplicate_rate = f.event_reorder_rate = 0.0
            self.sf.publish_gap_overflow()
            f.event_drop_rate, f.event_duplicate_rate, f.event_reorder_rate = rates
        self._event("CDC GAP_OVERFLOW")

    def _in_flight(self) -> int:
        from azure.storage.queue import QueueClient

        held = 0
        for name in ("contact-changes", "reconcile"):
            client = QueueClient.from_connection_string(self.conn, name, api_version="2025-11-05")
            total = client.get_queue_properties().approximate_message_count or 0
            held += max(0, total - len(list(client.peek_messages(max_messages=32))))
        return held

    def _writes(self) -> int:
        g = sum(self.graph.counters.count(endpoint=e) for e in ("contact.update", "contacts.create",
                                                                  "contact.delete"))
        c = self.sf.counters.snapshot()
        return g + sum(c.get(k, 0) for k in ("rest.create", "rest.update", "rest.delete", "rest.composite_sobjects"))

    def event_kill(self) -> None:
        """SIGKILL one child instance while it works; a new instance replaces it. With one instance, i1 is stopped
        first and a child takes over (the child is the one killed; i1 comes back after)."""
        alone = not any(c.alive for c in self.children)
        if alone:
            self.report.event_times.append((datetime.now(UTC), "host stopped; a host in a child process takes over"))
            self.stop_host()
        victim: Instance | None = None
        try:
            alive = [c for c in self.children if c.alive]
            cdc = [c for c in alive if ((c.status(self.master_key) or {}).get("timers") or {}).get(
                "salesforce_cdc_pull") == "held"]
            # the instance pulling CDC events if it is a child (its timer must move), else any child
            victim = self.start_child() if alone else (cdc[0] if cdc else self.rng.choice(alive))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and victim.alive and not (victim.status(self.master_key) or {}).get(
                    "busy"):
                time.sleep(0.02)
            # Slower answers once it works, so it has writes in flight when it dies; only for a moment: every
            # instance is slowed, and slow requests pile up towards Graph's per-mailbox concurrency limit.
            self.graph.faults.delay_s = 0.3
            with self.sf.org.lock:
                self.sf.faults.latency_seconds = 0.3
            writes = self._writes()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and victim.alive and self._writes() == writes:
                time.sleep(0.02)
            time.sleep(self.rng.uniform(0.05, 0.3))
            held = self._in_flight()
            wrote = self._writes() - writes
            self._collect_child_stats(victim, killed=True)
            timers = (victim.status(self.master_key) or {}).get("timers") or {}
        finally:
            killed_at = datetime.now(UTC)
            if victim is not None:
                victim.kill()
            self.route()
        self.graph.faults.delay_s = 0.0
        with self.sf.org.lock:
            self.sf.faults.latency_seconds = 0.0
        locks = ",".join(sorted(t for t, state in timers.items() if state == "held")) or "no timer lock"
        if alone:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(self.graph.gate.in_flight(self.graph.user_id(mb))
                                                      for mb in MAILBOXES):
                time.sleep(0.05)  # the dead host's requests still being answered into the void
            self.start_host()
        else:
            self.start_child()  # the platform replaces the instance
        if "salesforce_cdc_pull" in locks:
            threading.Thread(target=self._watch_takeover, args=("salesforce_cdc_pull", killed_at), daemon=True,
                             name="soak-takeover").start()
        self._event(f"instance {victim.name if victim else '?'} killed (SIGKILL) after {wrote} write(s), holding "
                    f"{locks}; {held} message(s) invisible (held by it, or deferred)", killed_at)

    def _watch_takeover(self, timer: str, since: datetime) -> None:
        """When another instance holds the killed instance's timer (its lease ran out), for the report."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self._stop_users.is_set():
            holders = [("i1", self.host.status()) if self.host is not None else ("i1", {})]
            holders += [(c.name, c.status(self.master_key) or {}) for c in self.children if c.alive]
            for name, status in holders:
                if (status.get("timers") or {}).get(timer) == "held":
                    at = datetime.now(UTC)
                    self.report.checked[f"{timer} taken over after the kill (s)"] = round((at - since).total_seconds())
                    self.report.event_times.append((at, f"{timer} timer taken over by {name}"))
                    return
            time.sleep(0.5)

    # ------------------------------------------------------------------------------------------ the story
    def run(self) -> Report:
        started = time.monotonic()
        with self.logs, self.stack():
            self.log(f"stack up: {len(self.sf.contacts())} Salesforce contacts, {len(MAILBOXES)} mailboxes")
            self.initial_sync()
            self.log("initial sync clean; faults on, people start acting")
            self.live_since = datetime.now(UTC)
            self.graph.counters.reset()
            self.graph.gate.reset()
            self.sf.counters.reset()
            self.faults_on()
            users = threading.Thread(target=self.users_loop, name="soak-users", daemon=True)
            users.start()
            if self.p.strict_graph:
                threading.Thread(target=self.delta_loop, name="soak-delta", daemon=True).start()
            threading.Thread(target=self.refusal_watch, name="soak-refusals", daemon=True).start()
            t_start = time.monotonic()
            for name, share in sorted(self.p.at, key=lambda x: x[1]):
                if name in self.p.skip:
                    continue
                wait = t_start + share * self.p.seconds - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.log(f"event: {name}")
                getattr(self, "event_" + name.replace("-", "_"))()
            time.sleep(max(0.0, t_start + self.p.seconds - time.monotonic()))
            self._stop_users.set()
            users.join(10)
            self.count_faults()
            self.faults_off()
            self.log(f"people stop after {sum(self.report.actions.values())} actions; faults off, draining")
            if not self.settle():
                self.report.violations.append("the queues did not drain after the faults stopped")
            self.final_reconcile()
            self.log("checking")
            self.read_child_logs()
            self.read_rebuilds()
            self.report.violations += self.check()
            self.read_audit_and_poison()
        self.report.wall_s = time.monotonic() - started
        return self.report

    def refusal_watch(self) -> None:
        """When the Graph emulator refused requests over a §5 limit (sampled every 0.2 s), for the timelines: with
        several instances each holds its own 4 permits per mailbox (sync/adapters/graph/transport.py)."""
        seen: Counter[str] = Counter()
        while not self._stop_users.wait(0.2):
            for mb in MAILBOXES:
                for limit in ("concurrency", "rate"):
                    n = self.graph.gate.refused(self.graph.user_id(mb), limit)
                    if n > seen[f"{mb}|{limit}"]:
                        in_flight = self.graph.gate.in_flight(self.graph.user_id(mb))
                        self.report.event_times.append((datetime.now(UTC), f"Graph refused {n - seen[f'{mb}|{limit}']}"
                                                        f" request(s) of {mb.split('@')[0]} over the {limit} limit "
                                                        f"({in_flight} in flight)"))
                        seen[f"{mb}|{limit}"] = n

    def delta_loop(self) -> None:
        """Strict Graph: delta reconciles while people act, so delta tokens are used (and dropped at random)."""
        while not self._stop_users.wait(self.p.delta_every_s):
            try:
                job = self.reconcile({"mailboxes": "all", "mode": "delta"})
            except Exception as exc:  # the host is being replaced (the kill event): the next round will do
                job = {"state": type(exc).__name__}
            self.report.delta_jobs[str(job.get("state"))] += 1

    def final_reconcile(self) -> None:
        writes = ("create", "update", "delete")
        for attempt in range(1, self.p.max_final_passes + 1):
            job = self.reconcile({"mailboxes": "all", "mode": "full"})
            refused = list(job.get("refusals") or [])
            if refused:  # the circuit breaker: an operator reviews the report, then forces (docs/operations.md)
                self.report.events.append(f"final reconcile refused by the breaker for {refused}; forced")
                job = self.reconcile({"mailboxes": "all", "mode": "full", "force": True})
            applied = {k: v for k, v in (job.get("applied") or {}).items() if k.split(":")[0] in writes and v}
            errors = sum(len(m.get("errors") or []) for m in job.get("mailboxes") or [])
            self.report.final[f"reconcile pass {attempt}"] = (
                f"{job.get('state')}, applied {sum(applied.values())} write(s), {errors} error(s)")
            if not self.settle():
                self.report.violations.append(f"the queues did not drain after final reconcile pass {attempt}")
            if job.get("state") == "done" and not applied and not errors:
                return
        self.report.violations.append(
            f"the final reconcile still had writes to make after {self.p.max_final_passes} passes")

    # ------------------------------------------------------------------------------------------ the check
    def read_rebuilds(self) -> None:
        """When the links table was made again, and when each mailbox's links were rebuilt (``~meta`` rows)."""
        from azure.data.tables import TableClient

        from sync.adapters.storage import LOST_ROW, META_PARTITION

        with TableClient.from_connection_string(self.conn, f"{self.prefix}links") as links, \
                contextlib.suppress(Exception):
            for row in links.query_entities("PartitionKey eq @pk", parameters={"pk": META_PARTITION}):
                key = urllib.parse.unquote(str(row["RowKey"]))
                at = row.get("At")
                if isinstance(at, datetime) and at >= self.live_since:
                    text = ("links table made again (lost)" if key == LOST_ROW
                            else f"links of {key.removeprefix('rebuilt|')} marked rebuilt")
                    self.report.event_times.append((at, text))

    def read_audit(self) -> list[Any]:
        from sync.adapters.storage import TableStorage

        audit = TableStorage.from_connection_string(self.conn, self.prefix).audit()
        return [e for mb in (*MAILBOXES, "~unrouted") for e in audit.recent(mb, limit=1_000_000)]

    def read_audit_and_poison(self) -> None:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy

        entries = [e for e in self.read_audit() if e.at >= self.live_since]
        self.report.conflicts = sum(1 for e in entries if e.action == "conflict" and e.outcome != "planned")
        self.report.audit.update(f"{e.action}/{e.outcome}" for e in entries if e.action != "nothing")
        for name in ("contact-changes-poison", "reconcile-poison"):
            client = QueueClient.from_connection_string(self.conn, name, api_version="2025-11-05",
                                                        message_decode_policy=TextBase64DecodePolicy())
            for m in client.receive_messages(messages_per_page=32, visibility_timeout=600):  # all, not 32
                try:
                    error = json.loads(m.content).get("error", "?")
                except ValueError:
                    error = "unreadable"
                self.report.poisoned[f"{name}: {error}"] += 1

    def check(self, *, initial: bool = False) -> list[str]:
        return Checker(self, initial=initial).run()


# ---------------------------------------------------------------------------------------------- the oracle


class Checker:
    """The final state against what people did and the documented rules (docs/sync-rules.md)."""

    def __init__(self, soak: Soak, *, initial: bool) -> None:
        from sync.policy import FieldMap

        self.s = soak
        self.initial = initial
        self.fm = FieldMap()
        self.problems: list[str] = []
        self._ids: list[tuple[str, str, set[str]]] = []
        self._shown: set[tuple[str, str]] = set()
        self.sf_all = {c["Id"]: c for c in soak.sf.contacts(include_deleted=True)}
        self.sf_live = {i: c for i, c in self.sf_all.items() if not c["IsDeleted"]}
        self.sf_by_outlook: dict[str, str] = {}  # Outlook id -> the Salesforce id naming it (live ones win)
        for i, c in sorted(self.sf_all.items(), key=lambda ic: not ic[1]["IsDeleted"]):
            if c.get(MARKER_FIELD):
                self.sf_by_outlook[str(c[MARKER_FIELD])] = i
        self.folders = {mb: soak.folder(mb) for mb in MAILBOXES}
        self.outlook = {c["id"]: (mb, c) for mb, docs in self.folders.items() for c in docs}
        self.actions = [] if initial else list(soak.actions)
        self.audit = [] if initial else [e for e in soak.read_audit() if e.at >= soak.live_since]

    def fail(self, kind: str, text: str, *ids: str | None) -> None:
        self.problems.append(f"{kind}: {text}")
        self._ids.append((kind, text, {i for i in ids if i}))

    def add_evidence(self) -> None:
        """Timelines for up to ``Profile.evidence`` violations, a few of each kind first (rare kinds matter)."""
        shown: Counter[str] = Counter()
        frequency = Counter(kind for kind, _, _ in self._ids)
        rare_first = sorted(self._ids, key=lambda item: frequency[item[0]])
        for per_kind in (2, self.s.p.evidence):
            for kind, text, ids in rare_first:
                if sum(shown.values()) >= self.s.p.evidence or shown[kind] >= per_kind or (kind, text) in self._shown:
                    continue
                shown[kind] += 1
                self._shown.add((kind, text))
                self.s.report.evidence += [f"[{kind}] {text}", *self.timeline(set(ids))]

    def timeline(self, ids: set[str]) -> list[str]:
        """Everything known about the people behind ``ids``: user actions, audit rows, records now."""
        for i in list(ids):  # close over the markers on both sides
            rec = self.sf_all.get(i)
            if rec is not None and rec.get(MARKER_FIELD):
                ids.add(rec[MARKER_FIELD])
            ids |= {doc_id for doc_id, (_, doc) in self.outlook.items() if _marker(doc) == i}
            ids |= {sf_id for sf_id, c in self.sf_all.items() if c.get(MARKER_FIELD) == i}
            if i in self.outlook and _marker(self.outlook[i][1]):
                ids.add(str(_marker(self.outlook[i][1])))
        rows: list[tuple[datetime, str]] = []
        for a in self.actions:
            if a.item_id in ids or a.partner in ids:
                what = f"{a.field}={a.value!r}" if a.field else (f"-> {a.to_mailbox}" if a.to_mailbox else "")
                rows.append((a.at, f"user {a.kind} #{a.seq} {a.mailbox} {a.item_id[-10:]} "
                                   f"(partner {str(a.partner)[-10:]}) {what}"))
        for e in self.audit:
            if {e.m365_id, e.sf_id} & ids:
                rows.append((e.at, f"audit {e.mailbox} {e.action} {e.outcome} m365={str(e.m365_id)[-10:]} "
                                   f"sf={e.sf_id} fields={','.join(e.fields)} {e.reason[:110]}"
                                   + (f" error={e.error[:80]}" if e.error else "")))
        rows += [(at, f"event {text}") for at, text in self.s.report.event_times]
        logged = [(at, text) for at, text in self.s.logs.rows if any(i in text for i in ids if i)]
        rows += logged[-LOG_LINES_PER_TIMELINE:]
        out = [f"      +{self.t(at)} {text}" for at, text in sorted(rows, key=lambda r: r[0])]
        for i in sorted(ids):
            if i in self.outlook:
                mb, doc = self.outlook[i]
                out.append(f"      now: Outlook {i[-10:]} in {mb}, created {doc.get('createdDateTime')}, marker "
                           f"{_marker(doc)}")
            elif i in self.sf_all:
                c = self.sf_all[i]
                out.append(f"      now: Salesforce {i} owner {self.owner_mailbox(c)} deleted={c['IsDeleted']} "
                           f"created +{self.t(c['CreatedDate'])} by "
                           f"{'sync' if c.get('CreatedById') == self.s.sf.integration_user_id else 'user'} "
                           f"marker {str(c.get(MARKER_FIELD))[-10:]}")
        return out

    def run(self) -> list[str]:
        self.check_pairs()
        self.check_duplicates()
        if not self.initial:
            self.check_edits()
            self.check_resurrections()
            self.check_throttling()
            self.add_evidence()
        return self.problems

    # -- helpers
    def canonical_sf(self, rec: dict[str, Any]) -> Any:
        from sync.mapping import salesforce_to_contact

        paths = [*[f for f in self.fm.salesforce_fields().values() if "." not in f], "Account.Name"]
        with self.s.sf.org.lock:
            doc = self.s.sf.org.serialize("Contact", rec, paths, "67.0")
        return salesforce_to_contact(doc, self.fm)

    def canonical_m(self, doc: dict[str, Any]) -> Any:
        from sync.mapping import graph_to_contact

        return graph_to_contact(doc, self.fm)

    def owner_mailbox(self, rec: dict[str, Any]) -> str | None:
        return self.s.mailbox_of_user(rec.get("OwnerId"))

    def owner_came_back_unseen(self, sf_id: str, mb: str, since: datetime) -> bool:
        """The rep deleted the copy in ``mb`` before the last owner change, the contact is owned by ``mb`` again,
        and the audit shows no hand-off of it after that delete (nothing told the product it ever left)."""
        deletes = [a.at for a in self.actions if a.kind == "outlook.delete" and a.mailbox == mb and a.partner == sf_id
                   and a.at < since]
        return bool(deletes) and not any(e.action == "handoff" and e.sf_id == sf_id and e.at > max(deletes)
                                         for e in self.audit)

    def last_owner_change(self, sf_id: str) -> datetime | None:
        times = [a.at for a in self.actions if a.kind == "salesforce.owner" and a.item_id == sf_id]
        return max(times) if times else None

    # -- pairs, completeness, agreement
    def partner_of(self, doc: dict[str, Any]) -> str | None:
        """The Salesforce id an Outlook contact is paired with: its marker, else the Salesforce record naming it
        (the engine stamps both; a stamp that lost a 412 race is left out, and one marker is enough to pair)."""
        return _marker(doc) or self.sf_by_outlook.get(doc["id"])

    def check_pairs(self) -> None:
        from sync.mapping import fit_salesforce
        from sync.model import compare_key

        by_partner: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for mb, docs in self.folders.items():
            for doc in docs:
                partner = self.partner_of(doc)
                if partner is None:
                    self.fail("unsynced", f"Outlook contact {doc['id'][-10:]} in {mb} has no Salesforce partner "
                              "(no marker on either side)", doc["id"])
                    continue
                by_partner.setdefault(partner, []).append((mb, doc))
        for partner, copies in by_partner.items():
            rec = self.sf_all.get(partner)
            for mb, doc in copies:
                if rec is None:
                    self.fail("unsynced", f"Outlook contact {doc['id'][-10:]} in {mb} names an unknown Salesforce "
                              f"id {partner}", doc["id"])
                elif rec["IsDeleted"]:
                    kept_for_edit = any(a.kind == "outlook.edit" and a.item_id == doc["id"] for a in self.actions)
                    if not kept_for_edit:
                        self.fail("delete not propagated", f"Salesforce {partner} was deleted but its Outlook copy "
                                  f"{doc['id'][-10:]} in {mb} stays (and was never edited in Outlook)",
                                  partner, doc["id"])
                    self.s.report.checked["outlook kept after a salesforce delete (edited)"] += kept_for_edit
                elif self.owner_mailbox(rec) != mb:
                    self.fail("owner change", f"Outlook copy {doc['id'][-10:]} of {partner} is in {mb}, but the "
                              f"owner is {self.owner_mailbox(rec)}", partner, doc["id"])
        for sf_id, rec in self.sf_live.items():
            mb = self.owner_mailbox(rec)
            if mb is None:
                continue
            copies = [doc for m, doc in by_partner.get(sf_id, []) if m == mb]
            since = self.last_owner_change(sf_id)
            deleted_here = [a for a in self.actions if a.kind == "outlook.delete" and a.mailbox == mb
                            and (a.partner == sf_id or a.item_id == rec.get(MARKER_FIELD))
                            and (since is None or a.at > since)]
            if len(copies) > 1:
                self.fail("duplicate", f"Salesforce {sf_id} has {len(copies)} copies in {mb}", sf_id)
            if deleted_here:
                last = deleted_here[-1]
                # Back means made after the delete (or the deleted item itself). A copy that already stood beside
                # the one deleted did not come back: the user deleted a second copy a racing worker was undoing.
                back = [doc for doc in copies if doc["id"] == last.item_id or not _made_before(doc, last.at)]
                if back:
                    self.fail("resurrection", f"Salesforce {sf_id}: its Outlook copy deleted by the user in {mb} "
                              f"at +{self.t(last.at)} is back as {back[0]['id'][-10:]} "
                              f"(created {back[0].get('createdDateTime')})", sf_id)
                elif copies:
                    self.s.report.checked["outlook copy kept beside a second copy the user deleted"] += 1
                else:
                    self.s.report.checked["salesforce kept after an outlook delete"] += 1
                continue
            if not copies and since is not None and self.owner_came_back_unseen(sf_id, mb, since):
                # deleted here, then owned elsewhere and back here, and the product never saw it leave (the CDC
                # events were lost and a full reconcile sees only the owner now): its tombstone here stands
                self.s.report.checked["tombstone kept: owner changed away and back unseen"] += 1
                continue
            if not copies:
                self.fail("missing", f"Salesforce {sf_id} (owner {mb}) has no copy in the folder", sf_id)
                continue
            if len(copies) > 1:
                continue  # which copy is "the" pair is moot: the duplicate is the violation
            doc = copies[0]
            if _marker(doc) != sf_id or rec.get(MARKER_FIELD) != doc["id"]:
                self.s.report.checked["pairs with a marker missing or stale on one side"] += 1
            m, f = self.canonical_m(doc), self.canonical_sf(rec)
            agree = True
            for rule in self.fm.synced():
                want = fit_salesforce(rule.key, m.get(rule.key), self.fm)
                got = f.get(rule.key)
                if compare_key(rule.key, want) != compare_key(rule.key, got):
                    agree = False
                    self.fail("mismatch", f"{rule.key} of {sf_id} in {mb}: Outlook {m.get(rule.key)!r}, "
                              f"Salesforce {got!r}", sf_id)
            if agree:
                self.s.report.checked["pairs agreeing" if not self.initial else "pairs at start"] += 1

    def t(self, at: datetime) -> str:
        return f"{(at - self.s.live_since).total_seconds():.1f}s"

    # -- duplicates
    def check_duplicates(self) -> None:
        emails = Counter(str(c.get("Email")).casefold() for c in self.sf_live.values() if c.get("Email"))
        for email, n in emails.items():
            if n > 1:
                ids = [i for i, c in self.sf_live.items() if str(c.get("Email")).casefold() == email]
                self.fail("duplicate", f"{n} live Salesforce contacts share an email: {ids}", *ids)
        markers = Counter(str(c.get(MARKER_FIELD)) for c in self.sf_live.values() if c.get(MARKER_FIELD))
        for marker, n in markers.items():
            if n > 1:
                self.fail("duplicate", f"{n} live Salesforce contacts carry Outlook id {marker[-10:]}")
        for mb, docs in self.folders.items():
            for n in Counter(e for e in map(_email, docs) if e).values():
                if n > 1:
                    self.fail("duplicate", f"{n} contacts in {mb}'s folder share an email")
            for marker, n in Counter(m for m in map(_marker, docs) if m).items():
                if n > 1:
                    self.fail("duplicate", f"{n} contacts in {mb}'s folder carry Salesforce id {marker}")

    # -- lost edits
    def person_of(self, item_id: str) -> str:
        """People as connected ids: an Outlook id and a Salesforce id are one person when either marker, now or
        when a user acted, joins them (a copy made after an owner change or a re-creation stays the same person)."""
        if not hasattr(self, "_parent"):
            self._parent: dict[str, str] = {}
            pairs = [(a.item_id, a.partner) for a in self.actions if a.partner]
            pairs += [(doc_id, _marker(doc)) for doc_id, (_, doc) in self.outlook.items() if _marker(doc)]
            pairs += [(i, c[MARKER_FIELD]) for i, c in self.sf_all.items() if c.get(MARKER_FIELD)]
            for x, y in pairs:
                rx, ry = self.person_of(str(x)), self.person_of(str(y))
                if rx != ry:
                    self._parent[rx] = ry
        parent = self._parent.setdefault(item_id, item_id)
        if parent == item_id:
            return item_id
        root = self.person_of(parent)
        self._parent[item_id] = root
        return root

    def members(self, person: str) -> set[str]:
        self.person_of(person)
        return {i for i in list(self._parent) if self.person_of(i) == person}

    def explained(self, a: Action, ids: set[str]) -> bool:
        """An override the audit records: a conflict on that field after the edit, or a match that filled a field
        the user had emptied (rule 4: linking fills empty fields)."""
        for e in self.audit:
            if e.at < a.at - timedelta(seconds=0.5) or not ({e.m365_id, e.sf_id} & ids):
                continue
            if e.action == "conflict" and a.field in e.fields:
                return True
            if e.action == "adopt" and a.value is None:
                return True
        return False

    def check_edits(self) -> None:
        """The latest edit of each field of each person is what the record the user edited holds now (its pair's
        agreement is checked in ``check_pairs``); when the product removed that record (an owner change moves the
        contact to another folder), what the person's live Salesforce record holds."""
        from sync.mapping import fit_salesforce
        from sync.model import Contact, compare_key

        latest: dict[tuple[str, str], Action] = {}
        for a in self.actions:
            if a.kind.endswith(".edit") and a.field:
                if a.noop:  # set what the record already held: no change anyone could see
                    self.s.report.checked["edits that changed nothing"] += 1
                    continue
                latest[(self.person_of(a.item_id), a.field)] = a
        for (person, key), a in latest.items():
            ids = self.members(person)
            gone_by_user = [d for d in self.actions if d.at > a.at and d.item_id in ids
                            and d.kind in ("outlook.delete", "salesforce.delete")]
            holder: str | None = None
            value: str | None = None
            expected = Contact().with_values({key: a.value}).get(key)
            if a.kind == "outlook.edit" and a.item_id in self.outlook:
                holder, value = f"Outlook {a.item_id[-10:]}", self.canonical_m(self.outlook[a.item_id][1]).get(key)
            elif a.kind in ("salesforce.edit", "salesforce.flow.edit") and a.item_id in self.sf_live:
                holder, value = f"Salesforce {a.item_id}", self.canonical_sf(self.sf_live[a.item_id]).get(key)
                expected = fit_salesforce(key, expected, self.fm)
            elif not gone_by_user:
                live = sorted(i for i in ids if i in self.sf_live)
                if live:
                    holder, value = f"Salesforce {live[0]}", self.canonical_sf(self.sf_live[live[0]]).get(key)
                    expected = fit_salesforce(key, expected, self.fm)
            if holder is None:
                self.s.report.checked["edits moot (deleted since)"] += 1
            elif compare_key(key, value) == compare_key(key, expected):
                self.s.report.checked["latest edits kept"] += 1
            elif self.explained(a, ids):
                self.s.report.checked["latest edits overridden (audited)"] += 1
            else:
                self.fail("lost edit", f"{a.kind} #{a.seq} at +{self.t(a.at)} set {key}={a.value!r} on "
                          f"{a.item_id[-10:]}; {holder} holds {value!r}, no conflict in the audit", *sorted(ids))

    # -- resurrections
    def check_resurrections(self) -> None:
        integration = self.s.sf.integration_user_id
        for a in self.actions:
            if a.kind == "salesforce.delete":
                rec = self.sf_all.get(a.item_id)
                if rec is not None and not rec["IsDeleted"]:
                    self.fail("resurrection", f"Salesforce {a.item_id} deleted by the user at +{self.t(a.at)} is "
                              "live again", a.item_id)
                email = str(rec.get("Email") or "").casefold() if rec else ""
                again = [i for i, c in self.sf_live.items() if i != a.item_id and c.get("CreatedById") == integration
                         and c["CreatedDate"] > a.at and ((a.partner and c.get(MARKER_FIELD) == a.partner)
                                                          or (email and str(c.get("Email")).casefold() == email))]
                if again:
                    self.fail("resurrection", f"Salesforce {a.item_id} deleted by the user at +{self.t(a.at)} was "
                              f"re-created as {again}", a.item_id, *again)
                self.s.report.checked["salesforce deletes checked"] += 1
            elif a.kind == "outlook.delete":
                if a.item_id in self.outlook:
                    self.fail("resurrection", f"Outlook {a.item_id[-10:]} deleted by the user is back", a.item_id)
                self.s.report.checked["outlook deletes checked"] += 1

    # -- throttling
    def check_throttling(self) -> None:
        gate = self.s.graph.gate
        for mb in MAILBOXES:
            uid = self.s.graph.user_id(mb)
            peak = gate.peak(uid)
            self.s.report.checked[f"graph peak concurrency {mb.split('@')[0]}"] = peak
            for limit in ("concurrency", "rate"):
                over = gate.refused(uid, limit)
                if over:
                    self.fail("throttling", f"{over} request(s) for {mb} went over the Graph {limit} limit (§5)")


def run_profile(connection_string: str, profile: Profile, say: Callable[[str], None] = print) -> Report:
    return Soak(connection_string, profile, say=say).run()


__all__ = ["EVENTS", "Profile", "Report", "Soak", "run_profile"]
