"""The Azure deployment, checked offline: ``main.bicep`` as pycep parses it, checkov, and the bundle.

There is no Bicep compiler offline, so the template is read by pycep (checkov's own Bicep parser) and
its promises are asserted on that parse: Flex Consumption Python 3.11 on Linux, storage that is
private and TLS 1.2+, Cosmos DB with keys disabled and the partition key and indexing policy the
store uses, data-plane role assignments of one managed identity on the narrowest scopes, Key Vault
with RBAC and purge protection, and the JWT secret only as a Key Vault reference. checkov
(``--skip-download --framework bicep``) passes with every skip justified in place. A broken copy
fails both. The build's zip holds the app with ``core`` beside it (without the embedded server,
``core/local``) and imports, adapters included, from a clean path without loading ``core.local``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from azure_app.azurelib.cosmos_store import INDEXING_POLICY, PARTITION_KEY_PATH
from infra.build import REPO, AzureBuild, build_azure
from tests.infra.iac_tools import CheckovReport, parse_bicep, run_checkov

pytestmark = pytest.mark.xdist_group("iac-azure")

MAIN = REPO / "infra" / "azure" / "main.bicep"
Parsed = dict[str, Any]

# Built-in role definition ids (Azure RBAC and the Cosmos DB data plane).
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"

# The settings azure_app/azurelib/bootstrap.py reads; key-based ones must not be set.
IDENTITY_SETTINGS = {
    "PDCAT_COSMOS_ENDPOINT",
    "PDCAT_COSMOS_DATABASE",
    "PDCAT_COSMOS_CONTAINER",
    "PDCAT_BLOB_ACCOUNT_URL",
    "PDCAT_BLOB_CONTAINER",
    "PDCAT_JWKS_URL",
    "PDCAT_JWT_ISSUER",
    "PDCAT_JWT_AUDIENCE",
    "AZURE_CLIENT_ID",
}
KEY_SETTINGS = {"PDCAT_COSMOS_KEY", "PDCAT_BLOB_CONNECTION_STRING", "AzureWebJobsStorage"}


# ---- reading pycep's parse ------------------------------------------------------------------------
def simplify(value: Any) -> Any:
    """pycep's expression trees as plain values: ``a.b.c`` for property access, ``{"fn": ...}`` for calls."""
    if isinstance(value, dict):
        operator = value.get("operator")
        if isinstance(operator, dict) and operator.get("type") == "property_accessor":
            operands = operator["operands"]
            return f"{simplify(operands['operand_1'])}.{simplify(operands['operand_2'])}"
        function = value.get("function")
        if isinstance(function, dict) and set(value) == {"function"}:
            return {"fn": function["type"], **{k: simplify(v) for k, v in function["parameters"].items()}}
        return {k: simplify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [simplify(v) for v in value]
    return value


class Bicep:
    """Resources by symbolic name (conditional ones unwrapped), variables and parameters."""

    def __init__(self, parsed: Parsed) -> None:
        self.parameters: dict[str, Any] = parsed.get("parameters", {})
        self.variables = {name: simplify(v["value"]) for name, v in parsed.get("variables", {}).items()}
        self.resources: dict[str, dict[str, Any]] = {}
        for name, resource in parsed.get("resources", {}).items():
            config = resource["config"]
            condition = None
            if set(config) == {"condition", "config"}:
                condition, config = config["condition"], config["config"]
            self.resources[name] = {"type": resource["type"], "condition": condition, **simplify(config)}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.resources.items() if r["type"] == kind}

    def one(self, kind: str) -> dict[str, Any]:
        (resource,) = self.of_type(kind).values()
        return resource

    def variable(self, name: str) -> Any:
        return self.variables[name]

    def app_settings(self) -> dict[str, Any]:
        """Every app setting of the Function App: the conditional ones mapped to their condition."""
        app = self.one("Microsoft.Web/sites")
        settings = app["properties"]["siteConfig"]["appSettings"]
        parts = [settings] if isinstance(settings, list) else []
        if isinstance(settings, dict) and settings.get("fn") == "concat":
            parts = [settings[k] for k in sorted(settings) if k.startswith("arg_")]
        found: dict[str, Any] = {}
        for part in parts:
            value = self.variable(part) if isinstance(part, str) else part
            if isinstance(value, dict) and "operator" in value:  # cond ? [..] : []
                operands = value["operator"]["operands"]
                assert operands["false_value"] == [], "a conditional setting is absent, never replaced"
                value = operands["true_value"]
            for entry in value:
                assert entry["name"] not in found, f"{entry['name']} set twice"
                found[entry["name"]] = entry["value"]
        return found


