#!/usr/bin/env bash
# Regenerate the Pub/Sub API Python stubs (committed) from sync/adapters/salesforce/pubsub_api/pubsub_api.proto.
# Generating with -I at the repo root makes the grpc module import `from sync.adapters.salesforce.pubsub_api import
# pubsub_api_pb2`, so the stubs work as a package (adapter and emulator import the same modules).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  sync/adapters/salesforce/pubsub_api/pubsub_api.proto
echo "generated sync/adapters/salesforce/pubsub_api/pubsub_api_pb2{,_grpc}.py"
