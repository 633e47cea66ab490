"""A small Artifactory stand-in for tests (JFrog Artifactory cannot run on the test machines).

It speaks the part of the REST API pdcat's ``artifactory`` provider uses, with Artifactory's
status codes and headers:

* ``PUT /artifactory/<repo>/<path>``: deploy (201 with the item's JSON). The ``X-Checksum-Sha1``,
  ``X-Checksum-Sha256``, ``X-Checksum-Md5`` (and ``X-Checksum``) headers sent are verified against
  the received bytes: a mismatch is 409, a malformed checksum 400. With ``X-Checksum-Deploy: true``
  and no body it is a *deploy by checksum*: 201 if those bytes are already stored, else 404.
  Bodies may come with ``Content-Length`` or chunked.
* ``GET`` / ``HEAD`` of a file: the bytes with ``X-Checksum-Sha1``/``-Sha256``/``-Md5``,
  ``Content-Length``, ``ETag``, ``Accept-Ranges``; ``Range: bytes=a-[b]`` answers 206.
* ``DELETE``: 204, or 404 when there is nothing.
* ``GET /artifactory/api/storage/<repo>/<folder>?list&deep=1[&listFolders=0]``: the file list
  (``{"uri", "created", "files": [{"uri": "/rel/path", "size", "lastModified", "folder", "sha1",
  "sha2"}]}``); 404 for a missing folder, 400 for a file. Without ``list``: file or folder info.
* ``GET /artifactory/api/system/ping``: ``OK`` without authentication.
* Everything else needs ``X-JFrog-Art-Api: <api key>``, ``Authorization: Bearer <token>`` or basic
  auth (``--username``/``--password``, or the username with the API key as password): 401 otherwise.

Test controls (no authentication, not Artifactory): ``POST /_fake/cut-next-get`` with a byte count
makes the next file GET send its full ``Content-Length`` but drop the connection after that many
bytes; ``GET /_fake/stats`` answers counters (``uploads``, ``checksum_deploys``, ``gets``,
``ranged_gets``).

Run: ``python tests/fakes/artifactory_server.py --port N --root DIR --api-key K [--repo NAME]...``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra.local.servers import RunningProcess, free_port, wait_until_ready  # noqa: E402

__all__ = ["start_artifactory"]

_BLOCK = 1 << 20
_HEX = {"sha1": 40, "sha256": 64, "md5": 32}
_HEADERS = {"X-Checksum-Sha1": "sha1", "X-Checksum-Sha256": "sha256", "X-Checksum-Md5": "md5"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Store:
    """Files under ``<root>/<repo>/<path>`` and their checksums (kept in memory, rebuilt on demand)."""

    def __init__(self, root: Path, repos: list[str]) -> None:
        self.root = root
        self.repos = set(repos)
        self.lock = threading.Lock()
        self.sums: dict[Path, dict[str, str]] = {}
        self.by_sha1: dict[str, Path] = {}
        self.by_sha256: dict[str, Path] = {}
        self.cut_next_get: int | None = None
        self.stats = {"uploads": 0, "checksum_deploys": 0, "gets": 0, "ranged_gets": 0}
        for repo in repos:
            (root / repo).mkdir(parents=True, exist_ok=True)

    def path(self, repo: str, rel: str) -> Path | None:
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        return self.root.joinpath(repo, *parts)

    def checksums(self, path: Path) -> dict[str, str]:
        with self.lock:
            known = self.sums.get(path)
        if known is not None:
            return known
        digests = {"sha1": hashlib.sha1(), "sha256": hashlib.sha256(), "md5": hashlib.md5()}
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                for d in digests.values():
                    d.update(block)
        return self.remember(path, {name: d.hexdigest() for name, d in digests.items()})

    def remember(self, path: Path, sums: dict[str, str]) -> dict[str, str]:
        with self.lock:
            self.sums[path] = sums
            self.by_sha1[sums["sha1"]] = path
            self.by_sha256[sums["sha256"]] = path
        return sums

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def forget(self, path: Path) -> None:
        with self.lock:
            for p in [p for p in self.sums if p == path or path in p.parents]:
                self.sums.pop(p, None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ArtifactoryServer

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.command} {self.path.split('?')[0]} -> {args[1] if len(args) > 1 else ''}\n")

    # ---- replies ---------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(data).encode(), headers, "application/json")

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"errors": [{"status": status, "message": message}]}, headers)

    # ---- request plumbing ------------------------------------------------------------------
    def _authorised(self) -> bool:
        s = self.server
        if s.api_key and hmac.compare_digest(self.headers.get("X-JFrog-Art-Api", ""), s.api_key):
            return True
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and s.access_token:
            return hmac.compare_digest(auth[7:], s.access_token)
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            if s.username and user == s.username:
                return any(p and hmac.compare_digest(password, p) for p in (s.password, s.api_key))
        return False

    def _body_chunks(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    block = self.rfile.read(min(remaining, _BLOCK))
                    if not block:
                        raise ConnectionError("client went away")
                    remaining -= len(block)
                    yield block
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                block = self.rfile.read(min(remaining, _BLOCK))
                if not block:
                    raise ConnectionError("client went away")
                remaining -= len(block)
                yield block

    def _has_body(self) -> bool:
        return (
            self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            or int(self.headers.get("Content-Length") or 0) > 0
        )

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    def _route(self) -> tuple[str, str, str, dict[str, list[str]]] | None:
        """``(kind, repo, rel, query)`` with kind ``file`` or ``storage``; ``None`` if not ours."""
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if path.startswith("/artifactory/api/storage/"):
            repo, _, rel = path[len("/artifactory/api/storage/") :].partition("/")
            return "storage", repo, rel, query
        if path.startswith("/artifactory/") and not path.startswith("/artifactory/api/"):
            repo, _, rel = path[len("/artifactory/") :].partition("/")
            return "file", repo, rel, query
        return None

    def _begin(self) -> tuple[str, str, str, dict[str, list[str]], Path] | None:
        """Authenticate and resolve the target; replies (and returns ``None``) on any refusal."""
        path = urlsplit(self.path).path
        if path == "/artifactory/api/system/ping":
            self._reply(200, b"OK", ctype="text/plain")
            return None
        if path.startswith("/_fake/"):
            self._control(path)
            return None
        route = self._route()
        if route is None:
            self._error(404, "Not Found")
            return None
        if not self._authorised():
            if self._has_body():
                self._drain()
            self._error(401, "Bad credentials", {"WWW-Authenticate": 'Basic realm="Artifactory Realm"'})
            return None
        kind, repo, rel, _ = route
        if repo not in self.server.store.repos:
            if self._has_body():
                self._drain()
            self._error(404, f"Repository {repo} not found")
            return None
        target = self.server.store.path(repo, rel)
        if target is None:
            self._error(400, "Invalid path")
            return None
        return kind, repo, rel, route[3], target

    def _control(self, path: str) -> None:
        store = self.server.store
        if path == "/_fake/cut-next-get" and self.command == "POST":
            store.cut_next_get = int(b"".join(self._body_chunks()).decode() or 0)
            self._json(200, {"ok": True})
        elif path == "/_fake/stats":
            self._json(200, store.stats)
        else:
            self._error(404, "Not Found")

    def _file_headers(self, target: Path) -> dict[str, str]:
        sums = self.server.store.checksums(target)
        return {
            "X-Checksum-Sha1": sums["sha1"],
            "X-Checksum-Sha256": sums["sha256"],
            "X-Checksum-Md5": sums["md5"],
            "ETag": sums["sha1"],
            "Accept-Ranges": "bytes",
            "Last-Modified": self.date_time_string(target.stat().st_mtime),
        }

    def _item(self, rel: str, target: Path, repo: str) -> dict[str, Any]:
        sums = self.server.store.checksums(target)
        host = self.headers.get("Host", "localhost")
        return {
            "repo": repo,
            "path": "/" + rel,
            "created": _now(),
            "createdBy": "fake",
            "downloadUri": f"http://{host}/artifactory/{repo}/{rel}",
            "mimeType": "application/octet-stream",
            "size": str(target.stat().st_size),
            "checksums": {"sha1": sums["sha1"], "md5": sums["md5"], "sha256": sums["sha256"]},
            "originalChecksums": {"sha1": sums["sha1"], "md5": sums["md5"], "sha256": sums["sha256"]},
            "uri": f"http://{host}/artifactory/api/storage/{repo}/{rel}",
        }

    # ---- verbs -----------------------------------------------------------------------------
    def do_PUT(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        kind, repo, rel, _, target = begun
        store = self.server.store
        if kind != "file" or not rel or rel.endswith("/"):
            self._drain()
            self._error(400, "Deploying folders is not supported here")
            return
        claimed: dict[str, str] = {}
        for header, name in _HEADERS.items():
            value = self.headers.get(header)
            if value is not None:
                claimed[name] = value.lower()
        legacy = self.headers.get("X-Checksum")
        if legacy is not None:
            claimed.setdefault(
                "md5" if len(legacy) == 32 else "sha256" if len(legacy) == 64 else "sha1", legacy.lower()
            )
        for name, value in claimed.items():
            if not re.fullmatch(f"[0-9a-f]{{{_HEX[name]}}}", value):
                self._drain()
                self._error(400, f"Invalid {name} checksum")
                return
        if self.headers.get("X-Checksum-Deploy", "").lower() == "true":
            self._drain()
            with store.lock:
                source = store.by_sha1.get(claimed.get("sha1", "")) or store.by_sha256.get(claimed.get("sha256", ""))
            if source is None or not source.is_file():
                self._error(404, "Checksum deploy failed: the checksum is not in the file store")
                return
            self._store_copy(source, target)
            store.count("checksum_deploys")
            self._json(201, self._item(rel, target, repo))
            return
        if target.is_dir():
            self._drain()
            self._error(409, "A folder exists at this path")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        digests = {"sha1": hashlib.sha1(), "sha256": hashlib.sha256(), "md5": hashlib.md5()}
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".fake-upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as sink:
                for block in self._body_chunks():
                    for d in digests.values():
                        d.update(block)
                    sink.write(block)
            actual = {name: d.hexdigest() for name, d in digests.items()}
            for name, value in claimed.items():
                if actual[name] != value:
                    tmp.unlink()
                    self._error(409, f"Checksum error: received '{value}' but actual is '{actual[name]}'")
                    return
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        store.forget(target)
        store.remember(target, actual)
        store.count("uploads")
        self._json(201, self._item(rel, target, repo))

    def _store_copy(self, source: Path, target: Path) -> None:
        if source == target:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".fake-upload-")
        os.close(fd)
        shutil.copyfile(source, tmp_name)
        os.replace(tmp_name, target)
        store = self.server.store
        store.forget(target)
        store.remember(target, store.checksums(source))

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def _get(self, head: bool) -> None:
        begun = self._begin()
        if begun is None:
            return
        kind, repo, rel, query, target = begun
        if kind == "storage":
            self._storage(repo, rel, query, target)
            return
        if target.is_dir():
            listing = "".join(f'<a href="{p.name}">{p.name}</a>\n' for p in sorted(target.iterdir()))
            self._reply(200, listing.encode(), ctype="text/html")
            return
        if not target.is_file():
            self._error(404, "File not found.")
            return
        headers = self._file_headers(target)
        size = target.stat().st_size
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and not head:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or start > end:
                self._error(416, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1 if size else 0))
        self.end_headers()
        if head:
            return
        store = self.server.store
        store.count("gets")
        if status == 206:
            store.count("ranged_gets")
        with store.lock:
            cut, store.cut_next_get = store.cut_next_get, None
        remaining = end - start + 1 if size else 0
        with target.open("rb") as source:
            source.seek(start)
            while remaining:
                block = source.read(min(remaining, _BLOCK if cut is None else max(1, min(_BLOCK, cut))))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
                if cut is not None:
                    cut -= len(block)
                    if cut <= 0:
                        self.wfile.flush()
                        self.close_connection = True
                        return

    def _storage(self, repo: str, rel: str, query: dict[str, list[str]], target: Path) -> None:
        host = self.headers.get("Host", "localhost")
        uri = f"http://{host}/artifactory/api/storage/{repo}/{rel}".rstrip("/")
        if "list" in query:
            if not target.exists():
                self._error(404, "Unable to find item")
                return
            if not target.is_dir():
                self._error(400, "Expected folder but found file")
                return
            deep = query.get("deep", ["0"])[0] == "1"
            with_folders = query.get("listFolders", ["1"])[0] != "0"
            files = []
            walker = target.rglob("*") if deep else target.iterdir()
            for item in sorted(walker):
                if item.name.startswith(".fake-upload-"):
                    continue
                relative = "/" + item.relative_to(target).as_posix()
                if item.is_dir():
                    if with_folders:
                        files.append({"uri": relative, "size": -1, "lastModified": _now(), "folder": True})
                    continue
                sums = self.server.store.checksums(item)
                files.append(
                    {
                        "uri": relative,
                        "size": item.stat().st_size,
                        "lastModified": _now(),
                        "folder": False,
                        "sha1": sums["sha1"],
                        "sha2": sums["sha256"],
                    }
                )
            self._json(200, {"uri": uri, "created": _now(), "files": files})
            return
        if target.is_file():
            self._json(200, self._item(rel, target, repo))
        elif target.is_dir():
            children = [
                {"uri": "/" + c.name, "folder": c.is_dir()}
                for c in sorted(target.iterdir())
                if not c.name.startswith(".fake-upload-")
            ]
            self._json(200, {"repo": repo, "path": "/" + rel, "created": _now(), "children": children, "uri": uri})
        else:
            self._error(404, "Unable to find item")

    def do_DELETE(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        kind, _, rel, _, target = begun
        if kind != "file" or not rel:
            self._error(400, "Cannot delete this")
            return
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()
        else:
            self._error(404, "Could not locate artifact")
            return
        self.server.store.forget(target)
        self._reply(204)

    def do_POST(self) -> None:
        if urlsplit(self.path).path.startswith("/_fake/"):
            self._control(urlsplit(self.path).path)
        else:
            self._drain()
            self._error(405, "Method Not Allowed")


class ArtifactoryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        *,
        api_key: str,
        username: str | None,
        password: str | None,
        access_token: str | None,
    ) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.api_key = api_key
        self.username = username
        self.password = password
        self.access_token = access_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--access-token")
    parser.add_argument("--repo", action="append", dest="repos")
    args = parser.parse_args(argv)
    store = Store(args.root, args.repos or ["generic-local"])
    server = ArtifactoryServer(
        (args.host, args.port),
        store,
        api_key=args.api_key,
        username=args.username,
        password=args.password,
        access_token=args.access_token,
    )
    print(f"artifactory fake serving on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def start_artifactory(
    log_dir: Path,
    api_key: str,
    *,
    repos: tuple[str, ...] = ("generic-local",),
    username: str | None = None,
    password: str | None = None,
    access_token: str | None = None,
    timeout: float = 20.0,
) -> RunningProcess:
    """The fake as a child process on a free loopback port; ``url`` is ``http://127.0.0.1:PORT``.

    The credentials go on the fake's command line: they are throwaway test values. Raises with the
    fake's log if it does not answer within ``timeout`` seconds.
    """
    import httpx

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    root = log_dir / f"artifactory-{port}"
    log_path = log_dir / f"artifactory-{port}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--root", str(root)]
    argv += ["--api-key", api_key]
    for repo in repos:
        argv += ["--repo", repo]
    if username is not None:
        argv += ["--username", username]
    if password is not None:
        argv += ["--password", password]
    if access_token is not None:
        argv += ["--access-token", access_token]
    process = subprocess.Popen(argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    return wait_until_ready(
        process, url, log_path, "the Artifactory fake",
        lambda: httpx.get(f"{url}/artifactory/api/system/ping", timeout=2).status_code == 200,
        timeout=timeout, interval=0.05,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
