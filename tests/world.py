"""The engine the tests drive, built in one place: over in-memory Outlook and Salesforce.

    memory_world(policy=None, *, links=None, mailboxes=(ANN, BOB)) -> World
        the engine with in-memory links (or ``links``), audit and queue, all on one logical clock
    memory_engine_in(root) -> (m365, sf)
        a functions root (Azurite links, audit, queues) whose engine is replaced by one over in-memory sides
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from sync.engine import Engine
from sync.execute import Outcome
from sync.model import Side
from sync.policy import Policy
from sync.ports import ContactChange, LinkStore
from tests.fakes import LogicalClock, MemoryAudit, MemoryLinkStore, MemoryQueue, MemoryReviews, MemorySide

ANN, BOB = "ann@contoso.com", "bob@contoso.com"


@dataclass
class World:
    """An engine and the fakes it reads and writes."""

    m365: MemorySide
    sf: MemorySide
    links: LinkStore
    audit: MemoryAudit
    queue: MemoryQueue
    engine: Engine
    clock: LogicalClock
    reviews: MemoryReviews

    def hint_sf(self, item_id: str) -> list[Outcome]:
        return list(self.engine.sync_contact(ContactChange(source=Side.SALESFORCE, item_id=item_id)))

    def hint_m365(self, item_id: str, mailbox: str = ANN) -> list[Outcome]:
        return list(self.engine.sync_contact(ContactChange(source=Side.M365, item_id=item_id, mailbox=mailbox)))


W = TypeVar("W", bound=World)


def memory_world(policy: Policy | None = None, *, links: LinkStore | None = None,
                 mailboxes: Collection[str] = (ANN, BOB), kind: type[W] = World) -> W:
    """A fresh engine over in-memory sides; ``kind``: a subclass of World with a test module's own helpers."""
    clock = LogicalClock()
    m365, sf = MemorySide(Side.M365, clock=clock), MemorySide(Side.SALESFORCE, clock=clock)
    links = links or MemoryLinkStore()
    audit, queue, reviews = MemoryAudit(), MemoryQueue(), MemoryReviews()
    engine = Engine(m365, sf, links, audit, queue, policy or Policy(), list(mailboxes), clock=clock, reviews=reviews)
    return kind(m365, sf, links, audit, queue, engine, clock, reviews)


def memory_engine_in(root: Any) -> tuple[MemorySide, MemorySide]:
    """Replace ``root``'s engine (a ``bootstrap.Root``) by one over in-memory sides, with the root's own links,
    audit, queue, policy and mailboxes; returns the two sides."""
    m365, sf = MemorySide(Side.M365), MemorySide(Side.SALESFORCE)
    root.override(engine=Engine(m365, sf, root.links, root.audit, root.work_queue, root.policy, root.mailboxes,
                                reviews=root.reviews))
    return m365, sf
