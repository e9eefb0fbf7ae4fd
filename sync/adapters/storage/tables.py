"""``TableStorage``: the factory of the Table Storage side of the sync state.

It creates each table (``<prefix>links``, ``tombstones``, ``checkpoints``, ``audit``, ``jobs``, ``subscriptions``,
``reviews``)
on first use and again whenever it was deleted under a running process, and hands out the stores. Build it with
``from_connection_string`` or ``from_endpoint`` (identity-based); both count requests in ``client.REQUESTS``.
A links table missing although this deployment had one was lost: the class says how it is restored.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from sync.adapters.storage.client import PERMIT_REQUESTS, REQUESTS, HealingTable, _call, _chunks, _map_error, escape_key
from sync.adapters.storage.links import INDEX_PARTITION, LOST_ROW, META_PARTITION, TableLinkStore
from sync.adapters.storage.scope import TableScopeStore
from sync.adapters.storage.stores import TableAudit, TableCheckpoints, TableJobs, TableReviews, TableSubscriptions
from sync.ports import Link

logger = logging.getLogger(__name__)


class TableStorage:
    """The tables of the sync state, each created on first use and again whenever it was deleted under us.

    The links table is special: when it has to be created although this deployment had one before (a row in the
    checkpoints table remembers its first creation), it was lost; it is made again with a ``lost`` row, and the
    link store reports ``rebuilding`` until each mailbox has been rebuilt from the markers by a full reconcile.
    """

    def __init__(self, service: TableServiceClient, prefix: str = "sync") -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha():
            raise ValueError("SYNC_TABLE_PREFIX must start with a letter and contain only letters and digits")
        self._service = service
        self._prefix = prefix
        self._created: set[str] = set()
        self._lock = threading.RLock()

    def _create(self, name: str) -> bool:
        """Create the table; True when it did not exist."""
        try:
            self._service.create_table(f"{self._prefix}{name}")
        except ResourceExistsError:
            return False
        except AzureError as exc:
            raise _map_error(exc, name) from exc
        return True

    def _create_links(self) -> None:
        if not self._create("links"):
            return
        checkpoints = self._table("checkpoints")
        try:
            checkpoints.get_entity(META_PARTITION, "links")
        except ResourceNotFoundError:  # the first links table of this deployment
            row = {"PartitionKey": META_PARTITION, "RowKey": "links", "CreatedAt": datetime.now(UTC)}
            _call(lambda: checkpoints.upsert_entity(row, mode=UpdateMode.REPLACE), "links")
            return
        except AzureError as exc:
            raise _map_error(exc, "links") from exc
        logger.warning("the links table was lost and is made again: tombstones restored, links rebuilt from markers")
        links = self._service.get_table_client(f"{self._prefix}links")
        restored = self._restore_tombstones(links)
        lost = {"PartitionKey": META_PARTITION, "RowKey": LOST_ROW, "At": datetime.now(UTC), "Restored": restored}
        _call(lambda: links.upsert_entity(lost, mode=UpdateMode.REPLACE), "links")

    def _restore_tombstones(self, links: TableClient) -> int:
        """Seed a links table made again after a loss with the tombstones (and their index rows); returns how many."""
        self._create("tombstones")
        rows = self._service.get_table_client(f"{self._prefix}tombstones").list_entities(select=["Link"])
        by_mailbox: dict[str, list[Any]] = {}
        index: list[Any] = []
        count = 0
        for row in _call(lambda: list(rows), "tombstones"):
            link = Link.model_validate_json(row["Link"])
            by_mailbox.setdefault(link.mailbox, []).append(("upsert", TableLinkStore._entity(link, link.primary_key()),
                                                             {"mode": UpdateMode.REPLACE}))
            if link.sf_id:
                key = escape_key(f"{link.sf_id}|{link.mailbox}")
                index.append(("upsert", {"PartitionKey": INDEX_PARTITION, "RowKey": key, "Mailbox": link.mailbox},
                              {"mode": UpdateMode.REPLACE}))
            count += 1
        for ops in [*by_mailbox.values(), index]:
            for chunk in _chunks(ops):
                _call(lambda chunk=chunk: links.submit_transaction(list(chunk)), "tombstones")  # type: ignore[misc]
        return count

    def _table(self, name: str, service: TableServiceClient | None = None) -> HealingTable:
        full = f"{self._prefix}{name}"

        def recreate() -> None:
            with self._lock:
                if name == "links":
                    self._create_links()
                else:
                    self._create(name)

        if full not in self._created:
            recreate()
            self._created.add(full)
        return HealingTable((service or self._service).get_table_client(full), recreate)

    def links(self) -> TableLinkStore:
        return TableLinkStore(self._table("links"), self._table("tombstones"))

    def checkpoints(self) -> TableCheckpoints:
        return TableCheckpoints(self._table("checkpoints"))

    def audit(self) -> TableAudit:
        return TableAudit(self._table("audit"))

    def jobs(self) -> TableJobs:
        return TableJobs(self._table("jobs"))

    def subscriptions(self) -> TableSubscriptions:
        return TableSubscriptions(self._table("subscriptions"))

    def reviews(self) -> TableReviews:
        return TableReviews(self._table("reviews"))

    def scope(self) -> TableScopeStore:
        """The resolved mailbox group (one row of the checkpoints table, ``sync.adapters.storage.scope``)."""
        return TableScopeStore(self._table("checkpoints"))

    def graph_permits(self) -> HealingTable:
        """The table of Graph's per-mailbox request slots (``sync.adapters.graph.permits``); its requests are counted
        in ``client.PERMIT_REQUESTS``, not ``REQUESTS``."""
        counted = TableServiceClient(self._service.url, credential=self._service.credential,
                                     raw_request_hook=PERMIT_REQUESTS)
        return self._table("graphpermits", counted)

    @classmethod
    def from_connection_string(cls, conn: str, prefix: str = "sync") -> TableStorage:
        return cls(TableServiceClient.from_connection_string(conn, raw_request_hook=REQUESTS), prefix)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, prefix: str = "sync") -> TableStorage:
        """Identity-based access (``AzureWebJobsStorage__tableServiceUri`` + a TokenCredential)."""
        return cls(TableServiceClient(endpoint, credential=credential, raw_request_hook=REQUESTS), prefix)
