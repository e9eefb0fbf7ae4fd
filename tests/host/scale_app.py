"""A toy function app for several local instances (tests/host/test_instances.py): what each function does is
written to an output queue with the process id, so a test sees which instance did what from outside the processes.

- ``work``: a queue trigger on %SCALE_WORK_QUEUE% that sleeps ``seconds`` of the JSON body, then writes
  ``{"kind": "work", "id", "pid"}`` to %SCALE_DONE_QUEUE%.
- ``tick``: a timer on %SCALE_TICK_SCHEDULE% that sleeps 0.3 s and writes ``{"kind": "tick", "pid", "start",
  "end"}`` (wall-clock seconds): two records of different instances must never overlap.
- ``whoami``: GET /api/whoami answers the process id (which instance the front door chose).
"""

from __future__ import annotations

import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.queue_trigger(arg_name="msg", queue_name="%SCALE_WORK_QUEUE%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="out", queue_name="%SCALE_DONE_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
    body = json.loads(msg.get_body())
    time.sleep(float(body.get("seconds", 0)))
    out.set(json.dumps({"kind": "work", "id": body["id"], "pid": os.getpid(), "dequeue": msg.dequeue_count}))


@app.timer_trigger(arg_name="timer", schedule="%SCALE_TICK_SCHEDULE%", run_on_startup=False)
@app.queue_output(arg_name="out", queue_name="%SCALE_DONE_QUEUE%", connection="AzureWebJobsStorage")
def tick(timer: func.TimerRequest, out: func.Out[str]) -> None:
    start = time.time()
    time.sleep(0.3)
    out.set(json.dumps({"kind": "tick", "pid": os.getpid(), "start": start, "end": time.time()}))


@app.route(route="whoami", methods=["GET"])
def whoami(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(os.getpid()))
