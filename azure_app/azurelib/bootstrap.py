"""Composition root of the Azure frontend: Cosmos DB store + Blob SAS presigner behind core's router.

Configuration comes from the Function App's application settings, which the Functions worker passes
as environment variables (set by the infrastructure code):

- ``PDCAT_COSMOS_ENDPOINT``, ``PDCAT_COSMOS_DATABASE``, ``PDCAT_COSMOS_CONTAINER``; ``PDCAT_COSMOS_KEY``
  (absent: the managed identity, through ``DefaultAzureCredential``); ``PDCAT_COSMOS_VERIFY_TLS``
  (default true; false only for the local emulator's self-signed certificate).
- ``PDCAT_BLOB_CONTAINER`` and either ``PDCAT_BLOB_CONNECTION_STRING`` (account key: SAS signed with
  it) or ``PDCAT_BLOB_ACCOUNT_URL`` (managed identity: user-delegation SAS).
- JWT settings as read by ``core.config.load_settings`` (``PDCAT_JWT_SECRET``, or ``PDCAT_JWKS_URL``
  with issuer and audience). There are no built-in users, so one of the two is required. A ``PDCAT_*``
  setting that is still ``@Microsoft.KeyVault(...)`` (Functions could not resolve the reference and
  passes the text itself) or an HS256 secret under 32 bytes is refused: every request answers 500
  ``misconfigured`` naming the setting, never its value, and no token is checked against it.

The router is built on the first request and kept for the life of the worker process. A failure
(bad settings, a backend that cannot be reached) is not cached, so the next request tries again.
Imports of core's service and of the Azure SDKs happen inside :func:`build_router`, so importing
``function_app`` (the cold start) loads none of them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import PdcatError, Unavailable
from core.http import Request, Response

if TYPE_CHECKING:
    from core.config import Settings
    from core.http import Router

__all__ = ["AzureSettings", "ConfigurationError", "build_router", "dispatch", "load_azure_settings", "router"]

log = logging.getLogger("pdcat.azure")

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


class ConfigurationError(PdcatError):
    """The app settings are missing or contradictory: a deployment mistake, named in one line."""

    status = 500
    code = "misconfigured"


@dataclass(frozen=True)
class AzureSettings:
    """Where the catalog's data lives. Key and connection string never appear in a repr."""

    cosmos_endpoint: str
    cosmos_database: str
    cosmos_container: str
    blob_container: str
    cosmos_key: str | None = field(default=None, repr=False)
    cosmos_verify_tls: bool = True
    blob_connection_string: str | None = field(default=None, repr=False)
    blob_account_url: str | None = None

    @property
    def needs_credential(self) -> bool:
        """A managed identity (or any Entra ID credential) signs in where no key was given."""
        return self.cosmos_key is None or self.blob_connection_string is None


