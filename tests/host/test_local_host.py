"""The local functions host (devhost/host.py) serving a toy function app over Azurite.

Expectations follow docs/reference/azure.md: §1.1 discovery, §1.3 host.json queue settings and poison queues,
§1.5 introspection, §4.7 base64 encoding and dequeue_count, §6.1 auth levels and keys.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devhost.app import find_function_app
from devhost.host import QUEUE_API_VERSION, HostError, LocalHost, compile_route
from tests.host import toy_app

pytestmark = pytest.mark.azurite

FAST_QUEUES = {
    "extensions": {
        "queues": {
            "maxPollingInterval": "00:00:00.200",
            "visibilityTimeout": "00:00:01",
            "maxDequeueCount": 2,
            "batchSize": 4,
            "messageEncoding": "base64",
        }
    }
}
FAR_SCHEDULE = "0 0 0 1 1 *"  # midnight on 1 January: never during a test run
FUNCTION_KEY = "job-function-key"


def _queue_name(tag: str) -> str:
    return f"toy-{tag}-{uuid.uuid4().hex[:8]}"


def _settings(conn: str, **extra: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": conn,
        "TOY_QUEUE": _queue_name("in"),
        "TOY_OUT_QUEUE": _queue_name("out"),
        "TOY_SCHEDULE": FAR_SCHEDULE,
        **extra,
    }


def call(
    host: LocalHost, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _client(conn: str, name: str, base64_policy: bool = True) -> QueueClient:
    if base64_policy:
        return QueueClient.from_connection_string(
            conn, name, api_version=QUEUE_API_VERSION, message_encode_policy=TextBase64EncodePolicy()
        )
    return QueueClient.from_connection_string(conn, name, api_version=QUEUE_API_VERSION)


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def host(azurite_connection_string: str) -> Iterator[LocalHost]:
    with LocalHost(
        toy_app.app,
        settings=_settings(azurite_connection_string),
        host_json=FAST_QUEUES,
        function_keys={"job": FUNCTION_KEY},
    ) as running:
        yield running


@pytest.fixture
def queue_host(azurite_connection_string: str) -> Iterator[LocalHost]:
    with LocalHost(toy_app.app, settings=_settings(azurite_connection_string), host_json=FAST_QUEUES) as running:
        yield running


# ---------------------------------------------------------------------------- discovery


def test_discovers_functions_from_library_metadata(host: LocalHost) -> None:
    assert set(host.functions) == {
        "echo", "job", "hello_async", "boom", "admin_only", "enqueue", "on_message", "tick", "startup_tick",
    }
    assert host.functions["job"].trigger["route"] == "jobs/{job}"
    assert host.functions["hello_async"].is_async
    assert host.functions["on_message"].trigger_type == "queueTrigger"


def test_find_function_app_requires_exactly_one() -> None:
    none = types.ModuleType("none")
    two = types.ModuleType("two")
    two.a, two.b = func.FunctionApp(), func.FunctionApp()
    with pytest.raises(ValueError, match="Could not find top level function app"):
        find_function_app(none)
    with pytest.raises(ValueError, match="More than one"):
        find_function_app(two)
    assert find_function_app(toy_app) is toy_app.app


def test_loads_app_by_module_name_and_host_starts_twice_on_same_app(azurite_connection_string: str) -> None:
    # get_functions() may be called only once per app instance (docs/reference/azure.md §1.5); the host resets it
    if not toy_app.app.functions_bindings:
        toy_app.app.get_functions()
    with LocalHost("tests.host.toy_app", settings=_settings(azurite_connection_string), host_json=FAST_QUEUES) as h:
        assert "echo" in h.functions
        assert call(h, "GET", "/api/echo")[0] == 200


# ---------------------------------------------------------------------------- HTTP


def test_anonymous_echo_gets_method_params_body_and_headers(host: LocalHost) -> None:
    status, headers, body = call(host, "POST", "/api/echo?x=1&y=two", b"payload", {"x-toy": "t"})
    assert status == 200
    assert headers["x-echo"] == "yes"
    assert headers["content-type"].startswith("application/json")
    echoed = json.loads(body)
    assert echoed["method"] == "POST"
    assert echoed["params"] == {"x": "1", "y": "two"}
    assert echoed["body"] == "payload"
    assert echoed["header"] == "t"
    assert echoed["url"] == f"{host.base_url}/api/echo?x=1&y=two"


def test_route_params_and_function_auth(host: LocalHost) -> None:
    assert call(host, "GET", "/api/jobs/nightly")[0] == 401
    assert call(host, "GET", "/api/jobs/nightly", headers={"x-functions-key": "wrong"})[0] == 401
    status, _, body = call(host, "GET", "/api/jobs/nightly", headers={"x-functions-key": host.host_key})
    assert (status, json.loads(body)) == (200, {"job": "nightly"})
    status, _, body = call(host, "GET", f"/api/jobs/a%20b?code={FUNCTION_KEY}")
    assert (status, json.loads(body)) == (200, {"job": "a b"})
    assert call(host, "GET", f"/api/jobs/x?code={host.master_key}")[0] == 200


def test_function_key_is_scoped_to_its_function_and_admin_needs_master(host: LocalHost) -> None:
    assert call(host, "GET", f"/api/ops/admin?code={FUNCTION_KEY}")[0] == 401
    assert call(host, "GET", "/api/ops/admin", headers={"x-functions-key": host.host_key})[0] == 401
    status, _, body = call(host, "GET", "/api/ops/admin", headers={"x-functions-key": host.master_key})
    assert (status, body) == (200, b"admin ok")


def test_async_function_runs_on_event_loop(host: LocalHost) -> None:
    status, headers, body = call(host, "GET", "/api/hello/ada")
    assert (status, body) == (200, b"hello ada")
    assert headers["content-type"] == "text/plain; charset=utf-8"


def test_concurrent_requests(host: LocalHost) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [f"/api/hello/n{i}" if i % 2 else f"/api/echo?i={i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda p: call(host, "GET", p)[0], paths))
    assert statuses == [200] * 16


def test_unknown_routes_are_404_and_wrong_method_is_405(host: LocalHost) -> None:
    assert call(host, "GET", "/api/nope")[0] == 404
    assert call(host, "GET", "/echo")[0] == 404  # missing route prefix
    status, headers, _ = call(host, "DELETE", "/api/echo")
    assert status == 405
    assert headers["allow"] == "GET, POST"
    assert call(host, "POST", "/api/jobs/x", headers={"x-functions-key": host.host_key})[0] == 405


def test_exception_gives_generic_500_and_logs_traceback(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    before = host.invocations["boom"]
    with caplog.at_level(logging.ERROR, logger="devhost.host"):
        status, _, body = call(host, "GET", "/api/boom")
    assert status == 500
    assert b"secret" not in body and b"Traceback" not in body
    failures = [r for r in caplog.records if "Functions.boom" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    assert host.invocations["boom"].failed == before.failed + 1


def test_route_prefix_from_host_json(azurite_connection_string: str) -> None:
    config = {**FAST_QUEUES, "extensions": {**FAST_QUEUES["extensions"], "http": {"routePrefix": ""}}}
    with LocalHost(toy_app.app, settings=_settings(azurite_connection_string), host_json=config) as h:
        assert call(h, "GET", "/echo")[0] == 200
        assert call(h, "GET", "/api/echo")[0] == 404
        assert h.url("echo") == f"{h.base_url}/echo"


def test_auth_can_be_disabled_like_core_tools(azurite_connection_string: str) -> None:
    with LocalHost(
        toy_app.app, settings=_settings(azurite_connection_string), host_json=FAST_QUEUES, enforce_auth=False
    ) as h:
        assert call(h, "GET", "/api/jobs/x")[0] == 200


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("reconcile/{job}", "reconcile/full", {"job": "full"}),
        ("reconcile/{job}", "Reconcile/full/", {"job": "full"}),
        ("reconcile/{job}", "reconcile/full/extra", None),
        ("items/{id:int}", "items/42", {"id": "42"}),
        ("items/{id:int}", "items/abc", None),
        ("files/{*path}", "files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("list/{page?}", "list", {"page": None}),
        ("list/{page?}", "list/3", {"page": "3"}),
        ("v1/{a}-{b}", "v1/x-y", {"a": "x", "b": "y"}),
    ],
)
def test_route_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    match = compile_route(template).match(path)
    assert (match.groupdict() if match else None) == expected


# ---------------------------------------------------------------------------- queues


def test_queue_trigger_receives_base64_message_with_metadata(queue_host: LocalHost, azurite_connection_string: str):
    queue = os.environ["TOY_QUEUE"]
    body = f"hello-{uuid.uuid4().hex}"
    sent = _client(azurite_connection_string, queue).send_message(body)
    assert queue_host.wait_idle(10)
    (received,) = toy_app.calls_with(body)
    assert received["id"] == sent.id
    assert received["dequeue_count"] == 1
    assert queue_host.invocations["on_message"].succeeded >= 1


def test_failing_message_is_retried_then_moved_to_poison_queue(
    queue_host: LocalHost, azurite_connection_string: str
) -> None:
    queue = os.environ["TOY_QUEUE"]
    body = f"{toy_app.POISON_MARKER}-{uuid.uuid4().hex}"
    started = time.monotonic()
    _client(azurite_connection_string, queue).send_message(body)
    assert queue_host.wait_idle(10)
    attempts = toy_app.calls_with(body)
    assert [a["dequeue_count"] for a in attempts] == [1, 2]  # maxDequeueCount 2
    assert time.monotonic() - started >= 1.0  # visibilityTimeout 1 s between the attempts
    stats = queue_host.invocations["on_message"]
    assert (stats.failed, stats.poisoned) == (2, 1)
    poison = _client(azurite_connection_string, f"{queue}-poison", base64_policy=False)
    (moved,) = list(poison.receive_messages(max_messages=32))
    assert base64.b64decode(moved.content).decode() == body  # the original (encoded) content
    assert _client(azurite_connection_string, queue).get_queue_properties().approximate_message_count == 0


def test_non_base64_message_ends_in_poison_without_invocation(
    queue_host: LocalHost, azurite_connection_string: str
) -> None:
    queue = os.environ["TOY_QUEUE"]
    _client(azurite_connection_string, queue, base64_policy=False).send_message("{not base64}")
    assert queue_host.wait_idle(10)
    poison = _client(azurite_connection_string, f"{queue}-poison", base64_policy=False)
    assert [m.content for m in poison.receive_messages(max_messages=32)] == ["{not base64}"]
    assert queue_host.invocations["on_message"].poisoned == 1


def test_message_encoding_none(azurite_connection_string: str) -> None:
    config = {"extensions": {"queues": {**FAST_QUEUES["extensions"]["queues"], "messageEncoding": "none"}}}
    with LocalHost(toy_app.app, settings=_settings(azurite_connection_string), host_json=config) as h:
        body = f"raw-{uuid.uuid4().hex}"
        _client(azurite_connection_string, os.environ["TOY_QUEUE"], base64_policy=False).send_message(body)
        assert h.wait_idle(10)
        assert len(toy_app.calls_with(body)) == 1


def test_queue_output_enqueues_base64_after_success_only(host: LocalHost, azurite_connection_string: str) -> None:
    out_queue = _client(azurite_connection_string, os.environ["TOY_OUT_QUEUE"], base64_policy=False)
    assert call(host, "POST", "/api/enqueue", b"first")[0] == 202
    assert call(host, "POST", "/api/enqueue", b"two\nthree")[0] == 202
    assert call(host, "POST", "/api/enqueue", b"fail")[0] == 500
    contents = [base64.b64decode(m.content).decode() for m in out_queue.receive_messages(max_messages=32)]
    assert sorted(contents) == ["first", "three", "two"]


def test_admin_api_runs_queue_function_with_input(host: LocalHost) -> None:
    body = f"manual-{uuid.uuid4().hex}"
    payload = json.dumps({"input": body}).encode()
    assert call(host, "POST", "/admin/functions/on_message", payload)[0] == 401
    status, _, _ = call(host, "POST", "/admin/functions/on_message", payload, {"x-functions-key": host.master_key})
    assert status == 202
    assert host.wait_idle(5)
    assert len(toy_app.calls_with(body)) == 1


# ---------------------------------------------------------------------------- timers


def test_timer_fires_every_second_from_setting(azurite_connection_string: str) -> None:
    before = len(toy_app.TIMER_CALLS)
    settings = _settings(azurite_connection_string, TOY_SCHEDULE="* * * * * *")
    with LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES) as h:
        assert _wait_for(lambda: len(toy_app.TIMER_CALLS) >= before + 2, timeout=4)
        assert h.invocations["tick"].succeeded >= 2
    assert toy_app.TIMER_CALLS[-1] is False  # not past due


def test_run_on_startup_fires_once_at_start(azurite_connection_string: str) -> None:
    before = len(toy_app.STARTUP_CALLS)
    with LocalHost(toy_app.app, settings=_settings(azurite_connection_string), host_json=FAST_QUEUES) as h:
        assert _wait_for(lambda: h.invocations["startup_tick"].succeeded == 1)
    assert len(toy_app.STARTUP_CALLS) == before + 1


def test_timer_by_admin_api_and_fire_timer(host: LocalHost) -> None:
    before = host.invocations["tick"].succeeded
    headers = {"x-functions-key": host.master_key}
    assert call(host, "POST", "/admin/functions/tick", b'{"input": ""}', {"x-functions-key": host.host_key})[0] == 401
    assert call(host, "POST", "/admin/functions/tick", b'{"input": ""}', headers)[0] == 202
    assert call(host, "POST", "/admin/functions/nope", b"{}", headers)[0] == 404
    assert call(host, "POST", "/admin/functions/echo", b"{}", headers)[0] == 400
    assert host.wait_idle(5)
    host.fire_timer("tick", past_due=True)
    assert host.invocations["tick"].succeeded == before + 2
    assert toy_app.TIMER_CALLS[-1] is True
    with pytest.raises(HostError):
        host.fire_timer("echo")


# ---------------------------------------------------------------------------- settings and lifecycle


def test_missing_setting_fails_start_with_clear_error(azurite_connection_string: str) -> None:
    settings = _settings(azurite_connection_string)
    del settings["TOY_SCHEDULE"]
    host = LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES)
    saved = os.environ.pop("TOY_SCHEDULE", None)  # the module host may have set it
    try:
        with pytest.raises(HostError, match=r"tick: app setting 'TOY_SCHEDULE' \(used by function 'tick' schedule\)"):
            host.start()
        assert os.environ.get("TOY_OUT_QUEUE") != settings["TOY_OUT_QUEUE"]  # settings undone after a failed start
    finally:
        if saved is not None:
            os.environ["TOY_SCHEDULE"] = saved


def test_invalid_schedule_fails_start(azurite_connection_string: str) -> None:
    host = LocalHost(
        toy_app.app, settings=_settings(azurite_connection_string, TOY_SCHEDULE="0 */5 * * *"), host_json=FAST_QUEUES
    )
    with pytest.raises(HostError, match="expected 6 fields"):
        host.start()


def test_settings_file_does_not_override_environment(
    azurite_connection_string: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {**_settings(azurite_connection_string), "TOY_FROM_ENV": "file", "TOY_FROM_FILE": "file"}
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    monkeypatch.setenv("TOY_FROM_ENV", "env")
    monkeypatch.delenv("TOY_FROM_FILE", raising=False)
    with LocalHost(toy_app.app, settings_file=settings_file, host_json=FAST_QUEUES):
        assert os.environ["TOY_FROM_ENV"] == "env"
        assert os.environ["TOY_FROM_FILE"] == "file"
    assert "TOY_FROM_FILE" not in os.environ  # undone by stop()


def test_host_json_override_from_app_setting(azurite_connection_string: str) -> None:
    settings = _settings(azurite_connection_string, AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3")
    with LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES) as h:
        assert h.queue_options.max_dequeue_count == 3
        assert h.queue_options.visibility_timeout == 1.0


def test_stop_is_prompt_and_closes_the_port(azurite_connection_string: str) -> None:
    before = set(threading.enumerate())
    h = LocalHost(toy_app.app, settings=_settings(azurite_connection_string), host_json=FAST_QUEUES).start()
    port = h.port
    assert call(h, "GET", "/api/hello/x")[0] == 200
    started = time.monotonic()
    h.stop()
    assert time.monotonic() - started < 2.0
    leftovers = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("local-host")]
    assert leftovers == []  # pollers, timers, workers, event loop and HTTP server all joined
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/api/echo")


def test_timer_lock_held_by_one_of_two_hosts_sharing_a_host_id(azurite_connection_string: str) -> None:
    settings = _settings(azurite_connection_string, TOY_SCHEDULE="* * * * * *")
    host_id = f"toy-{uuid.uuid4().hex[:8]}"
    with LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES, host_id=host_id) as first, \
            LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES, host_id=host_id) as second:
        hosts = (first, second)
        assert _wait_for(lambda: any(h.invocations["tick"].succeeded >= 2 for h in hosts), timeout=5)
        holder, other = sorted(hosts, key=lambda h: h.invocations["tick"].succeeded, reverse=True)
        assert holder.status()["timers"]["tick"] == "held"
        assert other.status()["timers"]["tick"] == "waiting"
        assert other.invocations["tick"].started == 0
        assert first.status()["id"] == second.status()["id"] == host_id


def test_timer_without_a_blob_endpoint_runs_unlocked(azurite_connection_string: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    no_blob = ";".join(p for p in azurite_connection_string.split(";") if not p.startswith("BlobEndpoint="))
    settings = _settings(no_blob, TOY_SCHEDULE="* * * * * *")
    with caplog.at_level(logging.WARNING, logger="devhost"), \
            LocalHost(toy_app.app, settings=settings, host_json=FAST_QUEUES) as h:
        assert _wait_for(lambda: h.invocations["tick"].succeeded >= 1, timeout=4)
        assert h.status()["timers"]["tick"] == "unlocked"
    assert "runs without a singleton lock" in caplog.text
