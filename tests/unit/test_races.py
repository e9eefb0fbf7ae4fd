"""Workers racing on one person (duplicated hints, a reconcile and a worker) and a worker killed mid-plan: never a
duplicate, never an override without a trace. Found by the soak (tests/soak)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sync.engine import Engine
from sync.errors import AlreadyExists, Busy, PreconditionFailed, Transient
from sync.execute import CLAIM_LEASE
from sync.model import Contact, Side
from sync.planner import plan
from sync.ports import ContactChange, LinkState
from sync.reconcile import reconcile_mailbox
from tests.fakes import LogicalClock, MemoryAudit, MemoryLinkStore, MemorySide
from tests.world import ANN, BOB, memory_world

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], job_title="Dev")


def setup() -> tuple[MemorySide, MemorySide, MemoryLinkStore, MemoryAudit, Engine]:
    w = memory_world(mailboxes=[ANN])
    return w.m365, w.sf, w.links, w.audit, w.engine


def world_clock(engine: Engine) -> LogicalClock:
    assert isinstance(engine.clock, LogicalClock)
    return engine.clock


def ada_in(side: MemorySide) -> list[str]:
    return sorted(i for i, r in side.snapshot().items() if "ada@example.com" in r.contact.email_keys())


def before_first(target: Any, name: str, run: Callable[[], Any], *, after: bool = False) -> None:
    """Run ``run`` (the other worker) just before the first call of ``target.<name>`` (it wins the race), or just
    after that call returns (``after``)."""
    real = getattr(target, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        setattr(target, name, real)
        if not after:
            run()
        result = real(*args, **kwargs)
        if after:
            run()
        return result

    setattr(target, name, hooked)


def assert_one_linked_pair(m365: MemorySide, sf: MemorySide, links: MemoryLinkStore) -> None:
    (oid,), (sf_id,) = ada_in(m365), ada_in(sf)
    link = links.get(ANN, Side.M365, oid)
    assert link is not None and link.sf_id == sf_id and link.state is LinkState.LINKED
    assert m365.snapshot()[oid].marker == sf_id and sf.snapshot()[sf_id].marker == oid


def test_a_duplicated_outlook_hint_read_twice_creates_one_salesforce_contact() -> None:
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    hint = ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)
    a, b = engine.read(hint, ANN), engine.read(hint, ANN)  # two workers read before either writes
    assert a is not None and b is not None
    engine.execute(a, plan(a, engine.policy))
    with pytest.raises(AlreadyExists):
        engine.execute(b, plan(b, engine.policy))  # its copy is deleted again; the host retries the message
    engine.sync_contact(hint)  # the retry
    assert_one_linked_pair(m365, sf, links)
    (failed,) = [e for e in audit.entries if e.outcome == "failed"]
    assert failed.error is not None and "deleted again" in failed.error


@pytest.mark.parametrize("source", [Side.M365, Side.SALESFORCE])
def test_the_loser_that_stamped_first_deletes_its_copy_and_points_the_marker_back(source: Side) -> None:
    m365, sf, links, audit, engine = setup()
    if source is Side.M365:
        hint = ContactChange(source=source, item_id=m365.user_create(ANN, ADA), mailbox=ANN)
    else:
        hint = ContactChange(source=source, item_id=sf.user_create(ANN, ADA))
    a, b = engine.read(hint, ANN), engine.read(hint, ANN)
    assert a is not None and b is not None
    # B creates and stamps the source's marker first; A runs to the end before B saves its link (A's stamp fails)
    before_first(links, "save", lambda: engine.execute(a, plan(a, engine.policy)))
    with pytest.raises(AlreadyExists):
        engine.execute(b, plan(b, engine.policy))
    assert_one_linked_pair(m365, sf, links)


def test_a_reconcile_racing_a_worker_does_not_double_the_contact() -> None:
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    # the worker handling the Outlook add links it while the reconcile's bulk create is under way
    before_first(links, "save_many", lambda: engine.sync_contact(
        ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)))
    report = reconcile_mailbox(engine, ANN)
    assert not report.errors
    assert_one_linked_pair(m365, sf, links)


def lose_the_answer_of_the_reconciles_create(sf: MemorySide, engine: Engine, oid: str) -> None:
    """The worker handling the Outlook add creates and links its own copy while the reconcile's bulk Salesforce
    create is under way; that create runs, but its answer is lost (a connection reset after the request ran)."""
    real = sf.create_many

    def lost(mailbox: str, items: Any) -> list[Any]:
        sf.create_many = real  # type: ignore[method-assign]
        engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
        real(mailbox, items)
        return [Transient("connection reset after the request ran", side="salesforce") for _ in items]

    sf.create_many = lost  # type: ignore[method-assign]


@pytest.mark.parametrize("through", ["hint", "reconcile"])
def test_a_second_copy_left_by_a_create_whose_answer_was_lost_is_removed(through: str) -> None:
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    lose_the_answer_of_the_reconciles_create(sf, engine, oid)
    assert reconcile_mailbox(engine, ANN).errors  # the lost answer: nothing to look it up by but the marker
    assert len(ada_in(sf)) == 2  # the worker's copy (linked) and the reconcile's (unlinked, same marker)
    extra = next(i for i in ada_in(sf) if links.get(ANN, Side.SALESFORCE, i) is None)
    if through == "hint":  # its CDC create event
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=extra))
    else:
        assert not reconcile_mailbox(engine, ANN).errors
    assert_one_linked_pair(m365, sf, links)
    assert extra in sf.deleted  # the Recycle Bin: recoverable
    (row,) = [e for e in audit.entries if e.action == "delete:salesforce"]
    assert row.sf_id == extra and row.outcome == "applied" and "second Salesforce copy" in row.reason
    assert oid in row.reason


def test_a_second_copy_a_rep_has_edited_goes_to_review_not_to_the_bin() -> None:
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    lose_the_answer_of_the_reconciles_create(sf, engine, oid)
    reconcile_mailbox(engine, ANN)
    extra = next(i for i in ada_in(sf) if links.get(ANN, Side.SALESFORCE, i) is None)
    sf.user_edit(extra, {"job_title": "Edited by a rep"})  # someone's work is in it now
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=extra))
    assert extra in sf.snapshot() and not sf.deleted
    assert [e for e in audit.entries if e.sf_id == extra and e.outcome == "review"]


def test_a_copy_a_rep_made_with_the_same_marker_is_never_taken_for_ours() -> None:
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    copy = sf.user_create(ANN, ADA, marker=oid)  # e.g. cloned in Salesforce with the marker field
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=copy))
    assert copy in sf.snapshot() and not sf.deleted
    assert not [e for e in audit.entries if e.action == "delete:salesforce"]


def orphan_outlook_copy(m365: MemorySide, sf: MemorySide, engine: Engine, **changes: str) -> tuple[str, str]:
    """A Salesforce contact synced to Outlook, and a second Outlook copy of it with the same marker and no link:
    what two workers killed after their Outlook creates and before their link saves leave (5-minute soak: a
    handoff's two hints created two copies; one was adopted by its marker, the other stayed in review)."""
    sf_id = sf.user_create(ANN, ADA)
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    (first,) = ada_in(m365)
    copy = m365.snapshot()[first].contact.with_values(changes)
    return first, m365.user_create(ANN, copy, marker=sf_id)


def test_a_second_outlook_copy_equal_in_every_synced_field_is_removed() -> None:
    m365, sf, links, audit, engine = setup()
    first, orphan = orphan_outlook_copy(m365, sf, engine)
    engine.sync_contact(ContactChange(source=Side.M365, item_id=orphan, mailbox=ANN))
    assert orphan in m365.deleted and ada_in(m365) == [first]  # Deleted Items: recoverable
    assert_one_linked_pair(m365, sf, links)
    (row,) = [e for e in audit.entries if e.action == "delete:m365"]
    assert row.m365_id == orphan and "second Outlook copy" in row.reason and row.outcome == "applied"


def test_a_second_outlook_copy_with_a_field_of_its_own_goes_to_review() -> None:
    m365, sf, links, audit, engine = setup()
    first, orphan = orphan_outlook_copy(m365, sf, engine, job_title="Typed by the rep")
    assert not reconcile_mailbox(engine, ANN).errors
    assert orphan in m365.snapshot() and not m365.deleted  # it holds something the other copy does not
    assert [e for e in audit.entries if e.m365_id == orphan and e.outcome == "review"]


def test_a_worker_killed_after_its_writes_leaves_the_override_in_the_audit() -> None:
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    m365.user_edit(oid, {"job_title": "Outlook edit"})  # the same field edited on both sides: a conflict
    sf.user_edit(sf_id, {"job_title": "Salesforce edit"})

    real = links.save

    def killed(*args: Any, **kwargs: Any) -> Any:
        if args[0].claim is not None:
            return real(*args, **kwargs)  # the link claim before the writes
        raise SystemExit("worker killed")  # SIGKILL between the side writes and the link and audit writes

    links.save = killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    links.save = real  # type: ignore[method-assign]
    overridden = m365.snapshot()[oid].contact.job_title
    assert overridden == "Salesforce edit"  # salesforce wins by default: the Outlook edit was overwritten ...
    (row,) = [e for e in audit.entries if e.action == "conflict"]  # ... and the audit already says so
    assert row.fields == ("job_title",) and row.winner is Side.SALESFORCE and row.outcome == "planned"
    with pytest.raises(Busy):  # its link claim holds other workers off until its lease runs out
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    world_clock(engine).skip(int(CLAIM_LEASE.total_seconds()))
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))  # the redelivered message
    assert m365.snapshot()[oid].contact.job_title == "Salesforce edit"


