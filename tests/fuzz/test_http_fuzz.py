"""Every HTTP function under generated hostile input (bodies, headers, query strings, route values).

The property, per example: no exception escapes the function, the status is below 500, a rejected request (4xx) is
answered with JSON ``{"error": "..."}`` and enqueues / writes nothing, an accepted one enqueues only what its valid
part justifies, and no personal-looking value embedded in the input reaches a log line.

Functions are called the official way (``fb.build().get_user_function()``) against Azurite; the function key is
checked by the host, not by the functions, so it is not part of the property.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.data.tables import TableClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync import bootstrap
from sync.adapters.graph import client_state_digest
from sync.adapters.salesforce.pubsub import sign_events
from sync.ports import AuditEntry, StoredSubscription
from sync.triggers import graph, reconcile, salesforce, status
from tests.functions.conftest import ANN, BOB, HMAC_SECRET, Queues, http, user_function
from tests.fuzz.strategies import (
    ENCODINGS,
    HOST_TEXT,
    HUGE_TEXT,
    JUNK,
    OVERSIZE_BODY,
    RAW_BODIES,
    TEXT,
    encode,
    headers,
    nested,
    people,
    queries,
)
from tests.fuzz.support import (
    Person,
    assert_json_error,
    assert_no_personal_data,
    body_json,
    count,
    duplicate_keys,
    outcome,
)

SUB, STATE = "7f3c1a52-0d6e-4c8b-9a11-2b5e6f0c9d3e", "fuzz-client-state-secret-value"


def fuzz(max_examples: int) -> settings:
    """Explicit example counts (the same in every profile), fixtures cleared by hand per example."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def _subscribe(root: bootstrap.Root) -> None:
    root.subscriptions.put(StoredSubscription(
        id=SUB, mailbox=ANN, resource="users/u1/contactFolders/f1/contacts",
        expires_at=datetime.now(UTC) + timedelta(days=2), client_state_digest=client_state_digest(STATE)))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value (keys and leaves)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sync")
    return caplog


def _nothing_enqueued(queues: Queues) -> None:
    for name in ("contact-changes", "reconcile", "graph-lifecycle"):
        assert queues.client(name).peek_messages(max_messages=1) == [], f"rejected input enqueued into {name}"


def _expected_token(url: str, params: dict[str, str]) -> str | None:
    if "validationToken" in params:
        return params["validationToken"]
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("validationToken")
    return values[0] if values else None


def _check_handshake(resp: Any, token: str) -> None:
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert resp.get_body() == token.encode("utf-8")


# ---------------------------------------------------------------------------------------------- Graph


IDS = st.one_of(st.from_regex(r"AAMkAG[A-Za-z0-9_=-]{4,60}", fullmatch=True), TEXT, JUNK)


@st.composite
def graph_items(draw: st.DrawFn, person: Person, *, lifecycle: bool) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)  # not even an object
    item: dict[str, Any] = {}
    optional = {
        "subscriptionId": st.one_of(st.just(SUB), st.just(SUB), st.just("unknown-subscription"), TEXT, JUNK),
        "clientState": st.one_of(st.just(STATE), st.just(STATE), st.just("wrong-state"), TEXT, JUNK),
        "changeType": st.one_of(st.sampled_from(["created", "updated", "deleted"]), JUNK),
        "resource": st.one_of(
            IDS.map(lambda i: f"Users/u1/contactFolders/f1/Contacts/{i}"),
            IDS.map(lambda i: f"users/u1/contacts('{i}')"), TEXT, JUNK),
        "resourceData": st.one_of(
            st.fixed_dictionaries({}, optional={
                "id": IDS, "@odata.type": st.just("#Microsoft.Graph.Contact"),
                "givenName": st.just(person.first), "surname": st.just(person.last),
                "displayName": st.just(f"{person.first} {person.last}"),
                "emailAddresses": st.just([{"address": person.email, "name": person.last}]),
                "mobilePhone": st.just(person.phone)}),
            JUNK),
        "tenantId": TEXT,
        "subscriptionExpirationDateTime": st.one_of(st.just("2030-01-01T00:00:00Z"), TEXT),
    }
    if lifecycle:
        optional["lifecycleEvent"] = st.one_of(
            st.sampled_from(["missed", "subscriptionRemoved", "reauthorizationRequired"]), TEXT, JUNK)
    for key, strategy in optional.items():
        if draw(st.integers(0, 5)) > 0:
            item[key] = draw(strategy)
    if draw(st.booleans()):
        item["displayName"] = f"{person.first} {person.last} <{person.email}> {person.phone}"
    return item


