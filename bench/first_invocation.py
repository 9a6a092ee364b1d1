"""One Lambda cold start, in this fresh interpreter: `import app`, then the first invocation.

    python -m bench.first_invocation CASE      (CASE: a key of CASES, or `boto3` for the baseline)

Run by bench/coldstart.py with the stage's environment and AWS_LAMBDA_FUNCTION_NAME set, as
Lambda runs the handler module: the entry points are Lambda's (`app.app` for the API, the
decorated handler for the others), called with the event Lambda would send. Prints one JSON line:
seconds of `import app`, of the first invocation, the process' CPU seconds, and which of the
packages kept off the hot path the invocation loaded. Only the standard library is imported
before the timed part.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

WATCHED = ("pydantic", "yaml", "aws_xray_sdk", "chalice.local", "moto")


class Context:
    """What Lambda passes as `context` (the attributes the handlers and Powertools read)."""

    def __init__(self, function: str) -> None:
        self.function_name = function
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function}"
        self.log_stream_name = "cold"
        self._deadline = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def api_event(
    method: str, resource: str, path: str, params: dict[str, str] | None = None, body: str | None = None, **query: str
) -> dict[str, Any]:
    """An API Gateway REST proxy event, as Lambda delivers it to the API handler."""
    headers = {"host": "abc123.execute-api.us-east-1.amazonaws.com", "accept": "application/json"}
    if body is not None:
        headers["content-type"] = "application/json"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {key: [value] for key, value in query.items()} or None,
        "pathParameters": params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/api{path}",
            "stage": "api",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _fixture(name: str) -> dict[str, Any]:
    """An EventBridge event from tests/fixtures/events, about the instance the bench launched."""
    with open(os.path.join(os.environ["BENCH_EVENTS_DIR"], f"{name}.json")) as handle:
        return dict(json.loads(handle.read().replace("i-abcd1111", os.environ["BENCH_INSTANCE_ID"])))


def _drain_message() -> dict[str, Any]:
    """A drain-queue message not yet due: the handler sends it on (moto's server implements no
    CompleteLifecycleAction, so the completion itself is not what this measures)."""
    now = time.time()
    body = {
        "instance_id": os.environ["BENCH_INSTANCE_ID"],
        "group": "web-asg",
        "hook": "drain-before-terminate",
        "token": str(uuid.uuid4()),
        "region": "us-east-1",
        "account": "123456789012",
        "event_at": now - 30,
        "due": now + 600,
    }
    return _sqs(json.dumps(body, sort_keys=True), "ec2-eds-dev-drain")


def _sqs(body: str, queue: str) -> dict[str, Any]:
    """An SQS trigger's event of one message."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "handle",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                "awsRegion": "us-east-1",
            }
        ]
    }


UPSTREAM = ("gloo-system", "ec2-demo-upstream")
CLUSTER = f"{UPSTREAM[1]}_{UPSTREAM[0]}"
# case -> (Lambda function, handler attribute of `app`, the event)
CASES: dict[str, tuple[str, str, Any]] = {
    "api GET /endpoints (JSON poll)": (
        "api_handler",
        "app",
        lambda: api_event(
            "GET",
            "/endpoints/{namespace}/{name}",
            f"/endpoints/{UPSTREAM[0]}/{UPSTREAM[1]}",
            {"namespace": UPSTREAM[0], "name": UPSTREAM[1]},
        ),
    ),
    "api POST /v3/discovery:endpoints (EDS poll)": (
        "api_handler",
        "app",
        lambda: api_event(
            "POST",
            "/v3/discovery:endpoints",
            "/v3/discovery:endpoints",
            body=json.dumps({"node": {"id": "cold", "cluster": "cold"}, "resource_names": [CLUSTER]}),
        ),
    ),
    "api POST /v3/discovery:clusters (CDS poll)": (
        "api_handler",
        "app",
        lambda: api_event(
            "POST",
            "/v3/discovery:clusters",
            "/v3/discovery:clusters",
            body=json.dumps({"node": {"id": "cold", "cluster": "cold"}}),
        ),
    ),
    "api GET /prometheus/targets (HTTP SD poll)": (
        "api_handler",
        "app",
        lambda: api_event("GET", "/prometheus/targets", "/prometheus/targets"),
    ),
    "scheduled_scan": (
        "scheduled_scan",
        "scheduled_scan",
        lambda: {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-12-01T00:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/ec2-eds-dev-scheduled_scan-event"],
            "detail": {},
        },
    ),
    "ec2_state_change": ("ec2_state_change", "ec2_state_change", lambda: _fixture("ec2-state-change")),
    "ec2_spot_interruption": ("ec2_spot_interruption", "ec2_spot_interruption", lambda: _fixture("spot-interruption")),
    "ec2_tag_change": ("ec2_tag_change", "ec2_tag_change", lambda: _fixture("tag-change")),
    "asg_terminate_lifecycle": (
        "asg_terminate_lifecycle",
        "asg_terminate_lifecycle",
        lambda: _fixture("asg-terminate-lifecycle"),
    ),
    "ec2_rebalance_recommendation": (
        "ec2_rebalance_recommendation",
        "ec2_rebalance_recommendation",
        lambda: _fixture("rebalance-recommendation"),
    ),
    "ec2_scheduled_change": (
        "ec2_scheduled_change",
        "ec2_scheduled_change",
        lambda: _fixture("aws-health-scheduled-change"),
    ),
    "asg_drain_complete": ("asg_drain_complete", "asg_drain_complete", _drain_message),
    # the scan queue's worker: the demo group's task as the planner sends it (bench/coldstart.py makes it)
    "scan_group": ("scan_group", "scan_group", lambda: _sqs(os.environ["BENCH_SCAN_TASK"], "ec2-eds-dev-scan")),
    # the event queue's consumer: a state change as the EventBridge rule puts it on the queue
    "ec2_event_batch": (
        "ec2_event_batch",
        "ec2_event_batch",
        lambda: _sqs(json.dumps(_fixture("ec2-state-change")), "ec2-eds-dev-events"),
    ),
}
FLOOR = "floor"  # import boto3, one DynamoDB client, one GetItem: no poll on DynamoDB can cost less


def main(case: str) -> dict[str, Any]:
    if case == "boto3":
        started, cpu = time.perf_counter(), time.process_time()
        import boto3  # noqa: F401

        return {"import_s": time.perf_counter() - started, "invoke_s": 0.0, "cpu_s": time.process_time() - cpu}
    if case == FLOOR:
        started, cpu = time.perf_counter(), time.process_time()
        import boto3

        imported = time.perf_counter()
        table = os.environ["ENDPOINTS_TABLE"]
        boto3.client("dynamodb").get_item(TableName=table, Key={"id": {"S": "cold"}})
        done = time.perf_counter()
        return {"import_s": imported - started, "invoke_s": done - imported, "cpu_s": time.process_time() - cpu}
    function, handler, event = CASES[case]
    payload, context = event(), Context(function)
    started, cpu = time.perf_counter(), time.process_time()
    import app

    imported = time.perf_counter()
    answer = getattr(app, handler)(payload, context)
    done = time.perf_counter()
    status = answer.get("statusCode") if isinstance(answer, dict) else None
    return {
        "answer": None if status is not None else answer,  # a handler's own answer (an API's is an HTTP response)
        "import_s": imported - started,
        "invoke_s": done - imported,
        "cpu_s": time.process_time() - cpu,
        "status": status,
        "loaded": [name for name in WATCHED if name in sys.modules],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), default=str), flush=True)
