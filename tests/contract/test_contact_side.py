"""The ContactSide contract: the same tests for every side.

Parametrised over harnesses; each real adapter's test module adds its own harness factory to ``HARNESSES`` through
``tests/contract/sides.py`` so the in-memory fakes and the real adapters over the emulators keep one promise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sync.errors import NotFound, PreconditionFailed
from sync.model import Contact, Side
from sync.ports import ContactSide, CreateRequest, SideRecord, UpdateRequest
from tests.contract.harness import SideHarness
from tests.contract.sides import HARNESSES

ADA = Contact(first_name="Ada", last_name="Byron", emails=["Ada.Byron@Example.com"], company="Analytical Engines",
              job_title="Countess", business_phone="+44 20 7946 0000", city="London", notes="Line one\nLine two")
GRACE = Contact(first_name="Grace", last_name="Hopper", emails=["grace@example.com"], company="Navy",
                mobile_phone="+1 555 0100")


@pytest.fixture(params=sorted(HARNESSES))
def h(request: pytest.FixtureRequest) -> Iterator[SideHarness]:
    harness = HARNESSES[request.param](request)
    try:
        yield harness
    finally:
        harness.close()


def same(a: Contact, b: Contact, fields: tuple[str, ...] = ("first_name", "last_name", "email", "company",
                                                               "job_title", "business_phone", "city", "notes")) -> bool:
    return a.values(fields) == b.values(fields)


def all_pages(side: ContactSide, mailbox: str, checkpoint: str | None) -> tuple[list[SideRecord], list[str], str, bool]:
    records: list[SideRecord] = []
    removed: list[str] = []
    last = None
    full = False
    for page in side.changes(mailbox, checkpoint):
        records += page.records
        removed += page.removed
        full = full or page.full
        last = page.checkpoint or last
    assert last is not None, "the last page must carry the checkpoint"
    return records, removed, last, full


def test_create_then_get_round_trips_the_contact(h: SideHarness) -> None:
    created = h.side.create(h.mailbox, ADA, marker="other-side-id" if h.supports_marker else None)
    assert created.id and created.version and created.owner == h.mailbox
    assert same(created.contact, ADA)
    got = h.side.get(h.mailbox, created.id)
    assert got is not None and got.id == created.id and same(got.contact, ADA)
    assert got.version == created.version
    if h.supports_marker:
        assert got.marker == "other-side-id"


def test_find_by_marker_finds_the_stamped_record_only(h: SideHarness) -> None:
    h.side.create(h.mailbox, GRACE)
    if not h.supports_marker:
        assert h.side.find_by_marker(h.mailbox, "other-side-id") is None
        return
    created = h.side.create(h.mailbox, ADA, marker="other-side-id")
    found = h.side.find_by_marker(h.mailbox, "other-side-id")
    assert found is not None and found.id == created.id and found.marker == "other-side-id"
    assert h.side.find_by_marker(h.mailbox, "no-such-id") is None
    h.side.delete(h.mailbox, created.id, if_match=None)
    assert h.side.find_by_marker(h.mailbox, "other-side-id") is None


def test_get_of_unknown_id_is_none(h: SideHarness) -> None:
    real = h.side.create(h.mailbox, GRACE)
    h.side.delete(h.mailbox, real.id, if_match=None)
    assert h.side.get(h.mailbox, real.id) is None


def test_update_writes_only_the_given_fields_and_changes_the_version(h: SideHarness) -> None:
    created = h.side.create(h.mailbox, ADA)
    h.user_edit(created.id, {"city": "Paris"})  # a user edit the update must not undo
    current = h.side.get(h.mailbox, created.id)
    assert current is not None
    wanted = ADA.with_values({"job_title": "Mathematician", "city": "Oslo"})
    updated = h.side.update(h.mailbox, created.id, wanted, fields=frozenset({"job_title"}), if_match=current.version)
    assert updated.version != current.version
    got = h.side.get(h.mailbox, created.id)
    assert got is not None
    assert got.contact.job_title == "Mathematician" and got.contact.city == "Paris"


def test_update_can_clear_a_field(h: SideHarness) -> None:
    created = h.side.create(h.mailbox, ADA)
    h.side.update(h.mailbox, created.id, ADA.with_values({"job_title": None}), fields=frozenset({"job_title"}),
                  if_match=created.version)
    got = h.side.get(h.mailbox, created.id)
    assert got is not None and got.contact.job_title is None and got.contact.last_name == "Byron"


def test_stale_version_is_refused_on_update_and_delete(h: SideHarness) -> None:
    created = h.side.create(h.mailbox, ADA)
    h.user_edit(created.id, {"job_title": "Changed meanwhile"})
    with pytest.raises(PreconditionFailed):
        h.side.update(h.mailbox, created.id, ADA, fields=frozenset({"city"}), if_match=created.version)
    with pytest.raises(PreconditionFailed):
        h.side.delete(h.mailbox, created.id, if_match=created.version)
    got = h.side.get(h.mailbox, created.id)
    assert got is not None and got.contact.job_title == "Changed meanwhile"


def test_delete_then_delete_again_is_not_found(h: SideHarness) -> None:
    created = h.side.create(h.mailbox, ADA)
    h.side.delete(h.mailbox, created.id, if_match=created.version)
    assert h.side.get(h.mailbox, created.id) is None
    with pytest.raises(NotFound):
        h.side.delete(h.mailbox, created.id, if_match=None)
    with pytest.raises(NotFound):
        h.side.update(h.mailbox, created.id, ADA, fields=frozenset({"city"}), if_match=None)


def test_find_matches_by_email_case_insensitively_and_by_name_and_company(h: SideHarness) -> None:
    ada = h.side.create(h.mailbox, ADA)
    h.side.create(h.mailbox, GRACE)
    by_email = h.side.find(h.mailbox, Contact(last_name="X", emails=["ada.byron@EXAMPLE.com"]))
    assert [r.id for r in by_email] == [ada.id]
    by_name = h.side.find(h.mailbox, Contact(first_name="Ada", last_name="Byron", company="Analytical Engines"))
    assert [r.id for r in by_name] == [ada.id]
    assert h.side.find(h.mailbox, Contact(last_name="Nobody", emails=["nobody@example.com"])) == []


def test_stream_lists_exactly_the_mailbox_records(h: SideHarness) -> None:
    mine = {h.side.create(h.mailbox, ADA).id, h.user_create(GRACE)}
    h.user_create(GRACE.with_values({"email": "other@example.com"}), mailbox=h.other_mailbox)
    assert {r.id for r in h.side.stream(h.mailbox)} == mine
    assert all(r.owner == h.mailbox for r in h.side.stream(h.mailbox))


def test_moved_out_of_the_mailbox_is_no_longer_its_own(h: SideHarness) -> None:
    item_id = h.user_create(ADA)
    h.user_move_out(item_id)
    got = h.side.get(h.mailbox, item_id)
    assert got is None or got.owner != h.mailbox
    assert item_id not in {r.id for r in h.side.stream(h.mailbox)}


def test_bulk_create_and_update_return_one_result_per_item_in_order(h: SideHarness) -> None:
    people = [Contact(first_name=f"P{i}", last_name="Bulk", emails=[f"p{i}@example.com"]) for i in range(25)]
    results = h.side.create_many(h.mailbox, [CreateRequest(contact=c) for c in people])
    assert len(results) == 25 and all(isinstance(r, SideRecord) for r in results)
    records = [r for r in results if isinstance(r, SideRecord)]
    assert [r.contact.emails for r in records] == [c.emails for c in people]
    gone = records[3]
    h.side.delete(h.mailbox, gone.id, if_match=None)
    updates = [UpdateRequest(item_id=r.id, contact=r.contact.with_values({"job_title": "Bulk"}),
                             fields=frozenset({"job_title"}), if_match=r.version) for r in records]
    out = h.side.update_many(h.mailbox, updates)
    assert len(out) == 25
    assert isinstance(out[3], NotFound)
    assert all(isinstance(r, SideRecord) and r.contact.job_title == "Bulk" for i, r in enumerate(out) if i != 3)


def test_change_feed_reports_creates_edits_and_removals_since_a_checkpoint(h: SideHarness) -> None:
    kept = h.side.create(h.mailbox, ADA)
    doomed = h.side.create(h.mailbox, GRACE)
    leaving = h.user_create(GRACE.with_values({"email": "leaving@example.com"}))
    records, removed, checkpoint, full = all_pages(h.side, h.mailbox, None)
    assert full and {r.id for r in records} >= {kept.id, doomed.id, leaving}
    h.user_edit(kept.id, {"job_title": "Edited"})
    new = h.user_create(Contact(last_name="New", emails=["new@example.com"]))
    h.user_delete(doomed.id)
    h.user_move_out(leaving)
    records, removed, checkpoint2, full = all_pages(h.side, h.mailbox, checkpoint)
    assert not full
    changed = {r.id: r for r in records}
    assert kept.id in changed and changed[kept.id].contact.job_title == "Edited"
    assert new in changed
    assert doomed.id in removed and leaving in removed
    assert doomed.id not in changed and leaving not in changed
    records, removed, _, _ = all_pages(h.side, h.mailbox, checkpoint2)
    assert records == [] and removed == []


def test_made_here_tells_a_copy_this_sync_created_from_a_users(h: SideHarness) -> None:
    """Outlook: a create with a marker stamps a create key that no other contact carries; a user's contact has none.
    Salesforce records name their author instead (``untouched``): always False there."""
    ours = h.side.create(h.mailbox, ADA, marker="other-side-id" if h.supports_marker else None)
    theirs = h.user_create(GRACE)
    assert h.side.made_here(h.mailbox, theirs) is False
    assert h.side.made_here(h.mailbox, ours.id) is (h.side.side is Side.M365 and h.supports_marker)
    assert h.side.made_here(h.other_mailbox, ours.id) is False  # not in that mailbox's folder
    h.side.delete(h.mailbox, ours.id, if_match=None)
    assert h.side.made_here(h.mailbox, ours.id) is False
