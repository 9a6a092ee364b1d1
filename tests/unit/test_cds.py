"""REST CDS and Gloo's upstream options: what Envoy gets parses strictly with Envoy's own protos and rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 - registers the type
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import config
from chalicelib.domain import gloo_options
from chalicelib.domain.spec import SpecError, parse_upstream
from chalicelib.edges.store import MemoryStore
from chalicelib.render import cds
from chalicelib.usecases import admin, api
from tests.profiles import examples
from tests.unit.test_doc_examples import pgv_violations

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CDS_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def doc(name: str = "web", namespace: str = "shop", legacy: bool = False, **options: Any) -> dict[str, Any]:
    block = {"region": "us-east-1", "filters": [{"key": "app"}]}
    spec = {"upstreamSpec": {"awsEc2": block, **options}} if legacy else {"awsEc2": block, **options}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def strict(response: dict[str, Any]) -> list[cluster_pb2.Cluster]:
    """Parsed as Envoy parses it: unknown fields and bad enums fail, and Envoy's validation rules hold."""
    parsed = json_format.ParseDict(response, discovery_pb2.DiscoveryResponse())
    assert parsed.type_url == CDS_TYPE
    clusters = []
    for resource in parsed.resources:
        cluster = cluster_pb2.Cluster()
        assert resource.Unpack(cluster)
        assert pgv_violations(cluster) == [], cluster.name
        clusters.append(cluster)
    return clusters


def request(version: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type_url": CDS_TYPE, "node": {"id": "gw", "cluster": "gw"}, **extra}
    if version:
        body["version_info"] = version
    return json.dumps(body).encode()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    monkeypatch.delenv("CDS_EDS_CLUSTER", raising=False)
    config.reset()
    memory = MemoryStore()
    memory.put_upstream(parse_upstream(doc("web", "shop")), "2026-01-01T00:00:00Z")
    memory.put_upstream(parse_upstream(doc("api", "team-a", legacy=True)), "2026-01-01T00:00:00Z")
    return memory


def test_one_eds_cluster_per_upstream_polling_the_cluster_envoy_named_as_host(store: MemoryStore) -> None:
    reply = api.discovery_clusters(store, request(), "eds.example.com")
    assert reply.status == 200
    clusters = strict(json.loads(reply.text()))
    assert [c.name for c in clusters] == ["api_team-a", "web_shop"]
    for cluster in clusters:
        assert cluster.type == cluster_pb2.Cluster.EDS
        source = cluster.eds_cluster_config.eds_config
        assert source.api_config_source.cluster_names == ["eds.example.com"]
        assert source.api_config_source.api_type == source.api_config_source.REST
        assert source.api_config_source.transport_api_version == config_source_pb2.V3 == source.resource_api_version


def test_a_setting_names_another_api_cluster(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_EDS_CLUSTER", "ec2-eds-internal")
    monkeypatch.setenv("CDS_EDS_REFRESH_SECONDS", "0.5")
    config.reset()
    conf = config.settings()  # as app.py passes them
    reply = api.discovery_clusters(store, request(), "127.0.0.1", conf.cds_eds_cluster, conf.cds_eds_refresh_seconds)
    (cluster, _) = strict(json.loads(reply.text()))
    api_source = cluster.eds_cluster_config.eds_config.api_config_source
    assert api_source.cluster_names == ["ec2-eds-internal"]
    assert (api_source.refresh_delay.seconds, api_source.refresh_delay.nanos) == (0, 500_000_000)


def test_the_version_changes_exactly_with_the_list_and_the_same_version_is_304(store: MemoryStore) -> None:
    first = json.loads(api.discovery_clusters(store, request(), "h").text())
    again = api.discovery_clusters(store, request(first["version_info"]), "h")
    assert (again.status, again.text()) == (304, "")
    store.put_upstream(parse_upstream(doc("new", "shop")), "2026-01-01T00:00:01Z")
    grown = json.loads(api.discovery_clusters(store, request(first["version_info"]), "h").text())
    assert grown["version_info"] != first["version_info"]
    assert [r["name"] for r in grown["resources"]] == ["api_team-a", "new_shop", "web_shop"]
    store.delete_upstream("shop", "new")
    back = json.loads(api.discovery_clusters(store, request(grown["version_info"]), "h").text())
    assert back["version_info"] == first["version_info"]
    # Another API cluster is another answer.
    other = json.loads(api.discovery_clusters(store, request(first["version_info"]), "other").text())
    assert other["version_info"] != first["version_info"]


def test_no_upstream_is_an_empty_list_not_an_error() -> None:
    answer = api.discovery_clusters(MemoryStore(), request(), "h")
    assert answer.status == 200 and strict(json.loads(answer.text())) == []


@pytest.mark.parametrize(
    ("body", "host", "needle"),
    [
        (None, "h", "got nothing"),
        (b"[]", "h", "JSON object"),
        (b"{", "h", "not JSON"),
        (json.dumps({"type_url": "type.googleapis.com/x"}).encode(), "h", "type_url"),
        (json.dumps({"resource_names": "web_shop"}).encode(), "h", "resource_names"),
        (json.dumps({"version_info": 3}).encode(), "h", "version_info"),
        (b"{}", None, "CDS_EDS_CLUSTER"),
        (b"{}", "bad host/with a slash", "cannot be"),
    ],
)
def test_a_bad_request_is_400_json(store: MemoryStore, body: bytes | None, host: str | None, needle: str) -> None:
    reply = api.discovery_clusters(store, body, host)
    assert reply.status == 400
    assert needle in json.loads(reply.text())["error"]


def test_named_resources_narrow_the_answer(store: MemoryStore) -> None:
    answer = json.loads(api.discovery_clusters(store, request(resource_names=["web_shop"]), "h").text())
    assert [r["name"] for r in answer["resources"]] == ["web_shop"]


def test_metadata_tags_become_subset_selectors() -> None:
    upstream = parse_upstream(
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"awsEc2": {"region": "us-east-1", "metadataTags": ["version", "zone-group"]}},
        }
    )
    (cluster,) = strict(cds.response(cds.clusters([upstream], cds.EdsSource("h"))))
    assert [list(s.keys) for s in cluster.lb_subset_config.subset_selectors] == [["version"], ["zone-group"]]
    assert cluster.lb_subset_config.fallback_policy == cluster_pb2.Cluster.LbSubsetConfig.ANY_ENDPOINT


