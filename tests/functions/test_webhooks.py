"""graph_notifications, graph_lifecycle and salesforce_events against Azurite (no Graph/Salesforce I/O here)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

from sync import bootstrap
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
    assert queues.take("reconcile") == []  # the webhook only acknowledges and enqueues (§4.6)
    (notice,) = queues.take("graph-lifecycle")
    assert json.loads(notice.get_body()) == {"kind": "lifecycle", "event": "missed", "subscription_id": "sub-1",
                                             "mailbox": ANN}
    assert graph.process_lifecycle_message(root, notice.get_body().decode()) == "reconcile"
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


def test_startup_names_an_http_webhook_base_url_and_creates_nothing(settings, caplog) -> None:
    root = bootstrap.install(bootstrap.Root({**settings, "WEBHOOK_BASE_URL": "http://contoso.example"}))
    try:
        with caplog.at_level(logging.ERROR):
            assert graph.startup_upkeep(root) is None
    finally:
        bootstrap.reset()
    assert any("WEBHOOK_BASE_URL='http://contoso.example': Graph only calls https" in r.getMessage()
               for r in caplog.records)
    assert root.subscriptions.list_all() == []


def test_startup_skips_upkeep_when_every_mailbox_has_a_live_subscription(root) -> None:
    for i, mailbox in enumerate(root.mailboxes):
        _subscribe(root, f"sub-{i}", mailbox)
    assert graph.startup_upkeep(root) == {}  # one Table query, no Graph call


def test_last_notification_time_is_kept_per_mailbox_for_the_status_page(root) -> None:
    _subscribe(root)
    graph._NOTED.clear()
    resp = user_function(graph.graph_notifications)(
        http("POST", "http://localhost/api/graph/notifications", json.dumps({"value": [_item("c1")]}).encode()))
    assert resp.status_code == 202
    noted = root.checkpoints.get(ANN, "graph.subscription.lastNotification")
    assert noted and datetime.fromisoformat(noted) > datetime.now(UTC) - timedelta(minutes=1)


# ---------------------------------------------------------------------------------------------- bounds (issue 19)


NOTIFY = "http://localhost/api/graph/notifications"


def _reads() -> int:
    from sync.adapters.storage import REQUESTS

    return REQUESTS.snapshot().get("read", 0)


def _made_up(n: int, prefix: str) -> bytes:
    return json.dumps({"value": [{"subscriptionId": f"{prefix}{i:08d}"} for i in range(n)]}).encode()


def test_a_flood_graph_could_never_send_is_refused_before_any_table_read(root, queues) -> None:
    fn = user_function(graph.graph_notifications)
    for route in ("graph/notifications", "graph/lifecycle"):
        before = _reads()
        flood = fn(http("POST", f"http://localhost/api/{route}", _made_up(20_000, "flood")))
        assert flood.status_code == 413 and "20000 notifications" in json.loads(flood.get_body())["error"]
        wide = fn(http("POST", f"http://localhost/api/{route}", _made_up(graph.MAX_NOTIFICATIONS, "wide")))
        assert wide.status_code == 400 and "1000 distinct subscriptions" in json.loads(wide.get_body())["error"]
        assert _reads() == before
    assert queues.take("contact-changes") == [] and queues.take("reconcile") == []


def test_unknown_subscription_ids_are_read_once_and_drops_are_logged_in_one_line(root, queues, caplog) -> None:
    _subscribe(root)
    fn = user_function(graph.graph_notifications)
    limit = graph.distinct_limit(len(root.mailboxes))
    body = {"value": [{"subscriptionId": f"made-up-{i}"} for i in range(limit - 1)] + [_item("c-1")]}
    caplog.set_level("INFO", logger="sync")
    before = _reads()
    assert fn(http("POST", NOTIFY, json.dumps(body).encode())).status_code == 202
    assert _reads() - before <= limit  # the known subscription may come from the store's own cache
    lines = [r for r in caplog.records if r.name == "sync.triggers.graph"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert f"'unknown_subscription': {limit - 1}" in lines[0].message
    caplog.clear()
    before = _reads()
    body["value"][-1] = _item("c-2")
    assert fn(http("POST", NOTIFY, json.dumps(body).encode())).status_code == 202
    assert _reads() == before  # the unknown ids are remembered, the known one is cached by the store
    assert [m["item_id"] for m in queues.bodies("contact-changes")] == ["c-1", "c-2"]
    assert len([r for r in caplog.records if r.name == "sync.triggers.graph"]) == 1


def test_unknown_ids_are_forgotten_after_their_ttl() -> None:
    now = [0.0]
    unknown = graph.UnknownIds(ttl_s=30.0, size=3, clock=lambda: now[0])
    unknown.add("a")
    assert "a" in unknown and "b" not in unknown
    now[0] = 29.9
    assert "a" in unknown
    now[0] = 30.0
    assert "a" not in unknown
    for sub_id in ("b", "c", "d"):
        unknown.add(sub_id)
    assert "d" in unknown and "b" not in unknown  # full: it started over


def test_duplicate_json_keys_are_400_on_both_webhooks(root, queues) -> None:
    _subscribe(root)
    item = json.dumps(_item("c-1"))[1:-1]
    for body in (b'{"value": [], "value": [{' + item.encode() + b"}]}",
                 b'{"value": [{' + item.encode() + b', "subscriptionId": "other"}]}'):
        resp = user_function(graph.graph_notifications)(http("POST", NOTIFY, body))
        assert resp.status_code == 400 and json.loads(resp.get_body()) == {"error": "body has a duplicate key"}
    events = (b'[{"ChangeEventHeader": {"entityName": "Contact", "changeType": "UPDATE", '
              b'"recordIds": ["003000000000001AAA"], "recordIds": []}}]')
    resp = user_function(salesforce.salesforce_events)(http(
        "POST", "http://localhost/api/salesforce/events", events, headers=sign_events(events, HMAC_SECRET,
                                                                                       int(time.time()))))
    assert resp.status_code == 400 and "duplicate key" in json.loads(resp.get_body())["error"]
    assert queues.take("contact-changes") == []


def test_every_answer_of_the_webhooks_says_nosniff(root, queues) -> None:
    _subscribe(root)
    fn = user_function(graph.graph_notifications)
    answers = [
        fn(http("POST", NOTIFY + "?validationToken=%3Cscript%3E")),
        fn(http("POST", NOTIFY, json.dumps({"value": [_item("c-1")]}).encode())),
        fn(http("POST", NOTIFY, b"{oops")),
        fn(http("POST", NOTIFY, b" " * (1024 * 1024 + 1))),
        user_function(salesforce.salesforce_events)(http("POST", "http://localhost/api/salesforce/events", b"[]")),
    ]
    assert [r.status_code for r in answers] == [200, 202, 400, 413, 401]
    assert all(r.headers.get("X-Content-Type-Options") == "nosniff" for r in answers)
