"""The Graph emulator driven by the real, unmodified msgraph-sdk 1.65 (and raw httpx where the SDK can't go).

Each test starts its own emulator on a free loopback port. Webhook endpoints are a tiny stdlib HTTP server that echoes
``validationToken`` and records notifications. Delays are kept at Retry-After 1 s so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphServiceClient
from msgraph.generated.models.contact import Contact
from msgraph.generated.models.contact_folder import ContactFolder
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.single_value_legacy_extended_property import SingleValueLegacyExtendedProperty
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.contact_folders.contact_folders_request_builder import ContactFoldersRequestBuilder
from msgraph.generated.users.item.contact_folders.item.contacts.contacts_request_builder import ContactsRequestBuilder
from msgraph.generated.users.item.contact_folders.item.contacts.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.generated.users.item.contact_folders.item.contacts.item.contact_item_request_builder import (
    ContactItemRequestBuilder,
)

from emulators.graph import TENANT_WIDE_CONTACTS, Grants, GraphEmulator

USER = "alice@contoso.example"
OTHER = "bob@contoso.example"
MARKER = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name SalesforceId"


class _FakeCredential:
    """docs/reference/graph.md §7.8(b): keeps an Authorization header on every request."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("emulator-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None


def make_client(emu: GraphEmulator) -> GraphServiceClient:
    client = GraphServiceClient(credentials=_FakeCredential(), scopes=["https://graph.microsoft.com/.default"])
    client.request_adapter.base_url = emu.base_url  # §7.1: no trailing slash → single slashes
    return client


def run(fn: Callable[[GraphServiceClient], Awaitable[Any]], emu: GraphEmulator) -> Any:
    async def main() -> Any:
        return await fn(make_client(emu))

    return asyncio.run(main())


def cfg(
    query: Any = None,
    prefer: list[str] | None = None,
    retries: int | None = None,
    headers: dict[str, str] | None = None,
) -> RequestConfiguration:
    c: RequestConfiguration = RequestConfiguration(query_parameters=query)
    for p in prefer or []:
        c.headers.add("Prefer", p)
    for k, v in (headers or {}).items():
        c.headers.add(k, v)
    if retries is not None:
        c.options = [RetryHandlerOption(max_retries=retries)]
    return c


def no_retry() -> RequestConfiguration:
    return cfg(retries=0)