def test_an_edit_landing_between_the_version_check_and_the_write_is_not_taken_for_synced() -> None:
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    m365.user_edit(oid, {"job_title": "CTO"})
    real = sf.update

    def update_then_reread(mailbox: str, item_id: str, *args: Any, **kwargs: Any) -> Any:
        real(mailbox, item_id, *args, **kwargs)
        sf.user_edit(item_id, {"city": "Oslo"})  # the user's write lands right around ours (Salesforce's race)
        return sf.get(mailbox, item_id)  # the adapter re-reads after its PATCH and sees both

    sf.update = update_then_reread  # type: ignore[method-assign]
    engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    sf.update = real  # type: ignore[method-assign]
    assert sf.snapshot()[sf_id].contact.job_title == "CTO"
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.sf_version is None  # not taken for synced: the next pass decides again
    report = reconcile_mailbox(engine, ANN)  # (its CDC event may be lost: reconcile finds it)
    assert report.applied["update:m365"] == 1
    assert m365.snapshot()[oid].contact.city == "Oslo"


@pytest.mark.parametrize("through", ["hint", "reconcile"])
def test_an_edit_landing_around_the_marker_stamp_is_not_taken_for_synced(through: str) -> None:
    """A create stamps the source's marker: a write of no synced field, so any field that changed under it is a
    user's edit (the soak lost one this way: the stamp's re-read became the link's base, so the edit was never
    sent to Outlook)."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    real = sf.update

    def stamp_then_user_edit(mailbox: str, item_id: str, *args: Any, **kwargs: Any) -> Any:
        sf.update = real  # type: ignore[method-assign]
        real(mailbox, item_id, *args, **kwargs)
        sf.user_edit(item_id, {"department": "Sales"})  # the rep's write lands right around our stamp
        return sf.get(mailbox, item_id)  # and the re-read after it sees both

    sf.update = stamp_then_user_edit  # type: ignore[method-assign]
    if through == "hint":
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    else:
        reconcile_mailbox(engine, ANN)
    assert sf.update is real and sf.snapshot()[sf_id].marker is not None  # the stamp was made
    (oid,) = ada_in(m365)
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.sf_version is None  # not taken for synced
    report = reconcile_mailbox(engine, ANN)  # (its CDC event may be lost: reconcile finds it)
    assert report.applied["update:m365"] == 1
    assert m365.snapshot()[oid].contact.department == "Sales"


@pytest.mark.parametrize("through", ["hint", "reconcile"])
def test_a_users_edit_just_before_the_marker_stamp_does_not_cost_the_pair_its_marker(through: str) -> None:
    """A stamp writes the marker only, which nobody else edits: it is sent without a version check. Refused by a
    rep's edit at that moment, it left the pair without its Salesforce marker; the links table lost, the copy then
    deleted in Outlook, the Salesforce contact looked new and was copied back (the CI soak's resurrection)."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    real = sf.update

    def user_edit_then_stamp(mailbox: str, item_id: str, *args: Any, **kwargs: Any) -> Any:
        sf.update = real  # type: ignore[method-assign]
        sf.user_edit(item_id, {"department": "Sales"})  # after our read, before our stamp
        return real(mailbox, item_id, *args, **kwargs)

    sf.update = user_edit_then_stamp  # type: ignore[method-assign]
    if through == "hint":
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    else:
        reconcile_mailbox(engine, ANN)
    assert sf.update is real
    (oid,) = ada_in(m365)
    assert sf.snapshot()[sf_id].marker == oid  # stamped all the same
    assert sf.snapshot()[sf_id].contact.department == "Sales"  # and the rep's edit stands ...
    reconcile_mailbox(engine, ANN)
    assert m365.snapshot()[oid].contact.department == "Sales"  # ... and reaches Outlook


def test_a_record_deleted_between_our_read_and_our_write_is_decided_again_not_poisoned() -> None:
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    sf.user_edit(sf_id, {"job_title": "CTO"})
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    (s,) = [engine.read(hint, ANN)]
    assert s is not None
    m365.user_delete(oid)  # the user deletes the Outlook copy while the worker decides
    with pytest.raises(PreconditionFailed):  # retryable: the host runs the hint again
        engine.execute(s, plan(s, engine.policy))
    engine.sync_contact(hint)  # the retry sees the delete: delete policy unlink keeps Salesforce, unlinked
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.state is LinkState.DETACHED
    assert sf.snapshot()[sf_id].contact.job_title == "CTO"


def after_first(target: Any, name: str, run: Callable[[], Any]) -> None:
    """Run ``run`` (the other worker) just after the first call of ``target.<name>`` returns."""
    before_first(target, name, run, after=True)


def test_a_reconcile_never_pairs_a_record_with_a_link_newer_than_it() -> None:
    """Found by the soak: a full pass read Outlook, then a worker synced a Salesforce edit (Outlook written, link
    saved), then the pass read the links. The stale Outlook record against the newer link looked like an Outlook edit
    back to the old value, which overwrote the user's Salesforce edit with no conflict. The links are read first."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    sf.user_edit(sf_id, {"department": "Sales"})  # its CDC event arrives while the pass reads Outlook
    real_stream = m365.stream
    m365.stream = lambda mailbox: iter(list(real_stream(mailbox)))  # type: ignore[method-assign]  # read it all now
    after_first(m365, "stream", lambda: engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))
    report = reconcile_mailbox(engine, ANN)
    assert not report.errors
    assert sf.snapshot()[sf_id].contact.department == "Sales"
    assert m365.snapshot()[oid].contact.department == "Sales"


def test_a_salesforce_hint_never_pairs_its_routing_read_with_a_newer_link() -> None:
    """The Salesforce record a hint reads to route itself must not be older than the link it is decided with: an
    Outlook edit synced by another worker in between would look like a Salesforce edit back to the old value."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    m365.user_edit(oid, {"job_title": "CTO"})
    # worker B syncs the Outlook edit right after worker A read the Salesforce record for its (older) hint
    after_first(sf, "get", lambda: engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)))
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    try:
        engine.sync_contact(hint)
    except PreconditionFailed:
        engine.sync_contact(hint)  # the host's retry
    assert m365.snapshot()[oid].contact.job_title == "CTO"
    assert sf.snapshot()[sf_id].contact.job_title == "CTO"


