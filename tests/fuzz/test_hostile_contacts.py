"""Hostile contact content both ways: the engine (in-memory sides) and the contact worker (Azurite queues).

Property over generated contacts (10,000+ character notes, emoji and right-to-left names, empty names, up to five
addresses, invalid addresses, HTML, control characters): ``Engine.sync_contact`` raises nothing but the typed errors
of ``sync.errors``; the other side then holds the synced values (cut to Salesforce's field lengths, with the cut named
in the audit reason), or nothing was created and the audit says why; a second pass writes nothing (no ping-pong).
The contact worker, fed generated messages, never raises on its last attempt and never drops a message without a
reason: an unreadable one lands in ``contact-changes-poison`` with the reason and an audit row.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sync.engine import Engine
from sync.errors import SyncError
from sync.mapping import GRAPH_MAX_EMAILS, contact_to_graph, fit_salesforce, graph_to_contact, salesforce_to_contact
from sync.model import Contact, Side, compare_key
from sync.policy import FieldMap
from sync.ports import ContactChange
from sync.triggers import worker
from sync.triggers.errors import MAX_DEQUEUE_COUNT
from tests.fakes import MemoryAudit, MemorySide
from tests.functions.conftest import ANN, BOB, user_function
from tests.fuzz.strategies import JUNK, TEXT, people
from tests.fuzz.support import Person, assert_no_personal_data, count
from tests.world import memory_world

FIELD_MAP = FieldMap()
SYNCED = FIELD_MAP.keys()
SF_KEYS = tuple(k for k in SYNCED if FIELD_MAP.rule(k) and FIELD_MAP.rule(k).salesforce)  # type: ignore[union-attr]

HOSTILE = st.one_of(
    st.sampled_from([
        "", "   ", "\t\n ", "👩🏽‍💻 Zoë", "🏳️‍🌈🇺🇦", "مُحَمَّد بن سلمان", "עִבְרִית", "\u202eevil\u202c", "שלום Ann",
        "<b>bold</b>", "<script>alert('x')</script>", "<img src=x onerror=alert(1)>", "a & b < c > d \"q\" 'apos'",
        "Robert'); DROP TABLE Contacts;--", "O'Brien \\ back\\slash", "line1\nline2\r\nline3", "\x00\x01\x1f\x7f",
        "ǅemo", "ﷺ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301\u0301\u0301", "\u200b\u200d\ufeff", "%s %d {0} ${x}",
    ]),
    st.text(max_size=40),
    st.builds(lambda chunk, n: chunk * n, st.sampled_from(["x", "é", "😀", "مرحبا ", "<p>"]), st.integers(30, 400)),
)
NOTES = st.one_of(
    HOSTILE,
    st.builds(lambda chunk, n: (chunk * n)[:n], st.sampled_from(["Notes 😀 ", "ملاحظات ", "<div>x</div>\n", "x"]),
              st.sampled_from([10_000, 31_999, 32_000, 32_001, 40_000])),
)
EMAIL = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.+_-]{0,20}@[a-z0-9-]{1,12}\.example", fullmatch=True),
    st.sampled_from(["not-an-email", "a@@b.example", "@", "ann@", "a b@c.example", "<x@y.example>", "ann@exämple.com",
                     "o'brien+tag@example.com", "x" * 90 + "@long.example", "ANN@CONTOSO.COM", "ann@contoso.com ",
                     "<script>@x.example", "😀@emoji.example", "\u202e@rtl.example"]),
)


@st.composite
def contacts(draw: st.DrawFn) -> Contact:
    values: dict[str, Any] = {}
    if draw(st.sampled_from([True, True, True, False])):  # mostly complete: the synced path gets most examples
        values["last_name"] = draw(HOSTILE)
    for key in ("first_name", "business_phone", "mobile_phone", "home_phone", "company", "job_title",
                "department", "street", "city", "state", "postal_code", "country"):
        if draw(st.booleans()):
            values[key] = draw(HOSTILE)
    if draw(st.booleans()):
        values["notes"] = draw(NOTES)
    values["emails"] = draw(st.lists(EMAIL, max_size=5))
    return Contact.model_validate(values)


def memory_engine() -> tuple[Engine, MemorySide, MemorySide, MemoryAudit]:
    w = memory_world()
    return w.engine, w.m365, w.sf, w.audit


def _synced_on(target: Side, contact: Contact) -> dict[str, str | None]:
    """What ``target`` should hold for a contact created from ``contact``: Salesforce cuts to its field lengths and
    has one address; Outlook holds every synced field as it is."""
    if target is Side.SALESFORCE:
        return {k: fit_salesforce(k, contact.get(k), FIELD_MAP) for k in SF_KEYS}
    return {k: contact.get(k) for k in SF_KEYS}


def sync_and_check(contact: Contact, source: Side, edit: Contact | None = None) -> str:
    """Create ``contact`` on ``source``, sync it, check the property; then, with ``edit``, a user overwrites the
    synced fields on ``source`` with ``edit``'s values and the update must follow the same way. Returns what
    happened (for statistics)."""
    engine, m365, sf, audit = memory_engine()
    sides = {Side.M365: m365, Side.SALESFORCE: sf}
    item_id = sides[source].user_create(ANN, contact)
    stored = sides[source].snapshot()[item_id].contact  # Salesforce already cut what a user typed
    change = ContactChange(source=source, item_id=item_id, mailbox=ANN if source is Side.M365 else None)
    try:
        engine.sync_contact(change)
    except SyncError:  # typed: the worker retries or poisons it with the reason; the audit row says so
        assert any(e.outcome == "failed" and e.error for e in audit.entries)
        return "typed error"
    target = sides[source.other]
    copies = list(target.snapshot().values())
    missing = stored.missing_required()
    if missing:
        assert copies == [], "an incomplete contact was created on the other side"
        (entry,) = audit.entries
        assert entry.action == "skip" and entry.outcome == "applied"
        assert all(m in entry.reason for m in missing), entry.reason  # the operator reads what is missing
        return "skipped: " + " and ".join(missing)
    (copy,) = copies
    expected = _synced_on(source.other, stored)
    assert copy.contact.values(SF_KEYS) == expected
    created = [e for e in audit.entries if e.action == f"create:{source.other.value}"]
    assert len(created) == 1 and created[0].outcome == "applied"
    cut = [k for k in SF_KEYS if expected[k] != stored.get(k)]
    if cut:
        assert "cut to fit Salesforce's field length" in created[0].reason
        assert all(k in created[0].reason for k in cut)
    if source is Side.SALESFORCE:  # Outlook holds what Salesforce held, nothing more
        assert copy.contact.emails == stored.emails[:1]
    # level-triggered and idempotent: hints from either side now change nothing
    writes = (len(m365.writes), len(sf.writes))
    engine.sync_contact(change)
    engine.sync_contact(ContactChange(source=source.other, item_id=copy.id,
                                      mailbox=ANN if source.other is Side.M365 else None))
    assert (len(m365.writes), len(sf.writes)) == writes, "a hostile value made the sync write again (ping-pong)"
    if edit is None:
        return "synced, cut" if cut else "synced"
    sides[source].user_edit(item_id, edit.values(SF_KEYS))
    edited = sides[source].snapshot()[item_id].contact
    try:
        engine.sync_contact(change)
    except SyncError:
        assert any(e.outcome == "failed" and e.error for e in audit.entries)
        return "update: typed error"
    expected = _synced_on(source.other, edited)
    # compared as the sync compares (emails case-insensitively, phones by digits): an edit that only changes an
    # email's case is no edit, and a copy keeps the case it had (found by the fuzzer: 'ann@' edited to 'ANN@')
    held = target.snapshot()[copy.id].contact.values(SF_KEYS)
    assert {k: compare_key(k, v) for k, v in held.items()} == {k: compare_key(k, v) for k, v in expected.items()}
    writes = (len(m365.writes), len(sf.writes))
    engine.sync_contact(change)
    engine.sync_contact(ContactChange(source=source.other, item_id=copy.id,
                                      mailbox=ANN if source.other is Side.M365 else None))
    assert (len(m365.writes), len(sf.writes)) == writes, "an edited hostile value made the sync write again"
    return "synced and updated"


@settings(max_examples=400, deadline=None)
@given(contact=contacts(), source=st.sampled_from([Side.M365, Side.SALESFORCE]),
       edit=st.one_of(st.none(), contacts()))
def test_sync_contact_raises_only_typed_errors_and_syncs_or_skips_with_a_reason(contact, source, edit) -> None:
    count("engine_hostile_contacts")
    event(sync_and_check(contact, source, edit))


HOSTILE_CASES = {
    "10,000-character notes": {"last_name": "Notes", "emails": ["notes@x.example"], "notes": "Lorem 😀 ipsum " * 667},
    "notes over Salesforce's 32,000": {"last_name": "Long", "emails": ["long@x.example"], "notes": "n" * 40_000},
    "emoji and right-to-left names": {"first_name": "👩🏽‍💻 Zoë", "last_name": "مُحَمَّد", "emails": ["zoe@x.example"]},
    "empty names": {"first_name": "", "last_name": "   ", "emails": ["noname@x.example"]},
    "four email addresses": {"last_name": "Four", "emails": [f"four{i}@x.example" for i in range(4)]},
    "invalid email": {"last_name": "Invalid", "emails": ["not-an-email"], "mobile_phone": "+1 555 0100"},
    "HTML in fields": {"first_name": "<b>Bold</b>", "last_name": "<script>alert(1)</script>",
                       "company": "<img src=x onerror=alert(1)> & Co", "emails": ["html@x.example"],
                       "notes": "<p>Hello</p>\n<a href='javascript:alert(1)'>x</a>"},
}


@pytest.mark.parametrize("source", [Side.M365, Side.SALESFORCE])
@pytest.mark.parametrize("name", list(HOSTILE_CASES))
def test_listed_hostile_contacts_through_the_engine(name, source) -> None:
    count("engine_hostile_contacts (explicit)")
    outcome = sync_and_check(Contact.model_validate(HOSTILE_CASES[name]), source)
    assert outcome.startswith("skipped") if name == "empty names" else outcome.startswith("synced")


def test_four_addresses_are_cut_to_three_for_outlook_and_the_cut_is_reported() -> None:
    contact = Contact.model_validate({"last_name": "Four", "emails": [f"four{i}@x.example" for i in range(4)]})
    body, cuts = contact_to_graph(contact, SYNCED + ("email_2", "email_3"))
    assert [e["address"] for e in body["emailAddresses"]] == [f"four{i}@x.example" for i in range(GRAPH_MAX_EMAILS)]
    assert [(c.field, c.length, c.limit) for c in cuts] == [("emails", 4, GRAPH_MAX_EMAILS)]


@pytest.mark.parametrize("source", [Side.M365, Side.SALESFORCE])
def test_lone_surrogates_read_from_a_side_become_replacement_characters_and_sync(source) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``); they cannot be hashed or written, so reading replaces them."""
    if source is Side.M365:
        contact = graph_to_contact({"givenName": "Sur\ud800rogate", "surname": "Lone\udfff",
                                    "emailAddresses": [{"address": "lone\ud83d@x.example"}], "personalNotes": "\udc00"})
    else:
        contact = salesforce_to_contact({"FirstName": "Sur\ud800rogate", "LastName": "Lone\udfff",
                                         "Email": "lone\ud83d@x.example", "Description": "\udc00"})
    assert (contact.first_name, contact.last_name, contact.emails, contact.notes) == (
        "Sur\ufffdrogate", "Lone\ufffd", ("lone\ufffd@x.example",), "\ufffd")
    assert sync_and_check(contact, source) == "synced"


