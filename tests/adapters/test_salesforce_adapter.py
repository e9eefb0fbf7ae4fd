"""SalesforceContactSide over the Salesforce emulator: error mapping, version guard, token renewal, bulk writes with
throttling, paging, owners and accounts. Call counts come from the emulator's counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from sync.adapters.salesforce import SessionExpired, map_error, soql_quote
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
from sync.model import Contact
from sync.ports import CreateRequest, SideRecord, UpdateRequest
from tests.contract.salesforce_harness import MAILBOX, OTHER, OUTSIDER, SalesforceHarness

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], company="Analytical Engines")


@pytest.fixture
def h() -> Iterator[SalesforceHarness]:
    harness = SalesforceHarness()
    yield harness
    harness.close()


# -- the one error table ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"status": 403, "code": "REQUEST_LIMIT_EXCEEDED"}, Throttled),
    ({"status": 503, "code": "SERVER_UNAVAILABLE"}, Throttled),
    ({"status": 401, "code": "INVALID_SESSION_ID"}, SessionExpired),
    ({"status": 404, "code": "ENTITY_IS_DELETED"}, NotFound),
    ({"status": 404, "code": "NOT_FOUND"}, NotFound),
    ({"code": "ENTITY_IS_DELETED"}, NotFound),  # a collection item (statusCode, no HTTP status)
    ({"status": 400, "code": "DUPLICATES_DETECTED"}, BadData),
    ({"status": 400, "code": "STRING_TOO_LONG", "fields": ["Title"]}, BadData),
    ({"status": 400, "code": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}, BadData),
    ({"status": 400, "code": "DUPLICATE_VALUE"}, AlreadyExists),
    ({"status": 412, "code": "PRECONDITION_FAILED"}, PreconditionFailed),  # If-Unmodified-Since
    ({"status": 403, "code": "INSUFFICIENT_ACCESS"}, AuthFailed),
    ({"code": "UNABLE_TO_LOCK_ROW"}, Transient),
    ({"status": 500, "code": "UNKNOWN_EXCEPTION"}, Transient),
    ({"status": 400, "code": "invalid_grant", "oauth": True}, AuthFailed),
    ({"grpc_status": "UNAUTHENTICATED", "code": "sfdc.platform.eventbus.grpc.service.auth.error"}, SessionExpired),
    ({"grpc_status": "RESOURCE_EXHAUSTED", "code": "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"},
     Throttled),
    ({"grpc_status": "UNAVAILABLE", "code": "sfdc.platform.eventbus.grpc.service.unavailable"}, Transient),
])
def test_error_table(kwargs: dict[str, object], expected: type[SyncError]) -> None:
    err = map_error(**kwargs)  # type: ignore[arg-type]
    assert type(err) is expected
    if isinstance(err, BadData) and kwargs.get("fields"):
        assert err.fields == tuple(kwargs["fields"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "message", "fields"), [
    ("INVALID_EMAIL_ADDRESS", "Email: invalid email address: ada@example.com", ["Email"]),
    ("STRING_TOO_LONG", "Last Name: data value too large: Byron-Lovelace-King (max length=80)", ["LastName"]),
    ("DUPLICATE_VALUE", "duplicate value found: Email duplicates value ada@example.com on record with id: 003x", []),
    ("SOME_NEW_CODE", "Phone +44 20 7946 0000 is not allowed", ["Phone"]),
])
def test_an_error_about_a_records_content_keeps_the_code_and_fields_not_the_quoted_value(
        code: str, message: str, fields: list[str]) -> None:
    err = map_error(status=400, code=code, message=message, fields=fields)
    text = str(err)
    assert code in text and all(f in text for f in fields)
    for value in ("ada@example.com", "Byron-Lovelace-King", "7946"):
        assert value not in text


def test_a_service_error_keeps_its_message() -> None:
    err = map_error(status=403, code="REQUEST_LIMIT_EXCEEDED", message="TotalRequests Limit exceeded.")
    assert "TotalRequests Limit exceeded." in str(err)


def test_soql_quote_escapes_quotes_and_backslashes(h: SalesforceHarness) -> None:
    assert soql_quote("O'Brien\\x") == "'O\\'Brien\\\\x'"
    tricky = Contact(first_name="Sinéad", last_name="O'Brien", emails=["o'brien@example.com"], company="A\\B 'Q'")
    created = h.side.create(MAILBOX, tricky)
    assert [r.id for r in h.side.find(MAILBOX, tricky)] == [created.id]
    assert created.contact.company == "A\\B 'Q'"


# -- version guard, tokens, retries ------------------------------------------------------------------------

def test_system_modstamp_guard_refuses_before_writing(h: SalesforceHarness) -> None:
    created = h.side.create(MAILBOX, ADA)
    h.emu.advance_time(1)
    h.user_edit(created.id, {"city": "Paris"})
    updates = h.emu.counters["rest.update"]
    with pytest.raises(PreconditionFailed):
        h.side.update(MAILBOX, created.id, ADA.with_values({"city": "Oslo"}), fields=frozenset({"city"}),
                      if_match=created.version)
    with pytest.raises(PreconditionFailed):
        h.side.delete(MAILBOX, created.id, if_match=created.version)
    assert h.emu.counters["rest.update"] == updates and h.emu.counters["rest.delete"] == 0
    fresh = h.side.get(MAILBOX, created.id)
    assert fresh is not None and fresh.contact.city == "Paris"
    h.emu.advance_time(1)
    h.side.delete(MAILBOX, created.id, if_match=fresh.version)
    assert h.side.get(MAILBOX, created.id) is None


def test_invalid_session_gets_a_new_token_once_then_auth_failed(h: SalesforceHarness) -> None:
    created = h.side.create(MAILBOX, ADA)
    minted = h.tokens.minted
    h.emu.faults.invalid_session_next = 1
    assert h.side.get(MAILBOX, created.id) is not None
    assert h.tokens.minted == minted + 1
    h.emu.revoke_tokens()  # the session is gone on the server: renewal works too
    assert h.side.get(MAILBOX, created.id) is not None
    h.emu.faults.invalid_session_next = 2
    with pytest.raises(AuthFailed) as info:
        h.side.get(MAILBOX, created.id)
    assert type(info.value) is AuthFailed  # renewed once, refused again: needs an admin


def test_503_on_a_read_is_retried_and_exhaustion_is_throttled(h: SalesforceHarness) -> None:
    created = h.side.create(MAILBOX, ADA)
    h.emu.faults.fail_next(count=2, status=503, path_contains="GET /query")
    assert h.side.get(MAILBOX, created.id) is not None
    assert h.side.retries == 2
    h.emu.faults.fail_next(count=50, status=403, error_code="REQUEST_LIMIT_EXCEEDED", path_contains="GET /query")
    with pytest.raises(Throttled):
        h.side.get(MAILBOX, created.id)
    h.emu.faults.rest_failures.clear()


class _Backoff:
    """The adapter's ``sleep``: records each backoff and runs the queued user actions during the first one."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.during: list[Callable[[], None]] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        while self.during:
            self.during.pop(0)()


