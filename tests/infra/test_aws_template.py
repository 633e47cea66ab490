"""The AWS deployment, checked offline: build, ``chalice package --merge-template``, lint, scan, inspect.

One build per session (``aws_build``): ``infra/build.py`` stages ``aws_app`` with ``core`` under
``vendor/`` and runs chalice's packager into a temporary folder. Then:

* the bundle holds ``app.py``, ``chalicelib/`` and ``core/`` without the embedded server
  (``core/local``), and the unzipped bundle answers ``/api/v1/health`` in a fresh interpreter whose
  path is the bundle (+ the venv's site-packages as the Lambda runtime's boto3), called the way Lambda
  calls it (``app.app(event, context)``), having loaded nothing of ``core.local``;
* cfn-lint and checkov (``--skip-download``) pass on the packaged template, and checkov skips exactly
  the checks the template justifies in its ``Metadata``;
* the properties the deployment promises are asserted on the template itself (table and GSIs equal
  to what ``create_table`` makes on a real moto server, bucket hardening, least-privilege IAM,
  secrets only through Secrets Manager dynamic references);
* a negative control: a broken copy of the template fails cfn-lint, checkov and those assertions.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from infra.build import REPO, AwsBuild
from infra.local.servers import RunningProcess, start_moto
from tests.infra.iac_tools import CheckovReport, run_cfn_lint, run_checkov

pytestmark = pytest.mark.xdist_group("iac-aws")

Template = dict[str, Any]

# What the DynamoDB and S3 adapters call (aws_app/chalicelib): the role must allow these and no more.
TABLE_ACTIONS = {
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
}
INDEX_ACTIONS = {"dynamodb:Query"}
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
BUCKET_ACTIONS = {"s3:ListBucket"}
LOG_ACTIONS = {"logs:CreateLogStream", "logs:PutLogEvents"}


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(aws_build: AwsBuild) -> Template:
    assert aws_build.template is not None
    loaded: Template = yaml.safe_load(aws_build.template.read_text())
    return loaded


@pytest.fixture(scope="module")
def bundle(aws_build: AwsBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployment zip, unpacked as Lambda unpacks it into /var/task."""
    assert aws_build.bundle is not None
    target = tmp_path_factory.mktemp("lambda-task")
    with zipfile.ZipFile(aws_build.bundle) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    with start_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


