"""Azure Storage: the sync state in Table Storage and the work queues in Queue Storage.

``tables.TableStorage`` creates the tables and hands out the stores: ``links`` (the LinkStore) and ``stores``
(checkpoints, audit, reconcile jobs, Graph subscriptions). ``queues.StorageQueue`` is the WorkQueue. ``client``
holds what they share: key escaping, the one error map, request counts, a table that re-creates itself.

The names below load their module on first use, so importing this package (or ``queues`` alone) loads no Azure
Tables SDK: ``function_app`` must import without any SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sync.adapters.storage.client import PERMIT_REQUESTS, REQUESTS, RequestCounts, escape_key
    from sync.adapters.storage.links import LOST_ROW, META_PARTITION, TableLinkStore
    from sync.adapters.storage.queues import (
        DEFAULT_API_VERSION,
        MAX_MESSAGE_TEXT,
        QueueMessageTooLarge,
        StorageQueue,
    )
    from sync.adapters.storage.stores import (
        TableAudit,
        TableCheckpoints,
        TableJobs,
        TableReviews,
        TableSubscriptions,
    )
    from sync.adapters.storage.tables import TableStorage

# public name -> the module defining it, imported on first use (importing the package loads no Azure SDK)
_WHERE = {
    "LOST_ROW": "links",
    "META_PARTITION": "links",
    "PERMIT_REQUESTS": "client",
    "REQUESTS": "client",
    "RequestCounts": "client",
    "TableAudit": "stores",
    "TableCheckpoints": "stores",
    "TableJobs": "stores",
    "TableLinkStore": "links",
    "TableReviews": "stores",
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
    "PERMIT_REQUESTS",
    "REQUESTS",
    "QueueMessageTooLarge",
    "RequestCounts",
    "StorageQueue",
    "TableAudit",
    "TableCheckpoints",
    "TableJobs",
    "TableLinkStore",
    "TableReviews",
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
