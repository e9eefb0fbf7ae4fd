"""The review inbox over HTTP (GET /api/review, POST /api/review/{id}) with the items in Azurite and in-memory sides:
list with the synced fields side by side, decide, the worker applies the decision, the item is gone."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from sync.model import Contact, Side
from sync.triggers import review, worker
from tests.functions.conftest import ANN, BOB, http, user_function
from tests.world import memory_engine_in

ADA = Contact().with_values({"first_name": "Ada", "last_name": "Byron", "email": "ada@analytical.example",
                             "company": "Example"})


@pytest.fixture
def ambiguous(root, queues):
    m365, sf = memory_engine_in(root)
    sf_ids = [sf.user_create(ANN, ADA), sf.user_create(ANN, ADA.with_values({"job_title": "CTO"}))]
    m_id = m365.user_create(ANN, ADA)
    from sync.reconcile import reconcile_mailbox

    reconcile_mailbox(root.engine, ANN)
    return root, m_id, sf_ids


def listing(**params: str) -> dict[str, Any]:
    resp = user_function(review.review_list)(http("GET", "http://localhost/api/review", params=params))
    assert resp.status_code == 200, resp.get_body()
    return json.loads(resp.get_body())  # type: ignore[no-any-return]


def post(item_id: str, body: object, key: str = "ops-key-ann") -> Any:
    raw = json.dumps(body).encode()
    return user_function(review.review_decide)(http("POST", f"http://localhost/api/review/{item_id}", raw,
                                                    headers={"x-functions-key": key}, route_params={"id": item_id}))


def test_review_list_counts_items_and_shows_the_candidates_side_by_side(ambiguous) -> None:
    root, m_id, sf_ids = ambiguous
    doc = listing(mailbox=ANN)
    assert doc["total"] == 3  # the Outlook contact and the two Salesforce contacts that match it
    (item,) = [i for i in doc["items"] if i["recordId"] == m_id]
    assert item["record"]["fields"]["last_name"] == "Byron" and item["state"] == "open"
    assert {c["id"] for c in item["candidates"]} == set(sf_ids)
    assert {c["fields"]["job_title"] for c in item["candidates"]} == {None, "CTO"}
    page = listing(mailbox=ANN, limit="2", fields="false")
    assert len(page["items"]) == 2 and page["next"] == 2 and "record" not in page["items"][0]
    assert listing(mailbox=BOB)["total"] == 0


def test_review_decision_is_applied_by_the_worker_and_the_item_is_gone(ambiguous, queues, caplog) -> None:
    root, m_id, sf_ids = ambiguous
    (item,) = [i for i in listing(fields="false")["items"] if i["recordId"] == m_id]
    with caplog.at_level(logging.DEBUG):
        resp = post(item["id"], {"decision": "link", "candidates": [sf_ids[1]]})
    assert resp.status_code == 202, resp.get_body()
    by = json.loads(resp.get_body())["decidedBy"]
    assert by.startswith("key:") and "ops-key-ann" not in by
    assert "Byron" not in caplog.text and "ada@" not in caplog.text
    for msg in queues.take("contact-changes"):
        user_function(worker.contact_worker)(msg)
    assert m_id not in {i["recordId"] for i in listing()["items"]}
    link = root.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id == sf_ids[1]
    decisions = [e for e in root.audit.recent(ANN, 50) if e.action == "decision"]
    assert decisions and by in decisions[0].reason


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"decision": "merge"}, 400, "decision must be"),
    ({"decision": "link"}, 400, "exactly one"),
    ({"decision": "ignore", "candidates": ["x"]}, 400, "not a candidate"),
    ({"decision": "link", "extra": 1}, 400, "body must be"),
])
def test_review_decision_that_does_not_fit_is_refused(ambiguous, body, status, fragment) -> None:
    _, m_id, _ = ambiguous
    (item,) = [i for i in listing(fields="false")["items"] if i["recordId"] == m_id]
    resp = post(item["id"], body)
    assert resp.status_code == status and fragment in json.loads(resp.get_body())["error"]


def test_review_unknown_item_is_404(root, queues) -> None:
    memory_engine_in(root)
    assert post("0123456789abcdef01234567", {"decision": "ignore"}).status_code == 404
    assert post("../etc", {"decision": "ignore"}).status_code == 404
