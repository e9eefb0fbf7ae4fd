"""``make demo`` as assertions, read from its ``--json`` summary: the real function app on the local host over Azurite
and both emulators; every claim the demo checks must hold (each live edit converges on the other side, no
duplicates, the audit explains each edit with ids and reasons only)."""

from __future__ import annotations

import json

import pytest

import demo

LIVE_EDITS = ("Outlook add -> Salesforce", "Outlook edit -> Salesforce", "Salesforce edit -> Outlook",
              "conflict -> both sides agree", "Salesforce delete -> Outlook", "owner change -> folders")


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_demo_scenario_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] is True and summary["failed"] == []
    assert all(claim["ok"] for claim in summary["claims"])
    assert summary["counts"]["claims"] == summary["counts"]["held"] == len(summary["claims"]) >= 20
    # each of the six live edits arrived on the other side, with its latency
    edits = {e["edit"]: e for e in summary["edits"]}
    assert sorted(edits) == sorted(LIVE_EDITS)
    assert all(e["arrived"] and e["ms"] > 0 for e in edits.values())
    audit = summary["audit"]
    actions = {row["action"] for row in audit}
    for action in ("create:salesforce", "update:salesforce", "update:m365", "conflict", "delete:m365", "handoff"):
        assert action in actions, action
    # ids and reasons only: no names, emails or values of the people in the story
    assert {key for row in audit for key in row} <= {"rep", "action", "m365_id", "sf_id", "reason", "rule", "outcome"}
    for private in ("Knuth", "Torvalds", "Hopper", "Turing", "Liskov", "Byron", ".example", "Penguin",
                    "Computer Scientist"):
        assert private not in json.dumps(audit), private
    assert "/api/status?code=" in summary["status_page"]
    assert sum(summary["counts"]["folders"].values()) > 0 and summary["counts"]["salesforce_contacts"] > 0
