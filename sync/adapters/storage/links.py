"""The LinkStore on Table Storage (azure-data-tables 12.7.0): table ``<prefix>links``, tombstones also kept in
``<prefix>tombstones`` so that a lost links table can be seeded with them.

A link is two rows in its mailbox's partition, ``m365|<id>`` and ``sf|<id>``, each carrying the whole link and
written in ONE entity-group transaction (docs/reference/azure.md §4). Every write touches all rows, so a condition on
one row's ETag catches any concurrent write: ``Link.etag`` is "<row key>\\n<ETag>" of the row it was read through. A
stale ETag gives PreconditionFailed, creating a row that exists AlreadyExists.

Two more partitions: ``~sf`` maps a Salesforce id to the mailboxes holding it (row ``<sf id>|<mailbox>``; a stale
row only costs a lookup that finds nothing), and ``~meta`` records that the table was lost and made again (``lost``)
and which mailboxes have been rebuilt since (``rebuilt|<mailbox>``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from sync.adapters.storage.client import MAX_TRANSACTION, HealingTable, _call, _chunks, _map_error, escape_key
from sync.errors import BadData, NotFound, PreconditionFailed, SyncError
from sync.model import Side
from sync.ports import Link, LinkState, LinkWrite, row_key

INDEX_PARTITION = "~sf"
META_PARTITION = "~meta"  # links: ``lost`` (made again after a loss), ``rebuilt|<mailbox>``; checkpoints: ``links``
LOST_ROW = "lost"
META_TTL_S = 10.0  # how long a link store trusts its last read of the ``~meta`` rows


class TableLinkStore:
    """Links of ``<prefix>links``; tombstones (detached links) are also kept in ``<prefix>tombstones`` (PartitionKey =
    mailbox, RowKey = the row key), which a lost links table is seeded from when it is made again: a contact deleted
    on one side stays deleted after the loss. The copy is written before the link and removed after it (a crash
    leaves a tombstone too many, which only matters after a loss, never one too few)."""

    def __init__(self, table: HealingTable, tombstones: HealingTable | None = None) -> None:
        self._table = table
        self._tombstones = tombstones
        # (read at, table generation, RowKeys of the ``~meta`` partition): trusted for META_TTL_S, and until this
        # process makes the table again
        self._meta: tuple[float, int, set[str]] | None = None

    def _meta_rows(self) -> set[str]:
        now = time.monotonic()
        if self._meta is None or now - self._meta[0] > META_TTL_S or self._meta[1] != self._table.recreated:
            rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": META_PARTITION},
                                              select=["RowKey"])
            generation = self._table.recreated
            self._meta = (now, generation, _call(lambda: {str(r["RowKey"]) for r in rows}, META_PARTITION))
        return self._meta[2]

    def rebuilding(self, mailbox: str) -> bool:
        rows = self._meta_rows()
        return LOST_ROW in rows and escape_key(f"rebuilt|{mailbox}") not in rows

    def mark_rebuilt(self, mailbox: str) -> None:
        key = escape_key(f"rebuilt|{mailbox}")
        row = {"PartitionKey": META_PARTITION, "RowKey": key, "At": datetime.now(UTC)}
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), mailbox)
        if self._meta is not None:
            self._meta[2].add(key)

    @staticmethod
    def _entity(link: Link, key: str) -> dict[str, Any]:
        # A claim (docs/sync-rules.md, "Link claims") is kept in columns of its own, not in the Link JSON: an
        # instance of an older version, which reads that JSON strictly, still reads a claimed row during a rolling
        # upgrade (and its save, in REPLACE mode, clears the claim like any link save).
        row: dict[str, Any] = {
            "PartitionKey": escape_key(link.mailbox),
            "RowKey": escape_key(key),
            "Link": link.model_dump_json(exclude={"etag", "claim", "claimed_at"}),
            "State": link.state.value,
            "Primary": key == link.primary_key(),
            "SyncedAt": link.synced_at,
        }
        if link.claim is not None and link.claimed_at is not None:
            row["Claim"], row["ClaimedAt"] = link.claim, link.claimed_at
        return row

    @staticmethod
    def _from_entity(entity: Any, key: str | None = None) -> Link:
        """The link of a row (``key``: the row's link key; None for a primary row)."""
        link = Link.model_validate_json(entity["Link"])
        update: dict[str, Any] = {"etag": f"{key or link.primary_key()}\n{entity.metadata['etag']}"}
        if entity.get("Claim") and entity.get("ClaimedAt") is not None:
            update.update(claim=str(entity["Claim"]), claimed_at=entity["ClaimedAt"])
        return link.model_copy(update=update)

    def get(self, mailbox: str, side: Side, item_id: str) -> Link | None:
        key = row_key(side, item_id)
        try:
            entity = self._table.get_entity(escape_key(mailbox), escape_key(key))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _map_error(exc, item_id) from exc
        return self._from_entity(entity, key)

    def _keep_tombstone(self, link: Link) -> None:
        tombstones = self._tombstones
        if tombstones is None or link.state is not LinkState.DETACHED:
            return
        for key in link.row_keys():
            row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key),
                   "Link": link.model_dump_json(exclude={"etag", "claim", "claimed_at"})}
            _call(lambda row=row: tombstones.upsert_entity(row, mode=UpdateMode.REPLACE), key)  # type: ignore[misc]

    def _drop_tombstones(self, link: Link, replaced: Sequence[Link]) -> None:
        """Remove the tombstone copies of replaced detached links whose rows the new link does not keep detached."""
        if self._tombstones is None:
            return
        kept = set(link.row_keys()) if link.state is LinkState.DETACHED else set()
        for old in replaced:
            if old.state is not LinkState.DETACHED:
                continue
            for key in old.row_keys():
                if key not in kept:
                    try:
                        self._tombstones.delete_entity(escape_key(old.mailbox), escape_key(key))
                    except ResourceNotFoundError:
                        pass
                    except AzureError as exc:
                        raise _map_error(exc, key) from exc

    def save(self, link: Link, *, previous: Link | None, absorb: Sequence[Link] = ()) -> Link:
        ops = self._ops(link, previous, absorb)
        self._keep_tombstone(link)
        if link.sf_id and (previous is None or previous.sf_id != link.sf_id):
            # a Salesforce id new to this mailbox is indexed before its link is written: a crash in between leaves
            # a stale index row (a lookup that finds nothing), never a missing one; an unchanged id costs no call
            self._index(link)
        try:
            result = _call(lambda: self._table.submit_transaction(ops), link.primary_key())
        except NotFound as exc:  # a row read as ``previous`` (or absorbed) is gone since: someone else removed it
            raise PreconditionFailed(f"link rows removed since they were read: {exc.message}", side="tables",
                                     item_id=link.primary_key()) from exc
        saved = self._saved(link, ops, result)
        replaced = ([previous] if previous is not None else []) + list(absorb)
        for old in replaced:
            self._index_removed(old, link)
        self._drop_tombstones(link, replaced)
        return saved

    def save_many(self, items: Sequence[LinkWrite]) -> list[Link | SyncError]:
        """Many saves of one partition packed into transactions of up to 100 operations (docs/reference/azure.md §4.2).
        A transaction is all or nothing: when one fails, its saves are sent again one by one, so each item gets its
        own result. Then the Salesforce-id index rows, 100 upserts per transaction."""
        out: list[Link | SyncError | None] = [None] * len(items)
        planned: list[tuple[int, list[Any]]] = []
        for i, w in enumerate(items):
            if any(x.state is LinkState.DETACHED for x in [w.link, *([w.previous] if w.previous else []), *w.absorb]):
                try:  # a tombstone made or replaced (rare): its copy in the tombstones table goes with it
                    out[i] = self.save(w.link, previous=w.previous, absorb=w.absorb)
                except SyncError as exc:
                    out[i] = exc
                continue
            try:
                planned.append((i, self._ops(w.link, w.previous, w.absorb)))
            except ValueError as exc:
                out[i] = BadData(str(exc), code="BAD_LINK", side="tables")
        chunk: list[tuple[int, list[Any]]] = []
        rows: set[tuple[str, str]] = set()
        chunks: list[list[tuple[int, list[Any]]]] = []
        for i, ops in planned:
            keys = {(op[1]["PartitionKey"], op[1]["RowKey"]) for op in ops}
            partition = items[i].link.mailbox
            if chunk and (sum(len(o) for _, o in chunk) + len(ops) > MAX_TRANSACTION or keys & rows
                          or items[chunk[0][0]].link.mailbox != partition):
                chunks.append(chunk)
                chunk, rows = [], set()
            chunk.append((i, ops))
            rows |= keys
        if chunk:
            chunks.append(chunk)
        for group in chunks:
            ops = [op for _, o in group for op in o]
            try:
                result = self._table.submit_transaction(ops)
            except (AzureError, TableTransactionError):
                for i, _ in group:  # find which save failed: each on its own
                    w = items[i]
                    try:
                        out[i] = self.save(w.link, previous=w.previous, absorb=w.absorb)
                    except SyncError as exc:
                        out[i] = exc
                continue
            at = 0
            for i, o in group:
                out[i] = self._saved(items[i].link, o, result[at:at + len(o)])
                at += len(o)
            self._reindex_many([items[i] for i, _ in group])
        return [r if r is not None else SyncError("not saved") for r in out]

    def _ops(self, link: Link, previous: Link | None, absorb: Sequence[Link]) -> list[Any]:
        new_keys = link.row_keys()
        if not new_keys:
            raise ValueError("a link needs at least one id")
        ops: list[Any] = []
        old_keys: list[str] = []
        for old in ([previous] if previous is not None else []) + list(absorb):
            if old.etag is None:
                raise ValueError("a replaced link has no etag: read it from the store first")
            if old.mailbox != link.mailbox:
                raise ValueError("a link cannot move between mailboxes")
            guard_key, _, guard_etag = old.etag.partition("\n")
            guarded = {"etag": guard_etag, "match_condition": MatchConditions.IfNotModified}
            for key in old.row_keys():
                old_keys.append(key)
                if key not in new_keys:
                    row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key)}
                    ops.append(("delete", row, guarded if key == guard_key else {}))
                elif key == guard_key:
                    ops.append(("update", self._entity(link, key), {"mode": UpdateMode.REPLACE, **guarded}))
                else:
                    ops.append(("upsert", self._entity(link, key), {"mode": UpdateMode.REPLACE}))
        ops += [("create", self._entity(link, k)) for k in new_keys if k not in old_keys]
        return ops

    @staticmethod
    def _saved(link: Link, ops: Sequence[Any], result: Sequence[Any]) -> Link:
        primary = escape_key(link.primary_key())
        # results come back in operation order, each write with its new ETag
        etag = next((r.get("etag") for op, r in zip(ops, result, strict=True) if op[1]["RowKey"] == primary), None)
        if etag is None:
            raise PreconditionFailed("the link row returned no ETag", item_id=link.primary_key())
        return link.model_copy(update={"etag": f"{link.primary_key()}\n{etag}"})

    def _reindex_many(self, writes: Sequence[LinkWrite]) -> None:
        """Index rows of saved links: removals one by one (rare), new rows in transactions of 100 upserts."""
        rows: dict[str, dict[str, Any]] = {}
        for w in writes:
            for old in ([w.previous] if w.previous is not None else []) + list(w.absorb):
                self._index_removed(old, w.link)
            if w.link.sf_id:  # refreshed on every save, as ``save`` does (repairs a row a crash left out)
                key = escape_key(f"{w.link.sf_id}|{w.link.mailbox}")
                rows[key] = {"PartitionKey": INDEX_PARTITION, "RowKey": key, "Mailbox": w.link.mailbox}
        for part in _chunks(list(rows.values())):
            ops = [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in part]
            _call(lambda ops=ops: self._table.submit_transaction(ops), "index")  # type: ignore[misc]

    def _index_removed(self, old: Link, link: Link) -> None:
        if old.sf_id and old.sf_id != link.sf_id:
            self._unindex(old.sf_id, old.mailbox)

    def _index(self, link: Link) -> None:
        if link.sf_id:
            row = {"PartitionKey": INDEX_PARTITION, "RowKey": escape_key(f"{link.sf_id}|{link.mailbox}"),
                   "Mailbox": link.mailbox}
            _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), link.sf_id)

    def _unindex(self, sf_id: str, mailbox: str) -> None:
        try:
            self._table.delete_entity(INDEX_PARTITION, escape_key(f"{sf_id}|{mailbox}"))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _map_error(exc, sf_id) from exc

    def delete(self, link: Link) -> None:
        if link.etag is None:
            raise ValueError("link has no etag: read it from the store first")
        guard_key, _, guard_etag = link.etag.partition("\n")
        ops: list[Any] = []
        for key in link.row_keys():
            row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key)}
            kw = {"etag": guard_etag, "match_condition": MatchConditions.IfNotModified} if key == guard_key else {}
            ops.append(("delete", row, kw))
        _call(lambda: self._table.submit_transaction(ops), guard_key)
        if link.sf_id:
            self._unindex(link.sf_id, link.mailbox)
        self._drop_tombstones(link.model_copy(update={"state": LinkState.LINKED}), [link])

    def list(self, mailbox: str) -> Iterator[Link]:
        pages = self._table.query_entities(
            "PartitionKey eq @pk and Primary eq true", parameters={"pk": escape_key(mailbox)}, results_per_page=1000
        )
        try:
            for entity in pages:
                yield self._from_entity(entity)
        except AzureError as exc:
            raise _map_error(exc, mailbox) from exc

    def mailboxes_of(self, sf_id: str) -> set[str]:
        prefix = escape_key(f"{sf_id}|")
        rows = self._table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": INDEX_PARTITION, "lo": prefix, "hi": prefix[:-1] + "}"},
            select=["Mailbox"],
        )
        return _call(lambda: {str(r["Mailbox"]) for r in rows}, sf_id)
