"""``python -m bench.import_time``: how long ``import function_app`` takes in a fresh interpreter, and which SDK
modules that import loads (it should load none: clients are built lazily by ``sync.bootstrap``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 15  # the median of 15 fresh interpreters: on a shared 2-core VM single runs vary from 240 to 400 ms
SDK_PREFIXES = ("msgraph", "kiota", "simple_salesforce", "azure.storage", "azure.data", "azure.identity", "grpc",
                "fastavro", "requests", "httpx")
PROBE = """
import json, sys, time
before = set(sys.modules)
t = time.perf_counter()
import function_app
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "modules": sorted(set(sys.modules) - before)}))
"""


def main() -> int:
    runs = []
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-c", PROBE],
                             cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    times = sorted(r["seconds"] for r in runs)
    modules = runs[-1]["modules"]
    sdk = sorted(m for m in modules if m.startswith(SDK_PREFIXES))
    print(f"import function_app (fresh interpreter, {len(runs)} runs): median {times[len(times) // 2] * 1000:.0f} ms, "
          f"min {times[0] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
    print(f"modules loaded by the import: {len(modules)}")
    print(f"SDK modules loaded: {len(sdk)}" + (": " + ", ".join(sdk) if sdk else " (none)"))
    from bench.results import record

    record("import_time", {"median_ms": round(times[len(times) // 2] * 1000, 1), "min_ms": round(times[0] * 1000, 1),
                           "max_ms": round(times[-1] * 1000, 1), "modules": len(modules), "sdk_modules": sdk,
                           "target": "< 300 ms, no SDK module"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
