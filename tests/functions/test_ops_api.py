"""The ops API the CLI uses: recent jobs, poison list / requeue / discard, subscriptions remove (Azurite)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sync.errors import BadData
from sync.ports import ContactChange, StoredSubscription
from sync.triggers import ops, worker
from sync.triggers.reconcile import start_job
from tests.functions.conftest import ANN, BOB, http, user_function
from tests.functions.test_queue_functions import HINT, Failing, message


def call(fb: Any, method: str, path: str, body: object = None, **route: str) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode() if body is not None else b""
    resp = user_function(fb)(http(method, f"http://localhost/api/{path}", raw, route_params=route))
    return resp.status_code, json.loads(resp.get_body())


def poison_one(root) -> str:
    root.override(engine=Failing(BadData("LastName is required", item_id="003x")))
    user_function(worker.contact_worker)(message(HINT))
    code, doc = call(ops.ops_poison_list, "GET", "ops/poison/contact-changes", queue="contact-changes")
    assert code == 200 and doc["depth"] == 1
    (msg,) = doc["messages"]
    assert msg["error"] == "BadData" and msg["message"]["item_id"] == "003000000000001AAA"
    return str(msg["id"])


def test_poison_requeue_sends_the_original_hint_back(root, queues) -> None:
    msg_id = poison_one(root)
    assert call(ops.ops_poison_act, "POST", f"ops/poison/contact-changes/{msg_id}", {"action": "requeue"},
                queue="contact-changes", id=msg_id)[0] == 200
    assert queues.bodies("contact-changes-poison") == []
    (hint,) = queues.bodies("contact-changes")
    assert ContactChange.model_validate(hint) == ContactChange.model_validate_json(HINT)


def test_poison_discard_drops_it_and_unknown_ids_are_404(root, queues) -> None:
    msg_id = poison_one(root)
    assert call(ops.ops_poison_act, "POST", "ops/poison/contact-changes/nope", {"action": "discard"},
                queue="contact-changes", id="nope")[0] == 404
    assert call(ops.ops_poison_act, "POST", f"ops/poison/contact-changes/{msg_id}", {"action": "eat"},
                queue="contact-changes", id=msg_id)[0] == 400
    assert call(ops.ops_poison_act, "POST", f"ops/poison/contact-changes/{msg_id}", {"action": "discard"},
                queue="contact-changes", id=msg_id)[0] == 200
    assert queues.bodies("contact-changes-poison") == [] and queues.bodies("contact-changes") == []
    assert call(ops.ops_poison_list, "GET", "ops/poison/other", queue="other")[0] == 404


def test_recent_jobs_list_every_origin(root, queues) -> None:
    start_job(root, [ANN], "delta", origin="lifecycle")
    start_job(root, [ANN, BOB], "full", dry_run=True)
    code, doc = call(ops.ops_jobs, "GET", "ops/jobs")
    assert code == 200 and [j["origin"] for j in doc["jobs"]] == ["api", "lifecycle"]
    assert doc["jobs"][0]["dryRun"] is True and doc["jobs"][0]["progress"] == {"total": 2, "done": 0}


class FakeGraphSubscriptions:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, subscription_id: str) -> None:
        self.deleted.append(subscription_id)


def test_subscriptions_remove_deletes_now_without_the_timer(root, queues) -> None:
    graph = FakeGraphSubscriptions()
    root.override(graph_subscriptions=graph)
    for mailbox in (ANN, BOB):
        root.subscriptions.put(StoredSubscription(id=f"s-{mailbox[:3]}", mailbox=mailbox, resource="r",
                                                  expires_at=datetime.now(UTC) + timedelta(days=2),
                                                  client_state_digest="0" * 64))
    code, doc = call(ops.ops_subscriptions, "POST", "ops/subscriptions", {"action": "remove", "mailboxes": [ANN]})
    assert code == 200 and doc["counts"] == {"deleted": 1} and graph.deleted == ["s-ann"]
    assert [s.mailbox for s in root.subscriptions.list_all()] == [BOB]
    code, doc = call(ops.ops_subscriptions, "POST", "ops/subscriptions", {"action": "remove"})
    assert doc["counts"] == {"deleted": 1} and root.subscriptions.list_all() == []
    assert call(ops.ops_subscriptions, "POST", "ops/subscriptions", {"action": "nuke"})[0] == 400