# ---------------------------------------------------------------------------------------------- the worker


def _message(body: str, dequeue_count: int) -> QueueMessage:
    return QueueMessage(id="fuzz-1", body=body.encode("utf-8", "surrogatepass"), dequeue_count=dequeue_count,
                        pop_receipt="p")


@st.composite
def worker_bodies(draw: st.DrawFn) -> tuple[str, Person, bool]:
    """(message text, person embedded, whether it is a well-formed hint)."""
    person = draw(people())
    kind = draw(st.sampled_from(["hint", "hint", "junk", "text"]))
    if kind == "hint":
        doc: dict[str, Any] = {"kind": "contact", "source": draw(st.sampled_from(["m365", "salesforce"])),
                               "item_id": draw(st.one_of(st.from_regex(r"003[0-9A-Za-z]{15}", fullmatch=True),
                                                         st.from_regex(r"AAMk-[0-9]{6}=", fullmatch=True), TEXT))}
        if doc["source"] == "m365" or draw(st.booleans()):
            doc["mailbox"] = draw(st.sampled_from([ANN, BOB, "ANN@CONTOSO.COM", person.email, None]))
        spoil = draw(st.sampled_from([None, None, "extra", "source", "item_id", "kind"]))
        if spoil == "extra":
            doc[person.email] = f"{person.first} {person.last} {person.phone}"
        elif spoil is not None:  # ids are logged (ids only, by design): personal values go elsewhere
            doc[spoil] = draw(JUNK)
        text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
        try:  # the message's own schema decides what is readable (e.g. a lone surrogate in an id is not)
            ContactChange.model_validate_json(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
            well_formed = True
        except ValueError:
            well_formed = False
        return text, person, well_formed
    if kind == "junk":
        return json.dumps({"note": f"{person.first} {person.last}", "x": draw(JUNK)}), person, False
    return draw(st.sampled_from(["", "not json", person.email, "{", "[]", "null"])), person, False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=worker_bodies())
def test_contact_worker_never_raises_on_the_last_attempt_and_poisons_with_a_reason(memory_root, queues, caplog,
                                                                                  case) -> None:
    body, person, well_formed = case
    root, m365, sf = memory_root
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    count("contact_worker")
    user_function(worker.contact_worker)(_message(body, MAX_DEQUEUE_COUNT))  # the last attempt must not raise
    poison = queues.bodies("contact-changes-poison")
    if not well_formed:
        (copy,) = poison
        assert copy["error"] == "BadData" and "unreadable" in copy["reason"] and copy["queue"] == "contact-changes"
    elif json.loads(body)["source"] == "m365" and not json.loads(body).get("mailbox"):
        (copy,) = poison
        assert copy["error"] == "BadData" and "needs its mailbox" in copy["reason"]
    else:
        assert poison == []  # a hint for a contact that exists nowhere: nothing to do, nothing to poison
    assert m365.writes == [] and sf.writes == []  # nothing exists on either side: nothing may be written
    assert_no_personal_data(caplog.records, [person])
