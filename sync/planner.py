"""The planner: what to do about one person in one mailbox. Pure: no I/O, same input, same plan.

Public API:
    plan(situation, policy) -> Plan      every action carries a human-readable reason and its audit ``kind``
    Situation, Candidate                 the input: the link, each side's record, match candidates, mailbox scope
    Plan and its actions                 Create, Update, Delete, Adopt, Conflict, Review, Skip, Handoff, Unlink,
                                         Nothing (defined in sync.actions, re-exported here)
    check_breaker(mailbox, plans, total, breaker, force)   the circuit breaker over a mailbox's plans

The algorithm is vdirsyncer's status-table sync ("How OfflineIMAP works"), per field instead of per item: the link
keeps, per side, a digest of each synced field as it was after the last sync (the base). A field that differs from
its base changed on that side; a change on one side flows to the other, changes on both to different values are a
conflict settled by the conflict policy and audited. Echoes of our own writes match the base and stop here. Without
a link we match before we create (marker, then email, then name + company); ambiguity goes to review, never to a
guess. Deletes follow the delete policy of the side they happened on. See docs/sync-rules.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sync.actions import (
    Action,
    Adopt,
    Candidate,
    Conflict,
    Create,
    Delete,
    Handoff,
    LinkAfter,
    Nothing,
    Plan,
    Review,
    Situation,
    Skip,
    Unlink,
    Update,
    Write,
)
from sync.errors import CircuitBreakerTripped
from sync.mapping import fit_salesforce
from sync.model import Contact, Side, compare_key, field_digest, fingerprint
from sync.policy import CircuitBreaker, ConflictPolicy, DeletePolicy, Direction, FieldRule, MailboxScope, Policy
from sync.ports import Link, LinkState, SideRecord
from sync.review import holding

# ---------------------------------------------------------------------------------------------- helpers


def _value_on(side: Side, rule: FieldRule, value: str | None, policy: Policy) -> str | None:
    """What ``side`` would hold if written ``value`` (Salesforce cuts to its field length)."""
    if side is Side.SALESFORCE:
        return fit_salesforce(rule.key, value, policy.field_map, policy.salesforce_lengths)
    return value


def _same(key: str, a: str | None, b: str | None) -> bool:
    return compare_key(key, a) == compare_key(key, b)


def _agree(key: str, rule: FieldRule, in_outlook: str | None, in_salesforce: str | None, policy: Policy) -> bool:
    """Whether the two sides hold the same value (Outlook's cut to Salesforce's field length, or in full)."""
    return (_same(key, _value_on(Side.SALESFORCE, rule, in_outlook, policy), in_salesforce)
            or _same(key, in_outlook, in_salesforce))


def _record(side: Side, outlook: SideRecord | None, salesforce: SideRecord | None) -> SideRecord | None:
    """The record of ``side`` (None when that side has none)."""
    return outlook if side is Side.M365 else salesforce


def _policy_winner(policy: Policy, outlook: SideRecord, salesforce: SideRecord) -> tuple[Side, str]:
    if policy.conflict is ConflictPolicy.M365_WINS:
        return Side.M365, ConflictPolicy.M365_WINS.value
    if policy.conflict is ConflictPolicy.NEWEST_WINS:
        if outlook.modified_at and salesforce.modified_at and outlook.modified_at > salesforce.modified_at:
            return Side.M365, ConflictPolicy.NEWEST_WINS.value
        return Side.SALESFORCE, ConflictPolicy.NEWEST_WINS.value
    return Side.SALESFORCE, ConflictPolicy.SALESFORCE_WINS.value


def scope_of(s: Situation, policy: Policy) -> MailboxScope:
    """The situation's mailbox scope (resolved from the policy for a situation built without one)."""
    return s.scope if s.scope is not None else policy.scope(s.mailbox)


