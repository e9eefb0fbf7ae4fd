"""The Graph adapter over the Graph emulator, as a ContactSide contract harness.

The harness starts a ``GraphEmulator`` on a free loopback port with two users, builds ``GraphContactSide`` against it
(a fake credential: the emulator accepts any bearer token) and acts *as the user in Outlook* through the emulator's
Python admin API, so change feeds see edits the adapter did not make. ``user_move_out`` moves the contact from the
sync folder to the mailbox's default Contacts folder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from emulators.graph import GraphEmulator
from sync.adapters.graph import DEFAULT_FOLDER_NAME, GraphContactSide
from sync.mapping import contact_to_graph, graph_to_contact
from sync.model import STANDARD_FIELDS, Contact
from sync.policy import FieldMap
from tests.contract.harness import SideHarness

MAILBOX = "ann@contoso.com"
OTHER = "bob@contoso.com"


class FakeCredential:
    """A TokenCredential that never talks to Entra (docs/reference/graph.md §7.8 b)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("emulator-token", int(time.time()) + 3600)


def make_side(emu: GraphEmulator, **kwargs: Any) -> GraphContactSide:
    kwargs.setdefault("mailboxes", [MAILBOX, OTHER])
    kwargs.setdefault("max_wait", 2.0)
    return GraphContactSide(FakeCredential(), base_url=emu.base_url, **kwargs)


class GraphHarness:
    supports_marker = True
    mailbox = MAILBOX
    other_mailbox = OTHER

    def __init__(self) -> None:
        self.emu = GraphEmulator(users=[MAILBOX, OTHER]).start()
        try:
            self.side = make_side(self.emu)
        except BaseException:
            self.emu.stop()
            raise

    def folder(self, mailbox: str) -> str:
        found = self.emu.find_folder(mailbox, DEFAULT_FOLDER_NAME)
        return found or self.emu.create_folder(mailbox, DEFAULT_FOLDER_NAME)

    def _where(self, item_id: str) -> tuple[str, dict[str, Any]]:
        for mailbox in (MAILBOX, OTHER):
            doc = self.emu.get_contact(mailbox, item_id)
            if doc is not None:
                return mailbox, doc
        raise KeyError(item_id)

    def user_create(self, contact: Contact, *, mailbox: str | None = None) -> str:
        mailbox = mailbox or self.mailbox
        body, _ = contact_to_graph(contact, STANDARD_FIELDS, None, FieldMap())
        body = {k: v for k, v in body.items() if v is not None}
        return str(self.emu.create_contact(mailbox, body, self.folder(mailbox))["id"])

    def user_edit(self, item_id: str, values: Mapping[str, str | None]) -> None:
        mailbox, doc = self._where(item_id)
        wanted = graph_to_contact(doc).with_values(values)
        body, _ = contact_to_graph(wanted, values.keys(), doc, FieldMap())
        self.emu.update_contact(mailbox, item_id, body)

    def user_delete(self, item_id: str) -> None:
        mailbox, _ = self._where(item_id)
        self.emu.delete_contact(mailbox, item_id)

    def user_move_out(self, item_id: str) -> None:
        mailbox, _ = self._where(item_id)
        self.emu.move_contact(mailbox, item_id, None)  # to the default Contacts folder, out of the sync folder

    def close(self) -> None:
        try:
            self.side.close()
        finally:
            self.emu.stop()


def _factory(request: pytest.FixtureRequest) -> SideHarness:
    return GraphHarness()


HARNESSES = {"graph": _factory}
