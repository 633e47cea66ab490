"""Which backends a test run uses: every one for the contract suite, those with a socket for e2e.

``PDCAT_TEST_BACKENDS=embedded`` (comma-separated) narrows a run. ``*-inproc`` backends answer
in-process through an httpx transport, so the ``pdcat`` command (another process) cannot reach them.
"""

from __future__ import annotations

import os

DEFAULT = "embedded,aws-http,aws-inproc,azure-http,azure-inproc"
BACKENDS = [name.strip() for name in os.environ.get("PDCAT_TEST_BACKENDS", DEFAULT).split(",") if name.strip()]
WIRE_BACKENDS = [name for name in BACKENDS if not name.endswith("-inproc")]
PASSWORD_LOGIN_BACKENDS = [name for name in BACKENDS if name == "embedded"]
"""The backends whose own users log in with a password (``/auth/token``, ``/auth/refresh``, the user
routes); the clouds take tokens from an identity provider (``supports_password_login`` in tests/conftest.py)."""
