"""Test data the suites share: Gloo upstream documents, instances launched in moto, listers that act mid-scan.

One builder per thing, so a change to a document's shape or to how an instance is launched is made once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chalicelib.domain.spec import Credentials, Upstream, parse_upstream
from chalicelib.edges.inventory import InstanceLister

REGION = "us-east-1"
NAMESPACE = "gloo-system"
AMI = "ami-12c6146b"  # one of moto's default images
WEB = [{"kvPair": {"key": "app", "value": "web"}}]  # the filter of the app=web fleets


def upstream_document(name: str = "web", namespace: str = NAMESPACE, **ec2: Any) -> dict[str, Any]:
    """A Gloo `Upstream` document; `ec2` are the fields of its `spec.awsEc2` (region defaults to us-east-1)."""
    return {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"awsEc2": {"region": REGION, **ec2}},
    }


def upstream(name: str = "web", namespace: str = NAMESPACE, **ec2: Any) -> Upstream:
    """The parsed upstream of `upstream_document`."""
    return parse_upstream(upstream_document(name, namespace, **ec2))


def upstream_body(**ec2: Any) -> bytes:
    """The JSON body of a PUT /upstreams/{namespace}/{name}: the spec alone, the URL names it."""
    return json.dumps({"spec": {"awsEc2": {"region": REGION, **ec2}}}).encode()


def launch(ec2: Any, tags: dict[str, str] | None = None, count: int = 1, subnet_id: str | None = None) -> list[str]:
    """`count` running instances with these tags, launched through the `ec2` client; their ids, in launch order."""
    request: dict[str, Any] = {"ImageId": AMI, "MinCount": count, "MaxCount": count, "InstanceType": "t3.micro"}
    if tags:
        request["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    if subnet_id:
        request["SubnetId"] = subnet_id
    return [str(instance["InstanceId"]) for instance in ec2.run_instances(**request)["Instances"]]


def launch_one(ec2: Any, tags: dict[str, str]) -> str:
    """One running instance with these tags; its id."""
    (instance,) = launch(ec2, tags)
    return instance


class ActingLister:
    """A lister that runs `action` right after a listing (`on="list_running"`) or a describe (`on="describe"`)
    and before its caller writes: the competing writer of a race. `once` (the default) acts on the first only.
    """

    def __init__(
        self, inner: InstanceLister, action: Callable[[], Any], on: str = "list_running", once: bool = True
    ) -> None:
        self.inner = inner
        self.action, self.on, self.once, self.acted = action, on, once, 0

    def _after(self, name: str) -> None:
        if name == self.on and not (self.once and self.acted):
            self.acted += 1
            self.action()

    def list_running(self, credentials: Credentials, region: str) -> list[Any]:
        listing = self.inner.list_running(credentials, region)
        self._after("list_running")
        return listing

    def describe(self, credentials: Credentials, region: str, instance_ids: Any) -> list[Any]:
        found = self.inner.describe(credentials, region, instance_ids)
        self._after("describe")
        return found
