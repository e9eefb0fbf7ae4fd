"""The engine and reconcile over fakes that record their effects (and one run over the Azurite link store)."""

from __future__ import annotations

import uuid

import pytest

from sync.adapters.storage import TableStorage
from sync.errors import CircuitBreakerTripped, PreconditionFailed, Throttled, Transient
from sync.model import Contact, Side
from sync.policy import CircuitBreaker, Policy
from sync.ports import CreateRequest, LinkState
from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta
from tests.fakes import MemoryCheckpoints, MemoryLinkStore
from tests.world import ANN, BOB, memory_world

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], company="Acme")


def test_new_salesforce_contact_appears_in_the_owners_folder_with_a_marker() -> None:
    w = memory_world()
    sf_id = w.sf.user_create(ANN, ADA)
    w.hint_sf(sf_id)
    (m,) = w.m365.snapshot().values()
    assert m.owner == ANN and m.marker == sf_id and m.contact.emails == ("ada@example.com",)
    assert w.sf.snapshot()[sf_id].marker == m.id  # the source is stamped with the new id too
    link = w.links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.m365_id == m.id and link.state is LinkState.LINKED
    assert [e.action for e in w.audit.entries] == ["create:m365"]


def test_echo_of_our_own_write_writes_nothing() -> None:
    w = memory_world()
    sf_id = w.sf.user_create(ANN, ADA)
    w.hint_sf(sf_id)
    m_id = next(iter(w.m365.snapshot()))
    writes = (len(w.m365.writes), len(w.sf.writes))
    link = w.links.get(ANN, Side.SALESFORCE, sf_id)
    for _ in range(3):  # the webhook and CDC echoes of what we just wrote, duplicated
        w.hint_m365(m_id)
        w.hint_sf(sf_id)
    assert (len(w.m365.writes), len(w.sf.writes)) == writes
    assert w.links.get(ANN, Side.SALESFORCE, sf_id) == link  # not even the link was rewritten


def test_out_of_scope_mailbox_and_unknown_contacts_are_ignored() -> None:
    w = memory_world()
    assert w.hint_m365("nope", mailbox="stranger@contoso.com") == []
    assert w.hint_sf("003000000000000999") == []
    sf_id = w.sf.user_create("stranger@contoso.com", ADA)  # owned by a user who is not a synced mailbox
    assert w.hint_sf(sf_id) == []
    assert w.m365.snapshot() == {}


@pytest.mark.parametrize("failure", [Throttled("slow", retry_after=2), Transient("503"), PreconditionFailed("race")])
def test_a_failed_write_leaves_the_link_untouched_and_the_retry_converges(failure: Exception) -> None:
    w = memory_world()
    sf_id = w.sf.user_create(ANN, ADA)
    w.hint_sf(sf_id)
    w.sf.user_edit(sf_id, {"job_title": "Countess"})
    before = w.links.get(ANN, Side.SALESFORCE, sf_id)
    fired: list[str] = []

    def fail_the_write(op: str) -> None:
        if op == "update" and not fired:
            fired.append(op)
            raise failure

    w.m365.on_call = fail_the_write
    with pytest.raises(type(failure)):
        w.hint_sf(sf_id)
    after = w.links.get(ANN, Side.SALESFORCE, sf_id)  # as it was (its claim given back: a new etag, no claim)
    assert before is not None and after is not None and after.claim is None
    assert after.model_copy(update={"etag": None}) == before.model_copy(update={"etag": None})
    assert w.audit.entries[-1].outcome == "failed" and w.audit.entries[-1].error
    w.hint_sf(sf_id)  # the queue redelivers
    assert next(iter(w.m365.snapshot().values())).contact.job_title == "Countess"


def test_a_lost_link_write_after_a_create_does_not_duplicate_on_retry() -> None:
    w = memory_world()
    m_id = w.m365.user_create(ANN, ADA)
    assert isinstance(w.links, MemoryLinkStore)
    w.links.fail_next.append(Transient("table storage 503"))
    with pytest.raises(Transient):
        w.hint_m365(m_id)
    assert len(w.sf.snapshot()) == 1  # the Salesforce contact was created before the link write failed
    w.hint_m365(m_id)  # retry: the marker / email finds it
    assert len(w.sf.snapshot()) == 1
    link = w.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id == next(iter(w.sf.snapshot()))


def test_owner_change_moves_the_contact_between_folders() -> None:
    w = memory_world()
    sf_id = w.sf.user_create(ANN, ADA)
    w.hint_sf(sf_id)
    w.sf.user_set_owner(sf_id, BOB)
    w.hint_sf(sf_id)
    folders = {r.owner for r in w.m365.snapshot().values()}
    assert folders == {BOB}
    assert w.links.get(ANN, Side.SALESFORCE, sf_id) is None
    assert w.links.get(BOB, Side.SALESFORCE, sf_id) is not None
    assert len(w.m365.deleted) == 1  # Ann's copy went to Deleted Items, not purged


