"""The HTTP contract (docs/architecture.md), declared once as a route table over :class:`CatalogService`.

Every frontend serves exactly this table through :class:`core.http.Router`; the OpenAPI document is
generated from it (``core.openapi``), so what is documented is what is served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from core.errors import InvalidInput
from core.http import API_PREFIX, Call, Response, Route, Router
from core.identity import ManifestKey, normalize_architecture, normalize_catalog_id, normalize_tag, normalize_version
from core.openapi import openapi_document
from core.openapi_html import DOCS_HEADERS, render_docs
from core.rbac import Claim, Principal
from core.service import CatalogService
from core.users import UserAdmin
from core.wire import MAX_LIST_LIMIT, SCHEMAS, ref

__all__ = ["ApiRoute", "TokenIssuer", "TokenRefresher", "build_router", "build_routes", "route_shapes"]

TokenIssuer = Callable[[str, str], dict[str, Any]]
"""(username, password) -> {"token", "expires_at"}; only the embedded server has one."""
TokenRefresher = Callable[[Principal, str], dict[str, Any]]
"""(caller, their Authorization header) -> {"token", "expires_at"}; where there is a TokenIssuer."""

_PURGE = {"type": "boolean", "default": False}


@dataclass(frozen=True)
class ApiRoute(Route):
    """A route of this contract that also declares what the OpenAPI document says of its parameters."""

    query: tuple[tuple[str, dict[str, Any], str], ...] = ()  # (name, JSON Schema, description)
    latest: bool = False  # its {version} path parameter also accepts 'latest'
    media_type: str = "application/json"  # of its success answer (errors are always JSON)


def _key(call: Call) -> ManifestKey:
    p = call.params
    return ManifestKey.parse(p["id"], p["version"], p["arch"])


def _items(manifests: list[Any]) -> Response:
    return Response.json({"items": [m.to_public() for m in manifests]})


def _list_field(call: Call, name: str) -> object:
    body = call.request.json()
    if name not in body:
        raise InvalidInput(f'the body must be {{"{name}": [...]}}')
    return body[name]


def build_routes(
    service: CatalogService,
    *,
    token_issuer: TokenIssuer | None = None,
    token_refresher: TokenRefresher | None = None,
    users: UserAdmin | None = None,
) -> list[Route]:
    """The route table. Literal paths come before ``{param}`` ones with the same shape."""
    s = service

    def health(call: Call) -> Response:
        return Response.json({"status": "ok"})

    def openapi(call: Call) -> Response:
        return Response.json(openapi_document(routes))

    page: list[bytes] = []  # rendered on first use: the table, so the page, never changes

    def docs(call: Call) -> Response:
        if not page:
            page.append(render_docs(openapi_document(routes)).encode())
        return Response(200, page[0], dict(DOCS_HEADERS))

    def token(call: Call) -> Response:
        assert token_issuer is not None
        body = call.request.json()
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise InvalidInput('send {"username": ..., "password": ...}')
        return Response.json(token_issuer(username, password))

    def refresh(call: Call) -> Response:
        assert token_refresher is not None
        return Response.json(token_refresher(call.principal, call.request.header("authorization") or ""))

    def whoami(call: Call) -> Response:
        who: Principal = call.principal
        return Response.json(
            {
                "subject": who.subject,
                "roles": sorted(who.roles),
                "claims": sorted(who.effective_claims),
                "via": who.via,
            }
        )

    def list_catalog(call: Call) -> Response:
        q = call.request.query
        items, cursor = s.list_manifests(
            call.principal,
            tag=normalize_tag(q["tag"]) if q.get("tag") else None,
            architecture=normalize_architecture(q["architecture"]) if q.get("architecture") else None,
            limit=call.query_int("limit", 100, minimum=1, maximum=1000),
            cursor=q.get("cursor") or None,
        )
        return Response.json({"items": [m.to_public() for m in items], "next_cursor": cursor})

    def get_catalog(call: Call) -> Response:
        return _items(s.versions(call.principal, normalize_catalog_id(call.params["id"])))

    def get_version(call: Call) -> Response:
        version = normalize_version(call.params["version"], allow_latest=True)
        return _items(s.versions(call.principal, normalize_catalog_id(call.params["id"]), version))

    def get_manifest(call: Call) -> Response:
        p = call.params
        return Response.json(s.get(call.principal, p["id"], p["version"], p["arch"]).to_public())

    def delete(call: Call) -> Response:
        p = call.params
        s.delete(call.principal, p["id"], p.get("version"), p.get("arch"), purge=call.query_bool("purge"))
        return Response.empty()

    def taint(call: Call) -> Response:
        return Response.json(s.taint(call.principal, _key(call)).to_public())

    def untaint(call: Call) -> Response:
        return Response.json(s.untaint(call.principal, _key(call)).to_public())

    def revoke(call: Call) -> Response:
        return Response.json(s.revoke(call.principal, _key(call)).to_public())

    def list_editor(field_name: str, body_name: str, add: bool) -> Callable[[Call], Response]:
        def handler(call: Call) -> Response:
            values = _list_field(call, body_name)
            return Response.json(s.edit_list(call.principal, _key(call), field_name, values, add).to_public())

        return handler

    def metadata(call: Call) -> Response:
        return Response.json(s.update_metadata(call.principal, _key(call), call.request.json()).to_public())

    def push(call: Call) -> Response:
        return Response.json(s.push_begin(call.principal, _key(call), call.request.json()), 201)

    def upload_chunks(call: Call) -> Response:
        body = call.request.json()
        return Response.json(s.upload_chunks(call.principal, call.params["upload_id"], body.get("digests")))

    def declare_index(call: Call) -> Response:
        return Response.json(s.declare_index(call.principal, call.params["upload_id"], call.request.json()))

    def verify_chunks(call: Call) -> Response:
        body = call.request.json()
        return Response.json(s.verify_chunks(call.principal, call.params["upload_id"], body.get("digests")))

    def commit(call: Call) -> Response:
        body = call.request.json() if call.request.body else {}
        manifest = s.commit(call.principal, call.params["upload_id"], body)
        return Response.json(manifest.to_public())

    def abort(call: Call) -> Response:
        s.abort(call.principal, call.params["upload_id"])
        return Response.empty()

    def pull(call: Call) -> Response:
        p = call.params
        return Response.json(s.pull(call.principal, p["id"], p["version"], p["arch"]))

    def pull_urls(call: Call) -> Response:
        return Response.json(s.pull_urls(call.principal, _key(call), call.request.json().get("digests")))

    def pull_report(call: Call) -> Response:
        return Response.json(s.report_corrupt(call.principal, _key(call), call.request.json().get("digests")))

    def gc(call: Call) -> Response:
        body = call.request.json() if call.request.body else {}
        return Response.json(s.collect_garbage(call.principal, body))

    def import_pack(call: Call) -> Response:
        return Response.json(s.import_pack(call.principal, call.request.json()).to_public(), 201)

    def create_key(call: Call) -> Response:
        record, full_key = s.create_api_key(call.principal, call.request.json())
        return Response.json({**record.to_public(), "key": full_key}, 201)

    def list_keys(call: Call) -> Response:
        return Response.json({"items": [r.to_public() for r in s.list_api_keys(call.principal)]})

    def revoke_key(call: Call) -> Response:
        return Response.json(s.revoke_api_key(call.principal, call.params["key_id"]).to_public())

    m = "/catalog/{id}/{version}/{arch}"
    purge = (("purge", _PURGE, "true: also remove the stored data at once (gc for this catalog id)"),)
    routes: list[Route] = [
        Route("GET", "/health", health, "Liveness check", auth=False, tag="meta", answer="Health"),
        Route("GET", "/openapi.json", openapi, "This document", auth=False, tag="meta", answer="OpenApiDocument"),
        ApiRoute(
            "GET",
            "/docs",
            docs,
            "This document as a web page (HTML, no script, nothing fetched from elsewhere)",
            auth=False,
            tag="meta",
            media_type="text/html",
        ),
        Route(
            "GET",
            "/auth/whoami",
            whoami,
            "Who the credentials belong to",
            responses=(200, 401),
            tag="auth",
            answer="Whoami",
        ),
        Route(
            "GET",
            "/auth/api-keys",
            list_keys,
            "List API keys",
            claim=Claim.MANAGE_API_KEYS,
            responses=(200, 401, 403),
            tag="auth",
            answer="ApiKeyList",
        ),
        Route(
            "POST",
            "/auth/api-keys",
            create_key,
            "Create an API key (the key is shown once)",
            claim=Claim.MANAGE_API_KEYS,
            body=SCHEMAS["ApiKeyRequest"],
            responses=(201, 400, 401, 403),
            tag="auth",
            answer="ApiKeyCreated",
        ),
        Route(
            "DELETE",
            "/auth/api-keys/{key_id}",
            revoke_key,
            "Revoke an API key",
            claim=Claim.MANAGE_API_KEYS,
            responses=(200, 401, 403, 404),
            tag="auth",
            answer="ApiKey",
        ),
        ApiRoute(
            "GET",
            "/catalog",
            list_catalog,
            "List visible manifests, paginated",
            claim=Claim.LIST,
            responses=(200, 400, 401, 403),
            answer="ManifestPage",
            query=(
                ("tag", {"anyOf": [ref("Tag"), {"const": ""}]}, "only manifests with this tag"),
                ("architecture", {"anyOf": [ref("Architecture"), {"const": ""}]}, "only this architecture"),
                (
                    "limit",
                    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}, {"const": ""}]},
                    "page size, 100 if empty",
                ),
                ("cursor", {"type": "string"}, "the next_cursor of the previous page, exactly as received"),
            ),
        ),
        Route(
            "POST",
            "/catalog/import",
            import_pack,
            "Register a pack that already sits in storage: a pdcat index and chunks, or (format 'pdpack') "
            "the original product's <catalog_id>/<name>.pdpack and .meta",
            claim=Claim.IMPORT,
            body=SCHEMAS["ImportRequest"],
            responses=(201, 400, 401, 403, 404, 409, 410, 422),
            answer="Manifest",
        ),
        Route(
            "GET",
            "/catalog/{id}",
            get_catalog,
            "Every visible version of a catalog id",
            claim=Claim.LIST,
            responses=(200, 400, 401, 403, 404),
            answer="ManifestList",
        ),
        ApiRoute(
            "DELETE",
            "/catalog/{id}",
            delete,
            "Delete every visible version (purge=true removes stored data)",
            claim=Claim.DELETE,
            responses=(204, 400, 401, 403, 404),
            query=purge,
        ),
        ApiRoute(
            "GET",
            "/catalog/{id}/{version}",
            get_version,
            "Every architecture of one version ('latest' allowed)",
            claim=Claim.LIST,
            responses=(200, 400, 401, 403, 404),
            answer="ManifestList",
            latest=True,
        ),
        ApiRoute(
            "DELETE",
            "/catalog/{id}/{version}",
            delete,
            "Delete one version, every architecture",
            claim=Claim.DELETE,
            responses=(204, 400, 401, 403, 404),
            query=purge,
        ),
        ApiRoute(
            "GET",
            m,
            get_manifest,
            "One manifest ('latest' allowed)",
            claim=Claim.LIST,
            responses=(200, 400, 401, 403, 404),
            answer="Manifest",
            latest=True,
        ),
        ApiRoute(
            "DELETE",
            m,
            delete,
            "Delete one manifest",
            claim=Claim.DELETE,
            responses=(204, 400, 401, 403, 404),
            query=purge,
        ),
        Route(
            "PATCH",
            m + "/taint",
            taint,
            "Taint: refuse pulls until untainted",
            claim=Claim.TAINT,
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="Manifest",
        ),
        Route(
            "PATCH",
            m + "/untaint",
            untaint,
            "Untaint",
            claim=Claim.TAINT,
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="Manifest",
        ),
        Route(
            "PATCH",
            m + "/revoke",
            revoke,
            "Revoke, permanently",
            claim=Claim.REVOKE,
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="Manifest",
        ),
        Route(
            "PATCH",
            m + "/roles",
            list_editor("required_roles", "roles", True),
            "Add required roles",
            claim=Claim.UPDATE,
            body=SCHEMAS["RolesRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "DELETE",
            m + "/roles",
            list_editor("required_roles", "roles", False),
            "Remove required roles",
            claim=Claim.UPDATE,
            body=SCHEMAS["RolesRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "PATCH",
            m + "/claims",
            list_editor("required_claims", "claims", True),
            "Add required claims",
            claim=Claim.UPDATE,
            body=SCHEMAS["ClaimsRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "DELETE",
            m + "/claims",
            list_editor("required_claims", "claims", False),
            "Remove required claims",
            claim=Claim.UPDATE,
            body=SCHEMAS["ClaimsRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "PATCH",
            m + "/tags",
            list_editor("tags", "tags", True),
            "Add tags",
            claim=Claim.UPDATE,
            body=SCHEMAS["TagsRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "DELETE",
            m + "/tags",
            list_editor("tags", "tags", False),
            "Remove tags",
            claim=Claim.UPDATE,
            body=SCHEMAS["TagsRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "PUT",
            m + "/metadata",
            metadata,
            "Replace the metadata fields present in the body",
            claim=Claim.UPDATE,
            body=SCHEMAS["MetadataRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "POST",
            m + "/push",
            push,
            "Begin a push: an upload session (storage protocol v2) and, in index format 2, the version it may build on",
            claim=Claim.PUSH,
            body=SCHEMAS["PushRequest"],
            responses=(201, 400, 401, 403, 409, 410),
            answer="PushAnswer",
        ),
        ApiRoute(
            "POST",
            m + "/pull",
            pull,
            "Pull: the manifest and a presigned GET URL of its index (format 'chunks'), or one presigned "
            "'pack' URL for an imported original-format pack (format 'pdpack'); counts a download",
            claim=Claim.PULL,
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="PullAnswer",
            latest=True,
        ),
        Route(
            "POST",
            m + "/pull/urls",
            pull_urls,
            "Presigned GET URLs for a page of this version's chunks (for an original-format pack: a fresh "
            "'pack' URL, asked without digests)",
            claim=Claim.PULL,
            body=SCHEMAS["UrlsRequest"],
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="UrlsAnswer",
        ),
        Route(
            "POST",
            m + "/pull/report",
            pull_report,
            "Report chunks that failed verification on pull: the server re-verifies and quarantines them",
            claim=Claim.PULL,
            body=SCHEMAS["ReportRequest"],
            responses=(200, 400, 401, 403, 404, 409, 410),
            answer="ReportAnswer",
        ),
        Route(
            "POST",
            "/uploads/{upload_id}/chunks",
            upload_chunks,
            "Which of a page of chunks are already verified, and staging PUT URLs for the others",
            claim=Claim.PUSH,
            body=SCHEMAS["ChunksRequest"],
            responses=(200, 400, 401, 403, 404, 503),
            answer="ChunksAnswer",
        ),
        Route(
            "POST",
            "/uploads/{upload_id}/verify",
            verify_chunks,
            "Verify a page of staged chunks (decompress, sha256) and promote them, write-once",
            claim=Claim.PUSH,
            body=SCHEMAS["VerifyRequest"],
            responses=(200, 400, 401, 403, 404, 503),
            answer="VerifyAnswer",
        ),
        Route(
            "POST",
            "/uploads/{upload_id}/index",
            declare_index,
            "Declare the index (sha256 and size) once the chunks are in; answers a PUT URL for it",
            claim=Claim.PUSH,
            body=SCHEMAS["IndexRequest"],
            responses=(200, 400, 401, 403, 404),
            answer="IndexAnswer",
        ),
        Route(
            "POST",
            "/uploads/{upload_id}/commit",
            commit,
            "Commit an upload: every chunk of the index must be verified; writes the index",
            claim=Claim.PUSH,
            body=SCHEMAS["CommitRequest"],
            responses=(200, 400, 401, 403, 404, 409),
            answer="Manifest",
        ),
        Route(
            "DELETE",
            "/uploads/{upload_id}",
            abort,
            "Abort an upload",
            claim=Claim.PUSH,
            responses=(204, 400, 401, 403, 404, 409),
        ),
        Route(
            "POST",
            "/admin/gc",
            gc,
            "One step of garbage collection (mark and sweep): call again with next_cursor until it is null",
            claim=Claim.DELETE,
            body=SCHEMAS["GcRequest"],
            responses=(200, 400, 401, 403, 503),
            answer="GcAnswer",
            tag="admin",
        ),
    ]
    if users is not None:
        routes += _user_routes(users)
    if token_issuer is not None:
        routes.insert(
            3,
            Route(
                "POST",
                "/auth/token",
                token,
                "Exchange a username and password for a token (embedded server); 429 with Retry-After while "
                "the user name or the caller's address is locked out after failed attempts",
                auth=False,
                body=SCHEMAS["TokenRequest"],
                responses=(200, 400, 401, 429),
                tag="auth",
                answer="TokenAnswer",
            ),
        )
    if token_refresher is not None:
        routes.insert(
            3 if token_issuer is not None else 2,
            Route(
                "POST",
                "/auth/refresh",
                refresh,
                "Exchange a still-valid token from a password login for a new one, with the user's current "
                "roles and claims (embedded server); 401 for an API key, another issuer's token, a removed "
                "user, a password set since the login, or a login older than the server's session limit",
                responses=(200, 401),
                tag="auth",
                answer="TokenAnswer",
            ),
        )
    return routes


def _user_routes(users: UserAdmin) -> list[Route]:
    """The embedded server's own users (``core.users``): a SUPER_USER manages the others; anyone
    changes their own password with the current one. Cloud deployments take users from their identity
    provider and have none of these routes."""

    def list_users(call: Call) -> Response:
        return Response.json({"items": users.list(call.principal)})

    def add_user(call: Call) -> Response:
        return Response.json(users.add(call.principal, call.request.json()), 201)

    def remove_user(call: Call) -> Response:
        users.remove(call.principal, call.params["username"])
        return Response.empty()

    def set_roles(call: Call) -> Response:
        return Response.json(users.set_roles(call.principal, call.params["username"], call.request.json()))

    def set_password(call: Call) -> Response:
        users.set_password(call.principal, call.params["username"], call.request.json())
        return Response.empty()

    return [
        Route("GET", "/admin/users", list_users, "List the server's users (SUPER_USER)",
              responses=(200, 401, 403), tag="admin", answer="UserList"),
        Route("POST", "/admin/users", add_user, "Add a user (SUPER_USER)", body=SCHEMAS["UserRequest"],
              responses=(201, 400, 401, 403, 409), tag="admin", answer="User"),
        Route("DELETE", "/admin/users/{username}", remove_user,
              "Remove a user (SUPER_USER; not yourself, not another SUPER_USER)",
              responses=(204, 401, 403, 404, 409), tag="admin"),
        Route("PUT", "/admin/users/{username}/roles", set_roles,
              "Set a user's roles and claims (SUPER_USER; not yours, not another SUPER_USER's; "
              "from their next login or refresh)",
              body=SCHEMAS["UserRolesRequest"], responses=(200, 400, 401, 403, 404, 409), tag="admin", answer="User"),
        Route("PUT", "/admin/users/{username}/password", set_password,
              "Set a password: your own with current_password, or a user's as a SUPER_USER",
              body=SCHEMAS["PasswordRequest"], responses=(204, 400, 401, 403, 404, 409), tag="admin"),
    ]  # fmt: skip


def route_shapes() -> dict[str, list[str]]:
    """``{"/api/v1/...pattern": [methods]}`` of the whole contract, without building a service.

    Frameworks that need routes declared up front (Chalice, Azure Functions) register exactly these.
    The table's shape does not depend on the service, so none is needed to read it.
    """
    shapes: dict[str, list[str]] = {}
    routes = build_routes(
        cast(CatalogService, None),
        token_issuer=lambda username, password: {},
        token_refresher=lambda caller, authorization: {},
    )
    for route in routes:
        shapes.setdefault(API_PREFIX + route.pattern, []).append(route.method)
    return shapes


def build_router(
    service: CatalogService,
    authenticate: Callable[[Any], Principal],
    *,
    token_issuer: TokenIssuer | None = None,
    token_refresher: TokenRefresher | None = None,
    users: UserAdmin | None = None,
) -> Router:
    routes = build_routes(service, token_issuer=token_issuer, token_refresher=token_refresher, users=users)
    return Router(routes, authenticate)
