"""The resolved mailbox group (``sync.scope.StoredScope``) in one row of the checkpoints table.

One row, so every instance reads the whole list in one request and a write replaces it at once. A Table string
property holds at most 64 KiB and an entity 1 MiB (docs/reference/azure.md §4.1): the list is written as lines
``<object id> <upn>`` split over properties ``Part0`` .. ``PartN`` of at most ``PART_CHARS`` characters, which holds
about 6,000 members (450,000 characters at about 75 a member); a larger group is refused with a clear error and
the last list is kept.
"""

from __future__ import annotations

import json
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sync.adapters.storage.client import HealingTable, _call, _map_error
from sync.errors import BadData
from sync.scope import Member, StoredScope

PARTITION = "~scope"
ROW = "group"
PART_CHARS = 30_000  # UTF-16: 60 KB of the 64 KiB a string property may hold
MAX_PARTS = 15  # 15 x 60 KB + the state < 1 MiB per entity


class TableScopeStore:
    """``ScopeStore`` on the checkpoints table (PartitionKey ``~scope``, RowKey ``group``)."""

    def __init__(self, table: HealingTable) -> None:
        self._table = table

    def load(self) -> StoredScope | None:
        try:
            row = self._table.get_entity(PARTITION, ROW)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _map_error(exc, ROW) from exc
        state: dict[str, Any] = json.loads(str(row.get("State") or "{}"))
        text = "".join(str(row.get(f"Part{i}") or "") for i in range(int(row.get("Parts") or 0)))
        members = tuple(Member(*line.split(" ", 1)) for line in text.splitlines() if " " in line)
        return StoredScope(group_id=str(state.get("groupId") or ""), members=members, read_at=state.get("readAt"),
                           last_error=state.get("lastError"), last_error_at=state.get("lastErrorAt"))

    def save(self, scope: StoredScope) -> None:
        text = "".join(f"{m.id} {m.upn}\n" for m in scope.members)
        parts = [text[i:i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
        if len(parts) > MAX_PARTS:
            raise BadData(f"the group has {len(scope.members)} members: more than one stored list holds "
                          f"(about {MAX_PARTS * PART_CHARS // 70:,})", code="SCOPE_TOO_LARGE", side="storage")
        state = {"groupId": scope.group_id, "readAt": scope.read_at, "lastError": scope.last_error,
                 "lastErrorAt": scope.last_error_at, "count": len(scope.members)}
        row: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": ROW, "State": json.dumps(state),
                               "Parts": len(parts), **{f"Part{i}": p for i, p in enumerate(parts)}}
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), ROW)
