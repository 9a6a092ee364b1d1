"""The demo fleet of `make run` and the e2e tests, tagged as in Gloo's EC2 tutorial.

Tags: `gloo-id` on every web instance, `gloo-tag` group1 or group2,
`version` v1.2.3 or v1.3.0; some instances stopped, one without a public
address; two for the `my-ec2-upstream` seed (`some-key`,
`some-other-key=some-value`); `app-port` on web-6 (port from a tag); two
tagged `ec2-eds/upstream=shop/web` for discovery through the named account
`demo`.
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
ACCOUNT = ("demo", "123456789012", "role/ec2-eds-demo", "us-east-1")  # the named account discovery looks into
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
    Member("web-6", {"gloo-id": "abcde123", "gloo-tag": "group2", "version": "v1.2.3", "app-port": "9090"}),
    Member("web-7", {"gloo-id": "abcde123", "gloo-tag": "group2", "version": "v1.3.0"}, running=False),
    Member("api-1", {"some-key": "x", "some-other-key": "some-value"}),
    Member("api-2", {"some-key": "y", "some-other-key": "other-value"}),
    # Discovered from tags (make run turns DISCOVERY_ENABLED on): an upstream shop/web appears.
    Member("shop-1", {"ec2-eds/upstream": "shop/web", "ec2-eds/port": "8080", "version": "v2"}),
    Member("shop-2", {"ec2-eds/upstream": "shop/web", "version": "v1"}),
)


def create_fleet(ec2: Any) -> dict[str, str]:
    """Launch the demo fleet; answers {member name: instance id}."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    private_subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="172.31.250.0/24", AvailabilityZone="us-east-1b")
    ids: dict[str, str] = {}
    for member in FLEET:
        tags = [{"Key": key, "Value": value} for key, value in {"Name": member.name, **member.tags}.items()]
        request: dict[str, Any] = {
            "ImageId": AMI,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
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
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}
        ],
    }
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    for name, namespace in SECRETS:
        if (
            run(
                [
                    "secret",
                    "create-aws",
                    "--name",
                    name,
                    "--namespace",
                    namespace,
                    "--access-key",
                    "AKIAIOSFODNN7EXAMPLE",
                    "--secret-key",
                    "demo-secret-key",
                ]
            )
            != 0
        ):
            raise RuntimeError(f"could not store secret {namespace}/{name}")
    name, account_id, role, regions = ACCOUNT
    if run(["account", "add", name, "--account-id", account_id, "--assume-role", role, "--regions", regions]) != 0:
        raise RuntimeError("could not add the demo account")
    ids = create_fleet(ec2)
    for file in SEEDS:
        if run(["apply", "-f", str(EXAMPLES / file)]) != 0:
            raise RuntimeError(f"could not apply {file}")
    return ids


EVENTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "events"
EVENT_KINDS = ("state-change", "tag-change", "spot-interruption", "asg-terminate-lifecycle")


def event_for(ec2: Any, instance_id: str, kind: str) -> dict[str, Any]:
    """The EventBridge event AWS would send now for this instance, from the real-shape samples."""
    if kind not in EVENT_KINDS:
        raise SystemExit(f"error: event kind must be one of {', '.join(EVENT_KINDS)}")
    sample = "ec2-state-change" if kind == "state-change" else kind
    event: dict[str, Any] = json.loads((EVENTS / f"{sample}.json").read_text())
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    event["resources"] = [f"arn:aws:ec2:us-east-1:{event['account']}:instance/{instance_id}"]
    detail = event["detail"]
    if "instance-id" in detail:
        detail["instance-id"] = instance_id
    if "state" in detail:
        detail["state"] = described["State"]["Name"]
    if "tags" in detail:
        detail["tags"] = {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}
    if "EC2InstanceId" in detail:
        detail["EC2InstanceId"] = instance_id
    return event


def find(ec2: Any, name: str) -> str:
    """The id of the demo instance called `name` (its Name tag)."""
    answer = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [name]}])
    ids = [
        i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"
    ]
    if not ids:
        raise SystemExit(f"error: no demo instance named {name}")
    return str(ids[0])


def main(argv: list[str] | None = None) -> int:
    """Change the demo fleet in the emulator: `python -m devtools.fleet stop web-1`."""
    import argparse
    import os

    import boto3

    parser = argparse.ArgumentParser(prog="python -m devtools.fleet", description=main.__doc__)
    parser.add_argument("action", choices=["seed", "stop", "start", "terminate", "tag", "untag", "list", "event"])
    parser.add_argument(
        "name", nargs="?", help="the instance's Name tag (web-1 ... web-7, api-1, api-2, shop-1, shop-2)"
    )
    parser.add_argument(
        "tags", nargs="*", help="KEY=VALUE for tag, KEY for untag; for event the kind: " + ", ".join(EVENT_KINDS)
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    ec2 = boto3.client("ec2")
    if args.action == "seed":
        print(json.dumps(seed(boto3.client("iam"), ec2)))
        return 0
    if args.action == "list":
        answer = ec2.describe_instances()
        rows = [
            {
                "id": i["InstanceId"],
                "state": i["State"]["Name"],
                "public_ip": i.get("PublicIpAddress"),
                "private_ip": i.get("PrivateIpAddress"),
                "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
            }
            for r in answer["Reservations"]
            for i in r["Instances"]
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not args.name:
        parser.error(f"{args.action} needs an instance name")
    instance = find(ec2, args.name)
    if args.action == "event":
        print(json.dumps(event_for(ec2, instance, args.tags[0] if args.tags else "state-change"), indent=2))
        return 0
    if args.action == "stop":
        ec2.stop_instances(InstanceIds=[instance])
    elif args.action == "start":
        ec2.start_instances(InstanceIds=[instance])
    elif args.action == "terminate":
        ec2.terminate_instances(InstanceIds=[instance])
    elif args.action == "tag":
        pairs = [tag.partition("=") for tag in args.tags]
        ec2.create_tags(Resources=[instance], Tags=[{"Key": k, "Value": v} for k, _, v in pairs])
    else:
        ec2.delete_tags(Resources=[instance], Tags=[{"Key": key} for key in args.tags])
    print(json.dumps({args.action: args.name, "instance_id": instance}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
