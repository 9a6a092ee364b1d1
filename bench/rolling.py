"""A rolling replacement behind a real Envoy: failed requests with and without draining.

    python -m bench.rolling [--refresh-delay 1] [--drain 2] [--spot-warning 4] [--instances 4]
                            [--scenarios lifecycle,no-drain,spot] [--merge bench/results.json]

A group of `--instances` loopback instances (HTTP servers on their private addresses in a
127.0.0.0/16 VPC) behind a real Envoy that polls ec2-eds by REST EDS every `--refresh-delay`
seconds, with no retry policy. While a client sends steady requests through Envoy (one every
10 ms, bounded in count and time; none while Envoy holds a host outside loopback), every
instance is replaced one by one: a new one is launched and its state-change event handled, then
the old one goes, by one of three paths:

- `lifecycle`: the ASG's terminate lifecycle action. Its EventBridge event goes to the Lambda
  handler's code (`chalicelib.runtime.deliver_lifecycle`: DRAINING, completion queued on the SQS drain
  queue with `DRAIN_SECONDS=--drain`); the drain queue's messages are delivered when due to the
  `on_sqs_message` handler's code; its `CompleteLifecycleAction(CONTINUE)` lets the group (played
  by `devtools.asg`, as moto does not hold instances on a hook) terminate the instance: its
  server stops and the state-change event is handled.
- `no-drain`: no hook, so no draining: the group terminates the instance at once and ec2-eds
  hears of it by the state-change event (what the lifecycle path prevents).
- `spot`: the two-minute interruption warning (scaled down to `--spot-warning` seconds), then
  the instance goes.

Figures per path: requests sent and failed, each instance's time DRAINING (event to its end),
the time from the lifecycle event to `CompleteLifecycleAction`, how long before the end Envoy
itself showed the host DRAINING or gone (`envoy_margin_s`: positive means the gateways had moved
away), and for spot the time from the warning to Envoy showing DRAINING. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = ("lifecycle", "no-drain", "spot")
GROUP, HOOK = "web-asg", "drain-before-terminate"
INTERVAL = 0.01  # seconds between two client requests
MAX_REQUESTS = 20000
MAX_SECONDS = 300.0
USED_ADDRESSES: set[str] = set()  # every address handed to an instance in this process


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {}
    return {
        "median_s": round(statistics.median(samples), 2),
        "min_s": round(min(samples), 2),
        "max_s": round(max(samples), 2),
        "samples_s": [round(s, 2) for s in samples],
    }


class Client:
    """Steady requests through Envoy in a thread: at most MAX_REQUESTS, for at most MAX_SECONDS."""

    def __init__(self, admin: Any, port: int) -> None:
        import requests

        self.admin, self.port = admin, port
        self.session = requests.Session()
        self.session.trust_env = False
        self.stop = threading.Event()
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        self.sent = 0
        self.refused: str | None = None  # why the client stopped early: Envoy held a non-loopback host
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not self.stop.is_set() and self.sent < MAX_REQUESTS and time.monotonic() < deadline:
            if self.sent % 50 == 0:
                try:
                    self.admin.check_loopback()  # no request while Envoy holds a host outside loopback
                except Exception as err:  # noqa: BLE001 - NotLoopback, or the admin API gone: stop sending
                    self.refused = str(err)
                    return
            self.sent += 1
            try:
                answer = self.session.get(f"http://127.0.0.1:{self.port}/", timeout=5)
                if answer.status_code == 200:
                    self.answered[answer.headers.get("X-Instance-Name", "?")] += 1
                else:
                    self.failures.append(f"{answer.status_code} {answer.text.strip()[:60]}")
            except Exception as err:  # noqa: BLE001 - a failed request is what is counted
                self.failures.append(type(err).__name__)
            time.sleep(INTERVAL)

    def __enter__(self) -> Client:
        self.admin.check_loopback()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class Watch:
    """Envoy's view of one cluster every 20 ms: when each address was first DRAINING, and first gone."""

    def __init__(self, admin: Any, cluster: str) -> None:
        self.admin, self.cluster = admin, cluster
        self.draining: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                hosts = self.admin.clusters().get(self.cluster, [])
            except OSError:
                continue
            now = time.monotonic()
            present = {host["address"] for host in hosts}
            for host in hosts:
                self.seen.add(host["address"])
                if host["health"] == "DRAINING":
                    self.draining.setdefault(host["address"], now)
            for address in self.seen - present:
                self.gone.setdefault(address, now)

    def away(self, address: str) -> float | None:
        """When Envoy stopped choosing the host: DRAINING or gone, whichever came first."""
        times = [t for t in (self.draining.get(address), self.gone.get(address)) if t is not None]
        return min(times) if times else None

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@dataclass
class Roll:
    """One scenario's world (Envoy's admin, the group's actions, when each instance ended) and its figures."""

    kind: str
    ec2: Any
    admin: Any
    cluster: str
    patience: float
    drain: float
    warning: float
    actions: Any  # devtools.asg.LifecycleActions
    ended: dict[str, float]
    launch: Callable[[], tuple[str, str]]
    terminate: Callable[[str], None]
    draining_s: list[float] = field(default_factory=list)
    to_completion: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    warning_to_draining: list[float] = field(default_factory=list)


