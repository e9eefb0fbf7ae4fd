"""Graph and Salesforce JSON <-> canonical contact."""

from __future__ import annotations

import pytest

from sync.mapping import contact_to_graph, contact_to_salesforce, graph_to_contact, salesforce_to_contact
from sync.model import Contact
from sync.policy import Direction, FieldMap, FieldRule

# The response example of the Graph docs' update-contact page (docs/reference/graph.md §1.3), trimmed to what we map.
GRAPH_DOC = {
    "id": "AAMkAGI2THk0AAA=", "changeKey": "EQAAABYAAACd9nJ/tVysQos2hTfspaWRAAADTIa4",
    "givenName": "Garth", "surname": "Fort", "displayName": "Garth Fort", "nickName": "Garth",
    "emailAddresses": [{"name": "Garth", "address": "garth@a830edad9050849NDA1.onmicrosoft.com"}],
    "jobTitle": "Web Marketing Manager", "companyName": "Contoso, Inc.", "department": "Sales & Marketing",
    "homePhones": [], "mobilePhone": None, "businessPhones": ["+1 918 555 0101"],
    "businessAddress": {"street": "10 Contoso Way", "city": "Redmond", "state": "WA", "countryOrRegion": "USA",
                        "postalCode": "98075"},
    "personalNotes": None,
}
SF_RECORD = {
    "attributes": {"type": "Contact"}, "Id": "003000000000001AAA", "FirstName": "Garth", "LastName": "Fort",
    "Email": "garth@a830edad9050849NDA1.onmicrosoft.com", "Phone": "+1 918 555 0101", "MobilePhone": None,
    "HomePhone": None, "Title": "Web Marketing Manager", "Department": "Sales & Marketing",
    "Account": {"attributes": {"type": "Account"}, "Name": "Contoso, Inc."},
    "MailingStreet": "10 Contoso Way", "MailingCity": "Redmond", "MailingState": "WA", "MailingPostalCode": "98075",
    "MailingCountry": "USA", "Description": None,
}


def test_the_docs_graph_example_and_its_salesforce_twin_are_the_same_person() -> None:
    g, s = graph_to_contact(GRAPH_DOC), salesforce_to_contact(SF_RECORD)
    keys = FieldMap().keys()
    assert g.values(keys) == s.values(keys)
    assert g.company == "Contoso, Inc." and g.country == "USA" and g.business_phone == "+1 918 555 0101"


def test_graph_patch_sends_only_the_given_fields_and_keeps_unsynced_entries() -> None:
    current = {**GRAPH_DOC, "businessPhones": ["+1 918 555 0101", "+1 918 555 0199"],
               "emailAddresses": [{"name": "G. Fort", "address": "garth@x.com"}, {"address": "second@x.com"}]}
    c = graph_to_contact(current).with_values({"business_phone": "+47 1", "city": None, "email": "GARTH@x.com"})
    body, cut = contact_to_graph(c, ["business_phone", "city", "email"], current)
    assert set(body) == {"businessPhones", "businessAddress", "emailAddresses"}
    assert body["businessPhones"] == ["+47 1", "+1 918 555 0199"]
    assert "city" not in body["businessAddress"] and body["businessAddress"]["street"] == "10 Contoso Way"
    assert body["emailAddresses"][0] == {"address": "GARTH@x.com", "name": "G. Fort"}
    assert cut == ()


def test_graph_create_sends_display_name_and_clearing_uses_null() -> None:
    c = Contact(first_name="Ada", last_name="Byron", job_title=None)
    body, _ = contact_to_graph(c, ["first_name", "last_name", "job_title"])
    assert body["displayName"] == "Ada Byron" and body["jobTitle"] is None and body["givenName"] == "Ada"


def test_graph_holds_three_emails_and_reports_the_rest() -> None:
    c = Contact(emails=[f"e{i}@x.com" for i in range(5)])
    body, cut = contact_to_graph(c, ["email"])
    assert [e["address"] for e in body["emailAddresses"]] == ["e0@x.com", "e1@x.com", "e2@x.com"]
    assert cut[0].field == "emails" and cut[0].length == 5 and cut[0].limit == 3


def test_salesforce_write_cuts_to_field_lengths_and_reports_it() -> None:
    c = Contact(last_name="L" * 100, street="S" * 300, company="Acme", notes="n" * 100)
    w = contact_to_salesforce(c, ["last_name", "street", "company", "notes"])
    assert len(w.values["LastName"] or "") == 80 and len(w.values["MailingStreet"] or "") == 255
    assert w.values["Description"] == "n" * 100
    assert w.account_name == "Acme" and w.set_account and "Account.Name" not in w.values
    assert {(t.field, t.target, t.length, t.limit) for t in w.truncations} == {
        ("last_name", "LastName", 100, 80), ("street", "MailingStreet", 300, 255)}


def test_custom_fields_follow_the_field_map() -> None:
    fm = FieldMap(rules=(*FieldMap().rules,
                         FieldRule(key="custom.Nick__c", salesforce="Nick__c", graph="nickName")))
    g = graph_to_contact(GRAPH_DOC, fm)
    assert g.custom == {"Nick__c": "Garth"}
    body, _ = contact_to_graph(g, ["custom.Nick__c"], GRAPH_DOC, fm)
    assert body == {"nickName": "Garth"}
    w = contact_to_salesforce(g, ["custom.Nick__c"], fm)
    assert w.values == {"Nick__c": "Garth"}
    assert salesforce_to_contact({"LastName": "X", "Nick__c": "G"}, fm).custom == {"Nick__c": "G"}


@pytest.mark.parametrize(("rules", "message"), [
    ((FieldRule(key="nickname", salesforce="X"),), "unknown field"),
    ((FieldRule(key="city", salesforce="MailingCity"), FieldRule(key="city", salesforce="MailingCity")), "twice"),
    ((FieldRule(key="email_2", salesforce=None, direction=Direction.BOTH),), "no Salesforce field"),
    ((FieldRule(key="custom.X__c", salesforce="X__c", graph="birthday"),), "not one of"),
    ((FieldRule(key="custom.X__c", salesforce="X__c"),), "needs both"),
])
def test_field_map_rejects_bad_rules(rules: tuple[FieldRule, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FieldMap(rules=rules)


def test_field_directions_meet_the_mailbox_direction() -> None:
    fm = FieldMap(rules=(FieldRule(key="last_name", salesforce="LastName"),
                         FieldRule(key="job_title", salesforce="Title", direction=Direction.TO_SALESFORCE)))
    assert fm.keys(Direction.TO_M365) == ("last_name",)
    assert fm.keys(Direction.BOTH) == ("last_name", "job_title")
