"""A small local Functions host: serves any azure-functions v2 ``FunctionApp``'s HTTP, queue and timer functions.

Azure Functions Core Tools cannot be installed offline (docs/reference/azure.md §1.5), so this host stands in for
``func start`` during development and tests (``python -m devhost``). It knows nothing about our functions: like the
Python worker it finds the single ``FunctionApp`` in the module (docs/reference/azure.md §1.1) and reads the library's
own metadata (``app.get_functions()``).

``LocalHost(app, port=..., settings=..., ...)`` is a context manager; tests use ``url(route)``, ``host_key``,
``master_key``, ``wait_idle(timeout)``, ``fire_timer(name)`` and ``invoke(name, input)``. What is emulated (routes
and auth levels, queue triggers with host.json ``extensions.queues`` semantics and poison queues, NCRONTAB timers,
``%SETTING%`` references) and what is not: docs/local-host.md. Each timer runs behind its singleton lock, a blob
lease shared by the instances of one host id (devhost/locks.py); ``--instances N`` runs N instances behind one front
port (devhost/instances.py, devhost/front.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hmac
import json
import logging
import math
import os
import queue
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from devhost.app import (
    FunctionSpec,
    InvocationContext,
    QueueOut,
    discover,
    find_function_app,
    load_module,
    queue_payloads,
)
from devhost.locks import (
    HOSTS_CONTAINER,
    ListenerLock,
    LockLost,
    SingletonOptions,
    lock_blob_name,
    new_host_id,
    valid_host_id,
)
from devhost.ncrontab import Schedule
from devhost.ncrontab import parse as parse_ncrontab
from devhost.settings import (
    QueueOptions,
    SettingNotFound,
    load_host_json,
    load_local_settings,
    local_http_port,
    parse_timespan,
    resolve,
    route_prefix,
)

__all__ = ["HostError", "InvocationStats", "LocalHost", "main"]

logger = logging.getLogger(__name__)

# azure-storage-queue 12.18.1 sends 2026-10-06, which Azurite (3.35.0, 3.37.0) rejects without --skipApiVersionCheck;
# 2025-11-05 works with both Azurite and Azure (docs/reference/azure.md §5).
QUEUE_API_VERSION = "2025-11-05"
# While a message is being processed it stays invisible this long, renewed at half (the runtime's 10 minutes).
PROCESSING_VISIBILITY_SECONDS = 600
MAX_BODY_BYTES = 100 * 1024 * 1024  # the HTTP trigger's request size limit
FIRST_POLL_DELAY = 0.1  # seconds; doubled on each empty poll up to maxPollingInterval
# The well-known Azurite account (its README); not a secret. Used for ``UseDevelopmentStorage=true``.
_DEV_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"  # the app setting that names the host id (locks are per host id)


class HostError(RuntimeError):
    """The app cannot be hosted as configured (missing settings, bad schedules, unknown functions...)."""


@dataclass(frozen=True)
class InvocationStats:
    """Per-function counters. ``failed`` counts failed invocations; ``poisoned`` messages moved to ``-poison``;
    ``redelivered`` messages received again (``dequeue_count > 1``: after a failure, or after a lease ran out)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    poisoned: int = 0
    redelivered: int = 0


@dataclass(frozen=True)
class _Route:
    spec: FunctionSpec
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    auth_level: str


@dataclass(frozen=True)
class _QueueTrigger:
    spec: FunctionSpec
    queue_name: str
    connection: str  # a connection string


@dataclass(frozen=True)
class _Timer:
    spec: FunctionSpec
    schedule: Schedule | None
    interval: float | None
    run_on_startup: bool


class _DaemonPool:
    """A fixed pool of daemon threads (so a hung user function never blocks interpreter exit)."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)

    def shutdown(self, timeout: float) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _EventLoopThread:
    """One asyncio loop on a daemon thread for ``async def`` functions."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="local-host-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self, timeout: float) -> None:
        def cancel_all() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(cancel_all)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def _generate_key() -> str:
    return secrets.token_urlsafe(32)


_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([^}?]+))?(\?)?\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}


def compile_route(template: str) -> re.Pattern[str]:
    """A route template (``reconcile/{job}``, ``items/{id:int}``, ``files/{*path}``, ``a/{b?}``) as a regex over the
    path after the route prefix. Literals match case-insensitively, like ASP.NET routing."""
    segments = [s for s in template.strip("/").split("/") if s]
    regex = ""
    for index, segment in enumerate(segments):
        optional = _PARAM.fullmatch(segment) is not None and segment.endswith("?}")
        part = ""
        position = 0
        for match in _PARAM.finditer(segment):
            part += re.escape(segment[position : match.start()])
            catch_all, name, constraint, _ = match.groups()
            constraint_name = (constraint or "").split("(")[0].lower()
            value = ".*" if catch_all else _CONSTRAINTS.get(constraint_name, r"[^/]+")
            part += f"(?P<{name}>{value})"
            position = match.end()
        part += re.escape(segment[position:])
        separator = "/" if index else ""
        regex += f"(?:{separator}{part})?" if optional else f"{separator}{part}"
    return re.compile(f"^{regex}/?$", re.IGNORECASE)


