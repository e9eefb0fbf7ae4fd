"""Microsoft Graph v1.0 emulator for Outlook contacts (dev/test only).

Runs the real ``msgraph-sdk`` against ``GraphEmulator.base_url``. Public API:

- ``GraphEmulator(host, port, tenant_id, users, require_auth, validation_timeout_s, notification_*)`` with
  ``start()``/``stop()`` (or ``with``), ``base_url``, ``root_url``, ``faults`` (``Faults``), ``counters``
  (``Counters``), ``deliveries()``, and admin helpers acting "as the user in Outlook" (``create_contact``,
  ``update_contact``, ``move_contact``, ``delete_contact``, ``create_folder``, ``send_lifecycle``,
  ``expire_delta_tokens``, …). The same actions are exposed over HTTP under ``/_admin/``.
- ``grants`` (``Grants``): what the app may do; by default ``ADMIN_GUIDE_GRANTS``, the admin guide's grants
  (``ADMIN_GUIDE_GROUP_GRANTS`` with a mailbox group). Entra groups: ``add_group``, ``add_group_member``,
  ``remove_group_member`` (``/_admin/groups``); ``GET /groups/{id}/members`` and ``/transitiveMembers``.
- ``python -m emulators.graph --port N --user alice@contoso.com``.

Behaviour follows docs/reference/graph.md (cited as §n in the code); guesses are listed in
docs/emulator-fidelity-graph.md.
"""

from .faults import Counters, FaultRule, Faults
from .grants import ADMIN_GUIDE_GRANTS, ADMIN_GUIDE_GROUP_GRANTS, TENANT_WIDE_CONTACTS, Grants
from .server import GraphEmulator
from .store import GraphError
from .webhooks import Delivery

__all__ = [
    "ADMIN_GUIDE_GRANTS", "ADMIN_GUIDE_GROUP_GRANTS", "TENANT_WIDE_CONTACTS",
    "Counters", "Delivery", "FaultRule", "Faults", "GraphEmulator",
    "GraphError", "Grants",
]
