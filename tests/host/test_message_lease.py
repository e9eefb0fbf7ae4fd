"""A host killed mid-message: the message comes back when its processing lease runs out.

The runtime keeps a message invisible for 10 minutes while it runs and renews that lease; a host that dies renews
nothing, so the message reappears after the lease and another host processes it with a higher ``dequeue_count``.
``--message-lease`` (``LocalHost(message_lease_s=...)``) shortens the lease so a test sees it in a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devhost.host import QUEUE_API_VERSION, LocalHost
from emulators.azurite import free_port
from tests.host import toy_app
from tests.host.test_local_host import FAST_QUEUES, _settings


def test_a_message_of_a_killed_host_is_delivered_again_after_the_lease(azurite_connection_string: str) -> None:
    settings = _settings(azurite_connection_string)
    queue = QueueClient.from_connection_string(azurite_connection_string, settings["TOY_QUEUE"],
                                               api_version=QUEUE_API_VERSION,
                                               message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    body = f"{toy_app.SLOW_MARKER}-{uuid.uuid4().hex}"
    queue.send_message(body)
    dying = subprocess.Popen(  # noqa: S603 - our own host module
        [sys.executable, "-m", "devhost", "--app", "tests.host.toy_app", "--port", str(free_port()),
         "--message-lease", "1"],
        env={**os.environ, **settings}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while list(queue.peek_messages()) and time.monotonic() < deadline:
            time.sleep(0.05)  # once received, the message is invisible while the slow function runs
        assert not list(queue.peek_messages()), "the first host received the message"
    finally:
        dying.send_signal(signal.SIGKILL)  # mid-message: nothing is deleted, nothing renewed
        dying.wait(10)
    with LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES) as host:
        deadline = time.monotonic() + 15
        while not toy_app.calls_with(body) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.wait_idle(10)
        (call,) = toy_app.calls_with(body)
        assert call["dequeue_count"] == 2
        assert host.invocations["on_message"].redelivered == 1
    assert queue.get_queue_properties().approximate_message_count == 0


def test_a_message_outliving_its_lease_is_renewed_not_delivered_twice(azurite_connection_string: str) -> None:
    """The function runs 2.5 s on a 1 s lease: the host renews the message's visibility at half the lease (with the
    new pop receipt), so no one else receives it meanwhile and it is deleted once, after success."""
    settings = _settings(azurite_connection_string)
    queue = QueueClient.from_connection_string(azurite_connection_string, settings["TOY_QUEUE"],
                                               api_version=QUEUE_API_VERSION,
                                               message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    body = f"{toy_app.SLOW_MARKER}-{uuid.uuid4().hex}"
    with LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES, message_lease_s=1) as host:
        queue.send_message(body)
        deadline = time.monotonic() + 15
        while not toy_app.calls_with(body) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # past the first lease: a lapsed message would be visible (and received again) now
        assert not list(queue.peek_messages()), "the message became visible while it was processed"
        assert host.wait_idle(10)
        assert len(toy_app.calls_with(body)) == 1
        assert host.invocations["on_message"].redelivered == 0
        assert host.invocations["on_message"].succeeded >= 1
    assert queue.get_queue_properties().approximate_message_count == 0
