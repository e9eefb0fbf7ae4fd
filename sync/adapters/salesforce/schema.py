"""What ``GET /sobjects/Contact/describe`` tells the adapter: field lengths, the marker field's fitness, and whether
the org has State and Country/Territory Picklists.

The describe lists only the fields the integration user can read, and ``createable`` / ``updateable`` already reflect
its field-level security (docs/reference/salesforce.md §1.1). The marker field (``SF_OUTLOOK_ID_FIELD``) must be there,
a Text field of at least ``MARKER_MIN_LENGTH`` characters, createable and updateable; a unique External ID makes a
second create of one Outlook contact refused (``DUPLICATE_VALUE``) and found instead
(docs/reference/salesforce.md §2.4).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync.config import ConfigError

MARKER_MIN_LENGTH = 255  # Graph contact ids are opaque and long (about 150 characters); a Text field holds up to 255
_TEXT_TYPES = ("string", "textarea", "email", "phone", "url")


@dataclass(frozen=True)
class ContactSchema:
    """The parts of Contact's describe the adapter uses."""

    lengths: Mapping[str, int] = field(default_factory=dict)
    marker_problem: str | None = None  # why the marker field cannot be used (None: fine, or no marker configured)
    marker_upsert: bool = False  # the marker field is a unique External ID: a create finds a copy that holds it
    picklists: bool = False  # MailingCountryCode / MailingStateCode exist (State and Country/Territory Picklists)
    countries: Mapping[str, str] = field(default_factory=dict)  # active country code -> integration value
    states: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # country code -> state code -> value

    @classmethod
    def of(cls, describe: Mapping[str, Any], marker_field: str | None) -> ContactSchema:
        fields = {str(f.get("name", "")).lower(): f for f in describe.get("fields") or [] if isinstance(f, Mapping)}
        lengths = {str(f["name"]): int(f["length"]) for f in fields.values()
                   if f.get("type") in _TEXT_TYPES and f.get("length")}
        problem, upsert = (None, False) if not marker_field else _check_marker(fields.get(marker_field.lower()),
                                                                                marker_field)
        picklists = "mailingcountrycode" in fields and "mailingstatecode" in fields
        countries, states = _address_values(fields) if picklists else ({}, {})
        return cls(lengths, problem, upsert, picklists, countries, states)

    def raise_for_marker(self) -> None:
        if self.marker_problem:
            raise ConfigError(f"invalid app settings:\n  - {self.marker_problem}")


def _check_marker(f: Mapping[str, Any] | None, name: str) -> tuple[str | None, bool]:
    where = f"SF_OUTLOOK_ID_FIELD={name}"
    if f is None:
        return (f"{where}: Contact has no such field, or the integration user cannot read it (field-level "
                "security)"), False
    if f.get("type") != "string":
        return f"{where}: is a {f.get('type')} field; it must be Text", False
    if int(f.get("length") or 0) < MARKER_MIN_LENGTH:
        return f"{where}: holds {f.get('length')} characters; an Outlook id needs {MARKER_MIN_LENGTH}", False
    if not (f.get("createable") and f.get("updateable")):
        return f"{where}: the integration user cannot edit it (field-level security: make it read/write)", False
    return None, bool(f.get("externalId") and f.get("unique"))


def _address_values(fields: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The org's countries and, per country, its states, from the code fields' ``picklistValues``. A state's
    ``validFor`` is a bitmap over the country values, high-order bit first (docs/reference/salesforce.md §1.4)."""
    def active(name: str) -> list[Mapping[str, Any]]:
        return [v for v in fields[name].get("picklistValues") or [] if isinstance(v, Mapping) and v.get("active")]

    country_values = active("mailingcountrycode")
    order = [str(v["value"]) for v in country_values]
    states: dict[str, dict[str, str]] = {}
    for v in active("mailingstatecode"):
        try:
            bits = base64.b64decode(str(v.get("validFor") or ""))
        except (binascii.Error, ValueError):
            continue
        for i, country in enumerate(order):
            if i >> 3 < len(bits) and bits[i >> 3] & (0x80 >> (i & 7)):
                states.setdefault(country, {})[str(v["value"])] = str(v.get("label") or v["value"])
    return {str(v["value"]): str(v.get("label") or v["value"]) for v in country_values}, states
