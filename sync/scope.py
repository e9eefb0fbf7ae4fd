"""Which mailboxes sync: ``SYNC_MAILBOXES``, the transitive user members of the Entra group ``SYNC_MAILBOX_GROUP_ID``,
or both (their union).

Public API:
    Member(id, upn)                       one group member: its Entra object id and its UPN (case-folded)
    StoredScope                           the resolved group as stored, with the outcome of the last read
    ScopeStore, GroupReader               the ports: where the resolved list lives, who reads the group
    MailboxList(explicit, store)          the mailboxes in scope now (a set; the stored list re-read every ``ttl_s``)
    refresh_group(reader, store, ...)     read the group once and store the result -> ScopeChange
    group_id_setting(value)               the validated group id (a GUID) or None

What a reader must know:
* Every function instance must agree on the mailbox list, and a worker must not call Graph per message. So the group is
  read only by the subscriptions run (timer, start-up, ``POST /api/subscriptions/refresh``), which stores the result
  in Table Storage; everything else reads that stored list through ``MailboxList`` (one Table read a minute per
  process at most).
* A mailbox is keyed by its case-folded UPN, whatever the source: the links, checkpoints, subscriptions and the
  Salesforce owner match are keyed so, and a mailbox moving from ``SYNC_MAILBOXES`` to the group keeps its state. The
  object id is kept beside it (the status page shows it; Graph accepts it in ``/users/{id}``).
* A failed read keeps the last stored list (never an empty scope because Graph or a permission failed), records the
  error, and the subscriptions run reports it. A read in which a member comes back without its UPN (Graph's
  "limited information" when the app may read memberships but not users, docs/reference/graph.md §6.5) counts as
  failed too: a partial list would take mailboxes out of scope.
* Leaving the scope deletes the mailbox's subscription and nothing else: its links, its sync folder and every contact
  on both sides stay (docs/sync-rules.md, "Mailbox scope changes").
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from sync.errors import SyncError

logger = logging.getLogger(__name__)

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SCOPE_TTL_S = 60.0  # how long a process trusts its last read of the stored list


@dataclass(frozen=True)
class Member:
    id: str
    upn: str  # case-folded


@dataclass(frozen=True)
class StoredScope:
    """The group's members as last read, and the outcome of the last read (errors: codes and counts, no names)."""

    group_id: str
    members: tuple[Member, ...] = ()
    read_at: str | None = None  # ISO time of the last successful read
    last_error: str | None = None
    last_error_at: str | None = None

    @property
    def upns(self) -> tuple[str, ...]:
        return tuple(m.upn for m in self.members)


class ScopeStore(Protocol):
    """Where the resolved group lives (one row; ``load`` is None before the first read)."""

    def load(self) -> StoredScope | None: ...

    def save(self, scope: StoredScope) -> None: ...


class GroupReader(Protocol):
    """Reads a group's transitive members that are users: ``(object id, userPrincipalName or None)`` each. Raises a
    ``SyncError`` (``NotFound`` for an unknown group, ``AuthFailed`` without the permission)."""

    def transitive_users(self, group_id: str) -> list[tuple[str, str | None]]: ...


@dataclass(frozen=True)
class ScopeChange:
    """What one group read changed in the scope (UPNs, sorted), or the error that kept the last list."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    members: int = 0
    error: str | None = None


def group_id_setting(value: str | None) -> str | None:
    """``SYNC_MAILBOX_GROUP_ID`` checked: None when unset; ValueError naming the setting when it is not a GUID."""
    if not value:
        return None
    if not GUID.fullmatch(value.strip()):
        raise ValueError(f"SYNC_MAILBOX_GROUP_ID={value!r}: expected the object id of an Entra group (a GUID, "
                         "Entra admin center -> Groups -> the group -> Object ID)")
    return value.strip().lower()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def refresh_group(reader: GroupReader, store: ScopeStore, group_id: str, explicit: Sequence[str] = ()) -> ScopeChange:
    """Read the group once, store the members and say what changed in the scope (``explicit`` ∪ the group).

    A failure keeps the last stored list (of any group) and records the error on it."""
    previous = store.load()
    before = set(explicit) | set(previous.upns if previous else ())
    try:
        raw = reader.transitive_users(group_id)
        members: dict[str, Member] = {}
        unnamed = 0
        for object_id, upn in raw:
            if not upn:
                unnamed += 1
                continue
            members.setdefault(upn.casefold(), Member(object_id, upn.casefold()))
        if unnamed:
            raise GroupReadIncomplete(unnamed, len(raw))
        current = StoredScope(group_id=group_id, members=tuple(sorted(members.values(), key=lambda m: m.upn)),
                              read_at=_now())
        store.save(current)  # a group too large for the stored row fails here, like a failed read
    except SyncError as exc:
        text = f"{type(exc).__name__}: {exc}"[:400]
        kept = previous or StoredScope(group_id=group_id)
        store.save(replace(kept, last_error=text, last_error_at=_now()))
        return ScopeChange(members=len(kept.members), error=text)
    after = set(explicit) | set(current.upns)
    return ScopeChange(added=tuple(sorted(after - before)), removed=tuple(sorted(before - after)),
                       members=len(current.members))


class GroupReadIncomplete(SyncError):
    """Members came back without their UPN: the app may read the group's membership but not the users in it."""

    def __init__(self, unnamed: int, total: int) -> None:
        super().__init__(f"{unnamed} of {total} group member(s) came back without a userPrincipalName: the app can "
                         "read the group's membership but not users; grant the Graph application permission "
                         "User.ReadBasic.All (docs/admin-guide.md section 2.1)", side="m365")


