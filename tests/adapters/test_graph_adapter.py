"""GraphContactSide and GraphSubscriptions beyond the shared contract: error mapping, ambiguous creates, throttling,
per-mailbox concurrency, delta resync, request counts, subscriptions with a real validation handshake.

Everything runs against the Graph emulator on 127.0.0.1 with small Retry-After values and a small ``max_wait``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emulators.graph import GraphEmulator
from emulators.graph.faults import FaultRule
from sync.adapters.graph import (
    DEFAULT_FOLDER_NAME,
    MARKER_PROPERTY_ID,
    CredentialKind,
    GraphContactSide,
    GraphSubscriptions,
    client_state_digest,
    client_state_matches,
    credential_from_settings,
    parse_retry_after,
)
from sync.adapters.graph.credentials import _federated_assertion
from sync.adapters.graph.items import same_property
from sync.adapters.graph.transport import _map_error
from sync.engine import Engine
from sync.errors import (
    AlreadyExists,
    AuthFailed,
    BadData,
    NotFound,
    PreconditionFailed,
    SyncError,
    Throttled,
    Transient,
)
from sync.model import Contact, Side, case_safe_id
from sync.policy import DeletePolicy, Policy
from sync.ports import ContactChange, CreateRequest, SideRecord, UpdateRequest
from sync.reconcile import reconcile_mailbox, reconcile_mailbox_delta
from tests.contract.graph_harness import MAILBOX, OTHER, make_side
from tests.fakes import LogicalClock, MemoryAudit, MemoryCheckpoints, MemoryLinkStore, MemoryQueue, MemorySide


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator(users=[MAILBOX, OTHER], validation_timeout_s=2.0) as g:
        yield g


@pytest.fixture
def side(emu: GraphEmulator) -> Iterator[GraphContactSide]:
    s = make_side(emu)
    yield s
    s.close()


def folder_contacts(emu: GraphEmulator, mailbox: str = MAILBOX) -> list[dict[str, Any]]:
    folder = emu.find_folder(mailbox, DEFAULT_FOLDER_NAME)
    return emu.list_contacts(mailbox, folder) if folder else []


def person(i: int) -> Contact:
    return Contact(first_name=f"P{i}", last_name="Load", emails=[f"p{i}@example.com"])


# ---- error mapping ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "ErrorItemNotFound", NotFound),
        (400, "ErrorInvalidIdMalformed", NotFound),
        (412, "ErrorIrresolvableConflict", PreconditionFailed),
        (409, "Conflict", AlreadyExists),
        (400, "ErrorFolderExists", AlreadyExists),
        (401, "InvalidAuthenticationToken", AuthFailed),
        (403, "ErrorAccessDenied", AuthFailed),
        (429, "TooManyRequests", Throttled),
        (429, "ApplicationThrottled", Throttled),
        (503, "ServiceNotAvailable", Throttled),
        (500, "InternalServerError", Transient),
        (502, "BadGateway", Transient),
        (504, "GatewayTimeout", Transient),
        (410, "SyncStateNotFound", Transient),
        (400, "SyncStateInvalid", Transient),
        (410, "resyncRequired", Transient),
        (424, "FailedDependency", Transient),
        (400, "RequestBodyRead", BadData),
        (400, "ErrorInvalidUrlQueryFilter", BadData),
        (None, "", Transient),
    ],
)
def test_error_mapping_table(status: int | None, code: str, expected: type[SyncError]) -> None:
    err = _map_error(status, code, retry_after=2.0, item_id="AAMk1")
    assert type(err) is expected
    assert "AAMk1" in str(err) or expected is AuthFailed
    if expected is Throttled:
        assert isinstance(err, Throttled) and err.retry_after == 2.0
    if expected is BadData:
        assert isinstance(err, BadData) and err.code == code


def test_transport_exception_is_transient_and_retry_after_parses() -> None:
    err = _map_error(None, exc=TimeoutError("read timed out"))
    assert isinstance(err, Transient) and "TimeoutError" in str(err)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


# ---- credentials (selection only: nothing talks to Entra) ---------------------------------------------------------


def test_credential_selection_and_errors(tmp_path: Any) -> None:
    from azure.identity import CertificateCredential, ClientAssertionCredential, ClientSecretCredential

    assert isinstance(credential_from_settings("secret", "t", "c", secret="s"), ClientSecretCredential)
    assert isinstance(
        credential_from_settings(CredentialKind.MANAGED_IDENTITY, "t", "c", managed_identity_client_id="mi"),
        ClientAssertionCredential,
    )
    pem = _self_signed_pem()
    assert isinstance(credential_from_settings("certificate", "t", "c", certificate=pem), CertificateCredential)
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    assert isinstance(credential_from_settings("certificate", "t", "c", certificate=str(path)), CertificateCredential)
    with pytest.raises(ValueError, match="unknown Graph credential kind"):
        credential_from_settings("password", "t", "c")
    with pytest.raises(ValueError, match="tenant id and a client id"):
        credential_from_settings("secret", "", "c", secret="s")
    with pytest.raises(ValueError, match="client secret"):
        credential_from_settings("secret", "t", "c")
    with pytest.raises(ValueError, match="needs a certificate"):
        credential_from_settings("certificate", "t", "c")


def test_federated_assertion_asks_for_the_token_exchange_audience() -> None:
    asked: list[str] = []

    class FakeIdentity:
        def get_token(self, scope: str) -> Any:
            asked.append(scope)
            return type("T", (), {"token": "mi-token"})()

    assert _federated_assertion(FakeIdentity())() == "mi-token"
    assert asked == ["api://AzureADTokenExchange/.default"]


def _self_signed_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sync-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


# ---- folder, scope, headers --------------------------------------------------------------------------------------


def test_folder_is_created_once_and_found_again(emu: GraphEmulator, side: GraphContactSide) -> None:
    folder = side.folder_id(MAILBOX)
    assert emu.find_folder(MAILBOX, DEFAULT_FOLDER_NAME) == folder
    again = make_side(emu)
    try:
        assert again.folder_id(MAILBOX) == folder  # found by $filter, not created twice
    finally:
        again.close()
    assert emu.counters.count(endpoint="contactFolders.create") == 1
    with pytest.raises(AuthFailed):
        side.get("mallory@contoso.com", "x")


def test_folder_create_race_refilters_on_error_folder_exists(emu: GraphEmulator, side: GraphContactSide) -> None:
    class RaceRule(FaultRule):
        def matches(self, mailbox: str | None, endpoint: str, after: bool) -> bool:
            hit = super().matches(mailbox, endpoint, after)
            if hit:  # someone else creates the folder between our lookup and our create
                emu.store.create_folder(emu.store.user(MAILBOX), emu.store.user(MAILBOX).root_folder_id,
                                        DEFAULT_FOLDER_NAME)
            return hit

    emu.faults.add(RaceRule(400, 1, endpoint="contactFolders.create", code="ErrorFolderExists",
                            message="A folder with the specified name already exists."))
    assert side.folder_id(MAILBOX) == emu.find_folder(MAILBOX, DEFAULT_FOLDER_NAME)


def test_update_sends_only_changed_fields_and_clears_with_null(emu: GraphEmulator, side: GraphContactSide) -> None:
    seen: list[dict[str, Any]] = []
    original = emu.store.update_contact

    def spy(mb: Any, cid: str, changes: dict[str, Any], *args: Any) -> Any:
        seen.append(dict(changes))
        return original(mb, cid, changes, *args)

    emu.store.update_contact = spy  # type: ignore[method-assign]
    created = side.create(MAILBOX, Contact(last_name="Byron", job_title="Countess", city="London",
                                           street="1 Lane", emails=["a@example.com"]), marker="003A")
    side.update(MAILBOX, created.id, created.contact.with_values({"job_title": None}),
                fields=frozenset({"job_title"}), if_match=created.version)
    side.update(MAILBOX, created.id, created.contact.with_values({"city": "Paris"}),
                fields=frozenset({"city"}), if_match=None)
    assert seen[0] == {"jobTitle": None}
    assert seen[1] == {"businessAddress": {"street": "1 Lane", "city": "Paris"}}
    got = side.get(MAILBOX, created.id)
    assert got is not None and got.marker == "003A" and got.contact.street == "1 Lane"
    assert got.contact.job_title is None and got.contact.city == "Paris"


# ---- ambiguous creates ---------------------------------------------------------------------------------------------


def test_ambiguous_create_with_marker_does_not_duplicate(emu: GraphEmulator, side: GraphContactSide) -> None:
    side.folder_id(MAILBOX)
    emu.faults.fail(503, count=1, endpoint="contacts.create", after_execute=True)
    record = side.create(MAILBOX, person(1), marker="003AMBIGUOUS")
    stored = folder_contacts(emu)
    assert [c["id"] for c in stored] == [record.id]
    assert record.marker == "003AMBIGUOUS"
    assert emu.counters.count(endpoint="contacts.create") == 1  # looked up, not re-sent


@pytest.mark.parametrize("bulk", [False, True])
def test_an_ambiguous_create_finds_its_own_contact_not_another_workers_copy(
    emu: GraphEmulator, side: GraphContactSide, bulk: bool
) -> None:
    """Two workers create the same person at once (the soak: a duplicated hint): both copies carry the same marker.
    The one whose answer was lost must get its own copy back, so the engine deletes it when it loses the link
    race; with the other's copy it deleted nothing and a duplicate stayed."""
    side.folder_id(MAILBOX)
    winner = side.create(MAILBOX, person(1), marker="003SAME")
    emu.faults.fail(503, count=1, endpoint="contacts.create", after_execute=True)
    if bulk:
        (mine,) = side.create_many(MAILBOX, [CreateRequest(contact=person(1), marker="003SAME")])
        assert isinstance(mine, SideRecord)
    else:
        mine = side.create(MAILBOX, person(1), marker="003SAME")
    stored = {c["id"] for c in folder_contacts(emu)}
    assert stored == {winner.id, mine.id} and mine.id != winner.id  # its own copy, which it can delete again
    assert emu.counters.count(endpoint="contacts.create") == 2  # looked up, not re-sent


