"""The Graph emulator's Entra groups (docs/reference/graph.md §6.5): permission, limited information, paging,
nested membership, the unknown group, the OData cast's advanced-query headers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from emulators.graph import ADMIN_GUIDE_GRANTS, ADMIN_GUIDE_GROUP_GRANTS, Grants, GraphEmulator

AUTH = {"Authorization": "Bearer not-a-jwt"}  # a token not issued by the emulator: its grants apply


@pytest.fixture
def g() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[f"u{i}@contoso.com" for i in range(12)], grants=ADMIN_GUIDE_GROUP_GRANTS) as emu:
        yield emu


def members(g: GraphEmulator, group_id: str, query: str = "", headers: dict[str, str] | None = None,
            what: str = "transitiveMembers") -> httpx.Response:
    return httpx.get(f"{g.base_url}/groups/{group_id}/{what}{query}", headers={**AUTH, **(headers or {})})


def test_without_a_group_permission_the_read_is_403_authorization_requestdenied(g: GraphEmulator) -> None:
    gid = g.add_group("sales", ["u0@contoso.com"])
    g.grants = ADMIN_GUIDE_GRANTS  # the guide's grants without the group: no Entra role at all
    resp = members(g, gid)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "Authorization_RequestDenied"
    for role in ("GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"):
        g.grants = Grants(app_roles=frozenset({role, "User.Read.All"}))
        assert members(g, gid).status_code == 200, role


def test_without_a_user_permission_members_come_back_with_their_id_only(g: GraphEmulator) -> None:
    gid = g.add_group("sales", ["u0@contoso.com"])
    g.grants = Grants(app_roles=frozenset({"GroupMember.Read.All"}))
    (row,) = members(g, gid, "?$select=id,userPrincipalName").json()["value"]
    assert row == {"@odata.type": "#microsoft.graph.user", "id": g.user_id("u0@contoso.com"),
                   "userPrincipalName": None}
    g.grants = ADMIN_GUIDE_GROUP_GRANTS
    (row,) = members(g, gid, "?$select=id,userPrincipalName").json()["value"]
    assert row["userPrincipalName"] == "u0@contoso.com" and set(row) == {"@odata.type", "id", "userPrincipalName"}


def test_unknown_group_is_404_request_resourcenotfound(g: GraphEmulator) -> None:
    resp = members(g, "00000000-0000-0000-0000-000000000001")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "Request_ResourceNotFound"


def test_nested_groups_are_flattened_once_members_only_direct(g: GraphEmulator) -> None:
    inner = g.add_group("inner", ["u1@contoso.com", "u2@contoso.com"])
    device = g.add_directory_object()
    outer = g.add_group("outer", ["u0@contoso.com", inner, device, "u1@contoso.com"])
    g.add_group_member(inner, outer)  # a cycle is harmless
    rows = members(g, outer).json()["value"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 5  # u0, inner, device, u1, u2 (the outer group itself not again)
    users = {r["userPrincipalName"] for r in rows if r["@odata.type"] == "#microsoft.graph.user"}
    assert users == {"u0@contoso.com", "u1@contoso.com", "u2@contoso.com"}
    direct = members(g, outer, what="members").json()["value"]
    assert {r["id"] for r in direct} == {g.user_id("u0@contoso.com"), inner, device, g.user_id("u1@contoso.com")}
    g.remove_group_member(inner, "u2@contoso.com")
    assert "u2@contoso.com" not in {r.get("userPrincipalName") for r in members(g, outer).json()["value"]}


def test_paging_top_nextlink_and_limits(g: GraphEmulator) -> None:
    gid = g.add_group("all", [f"u{i}@contoso.com" for i in range(12)])
    seen: list[str] = []
    url: str | None = f"{g.base_url}/groups/{gid}/transitiveMembers?$select=id,userPrincipalName&$top=5"
    pages = 0
    while url:
        body = httpx.get(url, headers=AUTH).json()
        assert len(body["value"]) <= 5
        seen += [r["userPrincipalName"] for r in body["value"]]
        url = body.get("@odata.nextLink")
        assert url is None or "$skiptoken=" in url and "$select=id%2CuserPrincipalName" in url
        pages += 1
    assert pages == 3 and sorted(seen) == sorted(f"u{i}@contoso.com" for i in range(12))
    assert len(members(g, gid).json()["value"]) == 12  # default page 100
    for bad in ("?$top=1000", "?$top=0", "?$skip=5"):
        resp = members(g, gid, bad)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "Request_BadRequest", bad
    assert members(g, gid, "?$top=999").status_code == 200


def test_the_user_cast_needs_the_advanced_query_headers(g: GraphEmulator) -> None:
    inner = g.add_group("inner", ["u1@contoso.com"])
    gid = g.add_group("outer", ["u0@contoso.com", inner])
    resp = httpx.get(f"{g.base_url}/groups/{gid}/transitiveMembers/microsoft.graph.user", headers=AUTH)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "Request_UnsupportedQuery"
    resp = httpx.get(f"{g.base_url}/groups/{gid}/transitiveMembers/microsoft.graph.user?$count=true",
                     headers={**AUTH, "ConsistencyLevel": "eventual"})
    body = resp.json()
    assert resp.status_code == 200 and body["@odata.count"] == 2
    assert {r["@odata.type"] for r in body["value"]} == {"#microsoft.graph.user"}


def test_groups_over_the_admin_api(g: GraphEmulator) -> None:
    gid = httpx.post(f"{g.root_url}/_admin/groups", json={"displayName": "sales", "members": ["u0@contoso.com"]}
                     ).json()["id"]
    assert httpx.post(f"{g.root_url}/_admin/groups/{gid}/members", json={"id": "u1@contoso.com"}).status_code == 204
    assert httpx.delete(f"{g.root_url}/_admin/groups/{gid}/members/u0@contoso.com").status_code == 204
    assert [r["userPrincipalName"] for r in members(g, gid).json()["value"]] == ["u1@contoso.com"]
