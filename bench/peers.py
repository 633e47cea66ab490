"""The peers pdcat is measured against, each doing the same job: push a VM bundle folder, pull it back.

One class per peer, one interface (reused by ``bench/run.py`` over loopback and by ``bench/wan.py``
over a throttled link between network namespaces):

    peer = PEERS["restic"]                       # or peers_by_name(["restic", "rclone"])
    problem = peer.check() or peer.install()     # None when its commands are there (apt-get if not)
    server = peer.start_server(data_dir, Endpoint("127.0.0.1", 0))   # port 0: a free one
    up = peer.push(server, bundle_folder, "v1", work)                 # Transfer: seconds, RSS, bytes
    up2 = peer.push(server, bundle_v2_folder, "v2", work, base="v1")  # incremental where it can be
    down = peer.pull(server, "v1", dest_parent, work)                 # -> dest_parent/<bundle name>
    server.stop()

- ``Endpoint(host, port)`` is where a networked peer's server listens and where its client connects;
  ``PeerServer`` can also be built by hand for a server started elsewhere (``endpoint``, ``data_dir``).
- ``prefix`` (every method) is put before each command, e.g. ``["ip", "netns", "exec", "client"]``,
  so the client and the server may run in different network namespaces.
- ``push`` and ``pull`` time only the transfer itself (one-off set-up such as ``restic init`` or
  creating a bucket is done once, untimed), reap every process with ``os.wait4`` (``bench.proc``)
  and report the largest peak RSS of the client processes; ``bytes_sent`` / ``bytes_received`` say
  what crossed the wire (or went into the store) and ``bytes_how`` how it was measured.
- Every peer is run with its defaults unless a flag is needed for the job (named in ``README.md``).
- ``Rclone.push``/``pull`` also take ``dry_run=True``: rclone's own plan (bytes it would move), no transfer.

A peer whose commands are missing is installed with apt-get (Debian packages, only what is missing)
or reported; nothing here is fatal to the benchmark: failures raise ``PeerError`` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script, or imported by bench/run.py or bench/wan.py
    sys.path.insert(0, str(REPO))

from bench.proc import Pipeline, StepFailed, run_pipeline, settle, tree_bytes, which  # noqa: E402

__all__ = [
    "PEERS",
    "Endpoint",
    "Peer",
    "PeerError",
    "PeerServer",
    "Transfer",
    "apt_install",
    "free_port",
    "peers_by_name",
]

LOOPBACK = "127.0.0.1"
TIMEOUT = 1800.0
"""A peer's single command is killed past this many seconds (a hung peer must not hang the run)."""


class PeerError(RuntimeError):
    """A peer could not be installed, started or run; the message says why (one line)."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free on ``host`` a moment ago (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Endpoint:
    """Where a peer's server listens and its client connects: ``host:port`` (port 0 = pick a free one)."""

    host: str = LOOPBACK
    port: int = 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def resolved(self) -> Endpoint:
        return self if self.port else Endpoint(self.host, free_port(self.host))


@dataclass
class PeerServer:
    """A peer's running server (or, for a peer without one, just its store folder)."""

    peer: str
    data_dir: Path
    endpoint: Endpoint | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)
    """What the clients need to know (credentials, bucket, whether the repository is initialised)."""

    @property
    def pid(self) -> int | None:
        """The main server process (for a probe of its CPU and memory), if there is one."""
        return self.processes[-1].pid if self.processes else None

    def stop(self) -> None:
        """Stop the server: its own way first when it has one (SeaweedFS: SIGKILL), else SIGTERM, then kill."""
        stop_first = self.state.pop("stop", None)
        if stop_first is not None:
            stop_first()
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        self.processes.clear()

    def log_tail(self, chars: int = 1500) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class Transfer:
    """One push or pull by a peer: wall seconds, the client's peak RSS and what went over the wire."""

    seconds: float
    rss_kib: int
    cpu_seconds: float = 0.0
    bytes_sent: int | None = None
    bytes_received: int | None = None
    bytes_how: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each command of the transfer, by name (e.g. tar, skopeo copy, unpack)."""

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    def add(self, name: str, run: Pipeline) -> None:
        self.seconds += run.seconds
        self.rss_kib = max(self.rss_kib, run.rss_kib)
        self.cpu_seconds += run.cpu_seconds
        self.steps[name] = round(self.steps.get(name, 0.0) + run.seconds, 3)

    def json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "rss_mib": round(self.rss_mib, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "bytes_how": self.bytes_how,
            "steps": self.steps,
        }


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "RCLONE_", "AWS_"))}
    env.update(extra or {})
    return env


def _wait_port(
    endpoint: Endpoint, process: subprocess.Popen[bytes] | None, what: str, log: Path, timeout: float
) -> None:
    """Until ``endpoint`` accepts a TCP connection; raise with the end of the log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise PeerError(f"{what} did not start on {endpoint.address}: {tail.strip() or 'no log'}")