@st.composite
def graph_requests(draw: st.DrawFn, route: str, *, lifecycle: bool) -> tuple[Any, Person, Any]:
    """(request, person embedded, the parsed document or None)."""
    person = draw(people())
    kind = draw(st.sampled_from(["doc", "doc", "doc", "doc", "doc", "raw", "raw", "oversize", "flood"]))
    doc: Any = None
    if kind == "flood":  # many items naming distinct made-up subscriptions, maybe a valid one among them
        n, tag = draw(st.integers(1, 3 * graph.MAX_NOTIFICATIONS)), draw(st.from_regex(r"[a-z]{6}", fullmatch=True))
        items = [{"subscriptionId": f"{tag}-{i}", "clientState": STATE} for i in range(n)]
        if draw(st.booleans()):
            items.insert(draw(st.integers(0, n)), draw(graph_items(person, lifecycle=lifecycle)))
        doc = {"value": items}
        body = encode(doc, "ascii")
    elif kind == "doc":
        items = draw(st.lists(graph_items(person, lifecycle=lifecycle), max_size=5))
        doc = draw(st.sampled_from([{"value": items}, {"value": items, "extra": person.email}, items,
                                    {"value": {"0": items}}, {"Value": items}]))
        if draw(st.integers(0, 5)) == 0:
            doc = {"value": draw(JUNK)}
        body = encode(doc, draw(ENCODINGS))
    elif kind == "raw":
        body = draw(RAW_BODIES)
    else:
        body = draw(OVERSIZE_BODY)
    qs, params = draw(queries())
    url = f"http://localhost/api/{route}" + (f"?{qs}" if qs else "")
    req = http("POST", url, body, headers=draw(headers(body)), params=params)
    return req, person, doc


def _valid_items(doc: Any) -> list[dict[str, Any]]:
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, list):
        return []
    return [i for i in value
            if isinstance(i, dict) and i.get("subscriptionId") == SUB and i.get("clientState") == STATE]


def _reads() -> int:
    from sync.adapters.storage import REQUESTS

    return REQUESTS.snapshot().get("read", 0)


def _graph_bounds(resp: Any, req: Any, doc: Any, reads: int, limit: int) -> None:
    """What an anonymous request may cost: at most ``limit`` point reads; a batch Graph could never send, or JSON
    with a duplicate key, is refused."""
    assert reads <= limit, f"{reads} table reads for one request"
    value = doc.get("value") if isinstance(doc, dict) else None
    if isinstance(value, list) and len(value) > graph.MAX_NOTIFICATIONS:
        assert resp.status_code in (400, 413)
    items = value if isinstance(value, list) else []
    ids = {i.get("subscriptionId") for i in items if isinstance(i, dict) and isinstance(i.get("subscriptionId"), str)}
    if len(ids - {""}) > limit + 1:  # +1: a generated item among made-up ids may carry one the pattern refuses
        assert resp.status_code in (400, 413)
    if duplicate_keys(req.get_body()):
        assert resp.status_code in (400, 413)


def check_graph_notifications(root, queues, logs, case) -> None:
    req, person, doc = case
    if root.subscriptions.get(SUB) is None:
        _subscribe(root)
    logs.clear()
    before = _reads()
    resp = user_function(graph.graph_notifications)(req)
    assert resp.status_code < 500
    token = _expected_token(req.url, dict(req.params))
    if token is None:
        _graph_bounds(resp, req, doc, _reads() - before, graph.distinct_limit(len(root.mailboxes)))
    if token is not None:
        _check_handshake(resp, token)
        _nothing_enqueued(queues)
        assert _reads() == before
    elif resp.status_code >= 400:
        assert resp.status_code in (400, 413)
        assert_json_error(resp)
        _nothing_enqueued(queues)
    else:
        assert resp.status_code == 202
        hints = queues.bodies("contact-changes")
        valid = _valid_items(doc)
        candidates = [s for s in _strings(valid) if s]
        assert len(hints) <= len(valid)
        for hint in hints:  # only items of a known subscription with its clientState become hints
            assert hint["source"] == "m365" and hint["mailbox"] == ANN
            assert any(hint["item_id"] in s for s in candidates), hint
        _nothing_enqueued(queues)
    assert_no_personal_data(logs.records, [person])
    outcome(resp)