@pytest.fixture
def hb() -> Iterator[tuple[SalesforceHarness, _Backoff]]:
    backoff = _Backoff()
    harness = SalesforceHarness(sleep=backoff)
    yield harness, backoff
    harness.close()


def _user_edit_later(h: SalesforceHarness, backoff: _Backoff, item_id: str, values: dict[str, str | None]) -> None:
    """Queue a user edit (one emulated second later, so SystemModstamp moves) for the next backoff."""

    def edit() -> None:
        h.emu.advance_time(1)
        h.user_edit(item_id, values)

    backoff.during.append(edit)


def _dev(name: str = "ada") -> Contact:
    return Contact(first_name="Ada", last_name="Byron", emails=[f"{name}@example.com"], job_title="Dev")


def test_update_retried_after_backoff_refuses_when_the_user_edited_meanwhile(
    hb: tuple[SalesforceHarness, _Backoff],
) -> None:
    h, backoff = hb
    sf_id = h.user_create(_dev())
    before = h.side.get(MAILBOX, sf_id)
    assert before is not None
    h.emu.faults.fail_next(status=503, path_contains="PATCH /sobjects/Contact")  # refused, not executed
    _user_edit_later(h, backoff, sf_id, {"job_title": "CTO"})
    updates = h.emu.counters["rest.update"]
    with pytest.raises(PreconditionFailed):
        h.side.update(MAILBOX, sf_id, before.contact.with_values({"job_title": "Engineer"}),
                      fields=frozenset({"job_title"}), if_match=before.version)
    assert len(backoff.sleeps) == 1
    assert h.emu.counters["rest.update"] == updates  # the PATCH was not sent again
    record = h.emu.get_record(sf_id)
    assert record is not None and record["Title"] == "CTO"


def test_delete_retried_after_backoff_refuses_when_the_user_edited_meanwhile(
    hb: tuple[SalesforceHarness, _Backoff],
) -> None:
    h, backoff = hb
    sf_id = h.user_create(_dev())
    before = h.side.get(MAILBOX, sf_id)
    assert before is not None
    h.emu.faults.fail_next(status=403, error_code="REQUEST_LIMIT_EXCEEDED", path_contains="DELETE /sobjects/Contact")
    _user_edit_later(h, backoff, sf_id, {"job_title": "CTO"})
    with pytest.raises(PreconditionFailed):
        h.side.delete(MAILBOX, sf_id, if_match=before.version)
    assert len(backoff.sleeps) == 1 and h.emu.counters["rest.delete"] == 0
    record = h.emu.get_record(sf_id)
    assert record is not None and not record["IsDeleted"] and record["Title"] == "CTO"


def test_update_many_retry_drops_the_records_the_user_edited_during_the_backoff(
    hb: tuple[SalesforceHarness, _Backoff],
) -> None:
    h, backoff = hb
    edited, untouched, unguarded = (h.user_create(_dev(n))
                                    for n in ("edited", "untouched", "unguarded"))
    reads = {r.id: r for r in (h.side.get(MAILBOX, i) for i in (edited, untouched, unguarded)) if r is not None}
    h.emu.faults.fail_next(status=503, path_contains="PATCH /composite/sobjects")
    _user_edit_later(h, backoff, edited, {"job_title": "CTO"})
    backoff.during.append(lambda: h.user_edit(unguarded, {"job_title": "Intern"}))
    collections = h.emu.counters["rest.composite_sobjects"]
    results = h.side.update_many(MAILBOX, [
        UpdateRequest(item_id=i, contact=reads[i].contact.with_values({"job_title": "Engineer"}),
                      fields=frozenset({"job_title"}), if_match=None if i == unguarded else reads[i].version)
        for i in (edited, untouched, unguarded)
    ])
    assert len(backoff.sleeps) == 1 and h.emu.counters["rest.composite_sobjects"] == collections + 1
    assert isinstance(results[0], PreconditionFailed) and results[0].item_id == edited
    assert isinstance(results[1], SideRecord) and results[1].id == untouched
    assert results[1].contact.job_title == "Engineer"
    assert isinstance(results[2], SideRecord) and results[2].id == unguarded  # no if_match: last write wins
    assert results[2].contact.job_title == "Engineer"
    titles = {i: (h.emu.get_record(i) or {}).get("Title") for i in (edited, untouched, unguarded)}
    assert titles == {edited: "CTO", untouched: "Engineer", unguarded: "Engineer"}


def test_update_many_retry_is_not_sent_when_every_record_changed_or_vanished(
    hb: tuple[SalesforceHarness, _Backoff],
) -> None:
    h, backoff = hb
    edited, deleted = (h.user_create(_dev(n)) for n in ("e", "d"))
    reads = {r.id: r for r in (h.side.get(MAILBOX, i) for i in (edited, deleted)) if r is not None}
    h.emu.faults.fail_next(status=503, path_contains="PATCH /composite/sobjects")
    _user_edit_later(h, backoff, edited, {"job_title": "CTO"})
    backoff.during.append(lambda: h.user_delete(deleted))
    collections = h.emu.counters["rest.composite_sobjects"]
    results = h.side.update_many(MAILBOX, [
        UpdateRequest(item_id=i, contact=reads[i].contact.with_values({"job_title": "Engineer"}),
                      fields=frozenset({"job_title"}), if_match=reads[i].version)
        for i in (edited, deleted)
    ])
    assert [type(r) for r in results] == [PreconditionFailed, NotFound]
    assert h.emu.counters["rest.composite_sobjects"] == collections  # nothing left to re-send
    assert (h.emu.get_record(edited) or {}).get("Title") == "CTO"