def test_failed_create_with_marker_is_sent_again_after_checking(emu: GraphEmulator, side: GraphContactSide) -> None:
    side.folder_id(MAILBOX)
    emu.faults.fail(503, count=1, endpoint="contacts.create", retry_after=0)  # refused before executing
    record = side.create(MAILBOX, person(2), marker="003RETRY")
    assert [c["id"] for c in folder_contacts(emu)] == [record.id]
    assert emu.counters.count(endpoint="contacts.create") == 2


def test_ambiguous_create_without_marker_raises_transient_and_is_not_resent(
    emu: GraphEmulator, side: GraphContactSide
) -> None:
    side.folder_id(MAILBOX)
    emu.faults.fail(504, count=1, endpoint="contacts.create", after_execute=True)
    with pytest.raises(Transient):
        side.create(MAILBOX, person(3))
    assert len(folder_contacts(emu)) == 1  # the engine's match-before-create will find this one
    assert [r.id for r in side.find(MAILBOX, person(3))] == [folder_contacts(emu)[0]["id"]]


def test_ambiguous_batch_create_does_not_duplicate(emu: GraphEmulator, side: GraphContactSide) -> None:
    side.folder_id(MAILBOX)
    emu.faults.fail(503, count=3, endpoint="contacts.create", after_execute=True)
    results = side.create_many(MAILBOX, [CreateRequest(contact=person(i), marker=f"003B{i:03d}") for i in range(30)])
    assert all(isinstance(r, SideRecord) for r in results)
    stored = folder_contacts(emu)
    assert len(stored) == 30 and len({c["id"] for c in stored}) == 30
    assert [r.marker for r in results if isinstance(r, SideRecord)] == [f"003B{i:03d}" for i in range(30)]


# ---- version guard across retries -------------------------------------------------------------------------------


