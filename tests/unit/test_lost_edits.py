"""Workers deciding one linked pair from the same link version: the loser's write must never look like a user's
edit (issue 17, the 3-instance soak: "1 final mismatch, a lost edit"). A plan that writes a linked pair claims its
link first (docs/sync-rules.md, "Link claims"). Deterministic interleavings with the fakes' hooks, as in
tests/unit/test_races.py."""

from __future__ import annotations

from typing import Any

import pytest

from sync.engine import Engine
from sync.errors import Busy, PreconditionFailed
from sync.execute import CLAIM_LEASE
from sync.model import Side
from sync.planner import plan
from sync.ports import ContactChange
from sync.reconcile import reconcile_mailbox
from sync.triggers.errors import Disposition, decide
from tests.unit.test_races import ADA, ada_in, after_first, before_first, setup, world_clock
from tests.world import ANN, BOB


def _older_read_race() -> tuple[Any, Any, Any, Engine, str, str, ContactChange]:
    """A synced pair, a Salesforce edit (Notes v1) hinted, and a hook: right after the next Salesforce read (worker
    A's, of v1) the user edits Notes to v2 and worker C syncs it. Returns (m365, sf, audit, engine, sf_id, oid,
    hint)."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    sf.user_edit(sf_id, {"notes": "v1"})

    def user_edits_again_and_c_syncs_it() -> None:
        sf.user_edit(sf_id, {"notes": "v2"})
        engine.sync_contact(hint)

    after_first(sf, "get", user_edits_again_and_c_syncs_it)
    return m365, sf, audit, engine, sf_id, oid, hint


def test_a_worker_with_an_older_salesforce_read_never_overwrites_a_newer_edit_synced_meanwhile() -> None:
    """Worker A reads the link and Salesforce (Notes v1); the user edits Notes to v2 and worker C syncs it (Outlook
    written, link saved); A then reads Outlook (C's v2) and sees both sides "changed". Before link claims A wrote its
    stale v1 to Outlook by the conflict policy and its link save failed (412); the notification of A's write then
    showed Outlook changed against C's link, and v1 went to Salesforce over the user's v2. Now A's claim fails first:
    nothing written, the retry reads C's link."""
    m365, sf, audit, engine, sf_id, oid, hint = _older_read_race()  # A reads the link and Salesforce (v1) next
    with pytest.raises(PreconditionFailed):
        engine.sync_contact(hint)  # worker A
    assert m365.snapshot()[oid].contact.notes == "v2"  # A wrote nothing
    engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))  # a notification of Outlook
    engine.sync_contact(hint)  # A's retry
    assert sf.snapshot()[sf_id].contact.notes == "v2"
    assert m365.snapshot()[oid].contact.notes == "v2"
    assert not [e for e in audit.entries if e.action == "update:salesforce"]


def test_grouped_plans_from_an_older_read_never_overwrite_a_newer_edit_synced_meanwhile() -> None:
    """The same race through ``execute_many`` (a reconcile's grouped writes, their claims in one ``save_many``): a
    situation read as worker A read it above, executed in bulk, writes nothing; the person is decided again."""
    m365, sf, _, engine, sf_id, oid, hint = _older_read_race()
    a = engine.read(hint, ANN)
    assert a is not None and a.sf is not None and a.m365 is not None
    assert (a.sf.contact.notes, a.m365.contact.notes) == ("v1", "v2")  # the older read, with C's write in Outlook
    (result,) = engine.execute_many(ANN, [(a, plan(a, engine.policy))])
    assert isinstance(result, PreconditionFailed)
    assert m365.snapshot()[oid].contact.notes == "v2"
    engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    engine.sync_contact(hint)
    assert sf.snapshot()[sf_id].contact.notes == "v2"
    assert m365.snapshot()[oid].contact.notes == "v2"


