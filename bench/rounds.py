"""pdcat against its peers: the rounds (every tool, one after the other, N times) and the table.

A round gives each tool a fresh, empty store and runs the same job: push v1, cold pull v1 (checked
byte for byte in round 1), push v2 (5% rewritten in unaligned runs of 1-16 MiB). Round 1 also
pushes v3 (v1 plus scattered 1 MiB writes, ~2%) and pulls v2 into a folder that holds v1, for their
byte counts (deterministic: measured once). The table shows each figure's median over the rounds
and judges the issue's goals on ratios of figures from this same run. The tools' order rotates from
round to round, so none always runs first (on a cold page cache) or last.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bundle import MIB, RewriteResult, compare_trees
from bench.peers import Casync, Endpoint, Peer, Rclone, Transfer
from bench.proc import ServerProbe, ServerUsage, settle
from bench.report import Cell, Comparison, CompRow, median

__all__ = ["Figures", "Sources", "build_comparison", "casync_new_chunk_bytes", "peer_round"]

PUSH_VS_TAR = 0.85
PULL_VS_TAR = 0.9
SCATTERED_MAX = 1.5
RSS_MAX_MIB = 128
SERVER_RSS_MAX_MIB = 64


@dataclass
class Sources:
    """The three versions of the reference bundle, each a folder with the same bundle name."""

    v1: Path
    v2: Path
    v3: Path
    v2_change: RewriteResult
    v3_change: RewriteResult


@dataclass
class Figures:
    """One tool's figures, one entry per round (medians are taken when the table is built)."""

    key: str
    title: str
    push: list[float] = field(default_factory=list)
    pull: list[float] = field(default_factory=list)
    pull_nocache: list[float] = field(default_factory=list)
    push_v2: list[float] = field(default_factory=list)
    v2_bytes: list[float] = field(default_factory=list)
    rss_push: list[float] = field(default_factory=list)
    rss_pull: list[float] = field(default_factory=list)
    server_rss: list[float] = field(default_factory=list)
    """Peak RSS of the tool's server during one transfer (push v1 and cold pull), MiB."""
    scattered_bytes: int | None = None
    scattered_how: str = ""
    v2_pull_bytes: int | None = None
    v2_pull_how: str = ""
    error: str | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "error": self.error,
            "push_seconds": self.push,
            "cold_pull_seconds": self.pull,
            "cold_pull_no_cache_seconds": self.pull_nocache,
            "push_v2_seconds": self.push_v2,
            "v2_bytes_sent": self.v2_bytes,
            "rss_push_mib": self.rss_push,
            "rss_pull_mib": self.rss_pull,
            "server_rss_mib": self.server_rss,
            "scattered_bytes_sent": self.scattered_bytes,
            "scattered_how": self.scattered_how,
            "v2_pull_bytes": self.v2_pull_bytes,
            "v2_pull_how": self.v2_pull_how,
            "rounds": self.rounds,
        }


def _probe(server_pid: int | None) -> ServerProbe | None:
    return ServerProbe(server_pid) if server_pid is not None else None


def _rss(usage: ServerUsage | None) -> float | None:
    return None if usage is None or usage.peak_rss_kib is None else usage.peak_rss_kib / 1024


def casync_new_chunk_bytes(store: Path, old_index: Path, new_index: Path) -> int:
    """What ``casync extract`` of ``new_index`` over a network fetches when the output folder holds
    the old version: the chunks of the new index the old one lacks (casync seeds from the output and
    finds every old chunk there), at their stored (compressed) size, plus the index itself.

    A .caidx is a 48-byte index header, a 16-byte table header, then 40-byte items (le64 end offset,
    32-byte chunk id) and a 40-byte tail (casync's caformat.h).
    """

    def ids(path: Path) -> set[bytes]:
        data = path.read_bytes()
        items = data[64:-40]
        return {items[i + 8 : i + 40] for i in range(0, len(items) - len(items) % 40, 40)}

    new = ids(new_index) - ids(old_index)
    total = new_index.stat().st_size
    for chunk in new:
        h = chunk.hex()
        total += (store / h[:4] / f"{h}.cacnk").stat().st_size
    return total


