"""App settings, read from the environment (Functions app settings / local.settings.json ``Values``).

``SETTINGS`` lists every setting the product reads, with its default and what it accepts; ``docs/configuration.md``
documents the same list (a test keeps them equal). ``load_settings()`` validates everything at once and raises
``ConfigError`` naming each bad setting, never echoing a secret's value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import ValidationError

from sync.policy import (
    CircuitBreaker,
    ConflictPolicy,
    DeletePolicy,
    Direction,
    FieldMap,
    FieldRule,
    Policy,
)

_E = TypeVar("_E", bound=StrEnum)


class ConfigError(ValueError):
    """One or more app settings are missing or invalid; the message lists each with the fix."""


class GraphCredential(StrEnum):
    MANAGED_IDENTITY = "managed_identity"  # user-assigned identity as a federated credential of the Entra app
    CERTIFICATE = "certificate"
    SECRET = "secret"
    STATIC = "static"  # dev only: a fixed bearer token, accepted only when GRAPH_BASE_URL is a loopback address


class SalesforceAuth(StrEnum):
    JWT_BEARER = "jwt_bearer"
    CLIENT_CREDENTIALS = "client_credentials"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required (when the feature that needs it is used)
    allowed: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    # Storage (Functions host storage; the app keeps links, checkpoints, jobs and audit there too)
    Setting("AzureWebJobsStorage", None, "connection string (local: UseDevelopmentStorage=true or Azurite's)"),
    Setting("AzureWebJobsStorage__tableServiceUri", None, "https://<account>.table.core.windows.net (identity)"),
    Setting("AzureWebJobsStorage__queueServiceUri", None, "https://<account>.queue.core.windows.net (identity)"),
    Setting("AzureWebJobsStorage__clientId", None, "client id of the user-assigned managed identity"),
    Setting("SYNC_TABLE_PREFIX", "sync", "letters/digits, table names become <prefix>links, <prefix>audit, ..."),
    # Microsoft Graph
    Setting("GRAPH_TENANT_ID", None, "Entra tenant id (GUID)"),
    Setting("GRAPH_CLIENT_ID", None, "application (client) id of the Entra app"),
    Setting("GRAPH_CREDENTIAL", "managed_identity",
            "managed_identity | certificate | secret | static (dev only, GRAPH_BASE_URL on 127.0.0.1/localhost)"),
    Setting("GRAPH_CLIENT_SECRET", None, "client secret (Key Vault reference); only with GRAPH_CREDENTIAL=secret",
            secret=True),
    Setting("GRAPH_CERTIFICATE", None, "PEM certificate + key (Key Vault reference); only with certificate",
            secret=True),
    Setting("GRAPH_MANAGED_IDENTITY_CLIENT_ID", None, "client id of the managed identity used as federated credential"),
    Setting("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0", "Graph v1.0 base URL (emulator: http://127.0.0.1:N/v1.0)"),
    Setting("GRAPH_MAILBOX_PERMITS", "shared",
            "shared | process: Graph's 4 concurrent requests per mailbox held across every instance (slots in "
            "Table Storage) or per process only"),
    Setting("SYNC_FOLDER_NAME", "Salesforce_Sync", "display name of the contact folder created in each mailbox"),
    Setting("SYNC_MAILBOXES", "", "comma-separated mailbox UPNs in scope (with SYNC_MAILBOX_GROUP_ID: both)"),
    Setting("SYNC_MAILBOX_GROUP_ID", None, "object id (GUID) of an Entra group whose transitive user members are "
            "mailboxes in scope (sync/scope.py)"),
    Setting("WEBHOOK_BASE_URL", None,
            "public https base of this app; empty: https://$WEBSITE_HOSTNAME (http only on 127.0.0.1/localhost)"),
    Setting("SUBSCRIPTIONS_ON_START", "true", "true | false: create missing Graph subscriptions when the app starts"),
    # Salesforce
    Setting("SF_LOGIN_URL", "https://login.salesforce.com",
            "token host: https://<name>.my.salesforce.com (My Domain; required for client_credentials), or "
            "https://login.salesforce.com / https://test.salesforce.com (jwt_bearer only)"),
    Setting("SF_JWT_AUDIENCE", "production",
            "jwt_bearer aud: production (https://login.salesforce.com) | sandbox (https://test.salesforce.com) | "
            "an Experience Cloud site URL; never the My Domain URL"),
    Setting("SF_AUTH_FLOW", "jwt_bearer", "jwt_bearer | client_credentials"),
    Setting("SF_CLIENT_ID", None, "consumer key of the connected app / external client app"),
    Setting("SF_CLIENT_SECRET", None, "consumer secret; only with client_credentials", secret=True),
    Setting("SF_USERNAME", None, "integration user's username; only with jwt_bearer"),
    Setting("SF_PRIVATE_KEY", None, "PEM private key for the JWT assertion (Key Vault reference)", secret=True),
    Setting("SF_API_VERSION", "67.0", "REST API version, e.g. 67.0"),
    Setting("SF_PUBSUB_ENDPOINT", "api.pubsub.salesforce.com:7443", "host:port of the Pub/Sub API"),
    Setting("SF_CLIENT_NAME", "m365-contact-sync", "value of Sforce-Call-Options client=..., marks our own writes"),
    Setting("SF_OUTLOOK_ID_FIELD", "", "optional Contact text field (e.g. Outlook_Id__c) holding the Outlook id"),
    Setting("SF_SOQL_FILTER", "", "optional extra SOQL condition on Contact, e.g. RecordType.Name = 'Customer' "
            "(empty: every Contact a synced rep owns)"),
    Setting("SF_CA_BUNDLE", "", "optional PEM CA file trusted for Salesforce TLS (dev: the emulator's CA)"),
    Setting("SF_PUBSUB_INSECURE", "false",
            "true | false; true (plaintext gRPC, dev only) only with a loopback SF_PUBSUB_ENDPOINT"),
    Setting("EVENTS_HMAC_SECRET", None, "shared secret of the signed /api/salesforce/events relay", secret=True),
    # Policy
    Setting("SYNC_DIRECTION", "both", "both | to_salesforce | to_m365"),
    Setting("SYNC_MAILBOX_DIRECTIONS", "{}", 'JSON object mailbox -> direction, e.g. {"a@x.com": "to_m365"}'),
    Setting("SYNC_FIELD_MAP", "", "JSON list of {key, salesforce, direction, graph}; empty: standard fields"),
    Setting("CONFLICT_POLICY", "salesforce_wins", "salesforce_wins | m365_wins | newest_wins"),
    Setting("DELETE_POLICY_SALESFORCE", "propagate", "when deleted in Salesforce: propagate | unlink | recreate"),
    Setting("DELETE_POLICY_M365", "unlink", "when deleted in Outlook: propagate | unlink | recreate"),
    Setting("BREAKER_MIN_COUNT", "10", "integer >= 1: fewer destructive actions never trip the breaker"),
    Setting("BREAKER_MAX_SHARE", "0.25", "0 < share <= 1 of a mailbox's linked contacts"),
    Setting("BREAKER_MAX_COUNT", "200", "integer >= 1: this many destructive actions always trip"),
    # Schedules (6-field NCRONTAB, UTC)
    Setting("RECONCILE_SCHEDULE", "0 */30 * * * *", "NCRONTAB"),
    Setting("SUBSCRIPTION_SCHEDULE", "0 0 */6 * * *", "NCRONTAB"),
    Setting("CDC_PULL_SCHEDULE", "0 * * * * *", "NCRONTAB; each run holds the subscription 57 s, so once a minute"),
    Setting("CDC_PULL_HOLD_SECONDS", "57", "seconds one CDC pull holds the subscription open: a little under the "
            "CDC_PULL_SCHEDULE period (1 to 570)"),
)
SETTING_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS)
_DEFAULTS: Mapping[str, str | None] = {s.name: s.default for s in SETTINGS}
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return _DEFAULTS.get(name)
    return value.strip()


def _enum(env: Mapping[str, str], name: str, enum: type[_E], errors: list[str]) -> _E | None:
    raw = _raw(env, name)
    try:
        return enum(raw or "")
    except ValueError:
        errors.append(f"{name}={raw!r}: expected one of {', '.join(e.value for e in enum)}")
        return None


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], errors: list[str]) -> float | None:
    raw = _raw(env, name)
    try:
        return kind(raw or "")
    except ValueError:
        errors.append(f"{name}={raw!r}: expected a number")
        return None


def load_policy(env: Mapping[str, str] | None = None) -> Policy:
    """Build the planner's Policy from settings; every problem is reported at once."""
    env = os.environ if env is None else env
    errors: list[str] = []
    for s in SETTINGS:
        value = env.get(s.name, "")
        if value.startswith(KEY_VAULT_PREFIX):
            errors.append(f"{s.name}: the Key Vault reference did not resolve (check the identity's access)")
    conflict = _enum(env, "CONFLICT_POLICY", ConflictPolicy, errors)
    on_sf = _enum(env, "DELETE_POLICY_SALESFORCE", DeletePolicy, errors)
    on_m365 = _enum(env, "DELETE_POLICY_M365", DeletePolicy, errors)
    direction = _enum(env, "SYNC_DIRECTION", Direction, errors)
    if direction is Direction.NONE:
        errors.append("SYNC_DIRECTION='none': use both, to_salesforce or to_m365")

    mailbox_directions: dict[str, Direction] = {}
    raw_md = _raw(env, "SYNC_MAILBOX_DIRECTIONS") or "{}"
    try:
        parsed = json.loads(raw_md)
        if not isinstance(parsed, dict):
            raise ValueError("not an object")
        for mailbox, d in parsed.items():
            mailbox_directions[str(mailbox).casefold()] = Direction(d)
    except ValueError as exc:
        errors.append(f"SYNC_MAILBOX_DIRECTIONS: expected a JSON object of mailbox -> direction ({exc})")

    field_map = FieldMap()
    raw_fm = _raw(env, "SYNC_FIELD_MAP")
    if raw_fm:
        try:
            rules = json.loads(raw_fm)
            if not isinstance(rules, list):
                raise ValueError("not a list")
            field_map = FieldMap(rules=tuple(FieldRule.model_validate(r) for r in rules))
        except (ValueError, ValidationError) as exc:
            errors.append(f"SYNC_FIELD_MAP: {exc}".splitlines()[0])

    breaker: CircuitBreaker | None = None
    min_count = _number(env, "BREAKER_MIN_COUNT", int, errors)
    max_share = _number(env, "BREAKER_MAX_SHARE", float, errors)
    max_count = _number(env, "BREAKER_MAX_COUNT", int, errors)
    if None not in (min_count, max_share, max_count):
        try:
            breaker = CircuitBreaker(min_count=min_count, max_share=max_share, max_count=max_count)
        except ValidationError as exc:
            errors.append(
                "BREAKER_*: " + "; ".join(f"{e['loc'][0]} {e['msg']}" for e in exc.errors())
            )

    if errors or conflict is None or on_sf is None or on_m365 is None or direction is None or breaker is None:
        raise ConfigError("invalid app settings:\n  - " + "\n  - ".join(errors))
    return Policy(
        field_map=field_map,
        conflict=conflict,
        on_salesforce_delete=on_sf,
        on_m365_delete=on_m365,
        direction=direction,
        mailbox_directions=mailbox_directions,
        breaker=breaker,
    )