@dataclass
class _Cached:
    at: float
    stored: StoredScope | None
    mailboxes: tuple[str, ...]
    ids: dict[str, str] = field(default_factory=dict)
    lookup: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.lookup = frozenset(self.mailboxes)


class MailboxList(Set[str]):
    """The mailboxes in scope now: ``explicit`` (SYNC_MAILBOXES) plus, with a ``store``, the stored group members,
    re-read at most every ``ttl_s`` seconds (``invalidate`` forces the next read). Iterates in order: the explicit
    list first, then the members by UPN. Membership tests case-fold."""

    def __init__(self, explicit: Sequence[str], store: ScopeStore | None = None, group_id: str | None = None, *,
                 ttl_s: float = SCOPE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.explicit = tuple(dict.fromkeys(m.casefold() for m in explicit))
        self.group_id = group_id
        self._store = store if group_id else None
        self._ttl_s, self._clock = ttl_s, clock
        self._lock = threading.Lock()
        self._cached: _Cached | None = None

    def _read(self) -> _Cached:
        with self._lock:
            cached = self._cached
            if self._store is None:
                if cached is None:
                    cached = self._cached = _Cached(self._clock(), None, self.explicit)
                return cached
            if cached is not None and self._clock() - cached.at < self._ttl_s:
                return cached
            try:
                stored = self._store.load()
            except SyncError:
                if cached is None:  # never read: the caller cannot know the scope
                    raise
                logger.warning("stored mailbox list unreadable: the list read %.0f s ago stays in use",
                               self._clock() - cached.at)
                cached.at = self._clock()
                return cached
            members = stored.members if stored is not None else ()
            boxes = tuple(dict.fromkeys(self.explicit + tuple(m.upn for m in members)))
            self._cached = _Cached(self._clock(), stored, boxes, {m.upn: m.id for m in members})
            return self._cached

    def invalidate(self) -> None:
        with self._lock:
            if self._store is not None:
                self._cached = None

    @property
    def current(self) -> tuple[str, ...]:
        return self._read().mailboxes

    def member_id(self, mailbox: str) -> str | None:
        """The Entra object id of a group member (None for a mailbox only in SYNC_MAILBOXES)."""
        return self._read().ids.get(mailbox.casefold())

    def stored(self) -> StoredScope | None:
        return self._read().stored

    def __contains__(self, mailbox: object) -> bool:
        return isinstance(mailbox, str) and mailbox.casefold() in self._read().lookup

    def __iter__(self) -> Iterator[str]:
        return iter(self._read().mailboxes)

    def __len__(self) -> int:
        return len(self._read().mailboxes)

    def source(self) -> str:
        """``list``, ``group`` or ``list+group``: where the scope comes from."""
        if self.group_id is None:
            return "list"
        return "list+group" if self.explicit else "group"

    def state(self) -> dict[str, object]:
        """For the status page and the subscriptions result: the source and the last group read (ids, no names)."""
        out: dict[str, object] = {"source": self.source(), "listed": len(self.explicit), "groupId": self.group_id}
        if self.group_id is not None:
            stored = self._read().stored
            same = stored is not None and stored.group_id == self.group_id
            out |= {"members": len(stored.members) if stored else 0,
                    "readAt": stored.read_at if stored is not None and same else None,
                    "lastError": stored.last_error if stored else None,
                    "lastErrorAt": stored.last_error_at if stored else None,
                    "storedGroupId": stored.group_id if stored else None}
        return out


__all__ = ["GUID", "GroupReadIncomplete", "GroupReader", "MailboxList", "Member", "ScopeChange", "ScopeStore",
           "StoredScope", "group_id_setting", "refresh_group"]
