"""The app's shape: function names, triggers, routes, auth levels (a contract), host.json, and a light import."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import azure.functions as func

from sync.triggers import BLUEPRINT_MODULES
from sync.triggers.errors import MAX_DEQUEUE_COUNT

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "graph_notifications": {"type": "httpTrigger", "route": "graph/notifications", "methods": ["POST"],
                            "authLevel": "ANONYMOUS"},
    "graph_lifecycle": {"type": "httpTrigger", "route": "graph/lifecycle", "methods": ["POST"],
                        "authLevel": "ANONYMOUS"},
    "salesforce_events": {"type": "httpTrigger", "route": "salesforce/events", "methods": ["POST"],
                          "authLevel": "ANONYMOUS"},
    "salesforce_cdc_pull": {"type": "timerTrigger", "schedule": "%CDC_PULL_SCHEDULE%"},
    "contact_worker": {"type": "queueTrigger", "queueName": "contact-changes", "connection": "AzureWebJobsStorage"},
    "reconcile_start": {"type": "httpTrigger", "route": "reconcile", "methods": ["POST"], "authLevel": "FUNCTION"},
    "reconcile_status": {"type": "httpTrigger", "route": "reconcile/{job}", "methods": ["GET"],
                         "authLevel": "FUNCTION"},
    "reconcile_timer": {"type": "timerTrigger", "schedule": "%RECONCILE_SCHEDULE%"},
    "mailbox_reconciler": {"type": "queueTrigger", "queueName": "reconcile", "connection": "AzureWebJobsStorage"},
    "subscriptions_timer": {"type": "timerTrigger", "schedule": "%SUBSCRIPTION_SCHEDULE%"},
    "subscriptions_startup": {"type": "timerTrigger", "schedule": "0 0 0 1 1 *", "runOnStartup": True},
    "subscriptions_refresh": {"type": "httpTrigger", "route": "subscriptions/refresh", "methods": ["POST"],
                              "authLevel": "FUNCTION"},
    "graph_lifecycle_worker": {"type": "queueTrigger", "queueName": "graph-lifecycle",
                               "connection": "AzureWebJobsStorage"},
    "status_page": {"type": "httpTrigger", "route": "status", "methods": ["GET"], "authLevel": "FUNCTION"},
    "review_list": {"type": "httpTrigger", "route": "review", "methods": ["GET"], "authLevel": "FUNCTION"},
    "review_decide": {"type": "httpTrigger", "route": "review/{id}", "methods": ["POST"], "authLevel": "FUNCTION"},
    "ops_jobs": {"type": "httpTrigger", "route": "ops/jobs", "methods": ["GET"], "authLevel": "FUNCTION"},
    "ops_poison_list": {"type": "httpTrigger", "route": "ops/poison/{queue}", "methods": ["GET"],
                        "authLevel": "FUNCTION"},
    "ops_poison_act": {"type": "httpTrigger", "route": "ops/poison/{queue}/{id}", "methods": ["POST"],
                       "authLevel": "FUNCTION"},
    "ops_subscriptions": {"type": "httpTrigger", "route": "ops/subscriptions", "methods": ["POST"],
                          "authLevel": "FUNCTION"},
}


def test_functions_names_triggers_routes_and_auth_levels() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)  # fresh: get_functions() once per app
    for name in BLUEPRINT_MODULES:
        app.register_functions(importlib.import_module(f"sync.triggers.{name}").bp)
    found = {}
    for fn in app.get_functions():
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        found[fn.get_function_name()] = trigger
        if trigger["type"] == "httpTrigger":
            assert any(b["type"] == "http" and b["direction"] == "OUT" for b in bindings)
        if trigger["type"] == "timerTrigger":  # only the start-up upkeep runs at start (issue 15 point 2)
            assert trigger.get("runOnStartup") is (fn.get_function_name() == "subscriptions_startup")
    assert set(found) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert {k: found[name].get(k) for k in want} == want, name


def test_function_app_registers_every_blueprint() -> None:
    import function_app

    names = {fb._function.get_function_name() for fb in function_app.app._function_builders}
    assert names == set(EXPECTED)


def test_host_json_queue_settings_match_the_worker() -> None:
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["maxDequeueCount"] == MAX_DEQUEUE_COUNT
    assert queues["messageEncoding"] == "base64"
    assert queues["visibilityTimeout"] != "00:00:00"  # a failed message is not retried at once


FORBIDDEN = ("msgraph", "azure.identity", "simple_salesforce", "grpc", "fastavro", "azure.data.tables",
             "azure.storage.queue", "kiota_http", "requests")

PROBE = f"""
import sys, time, json
t = time.perf_counter()
import function_app
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "loaded": sorted(m for m in {FORBIDDEN!r} if m in sys.modules)}}))
"""


def test_import_function_app_is_light() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nimport function_app: {result['seconds'] * 1000:.0f} ms; SDKs loaded: {result['loaded']}")
    assert result["loaded"] == []
    assert result["seconds"] < 5.0


def test_import_function_app_sets_the_third_party_log_levels_in_a_fresh_interpreter() -> None:
    probe = ("import logging, json, function_app\n"
             "from sync.bootstrap import THIRD_PARTY_LOGGERS\n"
             "print(json.dumps({n: logging.getLogger(n).level for n in THIRD_PARTY_LOGGERS}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    levels = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"azure", "httpx", "urllib3", "grpc"} <= set(levels)
    assert set(levels.values()) == {logging.WARNING}
