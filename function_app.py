"""Azure Functions entry point (Python v2 programming model).

Registers the blueprints of ``sync/triggers`` and sets the SDKs' log levels (``bootstrap.quiet_third_party_loggers``:
at Information they would log URLs with personal data), nothing else. Nothing here imports the Graph, Salesforce or
Azure storage SDKs or touches the network: clients are built lazily by ``sync.bootstrap`` on first use (cold start,
docs/reference/azure.md §2; tests/functions checks it in a fresh interpreter).
"""

import azure.functions as func

from sync import bootstrap
from sync.triggers import graph, ops, reconcile, review, salesforce, status, worker

bootstrap.quiet_third_party_loggers()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for _module in (graph, salesforce, worker, reconcile, review, ops, status):
    app.register_functions(_module.bp)
