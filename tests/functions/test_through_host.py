"""Every function of the app through the local functions host: real HTTP on 127.0.0.1, real Azurite queues (base64,
poison), NCRONTAB timers fired by hand, and the Graph and Salesforce emulators (docs/local-host.md).

One host serves the module (starting it costs about a second); the tests share it and its table prefix, so each
uses its own contacts, and the mailbox whose contacts are deleted for the circuit-breaker case (Carol) is used by
nothing else. Timers are scheduled once a year: they run only when a test fires them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

import function_app
from devhost.host import LocalHost
from devhost.stack import app_settings
from emulators.azurite import free_port
from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator
from sync import bootstrap
from sync.adapters.salesforce.pubsub import sign_events
from sync.triggers import graph as graph_triggers
from tests.contract.salesforce_harness import rsa_keys
from tests.functions.conftest import ANN, BOB, HMAC_SECRET, Queues

CAROL = "carol@contoso.com"
CLIENT_ID = "through-host-client"
FOLDER = "Salesforce_Sync"
DEADLINE = 15.0

pytestmark = pytest.mark.timeout(120)


@dataclass
class Stack:
    host: LocalHost
    graph: GraphEmulator
    sf: SalesforceEmulator
    users: dict[str, str]
    queues: Queues
    http: requests.Session

    def url(self, route: str) -> str:
        return self.host.url(route)

    def keyed(self) -> dict[str, str]:
        return {"x-functions-key": self.host.host_key}

    def folder(self, mailbox: str) -> str:
        folder = self.graph.find_folder(mailbox, FOLDER)
        assert folder is not None, "subscriptions_timer creates the sync folder"
        return folder

    def outlook(self, mailbox: str) -> list[dict[str, Any]]:
        return self.graph.list_contacts(mailbox, self.folder(mailbox))

    def settle(self, timeout: float = DEADLINE) -> None:
        """Let notifications land and the queues drain (echoes of our own writes included)."""
        for _ in range(3):
            self.graph.wait_notifications(timeout)
            assert self.host.wait_idle(timeout), "the host's queues drained"


def poll(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(azurite_connection_string: str) -> Iterator[Stack]:
    private, public = rsa_keys()
    queues = Queues(azurite_connection_string)
    queues.clear()
    with GraphEmulator(users=[ANN, BOB, CAROL]) as g, \
            SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5) as sf:
        sf.register_jwt_client(CLIENT_ID, public)
        users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0].title()) for mb in (ANN, BOB, CAROL)}
        port = free_port()
        settings = app_settings(
            azurite_connection_string, [ANN, BOB, CAROL], table_prefix="h" + uuid.uuid4().hex[:12], graph=g,
            salesforce=sf, jwt_client=CLIENT_ID, private_key=private, host_port=port, events_secret=HMAC_SECRET,
            overrides={"BREAKER_MIN_COUNT": "3"})  # timers run only when a test fires them
        bootstrap.reset()  # the host's functions build their root from the settings it puts in the environment
        host = LocalHost(function_app, port=port, settings=settings)
        host.start()
        try:
            with requests.Session() as session:
                yield Stack(host, g, sf, users, queues, session)
        finally:
            host.stop()
            bootstrap.reset()


@pytest.fixture(scope="module")
def subscribed(stack: Stack) -> Stack:
    """``subscriptions_timer`` fired once: folders and subscriptions exist (Graph's real handshake to the host)."""
    stack.host.fire_timer("subscriptions_timer")
    return stack


# ------------------------------------------------------------------------------------------------ Graph webhook


def test_validation_handshake_is_echoed_as_text(stack: Stack) -> None:
    for route in ("graph/notifications", "graph/lifecycle"):
        resp = stack.http.post(stack.url(route), params={"validationToken": "Validation: token & more"},
                               headers={"Content-Type": "text/plain; charset=utf-8"}, data=b"")
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.text == "Validation: token & more"
    # Graph validates with POST only; the route is POST-only, so the host answers 405 with Allow
    resp = stack.http.get(stack.url("graph/notifications"), params={"validationToken": "x"})
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"


def test_subscriptions_timer_creates_subscriptions_through_the_real_handshake(subscribed: Stack) -> None:
    s = subscribed
    stored = bootstrap.current().subscriptions.list_all()
    assert {x.mailbox for x in stored} == {ANN, BOB, CAROL}
    live = {x["id"]: x for x in s.graph.list_subscriptions()}
    assert {x.id for x in stored} <= set(live)
    assert all(live[x.id]["notificationUrl"] == s.url("graph/notifications") for x in stored)
    # Graph refuses a subscription whose handshake fails: each one came through the host's two webhook routes
    assert s.host.invocations["graph_notifications"].succeeded >= 3
    assert s.host.invocations["graph_lifecycle"].succeeded >= 3
    assert s.host.invocations["subscriptions_timer"].succeeded == 1
    s.host.fire_timer("subscriptions_timer")  # nothing expires within a day: nothing to create
    assert {x.id for x in bootstrap.current().subscriptions.list_all()} == {x.id for x in stored}


def test_outlook_edit_reaches_salesforce_through_webhook_queue_and_worker(subscribed: Stack) -> None:
    s = subscribed
    before = s.host.invocations["graph_notifications"].succeeded
    s.graph.create_contact(ANN, {"givenName": "Donald", "surname": "Knuth", "companyName": "Stanford",
                                 "emailAddresses": [{"address": "knuth@stanford.example"}]}, s.folder(ANN))
    created = poll(lambda: [c for c in s.sf.contacts() if c.get("LastName") == "Knuth"], "Knuth in Salesforce")
    assert len(created) == 1 and created[0]["OwnerId"] == s.users[ANN]
    assert s.host.invocations["graph_notifications"].succeeded > before
    assert s.graph.deliveries() and all(d.status == 202 for d in s.graph.deliveries())

    knuth = next(c for c in s.outlook(ANN) if c.get("surname") == "Knuth")
    s.graph.update_contact(ANN, knuth["id"], {"jobTitle": "Professor Emeritus"})
    poll(lambda: next(c for c in s.sf.contacts() if c["Id"] == created[0]["Id"]).get("Title")
         == "Professor Emeritus", "the Outlook edit in Salesforce")
    s.settle()
    assert len([c for c in s.sf.contacts() if c.get("LastName") == "Knuth"]) == 1  # echoes changed nothing


def test_salesforce_edit_reaches_outlook_through_cdc_pull_and_worker(subscribed: Stack) -> None:
    s = subscribed
    s.host.fire_timer("salesforce_cdc_pull")  # first run: subscribes at LATEST and checkpoints
    sf_id = s.sf.create_contact({"FirstName": "Grace", "LastName": "Hopper", "Email": "grace@navy.example",
                                 "OwnerId": s.users[BOB]}, as_user=s.users[BOB])
    s.host.fire_timer("salesforce_cdc_pull")
    grace = poll(lambda: [c for c in s.outlook(BOB) if c.get("surname") == "Hopper"], "Grace in Bob's folder")
    assert len(grace) == 1
    s.sf.update_contact(sf_id, {"Title": "Rear Admiral"}, as_user=s.users[BOB])
    s.host.fire_timer("salesforce_cdc_pull")
    poll(lambda: (s.graph.get_contact(BOB, grace[0]["id"]) or {}).get("jobTitle") == "Rear Admiral",
         "the Salesforce edit in Outlook")
    s.settle()
    assert len([c for c in s.outlook(BOB) if c.get("surname") == "Hopper"]) == 1


def test_wrong_client_state_is_dropped_and_not_enqueued(subscribed: Stack) -> None:
    s = subscribed
    s.settle()
    sub = next(x for x in bootstrap.current().subscriptions.list_all() if x.mailbox == ANN)
    dropped = graph_triggers.COUNTERS["bad_client_state"]
    worker_runs = s.host.invocations["contact_worker"].started
    note = {"value": [{"subscriptionId": sub.id, "clientState": "not-the-secret", "changeType": "updated",
                       "resource": "Users/x/Contacts/AAMkForged", "resourceData": {"id": "AAMkForged"}}]}
    resp = s.http.post(s.url("graph/notifications"), json=note)
    assert resp.status_code == 202
    assert graph_triggers.COUNTERS["bad_client_state"] == dropped + 1
    assert s.host.wait_idle(5)
    assert s.host.invocations["contact_worker"].started == worker_runs


def test_bad_json_is_400_and_oversize_is_413(stack: Stack) -> None:
    url = stack.url("graph/notifications")
    assert stack.http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert stack.http.post(url, json={"value": "nope"}).status_code == 400
    big = b'{"value": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert stack.http.post(url, data=big, headers={"Content-Type": "application/json"}).status_code == 413
    assert stack.http.post(stack.url("graph/lifecycle"), data=big).status_code == 413


# ------------------------------------------------------------------------------------------------ Salesforce push


def test_signed_salesforce_push_is_accepted_and_a_bad_signature_is_401(subscribed: Stack) -> None:
    s = subscribed
    sf_id = s.sf.create_contact({"FirstName": "Barbara", "LastName": "Liskov", "Email": "liskov@mit.example",
                                 "OwnerId": s.users[BOB]}, as_user=s.users[BOB])
    body = json.dumps([{"ChangeEventHeader": {"entityName": "Contact", "changeType": "CREATE",
                                              "recordIds": [sf_id]}}]).encode()
    url = s.url("salesforce/events")
    forged = sign_events(body, "someone-else", int(time.time()))
    assert s.http.post(url, data=body, headers=forged).status_code == 401
    assert s.http.post(url, data=body).status_code == 401
    resp = s.http.post(url, data=body, headers=sign_events(body, HMAC_SECRET, int(time.time())))
    assert resp.status_code == 202 and resp.json() == {"accepted": 1}
    poll(lambda: [c for c in s.outlook(BOB) if c.get("surname") == "Liskov"], "the pushed contact in Outlook")


# ------------------------------------------------------------------------------------------------ poison


def test_a_permanently_failing_message_ends_in_poison_with_its_reason(stack: Stack) -> None:
    stack.settle()
    before = stack.host.invocations["contact_worker"]
    stack.queues.client("contact-changes-poison").clear_messages()
    stack.queues.client("contact-changes").send_message("this is not a hint")  # base64-encoded by the client
    doc = poll(lambda: stack.queues.bodies("contact-changes-poison"), "the poison copy")[0]
    assert doc["message"] == "this is not a hint" and doc["error"] == "BadData"
    assert "unreadable contact-changes message" in doc["reason"] and doc["queue"] == "contact-changes"
    after = stack.host.invocations["contact_worker"]
    # the function completed the message itself, with the reason; no retries, no reason-less host poison copy
    assert after.failed == before.failed and after.poisoned == before.poisoned == 0


# ------------------------------------------------------------------------------------------------ reconcile


def _job(s: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = s.http.post(s.url("reconcile"), json=body, headers=s.keyed())
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    assert location == f"/api/reconcile/{resp.json()['id']}"
    seen: list[str] = []

    def finished() -> dict[str, Any] | None:
        doc = s.http.get(s.host.base_url + location, headers=s.keyed()).json()
        seen.append(doc["state"])
        return doc if doc["state"] not in ("queued", "running") else None

    doc: dict[str, Any] = poll(finished, "the reconcile job finished")
    assert seen[0] in ("queued", "running", doc["state"])
    return doc


def test_reconcile_needs_the_function_key_and_progresses_to_done(subscribed: Stack) -> None:
    s = subscribed
    assert s.http.post(s.url("reconcile"), json={}).status_code == 401
    assert s.http.post(s.url("reconcile"), json={}, params={"code": "wrong"}).status_code == 401
    assert s.http.get(s.url("reconcile/abc")).status_code == 401
    assert s.http.get(s.url("reconcile/abc"), headers=s.keyed()).status_code == 404
    assert s.http.post(s.url("reconcile"), json={"mode": "sideways"}, headers=s.keyed()).status_code == 400
    s.sf.create_contact({"FirstName": "Alan", "LastName": "Turing", "Email": "alan@bletchley.example",
                         "OwnerId": s.users[ANN]}, as_user=s.users[ANN])  # no CDC pull: only a reconcile finds it
    doc = _job(s, {"mailboxes": [ANN], "mode": "full"})
    assert doc["state"] == "done" and doc["progress"] == {"total": 1, "done": 1}
    assert [c for c in s.outlook(ANN) if c.get("surname") == "Turing"]
    assert s.http.post(s.url("reconcile"), json={}, params={"code": s.host.master_key}).status_code == 400
    resp = s.http.post(s.url("reconcile"), json={"mailboxes": "all"}, params={"code": s.host.master_key})
    assert resp.status_code == 202 and resp.json()["mailboxes"] == 3
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_dry_run_reports_the_plan_and_writes_nothing(subscribed: Stack) -> None:
    s = subscribed
    s.settle()
    s.sf.create_contact({"FirstName": "Edsger", "LastName": "Dijkstra", "Email": "ewd@eindhoven.example",
                         "OwnerId": s.users[BOB]}, as_user=s.users[BOB])
    outlook_before = sorted(c["id"] for c in s.outlook(BOB))
    sf_before = len(s.sf.contacts())
    doc = _job(s, {"mailboxes": [BOB], "dryRun": True})
    assert doc["dryRun"] is True and doc["state"] == "done"
    assert sum(doc["planned"].values()) >= 1 and not any(v for k, v in doc["applied"].items() if k != "nothing")
    s.settle()
    assert sorted(c["id"] for c in s.outlook(BOB)) == outlook_before
    assert len(s.sf.contacts()) == sf_before


def test_circuit_breaker_refusal_shows_in_the_job_status(subscribed: Stack) -> None:
    s = subscribed
    ids = [s.sf.create_contact({"FirstName": f"P{i}", "LastName": f"Person{i}", "Email": f"p{i}@carol.example",
                                "OwnerId": s.users[CAROL]}, as_user=s.users[CAROL]) for i in range(4)]
    assert _job(s, {"mailboxes": [CAROL]})["state"] == "done"
    s.settle()
    assert len(s.outlook(CAROL)) == 4
    for sf_id in ids[:3]:
        s.sf.delete_contact(sf_id, as_user=s.users[CAROL])  # 3 of 4 linked contacts: over the 25 % share
    doc = _job(s, {"mailboxes": [CAROL]})
    assert doc["state"] == "finished_with_problems" and doc["refusals"] == [CAROL]
    (mailbox,) = doc["mailboxes"]
    assert mailbox["state"] == "refused" and mailbox["refusal"] and len(mailbox["report"]) == 3
    assert len(s.outlook(CAROL)) == 4  # nothing was deleted
    forced = _job(s, {"mailboxes": [CAROL], "force": True})
    assert forced["state"] == "done"
    assert len(s.outlook(CAROL)) == 1


# ------------------------------------------------------------------------------------------------ status page


def test_status_page_html_and_json_show_ids_but_no_personal_data(subscribed: Stack) -> None:
    s = subscribed
    s.settle()
    from sync.triggers import graph as graph_trigger

    graph_trigger._NOTED.clear()  # the last-notification time is written once a minute per process: not left to order
    first = s.outlook(ANN)[0]
    s.graph.update_contact(ANN, first["id"], {"department": "Status check"})  # one notification for ANN
    poll(lambda: bootstrap.current().checkpoints.get(ANN, "graph.subscription.lastNotification"),
         "the notification's time kept for the status page")
    s.settle()
    assert s.http.get(s.url("status")).status_code == 401
    page = s.http.get(s.url("status"), headers=s.keyed())
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    doc = s.http.get(s.url("status"), headers={**s.keyed(), "Accept": "application/json"})
    assert doc.status_code == 200 and doc.headers["Content-Type"].startswith("application/json")
    mailboxes = {m["mailbox"]: m for m in doc.json()["mailboxes"]}
    assert set(mailboxes) == {ANN, BOB, CAROL}
    assert mailboxes[ANN]["subscription"] and mailboxes[ANN]["lastSync"]
    for text in (page.text, doc.text):
        for private in ("Knuth", "Hopper", "Liskov", "Turing", "Donald", "Grace", "stanford.example",
                        "navy.example", "mit.example", "Professor", "Rear Admiral"):
            assert private not in text, private
    assert "Contact sync status" in page.text

    blocks = {m["mailbox"]: m for m in doc.json()["subscriptions"]}  # the upkeep block (issue 15 point 2)
    assert blocks[ANN]["id"] == mailboxes[ANN]["subscription"]["id"] and blocks[ANN]["lastError"] is None
    assert blocks[ANN]["lastNotification"] and "Graph subscriptions" in page.text


# ------------------------------------------------------------------------------------------------ lifecycle, refresh


def test_lifecycle_is_acknowledged_in_time_while_the_create_takes_five_seconds(subscribed: Stack) -> None:
    """§4.6 / §4.5: 202 first (Graph's 3-s clock), the re-create from the graph-lifecycle queue afterwards."""
    s = subscribed
    s.settle()
    old = next(x for x in bootstrap.current().subscriptions.list_all() if x.mailbox == BOB)
    s.graph.faults.subscription_create_delay_s = 5.0
    try:
        s.graph.send_lifecycle(old.id, "subscriptionRemoved")
        assert s.graph.wait_notifications(DEADLINE)
        (delivery,) = [d for d in s.graph.deliveries() if d.payload["value"][0].get("subscriptionId") == old.id
                       and d.payload["value"][0].get("lifecycleEvent") == "subscriptionRemoved"]
        # the emulator gives up on an answer after Graph's 3 s (status None): this one came in time
        assert delivery.status == 202 and delivery.attempt == 1
        new = poll(lambda: [x for x in bootstrap.current().subscriptions.list_all()
                            if x.mailbox == BOB and x.id != old.id], "the lifecycle worker re-created it", 30)
    finally:
        s.graph.faults.subscription_create_delay_s = 0.0
    assert [x["id"] for x in s.graph.list_subscriptions() if BOB in x["resource"]] == [new[0].id]
    s.settle()


def test_refresh_endpoint_repairs_a_lost_subscription_and_reports_each_mailbox(subscribed: Stack) -> None:
    s = subscribed
    ann = next(x for x in bootstrap.current().subscriptions.list_all() if x.mailbox == ANN)
    s.graph.expire_subscription(ann.id)  # Graph forgot it (expired)
    assert s.http.post(s.url("subscriptions/refresh")).status_code == 401
    resp = s.http.post(s.url("subscriptions/refresh"), headers=s.keyed())
    assert resp.status_code == 200
    doc = resp.json()
    rows = {r["mailbox"]: r for r in doc["mailboxes"]}
    assert set(rows) == {ANN, BOB, CAROL} and all(r["lastError"] is None for r in rows.values())
    assert rows[ANN]["subscriptionId"] in {x["id"] for x in s.graph.list_subscriptions()}
    assert sum(doc["counts"].values()) >= 3



# ------------------------------------------------------------------------------------------------ logs (issue 19)


class _Everything(logging.Handler):
    """Every record of every logger at Information and above, formatted as an operator would read it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.name, text))


def test_a_full_sync_at_information_logs_no_personal_data(subscribed: Stack) -> None:
    """Azure logs at Information (host.json): a full reconcile, then live edits both ways, with every logger
    captured (ours, the host's, httpx, azure-core, urllib3, grpc, msal, ...; only the emulated services' own loggers
    are left out), and no name, email, phone or mailbox UPN (also URL-encoded, as in storage keys and Graph URLs)
    of the seeded people may appear. The app's start-up (``function_app`` import) set the third-party levels."""
    s = subscribed
    s.settle()
    people = [("Philippa", "Wetherington", "philippa.w@quietmail.example", "+44 7700 900 123"),
              ("Bartholomew", "Quicksilver", "b.quicksilver@hushmail.example", "+44 7700 900 456")]
    handler, root = _Everything(), logging.getLogger()
    before = root.level
    # what the app itself sets stays; what other tests in this process set (the demo quiets devhost) is undone
    ours = {name: logging.getLogger(name).level for name in ("devhost", "sync")}
    for name in ours:
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        s.sf.create_contact({"FirstName": people[0][0], "LastName": people[0][1], "Email": people[0][2],
                             "Phone": people[0][3], "OwnerId": s.users[ANN]}, as_user=s.users[ANN])
        s.graph.create_contact(BOB, {"givenName": people[1][0], "surname": people[1][1],
                                     "emailAddresses": [{"address": people[1][2]}],
                                     "businessPhones": [people[1][3]]}, s.folder(BOB))
        assert _job(s, {"mailboxes": "all", "mode": "full"})["state"] == "done"
        s.settle()
        outlook = next(c for c in s.outlook(ANN) if c.get("surname") == people[0][1])
        s.graph.update_contact(ANN, outlook["id"], {"jobTitle": "Quartermaster"})  # webhook -> worker
        sf = poll(lambda: [c for c in s.sf.contacts() if c.get("LastName") == people[1][1]], "Bartholomew in SF")
        s.host.fire_timer("salesforce_cdc_pull")
        s.sf.update_contact(sf[0]["Id"], {"Title": "Harbourmaster"}, as_user=s.users[BOB])
        s.host.fire_timer("salesforce_cdc_pull")  # CDC -> worker
        poll(lambda: (s.graph.get_contact(BOB, next(c["id"] for c in s.outlook(BOB)
                                                     if c.get("surname") == people[1][1])) or {}).get("jobTitle")
             == "Harbourmaster", "the Salesforce edit in Outlook")
        s.settle()
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        for name, level in ours.items():
            logging.getLogger(name).setLevel(level)
    lines = [(name, text) for name, text in handler.lines if not name.startswith("emulators")]
    assert len(lines) > 20 and {n.split(".")[0] for n, _ in lines} >= {"sync", "devhost"}
    private = [v for p in people for v in (*p, f"{p[0]} {p[1]}", p[2].split("@")[0], p[3].replace(" ", ""))]
    for mailbox in (ANN, BOB):
        private += [mailbox, quote(mailbox), mailbox.replace("@", "%40"), mailbox.split("@")[0] + "@"]
    for name, text in lines:
        leaked = [v for v in private if v.casefold() in text.casefold()]
        assert not leaked, f"{leaked[0]!r} in a log line of {name}: {text[:300]!r}"