@dataclass
class _Merge:
    """Accumulates the per-field outcome of a merge: new values per target side, conflicts, reasons."""

    values: dict[Side, dict[str, str | None]] = field(default_factory=lambda: {Side.M365: {}, Side.SALESFORCE: {}})
    clears: dict[Side, list[str]] = field(default_factory=lambda: {Side.M365: [], Side.SALESFORCE: []})
    conflicts: list[Conflict] = field(default_factory=list)
    changed_on: dict[Side, list[str]] = field(default_factory=lambda: {Side.M365: [], Side.SALESFORCE: []})
    cut: dict[Side, list[str]] = field(default_factory=lambda: {Side.M365: [], Side.SALESFORCE: []})

    def push(self, rule: FieldRule, source: Side, outlook: SideRecord, salesforce: SideRecord, policy: Policy) -> None:
        target = source.other
        src, dst = (outlook, salesforce) if source is Side.M365 else (salesforce, outlook)
        wanted = _value_on(target, rule, src.contact.get(rule.key), policy)
        current = dst.contact.get(rule.key)
        if _same(rule.key, wanted, current):
            return
        self.values[target][rule.key] = wanted
        if wanted is None and current is not None:
            self.clears[target].append(rule.key)
        if not _same(rule.key, wanted, src.contact.get(rule.key)):
            self.cut[target].append(rule.key)  # the target holds less than the source has: say so


def _merge(
    policy: Policy,
    scope: MailboxScope,
    outlook: SideRecord,
    salesforce: SideRecord,
    link: Link | None,
    *,
    by_marker: bool = False,
) -> _Merge:
    """Field-level three-way merge against the link's per-side bases; without a link (adopt), align the pair."""
    out = _Merge()
    # A pair linked again by its markers (``by_marker``: the links table was lost, or a link save never happened) or
    # through a link rebuilt from them (no bases at all) was synced before, but what was synced last is unknown. A
    # value still fills an empty side, but an empty side may be a deliberate clear, so the override goes on record
    # as a conflict.
    rebuilt = by_marker or (link is not None and not link.m365_base and not link.sf_base)
    for rule, direction in scope.rules:
        key = rule.key
        in_outlook, in_salesforce = outlook.contact.get(key), salesforce.contact.get(key)
        if link is not None and key in link.m365_base and key in link.sf_base:
            outlook_changed = field_digest(key, in_outlook) != link.m365_base[key]
            salesforce_changed = field_digest(key, in_salesforce) != link.sf_base[key]
        else:
            # No base for this field (first link, or a field newly added to the map): both count as changed
            # unless they already agree or one is empty (then the value fills the empty side).
            if _agree(key, rule, in_outlook, in_salesforce, policy):
                continue
            outlook_changed, salesforce_changed = in_outlook is not None, in_salesforce is not None
        if not outlook_changed and not salesforce_changed:
            continue
        if outlook_changed:
            out.changed_on[Side.M365].append(key)
        if salesforce_changed:
            out.changed_on[Side.SALESFORCE].append(key)
        conflict: Conflict | None
        if outlook_changed and salesforce_changed:
            if _agree(key, rule, in_outlook, in_salesforce, policy):
                continue  # the same edit on both sides
            conflict = _both_changed(key, direction, outlook, salesforce, policy)
            source = conflict.winner
        else:
            source, conflict = _one_changed(key, Side.M365 if outlook_changed else Side.SALESFORCE, direction, rebuilt)
        if conflict is not None:
            out.conflicts.append(conflict)
        out.push(rule, source, outlook, salesforce, policy)
    return out


def _both_changed(key: str, direction: Direction, outlook: SideRecord, salesforce: SideRecord,
                  policy: Policy) -> Conflict:
    """A field changed on both sides to different values: the conflict policy picks the winner, unless the field
    flows one way only (then its master wins)."""
    source, rule_name = _policy_winner(policy, outlook, salesforce)
    reason = (
        f"'{key}' changed in both Outlook and Salesforce since the last sync; "
        f"{source.label} wins by conflict policy {rule_name}"
    )
    if not direction.allows(source.other):
        source, rule_name = source.other, "direction"
        reason = f"'{key}' changed on both sides; field flows only to {source.other.label}, {source.label} wins"
    return Conflict(key, source, rule_name, reason)