def _spawn(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env or _env(), cwd=cwd
        )


# ---- installing -------------------------------------------------------------------------------
_apt_updated = False


def apt_install(packages: Iterable[str], say: Callable[[str], None] = print) -> str | None:
    """``apt-get install`` the Debian packages given (as infra/local/system_packages.sh does): None
    when it worked, else why not (not root, no apt-get, or apt's own error)."""
    packages = sorted(set(packages))
    if not packages:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"needs root and apt-get: apt-get install -y --no-install-recommends {' '.join(packages)}"
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    if not _apt_updated:
        say("apt-get update")
        subprocess.run(["apt-get", "-q", *lock, "update"], env=env, capture_output=True, check=False)
        _apt_updated = True
    say(f"apt-get install -y --no-install-recommends {' '.join(packages)}")
    done = subprocess.run(
        ["apt-get", "-q", *lock, "install", "-y", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()[-400:]}"
    return None


# ---- the interface ----------------------------------------------------------------------------
class Peer:
    """One peer. Subclasses set ``name``, ``title``, ``tools`` and implement the four verbs."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    """Its column heading in the table."""
    tools: ClassVar[dict[str, str]] = {}
    """command -> the Debian package that provides it."""
    networked: ClassVar[bool] = False
    """Whether push and pull go through a server at an Endpoint (else a local store)."""
    incremental_pull: ClassVar[bool] = False
    """Whether a pull into a folder that holds the previous version fetches only what changed."""

    def missing(self) -> list[str]:
        return [tool for tool in self.tools if which(tool) is None]

    def check(self) -> str | None:
        """None when every command is there; else which are missing and the packages to install."""
        missing = self.missing()
        if not missing:
            return None
        packages = sorted({self.tools[t] for t in missing})
        return f"missing {', '.join(missing)} (Debian package(s) {' '.join(packages)})"

    def install(self, say: Callable[[str], None] = print) -> str | None:
        """apt-get install what is missing (only that); None when the peer is then ready, else why not."""
        if self.check() is None:
            return None
        problem = apt_install({self.tools[t] for t in self.missing()}, say)
        return problem or self.check()

    def version(self) -> str:
        return ""

    def start_server(
        self, data_dir: Path, endpoint: Endpoint | None = None, *, prefix: Sequence[str] = ()
    ) -> PeerServer:
        """Start the peer's server bound to ``endpoint`` with its data in ``data_dir`` (a new folder)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return PeerServer(self.name, data_dir)

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
    ) -> Transfer:
        """Store the bundle ``folder`` as version ``ref``; ``base``: the version it derives from."""
        raise NotImplementedError

    def pull(self, server: PeerServer, ref: str, dest: Path, work: Path, *, prefix: Sequence[str] = ()) -> Transfer:
        """Bring version ``ref`` back as ``dest/<bundle name>``; an older version already there may be reused."""
        raise NotImplementedError

    def stored_bytes(self, server: PeerServer) -> int:
        """Bytes in the peer's store (its growth over a push is what that push sent)."""
        return tree_bytes(server.data_dir)

    # helpers
    def _run(
        self,
        commands: Sequence[Sequence[str]],
        *,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: Any = None,
    ) -> Pipeline:
        settle()
        try:
            return run_pipeline(
                [[*prefix, *c] for c in commands],
                env if env is not None else _env(),
                cwd=cwd or Path.cwd(),
                stdout=stdout,
                timeout=TIMEOUT,
            )
        except StepFailed as exc:
            raise PeerError(f"{self.name}: {exc}") from exc

    def _measure_store(self, server: PeerServer, before: int, transfer: Transfer) -> None:
        transfer.bytes_sent = self.stored_bytes(server) - before
        transfer.bytes_how = "growth of the store"


def _bundle_name(server: PeerServer, ref: str) -> str:
    try:
        return str(server.state["names"][ref])
    except KeyError:
        raise PeerError(f"version {ref!r} was never pushed to this {server.peer} store") from None


