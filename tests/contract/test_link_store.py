"""The LinkStore contract: the same tests against the in-memory store and the Azure Tables store on Azurite.

An in-memory fake is only allowed because it passes exactly these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from sync.adapters.storage import TableStorage
from sync.errors import AlreadyExists, NotFound, PreconditionFailed
from sync.model import Side
from sync.ports import Link, LinkState, LinkStore, LinkWrite
from tests.fakes import MemoryLinkStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MAILBOX = "rep@contoso.com"


@pytest.fixture(params=["memory", "azurite"])
def store(request: pytest.FixtureRequest) -> Iterator[LinkStore]:
    if request.param == "memory":
        yield MemoryLinkStore()
        return
    conn = request.getfixturevalue("azurite_connection_string")
    prefix = "t" + uuid.uuid4().hex[:12]  # a fresh set of tables per test
    yield TableStorage.from_connection_string(conn, prefix).links()


@pytest.fixture(params=["memory", "azurite"])
def lossy(request: pytest.FixtureRequest) -> Iterator[tuple[LinkStore, Callable[[], None]]]:
    """A store and a way to lose it: the memory store forgets, the links table is deleted in Azurite."""
    if request.param == "memory":
        memory = MemoryLinkStore()
        yield memory, memory.lose
        return
    from azure.data.tables import TableServiceClient

    conn = request.getfixturevalue("azurite_connection_string")
    prefix = "t" + uuid.uuid4().hex[:12]
    tables = TableStorage.from_connection_string(conn, prefix)
    tables.checkpoints()

    def lose() -> None:
        with TableServiceClient.from_connection_string(conn) as service:
            service.delete_table(f"{prefix}links")

    yield tables.links(), lose


def new_link(m365_id: str | None = "AAMkAD/x+y==", sf_id: str | None = "003A000000000001AA", **kw: object) -> Link:
    return Link(mailbox=MAILBOX, m365_id=m365_id, sf_id=sf_id, synced_at=T0, m365_base={"email": "d1"},
                sf_base={"email": "d1"}, m365_fp="f1", sf_fp="f1", **kw)  # type: ignore[arg-type]


def test_create_then_read_through_either_id(store: LinkStore) -> None:
    saved = store.save(new_link(), previous=None)
    assert saved.etag
    by_m365 = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    by_sf = store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA")
    assert by_m365 is not None and by_sf is not None
    assert by_m365.model_dump(exclude={"etag"}) == by_sf.model_dump(exclude={"etag"}) == new_link().model_dump(
        exclude={"etag"})
    assert store.get("other@contoso.com", Side.M365, "AAMkAD/x+y==") is None


def test_create_twice_is_already_exists(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    with pytest.raises(AlreadyExists):
        store.save(new_link(m365_id="other-id"), previous=None)  # same Salesforce id in the same mailbox


def test_replace_with_current_etag_succeeds_and_changes_etag(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    current = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    assert current is not None
    updated = store.save(current.model_copy(update={"m365_fp": "f2"}), previous=current)
    assert updated.etag != current.etag
    again = store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA")
    assert again is not None and again.m365_fp == "f2"


@pytest.mark.parametrize("read_via", [Side.M365, Side.SALESFORCE])
def test_lost_update_is_refused_whichever_row_was_read(store: LinkStore, read_via: Side) -> None:
    store.save(new_link(), previous=None)
    ids = {Side.M365: "AAMkAD/x+y==", Side.SALESFORCE: "003A000000000001AA"}
    first = store.get(MAILBOX, Side.M365, ids[Side.M365])
    second = store.get(MAILBOX, read_via, ids[read_via])
    assert first is not None and second is not None
    store.save(first.model_copy(update={"m365_fp": "writer-1"}), previous=first)
    with pytest.raises(PreconditionFailed):
        store.save(second.model_copy(update={"m365_fp": "writer-2"}), previous=second)
    final = store.get(MAILBOX, Side.SALESFORCE, ids[Side.SALESFORCE])
    assert final is not None and final.m365_fp == "writer-1"


def test_detaching_removes_the_dropped_row(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    current = store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA")
    assert current is not None
    tomb = current.model_copy(update={"m365_id": None, "state": LinkState.DETACHED, "m365_base": {}})
    store.save(tomb, previous=current)
    assert store.get(MAILBOX, Side.M365, "AAMkAD/x+y==") is None
    kept = store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA")
    assert kept is not None and kept.state is LinkState.DETACHED and kept.m365_id is None


def test_changing_an_id_moves_its_row(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    current = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    assert current is not None
    store.save(current.model_copy(update={"sf_id": "003A000000000002AA"}), previous=current)
    assert store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA") is None
    moved = store.get(MAILBOX, Side.SALESFORCE, "003A000000000002AA")
    assert moved is not None and moved.m365_id == "AAMkAD/x+y=="
    assert store.mailboxes_of("003A000000000002AA") == {MAILBOX}


def test_delete_is_guarded_and_removes_both_rows(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    stale = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    assert stale is not None
    store.save(stale.model_copy(update={"sf_fp": "new"}), previous=stale)
    with pytest.raises(PreconditionFailed):
        store.delete(stale)
    fresh = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    assert fresh is not None
    store.delete(fresh)
    assert store.get(MAILBOX, Side.M365, "AAMkAD/x+y==") is None
    assert store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA") is None
    with pytest.raises(NotFound):
        store.delete(fresh)
    assert store.mailboxes_of("003A000000000001AA") == set()


def test_list_yields_each_link_once_per_mailbox(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    store.save(new_link(m365_id="second", sf_id="003A000000000009AA"), previous=None)
    store.save(new_link(m365_id="only-outlook", sf_id=None, state=LinkState.DETACHED), previous=None)
    store.save(Link(mailbox="other@contoso.com", m365_id="x", sf_id="003A000000000001AA", synced_at=T0),
               previous=None)
    listed = list(store.list(MAILBOX))
    assert sorted((link.m365_id or "", link.sf_id or "") for link in listed) == [
        ("AAMkAD/x+y==", "003A000000000001AA"), ("only-outlook", ""), ("second", "003A000000000009AA")]
    assert all(link.etag for link in listed)
    # a listed link can be saved with its etag (list gives usable concurrency tokens)
    first = next(link for link in listed if link.sf_id == "003A000000000009AA")
    store.save(first.model_copy(update={"reason": "touched"}), previous=first)
    assert store.mailboxes_of("003A000000000001AA") == {MAILBOX, "other@contoso.com"}


@pytest.mark.parametrize("odd", ["a/b\\c#d?e%f", "tab\there", "ünïcode-ÿ", "x" * 300])
def test_ids_with_characters_table_keys_forbid(store: LinkStore, odd: str) -> None:
    link = Link(mailbox="odd/mail#box?@x.com", m365_id=odd, sf_id="003" + "B" * 15, synced_at=T0)
    store.save(link, previous=None)
    got = store.get("odd/mail#box?@x.com", Side.M365, odd)
    assert got is not None and got.m365_id == odd
    assert [lk.m365_id for lk in store.list("odd/mail#box?@x.com")] == [odd]


def test_save_can_absorb_a_tombstone_in_the_same_transaction(store: LinkStore) -> None:
    tomb = store.save(new_link(m365_id=None, state=LinkState.DETACHED), previous=None)  # Salesforce copy kept
    store.save(new_link(m365_id="first", sf_id="003A000000000007AA"), previous=None)
    live = store.get(MAILBOX, Side.M365, "first")
    assert live is not None
    # the live link now points at the tombstone's Salesforce contact: both old rows give way in one write
    store.save(live.model_copy(update={"sf_id": "003A000000000001AA"}), previous=live, absorb=[tomb])
    got = store.get(MAILBOX, Side.SALESFORCE, "003A000000000001AA")
    assert got is not None and got.state is LinkState.LINKED and got.m365_id == "first"
    assert store.get(MAILBOX, Side.SALESFORCE, "003A000000000007AA") is None
    with pytest.raises(PreconditionFailed):  # the absorbed tombstone's etag is checked too
        fresh = store.get(MAILBOX, Side.M365, "first")
        assert fresh is not None
        store.save(new_link(m365_id="x", sf_id="003A000000000008AA"), previous=None, absorb=[tomb])


def test_save_many_packs_saves_and_reports_each_item(store: LinkStore) -> None:
    existing = store.save(new_link(m365_id="taken", sf_id="003A00000000TAKEN"), previous=None)
    stale = store.save(new_link(m365_id="stale", sf_id="003A00000000STALE"), previous=None)
    store.save(stale.model_copy(update={"reason": "someone else wrote"}), previous=stale)
    writes = [LinkWrite(new_link(m365_id=f"m{i}", sf_id=f"003A{i:014d}")) for i in range(120)]
    writes.insert(7, LinkWrite(new_link(m365_id="other", sf_id="003A00000000TAKEN")))  # a row that exists
    writes.insert(70, LinkWrite(stale.model_copy(update={"reason": "late"}), previous=stale))  # lost update
    writes.append(LinkWrite(existing.model_copy(update={"reason": "renewed"}), previous=existing))
    results = store.save_many(writes)
    assert len(results) == len(writes)
    assert isinstance(results[7], AlreadyExists) and isinstance(results[70], PreconditionFailed)
    ok = [r for r in results if isinstance(r, Link)]
    assert len(ok) == 121 and all(r.etag for r in ok)
    for i in (0, 60, 119):
        got = store.get(MAILBOX, Side.SALESFORCE, f"003A{i:014d}")
        assert got is not None and got.m365_id == f"m{i}"
        assert MAILBOX in store.mailboxes_of(f"003A{i:014d}")
    renewed = store.get(MAILBOX, Side.M365, "taken")
    assert renewed is not None and renewed.reason == "renewed"
    assert store.get(MAILBOX, Side.M365, "other") is None
    # the returned etags guard the next write, as save's do
    again = results[-1]
    assert isinstance(again, Link)
    store.save(again.model_copy(update={"reason": "third"}), previous=again)
    assert len(list(store.list(MAILBOX))) == 122  # taken, stale and the 120 new ones


def test_a_lost_store_starts_over_empty_and_rebuilding_until_each_mailbox_is_rebuilt(
        lossy: tuple[LinkStore, Callable[[], None]]) -> None:
    store, lose = lossy
    store.save(new_link(), previous=None)
    assert not store.rebuilding(MAILBOX)  # a store made for the first time is not a lost one
    lose()
    assert store.get(MAILBOX, Side.M365, "AAMkAD/x+y==") is None  # the links are gone, the store answers again
    assert store.rebuilding(MAILBOX) and store.rebuilding("other@contoso.com")
    saved = store.save(new_link(), previous=None)
    assert list(store.list(MAILBOX)) == [saved]
    assert store.mailboxes_of("003A000000000001AA") == {MAILBOX}
    store.mark_rebuilt(MAILBOX)
    assert not store.rebuilding(MAILBOX)
    assert store.rebuilding("other@contoso.com")


def test_a_store_lost_before_a_list_answers_empty(lossy: tuple[LinkStore, Callable[[], None]]) -> None:
    store, lose = lossy
    store.save(new_link(), previous=None)
    lose()
    assert list(store.list(MAILBOX)) == []
    assert store.mailboxes_of("003A000000000001AA") == set()
    assert store.rebuilding(MAILBOX)


def test_tombstones_survive_the_loss(lossy: tuple[LinkStore, Callable[[], None]]) -> None:
    store, lose = lossy
    store.save(new_link(), previous=None)
    tomb = store.save(new_link(m365_id=None, sf_id="003B", state=LinkState.DETACHED), previous=None)
    gone = store.save(new_link(m365_id="AAMk-gone", sf_id=None, state=LinkState.DETACHED), previous=None)
    store.delete(gone)  # a tombstone forgotten before the loss stays forgotten
    lose()
    back = store.get(MAILBOX, Side.SALESFORCE, "003B")
    assert back is not None and back.state is LinkState.DETACHED and back.sf_id == "003B" and back.m365_id is None
    assert store.get(MAILBOX, Side.M365, "AAMkAD/x+y==") is None  # a live link is rebuilt from markers, not kept
    assert store.get(MAILBOX, Side.M365, "AAMk-gone") is None
    assert [link.sf_id for link in store.list(MAILBOX)] == ["003B"]
    assert store.mailboxes_of("003B") == {MAILBOX}
    # a tombstone replaced by a live link after the loss does not come back at the next loss
    relinked = store.save(new_link(m365_id="AAMk-new", sf_id="003B"), previous=back)
    assert relinked.state is LinkState.LINKED
    lose()
    assert store.get(MAILBOX, Side.SALESFORCE, "003B") is None
    assert tomb.etag is not None


def test_replacing_a_link_removed_since_it_was_read_is_a_lost_race(store: LinkStore) -> None:
    store.save(new_link(), previous=None)
    current = store.get(MAILBOX, Side.M365, "AAMkAD/x+y==")
    assert current is not None
    store.delete(current)  # another worker removed it (or the table was lost)
    with pytest.raises(PreconditionFailed):  # re-read and decide again, not a poison NotFound
        store.save(current.model_copy(update={"m365_fp": "f2"}), previous=current)