def peer_round(
    peer: Peer,
    fig: Figures,
    src: Sources,
    work: Path,
    index: int,
    say: Callable[[str], None],
) -> None:
    """One round of one peer, in its own fresh store; raises whatever the peer raised."""
    data = work / f"{peer.name}-store-{index + 1}"
    dest = work / f"{peer.name}-pulled"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    server = peer.start_server(data, Endpoint() if peer.networked else None)
    record: dict[str, Any] = {}
    try:
        probe = _probe(server.pid)
        if probe is not None:
            settle()
            with probe as usage_push:
                up = peer.push(server, src.v1, "v1", work)
        else:
            up, usage_push = peer.push(server, src.v1, "v1", work), None
        probe = _probe(server.pid)
        if probe is not None:
            settle()
            with probe as usage_pull:
                down = peer.pull(server, "v1", dest, work)
        else:
            down, usage_pull = peer.pull(server, "v1", dest, work), None
        if index == 0:
            problem = compare_trees(src.v1, dest / src.v1.name)
            if problem:
                raise RuntimeError(f"{peer.name}: the pulled bundle differs from the source: {problem}")
        if index > 0 or not isinstance(peer, Rclone):  # round 1's rclone --dry-run pull of v2 needs v1 there
            shutil.rmtree(dest, ignore_errors=True)
        up2 = peer.push(server, src.v2, "v2", work, base="v1")
        fig.push.append(up.seconds)
        fig.pull.append(down.seconds)
        fig.push_v2.append(up2.seconds)
        fig.v2_bytes.append(float(up2.bytes_sent or 0))
        fig.rss_push.append(up.rss_mib)
        fig.rss_pull.append(down.rss_mib)
        server_rss = [x for x in (_rss(usage_push), _rss(usage_pull)) if x is not None]
        if server_rss:
            fig.server_rss.append(max(server_rss))
        record.update(push_v1=up.json(), pull_v1=down.json(), push_v2=up2.json(), server_rss_mib=server_rss)
        line = (
            f"{peer.name} round {index + 1}: push {up.seconds:.1f}s (RSS {up.rss_mib:.0f} MiB), "
            f"cold pull {down.seconds:.1f}s (RSS {down.rss_mib:.0f} MiB), push v2 {up2.seconds:.1f}s "
            f"({(up2.bytes_sent or 0) / MIB:.0f} MiB sent, {up2.bytes_how})"
        )
        if index == 0:
            line += _round_one_extras(peer, fig, src, work, server, dest, record)
        say(line)
    finally:
        server.stop()
        fig.rounds.append(record)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        for sibling in data.parent.glob(f"{data.name}.*"):  # its config and log files
            sibling.unlink(missing_ok=True)


def _round_one_extras(
    peer: Peer, fig: Figures, src: Sources, work: Path, server: Any, dest: Path, record: dict[str, Any]
) -> str:
    """Byte counts measured once: the scattered-writes push (v3) and the incremental pull of v2."""
    if isinstance(peer, Rclone):  # rclone's own plan (--dry-run): it would send whole changed files
        up3: Transfer = peer.push(server, src.v3, "v3", work, base="v1", dry_run=True)
    else:
        up3 = peer.push(server, src.v3, "v3", work, base="v1")
    fig.scattered_bytes, fig.scattered_how = up3.bytes_sent, up3.bytes_how
    record["push_v3"] = up3.json()
    text = f"; scattered writes: {(up3.bytes_sent or 0) / MIB:.0f} MiB sent"
    if isinstance(peer, Casync):
        fig.v2_pull_bytes = casync_new_chunk_bytes(
            server.data_dir / "default.castr", server.data_dir / "v1.caidx", server.data_dir / "v2.caidx"
        )
        fig.v2_pull_how = "chunks of v2's index that v1's lacks, stored size, plus the index"
    elif isinstance(peer, Rclone):
        down2 = peer.pull(server, "v2", dest, work, dry_run=True)
        fig.v2_pull_bytes, fig.v2_pull_how = down2.bytes_received, "rclone --dry-run: whole changed files"
    if fig.v2_pull_bytes is not None:
        text += f"; v2 pull onto v1 {fig.v2_pull_bytes / MIB:.0f} MiB"
    record["v2_pull_bytes"] = fig.v2_pull_bytes
    return text


# ---- the table --------------------------------------------------------------------------------
def _fmt_s(v: float | None) -> Cell:
    return Cell("-", None) if v is None else Cell(f"{v:.2f}", v)


def _fmt_mib(v: float | None) -> Cell:
    return Cell("-", None) if v is None else Cell(f"{v / MIB:,.1f}", v / MIB)


