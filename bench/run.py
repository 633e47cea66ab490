"""``make bench``: pdcat against its peers and the original product's method, on one machine, in one run.

Everything pdcat does runs against ONE embedded catalog (``pdcat serve``) in a temporary work folder;
``pdcat`` and every peer (``bench/peers.py``: restic, casync, skopeo + docker-registry, rclone + S3,
tar | zstd) run as child processes exactly as a user would run them, and each child's wall time and
peak RSS are recorded (``bench/proc.py``). Only ratios of figures measured in this same run are judged:
absolute times drift too much on shared machines to mean anything on their own.

    .venv/bin/python bench/run.py [--runs 4] [--size-gib 3] [--data-gib 1.5] [--quick] [--rss-gib 20]
                                  [--peers restic,casync,...] [--no-install] [--workdir DIR] [--keep]

Prints two tables (pdcat against every peer, medians of the rounds, goals judged PASS/FAIL; and
pdcat against the original product's method and against itself: cache, big bundle) and writes
``.bench/results.json``. Exits 0 even when a goal is missed or a peer fails (it is a report);
non-zero when one of pdcat's own steps fails or a required tool is missing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import baseline  # noqa: E402
from bench.bundle import GIB, MIB, allocated_bytes, compare_trees, make_bundle, rewrite  # noqa: E402
from bench.peers import PEERS, Peer  # noqa: E402
from bench.proc import (  # noqa: E402
    Child,
    ServerProbe,
    ServerUsage,
    StepFailed,
    compiled_env,
    fs_type,
    recycle_before_steps,
    run_child,
    settle,
    which,
)
from bench.report import Metric, Report, mib, ratio_metric  # noqa: E402
from bench.rounds import RSS_MAX_MIB, Figures, Sources, build_comparison, peer_round  # noqa: E402
from core.errors import PdcatError  # noqa: E402
from core.pack import DEFAULT_CHUNK_SIZE  # noqa: E402

RESULTS = REPO / ".bench" / "results.json"
CATALOG = "bench-r1"  # round 1's catalog id: the cache rows pull its v1
ARCH = "x86_64"
CHUNK_SIZE = DEFAULT_CHUNK_SIZE  # pdcat's default grid, for the "best possible incremental" figure
# tool -> Debian package that provides it
REQUIRED_TOOLS = {"tar": "tar", "gzip": "gzip", "zstd": "zstd", "mkfs.xfs": "xfsprogs", "cp": "coreutils"}
# the table's columns after pdcat, in the issue's order
PEER_ORDER = ["restic", "casync", "skopeo", "rclone", "tar-zstd"]
V2_FRACTION, V2_RUNS = 0.05, (MIB, 16 * MIB)  # 5% of the data, unaligned runs of 1-16 MiB
V3_FRACTION, V3_ALIGN = 0.02, 4096  # ~2% as 1 MiB writes at 4 KiB-aligned offsets
FREE_NEEDED_GIB = 20  # peak: v1-v3 (5.5 GiB), the catalog, rclone's S3 store with v1 and v2 and a pull (9 GiB)


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if which(tool) is None]


# ---- the benchmark ----------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, report: Report) -> None:
        self.args = args
        self.work = work
        self.r = report
        self.secret = "bench-" + secrets.token_hex(24)
        self.server: Any = None
        self.env: dict[str, str] = {}
        self.cache_available: bool | None = None
        self.cache_xfs: tuple[Child, dict[str, Any], Child, dict[str, Any]] | None = None
        self.peers: list[Peer] = []
        self.figures: dict[str, Figures] = {}
        self.pdcat_v1: list[Child] = []
        """pdcat's push v1 of each round (the baseline row compares the median with the baseline)."""
        self.server_push: list[tuple[ServerUsage, int]] = []
        """The server during each round's push v1, and the raw bytes that push uploaded."""
        self.v1_uploaded = 0

    # -- plumbing --
    def start_server(self) -> None:
        from core.auth import issue_token
        from infra.local.servers import start_embedded

        env = {k: v for k, v in os.environ.items() if k not in ("PDCAT_API_KEY", "PDCAT_DEBUG_CHUNK_DELAY")}
        env = compiled_env(env, self.work / "pycache")
        self.server = start_embedded(
            self.work / "catalog",
            env={
                **{k: v for k, v in env.items() if k == "PYTHONPYCACHEPREFIX"},  # read, never written: it is compiled
                "PDCAT_JWT_SECRET": self.secret,
                "PDCAT_LOG_LEVEL": "WARNING",
                "PDCAT_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                "PDCAT_URL_EXPIRY_SECONDS": "3600",
            },
        )
        token = issue_token(self.secret, "bench", ["SUPER_USER"], ttl_seconds=6 * 3600)[0]
        self.token = token
        env.update(
            PDCAT_SERVER=self.server.url,
            PDCAT_TOKEN=token,
            PDCAT_CONFIG_DIR=str(self.work / "client-config"),
            PDCAT_CACHE_DIR=str(self.work / "cache"),
        )
        self.env = env
        self.r.say(f"embedded catalog at {self.server.url} (data in {self.work / 'catalog'})")

    def probe_server(self) -> ServerProbe:
        """Measure ``pdcat serve`` (CPU, peak RSS) during a block; settle first, so no writeback is in it."""
        settle()
        return ServerProbe(self.server.process.pid)

    def raw_bytes(self, catalog_id: str, version: str) -> int:
        """Raw (uncompressed) bytes of the unique chunks of a committed version, from its index."""
        import httpx

        from core.pack import PackIndex

        with self.api() as api:
            answer = api.pull(catalog_id, version, ARCH)
        r = httpx.get(answer["index_url"], timeout=120)
        r.raise_for_status()
        return PackIndex.from_bytes(r.content).data_size

    def pdcat(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Child:
        settle()
        return run_child([sys.executable, "-m", "client.cli", *args], env or self.env, check=check)

    def api(self) -> Any:
        from client.api import CatalogClient

        return CatalogClient(self.server.url, token=self.token, timeout=600)

    def pull(
        self,
        ref: str,
        dest: Path,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> Child:
        flags = [*(["--name", name] if name else []), *extra]
        return self.pdcat("pull", ref, "--arch", ARCH, "--dest", str(dest), "--no-register", "--json", *flags, env=env)

    @staticmethod
    def clear(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def verify(self, source: Path, pulled: Path, what: str) -> None:
        t = time.monotonic()
        problem = compare_trees(source, pulled)
        if problem:
            raise StepFailed(f"{what}: the pulled bundle differs from the source: {problem}")
        self.r.say(f"  verified {what}: identical to the source, holes included ({time.monotonic() - t:.1f}s)")

    # -- steps --
    def make_sources(self) -> None:
        """v1 (the reference bundle), v2 (5% rewritten in unaligned runs of 1-16 MiB) and v3 (v1 plus
        scattered 1 MiB writes at 4 KiB-aligned offsets, ~2%), each a folder holding the same bundle name."""
        with self.r.step("bundle") as rec:
            a = self.args
            half = a.data_gib / 2 / a.size_gib  # half random bytes, half log-like text
            info = make_bundle(
                self.work / "src" / "v1", a.size_gib, a.seed, random_frac=half, text_frac=half, zero_frac=0.10
            )
            self.bundle = info.path
            self.bundle_info = info
            recycle_before_steps(self.work, info.written_bytes)
            versions = {}
            for name, low, high, align, fraction in (
                ("v2", V2_RUNS[0], V2_RUNS[1], 1, V2_FRACTION),
                ("v3", MIB, MIB, V3_ALIGN, V3_FRACTION),
            ):
                folder = self.work / "src" / name
                folder.mkdir(parents=True)
                run_child(["cp", "-a", "--sparse=always", str(info.path), str(folder)], self.env)
                change = rewrite(folder / info.path.name, fraction, a.seed + 1, min_run=low, max_run=high, align=align)
                versions[name] = (folder / info.path.name, change)
            self.src = Sources(info.path, versions["v2"][0], versions["v3"][0], versions["v2"][1], versions["v3"][1])
            rec.update(
                path=str(info.path),
                disk_size=info.disk_size,
                regions=info.regions,
                written_bytes=info.written_bytes,
                allocated_bytes=allocated_bytes(info.path),
                seconds=round(info.seconds, 3),
                v2_changed_bytes=self.src.v2_change.bytes,
                v2_runs=self.src.v2_change.writes,
                v3_changed_bytes=self.src.v3_change.bytes,
                v3_writes=self.src.v3_change.writes,
                v2_touched_chunk_cells=self.src.v2_change.touched_cells(CHUNK_SIZE),
                v3_touched_chunk_cells=self.src.v3_change.touched_cells(CHUNK_SIZE),
                data_bytes=self.src.v2_change.data_bytes,
            )
        self.r.say(
            f"bundle '{info.path.name}': {info.disk_size / GIB:g} GiB disk, regions of 32 MiB: "
            f"{info.regions['random']} random, {info.regions['text']} text, {info.regions['zero']} explicit zero, "
            f"the rest holes; {mib(rec['allocated_bytes'])} allocated (made in {info.seconds:.1f}s); "
            f"v2: {mib(self.src.v2_change.bytes)} rewritten in {self.src.v2_change.writes} runs; "
            f"v3: {mib(self.src.v3_change.bytes)} in {self.src.v3_change.writes} scattered 1 MiB writes"
        )

    def select_peers(self) -> None:
        """The peers asked for, installed when missing (apt-get); a peer that cannot be had is reported."""
        wanted = [n for n in (self.args.peers or "").split(",") if n] if self.args.peers is not None else PEER_ORDER
        with self.r.step("peers") as rec:
            for name in wanted:
                peer = PEERS.get(name)
                if peer is None:
                    self.r.note(f"peer {name!r} unknown (known: {', '.join(PEERS)}): skipped")
                    continue
                problem = peer.check()
                if problem and not self.args.no_install:

                    def say(text: str, name: str = name) -> None:
                        self.r.say(f"{name}: {text}")

                    problem = peer.install(say)
                if problem:
                    rec[name] = {"missing": problem}
                    self.figures[name] = Figures(name, peer.title, error=f"missing: {problem}")
                    self.r.note(f"peer {name} MISSING, not run: {problem}")
                    continue
                try:
                    version = peer.version()
                except Exception as exc:  # a version string is cosmetic
                    version = f"? ({exc})"
                rec[name] = {"version": version}
                self.peers.append(peer)
                self.figures[name] = Figures(name, peer.title)
        ready = ", ".join(f"{p.name} ({rec[p.name]['version'] or 'ok'})" for p in self.peers)
        self.r.say(f"peers: {ready or 'none'}")

    def rounds(self) -> None:
        """N rounds; in each, every tool in turn (the order rotates), each in a fresh store."""
        pdcat = Figures("pdcat", "pdcat")
        self.figures = {"pdcat": pdcat, **self.figures}
        tools: list[Peer | None] = [None, *self.peers]  # None = pdcat
        for i in range(self.args.runs):
            shift = i % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                if tool is None:
                    with self.r.step(f"pdcat_round_{i + 1}") as rec:
                        self.pdcat_round(i, pdcat, rec)
                    continue
                fig = self.figures[tool.name]
                if fig.error:
                    continue  # it failed in an earlier round: its figures would not be comparable
                try:
                    with self.r.step(f"{tool.name}_round_{i + 1}"):
                        peer_round(tool, fig, self.src, self.work, i, self.r.say)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # a peer's failure is reported, not fatal
                    fig.error = f"{type(exc).__name__}: {str(exc).strip()[:400]}"
                    self.r.note(f"peer {tool.name} FAILED in round {i + 1}: {fig.error}")

    def drop_versions(self) -> None:
        """v2 and v3 are no longer needed after the rounds: free their disk for the tests that follow."""
        if hasattr(self, "src"):
            self.clear(self.src.v2.parent)
            self.clear(self.src.v3.parent)

    def pdcat_round(self, i: int, fig: Figures, rec: dict[str, Any]) -> None:
        """pdcat's round: push v1, cold pull (empty cache), pull --no-cache, push v2; in round 1 also
        the scattered-writes push (v3) and the pull of v2 with v1 in the cache."""
        catalog = f"bench-r{i + 1}"
        first = i == 0
        with self.probe_server() as server:
            push = self.pdcat(
                "push", str(self.src.v1), "--catalog", catalog, "--version", "1", "--arch", ARCH, "--json"
            )
        out = push.json()
        raw_uploaded = self.raw_bytes(catalog, "1") - int(out.get("reused_bytes") or 0)
        self.pdcat_v1.append(push)
        self.server_push.append((server, raw_uploaded))
        self.v1_uploaded = int(out["uploaded_bytes"])
        self.clear(self.work / "cache")
        dest = self.work / "pdcat-pulled"
        with self.probe_server() as server_pull:
            cold = self.pull(f"{catalog}:1", dest)
        cold_out = cold.json()
        if first:
            self.verify(self.src.v1, Path(cold_out["path"]), "cold pull")
        self.clear(dest)
        nocache = self.pull(f"{catalog}:1", dest, extra=["--no-cache"])
        nocache_out = nocache.json()
        if first:
            self.verify(self.src.v1, Path(nocache_out["path"]), "pull --no-cache")
        self.clear(dest)
        push2 = self.pdcat("push", str(self.src.v2), "--catalog", catalog, "--version", "2", "--arch", ARCH, "--json")
        out2 = push2.json()
        fig.push.append(push.seconds)
        fig.pull.append(cold.seconds)
        fig.pull_nocache.append(nocache.seconds)
        fig.push_v2.append(push2.seconds)
        fig.v2_bytes.append(float(out2["uploaded_bytes"]))
        fig.rss_push.append(push.rss_mib)
        fig.rss_pull.append(max(cold.rss_mib, nocache.rss_mib))
        peaks = [u.peak_rss_kib / 1024 for u in (server, server_pull) if u.peak_rss_kib is not None]
        if peaks:
            fig.server_rss.append(max(peaks))
        rec.update(
            push_v1={
                "wall_seconds": round(push.seconds, 3),
                "reported_seconds": out.get("seconds"),
                "rss_mib": round(push.rss_mib, 1),
                "client_cpu_seconds": round(push.cpu_seconds, 3),
                "uploaded_bytes": out["uploaded_bytes"],
                "uploaded_raw_bytes": raw_uploaded,
                "uploaded_chunks": out["uploaded_chunks"],
                "chunks": out["chunks"],
                "server": server.json(),
            },
            pull_cold={
                "wall_seconds": round(cold.seconds, 3),
                "reported_seconds": cold_out.get("seconds"),
                "rss_mib": round(cold.rss_mib, 1),
                "downloaded_bytes": cold_out.get("downloaded_bytes"),
                "cache": cold_out.get("cache"),
                "server": server_pull.json(),
            },
            pull_no_cache={
                "wall_seconds": round(nocache.seconds, 3),
                "reported_seconds": nocache_out.get("seconds"),
                "rss_mib": round(nocache.rss_mib, 1),
            },
            push_v2={
                "wall_seconds": round(push2.seconds, 3),
                "rss_mib": round(push2.rss_mib, 1),
                "uploaded_bytes": out2["uploaded_bytes"],
                "uploaded_chunks": out2["uploaded_chunks"],
                "reused_bytes": out2.get("reused_bytes"),
            },
        )
        line = (
            f"pdcat round {i + 1}: push {push.seconds:.1f}s ({out.get('seconds')}s inside, RSS {push.rss_mib:.0f} MiB, "
            f"{mib(out['uploaded_bytes'])} sent), cold pull {cold.seconds:.1f}s (RSS {cold.rss_mib:.0f} MiB), "
            f"--no-cache {nocache.seconds:.1f}s, push v2 {push2.seconds:.1f}s ({mib(out2['uploaded_bytes'])} sent); "
            f"server peak RSS "
            + " / ".join(
                "?" if u.peak_rss_kib is None else f"{u.peak_rss_kib / 1024:.0f}" for u in (server, server_pull)
            )
            + " MiB"
        )
        if first:
            # v3 is v1 plus the scattered writes (not v2 plus them), so it names v1 as its base, as a user
            # who changed v1 would: by default a push builds on the newest version, here v2 (ADR 004)
            push3 = self.pdcat(
                "push",
                str(self.src.v3),
                "--catalog",
                catalog,
                "--version",
                "3",
                "--arch",
                ARCH,
                "--base",
                "1",
                "--json",
            )
            out3 = push3.json()
            fig.scattered_bytes, fig.scattered_how = int(out3["uploaded_bytes"]), "pdcat push --json: uploaded_bytes"
            # v2 with v1 in the cache: pull v1 (cache warm), then v2 to another folder
            self.clear(self.work / "cache")
            self.pull(f"{catalog}:1", dest)
            self.clear(dest)
            pull2 = self.pull(f"{catalog}:2", dest)
            out_p2 = pull2.json()
            self.verify(self.src.v2, Path(out_p2["path"]), "pull of v2 with v1 in the cache")
            self.clear(dest)
            fig.v2_pull_bytes, fig.v2_pull_how = int(out_p2["downloaded_bytes"]), "pdcat pull --json: downloaded_bytes"
            rec.update(
                push_v3={"uploaded_bytes": out3["uploaded_bytes"], "uploaded_chunks": out3["uploaded_chunks"]},
                pull_v2_warm={"downloaded_bytes": out_p2["downloaded_bytes"], "wall_seconds": round(pull2.seconds, 3)},
            )
            line += (
                f"; scattered writes: {mib(out3['uploaded_bytes'])} sent; "
                f"v2 pull with v1 cached: {mib(out_p2['downloaded_bytes'])} downloaded"
            )
        self.clear(self.work / "cache")
        if not first:
            self.purge(catalog, ["1", "2"])
        self.r.say(line)

    def purge(self, catalog: str, versions: Sequence[str]) -> None:
        """Remove versions and the chunks only they use (untimed): the work folder's disk stays bounded."""
        for version in versions:
            done = self.pdcat("rm", f"{catalog}:{version}", "--arch", ARCH, "--purge", "-q", check=False)
            if done.returncode != 0:
                self.r.note(f"pdcat rm --purge {catalog}:{version} failed: {done.stderr.strip()[-300:]}")

    def run_baseline(self) -> None:
        with self.r.step("baseline") as rec, self.api() as api:
            work = self.work / "baseline"
            work.mkdir()
            with self.probe_server() as server:
                p = baseline.push(api, self.bundle, work, "bench-baseline", "1", ARCH)
            rec["push"] = {
                "server": server.json(),
                "excluded_verify_seconds": round(p.verify_seconds, 3),
                "pack_bytes": p.pack_bytes,
                "md5": p.md5,
                "pack_seconds": round(p.pack_seconds, 3),
                "upload_seconds": round(p.upload_seconds, 3),
                "seconds": round(p.seconds, 3),
                "excluded_sha256_seconds": round(p.hash_seconds, 3),
            }
            self.r.say(
                f"baseline push: tar | gzip -5 | md5 -> {mib(p.pack_bytes)} in {p.pack_seconds:.2f}s, "
                f"2-way upload {p.upload_seconds:.2f}s = {p.seconds:.2f}s "
                f"(sha256 of the halves for the catalog index, {p.hash_seconds:.2f}s, and the catalog's "
                f"/verify of them, {p.verify_seconds:.2f}s, not counted; server CPU {server.cpu_seconds:.2f}s)"
            )
            p.pack_path.unlink()
            dest = work / "out"
            settle()
            q = baseline.pull(api, "bench-baseline", "1", ARCH, work, dest)
            rec["pull"] = {
                "downloaded_bytes": q.downloaded_bytes,
                "download_seconds": round(q.download_seconds, 3),
                "unpack_seconds": round(q.unpack_seconds, 3),
                "seconds": round(q.seconds, 3),
                "allocated_after_unpack": allocated_bytes(dest),
            }
            self.r.say(
                f"baseline pull: 2-way download {q.download_seconds:.2f}s, gunzip | tar -x {q.unpack_seconds:.2f}s "
                f"= {q.seconds:.2f}s (unpacked bundle occupies {mib(rec['pull']['allocated_after_unpack'])}: "
                "holes written as zeros)"
            )
            self.clear(work)
        self.purge("bench-baseline", ["1"])
        self.base_push, self.base_pull = p, q

    def cache_hit_plain(self) -> None:
        with self.r.step("cache_hit_plain") as rec:
            # round 1's v1, pulled once with an empty cache (untimed here), then again
            self.clear(self.work / "cache")
            self.d1 = Path(self.pull(f"{CATALOG}:1", self.work / "d1").json()["path"])
            c = self.pull(f"{CATALOG}:1", self.work / "d2", name="other")
            out = c.json()
            self.cache_available = "cache" in out and "clone_method" in out
            rec.update(
                wall_seconds=round(c.seconds, 3),
                reported_seconds=out.get("seconds"),
                rss_mib=round(c.rss_mib, 1),
                cache=out.get("cache"),
                clone_method=out.get("clone_method"),
                downloaded_bytes=out.get("downloaded_bytes"),
                filesystem=fs_type(self.work),
            )
            d3 = self.work / "d3"
            d3.mkdir()
            settle()
            cp = run_child(["cp", "-a", "--sparse=always", str(self.d1), str(d3 / self.d1.name)], self.env)
            rec["cp_seconds"] = round(cp.seconds, 3)
            self.clear(d3)
        self.cache_plain = (c, out, cp)
        if not self.cache_available:
            self.r.note("cache not available: 'pdcat pull --json' has no 'cache'/'clone_method' keys yet")
        self.r.say(
            f"pdcat pull again ({rec['filesystem']}): {c.seconds:.2f}s wall ({out.get('seconds')}s inside), "
            f"cache={out.get('cache', 'n/a')}, clone={out.get('clone_method', 'n/a')}; "
            f"cp -a --sparse=always of the same bundle: {cp.seconds:.2f}s"
        )
        self.verify(self.bundle, Path(out["path"]), "second pull")
        self.clear(Path(out["path"]))
        self.clear(self.work / "d1")
        self.clear(self.work / "cache")

    def cache_hit_reflink(self) -> None:
        with self.r.step("cache_hit_reflink") as rec:
            if not self.cache_available:
                rec["skipped"] = "cache not available"
                self.r.say("reflink cache test skipped: cache not available")
                return
            if os.geteuid() != 0:
                rec["skipped"] = "not root: cannot mount an XFS image"
                self.r.note("reflink cache test skipped: not root, so an XFS image cannot be mounted")
                return
            if which("mount") is None or which("umount") is None:
                rec["skipped"] = "mount/umount not found (Debian package: mount)"
                self.r.note("reflink cache test skipped: mount/umount not found (Debian package: mount)")
                return
            image = self.work / "xfs.img"
            mnt = self.work / "xfs"
            size = allocated_bytes(self.bundle) * 3 + GIB
            size -= size % (4096 * 1024)
            with image.open("wb") as f:
                f.truncate(size)
            run_child([which("mkfs.xfs") or "mkfs.xfs", "-q", "-m", "reflink=1", str(image)], self.env)
            mnt.mkdir()
            mounted = run_child(["mount", "-o", "loop", str(image), str(mnt)], self.env, check=False)
            if mounted.returncode != 0:
                rec["skipped"] = f"mount failed: {mounted.stderr.strip()[:200]}"
                self.r.note(f"reflink cache test skipped: mount -o loop failed: {mounted.stderr.strip()[:200]}")
                image.unlink()
                return
            try:
                env = {**self.env, "PDCAT_CACHE_DIR": str(mnt / "cache")}
                cold = self.pull(f"{CATALOG}:1", mnt / "d1", env=env)
                cold_out = cold.json()
                hit = self.pull(f"{CATALOG}:1", mnt / "d2", name="other", env=env)
                hit_out = hit.json()
                settle()
                cp = run_child(
                    ["cp", "-a", "--reflink=always", str(cold_out["path"]), str(mnt / "d3")], self.env, check=False
                )
                rec.update(
                    image_bytes=size,
                    cold_wall_seconds=round(cold.seconds, 3),
                    cold_reported_seconds=cold_out.get("seconds"),
                    cold_cache=cold_out.get("cache"),
                    hit_wall_seconds=round(hit.seconds, 3),
                    hit_reported_seconds=hit_out.get("seconds"),
                    hit_cache=hit_out.get("cache"),
                    hit_clone_method=hit_out.get("clone_method"),
                    cp_reflink_seconds=round(cp.seconds, 3) if cp.returncode == 0 else None,
                )
                self.r.say(
                    f"XFS (reflink=1) image of {mib(size)}: cold pull {cold.seconds:.2f}s "
                    f"(cache={cold_out.get('cache')}), pull again {hit.seconds:.2f}s wall "
                    f"({hit_out.get('seconds')}s inside, cache={hit_out.get('cache')}, "
                    f"clone={hit_out.get('clone_method')}); cp -a --reflink=always {cp.seconds:.3f}s"
                )
                self.verify(self.bundle, Path(hit_out["path"]), "pull from the cache on XFS")
                self.cache_xfs = (cold, cold_out, hit, hit_out)
            finally:
                self._umount(mnt)
                image.unlink(missing_ok=True)

    def _umount(self, mnt: Path) -> None:
        for attempt in range(5):
            done = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
            if done.returncode == 0:
                return
            time.sleep(0.5 * (attempt + 1))
        lazy = subprocess.run(["umount", "-l", str(mnt)], capture_output=True, text=True)
        self.r.note(f"umount {mnt} failed ({done.stderr.strip()}); lazy umount exit {lazy.returncode}")

    def rss_big(self) -> None:
        gib = self.args.rss_gib
        with self.r.step("rss_big") as rec:
            info = make_bundle(
                self.work / "rss-src",
                gib,
                self.args.seed + 2,
                name="Big VM",
                random_frac=1 / gib,
                text_frac=0,
                zero_frac=0,
            )
            self.r.say(
                f"big bundle: {info.disk_size / GIB:.0f} GiB disk, {mib(info.written_bytes)} of random data in "
                f"32 MiB regions spread over it (made in {info.seconds:.1f}s)"
            )
            push = self.pdcat(
                "push", str(info.path), "--catalog", "bench-rss", "--version", "1", "--arch", ARCH, "--json"
            )
            self.clear(self.work / "cache")
            pull = self.pull("bench-rss:1", self.work / "rss-out")
            pulled = Path(pull.json()["path"])
            rec.update(
                disk_size=info.disk_size,
                data_bytes=info.written_bytes,
                push_wall_seconds=round(push.seconds, 3),
                push_rss_mib=round(push.rss_mib, 1),
                pull_wall_seconds=round(pull.seconds, 3),
                pull_rss_mib=round(pull.rss_mib, 1),
            )
            self.r.say(
                f"big bundle: push {push.seconds:.2f}s, peak RSS {push.rss_mib:.0f} MiB; "
                f"pull {pull.seconds:.2f}s, peak RSS {pull.rss_mib:.0f} MiB"
            )
            self.verify(info.path, pulled, f"{gib:g} GiB pull")
            self.clear(self.work / "rss-src")
            self.clear(self.work / "rss-out")
        self.big = (push, pull, gib)

    # -- the tables --
    def comparison(self) -> None:
        order = ["pdcat", *PEER_ORDER, *[k for k in self.figures if k not in PEER_ORDER and k != "pdcat"]]
        figs = [self.figures[k] for k in order if k in self.figures]
        if hasattr(self, "src") and self.figures.get("pdcat"):
            self.r.comparison = build_comparison(figs, self.src, self.args.runs)

    def metrics(self) -> None:
        m = self.r.metrics
        pd = self.figures.get("pdcat")
        if hasattr(self, "base_push") and pd and pd.push:
            p = median_of(pd.push)
            b = self.base_push.seconds
            m.append(
                ratio_metric(
                    "push time (speedup)",
                    p,
                    b,
                    ratio=b / p,
                    target=">= 4",
                    ok=lambda x: x >= 4,
                    note="pdcat: median push v1 of the rounds",
                )
            )
        if hasattr(self, "base_pull") and pd and pd.pull:
            p = median_of(pd.pull)
            b = self.base_pull.seconds
            m.append(
                ratio_metric(
                    "pull time, cold (speedup)",
                    p,
                    b,
                    ratio=b / p,
                    target=">= 3",
                    ok=lambda x: x >= 3,
                    note="pdcat (median cold pull of the rounds) verifies every chunk; the baseline verifies nothing",
                )
            )
        per_gb = [u.cpu_seconds / (raw / 1e9) for u, raw in self.server_push if u.cpu_seconds is not None and raw]
        if per_gb and self.pdcat_v1:
            usage, raw = self.server_push[0]
            client = self.pdcat_v1[0].cpu_seconds
            gb = raw / 1e9
            cpu = usage.cpu_seconds or 0.0
            cores = cpu / usage.wall_seconds if usage.wall_seconds else 0.0
            m.append(
                Metric(
                    "server CPU s per GB pushed",
                    f"{median_of(per_gb):.2f} s/GB",
                    "-",
                    None,
                    "(not judged)",
                    None,
                    f"median of the rounds' push v1. Round 1: `pdcat serve` (all threads) used {cpu:.2f}s "
                    f"user+system CPU ({cores:.2f} cores on average over {usage.wall_seconds:.2f}s) for {gb:.3f} GB "
                    f"(10^9 bytes) of raw chunk data uploaded ({mib(self.v1_uploaded)} compressed): receiving, "
                    "verifying (read, decompress, hash) and promoting every chunk, and committing; the pdcat client "
                    f"used {client:.2f}s ({client / gb:.2f} s/GB)",
                )
            )
        if pd and pd.v2_bytes and self.v1_uploaded and hasattr(self, "src"):
            ratio = median_of(pd.v2_bytes) / self.v1_uploaded
            change = self.src.v2_change
            best = change.touched_cells(CHUNK_SIZE) / -(-change.data_bytes // CHUNK_SIZE)
            m.append(
                Metric(
                    "incremental push bytes (v2/v1)",
                    mib(median_of(pd.v2_bytes)),
                    f"{mib(self.v1_uploaded)} (v1)",
                    ratio,
                    "<= 0.10",
                    ratio <= 0.10,
                    f"{change.bytes / change.data_bytes:.0%} of the data rewritten in unaligned runs of 1-16 MiB; "
                    f"they touch {best:.0%} of the non-zero {CHUNK_SIZE // MIB} MiB cells",
                )
            )
        if hasattr(self, "cache_plain"):
            second, out, cp = self.cache_plain
            local = self.figures.get("tar-zstd")
            if self.cache_available and out.get("clone_method") == "decompress" and local and local.pull:
                # Without copy-on-write the cache keeps compressed objects (ADR 003): a hit decompresses
                # them, the job of `zstd -dc | tar -x` from a local archive, judged as the cold pull is.
                hit = out.get("cache") == "hit"
                floor = median_of(local.pull)
                ratio = floor / second.seconds
                m.append(
                    Metric(
                        f"cache hit vs zstd -dc | tar -x ({fs_type(self.work)}, no CoW)",
                        f"{second.seconds:.2f} s ({out.get('cache')}, {out.get('clone_method')})",
                        f"{floor:.2f} s (zstd | tar)",
                        ratio,
                        ">= 0.9",
                        hit and ratio >= 0.9,
                        f"{out.get('seconds')}s inside the pdcat process; cp -a of the bundle took {cp.seconds:.2f} s"
                        + ("" if hit else "; the second pull was NOT a cache hit"),
                    )
                )
            elif self.cache_available:
                hit = out.get("cache") == "hit"
                ratio = second.seconds / cp.seconds
                m.append(
                    Metric(
                        f"cache hit vs cp -a ({fs_type(self.work)})",
                        f"{second.seconds:.2f} s ({out.get('cache')}, {out.get('clone_method')})",
                        f"{cp.seconds:.2f} s (cp)",
                        ratio,
                        "<= 1.0",
                        hit and ratio <= 1.0,
                        f"{out.get('seconds')}s inside the pdcat process"
                        + ("" if hit else "; the second pull was NOT a cache hit"),
                    )
                )
            else:
                m.append(Metric("cache hit vs cp -a", "cache not available", "-", None, "<= 1.0", None))
        xfs = self.cache_xfs
        if xfs is not None:
            cold, cold_out, hit, hit_out = xfs
            ratio = hit.seconds / cold.seconds
            is_hit = hit_out.get("cache") == "hit"
            m.append(
                Metric(
                    "cache hit vs cold pull (XFS reflink)",
                    f"{hit.seconds:.2f} s ({hit_out.get('cache')}, {hit_out.get('clone_method')})",
                    f"{cold.seconds:.2f} s (cold)",
                    ratio,
                    "<= 0.05",
                    is_hit and ratio <= 0.05,
                    f"inside the process: {hit_out.get('seconds')}s / {cold_out.get('seconds')}s"
                    + ("" if is_hit else "; the second pull was NOT a cache hit"),
                )
            )
        elif "cache_hit_reflink" in self.r.steps:
            why = self.r.steps["cache_hit_reflink"].get("skipped", "did not finish")
            m.append(Metric("cache hit vs cold pull (XFS reflink)", f"skipped: {why}", "-", None, "<= 0.05", None))
        if hasattr(self, "big"):
            push, pull, gib = self.big
            for what, child in (("push", push), ("pull", pull)):
                rss = child.rss_mib
                m.append(
                    Metric(
                        f"peak RSS {what}, {gib:g} GiB bundle",
                        f"{rss:.0f} MiB",
                        "-",
                        None,
                        f"<= {RSS_MAX_MIB} MiB",
                        rss <= RSS_MAX_MIB,
                    )
                )


def time_by_part(report: Report) -> str:
    """Wall seconds of each part of the run (a tool's rounds added up), to keep ``make bench``'s length known."""
    parts: dict[str, float] = {}
    for name, rec in report.steps.items():
        key = name.split("_round_")[0] if "_round_" in name else name
        parts[key] = parts.get(key, 0.0) + float(rec.get("step_seconds") or 0.0)
    parts = {k: v for k, v in parts.items() if v >= 0.5}
    return ", ".join(f"{k} {v:.0f}s" for k, v in parts.items())


def median_of(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=None, help="rounds of every tool; each figure is their median (4)")
    p.add_argument("--size-gib", type=float, default=None, help="apparent size of the test disk (default 3)")
    p.add_argument("--data-gib", type=float, default=None, help="non-zero data in it, half random (default 1.5)")
    p.add_argument("--quick", action="store_true", help="1 GiB disk (0.5 GiB data), 1 round, no big-bundle RSS test")
    p.add_argument("--rss-gib", type=float, default=None, help="size of the big-bundle RSS test (default 20; 0 = skip)")
    p.add_argument(
        "--peers",
        default=None,
        help=f"comma-separated peers to run (default all: {','.join(PEER_ORDER)}; '' = none)",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install a missing peer; report it")
    p.add_argument("--no-baseline", action="store_true", help="skip the original product's method")
    p.add_argument("--workdir", help="folder to make the temporary work folder in (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    p.add_argument("--seed", type=int, default=20240501)
    args = p.parse_args(argv)
    if args.size_gib is None:
        args.size_gib = 1.0 if args.quick else 3.0
    if args.data_gib is None:
        args.data_gib = args.size_gib / 2
    if args.runs is None:
        args.runs = 1 if args.quick else 4  # issue 14: each figure is the median of 4 runs
    if args.rss_gib is None:
        args.rss_gib = 0.0 if args.quick else 20.0
    if args.size_gib <= 0 or args.rss_gib < 0 or not 0 < args.data_gib <= args.size_gib * 0.9 or args.runs < 1:
        p.error("sizes must be positive, --data-gib at most 90% of --size-gib, --runs at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        packages = sorted({REQUIRED_TOOLS[t] for t in missing})
        named = ", ".join(f"{t} (Debian package {REQUIRED_TOOLS[t]})" for t in missing)
        print(f"bench: missing tool(s): {named}", file=sys.stderr)
        print(
            f"bench: install with: sh infra/local/system_packages.sh (as root; `make bench` runs it), or"
            f" apt-get install -y {' '.join(packages)}",
            file=sys.stderr,
        )
        return 2
    parent = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pdcat-bench-", dir=parent))
    report = Report()
    bench = Bench(args, work, report)
    status = 0
    error = None
    report.say(
        f"pdcat bench: {args.size_gib:g} GiB disk with {args.data_gib:g} GiB of data, {args.runs} round(s), "
        + (f"{args.rss_gib:g} GiB RSS test" if args.rss_gib else "no big-bundle RSS test")
        + f", work folder {work} ({fs_type(work)}), {os.cpu_count()} CPUs"
    )
    free = shutil.disk_usage(work).free
    if free < FREE_NEEDED_GIB * GIB:
        report.note(
            f"only {free / GIB:.1f} GiB free in {work}'s filesystem; a default run needs about {FREE_NEEDED_GIB} GiB "
            "(a step that runs out of space fails)"
        )
    try:
        bench.start_server()
        bench.select_peers()
        bench.make_sources()
        if not args.no_baseline:
            try:
                bench.run_baseline()
            except (StepFailed, baseline.BaselineError, PdcatError) as exc:  # its rows say so; the rest goes on
                report.note(f"the original product's method (bench/baseline.py) FAILED, its rows are missing: {exc}")
        bench.rounds()
        bench.drop_versions()
        bench.cache_hit_plain()
        bench.cache_hit_reflink()
        if args.rss_gib:
            bench.rss_big()
    except KeyboardInterrupt:
        error = "interrupted"
        status = 130
    except Exception as exc:  # one of pdcat's steps failed: report what we have, exit non-zero
        error = f"{type(exc).__name__}: {exc}"
        status = 1
        traceback.print_exc()
    finally:
        if bench.server is not None:
            bench.server.stop()
        if args.keep:
            report.say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    bench.comparison()
    bench.metrics()
    print()
    if report.comparison is not None:
        print(f"pdcat against its peers (median of {args.runs} round(s); times in seconds, sizes in MiB):\n")
        print(report.comparison.table())
        failed = {k: f.error for k, f in bench.figures.items() if f.error}
        if failed:
            print("\nPeers missing or failed (their columns are empty or partial):")
            for k, why in failed.items():
                print(f"  - {k}: {why}")
        print()
    print("pdcat against the original product's method and against itself:\n")
    print(report.table())
    if report.notes:
        print("\nNotes:")
        for n in report.notes:
            print(f"  - {n}")
    print("\nOnly ratios of figures measured in this same run are judged: absolute times drift on shared machines.")
    print(f"Where the time went: {time_by_part(report)}")
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "workdir_filesystem": fs_type(parent),
        },
        "params": {
            "runs": args.runs,
            "size_gib": args.size_gib,
            "data_gib": args.data_gib,
            "rss_gib": args.rss_gib,
            "quick": args.quick,
            "seed": args.seed,
            "peers": [p.name for p in bench.peers],
        },
        "steps": report.steps,
        "figures": {k: f.json() for k, f in bench.figures.items()},
        "comparison": report.comparison.json() if report.comparison is not None else None,
        "metrics": [
            {
                "metric": x.name,
                "pdcat": x.pdcat,
                "baseline": x.baseline,
                "ratio": x.ratio,
                "target": x.target,
                "pass": x.passed,
                "note": x.note,
            }
            for x in report.metrics
        ],
        "notes": report.notes,
        "error": error,
        "seconds": round(time.monotonic() - report.started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(REPO)} (whole run {results['seconds']}s)")
    if error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
