"""ASG terminate lifecycle hooks, completed by ec2-eds once the gateways have moved away.

On `EC2 Instance-terminate Lifecycle Action` the event handler (chalicelib/usecases/events.py) marks the
instance DRAINING; `deliver` then schedules the hook's completion: one message on an SQS delay
queue, due after the drain period. The queue's consumer (`complete`, an `on_sqs_message` handler)
calls `CompleteLifecycleAction` with `CONTINUE` for that hook and token, and the group terminates
the instance. Nothing waits inside an invocation: the wait is the message's delay, so a Lambda
timeout or a cold start loses nothing.

- **Drain period**: `DRAIN_SECONDS`, default 2 x `CDS_EDS_REFRESH_SECONDS` (two polls of Envoy's
  REST EDS), never past the hook's heartbeat timeout less `HEARTBEAT_MARGIN` (read with
  `DescribeLifecycleHooks`, counted from the event's `time`, so a late delivery has less left;
  a failure to read it fails the event, which Lambda retries).
  SQS delays a message at most 900 s: a longer period is waited in several hops, each message
  carrying when it is due.
- **Idempotent**: a duplicate event schedules a second message; the second completion finds no
  active lifecycle action (`ValidationError`) and stops there, as it does after the hook timed out.
- **Failure**: a completion that fails otherwise is sent again with a growing delay, up to
  `COMPLETE_ATTEMPTS` times; after that ec2-eds gives up (logged, `LifecycleCompletionsAbandoned`)
  and the hook's default result applies at its heartbeat timeout.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.config import settings
from chalicelib.observability import count, logger

MAX_DELAY = 900  # SQS's limit on DelaySeconds
HEARTBEAT_MARGIN = 10.0  # seconds kept between the completion and the hook's heartbeat timeout
COMPLETE_ATTEMPTS = 5
SOURCE, DETAIL_TYPE = "aws.autoscaling", "EC2 Instance-terminate Lifecycle Action"


@dataclass(frozen=True)
class Pending:
    """One lifecycle action to complete: the message body on the drain queue."""

    instance_id: str
    group: str
    hook: str
    token: str
    region: str
    account: str
    event_at: float  # when the event was handled (epoch seconds)
    due: float  # when to complete (epoch seconds)
    attempt: int = 0

    def body(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Pending:
        data = json.loads(text)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def pending_of(raw: Any, now: float, drain: float) -> Pending | None:
    """The action a terminate lifecycle event asks to complete, or None for any other event."""
    if not isinstance(raw, dict) or raw.get("source") != SOURCE or raw.get("detail-type") != DETAIL_TYPE:
        return None
    detail = raw.get("detail") or {}
    fields = ("EC2InstanceId", "AutoScalingGroupName", "LifecycleHookName", "LifecycleActionToken")
    if not all(isinstance(detail.get(key), str) and detail[key] for key in fields):
        return None  # e.g. the test notification a new hook sends: nothing to complete
    return Pending(
        instance_id=detail["EC2InstanceId"],
        group=detail["AutoScalingGroupName"],
        hook=detail["LifecycleHookName"],
        token=detail["LifecycleActionToken"],
        region=str(raw.get("region") or settings().home_region),
        account=str(raw.get("account") or ""),
        event_at=now,
        due=now + drain,
    )


def event_time(raw: dict[str, Any], default: float) -> float:
    """When the lifecycle action started: the event's `time` (epoch seconds), else `default`."""
    try:
        return datetime.strptime(str(raw.get("time")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return default


def drain_period(heartbeat: float | None = None) -> float:
    """The drain period: the setting (default two EDS polls), within the hook's heartbeat timeout."""
    conf = settings()
    drain = conf.drain_seconds if conf.drain_seconds is not None else 2 * conf.cds_eds_refresh_seconds
    if heartbeat is not None:
        drain = min(drain, max(0.0, heartbeat - HEARTBEAT_MARGIN))
    return drain


class Lifecycle:
    """Schedules and completes lifecycle actions; the clients are passed in (boto3's in Lambda)."""

    def __init__(
        self,
        sqs: Any,
        autoscaling: Callable[[str], Any],
        queue: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sqs = sqs
        self._autoscaling = autoscaling  # region -> autoscaling client
        self._queue = queue or settings().drain_queue
        self._url: str | None = None
        self._clock = clock

    def queue_url(self) -> str:
        if self._url is None:
            self._url = str(self._sqs.get_queue_url(QueueName=self._queue)["QueueUrl"])
        return self._url

    def _send(self, pending: Pending, delay: float) -> None:
        seconds = min(MAX_DELAY, max(0, math.ceil(delay)))
        self._sqs.send_message(QueueUrl=self.queue_url(), MessageBody=pending.body(), DelaySeconds=seconds)

    def heartbeat(self, region: str, group: str, hook: str) -> float | None:
        """The hook's heartbeat timeout; None when the hook is gone (the setting alone applies).

        A failure to read it propagates: no completion is scheduled that could come after the
        timeout, the event is retried, and failing that the hook's default result applies.
        """
        hooks = self._autoscaling(region).describe_lifecycle_hooks(
            AutoScalingGroupName=group, LifecycleHookNames=[hook]
        )["LifecycleHooks"]
        return float(hooks[0]["HeartbeatTimeout"]) if hooks else None

    def schedule(self, raw: Any) -> dict[str, Any] | None:
        """Queue the completion of the event's lifecycle action after the drain period (None: not one)."""
        probe = pending_of(raw, 0.0, 0.0)
        if probe is None:
            return None
        heartbeat = self.heartbeat(probe.region, probe.group, probe.hook)
        now = self._clock()
        if heartbeat is not None:  # the timeout runs from the action's start: a late delivery has less left
            heartbeat -= max(0.0, now - event_time(raw, now))
        drain = drain_period(heartbeat)
        pending = replace(probe, event_at=now, due=now + drain)
        self._send(pending, drain)  # an error propagates: the event is retried, the drain is idempotent
        count("LifecycleCompletionsScheduled")
        logger.info("lifecycle completion scheduled", extra={"instance_id": pending.instance_id, "drain_s": drain})
        return {"instance_id": pending.instance_id, "group": pending.group, "drain_seconds": drain}

    def complete(self, body: str) -> str:
        """Handle one drain-queue message: complete the action when due, else wait again.

        Answers what happened: `waiting`, `completed`, `gone` (no active action: done already,
        or timed out), `retrying` or `abandoned`.
        """
        pending = Pending.parse(body)
        left = pending.due - self._clock()
        if left > 0.5:  # a hop of a long drain period, or a message delivered early
            self._send(pending, left)
            return "waiting"
        try:
            self._autoscaling(pending.region).complete_lifecycle_action(
                LifecycleHookName=pending.hook,
                AutoScalingGroupName=pending.group,
                LifecycleActionToken=pending.token,
                InstanceId=pending.instance_id,
                LifecycleActionResult="CONTINUE",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ValidationError":
                logger.info("no active lifecycle action", extra={"instance_id": pending.instance_id, "error": str(err)})
                count("LifecycleCompletionsGone")
                return "gone"
            return self._retry(pending, err)
        except BotoCoreError as err:
            return self._retry(pending, err)
        count("LifecycleCompletions")
        logger.info(
            "lifecycle action completed",
            extra={"instance_id": pending.instance_id, "after_s": round(self._clock() - pending.event_at, 3)},
        )
        return "completed"

    def _retry(self, pending: Pending, err: Exception) -> str:
        attempt = pending.attempt + 1
        extra = {"instance_id": pending.instance_id, "group": pending.group, "attempt": attempt, "error": str(err)}
        if attempt >= COMPLETE_ATTEMPTS:
            logger.error("lifecycle completion abandoned: the hook's default result applies", extra=extra)
            count("LifecycleCompletionsAbandoned")
            return "abandoned"
        logger.warning("lifecycle completion failed; retrying", extra=extra)
        delay = 5.0 * 2 ** (attempt - 1)
        self._send(replace(pending, attempt=attempt, due=self._clock() + delay), delay)
        return "retrying"