def test_a_live_claim_holds_other_workers_off_until_it_is_saved_or_its_lease_runs_out() -> None:
    """While worker A writes (its link claimed), worker B's plan on the same person is not run: Busy, which the queue
    worker defers (no attempt used up). A worker killed after its claim holds it until the lease runs out."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    sf.user_edit(sf_id, {"notes": "from Salesforce"})
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    outlook_hint = ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)
    m365.user_edit(oid, {"job_title": "from Outlook"})
    seen: list[BaseException] = []

    def worker_b() -> None:  # reads the claimed link while A writes
        try:
            engine.sync_contact(outlook_hint)
        except Busy as exc:
            seen.append(exc)

    after_first(links, "save", worker_b)  # A's first link write is its claim
    engine.sync_contact(hint)  # worker A
    (busy,) = seen
    assert isinstance(busy, Busy) and 0 < busy.retry_after <= CLAIM_LEASE.total_seconds()
    decision = decide(busy, dequeue_count=5)
    assert decision.disposition is Disposition.DEFER and 0 < decision.delay <= 15
    engine.sync_contact(outlook_hint)  # B again, after A saved its link
    assert sf.snapshot()[sf_id].contact.job_title == "from Outlook"
    assert m365.snapshot()[oid].contact.notes == "from Salesforce"

    # a worker killed between its claim and its link save
    sf.user_edit(sf_id, {"notes": "again"})
    real_update = m365.update

    def killed(*args: object, **kwargs: object) -> object:
        raise SystemExit("worker killed")

    m365.update = killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        engine.sync_contact(hint)
    m365.update = real_update  # type: ignore[method-assign]
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.claim is not None
    with pytest.raises(Busy):
        engine.sync_contact(hint)
    world_clock(engine).skip(int(CLAIM_LEASE.total_seconds()))
    engine.sync_contact(hint)
    assert m365.snapshot()[oid].contact.notes == "again"
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.claim is None


@pytest.mark.parametrize("through", ["hint", "grouped"])
def test_an_edit_made_after_a_plans_first_write_is_not_lost_when_its_second_write_fails(through: str) -> None:
    """A plan pushes an Outlook edit (Title x) to Salesforce and a Salesforce edit (City) to Outlook; between the
    two writes the rep edits Title again in Outlook (u), so the Outlook write is refused. With the link as it was
    read, Salesforce's x (our push) and Outlook's u both looked like edits: a conflict, which Salesforce won by the
    default policy, and u was lost. The link now moves on for what the plan wrote: u is an Outlook edit only."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    m365.user_edit(oid, {"job_title": "x"})
    sf.user_edit(sf_id, {"city": "Paris"})
    hint = ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)
    if through == "hint":
        before_first(m365, "update", lambda: m365.user_edit(oid, {"job_title": "u"}))
        with pytest.raises(PreconditionFailed):
            engine.sync_contact(hint)
    else:  # a reconcile's grouped writes: Salesforce's, then Outlook's
        before_first(m365, "update_many", lambda: m365.user_edit(oid, {"job_title": "u"}))
        a = engine.read(hint, ANN)
        assert a is not None
        (result,) = engine.execute_many(ANN, [(a, plan(a, engine.policy))])
        assert isinstance(result, PreconditionFailed)
    assert sf.snapshot()[sf_id].contact.job_title == "x"  # the first write went out
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.claim is None  # given back, moved on
    engine.sync_contact(hint)  # the retry
    assert sf.snapshot()[sf_id].contact.job_title == "u"
    assert m365.snapshot()[oid].contact.job_title == "u"
    assert m365.snapshot()[oid].contact.city == "Paris"
    assert not [e for e in audit.entries if e.action == "conflict"]


def test_an_edit_made_after_a_handoffs_push_is_not_lost_when_its_delete_is_refused() -> None:
    """The hand-off (owner changed to BOB): ANN's pending Outlook edit (Title x) is pushed to Salesforce, then the
    copy goes to Deleted Items; the rep edits Title again (u) just before the delete, which is refused. The retry
    pushes u (an Outlook edit against the moved-on link), not a conflict that Salesforce's x wins."""
    w_m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(w_m365)
    w_m365.user_edit(oid, {"job_title": "x"})
    sf.user_set_owner(sf_id, BOB)
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    before_first(w_m365, "delete", lambda: w_m365.user_edit(oid, {"job_title": "u"}))
    with pytest.raises(PreconditionFailed):
        engine.sync_contact(hint)
    assert sf.snapshot()[sf_id].contact.job_title == "x"
    engine.sync_contact(hint)  # the retry
    assert sf.snapshot()[sf_id].contact.job_title == "u"
    assert oid not in w_m365.snapshot()
    assert not [e for e in audit.entries if e.action == "conflict"]


def test_a_reconcile_leaves_a_claimed_person_to_the_worker_holding_the_claim() -> None:
    """A full pass meets a link another worker has claimed (here: a worker killed after its claim): not an error of
    the pass, and nothing written; once the claim's lease has run out, the next pass syncs the person."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    sf.user_edit(sf_id, {"notes": "n1"})
    real_update = m365.update

    def killed(*args: object, **kwargs: object) -> object:
        raise SystemExit("worker killed")

    m365.update = killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    m365.update = real_update  # type: ignore[method-assign]
    report = reconcile_mailbox(engine, ANN)
    assert not report.errors and not report.applied
    assert m365.snapshot()[oid].contact.notes != "n1"
    world_clock(engine).skip(int(CLAIM_LEASE.total_seconds()))
    report = reconcile_mailbox(engine, ANN)
    assert not report.errors
    assert m365.snapshot()[oid].contact.notes == "n1"