def _remember(server: PeerServer, ref: str, folder: Path) -> None:
    server.state.setdefault("names", {})[ref] = folder.name


# ---- tar --sparse | zstd -T0 -3 -----------------------------------------------------------------
class TarZstd(Peer):
    """One compressed stream in a local folder: the floor of "read, compress, write" on this machine."""

    name = "tar-zstd"
    title = "tar --sparse | zstd -T0 -3"
    tools: ClassVar[dict[str, str]] = {"tar": "tar", "zstd": "zstd"}

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
    ) -> Transfer:
        archive = server.data_dir / f"{ref}.tar.zst"
        t = Transfer(0.0, 0)
        with archive.open("wb") as out:
            t.add(
                "tar | zstd",
                self._run(
                    [
                        ["tar", "--sparse", "-cf", "-", "-C", str(folder.parent), folder.name],
                        ["zstd", "-T0", "-3", "-q", "-c"],
                    ],
                    prefix=prefix,
                    stdout=out,
                ),
            )
        _remember(server, ref, folder)
        t.bytes_sent, t.bytes_how = archive.stat().st_size, "size of the archive"
        return t

    def pull(self, server: PeerServer, ref: str, dest: Path, work: Path, *, prefix: Sequence[str] = ()) -> Transfer:
        archive = server.data_dir / f"{ref}.tar.zst"
        dest.mkdir(parents=True, exist_ok=True)
        t = Transfer(0.0, 0)
        t.add(
            "zstd -dc | tar -x",
            self._run([["zstd", "-dc", "-q", str(archive)], ["tar", "-xf", "-", "-C", str(dest)]], prefix=prefix),
        )
        t.bytes_received, t.bytes_how = archive.stat().st_size, "size of the archive (read whole)"
        return t


# ---- restic, through its REST protocol ----------------------------------------------------------
class Restic(Peer):
    """restic backup/restore to a REST repository served by ``rclone serve restic`` over HTTP."""

    name = "restic"
    title = "restic"
    tools: ClassVar[dict[str, str]] = {"restic": "restic", "rclone": "rclone"}
    networked = True

    def version(self) -> str:
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()

    def start_server(
        self, data_dir: Path, endpoint: Endpoint | None = None, *, prefix: Sequence[str] = ()
    ) -> PeerServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        ep = (endpoint or Endpoint()).resolved()
        log = data_dir.parent / f"{data_dir.name}.restic-server.log"
        proc = _spawn([*prefix, "rclone", "serve", "restic", "--addr", ep.address, str(data_dir)], log)
        server = PeerServer(self.name, data_dir, ep, [proc], log)
        try:
            _wait_port(ep, proc, "rclone serve restic", log, 30)
        except PeerError:
            server.stop()
            raise
        server.state["password"] = secrets.token_hex(16)
        return server

    def _env(self, server: PeerServer, work: Path) -> dict[str, str]:
        assert server.endpoint is not None
        return _env(
            {
                "RESTIC_REPOSITORY": f"rest:{server.endpoint.url}/",
                "RESTIC_PASSWORD": server.state["password"],
                "RESTIC_CACHE_DIR": str(work / "restic-cache"),
            }
        )

    def _init(self, server: PeerServer, work: Path, prefix: Sequence[str]) -> None:
        if not server.state.get("initialised"):
            self._run([["restic", "init"]], prefix=prefix, env=self._env(server, work))
            server.state["initialised"] = True

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
    ) -> Transfer:
        self._init(server, work, prefix)
        before = self.stored_bytes(server)
        t = Transfer(0.0, 0)
        cmd = ["restic", "backup", "--host", "bench", "--tag", ref, folder.name]
        t.add("restic backup", self._run([cmd], prefix=prefix, env=self._env(server, work), cwd=folder.parent))
        _remember(server, ref, folder)
        self._measure_store(server, before, t)
        return t

    def pull(self, server: PeerServer, ref: str, dest: Path, work: Path, *, prefix: Sequence[str] = ()) -> Transfer:
        _bundle_name(server, ref)
        dest.mkdir(parents=True, exist_ok=True)
        t = Transfer(0.0, 0)
        # a relative path was backed up (cwd = the bundle's parent), so it is restored as dest/<name>
        cmd = ["restic", "restore", "latest", "--host", "bench", "--tag", ref, "--target", str(dest)]
        t.add("restic restore", self._run([cmd], prefix=prefix, env=self._env(server, work)))
        return t