def test_a_user_edit_of_the_losers_copy_moves_to_the_winners_copy_before_it_is_deleted() -> None:
    """Found by the soak: two workers created the same Outlook contact in Salesforce; a user edited the loser's copy
    within a second, so deleting it at the version it was created with failed and the duplicate stayed. Now the
    fields the user changed go to the winner's copy, and the duplicate is deleted."""
    m365, sf, links, audit, engine = setup()
    oid = m365.user_create(ANN, ADA)
    hint = ContactChange(source=Side.M365, item_id=oid, mailbox=ANN)
    a, b = engine.read(hint, ANN), engine.read(hint, ANN)
    assert a is not None and b is not None
    engine.execute(a, plan(a, engine.policy))  # A wins
    (winner,) = ada_in(sf)

    def user_edits_the_duplicate() -> None:
        (dup,) = [i for i in ada_in(sf) if i != winner]
        sf.user_edit(dup, {"department": "Research"})

    before_first(links, "save", user_edits_the_duplicate)  # B created its copy; the user edits it; B's save loses
    with pytest.raises(AlreadyExists):
        engine.execute(b, plan(b, engine.policy))
    assert ada_in(sf) == [winner]  # the duplicate is gone ...
    assert sf.snapshot()[winner].contact.department == "Research"  # ... and the user's edit was kept
    (failed,) = [e for e in audit.entries if e.outcome == "failed"]
    assert failed.error is not None and "moved to" in failed.error
    engine.sync_contact(hint)  # the retry: the edit reaches Outlook
    assert m365.snapshot()[oid].contact.department == "Research"
    assert_one_linked_pair(m365, sf, links)