def _one_changed(key: str, source: Side, direction: Direction, rebuilt: bool) -> tuple[Side, Conflict | None]:
    """A field changed on ``source`` only: the side whose value is kept, and the conflict to record, if any."""
    if not direction.allows(source.other):
        # One-way field: the edit on the receiving side is reverted to the master's value (and audited).
        return source.other, Conflict(
            key, source.other, "direction",
            f"'{key}' was edited in {source.label} but flows only {source.other.label} -> "
            f"{source.label}; the edit is reverted",
        )
    if rebuilt:
        return source, Conflict(
            key, source, "rebuilt link",
            f"'{key}' is empty in {source.other.label} and what was synced last is unknown (a pair linked "
            f"again by its markers): {source.label}'s value fills it")
    return source, None


def _updates(out: _Merge, outlook: SideRecord, salesforce: SideRecord, reason_for: dict[Side, str],
             markers: dict[Side, str | None]) -> list[Action]:
    actions: list[Action] = []
    for side in (Side.SALESFORCE, Side.M365):
        rec = outlook if side is Side.M365 else salesforce
        values = out.values[side]
        marker = markers.get(side)
        if not values and marker is None:
            continue
        actions.append(
            Update(
                side=side,
                item_id=rec.id,
                contact=rec.contact.with_values(values),
                fields=frozenset(values),
                if_match=rec.version,
                reason=(reason_for[side] + _cut_note(out.cut[side], side)) if values
                else f"clear the link marker on the {side.label} contact: the copy it named leaves this mailbox"
                if marker == "" else f"stamp the link marker on the {side.label} contact",
                clears=tuple(out.clears[side]),
                marker=marker,
            )
        )
    return actions


def _cut_note(keys: Sequence[str], side: Side) -> str:
    return f" (cut to fit {side.label}'s field length: {', '.join(keys)})" if keys else ""


def _cut_fields(policy: Policy, scope: MailboxScope, contact: Contact, target: Side) -> list[str]:
    """Fields of ``contact`` that ``target`` cannot hold in full."""
    return [rule.key for rule, _ in scope.rules
            if not _same(rule.key, _value_on(target, rule, contact.get(rule.key), policy), contact.get(rule.key))]


def _fields_list(keys: Sequence[str]) -> str:
    return ", ".join(keys) if keys else "no synced field"


# ---------------------------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class _Ctx:
    s: Situation
    policy: Policy
    scope: MailboxScope

    @property
    def synced(self) -> tuple[str, ...]:
        return self.scope.keys

    def done(
        self,
        actions: Sequence[Action],
        after: LinkAfter,
        reason: str,
        *,
        state: LinkState = LinkState.LINKED,
        m365_id: str | None = None,
        sf_id: str | None = None,
    ) -> Plan:
        return Plan(self.s.mailbox, tuple(actions), after, reason, state=state, m365_id=m365_id, sf_id=sf_id,
                    synced_fields=self.synced)