class Receiver:
    """A webhook endpoint: echoes validationToken (or not, per ``echo``) and records notification bodies."""

    def __init__(self) -> None:
        self.echo = True
        self.validations: list[str] = []
        self.notifications: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                qs = parse_qs(urlsplit(self.path).query)
                if "validationToken" in qs:
                    token = qs["validationToken"][0]  # parse_qs URL-decodes, as the docs require
                    with receiver.lock:
                        receiver.validations.append(token)
                    out = token.encode() if receiver.echo else b"nope"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                else:
                    with receiver.lock:
                        receiver.notifications.append(json.loads(body))
                    out = b""
                    self.send_response(202)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/graph/notifications"
        self.lifecycle_url = f"http://127.0.0.1:{self.server.server_address[1]}/api/graph/lifecycle"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return [n for batch in self.notifications for n in batch["value"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[USER, OTHER], validation_timeout_s=2.0, notification_retry_base_delay_s=0.05) as g:
        yield g


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def folder(emu: GraphEmulator) -> str:
    return emu.create_folder(USER, "Salesforce_Sync")


def odata_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def contacts(client: GraphServiceClient, folder_id: str, user: str = USER) -> Any:
    return client.users.by_user_id(user).contact_folders.by_contact_folder_id(folder_id).contacts


# ---- auth, users, folders --------------------------------------------------------------------------------------


def test_authorization_header_is_required_and_errors_use_graph_shape(emu: GraphEmulator) -> None:
    emu.grants = Grants(app_roles=frozenset({"User.Read.All", "Contacts.ReadWrite"}))
    with httpx.Client(trust_env=False) as http:
        anonymous = http.get(f"{emu.base_url}/users/{USER}")
        token = http.post(f"{emu.root_url}/{emu.tenant_id}/oauth2/v2.0/token", data={"grant_type": "x"})
        bearer = {"Authorization": "Bearer " + token.json()["access_token"]}
        authed = http.get(f"{emu.base_url}//users/{USER.replace('@', '%40')}", headers=bearer)
        unknown = http.get(f"{emu.base_url}/users/nobody@x.example", headers=bearer)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert set(anonymous.json()["error"]["innerError"]) >= {"request-id", "date"}
    assert authed.status_code == 200 and authed.json()["userPrincipalName"] == USER
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ErrorInvalidUser"


def _token_roles(token: str) -> list[str]:
    import base64

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["roles"]


def test_directory_reads_need_an_entra_role_and_mailbox_data_the_exchange_scope(emu: GraphEmulator) -> None:
    """§6.4: Entra decides /users (403 Authorization_RequestDenied), Exchange decides mailbox data (403
    ErrorAccessDenied); a tenant-wide Contacts role reaches every mailbox; the grants add up."""
    emu.grants = Grants(exchange_roles=frozenset({"Application Contacts.ReadWrite"}), mailbox_scope=frozenset({USER}))
    with httpx.Client(trust_env=False) as http:
        token = http.post(f"{emu.root_url}/{emu.tenant_id}/oauth2/v2.0/token", data={"grant_type": "x"}).json()
        bearer = {"Authorization": "Bearer " + token["access_token"]}
        user = http.get(f"{emu.base_url}/users/{USER}?$select=id", headers=bearer)
        users = http.get(f"{emu.base_url}/users", headers=bearer)
        inside = http.get(f"{emu.base_url}/users/{USER}/contactFolders", headers=bearer)
        outside = http.get(f"{emu.base_url}/users/{OTHER}/contactFolders", headers=bearer)
        write_out = http.post(f"{emu.base_url}/users/{OTHER}/contacts", headers=bearer, json={"givenName": "x"})
        emu.grants = TENANT_WIDE_CONTACTS
        wide = http.post(f"{emu.root_url}/{emu.tenant_id}/oauth2/v2.0/token", data={"grant_type": "x"}).json()
        wide_bearer = {"Authorization": "Bearer " + wide["access_token"]}
        other_wide = http.get(f"{emu.base_url}/users/{OTHER}/contactFolders", headers=wide_bearer)
        user_wide = http.get(f"{emu.base_url}/users/{USER}", headers=wide_bearer)
    assert _token_roles(token["access_token"]) == [] and _token_roles(wide["access_token"]) == ["Contacts.ReadWrite"]
    for denied in (user, users):
        assert denied.status_code == 403
        assert denied.json()["error"] | {"innerError": None} == {
            "code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation.",
            "innerError": None}
    assert inside.status_code == 200
    for denied in (outside, write_out):
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    assert other_wide.status_code == 200
    assert user_wide.status_code == 403  # Contacts.ReadWrite is no directory permission


def test_subscription_on_a_mailbox_outside_the_scope_is_refused(emu: GraphEmulator, receiver: Receiver) -> None:
    emu.grants = Grants(exchange_roles=frozenset({"Application Contacts.ReadWrite"}), mailbox_scope=frozenset({USER}))
    expiry = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = {"changeType": "updated", "notificationUrl": receiver.url, "expirationDateTime": expiry}
    with httpx.Client(trust_env=False) as http:
        bearer = {"Authorization": "Bearer x"}
        out = http.post(f"{emu.base_url}/subscriptions", headers=bearer,
                        json=body | {"resource": f"users/AAD-UPN:{OTHER}/contacts"})
        ok = http.post(f"{emu.base_url}/subscriptions", headers=bearer,
                       json=body | {"resource": f"users/AAD-UPN:{USER}/contacts"})
    assert out.status_code == 403 and out.json()["error"]["code"] == "ErrorAccessDenied"
    assert ok.status_code == 201 and ok.json()["resource"] == f"users/AAD-UPN:{USER}/contacts"


def test_folder_find_or_create_with_filter_and_child_folders(emu: GraphEmulator) -> None:
    name = "O'Brien Sync"

    async def body(client: GraphServiceClient) -> None:
        folders = client.users.by_user_id(USER).contact_folders
        qp = ContactFoldersRequestBuilder.ContactFoldersRequestBuilderGetQueryParameters(
            filter=f"displayName eq {odata_str(name)}", select=["id", "displayName", "parentFolderId"]
        )
        assert (await folders.get(request_configuration=cfg(qp))).value == []
        created = await folders.post(ContactFolder(display_name=name))
        assert created.id and created.parent_folder_id == emu.default_folder_id(USER)
        await folders.post(ContactFolder(display_name="Other"))
        found = (await folders.get(request_configuration=cfg(qp))).value
        assert [f.id for f in found] == [created.id]
        with pytest.raises(ODataError) as dup:
            await folders.post(ContactFolder(display_name=name.upper()))
        assert dup.value.response_status_code == 400 and dup.value.error.code == "ErrorFolderExists"
        child_folders = folders.by_contact_folder_id(created.id).child_folders
        child = await child_folders.post(ContactFolder(display_name="Child"))
        assert [f.id for f in (await child_folders.get()).value] == [child.id]
        # the filter searches one level only
        qp_child = ContactFoldersRequestBuilder.ContactFoldersRequestBuilderGetQueryParameters(
            filter="displayName eq 'Child'"
        )
        assert (await folders.get(request_configuration=cfg(qp_child))).value == []
        # the other mailbox is separate
        assert (await client.users.by_user_id(OTHER).contact_folders.get()).value == []

    run(body, emu)


# ---- contacts ----------------------------------------------------------------------------------------------------


def test_contact_crud_with_changekey_and_if_match(emu: GraphEmulator, folder: str) -> None:
    async def body(client: GraphServiceClient) -> None:
        coll = contacts(client, folder)
        created = await coll.post(
            Contact(
                given_name="Ada",
                surname="Lovelace",
                email_addresses=[EmailAddress(address="ada@example.com", name="Ada")],
                business_phones=["+1 555 0100"],
            )
        )
        assert created.id and created.change_key and created.parent_folder_id == folder
        assert created.display_name == "Ada Lovelace"  # generated, §1.1
        etag = created.additional_data["@odata.etag"]
        assert etag == f'W/"{created.change_key}"'

        item = coll.by_contact_id(created.id)
        qp = ContactItemRequestBuilder.ContactItemRequestBuilderGetQueryParameters(select=["surname", "changeKey"])
        got = await item.get(request_configuration=cfg(qp))
        assert got.surname == "Lovelace" and got.given_name is None  # $select honoured

        updated = await item.patch(Contact(job_title="CTO"), request_configuration=cfg(headers={"If-Match": etag}))
        assert updated.job_title == "CTO" and updated.surname == "Lovelace"  # absent keys keep their value
        assert updated.change_key != created.change_key

        with pytest.raises(ODataError) as stale:
            await item.patch(Contact(job_title="CEO"), request_configuration=cfg(headers={"If-Match": etag}))
        assert stale.value.response_status_code == 412 and stale.value.error.code == "ErrorIrresolvableConflict"
        assert emu.get_contact(USER, created.id)["jobTitle"] == "CTO"

        cleared = await item.patch(Contact(additional_data={"jobTitle": None}))  # §7.7 clear via camelCase
        assert cleared.job_title is None

        with pytest.raises(ODataError) as snake:  # §7.7: snake_case leak is rejected
            await item.patch(Contact(additional_data={"mobile_phone": None}))
        assert snake.value.response_status_code == 400

        await item.delete()
        with pytest.raises(ODataError) as gone:
            await item.get()
        assert gone.value.response_status_code == 404 and gone.value.error.code == "ErrorItemNotFound"

    run(body, emu)


def test_an_address_filter_answers_as_a_scan_of_the_folder_would(emu: GraphEmulator, folder: str) -> None:
    """The emulator looks an address up instead of evaluating the filter on every contact (as Exchange does): the
    answer stays what the filter means - any of a contact's addresses, compared case-insensitively, quotes doubled,
    only this folder; a filter that is more than one address comparison is evaluated on every contact."""
    other = emu.create_folder(USER, "Elsewhere")
    emu.create_contact(USER, {"surname": "Away", "emailAddresses": [{"address": "dup@example.com"}]}, other)
    two = emu.create_contact(USER, {"surname": "Two", "emailAddresses": [{"address": "first@example.com"},
                                                                         {"address": "Dup@Example.com"}]}, folder)
    quoted = emu.create_contact(USER, {"surname": "Quote", "emailAddresses": [{"address": "o'brien@example.com"}]},
                                folder)
    emu.create_contact(USER, {"surname": "None"}, folder)
    for i in range(30):
        emu.create_contact(USER, {"surname": f"Filler{i}", "emailAddresses": [{"address": f"f{i}@example.com"}]},
                           folder)

    async def body(client: GraphServiceClient) -> None:
        coll = contacts(client, folder)

        async def ids(flt: str) -> list[str]:
            q = ContactsRequestBuilder.ContactsRequestBuilderGetQueryParameters(filter=flt, top=100)
            return [str(c.id) for c in (await coll.get(request_configuration=cfg(q))).value]

        assert await ids("emailAddresses/any(a:a/address eq 'dup@example.com')") == [two["id"]]
        assert await ids("emailAddresses/any( x : x/address eq 'DUP@EXAMPLE.COM' )") == [two["id"]]
        assert await ids("emailAddresses/any(a:a/address eq 'O''Brien@example.com')") == [quoted["id"]]
        assert await ids("emailAddresses/any(a:a/address eq 'nobody@example.com')") == []
        both = "emailAddresses/any(a:a/address eq 'dup@example.com') or surname eq 'Quote'"
        assert sorted(await ids(both)) == sorted([two["id"], quoted["id"]])
        assert await ids("emailAddresses/any(a:a/address eq 'dup@example.com') and surname eq 'Quote'") == []

    run(body, emu)


def test_extended_properties_expand_and_filters(emu: GraphEmulator, folder: str) -> None:
    async def body(client: GraphServiceClient) -> None:
        coll = contacts(client, folder)
        marked = await coll.post(
            Contact(
                surname="Marked",
                email_addresses=[EmailAddress(address="Marked@Example.com")],
                single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=MARKER, value="003A")],
            )
        )
        await coll.post(
            Contact(
                surname="Other",
                single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=MARKER, value="003B")],
            )
        )
        await coll.post(Contact(surname="Plain"))

        def q(flt: str) -> RequestConfiguration:
            return cfg(ContactsRequestBuilder.ContactsRequestBuilderGetQueryParameters(filter=flt))

        flt = f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(MARKER)} and ep/value eq '003A')"
        assert [c.id for c in (await coll.get(request_configuration=q(flt))).value] == [marked.id]
        by_mail = await coll.get(request_configuration=q("emailAddresses/any(a:a/address eq 'marked@example.com')"))
        assert [c.id for c in by_mail.value] == [marked.id]
        with pytest.raises(ODataError) as bad:  # only `eq` on address is supported (user-list-contacts doc)
            await coll.get(request_configuration=q("emailAddresses/any(a:startswith(a/address, 'm'))"))
        assert bad.value.response_status_code == 400

        qp = ContactItemRequestBuilder.ContactItemRequestBuilderGetQueryParameters(
            expand=[f"singleValueExtendedProperties($filter=id eq {odata_str(MARKER)})"]
        )
        got = await coll.by_contact_id(marked.id).get(request_configuration=cfg(qp))
        assert [(p.id, p.value) for p in got.single_value_extended_properties] == [(MARKER, "003A")]
        plain = await coll.by_contact_id(marked.id).get()
        assert not plain.single_value_extended_properties  # only with $expand

        await coll.by_contact_id(marked.id).patch(
            Contact(single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=MARKER, value="003Z")])
        )
        assert [c.id for c in (await coll.get(request_configuration=q(flt))).value] == []

    run(body, emu)


