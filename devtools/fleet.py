"""The demo fleet of `make run` and the e2e tests, tagged as in Gloo's EC2 tutorial.

Tags: `gloo-id` on every web instance, `gloo-tag` group1 or group2,
`version` v1.2.3 or v1.3.0; some instances stopped, one without a public
address; two for the `my-ec2-upstream` seed (`some-key`,
`some-other-key=some-value`); `app-port` on web-6 (port from a tag); two
tagged `ec2-eds/upstream=shop/web` for discovery through the named account
`demo`.

The fleet lives in a loopback VPC (127.0.0.0/16, which moto accepts): every
private address is a 127.0.x.y, so `InstanceServers` can stand in for the
instances with a small HTTP server bound on each one's private address that
answers who it is. Public addresses (54.x from moto) are served by the API
like any other but are never contacted.
"""

from __future__ import annotations

import functools
import http.server
import ipaddress
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
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
    Member("shop-2", {"ec2-eds/upstream": "shop/web", "ec2-eds/port": "8080", "version": "v1"}),
)


def _fleet_net() -> int:
    """DEMO_FLEET_NET=N: the fleet's subnets are 127.0.N.0/24 (public) and 127.0.N+1.0/24 (private).

    Two demo fleets on one machine (two `make run`s, the test suite's parallel workers) each take their
    own N, so that their instances never draw the same loopback address (and port 8080 on it)."""
    raw = os.environ.get("DEMO_FLEET_NET", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 253:
        raise SystemExit(f"DEMO_FLEET_NET={raw!r}: a number from 1 to 253 (the third octet of 127.0.N.0/24)")
    return int(raw)


VPC_CIDR = "127.0.0.0/16"
PUBLIC_CIDR, PRIVATE_CIDR = f"127.0.{_fleet_net()}.0/24", f"127.0.{_fleet_net() + 1}.0/24"


def loopback_subnets(ec2: Any) -> tuple[str, str]:
    """A VPC on 127.0.0.0/16: a subnet that maps public addresses on launch, and one that does not."""
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock=PUBLIC_CIDR, AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=public, MapPublicIpOnLaunch={"Value": True})
    private = ec2.create_subnet(VpcId=vpc, CidrBlock=PRIVATE_CIDR, AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    return public, private


def create_fleet(ec2: Any) -> dict[str, str]:
    """Launch the demo fleet in a loopback VPC; answers {member name: instance id}."""
    public, private = loopback_subnets(ec2)
    ids: dict[str, str] = {}
    for member in FLEET:
        tags = [{"Key": key, "Value": value} for key, value in {"Name": member.name, **member.tags}.items()]
        request: dict[str, Any] = {
            "ImageId": AMI,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
            "SubnetId": public if member.public else private,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
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
    files = [argument for file in SEEDS for argument in ("-f", str(EXAMPLES / file))]
    if run(["apply", *files]) != 0:  # one apply: one scan serves them all
        raise RuntimeError(f"could not apply {', '.join(SEEDS)}")
    return ids


EVENTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "events"
EVENT_KINDS = (
    "state-change",
    "tag-change",
    "spot-interruption",
    "asg-terminate-lifecycle",
    "rebalance-recommendation",
    "aws-health-scheduled-change",
)


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
    if "affectedEntities" in detail:  # AWS Health: the instance named, the change starting in 5 minutes
        event["resources"] = [instance_id]
        detail["affectedEntities"] = [{"entityValue": instance_id}]
        start = datetime.now(UTC) + timedelta(minutes=5)
        detail["startTime"] = format_datetime(start, usegmt=True)
        detail["endTime"] = format_datetime(start + timedelta(hours=1), usegmt=True)
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


# --- stand-ins for the instances: one small HTTP server per running instance --------------------------

DEMO_PORT = 8080  # what the loopback upstreams of the demo use (ec2-legacy-private, shop/web)
PORT_TAGS = ("app-port", "ec2-eds/port")


def _who(name: str, instance_id: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            address: Any = self.server.server_address
            host, port = address[0], address[1]
            body = f"{name} {instance_id} {host}:{port}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Instance-Id", instance_id)
            self.send_header("X-Instance-Name", name)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


class InstanceServers:
    """An HTTP server on each running instance's loopback private address, answering who it is.

    `sync` starts one for every running instance (on `ports` and on the port its `app-port` or
    `ec2-eds/port` tag names) and, with `follow_state`, stops those of instances no longer running,
    as a stopped machine stops answering. Only loopback addresses are ever bound.
    """

    def __init__(self, ports: tuple[int, ...] = (DEMO_PORT,)) -> None:
        self.ports = ports
        self.servers: dict[tuple[str, int], tuple[http.server.ThreadingHTTPServer, str]] = {}

    def _wanted(self, ec2: Any) -> dict[tuple[str, int], tuple[str, str]]:
        wanted: dict[tuple[str, int], tuple[str, str]] = {}
        for reservation in ec2.describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                address = instance.get("PrivateIpAddress") or ""
                if instance["State"]["Name"] != "running" or not ipaddress.ip_address(address or "0.0.0.0").is_loopback:
                    continue
                tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                ports = set(self.ports)
                ports.update(int(tags[key]) for key in PORT_TAGS if tags.get(key, "").isdigit())
                for port in ports:
                    if 1024 <= port <= 65535:
                        wanted[(address, port)] = (tags.get("Name", instance["InstanceId"]), instance["InstanceId"])
        return wanted

    def sync(self, ec2: Any, follow_state: bool = True) -> list[str]:
        """Servers for the running instances; answers what changed, one line each."""
        changes = []
        wanted = self._wanted(ec2)
        for key in [key for key in self.servers if key not in wanted and follow_state]:
            server, name = self.servers.pop(key)
            server.shutdown()
            server.server_close()
            changes.append(f"{name} stopped answering on {key[0]}:{key[1]}")
        for key, (name, instance_id) in wanted.items():
            if key in self.servers:
                continue
            try:
                server = http.server.ThreadingHTTPServer(key, _who(name, instance_id))
            except OSError as err:
                changes.append(f"{name}: cannot listen on {key[0]}:{key[1]}: {err.strerror}")
                continue
            server.daemon_threads = True
            serve = functools.partial(server.serve_forever, poll_interval=0.05)  # a stop waits one poll
            threading.Thread(target=serve, name=f"instance-{name}", daemon=True).start()
            self.servers[key] = (server, name)
            changes.append(f"{name} answers on {key[0]}:{key[1]}")
        return changes

    def close(self) -> None:
        for server, _ in self.servers.values():
            server.shutdown()
            server.server_close()
        self.servers.clear()


def main(argv: list[str] | None = None) -> int:
    """Change the demo fleet in the emulator: `python -m devtools.fleet stop web-1`."""
    import argparse

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
    _emulator_environment()
    ec2 = boto3.client("ec2")
    if args.action == "seed":
        print(json.dumps(seed(boto3.client("iam"), ec2)))
        return 0
    if args.action == "list":
        print(json.dumps(_listing(ec2), indent=2))
        return 0
    if not args.name:
        parser.error(f"{args.action} needs an instance name")
    instance = find(ec2, args.name)
    if args.action == "event":
        print(json.dumps(event_for(ec2, instance, args.tags[0] if args.tags else "state-change"), indent=2))
        return 0
    _change(ec2, args.action, instance, args.tags)
    print(json.dumps({args.action: args.name, "instance_id": instance}))
    return 0


def _emulator_environment() -> None:
    """The emulator on loopback (never through an HTTP(S)_PROXY), with its test credentials, unless set."""
    import os

    os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(filter(None, [os.environ.get(key, ""), "127.0.0.1,localhost,::1"]))
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)


def _listing(ec2: Any) -> list[dict[str, Any]]:
    answer = ec2.describe_instances()
    return [
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


def _change(ec2: Any, action: str, instance: str, tags: list[str]) -> None:
    """stop, start, terminate, tag (KEY=VALUE ...) or untag (KEY ...) one instance."""
    if action == "stop":
        ec2.stop_instances(InstanceIds=[instance])
    elif action == "start":
        ec2.start_instances(InstanceIds=[instance])
    elif action == "terminate":
        ec2.terminate_instances(InstanceIds=[instance])
    elif action == "tag":
        pairs = [tag.partition("=") for tag in tags]
        ec2.create_tags(Resources=[instance], Tags=[{"Key": k, "Value": v} for k, _, v in pairs])
    else:
        ec2.delete_tags(Resources=[instance], Tags=[{"Key": key} for key in tags])


if __name__ == "__main__":
    raise SystemExit(main())


def run_unique(ec2: Any, used: set[str], **request: Any) -> dict[str, Any]:
    """One instance (`run_instances` with `request`) whose private address no instance in `used` had.

    moto draws private addresses at random and may hand out one in use; on loopback, two instances
    on one address would share one HTTP server, and stopping one would silence the other."""
    for _ in range(50):
        made: dict[str, Any] = ec2.run_instances(MinCount=1, MaxCount=1, **request)["Instances"][0]
        if made["PrivateIpAddress"] not in used:
            used.add(made["PrivateIpAddress"])
            return made
        ec2.terminate_instances(InstanceIds=[made["InstanceId"]])
    raise RuntimeError("no unused address left in the subnet")
