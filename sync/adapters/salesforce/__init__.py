"""The Salesforce side: the REST contact port, the OAuth tokens and the Pub/Sub change-event subscriber."""

from sync.adapters.salesforce.auth import AccessToken, TokenProvider
from sync.adapters.salesforce.contacts import SalesforceContactSide
from sync.adapters.salesforce.errors import ReplayRejected, SessionExpired, map_error
from sync.adapters.salesforce.rest import API_VERSION
from sync.adapters.salesforce.soql import soql_quote

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
