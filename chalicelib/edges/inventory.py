"""Listing EC2 instances under an upstream's credentials.

`InstanceLister` is the seam the reconcile logic sees; `Ec2Inventory` is
the AWS implementation (a boto3 paginator, `instance-state-name=running`
filtered on the AWS side, tag filters matched locally so one listing serves
every upstream of a group).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from chalicelib.domain.endpoints import Instance
from chalicelib.domain.spec import Credentials
from chalicelib.edges.clients import ClientFactory, Identity
from chalicelib.edges.credentials import (
    CredentialResolver,
    CredentialsError,
    aws_message,
    error_code,
    transport_problem,
)


class DiscoveryError(Exception):
    """Listing failed for one (credentials, region) group; `code` is the AWS error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class InstanceLister(Protocol):
    def list_running(self, credentials: Credentials, region: str) -> list[Instance]: ...

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]: ...


# DescribeInstanceStatus' scheduled events that take an instance away (instance-reboot is the owner's own).
DRAIN_CODES = frozenset({"instance-retirement", "instance-stop", "system-reboot", "system-maintenance"})
IMPAIRED = "impaired"


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """A scheduled event on an instance that will take it out of service from `not_before`."""

    instance_id: str
    code: str
    not_before: datetime
    not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    """One group's DescribeInstanceStatus: the impaired instances and the scheduled events to drain for."""

    impaired: frozenset[str] = frozenset()
    scheduled: tuple[ScheduledEvent, ...] = ()


def to_health(statuses: Iterable[dict[str, Any]]) -> InstanceHealth:
    """Impaired instance or system status, and the pending (not completed or canceled) drain events."""
    impaired: set[str] = set()
    scheduled: list[ScheduledEvent] = []
    for entry in statuses:
        instance_id = entry["InstanceId"]
        states = ((entry.get("InstanceStatus") or {}).get("Status"), (entry.get("SystemStatus") or {}).get("Status"))
        if IMPAIRED in states:
            impaired.add(instance_id)
        for event in entry.get("Events") or ():
            description = str(event.get("Description") or "")
            if event.get("Code") not in DRAIN_CODES or not isinstance(event.get("NotBefore"), datetime):
                continue
            if description.startswith(("[Completed]", "[Canceled]")):  # how EC2 marks events that are over
                continue
            scheduled.append(ScheduledEvent(instance_id, event["Code"], event["NotBefore"], event.get("NotAfter")))
    return InstanceHealth(frozenset(impaired), tuple(scheduled))


def instance_health(lister: Any, credentials: Credentials, region: str) -> InstanceHealth | None:
    """The group's instance health, if the lister can tell (an optional method: fakes without it
    report nothing, and the scan keeps each endpoint's last known health)."""
    method = getattr(lister, "instance_health", None)
    return None if method is None else method(credentials, region)  # type: ignore[no-any-return]


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
        ipv6=primary_ipv6(data),
    )


def primary_ipv6(data: dict[str, Any]) -> str | None:
    """The instance's primary IPv6 address: `Ipv6Address` when EC2 gives it, else that of the
    primary interface (device 0): the one marked `IsPrimaryIpv6`, else its first."""
    if data.get("Ipv6Address"):
        return str(data["Ipv6Address"])
    interfaces = data.get("NetworkInterfaces") or ()
    primary = [eni for eni in interfaces if (eni.get("Attachment") or {}).get("DeviceIndex", 0) == 0]
    for eni in primary[:1]:
        addresses = [entry["Ipv6Address"] for entry in eni.get("Ipv6Addresses") or () if entry.get("Ipv6Address")]
        marked = [
            entry["Ipv6Address"] for entry in eni.get("Ipv6Addresses") or () if entry.get("IsPrimaryIpv6") is True
        ]
        found = marked or addresses
        if found:
            return str(found[0])
    return None