def _has_host(admin: Any, cluster: str, address: str) -> bool:
    return any(host["address"] == address for host in admin.clusters().get(cluster, []))


def _lacks_host(admin: Any, cluster: str, address: str) -> bool:
    return address not in {host for host, _ in admin.addresses(cluster)}


def _ended(ended: dict[str, float], instance_id: str) -> bool:
    return instance_id in ended


def _replace_one(roll: Roll, watch: Watch, old_id: str, old_address: str) -> tuple[str, str]:
    """A new instance in (seen by Envoy), then the old one away by the scenario's path; the new one is answered."""
    from chalicelib import runtime
    from devtools import envoy_local, fleet

    new_id, new_address = roll.launch()
    runtime.deliver(fleet.event_for(roll.ec2, new_id, "state-change"))
    envoy_local.wait_for(
        "the new host", functools.partial(_has_host, roll.admin, roll.cluster, new_address), roll.patience, 0.02
    )
    started = time.monotonic()
    _take_away(roll, old_id, started)
    envoy_local.wait_for(
        "the old host to leave",
        functools.partial(_lacks_host, roll.admin, roll.cluster, old_address),
        roll.patience,
        0.02,
    )
    if roll.kind != "no-drain":
        roll.draining_s.append(roll.ended[old_id] - started)
    away = envoy_local.wait_for("the watch to see it", functools.partial(watch.away, old_address), 5, 0.02)
    roll.margins.append(roll.ended[old_id] - away)
    if roll.kind == "spot" and old_address in watch.draining:
        roll.warning_to_draining.append(watch.draining[old_address] - started)
    return new_id, new_address


def _take_away(roll: Roll, old_id: str, started: float) -> None:
    """The old instance goes: at once (no hook), after the spot warning, or through the lifecycle hook."""
    from chalicelib import runtime
    from devtools import envoy_local, fleet

    if roll.kind == "no-drain":  # no hook: the group terminates at once, ec2-eds hears the state change
        roll.terminate(old_id)
    elif roll.kind == "spot":
        runtime.deliver(fleet.event_for(roll.ec2, old_id, "spot-interruption"))
        time.sleep(roll.warning)  # the warning's two minutes, scaled down
        roll.terminate(old_id)
    else:
        runtime.deliver_lifecycle(roll.actions.start(GROUP, HOOK, old_id))
        envoy_local.wait_for(
            "the completion", functools.partial(_ended, roll.ended, old_id), roll.drain + roll.patience, 0.02
        )
        roll.to_completion.append(roll.actions.completed[old_id] - started)


