"""Fixtures for calling the functions the official way (``fb.build().get_user_function()``) against Azurite and
the emulators. Each test gets its own table prefix and empty queues; the composition root is built from a settings
dict (``sync.bootstrap.install``), never from the process environment."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from sync import bootstrap

ANN, BOB = "ann@contoso.com", "bob@contoso.com"
QUEUES = ("contact-changes", "reconcile", "contact-changes-poison", "reconcile-poison")
HMAC_SECRET = "test-relay-secret"


def user_function(fb: Any) -> Callable[..., Any]:
    """The official unit-test pattern (docs/reference/azure.md §1.5)."""
    return fb.build().get_user_function()  # type: ignore[no-any-return]


def http(method: str, url: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None, route_params: dict[str, str] | None = None) -> func.HttpRequest:
    return func.HttpRequest(method, url, headers=headers or {}, params=params or {}, route_params=route_params or {},
                            body=body)


@dataclass
class Queues:
    conn: str
    clients: dict[str, QueueClient] = field(default_factory=dict)

    def client(self, name: str) -> QueueClient:
        if name not in self.clients:
            c = QueueClient.from_connection_string(self.conn, name, api_version="2025-11-05",
                                                   message_encode_policy=TextBase64EncodePolicy(),
                                                   message_decode_policy=TextBase64DecodePolicy())
            with contextlib.suppress(Exception):
                c.create_queue()
            self.clients[name] = c
        return self.clients[name]

    def clear(self) -> None:
        for name in QUEUES:
            self.client(name).clear_messages()

    def take(self, name: str, *, visibility: int = 60) -> list[QueueMessage]:
        """Receive every visible message as the host would hand it to a queue function (and delete it)."""
        out = []
        c = self.client(name)
        for m in c.receive_messages(max_messages=32, visibility_timeout=visibility):
            out.append(QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=m.dequeue_count,
                                    pop_receipt=m.pop_receipt))
            c.delete_message(m)
        return out

    def bodies(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(m.get_body()) for m in self.take(name)]

    def raw(self, name: str) -> list[str]:
        """Message texts as stored (no decoding): the functions host expects base64."""
        plain = QueueClient.from_connection_string(self.conn, name, api_version="2025-11-05")
        return [m.content for m in plain.peek_messages(max_messages=32)]


@pytest.fixture
def queues(azurite_connection_string: str) -> Queues:
    q = Queues(azurite_connection_string)
    q.clear()
    return q


@pytest.fixture
def settings(azurite_connection_string: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite_connection_string,
        "SYNC_TABLE_PREFIX": "t" + uuid.uuid4().hex[:12],
        "SYNC_MAILBOXES": f"{ANN},{BOB}",
        "EVENTS_HMAC_SECRET": HMAC_SECRET,
        "WEBHOOK_BASE_URL": "http://127.0.0.1:9",
        "CDC_PULL_HOLD_SECONDS": "2",  # tests fire the CDC timer by hand (deployed: 57)
    }


@pytest.fixture
def root(settings: dict[str, str], queues: Queues) -> Iterator[bootstrap.Root]:
    r = bootstrap.install(bootstrap.Root(settings))
    yield r
    bootstrap.reset()


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
