"""Salesforce: the contact port over REST, its OAuth tokens and the Change Data Capture subscriber.

``contacts`` holds ``SalesforceContactSide`` (the ``ContactSide`` of the org); it is built from ``rest`` (session,
retries, SOQL and collection calls), ``directory`` (mailbox <-> User, company -> Account) and ``changes`` (the
SystemModstamp change feed). ``auth`` mints the tokens, ``errors`` maps every Salesforce failure to ``sync.errors``,
``pubsub`` reads CDC events over the Pub/Sub API with the generated stubs in ``pubsub_api``.
Importing the package loads no SDK: requests, simple-salesforce, jwt and grpc are imported where they are used.
"""

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
