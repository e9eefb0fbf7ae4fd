"""Field definitions of the emulated sObjects (Contact, Account, User) and the describe payload built from them.

Contact lengths follow docs/reference/salesforce.md §1.1 (field reference); the ones marked ⚠ VERIFY there are listed as
guesses in docs/emulator-fidelity-salesforce.md. An optional custom text field (e.g. ``Outlook_Id__c``, Text(255),
External ID, docs/reference/salesforce.md §2.4) is added per emulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str  # id, string, email, phone, textarea, picklist, reference, datetime, boolean
    label: str = ""
    length: int = 0
    required: bool = False  # nillable=false and createable without default (LastName)
    createable: bool = True
    updateable: bool = True
    reference_to: str | None = None
    relationship_name: str | None = None
    custom: bool = False
    external_id: bool = False
    id_lookup: bool = False
    values: Callable[[], list[dict[str, Any]]] | None = None  # a picklist's describe ``picklistValues``
    controller: str | None = None  # a dependent picklist's controlling field

    @property
    def is_text(self) -> bool:
        return self.type in ("string", "email", "phone", "textarea", "picklist")


def _sys(name: str, ftype: str, ref: str | None = None, rel: str | None = None) -> FieldDef:
    return FieldDef(name, ftype, name, 18 if ftype in ("id", "reference") else 0, createable=False,
                    updateable=False, reference_to=ref, relationship_name=rel)


SYSTEM_FIELDS = (
    FieldDef("Id", "id", "Contact ID", 18, createable=False, updateable=False, id_lookup=True),
    _sys("IsDeleted", "boolean"),
    _sys("CreatedDate", "datetime"),
    _sys("CreatedById", "reference", "User", "CreatedBy"),
    _sys("LastModifiedDate", "datetime"),
    _sys("LastModifiedById", "reference", "User", "LastModifiedBy"),
    _sys("SystemModstamp", "datetime"),
)

CONTACT_FIELDS = (
    *SYSTEM_FIELDS,
    _sys("MasterRecordId", "reference", "Contact", "MasterRecord"),
    FieldDef("Name", "string", "Full Name", 121, createable=False, updateable=False),
    FieldDef("Salutation", "picklist", "Salutation", 40),
    FieldDef("FirstName", "string", "First Name", 40),
    FieldDef("LastName", "string", "Last Name", 80, required=True),
    FieldDef("Email", "email", "Email", 80, id_lookup=True),
    FieldDef("Phone", "phone", "Business Phone", 40),
    FieldDef("MobilePhone", "phone", "Mobile Phone", 40),
    FieldDef("HomePhone", "phone", "Home Phone", 40),
    FieldDef("OtherPhone", "phone", "Other Phone", 40),
    FieldDef("Fax", "phone", "Business Fax", 40),
    FieldDef("Title", "string", "Title", 128),
    FieldDef("Department", "string", "Department", 80),
    FieldDef("MailingStreet", "textarea", "Mailing Street", 255),
    FieldDef("MailingCity", "string", "Mailing City", 40),
    FieldDef("MailingState", "string", "Mailing State/Province", 80),
    FieldDef("MailingPostalCode", "string", "Mailing Zip/Postal Code", 20),
    FieldDef("MailingCountry", "string", "Mailing Country", 80),
    FieldDef("Description", "textarea", "Contact Description", 32000),
    FieldDef("AccountId", "reference", "Account ID", 18, reference_to="Account", relationship_name="Account"),
    FieldDef("OwnerId", "reference", "Owner ID", 18, reference_to="User", relationship_name="Owner"),
)

ACCOUNT_FIELDS = (
    *SYSTEM_FIELDS,
    FieldDef("Name", "string", "Account Name", 255, required=True),
    FieldDef("Website", "string", "Website", 255),
    FieldDef("Type", "picklist", "Account Type", 255),  # Customer, Partner, Prospect, ... (filters name it)
    FieldDef("OwnerId", "reference", "Owner ID", 18, reference_to="User", relationship_name="Owner"),
)

USER_FIELDS = (
    *SYSTEM_FIELDS,
    FieldDef("Username", "string", "Username", 80, required=True, updateable=False),
    FieldDef("FirstName", "string", "First Name", 40),
    FieldDef("LastName", "string", "Last Name", 80, required=True),
    FieldDef("Name", "string", "Full Name", 121, createable=False, updateable=False),
    FieldDef("Email", "email", "Email", 128, required=True),
    FieldDef("FederationIdentifier", "string", "SAML Federation ID", 512),
    FieldDef("IsActive", "boolean", "Active"),
    FieldDef("UserType", "picklist", "User Type", 40, createable=False, updateable=False),
)


@dataclass
class SObjectType:
    name: str
    fields: dict[str, FieldDef] = field(default_factory=dict)
    by_lower: dict[str, FieldDef] = field(default_factory=dict)
    relationships: dict[str, FieldDef] = field(default_factory=dict)  # lower-case relationship name -> field

    @classmethod
    def build(cls, name: str, defs: tuple[FieldDef, ...]) -> SObjectType:
        t = cls(name)
        for f in defs:
            t.add(f)
        return t

    def add(self, f: FieldDef) -> None:
        self.fields[f.name] = f
        self.by_lower[f.name.lower()] = f
        if f.relationship_name:
            self.relationships[f.relationship_name.lower()] = f

    def remove(self, name: str) -> None:
        f = self.fields.pop(name, None)
        if f is not None:
            del self.by_lower[name.lower()]

    def field(self, name: str) -> FieldDef | None:
        return self.by_lower.get(name.lower())

    def describe(self, version: str) -> dict[str, object]:
        """A describe payload with the keys sync code reads (docs/reference/salesforce.md §1.1); not a full capture."""
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name, "label": self.name, "custom": False, "createable": True, "updateable": True,
            "deletable": True, "queryable": True, "undeletable": True, "keyPrefix": _prefix(self.name),
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
            "fields": [
                {
                    "name": f.name, "label": f.label or f.name, "type": f.type, "length": f.length,
                    "nillable": not f.required and f.type != "boolean" and f.name != "Id",
                    "createable": f.createable, "updateable": f.updateable, "custom": f.custom,
                    "externalId": f.external_id, "idLookup": f.id_lookup or f.external_id,
                    "referenceTo": [f.reference_to] if f.reference_to else [],
                    "relationshipName": f.relationship_name, "unique": f.external_id,
                    "picklistValues": f.values() if f.values else [], "controllerName": f.controller,
                    "dependentPicklist": f.controller is not None,
                }
                for f in self.fields.values()
            ],
        }


def _prefix(name: str) -> str:
    from emulators.salesforce.ids import KEY_PREFIX

    return KEY_PREFIX.get(name, "")


def build_types(custom_text_fields: tuple[str, ...] = ()) -> dict[str, SObjectType]:
    contact = SObjectType.build("Contact", CONTACT_FIELDS)
    for name in custom_text_fields:
        # Text(255), External ID, Unique (docs/reference/salesforce.md §2.4 recommendation for the Outlook id marker).
        contact.add(FieldDef(name, "string", name.removesuffix("__c").replace("_", " "), 255, custom=True,
                             external_id=True, id_lookup=True))
    return {
        "Contact": contact,
        "Account": SObjectType.build("Account", ACCOUNT_FIELDS),
        "User": SObjectType.build("User", USER_FIELDS),
    }
