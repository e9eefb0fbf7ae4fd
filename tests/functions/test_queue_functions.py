"""contact_worker and the reconcile functions over an engine with in-memory sides (links, audit, jobs and queues
in Azurite): dispositions by typed error, poison copies with reasons, reconcile jobs end to end."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from sync.errors import BadData, Throttled, Transient
from sync.model import Contact, Side
from sync.ports import ContactChange
from sync.triggers import reconcile, status, worker
from sync.triggers.errors import MAX_DEQUEUE_COUNT
from tests.functions.conftest import ANN, BOB, http, user_function
from tests.world import memory_engine_in

PEOPLE = [("Ada", "Byron", "ada@analytical.example"), ("Grace", "Hopper", "grace@navy.example"),
          ("Alan", "Turing", "alan@bletchley.example")]


def person(first: str, last: str, email: str) -> Contact:
    return Contact().with_values({"first_name": first, "last_name": last, "email": email, "company": "Example"})


@pytest.fixture
def memory_root(root):
    return (root, *memory_engine_in(root))


def message(body: str, dequeue_count: int = 1) -> QueueMessage:
    return QueueMessage(id="m-1", body=body.encode(), dequeue_count=dequeue_count, pop_receipt="p")


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def sync_contact(self, change: ContactChange) -> Any:
        raise self.exc


HINT = ContactChange(source=Side.SALESFORCE, item_id="003000000000001AAA").model_dump_json()


def test_worker_syncs_a_salesforce_contact_into_the_owner_folder(memory_root, queues) -> None:
    root, m365, sf = memory_root
    sf_id = sf.user_create(ANN, person(*PEOPLE[0]))
    user_function(worker.contact_worker)(message(ContactChange(source=Side.SALESFORCE, item_id=sf_id)
                                                 .model_dump_json()))
    (copy,) = list(m365.stream(ANN))
    assert copy.contact.get("last_name") == "Byron"
    (link,) = list(root.links.list(ANN))
    assert link.sf_id == sf_id and link.m365_id == copy.id


def test_unreadable_message_is_poisoned_with_the_reason(root, queues) -> None:
    user_function(worker.contact_worker)(message('{"kind": "contact", "source": "nowhere"}'))
    (poison,) = queues.bodies("contact-changes-poison")
    assert poison["error"] == "BadData" and "unreadable" in poison["reason"]
    assert poison["message"] == {"kind": "contact", "source": "nowhere"}
    assert any(e.action == "poison" for e in root.audit.recent(worker.UNROUTED))


def test_permanent_error_completes_with_audit_row_and_poison_copy(root, queues) -> None:
    root.override(engine=Failing(BadData("LastName is required", fields=("last_name",), item_id="003x")))
    user_function(worker.contact_worker)(message(HINT))  # completes: no exception
    (poison,) = queues.bodies("contact-changes-poison")
    assert poison["error"] == "BadData" and "LastName is required" in poison["reason"]
    assert poison["message"]["item_id"] == "003000000000001AAA"


def test_retryable_error_is_raised_until_the_last_attempt_then_poisoned(root, queues) -> None:
    root.override(engine=Failing(Transient("graph failed", side="m365")))
    fn = user_function(worker.contact_worker)
    with pytest.raises(Transient):
        fn(message(HINT, dequeue_count=1))
    assert queues.take("contact-changes-poison") == []
    fn(message(HINT, dequeue_count=MAX_DEQUEUE_COUNT))
    (poison,) = queues.bodies("contact-changes-poison")
    assert poison["reason"].startswith(f"retries exhausted after {MAX_DEQUEUE_COUNT} attempts: Transient")


def test_throttled_is_sent_again_later_and_completed(root, queues) -> None:
    root.override(engine=Failing(Throttled("busy", retry_after=120)))
    user_function(worker.contact_worker)(message(HINT))
    assert queues.take("contact-changes") == []  # hidden for 120 s
    assert queues.take("contact-changes-poison") == []
    props = queues.client("contact-changes").get_queue_properties()
    assert props.approximate_message_count == 1


# ---------------------------------------------------------------------------------------------- reconcile


def start(body: object) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return user_function(reconcile.reconcile_start)(http("POST", "http://localhost/api/reconcile", raw))


def status_of(job_id: str) -> tuple[int, dict[str, Any]]:
    resp = user_function(reconcile.reconcile_status)(http("GET", f"http://localhost/api/reconcile/{job_id}",
                                                          route_params={"job": job_id}))
    return resp.status_code, json.loads(resp.get_body())


def run_reconciles(queues) -> int:
    msgs = queues.take("reconcile")
    for m in msgs:
        user_function(reconcile.mailbox_reconciler)(m)
    return len(msgs)


@pytest.mark.parametrize(("body", "fragment"), [
    ({"mode": "sideways"}, "mode must be"),
    ({"mailboxes": "ann@contoso.com"}, 'must be "all" or a list'),
    ({"mailboxes": ["carol@contoso.com"]}, "1 mailbox(es) not in scope: carol@contoso.com"),
    ({"mailboxes": "all", "dryRun": "yes"}, "dryRun must be true or false"),
    ({"mailbox": [ANN]}, "unknown key"),
    (b"[1]", "JSON object"),
    (b"{oops", "not JSON"),
    # the scope is named explicitly: no body, {} or a flag alone never reconciles every mailbox
    (b"", "not JSON"),
    ({}, 'name the scope: "mailboxes": "all"'),
    ({"dryRun": True, "mode": "full"}, "name the scope"),
    ({"mailboxes": []}, 'send "mailboxes": "all"'),
    # the last duplicate would win in Python's decoder: {"dryRun": true, "dryRun": false} would be a real run
    (b'{"mailboxes": "all", "dryRun": true, "dryRun": false}', "duplicate key"),
    (b'{"mailboxes": "all", "mode": {"a": 1, "a": 2}}', "duplicate key"),
])
def test_reconcile_start_rejects_bad_requests(root, queues, body, fragment) -> None:
    resp = start(body)
    assert resp.status_code == 400
    assert fragment in json.loads(resp.get_body())["error"]
    assert queues.take("reconcile") == []


def test_reconcile_refusals_never_echo_unbounded_input_and_big_bodies_are_413(root, queues) -> None:
    many = [f"{'x' * 500}{i}@nowhere.example" for i in range(100)]
    resp = start({"mailboxes": many, "dryRun": True})
    error = json.loads(resp.get_body())["error"]
    assert resp.status_code == 400 and error.startswith("100 mailbox(es) not in scope: ")
    assert error.endswith(" and 95 more") and len(error) < 600
    keys = {f"k{i}{'y' * 300}": 1 for i in range(50)}
    error = json.loads(start({"mailboxes": "all", **keys}).get_body())["error"]
    assert "and 45 more" in error and len(error) < 600
    resp = start(json.dumps({"mailboxes": "all", "mode": "full", "pad": " " * 70_000}).encode())
    assert resp.status_code == 413 and queues.take("reconcile") == []
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_dry_run_reconcile_plans_and_writes_nothing(memory_root, queues) -> None:
    root, m365, sf = memory_root
    for p in PEOPLE:
        sf.user_create(ANN, person(*p))
    resp = start({"mailboxes": [ANN], "mode": "full", "dryRun": True})
    assert resp.status_code == 202
    job = json.loads(resp.get_body())
    assert resp.headers["Location"] == f"/api/reconcile/{job['id']}" == job["status"]
    assert status_of(job["id"]) == (200, status_of(job["id"])[1])
    assert status_of(job["id"])[1]["state"] == "queued"
    assert run_reconciles(queues) == 1
    code, doc = status_of(job["id"])
    assert code == 200 and doc["state"] == "done" and doc["dryRun"] is True
    assert doc["planned"].get("create:m365") == 3 and doc["applied"] == {}
    assert list(m365.stream(ANN)) == [] and m365.writes == [] and sf.writes == []
    assert list(root.links.list(ANN)) == []


def test_job_progresses_and_a_first_delta_says_it_ran_full(memory_root, queues) -> None:
    root, m365, sf = memory_root
    sf.user_create(ANN, person(*PEOPLE[0]))
    sf.user_create(BOB, person(*PEOPLE[1]))
    job = json.loads(start({"mailboxes": "all", "mode": "delta"}).get_body())
    assert job["mailboxes"] == 2
    _, doc = status_of(job["id"])
    assert doc["state"] == "queued" and doc["mode"] == "delta" and doc["ran"] is None
    assert doc["progress"] == {"total": 2, "done": 0}
    assert run_reconciles(queues) == 2
    _, doc = status_of(job["id"])
    assert doc["state"] == "done" and doc["progress"] == {"total": 2, "done": 2}
    assert doc["ran"] == "full"  # no checkpoint yet: the change feeds start over, so the whole mailbox ran
    assert doc["applied"].get("create:m365") == 2
    again = json.loads(start({"mailboxes": "all", "mode": "delta"}).get_body())
    assert run_reconciles(queues) == 2
    _, doc = status_of(again["id"])
    assert doc["ran"] == "delta" and doc["state"] == "done"
    assert {m["mailbox"]: m["state"] for m in doc["mailboxes"]} == {ANN: "done", BOB: "done"}
    assert status_of("0123456789abcdef")[0] == 404


def test_circuit_breaker_refusal_is_recorded_in_the_job(settings, queues) -> None:
    from sync import bootstrap

    root = bootstrap.install(bootstrap.Root({**settings, "BREAKER_MIN_COUNT": "1"}))
    try:
        m365, sf = memory_engine_in(root)
        ids = [sf.user_create(ANN, person(*p)) for p in PEOPLE]
        start({"mailboxes": [ANN], "mode": "full"})
        run_reconciles(queues)
        for sf_id in ids:
            sf.user_delete(sf_id)  # someone emptied the org: propagating would empty Ann's folder
        job = json.loads(start({"mailboxes": [ANN], "mode": "full"}).get_body())
        run_reconciles(queues)
        _, doc = status_of(job["id"])
        (mb,) = doc["mailboxes"]
        assert mb["state"] == "refused" and doc["refusals"] == [ANN]
        assert "force=true" in mb["refusal"]
        assert len(list(m365.stream(ANN))) == 3  # nothing deleted
        assert queues.take("reconcile-poison") == []
    finally:
        bootstrap.reset()


def test_reconcile_timer_starts_a_job_over_every_mailbox(memory_root, queues) -> None:
    root, _, _ = memory_root
    user_function(reconcile.reconcile_timer)(TimerRequest(past_due=False))
    msgs = queues.bodies("reconcile")
    assert {m["mailbox"] for m in msgs} == {ANN, BOB} and {m["mode"] for m in msgs} == {"full"}
    user_function(reconcile.reconcile_timer)(TimerRequest(past_due=False))
    assert {m["mode"] for m in queues.bodies("reconcile")} == {"delta"}  # the weekly full pass already ran


def test_status_page_shows_ids_but_no_names_or_emails(memory_root, queues) -> None:
    root, m365, sf = memory_root
    for p in PEOPLE:
        sf.user_create(ANN, person(*p))
    start({"mailboxes": [ANN], "mode": "full"})
    run_reconciles(queues)
    fn = user_function(status.status_page)
    page = fn(http("GET", "http://localhost/api/status"))
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_body().decode()
    doc_resp = fn(http("GET", "http://localhost/api/status", headers={"Accept": "application/json"}))
    assert doc_resp.mimetype == "application/json"
    shouted = fn(http("GET", "http://localhost/api/status", headers={"Accept": "Application/JSON"}))
    assert shouted.mimetype == "application/json"  # media types are case-insensitive (RFC 9110 §8.3.1)
    doc = json.loads(doc_resp.get_body())
    (ann,) = [m for m in doc["mailboxes"] if m["mailbox"] == ANN]
    assert ann["lastSync"] is not None and ann["failures"] == [] and ann["recent"]
    some_id = next(r["sfId"] for r in ann["recent"] if r["sfId"])
    assert some_id in text and some_id in doc_resp.get_body().decode()
    for first, last, email in PEOPLE:
        for value in (first, last, email, email.split("@")[1]):
            assert value not in text and value not in doc_resp.get_body().decode()


def test_storage_queue_refuses_messages_over_48_kib(root, queues) -> None:
    from sync.adapters.storage import MAX_MESSAGE_TEXT, QueueMessageTooLarge

    q = root.contact_queue
    q.send_text("x" * MAX_MESSAGE_TEXT)  # exactly the limit: accepted (64 KiB once base64-encoded)
    with pytest.raises(QueueMessageTooLarge, match="exceeds"):
        q.send_text("x" * (MAX_MESSAGE_TEXT + 1))
    assert len(queues.take("contact-changes")) == 1


def test_status_page_names_a_salesforce_setup_salesforce_would_refuse() -> None:
    from sync import bootstrap

    wrong = bootstrap.Root({"SF_AUTH_FLOW": "client_credentials", "SF_CLIENT_ID": "cid", "SF_CLIENT_SECRET": "s3cret",
                            "SF_LOGIN_URL": "https://login.salesforce.com"})
    doc = status.salesforce_auth(wrong)
    assert doc["ok"] is False and "SF_LOGIN_URL" in doc["error"] and "My Domain" in doc["error"]
    assert "s3cret" not in doc["error"]
    page = {"generated": "now", "salesforce": doc, "mailboxes": [], "unavailable": [], "config": {"errors": []}}
    page["verdict"] = status.verdict(page, datetime.now(UTC))
    assert page["verdict"]["state"] == "failing"
    html = status.render_html(page)
    assert "Salesforce sign-in: FAILED" in html and "SF_LOGIN_URL" in html
