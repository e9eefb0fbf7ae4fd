"""What the ContactSide contract suite needs from each side under test.

A harness owns one ContactSide (memory, Graph adapter over the Graph emulator, Salesforce adapter over the Salesforce
emulator) and can act *as a user* on that side through a path that is not the adapter (the emulator's admin API), so
change feeds see changes the sync did not make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sync.model import Contact
from sync.ports import ContactSide


class SideHarness(Protocol):
    side: ContactSide
    mailbox: str  # a synced mailbox
    other_mailbox: str  # another synced mailbox
    # Fields the side stores and returns exactly (Salesforce may cut long values; Graph keeps all).
    supports_marker: bool

    def user_create(self, contact: Contact, *, mailbox: str | None = None) -> str:
        """Create a contact as a user would (in ``mailbox``'s folder / owned by ``mailbox``'s user)."""
        ...

    def user_edit(self, item_id: str, values: Mapping[str, str | None]) -> None: ...

    def user_delete(self, item_id: str) -> None: ...

    def user_move_out(self, item_id: str) -> None:
        """Take the contact out of ``mailbox`` (Outlook: move out of the sync folder; Salesforce: give it to a user
        who is not a synced mailbox)."""
        ...

    def close(self) -> None: ...
