"""What the planner reads and what it decides: the situation of one person in one mailbox, and the plan.

Public API:
    Situation, Candidate        the input: the link, each side's current record, match candidates, mailbox scope
    Plan, LinkAfter             the output: actions in order, and what becomes of the link afterwards
    Create, Update, Delete      the writes (``Write``)
    Adopt, Conflict, Review, Skip, Handoff, Unlink, Nothing    the other actions (``Action`` is any of them)

Every action carries a human-readable reason and its audit ``kind`` (a write's kind names its side too). Plain
frozen data: no I/O, no decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from sync.model import Contact, Side
from sync.policy import MailboxScope
from sync.ports import Link, LinkState, ReviewItem, SideRecord

# ---------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Candidate:
    """A possible match on the other side. ``linked``: already linked in this mailbox; ``partner``: the id its link
    names on the side being decided, when known (the record being decided itself: linked since its link was read)."""

    record: SideRecord
    linked: bool = False
    partner: str | None = None


@dataclass(frozen=True)
class Situation:
    """Everything the planner looks at for one person in one mailbox."""

    mailbox: str
    link: Link | None
    m365: SideRecord | None
    sf: SideRecord | None
    candidates: tuple[Candidate, ...] = ()
    scope: MailboxScope | None = None  # the mailbox's part of the policy (resolved from it when None)
    review: ReviewItem | None = None  # the unlinked record's review item, with a person's decision if any
    # the linked Outlook copy is missing because it left with the sync folder (the user deleted or moved the folder)
    left_with_folder: bool = False
    # an unlinked Outlook copy this sync made whose marker names a Salesforce contact linked with another copy (two
    # creates of one person): that pair's link, whose bases tell what a user changed on this copy (row 41)
    twin: Link | None = None


# ---------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Create:
    side: Side
    contact: Contact
    fields: frozenset[str]
    reason: str

    @property
    def kind(self) -> str:
        """The audit's name for this action: the write and its side."""
        return f"create:{self.side.value}"


@dataclass(frozen=True)
class Update:
    side: Side
    item_id: str
    contact: Contact  # the target's contact with the new values
    fields: frozenset[str]  # only these are written
    if_match: str | None
    reason: str
    clears: tuple[str, ...] = ()  # fields that had a value and will be emptied (counted by the breaker)
    marker: str | None = None  # stamp the other side's id

    @property
    def kind(self) -> str:
        """The audit's name for this action: the write and its side."""
        return f"update:{self.side.value}"


@dataclass(frozen=True)
class Delete:
    side: Side
    item_id: str
    if_match: str | None
    reason: str

    @property
    def kind(self) -> str:
        """The audit's name for this action: the write and its side."""
        return f"delete:{self.side.value}"


@dataclass(frozen=True)
class Adopt:
    """Link two existing contacts (match before create)."""

    kind: ClassVar[str] = "adopt"  # the audit's name for this action
    m365: SideRecord
    sf: SideRecord
    via: str
    reason: str

    @property
    def m365_id(self) -> str:
        return self.m365.id

    @property
    def sf_id(self) -> str:
        return self.sf.id


@dataclass(frozen=True)
class Conflict:
    """A field changed on both sides (or against its direction); ``winner``'s value is kept."""

    kind: ClassVar[str] = "conflict"  # the audit's name for this action
    field: str
    winner: Side
    rule: str
    reason: str


@dataclass(frozen=True)
class Review:
    """Nothing is written; a person should decide (e.g. ambiguous match)."""

    kind: ClassVar[str] = "review"  # the audit's name for this action
    reason: str
    candidate_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    kind: ClassVar[str] = "skip"  # the audit's name for this action
    reason: str


@dataclass(frozen=True)
class Handoff:
    """The Salesforce owner is another synced mailbox: that mailbox should take the contact."""

    kind: ClassVar[str] = "handoff"  # the audit's name for this action
    sf_id: str
    to_mailbox: str
    reason: str


@dataclass(frozen=True)
class Unlink:
    """Forget the pairing but keep ``keep``'s copy; the link stays as a tombstone so nothing comes back."""

    kind: ClassVar[str] = "unlink"  # the audit's name for this action
    keep: Side
    reason: str


@dataclass(frozen=True)
class Nothing:
    kind: ClassVar[str] = "nothing"  # the audit's name for this action
    reason: str


Action = Create | Update | Delete | Adopt | Conflict | Review | Skip | Handoff | Unlink | Nothing
Write = Create | Update | Delete


class LinkAfter(StrEnum):
    KEEP = "keep"  # the link (or its absence) stays as it is: no table write
    SAVE = "save"  # write the link with fresh bases and fingerprints
    REMOVE = "remove"  # delete the link


@dataclass(frozen=True)
class Plan:
    mailbox: str
    actions: tuple[Action, ...]
    link_after: LinkAfter
    reason: str
    state: LinkState = LinkState.LINKED
    # Ids the saved link will carry; None with a Create on that side means "the created id".
    m365_id: str | None = None
    sf_id: str | None = None
    synced_fields: tuple[str, ...] = field(default=())

    @property
    def writes(self) -> tuple[Write, ...]:
        return tuple(a for a in self.actions if isinstance(a, Create | Update | Delete))

    @property
    def destructive(self) -> int:
        """Deletes plus updates that empty a field that had a value: what the circuit breaker counts."""
        return sum(1 for a in self.actions if isinstance(a, Delete) or (isinstance(a, Update) and a.clears))

    @property
    def conflicts(self) -> tuple[Conflict, ...]:
        return tuple(a for a in self.actions if isinstance(a, Conflict))