def build_comparison(figs: list[Figures], src: Sources, runs: int) -> Comparison:
    """The issue's table: one column per tool (pdcat first), one row per figure, goals judged."""

    def heading(f: Figures) -> str:
        if not f.error:
            return f.title
        if f.error.startswith("missing"):
            return f"{f.title} (missing)"
        return f"{f.title} (failed; {len(f.push)} round(s) done)"

    columns = [(f.key, heading(f)) for f in figs]
    by = {f.key: f for f in figs}
    comp = Comparison(columns)
    pd = by.get("pdcat")

    def row(name: str, unit: str, get: Callable[[Figures], Cell]) -> CompRow:
        r = CompRow(name, unit)
        for f in figs:
            r.cells[f.key] = get(f)
        comp.rows.append(r)
        return r

    push = row("push, s", "s", lambda f: _fmt_s(median(f.push)))
    tar = by.get("tar-zstd")
    push.goal = f"tar-zstd / pdcat ≥ {PUSH_VS_TAR}"
    if pd and tar and pd.push and tar.push:
        ratio = (median(tar.push) or 0) / (median(pd.push) or 1)
        push.passed = ratio >= PUSH_VS_TAR
        push.measured = f"{ratio:.2f}"

    pull = row("cold pull, s (default, through the cache)", "s", lambda f: _fmt_s(median(f.pull)))
    pull.goal = f"(zstd -dc | tar -x) / pdcat ≥ {PULL_VS_TAR}; pdcat faster than every transfer tool"
    if pd and tar and pd.pull and tar.pull:
        p = median(pd.pull) or 1
        ratio = (median(tar.pull) or 0) / p
        # the transfer tools; tar | zstd to a local file is the machine's limit, judged by the ratio alone
        slower = [f.key for f in figs if f.key not in ("pdcat", "tar-zstd") and f.pull and (median(f.pull) or 0) <= p]
        pull.passed = ratio >= PULL_VS_TAR and not slower
        pull.measured = f"{ratio:.2f}" + (f"; slower than {len(slower)} peer(s)" if slower else "")
        pull.note = f"tar-zstd / pdcat = {ratio:.2f}; " + (
            f"pdcat not faster than {', '.join(slower)}" if slower else "pdcat faster than every transfer tool that ran"
        )
    row(
        "cold pull, s (--no-cache)",
        "s",
        lambda f: _fmt_s(median(f.pull_nocache)) if f.key == "pdcat" else Cell("(no cache)", None),
    )
    row("v2 push, s", "s", lambda f: _fmt_s(median(f.push_v2)))
    v2b = row("v2 bytes sent, MiB", "MiB", lambda f: _fmt_mib(median(f.v2_bytes)))
    cas = by.get("casync")
    v2b.goal = "pdcat ≤ casync"
    if pd and cas and pd.v2_bytes and cas.v2_bytes:
        v2b.passed = (median(pd.v2_bytes) or 0) <= (median(cas.v2_bytes) or 0)
        v2b.measured = f"{(median(pd.v2_bytes) or 0) / (median(cas.v2_bytes) or 1):.2f}x casync"
    v2b.note = (
        f"v2 rewrites {src.v2_change.bytes / MIB:.1f} MiB ({src.v2_change.bytes / src.v2_change.data_bytes:.1%} "
        f"of the {src.v2_change.data_bytes / MIB:.0f} MiB of data) in {src.v2_change.writes} unaligned runs of "
        "1-16 MiB"
    )
    changed = src.v3_change.bytes

    def scattered(f: Figures) -> Cell:
        if f.scattered_bytes is None:
            return Cell("-", None)
        return Cell(f"{f.scattered_bytes / MIB:,.1f} ({f.scattered_bytes / changed:.2f}x changed)", f.scattered_bytes)

    sc = row("scattered 1 MiB writes: bytes sent, MiB (sent / changed)", "ratio", scattered)
    sc.goal = f"pdcat ≤ {SCATTERED_MAX}x changed"
    if pd and pd.scattered_bytes is not None:
        sc.passed = pd.scattered_bytes <= SCATTERED_MAX * changed
        sc.measured = f"{pd.scattered_bytes / changed:.2f}x"
    sc.note = (
        f"v1 plus {src.v3_change.writes} writes of 1 MiB at random 4 KiB-aligned offsets: "
        f"{changed / MIB:.1f} MiB changed ({changed / src.v3_change.data_bytes:.1%} of the data); measured in round 1"
    )

    def v2pull(f: Figures) -> Cell:
        if f.v2_pull_bytes is not None:
            return Cell(f"{f.v2_pull_bytes / MIB:,.1f}", f.v2_pull_bytes / MIB)
        return Cell("(whole version)" if f.push else "-", None)

    vp = row("v2 pull bytes, MiB (v1 present locally)", "MiB", v2pull)
    vp.note = (
        "measured in round 1; '(whole version)': the peer cannot reuse a local v1 (restic 0.14 restore, a new "
        "image layer, one archive) and downloads all of v2"
    )

    def rss(f: Figures) -> Cell:
        if not f.rss_push:
            return Cell("-", None)
        text = f"{max(f.rss_push):.0f} / {max(f.rss_pull):.0f}"
        if f.server_rss:
            text += f" (+ server {max(f.server_rss):.0f})"
        return Cell(text, None)

    rr = row("peak RSS push / pull, MiB", "rss", rss)
    rr.goal = f"pdcat ≤ {RSS_MAX_MIB} each; its server ≤ {SERVER_RSS_MAX_MIB}"
    if pd and pd.rss_push and pd.rss_pull:
        ok = max(pd.rss_push) <= RSS_MAX_MIB and max(pd.rss_pull) <= RSS_MAX_MIB
        if pd.server_rss:
            ok = ok and max(pd.server_rss) <= SERVER_RSS_MAX_MIB
        rr.passed = ok
        rr.measured = f"push {max(pd.rss_push):.1f}, pull {max(pd.rss_pull):.1f}" + (
            f", server {max(pd.server_rss):.1f}" if pd.server_rss else ""
        )
    rr.note = (
        f"the largest over the {runs} round(s), of the client processes (a pipeline's largest process); "
        "'server': the tool's server during one push or one pull (pdcat serve, rclone serve restic, "
        "docker-registry, weed server)"
    )
    return comp
