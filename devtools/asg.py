"""The Auto Scaling side of a terminate lifecycle hook, for the tests, the bench and local runs.

moto keeps lifecycle hooks (`PutLifecycleHook`, `DescribeLifecycleHooks`) but does not implement
`CompleteLifecycleAction`, nor does it hold a terminating instance on a hook. `LifecycleActions`
plays that part as AWS documents it: `start` puts an instance in Terminating:Wait with a fresh
token and answers the EventBridge event AWS sends; `complete_lifecycle_action` accepts the
action once (CONTINUE or ABANDON), calls `on_complete` (where the caller terminates the
instance), and refuses an unknown or finished one with AWS's `ValidationError`. Everything else
(`describe_lifecycle_hooks`, ...) is moto's client.

`poll_drain_queue` delivers the drain queue's messages, when due, to the same handler code the
Lambda's `on_sqs_message` trigger runs (`chalicelib.runtime.complete_drains`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

EVENTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "events"


class LifecycleActions:
    def __init__(self, client: Any, on_complete: Callable[[str, str], None] | None = None) -> None:
        self._client = client
        self._on_complete = on_complete
        self._lock = threading.Lock()
        self.active: dict[str, tuple[str, str, str]] = {}  # instance id -> (group, hook, token)
        self.completed: dict[str, float] = {}  # instance id -> time.monotonic() of the accepted completion
        self.calls: list[tuple[str, str]] = []  # (instance id, outcome) of every CompleteLifecycleAction
        self.fail_next = 0  # the next n calls fail with a throttling error (a transient failure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def start(self, group: str, hook: str, instance_id: str, region: str = "us-east-1") -> dict[str, Any]:
        """The instance enters Terminating:Wait: the EventBridge event AWS sends for it."""
        token = str(uuid.uuid4())
        with self._lock:
            self.active[instance_id] = (group, hook, token)
        event: dict[str, Any] = json.loads((EVENTS / "asg-terminate-lifecycle.json").read_text())
        event["id"] = str(uuid.uuid4())
        event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event["region"] = region
        event["resources"] = [
            f"arn:aws:autoscaling:{region}:{event['account']}:autoScalingGroup:{uuid.uuid4()}:autoScalingGroupName/{group}"
        ]
        event["detail"].update(
            {
                "LifecycleActionToken": token,
                "AutoScalingGroupName": group,
                "LifecycleHookName": hook,
                "EC2InstanceId": instance_id,
            }
        )
        return event

    def complete_lifecycle_action(self, **request: Any) -> dict[str, Any]:
        instance_id = request.get("InstanceId", "")
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.calls.append((instance_id, "throttled"))
                raise ClientError(
                    {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "CompleteLifecycleAction"
                )
            wanted = (request.get("AutoScalingGroupName"), request.get("LifecycleHookName"))
            action = self.active.get(instance_id)
            token = request.get("LifecycleActionToken")
            if action is None or action[:2] != wanted or (token is not None and token != action[2]):
                self.calls.append((instance_id, "no-active-action"))
                raise ClientError(
                    {
                        "Error": {
                            "Code": "ValidationError",
                            "Message": f"No active Lifecycle Action found with instance ID {instance_id}",
                        }
                    },
                    "CompleteLifecycleAction",
                )
            if request.get("LifecycleActionResult") not in ("CONTINUE", "ABANDON"):
                raise ClientError(
                    {"Error": {"Code": "ValidationError", "Message": "bad LifecycleActionResult"}},
                    "CompleteLifecycleAction",
                )
            del self.active[instance_id]
            self.completed[instance_id] = time.monotonic()
            self.calls.append((instance_id, str(request["LifecycleActionResult"])))
        if self._on_complete is not None:
            self._on_complete(instance_id, str(request["LifecycleActionResult"]))
        return {}


def poll_drain_queue(
    sqs: Any, queue_url: str, handle: Callable[[list[str]], list[Any]], stop: threading.Event, every: float = 0.1
) -> list[Any]:
    """Deliver the drain queue's messages to `handle` as they become visible (their delay over),
    deleting each one handled, as Lambda's SQS trigger does; until `stop` is set. Answers the outcomes."""
    outcomes: list[str] = []
    while not stop.is_set():
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
        for message in answer.get("Messages", []):
            outcomes.extend(handle([message["Body"]]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if not answer.get("Messages"):
            stop.wait(every)
    return outcomes