def mailboxes_in_scope(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The explicit mailbox list (lower-cased, de-duplicated, in order)."""
    env = os.environ if env is None else env
    out: list[str] = []
    for part in (_raw(env, "SYNC_MAILBOXES") or "").split(","):
        mailbox = part.strip().casefold()
        if mailbox and mailbox not in out:
            out.append(mailbox)
    return tuple(out)


LOGIN_HOSTS = {"production": "https://login.salesforce.com", "sandbox": "https://test.salesforce.com"}


def salesforce_oauth(env: Mapping[str, str], flow: SalesforceAuth) -> tuple[str, str]:
    """(token URL, JWT audience) from SF_LOGIN_URL and SF_JWT_AUDIENCE (docs/reference/salesforce.md §3.1, §3.2).

    Salesforce refuses a My Domain ``aud`` ("audience is invalid") and client credentials on the login and test hosts
    ("request not supported on this domain"): both are ``ConfigError`` here, before any call."""
    login = (_raw(env, "SF_LOGIN_URL") or "").rstrip("/")
    raw_aud = _raw(env, "SF_JWT_AUDIENCE") or ""
    audience = LOGIN_HOSTS.get(raw_aud.casefold(), raw_aud.rstrip("/"))
    errors: list[str] = []
    if not login.startswith("https://") and not (login.startswith("http://") and is_loopback(login)):
        errors.append(f"SF_LOGIN_URL={login!r}: expected https://<name>.my.salesforce.com")
    if flow is SalesforceAuth.CLIENT_CREDENTIALS and login in LOGIN_HOSTS.values():
        errors.append(f"SF_LOGIN_URL={login!r}: client_credentials works only on your My Domain host "
                      "(https://<name>.my.salesforce.com); Salesforce answers 'request not supported on this domain'")
    if flow is SalesforceAuth.JWT_BEARER and (".my.salesforce.com" in audience or not audience.startswith("https://")):
        errors.append(f"SF_JWT_AUDIENCE={raw_aud!r}: expected production, sandbox or an Experience Cloud site URL; "
                      "Salesforce answers 'audience is invalid' to a My Domain audience")
    if errors:
        raise ConfigError("invalid app settings:\n  - " + "\n  - ".join(errors))
    return f"{login}/services/oauth2/token", audience


def setting(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """One setting's value (stripped), or its documented default when unset or blank.

    A Key Vault reference that did not resolve stays in the setting as its literal text (docs/reference/azure.md §3.4);
    that is refused here, for every setting, so a secret is never the string ``@Microsoft.KeyVault(...)``."""
    if name not in SETTING_NAMES:
        raise KeyError(f"{name} is not a known setting (add it to SETTINGS)")
    value = _raw(os.environ if env is None else env, name)
    if value is not None and value.startswith(KEY_VAULT_PREFIX):
        raise ConfigError(f"{name}: the Key Vault reference did not resolve (check the identity's access)")
    return value


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(url_or_host: str) -> bool:
    """Whether a URL (or ``host:port``) points at this machine."""
    text = url_or_host if "//" in url_or_host else f"//{url_or_host}"
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return False
    return (host or "").casefold() in LOOPBACK_HOSTS


def webhook_base_url(env: Mapping[str, str] | None = None) -> str | None:
    """``WEBHOOK_BASE_URL`` without its trailing slash; unset: ``https://`` + the platform's own default host name
    (``WEBSITE_HOSTNAME``, which may be a unique name, docs/reference/azure.md §8); None when neither is set. Graph
    delivers only to https (docs/reference/graph.md §4.2); plain http is accepted for a loopback host only (the local
    Graph emulator)."""
    value = setting("WEBHOOK_BASE_URL", env)
    if not value:
        hostname = ((os.environ if env is None else env).get("WEBSITE_HOSTNAME") or "").strip()
        value = f"https://{hostname}" if hostname else None
    if not value:
        return None
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").casefold()
    except ValueError:
        parts, host = None, ""
    ok = parts is not None and host and not parts.query and not parts.fragment and (
        parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS))
    if not ok:
        raise ConfigError(
            f"invalid app settings:\n  - WEBHOOK_BASE_URL={value!r}: Graph only calls https notification URLs; "
            "use https://<host> (plain http is allowed only on 127.0.0.1 or localhost, for the local emulator)"
        )
    return value.rstrip("/")


def setting_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """A true/false setting; anything else is a ConfigError naming it."""
    raw = (setting(name, env) or "").casefold()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"invalid app settings:\n  - {name}={raw!r}: expected true or false")
