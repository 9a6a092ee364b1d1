"""Gloo's upstream-level options, translated into Envoy v3 `Cluster` fields. Pure.

A Gloo Upstream carries options beside its `awsEc2` block (Gloo's API
reference, `gloo.solo.io.Upstream`): `connectionConfig`, `loadBalancerConfig`,
`healthChecks`, `outlierDetection`, `circuitBreakers`, `useHttp2`. The CDS
route (`cds.py`) puts their translation into the cluster it serves for the
upstream. Anything else, or any field of those options that is not
translated here, is refused with its path: an option is never silently
dropped. `translate` is called when a document is validated, so a refused
option is a 400 on PUT, not a surprise in Envoy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = f"type.googleapis.com/{HTTP_OPTIONS}"
DURATION = re.compile(r"\d{1,12}(\.\d{1,9})?s")
UINT32_MAX = 2**32 - 1
# Spec fields beside awsEc2 that carry no option for Envoy: accepted, not translated.
NOT_OPTIONS = frozenset({"awsEc2", "upstreamSpec", "discoveryMetadata"})


class OptionError(ValueError):
    """An option that cannot be translated; `field` is its path in the document."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


Check = Callable[[Any, str], Any]


def _duration(value: Any, path: str) -> str:
    if not isinstance(value, str) or not DURATION.fullmatch(value):
        raise OptionError(f"{path} must be a duration such as 5s or 0.25s", path)
    return value


def _positive_duration(value: Any, path: str) -> str:
    text = _duration(value, path)
    if float(text[:-1]) <= 0:
        raise OptionError(f"{path} must be longer than 0s", path)
    return text


def _uint(low: int = 0, high: int = UINT32_MAX) -> Check:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OptionError(f"{path} must be a whole number from {low} to {high}", path)
        return value

    return check


def _number(low: float, high: float) -> Check:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise OptionError(f"{path} must be a number from {low:g} to {high:g}", path)
        return float(value)

    return check


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{path} must be true or false", path)
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise OptionError(f"{path} must be a non-empty string", path)
    return value


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OptionError(f"{path} must be a mapping", path)
    return {key: item for key, item in value.items() if item is not None}  # null: the default, as in Gloo


def _fields(value: Any, path: str, table: dict[str, tuple[str, Check]], option: str) -> dict[str, Any]:
    """Each Gloo field of `value` under its Envoy name, checked; a field not in `table` is refused."""
    out: dict[str, Any] = {}
    for key, item in _mapping(value, path).items():
        if key not in table:
            raise OptionError(
                f"{path}.{key} is not translated into Envoy's cluster ({option}): remove it", f"{path}.{key}"
            )
        envoy_name, check = table[key]
        out[envoy_name] = check(item, f"{path}.{key}")
    return out


# --- connectionConfig ------------------------------------------------------------------------------