@dataclass
class EditWhileRefusing(FaultRule):
    """Refuse the next matching request (not executed); at that moment the user edits ``contact_id`` in Outlook,
    so the edit lands between our failed attempt and its retry."""

    edit: tuple[GraphEmulator, str] | None = None

    def matches(self, mailbox: str | None, endpoint: str, after: bool) -> bool:
        hit = super().matches(mailbox, endpoint, after)
        if hit and self.edit is not None:
            emu, contact_id = self.edit
            emu.update_contact(MAILBOX, contact_id, {"jobTitle": "CTO"})
        return hit


def test_writes_retried_after_503_send_if_match_again_so_a_user_edit_in_between_wins(
    emu: GraphEmulator, side: GraphContactSide
) -> None:
    """Graph compares the changeKey on every attempt (``If-Match`` goes with each retry): no re-check needed."""
    a, b, c, d = (side.create(MAILBOX, person(i).with_values({"job_title": "Dev"})) for i in range(4))

    def refuse_once(endpoint: str, contact_id: str) -> None:
        emu.faults.add(EditWhileRefusing(503, 1, endpoint=endpoint, retry_after=0, code="ServiceNotAvailable",
                                         edit=(emu, contact_id)))

    refuse_once("contact.update", a.id)
    with pytest.raises(PreconditionFailed):
        side.update(MAILBOX, a.id, a.contact.with_values({"job_title": "Engineer"}), fields=frozenset({"job_title"}),
                    if_match=a.version)
    refuse_once("contact.delete", b.id)
    with pytest.raises(PreconditionFailed):
        side.delete(MAILBOX, b.id, if_match=b.version)
    refuse_once("contact.update", c.id)
    results = side.update_many(MAILBOX, [
        UpdateRequest(item_id=r.id, contact=r.contact.with_values({"job_title": "Engineer"}),
                      fields=frozenset({"job_title"}), if_match=r.version) for r in (c, d)
    ])
    assert isinstance(results[0], PreconditionFailed)
    assert isinstance(results[1], SideRecord) and results[1].contact.job_title == "Engineer"
    titles = {i: (emu.get_contact(MAILBOX, i) or {}).get("jobTitle") for i in (a.id, b.id, c.id, d.id)}
    assert titles == {a.id: "CTO", b.id: "CTO", c.id: "CTO", d.id: "Engineer"}  # b was not deleted either
    assert side.stats["retries"] >= 3


# ---- throttling and concurrency ---------------------------------------------------------------------------------


@dataclass
class RandomThrottle(FaultRule):
    """429 TooManyRequests with Retry-After for a share of the requests to some endpoints (seeded)."""

    probability: float = 0.3
    endpoints: tuple[str, ...] = ()
    rng: random.Random = field(default_factory=lambda: random.Random(20240607))

    def matches(self, mailbox: str | None, endpoint: str, after: bool) -> bool:
        return not after and endpoint in self.endpoints and self.rng.random() < self.probability


def test_throttled_bulk_create_completes_without_duplicates(emu: GraphEmulator) -> None:
    side = make_side(emu, max_attempts=15, max_wait=2.0)
    try:
        side.folder_id(MAILBOX)
        uid = emu.user_id(MAILBOX)
        emu.faults.add(RandomThrottle(429, 10**9, retry_after=1, endpoints=("contacts.create", "$batch")))
        start = time.monotonic()
        results = side.create_many(MAILBOX, [CreateRequest(contact=person(i), marker=f"003T{i:04d}")
                                             for i in range(500)])
        elapsed = time.monotonic() - start
        stats = dict(side.stats)
    finally:
        side.close()
    assert all(isinstance(r, SideRecord) for r in results)
    stored = folder_contacts(emu)
    assert len(stored) == 500
    assert len({c["emailAddresses"][0]["address"] for c in stored}) == 500  # no duplicates
    throttled = emu.counters.count(status=429)
    assert throttled > 100  # about 30 % of the requests were refused
    assert stats["throttled"] == throttled  # every 429 was seen, and retried...
    assert stats["waited_ms"] == 1000 * stats["retries"]  # ...after exactly its Retry-After (1 s)
    assert elapsed >= 1.0
    assert emu.gate.peak(uid) <= 4
    print(f"\nthrottled 500: {throttled} x 429, {stats['retries']} retries, {stats['batches']} batches, "
          f"peak {emu.gate.peak(uid)}, {elapsed:.1f}s")


def test_never_more_than_four_requests_in_flight_per_mailbox(emu: GraphEmulator, side: GraphContactSide) -> None:
    uid = emu.user_id(MAILBOX)
    created = side.create(MAILBOX, person(1))
    emu.faults.mailbox_delay_s[uid] = 0.15
    with ThreadPoolExecutor(max_workers=10) as pool:
        got = list(pool.map(lambda _: side.get(MAILBOX, created.id), range(10)))
        pool.submit(side.create_many, MAILBOX, [CreateRequest(contact=person(i)) for i in range(10, 15)]).result()
    assert all(g is not None and g.id == created.id for g in got)
    assert emu.gate.peak(uid) == 4  # saturated, never over
    assert emu.counters.count(mailbox=uid, status=429) == 0  # no MailboxConcurrency refusals


def test_a_retry_after_longer_than_max_wait_is_raised_as_throttled(emu: GraphEmulator, side: GraphContactSide) -> None:
    created = side.create(MAILBOX, person(1))
    emu.faults.throttle(count=1, retry_after=30, endpoint="contact.get")
    with pytest.raises(Throttled) as exc:
        side.get(MAILBOX, created.id)
    assert exc.value.retry_after == 30


def test_thousand_contacts_take_about_fifty_batches(emu: GraphEmulator, side: GraphContactSide) -> None:
    side.folder_id(MAILBOX)
    emu.counters.reset()
    results = side.create_many(MAILBOX, [CreateRequest(contact=person(i)) for i in range(1000)])
    assert all(isinstance(r, SideRecord) for r in results)
    batches = emu.counters.count(endpoint="$batch")
    print(f"\n1,000 creates: {batches} $batch calls, {emu.counters.count(endpoint='contacts.create')} items")
    assert batches <= 55
    assert len(folder_contacts(emu)) == 1000