# --- Gloo's upstream options ---------------------------------------------------------------------------

FULL = {
    "connectionConfig": {
        "maxRequestsPerConnection": 100,
        "connectTimeout": "3s",
        "tcpKeepalive": {"keepaliveProbes": 3, "keepaliveTime": "60s", "keepaliveInterval": "1.5s"},
        "perConnectionBufferLimitBytes": 65536,
        "commonHttpProtocolOptions": {
            "idleTimeout": "30s",
            "maxHeadersCount": 50,
            "maxStreamDuration": "10s",
            "headersWithUnderscoresAction": "REJECT_REQUEST",
        },
    },
    "loadBalancerConfig": {
        "healthyPanicThreshold": 25,
        "updateMergeWindow": "0s",
        "leastRequest": {"choiceCount": 3, "slowStartConfig": {"slowStartWindow": "30s", "aggression": 2}},
    },
    "healthChecks": [
        {
            "timeout": "1s",
            "interval": "5s",
            "unhealthyThreshold": 2,
            "healthyThreshold": 1,
            "httpHealthCheck": {"path": "/healthz", "expectedStatuses": [{"start": 200, "end": 300}]},
        },
        {
            "timeout": "1s",
            "interval": "10s",
            "unhealthyThreshold": 3,
            "healthyThreshold": 2,
            "tcpHealthCheck": {"send": {"text": "50494e47"}, "receive": [{"text": "504f4e47"}]},
        },
    ],
    "outlierDetection": {"consecutive5xx": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50},
    "circuitBreakers": {"maxConnections": 10, "maxPendingRequests": 20, "maxRequests": 30, "maxRetries": 4},
    "useHttp2": True,
}


def served(**options: Any) -> cluster_pb2.Cluster:
    (cluster,) = strict(cds.response(cds.clusters([parse_upstream(doc(**options))], cds.EdsSource("h"))))
    return cluster