def test_extended_property_name_is_case_sensitive_and_the_value_is_not(emu: GraphEmulator, folder: str) -> None:
    # singlevaluelegacyextendedproperty-get: "Filtering the string name (Name) in the id of an extended property is
    # case-sensitive. Filtering the value property of an extended property is case-insensitive."
    lower_name = MARKER.replace("Name SalesforceId", "Name salesforceid")
    upper_guid = MARKER.replace("66f5a359", "66F5A359").replace("String", "STRING")
    a = emu.create_contact(USER, {"surname": "A", "singleValueExtendedProperties": [
        {"id": MARKER, "value": "003000000000abc"}, {"id": lower_name, "value": "other"}]}, folder)["id"]
    b = emu.create_contact(USER, {"surname": "B", "singleValueExtendedProperties": [
        {"id": MARKER, "value": "003000000000ABC"}]}, folder)["id"]

    def ids(prop: str, value: str) -> set[str]:
        flt = f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(prop)} and ep/value eq {odata_str(value)})"
        raw = httpx.get(f"{emu.base_url}/users/{USER}/contactFolders/{folder}/contacts?$filter={quote(flt)}",
                        headers={"Authorization": "Bearer t"})
        assert raw.status_code == 200
        return {c["id"] for c in raw.json()["value"]}

    assert ids(MARKER, "003000000000abc") == {a, b}  # values differing only in case are the same to the filter
    assert ids(upper_guid, "003000000000ABC") == {a, b}  # type and GUID are not case-sensitive
    assert ids(lower_name, "other") == {a} and ids(lower_name, "003000000000abc") == set()  # another property
    # two properties whose names differ only in case are two properties on one contact
    stored = emu.get_contact(USER, a)
    assert stored is not None and len(stored["singleValueExtendedProperties"]) == 2
    # 18-character (case-safe) ids tell the two apart (docs/reference/salesforce.md §1.1)
    emu.update_contact(USER, a, {"singleValueExtendedProperties": [{"id": MARKER, "value": "003000000000abcAAA"}]})
    emu.update_contact(USER, b, {"singleValueExtendedProperties": [{"id": MARKER, "value": "003000000000ABCAA2"}]})
    assert ids(MARKER, "003000000000abcAAA") == {a} and ids(MARKER, "003000000000ABCAA2") == {b}


