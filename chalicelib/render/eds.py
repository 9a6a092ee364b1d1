"""Envoy REST-JSON EDS: DiscoveryRequest in, DiscoveryResponse out. Pure.

Envoy's REST subscription POSTs a `DiscoveryRequest` (snake_case proto
JSON) naming the clusters it wants, with the `version_info` of its last
accepted update. The answer holds exactly one `ClusterLoadAssignment` per
requested name; an unknown cluster gets one with no endpoints (never an
error, so Envoy's start does not stall). When the request's version is
current the server answers 304 with no body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.domain.endpoints import EndpointSet
from chalicelib.domain.spec import SpecError, load_json
from chalicelib.render import cla
from chalicelib.render.cla import CLA_TYPE

ABSENT_VERSION = "absent"
MAX_CLUSTERS = 100


class EdsRequestError(ValueError):
    """A DiscoveryRequest the server cannot answer (400); `field` is the offending field's path or None."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class EdsRequest:
    clusters: tuple[str, ...]
    version_info: str | None


def _field(body: dict[str, Any], snake: str, camel: str) -> Any:
    return body[snake] if snake in body else body.get(camel)


def parse_request(raw: bytes | str | None) -> EdsRequest:
    """Validate a DiscoveryRequest body (snake_case, or the lowerCamelCase proto JSON also allows)."""
    if not raw:
        raise EdsRequestError("the body must be a DiscoveryRequest (JSON), got nothing")
    try:
        body = load_json(raw)
    except SpecError as err:
        raise EdsRequestError(f"the body is not a strict JSON DiscoveryRequest: {err.message}", err.field) from None
    if not isinstance(body, dict):
        raise EdsRequestError("the body must be a JSON object (a DiscoveryRequest)")
    type_url = _field(body, "type_url", "typeUrl")
    if type_url not in (None, "", CLA_TYPE):
        raise EdsRequestError(f"type_url must be {CLA_TYPE}, got {type_url!r}", "type_url")
    names = _field(body, "resource_names", "resourceNames")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise EdsRequestError("resource_names must list the cluster names to load (name_namespace)", "resource_names")
    if len(names) > MAX_CLUSTERS:
        raise EdsRequestError(
            f"at most {MAX_CLUSTERS} clusters per request, got {len(names)}: split them over several requests",
            "resource_names",
        )
    version = _field(body, "version_info", "versionInfo")
    if version is not None and not isinstance(version, str):
        raise EdsRequestError("version_info must be a string", "version_info")
    return EdsRequest(tuple(dict.fromkeys(names)), version or None)


def cluster_version(endpoint_set: EndpointSet | None) -> str:
    return endpoint_set.version if endpoint_set is not None else ABSENT_VERSION


def response_version(clusters: Sequence[str], sets: dict[str, EndpointSet | None]) -> str:
    """One cluster: its set's version. Several: a digest of theirs, so it changes exactly with them."""
    if len(clusters) == 1:
        return cluster_version(sets.get(clusters[0]))
    joined = "\n".join(f"{name}={cluster_version(sets.get(name))}" for name in clusters)
    return hashlib.sha256(joined.encode()).hexdigest()[:20]


def assignment(cluster: str, endpoint_set: EndpointSet | None) -> dict[str, Any]:
    """A ClusterLoadAssignment (proto JSON) for one cluster, endpoints grouped by locality."""
    if endpoint_set is None:
        return cla.assignment(cluster, None, ())
    return cla.assignment(cluster, endpoint_set.region, endpoint_set.endpoints)


def response(clusters: Sequence[str], sets: dict[str, EndpointSet | None]) -> dict[str, Any]:
    """The DiscoveryResponse for the requested clusters, in request order."""
    return cla.discovery_response(
        response_version(clusters, sets), [assignment(name, sets.get(name)) for name in clusters]
    )
