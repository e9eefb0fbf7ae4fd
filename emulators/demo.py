"""``make demo``: the product end to end on local emulators.

Starts Azurite (links, audit and checkpoints in real Table Storage), the Graph emulator and the Salesforce emulator
(REST over TLS, OAuth JWT bearer, Pub/Sub CDC over gRPC), then drives the real sync engine through the real adapters
(``msgraph-sdk`` and ``simple-salesforce``, unmodified) while people act in Outlook and Salesforce:

 1. first sync of two reps' mailboxes (one contact already exists on both sides: it is linked, not duplicated)
 2. a rep adds a contact to the Outlook sync folder            -> Graph delta   -> created in Salesforce
 3. someone edits a title in Salesforce                         -> CDC (gRPC)    -> Outlook updated
 4. the same field edited on both sides                         -> conflict, Salesforce wins, audited
 5. the Salesforce owner changes from Ann to Bob                -> the contact moves between their folders
 6. a contact deleted in Salesforce                             -> removed from the folder (Deleted Items)
 7. a contact deleted in Outlook                                -> unlinked; Salesforce keeps it; never comes back
 8. a last reconcile of both mailboxes                          -> nothing left to do (echoes died)

Every decision prints its reason; the audit trail and the request counts close the run. Nothing leaves 127.0.0.1.
Change hints come from the Graph delta feed and the Salesforce Pub/Sub API here; in the function app they come
from webhooks and the CDC timer through a queue (same engine, same hints).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from emulators.azurite import running_azurite
from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator

ANN, BOB, CAROL = "ann@contoso.com", "bob@contoso.com", "carol@contoso.com"
MAILBOXES = (ANN, BOB)
JWT_CLIENT = "contact-sync-demo"


class EmulatorCredential:
    """The Graph emulator accepts any bearer token; this TokenCredential never talks to Entra."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("emulator-token", int(time.time()) + 3600)


def _keys() -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def say(text: str = "") -> None:
    print(text, flush=True)


FAILED: list[str] = []


def check(ok: bool, claim: str) -> None:
    """The demo proves what it shows: a claim that does not hold fails the run."""
    say(f"   {'ok ' if ok else 'FAILED'} {claim}")
    if not ok:
        FAILED.append(claim)


@dataclass
class Demo:
    graph: GraphEmulator
    sf: SalesforceEmulator
    engine: Any
    m365: Any
    sfside: Any
    audit: Any
    checkpoints: Any
    cdc: Any
    queue: Any
    users: dict[str, str]
    folders: dict[str, str]
    accounts: dict[str, str]
    shown_audit: int = 0

    # ----------------------------------------------------------------------------------------- people act
    def outlook_add(self, mailbox: str, first: str, last: str, email: str, company: str) -> str:
        body = {"givenName": first, "surname": last, "displayName": f"{first} {last}", "companyName": company,
                "emailAddresses": [{"address": email, "name": f"{first} {last}"}]}
        return str(self.graph.create_contact(mailbox, body, self.folders[mailbox])["id"])

    def account(self, name: str) -> str:
        if name not in self.accounts:
            self.accounts[name] = self.sf.add_account(name)
        return self.accounts[name]

    def salesforce_add(self, owner: str, first: str, last: str, email: str, company: str, title: str) -> str:
        fields = {"FirstName": first, "LastName": last, "Email": email, "Title": title,
                  "AccountId": self.account(company), "OwnerId": self.users[owner]}
        return self.sf.create_contact(fields, as_user=self.users[owner])

    # ----------------------------------------------------------------------------------------- hints -> engine
    def outlook_hints(self) -> list[Any]:
        """What changed in each folder since the stored delta link (the Graph delta feed)."""
        from sync.policy import Side
        from sync.ports import ContactChange

        hints = []
        for mailbox in MAILBOXES:
            checkpoint = self.checkpoints.get(mailbox, "graph-delta")
            last = None
            for page in self.m365.changes(mailbox, checkpoint):
                hints += [ContactChange(source=Side.M365, item_id=r.id, mailbox=mailbox) for r in page.records]
                hints += [ContactChange(source=Side.M365, item_id=i, mailbox=mailbox) for i in page.removed]
                last = page.checkpoint or last
            if last:
                self.checkpoints.put(mailbox, "graph-delta", last)
        return hints

    def salesforce_hints(self) -> list[Any]:
        """Change events since the stored replay id, through the real Pub/Sub gRPC API."""
        result = self.cdc.pull(max_events=200, max_seconds=10.0, idle_seconds=0.6)
        return [item for item in self.queue.drain() if getattr(item, "kind", "") == "contact"][: max(result.hints, 0)]

    def sync(self, hints: list[Any], source: str) -> None:
        started = time.perf_counter()
        decided = 0
        for hint in hints:
            for outcome in self.engine.sync_contact(hint):
                decided += 1
                if outcome.plan.writes or outcome.plan.link_after.value != "keep":
                    say(f"     {outcome.mailbox}: {outcome.plan.reason}")
        ms = (time.perf_counter() - started) * 1000
        say(f"     ({len(hints)} {source} hint(s) in {ms:.0f} ms; {decided} decision(s); echoes of our own writes "
            f"change nothing and print nothing)")

    def settle(self) -> None:
        """Feed both change sources until they are quiet (our own writes come back once as echoes)."""
        for _ in range(3):
            hints = self.outlook_hints()
            cdc = self.salesforce_hints()
            if not hints and not cdc:
                return
            if hints:
                self.sync(hints, "Outlook")
            if cdc:
                self.sync(cdc, "Salesforce CDC")

    def folder(self, mailbox: str) -> list[str]:
        return sorted(f"{c.get('givenName', '')} {c.get('surname', '')}".strip()
                      for c in self.graph.list_contacts(mailbox, self.folders[mailbox]))


