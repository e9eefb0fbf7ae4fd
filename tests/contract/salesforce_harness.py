"""The Salesforce adapter over the Salesforce emulator, for the ContactSide contract suite.

One emulator per harness (free 127.0.0.1 ports, TLS with its own CA). Users: two synced mailboxes (Ann matched by
Email, Bob by FederationIdentifier with a different Email, case changed) and Carol, who is not a synced mailbox.
The adapter gets its token from the emulator's token URL with the JWT bearer flow (our ``TokenProvider``). User
actions go through the emulator's admin API (``create_contact(..., as_user=)`` etc.), so the CDC log and the change
feed see them as edits made in Salesforce by someone else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import pytest

from devhost.stack import jwt_keys
from emulators.salesforce import SalesforceEmulator
from sync.adapters.salesforce import SalesforceContactSide, TokenProvider
from sync.mapping import contact_to_salesforce
from sync.model import Contact
from sync.policy import FieldMap

MAILBOX = "ann@contoso.com"
OTHER = "bob@contoso.com"
OUTSIDER = "carol@contoso.com"
CLIENT_ID = "sync-jwt-client"
MARKER_FIELD = "Outlook_Id__c"


@cache
def rsa_keys() -> tuple[bytes, str]:
    """(private PEM, public PEM), generated once per test session."""
    return jwt_keys()


class SalesforceHarness:
    supports_marker = True
    mailbox = MAILBOX
    other_mailbox = OTHER

    def __init__(self, **side_options: Any) -> None:
        self.emu = SalesforceEmulator(keepalive_seconds=0.5, idle_timeout_seconds=5).start()
        try:
            private, public = rsa_keys()
            self.emu.register_jwt_client(CLIENT_ID, public)
            self.users = {
                MAILBOX: self.emu.add_user("ann@contoso.com.sf", "Ann@Contoso.com", last_name="Ann"),
                OTHER: self.emu.add_user("bob@contoso.com.sf", "robert.work@contoso.com", last_name="Bob",
                                         federation_id="BOB@contoso.com"),
                OUTSIDER: self.emu.add_user("carol@contoso.com.sf", OUTSIDER, last_name="Carol"),
            }
            self.tokens = TokenProvider(self.emu.token_url, CLIENT_ID, username="integration@example.com",
                                        private_key=private, session=self.emu.requests_session())
            self.field_map = FieldMap()
            options: dict[str, Any] = {"marker_field": MARKER_FIELD, "sleep": lambda s: None}
            options.update(side_options)
            self.side = SalesforceContactSide(self.tokens, mailboxes=[MAILBOX, OTHER],
                                              session=self.emu.requests_session(), **options)
            self._accounts: dict[str, str] = {}
        except BaseException:
            self.emu.stop()
            raise

    def _fields(self, values: Mapping[str, str | None]) -> dict[str, Any]:
        write = contact_to_salesforce(Contact().with_values(values), values.keys(), self.field_map)
        out: dict[str, Any] = dict(write.values)
        if write.set_account:
            name = write.account_name
            if name is None:
                out["AccountId"] = None
            else:
                if name.casefold() not in self._accounts:
                    self._accounts[name.casefold()] = self.emu.add_account(name)
                out["AccountId"] = self._accounts[name.casefold()]
        return out

    def user_create(self, contact: Contact, *, mailbox: str | None = None) -> str:
        uid = self.users[mailbox or self.mailbox]
        values = {k: contact.get(k) for k in self.field_map.salesforce_fields()}
        fields = {k: v for k, v in self._fields(values).items() if v is not None}
        return self.emu.create_contact({**fields, "OwnerId": uid}, as_user=uid)

    def user_edit(self, item_id: str, values: Mapping[str, str | None]) -> None:
        self.emu.update_contact(item_id, self._fields(values))

    def user_delete(self, item_id: str) -> None:
        self.emu.delete_contact(item_id)

    def user_move_out(self, item_id: str) -> None:
        self.emu.change_owner(item_id, self.users[OUTSIDER])

    def close(self) -> None:
        self.emu.stop()


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Any]] = {
    "salesforce": lambda request: SalesforceHarness(),
}
