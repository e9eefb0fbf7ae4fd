"""Harness factories for the ContactSide contract suite, by name. Real adapters register theirs here."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from sync.model import Contact, Side
from tests.contract.harness import SideHarness
from tests.fakes import MemorySide

MAILBOX = "ann@contoso.com"
OTHER = "bob@contoso.com"


class MemoryHarness:
    supports_marker = True
    mailbox = MAILBOX
    other_mailbox = OTHER

    def __init__(self, which: Side) -> None:
        self.side = MemorySide(which)
        self._mem = self.side

    def user_create(self, contact: Contact, *, mailbox: str | None = None) -> str:
        return self._mem.user_create(mailbox or self.mailbox, contact)

    def user_edit(self, item_id: str, values: Mapping[str, str | None]) -> None:
        self._mem.user_edit(item_id, values)

    def user_delete(self, item_id: str) -> None:
        self._mem.user_delete(item_id)

    def user_move_out(self, item_id: str) -> None:
        if self._mem.side is Side.M365:
            self._mem.user_delete(item_id)  # out of the folder: for the sync it is gone from this mailbox
        else:
            self._mem.user_set_owner(item_id, None)

    def close(self) -> None:
        pass


HarnessFactory = Callable[[pytest.FixtureRequest], SideHarness]

HARNESSES: dict[str, HarnessFactory] = {
    "memory-m365": lambda request: MemoryHarness(Side.M365),
    "memory-salesforce": lambda request: MemoryHarness(Side.SALESFORCE),
}
from tests.contract.salesforce_harness import HARNESSES as _SALESFORCE  # noqa: E402

HARNESSES.update(_SALESFORCE)
from tests.contract.graph_harness import HARNESSES as _GRAPH  # noqa: E402

HARNESSES.update(_GRAPH)
# Real adapters over their emulators register here (tests/contract/graph_harness.py, salesforce_harness.py),
# each module exposing ``HARNESSES: dict[str, HarnessFactory]``.

