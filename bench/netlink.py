"""Two network namespaces joined by a veth pair shaped with ``tc tbf``: a WAN link on one machine.

    with wan_link(rate_mbit=200) as link:
        link.server(["python", "-m", "http.server", "--bind", link.server_ip])   # argv for Popen
        subprocess.run(link.client(["curl", f"http://{link.server_ip}:8000/"]))

Topology (the addresses are from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks; they
exist only inside the two namespaces this module makes, so nothing leaves the machine)::

    <prefix>-<pid>-c                                   <prefix>-<pid>-s
    client  198.18.0.1/30 ── veth, tbf egress ──▶ ◀── tbf egress, veth ──  server  198.18.0.2/30

Both veth ends shape their egress with the same ``tbf`` (rate, burst, latency), so each direction
is limited to the rate. This kernel has no ``netem`` qdisc (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"; :func:`netem_available` checks), so the delay is added in user
space by ``bench/delay_proxy.py``.

Names carry the PID of the process that made them. :func:`remove_stale` (called on entry) deletes
the namespaces, and ends the processes inside them, of runs whose process is gone (a crash, a
``kill -9``); the context manager tears its own down on any exit, Ctrl-C included. Needs root and
iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_IP",
    "PREFIX",
    "SERVER_IP",
    "Link",
    "in_netns",
    "net_dev_bytes",
    "netem_available",
    "remove_stale",
    "require_root",
    "wan_link",
]

PREFIX = "pdcwan"
CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-(?:c|s|probe)$")
_DEV_RE = re.compile(r"^pdw(\d+)[cs]$")


class NetlinkError(RuntimeError):
    """A namespace, link or qdisc could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetlinkError(f"'{' '.join(argv)}' failed ({done.returncode}): {done.stderr.strip()}")
    return done


def require_root() -> None:
    """Namespaces and qdiscs need CAP_NET_ADMIN: say so plainly instead of failing half-way."""
    if os.geteuid() != 0:
        raise NetlinkError("the WAN profile needs root (ip netns, tc)")
    for tool in ("ip", "tc"):
        if _run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            raise NetlinkError(f"'{tool}' not found (Debian package: iproute2)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_ns_processes(ns: str, grace: float = 3.0) -> None:
    """End every process living in ``ns`` (all of them were started in it by this profile), by PID."""
    pids = _ns_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p) and p in _ns_pids(ns)]
        time.sleep(0.05)
    for pid in _ns_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_ns(ns: str) -> None:
    _kill_ns_processes(ns)
    _run(["ip", "netns", "del", ns], check=False)


def remove_stale() -> list[str]:
    """Delete namespaces and root-namespace veth ends left by runs whose process is gone."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS_RE.match(name)
        if match and not _alive(int(match.group(1))):
            _delete_ns(name)
            removed.append(name)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        fields = line.split(":")
        dev = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        match = _DEV_RE.match(dev)
        if match and not _alive(int(match.group(1))):
            _run(["ip", "link", "del", dev], check=False)
            removed.append(dev)
    return removed


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block's network calls, and the processes and threads it starts, inside ``ns``.

    ``setns(2)`` moves only the calling thread; children and threads it creates inherit that
    namespace, and sockets keep the one they were made in. The thread moves back on exit.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def net_dev_bytes(pid: int, dev: str) -> tuple[int, int] | None:
    """(rx, tx) bytes of ``dev`` as seen from the network namespace of process ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()
    except OSError:
        return None
    for line in lines[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            fields = rest.split()
            return int(fields[0]), int(fields[8])
    return None


def netem_available() -> tuple[bool, str]:
    """Whether this kernel has the netem qdisc: tried on a veth inside a scratch namespace."""
    ns = f"{PREFIX}-{os.getpid()}-probe"
    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "-n", ns, "link", "add", "pq0", "type", "veth", "peer", "name", "pq1"])
        done = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "pq0", "root", "netem", "delay", "20ms"],
                    check=False)  # fmt: skip
        return done.returncode == 0, (done.stderr.strip() or "ok")
    finally:
        _delete_ns(ns)