def test_guarded_writes_retried_after_backoff_still_succeed_without_a_concurrent_edit(
    hb: tuple[SalesforceHarness, _Backoff],
) -> None:
    h, backoff = hb
    one, two = (h.user_create(_dev(n)) for n in ("one", "two"))
    first = h.side.get(MAILBOX, one)
    assert first is not None
    h.emu.faults.fail_next(status=503, path_contains="PATCH /sobjects/Contact")
    updated = h.side.update(MAILBOX, one, first.contact.with_values({"job_title": "Engineer"}),
                            fields=frozenset({"job_title"}), if_match=first.version)
    assert updated.contact.job_title == "Engineer" and len(backoff.sleeps) == 1
    second = h.side.get(MAILBOX, two)
    assert second is not None
    h.emu.faults.fail_next(status=503, path_contains="PATCH /composite/sobjects")
    many = h.side.update_many(MAILBOX, [
        UpdateRequest(item_id=r.id, contact=r.contact.with_values({"job_title": "Lead"}),
                      fields=frozenset({"job_title"}), if_match=r.version) for r in (updated, second)
    ])
    assert [r.contact.job_title for r in many if isinstance(r, SideRecord)] == ["Lead", "Lead"]
    assert len(backoff.sleeps) == 2
    h.emu.faults.fail_next(status=503, path_contains="DELETE /sobjects/Contact")
    h.side.delete(MAILBOX, one, if_match=many[0].version if isinstance(many[0], SideRecord) else None)
    assert h.side.get(MAILBOX, one) is None and len(backoff.sleeps) == 3


def _people(n: int, prefix: str = "p") -> list[Contact]:
    return [Contact(first_name=f"P{i}", last_name="Bulk", emails=[f"{prefix}{i}@example.com"]) for i in range(n)]


def _user_writes_before_the_reread(h: SalesforceHarness, sf_id: str, values: dict[str, str | None]) -> None:
    """A rep's write landing between our PATCH and the re-read after it: on the adapter's next read by id."""
    real = h.side._rows_by_id
    calls = {"n": 0}
    skip = 1  # update() compares SystemModstamp first (a read by id); the read after that is the re-read

    def rows_by_id(ids: object) -> object:
        calls["n"] += 1
        if calls["n"] == skip + 1:
            h.emu.update_contact(sf_id, h._fields(values), as_user=h.users[MAILBOX])
        return real(ids)  # type: ignore[arg-type]

    h.side._rows_by_id = rows_by_id  # type: ignore[assignment,method-assign]


@pytest.mark.parametrize("bulk", [False, True])
def test_a_users_write_just_after_ours_is_not_taken_for_what_we_wrote(h: SalesforceHarness, bulk: bool) -> None:
    sf_id = h.user_create(_dev())
    before = h.side.get(MAILBOX, sf_id)
    assert before is not None
    _user_writes_before_the_reread(h, sf_id, {"job_title": "CTO", "city": "Paris"})
    wanted = before.contact.with_values({"job_title": "Engineer"})
    if bulk:
        (result,) = h.side.update_many(MAILBOX, [UpdateRequest(
            item_id=sf_id, contact=wanted, fields=frozenset({"job_title"}), if_match=before.version)])
        assert isinstance(result, SideRecord)
    else:
        result = h.side.update(MAILBOX, sf_id, wanted, fields=frozenset({"job_title"}), if_match=before.version)
    assert (h.emu.get_record(sf_id) or {}).get("Title") == "CTO"  # the rep wrote last
    assert result.contact.job_title == "Engineer"  # what our write left, not the rep's value
    assert result.contact.city == "Paris"  # not written by us: the engine compares it with its read
    assert result.version is None  # so the next pass reads and decides again


def test_a_write_that_nobody_follows_keeps_its_version(h: SalesforceHarness) -> None:
    sf_id = h.user_create(_dev())
    before = h.side.get(MAILBOX, sf_id)
    assert before is not None
    result = h.side.update(MAILBOX, sf_id, before.contact.with_values({"job_title": "Engineer"}),
                           fields=frozenset({"job_title"}), if_match=before.version)
    now = h.side.get(MAILBOX, sf_id)
    assert now is not None and result.version is not None and result.version == now.version


@pytest.mark.parametrize("bulk", [False, True])
def test_a_contact_we_made_is_untouched_until_someone_else_writes_it(h: SalesforceHarness, bulk: bool) -> None:
    if bulk:
        (made,) = h.side.create_many(MAILBOX, [CreateRequest(contact=_dev(), marker="AAMk-1")])
        assert isinstance(made, SideRecord)
    else:
        made = h.side.create(MAILBOX, _dev(), marker="AAMk-1")
    assert made.untouched  # CreatedById and LastModifiedById: the integration user
    ours = h.side.update(MAILBOX, made.id, made.contact.with_values({"job_title": "Engineer"}),
                         fields=frozenset({"job_title"}), if_match=made.version)
    assert ours.untouched  # our own writes keep it so
    h.emu.update_contact(made.id, {"Title": "CTO"}, as_user=h.users[MAILBOX])
    now = h.side.get(MAILBOX, made.id)
    assert now is not None and not now.untouched  # a rep wrote it: it holds someone's work
    by_rep = h.side.get(MAILBOX, h.user_create(_dev()))
    assert by_rep is not None and not by_rep.untouched  # made by a rep


