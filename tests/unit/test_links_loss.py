"""After the links table is lost, links are rebuilt from the markers without undoing deletes or owner changes
(the soak's links-loss event; the contract for ``rebuilding`` is in tests/contract/test_link_store.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.model import Contact, Side
from sync.policy import DeletePolicy, Policy
from sync.ports import ContactChange, LinkState
from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta
from tests.fakes import MemoryAudit, MemoryCheckpoints
from tests.world import ANN, BOB, World, memory_world

NAMES = ("kept", "gone", "moved", "plain")


@dataclass
class Lost(World):
    """A world whose four contacts of Ann's were synced before the links table is lost."""

    ids: dict[str, str] = field(default_factory=dict)

    def copies(self, mailbox: str, sf_id: str) -> list[str]:
        return [i for i, r in self.m365.snapshot().items() if r.owner == mailbox and r.marker == sf_id]

    def sf_with_email(self, name: str) -> list[str]:
        return [i for i, r in self.sf.snapshot().items() if f"{name}@example.com" in r.contact.email_keys()]


def world(policy: Policy | None = None) -> Lost:
    w = memory_world(policy, kind=Lost)
    w.ids = {n: w.sf.user_create(ANN, Contact(first_name=n, last_name="X", emails=[f"{n}@example.com"]))
             for n in NAMES}
    for mb in (ANN, BOB):
        reconcile_mailbox(w.engine, mb)
    return w


def test_an_outlook_copy_deleted_before_the_loss_is_not_brought_back() -> None:
    w = world()
    (oid,) = w.copies(ANN, w.ids["kept"])
    w.m365.user_delete(oid)
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))  # policy unlink: tombstone
    w.links.lose()
    report = reconcile_mailbox(w.engine, ANN)
    assert w.copies(ANN, w.ids["kept"]) == []
    assert "create:m365" not in report.applied
    tomb = w.links.get(ANN, Side.SALESFORCE, w.ids["kept"])
    assert tomb is not None and tomb.state is LinkState.DETACHED  # the tombstone is rebuilt
    (plain,) = w.copies(ANN, w.ids["plain"])  # the others are linked again, not doubled
    linked = w.links.get(ANN, Side.M365, plain)
    assert linked is not None and linked.sf_id == w.ids["plain"] and linked.state is LinkState.LINKED
    assert not w.links.rebuilding(ANN) and w.links.rebuilding(BOB)
    w.sf.user_edit(w.ids["kept"], {"job_title": "CTO"})  # later edits still do not bring it back
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=w.ids["kept"]))
    assert w.copies(ANN, w.ids["kept"]) == []


def test_a_hint_during_the_rebuild_does_not_bring_a_deleted_copy_back() -> None:
    w = world()
    (oid,) = w.copies(ANN, w.ids["kept"])
    w.m365.user_delete(oid)
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))  # tombstone
    w.links.lose()  # the tombstone comes back with the table
    w.sf.user_edit(w.ids["kept"], {"job_title": "CTO"})
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=w.ids["kept"]))
    assert w.copies(ANN, w.ids["kept"]) == []
    assert w.sf.snapshot()[w.ids["kept"]].contact.job_title == "CTO"  # delete policy unlink: Salesforce keeps it


def test_a_contact_deleted_in_one_folder_reaches_its_new_owner_after_the_loss() -> None:
    w = world()
    kept = w.ids["kept"]
    (oid,) = w.copies(ANN, kept)
    w.m365.user_delete(oid)
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))  # tombstone in Ann's mailbox
    w.links.lose()
    w.sf.user_set_owner(kept, BOB)  # the Salesforce marker still names the copy Ann deleted
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=kept))
    assert len(w.copies(BOB, kept)) == 1  # deleted in Ann's folder, not in Bob's: the new owner gets it
    assert w.copies(ANN, kept) == [] and w.links.get(ANN, Side.SALESFORCE, kept) is None  # Ann's tombstone left


def test_a_salesforce_delete_missed_before_the_loss_is_propagated_not_undone() -> None:
    w = world()
    (oid,) = w.copies(ANN, w.ids["gone"])
    w.sf.user_delete(w.ids["gone"])  # its CDC event was lost
    w.links.lose()
    reconcile_mailbox(w.engine, ANN)
    assert w.sf_with_email("gone") == []  # not re-created in Salesforce
    assert oid not in w.m365.snapshot()  # delete policy propagate: the Outlook copy went to Deleted Items