def _keepalive(value: Any, path: str) -> dict[str, Any]:
    def seconds(item: Any, where: str) -> int:
        text = _duration(item, where)
        return max(1, -(-int(float(text[:-1]) * 1000) // 1000))  # Envoy takes whole seconds: rounded up

    return _fields(
        value,
        path,
        {
            "keepaliveProbes": ("keepalive_probes", _uint()),
            "keepaliveTime": ("keepalive_time", seconds),
            "keepaliveInterval": ("keepalive_interval", seconds),
        },
        "connectionConfig.tcpKeepalive",
    )


def _headers_action(value: Any, path: str) -> str:
    if value not in ("ALLOW", "REJECT_REQUEST", "DROP_HEADER"):
        raise OptionError(f"{path} must be ALLOW, REJECT_REQUEST or DROP_HEADER", path)
    return str(value)


COMMON_HTTP = {
    "idleTimeout": ("idle_timeout", _duration),
    "maxHeadersCount": ("max_headers_count", _uint(1)),
    "maxStreamDuration": ("max_stream_duration", _duration),
    "headersWithUnderscoresAction": ("headers_with_underscores_action", _headers_action),
}


def _connection(value: Any, path: str, cluster: dict[str, Any], http: dict[str, Any]) -> None:
    fields = _mapping(value, path)
    for key, item in fields.items():
        where = f"{path}.{key}"
        if key == "connectTimeout":
            cluster["connect_timeout"] = _positive_duration(item, where)
        elif key == "maxRequestsPerConnection":
            if _uint()(item, where):  # 0: no limit, Envoy's default
                http.setdefault("common_http_protocol_options", {})["max_requests_per_connection"] = item
        elif key == "perConnectionBufferLimitBytes":
            cluster["per_connection_buffer_limit_bytes"] = _uint()(item, where)
        elif key == "tcpKeepalive":
            cluster["upstream_connection_options"] = {"tcp_keepalive": _keepalive(item, where)}
        elif key == "commonHttpProtocolOptions":
            common = _fields(item, where, COMMON_HTTP, "connectionConfig.commonHttpProtocolOptions")
            http.setdefault("common_http_protocol_options", {}).update(common)
        else:
            raise OptionError(f"{where} is not translated into Envoy's cluster (connectionConfig): remove it", where)


# --- loadBalancerConfig ----------------------------------------------------------------------------


def _slow_start(value: Any, path: str) -> dict[str, Any]:
    out = _fields(
        value,
        path,
        {
            "slowStartWindow": ("slow_start_window", _duration),
            "aggression": ("aggression", _number(1e-9, 1e9)),
            "minWeightPercent": ("min_weight_percent", _number(0, 100)),
        },
        "slowStartConfig",
    )
    if "aggression" in out:  # a RuntimeDouble in Envoy: its default value, under a runtime key of our own
        out["aggression"] = {"default_value": out["aggression"], "runtime_key": "ec2_eds.slow_start.aggression"}
    if "min_weight_percent" in out:
        out["min_weight_percent"] = {"value": out["min_weight_percent"]}
    return out


POLICIES = {
    "roundRobin": "ROUND_ROBIN",
    "leastRequest": "LEAST_REQUEST",
    "random": "RANDOM",
    "ringHash": "RING_HASH",
    "maglev": "MAGLEV",
}


def _policy(key: str, value: Any, path: str, cluster: dict[str, Any]) -> None:
    if "_policy" in cluster:
        raise OptionError(f"{path}: give one load balancing policy, not several", path)
    cluster["_policy"] = (key,)
    cluster["lb_policy"] = POLICIES[key]
    where = f"{path}.{key}"
    if key == "roundRobin":
        config = _fields(value, where, {"slowStartConfig": ("slow_start_config", _slow_start)}, key)
        if config:
            cluster["round_robin_lb_config"] = config
    elif key == "leastRequest":
        config = _fields(
            value,
            where,
            {"choiceCount": ("choice_count", _uint(2)), "slowStartConfig": ("slow_start_config", _slow_start)},
            key,
        )
        if config:
            cluster["least_request_lb_config"] = config
    elif key == "ringHash":
        config = _fields(value, where, {"ringHashConfig": ("ring_hash_config", _mapping)}, key)
        ring = _fields(
            config.get("ring_hash_config", {}),
            f"{where}.ringHashConfig",
            {
                "minimumRingSize": ("minimum_ring_size", _uint(1, 8_388_608)),
                "maximumRingSize": ("maximum_ring_size", _uint(1, 8_388_608)),
            },
            "ringHash.ringHashConfig",
        )
        if ring:
            cluster["ring_hash_lb_config"] = ring
    else:  # random, maglev: no settings in Gloo
        _fields(value, where, {}, key)


def _load_balancer(value: Any, path: str, cluster: dict[str, Any]) -> None:
    common: dict[str, Any] = {}
    for key, item in _mapping(value, path).items():
        where = f"{path}.{key}"
        if key == "healthyPanicThreshold":
            common["healthy_panic_threshold"] = {"value": _number(0, 100)(item, where)}
        elif key == "updateMergeWindow":
            common["update_merge_window"] = _duration(item, where)
        elif key == "localityWeightedLbConfig":
            _fields(item, where, {}, key)
            common["locality_weighted_lb_config"] = {}
        elif key in POLICIES:
            _policy(key, item, path, cluster)
        else:
            raise OptionError(f"{where} is not translated into Envoy's cluster (loadBalancerConfig): remove it", where)
    cluster.pop("_policy", None)
    if common:
        cluster["common_lb_config"] = common


# --- circuitBreakers -------------------------------------------------------------------------------

CIRCUIT_BREAKERS = {
    "maxConnections": ("max_connections", _uint()),
    "maxPendingRequests": ("max_pending_requests", _uint()),
    "maxRequests": ("max_requests", _uint()),
    "maxRetries": ("max_retries", _uint()),
}


# --- healthChecks (Gloo carries Envoy's v2 HealthCheck) -------------------------------------------------


def _statuses(value: Any, path: str) -> list[dict[str, int]]:
    if not isinstance(value, list) or not value:
        raise OptionError(f"{path} must list status ranges {{start, end}}", path)
    ranges = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        pair = _fields(item, where, {"start": ("start", _uint(100, 599)), "end": ("end", _uint(101, 600))}, "range")
        if set(pair) != {"start", "end"} or pair["start"] >= pair["end"]:
            raise OptionError(f"{where} needs start < end (end exclusive), from 100 to 600", where)
        ranges.append(pair)
    return ranges


def _http_check(value: Any, path: str) -> dict[str, Any]:
    fields = _fields(
        value,
        path,
        {
            "path": ("path", _text),
            "host": ("host", _text),
            "expectedStatuses": ("expected_statuses", _statuses),
            "useHttp2": ("use_http2", _bool),
        },
        "httpHealthCheck",
    )
    if "path" not in fields:
        raise OptionError(f"{path}.path is required", f"{path}.path")
    if fields.pop("use_http2", False):
        fields["codec_client_type"] = "HTTP2"
    return fields


def _payload(value: Any, path: str) -> dict[str, str]:
    fields = _fields(value, path, {"text": ("text", _text)}, "payload")
    if not fields or not re.fullmatch(r"([0-9a-fA-F]{2})+", fields["text"]):
        raise OptionError(f"{path}.text must be hex-encoded bytes", f"{path}.text")
    return fields


def _tcp_check(value: Any, path: str) -> dict[str, Any]:
    def receive(item: Any, where: str) -> list[dict[str, str]]:
        if not isinstance(item, list):
            raise OptionError(f"{where} must be a list of payloads", where)
        return [_payload(part, f"{where}[{index}]") for index, part in enumerate(item)]

    return _fields(value, path, {"send": ("send", _payload), "receive": ("receive", receive)}, "tcpHealthCheck")


def _grpc_check(value: Any, path: str) -> dict[str, Any]:
    return _fields(
        value, path, {"serviceName": ("service_name", _text), "authority": ("authority", _text)}, "grpcHealthCheck"
    )


HEALTH_CHECK = {
    "timeout": ("timeout", _positive_duration),
    "interval": ("interval", _positive_duration),
    "initialJitter": ("initial_jitter", _duration),
    "intervalJitter": ("interval_jitter", _duration),
    "intervalJitterPercent": ("interval_jitter_percent", _uint(0, 100)),
    "unhealthyThreshold": ("unhealthy_threshold", _uint()),
    "healthyThreshold": ("healthy_threshold", _uint()),
    "reuseConnection": ("reuse_connection", _bool),
    "noTrafficInterval": ("no_traffic_interval", _positive_duration),
    "unhealthyInterval": ("unhealthy_interval", _positive_duration),
    "unhealthyEdgeInterval": ("unhealthy_edge_interval", _positive_duration),
    "healthyEdgeInterval": ("healthy_edge_interval", _positive_duration),
    "httpHealthCheck": ("http_health_check", _http_check),
    "tcpHealthCheck": ("tcp_health_check", _tcp_check),
    "grpcHealthCheck": ("grpc_health_check", _grpc_check),
}
HEALTH_REQUIRED = ("timeout", "interval", "unhealthyThreshold", "healthyThreshold")
HEALTH_KINDS = ("http_health_check", "tcp_health_check", "grpc_health_check")


def _health_checks(value: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise OptionError(f"{path} must be a list of health checks", path)
    checks = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        check = _fields(item, where, HEALTH_CHECK, "healthChecks")
        for required in HEALTH_REQUIRED:
            if required not in item:
                raise OptionError(f"{where}.{required} is required", f"{where}.{required}")
        kinds = [kind for kind in HEALTH_KINDS if kind in check]
        if len(kinds) != 1:
            raise OptionError(f"{where} needs exactly one of httpHealthCheck, tcpHealthCheck or grpcHealthCheck", where)
        checks.append(check)
    return checks


# --- outlierDetection (Gloo carries Envoy's v2 OutlierDetection) ----------------------------------------

_PERCENT = _uint(0, 100)
OUTLIER_DETECTION = {
    "consecutive5xx": ("consecutive_5xx", _uint()),
    "interval": ("interval", _positive_duration),
    "baseEjectionTime": ("base_ejection_time", _positive_duration),
    "maxEjectionTime": ("max_ejection_time", _positive_duration),
    "maxEjectionPercent": ("max_ejection_percent", _PERCENT),
    "enforcingConsecutive5xx": ("enforcing_consecutive_5xx", _PERCENT),
    "enforcingSuccessRate": ("enforcing_success_rate", _PERCENT),
    "successRateMinimumHosts": ("success_rate_minimum_hosts", _uint()),
    "successRateRequestVolume": ("success_rate_request_volume", _uint()),
    "successRateStdevFactor": ("success_rate_stdev_factor", _uint()),
    "consecutiveGatewayFailure": ("consecutive_gateway_failure", _uint()),
    "enforcingConsecutiveGatewayFailure": ("enforcing_consecutive_gateway_failure", _PERCENT),
    "splitExternalLocalOriginErrors": ("split_external_local_origin_errors", _bool),
    "consecutiveLocalOriginFailure": ("consecutive_local_origin_failure", _uint()),
    "enforcingConsecutiveLocalOriginFailure": ("enforcing_consecutive_local_origin_failure", _PERCENT),
    "enforcingLocalOriginSuccessRate": ("enforcing_local_origin_success_rate", _PERCENT),
    "failurePercentageThreshold": ("failure_percentage_threshold", _PERCENT),
    "enforcingFailurePercentage": ("enforcing_failure_percentage", _PERCENT),
    "enforcingFailurePercentageLocalOrigin": ("enforcing_failure_percentage_local_origin", _PERCENT),
    "failurePercentageMinimumHosts": ("failure_percentage_minimum_hosts", _uint()),
    "failurePercentageRequestVolume": ("failure_percentage_request_volume", _uint()),
}


# --- the whole spec --------------------------------------------------------------------------------


def translate(spec: dict[str, Any], prefix: str = "spec") -> dict[str, Any]:
    """Envoy `Cluster` fields (proto JSON) for the options in `spec`, the mapping that holds `awsEc2`."""
    cluster: dict[str, Any] = {}
    http: dict[str, Any] = {}
    use_http2 = False
    for key, value in spec.items():
        where = f"{prefix}.{key}"
        if key in NOT_OPTIONS or value is None:
            continue
        if key == "useHttp2":
            use_http2 = _bool(value, where)
        elif key == "connectionConfig":
            _connection(value, where, cluster, http)
        else:
            _option(key, value, where, cluster)
    if http or use_http2:
        protocol: dict[str, Any] = {"http2_protocol_options": {}} if use_http2 else {"http_protocol_options": {}}
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: {"@type": HTTP_OPTIONS_TYPE, **http, "explicit_http_config": protocol}
        }
    return cluster


def _option(key: str, value: Any, where: str, cluster: dict[str, Any]) -> None:
    """One option that sets cluster fields of its own (not the shared HTTP protocol options)."""
    if key == "loadBalancerConfig":
        _load_balancer(value, where, cluster)
    elif key == "circuitBreakers":
        thresholds = _fields(value, where, CIRCUIT_BREAKERS, key)
        if thresholds:
            cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    elif key == "healthChecks":
        checks = _health_checks(value, where)
        if checks:
            cluster["health_checks"] = checks
    elif key == "outlierDetection":
        cluster["outlier_detection"] = _fields(value, where, OUTLIER_DETECTION, key)
    else:
        raise OptionError(
            f"{where} is not an upstream option ec2-eds translates into Envoy's cluster "
            "(connectionConfig, loadBalancerConfig, healthChecks, outlierDetection, circuitBreakers, useHttp2): "
            "remove it",
            where,
        )


def translate_document(document: dict[str, Any]) -> dict[str, Any]:
    """The cluster fields of a parsed Upstream document: options sit beside its awsEc2 block."""
    spec = document.get("spec") or {}
    if "upstreamSpec" in spec:  # the older form: the options are in spec.upstreamSpec too
        for key, value in spec.items():
            if key not in NOT_OPTIONS and value is not None:
                raise OptionError(
                    f"spec.{key}: in the spec.upstreamSpec form, options go in spec.upstreamSpec", f"spec.{key}"
                )
        return translate(spec["upstreamSpec"], "spec.upstreamSpec")
    return translate(spec, "spec")


def probes(cluster: dict[str, Any]) -> bool:
    """Whether these fields make Envoy connect to hosts by itself (active health checks, outlier ejection)."""
    return bool(cluster.get("health_checks")) or "outlier_detection" in cluster