def test_every_translated_option_lands_in_envoys_field() -> None:
    cluster = served(**FULL)
    assert (cluster.connect_timeout.seconds, cluster.per_connection_buffer_limit_bytes.value) == (3, 65536)
    keepalive = cluster.upstream_connection_options.tcp_keepalive
    assert (keepalive.keepalive_probes.value, keepalive.keepalive_time.value, keepalive.keepalive_interval.value) == (
        3,
        60,
        2,  # Envoy counts whole seconds: 1.5s rounds up
    )
    http = http_protocol_options_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[gloo_options.HTTP_OPTIONS].Unpack(http)
    assert http.explicit_http_config.HasField("http2_protocol_options")  # useHttp2
    common = http.common_http_protocol_options
    assert common.max_requests_per_connection.value == 100
    assert (common.idle_timeout.seconds, common.max_headers_count.value, common.max_stream_duration.seconds) == (
        30,
        50,
        10,
    )
    assert common.headers_with_underscores_action == common.REJECT_REQUEST
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.least_request_lb_config.choice_count.value == 3
    assert cluster.least_request_lb_config.slow_start_config.slow_start_window.seconds == 30
    assert cluster.least_request_lb_config.slow_start_config.aggression.default_value == 2
    assert cluster.common_lb_config.healthy_panic_threshold.value == 25
    http_check, tcp_check = cluster.health_checks
    assert http_check.http_health_check.path == "/healthz"
    assert [(r.start, r.end) for r in http_check.http_health_check.expected_statuses] == [(200, 300)]
    assert (http_check.unhealthy_threshold.value, http_check.healthy_threshold.value) == (2, 1)
    assert tcp_check.tcp_health_check.send.text == "50494e47"
    detection = cluster.outlier_detection
    assert (detection.consecutive_5xx.value, detection.base_ejection_time.seconds) == (5, 30)
    assert detection.max_ejection_percent.value == 50
    (thresholds,) = cluster.circuit_breakers.thresholds
    assert (thresholds.max_connections.value, thresholds.max_pending_requests.value) == (10, 20)
    assert (thresholds.max_requests.value, thresholds.max_retries.value) == (30, 4)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"roundRobin": {}}, cluster_pb2.Cluster.ROUND_ROBIN),
        ({"random": {}}, cluster_pb2.Cluster.RANDOM),
        ({"maglev": {}}, cluster_pb2.Cluster.MAGLEV),
        (
            {"ringHash": {"ringHashConfig": {"minimumRingSize": 64, "maximumRingSize": 1024}}},
            cluster_pb2.Cluster.RING_HASH,
        ),
    ],
)
def test_each_load_balancing_policy(policy: dict[str, Any], expected: int) -> None:
    assert served(loadBalancerConfig=policy).lb_policy == expected


def test_the_options_of_the_older_form_sit_in_upstream_spec() -> None:
    upstream = parse_upstream(doc(legacy=True, circuitBreakers={"maxConnections": 7}))
    (cluster,) = strict(cds.response(cds.clusters([upstream], cds.EdsSource("h"))))
    assert cluster.circuit_breakers.thresholds[0].max_connections.value == 7
    with pytest.raises(SpecError) as refused:
        parse_upstream({**doc(legacy=True), "spec": {**doc(legacy=True)["spec"], "useHttp2": True}})
    assert refused.value.field == "spec.useHttp2"


def test_without_options_envoys_defaults_hold() -> None:
    cluster = served()
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN and not cluster.health_checks
    assert not cluster.HasField("outlier_detection") and not cluster.typed_extension_protocol_options


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"sslConfig": {"sni": "x"}}, "spec.sslConfig"),
        ({"failover": {}}, "spec.failover"),
        (
            {"connectionConfig": {"tcpKeepalive": {"keepaliveProbes": 1, "bogus": 1}}},
            "spec.connectionConfig.tcpKeepalive.bogus",
        ),
        ({"loadBalancerConfig": {"useHostnameForHashing": True}}, "spec.loadBalancerConfig.useHostnameForHashing"),
        ({"loadBalancerConfig": {"roundRobin": {}, "random": {}}}, "spec.loadBalancerConfig"),
        ({"connectionConfig": {"connectTimeout": "5 seconds"}}, "spec.connectionConfig.connectTimeout"),
        ({"connectionConfig": {"connectTimeout": "0s"}}, "spec.connectionConfig.connectTimeout"),
        ({"circuitBreakers": {"maxConnections": -1}}, "spec.circuitBreakers.maxConnections"),
        ({"circuitBreakers": {"maxConnections": True}}, "spec.circuitBreakers.maxConnections"),
        (
            {"healthChecks": [{"interval": "1s", "unhealthyThreshold": 1, "healthyThreshold": 1}]},
            "spec.healthChecks[0].timeout",
        ),
        (
            {"healthChecks": [{"timeout": "1s", "interval": "1s", "unhealthyThreshold": 1, "healthyThreshold": 1}]},
            "spec.healthChecks[0]",
        ),
        (
            {
                "healthChecks": [
                    {
                        "timeout": "1s",
                        "interval": "1s",
                        "unhealthyThreshold": 1,
                        "healthyThreshold": 1,
                        "httpHealthCheck": {"path": "/", "requestHeadersToAdd": []},
                    }
                ]
            },
            "spec.healthChecks[0].httpHealthCheck.requestHeadersToAdd",
        ),
        ({"outlierDetection": {"maxEjectionPercent": 101}}, "spec.outlierDetection.maxEjectionPercent"),
        ({"useHttp2": "yes"}, "spec.useHttp2"),
    ],
)
def test_an_option_not_translated_is_refused_naming_its_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_upstream(doc(**options))
    assert refused.value.field == field
    assert field.rsplit(".", 1)[-1].split("[")[0] in refused.value.message