# ---- writes stay in the sync folder ----------------------------------------------------------------------------------


def test_a_contact_moved_out_of_the_folder_is_gone_and_never_written(emu: GraphEmulator,
                                                                     side: GraphContactSide) -> None:
    # ids are mailbox-wide (docs/reference/graph.md §1.8): the folder path still finds the moved contact
    rec = side.create(MAILBOX, person(1), marker="003000000000001")
    moved = emu.move_contact(MAILBOX, rec.id)  # the rep drags it to the default Contacts folder
    emu.counters.reset()
    assert side.get(MAILBOX, rec.id) is None  # it left the folder: the Outlook removal rule applies
    scalar = frozenset({"job_title"})
    with pytest.raises(NotFound):
        side.update(MAILBOX, rec.id, Contact(first_name="P1", job_title="X"), fields=scalar, if_match=None)
    with pytest.raises(NotFound):
        side.update(MAILBOX, rec.id, Contact(first_name="P1"), fields=frozenset(), if_match=None, marker="")
    (err,) = side.update_many(MAILBOX, [UpdateRequest(item_id=rec.id, contact=Contact(job_title="X"), fields=scalar)])
    assert isinstance(err, NotFound)
    with pytest.raises(NotFound):
        side.delete(MAILBOX, rec.id, if_match=None)
    assert emu.counters.count(endpoint="contact.update") == emu.counters.count(endpoint="contact.delete") == 0
    after = emu.get_contact(MAILBOX, rec.id)
    assert after is not None and after["changeKey"] == moved["changeKey"]  # never written again


def test_with_if_match_ignored_the_guard_read_still_refuses_a_stale_write(emu: GraphEmulator,
                                                                          side: GraphContactSide) -> None:
    emu.faults.ignore_if_match = True  # as Exchange may (§1.5)
    rec = side.create(MAILBOX, person(1))
    emu.update_contact(MAILBOX, rec.id, {"jobTitle": "Rep's edit"})  # lands after our read
    with pytest.raises(PreconditionFailed):
        side.update(MAILBOX, rec.id, Contact(first_name="P1", job_title="Ours"), fields=frozenset({"job_title"}),
                    if_match=rec.version)
    (err,) = side.update_many(MAILBOX, [UpdateRequest(item_id=rec.id, contact=Contact(job_title="Ours"),
                                                      fields=frozenset({"job_title"}), if_match=rec.version)])
    assert isinstance(err, PreconditionFailed)
    with pytest.raises(PreconditionFailed):
        side.delete(MAILBOX, rec.id, if_match=rec.version)
    now = emu.get_contact(MAILBOX, rec.id)
    assert now is not None and now["jobTitle"] == "Rep's edit"


def edit_during_the_retry_pause(emu: GraphEmulator, side: GraphContactSide, item_id: str) -> list[float]:
    """A rep's edit lands while our throttled write waits out its Retry-After (the pause is our transport's)."""
    real = side._http.pause
    waits: list[float] = []

    async def pause(seconds: float, failure: Any) -> None:
        waits.append(seconds)
        emu.update_contact(MAILBOX, item_id, {"jobTitle": "Rep's edit"})
        await real(0.0, failure)

    side._http.pause = pause  # type: ignore[method-assign]
    return waits


@pytest.mark.parametrize("write", ["update", "update_many", "delete"])
def test_a_throttled_write_never_overwrites_or_deletes_an_edit_made_while_it_waited(
        emu: GraphEmulator, side: GraphContactSide, write: str) -> None:
    """Found by the 3-instance soak (seed 2): an Outlook edit made ~0.6 s before an owner hand-off moved the copy to
    Deleted Items never reached Salesforce. The DELETE, throttled after its guard read, was sent again after the
    Retry-After with If-Match ignored (§1.5); each retry is now guarded by a fresh read."""
    emu.faults.ignore_if_match = True
    rec = side.create(MAILBOX, person(1))
    emu.faults.throttle(1, retry_after=1, endpoint="contact.delete" if write == "delete" else "contact.update")
    if write == "update_many":  # a $batch item waits by itself (no pause of ours): the edit lands after the 429
        real_run = side._batches.run

        async def run(mailbox: str, ops: list[Any]) -> None:
            for op in ops:
                if op.method == "PATCH":
                    real_retry = op.before_retry

                    async def edited_then_checked(o: Any, real_retry: Any = real_retry) -> Any:
                        emu.update_contact(MAILBOX, rec.id, {"jobTitle": "Rep's edit"})
                        return await real_retry(o)
                    op.before_retry = edited_then_checked
            await real_run(mailbox, ops)

        side._batches.run = run  # type: ignore[method-assign]
        (err,) = side.update_many(MAILBOX, [UpdateRequest(item_id=rec.id, contact=Contact(job_title="Ours"),
                                                          fields=frozenset({"job_title"}), if_match=rec.version)])
        assert isinstance(err, PreconditionFailed)
    else:
        waits = edit_during_the_retry_pause(emu, side, rec.id)
        with pytest.raises(PreconditionFailed):
            if write == "update":
                side.update(MAILBOX, rec.id, Contact(first_name="P1", job_title="Ours"),
                            fields=frozenset({"job_title"}), if_match=rec.version)
            else:
                side.delete(MAILBOX, rec.id, if_match=rec.version)
        assert waits == [1.0]
    assert emu.counters.count(endpoint="contact.update", status=200) == 0  # only the throttled attempt went out
    now = emu.get_contact(MAILBOX, rec.id)
    assert now is not None and now["jobTitle"] == "Rep's edit"


