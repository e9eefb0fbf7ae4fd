"""The admin guide's permission table and the emulator's grants are one list (issue 15 point 1)."""

from __future__ import annotations

import re
from pathlib import Path

from emulators.graph import ADMIN_GUIDE_GRANTS, GraphEmulator

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "admin-guide.md"


def guide_grants() -> tuple[set[str], set[str]]:
    """(Entra app roles, Exchange roles) named in the guide's ``grants:begin`` .. ``grants:end`` table."""
    text = GUIDE.read_text(encoding="utf-8")
    block = text.split("<!-- grants:begin -->", 1)[1].split("<!-- grants:end -->", 1)[0]
    entra: set[str] = set()
    exchange: set[str] = set()
    rows = [line for line in block.splitlines() if line.startswith("|")]
    assert len(rows) > 2, "the grants table has a header, a separator and at least one row"
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        permission = re.fullmatch(r"`([^`]+)`", cells[1])
        assert permission, f"a permission cell must be one `code` span: {row}"
        (exchange if cells[0].startswith("Exchange") else entra).add(permission.group(1))
    return entra, exchange


def test_admin_guide_grants_equal_the_emulator_grants() -> None:
    entra, exchange = guide_grants()
    assert entra == set(ADMIN_GUIDE_GRANTS.app_roles)
    assert exchange == set(ADMIN_GUIDE_GRANTS.exchange_roles)
    assert ADMIN_GUIDE_GRANTS.mailbox_scope is None  # the scope is "the synced mailboxes": each test names them


def test_the_emulator_runs_with_the_guide_grants_unless_told_otherwise() -> None:
    assert GraphEmulator().grants == ADMIN_GUIDE_GRANTS
