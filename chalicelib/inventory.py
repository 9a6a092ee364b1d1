"""Listing EC2 instances under an upstream's credentials.

`InstanceLister` is the seam the reconcile logic sees; `Ec2Inventory` is
the AWS implementation (a boto3 paginator, `instance-state-name=running`
filtered on the AWS side, tag filters matched locally so one listing serves
every upstream of a group).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from .aws import ClientFactory
from .credentials import CredentialResolver, CredentialsError, aws_message, error_code, transport_problem
from .endpoints import Instance
from .spec import Credentials


class DiscoveryError(Exception):
    """Listing failed for one (credentials, region) group; `code` is the AWS error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class InstanceLister(Protocol):
    def list_running(self, credentials: Credentials, region: str) -> list[Instance]: ...

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]: ...


def to_instance(data: dict[str, Any]) -> Instance:
    """The fields discovery uses, from one DescribeInstances `Instances` entry."""
    return Instance(
        instance_id=data["InstanceId"],
        state=data.get("State", {}).get("Name", "unknown"),
        zone=data.get("Placement", {}).get("AvailabilityZone", ""),
        private_ip=data.get("PrivateIpAddress") or None,
        public_ip=data.get("PublicIpAddress") or None,
        tags=tuple(sorted((tag["Key"], tag.get("Value", "")) for tag in data.get("Tags", ()) or ())),
        instance_type=data.get("InstanceType"),
        vpc_id=data.get("VpcId"),
        subnet_id=data.get("SubnetId"),
    )


class Ec2Inventory:
    """InstanceLister over EC2's DescribeInstances."""

    def __init__(self, factory: ClientFactory, resolver: CredentialResolver) -> None:
        self._factory = factory
        self._resolver = resolver

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        return self._describe(credentials, region, Filters=[{"Name": "instance-state-name", "Values": ["running"]}])

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        ids = sorted(set(instance_ids))
        # A filter, not InstanceIds: an unknown id must not fail the request for the known ones.
        return self._describe(credentials, region, Filters=[{"Name": "instance-id", "Values": ids}]) if ids else []

    def _describe(self, credentials: Credentials, region: str, **request: Any) -> list[Instance]:
        try:
            client = self._factory.client("ec2", region, self._resolver.client_args(credentials))
            paginator = client.get_paginator("describe_instances")
            pages = paginator.paginate(**request, PaginationConfig={"PageSize": 1000})
            return [
                to_instance(instance)
                for page in pages
                for reservation in page.get("Reservations", ())
                for instance in reservation.get("Instances", ())
            ]
        except CredentialsError as err:
            raise DiscoveryError(str(err), err.code) from err
        except ClientError as err:
            code = error_code(err)
            message = aws_message(err, self._resolver.scrub)
            if not message and code.isdigit():  # an HTTP status, not an AWS error: e.g. an unknown region
                message = f": HTTP {code} from the EC2 endpoint of {region}; is {region} a region of this partition?"
            raise DiscoveryError(
                f"ec2:DescribeInstances in {region} as {credentials.describe()} failed ({code}){message}", code
            ) from err
        except (BotoCoreError, ResponseParserError) as err:  # the latter: an HTML page from a proxy, say
            raise DiscoveryError(
                f"ec2:DescribeInstances in {region} as {credentials.describe()} failed: {transport_problem(err)}",
                type(err).__name__,
            ) from err
