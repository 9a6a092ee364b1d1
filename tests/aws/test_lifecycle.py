"""ASG terminate lifecycle: drained first, CompleteLifecycleAction(CONTINUE) after the drain period.

moto's SQS is the drain queue; moto keeps the hook (its heartbeat timeout), and `devtools.asg`
plays the lifecycle action itself, which moto does not emulate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import config, runtime
from chalicelib.config import Settings
from chalicelib.usecases import lifecycle
from devtools.asg import LifecycleActions
from tests.aws.test_events import fleet, members  # noqa: F401 - the fixture
from tests.profiles import examples

GROUP, HOOK = "web-asg", "drain-before-terminate"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def drain_settings(seconds: float | None, **more: Any) -> Settings:
    """This process's settings with DRAIN_SECONDS (and any other knob) as given."""
    return config.settings().model_copy(update={"drain_seconds": seconds, **more})


@pytest.fixture
def world(aws: None) -> Iterator[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName=config.settings().drain_queue)["QueueUrl"]
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    autoscaling.create_launch_configuration(
        LaunchConfigurationName="lc", ImageId="ami-12c6146b", InstanceType="t3.micro"
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=GROUP, LaunchConfigurationName="lc", MinSize=0, MaxSize=4, AvailabilityZones=["us-east-1a"]
    )
    autoscaling.put_lifecycle_hook(
        AutoScalingGroupName=GROUP,
        LifecycleHookName=HOOK,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=300,
        DefaultResult="CONTINUE",
    )
    terminated: list[str] = []
    actions = LifecycleActions(autoscaling, on_complete=lambda instance, _: terminated.append(instance))
    clock = Clock()

    def draining(seconds: float) -> lifecycle.Lifecycle:
        return lifecycle.Lifecycle(sqs, lambda region: actions, drain_settings(seconds), clock=clock)

    yield {
        "sqs": sqs,
        "url": url,
        "actions": actions,
        "clock": clock,
        "terminated": terminated,
        "lifecycle": draining(30),
        "draining": draining,
    }


def queued(world: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """The messages on the drain queue (their delay ignored): (body, DelaySeconds asked) each, consumed."""
    sqs, url = world["sqs"], world["url"]
    found = []
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
        "Messages", []
    ):
        found.append(json.loads(message["Body"]))
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return [(body, 0) for body in found]


def _sent(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], int]]:
    """Record each message sent with its DelaySeconds (moto delays it; the tests read it at once)."""
    sent: list[tuple[dict[str, Any], int]] = []
    real = world["sqs"].send_message

    def send(**request: Any) -> Any:
        sent.append((json.loads(request["MessageBody"]), request["DelaySeconds"]))
        return real(**{**request, "DelaySeconds": 0})

    monkeypatch.setattr(world["sqs"], "send_message", send)
    return sent


