"""Envoy's ClusterLoadAssignment (proto3 JSON) from endpoints: the one Envoy endpoint renderer.

The server's REST EDS (`chalicelib.render.eds`) and the sidecar's file EDS
(`sidecar/agent.py`) both render with it, so Envoy sees the same assignment
whichever way it gets it. The sidecar runs beside a gateway with nothing but
the standard library, so this module imports nothing else, not even the rest
of `chalicelib`. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class LbEndpoint(Protocol):
    """What Envoy is told of one endpoint (`chalicelib.domain.endpoints.Endpoint` is one)."""

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def zone(self) -> str: ...

    @property
    def health(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]: ...


def lb_endpoint(endpoint: LbEndpoint) -> dict[str, Any]:
    """One `LbEndpoint`: address, health, subset metadata (`metadataTags` and the instance id), weight if not 1."""
    rendered: dict[str, Any] = {
        "endpoint": {"address": {"socket_address": {"address": endpoint.address, "port_value": endpoint.port}}},
        "health_status": endpoint.health,
    }
    subset = dict(endpoint.metadata)
    if endpoint.instance_id:
        subset["instance_id"] = endpoint.instance_id
    if subset:  # for Envoy's subset load balancer
        rendered["metadata"] = {"filter_metadata": {"envoy.lb": subset}}
    if endpoint.weight != 1:  # Envoy's default
        rendered["load_balancing_weight"] = endpoint.weight
    return rendered


def assignment(cluster_name: str, region: str | None, endpoints: Iterable[LbEndpoint]) -> dict[str, Any]:
    """A ClusterLoadAssignment: one locality per zone, sorted; endpoints keep their order within it.

    A cluster with no endpoints has no `endpoints` field (proto3's empty
    list); an empty region or zone is left out of its locality.
    """
    cla: dict[str, Any] = {"@type": CLA_TYPE, "cluster_name": cluster_name}
    zones: dict[str, list[dict[str, Any]]] = {}
    for endpoint in endpoints:
        zones.setdefault(endpoint.zone, []).append(lb_endpoint(endpoint))
    if zones:
        cla["endpoints"] = [
            {"locality": _locality(region, zone), "lb_endpoints": lb_endpoints}
            for zone, lb_endpoints in sorted(zones.items())
        ]
    return cla


def _locality(region: str | None, zone: str) -> dict[str, str]:
    return {key: value for key, value in (("region", region), ("zone", zone)) if value}


def discovery_response(version_info: str, assignments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A DiscoveryResponse carrying the given ClusterLoadAssignments, in order."""
    return {"version_info": version_info, "resources": list(assignments), "type_url": CLA_TYPE}
