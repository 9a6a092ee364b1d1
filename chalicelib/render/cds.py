"""Envoy REST-JSON CDS: one EDS cluster per upstream, served from the stored documents. Pure.

Envoy's REST CDS subscription POSTs a `DiscoveryRequest` whose `type_url`
is `Cluster` and whose `resource_names` is empty (state of the world). The
answer lists one cluster per valid upstream, named `{name}_{namespace}`, of
type EDS; each polls its endpoints by REST EDS from the API cluster that
polled CDS (Envoy sends that cluster's name as `Host`), or from the cluster a
setting names. Gloo's upstream options become the cluster's fields
(`gloo_options`). The version is a digest of the cluster list, so it changes
exactly when the list does; the same version gets 304.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chalicelib.domain import gloo_options
from chalicelib.domain.envoy import CLUSTER_TYPE, MAX_NAMES
from chalicelib.domain.spec import Upstream
from chalicelib.render.eds import _field

# A name Envoy can give a static cluster: what it sends as Host, so what the EDS config must name.
DEFAULT_REFRESH_SECONDS = 5.0  # CDS_EDS_REFRESH_SECONDS' default
API_CLUSTER = re.compile(r"[A-Za-z0-9._:\[\]-]{1,253}")


class CdsRequestError(ValueError):
    """A DiscoveryRequest the server cannot answer (400)."""


@dataclass(frozen=True, slots=True)
class CdsRequest:
    names: tuple[str, ...]  # empty: every cluster (Envoy's REST CDS asks for the state of the world)
    version_info: str | None


@dataclass(frozen=True, slots=True)
class EdsSource:
    """Where the served clusters poll their endpoints."""

    api_cluster: str
    refresh_delay: float = 5.0
    request_timeout: float = 5.0
    connect_timeout: float = 2.0


def parse_request(raw: bytes | str | None) -> CdsRequest:
    """Validate a DiscoveryRequest for clusters (snake_case or lowerCamelCase proto JSON)."""
    if not raw:
        raise CdsRequestError("the body must be a DiscoveryRequest (JSON), got nothing")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise CdsRequestError("the body is not JSON: expected a DiscoveryRequest") from None
    if not isinstance(body, dict):
        raise CdsRequestError("the body must be a JSON object (a DiscoveryRequest)")
    type_url = _field(body, "type_url", "typeUrl")
    if type_url not in (None, "", CLUSTER_TYPE):
        raise CdsRequestError(f"type_url must be {CLUSTER_TYPE}, got {type_url!r}")
    names = _field(body, "resource_names", "resourceNames") or []
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise CdsRequestError("resource_names must be a list of cluster names (empty: all of them)")
    if len(names) > MAX_NAMES:
        raise CdsRequestError(f"at most {MAX_NAMES} resource_names")
    version = _field(body, "version_info", "versionInfo")
    if version is not None and not isinstance(version, str):
        raise CdsRequestError("version_info must be a string")
    return CdsRequest(tuple(dict.fromkeys(names)), version or None)


def api_cluster(setting: str | None, host: str | None) -> str:
    """The static cluster the served clusters poll for EDS: the setting, else the Host Envoy sent."""
    name = (setting or host or "").strip()
    if not name:
        raise CdsRequestError("no Host header: set CDS_EDS_CLUSTER to the name of Envoy's API cluster")
    if not API_CLUSTER.fullmatch(name):
        raise CdsRequestError(f"Host {name[:60]!r} cannot be the name of Envoy's API cluster")
    return name


def _seconds(value: float) -> str:
    return f"{value:g}s"


def cluster(upstream: Upstream, source: EdsSource) -> dict[str, Any]:
    """The EDS cluster (proto JSON) Envoy gets for one upstream."""
    served: dict[str, Any] = {
        "@type": CLUSTER_TYPE,
        "name": upstream.cluster_name,
        "type": "EDS",
        "connect_timeout": _seconds(source.connect_timeout),
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                "api_config_source": {
                    "api_type": "REST",
                    "transport_api_version": "V3",
                    "cluster_names": [source.api_cluster],
                    "refresh_delay": _seconds(source.refresh_delay),
                    "request_timeout": _seconds(source.request_timeout),
                },
            }
        },
    }
    if upstream.ec2.metadataTags:  # the tags ec2-eds copies into filter_metadata["envoy.lb"]: one subset each
        served["lb_subset_config"] = {
            "fallback_policy": "ANY_ENDPOINT",
            "subset_selectors": [{"keys": [key]} for key in upstream.ec2.metadataTags],
        }
    served.update(gloo_options.translate_document(upstream.document))
    return served


def response_version(clusters: list[dict[str, Any]]) -> str:
    """A digest of the served list: it changes exactly when a cluster is added, removed or changed."""
    text = json.dumps(clusters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def clusters(upstreams: Iterable[Upstream], source: EdsSource, names: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The clusters of `upstreams` (of those `names` lists, when it lists any), sorted by name."""
    wanted = set(names)
    served = []
    for upstream in sorted(upstreams, key=lambda u: u.cluster_name):
        if wanted and upstream.cluster_name not in wanted:
            continue
        try:
            served.append(cluster(upstream, source))
        except gloo_options.OptionError:  # stored before a check existed: its status says Rejected
            continue
    return served


def response(served: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": response_version(served), "resources": served, "type_url": CLUSTER_TYPE}
