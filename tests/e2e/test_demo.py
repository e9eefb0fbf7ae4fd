"""``make demo`` as assertions: the real function app on the local host over Azurite and both emulators; every
claim the demo prints must hold (each live edit converges on the other side, no duplicates, the audit explains
each edit with ids and reasons only)."""

from __future__ import annotations

import re

import pytest

import demo


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_demo_scenario_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "Every claim held." in out and "FAILED" not in out
    assert out.count("   ok ") >= 20
    # each of the six live edits arrived on the other side, with its latency
    arrived = re.findall(r"-> arrived in (\d+) ms", out)
    assert len(arrived) == 6
    for label in ("Outlook add -> Salesforce", "Outlook edit -> Salesforce", "Salesforce edit -> Outlook",
                  "conflict -> both sides agree", "Salesforce delete -> Outlook", "owner change -> folders"):
        assert label in out.split("Summary")[1]
    audit = out.split("Audit trail of the live edits")[1].split("Summary")[0]
    for action in ("create:salesforce", "update:salesforce", "update:m365", "conflict", "delete:m365", "handoff"):
        assert action in audit, action
    # ids and reasons only: no names, emails or values of the people in the story
    for private in ("Knuth", "Torvalds", "Hopper", "Turing", "Liskov", "Byron", ".example", "Penguin",
                    "Computer Scientist"):
        assert private not in audit, private
    assert "/api/status?code=" in out