def _result(roll: Roll, client: Client, olds: set[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "instances_replaced": len(roll.margins),
        "requests": client.sent,
        "failed": len(client.failures),
        "refused": client.refused,
        "failures": dict(Counter(client.failures).most_common(5)),
        "draining": _stats(roll.draining_s),
        "envoy_margin": _stats(roll.margins),
        "completions": [outcome for instance, outcome in roll.actions.calls if instance in olds],
    }
    if roll.to_completion:
        result["event_to_completion"] = _stats(roll.to_completion)
    if roll.kind == "spot":
        result["spot_warning_s"] = roll.warning
        result["warning_to_envoy_draining"] = _stats(roll.warning_to_draining)
    return result


def scenario(
    kind: str, count: int, refresh: float, drain: float, warning: float, env: dict[str, str], logs: Path
) -> dict[str, Any]:
    import boto3

    from chalicelib import config, runtime
    from chalicelib.usecases import lifecycle
    from chalicelib.usecases.scan import full_scan
    from devtools import asg, envoy_local, fleet, stack

    os.environ["DRAIN_SECONDS"] = f"{drain:g}"
    config.reset()
    ec2 = boto3.client("ec2")
    sqs = boto3.client("sqs")
    subnet = ec2.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [fleet.PUBLIC_CIDR]}])["Subnets"][0]
    tag = {"Key": "roll", "Value": kind}
    servers = fleet.InstanceServers()
    ended: dict[str, float] = {}

    def launch() -> tuple[str, str]:
        """A running instance with an address no instance of this run ever had: moto draws private
        addresses at random and may hand out one in use, whose server would then stop with the other."""
        made = fleet.run_unique(
            ec2,
            USED_ADDRESSES,
            ImageId=fleet.AMI,
            SubnetId=subnet["SubnetId"],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [tag]}],
        )
        servers.sync(ec2)
        return made["InstanceId"], made["PrivateIpAddress"]

    def terminate(instance_id: str, _: str = "CONTINUE") -> None:
        """What the group (or EC2, for spot) does: the instance goes, its server stops, its event is handled."""
        ec2.terminate_instances(InstanceIds=[instance_id])
        servers.sync(ec2)
        ended[instance_id] = time.monotonic()
        runtime.deliver(fleet.event_for(ec2, instance_id, "state-change"))

    autoscaling = boto3.client("autoscaling")
    actions = asg.LifecycleActions(autoscaling, on_complete=terminate)
    url = sqs.get_queue_url(QueueName=config.settings().drain_queue)["QueueUrl"]
    runtime.reset()
    runtime._lifecycle = lifecycle.Lifecycle(sqs, lambda region: actions, config.settings())
    stop_poller = threading.Event()
    poller = threading.Thread(
        target=asg.poll_drain_queue, args=(sqs, url, runtime.complete_drains, stop_poller), daemon=True
    )
    api, base = stack.start_chalice(
        stack.free_port(), {**env, "CDS_EDS_REFRESH_SECONDS": f"{refresh:g}"}, log=logs / f"chalice-{kind}.log"
    )
    envoy = None
    try:
        import requests

        instances = [launch() for _ in range(count)]
        filters = [{"kvPair": {"key": tag["Key"], "value": tag["Value"]}}]
        body: dict[str, Any] = {
            "spec": {"awsEc2": {"region": "us-east-1", "port": fleet.DEMO_PORT, "filters": filters}}
        }
        namespace = kind.replace("-", "")
        requests.put(f"{base}/upstreams/{namespace}/web", json=body, timeout=30).raise_for_status()
        full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
        cluster = f"web_{namespace}"
        port = stack.free_port()
        api_port = int(base.rsplit(":", 1)[1])
        config_ = envoy_local.bootstrap(
            stack.free_port(),
            [envoy_local.listener(port, [envoy_local.route(cluster)])],
            [envoy_local.eds_cluster(cluster, refresh), envoy_local.api_cluster(api_port)],
        )
        envoy = envoy_local.Envoy(config_, logs / f"envoy-{kind}")
        admin = envoy.admin
        patience = 10 * refresh + 30
        envoy_local.wait_for("the hosts", lambda: len(admin.addresses(cluster)) == count, patience)
        poller.start()
        roll = Roll(kind, ec2, admin, cluster, patience, drain, warning, actions, ended, launch, terminate)
        with Watch(admin, cluster) as watch, Client(admin, port) as client:
            time.sleep(4 * INTERVAL * 10)  # steady traffic before the first replacement
            for old_id, old_address in list(instances):
                instances.append(_replace_one(roll, watch, old_id, old_address))
            time.sleep(4 * INTERVAL * 10)
        return _result(roll, client, {i for i, _ in instances[:count]})
    finally:
        stop_poller.set()
        if poller.is_alive():
            poller.join(timeout=10)
        if envoy is not None:
            envoy.stop()
        api.stop()
        servers.close()


