"""Azure Storage adapters: Table Storage (links, checkpoints, audit, jobs, subscriptions) and Queue Storage."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sync.adapters.storage.client import REQUESTS, RequestCounts, escape_key
    from sync.adapters.storage.links import LOST_ROW, META_PARTITION, TableLinkStore
    from sync.adapters.storage.queues import (
        DEFAULT_API_VERSION,
        MAX_MESSAGE_TEXT,
        QueueMessageTooLarge,
        StorageQueue,
    )
    from sync.adapters.storage.stores import TableAudit, TableCheckpoints, TableJobs, TableSubscriptions
    from sync.adapters.storage.tables import TableStorage

# public name -> the module defining it, imported on first use (importing the package loads no Azure SDK)
_WHERE = {
    "LOST_ROW": "links",
    "META_PARTITION": "links",
    "REQUESTS": "client",
    "RequestCounts": "client",
    "TableAudit": "stores",
    "TableCheckpoints": "stores",
    "TableJobs": "stores",
    "TableLinkStore": "links",
    "TableStorage": "tables",
    "TableSubscriptions": "stores",
    "escape_key": "client",
    "DEFAULT_API_VERSION": "queues",
    "MAX_MESSAGE_TEXT": "queues",
    "QueueMessageTooLarge": "queues",
    "StorageQueue": "queues",
}

__all__ = [
    "DEFAULT_API_VERSION",
    "LOST_ROW",
    "MAX_MESSAGE_TEXT",
    "META_PARTITION",
    "REQUESTS",
    "QueueMessageTooLarge",
    "RequestCounts",
    "StorageQueue",
    "TableAudit",
    "TableCheckpoints",
    "TableJobs",
    "TableLinkStore",
    "TableStorage",
    "TableSubscriptions",
    "escape_key",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