def broken_copy(template: Template) -> Template:
    """The packaged template with deliberate faults, each of which a check below must catch.

    The API's 165 generated integrations are cut to one path: no check under test reads them, and
    checkov then scans the copy in seconds.
    """
    broken = copy.deepcopy(template)
    resources = broken["Resources"]
    paths = resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    first = next(iter(paths))
    resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"] = {first: paths[first]}
    # a public bucket, unencrypted, without the TLS-only policy
    bucket = resources["BlobBucket"]["Properties"]
    bucket["PublicAccessBlockConfiguration"] = {k: False for k in bucket["PublicAccessBlockConfiguration"]}
    del bucket["BucketEncryption"]
    resources["BlobBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"] = [
        s for s in resources["BlobBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] != "Deny"
    ] or [
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
            "Action": "s3:GetObject",
            "Resource": {"Fn::Sub": "${BlobBucket.Arn}/*"},
        }
    ]
    # a table without point-in-time recovery, and an invalid billing mode
    table = resources["CatalogTable"]["Properties"]
    table["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": False}
    table["BillingMode"] = "ON_DEMAND"
    # a data action on every resource
    statements = resources["ApiHandlerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements.append({"Sid": "Everything", "Effect": "Allow", "Action": ["dynamodb:*", "s3:*"], "Resource": "*"})
    # the JWT secret as a plain parameter
    broken["Parameters"]["JwtSecret"] = {"Type": "String", "NoEcho": True}
    variables = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    variables["PDCAT_JWT_SECRET"] = {"Ref": "JwtSecret"}
    return broken


@pytest.fixture(scope="module")
def templates_on_disk(
    aws_build: AwsBuild, template: Template, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """chalice's ``sam.yaml`` byte for byte, and the broken copy, in a folder of their own."""
    assert aws_build.template is not None
    folder = tmp_path_factory.mktemp("templates")
    paths = {"packaged": folder / "packaged.yaml", "broken": folder / "broken.yaml"}
    shutil.copyfile(aws_build.template, paths["packaged"])
    paths["broken"].write_text(yaml.safe_dump(broken_copy(template), sort_keys=False))
    return paths


@pytest.fixture(scope="module")
def checkov(iac_venv: Path, templates_on_disk: dict[str, Path]) -> dict[str, CheckovReport]:
    """One checkov run over both templates (its start-up is a third of the cost)."""
    reports = run_checkov(iac_venv, "cloudformation", "-d", str(templates_on_disk["packaged"].parent))
    report = reports["cloudformation"]
    return {name: report.of_file(path.name) for name, path in templates_on_disk.items()}


# ---- the bundle ----------------------------------------------------------------------------------
def test_bundle_holds_app_chalicelib_and_core(aws_build: AwsBuild) -> None:
    assert aws_build.bundle is not None
    with zipfile.ZipFile(aws_build.bundle) as archive:
        names = set(archive.namelist())
    expected = {"app.py", "chalicelib/bootstrap.py", "chalicelib/dynamo_store.py", "chalicelib/s3_blobs.py"}
    expected |= {f"core/{p.relative_to(REPO / 'core').as_posix()}" for p in (REPO / "core").rglob("*.py")}
    embedded = {name for name in expected if name.startswith("core/local/")}
    assert embedded, "core/local is gone: update EMBEDDED_ONLY in infra/build.py"
    assert expected - embedded <= names, sorted(expected - embedded - names)
    assert not [n for n in names if n.startswith("core/local")]  # the embedded server stays home
    assert {"jwt/__init__.py", "pynamodb/__init__.py", "cryptography/__init__.py", "blake3/__init__.py"} <= names
    assert not [n for n in names if n.startswith("vendor/") or "__pycache__" in n]
    assert not [n for n in names if n.startswith(".chalice")]


def test_the_repository_keeps_no_copy_of_core() -> None:
    for app in ("aws_app", "azure_app"):
        copies = [p for p in (REPO / app).rglob("core") if p.is_dir()]
        assert not copies, copies
        assert not (REPO / app / "vendor").exists()


_SERVE = r"""
import json, sys
bundle, site = sys.argv[1], sys.argv[2]
sys.path[:0] = [bundle]            # /var/task first, as in Lambda
sys.path.append(site)              # then the runtime's own packages (boto3)
import app                         # the handler is app.app, as in the template

def event(method, path, resource, params=None):
    return {
        "resource": resource, "path": path, "httpMethod": method,
        "headers": {"accept": "application/json", "host": "example.execute-api.us-east-1.amazonaws.com"},
        "multiValueQueryStringParameters": None, "pathParameters": params, "stageVariables": None,
        "requestContext": {"httpMethod": method, "resourcePath": resource, "path": "/api" + path,
                           "identity": {"sourceIp": "192.0.2.1"}, "stage": "api"},
        "body": None, "isBase64Encoded": False,
    }

class Context:
    function_name, memory_limit_in_mb, aws_request_id = "pdcat", 1024, "test"
    def get_remaining_time_in_millis(self):
        return 29000

answers = {
    "health": app.app(event("GET", "/api/v1/health", "/api/v1/health"), Context()),
    "catalog": app.app(event("GET", "/api/v1/catalog", "/api/v1/catalog"), Context()),
    "unknown": app.app(event("GET", "/api/v1/nowhere", "/{p0}/{p1}/{p2}", {"p0": "api", "p1": "v1", "p2": "nowhere"}),
                       Context()),
}
import chalicelib.s3_blobs, core.gc         # what the first request and the schedule load lazily
origins = {name: sys.modules[name].__file__ for name in ("app", "chalice", "chalicelib.bootstrap", "core.api",
                                                          "core.service", "jwt", "pynamodb", "chalicelib.s3_blobs",
                                                          "chalicelib.dynamo_store", "core.storage_layout")}
embedded = sorted(name for name in sys.modules if name == "core.local" or name.startswith("core.local."))
print(json.dumps({"answers": answers, "origins": origins, "embedded": embedded}))
"""


def test_unzipped_bundle_answers_health_like_lambda(bundle: Path, tmp_path: Path) -> None:
    site = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "PDCAT_TABLE": "pdcat-test",
        "PDCAT_BUCKET": "pdcat-test",
        "PDCAT_JWT_SECRET": "bundle-test-secret-" + "x" * 24,
        # Any store call would fail fast on a closed loopback port instead of leaving the machine.
        "PDCAT_DYNAMODB_ENDPOINT": "http://127.0.0.1:9",
        "PDCAT_S3_ENDPOINT": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    # -I: no user site, no PYTHON* variables, no script folder; -S: no site-packages (nor the editable
    # install of this repository) until the script appends the venv's own, after the bundle.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _SERVE, str(bundle), site],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, origin in result["origins"].items():
        assert Path(origin).resolve().is_relative_to(bundle.resolve()), (name, origin)
    assert result["embedded"] == []
    health = result["answers"]["health"]
    assert health["statusCode"] == 200, health
    assert json.loads(health["body"])["status"] == "ok"
    catalog = result["answers"]["catalog"]
    assert catalog["statusCode"] == 401, catalog  # no token: core's router refused before any store call
    assert json.loads(catalog["body"])["error"]["code"] == "unauthenticated"
    assert result["answers"]["unknown"]["statusCode"] == 404


# ---- linters --------------------------------------------------------------------------------------
def test_cfn_lint_passes_on_the_packaged_template(iac_venv: Path, templates_on_disk: dict[str, Path]) -> None:
    done = run_cfn_lint(iac_venv, templates_on_disk["packaged"])
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_cfn_lint_fails_on_the_broken_copy(iac_venv: Path, templates_on_disk: dict[str, Path]) -> None:
    done = run_cfn_lint(iac_venv, templates_on_disk["broken"])
    assert done.returncode != 0
    assert "ON_DEMAND" in done.stdout, done.stdout


def _justified_skips(template: Template) -> set[tuple[str, str]]:
    """(check id, resource) of every skip in the template's Metadata; each must give its reason."""
    skips = set()
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(str(skip.get("comment", "")).split()) >= 8, f"{name}: {skip['id']} needs a real reason"
            skips.add((skip["id"], name))
    return skips


def test_checkov_passes_and_skips_only_what_the_template_justifies(
    checkov: dict[str, CheckovReport], template: Template
) -> None:
    report = checkov["packaged"]
    assert report.failed == [], CheckovReport.ids(report.failed)
    assert len(report.passed) >= 20
    # every skip is justified in the template, and every justification is for a check that ran
    assert CheckovReport.ids(report.skipped) == _justified_skips(template)


def test_checkov_fails_on_the_broken_copy(checkov: dict[str, CheckovReport]) -> None:
    failed = CheckovReport.ids(checkov["broken"].failed)
    public_access = {(cid, "BlobBucket") for cid in ("CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56")}
    assert public_access <= failed, failed
    assert ("CKV_AWS_28", "CatalogTable") in failed  # point-in-time recovery
    assert {c for c, r in failed if r == "ApiHandlerRole"}, failed  # the wildcard statement


# ---- the properties the deployment promises ---------------------------------------------------------
def _resource(template: Template, name: str, kind: str) -> dict[str, Any]:
    resource = template["Resources"][name]
    assert resource["Type"] == kind, (name, resource["Type"])
    properties: dict[str, Any] = resource["Properties"]
    return properties


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def check_table(template: Template, created: dict[str, Any]) -> None:
    """Billing, recovery and encryption; keys and GSIs exactly as ``create_table`` makes them."""
    table = _resource(template, "CatalogTable", "AWS::DynamoDB::Table")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert template["Resources"]["CatalogTable"]["DeletionPolicy"] == "Retain"

    def keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
        return [(k["AttributeName"], k["KeyType"]) for k in schema]

    assert keys(table["KeySchema"]) == keys(created["KeySchema"])
    assert sorted(map(str, table["AttributeDefinitions"])) == sorted(map(str, created["AttributeDefinitions"]))
    mine = {g["IndexName"]: (keys(g["KeySchema"]), g["Projection"]) for g in table["GlobalSecondaryIndexes"]}
    theirs = {
        g["IndexName"]: (keys(g["KeySchema"]), {"ProjectionType": g["Projection"]["ProjectionType"]})
        for g in created["GlobalSecondaryIndexes"]
    }
    assert mine == theirs
    assert not table.get("LocalSecondaryIndexes") and not created.get("LocalSecondaryIndexes")


def check_bucket(template: Template) -> None:
    bucket = _resource(template, "BlobBucket", "AWS::S3::Bucket")
    assert "BucketEncryption" in bucket, "the bucket must encrypt by default"
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"aws:kms", "AES256"}
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    aborts = [
        r
        for r in bucket["LifecycleConfiguration"]["Rules"]
        if r["Status"] == "Enabled" and "AbortIncompleteMultipartUpload" in r and "Prefix" not in r
    ]
    assert aborts and aborts[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7
    policy = _resource(template, "BlobBucketPolicy", "AWS::S3::BucketPolicy")
    assert policy["Bucket"] == {"Ref": "BlobBucket"}
    statements = policy["PolicyDocument"]["Statement"]
    tls_only = [
        s
        for s in statements
        if s["Effect"] == "Deny"
        and s["Principal"] == "*"
        and s["Action"] == "s3:*"
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert tls_only, statements
    covered = [json.dumps(r, sort_keys=True) for r in _as_list(tls_only[0]["Resource"])]
    assert json.dumps({"Fn::GetAtt": ["BlobBucket", "Arn"]}, sort_keys=True) in covered
    assert json.dumps({"Fn::Sub": "${BlobBucket.Arn}/*"}, sort_keys=True) in covered
    assert not [s for s in statements if s["Effect"] == "Allow"], "the bucket policy grants nothing"


def _refs(value: Any) -> set[str]:
    """Logical ids a CloudFormation value points at (Ref, GetAtt, ${X} / ${X.Attr} in Sub)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return {value["Ref"]}
        if "Fn::GetAtt" in value:
            return {value["Fn::GetAtt"][0]}
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            return {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text) if not m.startswith("AWS::")}
        return set().union(*(_refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value)) if value else set()
    return set()


def check_role(template: Template) -> None:
    """Every function's role (the API's, the scheduled collector's): only the table, its two indexes, the
    bucket and the log group; no wildcard resource or action."""
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    assert len(functions) >= 2, "the API handler and the scheduled garbage collector"
    for function in functions:
        _check_function_role(template, function["Properties"]["Role"]["Fn::GetAtt"][0])


def _check_function_role(template: Template, role_name: str) -> None:
    role = _resource(template, role_name, "AWS::IAM::Role")
    assert "ManagedPolicyArns" not in role, "no managed policies: they name resources of the whole account"
    gsis = {g["IndexName"] for g in template["Resources"]["CatalogTable"]["Properties"]["GlobalSecondaryIndexes"]}
    granted: dict[str, set[str]] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement and "NotResource" not in statement
            actions = set(_as_list(statement["Action"]))
            assert not [a for a in actions if "*" in a], actions
            for resource in _as_list(statement["Resource"]):
                assert isinstance(resource, dict), f"literal resource {resource!r}: only this stack's resources"
                targets = _refs(resource)
                assert targets and targets <= {"CatalogTable", "BlobBucket", "FunctionLogGroup"}, resource
                text = json.dumps(resource)
                if resource == {"Fn::GetAtt": ["CatalogTable", "Arn"]}:
                    kind = "table"
                elif "CatalogTable" in targets:
                    index_arn = r"\$\{CatalogTable\.Arn\}/index/([A-Za-z0-9_.-]+)"
                    match = re.fullmatch(index_arn, resource.get("Fn::Sub", ""))
                    assert match and match.group(1) in gsis, text
                    kind = "index:" + match.group(1)
                elif resource == {"Fn::GetAtt": ["BlobBucket", "Arn"]}:
                    kind = "bucket"
                elif resource == {"Fn::Sub": "${BlobBucket.Arn}/*"}:
                    kind = "objects"
                elif resource == {"Fn::GetAtt": ["FunctionLogGroup", "Arn"]}:
                    kind = "logs"
                else:
                    raise AssertionError(f"unexpected resource {text}")
                granted.setdefault(kind, set()).update(actions)
    expected = {"table": TABLE_ACTIONS, "bucket": BUCKET_ACTIONS, "objects": OBJECT_ACTIONS, "logs": LOG_ACTIONS}
    expected |= {f"index:{name}": INDEX_ACTIONS for name in gsis}
    assert granted == expected


def check_secrets(template: Template) -> None:
    """The JWT secret only as a Secrets Manager dynamic reference; no secret-bearing parameter."""
    for name, parameter in template.get("Parameters", {}).items():
        assert not parameter.get("NoEcho"), f"{name}: secrets come from Secrets Manager, not parameters"
    function = _resource(template, "APIHandler", "AWS::Serverless::Function")
    variables = function["Environment"]["Variables"]
    secret = variables["PDCAT_JWT_SECRET"]
    condition, when_set, otherwise = secret["Fn::If"]
    assert condition == "UseJwtSecret" and "UseJwtSecret" in template["Conditions"]
    assert otherwise == {"Ref": "AWS::NoValue"}
    assert when_set["Fn::Sub"].startswith("{{resolve:secretsmanager:${JwtSecretId}:SecretString")
    for name, value in variables.items():
        refs = _refs(value) - {"CatalogTable", "BlobBucket"}
        if name != "PDCAT_JWT_SECRET":
            assert not [r for r in refs if "secret" in r.lower()], (name, value)
        assert not (isinstance(value, str) and "secret" in name.lower()), f"{name} is a literal"


def check_function(template: Template) -> None:
    function = _resource(template, "APIHandler", "AWS::Serverless::Function")
    assert function["Runtime"] == "python3.11" and function["Handler"] == "app.app"
    assert function["CodeUri"] == "./deployment.zip"
    variables = function["Environment"]["Variables"]
    assert variables["PDCAT_TABLE"] == {"Ref": "CatalogTable"}
    assert variables["PDCAT_BUCKET"] == {"Ref": "BlobBucket"}
    for name, parameter in (("PDCAT_JWKS_URL", "JwksUrl"), ("PDCAT_JWT_ISSUER", "JwtIssuer")):
        assert variables[name] == {"Ref": parameter}
    assert variables["PDCAT_JWT_AUDIENCE"] == {"Ref": "JwtAudience"}
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}
    assert "OneTokenVerifier" in template["Rules"]


@pytest.fixture(scope="module")
def created_table(moto: RunningProcess) -> dict[str, Any]:
    """What ``create_table`` really makes (on moto's DynamoDB), as DescribeTable reports it."""
    from aws_app.chalicelib.dynamo_store import create_table

    create_table("pdcat-shape", "us-east-1", host=moto.url)
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    described: dict[str, Any] = client.describe_table(TableName="pdcat-shape")["Table"]
    client.close()
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    return described


Check = Callable[[Template], None]


@pytest.fixture(scope="module")
def checks(created_table: dict[str, Any]) -> dict[str, Check]:
    return {
        "table": lambda t: check_table(t, created_table),
        "bucket": check_bucket,
        "role": check_role,
        "secrets": check_secrets,
        "function": check_function,
    }


@pytest.mark.parametrize("name", ["table", "bucket", "role", "secrets", "function"])
def test_packaged_template_keeps_its_promises(name: str, checks: dict[str, Check], template: Template) -> None:
    checks[name](template)


@pytest.mark.parametrize("name", ["table", "bucket", "role", "secrets"])
def test_each_promise_check_catches_the_broken_copy(name: str, checks: dict[str, Check], template: Template) -> None:
    with pytest.raises(AssertionError):
        checks[name](broken_copy(template))