def two_copies_after_a_handoff(how: str) -> tuple[MemorySide, MemorySide, MemoryLinkStore, MemoryAudit, Engine,
                                                 str, str, str]:
    """A Salesforce contact handed from Bob to Ann; two workers (two hints of the hand-off) both read Ann's folder
    without a link and both create her copy. A saves its link first. B's copy is edited by Ann within seconds and
    B leaves it behind: ``killed`` before its link save, or its undo refused (``refused``: Ann edits it again
    between the guard read and the delete of the undo). Returns the sides, the Salesforce id, A's copy, B's copy."""
    w = memory_world(mailboxes=[ANN, BOB])
    m365, sf, links, audit, engine = w.m365, w.sf, w.links, w.audit, w.engine
    sf_id = sf.user_create(BOB, ADA)
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    engine.sync_contact(hint)
    sf.user_set_owner(sf_id, ANN)
    leaving = engine.read(hint, BOB)
    assert leaving is not None
    engine.execute(leaving, plan(leaving, engine.policy))  # Bob's copy leaves
    a, b = engine.read(hint, ANN), engine.read(hint, ANN)  # two workers read Ann's side before either writes
    assert a is not None and b is not None
    engine.execute(a, plan(a, engine.policy))  # A wins
    (winner,) = ada_in(m365)

    def the_loser() -> str:
        (copy,) = [i for i in ada_in(m365) if i != winner]
        return copy

    if how == "killed":
        def killed(*args: Any, **kwargs: Any) -> Any:
            m365.user_edit(the_loser(), {"department": "Research"})  # Ann edits the copy she sees
            raise SystemExit("worker killed")  # SIGKILL before its link save

        real, links.save = links.save, killed  # type: ignore[method-assign]
        with pytest.raises(SystemExit):
            engine.execute(b, plan(b, engine.policy))
        links.save = real  # type: ignore[method-assign]
    else:
        edits = iter([{"department": "Research"}, {"mobile_phone": "+47 90000001"}])

        def edit_before_each_delete(op: str) -> None:
            if op == "delete":
                values = next(edits, None)
                if values is not None:
                    m365.user_edit(the_loser(), values)

        before_first(links, "save", lambda: setattr(m365, "on_call", edit_before_each_delete))
        with pytest.raises(AlreadyExists):
            engine.execute(b, plan(b, engine.policy))
        m365.on_call = None
        (failed,) = [e for e in audit.entries if e.outcome == "failed"]
        assert failed.error is not None and "could not be deleted again" in failed.error
    loser = the_loser()
    assert sorted(ada_in(m365)) == sorted([winner, loser])  # today's duplicate
    return m365, sf, links, audit, engine, sf_id, winner, loser


