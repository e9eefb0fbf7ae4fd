# ruff: noqa: SIM105, E501
"""L4: the links table deleted while the app runs is never re-created by that process."""
import uuid
from datetime import UTC, datetime

from azure.data.tables import TableServiceClient

from emulators.azurite import running_azurite
from sync.adapters.tables import TableStorage
from sync.policy import Side
from sync.ports import Link

with running_azurite() as azurite:
    prefix = "r" + uuid.uuid4().hex[:8]
    links = TableStorage.from_connection_string(azurite.connection_string, prefix).links()  # what Root caches
    link = Link(mailbox="ann@contoso.com", m365_id="AAMk1", sf_id="003A", synced_at=datetime.now(UTC))
    links.save(link, previous=None)
    TableServiceClient.from_connection_string(azurite.connection_string).delete_table(f"{prefix}links")
    print("get after the loss:", links.get("ann@contoso.com", Side.M365, "AAMk1"))  # None: "never linked"
    try:
        links.save(link.model_copy(update={"m365_id": "AAMk2", "sf_id": "003B"}), previous=None)
    except Exception as exc:
        print("save after the loss:", type(exc).__name__, str(exc)[:100], "| retryable:", getattr(exc, "retryable", None))
    try:
        list(links.list("ann@contoso.com"))
    except Exception as exc:
        print("list after the loss:", type(exc).__name__, "| retryable:", getattr(exc, "retryable", None))
