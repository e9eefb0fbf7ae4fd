"""What ``GET /sobjects/Contact/describe`` tells the adapter: field lengths, the marker field's fitness, and whether
the org has State and Country/Territory Picklists.

The describe lists only the fields the integration user can read, and ``createable`` / ``updateable`` already reflect
its field-level security (docs/reference/salesforce.md §1.1). The marker field (``SF_OUTLOOK_ID_FIELD``) must be there,
a Text field of at least ``MARKER_MIN_LENGTH`` characters, createable and updateable; a unique External ID makes
creates upserts on it (docs/reference/salesforce.md §2.4).
"""

from __future__ import annotations

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
    marker_upsert: bool = False  # the marker field is a unique External ID: creates become upserts on it
    picklists: bool = False  # MailingCountryCode / MailingStateCode exist (State and Country/Territory Picklists)

    @classmethod
    def of(cls, describe: Mapping[str, Any], marker_field: str | None) -> ContactSchema:
        fields = {str(f.get("name", "")).lower(): f for f in describe.get("fields") or [] if isinstance(f, Mapping)}
        lengths = {str(f["name"]): int(f["length"]) for f in fields.values()
                   if f.get("type") in _TEXT_TYPES and f.get("length")}
        problem, upsert = (None, False) if not marker_field else _check_marker(fields.get(marker_field.lower()),
                                                                                marker_field)
        return cls(lengths, problem, upsert, "mailingcountrycode" in fields and "mailingstatecode" in fields)

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
