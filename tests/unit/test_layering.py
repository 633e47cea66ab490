"""The architecture's rules, enforced: core loads no cloud SDK or HTTP client; public names are pinned."""

from __future__ import annotations

import json
import subprocess
import sys

import client.api
import core.errors
import core.ports
import core.rbac

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
