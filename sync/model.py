"""The core vocabulary: the two sides, and the canonical contact both are translated into and compared in.

Public API:
    Side               Outlook (``M365``) or Salesforce; ``other`` and ``label``
    Contact            frozen pydantic model of one person, normalised on construction
    FieldKey           names of the comparable fields (``first_name`` ... ``custom.<name>``)
    STANDARD_FIELDS    the standard field keys, in a fixed order
    compare_key()      the value a field is *compared* by (phones by digits, emails case-folded)
    fingerprint()      sha256 of the canonical JSON of the compared values of the synced fields
    case_safe_id()     a Salesforce id in its 18-character case-safe form (what markers hold)
    VOLATILE_FIELDS    side properties never fingerprinted, each with the reason
    mailbox_ref()      how a log line names a mailbox: a short digest of its UPN, never the UPN

Normalisation (applied to every value on construction): unicode NFC; trimmed; runs of spaces and tabs collapsed to
one space in single-line fields; line endings unified to ``\\n`` in multi-line fields (street, notes); empty strings
become ``None``. Phone formatting is *kept* (a rep's "+1 (555) 010-0100" stays as typed) but compared by its digits.
Emails keep their case for display and are compared lower-cased.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

# Fields in the order they appear everywhere (planner output, docs, fingerprints).
STANDARD_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "email",
    "email_2",
    "email_3",
    "business_phone",
    "mobile_phone",
    "home_phone",
    "company",
    "job_title",
    "department",
    "street",
    "city",
    "state",
    "postal_code",
    "country",
    "notes",
)
CUSTOM_PREFIX = "custom."
EMAIL_FIELDS: tuple[str, ...] = ("email", "email_2", "email_3")
PHONE_FIELDS: frozenset[str] = frozenset({"business_phone", "mobile_phone", "home_phone"})
MULTILINE_FIELDS: frozenset[str] = frozenset({"street", "notes"})

# Properties the sides carry that must never enter a fingerprint: they change without the person changing.
VOLATILE_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "identity, not content; Graph ids even change on a folder move without ImmutableId"),
    ("changeKey / @odata.etag", "a version stamp: changes on every write, including our own"),
    ("lastModifiedDateTime / LastModifiedDate", "a timestamp of the write, not of the content"),
    ("SystemModstamp", "changes on Salesforce system updates that touch no field we sync"),
    ("createdDateTime / CreatedDate", "never changes the person, and differs per side"),
    ("parentFolderId", "where the contact lives, handled by membership, not by content"),
    ("OwnerId", "ownership decides which mailbox holds the contact; it is handled as a move, not an edit"),
    ("displayName / Name / fileAs", "derived by each side from the name parts, which we do compare"),
    ("link marker (extended property / Outlook id field)", "our own bookkeeping, written by us"),
)

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_NON_DIGITS = re.compile(r"[^0-9]")


def normalise_text(value: object, *, multiline: bool = False) -> str | None:
    """NFC, trimmed, whitespace tidied; empty becomes None. Non-strings are rejected."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value)
    if multiline:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in lines).strip("\n")
    else:
        text = _SPACES.sub(" ", text.replace("\r", " ").replace("\n", " ")).strip()
    return text or None


_ID15 = re.compile(r"[0-9A-Za-z]{15}")
_ID_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def case_safe_id(value: str) -> str:
    """A 15-character Salesforce id with its 3-character suffix (per 5-character block, one bit per upper-case
    letter; docs/reference/salesforce.md §1.1), so it survives a case-insensitive comparison (Graph compares extended
    property values that way, docs/reference/graph.md §1.7). Anything else is returned unchanged."""
    if not _ID15.fullmatch(value):
        return value
    blocks = (value[i:i + 5] for i in range(0, 15, 5))
    return value + "".join(_ID_SUFFIX[sum(1 << n for n, c in enumerate(b) if c.isupper())] for b in blocks)


def phone_key(value: str) -> str:
    """Compare phones by digits, keeping a leading '+' (international) as significant."""
    digits = _NON_DIGITS.sub("", value)
    return ("+" + digits) if value.lstrip().startswith("+") else digits


def compare_key(field: str, value: str | None) -> str | None:
    """The form a field's value is compared in: two values are 'the same' when their keys are equal."""
    if value is None:
        return None
    if field in PHONE_FIELDS:
        return phone_key(value) or value
    if field in EMAIL_FIELDS:
        return value.casefold()
    return value


def is_custom(field: str) -> bool:
    return field.startswith(CUSTOM_PREFIX)


def custom_name(field: str) -> str:
    return field[len(CUSTOM_PREFIX):]


class Side(StrEnum):
    """The two systems a contact lives in: Outlook (Microsoft 365) and Salesforce."""

    M365 = "m365"
    SALESFORCE = "salesforce"

    @property
    def other(self) -> Side:
        return Side.SALESFORCE if self is Side.M365 else Side.M365

    @property
    def label(self) -> str:
        return "Outlook" if self is Side.M365 else "Salesforce"


