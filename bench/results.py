"""``bench/results.json``: each benchmark stores its section (``record("scale", {...})``), keeping the others."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from typing import Any

DEFAULT = os.path.join(os.path.dirname(__file__), "results.json")


def record(section: str, data: dict[str, Any], path: str = DEFAULT) -> None:
    doc: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    doc["machine"] = {"cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}
    doc[section] = {**data, "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