def test_the_completion_comes_after_the_drain_period_with_continue(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent(world, monkeypatch)
    event = world["actions"].start(GROUP, HOOK, "i-0123456789abcdef0")
    scheduled = world["lifecycle"].schedule(event)
    assert scheduled == {"instance_id": "i-0123456789abcdef0", "group": GROUP, "drain_seconds": 30.0}
    ((body, delay),) = sent
    assert delay == 30 and body["token"] == event["detail"]["LifecycleActionToken"] and body["hook"] == HOOK
    (message,) = queued(world)
    assert world["lifecycle"].complete(json.dumps(message[0])) == "waiting"  # delivered early: waits again
    assert world["terminated"] == []
    queued(world)
    world["clock"].now += 30
    assert world["lifecycle"].complete(json.dumps(body)) == "completed"
    assert world["terminated"] == ["i-0123456789abcdef0"]
    assert world["actions"].calls == [("i-0123456789abcdef0", "CONTINUE")]


def test_a_duplicate_event_completes_once(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _sent(world, monkeypatch)
    event = world["actions"].start(GROUP, HOOK, "i-0aaaaaaaaaaaaaaa1")
    world["lifecycle"].schedule(event)
    world["lifecycle"].schedule(event)  # EventBridge delivers at least once
    world["clock"].now += 30
    outcomes = [world["lifecycle"].complete(json.dumps(body)) for body, _ in sent]
    assert sorted(outcomes) == ["completed", "gone"]
    assert world["terminated"] == ["i-0aaaaaaaaaaaaaaa1"]


def test_a_failed_completion_is_retried_then_left_to_the_default_result(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent(world, monkeypatch)
    world["lifecycle"].schedule(world["actions"].start(GROUP, HOOK, "i-0bbbbbbbbbbbbbbb1"))
    world["actions"].fail_next = 2
    world["clock"].now += 30
    assert world["lifecycle"].complete(json.dumps(sent[-1][0])) == "retrying"
    assert sent[-1][0]["attempt"] == 1 and sent[-1][1] > 0
    world["clock"].now += sent[-1][1]
    assert world["lifecycle"].complete(json.dumps(sent[-1][0])) == "retrying"
    world["clock"].now += sent[-1][1]
    assert world["lifecycle"].complete(json.dumps(sent[-1][0])) == "completed"
    assert world["terminated"] == ["i-0bbbbbbbbbbbbbbb1"]

    world["lifecycle"].schedule(world["actions"].start(GROUP, HOOK, "i-0ccccccccccccccc1"))
    world["actions"].fail_next = 100
    outcomes = []
    for _ in range(lifecycle.COMPLETE_ATTEMPTS):
        world["clock"].now += 900
        outcomes.append(world["lifecycle"].complete(json.dumps(sent[-1][0])))
    assert outcomes == ["retrying"] * (lifecycle.COMPLETE_ATTEMPTS - 1) + ["abandoned"]
    assert "i-0ccccccccccccccc1" in world["actions"].active  # the hook's timeout and default result decide


def test_the_drain_period_stops_short_of_the_heartbeat_timeout(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _sent(world, monkeypatch)
    scheduled = world["draining"](3600).schedule(world["actions"].start(GROUP, HOOK, "i-0ddddddddddddddd1"))
    assert scheduled["drain_seconds"] == 300 - lifecycle.HEARTBEAT_MARGIN
    assert sent[-1][1] == 290


def test_a_long_drain_period_is_waited_in_hops_of_at_most_900_seconds(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    world["actions"].put_lifecycle_hook(
        AutoScalingGroupName=GROUP,
        LifecycleHookName=HOOK,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=7200,
    )
    sent = _sent(world, monkeypatch)
    handler = world["draining"](2000)
    handler.schedule(world["actions"].start(GROUP, HOOK, "i-0eeeeeeeeeeeeeee1"))
    outcomes = []
    while not world["terminated"] and len(outcomes) < 10:
        world["clock"].now += sent[-1][1]
        outcomes.append(handler.complete(json.dumps(sent[-1][0])))
    assert outcomes == ["waiting", "waiting", "completed"]
    assert [delay for _, delay in sent] == [900, 900, 200]


def test_the_default_drain_is_two_eds_refreshes() -> None:
    conf = Settings.model_validate({"CDS_EDS_REFRESH_SECONDS": "5"})
    assert lifecycle.drain_period(conf) == 10.0
    assert lifecycle.drain_period(conf, heartbeat=12) == 2.0


def test_other_events_and_hook_test_notifications_schedule_nothing(world: dict[str, Any]) -> None:
    event = world["actions"].start(GROUP, HOOK, "i-0fffffffffffffff1")
    del event["detail"]["LifecycleActionToken"]
    assert world["lifecycle"].schedule(event) is None
    assert (
        world["lifecycle"].schedule({"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning"})
        is None
    )
    assert queued(world) == []


def test_the_lambda_handler_drains_then_schedules(
    world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    fleet: dict[str, str],  # noqa: F811
) -> None:
    """app.py's terminate lifecycle handler: the instance is DRAINING at once, its completion queued."""
    runtime.reset()
    monkeypatch.setattr(runtime, "_lifecycle", world["lifecycle"])
    sent = _sent(world, monkeypatch)
    summary = runtime.deliver_lifecycle(world["actions"].start(GROUP, HOOK, fleet["web-1"]))
    assert members("web")[fleet["web-1"]] == "DRAINING"
    assert summary["completion"]["instance_id"] == fleet["web-1"] and len(sent) == 1
    world["clock"].now += 30
    assert runtime.complete_drains([json.dumps(sent[0][0])]) == ["completed"]


def test_the_chalice_handlers_drain_then_complete_through_the_queue(
    world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    fleet: dict[str, str],  # noqa: F811
) -> None:
    """app.py as Lambda runs it: the EventBridge handler queues, the SQS handler completes."""
    from chalice.test import Client

    from app import app

    monkeypatch.setattr(runtime, "_lifecycle", world["lifecycle"])
    sent = _sent(world, monkeypatch)
    event = world["actions"].start(GROUP, HOOK, fleet["web-1"])
    with Client(app) as client:
        answer = client.lambda_.invoke(
            "asg_terminate_lifecycle",
            client.events.generate_cw_event(
                source=event["source"],
                detail_type=event["detail-type"],
                detail=event["detail"],
                resources=event["resources"],
                region="us-east-1",
            ),
        ).payload
        assert answer["completion"]["drain_seconds"] == 30.0 and members("web")[fleet["web-1"]] == "DRAINING"
        ((body, delay),) = sent
        assert delay == 30
        world["clock"].now += 30
        sqs_event = client.events.generate_sqs_event(
            message_bodies=[json.dumps(body)], queue_name=config.settings().drain_queue
        )
        assert client.lambda_.invoke("asg_drain_complete", sqs_event).payload == {"outcomes": ["completed"]}
    assert world["terminated"] == [fleet["web-1"]]


class Queue:
    """The drain queue as the Lifecycle sees it: messages visible after their delay, delivered earliest first."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.messages: list[tuple[float, int, str]] = []
        self.delays: list[int] = []

    def get_queue_url(self, QueueName: str) -> dict[str, str]:  # noqa: N803 - boto3's names
        return {"QueueUrl": f"https://sqs.us-east-1.amazonaws.com/123456789012/{QueueName}"}

    def send_message(self, QueueUrl: str, MessageBody: str, DelaySeconds: int) -> dict[str, str]:  # noqa: N803
        assert 0 <= DelaySeconds <= lifecycle.MAX_DELAY
        self.delays.append(DelaySeconds)
        self.messages.append((self.clock() + DelaySeconds, len(self.delays), MessageBody))
        self.messages.sort()
        return {}


class Hooks:
    """describe_lifecycle_hooks of one hook with this heartbeat timeout, then the group's side."""

    def __init__(self, heartbeat: int, actions: LifecycleActions) -> None:
        self.heartbeat, self.actions = heartbeat, actions

    def describe_lifecycle_hooks(self, **_: Any) -> dict[str, Any]:
        return {"LifecycleHooks": [{"HeartbeatTimeout": self.heartbeat}]}

    def complete_lifecycle_action(self, **request: Any) -> dict[str, Any]:
        return self.actions.complete_lifecycle_action(**request)


@settings(max_examples=examples(60), deadline=None)
@given(
    drain=st.integers(0, 7200),
    heartbeat=st.integers(30, 7200),
    copies=st.integers(1, 3),
    failures=st.integers(0, 2 * lifecycle.COMPLETE_ATTEMPTS),
)
def test_any_drain_duplicates_and_failures_complete_once_never_early(
    drain: int, heartbeat: int, copies: int, failures: int
) -> None:
    clock = Clock()
    queue = Queue(clock)
    accepted: list[float] = []
    actions = LifecycleActions(None, on_complete=lambda *_: accepted.append(clock()))
    actions.fail_next = failures
    handler = lifecycle.Lifecycle(queue, lambda region: Hooks(heartbeat, actions), drain_settings(drain), clock=clock)
    event = actions.start(GROUP, HOOK, "i-0123456789abcdef0")
    started = clock()
    for _ in range(copies):
        handler.schedule(event)
    first_try = None
    for _ in range(200):  # every message is handled once, when visible, as Lambda's trigger does
        if not queue.messages:
            break
        visible, _, body = queue.messages.pop(0)
        clock.now = max(clock.now, visible)
        calls = len(actions.calls)
        handler.complete(body)
        if first_try is None and len(actions.calls) > calls:
            first_try = clock.now
    assert not queue.messages  # it ends: nothing is sent again forever
    period = min(drain, max(0, heartbeat - lifecycle.HEARTBEAT_MARGIN))
    assert first_try is not None and first_try >= started + period  # never before the drain period
    assert first_try <= started + max(0, heartbeat - lifecycle.HEARTBEAT_MARGIN) + 1  # nor past the heartbeat
    assert len(accepted) <= 1  # completed at most once, whatever the duplicates
    if failures < lifecycle.COMPLETE_ATTEMPTS:
        assert len(accepted) == 1  # a transient failure is retried until it goes through


def test_a_malformed_lifecycle_event_drains_nothing_and_completes_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "_lifecycle", world["lifecycle"])
    event = world["actions"].start(GROUP, HOOK, "i-0123456789abcdef0")
    event["detail"]["EC2InstanceId"] = "not-an-instance"
    summary = runtime.deliver_lifecycle(event)
    assert summary["ignored"] and summary["completion"] is None
    assert queued(world) == []


def test_a_late_event_leaves_less_of_the_heartbeat(world: dict[str, Any]) -> None:
    """The heartbeat timeout runs from the action's start (the event's time), not from its delivery."""
    event = world["actions"].start(GROUP, HOOK, "i-0123456789abcdef0")
    event["time"] = "1970-01-12T13:46:40Z"  # 1,000,000 s after the epoch: 200 s before the clock
    world["clock"].now = 1_000_200.0
    scheduled = world["draining"](3600).schedule(event)
    assert scheduled["drain_seconds"] == 300 - 200 - lifecycle.HEARTBEAT_MARGIN
