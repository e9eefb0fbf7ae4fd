"""The review inbox's core: which decision still holds, and how an item follows the plans of its record.

Public API:
    holding(item, record, synced) -> ReviewItem | None   the item when its decision still holds for ``record``
    settle(store, situation, plan, now)                  after a plan ran: open, refresh, reopen or close the item
    decide(item, decision, chosen, by, record, synced, now) -> ReviewItem   a person's decision, checked

An item is one unlinked record the planner sent to review. A person's decision (link, create, separate, ignore)
holds while the record's synced fields keep the fingerprint they had when it was made: an edit makes the planner
decide afresh (and reopens the item if it is still ambiguous). An item closes itself (is deleted) when a plan of its
record no longer reviews and no lasting decision (``separate``, ``ignore``) keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sync.actions import Plan, Review, Situation
from sync.model import fingerprint
from sync.ports import ReviewDecision, ReviewItem, ReviewStore, SideRecord

LASTING = frozenset({"separate", "ignore"})  # decisions kept after they are honoured (link / create leave a link)


def holding(item: ReviewItem | None, record: SideRecord, synced: Sequence[str]) -> ReviewItem | None:
    """``item`` when it carries a decision about ``record`` made on the record as it is now, else None."""
    if item is None or item.decision is None or item.record_id != record.id or item.side is not record.side:
        return None
    return item if item.decided_fp == fingerprint(record.contact, synced) else None


def settle(store: ReviewStore, s: Situation, p: Plan, now: datetime) -> None:
    """Keep the record's review item in step with the plan just applied (unlinked records only)."""
    record = s.m365 if s.m365 is not None else s.sf
    if s.link is not None or record is None or (s.m365 is not None and s.sf is not None):
        return
    review = next((a for a in p.actions if isinstance(a, Review)), None)
    item = s.review if s.review is not None and s.review.record_id == record.id else None
    if review is not None:
        if item is not None and item.open and item.reason == review.reason \
                and item.candidate_ids == review.candidate_ids and (now - item.last_seen).total_seconds() < 3600:
            return  # unchanged and seen within the hour: no write
        first = item.first_seen if item is not None else now
        store.put(ReviewItem(mailbox=s.mailbox, side=record.side, record_id=record.id, reason=review.reason,
                             candidate_ids=review.candidate_ids, first_seen=first, last_seen=now))
        return
    if item is None:
        return
    if item.decision in LASTING and holding(item, record, s.scope.keys if s.scope else ()) is not None:
        return
    store.delete(item)


class BadDecision(ValueError):
    """A decision that does not fit the item (the message says why)."""


def decide(item: ReviewItem, decision: str, chosen: Sequence[str], by: str, record: SideRecord,
           synced: Sequence[str], now: datetime) -> ReviewItem:
    """The item with ``decision`` recorded, bound to the record as it is now (its fingerprint)."""
    picked = tuple(dict.fromkeys(chosen))
    unknown = [c for c in picked if c not in item.candidate_ids]
    if unknown:
        raise BadDecision(f"not a candidate of this item: {', '.join(unknown)}")
    kind: ReviewDecision
    if decision == "link":
        if len(picked) != 1:
            raise BadDecision("link needs exactly one candidate")
        kind = "link"
    elif decision == "separate":
        picked, kind = picked or item.candidate_ids, "separate"
    elif decision in ("create", "ignore"):
        if picked:
            raise BadDecision(f"{decision} takes no candidate")
        kind = "create" if decision == "create" else "ignore"
    else:
        raise BadDecision("decision must be one of: link, create, separate, ignore")
    return item.model_copy(update={"decision": kind, "chosen": picked, "decided_by": by, "decided_at": now,
                                   "decided_fp": fingerprint(record.contact, synced)})
