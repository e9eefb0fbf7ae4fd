"""The functions against Azurite and both emulators, wired only through app settings (``sync.bootstrap``).

A tiny loopback bridge turns the Graph emulator's webhook POSTs (validation handshake, change notifications) into
``func.HttpRequest`` calls of ``graph_notifications`` / ``graph_lifecycle``, so the subscription handshake and the
notification path are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from devhost.stack import emulator_settings, webhook_bridge
from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator
from sync import bootstrap
from sync.config import ConfigError
from sync.model import Side
from sync.ports import ContactChange, LifecycleNotice
from sync.reconcile import reconcile_mailbox
from sync.triggers import graph, salesforce, worker
from tests.contract.salesforce_harness import rsa_keys
from tests.functions.conftest import ANN, BOB, user_function, wait_for

CLIENT_ID = "functions-test-client"


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[GraphEmulator, SalesforceEmulator, str, dict[str, str]]]:
    with webhook_bridge() as bridge, GraphEmulator(users=[ANN, BOB]) as g, \
            SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5) as sf:
        _, public = rsa_keys()
        sf.register_jwt_client(CLIENT_ID, public)
        users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0]) for mb in (ANN, BOB)}
        yield g, sf, bridge, users


@pytest.fixture
def live(services, settings, queues):
    g, sf, bridge, users = services
    private, _ = rsa_keys()
    env = {**settings, **emulator_settings(g, sf, jwt_client=CLIENT_ID, private_key=private),
           "WEBHOOK_BASE_URL": bridge}
    root = bootstrap.install(bootstrap.Root(env))
    yield root, g, sf, users
    bootstrap.reset()


def drain_worker(queues) -> int:
    msgs = queues.take("contact-changes")
    for m in msgs:
        user_function(worker.contact_worker)(m)
    return len(msgs)


def test_subscription_handshake_notification_worker_salesforce(live, queues) -> None:
    root, g, sf, users = live
    user_function(graph.subscriptions_timer)(TimerRequest(past_due=False))
    stored = root.subscriptions.list_all()
    assert {s.mailbox for s in stored} == {ANN, BOB}  # both handshakes answered through the bridge
    assert {s["id"] for s in g.list_subscriptions()} >= {s.id for s in stored}
    folder = g.find_folder(ANN, "Salesforce_Sync")
    assert folder is not None

    g.create_contact(ANN, {"givenName": "Donald", "surname": "Knuth", "companyName": "Stanford",
                           "emailAddresses": [{"address": "knuth@stanford.example"}]}, folder)
    g.wait_notifications(5.0)
    hints = wait_for(lambda: queues.client("contact-changes").peek_messages(max_messages=32), 5.0)
    assert hints, "the notification reached graph_notifications and was enqueued"
    assert drain_worker(queues) >= 1
    created = [c for c in sf.contacts() if c.get("LastName") == "Knuth"]
    assert len(created) == 1 and created[0]["OwnerId"] == users[ANN]

    # second run: nothing expires within a day, nothing to create
    user_function(graph.subscriptions_timer)(TimerRequest(past_due=False))
    assert {s.id for s in root.subscriptions.list_all()} == {s.id for s in stored}


def test_cdc_pull_enqueues_hints_that_reach_outlook(live, queues) -> None:
    root, g, sf, users = live
    pull = user_function(salesforce.salesforce_cdc_pull)
    pull(TimerRequest(past_due=False))  # first run: subscribes at LATEST and checkpoints
    sf_id = sf.create_contact({"FirstName": "Grace", "LastName": "Hopper", "Email": "grace@navy.example",
                               "OwnerId": users[BOB]}, as_user=users[BOB])
    pull(TimerRequest(past_due=False))
    bodies = [m.get_json() for m in queues.take("contact-changes", visibility=1)]
    assert {"kind": "contact", "source": "salesforce", "item_id": sf_id, "mailbox": None} in bodies
    user_function(worker.contact_worker)(QueueMessage(
        id="m", body=ContactChange(source=Side.SALESFORCE, item_id=sf_id).model_dump_json().encode(),
        dequeue_count=1))
    folder = g.find_folder(BOB, "Salesforce_Sync")
    assert folder and [c.get("surname") for c in g.list_contacts(BOB, folder)] == ["Hopper"]

    # An edit of the linked pair costs one Graph write: the marker stamped at creation is not stamped again,
    # though Graph's PATCH answer does not show it.
    sf.update_contact(sf_id, {"Title": "Rear Admiral"}, as_user=users[BOB])
    writes_before = g.counters.count(g.user_id(BOB), "contact.update")
    user_function(worker.contact_worker)(QueueMessage(
        id="m2", body=ContactChange(source=Side.SALESFORCE, item_id=sf_id).model_dump_json().encode(),
        dequeue_count=1))
    assert [c.get("jobTitle") for c in g.list_contacts(BOB, folder)] == ["Rear Admiral"]
    assert g.counters.count(g.user_id(BOB), "contact.update") - writes_before == 1
    # the same for a full reconcile, which writes in bulk ($batch items are counted under contact.update)
    sf.update_contact(sf_id, {"Title": "Commodore"}, as_user=users[BOB])
    writes_before = g.counters.count(g.user_id(BOB), "contact.update")
    report = reconcile_mailbox(root.engine, BOB)
    assert [c.get("jobTitle") for c in g.list_contacts(BOB, folder)] == ["Commodore"]
    assert g.counters.count(g.user_id(BOB), "contact.update") - writes_before == 1, report


def test_dev_only_switches_are_refused_off_loopback(settings) -> None:
    root = bootstrap.Root({**settings, "GRAPH_CREDENTIAL": "static",
                           "GRAPH_BASE_URL": "https://graph.microsoft.com/v1.0"})
    with pytest.raises(ConfigError, match="local Graph emulator only"):
        _ = root.graph
    root = bootstrap.Root({**settings, "SF_PUBSUB_INSECURE": "true", "SF_CLIENT_ID": "x", "SF_USERNAME": "u",
                           "SF_PRIVATE_KEY": "k", "SF_PUBSUB_ENDPOINT": "api.pubsub.salesforce.com:7443"})
    with pytest.raises(ConfigError, match="local Salesforce emulator only"):
        _ = root.cdc


def _run_lifecycle_queue(queues) -> list[str | None]:
    """The graph-lifecycle worker over every queued event (the webhook only enqueues them)."""
    return [graph.process_lifecycle_message(bootstrap.current(), m.get_body().decode())
            for m in queues.take("graph-lifecycle")]


def test_lifecycle_events_renew_recreate_and_reconcile(live, queues) -> None:
    root, g, sf, users = live
    user_function(graph.subscriptions_timer)(TimerRequest(past_due=False))
    (ann_sub,) = [s for s in root.subscriptions.list_all() if s.mailbox == ANN]
    g.send_lifecycle(ann_sub.id, "reauthorizationRequired")
    g.wait_notifications(5.0)
    assert wait_for(lambda: len(queues.raw("graph-lifecycle")) == 1, 2.0)
    assert _run_lifecycle_queue(queues) == ["renewed"]
    renewed = root.subscriptions.get(ann_sub.id)
    assert renewed is not None and renewed.expires_at >= ann_sub.expires_at
    assert queues.take("reconcile") == []

    g.send_lifecycle(ann_sub.id, "subscriptionRemoved")
    g.wait_notifications(5.0)
    assert wait_for(lambda: len(queues.raw("graph-lifecycle")) == 1, 2.0)
    assert _run_lifecycle_queue(queues) == ["created"]
    assert root.subscriptions.get(ann_sub.id) is None
    (new_sub,) = [s for s in root.subscriptions.list_all() if s.mailbox == ANN]
    assert new_sub.id != ann_sub.id and new_sub.id in {s["id"] for s in g.list_subscriptions()}
    (msg,) = queues.bodies("reconcile")
    assert msg["mailbox"] == ANN and msg["mode"] == "delta"
    # the same event again (Graph resends it): the new subscription stays, nothing else is created
    again = LifecycleNotice(event="subscriptionRemoved", subscription_id=ann_sub.id, mailbox=ANN)
    assert graph.process_lifecycle_message(root, again.model_dump_json()) == "kept"
    assert [s["id"] for s in g.list_subscriptions() if "ann" in s["resource"].lower()] == [new_sub.id]




def test_automation_writes_sync_without_loops_or_conflicts(live, queues) -> None:
    root, g, sf, users = live
    pull = user_function(salesforce.salesforce_cdc_pull)
    pull(TimerRequest(past_due=False))
    sf_id = sf.create_contact({"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@engine.example",
                               "OwnerId": users[BOB]}, as_user=users[BOB])
    pull(TimerRequest(past_due=False))
    drain_worker(queues)
    folder = g.find_folder(BOB, "Salesforce_Sync")
    (ada,) = [c for c in g.list_contacts(BOB, folder) if c.get("surname") == "Lovelace"]

    sf.run_flow([sf_id], {"Department": "Scored"})  # a scheduled flow, as Automated Process
    pull(TimerRequest(past_due=False))
    assert drain_worker(queues) >= 1
    assert (g.get_contact(BOB, ada["id"]) or {}).get("department") == "Scored"

    sf.bump_system_modstamp([sf_id])  # a roll-up: SystemModstamp only, no event
    g.update_contact(BOB, ada["id"], {"jobTitle": "Analyst"})  # an Outlook edit after the link was saved
    user_function(worker.contact_worker)(QueueMessage(
        id="m3", body=ContactChange(source=Side.M365, item_id=ada["id"], mailbox=BOB).model_dump_json().encode(),
        dequeue_count=1))
    assert (sf.get_record(sf_id) or {}).get("Title") == "Analyst"  # the bump failed no version guard

    graph_writes = g.counters.count(g.user_id(BOB), "contact.update")
    for _ in range(3):  # the echoes of our own writes come back and change nothing: no loop
        pull(TimerRequest(past_due=False))
        drain_worker(queues)
    assert g.counters.count(g.user_id(BOB), "contact.update") == graph_writes
    rows = [e for e in root.audit.recent(BOB, 50) if sf_id in (e.sf_id or "")]
    assert not [e for e in rows if e.action == "conflict" or e.outcome == "failed"], rows


@pytest.fixture
def filtered(services, settings, queues):
    """The app with SF_SOQL_FILTER set (Department = 'Sales')."""
    g, sf, bridge, users = services
    private, _ = rsa_keys()
    env = {**settings, **emulator_settings(g, sf, jwt_client=CLIENT_ID, private_key=private),
           "WEBHOOK_BASE_URL": bridge, "SF_SOQL_FILTER": "Department = 'Sales'"}
    root = bootstrap.install(bootstrap.Root(env))
    yield root, g, sf, users
    bootstrap.reset()


def test_cdc_events_are_routed_by_the_soql_filter_through_the_worker(filtered, queues) -> None:
    """A change event carries only the changed fields: the worker asks Salesforce whether the contact meets
    SF_SOQL_FILTER. Outside: no copy; entering: created in the owner's folder; leaving: moved to Deleted Items."""
    root, g, sf, users = filtered
    pull = user_function(salesforce.salesforce_cdc_pull)
    pull(TimerRequest(past_due=False))  # subscribes at LATEST
    sf_id = sf.create_contact({"LastName": "Noether", "Email": "emmy@algebra.example", "Department": "Support",
                               "OwnerId": users[BOB]}, as_user=users[BOB])

    def surnames() -> list[str | None]:
        folder = g.find_folder(BOB, "Salesforce_Sync")
        return [c.get("surname") for c in g.list_contacts(BOB, folder)] if folder else []

    pull(TimerRequest(past_due=False))
    assert drain_worker(queues) >= 1
    assert "Noether" not in surnames()  # outside the filter
    sf.update_contact(sf_id, {"Department": "Sales"}, as_user=users[BOB])
    pull(TimerRequest(past_due=False))
    assert drain_worker(queues) >= 1
    assert surnames().count("Noether") == 1  # entered: new, created in Outlook
    sf.update_contact(sf_id, {"Department": "Support"}, as_user=users[BOB])
    pull(TimerRequest(past_due=False))
    assert drain_worker(queues) >= 1
    assert "Noether" not in surnames()  # left: out of the folder
    assert any(e.reason.startswith("the Salesforce contact no longer meets SF_SOQL_FILTER")
               for e in root.audit.recent(BOB, 50))


