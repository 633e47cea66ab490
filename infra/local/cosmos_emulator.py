"""Start the Cosmos DB (NoSQL API) emulator, ``@vercel/cosmosdb-server``, as a child process.

It is run from ``infra/local/emulators/node_modules`` (installed by ``npm ci``, with the 404 patch)
through a three-line Node launcher rather than its CLI: the CLI answers every request with
``Connection: close``, so each request pays a new TLS handshake (~65 ms against ~6 ms with
keep-alive, measured over 300 creates). The server speaks HTTPS with a self-signed, expired
certificate (CN=cosmosdb): connect with ``verify_tls=False`` (:data:`COSMOS_EMULATOR_VERIFY_TLS`),
which applies to that one client only. The emulator ignores the account key; clients still need a
well-formed one, so :data:`COSMOS_EMULATOR_KEY` is the official emulator's published key (public,
not a secret).

Known gaps (do not depend on them): no transactional batch, no TTL, one partition key range, and
queries scan every document (fine for tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from infra.local.servers import REPO, RunningProcess, free_port, wait_until_ready

__all__ = [
    "COSMOS_EMULATOR_KEY",
    "COSMOS_EMULATOR_VERIFY_TLS",
    "EMULATORS_DIR",
    "start_cosmos",
]

EMULATORS_DIR = REPO / "infra" / "local" / "emulators"
COSMOS_EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
COSMOS_EMULATOR_VERIFY_TLS = False

# keepAlive: reuse connections (see the module docstring); long idle timeouts so a pooled connection
# is not closed under a client between two tests (a write on a just-closed socket is not retried).
_LAUNCHER = """
const server = require("@vercel/cosmosdb-server").createHttpsServer({ keepAlive: true });
server.keepAliveTimeout = 600000;
server.headersTimeout = 610000;
server.listen(Number(process.argv[1]), "127.0.0.1", () => console.log(`cosmosdb-server ready on ${process.argv[1]}`));
"""


def start_cosmos(log_dir: Path, *, timeout: float = 60.0) -> RunningProcess:
    """The emulator on a free loopback port; ``.url`` is the endpoint (``https://127.0.0.1:<port>``).

    Raises ``RuntimeError`` with the emulator's log when it is not installed or does not answer.
    """
    node = shutil.which("node")
    package = EMULATORS_DIR / "node_modules" / "@vercel" / "cosmosdb-server"
    if node is None:
        raise RuntimeError("node is not on PATH; the Cosmos DB emulator needs Node 20")
    if not (package / "package.json").is_file():
        raise RuntimeError(f"the Cosmos DB emulator is not installed: run `npm ci` in {EMULATORS_DIR}")
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"cosmos-{port}.log"
    process = subprocess.Popen(
        [node, "-e", _LAUNCHER, str(port)],
        cwd=EMULATORS_DIR,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    url = f"https://127.0.0.1:{port}"
    # The account endpoint answers once the server is listening (self-signed: no verification).
    return wait_until_ready(
        process, url, log_path, "the Cosmos DB emulator",
        lambda: httpx.get(f"{url}/", verify=False, timeout=2).status_code == 200, timeout=timeout,
    )  # fmt: skip