@pytest.mark.parametrize("write", ["update", "delete"])
def test_a_write_whose_answer_was_lost_is_not_refused_by_its_own_change(
        emu: GraphEmulator, side: GraphContactSide, write: str) -> None:
    """The guard read before a retry sees a new changeKey when the first attempt ran although its answer was lost:
    a PATCH whose values all landed is taken as done, a contact gone after a DELETE is deleted."""
    emu.faults.ignore_if_match = True
    rec = side.create(MAILBOX, person(1))
    emu.faults.fail(503, 1, endpoint=f"contact.{write}", after_execute=True)
    if write == "update":
        done = side.update(MAILBOX, rec.id, Contact(first_name="P1", job_title="Ours"),
                           fields=frozenset({"job_title"}), if_match=rec.version)
        assert done.contact.job_title == "Ours" and done.version != rec.version
        now = emu.get_contact(MAILBOX, rec.id)
        assert now is not None and now["jobTitle"] == "Ours"
        assert emu.counters.count(endpoint="contact.update") == 1
    else:
        side.delete(MAILBOX, rec.id, if_match=rec.version)
        assert emu.get_contact(MAILBOX, rec.id) is None


def test_the_engine_never_writes_a_linked_contact_moved_to_the_default_folder(emu: GraphEmulator,
                                                                               side: GraphContactSide) -> None:
    clock = LogicalClock()
    sf = MemorySide(Side.SALESFORCE, clock=clock)
    links, audit = MemoryLinkStore(), MemoryAudit()
    engine = Engine(side, sf, links, audit, MemoryQueue(), Policy(), [MAILBOX], clock=clock)
    sf_id = sf.user_create(MAILBOX, Contact(first_name="Ada", last_name="Moved", emails=["ada@example.com"]))
    list(engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))
    (copy,) = folder_contacts(emu)
    moved = emu.move_contact(MAILBOX, copy["id"])
    list(engine.sync_contact(ContactChange(source=Side.M365, item_id=copy["id"], mailbox=MAILBOX)))
    for values in ({"job_title": "CTO"}, {"city": "Oslo"}):
        sf.user_edit(sf_id, values)
        list(engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))
    sf.user_delete(sf_id)
    list(engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))
    after = emu.get_contact(MAILBOX, copy["id"])
    assert after is not None and after["changeKey"] == moved["changeKey"]  # never written, never deleted
    assert folder_contacts(emu) == []  # and not copied back into the folder either
    assert any("deleted in Outlook" in e.reason for e in audit.entries)  # the removal rule, audited


def _synced_pair(side: GraphContactSide, policy: Policy,
                 n: int = 2) -> tuple[Engine, MemorySide, MemoryAudit, list[str]]:
    """An engine over the Graph emulator with ``n`` Salesforce contacts copied into the sync folder."""
    clock = LogicalClock()
    sf = MemorySide(Side.SALESFORCE, clock=clock)
    engine = Engine(side, sf, MemoryLinkStore(), MemoryAudit(), MemoryQueue(), policy, [MAILBOX], clock=clock)
    ids = [sf.user_create(MAILBOX, Contact(first_name="Ada", last_name=f"Folder{i}", emails=[f"ada{i}@example.com"]))
           for i in range(n)]
    for sf_id in ids:
        list(engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=sf_id)))
    audit = engine.audit
    assert isinstance(audit, MemoryAudit)
    return engine, sf, audit, ids


def test_a_deleted_sync_folder_never_deletes_in_salesforce_and_its_contacts_come_back(
        emu: GraphEmulator, side: GraphContactSide) -> None:
    engine, sf, audit, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE))
    old_folder = side.folder_id(MAILBOX)
    old = {c["id"]: c["changeKey"] for c in emu.list_contacts(MAILBOX, old_folder)}
    emu.delete_folder(MAILBOX, old_folder)  # the rep deletes the folder: to Deleted Items (§2.5)
    # each contact is notified as deleted; a worker that knows the folder is gone hears them one by one
    fresh = make_side(emu)
    try:
        worker = Engine(fresh, sf, engine.links, audit, MemoryQueue(), engine.policy, [MAILBOX], clock=engine.clock)
        for item_id in old:
            list(worker.sync_contact(ContactChange(source=Side.M365, item_id=item_id, mailbox=MAILBOX)))
    finally:
        fresh.close()
    reconcile_mailbox(engine, MAILBOX)  # and the next pass of the worker that still knew the old folder
    assert all(sf.get(MAILBOX, i) is not None for i in sf_ids) and not sf.deleted  # nothing deleted in Salesforce
    new_folder = emu.find_folder(MAILBOX, DEFAULT_FOLDER_NAME)
    assert new_folder not in (None, old_folder)
    again = emu.list_contacts(MAILBOX, new_folder)
    assert sorted(c["surname"] for c in again) == ["Folder0", "Folder1"]  # copied into the new folder, once each
    assert {c["id"]: c["changeKey"] for c in emu.list_contacts(MAILBOX, old_folder)} == old  # left alone
    info = emu.folder_info(MAILBOX, old_folder)
    assert info is not None and info["parentFolderId"] == emu.deleted_items_id(MAILBOX)  # still in Deleted Items
    left = [e for e in audit.entries if "left with the sync folder" in e.reason]
    assert {e.sf_id for e in left} == set(sf_ids) and not [e for e in audit.entries if e.action == "delete"]
    assert {link.m365_id for link in engine.links.list(MAILBOX)} == {c["id"] for c in again}


def test_a_delta_pass_after_the_folder_was_deleted_runs_full_and_copies_into_a_new_folder(
        emu: GraphEmulator, side: GraphContactSide) -> None:
    engine, sf, audit, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE))
    checkpoints = MemoryCheckpoints()
    assert reconcile_mailbox_delta(engine, MAILBOX, checkpoints).ran == "full"  # first run: tokens taken
    old_folder = side.folder_id(MAILBOX)
    emu.delete_folder(MAILBOX, old_folder)
    report = reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
    assert report.ran == "full" and not report.errors and not sf.deleted
    new_folder = side.folder_id(MAILBOX)
    assert new_folder != old_folder and len(emu.list_contacts(MAILBOX, new_folder)) == len(sf_ids)
    assert reconcile_mailbox_delta(engine, MAILBOX, checkpoints).ran == "delta"  # settled on the new folder