def test_a_no_change_delta_pass_makes_no_storage_write(live) -> None:
    """The timer's delta pass over a mailbox where nothing changed: one Graph request (the delta round), one
    Salesforce query, and no Table Storage write (counted by the adapter, ``sync.adapters.storage.REQUESTS``). The
    shared Graph slots' requests are counted apart (``PERMIT_REQUESTS``): at most a take and a give-back per Graph
    request."""
    from sync.adapters.storage import PERMIT_REQUESTS, REQUESTS
    from sync.reconcile import CHECKPOINT_REFRESH, reconcile_mailbox_delta

    root, g, sf, users = live
    for i in range(3):
        sf.create_contact({"FirstName": "Quiet", "LastName": f"Person{i}", "Email": f"quiet{i}@example.com",
                           "OwnerId": users[ANN]}, as_user=users[ANN])
    now = datetime.now(UTC)
    assert reconcile_mailbox_delta(root.engine, ANN, root.checkpoints, clock=lambda: now).ran == "full"
    reconcile_mailbox_delta(root.engine, ANN, root.checkpoints, clock=lambda: now)  # our own writes come back
    writes = ("write", "transaction", "delete")
    tables, permits = REQUESTS.snapshot(), sum(PERMIT_REQUESTS.snapshot().values())
    graph_calls, sf_calls = g.counters.http_requests(), sf.counters["rest.requests"]
    delta_calls = g.counters.count(endpoint="contacts.delta")
    report = reconcile_mailbox_delta(root.engine, ANN, root.checkpoints, clock=lambda: now + timedelta(minutes=30))
    assert report.ran == "delta" and report.visited == 0 and not report.errors
    after = REQUESTS.snapshot()
    assert {k: after.get(k, 0) - tables.get(k, 0) for k in writes} == dict.fromkeys(writes, 0)
    # the delta round only: the sync folder was checked by the passes just before (not due again for 2 hours)
    assert g.counters.count(endpoint="contacts.delta") - delta_calls == 1
    assert g.counters.http_requests() - graph_calls == 1
    assert sum(PERMIT_REQUESTS.snapshot().values()) - permits <= 2
    assert sf.counters["rest.requests"] - sf_calls == 1  # one queryAll of what moved since the watermark
    # once the stored delta link is CHECKPOINT_REFRESH old, the next pass replaces it (one row), nothing else
    reconcile_mailbox_delta(root.engine, ANN, root.checkpoints, clock=lambda: now + CHECKPOINT_REFRESH)
    refreshed = REQUESTS.snapshot()
    assert {k: refreshed.get(k, 0) - after.get(k, 0) for k in writes} == {"write": 1, "transaction": 0, "delete": 0}


