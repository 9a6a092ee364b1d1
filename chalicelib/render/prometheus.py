"""Prometheus HTTP service discovery target groups. Pure.

Labels are named as Prometheus' own `ec2_sd_configs` names them, so
relabelling rules written for ec2_sd work unchanged; the upstream adds its
own under `__meta_ec2eds_`. One target group per endpoint, since every
instance carries labels of its own. A target carries about 700 bytes of
labels, so past some 7,000 targets one answer would exceed Lambda's 6 MB
response limit: `?shards=N&shard=K` splits the targets into N stable shards,
one `http_sd_configs` entry each.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Any

from chalicelib.domain.endpoints import Endpoint, EndpointSet

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def sanitize(name: str) -> str:
    """Prometheus' strutil.SanitizeLabelName: every invalid character becomes `_`."""
    return _INVALID.sub("_", name)


def shard_of(endpoint_set: EndpointSet, endpoint: Endpoint, shards: int) -> int:
    """The shard of a target among `shards` (stable: a hash of upstream and instance)."""
    return zlib.crc32(f"{endpoint_set.key}/{endpoint.instance_id}".encode()) % shards if shards > 1 else 0


def target_groups(sets: Iterable[EndpointSet], shard: int = 0, shards: int = 1) -> list[dict[str, Any]]:
    """One target group per endpoint; with `shards` > 1 only those of shard `shard`."""
    groups = []
    for endpoint_set in sets:
        for endpoint in endpoint_set.endpoints:
            if shard_of(endpoint_set, endpoint, shards) != shard:
                continue
            labels = {
                "__meta_ec2_instance_id": endpoint.instance_id,
                "__meta_ec2_instance_state": "running",
                "__meta_ec2_availability_zone": endpoint.zone,
                "__meta_ec2_region": endpoint_set.region,
            }
            optional = {
                "__meta_ec2_private_ip": endpoint.private_ip,
                "__meta_ec2_public_ip": endpoint.public_ip,
                # ec2_sd lists every interface's IPv6 addresses, comma-wrapped; ec2-eds knows the primary one.
                "__meta_ec2_ipv6_addresses": f",{endpoint.ipv6}," if endpoint.ipv6 else None,
                "__meta_ec2_instance_type": endpoint.instance_type,
                "__meta_ec2_vpc_id": endpoint.vpc_id,
                "__meta_ec2_primary_subnet_id": endpoint.subnet_id,
                # ec2_sd lists the subnets of every interface, comma-wrapped for regex relabelling.
                "__meta_ec2_subnet_id": f",{endpoint.subnet_id}," if endpoint.subnet_id else None,
            }
            labels.update({name: value for name, value in optional.items() if value})
            for key, value in sorted(endpoint.tags):
                labels[f"__meta_ec2_tag_{sanitize(key)}"] = value
            labels.update(
                {
                    "__meta_ec2eds_namespace": endpoint_set.namespace,
                    "__meta_ec2eds_upstream": endpoint_set.name,
                    "__meta_ec2eds_cluster_name": endpoint_set.cluster_name,
                    "__meta_ec2eds_health": endpoint.health,
                }
            )
            host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
            groups.append({"targets": [f"{host}:{endpoint.port}"], "labels": labels})
    return groups
