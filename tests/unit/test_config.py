"""App settings -> Policy: defaults, every bad value reported at once, secrets never echoed."""

from __future__ import annotations

import json

import pytest

from sync.config import SETTINGS, ConfigError, load_policy, mailboxes_in_scope, webhook_base_url
from sync.policy import ConflictPolicy, DeletePolicy, Direction


def test_defaults_are_the_documented_ones() -> None:
    p = load_policy({})
    assert p.conflict is ConflictPolicy.SALESFORCE_WINS
    assert p.on_salesforce_delete is DeletePolicy.PROPAGATE and p.on_m365_delete is DeletePolicy.UNLINK
    assert p.direction is Direction.BOTH and (p.breaker.min_count, p.breaker.max_share) == (10, 0.25)
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))


def test_every_bad_setting_is_reported_together() -> None:
    env = {"CONFLICT_POLICY": "loudest_wins", "DELETE_POLICY_M365": "shred", "BREAKER_MAX_SHARE": "2",
           "BREAKER_MIN_COUNT": "ten", "SYNC_MAILBOX_DIRECTIONS": "[1]", "SYNC_DIRECTION": "none"}
    with pytest.raises(ConfigError) as err:
        load_policy(env)
    text = str(err.value)
    for name in ("CONFLICT_POLICY='loudest_wins'", "DELETE_POLICY_M365='shred'", "BREAKER_MIN_COUNT='ten'",
                 "SYNC_MAILBOX_DIRECTIONS", "SYNC_DIRECTION='none'"):
        assert name in text


def test_unresolved_key_vault_reference_is_an_error_without_the_value() -> None:
    ref = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/sf-key/)"
    with pytest.raises(ConfigError) as err:
        load_policy({"SF_PRIVATE_KEY": ref})
    assert "SF_PRIVATE_KEY" in str(err.value) and "vault.azure.net" not in str(err.value)


def test_every_setting_read_refuses_an_unresolved_key_vault_reference() -> None:
    from sync.config import setting

    ref = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/hmac/)"
    with pytest.raises(ConfigError, match="EVENTS_HMAC_SECRET") as err:
        setting("EVENTS_HMAC_SECRET", {"EVENTS_HMAC_SECRET": ref})
    assert "vault.azure.net" not in str(err.value)
    assert setting("EVENTS_HMAC_SECRET", {"EVENTS_HMAC_SECRET": "s3cret"}) == "s3cret"


def test_mailbox_directions_and_field_map_parse() -> None:
    env = {
        "SYNC_MAILBOX_DIRECTIONS": json.dumps({"Ann@Contoso.com": "to_m365"}),
        "SYNC_FIELD_MAP": json.dumps([{"key": "last_name", "salesforce": "LastName"},
                                      {"key": "custom.Tier__c", "salesforce": "Tier__c", "graph": "profession",
                                       "direction": "to_m365"}]),
    }
    p = load_policy(env)
    assert p.direction_for("ann@contoso.com") is Direction.TO_M365 and p.direction_for("bob@x.com") is Direction.BOTH
    assert p.field_map.keys() == ("last_name", "custom.Tier__c")
    with pytest.raises(ConfigError, match="SYNC_FIELD_MAP"):
        load_policy({"SYNC_FIELD_MAP": json.dumps([{"key": "shoe_size", "salesforce": "Shoe__c"}])})


def test_mailboxes_in_scope_are_lower_cased_and_unique() -> None:
    assert mailboxes_in_scope({"SYNC_MAILBOXES": " Ann@Contoso.com, bob@contoso.com,,ann@contoso.com "}) == (
        "ann@contoso.com", "bob@contoso.com")


@pytest.mark.parametrize("url", ["http://contoso.example", "ftp://x.example", "https://", "not a url",
                                 "https://x.example/?q=1", "http://10.0.0.1:7071"])
def test_webhook_base_url_must_be_https_off_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_BASE_URL=.*only calls https"):
        webhook_base_url({"WEBHOOK_BASE_URL": url})


@pytest.mark.parametrize(("url", "expected"), [
    ("https://func-abc.azurewebsites.net/", "https://func-abc.azurewebsites.net"),
    ("http://127.0.0.1:7071", "http://127.0.0.1:7071"),
    ("http://localhost:8080/", "http://localhost:8080"),
    ("http://[::1]:9", "http://[::1]:9"),
])
def test_webhook_base_url_accepts_https_and_loopback_http(url: str, expected: str) -> None:
    assert webhook_base_url({"WEBHOOK_BASE_URL": url}) == expected
    assert webhook_base_url({}) is None


@pytest.mark.parametrize(("env", "flow", "expected"), [
    ({}, "jwt_bearer", ("https://login.salesforce.com/services/oauth2/token", "https://login.salesforce.com")),
    ({"SF_LOGIN_URL": "https://acme.my.salesforce.com/", "SF_JWT_AUDIENCE": "sandbox"}, "jwt_bearer",
     ("https://acme.my.salesforce.com/services/oauth2/token", "https://test.salesforce.com")),
    ({"SF_LOGIN_URL": "https://acme.my.salesforce.com"}, "client_credentials",
     ("https://acme.my.salesforce.com/services/oauth2/token", "https://login.salesforce.com")),
])
def test_token_host_and_jwt_audience_are_separate_settings(env: dict[str, str], flow: str,
                                                           expected: tuple[str, str]) -> None:
    from sync.config import SalesforceAuth, salesforce_oauth

    assert salesforce_oauth(env, SalesforceAuth(flow)) == expected


@pytest.mark.parametrize(("env", "flow", "named"), [
    ({"SF_JWT_AUDIENCE": "https://acme.my.salesforce.com"}, "jwt_bearer", "SF_JWT_AUDIENCE"),
    ({}, "client_credentials", "SF_LOGIN_URL"),
    ({"SF_LOGIN_URL": "https://test.salesforce.com"}, "client_credentials", "SF_LOGIN_URL"),
])
def test_a_setup_salesforce_refuses_is_a_config_error_naming_the_setting(env: dict[str, str], flow: str,
                                                                         named: str) -> None:
    from sync.config import SalesforceAuth, salesforce_oauth

    with pytest.raises(ConfigError, match=named):
        salesforce_oauth(env, SalesforceAuth(flow))