def test_a_no_change_delta_pass_is_one_graph_request_and_checks_the_folder_when_due(emu: GraphEmulator) -> None:
    now = [0.0]
    side = make_side(emu, folder_check_every_s=100.0, clock=lambda: now[0])
    try:
        engine, _, _, _ = _synced_pair(side, Policy())
        checkpoints = MemoryCheckpoints()
        assert reconcile_mailbox_delta(engine, MAILBOX, checkpoints).ran == "full"  # first run: links stored
        counts = []
        for step in (50.0, 49.0, 1.0, 1.0):  # at 50, 99, 100 (due: checked) and 101 seconds
            now[0] += step
            before = emu.counters.http_requests()
            report = reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
            assert report.ran == "delta" and not report.errors and not report.applied
            counts.append(emu.counters.http_requests() - before)
        assert counts == [1, 1, 2, 1]  # the delta round; the folder GET too once it is 100 s old
    finally:
        side.close()


def test_a_deleted_folder_whose_delta_keeps_answering_is_noticed_within_the_check_interval(
        emu: GraphEmulator) -> None:
    # the other reading of what Graph does (§2.3): the deleted folder's delta link keeps answering, with nothing
    now = [0.0]
    side = make_side(emu, folder_check_every_s=100.0, clock=lambda: now[0])
    try:
        engine, sf, _, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE))
        checkpoints = MemoryCheckpoints()
        assert reconcile_mailbox_delta(engine, MAILBOX, checkpoints).ran == "full"
        emu.faults.folder_delete_keeps_delta = True
        old_folder = side.folder_id(MAILBOX)
        emu.delete_folder(MAILBOX, old_folder)
        now[0] = 99.0
        report = reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
        assert report.ran == "delta" and not report.applied  # not due: the delta alone cannot tell
        assert side.folder_id(MAILBOX) == old_folder
        now[0] = 100.0
        report = reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
        assert report.ran == "full" and not report.errors and not sf.deleted
        new_folder = side.folder_id(MAILBOX)
        assert new_folder != old_folder and len(emu.list_contacts(MAILBOX, new_folder)) == len(sf_ids)
        assert all(sf.get(MAILBOX, i) is not None for i in sf_ids)
    finally:
        side.close()


def test_a_delta_pass_after_another_worker_replaced_the_folder_checks_the_folder_at_once(
        emu: GraphEmulator) -> None:
    now = [0.0]
    side = make_side(emu, folder_check_every_s=100.0, clock=lambda: now[0])
    other = make_side(emu)
    try:
        engine, sf, audit, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE))
        checkpoints = MemoryCheckpoints()
        assert reconcile_mailbox_delta(engine, MAILBOX, checkpoints).ran == "full"
        emu.faults.folder_delete_keeps_delta = True
        old_folder = side.folder_id(MAILBOX)
        emu.delete_folder(MAILBOX, old_folder)
        # another instance (its own folder cache) runs the next pass: a fresh lookup, a new folder, new checkpoints
        worker = Engine(other, sf, engine.links, audit, MemoryQueue(), engine.policy, [MAILBOX], clock=engine.clock)
        assert reconcile_mailbox_delta(worker, MAILBOX, checkpoints).ran == "full"
        new_folder = other.folder_id(MAILBOX)
        assert new_folder != old_folder
        # this instance's check is not due, but the stored delta link names another folder: it looks again
        now[0] = 10.0
        report = reconcile_mailbox_delta(engine, MAILBOX, checkpoints)
        assert report.ran == "delta" and not report.errors and not report.applied
        assert side.folder_id(MAILBOX) == new_folder and not sf.deleted
        assert len(emu.list_contacts(MAILBOX, new_folder)) == len(sf_ids)
    finally:
        side.close()
        other.close()


def test_a_renamed_sync_folder_is_followed(emu: GraphEmulator, side: GraphContactSide) -> None:
    engine, sf, audit, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE), n=1)
    folder = side.folder_id(MAILBOX)
    emu.rename_folder(MAILBOX, folder, "Customers")
    sf.user_edit(sf_ids[0], {"job_title": "CTO"})
    reconcile_mailbox(engine, MAILBOX)
    fresh = make_side(emu)  # a worker started after the rename finds the folder by its stamp, not by name
    try:
        assert fresh.folder_id(MAILBOX) == folder
    finally:
        fresh.close()
    assert emu.find_folder(MAILBOX, DEFAULT_FOLDER_NAME) is None  # no second folder
    (copy,) = emu.list_contacts(MAILBOX, folder)
    assert copy["jobTitle"] == "CTO" and sf.get(MAILBOX, sf_ids[0]) is not None


def test_a_contact_deleted_from_a_live_folder_is_still_a_delete(emu: GraphEmulator, side: GraphContactSide) -> None:
    engine, sf, audit, sf_ids = _synced_pair(side, Policy(on_m365_delete=DeletePolicy.PROPAGATE), n=1)
    (copy,) = emu.list_contacts(MAILBOX, side.folder_id(MAILBOX))
    emu.delete_contact(MAILBOX, copy["id"])
    assert side.left_with_folder(MAILBOX, copy["id"]) is False
    list(engine.sync_contact(ContactChange(source=Side.M365, item_id=copy["id"], mailbox=MAILBOX)))
    assert sf.get(MAILBOX, sf_ids[0]) is None  # propagate, as row 24 says


# ---- delta ---------------------------------------------------------------------------------------------------------


def test_delta_follows_empty_pages_and_resyncs_on_410(emu: GraphEmulator) -> None:
    side = make_side(emu, page_size=3)
    try:
        ids = {side.create(MAILBOX, person(i)).id for i in range(7)}
        emu.faults.delta_empty_pages = 2
        pages = list(side.changes(MAILBOX, None))
        assert all(p.full for p in pages) and pages[-1].checkpoint
        assert {r.id for p in pages for r in p.records} == ids
        checkpoint = pages[-1].checkpoint
        assert checkpoint is not None
        emu.expire_delta_tokens(MAILBOX)
        again = list(side.changes(MAILBOX, checkpoint))
        assert again and all(p.full for p in again)  # started over
        assert {r.id for p in again for r in p.records} == ids
        assert emu.counters.count(endpoint="contacts.delta", status=410) == 1
    finally:
        side.close()