@dataclass(frozen=True)
class Link:
    """One shaped link between a client namespace and a server namespace."""

    client_ns: str
    server_ns: str
    client_dev: str
    server_dev: str
    rate_mbit: float
    burst_bytes: int
    latency_ms: float
    client_ip: str = CLIENT_IP
    server_ip: str = SERVER_IP

    @staticmethod
    def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def client(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the client namespace."""
        return self.exec_argv(self.client_ns, argv)

    def server(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the server namespace."""
        return self.exec_argv(self.server_ns, argv)

    def tbf_spec(self) -> list[str]:
        return [
            "tbf",
            "rate",
            f"{self.rate_mbit:g}mbit",
            "burst",
            str(self.burst_bytes),
            "latency",
            f"{self.latency_ms:g}ms",
        ]

    def qdisc_stats(self) -> dict[str, Any]:
        """Bytes, packets and drops each tbf has sent so far (from ``tc -s qdisc``)."""
        stats: dict[str, Any] = {}
        for side, ns, dev in (("client", self.client_ns, self.client_dev), ("server", self.server_ns, self.server_dev)):
            out = _run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev], check=False).stdout
            m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", out)
            if m:
                stats[side] = {
                    "sent_bytes": int(m.group(1)),
                    "packets": int(m.group(2)),
                    "dropped": int(m.group(3)),
                    "overlimits": int(m.group(4)),
                }
        return stats

    def describe(self) -> str:
        return (
            f"{self.client_ns} ({self.client_ip}) <-> {self.server_ns} ({self.server_ip}): "
            f"tbf rate {self.rate_mbit:g}mbit burst {self.burst_bytes} latency {self.latency_ms:g}ms, each way"
        )


@contextlib.contextmanager
def wan_link(
    rate_mbit: float = 200.0,
    *,
    burst_bytes: int = 128 * 1024,
    latency_ms: float = 25.0,
    mtu: int = 1500,
) -> Iterator[Link]:
    """Make the two namespaces and the shaped veth pair; always remove them (and what runs in them).

    ``burst_bytes`` is tbf's bucket (it must hold at least one GSO packet, 64 KiB, or large segments
    are split); ``latency_ms`` bounds tbf's queue (``limit = rate * latency + burst``).
    """
    require_root()
    remove_stale()
    pid = os.getpid()
    link = Link(
        client_ns=f"{PREFIX}-{pid}-c",
        server_ns=f"{PREFIX}-{pid}-s",
        client_dev=f"pdw{pid}c",
        server_dev=f"pdw{pid}s",
        rate_mbit=rate_mbit,
        burst_bytes=burst_bytes,
        latency_ms=latency_ms,
    )
    made: list[str] = []
    try:
        for ns in (link.client_ns, link.server_ns):
            _run(["ip", "netns", "add", ns])
            made.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # IPv4 only: no router solicitations or DAD chatter on the shaped link
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        # created inside the client namespace, so a crash between these steps leaves nothing in the root one
        _run(["ip", "-n", link.client_ns, "link", "add", link.client_dev, "mtu", str(mtu), "type", "veth",
              "peer", "name", link.server_dev, "netns", link.server_ns])  # fmt: skip
        for ns, dev, ip in (
            (link.client_ns, link.client_dev, link.client_ip),
            (link.server_ns, link.server_dev, link.server_ip),
        ):
            _run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)])
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", *link.tbf_spec()])
        yield link
    finally:
        for ns in reversed(made):
            _delete_ns(ns)


def main() -> int:
    """``python bench/netlink.py [--cleanup]``: remove leftovers of crashed runs, report netem."""
    require_root()
    removed = remove_stale()
    print("removed: " + (", ".join(removed) if removed else "nothing"))
    ok, why = netem_available()
    print(f"netem qdisc available: {ok} ({why})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
