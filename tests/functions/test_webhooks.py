"""graph_notifications, graph_lifecycle and salesforce_events against Azurite (no Graph/Salesforce I/O here)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from sync.adapters.graph import client_state_digest
from sync.adapters.salesforce.pubsub import sign_events
from sync.ports import StoredSubscription
from sync.triggers import graph, salesforce
from tests.functions.conftest import ANN, HMAC_SECRET, http, user_function

SECRET_STATE = "a-client-state-secret"


def _subscribe(root, sub_id: str = "sub-1", mailbox: str = ANN) -> None:
    root.subscriptions.put(StoredSubscription(
        id=sub_id, mailbox=mailbox, resource="users/u1/contactFolders/f1/contacts",
        expires_at=datetime.now(UTC) + timedelta(days=2), client_state_digest=client_state_digest(SECRET_STATE)))


def _item(contact_id: str, state: str = SECRET_STATE, sub_id: str = "sub-1") -> dict[str, object]:
    return {"subscriptionId": sub_id, "clientState": state, "changeType": "updated",
            "resource": f"Users/u1/contactFolders/f1/Contacts/{contact_id}",
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "tenantId": "t",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Contact", "id": contact_id}}


def test_handshake_echoes_the_url_decoded_token_as_text_plain(root) -> None:
    for fb, route in ((graph.graph_notifications, "graph/notifications"), (graph.graph_lifecycle, "graph/lifecycle")):
        req = http("POST", f"http://localhost/api/{route}?validationToken=Validation%3A%20a%2Bb%26c%3D%3Cx%3E")
        resp = user_function(fb)(req)
        assert resp.status_code == 200
        assert resp.mimetype == "text/plain"
        assert resp.get_body().decode() == "Validation: a+b&c=<x>"
        # the host passes the query as params too (already decoded)
        resp = user_function(fb)(http("POST", f"http://localhost/api/{route}", params={"validationToken": "a b"}))
        assert resp.get_body() == b"a b"


def test_valid_notifications_enqueue_hints_and_a_wrong_client_state_is_dropped_and_counted(root, queues) -> None:
    _subscribe(root)
    before = graph.COUNTERS["bad_client_state"], graph.COUNTERS["unknown_subscription"]
    body = {"value": [_item("c-1"), _item("c-1"), _item("c-2", state="guessed"), _item("c-3", sub_id="nope")]}
    started = time.perf_counter()
    resp = user_function(graph.graph_notifications)(http("POST", "http://localhost/api/graph/notifications",
                                                         json.dumps(body).encode()))
    elapsed = time.perf_counter() - started
    assert resp.status_code == 202
    assert elapsed < 3.0  # Graph's ack budget
    assert queues.bodies("contact-changes") == [{"kind": "contact", "source": "m365", "item_id": "c-1",
                                                 "mailbox": ANN}]
    assert graph.COUNTERS["bad_client_state"] == before[0] + 1
    assert graph.COUNTERS["unknown_subscription"] == before[1] + 1


def test_messages_are_base64_as_the_queue_trigger_expects(root, queues) -> None:
    _subscribe(root)
    user_function(graph.graph_notifications)(http("POST", "http://localhost/api/graph/notifications",
                                                  json.dumps({"value": [_item("c-9")]}).encode()))
    import base64

    (raw,) = queues.raw("contact-changes")
    assert json.loads(base64.b64decode(raw))["item_id"] == "c-9"


def test_bad_json_is_400_and_oversize_is_413(root, queues) -> None:
    fn = user_function(graph.graph_notifications)
    assert fn(http("POST", "http://localhost/api/graph/notifications", b"{not json")).status_code == 400
    assert fn(http("POST", "http://localhost/api/graph/notifications", b'{"value": 3}')).status_code == 400
    big = b'{"value": [' + b" " * (1024 * 1024 + 1) + b"]}"
    assert fn(http("POST", "http://localhost/api/graph/notifications", big)).status_code == 413
    assert queues.take("contact-changes") == []


def test_lifecycle_missed_enqueues_a_reconcile_and_a_wrong_state_nothing(root, queues) -> None:
    _subscribe(root)
    fn = user_function(graph.graph_lifecycle)
    bad = {"value": [{"subscriptionId": "sub-1", "clientState": "wrong", "lifecycleEvent": "missed"}]}
    assert fn(http("POST", "http://localhost/api/graph/lifecycle", json.dumps(bad).encode())).status_code == 202
    assert queues.take("reconcile") == []
    good = {"value": [{"subscriptionId": "sub-1", "clientState": SECRET_STATE, "lifecycleEvent": "missed",
                       "tenantId": "t", "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z"}]}
    assert fn(http("POST", "http://localhost/api/graph/lifecycle", json.dumps(good).encode())).status_code == 202
    (msg,) = queues.bodies("reconcile")
    assert msg["mailbox"] == ANN and msg["mode"] == "delta"
    job = root.jobs.get(msg["job_id"])  # a job like the API's: visible on the status page and in the CLI
    assert job is not None and job.origin == "lifecycle" and list(job.mailboxes) == [ANN]


def _events(*ids: str) -> bytes:
    return json.dumps([{"ChangeEventHeader": {"entityName": "Contact", "changeType": "UPDATE",
                                              "recordIds": list(ids)}}]).encode()


def test_signed_push_enqueues_hints(root, queues) -> None:
    body = _events("003000000000001AAA", "003000000000002AAA")
    headers = sign_events(body, HMAC_SECRET, int(time.time()))
    resp = user_function(salesforce.salesforce_events)(http("POST", "http://localhost/api/salesforce/events", body,
                                                            headers=headers))
    assert resp.status_code == 202 and json.loads(resp.get_body()) == {"accepted": 2}
    assert {m["item_id"] for m in queues.bodies("contact-changes")} == {"003000000000001AAA", "003000000000002AAA"}


def test_bad_signature_or_stale_timestamp_is_401_and_enqueues_nothing(root, queues) -> None:
    fn = user_function(salesforce.salesforce_events)
    body = _events("003000000000001AAA")
    forged = sign_events(body, "someone-else", int(time.time()))
    stale = sign_events(body, HMAC_SECRET, int(time.time()) - 3600)
    for headers in (forged, stale, {}):
        assert fn(http("POST", "http://localhost/api/salesforce/events", body, headers=headers)).status_code == 401
    signed_garbage = b"[1, 2]"
    headers = sign_events(signed_garbage, HMAC_SECRET, int(time.time()))
    assert fn(http("POST", "http://localhost/api/salesforce/events", signed_garbage,
                   headers=headers)).status_code == 400
    assert queues.take("contact-changes") == []
