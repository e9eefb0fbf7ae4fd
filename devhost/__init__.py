"""A local Azure Functions host for development and tests: serves a v2 ``FunctionApp`` on 127.0.0.1 without Core
Tools (``python -m devhost``; ``--instances N`` for several instances, as the platform scales out). Never deployed
(.funcignore); see docs/local-host.md."""
