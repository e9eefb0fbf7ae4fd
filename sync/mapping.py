"""Translate between each side's JSON and the canonical Contact.

``graph_to_contact`` / ``contact_to_graph`` handle Graph ``contact`` resources, ``salesforce_to_contact`` /
``contact_to_salesforce`` Salesforce ``Contact`` records. A value cut to fit a side (a Salesforce field length, the
three Graph email addresses) comes back as a ``Truncation``; it is never dropped silently.

Field correspondence (docs/reference/graph.md §1.1, docs/reference/salesforce.md §1.1):
    first_name givenName FirstName | last_name surname LastName | email/email_2/email_3 emailAddresses[0..2] Email
    business_phone businessPhones[0] Phone | mobile_phone mobilePhone MobilePhone | home_phone homePhones[0] HomePhone
    company companyName Account.Name | job_title jobTitle Title | department department Department
    street/city/state/postal_code/country businessAddress.{street,city,state,postalCode,countryOrRegion}
        MailingStreet/MailingCity/MailingState/MailingPostalCode/MailingCountry | notes personalNotes Description
Graph collections keep the entries we do not sync: a second business phone stays where it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sync.model import CUSTOM_PREFIX, EMAIL_FIELDS, Contact
from sync.policy import DEFAULT_SALESFORCE_LENGTHS, FieldMap

GRAPH_MAX_EMAILS = 3

_GRAPH_SCALARS: Mapping[str, str] = {
    "first_name": "givenName",
    "last_name": "surname",
    "mobile_phone": "mobilePhone",
    "company": "companyName",
    "job_title": "jobTitle",
    "department": "department",
    "notes": "personalNotes",
}
_GRAPH_FIRST_OF: Mapping[str, str] = {"business_phone": "businessPhones", "home_phone": "homePhones"}
_GRAPH_ADDRESS: Mapping[str, str] = {
    "street": "street",
    "city": "city",
    "state": "state",
    "postal_code": "postalCode",
    "country": "countryOrRegion",
}


@dataclass(frozen=True)
class Truncation:
    """A value that did not fit the target side, cut to ``limit`` characters (or entries)."""

    field: str
    target: str  # the side's field name
    length: int
    limit: int


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: legal as a JSON escape, not as text (hashing and writes break)
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # each one becomes U+FFFD
    return text


# ---------------------------------------------------------------------------------------------- Graph


def graph_to_contact(doc: Mapping[str, Any], field_map: FieldMap | None = None) -> Contact:
    """A Graph contact resource (as returned by GET/delta) as a canonical Contact."""
    data: dict[str, Any] = {key: _text(doc.get(prop)) for key, prop in _GRAPH_SCALARS.items()}
    for key, prop in _GRAPH_FIRST_OF.items():
        values = doc.get(prop) or []
        data[key] = _text(values[0]) if values else None
    address = doc.get("businessAddress") or {}
    for key, prop in _GRAPH_ADDRESS.items():
        data[key] = _text(address.get(prop))
    data["emails"] = [_text(e.get("address")) for e in doc.get("emailAddresses") or [] if isinstance(e, Mapping)]
    custom: dict[str, str | None] = {}
    for key, prop in (field_map.graph_custom() if field_map else {}).items():
        custom[key[len(CUSTOM_PREFIX):]] = _text(doc.get(prop))
    data["custom"] = custom
    return Contact.model_validate(data)


def contact_to_graph(
    contact: Contact,
    fields: Iterable[str],
    current: Mapping[str, Any] | None = None,
    field_map: FieldMap | None = None,
) -> tuple[dict[str, Any], tuple[Truncation, ...]]:
    """The Graph body that writes ``fields`` of ``contact``.

    For a create pass ``current=None``. For a PATCH pass the current Graph resource: only the given fields are sent
    (docs/reference/graph.md §1.4, §7.7: send only what changed), collections are sent whole with the entries we do not
    sync kept,
    ``null`` clears a scalar. ``displayName`` is sent with name changes so Outlook does not keep a stale one.
    """
    wanted = set(fields)
    body: dict[str, Any] = {}
    truncations: list[Truncation] = []
    current = current or {}
    for key, prop in _GRAPH_SCALARS.items():
        if key in wanted:
            body[prop] = contact.get(key)
    for key, prop in _GRAPH_FIRST_OF.items():
        if key in wanted:
            rest = list((current.get(prop) or [])[1:])
            first = contact.get(key)
            body[prop] = ([first] if first else []) + rest
    if wanted & set(_GRAPH_ADDRESS):
        address = {k: v for k, v in dict(current.get("businessAddress") or {}).items() if v is not None}
        for key, prop in _GRAPH_ADDRESS.items():
            if key in wanted:
                value = contact.get(key)
                if value is None:
                    address.pop(prop, None)
                else:
                    address[prop] = value
        body["businessAddress"] = address
    if wanted & set(EMAIL_FIELDS):
        names = {
            str(e.get("address", "")).casefold(): e.get("name")
            for e in current.get("emailAddresses") or []
            if isinstance(e, Mapping)
        }
        emails = list(contact.emails)
        if len(emails) > GRAPH_MAX_EMAILS:
            truncations.append(Truncation("emails", "emailAddresses", len(emails), GRAPH_MAX_EMAILS))
            emails = emails[:GRAPH_MAX_EMAILS]
        body["emailAddresses"] = [{"address": e, "name": names.get(e.casefold()) or e} for e in emails]
    if wanted & {"first_name", "last_name"} or not current:
        display = " ".join(x for x in (contact.first_name, contact.last_name) if x)
        if display:
            body["displayName"] = display
    for key, prop in (field_map.graph_custom() if field_map else {}).items():
        if key in wanted:
            body[prop] = contact.get(key)
    return body, tuple(truncations)


# ---------------------------------------------------------------------------------------------- Salesforce


@dataclass(frozen=True)
class SalesforceWrite:
    """What to send to Salesforce: plain field values, the Account to resolve by name, and what was cut."""

    values: Mapping[str, str | None]
    account_name: str | None
    set_account: bool
    truncations: tuple[Truncation, ...]


def _sf_value(record: Mapping[str, Any], api_name: str) -> str | None:
    if "." in api_name:  # relationship field, e.g. Account.Name
        head, _, tail = api_name.partition(".")
        parent = record.get(head)
        return _text(parent.get(tail)) if isinstance(parent, Mapping) else None
    return _text(record.get(api_name))


def salesforce_to_contact(record: Mapping[str, Any], field_map: FieldMap | None = None) -> Contact:
    """A Salesforce Contact record (REST/SOQL JSON, with ``Account.Name`` as a nested object) as a Contact."""
    field_map = field_map or FieldMap()
    values: dict[str, str | None] = {
        key: _sf_value(record, api) for key, api in field_map.salesforce_fields().items()
    }
    return Contact().with_values(values)


def fit_salesforce(
    field: str, value: str | None, field_map: FieldMap, lengths: Mapping[str, int] = DEFAULT_SALESFORCE_LENGTHS
) -> str | None:
    """The value Salesforce would store for ``field`` (cut to the field's length, trailing space trimmed)."""
    rule = field_map.rule(field)
    if value is None or rule is None or rule.salesforce is None:
        return value
    limit = lengths.get(rule.salesforce)
    if limit is None or len(value) <= limit:
        return value
    return value[:limit].rstrip() or None


def contact_to_salesforce(
    contact: Contact,
    fields: Iterable[str],
    field_map: FieldMap | None = None,
    lengths: Mapping[str, int] = DEFAULT_SALESFORCE_LENGTHS,
) -> SalesforceWrite:
    """The Salesforce write for ``fields`` of ``contact``. Values longer than the field are cut and reported."""
    field_map = field_map or FieldMap()
    values: dict[str, str | None] = {}
    truncations: list[Truncation] = []
    account_name: str | None = None
    set_account = False
    for key in fields:
        rule = field_map.rule(key)
        if rule is None or rule.salesforce is None:
            continue
        value = contact.get(key)
        if rule.salesforce == "Account.Name":
            account_name, set_account = value, True
            continue
        fitted = fit_salesforce(key, value, field_map, lengths)
        if value is not None and fitted != value:
            truncations.append(Truncation(key, rule.salesforce, len(value), lengths[rule.salesforce]))
        values[rule.salesforce] = fitted
    return SalesforceWrite(values, account_name, set_account, tuple(truncations))
