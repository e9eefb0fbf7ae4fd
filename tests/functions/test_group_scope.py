"""Mailbox scope from an Entra group (SYNC_MAILBOX_GROUP_ID, sync/scope.py) through the functions, over Azurite and
both emulators: the subscriptions run reads the group's transitive members and acts on what changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from devhost.stack import emulator_settings, webhook_bridge
from emulators.graph import ADMIN_GUIDE_GRANTS, ADMIN_GUIDE_GROUP_GRANTS, Grants, GraphEmulator
from emulators.salesforce import SalesforceEmulator
from sync import bootstrap
from sync.config import ConfigError
from sync.model import Side
from sync.ports import ContactChange, LifecycleNotice
from sync.reconcile import reconcile_mailbox
from sync.triggers import graph, ops
from sync.triggers.status import status_page
from tests.contract.salesforce_harness import rsa_keys
from tests.functions.conftest import ANN, BOB, http, user_function

CAROL, DAVE = "carol@contoso.com", "dave@contoso.com"
CLIENT_ID = "group-scope-client"


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[GraphEmulator, SalesforceEmulator, str, dict[str, str]]]:
    with webhook_bridge() as bridge, \
            GraphEmulator(users=[ANN, BOB, CAROL, DAVE], grants=ADMIN_GUIDE_GROUP_GRANTS) as g, \
            SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5) as sf:
        _, public = rsa_keys()
        sf.register_jwt_client(CLIENT_ID, public)
        users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0]) for mb in (ANN, BOB, CAROL, DAVE)}
        yield g, sf, bridge, users


@pytest.fixture
def scoped(services, settings, queues):
    """A group ``sales`` with ANN directly and BOB through the nested group ``east``; SYNC_MAILBOXES empty."""
    g, sf, bridge, users = services
    g.grants = ADMIN_GUIDE_GROUP_GRANTS
    east = g.add_group("east", [BOB])
    sales = g.add_group("sales", [ANN, east])
    private, _ = rsa_keys()
    env = {**settings, **emulator_settings(g, sf, jwt_client=CLIENT_ID, private_key=private, pubsub=False),
           "WEBHOOK_BASE_URL": bridge, "SYNC_MAILBOXES": "", "SYNC_MAILBOX_GROUP_ID": sales}
    root = bootstrap.install(bootstrap.Root(env))
    yield root, g, sf, users, sales, east
    bootstrap.reset()
    g.reset()  # subscriptions and folders; the users and groups stay


def refresh() -> dict:
    resp = user_function(graph.subscriptions_refresh)(http("POST", "http://localhost/api/subscriptions/refresh"))
    assert resp.status_code == 200, resp.get_body()
    return json.loads(resp.get_body())


def live_subscriptions(g: GraphEmulator) -> dict[str, str]:
    """mailbox object id -> subscription id, as Graph has them."""
    out = {}
    for s in g.list_subscriptions():
        for upn in (ANN, BOB, CAROL, DAVE):
            if f"AAD-UPN:{upn}".casefold() in s["resource"].casefold():
                out[upn] = s["id"]
    return out


def test_group_members_nested_included_get_folder_subscription_and_initial_reconcile(scoped, queues) -> None:
    root, g, sf, users, sales, east = scoped
    doc = refresh()
    assert doc["scope"]["source"] == "group" and doc["scope"]["members"] == 2 and doc["scope"]["lastError"] is None
    assert doc["counts"]["scope_added"] == 2 and doc["counts"]["created"] == 2
    assert root.mailboxes == (ANN, BOB)  # BOB through the nested group
    assert set(live_subscriptions(g)) == {ANN, BOB}
    assert g.find_folder(BOB, "Salesforce_Sync") is not None
    jobs = [j for j in root.jobs.recent(5) if j.origin == "scope"]
    assert len(jobs) == 1 and set(jobs[0].mailboxes) == {ANN, BOB} and jobs[0].mode == "full"
    assert sorted(m["mailbox"] for m in queues.bodies("reconcile")) == [ANN, BOB]

    reconcile_mailbox(root.engine, ANN)  # this process has read the Salesforce users of ANN and BOB
    # a member added to the nested group: its folder, a subscription and its own initial reconcile, on the next run
    sf_id = sf.create_contact({"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@engine.example",
                               "OwnerId": users[CAROL]}, as_user=users[CAROL])
    g.add_group_member(east, CAROL)
    doc = refresh()
    assert doc["counts"]["scope_added"] == 1 and doc["counts"]["created"] == 1 and doc["counts"]["kept"] == 2
    assert set(live_subscriptions(g)) == {ANN, BOB, CAROL}
    folder = g.find_folder(CAROL, "Salesforce_Sync")
    assert folder is not None
    assert [m["mailbox"] for m in queues.bodies("reconcile")] == [CAROL]
    # that reconcile finds CAROL's Salesforce user at once (not 15 minutes later) and fills her folder
    reconcile_mailbox(root.engine, CAROL)
    assert [c["surname"] for c in g.list_contacts(CAROL, folder)] == ["Lovelace"]
    assert root.links.get(CAROL, Side.SALESFORCE, sf_id) is not None
    # an unchanged group: no job, nothing made
    doc = refresh()
    assert "scope_added" not in doc["counts"] and doc["counts"]["kept"] == 3 and queues.bodies("reconcile") == []


def test_a_removed_member_loses_its_subscription_and_keeps_its_links_and_contacts(scoped, queues) -> None:
    root, g, sf, users, sales, east = scoped
    refresh()
    queues.bodies("reconcile")
    sf_id = sf.create_contact({"FirstName": "Grace", "LastName": "Hopper", "Email": "grace@navy.example",
                               "OwnerId": users[BOB]}, as_user=users[BOB])
    reconcile_mailbox(root.engine, BOB)
    folder = g.find_folder(BOB, "Salesforce_Sync")
    assert [c["surname"] for c in g.list_contacts(BOB, folder)] == ["Hopper"]
    link = root.links.get(BOB, Side.SALESFORCE, sf_id)
    assert link is not None

    g.remove_group_member(east, BOB)
    doc = refresh()
    assert doc["counts"]["scope_removed"] == 1 and doc["counts"]["deleted"] == 1
    assert set(live_subscriptions(g)) == {ANN} and {s.mailbox for s in root.subscriptions.list_all()} == {ANN}
    assert root.mailboxes == (ANN,)
    # the documented rule: nothing else happens; the link, the Outlook copy and the Salesforce contact stay
    assert root.links.get(BOB, Side.SALESFORCE, sf_id) == link
    assert [c["surname"] for c in g.list_contacts(BOB, folder)] == ["Hopper"]
    assert [c["LastName"] for c in sf.contacts() if c["Id"] == sf_id] == ["Hopper"]
    # and a Salesforce edit of that contact no longer reaches the mailbox (nor fails on it)
    sf.update_contact(sf_id, {"Title": "Rear Admiral"}, as_user=users[BOB])
    assert root.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)) == []
    assert [c.get("jobTitle") for c in g.list_contacts(BOB, folder)] == [None]
    # the member comes back: subscription again, and a full reconcile that re-adopts the linked pair
    g.add_group_member(sales, BOB)
    doc = refresh()
    assert doc["counts"]["scope_added"] == 1 and set(live_subscriptions(g)) == {ANN, BOB}
    assert [m["mailbox"] for m in queues.bodies("reconcile")] == [BOB]
    reconcile_mailbox(root.engine, BOB)
    assert [c.get("jobTitle") for c in g.list_contacts(BOB, folder)] == ["Rear Admiral"]


def test_a_failed_group_read_keeps_the_last_list_and_says_why(scoped, queues) -> None:
    root, g, sf, users, sales, east = scoped
    refresh()
    before = {s.id for s in root.subscriptions.list_all()}
    cases = [
        (ADMIN_GUIDE_GRANTS, "GroupMember.Read.All"),  # no group permission: 403 Authorization_RequestDenied
        (Grants(app_roles=frozenset({"GroupMember.Read.All"}), exchange_roles=ADMIN_GUIDE_GRANTS.exchange_roles),
         "User.ReadBasic.All"),  # members without their UPN (limited information)
    ]
    for grants, hint in cases:
        g.grants = grants
        doc = refresh()
        assert doc["counts"]["scope_failed"] == 1 and "scope_removed" not in doc["counts"], hint
        assert hint in doc["scope"]["lastError"] and doc["scope"]["members"] == 2
        assert root.mailboxes == (ANN, BOB) and {s.id for s in root.subscriptions.list_all()} == before
    status = json.loads(user_function(status_page)(
        http("GET", "http://localhost/api/status", params={"format": "json"})).get_body())
    assert status["scope"]["lastError"] and any("mailbox group" in r for r in status["verdict"]["reasons"])
    ops_doc = json.loads(user_function(ops.ops_subscriptions)(http(
        "POST", "http://localhost/api/ops/subscriptions", json.dumps({"action": "refresh"}).encode())).get_body())
    assert ops_doc["counts"]["scope_failed"] == 1 and "User.ReadBasic.All" in ops_doc["scope"]["lastError"]
    # repaired: the error clears
    g.grants = ADMIN_GUIDE_GROUP_GRANTS
    doc = refresh()
    assert doc["scope"]["lastError"] is None and "scope_failed" not in doc["counts"]


def test_an_unknown_group_is_named_and_nothing_leaves_the_scope(scoped, settings) -> None:
    root, g, sf, users, sales, east = scoped
    refresh()
    other = bootstrap.install(bootstrap.Root({**root.env, "SYNC_MAILBOX_GROUP_ID":
                                              "00000000-0000-0000-0000-00000000beef"}))
    doc = refresh()
    assert doc["counts"]["scope_failed"] == 1 and "does not exist" in doc["scope"]["lastError"]
    assert other.mailboxes == (ANN, BOB)  # the last list (of the previous group) is kept


def test_the_list_and_the_group_together_are_their_union(scoped) -> None:
    root, g, sf, users, sales, east = scoped
    both = bootstrap.install(bootstrap.Root({**root.env, "SYNC_MAILBOXES": f"{DAVE},{ANN}"}))
    doc = refresh()
    assert doc["scope"]["source"] == "list+group"
    assert both.mailboxes == (DAVE, ANN, BOB) and set(live_subscriptions(g)) == {ANN, BOB, DAVE}


@pytest.mark.parametrize("value", ["sales", "{8f0c1f5e-0000-0000-0000-000000000000}", "8f0c1f5e"])
def test_a_group_id_that_is_not_a_guid_is_a_config_error_naming_the_setting(settings, value) -> None:
    root = bootstrap.Root({**settings, "SYNC_MAILBOX_GROUP_ID": value})
    with pytest.raises(ConfigError, match="SYNC_MAILBOX_GROUP_ID=.*expected the object id of an Entra group"):
        _ = root.mailboxes


def test_a_nested_member_outside_the_exchange_scope_is_named_on_the_status_page(scoped) -> None:
    """A ``MemberOfGroup`` management scope holds direct members only (docs/reference/graph.md §6.5): BOB, a member
    through the nested group, is in the app's list but Exchange refuses his mailbox."""
    root, g, sf, users, sales, east = scoped
    g.grants = Grants(app_roles=ADMIN_GUIDE_GROUP_GRANTS.app_roles, exchange_roles=ADMIN_GUIDE_GRANTS.exchange_roles,
                      mailbox_scope=frozenset({ANN}))  # what Exchange holds for MemberOfGroup -eq 'sales'
    try:
        doc = refresh()
    finally:
        g.grants = ADMIN_GUIDE_GROUP_GRANTS
    assert doc["counts"]["failed"] == 1 and set(live_subscriptions(g)) == {ANN}
    (bob,) = [m for m in doc["mailboxes"] if m["mailbox"] == BOB]
    assert "ErrorAccessDenied" in bob["lastError"]
    resp = user_function(status_page)(http("GET", "http://localhost/api/status", params={"format": "json"}))
    status = json.loads(resp.get_body())
    assert status["scope"]["refusedByExchange"] == [BOB]
    assert any("nested group" in r and "MemberOfGroup" in r for r in status["verdict"]["reasons"])
    html = user_function(status_page)(http("GET", "http://localhost/api/status")).get_body().decode()
    assert "Mailbox scope: the Entra group" in html and "a nested member?" in html


