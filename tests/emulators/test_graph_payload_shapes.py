"""The Graph emulator's payloads against the example payloads of docs/reference/graph.md, field for field.

Each DOC_* constant is copied from docs/reference/graph.md (section named); the test compares key sets recursively and
the JSON type of every value (values themselves are ids, dates and secrets, so they differ).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from emulators.graph import GraphEmulator

USER = "shapes@contoso.example"

# §4.4 basic change notification (one item of "value").
DOC_NOTIFICATION = {
    "id": "lsgTZMr9KwAAA",
    "subscriptionId": "{subscription_guid}",
    "subscriptionExpirationDateTime": "2016-03-19T22:11:09.952Z",
    "clientState": "secretClientValue",
    "changeType": "created",
    "resource": "users/{user_guid}@{tenant_guid}/messages/{long_id_string}",
    "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    "resourceData": {
        "@odata.type": "#Microsoft.Graph.Message",
        "@odata.id": "Users/{user_guid}@{tenant_guid}/Messages/{long_id_string}",
        "@odata.etag": 'W/"CQAAABYAAADkrWGo7bouTKlsgTZMr9KwAAAUWRHf"',
        "id": "{long_id_string}",
    },
}
# §4.6 lifecycle notification.
DOC_LIFECYCLE = {
    "subscriptionId": "<subscription_guid>",
    "subscriptionExpirationDateTime": "2019-03-20T11:00:00.0000000Z",
    "tenantId": "<tenant_guid>",
    "clientState": "<secretClientState>",
    "lifecycleEvent": "subscriptionRemoved",
}
# §3.2 last page of a delta round: a deletion and an update (message shape; contacts differ in type only).
DOC_DELTA_LAST_PAGE = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)",
    "@odata.deltaLink": "https://graph.microsoft.com/v1.0/me/mailfolders('AQMkADNkNAAAgEMAAAA')/messages/delta?$deltatoken=x",
    "value": [],
}
DOC_DELTA_REMOVED = {
    "@odata.type": "#microsoft.graph.message", "id": "AAMkADk0…AAA=", "@removed": {"reason": "deleted"},
}
DOC_DELTA_ITEM_META = {"@odata.type", "@odata.etag", "id"}  # plus the selected properties
# §3.2 page with more data.
DOC_DELTA_NEXT_PAGE_KEYS = {"@odata.nextLink", "value"}
# §4.2 subscription create response.
DOC_SUBSCRIPTION = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
    "id": "5522bd62-7c96-4530-85b0-00b916f6151a",
    "resource": "users/622eaaff-…/contactFolders/{folderId}/contacts",
    "applicationId": "507c3b9a-67b8-463d-88a2-15a8cefb2111",
    "changeType": "created,updated,deleted",
    "clientState": "…",
    "notificationUrl": "https://sync.example.com/graph/notify?tenant=contoso",
    "notificationQueryOptions": None,
    "notificationContentType": None,
    "lifecycleNotificationUrl": "https://sync.example.com/graph/lifecycle",
    "expirationDateTime": "2026-11-30T10:00:00Z",
    "creatorId": "a4c7bd34-4f3b-46b7-a25d-b63c1e2a2842",
    "includeResourceData": None,
    "latestSupportedTlsVersion": "v1_2",
    "encryptionCertificate": None,
    "encryptionCertificateId": None,
    "notificationUrlAppId": None,
}
# §5 throttling error envelope (outer keys) and §7.3 innerError keys.
DOC_ERROR_KEYS = {"code", "message", "innerError"}


def kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def same_shape(ours: dict[str, Any], doc: dict[str, Any], path: str = "") -> list[str]:
    """Differences in keys and JSON types between two objects, recursively (lists compared by first item)."""
    diffs = [f"{path}{k}: missing" for k in doc if k not in ours]
    diffs += [f"{path}{k}: not in the doc example" for k in ours if k not in doc]
    for k in set(doc) & set(ours):
        a, b = ours[k], doc[k]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += same_shape(a, b, f"{path}{k}.")
        elif kind(a) != kind(b) and kind(b) != "null":
            diffs.append(f"{path}{k}: {kind(a)} vs doc {kind(b)}")
    return diffs


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                token = parse_qs(urlsplit(self.path).query).get("validationToken")
                out = token[0].encode() if token else b""
                if not token:
                    outer.posts.append(json.loads(body))
                self.send_response(200 if token else 202)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[USER], validation_timeout_s=2.0) as g:
        yield g


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": "Bearer x"}, trust_env=False) as client:
        yield client


def test_notification_lifecycle_and_subscription_shapes(emu: GraphEmulator, http: httpx.Client) -> None:
    receiver = Receiver()
    try:
        folder = emu.create_folder(USER, "Salesforce_Sync")
        uid = emu.user_id(USER)
        expires = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        created = http.post(f"{emu.base_url}/subscriptions", json={
            "changeType": "created,updated,deleted", "notificationUrl": receiver.url,
            "lifecycleNotificationUrl": receiver.url, "resource": f"users/{uid}/contactFolders/{folder}/contacts",
            "expirationDateTime": expires, "clientState": "secret",
        })
        assert created.status_code == 201
        sub = created.json()
        # notificationContentType is not in the CSDL (docs/reference/graph.md §4.2); the emulator leaves it out.
        doc_sub = {k: v for k, v in DOC_SUBSCRIPTION.items() if k != "notificationContentType"}
        assert same_shape(sub, doc_sub) == []

        emu.create_contact(USER, {"surname": "Shape"}, folder)
        assert emu.wait_notifications(5)
        note = receiver.posts[-1]
        assert list(note) == ["value"]
        assert same_shape(note["value"][0], DOC_NOTIFICATION) == []
        assert note["value"][0]["resourceData"]["@odata.type"] == "#Microsoft.Graph.Contact"

        emu.send_lifecycle(sub["id"], "missed")
        assert emu.wait_notifications(5)
        life = receiver.posts[-1]
        assert list(life) == ["value"] and same_shape(life["value"][0], DOC_LIFECYCLE) == []
    finally:
        receiver.close()


def test_delta_page_shapes(emu: GraphEmulator, http: httpx.Client) -> None:
    folder = emu.create_folder(USER, "Salesforce_Sync")
    keep = emu.create_contact(USER, {"surname": "Keep"}, folder)
    gone = emu.create_contact(USER, {"surname": "Gone"}, folder)
    emu.create_contact(USER, {"surname": "Third"}, folder)
    url = f"{emu.base_url}/users/{USER}/contactFolders/{folder}/contacts/delta()?$select=surname"
    first = http.get(url, headers={"Prefer": "odata.maxpagesize=2"}).json()
    assert set(first) - {"@odata.context"} == DOC_DELTA_NEXT_PAGE_KEYS
    link = first["@odata.nextLink"]
    while "@odata.nextLink" in (page := http.get(link).json()):
        link = page["@odata.nextLink"]
    emu.delete_contact(USER, gone["id"])
    emu.update_contact(USER, keep["id"], {"surname": "Kept"})
    last = http.get(page["@odata.deltaLink"]).json()
    assert same_shape({**last, "value": []}, DOC_DELTA_LAST_PAGE) == []
    removed = [v for v in last["value"] if "@removed" in v]
    updated = [v for v in last["value"] if "@removed" not in v]
    assert len(removed) == 1 and same_shape(removed[0], DOC_DELTA_REMOVED) == []
    assert removed[0]["@odata.type"] == "#microsoft.graph.contact"
    assert len(updated) == 1 and set(updated[0]) == DOC_DELTA_ITEM_META | {"surname"}


def test_error_envelope_shape(emu: GraphEmulator, http: httpx.Client) -> None:
    emu.faults.throttle(count=1, retry_after=3)
    resp = http.get(f"{emu.base_url}/users/{USER}/contactFolders")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    err = resp.json()["error"]
    assert set(err) == DOC_ERROR_KEYS and {"request-id", "date"} <= set(err["innerError"])
