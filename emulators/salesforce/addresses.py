"""State and Country/Territory Picklists on Contact's mailing address (docs/reference/salesforce.md §1.4).

When the org has them (``OrgSettings.address_picklists``, on by default as in a new org), ``MailingCountryCode`` /
``MailingStateCode`` hold ISO codes and ``MailingCountry`` / ``MailingState`` the integration values (the ISO names by
default); a write may send either and Salesforce fills in the other. Text that is no integration value, or a code that
is not in the picklist, is refused with ``FIELD_INTEGRITY_EXCEPTION``. Countries are ISO 3166-1 (pycountry's names stand
in for Salesforce's labels); states exist only for the countries Salesforce ships them for (``STATE_COUNTRIES``).
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

import pycountry

from emulators.salesforce.sobjects import FieldDef

# Countries with standard states/provinces (docs/reference/salesforce.md §1.4)
STATE_COUNTRIES = ("AU", "BR", "CA", "CN", "IE", "IN", "IT", "JP", "MX", "US")


class AddressError(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@cache
def countries() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> integration value (the ISO name)."""
    return {c.alpha_2: c.name for c in pycountry.countries}


@cache
def states(country: str) -> dict[str, str]:
    """State code (the ISO 3166-2 code without the country prefix) -> integration value; empty for a country
    without standard states."""
    if country not in STATE_COUNTRIES:
        return {}
    return {s.code.split("-", 1)[1]: s.name for s in pycountry.subdivisions.get(country_code=country) or []}


def picklist_values(field: str) -> list[dict[str, Any]]:
    """The describe ``picklistValues`` of a code field. A state's ``validFor`` is a base64 bitmap over the country
    picklist's values, high-order bit first: bit i set = valid when the country is value i (§1.4)."""
    order = sorted(countries(), key=lambda c: countries()[c])
    if field == "MailingCountryCode":
        return [{"value": c, "label": countries()[c], "active": True, "defaultValue": False, "validFor": None}
                for c in order]
    out = []
    for country in STATE_COUNTRIES:
        bits = bytearray((len(order) + 7) // 8)
        i = order.index(country)
        bits[i >> 3] |= 0x80 >> (i & 7)
        valid = base64.b64encode(bytes(bits)).decode()
        out += [{"value": code, "label": label, "active": True, "defaultValue": False, "validFor": valid}
                for code, label in states(country).items()]
    return out


def _pick(table: dict[str, str], code: Any, label: Any, what: str, field: str, *, creating: bool) -> tuple[
        str | None, str | None]:
    """(code, label) from what was sent: a code wins on create (the label follows it); a label must be an
    integration value; both sent on update must agree (§1.4 field-syncing logic)."""
    if code is not None:
        found = next((c for c in table if c.casefold() == str(code).casefold()), None)
        if found is None:
            raise AddressError(f"The {field}Code field contains {code}, which isn't an available {what}.",
                               f"{field}Code")
        if label is not None and not creating and label != table[found]:
            raise AddressError(f"The {what} code and the {what} name don't match.", f"{field}Code")
        return found, table[found]
    if label is None:
        return None, None
    found = next((c for c, name in table.items() if name == label), None)
    if found is None:
        raise AddressError(f"There's a problem with this {what}, even though it may appear correct. Please select a "
                           f"{what} from the list of valid {what} values.", field)
    return found, label


def resolve_address(clean: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The four address fields after a write of ``clean`` onto ``current`` (None: a create); raises AddressError."""
    cur = current or {}
    creating = current is None
    sent = {k: (k in clean) for k in ("MailingCountry", "MailingCountryCode", "MailingState", "MailingStateCode")}
    if not any(sent.values()):
        return {}
    country_sent = sent["MailingCountry"] or sent["MailingCountryCode"]
    if country_sent:
        c_code, c_label = _pick(countries(), clean.get("MailingCountryCode"),
                                clean.get("MailingCountry") if sent["MailingCountry"] else None,
                                "country/territory", "MailingCountry", creating=creating)
    else:
        c_code, c_label = cur.get("MailingCountryCode"), cur.get("MailingCountry")
    state_sent = sent["MailingState"] or sent["MailingStateCode"]
    s_code_in = clean.get("MailingStateCode") if state_sent else cur.get("MailingStateCode")
    s_label_in = clean.get("MailingState") if state_sent and sent["MailingState"] else None
    if c_code is None and (s_code_in is not None or s_label_in is not None):
        if not state_sent:  # the country was removed: its state goes with it (§1.4)
            s_code_in = None
        else:
            raise AddressError("A country/territory must be specified before specifying a state value.",
                               "MailingStateCode" if s_code_in is not None else "MailingState")
    s_code, s_label = (None, None) if c_code is None else _pick(
        states(c_code), s_code_in, s_label_in, "state", "MailingState", creating=creating or not state_sent)
    return {"MailingCountryCode": c_code, "MailingCountry": c_label, "MailingStateCode": s_code,
            "MailingState": s_label}


CODE_FIELDS = (
    FieldDef("MailingCountryCode", "picklist", "Mailing Country Code", 10,
             values=lambda: picklist_values("MailingCountryCode")),
    FieldDef("MailingStateCode", "picklist", "Mailing State/Province Code", 10,
             values=lambda: picklist_values("MailingStateCode"), controller="MailingCountryCode"),
)