def test_an_owner_change_after_the_loss_moves_the_copy() -> None:
    w = world()
    w.links.lose()
    moved = w.ids["moved"]
    (old,) = w.copies(ANN, moved)
    w.sf.user_set_owner(moved, BOB)
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=moved))
    assert len(w.copies(BOB, moved)) == 1  # the old copy is still in Ann's folder: not a delete, a move
    reconcile_mailbox(w.engine, ANN)
    assert w.copies(ANN, moved) == [] and old not in w.m365.snapshot()
    reconcile_mailbox(w.engine, BOB)
    assert len(w.copies(BOB, moved)) == 1 and len(w.sf_with_email("moved")) == 1


def test_recreate_policy_still_recreates_from_a_rebuilt_link() -> None:
    w = world(Policy(on_m365_delete=DeletePolicy.RECREATE))
    (oid,) = w.copies(ANN, w.ids["kept"])
    w.m365.user_delete(oid)
    w.links.lose()
    reconcile_mailbox(w.engine, ANN)
    (again,) = w.copies(ANN, w.ids["kept"])
    assert again != oid


def test_a_delta_reconcile_during_the_rebuild_runs_full_and_ends_it() -> None:
    w = world()
    checkpoints = MemoryCheckpoints()
    reconcile_mailbox_delta(w.engine, ANN, checkpoints)
    w.links.lose()
    report = reconcile_mailbox_delta(w.engine, ANN, checkpoints)
    assert report.ran == "full" and not w.links.rebuilding(ANN)
    assert reconcile_mailbox_delta(w.engine, ANN, checkpoints).ran == "delta"


def test_without_a_loss_a_restored_salesforce_contact_comes_back_to_outlook() -> None:
    w = world()
    gone = w.ids["gone"]
    w.sf.user_delete(gone)
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=gone))  # propagate: copy deleted
    assert w.copies(ANN, gone) == []
    w.sf.user_undelete(gone)  # its marker still names the deleted copy; without a loss that is no tombstone
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=gone))
    assert len(w.copies(ANN, gone)) == 1


def test_an_owner_change_during_the_rebuild_reaches_the_new_owner_whichever_mailbox_goes_first() -> None:
    w = world()
    w.links.lose()
    moved = w.ids["moved"]
    w.sf.user_set_owner(moved, BOB)
    reconcile_mailbox(w.engine, ANN)  # Ann's copy leaves first; the marker naming it is cleared with it
    assert w.copies(ANN, moved) == [] and not w.sf.snapshot()[moved].marker
    reconcile_mailbox(w.engine, BOB)  # before the hand-off message is handled: not read as a delete in Bob's folder
    (new,) = w.copies(BOB, moved)
    assert w.sf.snapshot()[moved].marker == new


def test_outlook_edits_of_a_copy_leaving_during_the_rebuild_are_saved_or_audited() -> None:
    w = world()
    moved = w.ids["moved"]
    (old,) = w.copies(ANN, moved)
    w.links.lose()
    w.m365.user_edit(old, {"mobile_phone": "+47 90000118", "job_title": "Outlook title"})  # not synced yet
    w.sf.user_edit(moved, {"job_title": "Salesforce title"})
    w.sf.user_set_owner(moved, BOB)
    reconcile_mailbox(w.engine, ANN)
    record = w.sf.snapshot()[moved].contact
    assert record.mobile_phone == "+47 90000118"  # a value Salesforce did not have is carried over
    assert record.job_title == "Salesforce title"  # both differ: the conflict policy decides ...
    audit = w.engine.audit
    assert isinstance(audit, MemoryAudit)
    assert any(e.action == "conflict" and e.fields == ("job_title",) for e in audit.entries)  # ... on record
    # the carried-over value may override a clear made in Salesforce meanwhile: it is on record too
    assert any(e.action == "conflict" and e.fields == ("mobile_phone",) for e in audit.entries)


def test_an_outlook_delete_after_the_loss_is_matched_by_the_salesforce_marker() -> None:
    w = world()
    kept = w.ids["kept"]
    (oid,) = w.copies(ANN, kept)
    w.links.lose()
    w.m365.user_delete(oid)  # its notification names only the Outlook id, whose link is gone
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    tomb = w.links.get(ANN, Side.SALESFORCE, kept)
    assert tomb is not None and tomb.state is LinkState.DETACHED
    reconcile_mailbox(w.engine, ANN)
    assert w.copies(ANN, kept) == []