def plan(s: Situation, policy: Policy) -> Plan:
    """Decide what to do about one person in one mailbox. Pure: same input, same plan."""
    link, outlook, salesforce = s.link, s.m365, s.sf
    ctx = _Ctx(s, policy, scope_of(s, policy))
    done = ctx.done

    # Salesforce says another user owns it (or nobody we sync): it leaves this mailbox.
    if salesforce is not None and salesforce.owner != s.mailbox:
        return _leave_mailbox(ctx)

    if link is None:
        present = outlook if outlook is not None else salesforce
        if present is not None and any(c.partner == present.id for c in s.candidates):
            # a candidate is linked to this very record: a worker linked it after this situation's link was read,
            # so the records read since are newer than that link read; the worker that linked it decided it
            reason = (f"linked to {present.side.other.label} contact "
                      f"{next(c.record.id for c in s.candidates if c.partner == present.id)} by another worker "
                      f"since its link was read: nothing to do on this read")
            return done([Nothing(reason)], LinkAfter.KEEP, reason)
        if outlook is not None and salesforce is not None:
            # both given without a link: the engine found them pointing at each other (markers)
            return _adopt(ctx, outlook, salesforce, "link marker")
        if outlook is not None:
            # new in the Outlook folder: match in Salesforce, else create there
            return _match_or_create(ctx, outlook)
        if salesforce is not None:
            # new in Salesforce for this owner: match in the folder, else create there
            return _match_or_create(ctx, salesforce)
        # on neither side: a stale hint
        return done([Nothing("not found on either side and never linked: nothing to do")], LinkAfter.KEEP,
                    "nothing to do")

    if link.state is LinkState.DETACHED:
        kept = Side.M365 if link.m365_id else Side.SALESFORCE
        if _record(kept, outlook, salesforce) is None:
            # the copy we kept is gone as well: forget the tombstone
            return done([Nothing(f"the kept {kept.label} copy is gone too")], LinkAfter.REMOVE,
                        "detached link removed: both copies gone")
        # deleted on one side earlier with policy 'unlink': never bring it back
        reason = (f"deleted in {kept.other.label} earlier and unlinked by the delete policy; "
                  f"not bringing it back")
        return done([Nothing(reason)], LinkAfter.KEEP, reason)

    if outlook is None and salesforce is None:
        # deleted on both sides
        return done([Nothing("deleted on both sides")], LinkAfter.REMOVE, "deleted on both sides: link removed")
    if outlook is None and salesforce is not None:
        if s.left_with_folder:
            return _left_with_folder(ctx, salesforce)
        return _deleted(ctx, Side.M365, salesforce)
    if salesforce is None and outlook is not None:
        return _deleted(ctx, Side.SALESFORCE, outlook)
    if outlook is None or salesforce is None:  # unreachable: the cases above cover it; keeps the type checker informed
        raise ValueError("planner: inconsistent situation")

    return _linked_pair(ctx, link, outlook, salesforce)


def _linked_pair(ctx: _Ctx, link: Link, outlook: SideRecord, salesforce: SideRecord) -> Plan:
    """Linked, both present: unchanged, or merged field by field against the link's bases."""
    synced, done = ctx.synced, ctx.done
    if fingerprint(outlook.contact, synced) == link.m365_fp and fingerprint(salesforce.contact, synced) == link.sf_fp:
        # unchanged on both sides since the last sync (this is where echoes of our own writes end)
        reason = "unchanged on both sides since the last sync"
        return done([Nothing(reason)], LinkAfter.KEEP, reason, m365_id=outlook.id, sf_id=salesforce.id)
    out = _merge(ctx.policy, ctx.scope, outlook, salesforce, link)
    reasons = {
        Side.SALESFORCE: f"changed in Outlook: {_fields_list(out.changed_on[Side.M365])}",
        Side.M365: f"changed in Salesforce: {_fields_list(out.changed_on[Side.SALESFORCE])}",
    }
    for c in out.conflicts:
        if c.rule == "direction":
            reasons[c.winner.other] = c.reason
    actions: list[Action] = [*out.conflicts, *_updates(out, outlook, salesforce, reasons, {})]
    if not any(isinstance(a, Update) for a in actions):
        # changed, but the other side already holds the same values (or only unsynced properties changed)
        actions.append(Nothing("the other side already agrees; refreshing the link"))
    summary = "; ".join(a.reason for a in actions if isinstance(a, Conflict | Update | Nothing)) or "merged"
    return done(actions, LinkAfter.SAVE, summary, m365_id=outlook.id, sf_id=salesforce.id)


