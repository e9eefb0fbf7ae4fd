"""The docs name real things: every test cited in docs/sync-rules.md exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_sync_rules_exists() -> None:
    text = (ROOT / "docs" / "sync-rules.md").read_text()
    cited = re.findall(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)`", text)
    assert len(cited) >= 40
    for path, name in cited:
        source = (ROOT / (path or "tests/unit/test_planner.py")).read_text()
        assert re.search(rf"def {name}\(", source), f"docs/sync-rules.md cites a missing test: {path}::{name}"
