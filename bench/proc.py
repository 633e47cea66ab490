"""Child processes measured the way the benchmark needs: wall time and each child's own peak RSS.

Every command the benchmark times (pdcat and every peer) is started with ``Popen`` and reaped with
``os.wait4``, whose rusage gives the child's own peak RSS (``ru_maxrss``) and CPU without psutil. A
pipeline (``tar | zstd``) reaps each of its processes the same way and reports the largest peak RSS
of them. Servers are measured from ``/proc`` (``ServerProbe``). Shared by ``run.py`` and ``peers.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

__all__ = [
    "Child",
    "Pipeline",
    "ServerProbe",
    "ServerUsage",
    "StepFailed",
    "compiled_env",
    "fs_type",
    "mib",
    "process_cpu_seconds",
    "recycle_before_steps",
    "run_child",
    "run_pipeline",
    "settle",
    "timed_pipeline",
    "tree_bytes",
    "which",
]


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


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path = REPO,
    check: bool = True,
    timeout: float | None = None,
) -> Child:
    """Popen + os.wait4, so the child's own peak RSS (ru_maxrss, KiB on Linux) is known."""
    return run_pipeline([argv], env, cwd=cwd, check=check, timeout=timeout).child


@dataclass
class Pipeline:
    """``a | b | ...`` once finished: wall time of the whole, and every process's own rusage."""

    children: list[Child] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rss_kib(self) -> int:
        """The largest peak RSS of the pipeline's processes (they run at once, but each is bounded)."""
        return max((c.rss_kib for c in self.children), default=0)

    @property
    def cpu_seconds(self) -> float:
        return sum(c.cpu_seconds for c in self.children)

    @property
    def stdout(self) -> str:
        return self.children[-1].stdout if self.children else ""

    @property
    def child(self) -> Child:
        """The pipeline as one Child: the last command's output, the whole's wall time and peak RSS."""
        last = self.children[-1]
        failed = [c for c in self.children if c.returncode != 0]
        return Child(
            last.args,
            self.seconds,
            self.rss_kib,
            failed[0].returncode if failed else 0,
            last.stdout,
            "\n".join(c.stderr for c in self.children if c.stderr),
            self.cpu_seconds,
        )


