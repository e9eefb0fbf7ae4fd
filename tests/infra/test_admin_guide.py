"""The admin guide works in the order written: every parameter it names exists in infra/main.bicep (and those it
tells azd users to set are mapped in infra/main.parameters.json), every setting it names is one the app reads, the
platform provides, or azd knows; and the steps come in an order that can be followed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sync.config import SETTING_NAMES
from tests.infra.test_infra import PLATFORM_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "admin-guide.md").read_text()
MAIN = (ROOT / "infra" / "main.bicep").read_text()
PARAMETERS = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]

BICEP_PARAMS = set(re.findall(r"^param (\w+) ", MAIN, re.MULTILINE))
MAPPED_ENV = {m for p in PARAMETERS.values() for m in re.findall(r"\$\{(\w+)", json.dumps(p))}
# set by azd itself (https://learn.microsoft.com/azure/developer/azure-developer-cli/manage-environment-variables)
AZD_NAMES = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP",
             "AZURE_PRINCIPAL_ID", "AZURE_PRINCIPAL_TYPE", "AZURE_TENANT_ID"}
OUTPUTS = set(re.findall(r"^output (\w+) ", MAIN, re.MULTILINE))
PLATFORM = PLATFORM_SETTINGS | {"WEBSITE_HOSTNAME"}  # read-only platform variables the guide names
CLI_ENV = {"SYNC_API_URL", "SYNC_FUNCTION_KEY"}  # the ops CLI's environment (opscli/client.py)


def _code_spans() -> list[str]:
    return re.findall(r"`([^`\n]+)`", GUIDE) + re.findall(r"```\w*\n(.*?)```", GUIDE, re.DOTALL)


def _parameters_named() -> set[str]:
    """camelCase words the guide uses as parameters: a whole inline code span (`hostBlobRoleScope`), the left side of
    ``name=value`` in one, or ``name=value`` on a command line (``-p graphClientId=...``)."""
    inline = re.findall(r"`([^`\n]+)`", GUIDE)
    named = {span for span in inline if re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)+", span)}
    named |= {m for span in inline for m in re.findall(r"^([a-z]+(?:[A-Z][a-z0-9]*)+)=", span)}
    for block in re.findall(r"```(?:bash|powershell)\n(.*?)```", GUIDE, re.DOTALL):
        named |= set(re.findall(r"(?:^|\s)([a-z]+(?:[A-Z][a-z0-9]*)+)=", block))
    return named


def test_every_parameter_the_guide_names_exists_in_main_bicep() -> None:
    params = _parameters_named()
    missing = sorted(params - BICEP_PARAMS)
    assert not missing, f"the guide names parameters main.bicep does not have: {missing}"
    assert {"enableEventsRelay", "hostBlobRoleScope", "adminPrincipalType", "graphClientId", "webhookBaseUrl"} <= params


def test_every_azd_env_set_is_mapped_to_a_parameter() -> None:
    names = set(re.findall(r"azd env set (\w+)", GUIDE)) - {"NAME"}  # NAME: the placeholder in prose
    assert names, "the guide shows azd env set"
    unmapped = sorted(names - MAPPED_ENV - AZD_NAMES)
    assert not unmapped, f"azd env set names main.parameters.json does not map: {unmapped}"


def test_every_setting_the_guide_names_is_known() -> None:
    named = {w for span in _code_spans() for w in re.findall(r"\b([A-Z][A-Z0-9]+(?:_[A-Z0-9]+)+)\b", span)}
    shell = set(re.findall(r"^(\w+)=", GUIDE, re.MULTILINE))  # variables the guide's shell steps assign
    known = SETTING_NAMES | PLATFORM | MAPPED_ENV | AZD_NAMES | OUTPUTS | CLI_ENV | shell
    unknown = sorted(named - known)
    assert not unknown, f"the guide names settings nobody reads: {unknown}"


def test_the_guide_creates_the_resource_group_before_azd_uses_it() -> None:
    created, used = GUIDE.find("az group create"), GUIDE.find("azd env set AZURE_RESOURCE_GROUP")
    assert 0 <= created < used


def test_the_first_deployment_needs_no_salesforce_consumer_key() -> None:
    assert "=" in re.search(r"^param sfClientId string(.*)$", MAIN, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert PARAMETERS["sfClientId"]["value"] == "${SF_CLIENT_ID=}"
    first_up = GUIDE.find("azd up")
    set_key = GUIDE.find("azd env set SF_CLIENT_ID")
    certificate = GUIDE.find("New-SalesforceJwtCertificate.ps1 -VaultName")
    assert 0 <= first_up < certificate < set_key, "deploy (Key Vault), then the certificate, then the consumer key"


def test_the_guide_covers_client_credentials_and_removes_the_admins_vault_roles() -> None:
    assert "Enable Client Credentials Flow" in GUIDE and "salesforce-client-secret" in GUIDE
    assert "az role assignment delete" in GUIDE and "Key Vault Certificates Officer" in GUIDE
    assert "AZURE_PRINCIPAL_TYPE ServicePrincipal" in GUIDE


def test_webhook_url_comes_from_the_real_host_name() -> None:
    api = (ROOT / "infra" / "app" / "api.bicep").read_text()
    assert ".azurewebsites.net'" not in api and "WEBHOOK_BASE_URL: webhookBaseUrl" in api
    assert "WEBSITE_HOSTNAME" in GUIDE
