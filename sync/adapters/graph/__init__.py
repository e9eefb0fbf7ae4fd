"""Microsoft Graph: the Outlook contact side and its change-notification subscriptions."""

from sync.adapters.graph.contacts import (
    DEFAULT_BASE_URL,
    DEFAULT_FOLDER_NAME,
    MARKER_PROPERTY_ID,
    CredentialKind,
    GraphContactSide,
    credential_from_settings,
    odata_str,
    parse_retry_after,
)
from sync.adapters.graph.subscriptions import (
    GraphSubscriptions,
    LifecycleEvent,
    LifecycleOutcome,
    NewSubscription,
    SubscriptionRecord,
    client_state_digest,
    client_state_matches,
)

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
    "SubscriptionRecord",
    "client_state_digest",
    "client_state_matches",
    "credential_from_settings",
    "odata_str",
    "parse_retry_after",
]
