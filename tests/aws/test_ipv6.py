"""IPv6 endpoints (`ipv6: true`) through the HTTP API, over moto with an IPv6-CIDR subnet."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client

from app import app
from chalicelib.edges.inventory import primary_ipv6
from tests.factories import upstream_body

ROOT = Path(__file__).resolve().parents[2]
AMI = "ami-12345678"


@pytest.fixture
def client(aws: None) -> Iterator[Any]:
    with Client(app, project_dir=str(ROOT)) as test_client:
        yield test_client.http


def dual_stack_subnet(ec2: Any) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
    block = vpc["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]  # a /56 from Amazon's pool
    network = ipaddress.ip_network(block)
    subnet = ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.1.1.0/24", Ipv6CidrBlock=str(next(network.subnets(8))))
    return str(subnet["Subnet"]["SubnetId"])


def run(ec2: Any, subnet: str, tags: dict[str, str], **extra: Any) -> str:
    answer = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        **extra,
    )
    return str(answer["Instances"][0]["InstanceId"])


V6 = {"port": 8080, "filters": [{"kvPair": {"key": "app", "value": "v6"}}]}  # the upstream of these tests


JSON = {"Content-Type": "application/json"}


def test_ipv6_and_public_ip_together_are_refused_with_the_field(client: Any) -> None:
    answer = client.put("/upstreams/ns/both", headers=JSON, body=upstream_body(**V6, ipv6=True, publicIp=True))
    assert answer.status_code == 400
    body = json.loads(answer.body)
    assert body["field"] == "spec.awsEc2.ipv6"
    assert "publicIp" in body["error"]


def test_an_ipv6_upstream_serves_primary_ipv6_addresses_everywhere(client: Any) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    subnet = dual_stack_subnet(ec2)
    with_v6 = run(ec2, subnet, {"app": "v6"}, Ipv6AddressCount=1)
    without = run(ec2, subnet, {"app": "v6"})  # IPv4 only: skipped and counted
    info = ec2.describe_instances(InstanceIds=[with_v6])["Reservations"][0]["Instances"][0]
    address = primary_ipv6(info)
    assert address is not None and ipaddress.ip_address(address).version == 6

    assert client.put("/upstreams/ns/six", headers=JSON, body=upstream_body(**V6, ipv6=True)).status_code in (200, 201)
    assert client.put("/upstreams/ns/four", headers=JSON, body=upstream_body(**V6)).status_code in (200, 201)
    assert client.post("/scan").status_code == 200

    served = json.loads(client.get("/endpoints/ns/six").body)
    assert [(e["address"], e["instance_id"]) for e in served["endpoints"]] == [(address, with_v6)]
    status = json.loads(client.get("/upstreams/ns/six").body)["status"]
    assert (status["endpoints"], status["skipped"]) == (1, 1)
    four = json.loads(client.get("/endpoints/ns/four").body)
    assert {e["instance_id"] for e in four["endpoints"]} == {with_v6, without}  # IPv4 stays the default
    assert all(ipaddress.ip_address(e["address"]).version == 4 for e in four["endpoints"])

    request = {
        "resource_names": ["six_ns"],
        "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    }
    eds = json.loads(client.post("/v3/discovery:endpoints", headers=JSON, body=json.dumps(request).encode()).body)
    socket = eds["resources"][0]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert socket == {"address": address, "port_value": 8080}

    cds_request = {"resource_names": ["six_ns"], "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}
    cds = client.post("/v3/discovery:clusters", headers={**JSON, "Host": "api"}, body=json.dumps(cds_request).encode())
    assert cds.status_code == 200 and [c["name"] for c in json.loads(cds.body)["resources"]] == ["six_ns"]

    targets = json.loads(client.get("/prometheus/targets").body)
    mine = [group for group in targets if group["labels"]["__meta_ec2eds_upstream"] == "six"]
    assert [group["targets"] for group in mine] == [[f"[{address}]:8080"]]
    assert mine[0]["labels"]["__meta_ec2_ipv6_addresses"] == f",{address},"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"Ipv6Address": "2001:db8::5", "NetworkInterfaces": []}, "2001:db8::5"),
        (
            {
                "NetworkInterfaces": [
                    {"Attachment": {"DeviceIndex": 1}, "Ipv6Addresses": [{"Ipv6Address": "2001:db8::1"}]},
                    {
                        "Attachment": {"DeviceIndex": 0},
                        "Ipv6Addresses": [
                            {"Ipv6Address": "2001:db8::2", "IsPrimaryIpv6": False},
                            {"Ipv6Address": "2001:db8::3", "IsPrimaryIpv6": True},
                        ],
                    },
                ]
            },
            "2001:db8::3",
        ),
        ({"NetworkInterfaces": [{"Attachment": {"DeviceIndex": 0}, "Ipv6Addresses": []}]}, None),
        ({}, None),
    ],
)
def test_the_primary_ipv6_address_is_the_primary_interfaces(data: dict[str, Any], expected: str | None) -> None:
    assert primary_ipv6(data) == expected
