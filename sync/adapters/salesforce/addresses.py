"""Mailing country and state written as picklist codes when the org has State and Country/Territory Picklists.

Such an org refuses text that is not an integration value (``FIELD_INTEGRITY_EXCEPTION``, docs/reference/salesforce.md
§1.4), so the write sends ``MailingCountryCode`` / ``MailingStateCode`` (``sync.addresses`` reads Outlook's text) and
Salesforce fills in ``MailingCountry`` / ``MailingState`` with its labels, which the re-read brings back (and a later
Salesforce -> Outlook write carries to Outlook). Text that names no country or state of the org: the write goes
without the address's country and state, and the record carries a review note with the text (the audit keeps it;
logs name the record only).
"""

from __future__ import annotations

import logging
from typing import Any

from sync.adapters.salesforce.schema import ContactSchema
from sync.addresses import country_code, state_code
from sync.model import Contact
from sync.ports import REVIEW_NOTE

logger = logging.getLogger(__name__)

_TEXT_FIELDS = ("MailingCountry", "MailingState")


def address_codes(values: dict[str, Any], contact: Contact, schema: ContactSchema, item_id: str | None) -> str | None:
    """Replace ``MailingCountry`` / ``MailingState`` in ``values`` by codes (both sent when either is written).
    Returns the review note when Outlook's text cannot be mapped (the two fields are then left out)."""
    if not schema.picklists or not any(f in values for f in _TEXT_FIELDS):
        return None
    for f in _TEXT_FIELDS:
        values.pop(f, None)
    country_text, state_text = contact.country, contact.state
    country = country_code(country_text, schema.countries) if country_text else None
    if country_text and (country is None or country not in schema.countries):
        return _held(item_id, "country/territory", country_text)
    state = state_code(country, state_text, schema.states.get(country, {})) if country and state_text else None
    if state_text and state is None:
        return _held(item_id, "state/province", state_text)
    values["MailingCountryCode"], values["MailingStateCode"] = country, state
    return None


def _held(item_id: str | None, what: str, text: str) -> str:
    logger.info("salesforce %s: mailing address not written (%s not in the org's picklist); waits in review",
                item_id or "(new contact)", what)
    return (f"{REVIEW_NOTE} mailing country and state not written: Outlook's {what} {text!r} matches no value of the "
            "Salesforce State and Country/Territory picklists")
