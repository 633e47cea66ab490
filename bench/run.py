"""``make bench``: pdcat against the original product's method, on one machine, in one run.

Everything runs against ONE embedded catalog (``pdcat serve``) in a temporary work folder; ``pdcat``
is invoked as a child process exactly as a user would, and each child's wall time and peak RSS
(``os.wait4`` rusage) are recorded. Only ratios of figures measured in this same run are judged:
absolute times drift too much on shared machines to mean anything on their own.

    .venv/bin/python bench/run.py [--size-gib 4] [--quick] [--rss-gib 20] [--workdir DIR] [--keep]

Prints a table (metric | pdcat | baseline | ratio | target | pass/fail) and writes
``.bench/results.json``. Exits 0 even when a target is missed (it is a report); non-zero when a
step fails or a required tool is missing. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import baseline  # noqa: E402
from bench.bundle import GIB, MIB, allocated_bytes, compare_trees, make_bundle, mutate  # noqa: E402
from core.pack import DEFAULT_CHUNK_SIZE  # noqa: E402

RESULTS = REPO / ".bench" / "results.json"
CATALOG = "bench"
ARCH = "x86_64"
CHUNK_SIZE = DEFAULT_CHUNK_SIZE  # pdcat's default grid, for the "best possible incremental" figure
# tool -> Debian package that provides it
REQUIRED_TOOLS = {"tar": "tar", "gzip": "gzip", "zstd": "zstd", "mkfs.xfs": "xfsprogs", "cp": "coreutils"}


class StepFailed(RuntimeError):
    pass


# ---- small helpers ----------------------------------------------------------------------------
def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin"):  # mkfs.xfs lives here; a non-root PATH may lack it
        candidate = Path(folder) / tool
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if which(tool) is None]


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def fs_type(path: Path) -> str:
    """The filesystem holding ``path`` (from /proc/mounts: ``stat -f`` says ext2/ext3 for ext4)."""
    real = os.path.realpath(path)
    best = ("", "")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, fields[2])
    except OSError:
        pass
    if best[1]:
        return best[1]
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


@dataclass
class Child:
    """One finished child process: wall time, peak RSS, exit code and output."""

    args: list[str]
    seconds: float
    rss_kib: int
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0
    """user + system CPU of the child itself (rusage from ``os.wait4``)."""

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    def json(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stdout)
        except ValueError as exc:
            raise StepFailed(f"'{' '.join(self.args[:3])}' printed no JSON: {self.stdout[-500:]!r}") from exc
        return data


def run_child(argv: Sequence[str], env: dict[str, str], *, cwd: Path = REPO, check: bool = True) -> Child:
    """Popen + os.wait4, so the child's own peak RSS (ru_maxrss, KiB on Linux) is known."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        child = Child(
            list(argv),
            seconds,
            int(usage.ru_maxrss),
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_utime + usage.ru_stime,
        )
    if check and child.returncode != 0:
        raise StepFailed(f"'{' '.join(argv)}' failed (exit {child.returncode}): {child.stderr.strip()[-1500:]}")
    return child


def settle() -> None:
    """Flush dirty pages before a timed step (not timed), so the kernel writing back what the previous
    step wrote (a bundle, an unpacked .tar.gz) is never charged to the next one."""
    os.sync()


def timed_pipeline(commands: list[list[str]], stdout: Any = subprocess.DEVNULL) -> float:
    """``a | b | ...`` with real pipes between child processes; returns wall seconds."""
    settle()
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    prev = None
    for i, cmd in enumerate(commands):
        last = i == len(commands) - 1
        p = subprocess.Popen(cmd, stdin=prev, stdout=stdout if last else subprocess.PIPE, stderr=subprocess.PIPE)
        if prev is not None:
            prev.close()
        prev = p.stdout
        procs.append(p)
    errors = []
    for cmd, p in zip(commands, procs, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(f"{' '.join(cmd)} (exit {p.returncode}): {err.decode(errors='replace').strip()[-300:]}")
    if errors:
        raise StepFailed("; ".join(errors))
    return time.monotonic() - started


# ---- the embedded server's own CPU and memory, from /proc (no psutil) ------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, ``state``, is index 0)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (one pass over /proc); the server normally has none."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of ``pid``: every thread of it, live or finished (the process line of
    /proc/<pid>/stat sums them), its reaped children (cutime + cstime) and its live descendants."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    for child in _descendants(pid):
        sub = _stat_fields(child)
        if sub is not None:
            ticks += int(sub[11]) + int(sub[12])
    return ticks / _CLK_TCK