def measure(
    scenarios: tuple[str, ...], count: int, refresh: float, drain: float, warning: float, logs: Path
) -> dict[str, Any]:
    import boto3

    from devtools import envoy_local, fleet, stack

    moto, endpoint = stack.start_moto(stack.free_port(), logs / "moto.log")
    try:
        env = envoy_local.no_proxy_environment(stack.aws_environment(endpoint))
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        os.environ.clear()  # this process measures, nothing else: ec2-eds runs in it against the emulator
        os.environ.update(env)
        from chalicelib import cli, config
        from chalicelib.observability import logger

        logger.setLevel("ERROR")
        with contextlib.redirect_stdout(io.StringIO()):  # stdout is for the results
            if cli.main(["bootstrap"]) != 0:
                raise RuntimeError("bootstrap failed")
        ec2 = boto3.client("ec2")
        fleet.loopback_subnets(ec2)
        boto3.client("sqs").create_queue(QueueName=config.settings().drain_queue)
        autoscaling = boto3.client("autoscaling")
        autoscaling.create_launch_configuration(
            LaunchConfigurationName="roll", ImageId=fleet.AMI, InstanceType="t3.micro"
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchConfigurationName="roll",
            MinSize=0,
            MaxSize=0,
            AvailabilityZones=["us-east-1a"],
        )
        autoscaling.put_lifecycle_hook(
            AutoScalingGroupName=GROUP,
            LifecycleHookName=HOOK,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=300,
            DefaultResult="CONTINUE",
        )
        results: dict[str, Any] = {
            "envoy": envoy_local.version(),
            "instances": count,
            "refresh_delay_s": refresh,
            "drain_s": drain,
            "retry_policy": None,
        }
        for kind in scenarios:
            with contextlib.redirect_stdout(io.StringIO()):
                results[kind] = scenario(kind, count, refresh, drain, warning, env, logs)
        return results
    finally:
        moto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rolling", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--refresh-delay", type=float, default=1.0, help="Envoy's EDS refresh_delay, seconds (1)")
    parser.add_argument("--drain", type=float, default=2.0, help="DRAIN_SECONDS (2 = 2 x refresh_delay)")
    parser.add_argument("--spot-warning", type=float, default=4.0, help="the spot warning, scaled down (4 s)")
    parser.add_argument("--instances", type=int, default=4, help="the group's size (4)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--merge", metavar="FILE", help="also write the figures into FILE's `rolling` (results.json)")
    args = parser.parse_args(argv)
    scenarios = tuple(args.scenarios.split(","))
    if not set(scenarios) <= set(SCENARIOS):
        parser.error(f"scenarios are {', '.join(SCENARIOS)}")
    logs = Path(tempfile.mkdtemp(prefix="ec2-eds-rolling-"))
    try:
        results = measure(scenarios, args.instances, args.refresh_delay, args.drain, args.spot_warning, logs)
    except BaseException:
        print(f"rolling failed: the logs are in {logs}", file=sys.stderr)
        raise
    if args.merge:  # the goals evaluated again with these figures in
        from .run import save_merged

        save_merged(Path(args.merge), "rolling_generated", rolling=results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
