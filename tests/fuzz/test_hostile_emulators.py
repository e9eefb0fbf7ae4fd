"""Hostile contact content both ways through the real adapters (msgraph-sdk over the Graph emulator, simple-salesforce
over the Salesforce emulator), the real engine and the ``contact_worker`` function, with Azurite for links, audit and
queues.

Per case: the worker returns (it never raises), and either the other side holds the synced value (cut to the
Salesforce field length with the cut named in the audit reason) or nothing was created and the reason is visible to
an operator (an audit row, or a ``contact-changes-poison`` message with the reason). A second hint for the same
contact writes nothing (no ping-pong). No personal value (also URL-encoded, as in request URLs) reaches a log line
of our code (any level) or any log line the host would keep (INFO and up), with the third-party log levels the app
sets at start-up (``import function_app``); ``test_generated_people_sync_both_ways_with_no_personal_data_at_info``
does the same for generated people.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import pytest
from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app  # noqa: F401 - the app's start-up: the third-party log levels it runs with
from sync import bootstrap
from sync.model import Contact, Side
from sync.ports import AuditEntry, ContactChange
from sync.triggers import worker
from tests.functions.conftest import ANN, Queues, user_function
from tests.fuzz.strategies import people
from tests.fuzz.support import Person, count, log_lines

SF_DESCRIPTION_LIMIT = 32_000
NOTES_10K = ("Lorem ipsum 😀 مرحبا <b>bold</b> & more\n" * 400)[:10_000]
NOTES_40K = ("n" * 99 + "\n") * 400


@dataclass(frozen=True)
class Case:
    """One hostile contact: what the source side holds, and what must follow."""

    data: dict[str, Any]
    expect: str  # "synced" | "cut" | "skipped" | "rejected"
    check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None  # (source record, synced copy)
    personal: tuple[str, ...] = ()  # values that must not reach a log line


def _norm(key: str, value: str) -> str | None:
    return Contact().with_values({key: value}).get(key)


def _same(pairs: dict[str, tuple[str, str]]) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """Check ``copy[target] == normalised(source[source_key])`` for canonical key -> (source key, target key)."""

    def check(source: dict[str, Any], copy: dict[str, Any]) -> None:
        for key, (src, dst) in pairs.items():
            value = source[src]
            if isinstance(value, list):
                value = value[0]["address"]
            got = copy.get(dst)
            if isinstance(got, list):
                got = got[0]["address"] if got and isinstance(got[0], dict) else (got[0] if got else None)
            assert got == _norm(key, value), (key, got, value)

    return check


# ---------------------------------------------------------------------------------------------- Outlook -> Salesforce

TO_SF = {
    "10,000-character notes": Case(
        {"givenName": "Nora", "surname": "Notesworthy", "emailAddresses": [{"address": "nora.notes@x.example"}],
         "personalNotes": NOTES_10K}, "synced",
        _same({"notes": ("personalNotes", "Description"), "last_name": ("surname", "LastName")}),
        ("Notesworthy", "nora.notes@x.example")),
    "40,000-character notes are cut to Salesforce's 32,000": Case(
        {"givenName": "Lena", "surname": "Longnotes", "emailAddresses": [{"address": "lena.long@x.example"}],
         "personalNotes": NOTES_40K}, "cut",
        lambda src, copy: _check_cut(src["personalNotes"], copy["Description"]), ("Longnotes", "lena.long@x.example")),
    "emoji and right-to-left names": Case(
        {"givenName": "👩🏽‍💻 Zoë", "surname": "مُحَمَّد الحسيني", "emailAddresses": [{"address": "zoe.rtl@x.example"}]},
        "synced", _same({"first_name": ("givenName", "FirstName"), "last_name": ("surname", "LastName"),
                         "email": ("emailAddresses", "Email")}),
        ("مُحَمَّد الحسيني", "zoe.rtl@x.example")),
    "empty names": Case(
        {"givenName": "", "surname": "   ", "emailAddresses": [{"address": "nobody.named@x.example"}]}, "skipped",
        personal=("nobody.named@x.example",)),
    "four email addresses (Graph allows three; the emulator takes four)": Case(
        {"surname": "Fourfold", "emailAddresses": [{"address": f"four.{i}@x.example"} for i in range(4)]}, "synced",
        _same({"email": ("emailAddresses", "Email"), "last_name": ("surname", "LastName")}),
        ("Fourfold", "four.0@x.example", "four.3@x.example")),
    "invalid email": Case(
        {"givenName": "Ivan", "surname": "Invalidmail", "emailAddresses": [{"address": "ivan-at-nowhere"}],
         "mobilePhone": "+44 7700 900123"}, "rejected", personal=("Invalidmail", "ivan-at-nowhere", "7700 900123")),
    "HTML in fields": Case(
        {"givenName": "<b>Bold</b>", "surname": "<script>alert(1)</script>", "jobTitle": "<i>VP</i> & <u>CEO</u>",
         "companyName": "<img src=x onerror=alert(1)> & Co", "emailAddresses": [{"address": "html.fields@x.example"}],
         "personalNotes": "<p>Hello</p>\n<a href='javascript:alert(1)'>x</a>"}, "synced",
        _same({"first_name": ("givenName", "FirstName"), "last_name": ("surname", "LastName"),
               "job_title": ("jobTitle", "Title"), "notes": ("personalNotes", "Description")}),
        ("html.fields@x.example",)),
    "quotes and backslashes (SOQL literals)": Case(
        {"givenName": "Seán", "surname": "O'Brien \\ Backslash", "companyName": "Robert'); DROP TABLE Contact;--",
         "emailAddresses": [{"address": "o'brien+tag@x.example"}]}, "synced",
        _same({"last_name": ("surname", "LastName"), "email": ("emailAddresses", "Email")}),
        ("O'Brien \\ Backslash", "o'brien+tag@x.example")),
    "lone surrogates (legal JSON escapes, not text)": Case(
        {"givenName": "Sur\ud800rogate", "surname": "Lone\udfffsome",
         "emailAddresses": [{"address": "lone@x.example"}]}, "synced",
        lambda src, copy: _check_replaced(copy, {"FirstName": "Sur\ufffdrogate", "LastName": "Lone\ufffdsome"}),
        ("lone@x.example",)),
}


def _check_replaced(copy: dict[str, Any], expected: dict[str, str]) -> None:
    assert {k: copy.get(k) for k in expected} == expected  # each lone surrogate became U+FFFD, the rest kept


def _check_cut(source_notes: str, description: str) -> None:
    full = _norm("notes", source_notes)
    assert full is not None and len(full) > SF_DESCRIPTION_LIMIT
    assert description == full[:SF_DESCRIPTION_LIMIT].rstrip()


def _hint(source: Side, item_id: str) -> QueueMessage:
    change = ContactChange(source=source, item_id=item_id, mailbox=ANN if source is Side.M365 else None)
    return QueueMessage(id=f"hint-{item_id[-8:]}", body=change.model_dump_json().encode(), dequeue_count=1,
                        pop_receipt="p")


def _audit(root: bootstrap.Root, **ids: str) -> list[AuditEntry]:
    return [e for e in root.audit.recent(ANN, 50) if all(getattr(e, k) == v for k, v in ids.items())]


def _no_personal_data(records: list[logging.LogRecord], values: tuple[str, ...]) -> None:
    kept = [r for r in records if not r.name.startswith("emulators")
            and (r.name.startswith("sync") or r.levelno >= logging.INFO)]
    lines = log_lines(kept)
    for value in dict.fromkeys(v for raw in values for v in (raw, quote(raw), quote(raw, safe=""))):
        leaked = [line for line in lines if value in line]
        assert not leaked, f"{value!r} appears in a log line: {leaked[0][:300]!r}"


_UNIQUE = itertools.count(1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(person=people(), source=st.sampled_from(Side))
def test_generated_people_sync_both_ways_with_no_personal_data_at_info(live, queues: Queues, caplog,
                                                                       person: Person, source: Side) -> None:
    """At Information (Azure's level), every logger captured: the create (a match lookup by email on the other
    side first), then an edit, each through the worker and the real adapters."""
    root, g, sf, users = live
    caplog.set_level(logging.INFO)
    caplog.clear()
    count("emulators log capture at information")
    n = next(_UNIQUE)  # Hypothesis repeats people: a repeat would match the earlier copy instead of creating one
    original = person
    person = replace(person, last=f"{person.last} {chr(0x41 + n % 26)}{n}", email=f"n{n}.{person.email}")
    fn = user_function(worker.contact_worker)
    if source is Side.M365:
        item = g.create_contact(ANN, {"givenName": person.first, "surname": person.last, "mobilePhone": person.phone,
                                      "emailAddresses": [{"address": person.email}]}, root.graph.folder_id(ANN))["id"]
        fn(_hint(source, item))
        g.update_contact(ANN, item, {"jobTitle": f"{person.last} Fan"})
    else:
        item = sf.create_contact({"FirstName": person.first, "LastName": person.last, "Email": person.email,
                                  "MobilePhone": person.phone, "OwnerId": users[ANN]}, as_user=users[ANN])
        fn(_hint(source, item))
        sf.update_contact(item, {"Title": f"{person.last} Fan"}, as_user=users[ANN])
    fn(_hint(source, item))
    assert root.links.get(ANN, source, item) is not None
    assert any(r.name.startswith("sync") for r in caplog.records)
    _no_personal_data(caplog.records, (*person.tokens(), *original.tokens(), ANN, users[ANN]))


@pytest.mark.parametrize("name", list(TO_SF))
def test_hostile_outlook_contact_reaches_salesforce_or_is_refused_with_a_reason(live, queues: Queues, caplog,
                                                                               name) -> None:
    root, g, sf, users = live
    case = TO_SF[name]
    caplog.set_level(logging.DEBUG)
    count("emulators outlook->salesforce")
    folder = root.graph.folder_id(ANN)
    created = g.create_contact(ANN, case.data, folder)
    m_id = created["id"]
    fn = user_function(worker.contact_worker)
    fn(_hint(Side.M365, m_id))  # returns: never raises for hostile content
    link = root.links.get(ANN, Side.M365, m_id)
    poison = queues.bodies("contact-changes-poison")
    if case.expect in ("synced", "cut"):
        assert poison == []
        assert link is not None and link.sf_id
        record = sf.get_record(link.sf_id)
        assert record is not None and record["OwnerId"] == users[ANN]
        assert case.check is not None
        case.check(case.data, record)
        (entry,) = _audit(root, m365_id=m_id, action="create:salesforce")
        assert entry.outcome == "applied"
        if case.expect == "cut":
            assert "cut to fit Salesforce's field length: notes" in entry.reason
        versions = record["SystemModstamp"], g.get_contact(ANN, m_id)["changeKey"]
        fn(_hint(Side.M365, m_id))
        fn(_hint(Side.SALESFORCE, link.sf_id))
        again = sf.get_record(link.sf_id)["SystemModstamp"], g.get_contact(ANN, m_id)["changeKey"]
        assert again == versions, "a second hint wrote again (ping-pong)"
    elif case.expect == "skipped":
        assert poison == [] and link is None
        (entry,) = _audit(root, m365_id=m_id)
        assert entry.action == "skip" and "missing last name" in entry.reason  # the operator's reason
    else:  # rejected by Salesforce: a typed BadData, poisoned with the reason, audited
        assert link is None
        (copy,) = poison
        assert copy["error"] == "BadData" and "INVALID_EMAIL_ADDRESS" in copy["reason"]
        assert copy["message"]["item_id"] == m_id
        failed = _audit(root, m365_id=m_id, outcome="failed")
        assert failed and all("BadData" in (e.error or "") for e in failed)
    _no_personal_data(caplog.records, case.personal)


# ---------------------------------------------------------------------------------------------- Salesforce -> Outlook

TO_OUTLOOK = {
    "10,000-character description": Case(
        {"FirstName": "Dora", "LastName": "Descriptive", "Email": "dora.desc@x.example", "Description": NOTES_10K},
        "synced", _same({"notes": ("Description", "personalNotes"), "last_name": ("LastName", "surname")}),
        ("Descriptive", "dora.desc@x.example")),
    "emoji and right-to-left names": Case(
        {"FirstName": "🧑🏾‍🚀 Ana", "LastName": "עִבְרִית כהן", "Email": "ana.rtl@x.example"}, "synced",
        _same({"first_name": ("FirstName", "givenName"), "last_name": ("LastName", "surname")}),
        ("עִבְרִית כהן", "ana.rtl@x.example")),
    "whitespace-only last name": Case(
        {"FirstName": "Blank", "LastName": "   ", "Email": "blank.last@x.example"}, "skipped",
        personal=("blank.last@x.example",)),
    "HTML in fields": Case(
        {"FirstName": "<b>Bold</b>", "LastName": "<script>alert(2)</script>", "Title": "<i>VP</i>",
         "Email": "sf.html@x.example", "Description": "<p>Hi</p><img src=x onerror=alert(1)>"}, "synced",
        _same({"first_name": ("FirstName", "givenName"), "last_name": ("LastName", "surname"),
               "job_title": ("Title", "jobTitle"), "notes": ("Description", "personalNotes")}),
        ("sf.html@x.example",)),
    "quotes, plus and backslash": Case(
        {"FirstName": "Seán", "LastName": "D'Arcy \\ Backslash", "Email": "d'arcy+sf@x.example",
         "MobilePhone": "+353 (0)1 555 0199"}, "synced",
        _same({"last_name": ("LastName", "surname"), "email": ("Email", "emailAddresses"),
               "mobile_phone": ("MobilePhone", "mobilePhone")}),
        ("D'Arcy \\ Backslash", "d'arcy+sf@x.example", "555 0199")),
}


@pytest.mark.parametrize("name", list(TO_OUTLOOK))
def test_hostile_salesforce_contact_reaches_outlook_or_is_skipped_with_a_reason(live, queues: Queues, caplog,
                                                                               name) -> None:
    root, g, sf, users = live
    case = TO_OUTLOOK[name]
    caplog.set_level(logging.DEBUG)
    count("emulators salesforce->outlook")
    sf_id = sf.create_contact({**case.data, "OwnerId": users[ANN]}, as_user=users[ANN])
    fn = user_function(worker.contact_worker)
    fn(_hint(Side.SALESFORCE, sf_id))
    assert queues.bodies("contact-changes-poison") == []
    link = root.links.get(ANN, Side.SALESFORCE, sf_id)
    if case.expect == "synced":
        assert link is not None and link.m365_id
        copy = g.get_contact(ANN, link.m365_id)
        assert copy is not None and copy["parentFolderId"] == root.graph.folder_id(ANN)
        assert case.check is not None
        case.check(case.data, copy)
        (entry,) = _audit(root, sf_id=sf_id, action="create:m365")
        assert entry.outcome == "applied"
        versions = sf.get_record(sf_id)["SystemModstamp"], copy["changeKey"]
        fn(_hint(Side.SALESFORCE, sf_id))
        fn(_hint(Side.M365, link.m365_id))
        again = sf.get_record(sf_id)["SystemModstamp"], g.get_contact(ANN, link.m365_id)["changeKey"]
        assert again == versions, "a second hint wrote again (ping-pong)"
    else:
        assert link is None
        (entry,) = _audit(root, sf_id=sf_id)
        assert entry.action == "skip" and "missing last name" in entry.reason
    _no_personal_data(caplog.records, case.personal)


def test_clearing_the_last_name_in_outlook_is_refused_with_a_reason_and_salesforce_keeps_it(live, queues: Queues,
                                                                                          caplog) -> None:
    """Salesforce requires LastName: blanking it in Outlook after the first sync must not crash or vanish."""
    root, g, sf, users = live
    caplog.set_level(logging.DEBUG)
    count("emulators outlook->salesforce")
    created = g.create_contact(ANN, {"givenName": "Clara", "surname": "Clearedname",
                                     "emailAddresses": [{"address": "clara.cleared@x.example"}]},
                               root.graph.folder_id(ANN))
    m_id = created["id"]
    fn = user_function(worker.contact_worker)
    fn(_hint(Side.M365, m_id))
    link = root.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id
    g.update_contact(ANN, m_id, {"surname": "  "})
    fn(_hint(Side.M365, m_id))  # returns: the refusal is recorded, not raised
    record = sf.get_record(link.sf_id)
    assert record is not None and record["LastName"] == "Clearedname"
    (copy,) = queues.bodies("contact-changes-poison")
    assert copy["error"] == "BadData" and "REQUIRED_FIELD_MISSING" in copy["reason"] and "LastName" in copy["reason"]
    (failed,) = _audit(root, m365_id=m_id, action="update:salesforce")
    assert failed.outcome == "failed" and "last_name" in failed.fields and "REQUIRED_FIELD_MISSING" in failed.error
    _no_personal_data(caplog.records, ("Clearedname", "clara.cleared@x.example"))