def _required(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise ConfigurationError(f"{name} is not set")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false")


def load_azure_settings(env: Mapping[str, str]) -> AzureSettings:
    """Read and check the storage settings; every error names the setting, never its value."""
    connection_string = (env.get("PDCAT_BLOB_CONNECTION_STRING") or "").strip() or None
    account_url = (env.get("PDCAT_BLOB_ACCOUNT_URL") or "").strip() or None
    if connection_string and account_url:
        raise ConfigurationError("set PDCAT_BLOB_CONNECTION_STRING or PDCAT_BLOB_ACCOUNT_URL, not both")
    if not connection_string and not account_url:
        raise ConfigurationError(
            "set PDCAT_BLOB_CONNECTION_STRING (account key) or PDCAT_BLOB_ACCOUNT_URL (managed identity)"
        )
    if account_url and not re.match(r"https?://[^/?#\s]+", account_url):
        raise ConfigurationError("PDCAT_BLOB_ACCOUNT_URL must be an http(s) URL")
    endpoint = _required(env, "PDCAT_COSMOS_ENDPOINT")
    if not re.match(r"https?://[^/?#\s]+", endpoint):
        raise ConfigurationError("PDCAT_COSMOS_ENDPOINT must be an http(s) URL")
    return AzureSettings(
        cosmos_endpoint=endpoint,
        cosmos_database=_required(env, "PDCAT_COSMOS_DATABASE"),
        cosmos_container=_required(env, "PDCAT_COSMOS_CONTAINER"),
        blob_container=_required(env, "PDCAT_BLOB_CONTAINER"),
        cosmos_key=(env.get("PDCAT_COSMOS_KEY") or "").strip() or None,
        cosmos_verify_tls=_flag(env, "PDCAT_COSMOS_VERIFY_TLS", True),
        blob_connection_string=connection_string,
        blob_account_url=account_url,
    )


def _configure_logs(settings: Settings) -> None:
    """core.logs' lines (JSON unless a terminal reads them) without cutting the Functions worker off
    from its logs.

    In Azure the worker's handler sits on the root logger and ships each *formatted* record to the
    host (console output is off once the worker is connected), so its handlers keep their place
    and only get core's formatter. Where nobody configured logging (the local host), core's
    stderr handler is installed. The Azure SDKs log every HTTP call at INFO: only warnings are kept.
    """
    from core.logs import configure_logging, formatter_for

    level = settings.log_level
    root = logging.getLogger()
    if root.handlers:
        for handler in root.handlers:
            handler.setFormatter(formatter_for(settings.log_format, getattr(handler, "stream", None)))
        root.setLevel(level.upper())
    else:
        configure_logging(level, log_format=settings.log_format)
    logging.getLogger("azure").setLevel(max(logging.WARNING, root.level))


def _stores(azure: AzureSettings) -> tuple[Any, Any, Any]:
    """The manifest store, API key store and blob store; the Azure SDKs are imported here, not earlier."""
    from azurelib.blob_store import AzureBlobStore
    from azurelib.cosmos_store import CosmosApiKeyStore, CosmosManifestStore, connect

    credential: Any = None
    if azure.needs_credential:
        from azure.identity import DefaultAzureCredential

        # In Azure: the Function App's managed identity (AZURE_CLIENT_ID picks a user-assigned one);
        # on a workstation: the developer's az login.
        credential = DefaultAzureCredential()
    if not azure.cosmos_verify_tls:
        # Only the local emulator (self-signed certificate): urllib3 would warn on every request.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    container = connect(
        azure.cosmos_endpoint,
        azure.cosmos_database,
        azure.cosmos_container,
        key=azure.cosmos_key,
        credential=None if azure.cosmos_key else credential,
        verify_tls=azure.cosmos_verify_tls,
    )
    if azure.blob_connection_string is not None:
        blobs = AzureBlobStore.from_connection_string(azure.blob_connection_string, azure.blob_container)
    else:
        assert azure.blob_account_url is not None
        blobs = AzureBlobStore.from_credential(azure.blob_account_url, azure.blob_container, credential)
    return CosmosManifestStore(container), CosmosApiKeyStore(container), blobs


def build_router(env: Mapping[str, str]) -> Router:
    """Wire the service from these settings; raises :class:`ConfigurationError` naming what is wrong."""
    from core.api import build_router as build_api
    from core.auth import Authenticator, TokenVerifier
    from core.config import load_settings
    from core.service import CatalogService

    try:
        settings = load_settings(env)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    _configure_logs(settings)
    if settings.auth is None:
        raise ConfigurationError("set PDCAT_JWT_SECRET or PDCAT_JWKS_URL: the Azure frontend has no built-in users")
    azure = load_azure_settings(env)
    try:
        store, api_keys, blobs = _stores(azure)
    except Unavailable:
        raise  # the backend is down or missing: 503, and the next request tries again
    except PdcatError as exc:
        # The adapters refuse a malformed endpoint, key or container name as invalid input; here that
        # input is the deployment's, not the caller's, so it must not read as the caller's 400.
        raise ConfigurationError(exc.message) from None
    except ValueError as exc:
        raise ConfigurationError(f"invalid Cosmos DB or Blob settings ({type(exc).__name__})") from None
    authenticator = Authenticator(TokenVerifier(settings.auth), api_keys)

    def authenticate(request: Request) -> Any:
        return authenticator.authenticate(request.headers)

    log.info(
        "catalog ready",
        extra={
            "cosmos_endpoint": azure.cosmos_endpoint,
            "cosmos_database": azure.cosmos_database,
            "cosmos_container": azure.cosmos_container,
            "blob_container": azure.blob_container,
            "blob_auth": "account key" if azure.blob_connection_string else "user delegation",
            "cosmos_auth": "key" if azure.cosmos_key else "credential",
        },
    )
    return build_api(CatalogService(store, blobs, api_keys, settings.service), authenticate)


@functools.cache
def router() -> Router:
    """Built once per worker process, on the first request, from the app settings."""
    return build_router(os.environ)


def dispatch(request: Request) -> Response:
    """The router's answer; if the catalog cannot be built, the contract's error shape and a log line."""
    try:
        catalog = router()
    except Exception as exc:
        request_id = request.header("x-request-id") or ""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", request_id):
            request_id = uuid.uuid4().hex
        if isinstance(exc, PdcatError):
            log.error("the catalog cannot start: %s", exc.message, extra={"request_id": request_id})
            response = Response.error(exc.status, exc.code, exc.message)
        else:
            log.exception("the catalog cannot start", extra={"request_id": request_id})
            response = Response.error(500, "internal", f"internal error (request id {request_id})")
        response.headers["X-Request-Id"] = request_id
        return response
    return catalog.dispatch(request)
