"""The platforms' hard limits on one API request, and pdcat's own budget under them: the numbers, once.

The local harnesses (``infra/local/apigw_limits.py`` for the AWS frontend, ``infra/local/azure_host.py``
for the Azure one) enforce the platform limits, so a request the cloud would refuse fails in tests too.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APIGW_BODY_BYTES",
    "APIGW_TIMEOUT_S",
    "API_BODY_BUDGET_BYTES",
    "FUNCTIONS_REQUEST_BYTES",
    "LAMBDA_PAYLOAD_BYTES",
]

LAMBDA_PAYLOAD_BYTES: Final = 6 * 1024 * 1024
"""AWS Lambda's synchronous invocation payload, each way: the API Gateway proxy event (request) and the
response object (statusCode, headers, body) as JSON. Over it, API Gateway answers 413 (request) or
502 "Internal server error" (response)."""

APIGW_BODY_BYTES: Final = 10 * 1024 * 1024
"""API Gateway's (REST API) maximum request payload: over it, 413 before any integration runs."""

APIGW_TIMEOUT_S: Final = 29.0
"""API Gateway's (REST API) integration timeout: a slower answer is a 504 "Endpoint request timed out"."""

FUNCTIONS_REQUEST_BYTES: Final = 100 * 1024 * 1024
"""The Azure Functions host's request size limit (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT``'s default): over
it, 413 from the host before the app runs."""

API_BODY_BUDGET_BYTES: Final = 1024 * 1024
"""pdcat's own cap for any API body, request or response, on every backend: far under every limit above,
so one contract fits all of them (VM bytes travel only through presigned URLs)."""