def test_the_app_start_reads_the_group_unless_another_start_just_did(scoped, monkeypatch) -> None:
    root, g, sf, users, sales, east = scoped
    assert graph.startup_upkeep(root) == {"scope_members": 2, "scope_added": 2, "created": 2}
    g.add_group_member(sales, CAROL)
    assert graph.startup_upkeep(root) == {}  # read a moment ago (a scale-out): one Table query, no Graph call
    assert CAROL not in root.mailboxes
    monkeypatch.setattr(graph, "GROUP_FRESH_AT_START", timedelta(0))  # as after 10 minutes
    counts = graph.startup_upkeep(root)
    assert counts is not None and counts["scope_added"] == 1 and counts["created"] == 1
    assert CAROL in root.mailboxes


def test_a_lifecycle_event_queued_before_a_member_left_does_not_bring_its_subscription_back(scoped, queues) -> None:
    root, g, sf, users, sales, east = scoped
    refresh()
    (bob_sub,) = [s for s in root.subscriptions.list_all() if s.mailbox == BOB]
    late = LifecycleNotice(event="subscriptionRemoved", subscription_id=bob_sub.id, mailbox=BOB)
    g.remove_group_member(east, BOB)
    refresh()
    queues.bodies("reconcile")
    assert graph.process_lifecycle_message(root, late.model_dump_json()) == "out of scope"
    assert set(live_subscriptions(g)) == {ANN} and queues.bodies("reconcile") == []
