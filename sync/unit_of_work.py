"""The unit of work of a batch of plans: the link each plan leaves behind and the audit rows, committed together.

Public API:
    UnitOfWork(links, audit, clock)
        .rows(situation, plan, records, outcome) -> list[AuditEntry]     a plan's audit rows
        .note(...) / .note_conflicts(...) / .write_audit()               collect rows, then write them in one call
        .link_write(situation, plan, records) -> LinkWrite | None        the link a plan leaves, as a save
        .commit(situation, plan, records) -> Link | None                 one plan's link, now (saved, kept, removed)
        .save_later(index, write) / .save_all() -> {index: Link | error}   a batch's saves in one ``save_many``
        .partial(link, records, done) -> Link | None    the link read, moved on for the updates a failed plan made

A link is written only after every write of its plan succeeded, under the etag it was read with, and before the
audit rows that report it. The model is the unit of work of "Architecture Patterns with Python"
(https://www.cosmicpython.com/book/chapter_06_uow.html).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from sync.actions import Adopt, Conflict, Create, LinkAfter, Nothing, Plan, Review, Situation, Update
from sync.errors import NotFound, SyncError
from sync.model import Side, field_digest, field_digests, fingerprint
from sync.ports import (
    REVIEW_NOTE,
    AuditEntry,
    AuditLog,
    AuditOutcome,
    Link,
    LinkState,
    LinkStore,
    LinkWrite,
    SideRecord,
)

Records = dict[Side, SideRecord | None]  # a plan's record on each side, as its writes leave them


class UnitOfWork:
    """The audit rows and link saves of one plan, or of the plain plans of a batch, until they are committed."""

    def __init__(self, links: LinkStore, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self.links = links
        self.audit = audit
        self.clock = clock
        self._rows: list[AuditEntry] = []
        self._saves: list[tuple[int, LinkWrite]] = []

    # ------------------------------------------------------------------------------------------ audit
    def rows(self, s: Situation, p: Plan, records: Mapping[Side, SideRecord | None], outcome: AuditOutcome, *,
             error: str | None = None) -> list[AuditEntry]:
        """One row per action of the plan (none for ``Nothing``), or one for the plan's link when it has none."""
        outlook, salesforce = records[Side.M365], records[Side.SALESFORCE]
        m365_id = (outlook.id if outlook else None) or p.m365_id or (s.link.m365_id if s.link else None)
        sf_id = (salesforce.id if salesforce else None) or p.sf_id or (s.link.sf_id if s.link else None)
        now = self.clock()
        entries = []
        for a in p.actions:
            if isinstance(a, Nothing):
                continue
            winner, rule = None, None
            fields: tuple[str, ...] = ()
            if isinstance(a, Create | Update):
                fields = tuple(sorted(a.fields))
            if isinstance(a, Conflict):
                fields, winner, rule = (a.field,), a.winner, a.rule
            if isinstance(a, Adopt):
                rule = a.via
            entries.append(
                AuditEntry(
                    at=now, mailbox=s.mailbox, m365_id=m365_id, sf_id=sf_id, action=a.kind, reason=a.reason,
                    fields=fields, winner=winner, rule=rule,
                    outcome="review" if isinstance(a, Review) else outcome, error=error,
                )
            )
        for record in (outlook, salesforce):
            for text in record.notes if record is not None and outcome == "applied" else ():
                entries.append(AuditEntry(at=now, mailbox=s.mailbox, m365_id=m365_id, sf_id=sf_id, action="note",
                                          reason=text[:500],
                                          outcome="review" if text.startswith(REVIEW_NOTE) else outcome))
        if not entries:
            entries.append(
                AuditEntry(at=now, mailbox=s.mailbox, m365_id=m365_id, sf_id=sf_id, action=p.link_after.value,
                           reason=p.reason, outcome=outcome, error=error)
            )
        return entries

    def note(self, s: Situation, p: Plan, records: Records, outcome: AuditOutcome, *,
             error: str | None = None) -> None:
        self._rows += self.rows(s, p, records, outcome, error=error)

    def note_conflicts(self, s: Situation, p: Plan, records: Records) -> None:
        """The conflict rows of a plan, as ``planned``: an override goes on record before the writes, so a worker
        killed between its writes and its audit rows never leaves an override without a trace."""
        self._rows += [e for e in self.rows(s, p, records, "planned") if e.action == "conflict"]

    def write_audit(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self.audit.write(rows)

    # ------------------------------------------------------------------------------------------ links
    def commit(self, s: Situation, p: Plan, records: Records) -> Link | None:
        """The plan's link, committed now: saved, kept as it was, or removed. Raises the store's typed error."""
        write = self.link_write(s, p, records)
        if write is not None:
            return self.links.save(write.link, previous=write.previous, absorb=write.absorb)
        if p.link_after is LinkAfter.KEEP:
            return s.link
        if p.link_after is LinkAfter.REMOVE:
            if s.link is not None and s.link.etag is not None:  # a link rebuilt from a marker was never stored
                with contextlib.suppress(NotFound):
                    self.links.delete(s.link)
            return None
        raise AssertionError("unreachable: link_write covers every other link_after")

    def save_later(self, index: int, write: LinkWrite) -> None:
        self._saves.append((index, write))

    def save_all(self) -> dict[int, Link | SyncError]:
        """The saves collected by ``save_later`` together (a table transaction per 100 rows, not one per link)."""
        if not self._saves:
            return {}
        saves, self._saves = self._saves, []
        done = self.links.save_many([w for _, w in saves])
        return {i: saved for (i, _), saved in zip(saves, done, strict=True)}

    def link_write(self, s: Situation, p: Plan, records: Records,
                   created: set[str] | frozenset[str] = frozenset()) -> LinkWrite | None:
        """The link the plan leaves behind, as a save; None when the plan keeps or removes the link instead.
        ``created``: ids this plan just created (no link can hold them, so no tombstone lookup for them)."""
        if p.link_after in (LinkAfter.KEEP, LinkAfter.REMOVE):
            return None
        outlook, salesforce = records[Side.M365], records[Side.SALESFORCE]
        if p.state is LinkState.DETACHED:  # a tombstone remembers only the copy the plan keeps
            outlook, salesforce = (outlook if p.m365_id else None), (salesforce if p.sf_id else None)
        fields = p.synced_fields
        link = Link(
            mailbox=s.mailbox,
            m365_id=outlook.id if outlook else None,
            sf_id=salesforce.id if salesforce else None,
            state=p.state,
            m365_base=field_digests(outlook.contact, fields) if outlook else {},
            sf_base=field_digests(salesforce.contact, fields) if salesforce else {},
            m365_fp=fingerprint(outlook.contact, fields) if outlook else None,
            sf_fp=fingerprint(salesforce.contact, fields) if salesforce else None,
            m365_version=outlook.version if outlook else None,
            sf_version=salesforce.version if salesforce else None,
            synced_at=self.clock(),
            reason=p.reason[:500],
        )
        previous = s.link if s.link is not None and s.link.etag is not None else None  # rebuilt: not stored
        return LinkWrite(link, previous, self._tombstones_for(s, link, created))

    def partial(self, link: Link, records: Records, done: Sequence[Update]) -> Link | None:
        """The link as read, moved on for the fields of the updates a plan made before a later write of it failed
        (docs/sync-rules.md, "Link claims"): each such field's bases on both sides are what the two sides now hold,
        every other field keeps its bases, so what the plan wrote is not read as an edit (say the Outlook value it
        pushed to Salesforce, against an Outlook edit of the same field made since: a conflict a user's edit could
        lose). No fingerprints or versions (the next read compares field by field). None when nothing was written."""
        if not done:
            return None
        bases = {Side.M365: dict(link.m365_base), Side.SALESFORCE: dict(link.sf_base)}
        for update in done:
            target, source = records[update.side], records[update.side.other]
            if target is None or source is None:
                continue
            for key in update.fields:
                bases[update.side][key] = field_digest(key, target.contact.get(key))
                bases[update.side.other][key] = field_digest(key, source.contact.get(key))
        return link.model_copy(update={
            "m365_base": bases[Side.M365], "sf_base": bases[Side.SALESFORCE], "m365_fp": None, "sf_fp": None,
            "m365_version": None, "sf_version": None, "claim": None, "claimed_at": None, "etag": None,
            "synced_at": self.clock(), "reason": "a plan's later write failed: bases moved on for what it wrote"})

    def _tombstones_for(self, s: Situation, link: Link, created: set[str] | frozenset[str]) -> list[Link]:
        """Detached links holding one of the new link's ids are replaced in the same transaction (a deleted contact's
        survivor was matched again). Not looked up: ids this plan created, and the situation's own records when it
        had no link (their lookup found none when the situation was read; a link written since makes the save fail
        with AlreadyExists, which is re-decided)."""
        previous = s.link if s.link is not None and s.link.etag is not None else None
        known_free = set(created)
        if previous is None:
            known_free |= {r.id for r in (s.m365, s.sf) if r is not None}
        out: list[Link] = []
        for side in (Side.M365, Side.SALESFORCE):
            item_id = link.id_on(side)
            if item_id and item_id not in known_free and (previous is None or previous.id_on(side) != item_id):
                existing = self.links.get(link.mailbox, side, item_id)
                if existing is not None and existing.state is LinkState.DETACHED:
                    out.append(existing)
        return out