def test_user_re_adding_a_deleted_contact_replaces_the_tombstone() -> None:
    w = memory_world()
    m_id = w.m365.user_create(ANN, ADA)
    w.hint_m365(m_id)
    w.m365.user_delete(m_id)
    w.hint_m365(m_id)  # default: Outlook delete unlinks, Salesforce keeps it
    sf_id = next(iter(w.sf.snapshot()))
    tomb = w.links.get(ANN, Side.SALESFORCE, sf_id)
    assert tomb is not None and tomb.state is LinkState.DETACHED
    again = w.m365.user_create(ANN, ADA)  # the rep puts the person back in the folder
    w.hint_m365(again)
    link = w.links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.state is LinkState.LINKED and link.m365_id == again
    assert len(w.sf.snapshot()) == 1


def test_reconcile_dry_run_plans_without_writing_and_then_applies() -> None:
    w = memory_world()
    for i in range(3):
        w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"]))
    w.m365.user_create(ANN, Contact(last_name="Out", emails=["out@example.com"]))
    report = reconcile_mailbox(w.engine, ANN, dry_run=True)
    assert report.planned["create:m365"] == 3 and report.planned["create:salesforce"] == 1
    assert w.m365.writes == [] and w.sf.writes == []
    report = reconcile_mailbox(w.engine, ANN)
    assert report.applied["create:m365"] == 3 and not report.errors
    again = reconcile_mailbox(w.engine, ANN)
    assert set(again.planned) == {"nothing"} and again.linked_before == 4
    assert "4 visited" in again.summary()