def test_an_outlook_delete_whose_notification_was_lost_after_the_loss_is_read_from_the_delta_feed() -> None:
    w = world()
    kept = w.ids["kept"]
    checkpoints = MemoryCheckpoints()
    reconcile_mailbox_delta(w.engine, ANN, checkpoints)
    (oid,) = w.copies(ANN, kept)
    w.links.lose()
    w.m365.user_delete(oid)  # no notification: only the delta feed knows
    report = reconcile_mailbox_delta(w.engine, ANN, checkpoints)
    assert report.ran == "full" and not w.links.rebuilding(ANN)
    assert w.copies(ANN, kept) == []
    assert len(w.copies(ANN, w.ids["plain"])) == 1


def test_an_outlook_delete_nobody_reported_is_known_from_the_audit_of_the_mailbox() -> None:
    w = world()
    kept = w.ids["kept"]
    (oid,) = w.copies(ANN, kept)
    w.m365.user_delete(oid)  # no notification, no delta pass: only the audit knows the copy lived in Ann's folder
    w.links.lose()
    reconcile_mailbox(w.engine, ANN)
    assert w.copies(ANN, kept) == []
    tomb = w.links.get(ANN, Side.SALESFORCE, kept)
    assert tomb is not None and tomb.state is LinkState.DETACHED
    w.sf.user_set_owner(kept, BOB)  # the copy the marker names never lived in Bob's folder: not a delete there
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=kept))
    assert len(w.copies(BOB, kept)) == 1


def test_a_marker_whose_stamp_lost_a_race_is_stamped_on_the_next_sync_of_the_pair() -> None:
    """Found by the soak: a copy's marker stamp failed (a user edited it at that moment), the links table was lost,
    then its Salesforce contact was deleted. Without the marker the copy looked new and was copied back. Any sync of
    the pair now stamps a marker that does not name its partner."""
    w = world()
    sf_id = w.ids["gone"]
    (oid,) = w.copies(ANN, sf_id)
    copy = w.m365.snapshot()[oid]
    w.m365.update(ANN, oid, copy.contact, fields=frozenset(), if_match=copy.version, marker="")  # the lost stamp
    w.sf.user_edit(sf_id, {"job_title": "CTO"})  # a Salesforce edit: only Outlook is written ...
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id))
    assert w.m365.snapshot()[oid].marker == sf_id  # ... and its marker with it
    w.m365.update(ANN, oid, w.m365.snapshot()[oid].contact, fields=frozenset(), if_match=None, marker="")
    w.m365.user_edit(oid, {"job_title": "CEO"})  # an Outlook edit: only Salesforce is written ...
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    assert w.m365.snapshot()[oid].marker == sf_id  # ... and the Outlook marker is stamped too
    w.links.lose()
    w.sf.user_delete(sf_id)  # its CDC event cannot find the lost link
    reconcile_mailbox(w.engine, ANN)
    assert w.sf_with_email("gone") == []  # not copied back to Salesforce
    assert oid not in w.m365.snapshot()  # the delete reached Outlook (default policy: delete the copy)


def test_an_outlook_delete_between_the_adopt_read_and_its_write_is_not_undone_by_the_retry() -> None:
    """While rebuilding, a Salesforce hint re-links a pair by marker; the rep deletes the Outlook copy between our
    read and our write (a 404, decided again): the retry must see the delete, not a contact new to Outlook."""
    import pytest

    from sync.errors import PreconditionFailed

    w = world()
    kept = w.ids["kept"]
    (oid,) = w.copies(ANN, kept)
    w.links.lose()
    w.sf.user_edit(kept, {"job_title": "CTO"})
    w.m365.user_edit(oid, {"job_title": "Dev"})  # a conflict to fill, as in the soak
    real = w.m365.update

    def delete_first(*args: object, **kwargs: object) -> object:
        w.m365.update = real  # type: ignore[method-assign]
        w.m365.user_delete(oid)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    w.m365.update = delete_first  # type: ignore[method-assign]
    with pytest.raises(PreconditionFailed):
        w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=kept))
    w.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=kept))  # the host's retry
    assert w.copies(ANN, kept) == []