class _HwmSampler:
    """Polls ``VmHWM`` (the peak RSS of the process's *current* image) of some pids every 20 ms."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hwm-sampler", daemon=True)

    def watch(self, pid: int) -> None:
        self._peaks[pid] = 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            for pid in list(self._peaks):
                hwm = _hwm_kib(pid)
                if hwm:
                    self._peaks[pid] = max(self._peaks[pid], hwm)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def peak(self, pid: int) -> int:
        return self._peaks.get(pid, 0)


def _own_peak_kib(ru_maxrss: int, floor: int, sampled: int) -> int:
    """The child's own peak RSS, not the parent's.

    Linux starts a spawned child's ``ru_maxrss`` at the *parent's* peak RSS (vfork/posix_spawn share
    the parent's memory until exec, and exec records that high-water mark), so for a child smaller
    than this benchmark process ``ru_maxrss`` only says "at most the parent's". Above that floor it is
    exact; at or below it, the ``VmHWM`` sampled every 20 ms from /proc is the child's own figure
    (it can miss growth in the child's last 20 ms).
    """
    if ru_maxrss > floor + 1024 or not sampled:
        return ru_maxrss
    return sampled


def _run(
    commands: Sequence[Sequence[str]],
    env: dict[str, str] | None,
    cwd: Path,
    errs: Sequence[IO[bytes]],
    out: IO[bytes],
    capture: bool,
    timeout: float | None,
) -> Pipeline:
    procs: list[subprocess.Popen[bytes]] = []
    result = Pipeline()
    floor = _hwm_kib(os.getpid()) or 0
    sampler = _HwmSampler()
    try:
        started = time.monotonic()
        prev: IO[bytes] | None = None
        for i, cmd in enumerate(commands):
            last = i == len(commands) - 1
            p = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=prev if prev is not None else subprocess.DEVNULL,
                stdout=out if last else subprocess.PIPE,
                stderr=errs[i],
            )
            if prev is not None:
                prev.close()
            prev = p.stdout
            procs.append(p)
            sampler.watch(p.pid)
        sampler.start()
        killer = None
        if timeout is not None:

            def kill_all() -> None:
                for q in procs:
                    if q.returncode is None:
                        q.kill()

            killer = threading.Timer(timeout, kill_all)
            killer.daemon = True
            killer.start()
        usages = []
        try:
            for p in procs:
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                usages.append(usage)
        finally:
            sampler.stop()
            if killer is not None:
                killer.cancel()
    except BaseException:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
        raise
    result.seconds = time.monotonic() - started
    captured = b""
    if capture:
        out.seek(0)
        captured = out.read()
    for i, (cmd, p, usage) in enumerate(zip(commands, procs, usages, strict=True)):
        errs[i].seek(0)
        result.children.append(
            Child(
                list(cmd),
                result.seconds,
                _own_peak_kib(int(usage.ru_maxrss), floor, sampler.peak(p.pid)),
                p.returncode or 0,
                captured.decode(errors="replace") if i == len(commands) - 1 else "",
                errs[i].read().decode(errors="replace"),
                usage.ru_utime + usage.ru_stime,
            )
        )
    return result


def run_pipeline(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path = REPO,
    check: bool = True,
    stdout: IO[bytes] | None = None,
    timeout: float | None = None,
) -> Pipeline:
    """Run ``a | b | ...`` with real pipes and reap each process with ``os.wait4`` (its peak RSS and CPU).

    The last command's stdout goes to ``stdout`` when given (a file), else it is captured. Wall time
    runs from the first start to the last exit. ``timeout`` kills the whole pipeline past that many
    seconds (a hung peer must not hang the benchmark). ``check``: any non-zero exit raises StepFailed.
    """
    with contextlib.ExitStack() as files:
        errs = [files.enter_context(tempfile.TemporaryFile()) for _ in commands]
        out = stdout if stdout is not None else files.enter_context(tempfile.TemporaryFile())
        result = _run(commands, None if env is None else dict(env), cwd, errs, out, stdout is None, timeout)
    if check:
        bad = [c for c in result.children if c.returncode != 0]
        if bad:
            raise StepFailed(
                "; ".join(f"'{' '.join(c.args)}' failed (exit {c.returncode}): {c.stderr.strip()[-1500:]}" for c in bad)
            )
    return result


_RECYCLE: tuple[Path, int] | None = None


def recycle_before_steps(folder: Path, size: int) -> None:
    """From now on, :func:`settle` writes and deletes a ``size``-byte scratch file in ``folder``.

    Why: on a VM whose balloon reports freed memory to the host (``/sys/module/page_reporting``; these
    CI machines), the first write to a page the host took back costs a host fault. Measured on the
    bench bundle: a pull that writes into such pages used 7.0-7.4 CPU s, the same pull into page cache
    freed a moment earlier 3.2 (``--no-cache``: 7.05 first, 2.7-3.1 after). Without this, whichever
    step first writes after a push pays it (pdcat's cold pull, every round). Deleted page cache stays
    with the guest, so a scratch file as large as the largest output gives every timed step of every
    tool the same recycled memory, as a machine without a balloon would.
    """
    global _RECYCLE
    _RECYCLE = (folder, size)


def compiled_env(env: Mapping[str, str], cache: Path, code: Path = REPO) -> dict[str, str]:
    """``env`` for the pdcat processes a benchmark times: they run from compiled modules, as an
    installed pdcat does (pip compiles every module it installs).

    This environment turns bytecode off (``PYTHONDONTWRITEBYTECODE``), so every timed command would
    recompile pdcat's sources (~0.1 s each). The children get bytecode back in ``cache``
    (``PYTHONPYCACHEPREFIX``), which keeps the repository clean; but Python then reads no other
    ``__pycache__`` either, so the libraries (the standard library's too) are compiled there first
    (about 30 s the first time). Without them the first timed pdcat command of a run compiled httpx,
    zstandard, ``http.cookiejar`` and the rest: 0.65-1.0 s more than every later one (round 1's push).
    """
    out = dict(env)
    if out.pop("PYTHONDONTWRITEBYTECODE", None) is None:
        return out  # bytecode is on: the children use (and write) the usual __pycache__ folders
    out["PYTHONPYCACHEPREFIX"] = str(cache)
    libraries = {sysconfig.get_path(name) for name in ("stdlib", "purelib", "platlib")}
    folders = [code / "client", code / "core", *sorted(libraries)]
    # test suites are never imported, and some hold files that do not compile on purpose
    skip = r"[/\\](test|tests|idle_test|lib2to3)[/\\]"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", "-x", skip, *map(str, folders)],
        env=out,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def settle() -> None:
    """Before a timed step (not timed): flush dirty pages, so the kernel writing back what the previous
    step wrote (a bundle, an unpacked .tar.gz) is never charged to the next one; then recycle memory
    (:func:`recycle_before_steps`)."""
    os.sync()
    if _RECYCLE is None:
        return
    folder, size = _RECYCLE
    scratch = folder / ".bench-scratch"
    block = b"\xa5" * (4 << 20)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(0, size, len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(scratch)  # its dirty pages are dropped, never written back


def timed_pipeline(commands: list[list[str]], stdout: Any = subprocess.DEVNULL) -> float:
    """``a | b | ...`` after a settle; returns wall seconds (output discarded unless ``stdout``)."""
    settle()
    if stdout is subprocess.DEVNULL:
        with open(os.devnull, "wb") as null:
            return run_pipeline(commands, stdout=null).seconds
    return run_pipeline(commands, stdout=stdout).seconds


def tree_bytes(root: Path) -> int:
    """Apparent bytes of every regular file under ``root`` (0 if it is missing): a store's size."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


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