def test_a_refused_option_is_a_400_on_put_and_nothing_is_stored() -> None:
    store = MemoryStore()
    body = json.dumps(doc(circuitBreakers={"maxConnections": 1, "trackRemaining": True}))
    reply = admin.put_upstream(store, "shop", "web", body, "application/json", NOW)
    assert reply.status == 400
    assert json.loads(reply.text())["field"] == "spec.circuitBreakers.trackRemaining"
    assert store.get_upstream("shop", "web") is None


DURATIONS = st.sampled_from(["1s", "0.5s", "30s", "0.001s"])
HEALTH = st.fixed_dictionaries(
    {
        "timeout": DURATIONS,
        "interval": DURATIONS,
        "unhealthyThreshold": st.integers(0, 10),
        "healthyThreshold": st.integers(0, 10),
        "httpHealthCheck": st.fixed_dictionaries({"path": st.sampled_from(["/", "/healthz"])}),
    },
    optional={"intervalJitterPercent": st.integers(0, 100), "reuseConnection": st.booleans()},
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "circuitBreakers": st.fixed_dictionaries(
            {}, optional={k: st.integers(0, 2**32 - 1) for k in gloo_options.CIRCUIT_BREAKERS}
        ),
        "outlierDetection": st.fixed_dictionaries(
            {},
            optional={
                "consecutive5xx": st.integers(0, 100),
                "interval": DURATIONS,
                "maxEjectionPercent": st.integers(0, 100),
            },
        ),
        "loadBalancerConfig": st.fixed_dictionaries(
            {"healthyPanicThreshold": st.floats(0, 100)},
            optional={p: st.just({}) for p in ("roundRobin", "random", "maglev")},
        ).filter(lambda lb: len(lb) <= 2),
        "healthChecks": st.lists(HEALTH, max_size=2),
        "useHttp2": st.booleans(),
        "connectionConfig": st.fixed_dictionaries(
            {}, optional={"connectTimeout": DURATIONS, "maxRequestsPerConnection": st.integers(0, 1000)}
        ),
    },
)


@settings(max_examples=examples(150), deadline=None)
@given(options=OPTIONS)
def test_whatever_options_are_accepted_envoy_accepts_the_cluster(options: dict[str, Any]) -> None:
    served(**options)  # strict parse and validation rules inside


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**33) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [*gloo_options.HEALTH_CHECK, *gloo_options.OUTLIER_DETECTION, *gloo_options.CIRCUIT_BREAKERS]
                + ["roundRobin", "ringHash", "ringHashConfig", "slowStartConfig", "text", "send", "start", "end", "x"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=examples(300), deadline=None)
@given(options=st.dictionaries(st.sampled_from([*FULL, "sslConfig", "discoveryMetadata"]), JUNK, max_size=3))
def test_any_option_value_is_translated_or_refused_with_a_field_never_a_crash(options: dict[str, Any]) -> None:
    try:
        upstream = parse_upstream(doc(**options))
    except SpecError as err:
        assert err.field is not None and err.field.startswith("spec.")
    else:
        served(**{key: value for key, value in upstream.document["spec"].items() if key != "awsEc2"})