@pytest.mark.parametrize("how", ["killed", "refused"])
@pytest.mark.parametrize("through", ["hint", "reconcile"])
def test_a_second_outlook_copy_this_sync_made_and_a_user_edited_is_merged_then_removed(how: str,
                                                                                       through: str) -> None:
    """The soak's duplicate (1 run in 5 under load): two creates of one person in the new owner's folder after a
    hand-off, the loser's copy edited by the rep before it was cleaned up. Its edit joins the pair, it goes to
    Deleted Items; nothing goes to review."""
    m365, sf, links, audit, engine, sf_id, winner, loser = two_copies_after_a_handoff(how)
    edited = m365.snapshot()[loser].contact
    if through == "hint":  # the Graph notification of Ann's edit
        engine.sync_contact(ContactChange(source=Side.M365, item_id=loser, mailbox=ANN))
    else:
        assert not reconcile_mailbox(engine, ANN).errors
    assert loser in m365.deleted and ada_in(m365) == [winner]  # Deleted Items: recoverable
    assert sf.snapshot()[sf_id].contact.department == "Research"  # the edit joined the Salesforce contact ...
    if how == "refused":
        assert sf.snapshot()[sf_id].contact.mobile_phone == edited.mobile_phone == "+47 90000001"
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))  # its CDC event
    assert m365.snapshot()[winner].contact.department == "Research"  # ... and the linked Outlook copy
    link = links.get(ANN, Side.SALESFORCE, sf_id)
    assert link is not None and link.m365_id == winner and link.state is LinkState.LINKED
    (row,) = [e for e in audit.entries if e.action == "delete:m365" and e.m365_id == loser]
    assert row.outcome == "applied" and "made by this sync" in row.reason and "department" in row.reason
    assert not [e for e in audit.entries if e.outcome == "review"]