@contextlib.contextmanager
def services() -> Iterator[tuple[str, GraphEmulator, SalesforceEmulator]]:
    with running_azurite() as azurite, GraphEmulator(users=list(MAILBOXES)) as graph, \
            SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=2) as sf:
        yield azurite.connection_string, graph, sf


def build(conn: str, graph: GraphEmulator, sf: SalesforceEmulator) -> Demo:
    from sync.adapters.graph import DEFAULT_FOLDER_NAME, GraphContactSide
    from sync.adapters.memory import MemoryQueue
    from sync.adapters.pubsub import CdcSubscriber, ReplayStart
    from sync.adapters.salesforce import SalesforceContactSide, TokenProvider
    from sync.adapters.tables import TableStorage
    from sync.engine import Engine
    from sync.policy import Policy

    private, public = _keys()
    sf.register_jwt_client(JWT_CLIENT, public)
    users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0].title()) for mb in (ANN, BOB, CAROL)}
    tokens = TokenProvider(sf.token_url, JWT_CLIENT, username="integration@example.com", private_key=private,
                           session=sf.requests_session())
    storage = TableStorage.from_connection_string(conn, "demo")
    links, audit, checkpoints = storage.links(), storage.audit(), storage.checkpoints()
    m365 = GraphContactSide(EmulatorCredential(), base_url=graph.base_url, mailboxes=list(MAILBOXES))
    sfside = SalesforceContactSide(tokens, mailboxes=list(MAILBOXES), session=sf.requests_session(),
                                   marker_field=None)
    queue = MemoryQueue()
    cdc = CdcSubscriber(tokens, target=sf.grpc_target, queue=queue, checkpoints=checkpoints,
                        mailboxes=list(MAILBOXES), secure=False, start=ReplayStart.LATEST)
    engine = Engine(m365, sfside, links, audit, queue, Policy(), MAILBOXES)
    folders = {}
    for mb in MAILBOXES:
        folders[mb] = graph.find_folder(mb, DEFAULT_FOLDER_NAME) or graph.create_folder(mb, DEFAULT_FOLDER_NAME)
    return Demo(graph, sf, engine, m365, sfside, audit, checkpoints, cdc, queue, users, folders, {})


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    say("Microsoft 365 <-> Salesforce contact sync: end-to-end demo on local emulators")
    say("=" * 100)
    with services() as (conn, graph, sf):
        say(f"Azurite (Table Storage)   {conn.split('TableEndpoint=')[1].rstrip(';')}")
        say(f"Graph emulator            {graph.base_url}")
        say(f"Salesforce emulator       {sf.instance_url} (REST, TLS)  {sf.grpc_target} (Pub/Sub gRPC)")
        from sync.reconcile import reconcile_mailbox

        d = build(conn, graph, sf)
        d.salesforce_hints()  # subscribe once at LATEST, so the checkpoint exists before anyone acts

        say("\n1. First sync. Salesforce: 3 contacts owned by Ann, 2 by Bob; Ann's folder already has Ada Byron.")
        people = {
            "ada": d.salesforce_add(ANN, "Ada", "Byron", "ada@analytical.example", "Analytical Engines", "Countess"),
            "grace": d.salesforce_add(ANN, "Grace", "Hopper", "grace@navy.example", "US Navy", "Rear Admiral"),
            "alan": d.salesforce_add(ANN, "Alan", "Turing", "alan@bletchley.example", "Bletchley Park",
                                     "Cryptanalyst"),
            "edsger": d.salesforce_add(BOB, "Edsger", "Dijkstra", "ewd@eindhoven.example", "TU Eindhoven",
                                       "Professor"),
            "barbara": d.salesforce_add(BOB, "Barbara", "Liskov", "liskov@mit.example", "MIT", "Professor"),
        }
        d.outlook_add(ANN, "Ada", "Byron", "ADA@analytical.example", "Analytical Engines")
        for mb in MAILBOXES:
            report = reconcile_mailbox(d.engine, mb)
            say(f"   {report.summary()}")
        d.settle()
        say(f"   Ann's folder: {', '.join(d.folder(ANN))}")
        say(f"   Bob's folder: {', '.join(d.folder(BOB))}")
        check(d.folder(ANN) == ["Ada Byron", "Alan Turing", "Grace Hopper"], "Ada was linked, not duplicated")
        check(d.folder(BOB) == ["Barbara Liskov", "Edsger Dijkstra"], "Bob's contacts are in Bob's folder")

        say("\n2. Ann adds Donald Knuth to her Salesforce_Sync folder in Outlook.")
        d.outlook_add(ANN, "Donald", "Knuth", "knuth@stanford.example", "Stanford")
        d.settle()
        knuth = [c for c in sf.contacts() if c.get("LastName") == "Knuth"]
        check(len(knuth) == 1 and knuth[0].get("OwnerId") == d.users[ANN], "Knuth is in Salesforce, owned by Ann")

        say("\n3. In Salesforce, Grace Hopper's title changes.")
        sf.update_contact(people["grace"], {"Title": "Rear Admiral (ret.)"}, as_user=d.users[ANN])
        d.settle()
        grace = next(c for c in graph.list_contacts(ANN, d.folders[ANN]) if c.get("surname") == "Hopper")
        check(grace.get("jobTitle") == "Rear Admiral (ret.)", "Outlook shows the new title")

        say("\n4. The same field edited on both sides before a sync: Alan Turing's title.")
        alan = next(c for c in graph.list_contacts(ANN, d.folders[ANN]) if c.get("surname") == "Turing")
        graph.update_contact(ANN, alan["id"], {"jobTitle": "Mathematician"})
        sf.update_contact(people["alan"], {"Title": "Computer Scientist"}, as_user=d.users[ANN])
        d.settle()
        alan = graph.get_contact(ANN, alan["id"]) or {}
        sf_title = next(c for c in sf.contacts() if c["Id"] == people["alan"]).get("Title")
        check(alan.get("jobTitle") == sf_title == "Computer Scientist", "both sides say 'Computer Scientist'")
        check(any(e.action == "conflict" for e in d.audit.recent(ANN, limit=50)), "the conflict is in the audit")

        say("\n5. Ada Byron is reassigned in Salesforce from Ann to Bob.")
        sf.change_owner(people["ada"], d.users[BOB])
        d.settle()
        say(f"   Ann's folder: {', '.join(d.folder(ANN))}")
        say(f"   Bob's folder: {', '.join(d.folder(BOB))}")
        check("Ada Byron" not in d.folder(ANN) and "Ada Byron" in d.folder(BOB), "Ada moved from Ann to Bob")

        say("\n6. Barbara Liskov is deleted in Salesforce.")
        sf.delete_contact(people["barbara"])
        d.settle()
        check("Barbara Liskov" not in d.folder(BOB), "Barbara left Bob's folder")

        say("\n7. Bob deletes Edsger Dijkstra from his Outlook folder.")
        edsger = next(c for c in graph.list_contacts(BOB, d.folders[BOB]) if c.get("surname") == "Dijkstra")
        graph.delete_contact(BOB, edsger["id"])
        d.settle()
        alive = any(c["Id"] == people["edsger"] for c in sf.contacts())
        check(alive and "Edsger Dijkstra" not in d.folder(BOB), "Edsger stays in Salesforce, gone from Outlook")

        say("\n8. A last reconcile of both mailboxes (what the timer does every 30 minutes).")
        last = [reconcile_mailbox(d.engine, mb) for mb in MAILBOXES]
        for report in last:
            say(f"   {report.summary()}")
        check(all(set(r.applied) == {"nothing"} and not r.errors for r in last), "nothing left to do")
        check("Edsger Dijkstra" not in d.folder(BOB), "the Outlook delete was not undone by the reconcile")

        say("\nAudit trail (ids and reasons; no names, emails or phones are stored)")
        say("-" * 100)
        for mb in MAILBOXES:
            for e in reversed(d.audit.recent(mb, limit=100)):
                ids = "/".join(x[-6:] for x in (e.m365_id, e.sf_id) if x)
                shown = ", ".join(e.fields[:3]) + (f", +{len(e.fields) - 3} more" if len(e.fields) > 3 else "")
                fields = f" [{shown}]" if e.fields else ""
                say(f"  {mb:<16} {e.action:<18} {ids:<14} {e.reason[:80]}{fields}")

        say("\nSummary")
        say("-" * 100)
        graph_calls = graph.counters.count()
        sf_calls = sum(v for k, v in sf.counters.snapshot().items() if k.startswith("rest.") and k != "rest.requests")
        say(f"  Outlook folders: Ann {len(d.folder(ANN))}, Bob {len(d.folder(BOB))};  Salesforce contacts: "
            f"{len(sf.contacts())}")
        say(f"  requests: Graph {graph_calls}, Salesforce REST {sf_calls}, Pub/Sub subscribes "
            f"{sf.counters.snapshot().get('grpc.Subscribe', 0)};  wall time {time.perf_counter() - t0:.1f} s")
        d.m365.close()
    if FAILED:
        say(f"\nDEMO FAILED: {len(FAILED)} claim(s) did not hold: {'; '.join(FAILED)}")
        return 1
    say("\nEvery claim held.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