class Ec2Inventory:
    """InstanceLister over EC2's DescribeInstances.

    A group's listing resolves its credentials (reads its secret, unless cached) once: the
    DescribeInstanceStatus that follows it acts as the identity the listing used.
    """

    def __init__(self, factory: ClientFactory, resolver: CredentialResolver) -> None:
        self._factory = factory
        self._resolver = resolver
        self._lock = threading.Lock()
        self._listed_as: dict[tuple[Credentials, str], Identity | None] = {}  # the last listing's, per group

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        identity = self._identity(credentials)
        listed = self._describe(
            credentials, region, identity, Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
        )
        with self._lock:
            self._listed_as[(credentials, region)] = identity
        return listed

    def list_page(
        self, credentials: Credentials, region: str, token: str | None, page_size: int = 1000
    ) -> tuple[list[Instance], str | None]:
        """One page of DescribeInstances (running instances) and the token of the next, None at the end:
        a group too large for one invocation continues from there in the next."""
        request: dict[str, Any] = {
            "Filters": [{"Name": "instance-state-name", "Values": ["running"]}],
            "MaxResults": max(5, min(page_size, 1000)),
            **({"NextToken": token} if token else {}),
        }
        found: list[Instance] = []
        answers: list[dict[str, Any]] = []
        identity = self._identity(credentials)
        self._describe(credentials, region, identity, _page=answers, **request)
        with self._lock:
            self._listed_as[(credentials, region)] = identity
        for answer in answers:
            found.extend(
                to_instance(instance)
                for reservation in answer.get("Reservations", ())
                for instance in reservation.get("Instances", ())
            )
        return found, (answers[-1].get("NextToken") or None) if answers else None

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        ids = sorted(set(instance_ids))
        if not ids:
            return []
        # A filter, not InstanceIds: an unknown id must not fail the request for the known ones.
        filters = [{"Name": "instance-id", "Values": ids}]
        return self._describe(credentials, region, self._identity(credentials), Filters=filters)

    def _identity(self, credentials: Credentials) -> Identity | None:
        try:
            return self._resolver.identity(credentials)
        except CredentialsError as err:
            raise DiscoveryError(str(err), err.code) from err

    def _health_identity(self, credentials: Credentials, region: str) -> Identity | None:
        """The identity the group was just listed as (its secret is not read again), else resolved now."""
        with self._lock:
            if (credentials, region) in self._listed_as:
                return self._listed_as.pop((credentials, region))
        return self._resolver.identity(credentials)

    def instance_health(self, credentials: Credentials, region: str) -> InstanceHealth:
        """DescribeInstanceStatus, every page: running instances with their checks and scheduled events."""
        operation = "ec2:DescribeInstanceStatus"
        try:
            client = self._factory.client("ec2", region, self._health_identity(credentials, region))
            pages = client.get_paginator("describe_instance_status").paginate(
                IncludeAllInstances=False, PaginationConfig={"PageSize": 1000}
            )
            return to_health(entry for page in pages for entry in page.get("InstanceStatuses", ()))
        except Exception as err:  # noqa: BLE001 - named like a listing failure: the scan keeps the last health
            raise self._failure(operation, credentials, region, err) from err

    def _failure(self, operation: str, credentials: Credentials, region: str, err: Exception) -> DiscoveryError:
        if isinstance(err, CredentialsError):
            return DiscoveryError(str(err), err.code)
        if isinstance(err, ClientError):
            code = error_code(err)
            return DiscoveryError(
                f"{operation} in {region} as {credentials.describe()} failed ({code})"
                f"{aws_message(err, self._resolver.scrub)}",
                code,
            )
        if isinstance(err, BotoCoreError | ResponseParserError):
            return DiscoveryError(
                f"{operation} in {region} as {credentials.describe()} failed: {transport_problem(err)}",
                type(err).__name__,
            )
        return DiscoveryError(f"{operation} failed unexpectedly ({type(err).__name__})", type(err).__name__)

    def _describe(
        self,
        credentials: Credentials,
        region: str,
        identity: Identity | None,
        _page: list[dict[str, Any]] | None = None,
        **request: Any,
    ) -> list[Instance]:
        """Every page (or, with `_page`, the one page asked for, appended there), errors named."""
        try:
            client = self._factory.client("ec2", region, identity)
            if _page is not None:
                _page.append(client.describe_instances(**request))
                return []
            paginator = client.get_paginator("describe_instances")
            pages = paginator.paginate(**request, PaginationConfig={"PageSize": 1000})
            return [
                to_instance(instance)
                for page in pages
                for reservation in page.get("Reservations", ())
                for instance in reservation.get("Instances", ())
            ]
        except CredentialsError as err:  # an assumed role's credentials failed to renew while signing
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
