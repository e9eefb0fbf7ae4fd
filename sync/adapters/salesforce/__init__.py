"""The Salesforce side: the REST contact port, the OAuth tokens and the Pub/Sub change-event subscriber."""

from sync.adapters.salesforce.contacts import (
    API_VERSION,
    AccessToken,
    ReplayRejected,
    SalesforceContactSide,
    SessionExpired,
    TokenProvider,
    map_error,
    soql_quote,
)

__all__ = [
    "API_VERSION",
    "AccessToken",
    "ReplayRejected",
    "SalesforceContactSide",
    "SessionExpired",
    "TokenProvider",
    "map_error",
    "soql_quote",
]
