"""The catalog API, as the client sees it: one method per route, core's error classes on failure.

Accepts any httpx transport, so tests can run the embedded WSGI app in-process and production talks
to a real server through the same code. Storage URLs are fetched with a *separate* client that never
carries the catalog credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from core.errors import PdcatError, Unavailable, error_for_status
from core.wire import ChunksAnswer, IndexAnswer, ReportAnswer, VerifyAnswer

__all__ = ["CatalogClient", "ConnectionFailed"]


class ConnectionFailed(Unavailable):
    """The catalog server could not be reached at all."""


def _seg(value: str) -> str:
    return quote(value, safe="")


@contextmanager
def _translate(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ConnectionFailed(f"the catalog at {url} did not answer in time") from exc
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot reach the catalog at {url}: {exc.__class__.__name__}") from exc


class CatalogClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        verify: bool = True,
    ) -> None:
        """``verify=False`` only for a PDFile's INSECURE: a catalog behind a self-signed certificate."""
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "pdcat/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-Api-Key"] = api_key
        self._http = httpx.Client(
            base_url=self.base_url + "/api/v1", headers=headers, transport=transport, timeout=timeout, verify=verify
        )

    def __repr__(self) -> str:  # never show credentials
        return f"CatalogClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        with _translate(self.base_url):
            response = self._http.request(method, path, json=json, params=params)
        if response.status_code >= 400:
            raise self._error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @staticmethod
    def _error(response: httpx.Response) -> PdcatError:
        code, message = None, f"the catalog answered HTTP {response.status_code}"
        try:
            body = response.json()
            code = body["error"]["code"]
            message = body["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        return error_for_status(response.status_code, code, message)

    @staticmethod
    def _m(catalog_id: str, version: str, arch: str) -> str:
        return f"/catalog/{_seg(catalog_id)}/{_seg(version)}/{_seg(arch)}"

    # ---- auth -----------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/auth/token", json={"username": username, "password": password})
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/auth/whoami")
        return result

    def create_api_key(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/auth/api-keys", json=body)
        return result

    def list_api_keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/auth/api-keys")["items"]
        return result

    def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/auth/api-keys/{_seg(key_id)}")
        return result

    # ---- catalog --------------------------------------------------------------------------
    def list_manifests(
        self, *, tag: str | None = None, architecture: str | None = None, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every visible manifest, following ``next_cursor`` page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if tag:
                params["tag"] = tag
            if architecture:
                params["architecture"] = architecture
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", "/catalog", params=params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def versions(self, catalog_id: str, version: str | None = None) -> list[dict[str, Any]]:
        path = f"/catalog/{_seg(catalog_id)}" + (f"/{_seg(version)}" if version else "")
        result: list[dict[str, Any]] = self.request("GET", path)["items"]
        return result

    def get(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._m(catalog_id, version, arch))
        return result

    def delete(
        self, catalog_id: str, version: str | None = None, arch: str | None = None, *, purge: bool = False
    ) -> None:
        path = f"/catalog/{_seg(catalog_id)}"
        if version:
            path += f"/{_seg(version)}"
            if arch:
                path += f"/{_seg(arch)}"
        self.request("DELETE", path, params={"purge": "true"} if purge else None)

    def state(self, catalog_id: str, version: str, arch: str, action: str) -> dict[str, Any]:
        """``action`` is taint, untaint or revoke."""
        result: dict[str, Any] = self.request("PATCH", f"{self._m(catalog_id, version, arch)}/{action}")
        return result

    def edit(
        self, catalog_id: str, version: str, arch: str, field: str, values: list[str], *, add: bool
    ) -> dict[str, Any]:
        """``field`` is roles, claims or tags."""
        method = "PATCH" if add else "DELETE"
        result: dict[str, Any] = self.request(
            method, f"{self._m(catalog_id, version, arch)}/{field}", json={field: values}
        )
        return result

    def update_metadata(self, catalog_id: str, version: str, arch: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"{self._m(catalog_id, version, arch)}/metadata", json=fields)
        return result

    # ---- transfers ------------------------------------------------------------------------
    def push_begin(self, catalog_id: str, version: str, arch: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/push", json=body)
        return result

    def upload_chunks(self, upload_id: str, digests: list[str]) -> ChunksAnswer:
        """Which of a page of chunks are verified already, and staging PUT URLs for the others."""
        result: ChunksAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/chunks", json={"digests": digests})
        return result

    def verify_chunks(self, upload_id: str, digests: list[str]) -> VerifyAnswer:
        result: VerifyAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/verify", json={"digests": digests})
        return result

    def declare_index(self, upload_id: str, declared: dict[str, Any]) -> IndexAnswer:
        """Declare the index (digest, size) once the chunks are in; answers where to PUT it."""
        result: IndexAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/index", json=declared)
        return result

    def commit(self, upload_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/uploads/{_seg(upload_id)}/commit", json={})
        return result

    def abort(self, upload_id: str) -> None:
        self.request("DELETE", f"/uploads/{_seg(upload_id)}")

    def pull(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/pull")
        return result

    def pull_urls(self, catalog_id: str, version: str, arch: str, digests: list[str]) -> dict[str, str]:
        result: dict[str, str] = self.request(
            "POST", f"{self._m(catalog_id, version, arch)}/pull/urls", json={"digests": digests}
        )["urls"]
        return result

    def report_corrupt(self, catalog_id: str, version: str, arch: str, digests: list[str]) -> ReportAnswer:
        """Tell the catalog these chunks failed verification; it re-checks and quarantines them."""
        result: ReportAnswer = self.request(
            "POST", f"{self._m(catalog_id, version, arch)}/pull/report", json={"digests": digests}
        )
        return result

    def pull_pack_url(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        """A fresh ``pack`` object (URL, size, checksum) for an imported original-format pack."""
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/pull/urls", json={})[
            "pack"
        ]
        return result

    def import_pack(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/catalog/import", json=body)
        return result

    # ---- administration -------------------------------------------------------------------
    def gc(self, *, dry_run: bool, cursor: str | None = None, grace_seconds: float | None = None) -> dict[str, Any]:
        """One step of garbage collection (``POST /admin/gc``); call again with ``next_cursor`` until it
        is None. Counts only: the answer never names a catalog id."""
        body: dict[str, Any] = {"dry_run": dry_run, "cursor": cursor}
        if grace_seconds is not None:
            body["grace_seconds"] = grace_seconds
        result: dict[str, Any] = self.request("POST", "/admin/gc", json=body)
        return result
