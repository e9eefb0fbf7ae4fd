"""A toy function app for the local host tests: its own ``func.FunctionApp`` and one function per feature.

The functions record what they receive in module-level lists (fakes that record their effects);
tests tell their calls apart by unique payloads and clear nothing shared.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

POISON_MARKER = "poison-me"
SLOW_MARKER = "slow-me"  # the queue function takes SLOW_SECONDS over it
SLOW_SECONDS = 2.5
_lock = threading.Lock()
QUEUE_CALLS: list[dict[str, object]] = []
TIMER_CALLS: list[bool] = []
STARTUP_CALLS: list[bool] = []


@app.route(route="echo", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    payload = {
        "method": req.method,
        "params": dict(req.params),
        "body": req.get_body().decode("utf-8"),
        "header": req.headers.get("x-toy"),
        "url": req.url,
    }
    return func.HttpResponse(json.dumps(payload), mimetype="application/json", headers={"x-echo": "yes"})


@app.route(route="jobs/{job}", methods=[func.HttpMethod.GET])  # auth level from the app: FUNCTION
def job(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(dict(req.route_params)), status_code=200, mimetype="application/json")


@app.route(route="hello/{name}", auth_level=func.AuthLevel.ANONYMOUS)
async def hello_async(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0.01)
    return func.HttpResponse(f"hello {req.route_params['name']}")


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret-detail-42")


@app.route(route="ops/admin", auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> str:
    return "admin ok"


@app.route(route="enqueue", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@app.queue_output(arg_name="out", queue_name="%TOY_OUT_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    lines = req.get_body().decode("utf-8").split("\n")
    out.set(lines if len(lines) > 1 else lines[0])
    if lines[0] == "fail":
        raise ValueError("outputs of a failed invocation are not written")
    return func.HttpResponse(status_code=202)


@app.queue_trigger(arg_name="msg", queue_name="%TOY_QUEUE%", connection="AzureWebJobsStorage")
def on_message(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode("utf-8")
    with _lock:
        QUEUE_CALLS.append({"id": msg.id, "body": body, "dequeue_count": msg.dequeue_count})
    if SLOW_MARKER in body:
        time.sleep(SLOW_SECONDS)
    if POISON_MARKER in body:
        raise RuntimeError("poison marker")


@app.timer_trigger(arg_name="timer", schedule="%TOY_SCHEDULE%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    with _lock:
        TIMER_CALLS.append(timer.past_due)


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def startup_tick(timer: func.TimerRequest) -> None:
    with _lock:
        STARTUP_CALLS.append(timer.past_due)


def calls_with(body: str) -> list[dict[str, object]]:
    with _lock:
        return [c for c in QUEUE_CALLS if c["body"] == body]
