"""moto_server with one lock around each request: ``python serial_moto.py PORT``.

moto's DynamoDB backend takes no lock, so a conditional write or an ``ADD`` is a Python
read-modify-write and two racing requests can both "win"; real DynamoDB serialises writes per item.
Clients still race here; the server applies their requests one at a time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def serial(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with lock:
        return list(app(environ, start_response))


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), serial, threaded=True, request_handler=MotoRequestHandler)