def test_other_reps_edits_cost_a_delta_pass_one_links_query_not_a_read_each(live) -> None:
    """The Salesforce feed is org-wide: what other reps' contacts did since the last pass comes back as removals.
    Past 50 of them the pass lists its mailbox's links once instead of reading a link per id; a contact of this
    mailbox handed to another rep among them is still decided here."""
    from sync.adapters.storage import REQUESTS
    from sync.reconcile import reconcile_mailbox_delta

    root, g, sf, users = live
    mine = sf.create_contact({"FirstName": "Handed", "LastName": "Over", "Email": "handed@example.com",
                              "OwnerId": users[ANN]}, as_user=users[ANN])
    reconcile_mailbox_delta(root.engine, ANN, root.checkpoints)
    reconcile_mailbox_delta(root.engine, ANN, root.checkpoints)
    assert root.engine.links.get(ANN, Side.SALESFORCE, mine) is not None
    sf.bulk_create_contacts([{"LastName": f"Other{i}", "Email": f"other{i}@example.com", "OwnerId": users[BOB]}
                             for i in range(80)], as_user=users[BOB])
    sf.update_contact(mine, {"OwnerId": users[BOB]}, as_user=users[ANN])
    before = REQUESTS.snapshot()
    report = reconcile_mailbox_delta(root.engine, ANN, root.checkpoints)
    after = REQUESTS.snapshot()
    assert report.ran == "delta" and not report.errors
    assert report.visited == 1  # the handed-over contact: its copy leaves this mailbox
    assert after.get("read", 0) - before.get("read", 0) < 20  # not one point read per other rep's contact (81)
    folder = g.find_folder(ANN, "Salesforce_Sync")
    assert folder and "Over" not in [c.get("surname") for c in g.list_contacts(ANN, folder)]