@pytest.mark.parametrize("code", ["SyncStateNotFound", "SyncStateInvalid", "resyncRequired"])
def test_a_dropped_delta_token_starts_a_fresh_full_round(emu: GraphEmulator, side: GraphContactSide,
                                                         code: str) -> None:
    ids = {side.create(MAILBOX, person(i)).id for i in range(3)}
    checkpoint = list(side.changes(MAILBOX, None))[-1].checkpoint
    assert checkpoint is not None
    emu.expire_delta_tokens(MAILBOX, code)
    for _ in range(2):  # the dead token never fails a pass, the first or the next
        again = list(side.changes(MAILBOX, checkpoint))
        assert again and all(p.full for p in again)  # the caller runs a full pass of the mailbox
        assert {r.id for p in again for r in p.records} == ids and again[-1].checkpoint != checkpoint


def test_a_delta_reset_in_the_middle_of_a_full_round_starts_it_again(emu: GraphEmulator) -> None:
    side = make_side(emu, page_size=2)
    try:
        ids = {side.create(MAILBOX, person(i)).id for i in range(5)}
        pages = side.changes(MAILBOX, None)
        first = next(pages)
        emu.expire_delta_tokens(MAILBOX, "SyncStateInvalid")  # the skip token of the next page is gone
        rest = list(pages)
        assert first.full and all(p.full for p in rest) and rest[-1].checkpoint
        assert {r.id for p in rest for r in p.records} == ids  # the fresh round lists everything again
    finally:
        side.close()


def test_delta_resets_on_every_page_give_up_after_a_few_fresh_rounds(emu: GraphEmulator) -> None:
    side = make_side(emu, page_size=1)
    try:
        for i in range(2):
            side.create(MAILBOX, person(i))
        checkpoint = list(side.changes(MAILBOX, None))[-1].checkpoint
        assert checkpoint is not None
        emu.faults.delta_reset_rate = 1.0  # every request with a token: no round can finish
        with pytest.raises(Transient):
            list(side.changes(MAILBOX, checkpoint))
        assert emu.counters.count(endpoint="contacts.delta", status=200) == 2 + 3  # bounded: 3 fresh rounds
        emu.faults.delta_reset_rate = 0.0
        assert list(side.changes(MAILBOX, checkpoint))[-1].full  # the next pass is fine
    finally:
        side.close()