def test_item_ids_are_mailbox_wide_a_moved_contact_answers_through_the_old_folder(emu: GraphEmulator,
                                                                                    folder: str) -> None:
    # docs/reference/graph.md §1.8: Exchange resolves an item id in the whole mailbox; parentFolderId tells where
    cid = emu.create_contact(USER, {"surname": "Mover"}, folder)["id"]
    emu.move_contact(USER, cid)  # to the default Contacts folder
    url = f"{emu.base_url}/users/{USER}/contactFolders/{folder}/contacts/{cid}"
    auth = {"Authorization": "Bearer t"}
    got = httpx.get(url, headers=auth)
    assert got.status_code == 200 and got.json()["parentFolderId"] == emu.default_folder_id(USER)
    patched = httpx.patch(url, json={"jobTitle": "Written"}, headers=auth)  # a PATCH lands there too
    assert patched.status_code == 200 and patched.json()["parentFolderId"] == emu.default_folder_id(USER)
    assert httpx.get(f"{emu.base_url}/users/{USER}/contactFolders/nope/contacts/{cid}", headers=auth).status_code == 404


def test_ignore_if_match_switch_lets_a_stale_write_through(emu: GraphEmulator, folder: str) -> None:
    cid = emu.create_contact(USER, {"surname": "Raced"}, folder)["id"]
    stale = {"Authorization": "Bearer t", "If-Match": 'W/"stale"'}
    url = f"{emu.base_url}/users/{USER}/contactFolders/{folder}/contacts/{cid}"
    assert httpx.patch(url, json={"jobTitle": "A"}, headers=stale).status_code == 412  # §1.5 by default
    emu.faults.ignore_if_match = True  # as Exchange may (If-Match on contacts is undocumented)
    assert httpx.patch(url, json={"jobTitle": "B"}, headers=stale).status_code == 200
    assert httpx.delete(url, headers=stale).status_code == 204


def test_list_paging_with_maxpagesize_and_top(emu: GraphEmulator, folder: str) -> None:
    for i in range(7):
        emu.create_contact(USER, {"surname": f"S{i}"}, folder)
    emu.create_contact(USER, {"surname": "elsewhere"})  # default folder, not listed

    async def body(client: GraphServiceClient) -> None:
        coll = contacts(client, folder)
        sizes, names = [], []
        page = await coll.get(request_configuration=cfg(prefer=["odata.maxpagesize=3"]))
        while True:
            sizes.append(len(page.value))
            names += [c.surname for c in page.value]
            if not page.odata_next_link:
                break
            assert page.odata_next_link.startswith(emu.base_url)
            page = await coll.with_url(page.odata_next_link).get(
                request_configuration=cfg(prefer=["odata.maxpagesize=3"])
            )
        assert sizes == [3, 3, 1] and names == [f"S{i}" for i in range(7)]
        qp = ContactsRequestBuilder.ContactsRequestBuilderGetQueryParameters(top=5, select=["surname"])
        first = await coll.get(request_configuration=cfg(qp))
        assert len(first.value) == 5 and first.value[0].given_name is None
        rest = await coll.with_url(first.odata_next_link).get()
        assert [c.surname for c in rest.value] == ["S5", "S6"] and rest.odata_next_link is None

    run(body, emu)


# ---- delta -------------------------------------------------------------------------------------------------------


async def _delta_round(client: GraphServiceClient, folder: str, link: str | None) -> tuple[list[Any], list[int], str]:
    builder = contacts(client, folder).delta
    prefer = ["odata.maxpagesize=2", 'IdType="ImmutableId"']
    if link:
        page = await builder.with_url(link).get(request_configuration=cfg(prefer=prefer))
    else:
        qp = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(select=["surname", "changeKey"])
        page = await builder.get(request_configuration=cfg(qp, prefer=prefer))
    items, sizes = [], []
    while True:
        items += page.value
        sizes.append(len(page.value))
        assert not (page.odata_next_link and page.odata_delta_link)  # never both (§3.2)
        if page.odata_next_link:
            page = await builder.with_url(page.odata_next_link).get(request_configuration=cfg(prefer=prefer))
            continue
        return items, sizes, page.odata_delta_link


def test_delta_initial_then_incremental_with_removed_and_empty_page(emu: GraphEmulator, folder: str) -> None:
    ids = [emu.create_contact(USER, {"surname": f"D{i}"}, folder)["id"] for i in range(3)]
    emu.create_contact(USER, {"surname": "not in folder"})

    async def body(client: GraphServiceClient) -> None:
        items, sizes, link = await _delta_round(client, folder, None)
        assert sorted(c.id for c in items) == sorted(ids) and sizes == [2, 1]
        assert items[0].given_name is None and items[0].surname  # $select from the initial request
        assert all("@removed" not in (c.additional_data or {}) for c in items)

        emu.update_contact(USER, ids[0], {"jobTitle": "Boss"})
        emu.delete_contact(USER, ids[1])
        emu.move_contact(USER, ids[2])  # out of the folder into the default Contacts folder
        new_id = emu.create_contact(USER, {"surname": "New"}, folder)["id"]
        emu.faults.delta_empty_pages = 1

        items, sizes, link2 = await _delta_round(client, folder, link)
        assert sizes[0] == 0  # an empty page that still carries a nextLink
        removed = {c.id: c.additional_data["@removed"] for c in items if "@removed" in (c.additional_data or {})}
        assert removed == {ids[1]: {"reason": "deleted"}, ids[2]: {"reason": "deleted"}}
        upserts = {c.id for c in items if c.id not in removed}
        assert upserts == {ids[0], new_id}
        assert link2 != link

        items, sizes, _ = await _delta_round(client, folder, link2)
        assert items == [] and sizes == [0]  # nothing changed: one empty page with a deltaLink

        emu.move_contact(USER, ids[2], folder)  # moved back in: shows as an upsert
        items, _, _ = await _delta_round(client, folder, link2)
        assert [(c.id, (c.additional_data or {}).get("@removed")) for c in items] == [(ids[2], None)]

    run(body, emu)


