"""``make bench-wan``: pdcat push and pull over an emulated WAN, against what the link delivers.

The client and the embedded catalog run in two network namespaces joined by a veth pair shaped with
``tc tbf`` (200 Mbit/s each way, ``bench/netlink.py``); ``bench/delay_proxy.py`` adds 20 ms each way
(this kernel has no netem) in front of every server port, in the server namespace. pdcat's public
URL is the proxy's address, so API calls and presigned blob URLs all cross the same link.

    .venv/bin/python bench/wan.py [--size-gib 1] [--rate-mbit 200] [--delay-ms 20] [--peers rclone,restic,skopeo]

In one run: the link's own capacity (plain bulk TCP through the proxy, each way, 1 and 4 streams)
and RTT; ``pdcat push``, ``pdcat pull --no-cache`` and a default (cold-cache) pull, each checked
byte for byte; then the peers (``bench/peers.py``) on the same link. For each transfer: wall seconds,
goodput (Mbit/s of the compressed bytes it moved), % of the nominal rate and % of the measured
capacity (the goal: >= 90%), and what the link counters saw. Writes ``.bench/wan.json``. Needs root.
Exit 0 even when the goal is missed (it is a report); non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
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

from bench import delay_proxy as dp  # noqa: E402
from bench.bundle import GIB, MIB, allocated_bytes, compare_trees, make_bundle  # noqa: E402
from bench.netlink import Link, in_netns, net_dev_bytes, netem_available, require_root, wan_link  # noqa: E402
from bench.proc import compiled_env  # noqa: E402

RESULTS = REPO / ".bench" / "wan.json"
CATALOG, ARCH = "wan", "x86_64"
PUBLIC_PORT = 8080
"""The proxy in front of pdcat, on the server's link address: the client's server URL and the
catalog's public URL (so presigned blob URLs cross the link too)."""
SERVE_PORT = 8081
"""``pdcat serve`` itself, on the server namespace's loopback: reachable only through the proxy."""
NET_PORT, NET_PROXY_PORT, PEER_PROXY_PORT = 9100, 9101, 9200
GOAL = 0.90
PEER_NAMES = ("rclone", "restic", "skopeo")


class StepFailed(RuntimeError):
    """A transfer failed or a pulled bundle differs from the source."""


# ---- small helpers ----------------------------------------------------------------------------
_T0 = time.monotonic()


def say(text: str) -> None:
    """A progress line, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", flush=True)


def cpu_seconds(pid: int | None) -> float | None:
    """user + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


@dataclass
class Timed:
    """A finished child: wall seconds (``os.wait4``), its own CPU and peak RSS, its output."""

    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float
    rss_mib: float

    def json(self) -> dict[str, Any]:
        try:
            ours = [ln for ln in self.stdout.splitlines() if not ln.startswith("py-spy>")]  # --profile's lines
            data: dict[str, Any] = json.loads("\n".join(ours))
        except ValueError as exc:
            raise StepFailed(f"'{' '.join(self.argv[2:5])}' printed no JSON: {self.stdout[-300:]!r}") from exc
        return data


