"""A TCP proxy that adds a fixed delay each way, and the small tools that measure a link through it.

This kernel has no ``netem`` qdisc, so the WAN profile (``bench/wan.py``) adds its round-trip time
here: every segment read from one side is held until ``arrival + delay`` and only then written to
the other side, in both directions, so a request/response exchange costs ``2 * delay`` more. The
bytes held per connection and direction are bounded (``--cap-mib``, default 4 MiB: 8x what 200 Mbit/s
keeps in flight over 20 ms), beyond which the proxy stops reading that side: memory stays bounded
and back-pressure reaches the sender, but throughput is not limited. A new connection also pays
the TCP handshake a real path would cost: its first bytes are released no sooner than
``accept + 3 * delay`` (SYN, SYN-ACK, then the data), as a client's ``connect`` returns at once here.

What it cannot emulate: the proxy ends each TCP connection, so the sender's congestion window grows
against the short RTT of its own hop, not the 40 ms path (as with a split-TCP "PEP" middlebox).
Application round trips (per request, per connection) are what it adds.

    python bench/delay_proxy.py proxy --listen 198.18.0.2:9000 --target 127.0.0.1:8080 --delay-ms 20
    python bench/delay_proxy.py netserver --listen 127.0.0.1:9100         # sink, source and echo
    python bench/delay_proxy.py bulk --to 127.0.0.1:9000 --direction up --seconds 5 --streams 1
    python bench/delay_proxy.py rtt --to 127.0.0.1:9000
    python bench/delay_proxy.py selftest      # the proxy's own capacity and added RTT, on loopback

``proxy`` prints ``listening on HOST:PORT`` once ready and, on SIGTERM/SIGINT, one JSON line of
counters on stderr. ``bulk`` and ``rtt`` print one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ProxyStats", "bulk", "parse_hostport", "rtt", "run_proxy", "serve_net"]

MIB = 1024 * 1024
_SLACK = 0.0002
"""Segments due within this many seconds of a timer are released with it (one write, not two)."""


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


# ---- the proxy --------------------------------------------------------------------------------
@dataclass
class ProxyStats:
    """Counters of one proxy process."""

    connections: int = 0
    bytes_up: int = 0
    """client -> target"""
    bytes_down: int = 0
    """target -> client"""
    max_held: int = 0
    """most bytes one direction of one connection ever held"""
    pauses: int = 0
    """times a side was paused because its pipe held ``cap`` bytes or the other side was slow"""


class _Pipe:
    """One direction of one connection: what ``src`` sends, held ``delay`` s, then written to ``dst``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, cap: int, stats: ProxyStats, up: bool) -> None:
        self.loop, self.delay, self.cap, self.stats, self.up = loop, delay, cap, stats, up
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.held = 0
        self.not_before = 0.0
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.src_paused = False
        self.dst_slow = False
        self.timer: asyncio.TimerHandle | None = None
        self.eof_seen = False
        self.done = False
        self.on_done: Callable[[], None] = lambda: None

    def feed(self, data: bytes) -> None:
        if self.done or self.eof_seen:
            return
        release = max(self.loop.time(), self.not_before) + self.delay
        self.queue.append((release, data))
        self.held += len(data)
        if self.held > self.stats.max_held:
            self.stats.max_held = self.held
        if self.up:
            self.stats.bytes_up += len(data)
        else:
            self.stats.bytes_down += len(data)
        self._throttle()
        self._schedule()

    def feed_eof(self) -> None:
        if self.done or self.eof_seen:
            return
        self.eof_seen = True
        self.queue.append((max(self.loop.time(), self.not_before) + self.delay, None))
        self._schedule()

    def drop(self) -> None:
        """The destination is gone: nothing more can be delivered."""
        self.queue.clear()
        self.held = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._finish()

    def set_dst(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        self._schedule()

    def dst_writing(self, slow: bool) -> None:
        self.dst_slow = slow
        self._throttle()

    def _throttle(self) -> None:
        if self.src is None:
            return
        want_pause = self.held > self.cap or self.dst_slow
        if want_pause and not self.src_paused:
            self.src_paused = True
            self.stats.pauses += 1
            self.src.pause_reading()
        elif not want_pause and self.src_paused:
            self.src_paused = False
            if not self.src.is_closing():
                self.src.resume_reading()

    def _schedule(self) -> None:
        if self.timer is None and self.queue and self.dst is not None and not self.done:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        due = self.loop.time() + _SLACK
        parts: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] <= due:
            data = self.queue.popleft()[1]
            if data is None:
                eof = True
                break
            parts.append(data)
            self.held -= len(data)
        dst = self.dst
        if parts and dst is not None and not dst.is_closing():
            dst.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if eof:
            if dst is not None and not dst.is_closing() and dst.can_write_eof():
                dst.write_eof()
            self._finish()
            return
        self._throttle()
        self._schedule()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.on_done()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: reads feed ``out``; write back-pressure throttles ``into``."""

    def __init__(self, out: _Pipe, into: _Pipe, conn: _Connection) -> None:
        self.out, self.into, self.conn = out, into, conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        self.out.src = transport
        self.into.set_dst(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        self.out.feed_eof()
        return True  # keep the other direction open (half-close)

    def pause_writing(self) -> None:
        self.into.dst_writing(True)

    def resume_writing(self) -> None:
        self.into.dst_writing(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.feed_eof()
        self.into.drop()
        self.conn.lost()


class _Connection:
    """A client connection and its connection to the target, joined by two pipes."""

    def __init__(self, proxy: _Proxy) -> None:
        loop, d, cap, stats = proxy.loop, proxy.delay, proxy.cap, proxy.stats
        self.up = _Pipe(loop, d, cap, stats, up=True)
        self.down = _Pipe(loop, d, cap, stats, up=False)
        if proxy.handshake:
            self.up.not_before = loop.time() + 2 * d  # the client could send only after SYN, SYN-ACK
        self.up.on_done = self.down.on_done = self._maybe_close
        self.client = _Side(self.up, self.down, self)
        self.target = _Side(self.down, self.up, self)
        self.proxy = proxy

    def _maybe_close(self) -> None:
        if self.up.done and self.down.done:
            for side in (self.client, self.target):
                if side.transport is not None and not side.transport.is_closing():
                    side.transport.close()

    def lost(self) -> None:
        self._maybe_close()

    async def connect(self) -> None:
        try:
            await self.proxy.loop.create_connection(lambda: self.target, *self.proxy.target)
        except OSError:
            if self.client.transport is not None:
                self.client.transport.abort()


class _Proxy:
    def __init__(self, target: tuple[str, int], delay: float, cap: int, handshake: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.target, self.delay, self.cap, self.handshake = target, delay, cap, handshake
        self.stats = ProxyStats()
        self.tasks: set[asyncio.Task[None]] = set()

    def accept(self) -> asyncio.Protocol:
        self.stats.connections += 1
        conn = _Connection(self)
        task = self.loop.create_task(conn.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn.client


async def _serve_proxy(
    listen: tuple[str, int], target: tuple[str, int], delay: float, cap: int, handshake: bool
) -> ProxyStats:
    proxy = _Proxy(target, delay, cap, handshake)
    server = await proxy.loop.create_server(proxy.accept, *listen, backlog=512, reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        proxy.loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    return proxy.stats


def run_proxy(
    listen: tuple[str, int], target: tuple[str, int], delay: float, cap: int, handshake: bool = True
) -> ProxyStats:
    """Serve until SIGTERM/SIGINT; return the counters."""
    return asyncio.run(_serve_proxy(listen, target, delay, cap, handshake))


# ---- the measuring tools: one server (sink, source, echo) and two clients ---------------------
_BUF = bytes(1 * MIB)


WARMUP_S = 0.5
"""A receiver counts from this long after its first byte: the start (the proxy releasing what it
held during the emulated handshake, slow start) is not the link's steady rate."""


