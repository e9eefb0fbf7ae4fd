"""Microsoft Graph: the Outlook side of the sync (one contact folder per mailbox) and its subscriptions.

One module per job: ``credentials`` (the Entra credential), ``transport`` (HTTP: event loop, per-mailbox permits,
retries, the mapping of failures to ``sync.errors``), ``permits`` (the per-mailbox slots shared by every instance),
``batch`` (the ``$batch`` scheduler), ``folders`` (the sync
folder of each mailbox), ``contacts`` (``GraphContactSide``, the contact port) and ``subscriptions`` (change
notifications). Import the public names from this package. Importing it loads no SDK module: msgraph and
azure.identity are imported when an adapter or a credential is built (cold start of the function app).
"""

from sync.adapters.graph.contacts import DEFAULT_BASE_URL, DEFAULT_FOLDER_NAME, MARKER_PROPERTY_ID, GraphContactSide
from sync.adapters.graph.credentials import CredentialKind, credential_from_settings
from sync.adapters.graph.permits import SharedPermits
from sync.adapters.graph.subscriptions import (
    GraphSubscriptions,
    LifecycleEvent,
    LifecycleOutcome,
    NewSubscription,
    SubscriptionRecord,
    client_state_digest,
    client_state_matches,
)
from sync.adapters.graph.transport import odata_str, parse_retry_after

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_FOLDER_NAME",
    "MARKER_PROPERTY_ID",
    "CredentialKind",
    "GraphContactSide",
    "GraphSubscriptions",
    "LifecycleEvent",
    "LifecycleOutcome",
    "NewSubscription",
    "SharedPermits",
    "SubscriptionRecord",
    "client_state_digest",
    "client_state_matches",
    "credential_from_settings",
    "odata_str",
    "parse_retry_after",
]