class Contact(BaseModel):
    """One person, as both sides agree to describe them. Immutable; construct with keyword arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_name: str | None = None
    last_name: str | None = None
    # Ordered: the first is the primary address (Salesforce Email). Graph holds at most three (see mapping).
    emails: tuple[str, ...] = ()
    business_phone: str | None = None
    mobile_phone: str | None = None
    home_phone: str | None = None
    company: str | None = None
    job_title: str | None = None
    department: str | None = None
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    notes: str | None = None
    # Custom fields by the name used in the field map (e.g. "Region__c"), text values.
    custom: Mapping[str, str] = {}

    @field_validator(
        "first_name", "last_name", "business_phone", "mobile_phone", "home_phone", "company", "job_title",
        "department", "city", "state", "postal_code", "country", mode="before",
    )
    @classmethod
    def _single_line(cls, v: object) -> str | None:
        return normalise_text(v)

    @field_validator("street", "notes", mode="before")
    @classmethod
    def _multi_line(cls, v: object) -> str | None:
        return normalise_text(v, multiline=True)

    @field_validator("emails", mode="before")
    @classmethod
    def _emails(cls, v: object) -> tuple[str, ...]:
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, Iterable):
            raise ValueError("emails must be a list of strings")
        out: list[str] = []
        seen: set[str] = set()
        for item in v:
            text = normalise_text(item)
            if text is None or text.casefold() in seen:
                continue  # empty or a repeat of an earlier address: keep the first occurrence
            seen.add(text.casefold())
            out.append(text)
        return tuple(out)

    @field_validator("custom", mode="before")
    @classmethod
    def _custom(cls, v: object) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError("custom must be a mapping of field name to text")
        out: dict[str, str] = {}
        for key, raw in sorted(v.items()):
            text = normalise_text(raw if raw is None or isinstance(raw, str) else str(raw), multiline=True)
            if text is not None:
                out[str(key)] = text
        return out

    # --- field access by key: the planner works on keys, not attributes -------------------------------------
    def get(self, field: str) -> str | None:
        """The value of one field key (``email_2`` is the second address, ``custom.X`` a custom field)."""
        if field in EMAIL_FIELDS:
            index = EMAIL_FIELDS.index(field)
            return self.emails[index] if index < len(self.emails) else None
        if is_custom(field):
            return self.custom.get(custom_name(field))
        if field in STANDARD_FIELDS:
            value: str | None = getattr(self, field)
            return value
        raise KeyError(field)

    def values(self, fields: Iterable[str]) -> dict[str, str | None]:
        return {f: self.get(f) for f in fields}

    def with_values(self, values: Mapping[str, str | None]) -> Contact:
        """A copy with the given field keys replaced (emails keep their positions; gaps close up)."""
        data: dict[str, Any] = self.model_dump()
        emails: list[str | None] = list(self.emails) + [None] * (len(EMAIL_FIELDS) - len(self.emails))
        custom = dict(self.custom)
        for field, value in values.items():
            if field in EMAIL_FIELDS:
                emails[EMAIL_FIELDS.index(field)] = value
            elif is_custom(field):
                if value is None:
                    custom.pop(custom_name(field), None)
                else:
                    custom[custom_name(field)] = value
            elif field in STANDARD_FIELDS:
                data[field] = value
            else:
                raise KeyError(field)
        data["emails"] = [e for e in emails if e]
        data["custom"] = custom
        return Contact.model_validate(data)

    def email_keys(self) -> frozenset[str]:
        """Lower-cased addresses: the matching key for match-before-create."""
        return frozenset(e.casefold() for e in self.emails)

    def name_company_key(self) -> tuple[str, str, str] | None:
        """(first, last, company) case-folded, or None when last name or company is missing."""
        if not self.last_name or not self.company:
            return None
        return ((self.first_name or "").casefold(), self.last_name.casefold(), self.company.casefold())

    def missing_required(self) -> tuple[str, ...]:
        """Why this contact may not be created on the other side: last name, and an email or a phone."""
        missing: list[str] = []
        if not self.last_name:
            missing.append("last name")
        if not self.emails and not (self.business_phone or self.mobile_phone or self.home_phone):
            missing.append("an email address or a phone number")
        return tuple(missing)


def mailbox_ref(mailbox: str) -> str:
    """A mailbox as log lines name it: the first 10 hex digits of sha256 of the case-folded UPN (docs/operations.md
    "What the logs contain" shows how to compute it for a given mailbox)."""
    return hashlib.sha256(mailbox.casefold().encode()).hexdigest()[:10]


def fingerprint(contact: Contact, fields: Iterable[str]) -> str:
    """sha256 over the canonical JSON of the compared values of ``fields`` (volatile properties never enter)."""
    payload = {f: compare_key(f, contact.get(f)) for f in sorted(set(fields))}
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def field_digest(field: str, value: str | None) -> str:
    """A short digest of one field's compared value: what a link remembers instead of the value (no PII at rest)."""
    key = compare_key(field, value)
    if key is None:
        return ""
    return hashlib.sha256(f"{field}\x00{key}".encode()).hexdigest()[:20]


def field_digests(contact: Contact, fields: Iterable[str]) -> dict[str, str]:
    return {f: field_digest(f, contact.get(f)) for f in fields}
