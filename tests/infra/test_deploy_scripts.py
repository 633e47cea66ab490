"""``infra/aws/deploy`` and ``infra/azure/deploy`` without a cloud: help, dry runs, clear refusals.

The scripts run as a user runs them (executables, a bare environment without cloud credentials).
Where a cloud CLI must be present but signed out, a stand-in ``aws``/``az`` on PATH answers as the
real one does without credentials (exit 255 / 1 and its message); nothing else is faked.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from infra.build import REPO

AWS_DEPLOY = REPO / "infra" / "aws" / "deploy"
AZURE_DEPLOY = REPO / "infra" / "azure" / "deploy"
SECRET = "deploy-test-secret-" + "q" * 40


def _run(
    script: Path, *args: str, path: str = "/usr/bin:/bin", extra: dict[str, str] | None = None, home: Path
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": str(home), "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/none"}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env={**env, **(extra or {})}, timeout=60, check=False
    )


def _signed_out_cli(folder: Path, name: str, message: str, code: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize("script", [AWS_DEPLOY, AZURE_DEPLOY])
def test_scripts_are_executable_and_explain_themselves(script: Path, tmp_path: Path) -> None:
    assert os.access(script, os.X_OK)
    done = _run(script, "--help", home=tmp_path)
    assert done.returncode == 0 and "--dry-run" in done.stdout


def test_aws_dry_run_prints_the_whole_deployment_without_credentials(tmp_path: Path) -> None:
    out = tmp_path / "build"
    done = _run(
        AWS_DEPLOY,
        *("--artifact-bucket", "my-artifacts", "--jwt-secret-id", "pdcat/jwt", "--region", "eu-west-1"),
        *("--jwt-issuer", "https://issuer.example", "--jwt-audience", "pdcat", "--out", str(out), "--dry-run"),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("aws sts get-caller-identity")
    assert f"infra/build.py aws --out {out} --stage prod --region eu-west-1" in lines[1]
    assert lines[2].startswith("aws cloudformation package") and "--s3-bucket my-artifacts" in lines[2]
    assert f"--template-file {out}/package/sam.yaml" in lines[2]
    deploy = lines[3]
    assert deploy.startswith("aws cloudformation deploy") and "--stack-name pdcat" in deploy
    assert "CAPABILITY_IAM CAPABILITY_AUTO_EXPAND" in deploy
    assert "JwtSecretId=pdcat/jwt JwksUrl= JwtIssuer=https://issuer.example JwtAudience=pdcat" in deploy
    assert not out.exists(), "a dry run builds nothing"


def test_aws_refuses_without_the_cli_or_credentials(tmp_path: Path) -> None:
    args = ("--artifact-bucket", "b", "--jwks-url", "https://idp.example/keys", "--region", "eu-west-1")
    out = ("--out", str(tmp_path / "build"))
    missing = _run(AWS_DEPLOY, *args, *out, home=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]  # one line, no traceback
    assert "AWS CLI (aws) is not installed" in missing.stderr
    bin_dir = _signed_out_cli(tmp_path / "bin", "aws", "Unable to locate credentials.", 255)
    signed_out = _run(AWS_DEPLOY, *args, *out, path=f"{bin_dir}:/usr/bin:/bin", home=tmp_path)
    assert signed_out.returncode == 2 and "no usable AWS credentials" in signed_out.stderr
    assert "Traceback" not in signed_out.stderr
    assert not (tmp_path / "build").exists(), "nothing is built before the credentials check"


def test_aws_needs_exactly_one_token_verifier(tmp_path: Path) -> None:
    both = _run(
        AWS_DEPLOY,
        *("--artifact-bucket", "b", "--region", "r", "--jwt-secret-id", "s", "--jwks-url", "https://x/k", "--dry-run"),
        home=tmp_path,
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr
    neither = _run(AWS_DEPLOY, "--artifact-bucket", "b", "--region", "r", "--dry-run", home=tmp_path)
    assert neither.returncode == 2 and "one of the arguments" in neither.stderr


def test_azure_dry_run_prints_the_deployment_and_never_the_secret(tmp_path: Path) -> None:
    out = tmp_path / "build"
    done = _run(
        AZURE_DEPLOY,
        *("--resource-group", "pdcat-rg", "--location", "westeurope", "--jwt-secret-env", "MY_SECRET"),
        *("--out", str(out), "--dry-run"),
        extra={"MY_SECRET": SECRET},
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "az account show --query id --output tsv"
    assert lines[1] == "az group create --name pdcat-rg --location westeurope"
    assert f"infra/build.py azure --out {out}" in lines[2]
    assert lines[3].startswith("az deployment group create --resource-group pdcat-rg")
    assert f"--template-file {REPO}/infra/azure/main.bicep" in lines[3]
    assert lines[4].startswith("az functionapp deployment source config-zip --resource-group pdcat-rg")
    assert f"--src {out}/pdcat-azure.zip --build-remote true" in lines[4]
    # the secret's Key Vault reference must be resolved, or the app would sign with the reference's text
    assert lines[5].startswith("az rest --method get --url ")
    assert (
        "/subscriptions/{subscriptionId}/resourceGroups/pdcat-rg/providers/Microsoft.Web/sites/"
        "<functionAppName output of the deployment>/config/configreferences/appsettings/PDCAT_JWT_SECRET?api-version="
    ) in lines[5]
    assert lines[5].endswith("--query properties.status --output tsv")
    assert '"value": "***"' in done.stdout
    assert not out.exists()


def test_azure_dry_run_with_jwks_has_no_reference_to_check(tmp_path: Path) -> None:
    done = _run(
        AZURE_DEPLOY,
        *("--resource-group", "pdcat-rg", "--jwks-url", "https://idp.example/keys", "--dry-run"),
        *("--out", str(tmp_path / "build")),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "az rest" not in done.stdout and "configreferences" not in done.stdout


_SIGNED_IN_AZ = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  account) echo "00000000-1111-2222-3333-444444444444" ;;
  group) ;;
  deployment) echo '{{"functionAppName": {{"value": "pdcatfn123"}}, "functionAppUrl": {{"value": "https://f.test"}}}}';;
  functionapp) ;;
  rest)
    n=$(($(cat "{state}" 2>/dev/null || echo 0) + 1)); echo "$n" > "{state}"
    sed -n "${{n}}p" "{statuses}" ;;
  *) echo "unexpected az $*" >&2; exit 3 ;;
esac
"""


