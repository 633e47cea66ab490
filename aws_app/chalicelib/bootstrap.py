"""Composition root of the AWS frontend: DynamoDB store + S3 blob store behind core's router.

Configuration comes from the Lambda environment (set by the infrastructure code):
``PDCAT_TABLE``, ``PDCAT_BUCKET``, ``AWS_REGION``; ``PDCAT_DYNAMODB_ENDPOINT`` and
``PDCAT_S3_ENDPOINT`` point at MinIO/moto or any compatible endpoint; JWT settings as read by
``core.config.load_settings`` (``PDCAT_JWT_SECRET`` or ``PDCAT_JWKS_URL`` + issuer/audience).

Settings that must not be used (a secret shorter than 32 bytes, an unresolved secret reference, a
malformed number) stop the build with one logged line naming the setting, never its value: every
request then fails, and no token is ever checked against a bad secret.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.http import Router

__all__ = ["router"]

log = logging.getLogger("pdcat.aws")


@functools.cache
def router() -> Router:
    """Built once per Lambda container, on the first request (the SDKs and JWT stack load here, not at import)."""
    from chalicelib.dynamo_store import DynamoApiKeyStore, DynamoManifestStore
    from chalicelib.s3_blobs import S3BlobStore

    from core.api import build_router
    from core.auth import Authenticator, TokenVerifier
    from core.config import load_settings
    from core.http import Request
    from core.logs import configure_logging
    from core.rbac import Principal
    from core.service import CatalogService

    try:
        settings = load_settings()
    except ValueError as exc:
        configure_logging("WARNING")
        log.error("the catalog cannot start: %s", exc)
        raise RuntimeError(f"the catalog cannot start: {exc}") from None
    configure_logging(settings.log_level, log_format=settings.log_format)
    if settings.auth is None:
        raise RuntimeError("set PDCAT_JWT_SECRET or PDCAT_JWKS_URL: the AWS frontend has no built-in users")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    table = os.environ["PDCAT_TABLE"]
    dynamo_host = os.environ.get("PDCAT_DYNAMODB_ENDPOINT") or None
    store = DynamoManifestStore(table, region=region, host=dynamo_host)
    api_keys = DynamoApiKeyStore(table, region=region, host=dynamo_host)
    blobs = S3BlobStore(
        os.environ["PDCAT_BUCKET"], region=region, endpoint_url=os.environ.get("PDCAT_S3_ENDPOINT") or None
    )
    authenticator = Authenticator(TokenVerifier(settings.auth), api_keys)

    def authenticate(request: Request) -> Principal:
        return authenticator.authenticate(request.headers)

    return build_router(CatalogService(store, blobs, api_keys, settings.service), authenticate)
