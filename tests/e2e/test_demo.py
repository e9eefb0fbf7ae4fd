"""``make demo`` end to end: every claim the demo prints must hold (real SDKs over the emulators, Azurite)."""

from __future__ import annotations

import pytest

from emulators import demo


@pytest.mark.e2e
def test_the_demo_scenario_holds(capsys: pytest.CaptureFixture[str]) -> None:
    demo.FAILED.clear()
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "Every claim held." in out
    assert out.count("   ok ") >= 11
    assert "@analytical.example" not in out.split("Audit trail")[1]  # the audit shows ids, never emails