# ---- casync, with a local store -----------------------------------------------------------------
class Casync(Peer):
    """casync make/extract with a local chunk store (default chunker: 16/64/256 KiB min/avg/max)."""

    name = "casync"
    title = "casync"
    tools: ClassVar[dict[str, str]] = {"casync": "casync"}
    incremental_pull = True

    def _store(self, server: PeerServer) -> Path:
        return server.data_dir / "default.castr"

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
    ) -> Transfer:
        before = self.stored_bytes(server)
        index = server.data_dir / f"{ref}.caidx"
        cmd = ["casync", "make", f"--store={self._store(server)}", "--compression=zstd", str(index), str(folder)]
        t = Transfer(0.0, 0)
        t.add("casync make", self._run([cmd], prefix=prefix))
        _remember(server, ref, folder)
        self._measure_store(server, before, t)
        return t

    def pull(self, server: PeerServer, ref: str, dest: Path, work: Path, *, prefix: Sequence[str] = ()) -> Transfer:
        name = _bundle_name(server, ref)
        dest.mkdir(parents=True, exist_ok=True)
        index = server.data_dir / f"{ref}.caidx"
        cmd = ["casync", "extract", f"--store={self._store(server)}", str(index), str(dest / name)]
        t = Transfer(0.0, 0)
        t.add("casync extract", self._run([cmd], prefix=prefix))
        return t


# ---- skopeo -> docker-registry, one zstd layer ---------------------------------------------------
_REGISTRY_CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
"""


class Skopeo(Peer):
    """An OCI image whose one layer is the bundle's tar, copied by skopeo to a docker-registry as zstd."""

    name = "skopeo"
    title = "skopeo → registry (zstd)"
    tools: ClassVar[dict[str, str]] = {
        "skopeo": "skopeo",
        "docker-registry": "docker-registry",
        "tar": "tar",
        "zstd": "zstd",
    }
    networked = True

    def version(self) -> str:
        return subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout.strip()

    def start_server(
        self, data_dir: Path, endpoint: Endpoint | None = None, *, prefix: Sequence[str] = ()
    ) -> PeerServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        ep = (endpoint or Endpoint()).resolved()
        config = data_dir.parent / f"{data_dir.name}.registry.yml"
        config.write_text(_REGISTRY_CONFIG.format(root=data_dir, addr=ep.address))
        log = data_dir.parent / f"{data_dir.name}.registry.log"
        proc = _spawn([*prefix, "docker-registry", "serve", str(config)], log)
        server = PeerServer(self.name, data_dir, ep, [proc], log)
        try:
            _wait_port(ep, proc, "docker-registry", log, 30)
        except PeerError:
            server.stop()
            raise
        return server

    def _image(self, server: PeerServer, ref: str) -> str:
        assert server.endpoint is not None
        return f"docker://{server.endpoint.address}/bench/vm:{ref}"

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
    ) -> Transfer:
        layout = work / f"skopeo-oci-{ref}"
        shutil.rmtree(layout, ignore_errors=True)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_tmp = blobs / "layer.tmp"
        before = self.stored_bytes(server)
        t = Transfer(0.0, 0)
        # the layer: the bundle's tar (sparse members, as tar --sparse writes them), hashed as it is written
        tar = self._run(
            [
                ["tar", "--sparse", "-cf", "-", "-C", str(folder.parent), folder.name],
                ["tee", str(layer_tmp)],
                ["sha256sum"],
            ],
            prefix=prefix,
        )
        t.add("tar | tee | sha256sum", tar)
        started = time.monotonic()
        digest = tar.stdout.split()[0]
        layer_size = layer_tmp.stat().st_size
        layer_tmp.rename(blobs / digest)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest}"]},
                "config": {},
            }
        ).encode()
        config_digest = _put_blob(blobs, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{config_digest}",
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{digest}",
                        "size": layer_size,
                    }
                ],
            }
        ).encode()
        manifest_digest = _put_blob(blobs, manifest)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": f"sha256:{manifest_digest}",
                            "size": len(manifest),
                            "annotations": {"org.opencontainers.image.ref.name": ref},
                        }
                    ],
                }
            )
        )
        t.seconds += time.monotonic() - started
        cmd = [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
            f"oci:{layout}:{ref}",
            self._image(server, ref),
        ]
        t.add("skopeo copy", self._run([cmd], prefix=prefix))
        shutil.rmtree(layout, ignore_errors=True)
        _remember(server, ref, folder)
        self._measure_store(server, before, t)
        return t

    def pull(self, server: PeerServer, ref: str, dest: Path, work: Path, *, prefix: Sequence[str] = ()) -> Transfer:
        layout = work / f"skopeo-pull-{ref}"
        shutil.rmtree(layout, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            self._image(server, ref),
            f"oci:{layout}:{ref}",
        ]
        t = Transfer(0.0, 0)
        t.add("skopeo copy", self._run([cmd], prefix=prefix))
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
        layer = manifest["layers"][0]
        blob = layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
        media = str(layer["mediaType"])
        first = (
            ["zstd", "-dc", "-q", str(blob)]
            if "zstd" in media
            else (["gzip", "-dc", str(blob)] if "gzip" in media else ["cat", str(blob)])
        )
        t.add("unpack", self._run([first, ["tar", "-xf", "-", "-C", str(dest)]], prefix=prefix))
        t.bytes_received, t.bytes_how = blob.stat().st_size, f"the layer blob ({media})"
        shutil.rmtree(layout, ignore_errors=True)
        return t