def role_id(bicep: Bicep, value: Any) -> str:
    """The GUID a roleDefinitionId names (``subscriptionResourceId(..., var)`` or a ``${var}`` path)."""
    if isinstance(value, dict) and value.get("fn") == "subscription_resource_id":
        assert value["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        return str(bicep.variable(value["resource_name_1"]))
    text = str(value)
    name = text.rsplit("/", 1)[-1].removeprefix("${").removesuffix("}")
    return str(bicep.variable(name))


# ---- the promises -----------------------------------------------------------------------------------
def check_function_app(b: Bicep) -> None:
    plan = b.one("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"} and plan["properties"]["reserved"] is True
    app = b.one("Microsoft.Web/sites")
    assert "linux" in app["kind"].split(",") and "functionapp" in app["kind"].split(",")
    properties = app["properties"]
    assert properties["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert properties["httpsOnly"] is True
    site = properties["siteConfig"]
    assert site["minTlsVersion"] == "1.2" and site["ftpsState"] == "Disabled"
    assert app["identity"]["type"] == "UserAssigned"
    assert properties["keyVaultReferenceIdentity"] == "appIdentity.id"
    storage = properties["functionAppConfig"]["deployment"]["storage"]
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    for policy in b.of_type("Microsoft.Web/sites/basicPublishingCredentialsPolicies").values():
        assert policy["properties"]["allow"] is False
    assert {p["name"] for p in b.of_type("Microsoft.Web/sites/basicPublishingCredentialsPolicies").values()} == {
        "ftp",
        "scm",
    }


def check_storage(b: Bicep) -> None:
    accounts = b.of_type("Microsoft.Storage/storageAccounts")
    assert set(accounts) == {"dataStorage", "hostStorage"}
    for name, account in accounts.items():
        properties = account["properties"]
        assert properties["minimumTlsVersion"] == "TLS1_2", name
        assert properties["supportsHttpsTrafficOnly"] is True, name
        assert properties["allowBlobPublicAccess"] is False, name
        assert properties["allowSharedKeyAccess"] is False, name  # identity only (user-delegation SAS)
    containers = b.of_type("Microsoft.Storage/storageAccounts/blobServices/containers")
    assert containers and all(c["properties"]["publicAccess"] == "None" for c in containers.values())


def check_cosmos(b: Bicep) -> None:
    account = b.one("Microsoft.DocumentDB/databaseAccounts")
    assert account["kind"] == "GlobalDocumentDB"
    assert account["properties"]["disableLocalAuth"] is True
    assert account["properties"]["minimalTlsVersion"] == "Tls12"
    database = b.one("Microsoft.DocumentDB/databaseAccounts/sqlDatabases")
    container = b.one("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    assert container["parent"] == next(iter(b.of_type("Microsoft.DocumentDB/databaseAccounts/sqlDatabases")))
    resource = container["properties"]["resource"]
    paths = [b.variables.get(p, p) for p in resource["partitionKey"]["paths"]]
    assert paths == [PARTITION_KEY_PATH]
    assert resource["indexingPolicy"] == INDEXING_POLICY
    assert b.variable(database["name"]) == b.variable(database["properties"]["resource"]["id"])
    # the names the app is configured with are the ones created
    settings = b.app_settings()
    assert settings["PDCAT_COSMOS_DATABASE"] == database["name"]
    assert settings["PDCAT_COSMOS_CONTAINER"] == container["name"]
    assert settings["PDCAT_COSMOS_ENDPOINT"] == "cosmos.properties.documentEndpoint"


def check_roles(b: Bicep) -> None:
    """Each role of the app's identity, on the narrowest scope that works."""
    granted = {}
    for name, assignment in b.of_type("Microsoft.Authorization/roleAssignments").items():
        properties = assignment["properties"]
        assert properties["principalId"] == "appIdentity.properties.principalId", name
        assert properties["principalType"] == "ServicePrincipal", name
        granted[role_id(b, properties["roleDefinitionId"])] = assignment["scope"]
    assert granted[BLOB_DATA_CONTRIBUTOR] == "dataContainer"  # the catalog's container, not the account
    assert granted[BLOB_DELEGATOR] == "dataStorage"  # user delegation keys are account-level
    assert granted[BLOB_DATA_OWNER] == "hostStorage"  # the Functions host's own storage only
    assert granted[KEY_VAULT_SECRETS_USER] == "jwtSecretEntry"  # one secret, not the vault
    (cosmos_role,) = b.of_type("Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments").values()
    properties = cosmos_role["properties"]
    assert role_id(b, properties["roleDefinitionId"]) == COSMOS_DATA_CONTRIBUTOR
    assert properties["principalId"] == "appIdentity.properties.principalId"
    assert properties["scope"] == "${cosmos.id}/dbs/${cosmosDatabaseName}"


def check_secrets(b: Bicep) -> None:
    vault = b.one("Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["enablePurgeProtection"] is True
    assert vault["enableSoftDelete"] is True
    secure = {name for name, p in b.parameters.items() if {"type": "secure"} in p.get("decorators", [])}
    assert secure == {"jwtSecret"}
    secret = b.one("Microsoft.KeyVault/vaults/secrets")
    assert secret["properties"]["value"] == "jwtSecret" and secret["condition"] == "useJwtSecret"
    assert secret["properties"]["contentType"] == "text/plain"
    settings = b.app_settings()
    reference = settings["PDCAT_JWT_SECRET"]
    assert reference == "@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${jwtSecretName})"
    assert b.variable("jwtSecretName") == secret["name"] or secret["name"] == "jwtSecretName"
    for name, value in settings.items():
        assert not (isinstance(value, str) and value in secure), f"{name} holds a secret parameter itself"
        assert "listKeys" not in json.dumps(value) and "AccountKey=" not in json.dumps(value), name
    assert set(settings) >= IDENTITY_SETTINGS, IDENTITY_SETTINGS - set(settings)
    assert not KEY_SETTINGS & set(settings), KEY_SETTINGS & set(settings)
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"


CHECKS: dict[str, Callable[[Bicep], None]] = {
    "function_app": check_function_app,
    "storage": check_storage,
    "cosmos": check_cosmos,
    "roles": check_roles,
    "secrets": check_secrets,
}

# A broken copy: each line is a fault one of the checks above (and checkov) must catch.
FAULTS = [
    ("allowBlobPublicAccess: false", "allowBlobPublicAccess: true"),
    ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
    ("publicAccess: 'None'", "publicAccess: 'Blob'"),
    ("disableLocalAuth: true", "disableLocalAuth: false"),
    ("enablePurgeProtection: true", "enablePurgeProtection: false"),
    ("httpsOnly: true", "httpsOnly: false"),
    ("scope: dataContainer", "scope: dataStorage"),
    ("'@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${jwtSecretName})'", "jwtSecret"),
    ("paths: [\n          cosmosPartitionKeyPath\n        ]", "paths: [\n          '/id'\n        ]"),
    ("version: '3.11'", "version: '3.10'"),
]


@pytest.fixture(scope="module")
def broken_bicep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = MAIN.read_text()
    for old, new in FAULTS:
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
    path = tmp_path_factory.mktemp("broken-bicep") / "broken.bicep"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def bicep(iac_venv: Path) -> Bicep:
    return Bicep(parse_bicep(iac_venv, MAIN))


@pytest.fixture(scope="module")
def broken(iac_venv: Path, broken_bicep: Path) -> Bicep:
    return Bicep(parse_bicep(iac_venv, broken_bicep))


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_main_bicep_keeps_its_promises(name: str, bicep: Bicep) -> None:
    CHECKS[name](bicep)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_promise_check_catches_the_broken_copy(name: str, broken: Bicep) -> None:
    with pytest.raises(AssertionError):
        CHECKS[name](broken)


# ---- checkov ------------------------------------------------------------------------------------------
def _justified_skips(path: Path) -> set[tuple[str, str]]:
    """(check id, resource) of every ``// checkov:skip=ID: reason`` line, each with a real reason."""
    skips = set()
    resource = None
    for line in path.read_text().splitlines():
        if line.startswith("resource "):
            resource = line.split()[1]
        stripped = line.strip()
        if stripped.startswith("// checkov:skip="):
            check, _, reason = stripped.removeprefix("// checkov:skip=").partition(":")
            assert resource and len(reason.split()) >= 8, f"{check} needs a reason"
            skips.add((check, resource))
    return skips


@pytest.fixture(scope="module")
def checkov(iac_venv: Path, broken_bicep: Path) -> dict[str, CheckovReport]:
    report = run_checkov(iac_venv, "bicep", "-d", str(MAIN.parent), "-f", str(broken_bicep))["bicep"]
    return {"main": report.of_file("/main.bicep"), "broken": report.of_file("/broken.bicep")}


def test_checkov_passes_and_skips_only_what_main_bicep_justifies(checkov: dict[str, CheckovReport]) -> None:
    report = checkov["main"]
    assert report.failed == [], CheckovReport.ids(report.failed)
    assert len(report.passed) >= 20
    assert CheckovReport.ids(report.skipped) == _justified_skips(MAIN)


def test_checkov_fails_on_the_broken_copy(checkov: dict[str, CheckovReport]) -> None:
    failed = {check for check, _ in CheckovReport.ids(checkov["broken"].failed)}
    # TLS 1.2, public container access, Cosmos local auth, purge protection, https only (checkov has no
    # Bicep check of allowBlobPublicAccess: check_storage is the one that catches it)
    assert {"CKV_AZURE_44", "CKV_AZURE_34", "CKV_AZURE_140", "CKV_AZURE_110", "CKV_AZURE_70"} <= failed


# ---- the bundle -----------------------------------------------------------------------------------------
def test_bundle_holds_the_function_app_with_core_beside_it(azure_build: AzureBuild) -> None:
    with zipfile.ZipFile(azure_build.bundle) as archive:
        names = set(archive.namelist())
    expected = {"function_app.py", "host.json", "requirements.txt"}
    expected |= {f"azurelib/{p.name}" for p in (REPO / "azure_app" / "azurelib").glob("*.py")}
    expected |= {f"core/{p.relative_to(REPO / 'core').as_posix()}" for p in (REPO / "core").rglob("*.py")}
    embedded = {name for name in expected if name.startswith("core/local/")}
    assert embedded, "core/local is gone: update EMBEDDED_ONLY in infra/build.py"
    assert expected - embedded <= names, sorted(expected - embedded - names)
    assert not [n for n in names if n.startswith("core/local")]  # the embedded server stays home
    assert not [n for n in names if "__pycache__" in n or n.startswith("local.settings") or n == "__init__.py"]


def test_bundle_is_reproducible(azure_build: AzureBuild, tmp_path: Path) -> None:
    again = build_azure(tmp_path / "again")
    assert again.bundle.read_bytes() == azure_build.bundle.read_bytes()


_IMPORT = r"""
import json, sys
bundle, site = sys.argv[1], sys.argv[2]
sys.path[:0] = [bundle]
sys.path.append(site)
import function_app
functions = [f.get_function_name() for f in function_app.app.get_functions()]
# what the first request and the timer load lazily: the adapters, the service, the collector
import azurelib.blob_store, azurelib.cosmos_store, core.api, core.gc, core.service
names = ("function_app", "azurelib.bootstrap", "core.http", "azurelib.blob_store", "azurelib.cosmos_store",
         "core.service", "core.storage_layout")
origins = {n: sys.modules[n].__file__ for n in names}
embedded = sorted(n for n in sys.modules if n == "core.local" or n.startswith("core.local."))
print(json.dumps({"functions": functions, "origins": origins, "embedded": embedded}))
"""


def test_bundle_imports_from_a_clean_path(azure_build: AzureBuild, tmp_path: Path) -> None:
    target = tmp_path / "wwwroot"
    with zipfile.ZipFile(azure_build.bundle) as archive:
        archive.extractall(target)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _IMPORT, str(target), sysconfig.get_paths()["purelib"]],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["functions"] == ["api", "gc"]  # the HTTP catch-all and the hourly garbage collection
    for name, origin in result["origins"].items():
        assert Path(origin).resolve().is_relative_to(target.resolve()), (name, origin)
    assert result["embedded"] == []