def test_a_reps_copy_of_a_synced_contact_is_never_taken_for_a_second_copy_of_ours() -> None:
    """A rep copies the synced Outlook contact (the copy keeps every property: the marker and the create key) and
    makes it another contact: not made by this sync, so it goes to review and is never merged or deleted."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    (synced,) = ada_in(m365)
    copy = m365.user_copy(synced, {"job_title": "Her assistant", "department": "Office"})
    assert m365.made_here(ANN, synced) is False  # the key is no longer one contact's own
    engine.sync_contact(ContactChange(source=Side.M365, item_id=copy, mailbox=ANN))
    assert copy in m365.snapshot() and not m365.deleted
    assert sf.snapshot()[sf_id].contact.job_title == "Dev"
    assert [e for e in audit.entries if e.m365_id == copy and e.outcome == "review"]


def test_a_second_outlook_copy_nobody_wrote_is_removed_without_taking_its_stale_values() -> None:
    """The pair moved on (a Salesforce edit reached the linked copy) while the second copy waited, unwritten since
    its create: it holds no one's edit, so it goes to Deleted Items and its old value never goes back."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    hint = ContactChange(source=Side.SALESFORCE, item_id=sf_id)
    a, b = engine.read(hint, ANN), engine.read(hint, ANN)
    assert a is not None and b is not None
    engine.execute(a, plan(a, engine.policy))
    real, links.save = links.save, lambda *args, **kwargs: (_ for _ in ()).throw(SystemExit("worker killed"))
    with pytest.raises(SystemExit):
        engine.execute(b, plan(b, engine.policy))
    links.save = real  # type: ignore[method-assign]
    winner = links.get(ANN, Side.SALESFORCE, sf_id).m365_id  # type: ignore[union-attr]
    (copy,) = [i for i in ada_in(m365) if i != winner]
    sf.user_edit(sf_id, {"job_title": "CTO"})
    engine.sync_contact(hint)  # the pair moves on: the linked copy says CTO, the second copy still Dev
    assert m365.snapshot()[winner].contact.job_title == "CTO" and m365.snapshot()[copy].contact.job_title == "Dev"
    engine.sync_contact(ContactChange(source=Side.M365, item_id=copy, mailbox=ANN))
    assert copy in m365.deleted and ada_in(m365) == [winner]
    assert sf.snapshot()[sf_id].contact.job_title == "CTO" and sf.snapshot()[sf_id].marker == winner
    assert_one_linked_pair(m365, sf, links)


