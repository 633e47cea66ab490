"""Start Azurite's Blob service (the real Azure Blob stand-in) as a child process on loopback.

Azurite is the npm package installed in ``infra/local/emulators`` (``make`` runs ``npm ci`` there);
its ``azurite-blob`` script is run with ``node`` directly, never ``npx`` (which leaves an orphan).
It is started with ``--skipApiVersionCheck`` because azure-storage-blob speaks a newer API version
than Azurite 3.35 knows; Azurite still checks SAS signatures, expiry and permissions.

Plain HTTP by default. ``https=(cert, key)`` serves HTTPS with that PEM pair and turns on
``--oauth basic``: Azurite then accepts bearer tokens (it checks their lifetime, issuer and
audience, not their signature) and answers *Get User Delegation Key*, which only works with OAuth.

The emulator's well-known account (``devstoreaccount1``) is used; its key is public knowledge and
good for nothing but Azurite.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx

from infra.local.servers import REPO, RunningProcess, free_port, wait_until_ready

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "azurite_account_url",
    "azurite_connection_string",
    "start_azurite",
]

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_BIN = REPO / "infra" / "local" / "emulators" / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def azurite_account_url(url: str) -> str:
    """The Blob endpoint of the emulator account: Azurite puts the account in the first path segment."""
    return f"{url.rstrip('/')}/{AZURITE_ACCOUNT}"


def azurite_connection_string(url: str) -> str:
    """An account-key connection string for the Azurite at ``url`` (as ``RunningProcess.url``)."""
    protocol = "https" if url.startswith("https://") else "http"
    return (
        f"DefaultEndpointsProtocol={protocol};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={azurite_account_url(url)};"
    )


def start_azurite(
    log_dir: Path,
    *,
    timeout: float = 30.0,
    https: tuple[Path, Path] | None = None,
    debug: bool = False,
    in_memory: bool = False,
) -> RunningProcess:
    """Azurite Blob on a free loopback port; ``url`` is the server root (``http://127.0.0.1:PORT``).

    Raises with Azurite's log if it exits or does not answer within ``timeout`` seconds. Data lives in
    a fresh folder under ``log_dir``. ``debug`` also writes Azurite's request-by-request debug log
    (why a SAS was refused, the string it signed) next to the log; it slows Azurite down.
    ``in_memory`` keeps blobs in memory only (faster; everything is lost when it stops).
    """
    if not _BIN.is_file():
        raise RuntimeError(f"Azurite is not installed at {_BIN}: run `make` (npm ci in infra/local/emulators)")
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    data_dir = log_dir / f"azurite-{port}"
    data_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"azurite-{port}.log"
    argv = [
        "node",
        str(_BIN),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    argv += ["--inMemoryPersistence"] if in_memory else ["--location", str(data_dir)]
    if debug:
        argv += ["--debug", str(log_dir / f"azurite-{port}.debug.log")]
    scheme = "http"
    verify: bool | ssl.SSLContext = True
    if https is not None:
        cert, key = https
        argv += ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]
        scheme, verify = "https", ssl.create_default_context(cafile=str(cert))
    process = subprocess.Popen(argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=data_dir)
    url = f"{scheme}://127.0.0.1:{port}"
    # Any HTTP answer (an anonymous request gets 4xx) means the blob service is up.
    return wait_until_ready(
        process, url, log_path, "Azurite",
        lambda: httpx.get(f"{azurite_account_url(url)}?comp=list", timeout=2, verify=verify) is not None,
        timeout=timeout,
    )  # fmt: skip
