"""Helpers for the moto tests: a fleet builder, secrets, a scan, an environment guard."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from chalicelib import runtime
from chalicelib.usecases.scan import ScanSummary, full_scan
from tests import factories


@pytest.fixture
def ec2(aws: None) -> Any:
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture
def launch(aws: None) -> Callable[..., list[str]]:
    """Start instances with these tags; answers their ids."""

    def start(
        tags: dict[str, str] | None = None, count: int = 1, region: str = "us-east-1", subnet_id: str | None = None
    ) -> list[str]:
        return factories.launch(boto3.client("ec2", region_name=region), tags, count, subnet_id)

    return start


@pytest.fixture
def instance_info(aws: None) -> Callable[[str, str], dict[str, Any]]:
    """DescribeInstances' own view of one instance."""

    def info(instance_id: str, region: str = "us-east-1") -> dict[str, Any]:
        answer = boto3.client("ec2", region_name=region).describe_instances(InstanceIds=[instance_id])
        return answer["Reservations"][0]["Instances"][0]

    return info


@pytest.fixture
def put_secret(aws: None) -> Callable[..., str]:
    """Store a secret where `secretRef {namespace, name}` finds it (default prefix `ec2-eds/`)."""

    def put(namespace: str, name: str, value: dict[str, Any] | str) -> str:
        secret_id = f"ec2-eds/{namespace}/{name}"
        text = value if isinstance(value, str) else json.dumps(value)
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(Name=secret_id, SecretString=text)
        return secret_id

    return put


@pytest.fixture
def scan(aws: None) -> Callable[[], ScanSummary]:
    """One full reconcile with the process-wide store and the real Ec2Inventory."""

    def run() -> ScanSummary:
        return full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())

    return run


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """The CLI fills os.environ from the stage (setdefault): undo that after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