# ---- subscriptions ---------------------------------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint on 127.0.0.1: echoes validationToken as text/plain, records notifications."""

    def __init__(self) -> None:
        self.validations: list[str] = []
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                token = parse_qs(urlsplit(self.path).query).get("validationToken")
                if token:
                    with outer.lock:
                        outer.validations.append(token[0])
                    out, status = token[0].encode(), 200
                else:
                    with outer.lock:
                        outer.posts.append(json.loads(body))
                    out, status = b"", 202
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url, self.lifecycle_url = f"{base}/api/graph/notifications", f"{base}/api/graph/lifecycle"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return [n for post in self.posts for n in post["value"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_subscription_create_renew_recreate(emu: GraphEmulator, side: GraphContactSide, receiver: Receiver) -> None:
    subs = GraphSubscriptions(side, notification_url=receiver.url, lifecycle_url=receiver.lifecycle_url)
    new = subs.create(MAILBOX)
    record = new.record
    assert len(receiver.validations) == 2  # notification and lifecycle URLs were both validated
    assert record.client_state_digest == client_state_digest(new.client_state)
    # the UPN with AAD-UPN: (§4.1), not the object id: GET /users/{upn} would need an Entra directory role (§6.4)
    assert record.resource == f"users/AAD-UPN:{MAILBOX}/contactFolders/{side.folder_id(MAILBOX)}/contacts"
    assert not [r for r in emu.counters.snapshot()["requests"] if r["endpoint"].startswith("user")]
    assert record.expires_at > datetime.now(UTC) + timedelta(days=6)

    side.create(MAILBOX, person(1))
    assert emu.wait_notifications(5)
    note = receiver.items()[-1]
    assert note["subscriptionId"] == record.id and note["changeType"] == "created"
    assert client_state_matches(note["clientState"], record.client_state_digest)
    assert not client_state_matches("forged", record.client_state_digest)

    # create again for the same resource: Graph says 409, the old one is replaced
    replaced = subs.create(MAILBOX).record
    assert [s["id"] for s in emu.list_subscriptions()] == [replaced.id]
    record = replaced

    # renew those expiring within the window only
    soon = type(record)(record.id, record.mailbox, record.resource, datetime.now(UTC) + timedelta(hours=2),
                        record.client_state_digest)
    assert subs.renew_expiring([soon], within=timedelta(hours=1)) == []
    (renewed,) = subs.renew_expiring([soon], within=timedelta(days=1))
    assert not isinstance(renewed, type(new)) and renewed.id == record.id
    assert renewed.expires_at > datetime.now(UTC) + timedelta(days=6)

    # reauthorizationRequired -> renew (PATCH reauthorizes)
    emu.send_lifecycle(record.id, "reauthorizationRequired")
    outcome = subs.on_lifecycle("reauthorizationRequired", record)
    assert outcome.record is not None and outcome.record.id == record.id and not outcome.resync
    assert emu.subscriptions[record.id].needs_reauth is False

    # subscriptionRemoved -> re-create and resync
    emu.send_lifecycle(record.id, "subscriptionRemoved")
    assert emu.wait_notifications(5)
    assert receiver.items()[-1]["lifecycleEvent"] == "subscriptionRemoved"
    outcome = subs.on_lifecycle("subscriptionRemoved", record)
    assert outcome.resync and outcome.created is not None and outcome.created.record.id != record.id
    assert [s["id"] for s in emu.list_subscriptions()] == [outcome.created.record.id]
    assert subs.on_lifecycle("missed", outcome.created.record).resync

    # a subscription Graph forgot (expired) is re-created by renew_expiring
    gone = outcome.created.record
    emu.expire_subscription(gone.id)
    (fresh,) = subs.renew_expiring([gone], within=timedelta(days=8))
    assert not isinstance(fresh, type(gone)) and fresh.record.id != gone.id

    subs.delete(fresh.record.id)
    subs.delete(fresh.record.id)  # already gone is fine
    assert emu.list_subscriptions() == []


def test_markers_hold_case_safe_ids_so_ids_differing_only_in_case_are_told_apart(emu: GraphEmulator,
                                                                                 side: GraphContactSide) -> None:
    # Graph compares extended property values case-insensitively (docs/reference/graph.md §1.7); Salesforce's
    # 15-character ids are case-sensitive, their 18-character forms are not (docs/reference/salesforce.md §1.1).
    lower, upper = "003000000000abc", "003000000000ABC"
    assert case_safe_id(lower) == "003000000000abcAAA" and case_safe_id(upper) == "003000000000ABCAA2"
    a = side.create(MAILBOX, person(1), marker=lower)
    (b,) = side.create_many(MAILBOX, [CreateRequest(contact=person(2), marker=upper)])
    assert isinstance(b, SideRecord)
    assert (a.marker, b.marker) == (case_safe_id(lower), case_safe_id(upper))
    stored = {c["id"]: c["singleValueExtendedProperties"][0]["value"] for c in folder_contacts(emu)}
    assert stored == {a.id: "003000000000abcAAA", b.id: "003000000000ABCAA2"}
    for marker, want in ((lower, a.id), (upper, b.id), (case_safe_id(lower), a.id), (case_safe_id(upper), b.id)):
        found = side.find_by_marker(MAILBOX, marker)
        assert found is not None and found.id == want
    # a legacy 15-character marker written by hand reads back case-safe
    emu.update_contact(MAILBOX, a.id, {"singleValueExtendedProperties": [{"id": MARKER_PROPERTY_ID, "value": lower}]})
    got = side.get(MAILBOX, a.id)
    assert got is not None and got.marker == case_safe_id(lower)


def test_the_marker_property_name_is_matched_case_sensitively(emu: GraphEmulator, side: GraphContactSide) -> None:
    rec = side.create(MAILBOX, person(1))
    other_name = MARKER_PROPERTY_ID.replace("Name SalesforceId", "Name salesforceid")
    emu.update_contact(MAILBOX, rec.id, {"singleValueExtendedProperties": [{"id": other_name, "value": "003X"}]})
    got = side.get(MAILBOX, rec.id)
    assert got is not None and got.marker is None  # another property, not our marker
    assert side.find_by_marker(MAILBOX, "003X") is None
    assert same_property(MARKER_PROPERTY_ID.upper().replace("SALESFORCEID", "SalesforceId"), MARKER_PROPERTY_ID)
    assert not same_property(other_name, MARKER_PROPERTY_ID)


def test_marker_property_id_is_in_the_string_namespace_with_a_fixed_guid() -> None:
    assert MARKER_PROPERTY_ID.startswith("String {") and MARKER_PROPERTY_ID.endswith("} Name SalesforceId")


# ---- matching by name + company: one listing per index life, not one per find (docs/performance.md) ----------------
def colleague(i: int, *, email: bool = True) -> Contact:
    return Contact(first_name="Moved", last_name=f"M{i}", company="Moved Co",
                   emails=[f"m{i}@example.com"] if email else [], business_phone="+1 425 555 0100")


def test_finds_by_name_and_company_list_the_folder_once_per_index_life_and_see_this_process_creates(
        emu: GraphEmulator) -> None:
    """A bulk reassignment into one mailbox: n finds + creates. The finds of contacts with an address list the
    folder's names once (the index), not once each (n listings of a folder growing to n); a contact created by this
    process since the listing is found by name + company all the same."""
    side = make_side(emu, name_index_max_age=3600)
    try:
        for i in range(12):
            assert side.find(MAILBOX, colleague(i)) == []
            side.create(MAILBOX, colleague(i), marker=f"003{i:012d}AAA")
        assert emu.counters.count(endpoint="contacts.list") == 12 + 1  # 12 address filters + one name listing
        twin = colleague(5).model_copy(update={"emails": ["other@example.com"]})  # same name + company, other address
        found = side.find(MAILBOX, twin)
        assert [r.contact.last_name for r in found] == ["M5"]
        assert emu.counters.count(endpoint="contacts.list") == 12 + 1 + 1  # its address filter only
    finally:
        side.close()


def test_a_name_listing_older_than_the_index_life_is_read_again(emu: GraphEmulator) -> None:
    side = make_side(emu, name_index_max_age=0.0)
    try:
        side.find(MAILBOX, colleague(1))
        side.find(MAILBOX, colleague(2))
        assert emu.counters.count(endpoint="contacts.list") == 2 * 2  # address filter + listing, each find
    finally:
        side.close()


def test_a_find_by_name_and_company_without_an_address_lists_the_folder_every_time(emu: GraphEmulator) -> None:
    """Without an address no live filter backs the index up (another worker's copy of the same person could be
    newer than the listing): such a find reads the folder's names itself, and sees what another process just
    created."""
    side, other = make_side(emu, name_index_max_age=3600), make_side(emu, name_index_max_age=3600)
    try:
        assert side.find(MAILBOX, colleague(1)) == []  # the index of ``side`` is read now
        made = other.create(MAILBOX, colleague(7, email=False), marker="003000000000007AAA")
        assert [r.id for r in side.find(MAILBOX, colleague(7, email=False))] == [made.id]
        # with an address, the index (read before the other process created it) does not know it yet
        assert side.find(MAILBOX, colleague(7).model_copy(update={"emails": ["x7@example.com"]})) == []
    finally:
        side.close()
        other.close()