def _put_blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return digest


# ---- rclone -> S3 (SeaweedFS) -------------------------------------------------------------------
_S3_KEY, _S3_SECRET = "AKIAPDCATBENCHRCLONE", "pdcat-bench-rclone-secret"


def start_seaweed_s3(
    data_dir: Path, endpoint: Endpoint, *, prefix: Sequence[str] = (), timeout: float = 60
) -> PeerServer:
    """SeaweedFS (the ``weed`` of the dev extra, as in infra/local/seaweed.py) with its S3 gateway on
    ``endpoint`` and every other port on the same host: ``weed master``, then ``weed server -s3``.

    Unlike infra/local/seaweed.py it binds to any host, so bench/wan.py can put it in a namespace.
    """
    from infra.local.seaweed import seaweed_binary

    exe = str(seaweed_binary())
    host = endpoint.host
    names = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
    )
    ports = {n: free_port(host) for n in names}
    ports["s3.port"] = endpoint.port
    (data_dir / "master").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "bench",
                "credentials": [{"accessKey": _S3_KEY, "secretKey": _S3_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data_dir.parent / f"{data_dir.name}.s3.json"
    config.write_text(json.dumps(identities))
    log = data_dir.parent / f"{data_dir.name}.seaweed.log"
    env = _env({"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"})
    master = _spawn(
        [
            *prefix,
            exe,
            "master",
            f"-mdir={data_dir / 'master'}",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-port={ports['master.port']}",
            f"-port.grpc={ports['master.port.grpc']}",
            "-telemetry=false",
            "-volumeSizeLimitMB=1024",
        ],
        log,
        env,
        data_dir / "master",
    )
    server = PeerServer("seaweedfs", data_dir, endpoint, [master], log)
    try:
        _wait_port(Endpoint(host, ports["master.port"]), master, "SeaweedFS master", log, timeout)
        time.sleep(1.0)  # its leader election; the volume server retries every 5 s if it comes too early
        volume = _spawn(
            [
                *prefix,
                exe,
                "server",
                "-master=false",
                f"-master.peers={host}:{ports['master.port']}.{ports['master.port.grpc']}",
                f"-dir={data_dir}",
                f"-ip={host}",
                f"-ip.bind={host}",
                *(f"-{n}={port}" for n, port in ports.items() if not n.startswith("master.")),
                "-s3",
                f"-s3.config={config}",
                "-s3.iam=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=100",
                "-volume.preStopSeconds=0",
            ],
            log,
            env,
            data_dir,
        )
        server.processes.append(volume)
        _wait_port(endpoint, volume, "SeaweedFS S3 gateway", log, timeout)
    except BaseException:
        _kill_all(server)
        raise
    server.state["stop"] = lambda: _kill_all(server)
    return server


def _kill_all(server: PeerServer) -> None:
    """SeaweedFS is stopped with SIGKILL: its data is thrown away and a graceful stop can hang."""
    for p in server.processes:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    server.processes.clear()


class Rclone(Peer):
    """rclone copy to an S3 bucket (SeaweedFS's S3 gateway) and back; v2 server-side-copies unchanged files."""

    name = "rclone"
    title = "rclone"
    tools: ClassVar[dict[str, str]] = {"rclone": "rclone"}
    networked = True
    incremental_pull = True  # per file: a file whose size and mtime match is skipped
    bucket = "bench"

    def version(self) -> str:
        return subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0]

    def check(self) -> str | None:
        """rclone's command, and the S3 server: SeaweedFS's ``weed`` from the dev extra (not apt)."""
        problem = super().check()
        if problem is None:
            try:
                from infra.local.seaweed import seaweed_binary

                seaweed_binary()
            except (ImportError, RuntimeError) as exc:
                return f"no S3 server for rclone: {exc}"
        return problem

    def start_server(
        self, data_dir: Path, endpoint: Endpoint | None = None, *, prefix: Sequence[str] = ()
    ) -> PeerServer:
        data_dir.mkdir(parents=True, exist_ok=True)
        server = start_seaweed_s3(data_dir, (endpoint or Endpoint()).resolved(), prefix=prefix)
        server.peer = self.name
        return server

    def _env(self, server: PeerServer) -> dict[str, str]:
        assert server.endpoint is not None
        return _env(
            {
                "RCLONE_CONFIG": os.devnull,
                "RCLONE_CONFIG_BENCHS3_TYPE": "s3",
                "RCLONE_CONFIG_BENCHS3_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCHS3_ENDPOINT": server.endpoint.url,
                "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": _S3_KEY,
                "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": _S3_SECRET,
            }
        )

    def _remote(self, ref: str, name: str) -> str:
        return f"benchs3:{self.bucket}/{ref}/{name}"

    def _copy(
        self, server: PeerServer, src: str, dst: str, extra: Sequence[str], prefix: Sequence[str]
    ) -> tuple[Pipeline, int]:
        """rclone copy; the bytes it moved (or would move, with --dry-run) from its final JSON stats."""
        cmd = ["rclone", "copy", src, dst, *extra, "-v", "--use-json-log", "--stats", "1h"]
        run = self._run([cmd], prefix=prefix, env=self._env(server))
        moved = 0
        for line in run.children[-1].stderr.splitlines():
            try:
                stats = json.loads(line).get("stats")
            except ValueError:
                continue
            if stats:
                moved = int(stats.get("bytes", 0))
        return run, moved

    def push(
        self,
        server: PeerServer,
        folder: Path,
        ref: str,
        work: Path,
        *,
        base: str | None = None,
        prefix: Sequence[str] = (),
        dry_run: bool = False,
    ) -> Transfer:
        """``dry_run``: only what rclone would send (its --dry-run plan), nothing stored."""
        if not server.state.get("bucket"):
            self._run([["rclone", "mkdir", f"benchs3:{self.bucket}"]], prefix=prefix, env=self._env(server))
            server.state["bucket"] = True
        extra = []
        if base is not None:  # unchanged files are copied server-side from the version it derives from
            extra = ["--copy-dest", self._remote(base, _bundle_name(server, base))]
        if dry_run:
            extra.append("--dry-run")
        t = Transfer(0.0, 0)
        run, moved = self._copy(server, str(folder), self._remote(ref, folder.name), extra, prefix)
        t.add("rclone copy", run)
        if not dry_run:
            _remember(server, ref, folder)
        t.bytes_sent = moved
        t.bytes_how = "rclone's own count of bytes " + ("it would send (--dry-run)" if dry_run else "transferred")
        return t

    def pull(
        self,
        server: PeerServer,
        ref: str,
        dest: Path,
        work: Path,
        *,
        prefix: Sequence[str] = (),
        dry_run: bool = False,
    ) -> Transfer:
        """``dry_run``: only what rclone would fetch into ``dest`` as it is (its --dry-run plan)."""
        name = _bundle_name(server, ref)
        dest.mkdir(parents=True, exist_ok=True)
        t = Transfer(0.0, 0)
        run, moved = self._copy(
            server, self._remote(ref, name), str(dest / name), ["--dry-run"] if dry_run else [], prefix
        )
        t.add("rclone copy", run)
        t.bytes_received = moved
        t.bytes_how = "rclone's own count of bytes " + ("it would fetch (--dry-run)" if dry_run else "transferred")
        return t


PEERS: dict[str, Peer] = {p.name: p for p in (TarZstd(), Restic(), Casync(), Skopeo(), Rclone())}


def peers_by_name(names: Iterable[str]) -> list[Peer]:
    """The peers named (``PEERS``' keys), in that order; unknown names raise KeyError."""
    return [PEERS[n] for n in names]
