"""`chalice local` and Chalice's test client with the deployed API's answer to an unknown path.

Chalice's local gateway answers a path no route matches with API Gateway's
403 `{"message": "Missing Authentication Token"}`, before the app (and its
middleware) is called. Locally, nothing is signed, so that answer can only
mean "no such route": it becomes a 404 in the API's `{"error", "field"}`
shape. Deployed, API Gateway cannot tell an unknown path from an unsigned
request, so it keeps its 403, with the same body shape (gateway responses in
the stage's merge template; README, "Errors").

Only ever installed outside Lambda; `chalice.local` is not in the Lambda package.
"""

from __future__ import annotations

import json
from typing import Any


def install() -> None:
    """Wrap `LocalGateway.handle_request` once; a no-op when Chalice's local mode is not installed."""
    try:
        from chalice import local  # noqa: PLC0415 - only outside Lambda
    except ImportError:
        return
    gateway: Any = local.LocalGateway
    if getattr(gateway, "_ec2_eds_no_route", False):
        return

    class NoRoute(local.LocalGatewayException):
        CODE = 404

    original = gateway.handle_request

    def handle_request(self: Any, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        try:
            self._generate_lambda_event(method, path, headers, body)
        except ValueError:
            where = path.split("?", 1)[0]
            message = f"no route {method} {where}: the routes are listed in docs/openapi.json"
            raise NoRoute(
                {"Content-Type": "application/json"},
                json.dumps({"error": message, "field": None}).encode(),
            ) from None
        return original(self, method, path, headers, body)

    gateway.handle_request = handle_request
    gateway._ec2_eds_no_route = True