class FakeSubscriptions:
    """Stands in for the Graph subscription manager: the lifecycle webhook must never call it (it only enqueues)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"the lifecycle webhook called Graph ({name})")


def check_graph_lifecycle(root, queues, logs, case) -> None:
    req, person, doc = case
    if root.subscriptions.get(SUB) is None:
        _subscribe(root)
    manager = FakeSubscriptions()
    root.override(graph_subscriptions=manager)
    logs.clear()
    resp = user_function(graph.graph_lifecycle)(req)
    assert resp.status_code < 500
    assert manager.calls == []
    token = _expected_token(req.url, dict(req.params))
    if token is not None:
        _check_handshake(resp, token)
        _nothing_enqueued(queues)
    elif resp.status_code >= 400:
        assert resp.status_code in (400, 413)
        assert_json_error(resp)
        assert manager.calls == []
        _nothing_enqueued(queues)
    elif duplicate_keys(req.get_body()):
        raise AssertionError("JSON with a duplicate key was accepted")
    else:
        assert resp.status_code == 202
        valid = _valid_items(doc)
        events = [i.get("lifecycleEvent") for i in valid]
        notices = queues.bodies("graph-lifecycle")
        assert sorted(n["event"] for n in notices) == sorted(
            e for e in events if e in ("missed", "subscriptionRemoved", "reauthorizationRequired"))
        assert all(n["mailbox"] == ANN and n["subscription_id"] == SUB for n in notices)
        _nothing_enqueued(queues)
    assert root.subscriptions.get(SUB) is not None  # never dropped by a bad request
    assert_no_personal_data(logs.records, [person])
    outcome(resp)


# ---------------------------------------------------------------------------------------------- Salesforce


SF_IDS = st.one_of(st.from_regex(r"003[A-Za-z0-9]{15}", fullmatch=True), st.just("003*"), TEXT, JUNK)


@st.composite
def sf_events(draw: st.DrawFn, person: Person) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    header: dict[str, Any] = {}
    for key, strategy in {
        "entityName": st.one_of(st.just("Contact"), st.just("Contact"), st.just("Account"), JUNK),
        "changeType": st.one_of(st.sampled_from(["CREATE", "UPDATE", "DELETE", "GAP_UPDATE", "GAP_OVERFLOW"]), JUNK),
        "recordIds": st.one_of(st.lists(SF_IDS, max_size=4), JUNK),
        "changedFields": st.one_of(st.just(["FirstName", "Email"]), JUNK),
        "commitUser": TEXT,
    }.items():
        if draw(st.integers(0, 5)) > 0:
            header[key] = draw(strategy)
    event: dict[str, Any] = {"ChangeEventHeader": header if draw(st.integers(0, 9)) else draw(JUNK)}
    if draw(st.booleans()):
        event.update({"FirstName": person.first, "LastName": person.last, "Email": person.email,
                      "Phone": person.phone, "Description": f"call {person.first} on {person.phone}"})
    wrap = draw(st.sampled_from(["plain", "plain", "payload", "cometd"]))
    if wrap == "payload":
        return {"payload": event}
    if wrap == "cometd":
        return {"channel": "/data/ContactChangeEvent", "data": {"event": {"replayId": 1}, "payload": event}}
    return event


@st.composite
def sf_requests(draw: st.DrawFn) -> tuple[Any, Person, Any, str]:
    """(request, person, parsed document or None, how it was signed)."""
    person = draw(people())
    kind = draw(st.sampled_from(["doc", "doc", "doc", "doc", "doc", "raw", "raw", "oversize"]))
    doc: Any = None
    if kind == "doc":
        events = draw(st.lists(sf_events(person), max_size=4))
        doc = draw(st.sampled_from([events, {"events": events}, events[0] if events else {}, {"events": {}}]))
        body = encode(doc, draw(st.sampled_from(["ascii", "ascii", "ascii", "utf-8", "trailing", "truncated",
                                                 "dupkey"])))
    elif kind == "raw":
        body = draw(RAW_BODIES)
    else:
        body = draw(OVERSIZE_BODY)
    now = int(time.time())
    signing = draw(st.sampled_from(["valid", "valid", "valid", "valid-no-prefix", "valid-upper", "stale", "future",
                                    "absurd-time", "other-body", "wrong-secret", "garbled", "timestamp-only",
                                    "signature-only", "none"]))
    sig_headers: dict[str, str] = {}
    if signing.startswith("valid"):
        sig_headers = sign_events(body, HMAC_SECRET, now + draw(st.integers(-250, 250)))
        if signing == "valid-no-prefix":
            sig_headers["X-Sync-Signature"] = sig_headers["X-Sync-Signature"].removeprefix("sha256=")
        elif signing == "valid-upper":
            sig_headers["X-Sync-Signature"] = "sha256=" + sig_headers["X-Sync-Signature"][7:].upper()
    elif signing == "stale":
        sig_headers = sign_events(body, HMAC_SECRET, now - draw(st.integers(301, 10**6)))
    elif signing == "future":
        sig_headers = sign_events(body, HMAC_SECRET, now + draw(st.integers(330, 10**6)))  # margin: the clock runs
    elif signing == "absurd-time":
        sig_headers = sign_events(body, HMAC_SECRET, draw(st.sampled_from([0, -1, -(10**20), 10**30, 10**400])))
    elif signing == "other-body":
        sig_headers = sign_events(body + b" ", HMAC_SECRET, now)
    elif signing == "wrong-secret":
        sig_headers = sign_events(body, draw(st.sampled_from(["", "test-relay-secreT", "x" * 100])), now)
    elif signing == "garbled":
        sig_headers = {
            "X-Sync-Timestamp": draw(st.one_of(HOST_TEXT, st.just(str(now)), st.just("١٧٠٠٠٠٠٠٠٠"))),
            "X-Sync-Signature": draw(st.one_of(HOST_TEXT, st.just("sha256="), st.just("sha256=" + "0" * 64)))}
    elif signing == "timestamp-only":
        sig_headers = {"X-Sync-Timestamp": str(now)}
    elif signing == "signature-only":
        sig_headers = {"X-Sync-Signature": sign_events(body, HMAC_SECRET, now)["X-Sync-Signature"]}
    if draw(st.booleans()):  # header names are case-insensitive
        sig_headers = {k.lower(): v for k, v in sig_headers.items()}
    hdrs = {**draw(headers(body)), **sig_headers}
    qs, params = draw(queries(token=False))
    url = "http://localhost/api/salesforce/events" + (f"?{qs}" if qs else "")
    return http("POST", url, body, headers=hdrs, params=params), person, doc, signing


SALESFORCE_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def check_salesforce_events(root, queues, logs, case) -> None:
    req, person, doc, signing = case
    logs.clear()
    resp = user_function(salesforce.salesforce_events)(req)
    assert resp.status_code < 500
    if resp.status_code >= 400:
        assert resp.status_code in (400, 401, 413)
        error = assert_json_error(resp)
        if resp.status_code == 401:
            assert error == "signature verification failed"  # no hint about what was wrong
        _nothing_enqueued(queues)
    else:
        assert resp.status_code == 202
        assert signing.startswith("valid"), "an unsigned, stale or forged batch was accepted"
        hints = queues.bodies("contact-changes")
        assert body_json(resp) == {"accepted": len(hints)}
        sent = set(_strings(doc))
        for hint in hints:  # only record ids the batch named, and only Salesforce ids
            assert hint["source"] == "salesforce" and hint["mailbox"] is None and hint["item_id"] in sent
            assert SALESFORCE_ID.fullmatch(hint["item_id"]), hint
        _nothing_enqueued(queues)
    if not signing.startswith("valid"):
        assert resp.status_code in (401, 413), "an unauthenticated batch must be refused before its body is read"
    elif duplicate_keys(req.get_body()):
        assert resp.status_code in (400, 413), "a signed batch with a duplicate JSON key was accepted"
    assert_no_personal_data(logs.records, [person])
    outcome(resp)


# ---------------------------------------------------------------------------------------------- reconcile


def _jobs_table(root: bootstrap.Root) -> TableClient:
    _ = root.jobs  # creates the table
    return TableClient.from_connection_string(str(root.env["AzureWebJobsStorage"]),
                                              table_name=f"{root.env['SYNC_TABLE_PREFIX']}jobs")


def _job_rows(table: TableClient) -> int:
    return sum(1 for _ in table.query_entities("RowKey eq '~job'", select=["PartitionKey"]))


MAILBOX_VALUES = st.one_of(st.sampled_from([ANN, BOB, " Ann@Contoso.com ", "BOB@CONTOSO.COM", "carol@contoso.com"]),
                           TEXT, JUNK)
SCOPES = st.one_of(st.just("all"), st.lists(st.sampled_from([ANN, BOB, " Ann@Contoso.com ", "BOB@CONTOSO.COM"]),
                                            min_size=1, max_size=3))


@st.composite
def reconcile_requests(draw: st.DrawFn) -> tuple[Any, Person]:
    person = draw(people())
    kind = draw(st.sampled_from(["valid", "valid", "valid", "doc", "doc", "doc", "raw"]))
    if kind == "valid":  # a request an operator could send, sometimes with one value spoiled
        doc: dict[str, Any] = {}
        if draw(st.integers(0, 5)) > 0:  # the scope is required; now and then it is left out
            doc["mailboxes"] = draw(SCOPES)
        for key, strategy in {
            "mode": st.sampled_from(["delta", "full"]), "dryRun": st.booleans(), "force": st.booleans(),
        }.items():
            if draw(st.booleans()):
                doc[key] = draw(strategy)
        if draw(st.sampled_from([False, False, True])):
            spoiled = draw(st.sampled_from(["mailboxes", "mode", "dryRun", "force", "mailbox", person.email]))
            doc[spoiled] = draw(st.one_of(st.just(person.email), st.just([person.email]), JUNK))
        body = encode(doc, draw(st.sampled_from(["ascii", "utf-8", "utf-16", "bom", "dupkey"])))
    elif kind == "doc":
        doc = {}
        fields = {
            "mailboxes": st.one_of(st.lists(st.one_of(MAILBOX_VALUES, st.just(person.email)), max_size=4),
                                   st.just(person.email), st.sampled_from(["all", "ALL", " all", "every"]), JUNK),
            "mode": st.one_of(st.sampled_from(["delta", "full", "FULL", "sideways", ""]), JUNK),
            "dryRun": st.one_of(st.booleans(), st.sampled_from(["true", 1, 0, None]), JUNK),
            "force": st.one_of(st.booleans(), st.sampled_from(["false", 1, None]), JUNK),
            "mailbox": st.just([person.email]),
            "contact": st.just({"name": f"{person.first} {person.last}", "phone": person.phone}),
            person.email: JUNK,
        }
        for key, strategy in fields.items():
            known = key in ("mailboxes", "mode", "dryRun", "force")
            if draw(st.booleans()) if known else draw(st.sampled_from([True, False, False, False])):
                doc[key] = draw(strategy)
        wrapped = draw(st.sampled_from(["object", "object", "object", "list", "junk"]))
        value: Any = doc if wrapped == "object" else [doc] if wrapped == "list" else draw(JUNK)
        body = encode(value, draw(ENCODINGS))
    else:
        body = draw(RAW_BODIES)
    qs, params = draw(queries(token=False))
    url = "http://localhost/api/reconcile" + (f"?{qs}" if qs else "")
    return http("POST", url, body, headers=draw(headers(body)), params=params), person


def check_reconcile_start(root, queues, logs, case) -> None:
    req, person = case
    table = _jobs_table(root)
    before = _job_rows(table)
    logs.clear()
    resp = user_function(reconcile.reconcile_start)(req)
    assert resp.status_code < 500
    if resp.status_code >= 400:
        assert resp.status_code in (400, 413)
        assert_json_error(resp)
        _nothing_enqueued(queues)
        assert _job_rows(table) == before, "a rejected request wrote a job row"
    else:
        assert resp.status_code == 202
        doc = body_json(resp)
        assert resp.headers["Location"] == f"/api/reconcile/{doc['id']}"
        messages = queues.bodies("reconcile")
        assert len(messages) == doc["mailboxes"] >= 1
        assert {m["mailbox"] for m in messages} <= {ANN, BOB}
        assert all(m["job_id"] == doc["id"] and m["mode"] == doc["mode"] for m in messages)
        assert _job_rows(table) == before + 1
        _nothing_enqueued(queues)
        sent = _as_doc(req.get_body())
        assert isinstance(sent, dict) and sent.get("mailboxes"), "a request without a scope started a job"
        assert not duplicate_keys(req.get_body()), "JSON with a duplicate key started a job"
    assert_no_personal_data(logs.records, [person])
    outcome(resp)


@fuzz(200)
@given(job=st.one_of(HOST_TEXT, HUGE_TEXT, st.from_regex(r"[0-9a-f]{32}", fullmatch=True), st.just("real"),
                     st.just("real-upper"), st.just("real+x"), st.just(None)),
       query=queries(token=False), person=people())
def test_reconcile_status_fuzz(root, queues, logs, job, query, person) -> None:
    count("reconcile_status")
    check_reconcile_status(root, queues, logs, job, query, person)


@pytest.mark.parametrize("job", ["²³", "٣٣٣", "ǅ", "a" * 64, "a" * 65, "..", "%2F", "job\x00", "0" * 32, "",
                                 "real", "real-upper", None])
def test_reconcile_status_explicit(root, queues, logs, job) -> None:
    count("reconcile_status", explicit=True)
    check_reconcile_status(root, queues, logs, job, ("code=x", {"code": "x"}), ME)


def check_reconcile_status(root, queues, logs, job: str | None, query: tuple[str, dict[str, str]],
                           person: Person) -> None:
    table = _jobs_table(root)
    real = getattr(root, "_fuzz_job", None)
    if real is None:
        real = reconcile.start_job(root, [ANN], "delta", dry_run=True).id
        root._fuzz_job = real  # type: ignore[attr-defined]
        queues.take("reconcile")
    job_id = {"real": real, "real-upper": real.upper(), "real+x": real + "x"}.get(job, job) if job is not None else None
    route = {} if job_id is None else {"job": job_id}
    qs, params = query
    before = _job_rows(table)
    logs.clear()
    resp = user_function(reconcile.reconcile_status)(http(
        "GET", "http://localhost/api/reconcile/x" + (f"?{qs}" if qs else ""), headers={"X-Contact": person.email},
        params=params, route_params=route))
    if job_id == real:
        assert resp.status_code == 200 and body_json(resp)["id"] == real
    else:
        assert resp.status_code == 404
        assert assert_json_error(resp) == "unknown job"
    assert _job_rows(table) == before
    _nothing_enqueued(queues)
    assert_no_personal_data(logs.records, [person])
    outcome(resp)


# ---------------------------------------------------------------------------------------------- status page


ACCEPT = st.one_of(st.sampled_from(["application/json", "text/html", "*/*", "application/json;q=0.1, text/html",
                                    "APPLICATION/JSON", ""]), HOST_TEXT)


@fuzz(150)
@given(accept=st.one_of(st.none(), ACCEPT), query=queries(token=False), person=people(), extra=headers(b""))
def test_status_page_fuzz(root, queues, logs, accept, query, person, extra) -> None:
    seen: list[Person] = getattr(root, "_fuzz_people", [])
    root._fuzz_people = seen  # type: ignore[attr-defined]
    seen.append(person)
    # an audit row whose reason quotes the person (reasons may): the page must show ids only
    root.audit.write([AuditEntry(at=datetime.now(UTC), mailbox=ANN, m365_id="AAMk-1", sf_id="003000000000001AAA",
                                 action="create:salesforce", outcome="failed",
                                 reason=f"created {person.first} {person.last} <{person.email}> {person.phone}",
                                 error=f"BadData: invalid email address: {person.email}")])
    hdrs = dict(extra)
    if accept is not None:
        hdrs["Accept"] = accept
    qs, params = query
    logs.clear()
    count("status_page")
    resp = user_function(status.status_page)(http("GET", "http://localhost/api/status" + (f"?{qs}" if qs else ""),
                                                  headers=hdrs, params=params))
    assert resp.status_code == 200
    text = resp.get_body().decode("utf-8")
    # media types ignore case (RFC 9110 §8.3.1); ?format=json asks for JSON too
    if "application/json" in (accept or "").lower() or str(params.get("format", "")).lower() == "json":
        assert resp.mimetype == "application/json"
        doc = json.loads(text)
        (ann,) = [m for m in doc["mailboxes"] if m["mailbox"] == ANN]
        assert ann["failures"] and ann["recent"][0]["error"] == "BadData"
    else:
        assert resp.mimetype == "text/html"
    for p in seen[-50:]:
        for token in p.tokens():
            assert token not in text, f"the status page shows {token!r}"
    _nothing_enqueued(queues)
    assert_no_personal_data(logs.records, seen[-50:])
    outcome(resp)


# ---------------------------------------------------------------------------------------------- the tests
# Each endpoint: the generated examples, then explicit ones (the shapes that broke it once, kept as regressions).

ME = Person("Marisol", "Featherstonehaugh", "marisol.q1234@privatemail.example", "+44 7700 1234 567")


def _as_body(doc: Any) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode()


def _as_doc(doc: Any) -> Any:
    """The document a raw body holds (None when it holds none), for the checks of what may be enqueued."""
    if not isinstance(doc, bytes):
        return doc
    try:
        return json.loads(doc)
    except (ValueError, RecursionError):
        return None


def graph_case(route: str, doc: Any, *, qs: str = "", params: dict[str, str] | None = None) -> tuple[Any, Person, Any]:
    url = f"http://localhost/api/{route}" + (f"?{qs}" if qs else "")
    return http("POST", url, _as_body(doc), params=params), ME, _as_doc(doc)


def _item(**overrides: Any) -> dict[str, Any]:
    return {"subscriptionId": SUB, "clientState": STATE, "changeType": "updated",
            "resource": "Users/u1/contactFolders/f1/Contacts/AAMkAGI2", "resourceData": {"id": "AAMkAGI2"},
            **overrides}


DEEP = nested(200_000)
GRAPH_EXPLICIT = {
    "deeply nested JSON": DEEP,
    "deeply nested value": b'{"value": ' + DEEP + b"}",
    "lone surrogate clientState": {"value": [_item(clientState="\ud800")]},
    "lone surrogate subscription id": {"value": [_item(subscriptionId="\udfff")]},
    "lone surrogate contact id": {"value": [_item(resourceData={"id": "\ud800"})]},
    "contact id over the queue message limit after a valid one": {
        "value": [_item(), _item(resourceData={"id": "x" * 60_000})]},
    "subscription id of 300k characters": {"value": [_item(subscriptionId="s" * 300_000)]},
    "subscription id with forbidden key characters": {"value": [_item(subscriptionId="a/b\\c#d?e%f\x00\x7f")]},
    "personal data and a forged log line as subscription id": {
        "value": [_item(subscriptionId=f"{ME.email} {ME.first} {ME.last}\nERROR forged line {ME.phone}")]},
    "utf-16 body": json.dumps({"value": [_item()]}).encode("utf-16"),
    "invalid utf-8": b'{"value": [{"subscriptionId": "\xff\xfe"}]}',
    "value is an object": {"value": {"0": _item()}},
    "items are lists": {"value": [[SUB, STATE]]},
    "20,000 distinct made-up subscriptions": {"value": [{"subscriptionId": f"{i:020d}"} for i in range(20_000)]},
    "1,000 distinct made-up subscriptions and a valid item": {
        "value": [{"subscriptionId": f"{i:020d}"} for i in range(999)] + [_item()]},
    "as many made-up subscriptions as allowed and a valid item": {
        "value": [{"subscriptionId": f"m{i:019d}"} for i in range(graph.MIN_DISTINCT_SUBSCRIPTIONS - 1)] + [_item()]},
    "duplicate value, the valid one last": b'{"value": [], "value": [' + json.dumps(_item()).encode() + b"]}",
    "duplicate clientState in an item": (b'{"value": [{"clientState": "guess", ' + json.dumps(_item()).encode()[1:]
                                         + b"]}"),
}


@fuzz(300)
@given(case=graph_requests("graph/notifications", lifecycle=False))
def test_graph_notifications_fuzz(root, queues, logs, case) -> None:
    count("graph_notifications")
    check_graph_notifications(root, queues, logs, case)


@pytest.mark.parametrize("name", list(GRAPH_EXPLICIT))
def test_graph_notifications_explicit(root, queues, logs, name) -> None:
    count("graph_notifications", explicit=True)
    check_graph_notifications(root, queues, logs, graph_case("graph/notifications", GRAPH_EXPLICIT[name]))


@pytest.mark.parametrize("qs", ["validationToken=" + "%F0%9F%98%80" * 20_000, "validationToken=",
                                "validationToken=%ED%A0%80", "validationToken=a&validationToken=b",
                                "validationtoken=lower"])
def test_graph_handshake_explicit(root, queues, logs, qs) -> None:
    checks = (("graph/notifications", check_graph_notifications), ("graph/lifecycle", check_graph_lifecycle))
    for route, check in checks:
        count(route.replace("/", "_"), explicit=True)
        check(root, queues, logs, graph_case(route, b"", qs=qs))


LIFECYCLE_EXPLICIT = {
    **{k: v for k, v in GRAPH_EXPLICIT.items() if isinstance(v, bytes)},
    "lone surrogate clientState": {"value": [_item(clientState="\ud800", lifecycleEvent="missed")]},
    "lone surrogate subscription id": {"value": [_item(subscriptionId="\udfff", lifecycleEvent="missed")]},
    "lifecycle event is an object": {"value": [_item(lifecycleEvent={"missed": True})]},
    "lifecycle event is huge": {"value": [_item(lifecycleEvent="missed" * 50_000)]},
    "personal data as subscription id": {"value": [_item(subscriptionId=ME.email, lifecycleEvent="missed")]},
    "every event twice": {"value": [_item(lifecycleEvent=e) for e in ("missed", "subscriptionRemoved",
                                                                     "reauthorizationRequired") * 2]},
}


@fuzz(250)
@given(case=graph_requests("graph/lifecycle", lifecycle=True))
def test_graph_lifecycle_fuzz(root, queues, logs, case) -> None:
    count("graph_lifecycle")
    check_graph_lifecycle(root, queues, logs, case)


@pytest.mark.parametrize("name", list(LIFECYCLE_EXPLICIT))
def test_graph_lifecycle_explicit(root, queues, logs, name) -> None:
    count("graph_lifecycle", explicit=True)
    check_graph_lifecycle(root, queues, logs, graph_case("graph/lifecycle", LIFECYCLE_EXPLICIT[name]))


def _event(*ids: Any, **header: Any) -> dict[str, Any]:
    return {"ChangeEventHeader": {"entityName": "Contact", "changeType": "UPDATE", "recordIds": list(ids), **header},
            "FirstName": ME.first, "LastName": ME.last, "Email": ME.email}


GOOD_ID = "003000000000001AAA"
SF_EXPLICIT: dict[str, tuple[Any, str]] = {
    "signed deeply nested JSON": (DEEP, "valid"),
    "signed, timestamp far beyond a float": (b"[]", "absurd"),
    "signed, recordIds is a number": ([{"ChangeEventHeader": {"entityName": "Contact", "recordIds": 5}}], "valid"),
    "signed, recordIds is a string": ([{"ChangeEventHeader": {"entityName": "Contact", "recordIds": GOOD_ID}}],
                                      "valid"),
    "signed, recordIds is an object": ([{"ChangeEventHeader": {"recordIds": {ME.email: 1}}}], "valid"),
    "signed, lone surrogate record id": ([_event("\ud800")], "valid"),
    "signed, record id over the queue message limit after a valid one": ([_event(GOOD_ID, "x" * 60_000)], "valid"),
    "signed, personal data as record id": ([_event(f"{ME.first} {ME.last} {ME.email}")], "valid"),
    "signed, header is a list": ([{"ChangeEventHeader": [GOOD_ID]}], "valid"),
    "signed, utf-16 body": (json.dumps([_event(GOOD_ID)]).encode("utf-16"), "valid"),
    "signed, well formed": ([_event(GOOD_ID, "003000000000002AAA"), _event(GOOD_ID)], "valid"),
    "signed, fullwidth digits in the timestamp (same number)": ([_event(GOOD_ID)], "valid-fullwidth"),
    "unsigned deeply nested JSON": (DEEP, "none"),
}


def sf_case(doc: Any, signing: str) -> tuple[Any, Person, Any, str]:
    body = _as_body(doc)
    now = int(time.time())
    hdrs = {"Content-Type": "application/json"}
    if signing == "valid":
        hdrs.update(sign_events(body, HMAC_SECRET, now))
    elif signing == "absurd":
        hdrs.update(sign_events(body, HMAC_SECRET, 10**400))
    elif signing == "valid-fullwidth":
        fullwidth = str(now).translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
        digest = sign_events(body, HMAC_SECRET, now)["X-Sync-Signature"]
        hdrs.update({"X-Sync-Timestamp": fullwidth, "X-Sync-Signature": digest})
    return http("POST", "http://localhost/api/salesforce/events", body, headers=hdrs), ME, _as_doc(doc), signing


@fuzz(300)
@given(case=sf_requests())
def test_salesforce_events_fuzz(root, queues, logs, case) -> None:
    count("salesforce_events")
    check_salesforce_events(root, queues, logs, case)


@pytest.mark.parametrize("name", list(SF_EXPLICIT))
def test_salesforce_events_explicit(root, queues, logs, name) -> None:
    count("salesforce_events", explicit=True)
    check_salesforce_events(root, queues, logs, sf_case(*SF_EXPLICIT[name]))


RECONCILE_EXPLICIT: dict[str, Any] = {
    "deeply nested JSON": DEEP,
    "deeply nested mailboxes": b'{"mailboxes": ' + DEEP + b"}",
    "lone surrogate mailbox": {"mailboxes": ["\ud800"]},
    "lone surrogate key": {"\udfff": 1},
    "mailbox of 500k characters": {"mailboxes": ["m" * 500_000]},
    "personal data as an out-of-scope mailbox": {"mailboxes": [ME.email], "mode": "full"},
    "mode is a list": {"mode": ["full"]},
    "dryRun is a string": {"dryRun": "true"},
    "in-scope mailboxes, odd spelling": {"mailboxes": [" Ann@Contoso.com ", "ann@contoso.com"], "dryRun": True},
    "utf-16 body": json.dumps({"mailboxes": "all", "dryRun": True}).encode("utf-16"),
    "empty body": b"",
    "invalid utf-8": b'{"mode": "\xff"}',
    "no scope, dry run": {"dryRun": True, "mode": "full"},
    "duplicate dryRun, the real run last": b'{"mailboxes": "all", "dryRun": true, "dryRun": false}',
    "duplicate key in a nested object": b'{"mailboxes": "all", "mode": {"x": 1, "x": 2}}',
    "10,000 out-of-scope mailboxes": {"mailboxes": [f"{ME.last}{i}@nowhere.example" for i in range(10_000)]},
    "2,000 unknown keys": {f"key{i}{ME.email}": 1 for i in range(2000)},
}


@fuzz(250)
@given(case=reconcile_requests())
def test_reconcile_start_fuzz(root, queues, logs, case) -> None:
    count("reconcile_start")
    check_reconcile_start(root, queues, logs, case)


@pytest.mark.parametrize("name", list(RECONCILE_EXPLICIT))
def test_reconcile_start_explicit(root, queues, logs, name) -> None:
    count("reconcile_start", explicit=True)
    check_reconcile_start(root, queues, logs, (http("POST", "http://localhost/api/reconcile",
                                                    _as_body(RECONCILE_EXPLICIT[name])), ME))