def test_delta_expired_token_gives_410_sync_state_not_found(emu: GraphEmulator, folder: str) -> None:
    emu.create_contact(USER, {"surname": "X"}, folder)

    async def body(client: GraphServiceClient) -> None:
        _, _, link = await _delta_round(client, folder, None)
        assert emu.expire_delta_tokens(USER) >= 1
        with pytest.raises(ODataError) as expired:
            await _delta_round(client, folder, link)
        assert expired.value.response_status_code == 410
        assert expired.value.error.code.lower() == "syncstatenotfound"
        items, _, _ = await _delta_round(client, folder, None)  # full resync works
        assert len(items) == 1

    run(body, emu)


@pytest.mark.parametrize(("code", "status"),
                         [("SyncStateNotFound", 410), ("SyncStateInvalid", 400), ("resyncRequired", 410)])
def test_delta_resets_answer_each_code_and_410_carries_a_fresh_location(emu: GraphEmulator, folder: str, code: str,
                                                                         status: int) -> None:
    # docs/reference/graph.md §3.3: the three codes clients meet; 410 comes with a Location of an empty $deltaToken
    emu.create_contact(USER, {"surname": "X"}, folder)

    async def body(client: GraphServiceClient) -> None:
        _, _, link = await _delta_round(client, folder, None)
        assert emu.expire_delta_tokens(USER, code) >= 1
        raw = httpx.get(link, headers={"Authorization": "Bearer t"})
        assert raw.status_code == status and raw.json()["error"]["code"] == code
        if status == 410:
            assert raw.headers["Location"].endswith("/delta()?$deltatoken=")
            again = httpx.get(raw.headers["Location"], headers={"Authorization": "Bearer t"})
            assert again.status_code == 200 and len(again.json()["value"]) == 1  # the Location starts over
        else:
            assert "Location" not in raw.headers

    run(body, emu)


def test_delta_reset_rate_cycles_through_the_three_codes(emu: GraphEmulator, folder: str) -> None:
    emu.create_contact(USER, {"surname": "X"}, folder)
    emu.faults.delta_reset_rate = 1.0
    seen = []

    async def body(client: GraphServiceClient) -> None:
        for _ in range(3):
            _, _, link = await _delta_round(client, folder, None)  # an initial round carries no token: never reset
            with pytest.raises(ODataError) as reset:
                await _delta_round(client, folder, link)
            seen.append((reset.value.response_status_code, reset.value.error.code))

    run(body, emu)
    assert seen == [(410, "SyncStateNotFound"), (400, "SyncStateInvalid"), (410, "resyncRequired")]
    assert emu.faults.snapshot()["injected"] == {"delta.SyncStateNotFound": 1, "delta.SyncStateInvalid": 1,
                                                 "delta.resyncRequired": 1}


# ---- subscriptions and notifications ----------------------------------------------------------------------------


def _subscription(
    folder: str, receiver: Receiver, minutes: int = 10_000, change: str = "created,updated,deleted"
) -> Subscription:
    return Subscription(
        change_type=change,
        notification_url=receiver.url,
        lifecycle_notification_url=receiver.lifecycle_url,
        resource=f"users/{USER}/contactFolders/{folder}/contacts",
        expiration_date_time=datetime.now(UTC) + timedelta(minutes=minutes),
        client_state="s3cret",
    )


