"""Azure Queue Storage as the ``WorkQueue`` port (azure-storage-queue 12.x).

A message is the work item's JSON, base64-encoded: the Functions queue trigger expects base64 (host.json
``messageEncoding``; docs/reference/azure.md §4.7: a plain-text message lands in ``-poison``). The text may be
at most 48 KiB (64 KiB once encoded); a bigger one raises ``QueueMessageTooLarge`` before anything is sent.
``delay`` becomes the message's visibility timeout (0 s .. 7 days).

The SDK is imported, the client built and the queue created on first use, once per process. ``api_version``
defaults to 2025-11-05, which Azurite (3.35, 3.37) and Azure accept (docs/reference/azure.md §5). Failures become
``sync.errors`` through the Table Storage error map (``client._map_error``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync.errors import BadData, SyncError
from sync.ports import WorkItem

MAX_MESSAGE_TEXT = 48 * 1024  # 64 KiB after base64 (docs/reference/azure.md §4.7, observed on Azurite)
MAX_DELAY_S = 7 * 24 * 3600
DEFAULT_API_VERSION = "2025-11-05"


class QueueMessageTooLarge(BadData):
    """A queue message over 48 KiB of text (64 KiB once base64-encoded)."""


def _map(exc: Exception, item_id: str | None) -> SyncError:
    from sync.adapters.storage.client import _map_error

    return _map_error(exc, item_id)


class StorageQueue:
    """One storage queue; ``factory`` returns a ``QueueClient`` (called once, lazily)."""

    def __init__(self, factory: Callable[[], Any], name: str) -> None:
        self.name = name
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, conn: str, name: str, *, api_version: str = DEFAULT_API_VERSION) -> StorageQueue:
        def build() -> Any:
            from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

            return QueueClient.from_connection_string(
                conn, name, api_version=api_version, message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )

        return cls(build, name)

    @classmethod
    def from_endpoint(
        cls, account_url: str, credential: Any, name: str, *, api_version: str = DEFAULT_API_VERSION
    ) -> StorageQueue:
        def build() -> Any:
            from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

            return QueueClient(
                account_url, name, credential=credential, api_version=api_version,
                message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy(),
            )

        return cls(build, name)

    def client(self) -> Any:
        """The ``QueueClient``, the queue created if missing (first call only)."""
        with self._lock:
            if self._client is None:
                from azure.core.exceptions import AzureError, ResourceExistsError

                client = self._factory()
                try:
                    client.create_queue()
                except ResourceExistsError:
                    pass
                except AzureError as exc:
                    raise _map(exc, self.name) from exc
                self._client = client
            return self._client

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        self.send_text(item.model_dump_json(), delay=delay)

    def send_text(self, text: str, *, delay: float = 0.0) -> None:
        size = len(text.encode("utf-8"))
        if size > MAX_MESSAGE_TEXT:
            raise QueueMessageTooLarge(
                f"queue message of {size} bytes exceeds {MAX_MESSAGE_TEXT} (64 KiB once base64-encoded)",
                code="MESSAGE_TOO_LARGE", side="queues", item_id=self.name,
            )
        from azure.core.exceptions import AzureError

        client = self.client()
        visibility = int(min(max(delay, 0.0), MAX_DELAY_S) + 0.999) or None
        try:
            client.send_message(text, visibility_timeout=visibility)
        except AzureError as exc:
            raise _map(exc, self.name) from exc

    def depth(self) -> int:
        """The approximate number of messages (the service's own count, visible or not)."""
        from azure.core.exceptions import AzureError

        try:
            return int(self.client().get_queue_properties().approximate_message_count or 0)
        except AzureError as exc:
            raise _map(exc, self.name) from exc

    def peek(self, limit: int = 32) -> list[Peeked]:
        """Up to ``limit`` (at most 32) visible messages, oldest first, without taking them."""
        from azure.core.exceptions import AzureError

        try:
            found = self.client().peek_messages(max_messages=max(1, min(limit, 32)))
        except AzureError as exc:
            raise _map(exc, self.name) from exc
        return [Peeked(m.id, m.inserted_on, int(m.dequeue_count or 0), str(m.content)) for m in found]

    def take(self, message_id: str) -> str | None:
        """Remove the visible message ``message_id`` and return its text (None when it is not among the first 32
        visible messages). The other messages received on the way are made visible again at once."""
        from azure.core.exceptions import AzureError

        client = self.client()
        try:
            found = None
            for msg in client.receive_messages(messages_per_page=32, visibility_timeout=30, max_messages=32):
                if msg.id == message_id and found is None:
                    client.delete_message(msg)
                    found = str(msg.content)
                else:
                    client.update_message(msg, visibility_timeout=0)
            return found
        except AzureError as exc:
            raise _map(exc, self.name) from exc


@dataclass(frozen=True)
class Peeked:
    """A message as ``peek`` shows it."""

    id: str
    inserted_on: datetime | None
    dequeue_count: int
    text: str


__all__ = ["DEFAULT_API_VERSION", "MAX_MESSAGE_TEXT", "Peeked", "QueueMessageTooLarge", "StorageQueue"]
