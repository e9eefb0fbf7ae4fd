"""Policy vocabulary: directions, conflict and delete policies, the field map and the circuit breaker.

Everything here is data (enums and frozen models); the planner reads it, configuration builds it. What one mailbox
syncs, and which way, is resolved once into a ``MailboxScope`` (``Policy.scope``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sync.model import CUSTOM_PREFIX, STANDARD_FIELDS, Side


class Direction(StrEnum):
    """Which way data may flow (for a mailbox, or for one field)."""

    BOTH = "both"
    TO_SALESFORCE = "to_salesforce"
    TO_M365 = "to_m365"
    NONE = "none"

    def allows(self, to: Side) -> bool:
        if self is Direction.BOTH:
            return True
        if self is Direction.NONE:
            return False
        return (self is Direction.TO_SALESFORCE) == (to is Side.SALESFORCE)

    def meet(self, other: Direction) -> Direction:
        """The direction both allow."""
        to_sf = self.allows(Side.SALESFORCE) and other.allows(Side.SALESFORCE)
        to_m365 = self.allows(Side.M365) and other.allows(Side.M365)
        if to_sf and to_m365:
            return Direction.BOTH
        if to_sf:
            return Direction.TO_SALESFORCE
        if to_m365:
            return Direction.TO_M365
        return Direction.NONE


class ConflictPolicy(StrEnum):
    """Who wins a field changed on both sides to different values since the last sync."""

    SALESFORCE_WINS = "salesforce_wins"
    M365_WINS = "m365_wins"
    NEWEST_WINS = "newest_wins"


class DeletePolicy(StrEnum):
    """What a delete on one side does to the linked contact on the other."""

    PROPAGATE = "propagate"  # soft-delete the other copy (Outlook Deleted Items / Salesforce Recycle Bin)
    UNLINK = "unlink"  # keep the other copy, forget the link, never bring the deleted one back
    RECREATE = "recreate"  # the other side is the master: create the deleted copy again


class FieldRule(BaseModel):
    """One synced field: canonical key, its Salesforce API field name (None: no Salesforce field), direction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    salesforce: str | None
    direction: Direction = Direction.BOTH
    # Graph property for custom fields (standard fields have a fixed Graph mapping). None: not held in Outlook.
    graph: str | None = None


# The standard Salesforce field of each standard key (docs/reference/salesforce.md §1.1). email_2/3 have none:
# Outlook-only unless the admin maps them to custom fields.
STANDARD_SALESFORCE_FIELDS: Mapping[str, str | None] = {
    "first_name": "FirstName",
    "last_name": "LastName",
    "email": "Email",
    "email_2": None,
    "email_3": None,
    "business_phone": "Phone",
    "mobile_phone": "MobilePhone",
    "home_phone": "HomePhone",
    "company": "Account.Name",
    "job_title": "Title",
    "department": "Department",
    "street": "MailingStreet",
    "city": "MailingCity",
    "state": "MailingState",
    "postal_code": "MailingPostalCode",
    "country": "MailingCountry",
    "notes": "Description",
}

# Salesforce Contact field lengths (docs/reference/salesforce.md §1.1; the adapter replaces them with the org's
# describe()).
DEFAULT_SALESFORCE_LENGTHS: Mapping[str, int] = {
    "FirstName": 40,
    "LastName": 80,
    "Email": 80,
    "Phone": 40,
    "MobilePhone": 40,
    "HomePhone": 40,
    "Title": 128,
    "Department": 80,
    "MailingStreet": 255,
    "MailingCity": 40,
    "MailingState": 80,
    "MailingPostalCode": 20,
    "MailingCountry": 80,
    "Description": 32000,
    "Account.Name": 255,
}

# Graph properties a custom field may be mapped to (single-valued strings of the contact resource,
# docs/reference/graph.md §1.1).
GRAPH_CUSTOM_TARGETS: frozenset[str] = frozenset({
    "nickName", "middleName", "title", "generation", "initials", "officeLocation", "profession", "assistantName",
    "manager", "spouseName", "businessHomePage", "yomiGivenName", "yomiSurname", "yomiCompanyName",
})


