"""Fixtures of the IaC suite: the validators' virtualenv and one build of each app per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.build import AwsBuild, AzureBuild, build_aws, build_azure
from tests.infra.iac_tools import ensure_iac_venv


@pytest.fixture(scope="session")
def iac_venv() -> Path:
    """``.venv-iac`` with checkov and cfn-lint (installed on first use; raises with pip's log if it cannot)."""
    return ensure_iac_venv()


@pytest.fixture(scope="session")
def aws_build(tmp_path_factory: pytest.TempPathFactory) -> AwsBuild:
    """``infra/build.py aws``: the staged app and ``chalice package --merge-template`` output (prod stage)."""
    return build_aws(tmp_path_factory.mktemp("aws-build"), stage="prod", region="us-east-1")


@pytest.fixture(scope="session")
def azure_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureBuild]:
    yield build_azure(tmp_path_factory.mktemp("azure-build"))