def test_subscription_handshake_then_change_notifications(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    async def body(client: GraphServiceClient) -> str:
        sub = await client.subscriptions.post(_subscription(folder, receiver))
        assert sub.id and sub.client_state == "s3cret"
        return sub.id

    sub_id = run(body, emu)
    # §4.3: one validation POST per URL; the decoded token has spaces and colons.
    assert len(receiver.validations) == 2 and receiver.validations[0].startswith("Validation: ")

    c = emu.create_contact(USER, {"surname": "N"}, folder)
    emu.update_contact(USER, c["id"], {"jobTitle": "x"})
    emu.create_contact(USER, {"surname": "elsewhere"})  # other folder: no notification
    emu.move_contact(USER, c["id"])  # out of the folder: like a delete
    assert emu.wait_notifications(5)
    got = receiver.items()
    assert [n["changeType"] for n in got] == ["created", "updated", "deleted"]
    for n in got:
        assert n["clientState"] == "s3cret" and n["subscriptionId"] == sub_id
        assert n["resourceData"]["id"] == c["id"] and n["resourceData"]["@odata.type"] == "#Microsoft.Graph.Contact"
        assert n["resource"].lower() == f"users/{emu.user_id(USER)}/contacts/{c['id']}".lower()
        assert n["tenantId"] == emu.tenant_id


def test_mailbox_wide_subscription_sees_every_folder_and_moves_as_updates(
    emu: GraphEmulator, folder: str, receiver: Receiver
) -> None:
    sub = _subscription(folder, receiver)
    sub.resource = f"users/{emu.user_id(USER)}/contacts"
    run(lambda client: client.subscriptions.post(sub), emu)
    a = emu.create_contact(USER, {"surname": "A"}, folder)
    b = emu.create_contact(USER, {"surname": "B"})
    emu.move_contact(USER, a["id"])
    emu.delete_contact(USER, b["id"])
    emu.create_contact(OTHER, {"surname": "other mailbox"})
    assert emu.wait_notifications(5)
    got = [(n["changeType"], n["resourceData"]["id"]) for n in receiver.items()]
    assert got == [("created", a["id"]), ("created", b["id"]), ("updated", a["id"]), ("deleted", b["id"])]


def test_subscription_validation_failure_is_400_and_not_created(
    emu: GraphEmulator, folder: str, receiver: Receiver
) -> None:
    receiver.echo = False

    async def body(client: GraphServiceClient) -> None:
        with pytest.raises(ODataError) as failed:
            await client.subscriptions.post(_subscription(folder, receiver), request_configuration=no_retry())
        assert failed.value.response_status_code == 400
        assert (await client.subscriptions.get()).value == []

    run(body, emu)
    assert receiver.validations  # the handshake was attempted


def test_subscription_validation_failure_when_endpoint_unreachable(emu: GraphEmulator, folder: str) -> None:
    dead = Receiver()
    dead.close()  # nothing listens there any more

    async def body(client: GraphServiceClient) -> None:
        with pytest.raises(ODataError) as failed:
            await client.subscriptions.post(_subscription(folder, dead), request_configuration=no_retry())
        assert failed.value.response_status_code == 400

    run(body, emu)


def test_subscription_renew_delete_and_expiration_rules(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    async def body(client: GraphServiceClient) -> None:
        short = await client.subscriptions.post(_subscription(folder, receiver, minutes=5))
        assert short.expiration_date_time >= datetime.now(UTC) + timedelta(minutes=44)  # raised to 45 min
        with pytest.raises(ODataError) as dup:
            await client.subscriptions.post(_subscription(folder, receiver), request_configuration=no_retry())
        assert dup.value.response_status_code == 409
        with pytest.raises(ODataError) as too_long:
            await client.subscriptions.post(
                _subscription(folder, receiver, minutes=10_081, change="updated"), request_configuration=no_retry()
            )
        assert too_long.value.response_status_code == 400
        new_exp = datetime.now(UTC) + timedelta(minutes=10_000)
        renewed = await client.subscriptions.by_subscription_id(short.id).patch(
            Subscription(expiration_date_time=new_exp)
        )
        assert abs((renewed.expiration_date_time - new_exp).total_seconds()) < 2
        with pytest.raises(ODataError) as too_far:
            await client.subscriptions.by_subscription_id(short.id).patch(
                Subscription(expiration_date_time=datetime.now(UTC) + timedelta(days=8))
            )
        assert too_far.value.response_status_code == 400
        await client.subscriptions.by_subscription_id(short.id).delete()
        assert (await client.subscriptions.get()).value == []
        with pytest.raises(ODataError) as missing:
            await client.subscriptions.by_subscription_id(short.id).get()
        assert missing.value.response_status_code == 404

    run(body, emu)
    emu.create_contact(USER, {"surname": "after delete"}, folder)
    assert emu.wait_notifications(5) and receiver.items() == []


def test_lifecycle_notifications_on_demand(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    sub_id = run(lambda client: client.subscriptions.post(_subscription(folder, receiver)), emu).id
    for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
        emu.send_lifecycle(sub_id, event)
    assert emu.wait_notifications(5)
    got = receiver.items()
    assert [n["lifecycleEvent"] for n in got] == ["reauthorizationRequired", "missed", "subscriptionRemoved"]
    assert all(n["clientState"] == "s3cret" and n["subscriptionId"] == sub_id and "resource" not in n for n in got)
    assert emu.list_subscriptions() == []  # subscriptionRemoved really removed it


def test_notification_faults_drop_and_duplicate(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    run(lambda client: client.subscriptions.post(_subscription(folder, receiver)), emu)
    emu.faults.notification_drop_rate = 1.0
    emu.create_contact(USER, {"surname": "lost"}, folder)
    assert emu.wait_notifications(5) and receiver.items() == []
    assert [d.dropped for d in emu.deliveries()] == [True]
    emu.faults.notification_drop_rate = 0.0
    emu.faults.notification_duplicate_rate = 1.0
    c = emu.create_contact(USER, {"surname": "twice"}, folder)
    assert emu.wait_notifications(5)
    assert [n["resourceData"]["id"] for n in receiver.items()] == [c["id"], c["id"]]


def test_notification_reorder_delivers_newest_first(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    run(lambda client: client.subscriptions.post(_subscription(folder, receiver)), emu)
    emu.faults.notification_reorder = True
    emu.faults.notification_delay_s = 0.2  # lets several notifications queue up
    ids = [emu.create_contact(USER, {"surname": f"R{i}"}, folder)["id"] for i in range(3)]
    assert emu.wait_notifications(5)
    assert [n["resourceData"]["id"] for n in receiver.items()] == list(reversed(ids))


def test_notification_delivery_is_retried_after_failure(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    run(lambda client: client.subscriptions.post(_subscription(folder, receiver)), emu)
    receiver.server.shutdown()  # endpoint down: first attempt fails
    port = receiver.server.server_address[1]
    receiver.server.server_close()
    emu.create_contact(USER, {"surname": "retried"}, folder)
    time.sleep(0.02)
    revived = ThreadingHTTPServer(("127.0.0.1", port), receiver.server.RequestHandlerClass)
    threading.Thread(target=revived.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assert emu.wait_notifications(5)
        attempts = [d.status for d in emu.deliveries()]
        assert attempts[0] is None and attempts[-1] == 202 and len(receiver.items()) == 1
    finally:
        revived.shutdown()
        revived.server_close()


# ---- $batch, throttling, counters ---------------------------------------------------------------------------------


async def raw_batch(client: GraphServiceClient, requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """docs/reference/graph.md §7.8(f): $batch as raw JSON through the SDK's adapter."""
    ri = RequestInformation(Method.POST, "{+baseurl}/$batch", {})
    ri.set_stream_content(json.dumps({"requests": requests}).encode(), "application/json")
    ri.headers.try_add("Accept", "application/json")
    raw = await client.request_adapter.send_primitive_async(ri, "bytes", {"XXX": ODataError})
    return {r["id"]: r for r in json.loads(raw)["responses"]}


def test_batch_with_per_item_status_and_429(emu: GraphEmulator, folder: str) -> None:
    existing = emu.create_contact(USER, {"surname": "B"}, folder)
    uid = emu.user_id(USER)
    base = f"/users/{uid}/contactFolders/{folder}/contacts"
    emu.faults.throttle(count=1, retry_after=7, mailbox=uid, endpoint="contact.update")
    hdr = {"Content-Type": "application/json"}

    async def body(client: GraphServiceClient) -> dict[str, dict[str, Any]]:
        out = await raw_batch(
            client,
            [
                {"id": "1", "method": "POST", "url": base, "headers": hdr, "body": {"surname": "New"}},
                {
                    "id": "2",
                    "method": "PATCH",
                    "url": f"{base}/{existing['id']}",
                    "headers": hdr,
                    "body": {"jobTitle": "Z"},
                },
                {"id": "3", "method": "GET", "url": f"{base}/nope"},
                {"id": "4", "method": "GET", "url": f"{base}/{existing['id']}", "dependsOn": ["2"]},
                {"id": "5", "method": "GET", "url": f"{base}/{existing['id']}?$select=surname"},
            ],
        )
        with pytest.raises(ODataError) as too_many:
            await raw_batch(client, [{"id": str(i), "method": "GET", "url": base} for i in range(21)])
        assert too_many.value.response_status_code == 400
        return out

    out = run(body, emu)
    assert out["1"]["status"] == 201 and out["1"]["body"]["surname"] == "New"
    assert out["2"]["status"] == 429 and out["2"]["headers"]["Retry-After"] == "7"
    assert out["3"]["status"] == 404 and out["3"]["body"]["error"]["code"] == "ErrorItemNotFound"
    assert out["4"]["status"] == 424
    assert out["5"]["status"] == 200 and out["5"]["body"]["surname"] == "B" and "jobTitle" not in out["5"]["body"]
    assert emu.get_contact(USER, existing["id"])["jobTitle"] is None  # the throttled PATCH did not run
    assert emu.counters.count(mailbox=uid, endpoint="contact.update", status=429) == 1
    assert emu.counters.count(endpoint="$batch") == 2


def test_throttling_retry_after_is_honoured_by_sdk_retry_handler(emu: GraphEmulator, folder: str) -> None:
    uid = emu.user_id(USER)
    emu.faults.throttle(count=1, retry_after=1, mailbox=uid, endpoint="contacts.list")

    async def body(client: GraphServiceClient) -> float:
        start = time.monotonic()
        page = await contacts(client, folder).get()
        assert page.value == []
        return time.monotonic() - start

    elapsed = run(body, emu)
    assert elapsed >= 0.95  # waited Retry-After
    assert emu.counters.count(mailbox=uid, endpoint="contacts.list") == 2
    assert emu.counters.count(mailbox=uid, endpoint="contacts.list", status=429) == 1
    assert emu.counters.count(mailbox=uid, endpoint="contacts.list", status=200) == 1


def test_global_throttle_and_503_without_retry(emu: GraphEmulator, folder: str) -> None:
    emu.faults.throttle(count=1, retry_after=3)  # any mailbox, any endpoint
    emu.faults.fail(503, count=1)

    async def body(client: GraphServiceClient) -> None:
        with pytest.raises(ODataError) as throttled:
            await client.users.by_user_id(OTHER).contact_folders.get(request_configuration=no_retry())
        assert throttled.value.response_status_code == 429
        assert throttled.value.response_headers["retry-after"] == "3"
        assert throttled.value.error.code == "TooManyRequests"
        with pytest.raises(ODataError) as unavailable:
            await contacts(client, folder).get(request_configuration=no_retry())
        assert unavailable.value.response_status_code == 503
        assert (await contacts(client, folder).get(request_configuration=no_retry())).value == []

    run(body, emu)


def test_503_after_execute_leaves_an_ambiguous_create(emu: GraphEmulator, folder: str) -> None:
    emu.faults.fail(503, count=1, endpoint="contacts.create", after_execute=True)

    async def body(client: GraphServiceClient) -> None:
        coll = contacts(client, folder)
        marker = [SingleValueLegacyExtendedProperty(id=MARKER, value="003Q")]
        with pytest.raises(ODataError) as ambiguous:
            await coll.post(Contact(surname="Maybe", single_value_extended_properties=marker), no_retry())
        assert ambiguous.value.response_status_code == 503
        flt = f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(MARKER)} and ep/value eq '003Q')"
        qp = ContactsRequestBuilder.ContactsRequestBuilderGetQueryParameters(filter=flt)
        assert len((await coll.get(request_configuration=cfg(qp))).value) == 1  # it was created after all

    run(body, emu)


def test_mailbox_concurrency_limit_gives_429_application_throttled(emu: GraphEmulator, folder: str) -> None:
    uid = emu.user_id(USER)
    emu.faults.mailbox_delay_s[uid] = 0.6

    async def body(client: GraphServiceClient) -> list[Any]:
        async def one() -> Any:
            try:
                return await contacts(client, folder).get(request_configuration=no_retry())
            except ODataError as e:
                return e

        results = await asyncio.gather(*(one() for _ in range(7)))
        other = await client.users.by_user_id(OTHER).contact_folders.get(request_configuration=no_retry())
        assert other.value == []  # another mailbox is not affected
        return results

    results = run(body, emu)
    errors = [r for r in results if isinstance(r, ODataError)]
    assert errors and emu.gate.peak(uid) == 4  # never more than 4 admitted at once, and some refused
    assert all(e.response_status_code == 429 and e.error.code == "ApplicationThrottled" for e in errors)
    assert all("MailboxConcurrency" in e.error.message and e.response_headers["retry-after"] for e in errors)
    assert emu.counters.count(mailbox=uid, endpoint="contacts.list", status=429) == len(errors)


def test_counters_per_mailbox_and_endpoint(emu: GraphEmulator, folder: str) -> None:
    async def body(client: GraphServiceClient) -> None:
        await contacts(client, folder).post(Contact(surname="A"))
        await contacts(client, folder).get()
        await contacts(client, folder).get()
        await client.users.by_user_id(OTHER).contact_folders.get()

    run(body, emu)
    a, b = emu.user_id(USER), emu.user_id(OTHER)
    assert emu.counters.count(mailbox=a, endpoint="contacts.create") == 1
    assert emu.counters.count(mailbox=a, endpoint="contacts.list") == 2
    assert emu.counters.count(mailbox=a) == 3 and emu.counters.count(mailbox=b) == 1
    snap = emu.counters.snapshot()
    assert {"mailbox": b, "endpoint": "contactFolders.list", "count": 1} in snap["requests"]
    emu.counters.reset()
    assert emu.counters.count() == 0


# ---- admin HTTP API and CLI -------------------------------------------------------------------------------------


def test_admin_http_api_acts_as_the_user(emu: GraphEmulator, folder: str, receiver: Receiver) -> None:
    run(lambda client: client.subscriptions.post(_subscription(folder, receiver)), emu)
    admin = f"{emu.root_url}/_admin"
    with httpx.Client(trust_env=False) as http:
        created = http.post(f"{admin}/users/{USER}/contacts", json={"folderId": folder, "surname": "Admin"})
        assert created.status_code == 201
        cid = created.json()["id"]
        edited = http.patch(f"{admin}/users/{USER}/contacts/{cid}", json={"jobTitle": "VP"})
        assert edited.json()["changeKey"] != created.json()["changeKey"]
        moved = http.post(f"{admin}/users/{USER}/contacts/{cid}/move", json={})
        assert moved.json()["parentFolderId"] == emu.default_folder_id(USER)
        assert http.delete(f"{admin}/users/{USER}/contacts/{cid}").status_code == 204
        http.patch(f"{admin}/faults", json={"delta_empty_pages": 2})
        assert emu.faults.delta_empty_pages == 2
        http.post(f"{admin}/faults/rules", json={"status": 429, "count": 1, "retryAfter": 1})
        assert http.get(f"{emu.base_url}/users", headers={"Authorization": "Bearer x"}).status_code == 429
        assert http.post(f"{admin}/notifications/wait", json={"timeout": 5}).json()["idle"] is True
        counters = http.get(f"{admin}/counters").json()
    assert [n["changeType"] for n in receiver.items()] == ["created", "updated", "deleted"]
    assert any(r["endpoint"] == "users.list" for r in counters["requests"])


def test_cli_starts_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.graph", "--port", "0", "--user", USER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        base = line.split()[2]
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1.0")
        r = httpx.get(f"{base}/users/{USER}/contactFolders", headers={"Authorization": "Bearer x"}, trust_env=False)
        assert r.status_code == 200 and r.json()["value"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_the_service_clock_counts_each_answered_request(emu: GraphEmulator) -> None:
    before_n, before_s = emu.service.requests, emu.service.seconds
    with httpx.Client(trust_env=False) as http:
        assert http.get(f"{emu.base_url}/users/{USER}/contactFolders",
                        headers={"Authorization": "Bearer x"}).status_code == 200
        assert http.get(f"{emu.base_url}/users/nobody@x.example/contactFolders",
                        headers={"Authorization": "Bearer x"}).status_code == 404
    assert emu.service.settle()  # the answer reaches the client before the server thread counts it
    assert emu.service.requests - before_n == 2
    assert emu.service.seconds > before_s


def test_a_deleted_contact_folder_goes_to_deleted_items_with_its_contacts(emu: GraphEmulator, folder: str) -> None:
    # docs/reference/graph.md §2.5: DELETE is soft (permanentDelete is the hard one)
    auth = {"Authorization": "Bearer t"}
    base = f"{emu.base_url}/users/{USER}/contactFolders"
    cid = emu.create_contact(USER, {"surname": "Kept"}, folder)["id"]
    first = httpx.get(f"{base}/{folder}/contacts/delta()", headers=auth).json()
    token = first["@odata.deltaLink"]
    assert httpx.delete(f"{base}/{folder}", headers=auth).status_code == 204
    listed = httpx.get(base, headers=auth).json()["value"]
    assert folder not in {f["id"] for f in listed}  # no longer a child of the Contacts folder
    moved = httpx.get(f"{base}/{folder}", headers=auth)
    assert moved.status_code == 200 and moved.json()["parentFolderId"] == emu.deleted_items_id(USER)
    kept = httpx.get(f"{emu.base_url}/users/{USER}/contacts/{cid}", headers=auth)
    assert kept.status_code == 200 and kept.json()["parentFolderId"] == folder  # same id, still in its folder
    assert httpx.get(token, headers=auth).status_code == 410  # the folder's sync state is gone
    assert httpx.post(f"{base}/{folder}/permanentDelete", headers=auth).status_code == 204
    assert httpx.get(f"{base}/{folder}", headers=auth).status_code == 404
    assert httpx.get(f"{emu.base_url}/users/{USER}/contacts/{cid}", headers=auth).status_code == 404


def test_a_folder_carries_extended_properties(emu: GraphEmulator) -> None:
    auth = {"Authorization": "Bearer t"}
    base = f"{emu.base_url}/users/{USER}/contactFolders"
    stamp = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SyncFolder"
    made = httpx.post(base, headers=auth, json={"displayName": "Stamped",
                                                "singleValueExtendedProperties": [{"id": stamp, "value": "1"}]})
    fid = made.json()["id"]
    expand = "?$expand=" + quote(f"singleValueExtendedProperties($filter=id eq '{stamp}')")
    got = httpx.get(f"{base}/{fid}{expand}", headers=auth).json()
    assert [ep["value"] for ep in got["singleValueExtendedProperties"]] == ["1"]
    listed = httpx.get(f"{base}{expand}&$select=id", headers=auth).json()["value"]
    stamps = [f["singleValueExtendedProperties"] for f in listed if f["id"] == fid]
    assert stamps == [got["singleValueExtendedProperties"]]