def _rss_kib(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_SIZE // 1024
    except (OSError, IndexError, ValueError):
        return None


def _hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@dataclass
class ServerUsage:
    """What the server process spent while a ``with ServerProbe(pid)`` block ran."""

    cpu_seconds: float | None = None
    wall_seconds: float = 0.0
    peak_rss_kib: int | None = None
    peak_rss_method: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "peak_rss_mib": None if self.peak_rss_kib is None else round(self.peak_rss_kib / 1024, 1),
            "peak_rss_method": self.peak_rss_method,
        }


class ServerProbe:
    """CPU seconds (delta of /proc/<pid>/stat) and peak RSS of the server during a block.

    Peak RSS: the kernel's high-water mark (VmHWM) after resetting it on entry (``echo 5 >
    /proc/<pid>/clear_refs``, Linux >= 4.0); if the reset is refused, the largest VmRSS seen by a
    sampler every 50 ms (it can miss a spike shorter than that). Both cost next to nothing.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.usage = ServerUsage()
        self._stop = threading.Event()
        self._sampled = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, _rss_kib(self.pid) or 0)

    def __enter__(self) -> ServerUsage:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._sampled = _rss_kib(self.pid) or 0
        self._cpu0 = process_cpu_seconds(self.pid)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._sample, name="server-probe", daemon=True)
        self._thread.start()
        return self.usage

    def __exit__(self, *exc: object) -> None:
        cpu1 = process_cpu_seconds(self.pid)
        self.usage.wall_seconds = time.monotonic() - self._t0
        self._stop.set()
        self._thread.join()
        self._sampled = max(self._sampled, _rss_kib(self.pid) or 0)
        if self._cpu0 is not None and cpu1 is not None:
            self.usage.cpu_seconds = cpu1 - self._cpu0
        hwm = _hwm_kib(self.pid) if self._hwm_reset else None
        if hwm is not None:
            self.usage.peak_rss_kib, self.usage.peak_rss_method = max(hwm, self._sampled), "VmHWM, reset before"
        elif self._sampled:
            self.usage.peak_rss_kib, self.usage.peak_rss_method = self._sampled, "VmRSS sampled every 50 ms"


# ---- the report -------------------------------------------------------------------------------
@dataclass
class Metric:
    name: str
    pdcat: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None
    """None: not judged (skipped or not applicable)."""
    note: str = ""

    def row(self) -> list[str]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}"
        return [self.name, self.pdcat, self.baseline, ratio, self.target, verdict]


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    steps: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"NOTE: {text}")

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {}
        self.steps[name] = record
        t = time.monotonic()
        try:
            yield record
        except BaseException:
            record["error"] = traceback.format_exc(limit=3)
            raise
        finally:
            record.setdefault("step_seconds", round(time.monotonic() - t, 3))

    def table(self) -> str:
        head = ["metric", "pdcat", "baseline", "ratio", "target", "pass/fail"]
        rows = [head, *[m.row() for m in self.metrics]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

        def line(r: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

        sep = "|-" + "-|-".join("-" * w for w in widths) + "-|"
        out = [line(head), sep, *[line(r) for r in rows[1:]]]
        notes = [f"  {m.name}: {m.note}" for m in self.metrics if m.note]
        if notes:
            out += ["", "Notes on the rows:", *notes]
        return "\n".join(out)


def ratio_metric(
    name: str,
    pdcat: float,
    base: float,
    *,
    ratio: float,
    target: str,
    ok: Callable[[float], bool],
    unit: str = "s",
    note: str = "",
) -> Metric:
    def fmt(v: float) -> str:
        return f"{v:.2f} s" if unit == "s" else mib(v)

    return Metric(name, fmt(pdcat), fmt(base), ratio, target, ok(ratio), note)


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
        self.pdcat_push_v1: Child | None = None
        self.cache_xfs: tuple[Child, dict[str, Any], Child, dict[str, Any]] | None = None
        self.server_push: ServerUsage | None = None
        self.v1_raw_uploaded = 0

    # -- plumbing --
    def start_server(self) -> None:
        from core.auth import issue_token
        from infra.local.servers import start_embedded

        self.server = start_embedded(
            self.work / "catalog",
            env={
                "PDCAT_JWT_SECRET": self.secret,
                "PDCAT_LOG_LEVEL": "WARNING",
                "PDCAT_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                "PDCAT_URL_EXPIRY_SECONDS": "3600",
            },
        )
        token = issue_token(self.secret, "bench", ["SUPER_USER"], ttl_seconds=6 * 3600)[0]
        self.token = token
        env = {k: v for k, v in os.environ.items() if k not in ("PDCAT_API_KEY", "PDCAT_DEBUG_CHUNK_DELAY")}
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

    def pdcat(self, *args: str, env: dict[str, str] | None = None) -> Child:
        settle()
        return run_child([sys.executable, "-m", "client.cli", *args], env or self.env)

    def api(self) -> Any:
        from client.api import CatalogClient

        return CatalogClient(self.server.url, token=self.token, timeout=600)

    def pull(self, ref: str, dest: Path, *, name: str | None = None, env: dict[str, str] | None = None) -> Child:
        extra = ["--name", name] if name else []
        return self.pdcat("pull", ref, "--arch", ARCH, "--dest", str(dest), "--no-register", "--json", *extra, env=env)

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
    def make_source(self) -> None:
        with self.r.step("bundle") as rec:
            info = make_bundle(self.work / "src", self.args.size_gib, self.args.seed)
            self.bundle = info.path
            self.bundle_info = info
            rec.update(
                path=str(info.path),
                disk_size=info.disk_size,
                regions=info.regions,
                written_bytes=info.written_bytes,
                allocated_bytes=allocated_bytes(info.path),
                seconds=round(info.seconds, 3),
            )
        self.r.say(
            f"bundle '{info.path.name}': {info.disk_size / GIB:g} GiB disk, regions of 32 MiB: "
            f"{info.regions['random']} random, {info.regions['text']} text, {info.regions['zero']} explicit zero, "
            f"the rest holes; {mib(rec['allocated_bytes'])} allocated (made in {info.seconds:.1f}s)"
        )

    def ceiling(self) -> None:
        with self.r.step("ceiling") as rec:
            b = self.bundle
            seconds = timed_pipeline(
                [["tar", "--sparse", "-cf", "-", "-C", str(b.parent), b.name], ["zstd", "-T0", "-3", "-q", "-c"]]
            )
            rec["seconds"] = round(seconds, 3)
        self.ceiling_seconds = seconds
        self.r.say(f"ceiling: tar --sparse | zstd -T0 -3 > /dev/null took {seconds:.2f}s")

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
        self.base_push, self.base_pull = p, q

    def pdcat_full(self) -> None:
        with self.r.step("pdcat_push_v1") as rec:
            with self.probe_server() as server:
                c = self.pdcat(
                    "push", str(self.bundle), "--catalog", CATALOG, "--version", "1", "--arch", ARCH, "--json"
                )
            out = c.json()
            # raw bytes that went up = unique chunks of the index minus those the catalog already had
            raw_uploaded = self.raw_bytes(CATALOG, "1") - int(out.get("reused_bytes") or 0)
            rec.update(
                wall_seconds=round(c.seconds, 3),
                reported_seconds=out.get("seconds"),
                rss_mib=round(c.rss_mib, 1),
                client_cpu_seconds=round(c.cpu_seconds, 3),
                uploaded_bytes=out["uploaded_bytes"],
                uploaded_raw_bytes=raw_uploaded,
                uploaded_chunks=out["uploaded_chunks"],
                chunks=out["chunks"],
                server=server.json(),
            )
            if server.cpu_seconds is not None and raw_uploaded:
                rec["server"]["cpu_seconds_per_gb"] = round(server.cpu_seconds / (raw_uploaded / 1e9), 3)
        self.pdcat_push_v1 = c
        self.server_push = server
        self.v1_uploaded = int(out["uploaded_bytes"])
        self.v1_raw_uploaded = raw_uploaded
        self.r.say(
            f"pdcat push v1: {c.seconds:.2f}s wall ({out.get('seconds')}s inside), "
            f"{out['uploaded_chunks']}/{out['chunks']} chunks, {mib(out['uploaded_bytes'])} sent "
            f"({mib(raw_uploaded)} raw), peak RSS {c.rss_mib:.0f} MiB, client CPU {c.cpu_seconds:.2f}s; "
            f"server CPU {server.cpu_seconds:.2f}s, server peak RSS "
            + ("?" if server.peak_rss_kib is None else f"{server.peak_rss_kib / 1024:.0f} MiB")
        )

        with self.r.step("pdcat_pull_cold") as rec:
            self.clear(self.work / "cache")
            dest = self.work / "d1"
            with self.probe_server() as server:
                c = self.pull(f"{CATALOG}:1", dest)
            out = c.json()
            rec.update(
                server=server.json(),
                client_cpu_seconds=round(c.cpu_seconds, 3),
                wall_seconds=round(c.seconds, 3),
                reported_seconds=out.get("seconds"),
                rss_mib=round(c.rss_mib, 1),
                downloaded_bytes=out["downloaded_bytes"],
                cache=out.get("cache"),
                clone_method=out.get("clone_method"),
                cache_allocated_bytes=allocated_bytes(self.work / "cache") if (self.work / "cache").exists() else 0,
            )
            self.d1 = Path(out["path"])
        self.pdcat_pull_cold = c
        self.r.say(
            f"pdcat pull (cold, empty cache): {c.seconds:.2f}s wall ({out.get('seconds')}s inside), "
            f"{mib(out['downloaded_bytes'])} downloaded, cache={out.get('cache', 'n/a')}, peak RSS {c.rss_mib:.0f} MiB"
        )
        self.verify(self.bundle, self.d1, "cold pull")

    def cache_hit_plain(self) -> None:
        with self.r.step("cache_hit_plain") as rec:
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

    def incremental(self) -> None:
        with self.r.step("incremental") as rec:
            m = mutate(self.bundle, 0.05, self.args.seed + 1, max_run_mib=16)
            c = self.pdcat("push", str(self.bundle), "--catalog", CATALOG, "--version", "2", "--arch", ARCH, "--json")
            out = c.json()
            # the worst case, reported but not judged: 5% more, as single 1 MiB blocks spread uniformly
            ms = mutate(self.bundle, 0.05, self.args.seed + 3, max_run_mib=1)
            cs = self.pdcat("push", str(self.bundle), "--catalog", CATALOG, "--version", "3", "--arch", ARCH, "--json")
            self.v3 = (cs.json(), ms)
            data_cells = -(-self.bundle_info.nonzero_bytes // CHUNK_SIZE)
            rec.update(
                mutated_blocks=len(m.offsets),
                candidate_blocks=m.candidates,
                mutated_bytes=m.bytes,
                touched_32mib_cells=m.touched_cells(CHUNK_SIZE),
                nonzero_32mib_cells=data_cells,
                wall_seconds=round(c.seconds, 3),
                rss_mib=round(c.rss_mib, 1),
                uploaded_bytes=out["uploaded_bytes"],
                uploaded_chunks=out["uploaded_chunks"],
                reused_bytes=out.get("reused_bytes"),
            )
        self.v2 = (c, out, m, data_cells)
        self.r.say(
            f"mutated {len(m.offsets)} of {m.candidates} non-zero 1 MiB blocks ({mib(m.bytes)}) in runs of 1-16 MiB, "
            f"touching {m.touched_cells(CHUNK_SIZE)} of {data_cells} non-zero chunk cells; pdcat push v2: "
            f"{c.seconds:.2f}s, {out['uploaded_chunks']} chunks, {mib(out['uploaded_bytes'])} sent; "
            f"worst case (5% as scattered 1 MiB blocks): {mib(self.v3[0]['uploaded_bytes'])} sent"
        )

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

    # -- the table --
    def metrics(self) -> None:
        r = self.r
        m = r.metrics
        if hasattr(self, "base_push") and self.pdcat_push_v1 is not None:
            p = self.pdcat_push_v1.seconds
            b = self.base_push.seconds
            m.append(ratio_metric("push time (speedup)", p, b, ratio=b / p, target=">= 4", ok=lambda x: x >= 4))
        if hasattr(self, "base_pull") and hasattr(self, "pdcat_pull_cold"):
            p = self.pdcat_pull_cold.seconds
            b = self.base_pull.seconds
            m.append(
                ratio_metric(
                    "pull time, cold (speedup)",
                    p,
                    b,
                    ratio=b / p,
                    target=">= 3",
                    ok=lambda x: x >= 3,
                    note="pdcat verifies every chunk; the baseline verifies nothing",
                )
            )
        if hasattr(self, "ceiling_seconds") and self.pdcat_push_v1 is not None:
            pushed = self.pdcat_push_v1.seconds
            ceil = self.ceiling_seconds
            m.append(
                Metric(
                    "push vs ceiling (ceiling/pdcat)",
                    f"{pushed:.2f} s",
                    f"{ceil:.2f} s (ceiling)",
                    ceil / pushed,
                    ">= 0.70",
                    ceil / pushed >= 0.70,
                    "ceiling = tar --sparse | zstd -T0 -3 > /dev/null (no hashing, no upload)",
                )
            )
        usage = self.server_push
        if usage is not None and usage.cpu_seconds is not None and self.v1_raw_uploaded and self.pdcat_push_v1:
            gb = self.v1_raw_uploaded / 1e9
            per_gb = usage.cpu_seconds / gb
            client = self.pdcat_push_v1.cpu_seconds
            m.append(
                Metric(
                    "server CPU s per GB pushed",
                    f"{per_gb:.2f} s/GB",
                    "-",
                    None,
                    "(not judged)",
                    None,
                    f"`pdcat serve` (all threads) used {usage.cpu_seconds:.2f}s user+system CPU during push v1 "
                    f"({usage.cpu_seconds / usage.wall_seconds:.2f} cores on average over {usage.wall_seconds:.2f}s) "
                    f"for {gb:.3f} GB (10^9 bytes) of raw chunk data uploaded ({mib(self.v1_uploaded)} "
                    f"compressed): receiving, verifying (read, decompress, sha256) and promoting every chunk, "
                    f"and committing; the pdcat client used {client:.2f}s ({client / gb:.2f} s/GB)",
                )
            )
            if usage.peak_rss_kib is not None:
                m.append(
                    Metric(
                        "server peak RSS during push",
                        f"{usage.peak_rss_kib / 1024:.0f} MiB",
                        "-",
                        None,
                        "(not judged)",
                        None,
                        f"{usage.peak_rss_method}; the whole server process, not only what the push added",
                    )
                )
        if hasattr(self, "v2"):
            _, out, mut, cells = self.v2
            ratio = out["uploaded_bytes"] / self.v1_uploaded
            best = mut.touched_cells(CHUNK_SIZE) / cells
            m.append(
                Metric(
                    "incremental push bytes (v2/v1)",
                    mib(out["uploaded_bytes"]),
                    f"{mib(self.v1_uploaded)} (v1)",
                    ratio,
                    "<= 0.10",
                    ratio <= 0.10,
                    f"5% of the data rewritten in runs of 1-16 MiB; they touch {best:.0%} of the non-zero chunk cells",
                )
            )
        if hasattr(self, "v3"):
            out3, mut3 = self.v3
            ratio3 = out3["uploaded_bytes"] / self.v1_uploaded
            m.append(
                Metric(
                    "incremental, worst case (v3/v1)",
                    mib(out3["uploaded_bytes"]),
                    f"{mib(self.v1_uploaded)} (v1)",
                    ratio3,
                    "(not judged)",
                    True,
                    f"5% more as single 1 MiB blocks spread uniformly: {mut3.touched_cells(CHUNK_SIZE)} chunk cells "
                    "touched; no fixed or content-defined grid coarser than 1 MiB can do better",
                )
            )
        if hasattr(self, "cache_plain"):
            second, out, cp = self.cache_plain
            if self.cache_available:
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
        elif "cache_hit_reflink" in r.steps:
            why = r.steps["cache_hit_reflink"].get("skipped", "did not finish")
            m.append(Metric("cache hit vs cold pull (XFS reflink)", f"skipped: {why}", "-", None, "<= 0.05", None))
        size = f"{self.args.size_gib:g} GiB"
        if self.pdcat_push_v1 is not None:
            rss = self.pdcat_push_v1.rss_mib
            m.append(Metric(f"peak RSS push, {size} bundle", f"{rss:.0f} MiB", "-", None, "< 512 MiB", rss < 512))
        if hasattr(self, "pdcat_pull_cold"):
            rss = self.pdcat_pull_cold.rss_mib
            m.append(Metric(f"peak RSS pull, {size} bundle", f"{rss:.0f} MiB", "-", None, "< 512 MiB", rss < 512))
        if hasattr(self, "big"):
            push, pull, gib = self.big
            for what, child in (("push", push), ("pull", pull)):
                rss = child.rss_mib
                m.append(
                    Metric(f"peak RSS {what}, {gib:g} GiB bundle", f"{rss:.0f} MiB", "-", None, "< 512 MiB", rss < 512)
                )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-gib", type=float, default=None, help="apparent size of the test disk (default 4)")
    p.add_argument("--quick", action="store_true", help="1 GiB bundle and no big-bundle RSS test")
    p.add_argument("--rss-gib", type=float, default=None, help="size of the big-bundle RSS test (default 20; 0 = skip)")
    p.add_argument("--workdir", help="folder to make the temporary work folder in (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    p.add_argument("--seed", type=int, default=20240501)
    args = p.parse_args(argv)
    if args.size_gib is None:
        args.size_gib = 1.0 if args.quick else 4.0
    if args.rss_gib is None:
        args.rss_gib = 0.0 if args.quick else 20.0
    if args.size_gib <= 0 or args.rss_gib < 0:
        p.error("sizes must be positive")
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
        f"pdcat bench: {args.size_gib:g} GiB bundle, "
        + (f"{args.rss_gib:g} GiB RSS test" if args.rss_gib else "no big-bundle RSS test")
        + f", work folder {work} ({fs_type(work)}), {os.cpu_count()} CPUs"
    )
    try:
        bench.start_server()
        bench.make_source()
        bench.ceiling()
        bench.run_baseline()
        bench.pdcat_full()
        bench.cache_hit_plain()
        bench.cache_hit_reflink()
        bench.incremental()
        if args.rss_gib:
            bench.rss_big()
    except KeyboardInterrupt:
        error = "interrupted"
        status = 130
    except Exception as exc:  # a step failed: report what we have, exit non-zero
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

    bench.metrics()
    print()
    print(report.table())
    if report.notes:
        print("\nNotes:")
        for n in report.notes:
            print(f"  - {n}")
    print("\nOnly ratios of figures measured in this same run are judged: absolute times drift on shared machines.")
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "workdir_filesystem": fs_type(parent),
        },
        "params": {
            "size_gib": args.size_gib,
            "rss_gib": args.rss_gib,
            "quick": args.quick,
            "seed": args.seed,
        },
        "steps": report.steps,
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