class FieldMap(BaseModel):
    """The synced fields. Defaults: every standard field both ways; email_2/3 stay in Outlook (no SF field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[FieldRule, ...] = Field(
        default_factory=lambda: tuple(
            FieldRule(key=k, salesforce=v, direction=Direction.BOTH if v else Direction.NONE)
            for k, v in STANDARD_SALESFORCE_FIELDS.items()
        )
    )

    @field_validator("rules")
    @classmethod
    def _valid(cls, rules: tuple[FieldRule, ...]) -> tuple[FieldRule, ...]:
        seen: set[str] = set()
        for r in rules:
            if r.key in seen:
                raise ValueError(f"field {r.key!r} is mapped twice")
            seen.add(r.key)
            if r.key.startswith(CUSTOM_PREFIX):
                if r.graph is not None and r.graph not in GRAPH_CUSTOM_TARGETS:
                    raise ValueError(
                        f"custom field {r.key!r}: Graph property {r.graph!r} is not one of "
                        f"{sorted(GRAPH_CUSTOM_TARGETS)}"
                    )
                if r.direction is not Direction.NONE and (r.salesforce is None or r.graph is None):
                    raise ValueError(f"custom field {r.key!r} needs both a Salesforce field and a Graph property")
            elif r.key not in STANDARD_FIELDS:
                raise ValueError(f"unknown field {r.key!r}; known: {', '.join(STANDARD_FIELDS)} or custom.<name>")
            elif r.direction is not Direction.NONE and r.salesforce is None:
                raise ValueError(f"field {r.key!r} has no Salesforce field; map it to a custom field or use 'none'")
        return rules

    def rule(self, key: str) -> FieldRule | None:
        for r in self.rules:
            if r.key == key:
                return r
        return None

    def synced(self, mailbox_direction: Direction = Direction.BOTH) -> tuple[FieldRule, ...]:
        """Rules whose effective direction (field meet mailbox) lets data flow at all."""
        return tuple(r for r in self.rules if r.direction.meet(mailbox_direction) is not Direction.NONE)

    def keys(self, mailbox_direction: Direction = Direction.BOTH) -> tuple[str, ...]:
        return tuple(r.key for r in self.synced(mailbox_direction))

    def salesforce_fields(self) -> dict[str, str]:
        """key -> Salesforce field for every rule that has one."""
        return {r.key: r.salesforce for r in self.rules if r.salesforce}

    def graph_custom(self) -> dict[str, str]:
        """custom key -> Graph property."""
        return {r.key: r.graph for r in self.rules if r.graph}


class CircuitBreaker(BaseModel):
    """Refuse a mailbox plan that deletes or overwrites too much, unless forced.

    Trips when the destructive actions reach ``min_count`` *and* either exceed ``max_share`` of the mailbox's linked
    contacts or reach ``max_count``. Small mailboxes are not locked by a single delete (min_count), large ones are
    protected by the absolute cap.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_count: int = Field(default=10, ge=1)
    max_share: float = Field(default=0.25, gt=0.0, le=1.0)
    max_count: int = Field(default=200, ge=1)

    def trips(self, destructive: int, total: int) -> bool:
        if destructive < self.min_count:
            return False
        share = destructive / total if total else 1.0
        return share > self.max_share or destructive >= self.max_count


class Policy(BaseModel):
    """All decision knobs of the planner in one value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field_map: FieldMap = Field(default_factory=FieldMap)
    conflict: ConflictPolicy = ConflictPolicy.SALESFORCE_WINS
    # What a delete *in* Salesforce does, and what a delete *in* Outlook does (the defaults: a
    # Salesforce delete goes to Outlook's Deleted Items, an Outlook delete only unlinks).
    on_salesforce_delete: DeletePolicy = DeletePolicy.PROPAGATE
    on_m365_delete: DeletePolicy = DeletePolicy.UNLINK
    direction: Direction = Direction.BOTH
    mailbox_directions: Mapping[str, Direction] = Field(default_factory=dict)
    breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    # Salesforce field lengths by API name; the adapter may replace them with the org's describe().
    salesforce_lengths: Mapping[str, int] = Field(default_factory=lambda: dict(DEFAULT_SALESFORCE_LENGTHS))

    def direction_for(self, mailbox: str) -> Direction:
        return self.mailbox_directions.get(mailbox.casefold(), self.direction)

    def delete_policy(self, deleted_on: Side) -> DeletePolicy:
        return self.on_salesforce_delete if deleted_on is Side.SALESFORCE else self.on_m365_delete

    def scope(self, mailbox: str) -> MailboxScope:
        """What ``mailbox`` syncs: its direction, and each synced field with its effective direction."""
        direction = self.direction_for(mailbox)
        rules = tuple((r, r.direction.meet(direction)) for r in self.field_map.synced(direction))
        return MailboxScope(mailbox.casefold(), direction, rules, tuple(r.key for r, _ in rules))


@dataclass(frozen=True)
class MailboxScope:
    """One mailbox's part of the policy, resolved once (``Policy.scope``) and carried on each situation."""

    mailbox: str
    direction: Direction  # the mailbox's direction
    rules: tuple[tuple[FieldRule, Direction], ...]  # each synced field with its direction met with the mailbox's
    keys: tuple[str, ...]  # the synced fields' keys, in field map order
