"""What TLS costs ``pdcat serve``: a push and a pull of the same bundle over plain HTTP and over TLS
(``--tls-self-signed``), on loopback, with the server's CPU time and peak memory.

The bundle's data is random (incompressible), so every byte of it crosses the wire and is encrypted
twice (the client's PUTs, the server's GETs): the worst case for TLS. Rounds alternate plain and TLS,
each with a catalog id of its own (nothing deduplicated); the medians are reported, since a shared
machine moves single rounds by tens of percent. On loopback nothing else limits a transfer, so the
ratio is an upper bound for what TLS costs on a real network.

    .venv/bin/python bench/tls.py [--gib 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bundle import make_bundle  # noqa: E402
from core.auth import issue_token  # noqa: E402
from infra.local.servers import RunningServer, start_embedded  # noqa: E402


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed(argv: list[str], env: dict[str, str], server: RunningServer) -> tuple[float, float]:
    """Wall seconds of the command and the server's CPU seconds meanwhile."""
    cpu = _server_cpu(server.process.pid)
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started, _server_cpu(server.process.pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pdcat = [sys.executable, "-m", "client.cli"]
    with tempfile.TemporaryDirectory(prefix="pdcat-tls-bench-") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root / "src", args.gib, seed=7, random_frac=1.0, text_frac=0.0, zero_frac=0.0)
        secret = secrets.token_hex(32)
        servers: dict[str, RunningServer] = {}
        clients: dict[str, dict[str, str]] = {}
        for mode, flags in (("http", ()), ("https", ("--tls-self-signed",))):
            server = start_embedded(
                root / f"data-{mode}", env={"PDCAT_JWT_SECRET": secret, "PDCAT_LOG_LEVEL": "WARNING"}, args=flags
            )
            servers[mode] = server
            env = {k: v for k, v in os.environ.items() if not k.startswith("PDCAT_")}
            env.update(PDCAT_SERVER=server.url, PDCAT_TOKEN=issue_token(secret, "bench", ["ADMIN"], [], 3600)[0])
            env.update(PDCAT_CONFIG_DIR=str(root / "cfg"), PDCAT_CACHE_DIR=str(root / "cache"))
            if mode == "https":
                env["PDCAT_CACERT"] = str(server.data_dir / "tls" / "cert.pem")
            clients[mode] = env
        results: dict[str, list[tuple[float, float, float, float]]] = {"http": [], "https": []}
        try:
            for round_ in range(args.rounds):
                for mode in ("http", "https"):
                    env, server = clients[mode], servers[mode]
                    version = f"r{round_}"
                    catalog = f"bench{round_}"  # a catalog id of its own: nothing deduplicated
                    push = [*pdcat, "push", str(bundle.path), "--catalog", catalog, "--version", version]
                    push_s, push_cpu = _timed([*push, "--arch", "x86_64", "-q"], env, server)
                    dest = root / "pulled"
                    pull = [*pdcat, "pull", f"{catalog}:{version}", "--arch", "x86_64", "--dest", str(dest)]
                    pull_s, pull_cpu = _timed([*pull, "--no-register", "--no-cache", "-q"], env, server)
                    shutil.rmtree(dest)
                    results[mode].append((push_s, push_cpu, pull_s, pull_cpu))
                    print(f"round {round_} {mode:5}: push {push_s:5.2f} s (server CPU {push_cpu:5.2f} s), "
                          f"pull {pull_s:5.2f} s (server CPU {pull_cpu:5.2f} s)", flush=True)  # fmt: skip
            peaks = {mode: _server_peak_mib(servers[mode].process.pid) for mode in servers}
        finally:
            for server in servers.values():
                server.stop()
    data_mib = bundle.written_bytes / 2**20
    median = {mode: [statistics.median(r[i] for r in rows) for i in range(4)] for mode, rows in results.items()}
    for mode, (push_s, push_cpu, pull_s, pull_cpu) in median.items():
        print(f"median {mode:5}: push {data_mib / push_s:4.0f} MiB/s (server CPU {push_cpu:.2f} s), "
              f"pull {data_mib / pull_s:4.0f} MiB/s (server CPU {pull_cpu:.2f} s), "
              f"server peak RSS {peaks[mode]:.0f} MiB")  # fmt: skip
    tls, plain = median["https"], median["http"]
    print(f"TLS / plain, median time: push {tls[0] / plain[0]:.2f}x, pull {tls[2] / plain[2]:.2f}x; "
          f"server CPU: push {tls[1] / plain[1]:.2f}x, pull {tls[3] / plain[3]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