def timed(argv: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> Timed:
    """Run ``argv`` to the end (in the calling thread's network namespace) and time it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        cpu = usage.ru_utime + usage.ru_stime
        t = Timed(list(argv), seconds, proc.returncode, stdout, stderr, cpu, usage.ru_maxrss / 1024)
    if t.returncode != 0:
        raise StepFailed(f"'{' '.join(argv[2:5])}' failed ({t.returncode}): {t.stderr.strip()[-1500:]}")
    return t


@dataclass
class Serve:
    """``pdcat serve`` from a source tree, started in the calling thread's network namespace."""

    process: subprocess.Popen[str]
    data_dir: Path
    log: Path

    @classmethod
    def start(cls, code: Path, data: Path, port: int, env: dict[str, str], log: Path) -> Serve:
        argv = [sys.executable, "-m", "client.cli", "serve", "--data", str(data), "--port", str(port)]
        with log.open("w") as err:
            proc = subprocess.Popen(argv, cwd=code, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket listens
        if "serving on" not in line:
            proc.kill()
            proc.wait()
            raise StepFailed(f"pdcat serve did not start: {line!r}; its log: {log.read_text()[-2000:]}")
        threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
        return cls(proc, data, log)

    def stop(self) -> None:
        """SIGINT (it closes its database cleanly), then SIGKILL after 10 s; by PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---- what crossed the link --------------------------------------------------------------------
@dataclass
class Traffic:
    """Bytes on the veth (Ethernet frames, headers included) each way during a block, and when."""

    up: int = 0
    down: int = 0
    seconds: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds since the start, cumulative up, cumulative down), every ``interval``."""

    def window(self, direction: str, lo: float = 0.01, hi: float = 0.99) -> tuple[float, float]:
        """When the first ``lo`` and the last ``1 - hi`` of this direction's bytes crossed."""
        col = 1 if direction == "up" else 2
        total = self.up if direction == "up" else self.down
        first = next((s[0] for s in self.samples if s[col] >= lo * total), 0.0)
        last = next((s[0] for s in self.samples if s[col] >= hi * total), self.seconds)
        return first, last

    def json(self) -> dict[str, Any]:
        return {"up_bytes": self.up, "down_bytes": self.down, "seconds": round(self.seconds, 3)}


class Meter:
    """Samples the server end of the veth (rx = upload, tx = download) through ``/proc/<pid>/net/dev``
    of a process living in the server namespace: no process is started per sample."""

    def __init__(self, pid: int, dev: str, interval: float = 0.1) -> None:
        self.pid, self.dev, self.interval = pid, dev, interval

    def read(self) -> tuple[int, int]:
        got = net_dev_bytes(self.pid, self.dev)
        if got is None:
            raise StepFailed(f"cannot read the link counters of {self.dev} (process {self.pid} gone?)")
        return got

    @contextmanager
    def measure(self) -> Iterator[Traffic]:
        traffic = Traffic()
        rx0, tx0 = self.read()
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval):
                rx, tx = self.read()
                traffic.samples.append((time.monotonic() - t0, rx - rx0, tx - tx0))

        thread = threading.Thread(target=sample, name="link-meter", daemon=True)
        thread.start()
        try:
            yield traffic
        finally:
            stop.set()
            thread.join()
            rx, tx = self.read()
            traffic.seconds = time.monotonic() - t0
            traffic.up, traffic.down = rx - rx0, tx - tx0
            traffic.samples.append((traffic.seconds, traffic.up, traffic.down))


# ---- the report -------------------------------------------------------------------------------
@dataclass
class Capacity:
    """What the link delivers each way to a plain bulk TCP transfer through the proxy."""

    mbit: dict[str, float] = field(default_factory=dict)
    """direction -> payload Mbit/s (the best of 1 and 4 streams)"""
    efficiency: dict[str, float] = field(default_factory=dict)
    """direction -> TCP payload bytes / bytes on the veth during the bulk test"""


@dataclass
class Row:
    """One transfer over the link."""

    tool: str
    op: str
    direction: str
    seconds: float
    payload_bytes: int
    payload_how: str
    traffic: Traffic
    judged: bool = False
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def goodput(self) -> float:
        return self.payload_bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def json(self, rate: float, cap: Capacity) -> dict[str, Any]:
        first, last = self.traffic.window(self.direction)
        return {
            "tool": self.tool,
            "op": self.op,
            "direction": self.direction,
            "seconds": round(self.seconds, 3),
            "payload_bytes": self.payload_bytes,
            "payload_how": self.payload_how,
            "goodput_mbit": round(self.goodput(), 1),
            "pct_of_nominal": round(100 * self.goodput() / rate, 1),
            "pct_of_measured": round(100 * self.goodput() / cap.mbit[self.direction], 1) if cap.mbit else None,
            "judged": self.judged,
            "transfer_window_s": [round(first, 2), round(last, 2)],
            "link": self.traffic.json(),
            "note": self.note,
            **self.details,
        }


@dataclass
class Report:
    rate: float
    capacity: Capacity = field(default_factory=Capacity)
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        head = [
            "transfer",
            "wall s",
            "moved MB",
            "goodput Mbit/s",
            f"% of {self.rate:g}",
            "% of measured",
            f"goal >= {GOAL:.0%}",
            "link busy (s)",
        ]
        rows = [head]
        for r in self.rows:
            d = r.json(self.rate, self.capacity)
            first, last = d["transfer_window_s"]
            verdict = "n/a"
            approx = "~" if "estimate" in r.payload_how else ""
            if r.judged and d["pct_of_measured"] is not None:
                verdict = "PASS" if d["pct_of_measured"] >= 100 * GOAL else "FAIL"
            rows.append(
                [
                    f"{r.tool} {r.op}",
                    f"{r.seconds:.2f}",
                    f"{approx}{r.payload_bytes / 1e6:,.1f}",
                    f"{d['goodput_mbit']:.1f}",
                    f"{d['pct_of_nominal']:.1f}%",
                    "-" if d["pct_of_measured"] is None else f"{d['pct_of_measured']:.1f}%",
                    verdict,
                    f"{first:.1f}-{last:.1f}",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

        def line(row: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

        out = [line(head), "|-" + "-|-".join("-" * w for w in widths) + "-|", *[line(r) for r in rows[1:]]]
        notes = [f"  {r.tool} {r.op}: {r.note}" for r in self.rows if r.note]
        notes += [f"  {name}: not run: {why}" for name, why in self.skipped.items()]
        if notes:
            out += ["", *notes]
        return "\n".join(out)


# ---- the profile ------------------------------------------------------------------------------
class Wan:
    def __init__(self, args: argparse.Namespace, work: Path, link: Link, report: Report) -> None:
        self.args, self.work, self.link, self.report = args, work, link, report
        self.code: Path = (args.code or REPO).resolve()
        self.procs: list[subprocess.Popen[Any]] = []
        self.proxy_logs: dict[int, tuple[str, Path]] = {}

    # -- processes in the server namespace --
    def spawn(self, start: Callable[[], tuple[subprocess.Popen[str], tuple[str, int]]]) -> tuple[str, int]:
        """Start a server-side helper in the server namespace; it is stopped (by PID) at the end."""
        with in_netns(self.link.server_ns):
            proc, addr = start()
        self.procs.append(proc)
        return addr

    def proxy(self, name: str, listen_port: int, target: str) -> subprocess.Popen[Any]:
        """A delay proxy on the server's link address in front of ``target`` (in the server namespace)."""
        log = self.work / f"proxy-{name}.log"
        listen = f"{self.link.server_ip}:{listen_port}"
        self.spawn(lambda: dp.start_proxy(listen, target, self.args.delay_ms, cap_mib=self.args.cap_mib, log=log))
        self.proxy_logs[self.procs[-1].pid] = (name, log)
        return self.procs[-1]

    def stop_proxy(self, proc: subprocess.Popen[Any]) -> None:
        """Stop a proxy and keep its counters (connections, bytes each way, most bytes held)."""
        dp.stop(proc)
        name, log = self.proxy_logs.pop(proc.pid, ("?", None))
        if log is not None and log.exists():
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
            if lines:
                self.report.info.setdefault("proxies", {})[name] = json.loads(lines[-1])

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.pid in self.proxy_logs:
                self.stop_proxy(proc)
            else:
                dp.stop(proc)
        self.procs.clear()

    # -- the link itself --
    def measure_link(self) -> None:
        link, secs = self.link, self.args.bulk_seconds
        self.spawn(lambda: dp.start_netserver(f"0.0.0.0:{NET_PORT}"))
        self.meter = Meter(self.procs[-1].pid, link.server_dev)
        self.proxy("bulk", NET_PROXY_PORT, f"127.0.0.1:{NET_PORT}")
        direct, proxied = (link.server_ip, NET_PORT), (link.server_ip, NET_PROXY_PORT)
        cap = self.report.capacity
        info: dict[str, Any] = {}
        with in_netns(link.client_ns):
            info["rtt_direct"] = dp.rtt(direct)
            info["rtt_proxied"] = dp.rtt(proxied)
            for direction in ("up", "down"):
                for streams in (1, 4):
                    with self.meter.measure() as traffic:
                        got = dp.bulk(proxied, direction, secs, streams)
                    wire = traffic.up if direction == "up" else traffic.down
                    got["wire_bytes"] = wire
                    info[f"bulk_{direction}_{streams}"] = got
                    if got["mbit_s"] and got["mbit_s"] > cap.mbit.get(direction, 0):
                        cap.mbit[direction] = float(got["mbit_s"])
                        cap.efficiency[direction] = got["total_bytes"] / wire if wire else 1.0
        self.report.info["link"] = {"describe": link.describe(), **info, "tbf": link.qdisc_stats()}
        r1, r2 = info["rtt_direct"], info["rtt_proxied"]
        say(
            f"RTT: {r1['median_ms']:.2f} ms direct, {r2['median_ms']:.2f} ms through the proxy "
            f"(a new connection's first exchange {r2['first_ms']:.1f} ms: SYN/SYN-ACK charged)"
        )
        for direction in ("up", "down"):
            b1, b4 = info[f"bulk_{direction}_1"], info[f"bulk_{direction}_4"]
            pct = 100 * cap.mbit[direction] / link.rate_mbit
            say(
                f"bulk TCP {direction:>4} through the proxy: {b1['mbit_s']} Mbit/s (1 stream), {b4['mbit_s']} Mbit/s "
                f"(4 streams); capacity {cap.mbit[direction]:.1f} Mbit/s = {pct:.1f}% "
                f"of {link.rate_mbit:g} (TCP payload / link bytes {cap.efficiency[direction]:.3f})"
            )

    # -- pdcat --
    def start_pdcat(self, tag: str) -> None:
        """A fresh embedded catalog (its own data folder) behind the delay proxy, and the client's env.

        Everything pdcat runs comes from ``--code`` (default: this repository), token minting included,
        so a snapshot of another revision can be measured with this harness."""
        public = f"http://{self.link.server_ip}:{PUBLIC_PORT}"
        self.pdcat_proxy = self.proxy(f"pdcat{tag}", PUBLIC_PORT, f"127.0.0.1:{SERVE_PORT}")
        secret = "wan-" + secrets.token_hex(24)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PDCAT_")}
        base["PYTHONPATH"] = str(self.code)
        base = compiled_env(base, self.work / "pycache", self.code)  # as an installed pdcat runs
        data = self.work / f"catalog{tag}"
        env = {
            **base,
            "PDCAT_JWT_SECRET": secret,
            "PDCAT_LOG_LEVEL": "WARNING",
            "PDCAT_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "PDCAT_URL_EXPIRY_SECONDS": "3600",
            "PDCAT_PUBLIC_URL": public,
        }
        with in_netns(self.link.server_ns):
            self.server = Serve.start(self.code, data, SERVE_PORT, env, self.work / f"serve{tag}.log")
        mint = (
            "import sys; from core.auth import issue_token; "
            "print(issue_token(sys.argv[1], 'bench', ['SUPER_USER'], ttl_seconds=21600)[0])"
        )
        token = subprocess.run(
            [sys.executable, "-c", mint, secret], cwd=self.code, env=base, capture_output=True, text=True, check=True
        ).stdout.strip()
        self.env = {
            **base,
            "PDCAT_SERVER": public,
            "PDCAT_TOKEN": token,
            "PDCAT_CONFIG_DIR": str(self.work / "client-config"),
            "PDCAT_CACHE_DIR": str(self.work / "cache"),
        }
        say(f"pdcat serve in {self.link.server_ns} on 127.0.0.1:{SERVE_PORT}, public URL {public} (the proxy)")

    def stop_pdcat(self) -> None:
        self.server.stop()
        shutil.rmtree(self.server.data_dir, ignore_errors=True)
        self.stop_proxy(self.pdcat_proxy)

    def pdcat(self, op: str, *args: str) -> tuple[Timed, Traffic, dict[str, float | None]]:
        """One pdcat command in the client namespace, with the link, server, proxy and machine measured."""
        argv = [sys.executable, "-m", "client.cli", *args]
        if self.args.profile:
            out = self.args.profile / f"pdcat-{op.replace(' ', '_')}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            argv = [spy, "record", "--format", "raw", "-r", "50", "--threads", "--idle", "-o", str(out), "--", *argv]
        os.sync()
        pids = {"server": self.server.process.pid, "proxy": self.pdcat_proxy.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        machine0 = machine_cpu()
        with in_netns(self.link.client_ns), self.meter.measure() as traffic:
            t = timed(argv, self.env, self.code)
        machine1 = machine_cpu()
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        cpu: dict[str, float | None] = {"client": round(t.cpu_seconds, 2)}
        for k in pids:
            a, b = cpu0[k], cpu1[k]
            cpu[k] = None if a is None or b is None else round(b - a, 2)
        cpu["machine_busy"] = round(machine1[0] - machine0[0], 2)
        cpu["machine_total"] = round(machine1[1] - machine0[1], 2)
        return t, traffic, cpu

    def verify(self, pulled: Path, what: str) -> None:
        if self.args.no_verify:
            return
        t = time.monotonic()
        problem = compare_trees(self.bundle, pulled)
        if problem:
            raise StepFailed(f"{what}: the pulled bundle differs from the source: {problem}")
        say(f"  verified {what}: identical to the source, holes included ({time.monotonic() - t:.1f}s)")

    def pdcat_row(
        self,
        op: str,
        direction: str,
        t: Timed,
        out: dict[str, Any],
        traffic: Traffic,
        cpu: dict[str, float | None],
        moved: int,
        judged: bool,
    ) -> Row:
        inside = float(out.get("seconds") or 0)
        row = Row("pdcat", op, direction, t.seconds, moved, "compressed bytes pdcat reports", traffic, judged=judged)
        first, last = traffic.window(direction)
        busy = (traffic.up if direction == "up" else traffic.down) * 8 / max(last - first, 1e-9) / 1e6
        ours = sum(v or 0 for k, v in cpu.items() if k in ("client", "server", "proxy"))
        total = cpu.get("machine_total") or 0
        others = max(0.0, (cpu.get("machine_busy") or 0) - ours)
        row.note = (
            f"{inside:.2f}s inside pdcat ({moved * 8 / inside / 1e6 if inside else 0:.1f} Mbit/s over that); "
            f"link busy {first:.1f}-{last:.1f}s at {busy:.0f} Mbit/s; CPU s: client {cpu['client']}, "
            f"server {cpu['server']}, proxy {cpu['proxy']}, other processes {others:.1f} "
            f"(of {total:.1f} core-s); peak RSS {t.rss_mib:.0f} MiB"
        )
        row.details = {
            "reported_seconds": inside,
            "cpu_seconds": cpu,
            "rss_mib": round(t.rss_mib, 1),
            "samples": [(round(a, 2), b, c) for a, b, c in traffic.samples],
        }
        return row

    def run_pdcat(self, workers: int | None = None) -> None:
        """push, pull --no-cache and a cold-cache pull against a fresh catalog; ``workers``: pdcat's
        --workers (None: its default), for the rows that show what parallelism buys."""
        tag = "" if workers is None else f"-w{workers}"
        extra = [] if workers is None else ["--workers", str(workers)]
        judged = workers is None
        suffix = "" if workers is None else f" --workers {workers}"
        self.start_pdcat(tag)
        try:
            ref = f"{CATALOG}:1"
            t, traffic, cpu = self.pdcat(
                f"push{tag}",
                "push",
                str(self.bundle),
                "--catalog",
                CATALOG,
                "--version",
                "1",
                "--arch",
                ARCH,
                "--json",
                *extra,
            )
            out = t.json()
            row = self.pdcat_row(f"push{suffix}", "up", t, out, traffic, cpu, int(out["uploaded_bytes"]), judged)
            row.details.update(uploaded_chunks=out["uploaded_chunks"], chunks=out["chunks"])
            self.add(row)
            for op, flags in (("pull --no-cache", ["--no-cache"]), ("pull (cold cache)", [])):
                shutil.rmtree(self.work / "cache", ignore_errors=True)
                dest = self.work / "pulled"
                t, traffic, cpu = self.pdcat(
                    f"{op}{tag}",
                    "pull",
                    ref,
                    "--arch",
                    ARCH,
                    "--dest",
                    str(dest),
                    "--no-register",
                    "--json",
                    *flags,
                    *extra,
                )
                out = t.json()
                row = self.pdcat_row(
                    f"{op}{suffix}", "down", t, out, traffic, cpu, int(out["downloaded_bytes"]), judged
                )
                if not flags:
                    row.note += f"; cache={out.get('cache')}, clone={out.get('clone_method')}"
                self.add(row)
                self.verify(Path(out["path"]), f"{op}{suffix}")
                shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(self.work / "cache", ignore_errors=True)
        finally:
            self.stop_pdcat()

    def add(self, row: Row) -> None:
        self.report.rows.append(row)
        d = row.json(self.report.rate, self.report.capacity)
        say(
            f"{row.tool} {row.op}: {row.seconds:.2f}s, {row.payload_bytes / 1e6:,.1f} MB, {d['goodput_mbit']:.1f} "
            f"Mbit/s = {d['pct_of_nominal']:.1f}% of {self.report.rate:g}, {d['pct_of_measured']}% of measured. "
            + row.note
        )

    # -- the peers --
    def run_peers(self) -> None:
        names = [n for n in self.args.peers.split(",") if n]
        for name in names:
            try:
                self.run_peer(name)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a failing peer is reported, not fatal
                self.report.skipped[name] = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                say(f"{name}: FAILED: {self.report.skipped[name]}")
                self.report.info.setdefault("peer_tracebacks", {})[name] = traceback.format_exc(limit=4)

    def run_peer(self, name: str) -> None:
        peer, source = load_peer(name)
        if peer is None:
            self.report.skipped[name] = source
            say(f"{name}: not run: {source}")
            return
        problem = peer.check() or peer.install(say)
        if problem:
            self.report.skipped[name] = problem
            say(f"{name}: not run: {problem}")
            return
        from bench.peers import Endpoint

        work = self.work / f"peer-{name}"
        work.mkdir()
        with in_netns(self.link.server_ns):
            server = peer.start_server(work / "store", Endpoint("127.0.0.1", 0))
        self.report.info.setdefault("peers", {})[name] = {"implementation": source, "version": _safe(peer.version)}
        try:
            inner = server.endpoint
            proxy = self.proxy(name, PEER_PROXY_PORT, inner.address)
            client_side = dataclasses.replace(server, endpoint=Endpoint(self.link.server_ip, PEER_PROXY_PORT))
            pids = {"server": server.pid, "proxy": proxy.pid}
            for op, direction in (("push", "up"), ("pull", "down")):
                cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
                os.sync()
                with in_netns(self.link.client_ns), self.meter.measure() as traffic:
                    if op == "push":
                        tr = peer.push(client_side, self.bundle, "v1", work)
                    else:
                        dest = work / "pulled"
                        tr = peer.pull(client_side, "v1", dest, work)
                cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
                self.add(self.peer_row(name, op, direction, tr, traffic, cpu0, cpu1))
                if op == "pull":
                    self.verify(dest / self.bundle.name, f"{name} pull")
                    shutil.rmtree(dest, ignore_errors=True)
            self.stop_proxy(proxy)
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)

    def peer_row(
        self,
        name: str,
        op: str,
        direction: str,
        tr: Any,
        traffic: Traffic,
        cpu0: dict[str, float | None],
        cpu1: dict[str, float | None],
    ) -> Row:
        wire = traffic.up if direction == "up" else traffic.down
        eff = self.report.capacity.efficiency.get(direction, 1.0)
        payload, how = round(wire * eff), "estimate: link bytes x the bulk test's payload share"
        steps = dict(getattr(tr, "steps", {}) or {})
        row = Row(name, op, direction, float(tr.seconds), payload, how, traffic)
        first, last = traffic.window(direction)
        cpu = {k: (None if cpu0[k] is None or cpu1[k] is None else round(cpu1[k] - cpu0[k], 2)) for k in cpu0}  # type: ignore[operator]
        own = tr.bytes_sent if direction == "up" else tr.bytes_received
        row.note = (
            f"steps {steps}; link busy {first:.1f}-{last:.1f}s of the {traffic.seconds:.1f}s call (untimed set-up "
            "included); "
            + (f"its own count {own / 1e6:,.1f} MB ({tr.bytes_how}); " if own else "")
            + f"CPU s: client {tr.cpu_seconds:.2f}, server {cpu['server']}, proxy {cpu['proxy']}"
        )
        row.details = {
            "steps": steps,
            "own_bytes": own,
            "own_bytes_how": tr.bytes_how,
            "cpu_seconds": cpu,
            "client_cpu_seconds": round(tr.cpu_seconds, 2),
            "rss_mib": round(tr.rss_mib, 1),
        }
        return row

    # -- the whole run --
    def run(self) -> None:
        info = make_bundle(self.work / "src", self.args.size_gib, self.args.seed)
        self.bundle = info.path
        alloc, regions = allocated_bytes(info.path), info.regions
        self.report.info["bundle"] = {"disk_size": info.disk_size, "regions": info.regions, "allocated_bytes": alloc}
        say(
            f"bundle: {info.disk_size / GIB:g} GiB disk, {alloc / MIB:,.0f} MiB allocated "
            f"({regions['random']} random, {regions['text']} text, {regions['zero']} zero regions of 32 MiB)"
        )
        self.measure_link()
        self.run_pdcat()
        for workers in self.args.workers_sweep:
            self.run_pdcat(workers)
        if self.args.peers:
            self.run_peers()


def load_peer(name: str) -> tuple[Any, str]:
    """The peer from ``bench/peers.py`` (its ``PEERS``), or why it cannot be used."""
    try:
        from bench import peers
    except Exception as exc:  # the other helper's file may be missing or mid-edit
        return None, f"bench/peers.py cannot be imported ({type(exc).__name__}: {exc})"
    peer = getattr(peers, "PEERS", {}).get(name)
    if peer is None:
        return None, f"bench/peers.py has no peer {name!r}"
    cls = type(peer)
    if cls.push is peers.Peer.push or cls.pull is peers.Peer.pull or not getattr(cls, "networked", False):
        return None, f"bench/peers.py's {name} has no networked push/pull yet"
    return peer, "bench/peers.py"


def _safe(call: Callable[[], str]) -> str:
    try:
        return call()
    except Exception as exc:  # a version string is never worth failing for
        return f"? ({exc})"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _interrupted(signum: int, frame: Any) -> None:
    """SIGTERM ends the run as Ctrl-C does: through every ``finally`` (namespaces, processes)."""
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="apparent size of the bundle's disk (default 1)")
    p.add_argument("--rate-mbit", type=float, default=200.0, help="tbf rate each way (default 200)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="delay the proxy adds each way (default 20)")
    p.add_argument("--burst-kib", type=int, default=128, help="tbf burst (default 128 KiB)")
    p.add_argument("--tbf-latency-ms", type=float, default=25.0, help="tbf queue bound (default 25 ms)")
    p.add_argument("--cap-mib", type=float, default=4.0, help="proxy: most bytes held per connection and way")
    p.add_argument("--bulk-seconds", type=float, default=5.0, help="each bulk capacity test (default 5)")
    p.add_argument("--peers", default=",".join(PEER_NAMES), help="comma-separated, '' for none (default: all)")
    p.add_argument(
        "--workers-sweep",
        type=_ints,
        default=[],
        metavar="N,N",
        help="also run pdcat with --workers N (not judged: what parallelism buys), e.g. 8,16",
    )
    p.add_argument(
        "--code",
        type=Path,
        default=None,
        metavar="DIR",
        help="the pdcat source tree to run (default: this repository), e.g. a `git archive` of a commit",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None, help="where to make the work folder (default: /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--no-verify", action="store_true", help="do not compare pulled bundles with the source")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy raw profiles of pdcat into DIR")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_root()
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (&)
    started = time.monotonic()
    netem, why = netem_available()
    say(f"netem qdisc: {'available' if netem else 'not available'} ({why}); the delay comes from bench/delay_proxy.py")
    report = Report(args.rate_mbit)
    report.info.update(
        machine={"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        netem=why,
        args={k: str(v) for k, v in vars(args).items()},
    )
    work = Path(tempfile.mkdtemp(prefix="pdcat-wan-", dir=args.workdir))
    code = 0
    try:
        with wan_link(args.rate_mbit, burst_bytes=args.burst_kib * 1024, latency_ms=args.tbf_latency_ms) as link:
            say(f"link: {link.describe()}; proxy delay {args.delay_ms:g} ms each way")
            wan = Wan(args, work, link, report)
            try:
                wan.run()
            finally:
                wan.stop_all()
    except StepFailed as exc:
        say(f"FAILED: {exc}")
        code = 1
    except KeyboardInterrupt:
        say("interrupted: namespaces and processes removed")
        code = 130
    except Exception:  # reported with what was measured so far; the namespaces are gone already
        say(f"FAILED:\n{traceback.format_exc()}")
        code = 1
    finally:
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report.info["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    cap = report.capacity
    rows = [r.json(args.rate_mbit, cap) for r in report.rows]
    data = {"capacity_mbit": cap.mbit, "payload_share": cap.efficiency, "rows": rows, "not_run": report.skipped}
    RESULTS.write_text(json.dumps({**data, **report.info}, indent=2))
    if report.rows:
        print()
        measured = ", ".join(f"{d} {v:.1f} Mbit/s" for d, v in cap.mbit.items())
        print(
            f"WAN profile: tbf {args.rate_mbit:g} Mbit/s each way, +{2 * args.delay_ms:g} ms RTT (proxy); "
            f"measured {measured} (bulk TCP through the proxy)"
        )
        print(report.table())
    print(f"\nwall time {report.info['wall_seconds']}s; details in {RESULTS.relative_to(REPO)}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
