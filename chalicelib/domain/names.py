"""How an upstream is named: its key `namespace/name` and Gloo's cluster name `name_namespace`. Pure.

The one place either is built or parsed; no pydantic, no YAML, so the read path can use it.
"""

from __future__ import annotations

import re

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # fullmatch
NOT_A_LABEL = "must be a DNS-1123 label: at most 63 lower case letters, digits and '-'"


def label_problem(value: str, field: str) -> str | None:
    """Why `value` cannot be the DNS-1123 label `field` names, or None when it can be."""
    return None if DNS1123_LABEL.fullmatch(value) else f"{field} {NOT_A_LABEL}"


def upstream_key(namespace: str, name: str) -> str:
    """An upstream's key, `namespace/name`: its id in the store and its name in messages and tags."""
    return f"{namespace}/{name}"


def cluster_name(namespace: str, name: str) -> str:
    """Gloo's cluster name for an upstream: `{name}_{namespace}`."""
    return f"{name}_{namespace}"


def parse_cluster_name(cluster: str) -> tuple[str, str] | None:
    """(namespace, name) of a cluster name, or None when it cannot be one of ours."""
    name, sep, namespace = cluster.rpartition("_")
    if not sep or not DNS1123_LABEL.fullmatch(name) or not DNS1123_LABEL.fullmatch(namespace):
        return None
    return namespace, name
