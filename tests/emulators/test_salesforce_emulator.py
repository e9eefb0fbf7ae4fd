"""The Salesforce emulator driven by the real clients: simple-salesforce 1.12.10 (direct mode over TLS with the
emulator's CA), plain requests for OAuth, and the generated Pub/Sub gRPC stubs. Expectations cite
docs/reference/salesforce.md sections."""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import fastavro
import grpc
import jwt
import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from devhost.stack import jwt_keys
from emulators.salesforce import SalesforceEmulator, decode_bitmap
from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2 as pb2
from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2_grpc as pb2_grpc

TOPIC = "/data/ContactChangeEvent"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


KEY, PUBLIC = jwt_keys()
OTHER_KEY, _ = jwt_keys()


@pytest.fixture
def emu() -> Iterator[SalesforceEmulator]:
    e = SalesforceEmulator(keepalive_seconds=0.5, idle_timeout_seconds=5).start()
    e.register_jwt_client("cid-jwt", PUBLIC)
    e.register_client_credentials("cid-cc", "s3cret")
    yield e
    e.stop()


@pytest.fixture
def http(emu: SalesforceEmulator) -> requests.Session:
    return emu.requests_session()


@pytest.fixture
def sf(emu: SalesforceEmulator, http: requests.Session) -> Salesforce:
    token = http.post(emu.token_url, data={"grant_type": "client_credentials", "client_id": "cid-cc",
                                           "client_secret": "s3cret"}).json()["access_token"]
    return Salesforce(instance_url=emu.instance_url, session_id=token, version="67.0", session=http)


def _assertion(emu: SalesforceEmulator, *, key: bytes = KEY, aud: str = "https://login.salesforce.com",
               exp_in: int = 180, iss: str = "cid-jwt", sub: str = "integration@example.com") -> str:
    return jwt.encode({"iss": iss, "sub": sub, "aud": aud, "exp": int(time.time()) + exp_in}, key, algorithm="RS256")


# -- OAuth (docs/reference/salesforce.md §3.1, §3.2) -------------------------------------------------------------------

def test_jwt_bearer_grant_returns_token_whose_id_url_carries_org_and_user(emu, http):
    r = http.post(emu.token_url, data={"grant_type": JWT_GRANT, "assertion": _assertion(emu)})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["instance_url"] == emu.instance_url
    assert body["id"].endswith(f"/id/{emu.org_id}/{emu.integration_user_id}")
    assert emu.org_id.startswith("00D") and len(emu.org_id) == 18
    sf = Salesforce(instance_url=body["instance_url"], session_id=body["access_token"], version="67.0",
                    session=http)
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0


@pytest.mark.parametrize(("kwargs", "error", "description"), [
    ({"key": OTHER_KEY}, "invalid_grant", "invalid assertion"),
    ({"aud": "https://example.com"}, "invalid_grant", "audience is invalid"),
    ({"exp_in": -60}, "invalid_grant", "expired authorization code"),
    ({"iss": "unknown-app"}, "invalid_client_id", "client identifier invalid"),
    ({"sub": "nobody@example.com"}, "invalid_grant", "user hasn't approved this consumer"),
])
def test_jwt_bearer_errors_use_the_oauth_error_shape(emu, http, kwargs, error, description):
    r = http.post(emu.token_url, data={"grant_type": JWT_GRANT, "assertion": _assertion(emu, **kwargs)})
    assert r.status_code == 400
    assert r.json() == {"error": error, "error_description": description}


@pytest.mark.parametrize("aud", ["https://login.salesforce.com", "https://test.salesforce.com"])
def test_jwt_audience_is_the_login_or_test_url_whichever_host_takes_the_request(emu, http, aud):
    # docs/reference/salesforce.md §3.1: aud names login or test, not the host the assertion is posted to
    for url in (emu.token_url, f"{emu.login_url}/services/oauth2/token"):
        r = http.post(url, data={"grant_type": JWT_GRANT, "assertion": _assertion(emu, aud=aud)})
        assert r.status_code == 200, (url, r.text)


def test_a_my_domain_jwt_audience_is_invalid(emu, http):
    r = http.post(emu.token_url, data={"grant_type": JWT_GRANT, "assertion": _assertion(emu, aud=emu.instance_url)})
    assert (r.status_code, r.json()) == (400, {"error": "invalid_grant", "error_description": "audience is invalid"})


def test_client_credentials_only_on_the_my_domain_host(emu, http):
    # docs/reference/salesforce.md §3.2: login.salesforce.com / test.salesforce.com refuse this grant
    form = {"grant_type": "client_credentials", "client_id": "cid-cc", "client_secret": "s3cret"}
    r = http.post(f"{emu.login_url}/services/oauth2/token", data=form)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_grant",
                                               "error_description": "request not supported on this domain"})
    assert http.post(emu.token_url, data=form).status_code == 200


def test_client_credentials_with_basic_auth_and_wrong_secret(emu, http):
    ok = http.post(emu.token_url, data={"grant_type": "client_credentials"}, auth=("cid-cc", "s3cret"))
    assert ok.status_code == 200 and ok.json()["id"].endswith(emu.integration_user_id)
    bad = http.post(emu.token_url, data={"grant_type": "client_credentials"}, auth=("cid-cc", "nope"))
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_client")


def test_rest_requires_an_issued_token(emu, http):
    raw = http.get(f"{emu.instance_url}/services/data/v67.0/query/", params={"q": "SELECT Id FROM Contact"})
    assert raw.status_code == 401
    assert raw.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    sf = Salesforce(instance_url=emu.instance_url, session_id="00Dforged!token", version="67.0", session=http)
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact")
    emu.revoke_tokens()
    token_sf = Salesforce(instance_url=emu.instance_url, session_id=emu.issue_token(), version="67.0", session=http)
    token_sf.query("SELECT Id FROM Contact")  # a fresh token works


