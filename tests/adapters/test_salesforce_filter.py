"""SF_SOQL_FILTER over the Salesforce emulator: checked by the org, applied to the full stream, the change feed and
the routing of a CDC hint; a contact leaving the filter leaves the folder by the owner-change rule (docs/sync-rules.md
row 43), one entering it is created in Outlook. Outlook is in memory (``MemorySide``); Salesforce is the real
adapter, so the filter is evaluated by the emulator's SOQL (tests/emulators: its semantics)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sync.config import ConfigError
from sync.engine import Engine
from sync.model import Contact, Side
from sync.policy import Policy
from sync.ports import ContactChange
from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta
from tests.contract.salesforce_harness import MAILBOX, OTHER, SalesforceHarness
from tests.fakes import LogicalClock, MemoryAudit, MemoryCheckpoints, MemoryLinkStore, MemoryQueue, MemorySide

SALES = "Department = 'Sales' AND Account.Type = 'Customer'"


@pytest.fixture
def h() -> Iterator[SalesforceHarness]:
    harness = SalesforceHarness(soql_filter=SALES)
    yield harness
    harness.close()


def _contact(h: SalesforceHarness, last: str, department: str, account: str, *, mailbox: str = MAILBOX) -> str:
    return h.emu.create_contact({"LastName": last, "Email": f"{last.lower()}@example.com", "Department": department,
                                 "AccountId": account, "OwnerId": h.users[mailbox]}, as_user=h.users[mailbox])


# -- validation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "says"), [
    ("Region__c = 'EMEA'", "INVALID_FIELD"),  # no such field on Contact
    ("RecordType.Name = 'Customer'", "INVALID_FIELD"),  # the emulated org has no record types on Contact
    ("Department = 'Sales' AND Email != null OR Title = 'CEO'", "MALFORMED_QUERY"),  # AND/OR need parentheses
])
def test_a_filter_the_org_refuses_is_a_config_error_naming_the_setting_before_any_read(text: str, says: str) -> None:
    h = SalesforceHarness(soql_filter=text)
    try:
        problem = h.side.check() or ""
        assert problem.startswith("SF_SOQL_FILTER: Salesforce refused it") and says in problem
        queries = h.emu.counters["rest.query"]
        with pytest.raises(ConfigError, match="SF_SOQL_FILTER"):
            h.side.get(MAILBOX, "003000000000001AAA")
        with pytest.raises(ConfigError, match="SF_SOQL_FILTER"):
            list(h.side.stream(MAILBOX))
        with pytest.raises(ConfigError, match="SF_SOQL_FILTER"):
            list(h.side.changes(MAILBOX, None))
        assert h.emu.counters["rest.query"] == queries  # asked once; nothing read with a filter Salesforce refused
    finally:
        h.close()


def test_a_filter_that_is_not_one_condition_is_refused_without_asking_salesforce() -> None:
    h = SalesforceHarness(soql_filter="Department = 'Sales' LIMIT 5")
    try:
        assert "SF_SOQL_FILTER: 'LIMIT' is not allowed" in (h.side.check() or "")
        with pytest.raises(ConfigError, match="SF_SOQL_FILTER"):
            list(h.side.stream(MAILBOX))
        assert h.emu.counters["rest.query"] == 0
    finally:
        h.close()


def test_a_good_filter_passes_the_org_check_with_one_query(h: SalesforceHarness) -> None:
    assert h.side.check() is None
    assert h.side.check() is None
    assert h.emu.counters["rest.query"] == 1  # SELECT Id FROM Contact WHERE (<filter>) LIMIT 1, once


# -- the reads ----------------------------------------------------------------------------------------------------

def test_the_full_stream_lists_only_the_owners_contacts_that_meet_the_filter(h: SalesforceHarness) -> None:
    customer, partner = h.emu.add_account("Acme", account_type="Customer"), h.emu.add_account("Bolt",
                                                                                              account_type="Partner")
    inside = _contact(h, "Alpha", "Sales", customer)
    _contact(h, "Beta", "Support", customer)  # wrong department
    _contact(h, "Gamma", "Sales", partner)  # wrong account type
    _contact(h, "Delta", "Sales", customer, mailbox=OTHER)  # another owner
    assert [r.id for r in h.side.stream(MAILBOX)] == [inside]
    (page,) = list(h.side.changes(MAILBOX, None))  # a full change listing carries the filter too
    assert page.full and [r.id for r in page.records] == [inside]


def test_a_search_and_a_read_by_id_show_a_contact_outside_the_filter_as_nobodys(h: SalesforceHarness) -> None:
    customer = h.emu.add_account("Acme", account_type="Customer")
    inside, outside = _contact(h, "Alpha", "Sales", customer), _contact(h, "Beta", "Support", customer)
    got = h.side.get(MAILBOX, inside)
    assert got is not None and got.owner == MAILBOX and not got.out_of_filter
    queries = h.emu.counters["rest.query"]
    out = h.side.get(MAILBOX, outside)
    assert out is not None and out.owner is None and out.out_of_filter
    assert h.emu.counters["rest.query"] == queries + 2  # read with the filter, then without it
    (found,) = h.side.find(MAILBOX, Contact(last_name="Beta", emails=["beta@example.com"]))
    assert found.id == outside and found.owner is None  # a match outside scope: review, never a duplicate


def test_the_change_feed_reports_a_contact_leaving_the_filter_as_removed_and_one_entering_as_changed(
        h: SalesforceHarness) -> None:
    customer = h.emu.add_account("Acme", account_type="Customer")
    leaving, entering = _contact(h, "Alpha", "Sales", customer), _contact(h, "Beta", "Support", customer)
    pages = list(h.side.changes(MAILBOX, None))
    checkpoint = pages[-1].checkpoint
    assert [r.id for p in pages for r in p.records] == [leaving]
    h.emu.update_contact(leaving, {"Department": "Support"}, as_user=h.users[MAILBOX])
    h.emu.update_contact(entering, {"Department": "Sales"}, as_user=h.users[MAILBOX])
    pages = list(h.side.changes(MAILBOX, checkpoint))
    assert [r.id for p in pages for r in p.records] == [entering]
    assert leaving in {i for p in pages for i in p.removed}


# -- the engine: CDC routing, entering, leaving ------------------------------------------------------------------

def _engine(h: SalesforceHarness) -> tuple[Engine, MemorySide, MemoryAudit]:
    clock = LogicalClock()
    outlook, audit = MemorySide(Side.M365, clock=clock), MemoryAudit()
    engine = Engine(outlook, h.side, MemoryLinkStore(), audit, MemoryQueue(), Policy(), [MAILBOX, OTHER],
                    clock=clock)
    return engine, outlook, audit


def _hint(engine: Engine, sf_id: str) -> None:
    """What a CDC event becomes: a hint naming the record (sync/adapters/salesforce/pubsub.py)."""
    list(engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))


def test_a_cdc_hint_is_routed_by_the_filter_entering_creates_in_outlook_leaving_removes_the_copy(
        h: SalesforceHarness) -> None:
    engine, outlook, audit = _engine(h)
    customer = h.emu.add_account("Acme", account_type="Customer")
    sf_id = _contact(h, "Beta", "Support", customer)
    _hint(engine, sf_id)  # outside the filter: routed to no mailbox
    assert list(outlook.stream(MAILBOX)) == [] and engine.mailboxes_for(
        ContactChange(source=Side.SALESFORCE, item_id=sf_id)) == []
    h.emu.update_contact(sf_id, {"Department": "Sales"}, as_user=h.users[MAILBOX])  # enters: new, as if just owned
    _hint(engine, sf_id)
    (copy,) = list(outlook.stream(MAILBOX))
    assert copy.contact.last_name == "Beta" and engine.links.get(MAILBOX, Side.SALESFORCE, sf_id) is not None
    outlook.user_edit(copy.id, {"job_title": "CTO"})  # an Outlook edit not yet synced when it leaves
    h.emu.update_contact(sf_id, {"Department": "Support"}, as_user=h.users[MAILBOX])  # leaves
    _hint(engine, sf_id)
    assert list(outlook.stream(MAILBOX)) == [] and copy.id in outlook.deleted  # Deleted Items, not purged
    assert engine.links.get(MAILBOX, Side.SALESFORCE, sf_id) is None
    assert (h.emu.get_record(sf_id) or {}).get("Title") == "CTO"  # the edit was saved in Salesforce first
    assert any("no longer meets SF_SOQL_FILTER" in e.reason for e in audit.entries)


def test_a_parent_field_change_is_seen_by_the_full_pass_not_the_change_feed(h: SalesforceHarness) -> None:
    """Account.Type moves no Contact SystemModstamp (and fires no Contact CDC event): the delta pass cannot see it,
    the full pass removes the copy (docs/sync-rules.md row 43)."""
    engine, outlook, audit = _engine(h)
    customer = h.emu.add_account("Acme", account_type="Customer")
    kept, moved = _contact(h, "Alpha", "Sales", customer), _contact(h, "Beta", "Sales", customer)
    report = reconcile_mailbox(engine, MAILBOX)
    assert not report.errors and len(list(outlook.stream(MAILBOX))) == 2
    checkpoints = MemoryCheckpoints()
    reconcile_mailbox_delta(engine, MAILBOX, checkpoints)  # sets the watermarks
    h.emu.update_contact(moved, {"AccountId": h.emu.add_account("Bolt", account_type="Partner")},
                         as_user=h.users[MAILBOX])  # leaves through a field of its own: the feed sees it
    reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
    assert [r.contact.last_name for r in outlook.stream(MAILBOX)] == ["Alpha"]
    h.emu.update_account(customer, {"Type": "Prospect"})  # Alpha leaves through its Account
    reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
    assert [r.contact.last_name for r in outlook.stream(MAILBOX)] == ["Alpha"]  # unseen by the feed
    reconcile_mailbox(engine, MAILBOX)
    assert list(outlook.stream(MAILBOX)) == [] and engine.links.get(MAILBOX, Side.SALESFORCE, kept) is None
    assert sum("no longer meets SF_SOQL_FILTER" in e.reason for e in audit.entries) >= 2


def test_a_filter_change_that_would_empty_a_folder_trips_the_circuit_breaker(h: SalesforceHarness) -> None:
    """Contacts leaving the filter are removals like any other: the full pass counts them in the breaker."""
    from sync.errors import CircuitBreakerTripped

    engine, outlook, _ = _engine(h)
    customer = h.emu.add_account("Acme", account_type="Customer")
    for i in range(12):
        _contact(h, f"Rep{i:02d}", "Sales", customer)
    reconcile_mailbox(engine, MAILBOX)
    assert len(list(outlook.stream(MAILBOX))) == 12
    h.emu.update_account(customer, {"Type": "Partner"})  # every contact leaves through its Account at once
    with pytest.raises(CircuitBreakerTripped) as err:
        reconcile_mailbox(engine, MAILBOX)
    assert err.value.destructive == 12 and len(list(outlook.stream(MAILBOX))) == 12  # nothing removed
    reconcile_mailbox(engine, MAILBOX, force=True)
    assert list(outlook.stream(MAILBOX)) == []


def test_a_contact_created_from_outlook_outside_the_filter_is_noted_at_the_create(h: SalesforceHarness) -> None:
    """The sync cannot make a new contact meet the filter (defaults, record types, flows decide): the create says so
    in the audit, and the next read takes it out of the folder (row 43)."""
    from sync.adapters.salesforce.contacts import FILTER_NOTE
    from sync.ports import CreateRequest, SideRecord

    customer = h.emu.add_account("Acme", account_type="Customer")
    assert customer
    plain = Contact(last_name="Plain", emails=["plain@example.com"])  # no Department, no Account
    sales = Contact(last_name="Seller", emails=["seller@example.com"], department="Sales", company="Acme")
    assert FILTER_NOTE in h.side.create(MAILBOX, plain).notes
    assert FILTER_NOTE not in h.side.create(MAILBOX, sales).notes
    made = h.side.create_many(MAILBOX, [CreateRequest(contact=plain.with_values({"email": "p2@example.com"})),
                                        CreateRequest(contact=sales.with_values({"email": "s2@example.com"}))])
    assert [isinstance(r, SideRecord) and FILTER_NOTE in r.notes for r in made] == [True, False]