def test_create_many_1000_uses_5_collection_calls(h: SalesforceHarness) -> None:
    h.side.refresh_users()
    before = h.emu.counters["rest.composite_sobjects"]
    results = h.side.create_many(MAILBOX, [CreateRequest(contact=c, marker=f"m{i}") for i, c in
                                           enumerate(_people(1000))])
    calls = h.emu.counters["rest.composite_sobjects"] - before
    print(f"\n1,000 creates: {calls} collection calls")
    assert calls <= 5
    assert all(isinstance(r, SideRecord) for r in results) and len(results) == 1000
    assert [r.marker for r in results if isinstance(r, SideRecord)][:3] == ["m0", "m1", "m2"]
    assert all(r.owner == MAILBOX for r in results if isinstance(r, SideRecord))
    assert len(h.emu.contacts()) == 1000


def test_create_many_backs_off_on_request_limit_and_creates_no_duplicates(h: SalesforceHarness) -> None:
    h.emu.faults.fail_next(count=3, status=403, error_code="REQUEST_LIMIT_EXCEEDED",
                           message="TotalRequests Limit exceeded.", path_contains="composite/sobjects")
    results = h.side.create_many(MAILBOX, [CreateRequest(contact=c) for c in _people(1000)])
    assert h.side.retries == 3 and h.emu.counters["rest.403_limit"] == 0  # injected faults, counted separately
    assert h.emu.counters["rest.fault.403"] == 3
    assert all(isinstance(r, SideRecord) for r in results)
    emails = [c["Email"] for c in h.emu.contacts()]
    assert len(emails) == 1000 and len(set(emails)) == 1000


def test_create_many_gives_throttled_per_item_when_backoff_is_exhausted(h: SalesforceHarness) -> None:
    h.emu.faults.fail_next(count=100, status=403, error_code="REQUEST_LIMIT_EXCEEDED",
                           path_contains="composite/sobjects")
    results = h.side.create_many(MAILBOX, [CreateRequest(contact=c) for c in _people(3)])
    assert all(isinstance(r, Throttled) for r in results)
    h.emu.faults.rest_failures.clear()
    assert h.emu.contacts() == []


def test_collection_item_errors_are_typed_in_order(h: SalesforceHarness) -> None:
    long_title = Contact(last_name="Long", emails=["long@example.com"], job_title="x" * 129)
    no_last = Contact(first_name="Only", emails=["only@example.com"])
    results = h.side.create_many(MAILBOX, [CreateRequest(contact=c) for c in (ADA, no_last, long_title)])
    assert isinstance(results[0], SideRecord)
    assert isinstance(results[1], BadData) and results[1].code == "REQUIRED_FIELD_MISSING"
    assert isinstance(results[2], SideRecord) and results[2].contact.job_title == "x" * 128  # cut, reported
    first = results[0]
    out = h.side.update_many(MAILBOX, [
        UpdateRequest(item_id=first.id, contact=ADA.with_values({"email": "bad address"}),
                      fields=frozenset({"email"}), if_match=first.version),
        UpdateRequest(item_id="003000000000000AAA", contact=ADA, fields=frozenset({"city"})),
    ])
    assert isinstance(out[0], BadData) and out[0].code == "INVALID_EMAIL_ADDRESS" and out[0].fields == ("Email",)
    assert isinstance(out[1], NotFound)


def test_streaming_10000_contacts_pages_with_5_query_calls(h: SalesforceHarness) -> None:
    ann = h.users[MAILBOX]
    h.emu.bulk_create_contacts([{"LastName": f"L{i}", "Email": f"s{i}@example.com", "OwnerId": ann}
                                for i in range(10_000)], as_user=ann)
    h.emu.bulk_create_contacts([{"LastName": "Theirs", "OwnerId": h.users[OTHER]}], as_user=h.users[OTHER])
    h.side.refresh_users()
    before = h.emu.counters["rest.query"]
    ids = {r.id for r in h.side.stream(MAILBOX)}
    calls = h.emu.counters["rest.query"] - before
    print(f"\nstreaming 10,000 contacts: {calls} query calls")
    assert len(ids) == 10_000
    assert calls == 5  # 2,000 per page (docs/reference/salesforce.md §2.2)


# -- owners, accounts, duplicates -----------------------------------------------------------------------------

def test_owner_mapping_by_email_or_federation_id_case_insensitive(h: SalesforceHarness) -> None:
    ann = h.side.create(MAILBOX, ADA)
    bob = h.side.create(OTHER, ADA.with_values({"email": "ada2@example.com"}))
    assert (ann.owner, bob.owner) == (MAILBOX, OTHER)
    assert h.emu.get_record(bob.id)["OwnerId"] == h.users[OTHER]  # type: ignore[index]
    h.user_move_out(ann.id)
    moved = h.side.get(MAILBOX, ann.id)
    assert moved is not None and moved.owner is None
    with pytest.raises(BadData):
        h.side.create(OUTSIDER, ADA)  # not a synced mailbox: no owner to give it to
    with pytest.raises(BadData):
        list(h.side.stream("nobody@contoso.com"))


def test_accounts_are_resolved_by_name_or_created_never_dropped(h: SalesforceHarness) -> None:
    existing = h.emu.add_account("Analytical Engines")
    created = h.side.create(MAILBOX, ADA.with_values({"company": "analytical engines"}))
    assert h.emu.get_record(created.id)["AccountId"] == existing  # type: ignore[index]
    assert created.contact.company == "Analytical Engines"  # get reads Account.Name: the truthful company
    new = h.side.create(MAILBOX, ADA.with_values({"email": "x@example.com", "company": "Brand New Ltd"}))
    assert new.contact.company == "Brand New Ltd" and len(h.side.created_accounts) == 1
    cleared = h.side.update(MAILBOX, new.id, new.contact.with_values({"company": None}),
                            fields=frozenset({"company"}), if_match=new.version)
    assert cleared.contact.company is None


def _with_website(h: SalesforceHarness, name: str, website: str) -> str:
    from simple_salesforce import Salesforce

    account = h.emu.add_account(name)
    admin = Salesforce(instance_url=h.emu.instance_url, session_id=h.emu.issue_token(), version="67.0",
                       session=h.emu.requests_session())
    admin.Account.update(account, {"Website": website})
    return account