class LocalHost:
    """Hosts one function app on 127.0.0.1 until ``stop()``.

    ``app`` is a ``FunctionApp`` instance, a module holding exactly one, or a module name / ``.py`` path (imported at
    ``start()``, after the settings are applied). ``host_json`` is a path or a parsed dict (default: the app folder's
    host.json, if any). ``settings_file`` Values go into ``os.environ`` without overwriting what is already there;
    ``settings`` overwrite. Both are undone by ``stop()``.
    """

    def __init__(
        self,
        app: FunctionRegister | ModuleType | str,
        *,
        port: int = 0,
        host_json: str | Path | Mapping[str, Any] | None = None,
        settings: Mapping[str, str] | None = None,
        settings_file: str | Path | None = None,
        host_key: str | None = None,
        master_key: str | None = None,
        function_keys: Mapping[str, str | Iterable[str]] | None = None,
        enforce_auth: bool = True,
        workers: int = 32,
        message_lease_s: float = PROCESSING_VISIBILITY_SECONDS,
        host_id: str | None = None,
        instance: str = "",
    ) -> None:
        self._app_source = app
        self._requested_port = port
        self._host_json_source = host_json
        self._settings = dict(settings or {})
        self._settings_file = settings_file
        self.host_key = host_key or _generate_key()
        self.master_key = master_key or _generate_key()
        self._function_keys = {
            name: [keys] if isinstance(keys, str) else list(keys) for name, keys in (function_keys or {}).items()
        }
        self.enforce_auth = enforce_auth
        self._workers = workers
        # How long a received message stays invisible while it is processed, renewed at half (``_holding``), as the
        # runtime does with 10 minutes; a host killed mid-batch renews nothing, so its messages come back when this
        # runs out. Tests that kill a host shorten it (``--message-lease``) to see the redelivery without waiting.
        self.message_lease_s = message_lease_s
        # Instances of one app share timers (one runs each) when they share a host id: ``host_id``, else the app
        # setting AzureFunctionsWebHost__hostid, else one of this host's own (docs/local-host.md, "Several instances").
        self._host_id_arg = host_id
        self.host_id = ""
        self.instance = instance  # a name for logs and /admin/host/status, e.g. "i2"
        self.singleton = SingletonOptions()
        self._timer_states: dict[str, str] = {}

        self.functions: dict[str, FunctionSpec] = {}
        self.queue_options = QueueOptions()
        self.route_prefix = "api"
        self._routes: list[_Route] = []
        self._queue_triggers: list[_QueueTrigger] = []
        self._timers: list[_Timer] = []
        self._script_root = Path.cwd()

        self._lock = threading.Condition()
        self._stats: dict[str, InvocationStats] = {}
        self._busy = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: dict[tuple[str, str], Any] = {}
        self._env_undo: dict[str, str | None] = {}
        self._server: ThreadingHTTPServer | None = None
        self._pool: _DaemonPool | None = None
        self._loop: _EventLoopThread | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalHost:
        if self._started:
            raise HostError("LocalHost already started")
        self._apply_settings()
        try:
            app = self._load_app()
            config = load_host_json(self._host_json_file(), os.environ)
            self.queue_options = QueueOptions.from_host_config(config)
            self.route_prefix = route_prefix(config)
            self.singleton = SingletonOptions.from_host_config(config)
            self.host_id = valid_host_id(self._host_id_arg or os.environ.get(HOST_ID_SETTING) or new_host_id())
            self._index(app)
            self._stopping.clear()
            self._pool = _DaemonPool(self._workers, "local-host-worker")
            self._loop = _EventLoopThread()
            for trigger in self._queue_triggers:
                self._client(trigger.connection, trigger.queue_name)  # creates the queue if missing
            self._start_http()
            self._started = True
            for trigger in self._queue_triggers:
                self._spawn(self._poll_queue, trigger, name=f"local-host-queue-{trigger.spec.name}")
            for timer in self._timers:
                self._spawn(self._run_timer, timer, name=f"local-host-timer-{timer.spec.name}")
        except BaseException:
            self._shutdown(timeout=5)
            raise
        logger.info("Local functions host listening on %s (%d functions)", self.base_url, len(self.functions))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pollers, timers and the HTTP server; wait up to ``timeout`` for running invocations."""
        if not self._started:
            return
        self._started = False
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        with self._lock:
            self._lock.wait_for(lambda: self._busy == 0, max(0.0, deadline - time.monotonic()))
        if self._pool is not None:
            self._pool.shutdown(max(0.0, deadline - time.monotonic()))
        if self._loop is not None:
            self._loop.stop(max(0.1, deadline - time.monotonic()))
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self._server = self._pool = self._loop = None
        self._restore_settings()

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise HostError("LocalHost is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, route: str) -> str:
        """The URL of an HTTP route, with the route prefix: ``host.url("ops/health")``."""
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        return f"{self.base_url}{prefix}/{route.lstrip('/')}"

    @property
    def invocations(self) -> dict[str, InvocationStats]:
        """A snapshot of the per-function counters."""
        with self._lock:
            return dict(self._stats)

    def status(self) -> dict[str, Any]:
        """What ``GET /admin/host/status`` answers: the runtime's ``id`` and ``state``, and (local only) the
        functions, ``instance``, ``pid``, ``busy`` (invocations running), each timer's lock state (``held`` /
        ``waiting`` / ``unlocked``) and the invocation counters."""
        with self._lock:
            busy = self._busy
            stats = dict(self._stats)
            timers = dict(self._timer_states)
        return {
            "id": self.host_id, "state": "Running", "functions": sorted(self.functions), "instance": self.instance,
            "pid": os.getpid(), "busy": busy, "timers": timers,
            "invocations": {name: _stats_dict(s) for name, s in stats.items()},
        }

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every trigger queue is empty (invisible messages included) and nothing runs; False on timeout."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self._is_idle():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 0.1:
                    return True
            else:
                quiet_since = None
            time.sleep(0.05)
        return False

    def _is_idle(self) -> bool:
        with self._lock:
            if self._busy:
                return False
        for trigger in self._queue_triggers:
            properties = self._client(trigger.connection, trigger.queue_name).get_queue_properties()
            if properties.approximate_message_count:
                return False
        return True

    # ------------------------------------------------------------------ settings and indexing

    def _apply_settings(self) -> None:
        if self._settings_file is not None:
            for name, value in load_local_settings(self._settings_file).items():
                if name not in os.environ:
                    self._set_env(name, value)
        for name, value in self._settings.items():
            self._set_env(name, value)

    def _set_env(self, name: str, value: str) -> None:
        if name not in self._env_undo:
            self._env_undo[name] = os.environ.get(name)
        os.environ[name] = value

    def _restore_settings(self) -> None:
        for name, previous in self._env_undo.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
        self._env_undo.clear()

    def _load_app(self) -> FunctionRegister:
        source = self._app_source
        if isinstance(source, str):
            source = load_module(source)
        if isinstance(source, ModuleType):
            if getattr(source, "__file__", None):
                self._script_root = Path(source.__file__).resolve().parent  # type: ignore[arg-type]
            return find_function_app(source)
        if isinstance(source, FunctionRegister):
            return source
        raise HostError(f"not a function app, module or module name: {source!r}")

    def _host_json_file(self) -> str | Path | Mapping[str, Any] | None:
        if self._host_json_source is not None:
            return self._host_json_source
        candidate = self._script_root / "host.json"
        return candidate if candidate.exists() else None

    def _index(self, app: FunctionRegister) -> None:
        problems: list[str] = []
        self.functions = {spec.name: spec for spec in discover(app)}
        self._routes, self._queue_triggers, self._timers = [], [], []
        with self._lock:
            self._stats = {name: InvocationStats() for name in self.functions}
        for spec in self.functions.values():
            try:
                self._index_function(spec)
            except (SettingNotFound, ValueError, HostError) as exc:
                problems.append(f"{spec.name}: {exc}")
        if problems:
            raise HostError("cannot host the function app:\n  " + "\n  ".join(problems))

    def _index_function(self, spec: FunctionSpec) -> None:
        settings = os.environ
        what = f"function {spec.name!r}"
        for binding in spec.unsupported_bindings:
            logger.warning(
                "Function %s: binding %r of type %r is not emulated; invocations will fail",
                spec.name, binding.get("name"), binding.get("type"),
            )
        # resolve queue output bindings now so a missing %SETTING% fails at start, as in the runtime
        resolved = tuple(self._resolve_binding(b, what) for b in spec.bindings)
        trigger = next(b for b, original in zip(resolved, spec.bindings, strict=True) if original is spec.trigger)
        spec = replace(spec, bindings=resolved, trigger=trigger)
        self.functions[spec.name] = spec
        for binding in spec.output_bindings:
            if binding.get("type") == "queue":
                self._queue_name(binding["queueName"])
                self._connection(binding, what)
        kind = spec.trigger_type
        if kind == "httpTrigger":
            methods = trigger.get("methods")
            self._routes.append(
                _Route(
                    spec=spec,
                    pattern=compile_route(str(trigger.get("route") or spec.name)),
                    methods=frozenset(str(m).upper() for m in methods) if methods else None,
                    auth_level=str(trigger.get("authLevel", "FUNCTION")).lower(),
                )
            )
        elif kind == "queueTrigger":
            self._queue_triggers.append(
                _QueueTrigger(spec, self._queue_name(trigger["queueName"]), self._connection(trigger, what))
            )
        elif kind == "timerTrigger":
            schedule_text = str(resolve(trigger["schedule"], settings, f"{what} schedule"))
            schedule, interval = self._parse_schedule(schedule_text)
            self._timers.append(_Timer(spec, schedule, interval, bool(trigger.get("runOnStartup"))))
        else:
            raise HostError(f"trigger type {kind!r} is not emulated by the local host")

    def _resolve_binding(self, binding: dict[str, Any], what: str) -> dict[str, Any]:
        keys = ("queueName", "connection", "schedule", "route")
        return {k: resolve(v, os.environ, f"{what} {k}") if k in keys else v for k, v in binding.items()}

    @staticmethod
    def _parse_schedule(text: str) -> tuple[Schedule | None, float | None]:
        if re.fullmatch(r"(\d+\.)?\d{1,2}:\d{1,2}:\d{1,2}", text.strip()):
            interval = parse_timespan(text, "timer schedule")
            if interval <= 0:
                raise HostError(f"timer interval {text!r} must be positive")
            return None, interval
        return parse_ncrontab(text), None

    @staticmethod
    def _queue_name(name: str) -> str:
        normalised = str(name).lower()  # the queue extension lower-cases names
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", normalised):
            raise HostError(f"{name!r} is not a valid queue name (3-63 chars: lowercase letters, digits, dashes)")
        return normalised

    @staticmethod
    def _connection(binding: Mapping[str, Any], what: str) -> str:
        """The connection string named by the binding's ``connection`` (default ``AzureWebJobsStorage``)."""
        name = str(binding.get("connection") or "AzureWebJobsStorage")
        for candidate in (name, f"AzureWebJobs{name}"):
            value = os.environ.get(candidate)
            if value:
                if value.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
                    return _DEV_STORAGE
                return value
        if any(key.startswith(f"{name}__") for key in os.environ):
            raise HostError(f"{what}: identity-based connection {name}__* is not emulated; set {name} to Azurite")
        raise SettingNotFound(name, f"{what} connection")

    # ------------------------------------------------------------------ invocation

    def _spawn(self, target: Callable[..., Any], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _count(self, name: str, **increments: int) -> None:
        with self._lock:
            stats = self._stats.get(name, InvocationStats())
            self._stats[name] = replace(stats, **{k: getattr(stats, k) + v for k, v in increments.items()})

    @contextlib.contextmanager
    def _busy_scope(self) -> Any:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    def _invoke(
        self, spec: FunctionSpec, trigger_value: Any, reason: str, outputs: dict[str, QueueOut] | None = None
    ) -> Any:
        """Run one invocation: bind arguments, call the user function, write output bindings on success.
        ``outputs`` (if given) receives the function's ``func.Out`` objects by parameter name."""
        invocation_id = str(uuid.uuid4())
        started = time.monotonic()
        self._count(spec.name, started=1)
        logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        try:
            kwargs, bound_outputs = self._bind(spec, trigger_value, invocation_id)
            if outputs is not None:
                outputs.update(bound_outputs)
            if spec.is_async:
                if self._loop is None:
                    raise HostError("LocalHost is not started")
                result = self._loop.run(spec.user_function(**kwargs))
            else:
                result = spec.user_function(**kwargs)
            self._write_outputs(spec, bound_outputs, result)
        except Exception:
            self._count(spec.name, failed=1)
            logger.exception(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
                spec.name, invocation_id, (time.monotonic() - started) * 1000,
            )
            raise
        self._count(spec.name, succeeded=1)
        logger.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            spec.name, invocation_id, (time.monotonic() - started) * 1000,
        )
        return result

    def _bind(
        self, spec: FunctionSpec, trigger_value: Any, invocation_id: str
    ) -> tuple[dict[str, Any], dict[str, QueueOut]]:
        by_name = {b.get("name"): b for b in spec.bindings}
        kwargs: dict[str, Any] = {}
        outputs: dict[str, QueueOut] = {}
        for parameter in spec.parameters:
            binding = by_name.get(parameter)
            if binding is spec.trigger:
                kwargs[parameter] = trigger_value
            elif binding is not None and binding.get("type") in ("queue", "http"):
                kwargs[parameter] = outputs[parameter] = QueueOut()
            elif binding is not None:
                raise HostError(f"binding {parameter!r} of type {binding.get('type')!r} is not emulated")
            elif parameter == "context":
                kwargs[parameter] = InvocationContext(invocation_id, spec.name, str(self._script_root))
        return kwargs, outputs

    def _write_outputs(self, spec: FunctionSpec, outputs: Mapping[str, QueueOut], result: Any) -> None:
        for binding in spec.output_bindings:
            if binding.get("type") != "queue":
                continue
            name = binding.get("name")
            value = result if name == "$return" else outputs[name].get() if name in outputs else None
            texts = queue_payloads(value)
            if texts:
                queue_name = self._queue_name(binding["queueName"])
                client = self._client(self._connection(binding, f"function {spec.name!r}"), queue_name)
                for text in texts:
                    client.send_message(self._encode(text))

    # ------------------------------------------------------------------ queues

    def _client(self, connection: str, queue_name: str) -> Any:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.queue import QueueClient

        key = (connection, queue_name)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        client = QueueClient.from_connection_string(connection, queue_name, api_version=QUEUE_API_VERSION)
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        with self._lock:
            return self._clients.setdefault(key, client)

    def _encode(self, text: str) -> str:
        if self.queue_options.message_encoding == "base64":
            return base64.b64encode(text.encode("utf-8")).decode("ascii")
        return text

    def _decode(self, content: str) -> bytes:
        if self.queue_options.message_encoding == "base64":
            return base64.b64decode(content.encode("ascii"), validate=True)
        return content.encode("utf-8")

    def _poll_queue(self, trigger: _QueueTrigger) -> None:
        options = self.queue_options
        client = self._client(trigger.connection, trigger.queue_name)
        delay = 0.0
        while not self._stopping.is_set():
            try:
                messages = list(
                    client.receive_messages(
                        messages_per_page=options.batch_size,
                        max_messages=options.batch_size,
                        visibility_timeout=max(1, math.ceil(self.message_lease_s)),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - keep polling; the storage emulator may be restarting
                if self._stopping.is_set():
                    return
                logger.warning("Polling queue %s failed: %s", trigger.queue_name, type(exc).__name__)
                messages = []
            if messages:
                delay = 0.0
                with self._busy_scope():
                    pool = self._pool
                    if pool is None:
                        return
                    wait_futures([pool.submit(self._settle, trigger, client, m) for m in messages])
                continue
            delay = min(max(delay * 2, FIRST_POLL_DELAY), options.max_polling_interval)
            self._stopping.wait(delay)

    def _process_message(self, trigger: _QueueTrigger, client: Any, message: Any) -> None:
        spec, options = trigger.spec, self.queue_options
        with self._busy_scope():
            if message.dequeue_count > 1:
                self._count(spec.name, redelivered=1)
            if message.dequeue_count > options.max_dequeue_count:
                # e.g. the host died while processing: poison without another attempt, as the runtime does
                self._poison(trigger, client, message)
                return
            try:
                body = self._decode(message.content)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                logger.error(
                    "Message %s on %s is not valid %s", message.id, trigger.queue_name, options.message_encoding
                )
                self._count(spec.name, started=1, failed=1)
                self._retry_or_poison(trigger, client, message)
                return
            queue_message = QueueMessage(
                id=message.id,
                body=body,
                dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
            reason = f"New queue message detected on '{trigger.queue_name}'."
            try:
                with self._holding(trigger, client, message):
                    self._invoke(spec, self._queue_argument(spec, queue_message), reason)
            except Exception:  # noqa: BLE001 - logged by _invoke; the message is retried
                self._retry_or_poison(trigger, client, message)
            else:
                client.delete_message(message.id, message.pop_receipt)

    @contextlib.contextmanager
    def _holding(self, trigger: _QueueTrigger, client: Any, message: Any) -> Any:
        """Keep a message invisible while it is processed: its visibility is renewed for ``message_lease_s`` when
        half of it is left, as the queue listener does (docs/reference/azure.md §1.3); the new pop receipt replaces
        the old one. An instance that dies renews nothing, so its messages reappear within one lease."""
        lease = max(1, math.ceil(self.message_lease_s))
        done = threading.Event()
        guard = threading.Lock()

        def renew() -> None:
            delay = lease / 2
            while not done.wait(delay):
                with guard:
                    if done.is_set():
                        return
                    try:
                        receipt = client.update_message(message.id, message.pop_receipt, visibility_timeout=lease)
                    except Exception as exc:  # noqa: BLE001 - try again sooner, before the lease runs out
                        logger.warning("Renewing message %s on %s failed: %s", message.id, trigger.queue_name,
                                       type(exc).__name__)
                        delay = 1.0
                        continue
                    message.pop_receipt, delay = receipt.pop_receipt, lease / 2

        threading.Thread(target=renew, name="local-host-message-lease", daemon=True).start()
        try:
            yield
        finally:
            with guard:
                done.set()

    def _settle(self, trigger: _QueueTrigger, client: Any, message: Any) -> None:
        """Process one received message; storage errors while settling it are logged (the message then reappears
        after the processing visibility timeout, as when the real host loses a message lease)."""
        try:
            self._process_message(trigger, client, message)
        except Exception as exc:  # noqa: BLE001 - a poller must survive storage hiccups
            logger.warning("Settling message %s on %s failed: %s", message.id, trigger.queue_name, type(exc).__name__)

    @staticmethod
    def _queue_argument(spec: FunctionSpec, message: QueueMessage) -> Any:
        annotation = spec.annotations.get(str(spec.trigger["name"]))
        if annotation in (str, "str"):
            return message.get_body().decode("utf-8")
        if annotation in (bytes, "bytes"):
            return message.get_body()
        return message

    def _retry_or_poison(self, trigger: _QueueTrigger, client: Any, message: Any) -> None:
        if message.dequeue_count >= self.queue_options.max_dequeue_count:
            self._poison(trigger, client, message)
            return
        client.update_message(
            message.id,
            message.pop_receipt,
            visibility_timeout=math.ceil(self.queue_options.visibility_timeout),
        )

    def _poison(self, trigger: _QueueTrigger, client: Any, message: Any) -> None:
        poison_name = f"{trigger.queue_name}-poison"
        logger.warning(
            "Message %s has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            message.id, self.queue_options.max_dequeue_count, poison_name,
        )
        self._client(trigger.connection, poison_name).send_message(message.content)
        client.delete_message(message.id, message.pop_receipt)
        self._count(trigger.spec.name, poisoned=1)

    # ------------------------------------------------------------------ timers and manual triggers

    def _timer_lock(self, timer: _Timer) -> ListenerLock | None:
        """The singleton lock of a timer's listener, or None when AzureWebJobsStorage has no Blob endpoint (a
        connection string naming only queue and table endpoints): then this instance runs the timer unguarded."""
        try:
            connection = self._connection({}, f"timer {timer.spec.name!r} singleton lock")
        except (SettingNotFound, HostError):
            connection = ""
        lowered = connection.lower()
        if not connection or ("endpoint=" in lowered and "blobendpoint=" not in lowered):
            logger.warning("Timer %s runs without a singleton lock: AzureWebJobsStorage has no Blob endpoint",
                           timer.spec.name)
            return None
        from azure.storage.blob import BlobServiceClient

        container = BlobServiceClient.from_connection_string(connection).get_container_client(HOSTS_CONTAINER)
        return ListenerLock(container, lock_blob_name(self.host_id, timer.spec.name),
                            self.singleton.listener_lock_period)

    def _set_timer_state(self, name: str, state: str) -> None:
        with self._lock:
            previous = self._timer_states.get(name)
            self._timer_states[name] = state
        if previous != state and state != "unlocked":
            logger.info("Timer %s: singleton lock %s (instance %s)", name, state, self.instance or "-")

    def _run_timer(self, timer: _Timer) -> None:
        """The timer's listener behind its singleton lock (docs/reference/azure.md §1.6): take the lease or retry
        every recovery interval; while it is held, renew it at half its period and run the schedule; when it is
        lost, stop firing and try again; at stop, release it once the running invocation has ended."""
        name = timer.spec.name
        try:
            lock = self._timer_lock(timer)
        except Exception as exc:  # noqa: BLE001 - a bad connection string: the timer cannot be guarded
            logger.warning("Timer %s: no singleton lock (%s)", name, type(exc).__name__)
            lock = None
        while not self._stopping.is_set():
            if lock is not None:
                try:
                    acquired = lock.try_acquire()
                except Exception as exc:  # noqa: BLE001 - storage down: try again at the next recovery poll
                    logger.warning("Timer %s: taking the singleton lock failed: %s", name, type(exc).__name__)
                    acquired = False
                if not acquired:
                    self._set_timer_state(name, "waiting")
                    if self._stopping.wait(self.singleton.listener_lock_recovery_polling_interval):
                        return
                    continue
            self._set_timer_state(name, "held" if lock is not None else "unlocked")
            lost, done = threading.Event(), threading.Event()
            if lock is not None:
                threading.Thread(target=self._renew_lock, args=(lock, lost, done), daemon=True,
                                 name=f"local-host-lease-{name}").start()
            try:
                self._listen(timer, lost)
            finally:
                done.set()
                if lock is not None and not lost.is_set():
                    with contextlib.suppress(Exception):
                        lock.release()
            if lost.is_set():
                logger.warning("Timer %s: singleton lock lost; this instance stops firing it", name)
                self._set_timer_state(name, "waiting")

    def _renew_lock(self, lock: ListenerLock, lost: threading.Event, done: threading.Event) -> None:
        """Renew at half the lease period (sooner after a failed renewal); set ``lost`` if the lease is gone or
        could not be renewed for a whole period."""
        period = self.singleton.listener_lock_period
        last_ok = time.monotonic()
        delay = period / 2
        while not done.wait(delay):
            try:
                lock.renew()
            except LockLost:
                lost.set()
                return
            except Exception as exc:  # noqa: BLE001 - storage hiccup: retry sooner, before the lease runs out
                logger.warning("Renewing singleton lock %s failed: %s", lock.blob_name, type(exc).__name__)
                if time.monotonic() - last_ok >= period:
                    lost.set()
                    return
                delay = 1.0
                continue
            last_ok, delay = time.monotonic(), period / 2

    def _listen(self, timer: _Timer, lost: threading.Event) -> None:
        """The schedule, from now until stop or until ``lost``; ``run_on_startup`` fires when the listener starts
        (on the instance that took the lock)."""
        last: dt.datetime | None = None
        if timer.run_on_startup:
            last = dt.datetime.now(dt.UTC)
            self._fire(timer, past_due=False, last=None)
        while not self._stopping.is_set() and not lost.is_set():
            now = dt.datetime.now(dt.UTC)
            due = self._next_occurrence(timer, now, last)
            while not lost.is_set():
                wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
                if wait <= 0:
                    break
                if self._stopping.wait(min(wait, 0.25)):
                    return
            if lost.is_set() or self._stopping.is_set():
                return
            late = (dt.datetime.now(dt.UTC) - due).total_seconds() > 1.0
            self._fire(timer, past_due=late, last=last)
            last = due

    @staticmethod
    def _next_occurrence(timer: _Timer, now: dt.datetime, last: dt.datetime | None) -> dt.datetime:
        if timer.schedule is not None:
            return timer.schedule.next_after(now)
        interval = dt.timedelta(seconds=timer.interval or 0)
        return max((last or now) + interval, now)

    def _fire(self, timer: _Timer, *, past_due: bool, last: dt.datetime | None) -> Any:
        now = dt.datetime.now(dt.UTC)
        status = {
            "Last": (last or now).isoformat(),
            "Next": self._next_occurrence(timer, now, now).isoformat(),
            "LastUpdated": now.isoformat(),
        }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        with self._busy_scope():
            try:
                return self._invoke(timer.spec, request, "Timer fired at " + now.isoformat())
            except Exception:  # noqa: BLE001 - logged by _invoke; the next occurrence runs as scheduled
                return None

    def fire_timer(self, function_name: str, *, past_due: bool = False) -> Any:
        """Run a timer function now, in the caller's thread; its exception (if any) propagates."""
        timer = next((t for t in self._timers if t.spec.name == function_name), None)
        if timer is None:
            raise HostError(f"{function_name!r} is not a timer function of this app")
        with self._busy_scope():
            return self._invoke(timer.spec, TimerRequest(past_due=past_due), "Manually triggered")

    def invoke(self, function_name: str, input: str = "") -> Any:  # noqa: A002 - Core Tools' name for the payload
        """Run a non-HTTP function now with ``input`` (like ``POST /admin/functions/<name>``), in the caller's thread.

        Timer functions get a ``TimerRequest``; queue functions a ``QueueMessage`` whose body is ``input`` (the queue
        itself is not involved, as with Core Tools)."""
        spec = self.functions.get(function_name)
        if spec is None:
            raise HostError(f"no function named {function_name!r}")
        if spec.trigger_type == "timerTrigger":
            value: Any = TimerRequest(past_due=False)
        elif spec.trigger_type == "queueTrigger":
            message = QueueMessage(id=str(uuid.uuid4()), body=input.encode("utf-8"), dequeue_count=1)
            value = self._queue_argument(spec, message)
        else:
            raise HostError(f"{function_name!r} is an HTTP function: call its route instead")
        with self._busy_scope():
            return self._invoke(spec, value, "Manually triggered")

    # ------------------------------------------------------------------ HTTP

    def _start_http(self) -> None:
        host = self

        class Handler(_RequestHandler):
            local_host = host

        server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), Handler)
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="local-host-http", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _key_ok(self, key: str | None, level: str, function_name: str | None) -> bool:
        if not self.enforce_auth or level == "anonymous":
            return True
        if not key:
            return False
        candidates = [self.master_key]
        if level == "function":
            candidates += [self.host_key, *self._function_keys.get(function_name or "", [])]
        return any(hmac.compare_digest(key.encode(), candidate.encode()) for candidate in candidates)

    def handle_http(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Route one request; returns (status, headers, body). Used by the HTTP server, callable from tests."""
        parts = urlsplit(target)
        path = parts.path
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        lowered = {k.lower(): v for k, v in headers.items()}
        key = lowered.get("x-functions-key") or params.get("code")
        if path.rstrip("/").lower().startswith("/admin/"):
            return self._handle_admin(method, path, key, body)
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        if prefix and not (path.lower().startswith(prefix.lower() + "/") or path.lower() == prefix.lower()):
            return _text(HTTPStatus.NOT_FOUND)
        remainder = path[len(prefix) :].lstrip("/")
        matches = [(route, m) for route in self._routes if (m := route.pattern.match(remainder))]
        if not matches:
            return _text(HTTPStatus.NOT_FOUND)
        allowed = [(r, m) for r, m in matches if r.methods is None or method.upper() in r.methods]
        if not allowed:
            methods = sorted({x for r, _ in matches for x in (r.methods or ())})
            status, response_headers, payload = _text(HTTPStatus.METHOD_NOT_ALLOWED)
            return status, [*response_headers, ("Allow", ", ".join(methods))], payload
        route, match = allowed[0]
        if not self._key_ok(key, route.auth_level, route.spec.name):
            return _text(HTTPStatus.UNAUTHORIZED)
        request = func.HttpRequest(
            method=method.upper(),
            url=f"{self.base_url}{target}",
            headers=dict(headers),
            params=params,
            route_params={k: unquote(v) for k, v in match.groupdict().items() if v is not None},
            body=body,
        )
        pool = self._pool
        if pool is None:
            return _text(HTTPStatus.SERVICE_UNAVAILABLE)
        with self._busy_scope():
            future = pool.submit(self._invoke_http, route.spec, request)
            try:
                return future.result()
            except Exception:  # noqa: BLE001 - details are logged by _invoke, never sent to the client
                return _text(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _invoke_http(self, spec: FunctionSpec, request: func.HttpRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        outputs: dict[str, QueueOut] = {}
        result = self._invoke(spec, request, "This function was programmatically called via the host APIs.", outputs)
        http_out = next((b["name"] for b in spec.output_bindings if b.get("type") == "http"), "$return")
        if http_out != "$return" and http_out in outputs:
            result = outputs[http_out].get()
        try:
            return _http_response(result)
        except TypeError as exc:
            logger.error("Function %s returned an unusable HTTP response: %s", spec.name, exc)
            raise

    def _handle_admin(
        self, method: str, path: str, key: str | None, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if not self._key_ok(key, "admin", None):
            return _text(HTTPStatus.UNAUTHORIZED)
        if segments == ["admin", "host", "status"] and method.upper() == "GET":
            return _json(HTTPStatus.OK, self.status())
        if len(segments) != 3 or segments[:2] != ["admin", "functions"]:
            return _text(HTTPStatus.NOT_FOUND)
        if method.upper() != "POST":
            return _text(HTTPStatus.METHOD_NOT_ALLOWED)
        name = next((n for n in self.functions if n.lower() == segments[2].lower()), None)
        if name is None:
            return _text(HTTPStatus.NOT_FOUND)
        if self.functions[name].is_http:
            return _json(HTTPStatus.BAD_REQUEST, {"error": "HTTP functions are called on their route"})
        try:
            payload = json.loads(body or b"{}")
            text = payload.get("input", "") if isinstance(payload, dict) else ""
        except ValueError:
            return _json(HTTPStatus.BAD_REQUEST, {"error": 'body must be JSON like {"input": "..."}'})
        pool = self._pool
        if pool is None:
            return _text(HTTPStatus.SERVICE_UNAVAILABLE)
        self._submit_background(pool, name, text if isinstance(text, str) else json.dumps(text))
        return HTTPStatus.ACCEPTED, [("Content-Length", "0")], b""

    def _submit_background(self, pool: _DaemonPool, name: str, text: str) -> None:
        with self._lock:
            self._busy += 1  # released when the background invocation ends, so wait_idle covers it

        def run() -> None:
            try:
                with contextlib.suppress(Exception):  # logged by _invoke
                    self.invoke(name, text)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()

        pool.submit(run)


def _stats_dict(stats: Any) -> dict[str, int]:
    return {k: int(getattr(stats, k)) for k in ("started", "succeeded", "failed", "poisoned", "redelivered")}



def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, by Content-Length or chunked; ``ValueError`` past ``MAX_BODY_BYTES`` (the local host's and
    the front door's handlers)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("body too large")
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY_BYTES:
        raise ValueError("body too large")
    return handler.rfile.read(length) if length else b""

def _text(status: HTTPStatus) -> tuple[int, list[tuple[str, str]], bytes]:
    return int(status), [("Content-Type", "text/plain; charset=utf-8")], status.phrase.encode()


def _json(status: HTTPStatus, payload: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return int(status), [("Content-Type", "application/json")], json.dumps(payload).encode()


def _http_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of what an HTTP function returned (HttpResponse, str/bytes or None)."""
    if isinstance(result, func.HttpResponse):
        headers = [(str(k), str(v)) for k, v in result.headers.items()]
        if not any(k.lower() == "content-type" for k, _ in headers):
            mimetype = result.mimetype or "text/plain"
            charset = result.charset or "utf-8"
            content_type = f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
            headers.append(("Content-Type", content_type))
        return int(result.status_code), headers, result.get_body() or b""
    if isinstance(result, str):
        return 200, [("Content-Type", "text/plain; charset=utf-8")], result.encode("utf-8")
    if isinstance(result, bytes):
        return 200, [("Content-Type", "application/octet-stream")], result
    if result is None:
        return 204, [], b""
    raise TypeError(f"an HTTP function must return func.HttpResponse or str, not {type(result).__name__}")


class _RequestHandler(BaseHTTPRequestHandler):
    local_host: LocalHost
    server_version = "LocalFunctionsHost/1.0"
    disable_nagle_algorithm = True  # answer in one go: no stall on the client's delayed ACK (see the emulators)

    def _handle(self) -> None:
        try:
            body = read_body(self)
        except ValueError:
            self._send(*_text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
            return
        headers = {k: v for k, v in self.headers.items()}
        self._send(*self.local_host.handle_http(self.command, self.path, headers, body))

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("HTTP %s", self.command)  # no paths or bodies: they may carry personal data


# ---------------------------------------------------------------------- command line


def _describe(host: LocalHost) -> str:
    lines = ["", "Functions:", ""]
    for name, spec in sorted(host.functions.items()):
        trigger = spec.trigger
        if spec.trigger_type == "httpTrigger":
            methods = ",".join(trigger.get("methods") or ["ALL"])
            lines.append(f"        {name}: [{methods}] {host.url(str(trigger.get('route') or name))}")
        else:
            lines.append(f"        {name}: {spec.trigger_type}")
    lines += [
        "",
        f"Host key (x-functions-key or ?code=): {host.host_key}",
        f"Master key (admin level, POST {host.base_url}/admin/functions/<name>): {host.master_key}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="function_app", help="module name or .py path (default: function_app)")
    parser.add_argument(
        "--port", type=int, help="port on 127.0.0.1; 0 picks a free one (default: Host.LocalHttpPort or 7071)"
    )
    parser.add_argument("--settings", help="local.settings.json (default: ./local.settings.json if present)")
    parser.add_argument("--host-json", help="host.json (default: next to the app module)")
    parser.add_argument("--host-key", default=os.environ.get("LOCAL_HOST_KEY"), help="default: generated")
    parser.add_argument("--master-key", default=os.environ.get("LOCAL_MASTER_KEY"), help="default: generated")
    parser.add_argument("--no-auth", action="store_true", help="do not enforce keys (like Core Tools locally)")
    parser.add_argument(
        "--message-lease", type=float, default=PROCESSING_VISIBILITY_SECONDS,
        help="seconds a queue message stays invisible while processed; a killed host's messages reappear after it "
        f"(default: {PROCESSING_VISIBILITY_SECONDS}, the runtime's 10 minutes)",
    )
    parser.add_argument(
        "--instances", type=int, default=1,
        help="run N instances (processes) behind one front port, as the platform scales out: queue consumers "
        "compete, each timer runs on one instance (default 1)",
    )
    parser.add_argument("--host-id", default=None,
                        help="instances with one host id share timer locks (default: AzureFunctionsWebHost__hostid, "
                        "else a new one; --instances gives its instances one)")
    parser.add_argument("--instance", default="", help=argparse.SUPPRESS)  # the name of a child instance
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    tag = f"[{args.instance}] " if args.instance else ""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s {tag}%(levelname)s %(name)s [%(threadName)s] %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO
    sys.path.insert(0, os.getcwd())
    settings_file = args.settings or ("local.settings.json" if Path("local.settings.json").exists() else None)
    port = args.port
    if port is None:
        port = local_http_port(settings_file) if settings_file else 7071
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if args.instances > 1:
        return _run_instances(args, port, settings_file)
    host = LocalHost(
        args.app,
        port=port,
        host_json=args.host_json,
        settings_file=settings_file,
        host_key=args.host_key,
        master_key=args.master_key,
        enforce_auth=not args.no_auth,
        message_lease_s=args.message_lease,
        host_id=args.host_id,
        instance=args.instance,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        host.start()
    except HostError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(_describe(host), flush=True)
    try:
        stop.wait()
    finally:
        host.stop()
    return 0


def _run_instances(args: argparse.Namespace, port: int, settings_file: str | None) -> int:
    """N child hosts with the same app, settings, keys and host id, behind a front door on ``port``."""
    from devhost.instances import run

    host_key = args.host_key or _generate_key()
    master_key = args.master_key or _generate_key()
    host_id = valid_host_id(args.host_id or os.environ.get(HOST_ID_SETTING) or new_host_id())
    child = ["--app", args.app, "--host-key", host_key, "--master-key", master_key, "--host-id", host_id,
             "--message-lease", str(args.message_lease)]
    if settings_file:
        child += ["--settings", settings_file]
    if args.host_json:
        child += ["--host-json", args.host_json]
    if args.no_auth:
        child.append("--no-auth")
    if args.verbose:
        child.append("--verbose")
    return run(args.instances, child, port=port, master_key=master_key, host_key=host_key)