# -- query (docs/reference/salesforce.md §2.2) -------------------------------------------------------------------------

def test_query_pages_with_next_records_url_and_batch_size_header(emu, sf):
    emu.bulk_create_contacts([{"LastName": f"L{i:04d}"} for i in range(450)])
    sf.session.headers["Sforce-Query-Options"] = "batchSize=50"  # clamped to the 200 minimum
    first = sf.query("SELECT Id, LastName FROM Contact ORDER BY LastName")
    assert (first["totalSize"], first["done"], len(first["records"])) == (450, False, 200)
    assert first["nextRecordsUrl"].startswith("/services/data/v67.0/query/")
    assert first["nextRecordsUrl"].endswith("-200")
    everything = sf.query_all("SELECT Id, LastName FROM Contact ORDER BY LastName")
    names = [r["LastName"] for r in everything["records"]]
    assert names == sorted(names) and len(names) == 450
    assert emu.counters["rest.query_more"] == 2
    del sf.session.headers["Sforce-Query-Options"]
    assert sf.query("SELECT Id FROM Contact")["done"] is True  # default batch 2,000
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.query_more("01gBOGUS-200")
    assert e.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_a_query_by_id_answers_as_a_scan_would(emu, sf):
    """The emulator finds records by Id through an index (as Salesforce does) when the WHERE clause narrows by Id at
    its top level; the answer is the scan's: 15- and 18-character ids in any case, the other terms of an AND still
    apply, deleted records only with queryAll, store order, ids of other objects or unknown ids match nothing."""
    rep = emu.add_user("rep@example.com", "rep@example.com", last_name="Rep")
    ids = [emu.create_contact({"LastName": f"N{i}", "Email": f"n{i}@x.com"}) for i in range(40)]
    a, b, c = ids[3], ids[7], ids[11]
    emu.change_owner(b, rep)
    acme = emu.add_account("Acme")

    def got(where: str) -> list[str]:
        return [r["Id"] for r in sf.query(f"SELECT Id FROM Contact WHERE {where}")["records"]]

    assert got(f"Id = '{a}'") == [a]
    assert got(f"Id = '{a[:15]}'") == [a]
    assert got(f"Id = '{a[:15] + a[15:].lower()}'") == [a]  # an 18-character id in another case: the same record
    assert got(f"Id IN ('{c}', '{a}', '{b[:15]}')") == [a, b, c]  # store order, not the IN list's
    assert got(f"Id IN ('{a}', '{b}') AND OwnerId = '{rep}'") == [b]
    assert got(f"Id = '{a}' AND LastName = 'Other'") == []
    assert got(f"Id = '{acme}'") == []
    assert got(f"Id IN ('{a}', '{acme}')") == [a]
    assert got("Id = '003000000000000'") == []
    assert got(f"Id != '{a}' AND Id IN ('{a}', '{b}')") == [b]
    assert got(f"Id NOT IN ('{a}') AND Email = 'n3@x.com'") == []
    emu.delete_contact(c)
    assert got(f"Id IN ('{a}', '{c}')") == [a]
    assert [r["Id"] for r in sf.query_all(f"SELECT Id FROM Contact WHERE Id = '{c}'", include_deleted=True)
            ["records"]] == [c]


def test_where_order_limit_owner_and_account_relationship(emu, sf):
    rep = emu.add_user("rep@example.com", "rep@example.com", last_name="Rep", federation_id="rep@corp")
    acme = emu.add_account("Acme")
    a = emu.create_contact({"LastName": "Alpha", "Email": "a@x.com", "AccountId": acme}, as_user=rep)
    b = emu.create_contact({"LastName": "Beta", "Email": "b@x.com", "OwnerId": rep})
    c = emu.create_contact({"LastName": "Gamma", "Email": "c@x.com"})
    mark = sf.query(f"SELECT SystemModstamp FROM Contact WHERE Id = '{a}'")["records"][0]["SystemModstamp"]
    assert mark.endswith("+0000") and len(mark) == 28  # 2026-03-01T12:34:56.000+0000 (§1.1)
    owned = sf.query(f"SELECT Id, Owner.Email, Owner.FederationIdentifier FROM Contact WHERE OwnerId = '{rep}' "
                     "ORDER BY LastName DESC")
    assert [r["Id"] for r in owned["records"]] == [b, a]
    assert owned["records"][0]["Owner"]["FederationIdentifier"] == "rep@corp"
    q = sf.query("SELECT Id, Account.Name FROM Contact WHERE (LastName IN ('Alpha', 'Gamma') OR Email = 'B@X.COM') "
                 "AND LastName != 'Gamma' ORDER BY LastName LIMIT 1")
    assert [r["Id"] for r in q["records"]] == [a] and q["records"][0]["Account"]["Name"] == "Acme"
    assert sf.query(f"SELECT Id, Account.Name FROM Contact WHERE Id = '{c}'")["records"][0]["Account"] is None
    assert sf.query("SELECT Id FROM Account WHERE Name = 'acme'")["records"][0]["Id"] == acme
    later = sf.query("SELECT Id FROM Contact WHERE SystemModstamp > 2000-01-01T00:00:00Z")
    assert later["totalSize"] == 3
    assert sf.query("SELECT Id FROM Contact WHERE SystemModstamp > 2999-01-01T00:00:00Z")["totalSize"] == 0
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.query("SELECT Id FROM Contact WHERE SystemModstamp > '2026-01-01T00:00:00Z'")
    assert e.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.query("SELECT Nope FROM Contact")
    assert e.value.content[0]["errorCode"] == "INVALID_FIELD"
    users = sf.query("SELECT Id, Email, FederationIdentifier FROM User WHERE IsActive = true")
    assert {u["Email"] for u in users["records"]} == {"integration@example.com", "rep@example.com",
                                                      "autoproc@example.com"}  # Automated Process is a User too