def _leave_mailbox(ctx: _Ctx) -> Plan:
    s, policy, done = ctx.s, ctx.policy, ctx.done
    salesforce = s.sf
    if salesforce is None:
        raise ValueError("planner: owner change without a Salesforce record")
    new_owner = salesforce.owner
    where = f"to mailbox {new_owner}" if new_owner else "to a user who is not a synced mailbox"
    # a contact outside SF_SOQL_FILTER leaves by the same rule as one whose owner is not synced (sync-rules row 43)
    why = ("the Salesforce contact no longer meets SF_SOQL_FILTER" if salesforce.out_of_filter
           else f"Salesforce owner changed {where}")
    short = "left SF_SOQL_FILTER" if salesforce.out_of_filter else f"owner changed {where}"
    handoff: list[Action] = (
        [Handoff(salesforce.id, new_owner, why)] if new_owner else []
    )
    link, outlook = s.link, s.m365
    if link is None:
        return done([Nothing("outside SF_SOQL_FILTER; not this mailbox's contact" if salesforce.out_of_filter
                             else "owned in Salesforce by another mailbox; not this mailbox's contact")],
                    LinkAfter.KEEP, "not this mailbox's contact")
    removes_copy = ctx.scope.direction.allows(Side.M365)
    # the Salesforce marker names this mailbox's copy, which goes away: clear it, so that nobody (a rebuild of lost
    # links in the new owner's mailbox above all) reads the missing copy as one the user deleted there
    unmark: dict[Side, str | None] = {
        Side.SALESFORCE: "" if (salesforce.marker and salesforce.marker == link.m365_id
                                and (outlook is None or removes_copy)) else None}
    if link.state is LinkState.DETACHED or outlook is None:
        clear = [Update(Side.SALESFORCE, salesforce.id, salesforce.contact, frozenset(), salesforce.version,
                        "clear the link marker: the Outlook copy it names left this mailbox", marker="")
                 ] if unmark[Side.SALESFORCE] is not None and link.state is LinkState.LINKED else []
        return done([*clear, *handoff, Nothing(f"{why}; link removed")], LinkAfter.REMOVE, short)
    actions: list[Action] = []
    if link.m365_id and link.sf_id:
        # push Outlook edits not yet in Salesforce before the contact leaves this folder (never lose an edit)
        out = _merge(policy, ctx.scope, outlook, salesforce, link)
        out.values[Side.M365].clear()
        out.clears[Side.M365].clear()
        saved = {Side.SALESFORCE: "Outlook edits saved before the contact leaves this mailbox"
                 if salesforce.out_of_filter else "Outlook edits saved before the owner change", Side.M365: ""}
        actions += [*out.conflicts, *_updates(out, outlook, salesforce, saved, unmark)]
    if removes_copy:
        actions.append(Delete(Side.M365, outlook.id, outlook.version,
                              f"{why}: removed from this mailbox's sync folder"))
    else:
        actions.append(Nothing("mailbox direction keeps Outlook untouched: the folder copy stays, unlinked"))
    return done([*actions, *handoff], LinkAfter.REMOVE, short)


def _deleted(ctx: _Ctx, gone: Side, survivor: SideRecord) -> Plan:
    s, policy, done = ctx.s, ctx.policy, ctx.done
    link = s.link
    if link is None:
        raise ValueError("planner: a delete needs a link")
    keep = gone.other
    direction = ctx.scope.direction
    chosen = policy.delete_policy(gone)
    note = ""
    synced = ctx.synced
    edited = fingerprint(survivor.contact, synced) != link.fp_on(keep) and any(
        field_digest(k, survivor.contact.get(k)) != link.base_on(keep).get(k) for k in synced
    )
    if chosen is DeletePolicy.PROPAGATE and edited:
        chosen, note = DeletePolicy.UNLINK, f"; not deleting because it was edited in {keep.label} since the last sync"
    if chosen is DeletePolicy.PROPAGATE and not direction.allows(keep):
        chosen, note = DeletePolicy.UNLINK, f"; mailbox direction does not allow writing to {keep.label}"
    if chosen is DeletePolicy.RECREATE and (not direction.allows(gone) or survivor.contact.missing_required()):
        chosen, note = DeletePolicy.UNLINK, f"; cannot recreate in {gone.label} (direction or required fields)"

    m365_id = survivor.id if keep is Side.M365 else None
    sf_id = survivor.id if keep is Side.SALESFORCE else None
    if chosen is DeletePolicy.PROPAGATE:
        bin_name = "Deleted Items" if keep is Side.M365 else "the Recycle Bin"
        reason = f"deleted in {gone.label}; delete policy propagate: moved to {bin_name} in {keep.label}"
        return done([Delete(keep, survivor.id, survivor.version, reason)], LinkAfter.REMOVE, reason)
    if chosen is DeletePolicy.RECREATE:
        # re-creating is creating: match first, so a copy that exists already is linked, not doubled
        recreated = _match_or_create(ctx, survivor, f"deleted in {gone.label}; delete policy recreate")
        if recreated.link_after is not LinkAfter.KEEP:
            return recreated
        # matching ended in review or skip: keep the survivor, unlinked, and say why
        reason = f"deleted in {gone.label}; delete policy recreate could not re-create: {recreated.reason}"
        review = [a for a in recreated.actions if isinstance(a, Review)]
        return done([*review, Unlink(keep, reason)], LinkAfter.SAVE, reason, state=LinkState.DETACHED,
                    m365_id=m365_id, sf_id=sf_id)
    reason = f"deleted in {gone.label}; delete policy unlink: {keep.label} copy kept and never re-created{note}"
    return done([Unlink(keep, reason)], LinkAfter.SAVE, reason, state=LinkState.DETACHED, m365_id=m365_id,
                sf_id=sf_id)


