"""What every route answers with: a `Reply`, the API's one error shape, and one answer's size limit.

Shared by the read routes (`api`) and the admin routes (`admin`); no pydantic here: the read path
builds its bodies as plain dicts (their shapes are the models of `chalicelib.domain.models`, proved
by the tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.domain.names import label_problem
from chalicelib.edges import tables
from chalicelib.observability import logger

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The body as sent: JSON, unless it is already serialised text."""
        if self.body is None:
            return ""
        if isinstance(self.body, str):
            return self.body
        return json.dumps(self.body, separators=(",", ":"))


def error(status: int, message: str, field_path: str | None = None) -> Reply:
    return Reply(status, {"error": message, "field": field_path}, {"Content-Type": JSON})


def framework_error(
    status: int, body: Any, allowed: str | None = None, accepted: list[str] | None = None
) -> dict[str, Any] | None:
    """An error Chalice answers by itself (`{"Code", "Message"}`) in the API's one shape; None for any other body."""
    if status < 400 or not isinstance(body, dict) or set(body) != {"Code", "Message"}:
        return None
    code, message = body["Code"], str(body["Message"])
    if code == "MethodNotAllowedError":
        message = (
            f"{message.removeprefix('Unsupported method: ')} is not allowed here: use {allowed or 'another method'}"
        )
    elif code == "UnsupportedMediaType":
        types = ", ".join(accepted or [JSON])
        message = (
            f"Content-Type {message.removeprefix('Unsupported media type: ')} is not accepted: send one of {types}"
        )
    elif code == "InternalServerError":
        message = "internal error: the function's log has the details (look for this request's request_id)"
    return {"error": message, "field": None}


def missing_table(err: BaseException, explain: Callable[[], str]) -> Reply | None:
    """503 naming the missing DynamoDB table and the `bootstrap` command (`explain`), if that is what `err` is."""
    if not tables.is_missing_table(err):
        return None
    message = explain()
    logger.error("table missing", extra={"reason": message})
    return error(503, message)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, body, {"Content-Type": JSON, **(headers or {})})


def path_names(namespace: str, name: str) -> Reply | None:
    """400 naming the first of the path's namespace and name that is not a DNS-1123 label; None if both are."""
    for field_name, value in (("namespace", namespace), ("name", name)):
        problem = label_problem(value, field_name)
        if problem:
            return error(400, problem, field_name)
    return None


# --- one answer's size ------------------------------------------------------------------------------
#
# A synchronous Lambda returns at most 6 MB (6,291,456 bytes) and API Gateway's proxy integration
# carries the body as a JSON string inside that answer: quotes and backslashes are escaped and
# non-ASCII characters become \uXXXX. Every route measures its body that way (`wire_bytes`) against
# one budget, and answers a clear 413 naming how to split the request (EDS, /endpoints, Prometheus)
# or pages (the lists). `within_limit` is the last guard of every route.

LAMBDA_RESPONSE_LIMIT = 6_291_456
RESPONSE_BUDGET = 6_000_000  # bytes of the body as carried; the rest is room for status and headers
PROMETHEUS_BUDGET = RESPONSE_BUDGET


def wire_bytes(text: str) -> int:
    """The bytes a body takes in Lambda's answer to API Gateway (a JSON string)."""
    return len(json.dumps(text))


def part_bytes(value: Any) -> int:
    """What one element adds to a JSON array on the wire (its text, escaped, and a comma)."""
    return wire_bytes(json.dumps(value, separators=(",", ":"))) - 1


def within_limit(reply: Reply) -> Reply:
    """The reply, or a 413 when its body would not fit in one Lambda answer (no route may exceed it)."""
    text = reply.text()  # serialised once here; the reply returned carries the text
    if len(text) * 6 + 2 <= RESPONSE_BUDGET or (size := wire_bytes(text)) <= RESPONSE_BUDGET:
        return Reply(reply.status, text if reply.body is not None else None, reply.headers)
    return error(413, f"the answer would be {size} bytes, over the {RESPONSE_BUDGET} one answer may hold")
