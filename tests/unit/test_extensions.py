"""Beyond Gloo: port and weight from tags, subset metadata — optional fields next to Gloo's own."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from chalicelib.domain.endpoints import Instance, derive, reconcile
from chalicelib.render import eds
from sidecar.agent import to_discovery_response
from tests.factories import upstream


def instance(number: int, **tags: str) -> Instance:
    return Instance(
        f"i-{number:04x}", "running", "us-east-1a", private_ip=f"10.0.0.{number}", tags=tuple(sorted(tags.items()))
    )


@pytest.mark.parametrize(
    ("tags", "port", "fell_back"),
    [
        ({"svc-port": "8443"}, 8443, 0),
        ({"SVC-PORT": "9000"}, 9000, 0),  # keys match without regard to case, as filters do
        ({}, 8080, 1),
        ({"svc-port": "http"}, 8080, 1),
        ({"svc-port": "0"}, 8080, 1),
        ({"svc-port": "70000"}, 8080, 1),
        ({"svc-port": "-1"}, 8080, 1),
        ({"svc-port": " 443 "}, 443, 0),
    ],
)
def test_port_from_a_tag_falls_back_to_port_and_is_counted(tags: dict[str, str], port: int, fell_back: int) -> None:
    derived = derive(upstream("web", "shop", port=8080, portTag="svc-port"), [instance(1, **tags)])
    assert [endpoint.port for endpoint in derived.endpoints] == [port]
    assert derived.port_fallbacks == fell_back


@pytest.mark.parametrize(
    ("value", "weight", "fell_back"),
    [("5", 5, 0), ("1", 1, 0), ("10000", 10000, 0), ("0", 1, 1), ("10001", 1, 1), ("heavy", 1, 1), (None, 1, 1)],
)
def test_weight_from_a_tag_falls_back_to_one_and_is_counted(value: str | None, weight: int, fell_back: int) -> None:
    tags = {"lb-weight": value} if value is not None else {}
    derived = derive(upstream("web", "shop", weightTag="lb-weight"), [instance(1, **tags)])
    assert [endpoint.weight for endpoint in derived.endpoints] == [weight]
    assert derived.weight_fallbacks == fell_back


def test_without_the_extensions_nothing_falls_back_and_the_json_keeps_gloos_shape() -> None:
    derived = derive(upstream("web", "shop", port=81), [instance(1, version="v2")])
    assert (derived.port_fallbacks, derived.weight_fallbacks) == (0, 0)
    assert set(derived.endpoints[0].public()) == {"address", "port", "instance_id", "zone", "health"}


def test_subset_metadata_copies_the_named_tags() -> None:
    spec = upstream("web", "shop", metadataTags=["version", "Stage"])
    derived = derive(spec, [instance(1, version="v2", stage="canary", other="x"), instance(2, version="v1")])
    assert [dict(endpoint.metadata) for endpoint in derived.endpoints] == [
        {"version": "v2", "Stage": "canary"},
        {"version": "v1"},  # a missing tag is simply absent
    ]


def test_weight_and_metadata_change_the_served_version() -> None:
    plain = reconcile([upstream("web", "shop")], [instance(1, w="3", version="v2")])["shop/web"][0]
    weighted = reconcile([upstream("web", "shop", weightTag="w")], [instance(1, w="3", version="v2")])["shop/web"][0]
    subset = reconcile([upstream("web", "shop", metadataTags=["version"])], [instance(1, w="3", version="v2")])[
        "shop/web"
    ][0]
    assert len({plain.version, weighted.version, subset.version}) == 3


def parse_strictly(response: dict[str, Any]) -> endpoint_pb2.ClusterLoadAssignment:
    parsed = json_format.ParseDict(response, discovery_pb2.DiscoveryResponse())
    cla = endpoint_pb2.ClusterLoadAssignment()
    assert parsed.resources[0].Unpack(cla)
    return cla


def test_eds_and_the_sidecar_carry_weights_and_subset_metadata_envoy_accepts() -> None:
    spec = upstream("web", "shop", port=8080, portTag="port", weightTag="weight", metadataTags=["version"])
    fleet = [instance(1, port="9090", weight="3", version="v2"), instance(2, version="v1")]
    endpoint_set = reconcile([spec], fleet)["shop/web"][0]
    served = eds.response(["web_shop"], {"web_shop": endpoint_set})
    from_sidecar = to_discovery_response(endpoint_set.public())
    for response in (served, from_sidecar):
        cla = parse_strictly(response)
        lbs = {lb.endpoint.address.socket_address.port_value: lb for loc in cla.endpoints for lb in loc.lb_endpoints}
        assert set(lbs) == {9090, 8080}
        assert lbs[9090].load_balancing_weight.value == 3
        assert not lbs[8080].HasField("load_balancing_weight")  # Envoy's default of 1
        subset = json_format.MessageToDict(lbs[9090].metadata.filter_metadata["envoy.lb"])
        assert subset == {"version": "v2", "instance_id": "i-0001"}
        assert cla.endpoints[0].locality.region == "us-east-1"


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"portTag": ""}, "spec.awsEc2.portTag"),
        ({"weightTag": 5}, "spec.awsEc2.weightTag"),
        ({"metadataTags": "version"}, "spec.awsEc2.metadataTags"),
        ({"metadataTags": [""]}, "spec.awsEc2.metadataTags[0]"),
        ({"account": "Prod_Account"}, "spec.awsEc2.account"),
        ({"account": "prod", "roleArn": "arn:aws:iam::111111111111:role/x"}, "spec.awsEc2"),
    ],
)
def test_bad_extension_fields_name_their_path(block: dict[str, Any], field: str) -> None:
    from chalicelib.domain.spec import SpecError

    with pytest.raises(SpecError) as err:
        upstream("web", "shop", **block)
    assert err.value.field == field


def test_the_subset_routing_example_is_a_valid_envoy_bootstrap() -> None:
    from pathlib import Path

    import yaml
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  registers the type
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "envoy-subset-lb.yaml"
    bootstrap = json_format.ParseDict(yaml.safe_load(path.read_text()), bootstrap_pb2.Bootstrap())
    cluster = next(c for c in bootstrap.static_resources.clusters if c.name == "web_shop")
    assert [list(selector.keys) for selector in cluster.lb_subset_config.subset_selectors] == [["version"]]
    # The metadata the route selects on is the metadata ec2-eds serves for `metadataTags: [version]`.
    spec = upstream("web", "shop", metadataTags=["version"])
    served = eds.assignment("web_shop", reconcile([spec], [instance(1, version="v2")])["shop/web"][0])
    assert served["endpoints"][0]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["version"] == "v2"