def test_accounts_are_resolved_by_email_domain_before_a_new_one_is_created(h: SalesforceHarness) -> None:
    contoso = _with_website(h, "Contoso, Inc.", "https://www.Contoso.com/about")
    _with_website(h, "Mail Provider", "https://gmail.com")
    rep = h.side.create(MAILBOX, ADA.with_values({"company": "Contoso", "email": "pat@sales.contoso.com"}))
    assert h.emu.get_record(rep.id)["AccountId"] == contoso  # type: ignore[index]
    assert rep.contact.company == "Contoso, Inc." and h.side.created_accounts == []
    # a free-mail domain never identifies a company: a new Account is made for the name instead
    private = h.side.create(MAILBOX, ADA.with_values({"company": "Acme Garage", "email": "bob.acme@gmail.com"}))
    assert private.contact.company == "Acme Garage" and len(h.side.created_accounts) == 1
    # bulk writes resolve the same way
    out = h.side.create_many(MAILBOX, [CreateRequest(contact=Contact(last_name="Lee", emails=["lee@contoso.com"],
                                                                      company="Contoso Ltd"))])
    assert isinstance(out[0], SideRecord) and out[0].contact.company == "Contoso, Inc."


def test_unresolved_account_is_reported_when_creation_is_off(h: SalesforceHarness) -> None:
    strict = SalesforceHarness(create_missing_accounts=False)
    try:
        with pytest.raises(BadData) as info:
            strict.side.create(MAILBOX, ADA.with_values({"company": "Unknown Co"}))
        assert info.value.fields == ("company",) and info.value.code == "ACCOUNT_NOT_FOUND"
        results = strict.side.create_many(MAILBOX, [CreateRequest(contact=ADA.with_values({"company": "Nope"})),
                                                    CreateRequest(contact=Contact(last_name="Fine"))])
        assert isinstance(results[0], BadData) and isinstance(results[1], SideRecord)
        assert strict.side.unresolved_accounts == [None, None]
        assert strict.emu.contacts()[0]["LastName"] == "Fine"
    finally:
        strict.close()


def test_duplicate_rule_allow_save_choice(h: SalesforceHarness) -> None:
    h.side.create(MAILBOX, ADA)
    assert h.side.create(MAILBOX, ADA).id  # allowSave=true: we matched before creating
    strict = SalesforceHarness(allow_duplicates=False)
    try:
        strict.side.create(MAILBOX, ADA)
        with pytest.raises(BadData) as info:
            strict.side.create(MAILBOX, ADA)
        assert info.value.code == "DUPLICATES_DETECTED"
    finally:
        strict.close()


def test_calls_carry_the_client_name_as_change_origin(h: SalesforceHarness) -> None:
    created = h.side.create(MAILBOX, ADA)
    events = [e for e in h.emu.events() if created.id in e["header"]["recordIds"]]
    assert events and events[-1]["header"]["changeOrigin"].endswith(";client=m365-sync")


def test_change_feed_steps_past_a_bulk_load_sharing_one_stamp_instead_of_reporting_it_forever(
        h: SalesforceHarness) -> None:
    owner = h.users[MAILBOX]
    h.emu.bulk_create_contacts([{"LastName": f"Bulk{i}", "Email": f"b{i}@example.com", "OwnerId": owner}
                                for i in range(2_100)], as_user=owner)  # one transaction: one SystemModstamp
    first = list(h.side.changes(MAILBOX, None))
    assert first[-1].full and sum(len(p.records) for p in first) == 2_100
    checkpoint = first[-1].checkpoint
    again = list(h.side.changes(MAILBOX, checkpoint))
    assert sum(len(p.records) + len(p.removed) for p in again) == 0  # not the 2,100 once more
    edited = next(iter(first[0].records)).id
    h.emu.advance_time(1)  # the same second as the load would be the known gap (changes.py _Watermark)
    h.user_edit(edited, {"job_title": "CTO"})
    after = list(h.side.changes(MAILBOX, again[-1].checkpoint))
    assert [r.id for p in after for r in p.records] == [edited]


def test_the_session_keeps_a_connection_for_every_message_a_host_works_on_at_once() -> None:
    import json
    from pathlib import Path

    from sync.adapters.salesforce import SalesforceContactSide

    queues = json.loads((Path(__file__).parents[2] / "host.json").read_text())["extensions"]["queues"]
    at_once = queues["batchSize"] + queues["newBatchThreshold"]
    side = SalesforceContactSide(lambda: None, mailboxes=[MAILBOX])  # type: ignore[arg-type]  # never called
    for url in ("https://example.my.salesforce.com/", "http://127.0.0.1:1/"):
        pool = side._rest.session.get_adapter(url)._pool_maxsize
        assert pool >= at_once, f"{pool} kept-alive connections for {at_once} messages at once"


# -- Salesforce's clock: whole-second stamps (docs/reference/salesforce.md §1.1, §2.7) ---------------------------

def test_an_edit_in_the_same_second_as_our_read_is_not_overwritten(h: SalesforceHarness) -> None:
    made = h.side.create(MAILBOX, ADA)
    before = h.side.get(MAILBOX, made.id)
    assert before is not None and before.version
    stamp = h.emu.get_record(made.id)["SystemModstamp"]  # type: ignore[index]
    h.user_edit(made.id, {"department": "Research"})
    with h.emu.org.lock:  # the edit came in the second of our read: same stamp (pinned, not left to the clock)
        for stamped in ("SystemModstamp", "LastModifiedDate"):
            h.emu.org.records["Contact"][made.id][stamped] = stamp
    with pytest.raises(PreconditionFailed):
        h.side.update(MAILBOX, made.id, ADA.with_values({"job_title": "CTO"}), fields=frozenset({"job_title"}),
                      if_match=before.version)
    [result] = h.side.update_many(MAILBOX, [UpdateRequest(item_id=made.id, contact=ADA, fields=frozenset({"email"}),
                                                          if_match=before.version)])
    assert isinstance(result, PreconditionFailed)