def _signed_in_az(folder: Path, statuses: list[str]) -> tuple[Path, Path]:
    """An ``az`` that is signed in and deploys nothing: each ``az rest`` answers the next status."""
    folder.mkdir(parents=True, exist_ok=True)
    log, state, answers = folder / "az.log", folder / "rest.count", folder / "statuses"
    answers.write_text("".join(f"{status}\n" for status in statuses))
    tool = folder / "az"
    tool.write_text(_SIGNED_IN_AZ.format(log=log, state=state, statuses=answers))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder, log


def test_azure_deploy_waits_for_the_key_vault_reference_to_resolve(tmp_path: Path) -> None:
    bin_dir, log = _signed_in_az(tmp_path / "bin", ["AccessToKeyVaultDenied", "Initialized", "Resolved"])
    done = _run(
        AZURE_DEPLOY,
        *("--resource-group", "rg", "--jwt-secret-env", "MY_SECRET", "--out", str(tmp_path / "build")),
        *("--reference-checks", "5", "--reference-interval", "0"),
        extra={"MY_SECRET": SECRET},
        path=f"{bin_dir}:/usr/bin:/bin",
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rest = [line for line in log.read_text().splitlines() if line.startswith("rest ")]
    assert len(rest) == 3  # asked until "Resolved", then stopped
    assert "/sites/pdcatfn123/config/configreferences/appsettings/PDCAT_JWT_SECRET?" in rest[0]
    assert (
        "AccessToKeyVaultDenied" in done.stdout
        and "PDCAT_JWT_SECRET: the Key Vault reference is resolved" in done.stdout
    )
    assert SECRET not in done.stdout + done.stderr + log.read_text()


def test_azure_deploy_fails_when_the_key_vault_reference_never_resolves(tmp_path: Path) -> None:
    bin_dir, log = _signed_in_az(tmp_path / "bin", ["AccessToKeyVaultDenied"] * 2 + ["SecretNotFound"])
    done = _run(
        AZURE_DEPLOY,
        *("--resource-group", "rg", "--jwt-secret-env", "MY_SECRET", "--out", str(tmp_path / "build")),
        *("--reference-checks", "3", "--reference-interval", "0"),
        extra={"MY_SECRET": SECRET},
        path=f"{bin_dir}:/usr/bin:/bin",
        home=tmp_path,
    )
    assert done.returncode == 2
    error = done.stderr.strip()
    assert error.splitlines() == [error] and "Traceback" not in error  # one line
    assert "PDCAT_JWT_SECRET is not a resolved Key Vault reference" in error and "SecretNotFound" in error
    assert "az functionapp restart --resource-group rg --name pdcatfn123" in error
    assert len([line for line in log.read_text().splitlines() if line.startswith("rest ")]) == 3
    assert SECRET not in done.stdout + done.stderr + log.read_text()


def test_azure_refuses_without_the_cli_login_or_secret(tmp_path: Path) -> None:
    args = ("--resource-group", "rg", "--jwt-secret-env", "MY_SECRET", "--out", str(tmp_path / "build"))
    unset = _run(AZURE_DEPLOY, *args, home=tmp_path)
    assert unset.returncode == 2 and "MY_SECRET is not set" in unset.stderr
    short = _run(AZURE_DEPLOY, *args, extra={"MY_SECRET": "short"}, home=tmp_path)
    assert short.returncode == 2 and "too short" in short.stderr and "short" not in short.stderr.split(":")[-1]
    missing = _run(AZURE_DEPLOY, *args, extra={"MY_SECRET": SECRET}, home=tmp_path)
    assert missing.returncode == 2 and "Azure CLI (az) is not installed" in missing.stderr
    bin_dir = _signed_out_cli(tmp_path / "bin", "az", "Please run 'az login' to setup account.", 1)
    signed_out = _run(AZURE_DEPLOY, *args, extra={"MY_SECRET": SECRET}, path=f"{bin_dir}:/usr/bin:/bin", home=tmp_path)
    assert signed_out.returncode == 2 and "not signed in to Azure" in signed_out.stderr
    for done in (unset, short, missing, signed_out):
        assert "Traceback" not in done.stderr and SECRET not in done.stderr
    assert not (tmp_path / "build").exists()
