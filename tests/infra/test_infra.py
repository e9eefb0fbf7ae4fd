"""Static checks of infra/ (Bicep, azure.yaml, parameters) and of docs/configuration.md against sync.config.

No Bicep compiler exists offline (docs/reference/azure.md §7), and pycep lives in its own venv (.venv-infra, `make
infra-check`), so these tests read the Bicep text with small regexes: literal property values, the app-settings block
between the
`// app-settings:begin` / `// app-settings:end` markers of infra/app/api.bicep, role GUIDs, parameters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sync.config import SETTING_NAMES, SETTINGS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

# Written by the deployment for the Functions host / SDKs, not read through sync.config.
PLATFORM_SETTINGS = frozenset({
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__blobServiceUri",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "AZURE_CLIENT_ID",
})
# Never app settings on Flex Consumption (docs/reference/azure.md §1.4).
FORBIDDEN_ON_FLEX = ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION")

ROLE_IDS = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
}

KEY_RE = re.compile(r"^\s*'?([A-Za-z_][A-Za-z0-9_]*)'?\s*:", re.MULTILINE)
DOC_ROW_RE = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)$", re.MULTILINE)


def read(rel: str) -> str:
    return (INFRA / rel).read_text()


def bicep_app_settings(text: str) -> dict[str, str]:
    """Setting name -> value expression, from the marked block of api.bicep (object keys inside `var x = {...}`)."""
    match = re.search(r"// app-settings:begin.*?\n(.*?)// app-settings:end", text, re.DOTALL)
    if match is None:
        raise AssertionError("api.bicep has no app-settings:begin/end block")
    out: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if line.lstrip().startswith(("var ", "//")):
            continue
        key = KEY_RE.match(line)
        if key:
            out[key.group(1)] = line.split(":", 1)[1].strip()
    return out


def documented_settings(text: str) -> dict[str, list[str]]:
    """Setting name -> the other cells of its row, for every table row whose first cell is `NAME`."""
    return {m.group(1): [c.strip() for c in m.group(2).split("|")] for m in DOC_ROW_RE.finditer(text)}


def resource_block(text: str, symbol: str) -> str:
    """Text of `resource <symbol> '...' = ... {` up to the next top-level declaration."""
    match = re.search(rf"^resource {symbol} '[^']+' =.*?(?=^\S)", text + "\nEND", re.DOTALL | re.MULTILINE)
    if match is None:
        raise AssertionError(f"no resource {symbol}")
    return match.group(0)


def deployed_in_docs(cells: list[str]) -> bool:
    # column 3 (after default, allowed values) says whether infra/ writes the setting: "yes", "if ...", "no ..."
    return not cells[2].lower().startswith("no")


# ---------------------------------------------------------------- helpers can fail


def test_settings_extractor_sees_a_missing_setting() -> None:
    text = read("app/api.bicep")
    names = set(bicep_app_settings(text))
    assert "SYNC_DIRECTION" in names
    without = re.sub(r"^\s*SYNC_DIRECTION:.*\n", "", text, flags=re.MULTILINE)
    assert set(bicep_app_settings(without)) == names - {"SYNC_DIRECTION"}


def test_doc_parser_reads_rows() -> None:
    rows = documented_settings("| Setting | x |\n|---|---|\n| `A_B` | 1 | x | yes | e |\n")
    assert rows == {"A_B": ["1", "x", "yes", "e", ""]}


# ---------------------------------------------------------------- app settings == docs == sync.config


def test_bicep_settings_equal_documented_deployed_settings() -> None:
    bicep = set(bicep_app_settings(read("app/api.bicep")))
    docs = {name for name, cells in documented_settings(CONFIG_DOC.read_text()).items() if deployed_in_docs(cells)}
    assert bicep == docs, f"only in Bicep: {sorted(bicep - docs)}; only in docs: {sorted(docs - bicep)}"


def test_bicep_settings_are_known_to_the_app() -> None:
    bicep = set(bicep_app_settings(read("app/api.bicep")))
    unknown = bicep - SETTING_NAMES - PLATFORM_SETTINGS
    assert not unknown, f"Bicep writes settings the app does not read: {sorted(unknown)}"


def test_docs_document_every_setting_and_nothing_else() -> None:
    docs = set(documented_settings(CONFIG_DOC.read_text()))
    expected = SETTING_NAMES | PLATFORM_SETTINGS
    assert docs == expected, f"undocumented: {sorted(expected - docs)}; unknown: {sorted(docs - expected)}"


def test_docs_defaults_match_sync_config() -> None:
    rows = documented_settings(CONFIG_DOC.read_text())
    for setting in SETTINGS:
        cell = rows[setting.name][0]
        if setting.default is None:
            assert cell.startswith("(none"), f"{setting.name}: no default in sync.config, doc says {cell!r}"
        elif setting.default == "":
            assert cell.startswith("(empty"), f"{setting.name}: empty default in sync.config, doc says {cell!r}"
        else:
            assert f"`{setting.default}`" in cell, f"{setting.name}: default {setting.default!r}, doc says {cell!r}"


def test_only_the_connection_string_form_is_left_to_local_runs() -> None:
    rows = documented_settings(CONFIG_DOC.read_text())
    not_deployed = {name for name, cells in rows.items() if not deployed_in_docs(cells)}
    assert not_deployed == {"AzureWebJobsStorage"}


def test_secrets_are_key_vault_references() -> None:
    settings = bicep_app_settings(read("app/api.bicep"))
    for setting in SETTINGS:
        if setting.secret:
            assert setting.name in settings, f"{setting.name} is not written by the Bicep"
            assert settings[setting.name].startswith("'@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/"), (
                f"{setting.name} must be a Key Vault reference, is {settings[setting.name]}"
            )


def test_host_storage_uses_the_managed_identity() -> None:
    settings = bicep_app_settings(read("app/api.bicep"))
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    for service in ("blob", "queue", "table"):
        assert f"AzureWebJobsStorage__{service}ServiceUri" in settings
    assert "AzureWebJobsStorage" not in settings  # the connection-string form needs shared keys
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"
    assert settings["GRAPH_MANAGED_IDENTITY_CLIENT_ID"] == "identityClientId"


def without_comments(text: str) -> str:
    return re.sub(r"(^|\s)//.*$", "", text, flags=re.MULTILINE)


def test_no_worker_runtime_settings_on_flex() -> None:
    for path in INFRA.rglob("*.bicep"):
        code = without_comments(path.read_text())
        assert "https://" in code or path.name != "api.bicep"  # the comment stripper keeps URLs
        for name in FORBIDDEN_ON_FLEX:
            assert name not in code, f"{name} in {path.name}: not allowed on Flex Consumption"


def test_schedules_and_policy_defaults_match_sync_config() -> None:
    main = read("main.bicep")
    defaults = {s.name: s.default for s in SETTINGS}
    params = {
        "reconcileSchedule": "RECONCILE_SCHEDULE",
        "subscriptionSchedule": "SUBSCRIPTION_SCHEDULE",
        "cdcPullSchedule": "CDC_PULL_SCHEDULE",
        "conflictPolicy": "CONFLICT_POLICY",
        "deletePolicySalesforce": "DELETE_POLICY_SALESFORCE",
        "deletePolicyM365": "DELETE_POLICY_M365",
        "syncDirection": "SYNC_DIRECTION",
        "graphCredential": "GRAPH_CREDENTIAL",
        "sfAuthFlow": "SF_AUTH_FLOW",
        "sfApiVersion": "SF_API_VERSION",
        "breakerMaxShare": "BREAKER_MAX_SHARE",
        "syncFolderName": "SYNC_FOLDER_NAME",
        "graphBaseUrl": "GRAPH_BASE_URL",
        "syncTablePrefix": "SYNC_TABLE_PREFIX",
    }
    for param, setting in params.items():
        match = re.search(rf"^param {param} string = '([^']*)'", main, re.MULTILINE)
        assert match, f"main.bicep: param {param} has no string default"
        assert match.group(1) == defaults[setting], f"{param} default {match.group(1)!r} != {setting}"
    for param, setting in {"breakerMinCount": "BREAKER_MIN_COUNT", "breakerMaxCount": "BREAKER_MAX_COUNT"}.items():
        assert re.search(rf"^param {param} int = {defaults[setting]}$", main, re.MULTILINE), param


# ---------------------------------------------------------------- resource properties


def test_storage_is_identity_only_and_private() -> None:
    storage = resource_block(read("app/storage.bicep"), "storage")
    for prop in (
        "allowSharedKeyAccess: false",
        "allowBlobPublicAccess: false",
        "minimumTlsVersion: 'TLS1_2'",
        "supportsHttpsTrafficOnly: true",
    ):
        assert re.search(rf"^\s*{re.escape(prop)}\s*$", storage, re.MULTILINE), prop
    text = read("app/storage.bicep")
    assert text.count("publicAccess: 'None'") == 2  # deployment container and host containers


def test_function_app_is_https_only_python_311_on_flex() -> None:
    api = read("app/api.bicep")
    plan = resource_block(api, "plan")
    assert "tier: 'FlexConsumption'" in plan and "name: 'FC1'" in plan
    site = resource_block(api, "functionApp")
    for prop in (
        "httpsOnly: true",
        "minTlsVersion: '1.2'",
        "ftpsState: 'Disabled'",
        "keyVaultReferenceIdentity: identityId",
    ):
        assert prop in site, prop
    assert re.search(r"runtime: \{\s*name: 'python'\s*version: pythonVersion\s*\}", site)
    assert re.search(r"^param pythonVersion string = '3\.11'$", api, re.MULTILINE)
    assert "pythonVersion:" not in read("main.bicep")  # main keeps the 3.11 default
    assert "type: 'UserAssigned'" in site
    assert "'azd-service-name': serviceName" in site
    for name in ("ftp", "scm"):
        assert re.search(rf"name: '{name}'\s*properties: \{{\s*allow: false", api), f"basic auth {name} not disabled"


def test_key_vault_rbac_soft_delete_purge_protection() -> None:
    vault = resource_block(read("app/keyvault.bicep"), "vault")
    for prop in ("enableRbacAuthorization: true", "enableSoftDelete: true", "enablePurgeProtection: true"):
        assert prop in vault, prop
    assert "accessPolicies" not in vault


def test_application_insights_without_local_auth() -> None:
    monitoring = read("app/monitoring.bicep")
    assert "DisableLocalAuth: true" in resource_block(monitoring, "applicationInsights")
    assert "WorkspaceResourceId: logAnalytics.id" in monitoring


def test_role_assignments_use_builtin_ids_and_guid_names() -> None:
    rbac = read("app/rbac.bicep")
    for role, guid in ROLE_IDS.items():
        assert f"{role}: '{guid}'" in rbac, role
    assignment = r"^resource \w+ 'Microsoft\.Authorization/roleAssignments@[^']+'.*?^\S"
    blocks = re.findall(assignment, rbac, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 7
    used_roles = set()
    for block in blocks:
        name = re.search(r"name: guid\((\S+?), (\w+), roles\.(\w+)\)", block)
        assert name, f"role assignment not named guid(scope, principal, role):\n{block}"
        role_def = re.search(r"roleDefinitions', roles\.(\w+)\)", block)
        assert role_def and role_def.group(1) == name.group(3), block
        used_roles.add(name.group(3))
    assert set(ROLE_IDS) <= used_roles
    assert "Owner'" not in rbac and "Contributor'" not in rbac.replace("DataContributor'", "")


def test_blob_owner_is_on_the_account_by_default_as_in_the_official_flex_samples() -> None:
    rbac = read("app/rbac.bicep")
    assert "scope: deploymentContainer" in rbac
    assert "param hostBlobRoleScope string = 'account'" in rbac
    assert "param hostBlobRoleScope string = 'account'" in read("main.bicep")
    assert re.search(r"accountBlobOwner .*= if \(hostBlobRoleScope == 'account'\)", rbac)


def test_no_registry_modules_and_every_skip_has_a_reason() -> None:
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text()
        assert not re.search(r"^\s*module\s+\w+\s+'br[:/]", text, re.MULTILINE), path.name
        for match in re.finditer(r"checkov:skip=(CKV2?_\w+)(:?)(.*)", text):
            assert match.group(2) == ":" and len(match.group(3).strip()) > 10, f"{path.name}: {match.group(0)}"


# ---------------------------------------------------------------- outputs, azd, parameters


def test_outputs_name_the_app_and_its_urls() -> None:
    main = read("main.bicep")
    assert re.search(r"^output AZURE_FUNCTION_APP_NAME string", main, re.MULTILINE)
    for path in ("/api/graph/notifications", "/api/graph/lifecycle", "/api/salesforce/events", "/api/status"):
        assert re.search(rf"^output \w+ string = '\$\{{hostUrl\}}{re.escape(path)}'$", main, re.MULTILINE), path


def test_azure_yaml_declares_the_python_function_service() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, re.MULTILINE)
    assert service, "azure.yaml has no service 'api'"
    body = service.group(1)
    for line in ("project: .", "language: python", "host: function"):
        assert re.search(rf"^    {re.escape(line)}\s*$", body, re.MULTILINE), line


def test_parameters_file_matches_main_bicep() -> None:
    main = read("main.bicep")
    declared = dict(re.findall(r"^param (\w+) \w+(.*)$", main, re.MULTILINE))
    required = {name for name, rest in declared.items() if "=" not in rest}
    parameters = json.loads(read("main.parameters.json"))["parameters"]
    assert set(parameters) <= set(declared), sorted(set(parameters) - set(declared))
    missing = required - set(parameters)
    assert not missing, f"required params missing from main.parameters.json: {missing}"
    assert "eventsHmacSecret" not in parameters or "${" in json.dumps(parameters["eventsHmacSecret"])


@pytest.mark.parametrize("script", ["Set-ExchangeRbacScope.ps1", "Remove-TenantWideContactsConsent.ps1",
                                    "New-SalesforceJwtCertificate.ps1", "Set-EventsHmacSecret.ps1"])
def test_admin_scripts_exist(script: str) -> None:
    text = (INFRA / "scripts" / script).read_text()
    assert text.lstrip().startswith("<#"), f"{script} should open with comment-based help"
