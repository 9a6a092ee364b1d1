"""AssumeRole and GetSecretValue per scan, cold and warm, with and without the secret cache.

    python -m bench.credentials

Four credentials configs in two regions each (eight groups): a role, a role through a secret,
and two plain secrets, over moto in-process (counts only: no timing). Goals: one AssumeRole per
role on a cold scan (several groups of one role wait for botocore's refresh), none on a warm
scan; one GetSecretValue per secret group and scan with SECRET_CACHE_SECONDS=0 (the listing and
DescribeInstanceStatus act as one identity), none warm with the cache on.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

ROLES: dict[str, dict[str, Any]] = {
    "role": {"roleArn": "arn:aws:iam::123456789012:role/r1"},
    "keyed-role": {"roleArn": "arn:aws:iam::123456789012:role/r2", "secretRef": {"name": "a", "namespace": "default"}},
    "keyed-b": {"secretRef": {"name": "b", "namespace": "default"}},
    "keyed-c": {"secretRef": {"name": "c", "namespace": "default"}},
}
REGIONS = ("us-east-1", "eu-west-1")
OPERATIONS = ("sts:AssumeRole", "secretsmanager:GetSecretValue", "ec2:DescribeInstanceStatus")


def measure(cache_seconds: int) -> dict[str, dict[str, int]]:
    """The calls of a cold and a warm scan in a fresh moto, with SECRET_CACHE_SECONDS as given."""
    import boto3
    from moto import mock_aws

    from chalicelib import config, runtime
    from chalicelib.domain.spec import parse_upstream
    from chalicelib.edges.store import table_definitions
    from chalicelib.usecases.scan import full_scan

    os.environ["SECRET_CACHE_SECONDS"] = str(cache_seconds)
    runtime.reset()
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    with mock_aws():
        conf = config.settings()
        db = boto3.client("dynamodb", region_name=conf.home_region)
        for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
            db.create_table(**definition)
        secrets = boto3.client("secretsmanager", region_name=conf.home_region)
        for name in "abc":
            keys = {"access_key": f"AKIA{name.upper() * 16}", "secret_key": "s" * 20}
            secrets.create_secret(Name=f"{conf.secret_prefix}default/{name}", SecretString=json.dumps(keys))
        store = runtime.store()
        for name, spec in ROLES.items():
            for region in REGIONS:
                document = {
                    "metadata": {"name": f"{name}-{region}", "namespace": "bench"},
                    "spec": {"awsEc2": {"region": region, **spec}},
                }
                store.put_upstream(parse_upstream(document), "2026-01-01T00:00:00Z")
        found = {}
        for label in ("cold", "warm"):
            calls = full_scan(runtime.store(), runtime.inventory(), lambda: clock).as_dict()["aws_calls"]
            found[label] = {operation: calls.get(operation, 0) for operation in OPERATIONS}
        runtime.reset()
        return found


def main() -> int:
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    results: dict[str, Any] = {f"SECRET_CACHE_SECONDS={seconds}": measure(seconds) for seconds in (0, 300)}
    json.dump(results, sys.stdout, indent=2)
    print()
    uncached, cached = results["SECRET_CACHE_SECONDS=0"], results["SECRET_CACHE_SECONDS=300"]
    goals = {
        "cold scan: one AssumeRole per role (2)": cached["cold"]["sts:AssumeRole"] == 2,
        "warm scan: no AssumeRole": cached["warm"]["sts:AssumeRole"] == uncached["warm"]["sts:AssumeRole"] == 0,
        "uncached: one GetSecretValue per secret group and scan (6)": uncached["warm"]["secretsmanager:GetSecretValue"]
        == 6,
        "cached, warm: no GetSecretValue": cached["warm"]["secretsmanager:GetSecretValue"] == 0,
    }
    for goal, met in goals.items():
        print(f"{'met   ' if met else 'MISSED'} {goal}", file=sys.stderr)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