def _receive(sock: socket.socket) -> dict[str, Any]:
    """Read to EOF: bytes and monotonic times from the warm-up mark (or the first byte) to the last."""
    buf = bytearray(MIB)
    total, first, last, mark_bytes, mark_time = 0, 0.0, 0.0, -1, 0.0
    while n := sock.recv_into(buf):
        last = time.monotonic()
        if not total:
            first = last
        if mark_bytes < 0 and last - first >= WARMUP_S:
            mark_bytes, mark_time = total, last
        total += n
    if mark_bytes < 0 or last - mark_time < WARMUP_S:  # too short to leave the warm-up out
        mark_bytes, mark_time = 0, first
    return {"bytes": total - mark_bytes, "first": mark_time, "last": last, "total_bytes": total}


class _NetHandler(socketserver.BaseRequestHandler):
    """First byte picks the mode: ``U`` sink (answers a JSON line at EOF), ``D`` + float64 seconds
    source, ``E`` echo."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = sock.recv(1)
        if mode == b"U":
            sock.sendall(json.dumps(_receive(sock)).encode() + b"\n")
        elif mode == b"D":
            raw = b""
            while len(raw) < 8:
                more = sock.recv(8 - len(raw))
                if not more:
                    return
                raw += more
            end = time.monotonic() + struct.unpack("!d", raw)[0]
            view = memoryview(_BUF)
            while time.monotonic() < end:
                sock.sendall(view)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
        elif mode == b"E":
            while data := sock.recv(65536):
                sock.sendall(data)


class _NetServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve_net(listen: tuple[str, int]) -> None:
    """Serve sink/source/echo until killed; prints ``listening on HOST:PORT`` once ready."""
    with _NetServer(listen, _NetHandler) as server:
        host, port = server.socket.getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever(poll_interval=0.2)


def _connect(to: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(to, timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _one_stream(to: tuple[str, int], direction: str, seconds: float) -> tuple[int, float, float, int]:
    """(bytes after the warm-up, its start, the last byte's time, all bytes) at the receiver."""
    with _connect(to) as sock:
        if direction == "up":
            sock.sendall(b"U")
            view = memoryview(_BUF)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sock.sendall(view)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            got = json.loads(reply)
        else:
            sock.sendall(b"D" + struct.pack("!d", seconds))
            got = _receive(sock)
            sock.sendall(b"x")
    return int(got["bytes"]), float(got["first"]), float(got["last"]), int(got["total_bytes"])


def bulk(to: tuple[str, int], direction: str, seconds: float = 5.0, streams: int = 1) -> dict[str, Any]:
    """A plain bulk transfer: ``streams`` connections send (``up``) or receive (``down``) for ``seconds``.

    The rate is measured at the receiver over all streams (one machine, one monotonic clock, whatever
    namespace each end is in), from ``WARMUP_S`` after each stream's first byte to its last byte, so
    connection set-up and the first burst are not in it; ``bytes`` counts that window only."""
    results: list[tuple[int, float, float, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_one_stream(to, direction, seconds))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    total = sum(r[0] for r in results)
    span = max(r[2] for r in results) - min(r[1] for r in results)
    return {
        "direction": direction,
        "streams": streams,
        "bytes": total,
        "seconds": round(span, 3),
        "total_bytes": sum(r[3] for r in results),
        "mbit_s": round(total * 8 / span / 1e6, 1) if span > 0 else None,
    }


def rtt(to: tuple[str, int], count: int = 20, interval: float = 0.02) -> dict[str, Any]:
    """Echo round trips of one byte: ``first_ms`` is a new connection (connect + first echo)."""
    started = time.monotonic()
    with _connect(to) as sock:
        sock.sendall(b"E")
        times: list[float] = []
        for i in range(count + 1):
            t = time.monotonic()
            sock.sendall(b"p")
            if sock.recv(1) != b"p":
                raise RuntimeError("echo server answered wrongly")
            times.append((time.monotonic() - (started if i == 0 else t)) * 1000)
            time.sleep(interval)
    steady = times[1:]
    return {
        "first_ms": round(times[0], 2),
        "min_ms": round(min(steady), 2),
        "median_ms": round(statistics.median(steady), 2),
        "max_ms": round(max(steady), 2),
        "count": count,
    }


# ---- self-test: the proxy's own capacity and added RTT, on loopback --------------------------
def _start(argv: Sequence[str], log: Path | None = None) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    err = log.open("a") if log is not None else None
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        if err is not None:
            err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"{argv[2]} did not start: {line!r}")
    return proc, parse_hostport(line.split()[-1])


def start_proxy(
    listen: str,
    target: str,
    delay_ms: float,
    *,
    prefix: Sequence[str] = (),
    cap_mib: float = 4.0,
    log: Path | None = None,
) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """Start ``proxy`` as a child (``prefix``: e.g. ``ip netns exec NS``); (process, bound address).
    ``log``: where its stderr goes (its counters, one JSON line, when it stops)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    argv = [*prefix, *me, "proxy", "--listen", listen, "--target", target, "--delay-ms", str(delay_ms)]
    return _start([*argv, "--cap-mib", str(cap_mib)], log)


def start_netserver(listen: str, *, prefix: Sequence[str] = ()) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """Start ``netserver`` as a child; (process, bound address)."""
    return _start([*prefix, sys.executable, str(Path(__file__).resolve()), "netserver", "--listen", listen])


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 5 s; by PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def selftest(delay_ms: float, seconds: float, cap_mib: float) -> dict[str, Any]:
    """The proxy between a bulk client and the net server on loopback: no link limit, so the rate is
    the proxy's own ceiling on this machine (the client and server share the cores with it)."""
    server, server_addr = start_netserver("127.0.0.1:0")
    try:
        direct = rtt(server_addr)
        proxy, proxy_addr = start_proxy("127.0.0.1:0", f"{server_addr[0]}:{server_addr[1]}", delay_ms, cap_mib=cap_mib)
        try:
            out: dict[str, Any] = {"delay_ms_each_way": delay_ms, "cap_mib": cap_mib, "rtt_direct": direct}
            out["rtt_proxied"] = rtt(proxy_addr)
            for direction in ("up", "down"):
                for streams in (1, 4):
                    out[f"bulk_{direction}_{streams}"] = bulk(proxy_addr, direction, seconds, streams)
            out["bulk_direct_up_1"] = bulk(server_addr, "up", seconds, 1)
            return out
        finally:
            stop(proxy)
    finally:
        stop(server)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module's docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("proxy", help="forward --listen to --target, adding --delay-ms each way")
    c.add_argument("--listen", required=True)
    c.add_argument("--target", required=True)
    c.add_argument("--delay-ms", type=float, default=20.0)
    c.add_argument("--cap-mib", type=float, default=4.0, help="most bytes held per connection and direction")
    c.add_argument("--no-handshake", action="store_true", help="do not charge a new connection's SYN/SYN-ACK")
    c = sub.add_parser("netserver", help="sink, source and echo server for bulk and rtt")
    c.add_argument("--listen", default="127.0.0.1:0")
    c = sub.add_parser("bulk", help="a plain bulk TCP transfer")
    c.add_argument("--to", required=True)
    c.add_argument("--direction", choices=("up", "down"), default="up")
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--streams", type=int, default=1)
    c = sub.add_parser("rtt", help="echo round trips")
    c.add_argument("--to", required=True)
    c.add_argument("--count", type=int, default=20)
    c = sub.add_parser("selftest", help="the proxy's own capacity and added RTT on loopback")
    c.add_argument("--delay-ms", type=float, default=20.0)
    c.add_argument("--seconds", type=float, default=4.0)
    c.add_argument("--cap-mib", type=float, default=16.0)
    args = p.parse_args(argv)
    if args.cmd == "proxy":
        stats = run_proxy(
            parse_hostport(args.listen),
            parse_hostport(args.target),
            args.delay_ms / 1000,
            int(args.cap_mib * MIB),
            not args.no_handshake,
        )
        print(json.dumps(asdict(stats)), file=sys.stderr, flush=True)
    elif args.cmd == "netserver":
        serve_net(parse_hostport(args.listen))
    elif args.cmd == "bulk":
        print(json.dumps(bulk(parse_hostport(args.to), args.direction, args.seconds, args.streams)))
    elif args.cmd == "rtt":
        print(json.dumps(rtt(parse_hostport(args.to), args.count)))
    else:
        print(json.dumps(selftest(args.delay_ms, args.seconds, args.cap_mib), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
