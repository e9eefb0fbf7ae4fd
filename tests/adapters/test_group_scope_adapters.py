"""The group scope's adapters: the Graph reader over the emulator (paging past one page, nested groups, non-users,
the typed errors) and the stored list in Table Storage (split over several properties, too large refused)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from emulators.graph import ADMIN_GUIDE_GRANTS, ADMIN_GUIDE_GROUP_GRANTS, GraphEmulator
from sync.adapters.graph.directory import GraphGroupReader
from sync.adapters.storage import TableStorage
from sync.adapters.storage.scope import MAX_PARTS, PART_CHARS
from sync.errors import AuthFailed, BadData, NotFound
from sync.scope import MailboxList, Member, StoredScope
from tests.contract.graph_harness import make_side

N = 1_200  # more than one page of 999


@pytest.fixture(scope="module")
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[f"rep{i:04d}@contoso.com" for i in range(N)], grants=ADMIN_GUIDE_GROUP_GRANTS) as g:
        yield g


def test_the_reader_follows_next_links_through_nested_groups_and_keeps_users_only(emu: GraphEmulator) -> None:
    emu.grants = ADMIN_GUIDE_GROUP_GRANTS
    inner = emu.add_group("inner", [f"rep{i:04d}@contoso.com" for i in range(600, N)])
    device = emu.add_directory_object()
    outer = emu.add_group("outer", [f"rep{i:04d}@contoso.com" for i in range(600)] + [inner, device])
    before = emu.counters.count(endpoint="group.transitiveMembers")
    with make_side(emu, mailboxes=None) as side:
        users = GraphGroupReader(side).transitive_users(outer)
    assert len(users) == N and len({oid for oid, _ in users}) == N
    assert {upn for _, upn in users} == {f"rep{i:04d}@contoso.com" for i in range(N)}
    assert emu.user_id("rep0700@contoso.com") in {oid for oid, _ in users}
    # 1,202 objects (1,200 users, the nested group, a device) at 999 a page: two requests
    assert emu.counters.count(endpoint="group.transitiveMembers") - before == 2


def test_the_reader_types_its_errors(emu: GraphEmulator) -> None:
    gid = emu.add_group("g", ["rep0001@contoso.com"])
    with make_side(emu, mailboxes=None) as side:
        reader = GraphGroupReader(side)
        with pytest.raises(NotFound, match="does not exist"):
            reader.transitive_users(str(uuid.uuid4()))
        emu.grants = ADMIN_GUIDE_GRANTS
        try:
            with pytest.raises(AuthFailed, match="GroupMember.Read.All"):
                reader.transitive_users(gid)
        finally:
            emu.grants = ADMIN_GUIDE_GROUP_GRANTS


def test_the_stored_list_round_trips_over_several_properties_and_refuses_too_many(
        azurite_connection_string: str) -> None:
    store = TableStorage.from_connection_string(azurite_connection_string, "t" + uuid.uuid4().hex[:12]).scope()
    assert store.load() is None
    members = tuple(Member(str(uuid.uuid4()), f"rep{i:05d}@sales.contoso.example") for i in range(2_000))
    scope = StoredScope("8f0c1f5e-1111-2222-3333-444455556666", members, read_at="2026-01-01T00:00:00+00:00",
                        last_error="AuthFailed: x", last_error_at="2026-01-01T01:00:00+00:00")
    assert sum(len(m.id) + len(m.upn) + 2 for m in members) > PART_CHARS  # really split
    store.save(scope)
    assert store.load() == scope
    live = MailboxList([], store, scope.group_id)
    assert len(live) == 2_000 and live.member_id("REP01999@sales.contoso.example") == members[-1].id
    too_many = tuple(Member(str(uuid.uuid4()), f"{'x' * 40}{i}@contoso.com")
                     for i in range(MAX_PARTS * PART_CHARS // 80 + 1))
    with pytest.raises(BadData, match="more than one stored list holds"):
        store.save(StoredScope(scope.group_id, too_many))
    assert store.load() == scope  # the last list stays
