"""The status page's verdict and sections over Azurite (links, audit, jobs, queues) and in-memory sides."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sync import bootstrap
from sync.model import Contact, Side
from sync.ports import AuditEntry, ContactChange, StoredSubscription
from sync.triggers import status
from tests.functions.conftest import ANN, BOB, http, user_function
from tests.world import memory_engine_in

MARKUP = "<img src=x onerror=alert(1)><script>window.pwned=1</script>"
IDS = {"GRAPH_CLIENT_ID": "00000000-0000-0000-0000-000000000001", "SF_CLIENT_ID": "consumer-key",
       "SF_USERNAME": "integration@example.com"}


@pytest.fixture
def root(settings, queues):
    """The functions root with the app ids a deployment has (the shared fixture leaves them out)."""
    r = bootstrap.install(bootstrap.Root({**settings, **IDS}))
    yield r
    bootstrap.reset()


def page(**params: str):
    return user_function(status.status_page)(http("GET", "http://localhost/api/status", params=params))


def subscribe(root, mailbox: str, hours: float) -> None:
    root.subscriptions.put(StoredSubscription(id=f"sub-{mailbox[:3]}", mailbox=mailbox, resource="r",
                                              expires_at=datetime.now(UTC) + timedelta(hours=hours),
                                              client_state_digest="0" * 64))


def test_status_json_by_query_and_a_healthy_verdict(root, queues) -> None:
    memory_engine_in(root)
    subscribe(root, ANN, 48)
    subscribe(root, BOB, 48)
    resp = page(format="json")
    assert resp.mimetype == "application/json" and resp.headers["X-Content-Type-Options"] == "nosniff"
    doc = json.loads(resp.get_body())
    assert doc["verdict"] == {"state": "healthy", "reasons": []}
    assert {m["mailbox"] for m in doc["mailboxes"]} == {ANN, BOB}
    assert doc["queues"]["contact-changes"] == {"depth": 0, "oldestSeconds": 0, "poison": 0}
    assert doc["cdc"]["hasReplayId"] is False


def test_status_verdict_names_what_is_wrong(root, queues) -> None:
    memory_engine_in(root)
    subscribe(root, ANN, 2)  # the timer should have renewed it by now
    root.contact_queue.send(ContactChange(source=Side.M365, item_id="AAMk-1", mailbox=ANN))
    root.audit.write([AuditEntry(at=datetime.now(UTC), mailbox=ANN, m365_id="AAMk-2", action="create:salesforce",
                                 reason="r", outcome="failed", error="Transient: 503"),
                      # a race retried and applied: recovered, not a failure
                      AuditEntry(at=datetime.now(UTC), mailbox=ANN, m365_id="AAMk-3", action="update:salesforce",
                                 reason="r", outcome="applied"),
                      AuditEntry(at=datetime.now(UTC) - timedelta(seconds=1), mailbox=ANN, m365_id="AAMk-3",
                                 action="update:salesforce", reason="r", outcome="failed",
                                 error="PreconditionFailed: race")])
    doc = json.loads(page(format="json").get_body())
    v = doc["verdict"]
    assert v["state"] == "failing" and any(BOB in r and "no live Graph subscription" in r for r in v["reasons"])
    assert any("expires in" in r for r in v["reasons"])
    (ann,) = [m for m in doc["mailboxes"] if m["mailbox"] == ANN]
    assert [f["m365Id"] for f in ann["failures"]] == ["AAMk-2"]
    assert doc["queues"]["contact-changes"]["depth"] == 1


def test_status_counts_open_review_items_not_audit_rows(root, queues) -> None:
    m365, sf = memory_engine_in(root)
    ada = Contact().with_values({"first_name": "Ada", "last_name": "Byron", "email": "ada@analytical.example"})
    sf.user_create(ANN, ada)
    sf.user_create(ANN, ada)
    m_id = m365.user_create(ANN, ada)
    from sync.reconcile import reconcile_mailbox

    for _ in range(2):
        reconcile_mailbox(root.engine, ANN)
    doc = json.loads(page(format="json").get_body())
    (ann,) = [m for m in doc["mailboxes"] if m["mailbox"] == ANN]
    assert ann["openReview"] == 3  # 3 items, though 6 review rows were audited
    assert m_id in {i.record_id for i in root.reviews.items(ANN)}


def test_status_html_escapes_every_string_and_sets_a_strict_policy(root, queues) -> None:
    memory_engine_in(root)
    root.audit.write([AuditEntry(at=datetime.now(UTC), mailbox=ANN, sf_id="003000000000001AAA", action=MARKUP,
                                 reason="r", outcome="failed", error=f"{MARKUP}: bad")])
    resp = page()
    text = resp.get_body().decode()
    assert resp.mimetype == "text/html" and "<script>" not in text and "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and "script-src" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "http-equiv='refresh'" in text and "http://" not in text and "https://" not in text


def test_status_reports_a_missing_setting_as_a_config_error(settings, queues) -> None:
    root = bootstrap.install(bootstrap.Root({**settings, **IDS, "SF_CLIENT_ID": ""}))
    try:
        memory_engine_in(root)
        doc = json.loads(page(format="json").get_body())
    finally:
        bootstrap.reset()
    assert doc["config"]["errors"] == ["SF_CLIENT_ID is not set"] and doc["verdict"]["state"] == "failing"
    assert "config error: SF_CLIENT_ID is not set" in doc["verdict"]["reasons"]


def test_the_status_page_and_the_start_up_check_show_a_refused_filter(settings, queues) -> None:
    """SF_SOQL_FILTER refused by the org: logged at start and listed under config errors (a failing verdict)."""
    from sync.triggers.salesforce import startup_check
    from tests.contract.salesforce_harness import SalesforceHarness

    h = SalesforceHarness(soql_filter="Region__c = 'EMEA'")
    root = bootstrap.install(bootstrap.Root({**settings, **IDS, "SF_SOQL_FILTER": "Region__c = 'EMEA'"}))
    try:
        root.override(salesforce=h.side)
        assert "SF_SOQL_FILTER" in (startup_check(root) or "")
        doc = status.collect(root)
        errors = doc["config"]["errors"]
        refused = "SF_SOQL_FILTER: Salesforce refused it as a Contact condition (INVALID_FIELD)"
        assert any(e.startswith(refused) for e in errors), errors
        assert doc["verdict"]["state"] == "failing"
    finally:
        bootstrap.reset()
        h.close()