def _left_with_folder(ctx: _Ctx, salesforce: SideRecord) -> Plan:
    """The Outlook copy went with the sync folder the user deleted or moved: not a delete. The link's Outlook half is
    dropped and the contact is copied into the (new) sync folder, matching first; never deleted in Salesforce."""
    why = "the Outlook copy left with the sync folder (deleted or moved by the user): not a delete"
    if ctx.scope.direction.allows(Side.M365) and not salesforce.contact.missing_required():
        copied = _match_or_create(ctx, salesforce, why)
        if copied.link_after is not LinkAfter.KEEP:
            return copied
        reason = f"{why}; link dropped, not copied into the sync folder: {copied.reason}"
        review = [a for a in copied.actions if isinstance(a, Review)]
    else:
        reason = f"{why}; link dropped, not copied into the sync folder (direction or required fields)"
        review = []
    return ctx.done([*review, Unlink(Side.SALESFORCE, reason)], LinkAfter.REMOVE, reason)


def _eligible(c: Candidate, mailbox: str) -> bool:
    return not c.linked and (c.record.side is Side.M365 or c.record.owner == mailbox)


def _match_or_create(ctx: _Ctx, r: SideRecord, why: str | None = None) -> Plan:
    s, policy, done = ctx.s, ctx.policy, ctx.done
    other = r.side.other
    cands = [c for c in s.candidates if c.record.side is other]
    decided = holding(s.review, r, ctx.synced)
    if decided is not None:  # a person's decision in the review inbox, made on the record as it is now
        by = f"decided in review by {decided.decided_by or 'an operator'}"
        if decided.decision == "ignore":
            return done([Skip(f"ignored: {by}")], LinkAfter.KEEP, f"ignored: {by}")
        chosen = [c for c in cands if c.record.id in decided.chosen and _eligible(c, s.mailbox)]
        if decided.decision == "link" and len(chosen) == 1:
            return _adopt(ctx, r, chosen[0].record, by)
        if decided.decision == "create":
            cands = []
        elif decided.decision == "separate":
            cands = [c for c in cands if c.record.id not in decided.chosen]

    # 0. a second copy of a contact that is synced with another copy on this side, holding nothing of its own
    twin = _made_twice(r, cands, ctx.synced)
    if twin is not None:
        why = ("made by this sync and edited by nobody since (a create whose answer was lost while another worker "
               "created it too)" if r.side is Side.SALESFORCE else
               "equal to it in every synced field (two creates of one person, e.g. by a worker killed before either "
               "saved its link)")
        bin_name = "the Recycle Bin" if r.side is Side.SALESFORCE else "Deleted Items"
        reason = (f"a second {r.side.label} copy of {other.label} contact {twin.record.id}, {why}; that "
                  f"{other.label} contact is synced with {twin.record.marker}: moved to {bin_name}")
        m365_id, sf_id = (r.id, None) if r.side is Side.M365 else (None, r.id)
        return done([Delete(r.side, r.id, r.version, reason)], LinkAfter.KEEP, reason, m365_id=m365_id, sf_id=sf_id)

    # 0b. a second Outlook copy this sync made that a user edited: the edit joins the pair, the copy goes
    folded = _fold_twin(ctx, r, cands)
    if folded is not None:
        return folded

    # 1. the link marker: one side carries the other's id (rebuilds links after a lost table)
    by_marker = [c for c in cands if (r.marker and c.record.id == r.marker) or c.record.marker == r.id]
    free = [c for c in by_marker if _eligible(c, s.mailbox)]
    if len(free) == 1:
        return _adopt(ctx, r, free[0].record, "link marker")

    # 2. same email, then 3. same first + last name + company
    emails = r.contact.email_keys()
    hits = [c for c in cands if emails & c.record.contact.email_keys()] if emails else []
    via = "email"
    if not hits:
        key = r.contact.name_company_key()
        hits = [c for c in cands if key is not None and c.record.contact.name_company_key() == key]
        via = "name and company"
    if hits:
        free = [c for c in hits if _eligible(c, s.mailbox)]
        ids = tuple(c.record.id for c in hits)
        if len(free) == 1:
            return _adopt(ctx, r, free[0].record, via)
        if len(free) > 1:
            reason = f"ambiguous: {len(free)} {other.label} contacts match by {via}; a person must choose"
        else:
            reason = (f"matches {other.label} contact(s) by {via} that are already synced or owned by another "
                      f"user; not creating a duplicate")
        return done([Review(reason, ids)], LinkAfter.KEEP, reason)

    # 4. nothing matches: create on the other side, if allowed and complete
    direction = ctx.scope.direction
    if not direction.allows(other):
        reason = f"mailbox direction is {direction.value}: not creating in {other.label}"
        return done([Skip(reason)], LinkAfter.KEEP, reason)
    missing = r.contact.missing_required()
    if missing:
        reason = f"not created in {other.label}: missing {' and '.join(missing)}"
        return done([Skip(reason)], LinkAfter.KEEP, reason)
    fields = frozenset(rule.key for rule, d in ctx.scope.rules if d.allows(other))
    contact = Contact().with_values(r.contact.values(fields))
    source = why or ("new in the Outlook sync folder" if r.side is Side.M365 else "new in Salesforce for this owner")
    reason = (f"{source}, no match by marker, email or name and company: created in {other.label}"
              + _cut_note(_cut_fields(policy, ctx.scope, contact, other), other))
    m365_id, sf_id = (r.id, None) if r.side is Side.M365 else (None, r.id)
    return done([Create(other, contact, fields, reason)], LinkAfter.SAVE, reason, m365_id=m365_id, sf_id=sf_id)


