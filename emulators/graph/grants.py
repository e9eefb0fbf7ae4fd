"""What the emulated app may do: Entra app roles in its token and an Exchange RBAC for Applications assignment.

Entra and Exchange decide separately (docs/reference/graph.md §6.4): directory reads (``/users``) need an Entra
directory role in the token, else 403 ``Authorization_RequestDenied``; mailbox data needs either a tenant-wide
Entra ``Contacts.*`` role or an Exchange role whose management scope holds the mailbox, else 403
``ErrorAccessDenied``. The two add up. Group membership reads (directory.py) need a group role (§6.5).

``ADMIN_GUIDE_GRANTS`` is the one list of grants docs/admin-guide.md §2-§4 tells an admin to give. The emulator uses
it unless told otherwise, so the demo, the tests and the soak run with exactly those grants;
``tests/unit/test_admin_guide_grants.py`` fails when the guide's permission table and this list differ.
"""

from __future__ import annotations

from dataclasses import dataclass

# user-get / user-list, Application row (docs/reference/graph.md §6.4). User.ReadBasic.All is not listed there for
# app-only calls, so it does not open /users here either.
DIRECTORY_READ_ROLES = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                                  "Directory.ReadWrite.All"})
CONTACTS_READ_ROLES = frozenset({"Contacts.Read", "Contacts.ReadWrite"})
CONTACTS_WRITE_ROLES = frozenset({"Contacts.ReadWrite"})
EXCHANGE_READ_ROLES = frozenset({"Application Contacts.Read", "Application Contacts.ReadWrite"})
EXCHANGE_WRITE_ROLES = frozenset({"Application Contacts.ReadWrite"})

DIRECTORY_DENIED = ("Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
MAILBOX_DENIED = ("ErrorAccessDenied", "Access is denied. Check credentials and try again.")


@dataclass(frozen=True)
class Grants:
    """``app_roles``: Entra application permissions with admin consent (the token's ``roles`` claim).
    ``exchange_roles``: Exchange RBAC for Applications roles assigned to the app, on ``mailbox_scope`` (UPNs or
    object ids, case-insensitive; None = every mailbox the emulator knows, i.e. the mailboxes the test synced)."""

    app_roles: frozenset[str] = frozenset()
    exchange_roles: frozenset[str] = frozenset()
    mailbox_scope: frozenset[str] | None = None

    def reads_directory(self, roles: frozenset[str]) -> bool:
        return bool(roles & DIRECTORY_READ_ROLES)

    def reaches_mailbox(self, roles: frozenset[str], mailbox_keys: tuple[str, ...], write: bool) -> bool:
        """Whether a call reaches the mailbox known by ``mailbox_keys`` (its UPN and object id)."""
        if roles & (CONTACTS_WRITE_ROLES if write else CONTACTS_READ_ROLES):
            return True
        if not self.exchange_roles & (EXCHANGE_WRITE_ROLES if write else EXCHANGE_READ_ROLES):
            return False
        if self.mailbox_scope is None:
            return True
        scope = {m.casefold() for m in self.mailbox_scope}
        return any(k.casefold() in scope for k in mailbox_keys)


# docs/admin-guide.md "Permissions the app needs": no Entra application permission (tenant-wide Contacts consent is
# removed, and mailboxes are read from SYNC_MAILBOXES so no directory read is needed); the Exchange role
# "Application Contacts.ReadWrite" on the management scope of the synced mailboxes.
ADMIN_GUIDE_GRANTS = Grants(app_roles=frozenset(), exchange_roles=frozenset({"Application Contacts.ReadWrite"}))

# docs/admin-guide.md "Only with syncMailboxGroupId": the group's membership (GroupMember.Read.All, docs/reference/
# graph.md §6.5) and the members' UPNs (User.ReadBasic.All; without it Graph returns members with their id only).
GROUP_SCOPE_ROLES = frozenset({"GroupMember.Read.All", "User.ReadBasic.All"})
ADMIN_GUIDE_GROUP_GRANTS = Grants(app_roles=ADMIN_GUIDE_GRANTS.app_roles | GROUP_SCOPE_ROLES,
                                  exchange_roles=ADMIN_GUIDE_GRANTS.exchange_roles)

# A tenant-wide Entra consent (what the guide tells the admin to remove): every mailbox, still no directory read.
TENANT_WIDE_CONTACTS = Grants(app_roles=frozenset({"Contacts.ReadWrite"}))

__all__ = ["ADMIN_GUIDE_GRANTS", "ADMIN_GUIDE_GROUP_GRANTS", "GROUP_SCOPE_ROLES",
           "DIRECTORY_DENIED", "MAILBOX_DENIED", "TENANT_WIDE_CONTACTS", "Grants"]
