"""Azure Functions entry point (Python v2 programming model).

Registers blueprints only. Nothing here imports the Graph or Salesforce SDKs or touches the network: clients are built
lazily by ``sync.bootstrap`` on first use (cold start, azure.md §2). The functions themselves arrive with the function
app issue; until then the app has no functions.
"""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