def _made_twice(r: SideRecord, cands: Sequence[Candidate], synced: Sequence[str]) -> Candidate | None:
    """The contact on the other side that unlinked ``r`` is a redundant copy of, if it is one: ``r``'s marker names
    it, and it is linked and marked with *another* contact on ``r``'s side, so two creates of one person made ``r``
    and that partner (a create whose answer was lost, or workers killed before either saved its link: both copies
    carry the same marker). Removing ``r`` must lose nothing:
    - Salesforce: this sync made it and nobody wrote it since (``untouched``: CreatedById and LastModifiedById);
    - Outlook (Graph records no author): every synced field equals the other side's.
    Otherwise it goes to review, as any unlinked copy of a synced contact does."""
    if not r.marker or (r.side is Side.SALESFORCE and not r.untouched):
        return None
    twin = next((c for c in cands if c.record.side is r.side.other and c.record.id == r.marker and c.linked
                 and c.record.marker is not None and c.record.marker != r.id), None)
    if twin is None or (r.side is Side.M365
                        and any(not _same(k, r.contact.get(k), twin.record.contact.get(k)) for k in synced)):
        return None
    return twin


def _written_since_created(r: SideRecord) -> bool:
    """Whether an Outlook copy was written after its create (a user's edit: this sync never writes an unlinked
    copy). One nobody wrote holds no edit, only values the pair may have moved past since: nothing of it to keep."""
    return r.created_at is None or r.modified_at is None or r.modified_at > r.created_at