def test_a_pass_that_read_outlook_before_a_rebuilt_delete_never_creates_the_deleted_contact_again() -> None:
    """Found by the 3-instance soak: a Salesforce delete whose CDC event was lost, then the links table lost. Pass B
    read the folder; the user edited the Outlook copy; pass A (another worker) read the copy's marker as its lost link
    and moved the copy to Deleted Items (the Salesforce delete rule), and its success ended the rebuild. B then
    decided its older read of the copy: no longer rebuilding, it took the marker naming a deleted contact for "no
    match" and created that person in Salesforce again. A marker naming a deleted Salesforce contact is that contact's
    delete, rebuilding or not, so B decides as A did and its stale delete is refused by the guard read."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    reconcile_mailbox(engine, ANN)
    (oid,) = ada_in(m365)
    sf.user_delete(sf_id)  # its CDC event is lost
    links.lose()

    def worker_a() -> None:
        m365.user_edit(oid, {"job_title": "CTO"})
        reconcile_mailbox(engine, ANN)  # rebuilds: the copy goes to Deleted Items, the rebuild ends

    real_stream = m365.stream
    m365.stream = lambda mailbox: iter(list(real_stream(mailbox)))  # type: ignore[method-assign]  # read it all now
    after_first(m365, "stream", worker_a)
    report = reconcile_mailbox(engine, ANN)  # pass B, on its read from before A's delete
    assert oid not in m365.snapshot() and not links.rebuilding(ANN)
    assert ada_in(sf) == []  # never created again in Salesforce
    assert not [e for e in audit.entries if e.action == "create:salesforce"]
    assert not report.errors
    assert links.get(ANN, Side.M365, oid) is None


@pytest.mark.parametrize("through", ["hint", "reconcile"])
def test_an_unlinked_outlook_copy_whose_marker_names_a_deleted_contact_follows_the_delete_rule(through: str) -> None:
    """Without a links loss too: an Outlook copy this sync made from a Salesforce contact, left unlinked (the worker
    was killed before its link save), whose Salesforce contact is deleted before any pass links it. Its marker names
    the deleted contact: the Salesforce delete rule applies (propagate: Deleted Items), never a new contact."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit("worker killed")

    real, links.save = links.save, killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    links.save = real  # type: ignore[method-assign]
    (oid,) = ada_in(m365)
    assert m365.snapshot()[oid].marker == sf_id and links.get(ANN, Side.M365, oid) is None
    sf.user_delete(sf_id)
    if through == "hint":
        engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    else:
        assert not reconcile_mailbox(engine, ANN).errors
    assert ada_in(m365) == [] and ada_in(sf) == []
    (row,) = [e for e in audit.entries if e.action == "delete:m365"]
    assert row.reason.startswith("deleted in Salesforce; delete policy propagate") and row.sf_id == sf_id


def test_a_copy_linked_since_its_link_was_read_is_never_taken_for_a_second_copy() -> None:
    """Found by the 3-instance soak (seed 1, after the fix above): on a hand-off, worker X created Outlook copy O1,
    stamped the Salesforce marker and saved its link; worker Y, racing, created O2 and stamped the marker with O2
    last. Worker V, on O1's change notification, had read O1's link before X saved it (none), then found the
    Salesforce contact its marker names linked and marked with *another* copy (O2) and took O1, the linked copy, for
    a second copy (row 41): it moved it to Deleted Items, the link's copy was gone (a tombstone), Y's link save
    failed and Y deleted O2. The person had no copy left. A candidate linked to the very record being decided tells
    that the record was linked since its link was read: that worker decides it, not this stale read."""
    m365, sf, links, audit, engine = setup()
    sf_id = sf.user_create(ANN, ADA)
    engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))  # worker X: O1, marker, link
    (o1,) = ada_in(m365)
    o2 = m365.user_create(ANN, m365.snapshot()[o1].contact, marker=sf_id)  # worker Y's copy, not linked yet
    s_rec = sf.snapshot()[sf_id]
    sf.update(ANN, sf_id, s_rec.contact, fields=frozenset(), if_match=None, marker=o2)  # Y stamps last
    # worker V read O1's link before X saved it (none), then O1 and the candidates (X's link is there by now)
    v = engine.situation(ANN, None, m365.snapshot()[o1], None)
    p = plan(v, engine.policy)
    assert not [a for a in p.actions if a.kind == "delete:m365"], p.reason
    engine.execute(v, p)
    assert o1 in m365.snapshot()
    link = links.get(ANN, Side.M365, o1)
    assert link is not None and link.sf_id == sf_id and link.state is LinkState.LINKED
    assert not [e for e in audit.entries if e.outcome == "review"]
