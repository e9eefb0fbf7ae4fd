"""Canonical contact: normalisation, comparison keys, fingerprints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.model import Contact, compare_key, field_digest, fingerprint

KEYS = ("first_name", "last_name", "email", "business_phone", "notes", "custom.Region__c")


def test_text_is_nfc_trimmed_and_spaces_collapsed() -> None:
    c = Contact(first_name="  Zoe\u0301  ", last_name="van\t der   Berg", company="\u00a0Acme ")
    assert c.first_name == "Zo\u00e9" and c.last_name == "van der Berg" and c.company == "Acme"


def test_empty_strings_become_none_and_notes_keep_lines() -> None:
    c = Contact(first_name="", job_title="   ", notes="line 1  \r\n\r\n  line 2\r")
    assert c.first_name is None and c.job_title is None
    assert c.notes == "line 1\n\nline 2"


def test_emails_keep_order_and_case_but_drop_repeats() -> None:
    c = Contact(emails=[" Ada@Example.com", "", "ada@example.COM", "b@example.com"])
    assert c.emails == ("Ada@Example.com", "b@example.com")
    assert c.email_keys() == {"ada@example.com", "b@example.com"}
    assert c.get("email") == "Ada@Example.com" and c.get("email_2") == "b@example.com" and c.get("email_3") is None


def test_phones_keep_formatting_but_compare_by_digits() -> None:
    a, b = Contact(mobile_phone="+47 (900) 00-000"), Contact(mobile_phone="+4790000000")
    assert a.mobile_phone == "+47 (900) 00-000"
    assert compare_key("mobile_phone", a.mobile_phone) == compare_key("mobile_phone", b.mobile_phone)
    assert compare_key("mobile_phone", "4790000000") != compare_key("mobile_phone", "+4790000000")
    assert fingerprint(a, ["mobile_phone"]) == fingerprint(b, ["mobile_phone"])


def test_fingerprint_covers_only_the_given_fields_and_ignores_email_case() -> None:
    a = Contact(last_name="Lee", emails=["A@x.com"], job_title="CTO")
    b = Contact(last_name="Lee", emails=["a@X.com"], job_title="CEO")
    assert fingerprint(a, ["last_name", "email"]) == fingerprint(b, ["last_name", "email"])
    assert fingerprint(a, ["last_name", "job_title"]) != fingerprint(b, ["last_name", "job_title"])


def test_with_values_replaces_by_key_and_closes_email_gaps() -> None:
    c = Contact(emails=["a@x.com", "b@x.com", "c@x.com"], custom={"Region__c": "EU"})
    d = c.with_values({"email_2": None, "custom.Region__c": None, "custom.Tier__c": "Gold", "city": "Oslo"})
    assert d.emails == ("a@x.com", "c@x.com") and d.custom == {"Tier__c": "Gold"} and d.city == "Oslo"
    with pytest.raises(KeyError):
        c.with_values({"no_such_field": "x"})
    with pytest.raises(KeyError):
        c.get("no_such_field")


def test_required_fields_for_creating_on_the_other_side() -> None:
    assert Contact(last_name="Lee", emails=["a@x.com"]).missing_required() == ()
    assert Contact(last_name="Lee", home_phone="1").missing_required() == ()
    assert Contact(first_name="Ann").missing_required() == ("last name", "an email address or a phone number")


def test_contact_rejects_unknown_fields_and_non_text() -> None:
    with pytest.raises(ValueError):
        Contact(nickname="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Contact(first_name=3)  # type: ignore[arg-type]


def test_field_digest_is_short_stable_and_empty_for_none() -> None:
    assert field_digest("city", None) == ""
    assert field_digest("city", "Oslo") == field_digest("city", "Oslo") != field_digest("city", "Bergen")
    assert field_digest("email", "A@x.com") == field_digest("email", "a@x.com")
    assert field_digest("city", "Oslo") != field_digest("state", "Oslo")  # the field is part of the digest


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(first=texts, last=texts, notes=texts)
def test_normalising_twice_changes_nothing(first: str, last: str, notes: str) -> None:
    once = Contact(first_name=first, last_name=last, notes=notes)
    twice = Contact.model_validate(once.model_dump())
    assert once == twice
    assert fingerprint(once, KEYS) == fingerprint(twice, KEYS)
