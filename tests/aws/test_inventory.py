"""Ec2Inventory: DescribeInstances under an upstream's credentials (moto, and a Stubber for pages and errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.stub import Stubber

from chalicelib.config import settings
from chalicelib.domain.spec import Credentials
from chalicelib.edges import clients
from chalicelib.edges.clients import ClientFactory
from chalicelib.edges.credentials import CredentialResolver
from chalicelib.edges.inventory import DiscoveryError, Ec2Inventory

RUNNING_FILTER = [{"Name": "instance-state-name", "Values": ["running"]}]
OWN_ROLE = Credentials()


@pytest.fixture
def factory(aws: None) -> ClientFactory:
    return ClientFactory(settings())


@pytest.fixture
def inventory(factory: ClientFactory) -> Ec2Inventory:
    return Ec2Inventory(factory, CredentialResolver(factory))


def stub_instance(instance_id: str, ip: str) -> dict[str, Any]:
    return {
        "InstanceId": instance_id,
        "State": {"Name": "running", "Code": 16},
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "PrivateIpAddress": ip,
    }


def test_only_running_instances_are_listed(inventory: Ec2Inventory, launch: Callable[..., list[str]], ec2: Any) -> None:
    running = launch({"role": "web"}, count=2)
    stopped = launch({"role": "web"})
    terminated = launch({"role": "web"})
    ec2.stop_instances(InstanceIds=stopped)
    ec2.terminate_instances(InstanceIds=terminated)

    listed = inventory.list_running(OWN_ROLE, "us-east-1")

    assert sorted(i.instance_id for i in listed) == sorted(running)
    assert {i.state for i in listed} == {"running"}


def test_running_is_filtered_on_the_aws_side(inventory: Ec2Inventory, factory: ClientFactory) -> None:
    sent: list[dict[str, Any]] = []
    factory.client("ec2", "us-east-1").meta.events.register(
        "before-parameter-build.ec2.DescribeInstances", lambda params, **_: sent.append(dict(params))
    )

    inventory.list_running(OWN_ROLE, "us-east-1")

    assert len(sent) == 1
    assert sent[0]["Filters"] == RUNNING_FILTER


def test_thirty_instances_cost_one_request(inventory: Ec2Inventory, launch: Callable[..., list[str]]) -> None:
    ids = launch({"role": "web"}, count=30)

    with clients.counting() as calls:
        listed = inventory.list_running(OWN_ROLE, "us-east-1")

    assert sorted(i.instance_id for i in listed) == sorted(ids)
    assert calls.get("ec2:DescribeInstances") == 1


def test_every_page_is_read(inventory: Ec2Inventory, factory: ClientFactory) -> None:
    client = factory.client("ec2", "us-east-1")
    with Stubber(client) as stub:
        stub.add_response(
            "describe_instances",
            {
                "Reservations": [
                    {
                        "ReservationId": "r-1",
                        "Instances": [stub_instance("i-01", "10.0.0.1"), stub_instance("i-02", "10.0.0.2")],
                    }
                ],
                "NextToken": "page-2",
            },
            expected_params={"Filters": RUNNING_FILTER, "MaxResults": 1000},
        )
        stub.add_response(
            "describe_instances",
            {"Reservations": [{"ReservationId": "r-2", "Instances": [stub_instance("i-03", "10.0.0.3")]}]},
            expected_params={"Filters": RUNNING_FILTER, "MaxResults": 1000, "NextToken": "page-2"},
        )

        listed = inventory.list_running(OWN_ROLE, "us-east-1")

        stub.assert_no_pending_responses()
    assert [(i.instance_id, i.private_ip) for i in listed] == [
        ("i-01", "10.0.0.1"),
        ("i-02", "10.0.0.2"),
        ("i-03", "10.0.0.3"),
    ]


def test_instance_fields_are_mapped(
    inventory: Ec2Inventory, launch: Callable[..., list[str]], instance_info: Callable[..., dict[str, Any]]
) -> None:
    [instance_id] = launch({"Name": "web-1", "gloo-tag": "group1", "empty": ""})
    aws_view = instance_info(instance_id)

    [instance] = inventory.list_running(OWN_ROLE, "us-east-1")

    assert instance.instance_id == instance_id
    assert instance.state == "running"
    assert instance.private_ip == aws_view["PrivateIpAddress"]
    assert instance.public_ip == aws_view["PublicIpAddress"]
    assert instance.public_ip and instance.private_ip != instance.public_ip
    assert instance.zone == aws_view["Placement"]["AvailabilityZone"]
    assert instance.zone.startswith("us-east-1")
    assert sorted(instance.tags) == [("Name", "web-1"), ("empty", ""), ("gloo-tag", "group1")]
    assert instance.instance_type == "t3.micro"
    assert instance.vpc_id == aws_view["VpcId"]
    assert instance.subnet_id == aws_view["SubnetId"]


def test_an_instance_without_a_public_address_has_none(
    inventory: Ec2Inventory, launch: Callable[..., list[str]], ec2: Any
) -> None:
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    [instance_id] = launch(subnet_id=subnet)

    [instance] = inventory.list_running(OWN_ROLE, "us-east-1")

    assert instance.instance_id == instance_id
    assert instance.public_ip is None
    assert instance.private_ip.startswith("10.20.1.")
    assert (instance.vpc_id, instance.subnet_id) == (vpc, subnet)


def test_the_region_is_the_upstreams(inventory: Ec2Inventory, launch: Callable[..., list[str]]) -> None:
    east = launch(region="us-east-1")
    west = launch(region="us-west-2")

    assert [i.instance_id for i in inventory.list_running(OWN_ROLE, "us-west-2")] == west
    assert [i.instance_id for i in inventory.list_running(OWN_ROLE, "us-east-1")] == east


def test_describe_answers_the_named_instances(
    inventory: Ec2Inventory, launch: Callable[..., list[str]], ec2: Any
) -> None:
    first, second, third = launch({"role": "web"}, count=3)
    ec2.stop_instances(InstanceIds=[second])

    described = inventory.describe(OWN_ROLE, "us-east-1", [second, first, first])

    assert sorted((i.instance_id, i.state) for i in described) == sorted([(first, "running"), (second, "stopped")])


def test_describe_of_an_unknown_instance_is_empty(inventory: Ec2Inventory, launch: Callable[..., list[str]]) -> None:
    launch({"role": "web"})

    assert inventory.describe(OWN_ROLE, "us-east-1", ["i-0123456789abcdef0"]) == []


def test_describe_of_no_ids_asks_nothing(inventory: Ec2Inventory, launch: Callable[..., list[str]]) -> None:
    launch({"role": "web"})

    with clients.counting() as calls:
        assert inventory.describe(OWN_ROLE, "us-east-1", []) == []
    assert calls.total() == 0


def test_describe_of_known_and_unknown_ids_answers_the_known_ones(
    inventory: Ec2Inventory, launch: Callable[..., list[str]]
) -> None:
    [known] = launch({"role": "web"})

    described = inventory.describe(OWN_ROLE, "us-east-1", [known, "i-0123456789abcdef0"])

    assert [i.instance_id for i in described] == [known]


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "AccessDenied", "InternalError"])
def test_aws_errors_become_discovery_errors_with_the_aws_code(
    inventory: Ec2Inventory, factory: ClientFactory, code: str
) -> None:
    with Stubber(factory.client("ec2", "us-east-1")) as stub:
        stub.add_client_error(
            "describe_instances",
            service_error_code=code,
            service_message="You are not authorized to perform this operation.",
            http_status_code=403 if code != "InternalError" else 500,
        )
        with pytest.raises(DiscoveryError) as caught:
            inventory.list_running(OWN_ROLE, "us-east-1")

    assert caught.value.code == code
    assert code in str(caught.value)
    assert "us-east-1" in str(caught.value)


def test_an_error_names_the_credentials_it_used(
    inventory: Ec2Inventory, factory: ClientFactory, put_secret: Callable[..., str]
) -> None:
    put_secret("default", "team-a", {"access_key": "AKIATEAMA00000000000", "secret_key": "s3cret-value"})
    creds = Credentials(secret=("default", "team-a"))
    client = factory.client(
        "ec2", "eu-west-1", {"aws_access_key_id": "AKIATEAMA00000000000", "aws_secret_access_key": "s3cret-value"}
    )
    with Stubber(client) as stub:
        stub.add_client_error("describe_instances", service_error_code="UnauthorizedOperation", http_status_code=403)
        with pytest.raises(DiscoveryError) as caught:
            inventory.list_running(creds, "eu-west-1")

    assert caught.value.code == "UnauthorizedOperation"
    assert "default/team-a" in str(caught.value)
    assert "s3cret-value" not in str(caught.value)


def test_credentials_that_cannot_be_had_become_a_discovery_error(inventory: Ec2Inventory) -> None:
    with clients.counting() as calls, pytest.raises(DiscoveryError) as caught:
        inventory.list_running(Credentials(secret=("default", "missing")), "us-east-1")

    assert "default/missing" in str(caught.value)
    assert calls.get("ec2:DescribeInstances") == 0


def test_a_missing_secret_gives_the_aws_code(inventory: Ec2Inventory) -> None:
    with pytest.raises(DiscoveryError) as caught:
        inventory.list_running(Credentials(secret=("default", "missing")), "us-east-1")

    assert caught.value.code == "ResourceNotFoundException"


def test_a_secret_without_json_becomes_a_discovery_error(
    inventory: Ec2Inventory, put_secret: Callable[..., str]
) -> None:
    put_secret("default", "garbled", "AKIA... and the-secret-value")

    with pytest.raises(DiscoveryError) as caught:
        inventory.list_running(Credentials(secret=("default", "garbled")), "us-east-1")

    assert "default/garbled" in str(caught.value)
    assert "the-secret-value" not in str(caught.value)


def test_listing_with_a_secret_uses_the_secrets_keys(
    inventory: Ec2Inventory, factory: ClientFactory, launch: Callable[..., list[str]], put_secret: Callable[..., str]
) -> None:
    ids = launch({"role": "web"}, count=2)
    put_secret("default", "team-a", {"access_key": "AKIATEAMA00000000000", "secret_key": "s3cret-value"})
    signers: list[str] = []
    client = factory.client(
        "ec2", "us-east-1", {"aws_access_key_id": "AKIATEAMA00000000000", "aws_secret_access_key": "s3cret-value"}
    )
    client.meta.events.register_first(
        "before-send.ec2.DescribeInstances",
        lambda request, **_: signers.append(
            request.headers["Authorization"].decode()
            if isinstance(request.headers["Authorization"], bytes)
            else request.headers["Authorization"]
        ),
    )

    listed = inventory.list_running(Credentials(secret=("default", "team-a")), "us-east-1")

    assert sorted(i.instance_id for i in listed) == sorted(ids)
    assert len(signers) == 1 and "Credential=AKIATEAMA00000000000/" in signers[0]
