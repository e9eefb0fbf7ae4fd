"""sync/scope.py without I/O: the group read's outcome, what it changes in the scope, the live list, the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulators.graph import ADMIN_GUIDE_GRANTS, ADMIN_GUIDE_GROUP_GRANTS
from sync.errors import AuthFailed
from sync.scope import MailboxList, Member, StoredScope, group_id_setting, refresh_group
from tests.unit.test_admin_guide_grants import GUIDE

GID = "8f0c1f5e-1111-2222-3333-444455556666"


class Store:
    def __init__(self) -> None:
        self.saved: StoredScope | None = None
        self.loads = 0

    def load(self) -> StoredScope | None:
        self.loads += 1
        return self.saved

    def save(self, scope: StoredScope) -> None:
        self.saved = scope


class Reader:
    def __init__(self, result: list[tuple[str, str | None]] | Exception) -> None:
        self.result = result

    def transitive_users(self, group_id: str) -> list[tuple[str, str | None]]:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_a_first_read_adds_every_member_and_later_reads_only_the_difference() -> None:
    store = Store()
    change = refresh_group(Reader([("1", "Ann@Contoso.com"), ("2", "bob@contoso.com"), ("2", "bob@contoso.com")]),
                           store, GID)
    assert change.added == ("ann@contoso.com", "bob@contoso.com") and change.removed == () and change.members == 2
    assert store.saved is not None and store.saved.members == (Member("1", "ann@contoso.com"),
                                                               Member("2", "bob@contoso.com"))
    change = refresh_group(Reader([("2", "bob@contoso.com"), ("3", "carol@contoso.com")]), store, GID)
    assert change.added == ("carol@contoso.com",) and change.removed == ("ann@contoso.com",)
    # a member also in SYNC_MAILBOXES does not leave the scope when it leaves the group
    change = refresh_group(Reader([("3", "carol@contoso.com")]), store, GID, explicit=("bob@contoso.com",))
    assert change.removed == () and change.added == ()


def test_a_failed_read_keeps_the_last_list_and_records_the_error() -> None:
    store = Store()
    refresh_group(Reader([("1", "ann@contoso.com")]), store, GID)
    change = refresh_group(Reader(AuthFailed("no GroupMember.Read.All")), store, GID)
    assert change.error and "GroupMember.Read.All" in change.error and change.added == change.removed == ()
    assert store.saved is not None and store.saved.upns == ("ann@contoso.com",) and store.saved.last_error
    assert refresh_group(Reader([("1", "ann@contoso.com")]), store, GID).error is None
    assert store.saved.last_error is None


def test_a_read_with_members_without_upn_keeps_the_last_list() -> None:
    store = Store()
    refresh_group(Reader([("1", "ann@contoso.com"), ("2", "bob@contoso.com")]), store, GID)
    change = refresh_group(Reader([("1", None), ("2", None)]), store, GID)
    assert change.error and "User.ReadBasic.All" in change.error and change.removed == ()
    assert store.saved is not None and store.saved.upns == ("ann@contoso.com", "bob@contoso.com")


def test_the_live_list_rereads_the_store_after_its_ttl_and_on_invalidate() -> None:
    store, now = Store(), [0.0]
    store.saved = StoredScope(GID, (Member("1", "ann@contoso.com"),))
    live = MailboxList(["Dave@contoso.com", "ann@contoso.com"], store, GID, ttl_s=60, clock=lambda: now[0])
    assert live.current == ("dave@contoso.com", "ann@contoso.com") and "ANN@contoso.com" in live
    store.saved = StoredScope(GID, (Member("1", "ann@contoso.com"), Member("2", "bob@contoso.com")))
    assert "bob@contoso.com" not in live and store.loads == 1  # cached
    now[0] = 61.0
    assert "bob@contoso.com" in live and live.member_id("bob@contoso.com") == "2" and store.loads == 2
    store.saved = StoredScope(GID, ())
    live.invalidate()
    assert list(live) == ["dave@contoso.com", "ann@contoso.com"] and live.source() == "list+group"
    assert MailboxList(["a@x.com"]).source() == "list" and MailboxList(["a@x.com"]).member_id("a@x.com") is None


@pytest.mark.parametrize("value", ["sales", "8f0c1f5e", "{8f0c1f5e-1111-2222-3333-444455556666}", "8f0c1f5e 1111"])
def test_a_group_id_must_be_a_guid(value: str) -> None:
    with pytest.raises(ValueError, match="SYNC_MAILBOX_GROUP_ID=.*GUID"):
        group_id_setting(value)
    assert group_id_setting(None) is None and group_id_setting(" " + GID.upper() + " ") == GID


def test_the_guides_group_grants_equal_the_emulators() -> None:
    text = Path(GUIDE).read_text(encoding="utf-8")
    block = text.split("<!-- group-grants:begin -->", 1)[1].split("<!-- group-grants:end -->", 1)[0]
    named = {cell.strip().strip("`") for row in block.splitlines()[3:] if row.startswith("|")
             for cell in [row.strip("|").split("|")[1]]}
    assert named == set(ADMIN_GUIDE_GROUP_GRANTS.app_roles - ADMIN_GUIDE_GRANTS.app_roles)
    assert ADMIN_GUIDE_GROUP_GRANTS.exchange_roles == ADMIN_GUIDE_GRANTS.exchange_roles


def test_an_unreadable_store_keeps_the_list_already_read_and_fails_only_a_first_read() -> None:
    from sync.errors import Transient

    class Down(Store):
        def load(self) -> StoredScope | None:
            raise Transient("table down")

    now = [0.0]
    store = Store()
    store.saved = StoredScope(GID, (Member("1", "ann@contoso.com"),))
    live = MailboxList([], store, GID, ttl_s=60, clock=lambda: now[0])
    assert live.current == ("ann@contoso.com",)
    live._store = Down()  # the table goes down
    now[0] = 120.0
    assert live.current == ("ann@contoso.com",)
    with pytest.raises(Transient):
        _ = MailboxList([], Down(), GID).current


def test_a_group_too_large_to_store_is_a_failed_read_that_keeps_the_last_list() -> None:
    from sync.errors import BadData

    class Small(Store):
        def save(self, scope: StoredScope) -> None:
            if len(scope.members) > 2:
                raise BadData("too many", code="SCOPE_TOO_LARGE")
            super().save(scope)

    store = Small()
    refresh_group(Reader([("1", "ann@contoso.com")]), store, GID)
    change = refresh_group(Reader([(str(i), f"u{i}@contoso.com") for i in range(3)]), store, GID)
    assert change.error and "too many" in change.error and change.added == ()
    assert store.saved is not None and store.saved.upns == ("ann@contoso.com",) and store.saved.last_error
