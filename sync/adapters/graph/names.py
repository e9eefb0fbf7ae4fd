"""``NameIndex``: the contacts of a mailbox's sync folder by first + last name + company, read once for many finds.

Graph documents a contact ``$filter`` on email addresses only (docs/reference/graph.md §1.9), so matching a contact
by first + last name + company means reading the folder's names. Read for every find, a bulk reassignment of n
contacts into one mailbox costs n listings of a folder growing to n: O(n²) requests (docs/performance.md, "Graph's
per-mailbox limit across instances"). The index keeps one listing per mailbox for ``max_age`` seconds, adds the
contacts this process creates meanwhile, and is shared by the process's workers (one listing at a time per mailbox;
the others wait for it). What it may miss: a contact another process or a user created or renamed in the folder
since the listing, for at most ``max_age``. ``GraphContactSide.find`` therefore uses it only beside the live email
filter (a contact with an address), which still finds every copy of the person that carries one of its addresses,
such as another worker's copy of the same Salesforce contact; a contact without an address lists the folder as
before. An id it holds that no longer matches is harmless: the find reads each candidate and checks its key.

Keys are kept as hashes and ids as Graph's strings: no names in memory beyond a listing's pages. At most
``max_mailboxes`` mailboxes are kept (least recently used dropped).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

NameKey = tuple[str, str, str]  # (first, last, company) case-folded: ``Contact.name_company_key``

DEFAULT_MAX_AGE_S = 30.0
DEFAULT_MAX_MAILBOXES = 16


@dataclass
class _Entry:
    ids: dict[int, list[str]] = field(default_factory=dict)  # hash of a key -> ids
    read_at: float | None = None  # monotonic time of the listing; None: not read
    loading: bool = False
    noted: list[tuple[int, str]] = field(default_factory=list)  # creates noted while a listing runs


class NameIndex:
    """``ids(mailbox, key)``: the ids of the folder's contacts whose (first, last, company) hash as ``key`` does.
    ``load(mailbox)`` lists the folder as (id, key) pairs (key None: no last name or no company); ``note`` adds a
    contact this process created."""

    def __init__(
        self,
        load: Callable[[str], Iterable[tuple[str, NameKey | None]]],
        *,
        max_age: float = DEFAULT_MAX_AGE_S,
        max_mailboxes: int = DEFAULT_MAX_MAILBOXES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load, self._max_age, self._max_mailboxes, self._clock = load, max_age, max_mailboxes, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._changed = threading.Condition()
        self.listings = 0  # folder listings made (the bench and tests read it)

    def _entry(self, mailbox: str) -> _Entry:
        entry = self._entries.get(mailbox)
        if entry is None:
            entry = self._entries[mailbox] = _Entry()
            while len(self._entries) > self._max_mailboxes:
                oldest = next(iter(self._entries))
                if self._entries[oldest].loading:
                    break
                del self._entries[oldest]
        self._entries.move_to_end(mailbox)
        return entry

    def _fresh(self, entry: _Entry, arrived: float) -> bool:
        """Read within ``max_age``, or by a listing that started after the caller arrived."""
        return entry.read_at is not None and (entry.read_at >= arrived or self._clock() - entry.read_at < self._max_age)

    def ids(self, mailbox: str, key: NameKey) -> list[str]:
        """The candidates for ``key`` (a listing when the index of ``mailbox`` is older than ``max_age``). Raises
        what ``load`` raised; the index is then left as it was."""
        mailbox = mailbox.casefold()
        with self._changed:
            arrived = self._clock()
            entry = self._entry(mailbox)
            while not self._fresh(entry, arrived):
                if entry.loading:
                    self._changed.wait()
                    entry = self._entry(mailbox)
                    continue
                entry.loading = True
                started = self._clock()
                try:
                    self._changed.release()
                    try:
                        rows = list(self._load(mailbox))
                    finally:
                        self._changed.acquire()
                    ids: dict[int, list[str]] = {}
                    for item_id, row_key in rows:
                        if row_key is not None:
                            ids.setdefault(hash(row_key), []).append(item_id)
                    for h, item_id in entry.noted:  # created while the listing ran: maybe not in it
                        held = ids.setdefault(h, [])
                        if item_id not in held:
                            held.append(item_id)
                    entry.ids, entry.read_at = ids, started
                    self.listings += 1
                finally:
                    entry.loading = False
                    entry.noted = []
                    self._changed.notify_all()
            return list(entry.ids.get(hash(key), ()))

    def note(self, mailbox: str, item_id: str, key: NameKey | None) -> None:
        """A contact this process created in the folder of ``mailbox`` (key None: nothing to index)."""
        if key is None:
            return
        with self._changed:
            entry = self._entries.get(mailbox.casefold())
            if entry is None:
                return  # no index yet: its first listing will hold it
            h = hash(key)
            held = entry.ids.setdefault(h, [])
            if item_id not in held:
                held.append(item_id)
            if entry.loading:
                entry.noted.append((h, item_id))