def test_reconcile_writes_in_bulk_and_a_failed_item_keeps_its_link_unwritten() -> None:
    w = memory_world()
    ids = [w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"])) for i in range(45)]
    w.m365.user_create(ANN, Contact(last_name="Lee", emails=["lee@example.com"]))
    calls: list[str] = []

    def fail_one(op: str) -> None:
        calls.append(op)
        if op == "create" and calls.count("create") == 7:
            raise Throttled("busy", retry_after=1)

    w.m365.on_call = fail_one
    report = reconcile_mailbox(w.engine, ANN)
    assert w.m365.calls["create_many"] == 1 and w.sf.calls["create_many"] == 1  # one bulk call per side
    assert w.sf.calls["update_many"] == 1  # the 44 marker stamps on the Salesforce sources, in bulk too
    assert report.applied["create:m365"] == 44 and len(report.errors) == 1 and "Throttled" in report.errors[0]
    linked = {link.sf_id for link in w.links.list(ANN)}
    assert len(linked & set(ids)) == 44  # the failed one has no link; the next pass retries it
    w.m365.on_call = None
    again = reconcile_mailbox(w.engine, ANN)
    assert again.applied["create:m365"] == 1 and not again.errors and len(w.m365.snapshot()) == 46


def test_reconcile_re_decides_when_a_worker_linked_the_contact_first() -> None:
    w = memory_world()
    sf_id = w.sf.user_create(ANN, ADA)
    real_create_many = w.m365.create_many

    def race(mailbox: str, items: list[CreateRequest]) -> list[object]:
        out = real_create_many(mailbox, items)
        w.hint_sf(sf_id)  # the webhook worker runs in between and links the new copy first
        return out  # type: ignore[return-value]

    w.m365.create_many = race  # type: ignore[method-assign,assignment]
    report = reconcile_mailbox(w.engine, ANN)
    assert not report.errors, report.errors
    assert len(w.m365.snapshot()) == 1 and w.links.get(ANN, Side.SALESFORCE, sf_id) is not None


def test_no_marker_stamp_is_sent_to_a_side_that_cannot_carry_it() -> None:
    w = memory_world()
    w.m365.carries_markers = False  # e.g. Salesforce without SF_OUTLOOK_ID_FIELD
    sf_ids = [w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"])) for i in range(3)]
    m_id = w.m365.user_create(ANN, Contact(last_name="Out", emails=["out@example.com"]))
    w.hint_m365(m_id)  # one by one: Outlook -> Salesforce create
    reconcile_mailbox(w.engine, ANN)  # in bulk: Salesforce -> Outlook creates
    assert [x.op for x in w.m365.writes] == ["create"] * 3  # no update that would only stamp a marker
    assert len(list(w.links.list(ANN))) == 4
    assert all(w.links.get(ANN, Side.SALESFORCE, i) is not None for i in sf_ids)


def test_delta_reconcile_starts_full_then_reads_only_what_changed() -> None:
    w = memory_world()
    cps = MemoryCheckpoints()
    ids = [w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"])) for i in range(5)]
    first = reconcile_mailbox_delta(w.engine, ANN, cps)
    assert first.ran == "full" and first.applied["create:m365"] == 5  # no checkpoint yet: the feed starts over
    assert cps.get(ANN, "reconcile-delta:m365") and cps.get(ANN, "reconcile-delta:salesforce")
    writes = len(w.m365.writes) + len(w.sf.writes)
    gets = w.m365.calls.get("get", 0) + w.sf.calls.get("get", 0)
    echoes = reconcile_mailbox_delta(w.engine, ANN, cps)  # our own writes of the first pass come back once...
    assert echoes.ran == "delta" and echoes.visited == 0  # ... at the version their links hold: not even read
    assert w.m365.calls.get("get", 0) + w.sf.calls.get("get", 0) == gets
    assert len(w.m365.writes) + len(w.sf.writes) == writes
    quiet = reconcile_mailbox_delta(w.engine, ANN, cps)
    assert quiet.visited == 0 and w.m365.calls["changes"] == 3
    w.sf.user_edit(ids[0], {"job_title": "CTO"})
    new = w.m365.user_create(ANN, Contact(last_name="New", emails=["new@example.com"]))
    dry = reconcile_mailbox_delta(w.engine, ANN, cps, dry_run=True)
    assert dry.planned["update:m365"] == 1 and dry.planned["create:salesforce"] >= 1
    delta = reconcile_mailbox_delta(w.engine, ANN, cps)  # the dry run did not advance the checkpoints
    assert delta.ran == "delta" and delta.applied["update:m365"] == 1 and delta.applied["create:salesforce"] == 1
    assert w.links.get(ANN, Side.M365, new) is not None
    assert any(r.contact.job_title == "CTO" for r in w.m365.snapshot().values())


def test_delta_reconcile_decides_a_person_in_both_feeds_once() -> None:
    w = memory_world()
    cps = MemoryCheckpoints()
    sf_id = w.sf.user_create(ANN, ADA)
    reconcile_mailbox_delta(w.engine, ANN, cps)  # full: creates the Outlook copy (in the Outlook feed next time)
    w.sf.user_edit(sf_id, {"job_title": "CTO"})
    report = reconcile_mailbox_delta(w.engine, ANN, cps)
    assert report.ran == "delta" and report.visited == 1 and report.applied == {"update:m365": 1}


def test_delta_reconcile_reviews_twins_too() -> None:
    w = memory_world()
    cps = MemoryCheckpoints()
    reconcile_mailbox_delta(w.engine, ANN, cps)
    w.m365.user_create(ANN, ADA)
    w.m365.user_create(ANN, ADA)
    report = reconcile_mailbox_delta(w.engine, ANN, cps)
    assert report.ran == "delta" and report.applied["create:salesforce"] == 1 and report.applied["review"] == 1
    assert len(w.sf.snapshot()) == 1


def test_reconcile_refuses_a_mass_delete_unless_forced() -> None:
    w = memory_world(Policy(breaker=CircuitBreaker(min_count=3, max_share=0.5)))
    ids = [w.sf.user_create(ANN, Contact(last_name=f"L{i}", emails=[f"l{i}@example.com"])) for i in range(4)]
    reconcile_mailbox(w.engine, ANN)
    for sf_id in ids:
        w.sf.user_delete(sf_id)  # someone empties Salesforce
    with pytest.raises(CircuitBreakerTripped) as err:
        reconcile_mailbox(w.engine, ANN)
    assert err.value.destructive == 4 and err.value.total == 4
    assert len(w.m365.snapshot()) == 4  # nothing was deleted
    reconcile_mailbox(w.engine, ANN, force=True)
    assert w.m365.snapshot() == {}


def test_reconcile_reviews_twins_instead_of_copying_both() -> None:
    w = memory_world()
    w.m365.user_create(ANN, ADA)
    w.m365.user_create(ANN, ADA)  # the rep has the same person twice
    report = reconcile_mailbox(w.engine, ANN)
    assert report.applied["create:salesforce"] == 1 and report.applied["review"] == 1
    assert len(w.sf.snapshot()) == 1


@pytest.mark.azurite
def test_engine_over_the_azurite_link_store(azurite_connection_string: str) -> None:
    store = TableStorage.from_connection_string(azurite_connection_string, "e" + uuid.uuid4().hex[:10])
    w = memory_world(links=store.links())
    sf_id = w.sf.user_create(ANN, ADA)
    w.hint_sf(sf_id)
    w.sf.user_edit(sf_id, {"city": "London"})
    w.hint_sf(sf_id)
    m = next(iter(w.m365.snapshot().values()))
    assert m.contact.city == "London"
    w.sf.user_set_owner(sf_id, BOB)
    w.hint_sf(sf_id)
    assert store.links().mailboxes_of(sf_id) == {BOB}
    assert {r.owner for r in w.m365.snapshot().values()} == {BOB}
    assert reconcile_mailbox(w.engine, BOB).planned == {"nothing": 1}