def test_query_all_shows_recycle_bin_rows(emu, sf):
    cid = sf.Contact.create({"LastName": "Gone"})["id"]
    assert sf.Contact.delete(cid) == 204
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    rows = sf.query_all("SELECT Id, IsDeleted FROM Contact", include_deleted=True)["records"]
    assert [(r["Id"], r["IsDeleted"]) for r in rows] == [(cid, True)]
    with pytest.raises(SalesforceResourceNotFound) as e:
        sf.Contact.get(cid)
    assert e.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.delete(cid)
    emu.undelete_contact(cid)
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 1


# -- CRUD, validation, duplicates (docs/reference/salesforce.md §1.1, §1.3, §2.4) --------------------------------------

def test_crud_with_custom_outlook_id_field_and_upsert(emu, sf):
    created = sf.Contact.create({"LastName": "Lovelace", "FirstName": "Ada", "Outlook_Id__c": "AAMk-1"})
    cid = created["id"]
    assert cid.startswith("003") and len(cid) == 18 and created["success"] is True
    got = sf.Contact.get(cid)
    assert (got["Name"], got["Outlook_Id__c"], got["OwnerId"]) == ("Ada Lovelace", "AAMk-1", emu.integration_user_id)
    assert sf.Contact.update(cid, {"Title": "Countess", "FirstName": None}) == 204
    got = sf.Contact.get(cid)
    assert (got["Title"], got["FirstName"], got["Name"]) == ("Countess", None, "Lovelace")
    assert got["LastModifiedDate"] >= got["CreatedDate"]
    assert sf.Contact.get_by_custom_id("Outlook_Id__c", "AAMk-1")["Id"] == cid
    assert sf.Contact.upsert("Outlook_Id__c/AAMk-1", {"Department": "Math"}) == 200
    assert sf.Contact.upsert("Outlook_Id__c/AAMk-2", {"LastName": "Babbage"}) == 201
    assert sf.query("SELECT Id FROM Contact WHERE Outlook_Id__c = 'AAMk-2'")["totalSize"] == 1
    assert sf.Contact.delete(cid) == 204
    assert sf.Contact.describe()["fields"][0]["name"] == "Id"


def test_a_duplicate_unique_external_id_is_refused_on_single_and_collection_writes(emu, sf):
    """docs/reference/salesforce.md §2.4: DUPLICATE_VALUE naming the field and the holder's id, fields empty."""
    held = sf.Contact.create({"LastName": "Lovelace", "Outlook_Id__c": "AAMk-1"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"LastName": "Byron", "Outlook_Id__c": "AAMk-1"})
    assert (e.value.status, e.value.content[0]) == (400, {
        "errorCode": "DUPLICATE_VALUE", "fields": [],
        "message": f"duplicate value found: Outlook_Id__c duplicates value on record with id: {held}"})
    other = sf.Contact.create({"LastName": "Babbage", "Outlook_Id__c": "AAMk-2"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.update(other, {"Outlook_Id__c": "AAMk-1"})
    assert e.value.content[0]["errorCode"] == "DUPLICATE_VALUE"
    assert sf.Contact.update(held, {"Outlook_Id__c": "AAMk-1", "Title": "Countess"}) == 204  # its own value
    recs = [{"attributes": {"type": "Contact"}, "LastName": n, "Outlook_Id__c": m}
            for n, m in (("A", "AAMk-1"), ("B", "AAMk-3"), ("C", "AAMk-3"))]
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": recs})
    assert [r["success"] for r in res] == [False, True, False]  # the same collection's first copy holds it too
    assert res[0]["errors"] == [{"statusCode": "DUPLICATE_VALUE", "fields": [], "message":
                                 f"duplicate value found: Outlook_Id__c duplicates value on record with id: {held}"}]
    assert res[2]["errors"][0]["message"].endswith(res[1]["id"])
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 3


def test_field_too_long_and_required_field_missing(sf):
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"LastName": "X", "FirstName": "f" * 41})
    assert (e.value.status, e.value.content[0]["errorCode"], e.value.content[0]["fields"]) == \
        (400, "STRING_TOO_LONG", ["FirstName"])
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"FirstName": "NoLast"})
    assert e.value.content[0] == {"message": "Required fields are missing: [LastName]",
                                  "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"LastName": "X", "Bogus__c": "1"})
    assert e.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0


def test_duplicate_rule_alert_refuses_unless_allow_save_and_matches_fuzzy_name_with_email(emu, sf):
    first = sf.Contact.create({"FirstName": "Katherine", "LastName": "Johnson", "Email": "kj@example.com"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as e:  # name typo + initial, same email (any case)
        sf.Contact.create({"FirstName": "K", "LastName": "Jonson", "Email": "KJ@example.com"})
    err = e.value.content[0]
    assert err["errorCode"] == "DUPLICATES_DETECTED" and err["duplicateResult"]["allowSave"] is True
    assert err["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]["Id"] == first
    assert sf.Contact.create({"FirstName": "Other", "LastName": "Person", "Email": "kj@example.com"})["success"]
    assert sf.Contact.create({"FirstName": "Katherine", "LastName": "Johnson"})["success"]  # name alone: no match
    sf.session.headers["Sforce-Duplicate-Rule-Header"] = "allowSave=true"
    assert sf.Contact.create({"FirstName": "Kathy", "LastName": "Johnson", "Email": "kj@example.com"})["success"]


def test_duplicate_rule_matches_name_with_account_and_title_and_block_mode_refuses_always(emu, sf):
    acme = emu.add_account("Acme, Inc.")
    acme2 = emu.add_account("ACME")
    emu.org.settings.duplicate_rule = "block"
    first = sf.Contact.create({"FirstName": "Grace", "LastName": "Hopper", "Title": "Admiral", "AccountId": acme})["id"]
    sf.session.headers["Sforce-Duplicate-Rule-Header"] = "allowSave=true"
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"FirstName": "Grace", "LastName": "Hopper", "Title": "admiral", "AccountId": acme2})
    result = e.value.content[0]["duplicateResult"]
    assert result["allowSave"] is False and result["matchResults"][0]["matchRecords"][0]["record"]["Id"] == first
    other = sf.Contact.create({"FirstName": "Grace", "LastName": "Hopper", "Title": "Professor"})["id"]
    with pytest.raises(SalesforceMalformedRequest):  # an edit into a duplicate is checked too
        sf.Contact.update(other, {"Title": "Admiral", "AccountId": acme})
    assert sf.Contact.update(other, {"Department": "Navy"}) == 204  # an edit touching no matched field is not
    emu.org.settings.duplicate_rule = "off"
    assert sf.Contact.create({"FirstName": "Grace", "LastName": "Hopper", "Title": "Admiral",
                              "AccountId": acme})["success"]


# -- State and Country/Territory Picklists (docs/reference/salesforce.md §1.4) -----------------------------------------

def _address(sf: Salesforce, cid: str) -> tuple[Any, ...]:
    row = sf.Contact.get(cid)
    return row["MailingCountryCode"], row["MailingCountry"], row["MailingStateCode"], row["MailingState"]


def test_address_picklists_take_codes_or_integration_values_and_fill_in_the_other(sf):
    by_code = sf.Contact.create({"LastName": "A", "MailingCountryCode": "US", "MailingStateCode": "CA"})["id"]
    assert _address(sf, by_code) == ("US", "United States", "CA", "California")
    by_label = sf.Contact.create({"LastName": "B", "MailingCountry": "Germany"})["id"]
    assert _address(sf, by_label) == ("DE", "Germany", None, None)
    sf.Contact.update(by_code, {"MailingCountryCode": "CA", "MailingStateCode": "ON"})
    assert _address(sf, by_code) == ("CA", "Canada", "ON", "Ontario")
    sf.Contact.update(by_code, {"MailingCountryCode": None})  # removing the country removes its state
    assert _address(sf, by_code) == (None, None, None, None)
    assert sf.query("SELECT Id FROM Contact WHERE MailingCountryCode = 'DE'")["records"][0]["Id"] == by_label


@pytest.mark.parametrize(("values", "field"), [
    ({"MailingCountry": "USA"}, "MailingCountry"),
    ({"MailingCountry": "Deutschland"}, "MailingCountry"),
    ({"MailingCountryCode": "ZZ"}, "MailingCountryCode"),
    ({"MailingCountry": "United States", "MailingState": "Calif."}, "MailingState"),
    ({"MailingCountryCode": "DE", "MailingState": "Bayern"}, "MailingState"),  # Germany has no standard states
    ({"MailingState": "California"}, "MailingState"),  # a state needs a country
])
def test_address_picklists_refuse_text_that_is_not_an_integration_value(sf, values, field):
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"LastName": "X", **values})
    err = e.value.content[0]
    assert (e.value.status, err["errorCode"], err["fields"]) == (400, "FIELD_INTEGRITY_EXCEPTION", [field])
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0


