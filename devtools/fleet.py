"""The demo fleet of `make run` and the e2e tests, tagged as in Gloo's EC2 tutorial.

Tags: `gloo-id` on every web instance, `gloo-tag` group1 or group2,
`version` v1.2.3 or v1.3.0; some instances stopped, one without a public
address; two for the `my-ec2-upstream` seed (`some-key`,
`some-other-key=some-value`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "upstreams"
SEEDS = ("seed-ec2-demo-upstream.yaml", "seed-my-ec2-upstream.yaml", "demo-extra.yaml")
AMI = "ami-12c6146b"  # one of the images moto knows
ROLE_NAME = "describe-ec2-demo"
SECRETS = (("gloo-tag-group1", "default"), ("my-aws-secret", "default"))


@dataclass(frozen=True)
class Member:
    name: str
    tags: dict[str, str]
    public: bool = True
    running: bool = True


FLEET = (
    Member("web-1", {"gloo-id": "abcde123", "gloo-tag": "group1", "version": "v1.2.3"}),
    Member("web-2", {"gloo-id": "abcde123", "gloo-tag": "group1", "version": "v1.2.3"}),
    Member("web-3", {"gloo-id": "abcde123", "gloo-tag": "group1", "version": "v1.2.3"}, running=False),
    Member("web-4", {"gloo-id": "abcde123", "gloo-tag": "group1", "version": "v1.2.3"}, public=False),
    Member("web-5", {"gloo-id": "abcde123", "gloo-tag": "group1", "version": "v1.3.0"}),
    Member("web-6", {"gloo-id": "abcde123", "gloo-tag": "group2", "version": "v1.2.3"}),
    Member("web-7", {"gloo-id": "abcde123", "gloo-tag": "group2", "version": "v1.3.0"}, running=False),
    Member("api-1", {"some-key": "x", "some-other-key": "some-value"}),
    Member("api-2", {"some-key": "y", "some-other-key": "other-value"}),
)


def create_fleet(ec2: Any) -> dict[str, str]:
    """Launch the demo fleet; answers {member name: instance id}."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    private_subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="172.31.250.0/24", AvailabilityZone="us-east-1b")
    ids: dict[str, str] = {}
    for member in FLEET:
        tags = [{"Key": key, "Value": value} for key, value in {"Name": member.name, **member.tags}.items()]
        request: dict[str, Any] = {
            "ImageId": AMI, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if not member.public:
            request["SubnetId"] = private_subnet["Subnet"]["SubnetId"]
        ids[member.name] = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
    stopped = [ids[member.name] for member in FLEET if not member.running]
    if stopped:
        ec2.stop_instances(InstanceIds=stopped)
    return ids


def seed(iam: Any, ec2: Any) -> dict[str, str]:
    """Tables, the role and secrets the seed upstreams name, the fleet, the upstreams."""
    run = cli.main
    if run(["bootstrap"]) != 0:
        raise RuntimeError("bootstrap failed")
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    for name, namespace in SECRETS:
        if run(["secret", "create-aws", "--name", name, "--namespace", namespace,
                "--access-key", "AKIAIOSFODNN7EXAMPLE", "--secret-key", "demo-secret-key"]) != 0:
            raise RuntimeError(f"could not store secret {namespace}/{name}")
    ids = create_fleet(ec2)
    for file in SEEDS:
        if run(["apply", "-f", str(EXAMPLES / file)]) != 0:
            raise RuntimeError(f"could not apply {file}")
    return ids