def _fold_twin(ctx: _Ctx, r: SideRecord, cands: Sequence[Candidate]) -> Plan | None:
    """A second Outlook copy this sync made (``Situation.twin``: its create key; row 41). Two creates of one person
    made it and the linked copy from the same Salesforce contact, so the pair's link bases stand for what it was
    created with: once a user wrote it, a field that differs from the Outlook base is their edit, merged into the
    Salesforce contact as any Outlook edit of the pair would be (the conflict policy settles a field changed in
    Salesforce too; the pair then carries the edit to its Outlook copy). Then the copy goes to Deleted Items.
    None when the situation has no such twin.

    Known limit: a field the user did not touch, whose value the pair moved past between the copy's create and
    this decision, differs from the base too and is taken for theirs (a window of seconds: the copy's own change
    notification brings it here)."""
    link, mailbox = ctx.s.twin, ctx.s.mailbox
    if link is None or r.side is not Side.M365 or link.sf_id != r.marker:
        return None
    twin = next((c.record for c in cands if c.record.side is Side.SALESFORCE and c.record.id == r.marker
                 and c.linked and c.record.owner == mailbox), None)
    if twin is None:
        return None
    out = _merge(ctx.policy, ctx.scope, r, twin, link) if _written_since_created(r) else _Merge()
    out.values[Side.M365].clear()  # the copy goes away: what Salesforce has reaches the linked copy through its pair
    out.clears[Side.M365].clear()
    moved = list(out.values[Side.SALESFORCE])
    reason = (f"a second Outlook copy of Salesforce contact {twin.id}, made by this sync (two creates of one person); "
              f"that Salesforce contact is synced with {link.m365_id}: "
              + (f"a user's edit of it ({', '.join(moved)}) merged into it, then " if moved else "")
              + "moved to Deleted Items")
    pushed = {Side.SALESFORCE: f"a user's edit of a second Outlook copy ({r.id}): {_fields_list(moved)}",
              Side.M365: ""}
    # the Salesforce marker names the pair's copy again (the loser may have stamped it with its own id last)
    marker = {Side.SALESFORCE: link.m365_id if twin.marker != link.m365_id else None}
    actions: list[Action] = [*out.conflicts, *_updates(out, r, twin, pushed, marker),
                             Delete(Side.M365, r.id, r.version, reason)]
    return ctx.done(actions, LinkAfter.KEEP, reason, m365_id=r.id, sf_id=twin.id)


def _adopt(ctx: _Ctx, a: SideRecord, b: SideRecord, via: str) -> Plan:
    policy, done = ctx.policy, ctx.done
    outlook, salesforce = (a, b) if a.side is Side.M365 else (b, a)
    out = _merge(policy, ctx.scope, outlook, salesforce, None, by_marker=via == "link marker")
    markers: dict[Side, str | None] = {
        Side.M365: salesforce.id if outlook.marker != salesforce.id else None,
        Side.SALESFORCE: outlook.id if salesforce.marker != outlook.id else None,
    }
    reasons = {
        Side.SALESFORCE: f"linked by {via}; filled from Outlook: {_fields_list(list(out.values[Side.SALESFORCE]))}",
        Side.M365: f"linked by {via}; filled from Salesforce: {_fields_list(list(out.values[Side.M365]))}",
    }
    reason = f"matched an existing {b.side.label} contact by {via}: linked instead of creating a duplicate"
    actions: list[Action] = [Adopt(outlook, salesforce, via, reason), *out.conflicts,
                             *_updates(out, outlook, salesforce, reasons, markers)]
    return done(actions, LinkAfter.SAVE, reason, m365_id=outlook.id, sf_id=salesforce.id)


# ---------------------------------------------------------------------------------------------- circuit breaker


def check_breaker(
    mailbox: str, plans: Sequence[Plan], total: int, breaker: CircuitBreaker, *, force: bool = False
) -> None:
    """Raise CircuitBreakerTripped if the mailbox's plans delete or empty too much (unless ``force``)."""
    destructive = sum(p.destructive for p in plans)
    if force or not breaker.trips(destructive, total):
        return
    report = tuple(p.reason for p in plans if p.destructive)[:20]
    raise CircuitBreakerTripped(mailbox, destructive=destructive, total=total, report=report)


__all__ = [
    "Action", "Adopt", "Candidate", "Conflict", "Create", "Delete", "Handoff", "LinkAfter", "Nothing", "Plan",
    "Review", "Situation", "Skip", "Unlink", "Update", "Write", "check_breaker", "plan", "scope_of",
]