def test_address_picklists_refuse_a_state_of_another_country_and_mismatched_code_and_label(sf):
    cid = sf.Contact.create({"LastName": "X", "MailingCountryCode": "US", "MailingStateCode": "NY"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.update(cid, {"MailingCountryCode": "AU"})  # NY is no Australian state
    assert e.value.content[0]["fields"] == ["MailingStateCode"]
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.update(cid, {"MailingCountryCode": "US", "MailingCountry": "Canada"})
    assert e.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    assert _address(sf, cid) == ("US", "United States", "NY", "New York")


def test_describe_lists_the_code_picklists_with_dependent_states(sf):
    import base64

    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    countries = [v["value"] for v in fields["MailingCountryCode"]["picklistValues"]]
    assert fields["MailingCountryCode"]["type"] == "picklist" and {"US", "DE", "JP"} <= set(countries)
    state = fields["MailingStateCode"]
    assert state["controllerName"] == "MailingCountryCode" and state["dependentPicklist"] is True
    ca = next(v for v in state["picklistValues"] if v["label"] == "California")
    bits, i = base64.b64decode(ca["validFor"]), countries.index("US")
    assert ca["value"] == "CA" and bits[i >> 3] & (0x80 >> (i & 7))
    assert sum(b.bit_count() for b in bits) == 1


def test_address_picklists_are_an_org_switch(emu, sf, http):
    assert http.post(f"{emu.instance_url}/_admin/faults", json={"addressPicklists": False}).status_code == 204
    assert "MailingCountryCode" not in {f["name"] for f in sf.Contact.describe()["fields"]}
    cid = sf.Contact.create({"LastName": "X", "MailingCountry": "USA", "MailingState": "Calif."})["id"]
    row = sf.Contact.get(cid)
    assert (row["MailingCountry"], row["MailingState"], "MailingCountryCode" in row) == ("USA", "Calif.", False)
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Contact.create({"LastName": "Y", "MailingCountryCode": "US"})
    assert e.value.content[0]["errorCode"] == "INVALID_FIELD"
    emu.org.settings.address_picklists = True  # switched on again: Setup converts the text it knows
    sf.Contact.update(cid, {"MailingCountry": "United States", "MailingState": "California"})
    assert _address(sf, cid) == ("US", "United States", "CA", "California")


# -- sObject Collections (docs/reference/salesforce.md §2.5) -----------------------------------------------------------

def test_collections_all_or_none_false_and_true(emu, sf):
    recs = [{"attributes": {"type": "Contact"}, "LastName": "Ok"},
            {"attributes": {"type": "Contact"}, "FirstName": "NoLast"}]
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": recs})
    assert res[0]["success"] is True and res[0]["id"].startswith("003")
    assert res[1]["success"] is False and res[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    events_before = len(emu.events())
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": recs})
    assert [r["errors"][0]["statusCode"] for r in res] == ["ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                                           "REQUIRED_FIELD_MISSING"]
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 1 and len(emu.events()) == events_before
    ok_id = sf.query("SELECT Id FROM Contact")["records"][0]["Id"]
    upd = sf.restful("composite/sobjects", method="PATCH", json={"records": [
        {"attributes": {"type": "Contact"}, "Id": ok_id, "Title": "T"},
        {"attributes": {"type": "Contact"}, "Id": ok_id, "Title": "x" * 129}]})
    assert upd[0]["success"] and upd[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    got = sf.restful("composite/sobjects/Contact", method="POST", json={"ids": [ok_id], "fields": ["Title"]})
    assert got[0]["Title"] == "T"
    too_many = [{"attributes": {"type": "Contact"}, "LastName": "x"}] * 201
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.restful("composite/sobjects", method="POST", json={"records": too_many})
    assert e.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": f"{ok_id},003Hs00000009999AAA"})
    assert deleted[0]["success"] is True and deleted[1]["success"] is False


# -- limits, headers, faults (docs/reference/salesforce.md §2.8) -------------------------------------------------------

def test_limit_header_limits_resource_and_request_limit_exceeded(emu, sf, http):
    r = http.get(f"{emu.instance_url}/services/data/v67.0/limits/",
                 headers={"Authorization": f"Bearer {sf.session_id}"})
    assert r.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    assert r.json()["DailyApiRequests"] == {"Max": 15000, "Remaining": 14999}
    assert "Sforce-Limit-Info" not in http.get(f"{emu.instance_url}/services/data/").headers
    emu.set_api_usage(used=100, maximum=100)
    with pytest.raises(SalesforceRefusedRequest) as e:
        sf.query("SELECT Id FROM Contact")
    assert e.value.status == 403 and e.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_injected_5xx_then_recovers(emu, sf):
    emu.faults.fail_next(status=503, path_contains="/query")
    with pytest.raises(SalesforceGeneralError) as e:
        sf.query("SELECT Id FROM Contact")
    assert e.value.status == 503
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    assert emu.counters["rest.fault.503"] == 1
    emu.faults.invalid_session_next = 1
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact")


# -- Pub/Sub API (docs/reference/salesforce.md §4, §5.1, Appendix A) ---------------------------------------------------

class Subscription:
    """Runs Subscribe in a thread; ``more(n)`` sends a FetchRequest; ``next()`` returns the next FetchResponse."""

    def __init__(self, emu: SalesforceEmulator, token: str, first: pb2.FetchRequest) -> None:
        self.channel = grpc.insecure_channel(emu.grpc_target)
        self.stub = pb2_grpc.PubSubStub(self.channel)
        self.requests: queue.Queue[pb2.FetchRequest | None] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.requests.put(first)
        self.call = self.stub.Subscribe(iter(self.requests.get, None), metadata=emu.grpc_metadata(token))
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError as e:
            self.responses.put(e)

    def more(self, n: int) -> None:
        self.requests.put(pb2.FetchRequest(num_requested=n))

    def next(self, timeout: float = 5.0) -> Any:
        return self.responses.get(timeout=timeout)

    def events(self, n: int, timeout: float = 5.0) -> list[pb2.ConsumerEvent]:
        out: list[pb2.ConsumerEvent] = []
        while len(out) < n:
            resp = self.next(timeout)
            if isinstance(resp, grpc.RpcError):
                raise resp
            out.extend(resp.events)
        return out

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def pubsub(emu: SalesforceEmulator) -> Iterator[Any]:
    token = emu.issue_token()
    subs: list[Subscription] = []
    channel = grpc.insecure_channel(emu.grpc_target)
    stub = pb2_grpc.PubSubStub(channel)
    md = emu.grpc_metadata(token)
    topic = stub.GetTopic(pb2.TopicRequest(topic_name=TOPIC), metadata=md)
    info = stub.GetSchema(pb2.SchemaRequest(schema_id=topic.schema_id), metadata=md)
    schema = json.loads(info.schema_json)
    parsed = fastavro.parse_schema(json.loads(info.schema_json))

    class Helper:
        def subscribe(self, preset: int = pb2.ReplayPreset.EARLIEST, n: int = 100, replay_id: bytes = b"") -> Any:
            sub = Subscription(emu, token, pb2.FetchRequest(topic_name=TOPIC, replay_preset=preset,
                                                            replay_id=replay_id, num_requested=n))
            subs.append(sub)
            return sub

        def decode(self, ev: pb2.ConsumerEvent) -> dict[str, Any]:
            assert ev.event.schema_id == topic.schema_id
            return fastavro.schemaless_reader(io.BytesIO(ev.event.payload), parsed)

        def fields(self, bitmaps: list[str]) -> list[str]:
            return decode_bitmap(schema, bitmaps)

    helper = Helper()
    helper.stub, helper.md, helper.schema = stub, md, schema  # type: ignore[attr-defined]
    yield helper
    for s in subs:
        s.close()
    channel.close()


def test_rest_update_arrives_as_change_event_with_bitmaps_and_change_origin(emu, sf, pubsub):
    sf.session.headers["Sforce-Call-Options"] = "client=m365-sync"
    cid = sf.Contact.create({"LastName": "Lovelace", "FirstName": "Ada", "Email": "ada@example.com",
                             "Phone": "+1 555 0100"})["id"]
    sf.Contact.update(cid, {"FirstName": "Augusta", "Email": "augusta@example.com"})
    sf.Contact.update(cid, {"Phone": None})
    sub = pubsub.subscribe()
    create, update, nulling = (pubsub.decode(e) for e in sub.events(3))
    h = create["ChangeEventHeader"]
    assert (h["changeType"], h["recordIds"], h["entityName"], h["changedFields"]) == \
        ("CREATE", [cid], "Contact", [])
    assert h["changeOrigin"] == "com/salesforce/api/rest/67.0;client=m365-sync"  # §2.9
    assert h["commitUser"] == emu.integration_user_id and h["sequenceNumber"] == 1
    assert create["Name"]["LastName"] == "Lovelace" and create["Phone"] == "+1 555 0100"
    u = update["ChangeEventHeader"]
    assert u["changeType"] == "UPDATE" and u["commitTimestamp"] >= h["commitTimestamp"]
    assert u["commitNumber"] > h["commitNumber"] and u["transactionKey"] != h["transactionKey"]
    # The docs/reference/salesforce.md §4.4 worked example: ['0xC', '1-0x2'] -> Email, LastModifiedDate, Name.FirstName
    assert u["changedFields"] == ["0xC", "1-0x2"]
    assert pubsub.fields(u["changedFields"]) == ["Email", "LastModifiedDate", "Name.FirstName"]
    assert update["Email"] == "augusta@example.com" and update["Name"]["FirstName"] == "Augusta"
    assert update["Phone"] is None and update["Name"]["LastName"] is None  # unchanged -> null (§4.3)
    n = nulling["ChangeEventHeader"]
    assert pubsub.fields(n["nulledFields"]) == ["Phone"]
    assert set(pubsub.fields(n["changedFields"])) == {"Phone", "LastModifiedDate"}


def test_flow_control_num_requested(emu, pubsub):
    sub = pubsub.subscribe(n=2)
    emu.bulk_create_contacts([{"LastName": f"C{i}"} for i in range(5)])
    first = sub.next()
    assert len(first.events) == 2 and first.pending_num_requested == 0
    with pytest.raises(queue.Empty):
        sub.next(timeout=0.7)  # nothing requested: nothing delivered, no keepalive
    sub.more(10)
    rest = sub.events(3)
    assert len(rest) == 3
    tx = {pubsub.decode(e)["ChangeEventHeader"]["transactionKey"] for e in [*first.events, *rest]}
    assert len(tx) == 1  # one import transaction
    seqs = [pubsub.decode(e)["ChangeEventHeader"]["sequenceNumber"] for e in [*first.events, *rest]]
    assert seqs == [1, 2, 3, 4, 5]


def test_replay_custom_earliest_latest_and_expired_replay_id(emu, pubsub):
    ids = emu.bulk_create_contacts([{"LastName": f"R{i}"} for i in range(4)])
    all_events = pubsub.subscribe(pb2.ReplayPreset.EARLIEST).events(4)
    got = [pubsub.decode(e)["ChangeEventHeader"]["recordIds"][0] for e in all_events]
    assert got == ids
    resumed = pubsub.subscribe(pb2.ReplayPreset.CUSTOM, replay_id=all_events[1].replay_id).events(2)
    assert [pubsub.decode(e)["ChangeEventHeader"]["recordIds"][0] for e in resumed] == ids[2:]
    latest = pubsub.subscribe(pb2.ReplayPreset.LATEST)
    keepalive = latest.next()  # nothing new: an empty keepalive with the latest replay id
    assert not keepalive.events and keepalive.latest_replay_id == all_events[-1].replay_id
    new_id = emu.create_contact({"LastName": "New"})
    new_events = [e for e in latest.events(1)]
    assert pubsub.decode(new_events[0])["ChangeEventHeader"]["recordIds"] == [new_id]
    emu.advance_time(73 * 3600)  # beyond the 72-hour retention (§4.5); the 2-hour session expired too
    expired = Subscription(emu, emu.issue_token(), pb2.FetchRequest(
        topic_name=TOPIC, replay_preset=pb2.ReplayPreset.CUSTOM, replay_id=all_events[0].replay_id, num_requested=1))
    err = expired.next()
    expired.close()
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.trailing_metadata())["error-code"].endswith("replayid.validation.failed")


def test_gap_overflow_drop_and_duplicate_knobs(emu, sf, pubsub):
    cid = emu.create_contact({"LastName": "Gap"})
    emu.publish_gap("GAP_UPDATE", [cid])
    emu.faults.gap_next_events = 1
    sf.Contact.update(cid, {"Title": "x"})
    emu.faults.overflow_threshold = 2
    emu.bulk_create_contacts([{"LastName": f"O{i}"} for i in range(3)])
    emu.faults.overflow_threshold = 100_000
    emu.faults.drop_next_events = 1
    sf.Contact.update(cid, {"Title": "dropped"})
    emu.faults.duplicate_next_events = 1
    sf.Contact.update(cid, {"Title": "twice"})
    evs = [pubsub.decode(e)["ChangeEventHeader"] for e in pubsub.subscribe().events(8)]
    types = [h["changeType"] for h in evs]
    assert types == ["CREATE", "GAP_UPDATE", "GAP_UPDATE", "CREATE", "CREATE", "GAP_OVERFLOW", "UPDATE", "UPDATE"]
    assert evs[1]["recordIds"] == [cid] and evs[1]["changedFields"] == []
    assert evs[5]["recordIds"] == [] and evs[5]["transactionKey"] == evs[3]["transactionKey"]
    assert evs[5]["sequenceNumber"] == 3
    assert evs[6] == evs[7]  # duplicated delivery of the same change


def test_admin_owner_change_and_collection_delete_events(emu, sf, http, pubsub):
    rep = emu.add_user("rep2@example.com", "rep2@example.com", last_name="Two")
    a, b = (emu.create_contact({"LastName": n}) for n in ("A", "B"))
    r = http.post(f"{emu.instance_url}/_admin/contacts/{a}/owner", json={"ownerId": rep, "asUser": rep})
    assert r.status_code == 204
    sf.restful("composite/sobjects", method="DELETE", params={"ids": f"{a},{b}"})
    evs = [pubsub.decode(e) for e in pubsub.subscribe().events(4)]
    owner = evs[2]
    h = owner["ChangeEventHeader"]
    assert h["changeType"] == "UPDATE" and h["commitUser"] == rep and "SfdcInternalAPI" in h["changeOrigin"]
    assert set(pubsub.fields(h["changedFields"])) == {"OwnerId", "LastModifiedDate", "LastModifiedById"}
    assert owner["OwnerId"] == rep
    d = evs[3]["ChangeEventHeader"]  # same change on 2 records in one transaction -> one event (§4.2)
    assert d["changeType"] == "DELETE" and sorted(d["recordIds"]) == sorted([a, b])
    assert sf.query(f"SELECT OwnerId FROM Contact WHERE Id = '{a}'")["totalSize"] == 0


def test_pubsub_rejects_bad_token_and_unknown_topic(emu, pubsub):
    bad = (("accesstoken", "nope"), ("instanceurl", emu.instance_url), ("tenantid", emu.org_id))
    with pytest.raises(grpc.RpcError) as e:
        pubsub.stub.GetTopic(pb2.TopicRequest(topic_name=TOPIC), metadata=bad)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        pubsub.stub.GetTopic(pb2.TopicRequest(topic_name="/data/Nope"), metadata=pubsub.md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    emu.faults.fail_grpc_next()
    err = pubsub.subscribe().next()
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(err.trailing_metadata())["error-code"] == "sfdc.platform.eventbus.grpc.service.unavailable"


def test_the_service_clock_counts_each_answered_request(emu, sf):
    before_n, before_s = emu.service.requests, emu.service.seconds
    sf.query("SELECT Id FROM Contact")
    sf.query("SELECT Id FROM Contact")
    assert emu.service.settle()  # the answer reaches the client before the server thread counts it
    assert emu.service.requests - before_n == 2
    assert emu.service.seconds > before_s


def test_an_update_lists_last_modified_date_even_within_the_same_millisecond(emu):
    """Every update sets LastModifiedDate (docs/reference/salesforce.md §4.4), also when two writes share a millisecond
    stamp."""
    codec = emu.org.codec
    stamp = emu.org.now()
    old = {"LastName": "Lovelace", "Phone": "+1 555 0100", "LastModifiedDate": stamp}
    _, changed, nulled = codec.update_body(old, {**old, "Phone": None})
    assert set(decode_bitmap(codec.schema, changed)) == {"Phone", "LastModifiedDate"}
    assert decode_bitmap(codec.schema, nulled) == ["Phone"]


# -- Salesforce's clock: whole seconds (docs/reference/salesforce.md §1.1, §2.2, §2.7) ---------------------------------

def test_system_stamps_keep_whole_seconds_and_soql_compares_at_second_precision(emu, sf):
    cid = sf.Contact.create({"LastName": "Clock"})["id"]
    stamp = sf.Contact.get(cid)["SystemModstamp"]
    assert stamp.endswith(".000+0000")
    at = stamp[:19]
    for literal in (f"{at}Z", f"{at}.999Z"):  # the fraction of a second is ignored
        assert sf.query(f"SELECT Id FROM Contact WHERE SystemModstamp = {literal}")["totalSize"] == 1
        assert sf.query(f"SELECT Id FROM Contact WHERE SystemModstamp > {literal}")["totalSize"] == 0


def test_if_unmodified_since_on_a_single_record_patch(emu, sf):
    from email.utils import format_datetime

    from emulators.salesforce.ids import parse_datetime

    cid = sf.Contact.create({"LastName": "Guarded"})["id"]
    modified = parse_datetime(sf.Contact.get(cid)["LastModifiedDate"])
    same = {"If-Unmodified-Since": format_datetime(modified, usegmt=True)}
    assert sf.Contact.update(cid, {"Title": "A"}, headers=same) == 204  # modified at, not after: allowed
    emu.advance_time(2)
    emu.update_contact(cid, {"Title": "B"})  # a later second
    with pytest.raises(SalesforceGeneralError) as e:
        sf.Contact.update(cid, {"Title": "C"}, headers=same)
    assert e.value.status == 412 and sf.Contact.get(cid)["Title"] == "B"
    with pytest.raises(SalesforceMalformedRequest):
        sf.Contact.update(cid, {"Title": "C"}, headers={"If-Unmodified-Since": "yesterday"})


def test_the_millisecond_clock_is_an_org_switch(emu, sf):
    emu.org.settings.whole_seconds = False
    stamps = {sf.Contact.get(sf.Contact.create({"LastName": f"M{i}"})["id"])["SystemModstamp"][-9:-5]
              for i in range(5)}
    assert stamps != {".000"}


def test_if_unmodified_since_compares_whole_seconds_on_a_millisecond_clock(emu, sf):
    from email.utils import format_datetime

    from emulators.salesforce.ids import parse_datetime

    emu.org.settings.whole_seconds = False
    cid = sf.Contact.create({"LastName": "Millis"})["id"]
    modified = parse_datetime(sf.Contact.get(cid)["LastModifiedDate"])
    assert sf.Contact.update(cid, {"Title": "A"}, headers={
        "If-Unmodified-Since": format_datetime(modified, usegmt=True)}) == 204  # an HTTP-date has no fraction


def test_where_conditions_follow_soql_precedence_null_and_relationship_rules(
        emu: SalesforceEmulator, sf: Salesforce) -> None:
    """SF_SOQL_FILTER's semantics (docs/reference/salesforce.md §2.10): AND/OR mixed only with parentheses, NOT only
    opening a condition, = != < > LIKE IN NOT IN, null as a value, a missing parent read as null, unknown fields
    refused as Salesforce does."""
    customer = emu.add_account("Acme", account_type="Customer")
    partner = emu.add_account("Bolt", account_type="Partner")
    a = emu.create_contact({"LastName": "Alpha", "Email": "a@x.com", "Department": "Sales", "AccountId": customer})
    b = emu.create_contact({"LastName": "Beta", "Department": "Support", "AccountId": partner})
    c = emu.create_contact({"LastName": "Gamma", "Email": "g@x.com"})  # no Account

    def ids(where: str) -> set[str]:
        return {r["Id"] for r in sf.query(f"SELECT Id FROM Contact WHERE {where}")["records"]}

    assert ids("Account.Type = 'customer'") == {a}  # case-insensitive
    assert ids("Account.Type = null") == {c}  # no parent: null
    assert ids("Account.Type != 'Customer'") == {b, c}  # != keeps nulls
    assert ids("Email != null AND Account.Type = 'Customer'") == {a}
    assert ids("Email = null") == {b}
    assert ids("(Department = 'Sales' OR Department = 'Support') AND Email != null") == {a}
    assert ids("Department = 'Sales' OR (Department = 'Support' AND Email != null)") == {a}
    assert ids("Department = 'Sales' OR Department = 'Support' OR LastName = 'Gamma'") == {a, b, c}
    assert ids("NOT Department = 'Sales'") == {b, c}
    assert ids("NOT (Department = 'Sales' OR Email = null)") == {c}
    assert ids("Email != null AND (NOT Department = 'Sales')") == {c}
    assert ids("LastName LIKE 'a%'") == {a}
    assert ids("LastName LIKE '_eta'") == {b}
    assert ids("LastName < 'B'") == {a} and ids("LastName > 'Beta'") == {c}
    assert ids("Department IN ('Sales', 'Marketing')") == {a}
    assert ids("Department NOT IN ('Sales')") == {b, c}
    for where, token in (("Department = 'Sales' AND Email != null OR LastName = 'Gamma'", "'OR'"),
                         ("Department = 'Sales' OR Email != null AND LastName = 'Gamma'", "'AND'"),
                         ("Email != null AND NOT Department = 'Sales'", "'NOT'")):
        with pytest.raises(SalesforceMalformedRequest) as e:
            sf.query(f"SELECT Id FROM Contact WHERE {where}")
        assert e.value.status == 400
        assert e.value.content[0]["errorCode"] == "MALFORMED_QUERY", where
        assert token in e.value.content[0]["message"]
    for where, code in (("Region__c = 'EMEA'", "INVALID_FIELD"), ("RecordType.Name = 'Customer'", "INVALID_FIELD"),
                        ("Account.Nope = 'x'", "INVALID_FIELD"), ("Email = 'x';", "MALFORMED_QUERY"),
                        ("OwnerId LIKE '005%'", "INVALID_QUERY_FILTER_OPERATOR")):
        with pytest.raises(SalesforceMalformedRequest) as e:
            sf.query(f"SELECT Id FROM Contact WHERE {where}")
        assert e.value.status == 400 and e.value.content[0]["errorCode"] == code, where


def test_the_query_fast_paths_return_what_a_full_scan_returns(emu, sf):
    # the prefilter (a datetime range, an id equality) and the top-n selection of ORDER BY ... LIMIT are only
    # speed-ups: the rows and their order must be a full scan's, ties and sub-second stamps included
    org = emu.org
    owners = [emu.add_user(f"fast{i}@example.com", f"fast{i}@example.com", last_name=f"Fast{i}") for i in range(3)]
    ids: list[str] = []
    for batch in range(6):
        ids += emu.bulk_create_contacts([{"LastName": f"P{batch}-{n}", "OwnerId": owners[n % 3]} for n in range(40)])
        org.advance_time(0.6)  # stamps at whole seconds: some batches share one
    sf.Contact.delete(ids[5])
    emu.update_contact(ids[7], {"Title": "Moved"})
    mid = org.records["Contact"][ids[100]]["SystemModstamp"].strftime("%Y-%m-%dT%H:%M:%SZ")

    def scan(soql: str, include_deleted: bool) -> list[str]:
        from emulators.salesforce.soql import parse

        q = parse(soql)
        t = org.evaluator.check(q)
        rows = [r for r in org.records[t.name].values() if (include_deleted or not r.get("IsDeleted"))
                and (q.where is None or org.evaluator.matches(t, r, q.where))]
        rows.sort(key=org.evaluator.sort_key(t, q))
        rows = rows[q.offset:]
        return [r["Id"] for r in (rows if q.limit is None else rows[: q.limit])]

    queries = [
        (f"SELECT Id FROM Contact WHERE (SystemModstamp > {mid} OR (SystemModstamp = {mid} AND Id > '{ids[100]}')) "
         "ORDER BY SystemModstamp, Id", True),
        (f"SELECT Id FROM Contact WHERE SystemModstamp >= {mid} ORDER BY SystemModstamp, Id", False),
        (f"SELECT Id FROM Contact WHERE OwnerId = '{owners[1][:15]}' ORDER BY Id", False),
        (f"SELECT Id FROM Contact WHERE OwnerId = '{owners[2]}' AND SystemModstamp = {mid} ORDER BY Id", True),
        ("SELECT Id FROM Contact ORDER BY SystemModstamp DESC, Id DESC LIMIT 7", True),
        ("SELECT Id FROM Contact ORDER BY SystemModstamp, Id LIMIT 11 OFFSET 3", False),
        ("SELECT Id FROM Contact ORDER BY SystemModstamp DESC, Id DESC LIMIT 45", False),
    ]
    for soql, include_deleted in queries:
        got = [r["Id"] for r in org.query(soql, include_deleted, "67.0", 2000)["records"]]
        assert got == scan(soql, include_deleted) and got, soql
