"""What a side reports about a write reaches the audit: a duplicate rule's alert (a note on the record) and a Block
rule's refusal (a review item naming the matched ids). docs/reference/salesforce.md §1.3."""

from __future__ import annotations

from typing import Any

import pytest

from sync.errors import BadData
from sync.model import Contact, Side
from sync.ports import ContactChange
from tests.world import ANN, memory_world

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"])


def test_a_block_duplicate_rule_puts_the_contact_in_review_naming_the_matched_ids() -> None:
    w = memory_world(mailboxes=[ANN])
    oid = w.m365.user_create(ANN, ADA)

    def blocked(*args: Any, **kwargs: Any) -> Any:
        raise BadData("salesforce duplicate rule (block) matched 003000000000001AAA", code="DUPLICATES_DETECTED",
                      side="salesforce")

    w.sf.create = blocked  # type: ignore[method-assign]
    with pytest.raises(BadData):
        w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    (row,) = [e for e in w.audit.entries if e.action == "create:salesforce"]
    assert row.outcome == "review" and row.error is not None and "003000000000001AAA" in row.error


def test_a_note_on_a_written_record_becomes_an_audit_row() -> None:
    w = memory_world(mailboxes=[ANN])
    oid = w.m365.user_create(ANN, ADA)
    create = w.sf.create

    def noted(*args: Any, **kwargs: Any) -> Any:
        return create(*args, **kwargs).model_copy(update={"notes": ("duplicate rule (alert): matches 003x",)})

    w.sf.create = noted  # type: ignore[method-assign]
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    (note,) = [e for e in w.audit.entries if e.action == "note"]
    assert note.outcome == "applied" and "003x" in note.reason and note.m365_id == oid


def test_a_review_note_becomes_an_audit_row_in_review_and_the_contact_stays_linked() -> None:
    from sync.ports import REVIEW_NOTE

    w = memory_world(mailboxes=[ANN])
    oid = w.m365.user_create(ANN, ADA.with_values({"country": "Atlantis"}))
    create = w.sf.create

    def held(*args: Any, **kwargs: Any) -> Any:
        made = create(*args, **kwargs)
        return made.model_copy(update={"contact": made.contact.with_values({"country": None}),
                                       "notes": (f"{REVIEW_NOTE} country 'Atlantis' not written",)})

    w.sf.create = held  # type: ignore[method-assign]
    w.engine.sync_contact(ContactChange(source=Side.M365, item_id=oid, mailbox=ANN))
    (note,) = [e for e in w.audit.entries if e.action == "note"]
    assert note.outcome == "review" and "'Atlantis'" in note.reason
    assert [e.outcome for e in w.audit.entries if e.action == "create:salesforce"] == ["applied"]
