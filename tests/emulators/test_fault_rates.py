"""The random fault knobs of both emulators (used by the soak test, tests/soak/): rates of 429 / 503 / connection
resets per request, lost, duplicated and reordered CDC events, and the counters that say how many were injected.

Each knob is set to 0 or 1 here so the outcome is certain. Expectations cite docs/reference/graph.md (§5 429 with
Retry-After, §7.4 503 and ambiguous writes) and docs/reference/salesforce.md (§2.1 error shapes, §6
REQUEST_LIMIT_EXCEEDED, §4.5 at-least-once delivery).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from emulators.graph import GraphEmulator
from emulators.salesforce import SalesforceEmulator

USER = "alice@contoso.example"
AUTH = {"Authorization": "Bearer emulator-token"}


# ---------------------------------------------------------------------------------------------- Graph


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[USER], seed=7) as g:
        yield g


def _contacts_url(g: GraphEmulator) -> str:
    return f"{g.base_url}/users/{USER}/contacts"


def test_graph_throttle_rate_answers_429_with_retry_after(graph: GraphEmulator) -> None:
    graph.faults.throttle_rate, graph.faults.throttle_retry_after = 1.0, 2
    with httpx.Client(trust_env=False) as http:
        resp = http.get(_contacts_url(graph), headers=AUTH)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "2"  # §5: integer seconds
    assert resp.json()["error"]["code"] == "TooManyRequests"
    assert graph.faults.injected["429"] == 1
    graph.faults.throttle_rate = 0.0
    with httpx.Client(trust_env=False) as http:
        assert http.get(_contacts_url(graph), headers=AUTH).status_code == 200


def test_graph_unavailable_rate_answers_503(graph: GraphEmulator) -> None:
    graph.faults.unavailable_rate = 1.0
    with httpx.Client(trust_env=False) as http:
        resp = http.post(_contacts_url(graph), headers=AUTH, json={"surname": "Lovelace"})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "ServiceNotAvailable"
    assert graph.list_contacts(USER) == []  # not executed
    assert graph.faults.injected["503"] == 1


@pytest.mark.parametrize(("after", "created"), [(0.0, 0), (1.0, 1)], ids=["before", "after"])
def test_graph_reset_rate_drops_the_connection_before_or_after_the_request_ran(
    graph: GraphEmulator, after: float, created: int
) -> None:
    graph.faults.reset_rate, graph.faults.reset_after_share = 1.0, after
    with httpx.Client(trust_env=False) as http, pytest.raises(httpx.TransportError):
        http.post(_contacts_url(graph), headers=AUTH, json={"surname": "Lovelace"})
    assert len(graph.list_contacts(USER)) == created  # "after": an ambiguous write, the contact exists
    assert graph.faults.injected["reset.after" if after else "reset.before"] == 1


def test_graph_gate_counts_requests_over_the_concurrency_limit(graph: GraphEmulator) -> None:
    uid = graph.user_id(USER)
    graph.faults.mailbox_concurrency, graph.faults.mailbox_delay_s[uid] = 1, 0.5
    statuses: list[int] = []

    def get() -> None:
        with httpx.Client(trust_env=False) as http:
            statuses.append(http.get(_contacts_url(graph), headers=AUTH).status_code)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 429]
    assert graph.gate.refused(uid, "concurrency") == 1 and graph.gate.refused(uid, "rate") == 0
    assert graph.gate.peak(uid) == 1


# ---------------------------------------------------------------------------------------------- Salesforce


@pytest.fixture
def sf() -> Iterator[SalesforceEmulator]:
    e = SalesforceEmulator(keepalive_seconds=0.5, idle_timeout_seconds=5).start()
    e.register_client_credentials("cid-cc", "s3cret")
    yield e
    e.stop()


@pytest.fixture
def rest(sf: SalesforceEmulator) -> Iterator[tuple[requests.Session, str]]:
    with sf.requests_session() as http:
        token = http.post(sf.token_url, data={"grant_type": "client_credentials", "client_id": "cid-cc",
                                              "client_secret": "s3cret"}).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield http, f"{sf.instance_url}/services/data/v67.0/sobjects/Contact"


def _create(http: requests.Session, url: str) -> Any:
    return http.post(url, json={"LastName": "Lovelace", "Email": "ada@example.com"})


def test_salesforce_limit_rate_answers_403_request_limit_exceeded(sf: SalesforceEmulator, rest: Any) -> None:
    http, url = rest
    sf.faults.limit_rate = 1.0
    resp = _create(http, url)
    assert resp.status_code == 403 and resp.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"  # §2.1 array
    assert sf.contacts() == [] and sf.counters["rest.fault.403"] == 1


def test_salesforce_unavailable_rate_answers_503(sf: SalesforceEmulator, rest: Any) -> None:
    http, url = rest
    sf.faults.unavailable_rate = 1.0
    resp = _create(http, url)
    assert resp.status_code == 503 and resp.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.contacts() == [] and sf.counters["rest.fault.503"] == 1
    sf.faults.unavailable_rate = 0.0
    assert _create(http, url).status_code == 201


@pytest.mark.parametrize(("after", "created"), [(0.0, 0), (1.0, 1)], ids=["before", "after"])
def test_salesforce_reset_rate_drops_the_connection_before_or_after_the_request_ran(
    sf: SalesforceEmulator, rest: Any, after: float, created: int
) -> None:
    http, url = rest
    sf.faults.reset_rate, sf.faults.reset_after_share = 1.0, after
    with pytest.raises(requests.ConnectionError):
        _create(http, url)
    assert len(sf.contacts()) == created
    assert sf.counters["rest.reset.after" if after else "rest.reset.before"] == 1


def _record_ids(sf: SalesforceEmulator) -> list[str]:
    return [e["header"]["recordIds"][0] for e in sf.events()]


def test_cdc_event_drop_and_duplicate_rates(sf: SalesforceEmulator) -> None:
    sf.faults.event_drop_rate = 1.0
    lost = sf.create_contact({"LastName": "Lost"})
    sf.faults.event_drop_rate, sf.faults.event_duplicate_rate = 0.0, 1.0
    twice = sf.create_contact({"LastName": "Twice"})
    assert _record_ids(sf) == [twice, twice] and lost not in _record_ids(sf)
    assert sf.counters["events.dropped"] == 1 and sf.counters["events.duplicated"] == 1


def test_cdc_event_reorder_rate_publishes_an_event_after_the_next_one(sf: SalesforceEmulator) -> None:
    sf.faults.event_reorder_rate = 1.0
    first = sf.create_contact({"LastName": "First"})
    assert sf.events() == []  # held back
    second = sf.create_contact({"LastName": "Second"})
    assert _record_ids(sf) == [second, first]  # replay order is no longer commit order
    third = sf.create_contact({"LastName": "Third"})  # held again; released to a reader after reorder_hold_s
    sf.faults.reorder_hold_s = 0.0
    with sf.org.lock:
        sf.org.events_after(0, 10)
    assert _record_ids(sf) == [second, first, third]
    assert sf.counters["events.reordered"] == 2