def test_a_single_update_sends_if_unmodified_since_so_an_edit_after_the_check_is_refused(
        h: SalesforceHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    made = h.side.create(MAILBOX, ADA)
    before = h.side.get(MAILBOX, made.id)
    assert before is not None
    check = h.side._check_version

    def edit_right_after_the_check(item_id: str, if_match: str | None) -> dict[str, object]:
        row = check(item_id, if_match)
        h.emu.advance_time(2)
        h.user_edit(item_id, {"department": "Research"})  # lands between our check and our PATCH
        return row

    monkeypatch.setattr(h.side, "_check_version", edit_right_after_the_check)
    with pytest.raises(PreconditionFailed):
        h.side.update(MAILBOX, made.id, ADA.with_values({"department": "Sales"}), fields=frozenset({"department"}),
                      if_match=before.version)
    assert h.emu.counters["rest.412"] == 1
    assert h.emu.get_record(made.id)["Department"] == "Research"  # type: ignore[index]


def test_change_feed_with_more_than_a_page_of_rows_in_one_second_reports_each_once(h: SalesforceHarness) -> None:
    owner = h.users[MAILBOX]
    first = list(h.side.changes(MAILBOX, None))
    h.emu.bulk_create_contacts([{"LastName": f"Bulk{i}", "OwnerId": owner} for i in range(2_100)],
                               as_user=owner)  # one transaction: one SystemModstamp, more than one 2,000-row page
    delta = list(h.side.changes(MAILBOX, first[-1].checkpoint))
    ids = [r.id for p in delta for r in p.records]
    assert len(ids) == len(set(ids)) == 2_100
    again = list(h.side.changes(MAILBOX, delta[-1].checkpoint))
    assert sum(len(p.records) + len(p.removed) for p in again) == 0  # not re-reported
    edited = ids[0]  # the first in (SystemModstamp, Id) order, edited in a later second
    h.emu.advance_time(1)
    h.user_edit(edited, {"job_title": "CTO"})
    after = list(h.side.changes(MAILBOX, again[-1].checkpoint))
    assert [r.id for p in after for r in p.records] == [edited]


# -- the marker field, checked by describing Contact (docs/reference/salesforce.md §1.1, §2.4) --------------------

def _marker_def(h: SalesforceHarness, **changes: object) -> None:
    import dataclasses

    contact = h.emu.org.types["Contact"]
    f = contact.fields.pop("Outlook_Id__c")
    contact.by_lower.pop("outlook_id__c")
    contact.add(dataclasses.replace(f, **changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "says"), [
    ({"name": "Other_Id__c"}, "no such field"),  # what an unreadable field looks like: absent from describe
    ({"type": "textarea"}, "must be Text"),
    ({"length": 80}, "holds 80 characters"),
    ({"updateable": False}, "cannot edit it"),
])
def test_an_unusable_marker_field_is_a_clear_config_error_before_any_read(
        changes: dict[str, object], says: str) -> None:
    from sync.config import ConfigError

    h = SalesforceHarness()
    try:
        _marker_def(h, **changes)
        queries = h.emu.counters["rest.query"]
        assert says in (h.side.check() or "")
        with pytest.raises(ConfigError, match="SF_OUTLOOK_ID_FIELD=Outlook_Id__c"):
            h.side.get(MAILBOX, "003000000000001AAA")
        with pytest.raises(ConfigError):
            list(h.side.changes(MAILBOX, None))
        assert h.emu.counters["rest.query"] == queries  # refused before Salesforce answers INVALID_FIELD
    finally:
        h.close()


def test_a_unique_external_id_marker_makes_a_second_create_find_the_first_copy_without_writing_it(
        h: SalesforceHarness) -> None:
    """docs/reference/salesforce.md §2.4: the create POSTs with the marker, Salesforce refuses the second copy with
    DUPLICATE_VALUE, and the adapter returns the first copy as found: our values, no version, nothing written."""
    assert h.side.check() is None
    first = h.side.create(MAILBOX, ADA, marker="AAMk-outlook-1=")
    again = h.side.create(MAILBOX, ADA.with_values({"job_title": "CTO"}), marker="AAMk-outlook-1=")
    assert again.id == first.id and again.contact.job_title == "CTO" and again.version is None
    record = h.emu.get_record(first.id)
    assert record is not None and record["Title"] is None  # found, not written over
    many = h.side.create_many(MAILBOX, [CreateRequest(contact=ADA.with_values({"job_title": "CFO"}),
                                                      marker="AAMk-outlook-1="),
                                        CreateRequest(contact=ADA.with_values({"email": "x@example.com"}),
                                                      marker="AAMk-outlook-2/")])
    assert isinstance(many[0], SideRecord) and many[0].id == first.id and many[0].version is None
    assert isinstance(many[1], SideRecord) and many[1].marker == "AAMk-outlook-2/" and many[1].version is not None
    record = h.emu.get_record(first.id)
    assert record is not None and record["Title"] is None
    assert len(h.emu.contacts()) == 2 and h.emu.counters["rest.upsert"] == 0


@pytest.mark.parametrize("rule", ["off", "alert", "block"])  # the second copy matches the first: the rule fires
@pytest.mark.parametrize("bulk", [False, True])
def test_two_creates_of_one_outlook_contact_never_overwrite_a_reps_edit_made_between_them(
        h: SalesforceHarness, bulk: bool, rule: str) -> None:
    """The 5-minute soak, seed 2: two workers create the same new Outlook contact; the first one's create lands, a
    rep edits it in Salesforce, then the second one's create (the values it read) arrives. An upsert updated the
    contact with them, over the rep's edit, and the pair took the result for synced. Now the second create is refused
    (DUPLICATE_VALUE), finds the first copy and writes nothing: the rep's city stays, and the record comes back as
    that worker wrote it with no version, so the next pass sees the city as a Salesforce change."""
    assert h.side.check() is None
    h.emu.org.settings.duplicate_rule = rule
    first = h.side.create(MAILBOX, _dev(), marker="AAMk-outlook-1=")
    h.emu.advance_time(1)
    h.emu.update_contact(first.id, {"MailingCity": "Oslo", "Title": "Engineer"}, as_user=h.users[MAILBOX])
    second_worker = _dev()  # what the second worker read from Outlook: no city, the title "Dev"
    if bulk:
        (second,) = h.side.create_many(MAILBOX, [CreateRequest(contact=second_worker, marker="AAMk-outlook-1=")])
        assert isinstance(second, SideRecord)
    else:
        second = h.side.create(MAILBOX, second_worker, marker="AAMk-outlook-1=")
    record = h.emu.get_record(first.id)
    assert record is not None and (record["MailingCity"], record["Title"]) == ("Oslo", "Engineer")
    assert second.id == first.id and second.version is None and second.notes == ()  # found: no alert note
    assert second.contact.city is None and second.contact.job_title == "Dev"
    assert len([c for c in h.emu.contacts() if c.get("Outlook_Id__c") == "AAMk-outlook-1="]) == 1


def test_a_marker_field_that_is_not_unique_keeps_plain_creates(h: SalesforceHarness) -> None:
    _marker_def(h, external_id=False)
    h.side.create(MAILBOX, ADA, marker="AAMk-outlook-1=")
    h.side.create(MAILBOX, ADA, marker="AAMk-outlook-1=")
    assert len(h.emu.contacts()) == 2 and h.emu.counters["rest.upsert"] == 0


# -- duplicate rules (docs/reference/salesforce.md §1.3) ------------------------------------------------------------

def test_an_alert_duplicate_rule_saves_and_notes_the_matched_ids(h: SalesforceHarness) -> None:
    first = h.side.create(MAILBOX, ADA)
    second = h.side.create(MAILBOX, ADA.with_values({"first_name": "A."}))  # fuzzy: an initial, same email
    assert second.id != first.id and len(second.notes) == 1 and first.id in second.notes[0]
    [bulk] = h.side.create_many(MAILBOX, [CreateRequest(contact=ADA)])
    assert isinstance(bulk, SideRecord) and first.id in bulk.notes[0]
    other = h.side.create(MAILBOX, Contact(first_name="Ada", last_name="Byron", emails=["other@example.com"]))
    assert other.notes == ()  # same name, nothing else shared: no match
    [moved] = h.side.update_many(MAILBOX, [UpdateRequest(item_id=other.id, contact=ADA, fields=frozenset({"email"}),
                                                         if_match=other.version)])
    assert isinstance(moved, SideRecord) and list(moved.contact.emails) == ["ada@example.com"] and moved.notes


def test_a_block_duplicate_rule_refuses_with_the_matched_ids(h: SalesforceHarness) -> None:
    from sync.adapters.salesforce.errors import DuplicateFound

    first = h.side.create(MAILBOX, ADA)
    h.emu.org.settings.duplicate_rule = "block"
    with pytest.raises(DuplicateFound) as info:
        h.side.create(MAILBOX, ADA)
    assert info.value.matches == (first.id,) and not info.value.allow_save and first.id in str(info.value)
    [bulk] = h.side.create_many(MAILBOX, [CreateRequest(contact=ADA)])
    assert isinstance(bulk, DuplicateFound) and bulk.matches == (first.id,)
    assert len(h.emu.contacts()) == 1


# -- OAuth setup errors (docs/reference/salesforce.md §3.1, §3.2) ------------------------------------------------------

def test_a_refused_token_setup_is_remembered_not_retried_and_names_the_fix(h: SalesforceHarness) -> None:
    from devhost.stack import jwt_keys
    from sync.adapters.salesforce import TokenProvider

    private, public = jwt_keys()
    h.emu.register_jwt_client("cid-aud", public)
    now = [1000.0]
    tokens = TokenProvider(h.emu.token_url, "cid-aud", username="integration@example.com", private_key=private,
                           audience=h.emu.instance_url, session=h.emu.requests_session(), clock=lambda: now[0])
    before = h.emu.counters["oauth.token"]
    for _ in range(3):
        with pytest.raises(AuthFailed, match="audience is invalid.*SF_JWT_AUDIENCE"):
            tokens.token()
    assert h.emu.counters["oauth.token"] - before == 1  # asked once: the refusal is held, no retry loop
    now[0] += 301
    with pytest.raises(AuthFailed):
        tokens.token()
    assert h.emu.counters["oauth.token"] - before == 2


def test_client_credentials_on_the_login_host_is_refused_with_the_fix(h: SalesforceHarness) -> None:
    from sync.adapters.salesforce import TokenProvider

    h.emu.register_client_credentials("cid-cc", "s3cret")
    wrong = TokenProvider(f"{h.emu.login_url}/services/oauth2/token", "cid-cc", client_secret="s3cret",
                          session=h.emu.requests_session())
    with pytest.raises(AuthFailed, match="request not supported on this domain.*My Domain"):
        wrong.token()
    right = TokenProvider(h.emu.token_url, "cid-cc", client_secret="s3cret", session=h.emu.requests_session())
    assert right.token().user_id == h.emu.integration_user_id


# -- writes by automation (a flow as Automated Process; SystemModstamp-only bumps) -------------------------------------

def test_automation_keeps_a_copy_we_made_untouched_and_a_rep_does_not(h: SalesforceHarness) -> None:
    made = h.side.create(MAILBOX, _dev(), marker="AAMk-1")
    h.emu.bump_system_modstamp([made.id])  # a roll-up: no field, no LastModifiedById
    bumped = h.side.get(MAILBOX, made.id)
    assert bumped is not None and bumped.untouched
    h.emu.run_flow([made.id], {"Description": "scored by a scheduled flow"})
    flowed = h.side.get(MAILBOX, made.id)
    assert flowed is not None and flowed.untouched  # Automated Process holds no one's work
    assert (h.emu.get_record(made.id) or {})["LastModifiedById"] == h.emu.automated_process_user_id
    h.emu.update_contact(made.id, {"Title": "CTO"}, as_user=h.users[MAILBOX])
    edited = h.side.get(MAILBOX, made.id)
    assert edited is not None and not edited.untouched


@pytest.mark.parametrize("bulk", [False, True])
def test_a_systemmodstamp_bump_after_our_read_fails_no_version_guard(h: SalesforceHarness, bulk: bool) -> None:
    made = h.side.create(MAILBOX, _dev())
    h.emu.advance_time(2)
    h.emu.bump_system_modstamp([made.id])
    assert (h.side.get(MAILBOX, made.id) or made).version != made.version  # the stamp did move
    change = made.contact.with_values({"job_title": "Principal"})
    if bulk:
        (result,) = h.side.update_many(MAILBOX, [UpdateRequest(item_id=made.id, contact=change,
                                                               fields=frozenset({"job_title"}),
                                                               if_match=made.version)])
    else:
        result = h.side.update(MAILBOX, made.id, change, fields=frozenset({"job_title"}), if_match=made.version)
    assert isinstance(result, SideRecord) and (h.emu.get_record(made.id) or {})["Title"] == "Principal"
    h.emu.advance_time(2)
    h.emu.run_flow([made.id], {"Title": "Flowed"})  # a field write after our read: that is a conflict
    with pytest.raises(PreconditionFailed):
        h.side.update(MAILBOX, made.id, change, fields=frozenset({"job_title"}), if_match=result.version)


# -- State and Country/Territory Picklists (docs/reference/salesforce.md §1.4) --------------------------------------

def _codes(h: SalesforceHarness, item_id: str) -> tuple[object, object]:
    row = h.emu.org.records["Contact"][item_id]
    return row.get("MailingCountryCode"), row.get("MailingStateCode")


def test_outlook_free_text_address_is_written_as_codes_and_read_back_as_the_orgs_labels(h: SalesforceHarness) -> None:
    created = h.side.create(MAILBOX, ADA.with_values({"country": "USA", "state": "Calif.", "city": "Palo Alto"}))
    assert (created.contact.country, created.contact.state, created.notes) == ("United States", "California", ())
    assert _codes(h, created.id) == ("US", "CA")
    [moved] = h.side.update_many(MAILBOX, [UpdateRequest(
        item_id=created.id, contact=created.contact.with_values({"country": "Deutschland", "state": None}),
        fields=frozenset({"country", "state"}), if_match=created.version)])
    assert isinstance(moved, SideRecord) and (moved.contact.country, moved.contact.state) == ("Germany", None)
    [bulk] = h.side.create_many(MAILBOX, [CreateRequest(contact=Contact(last_name="Ito", country="JP"))])
    assert isinstance(bulk, SideRecord) and bulk.contact.country == "Japan" and _codes(h, bulk.id) == ("JP", None)


@pytest.mark.parametrize("bulk", [False, True])
def test_an_address_the_org_cannot_take_waits_in_review_and_the_rest_of_the_contact_syncs(
        h: SalesforceHarness, bulk: bool, caplog: pytest.LogCaptureFixture) -> None:
    from sync.ports import REVIEW_NOTE

    caplog.set_level("DEBUG")
    atlantis = ADA.with_values({"country": "Atlantis", "city": "Poseidonia", "job_title": "CTO"})
    if bulk:
        [made] = h.side.create_many(MAILBOX, [CreateRequest(contact=atlantis)])
        assert isinstance(made, SideRecord)
    else:
        made = h.side.create(MAILBOX, atlantis)
    assert (made.contact.job_title, made.contact.city, made.contact.country) == ("CTO", "Poseidonia", None)
    assert len(made.notes) == 1 and made.notes[0].startswith(REVIEW_NOTE) and "'Atlantis'" in made.notes[0]
    state = made.contact.with_values({"country": "United States", "state": "Narnia", "department": "R&D"})
    fields = frozenset({"country", "state", "department"})
    if bulk:
        [after] = h.side.update_many(MAILBOX, [UpdateRequest(item_id=made.id, contact=state, fields=fields,
                                                             if_match=made.version)])
        assert isinstance(after, SideRecord)
    else:
        after = h.side.update(MAILBOX, made.id, state, fields=fields, if_match=made.version)
    assert after.contact.department == "R&D" and after.contact.country is None and "'Narnia'" in after.notes[0]
    assert "Atlantis" not in caplog.text and "Narnia" not in caplog.text  # the value is in the audit only


def test_with_the_picklists_switched_off_the_text_is_written_as_it_is() -> None:
    h = SalesforceHarness()
    try:
        h.emu.org.settings.address_picklists = False
        made = h.side.create(MAILBOX, ADA.with_values({"country": "USA", "state": "Calif."}))
        assert (made.contact.country, made.contact.state, made.notes) == ("USA", "Calif.", ())
        assert "MailingCountryCode" not in h.emu.org.records["Contact"][made.id]
    finally:
        h.close()


@pytest.mark.parametrize("bulk", [False, True])
def test_a_create_whose_answer_was_lost_never_passes_a_reps_edit_made_meanwhile_for_synced(
        hb: tuple[SalesforceHarness, _Backoff], bulk: bool) -> None:
    """The short soak (1 run in 5): an upsert-create ran, its answer was lost (a connection reset after the request
    ran), a rep typed a city into the new contact, and the retry's re-read passed that city for what we wrote, so it
    never reached Outlook. Now the record comes back as we wrote it (no city) with no version, and the single create
    looks its contact up before a retry instead of writing it again."""
    h, backoff = hb
    assert h.side.check() is None
    h.side.create(MAILBOX, _dev("warm"), marker="AAMk-warm=")  # the owner and the schema are cached
    creates = h.emu.counters["rest.create"]

    def lost_then_edited() -> None:
        h.emu.faults.reset_rate = 0.0
        (made,) = [c for c in h.emu.contacts() if c.get("Outlook_Id__c") == "AAMk-outlook-1="]
        h.emu.advance_time(1)
        h.emu.update_contact(made["Id"], {"MailingCity": "Oslo"}, as_user=h.users[MAILBOX])

    h.emu.faults.reset_rate, h.emu.faults.reset_after_share = 1.0, 1.0
    backoff.during.append(lost_then_edited)
    if bulk:
        (result,) = h.side.create_many(MAILBOX, [CreateRequest(contact=_dev(), marker="AAMk-outlook-1=")])
        assert isinstance(result, SideRecord)
    else:
        result = h.side.create(MAILBOX, _dev(), marker="AAMk-outlook-1=")
        assert h.emu.counters["rest.create"] == creates + 1  # looked up, not written again
    assert result.contact.city is None and result.version is None  # the next pass sees the rep's city as a change
    record = h.emu.get_record(result.id)
    assert record is not None and record["MailingCity"] == "Oslo"
    assert len([c for c in h.emu.contacts() if c.get("Outlook_Id__c") == "AAMk-outlook-1="]) == 1
