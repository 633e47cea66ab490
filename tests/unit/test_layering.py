"""The architecture's rules, enforced: core loads no cloud SDK or HTTP client; the storage-key rules
have one home; public names are pinned. Which module may import which is checked statically by the
import-linter contracts in pyproject.toml (``make lint``); these tests check what actually loads."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import client.api
import core
import core.errors
import core.ports
import core.rbac
import core.storage_layout

REPO = Path(__file__).resolve().parents[2]

FORBIDDEN = ("boto3", "botocore", "pynamodb", "azure", "chalice", "httpx")


def test_core_imports_no_cloud_sdk_or_http_client() -> None:
    code = (
        "import sys, json, core, core.service, core.api, core.http, core.auth, core.config, "
        "core.local.bootstrap, core.local.server; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    offenders = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert offenders == []


def _loaded_by(code: str, *path: Path) -> list[str]:
    """The modules a fresh interpreter holds after ``code``, with ``path`` first on ``sys.path``."""
    prelude = f"import sys, json; sys.path[:0] = {[str(p) for p in path]!r}; "
    done = subprocess.run(
        [sys.executable, "-c", prelude + code + "; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_what_the_clouds_ship_of_core_never_loads_the_embedded_server() -> None:
    """infra/build.py leaves core/local out of both cloud bundles: the rest of core must not need it."""
    shared = [m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.startswith("core.local")]
    assert "core.service" in shared
    loaded = _loaded_by("import " + ", ".join(shared))
    assert [m for m in loaded if m.startswith("core.local")] == []


def test_the_cloud_apps_load_neither_the_embedded_server_nor_a_second_copy_of_the_key_rules() -> None:
    code = (
        "import core.storage_layout as layout, chalicelib.s3_blobs as s3, azurelib.blob_store as az; "
        "assert s3.validate_key is az.validate_key is layout.validate_key; "
        "assert s3.validate_prefix is az.validate_prefix is layout.validate_prefix"
    )
    loaded = _loaded_by(code, REPO / "aws_app", REPO / "azure_app")
    assert [m for m in loaded if m.startswith("core.local")] == []


def test_the_file_store_keeps_only_its_encoding() -> None:
    from core.local import file_blobs

    assert file_blobs.validate_key is core.storage_layout.validate_key
    assert file_blobs.MAX_EXPIRES_IN == core.storage_layout.MAX_EXPIRES_IN
    assert file_blobs.MAX_KEY_LENGTH == core.storage_layout.MAX_KEY_LENGTH


def test_public_names_are_pinned() -> None:
    assert set(core.errors.__all__) >= {
        "PdcatError",
        "InvalidInput",
        "Unauthenticated",
        "Forbidden",
        "NotFound",
        "Conflict",
        "Tainted",
        "Gone",
        "PayloadTooLarge",
        "Unprocessable",
        "Unavailable",
    }
    assert set(core.ports.__all__) == {
        "ApiKeyRecord",
        "ApiKeyStore",
        "BlobInfo",
        "BlobStore",
        "ManifestQuery",
        "ManifestStore",
        "Stored",
        "TakenBlob",
    }
    assert set(core.rbac.__all__) == {
        "ALL_CLAIMS",
        "ANONYMOUS",
        "ROLE_CLAIMS",
        "SERVICE_ACCOUNT_PREFIX",
        "Claim",
        "Principal",
        "Role",
        "can_see",
        "require",
    }
    assert set(client.api.__all__) == {"CatalogClient", "ConnectionFailed"}
    for module in (core.errors, core.ports, core.rbac, client.api):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names a missing {name}"


def test_every_error_maps_to_its_status() -> None:
    from core.errors import error_for_status

    for name in core.errors.__all__:
        cls = getattr(core.errors, name)
        if isinstance(cls, type) and issubclass(cls, core.errors.PdcatError) and cls is not core.errors.PdcatError:
            rebuilt = error_for_status(cls.status, cls.code, "m")
            assert type(rebuilt) is cls
