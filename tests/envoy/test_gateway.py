"""A real Envoy routes real requests to the discovered instances, learning them from ec2-eds alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from devtools import envoy_local, stack
from tests.envoy.conftest import REFRESH, Gateway

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent


def addresses(launched: list[tuple[str, str, str]]) -> dict[str, str]:
    return {name: address for name, _, address in launched}


def test_rest_eds_routes_to_exactly_the_running_matching_instances(gateway: Gateway) -> None:
    launched = gateway.launch(4, {"suite": "eds"})
    stranger = gateway.launch(1, {"suite": "other"})  # serving too, but not matching
    gateway.ec2.stop_instances(InstanceIds=[launched[3][1]])
    gateway.put("tests", "eds", filters=[{"kvPair": {"key": "suite", "value": "eds"}}])
    gateway.local.scan()
    expected = {name for name, _, _ in launched[:3]}
    cluster = envoy_local.eds_cluster("eds_tests", REFRESH)
    with gateway.envoy([cluster], [envoy_local.route("eds_tests")]) as envoy:
        envoy_local.wait_for("the three hosts", lambda: len(gateway.hosts(envoy, "eds_tests")) == 3)
        assert set(gateway.hosts(envoy, "eds_tests")) == {addresses(launched)[name] for name in expected}
        answered = gateway.send(envoy, 30)
        assert set(answered) == expected, answered  # not the stopped one, not the stranger
        assert sorted(answered.values()) == [10, 10, 10]  # round robin
        assert stranger[0][0] not in answered


def test_a_stop_and_its_event_take_the_instance_out_of_envoy(gateway: Gateway) -> None:
    launched = gateway.launch(3, {"suite": "stop"})
    gateway.put("tests", "stop", filters=[{"kvPair": {"key": "suite", "value": "stop"}}])
    gateway.local.scan()
    with gateway.envoy([envoy_local.eds_cluster("stop_tests", REFRESH)], [envoy_local.route("stop_tests")]) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, "stop_tests")) == 3)
        assert set(gateway.send(envoy, 9)) == {name for name, _, _ in launched}
        gone, _, address = launched[0]
        gateway.local.fleet("stop", gone)  # its server keeps answering: only Envoy can keep requests away
        gateway.event(gone, "state-change")  # no scan: the event alone
        envoy_local.wait_for("the stopped host to leave", lambda: address not in gateway.hosts(envoy, "stop_tests"))
        answered = gateway.send(envoy, 20)
        assert set(answered) == {launched[1][0], launched[2][0]}, answered
        gateway.local.fleet("start", gone)
        gateway.event(gone, "state-change")
        envoy_local.wait_for("the started host to come back", lambda: address in gateway.hosts(envoy, "stop_tests"))
        assert set(gateway.send(envoy, 9)) == {name for name, _, _ in launched}


def test_a_draining_instance_stays_listed_but_gets_no_new_requests(gateway: Gateway) -> None:
    launched = gateway.launch(3, {"suite": "drain"})
    gateway.put("tests", "drain", filters=[{"kvPair": {"key": "suite", "value": "drain"}}])
    gateway.local.scan()
    with gateway.envoy([envoy_local.eds_cluster("drain_tests", REFRESH)], [envoy_local.route("drain_tests")]) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, "drain_tests")) == 3)
        warned, _, address = launched[0]
        gateway.event(warned, "spot-interruption")
        envoy_local.wait_for(
            "DRAINING", lambda: gateway.hosts(envoy, "drain_tests").get(address, {}).get("health") == "DRAINING"
        )
        assert len(gateway.hosts(envoy, "drain_tests")) == 3
        answered = gateway.send(envoy, 20)
        assert set(answered) == {launched[1][0], launched[2][0]}, answered


def test_weights_from_a_tag_split_the_requests(gateway: Gateway) -> None:
    launched = gateway.launch(2, {"suite": "weights"}, weight=["3", "1"])
    gateway.put(
        "tests",
        "weights",
        filters=[{"key": "weight"}, {"kvPair": {"key": "suite", "value": "weights"}}],
        weightTag="weight",
    )
    gateway.local.scan()
    with gateway.envoy(
        [envoy_local.eds_cluster("weights_tests", REFRESH)], [envoy_local.route("weights_tests")]
    ) as envoy:
        envoy_local.wait_for("two hosts", lambda: len(gateway.hosts(envoy, "weights_tests")) == 2)
        heavy, light = launched[0], launched[1]
        hosts = gateway.hosts(envoy, "weights_tests")
        assert (hosts[heavy[2]]["weight"], hosts[light[2]]["weight"]) == (3, 1)
        answered = gateway.send(envoy, 40)
        assert set(answered) == {heavy[0], light[0]}
        assert 27 <= answered[heavy[0]] <= 33, answered  # 3:1 by Envoy's weighted round robin


def test_the_subset_example_routes_by_the_version_tag(gateway: Gateway) -> None:
    """docs/examples/envoy-subset-lb.yaml as documented: `x-version: v2` reaches v2 instances only."""
    launched = gateway.launch(3, {"suite": "subset"}, version=["v1", "v2", "v2"])
    gateway.put("shop", "web", filters=[{"kvPair": {"key": "suite", "value": "subset"}}], metadataTags=["version"])
    gateway.local.scan()
    config = yaml.safe_load((ROOT / "docs" / "examples" / "envoy-subset-lb.yaml").read_text())
    port = stack.free_port()
    config["admin"] = envoy_local.bootstrap(stack.free_port())["admin"]
    config["static_resources"]["listeners"][0]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": port,
    }
    web, api = config["static_resources"]["clusters"]
    web["eds_cluster_config"]["eds_config"]["api_config_source"]["refresh_delay"] = f"{REFRESH}s"
    api["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = (
        gateway.api_port
    )
    with gateway.run(config, port) as envoy:
        envoy_local.wait_for("three hosts", lambda: len(gateway.hosts(envoy, "web_shop")) == 3)
        v2 = {launched[1][0], launched[2][0]}
        assert set(gateway.send(envoy, 12, {"x-version": "v2"})) == v2
        assert set(gateway.send(envoy, 12)) == {name for name, _, _ in launched}


def test_cds_alone_brings_a_new_upstream_and_takes_a_deleted_one_away(gateway: Gateway) -> None:
    """Envoy bootstrapped with nothing but the API cluster: clusters by CDS, endpoints by EDS, no restart."""
    route = {"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}
    with gateway.envoy([], [route], cds=True) as envoy:
        envoy_local.wait_for(
            "the existing upstreams", lambda: "ec2-legacy-private_gloo-system" in envoy.admin.clusters()
        )
        assert "cds-new_tests" not in envoy.admin.clusters()
        launched = gateway.launch(2, {"suite": "cds"})
        gateway.put("tests", "cds-new", filters=[{"kvPair": {"key": "suite", "value": "cds"}}])
        gateway.local.scan()
        envoy_local.wait_for("the new cluster's hosts", lambda: len(gateway.hosts(envoy, "cds-new_tests")) == 2)
        assert set(gateway.send(envoy, 10, {"x-cluster": "cds-new_tests"})) == {name for name, _, _ in launched}
        gateway.delete("tests", "cds-new")
        envoy_local.wait_for("the deleted cluster to leave", lambda: "cds-new_tests" not in envoy.admin.clusters())
        assert gateway.send(envoy, 3, {"x-cluster": "cds-new_tests"}) == {"<503>": 3}  # Envoy: no such cluster


def test_the_sidecars_file_eds_feeds_envoy(gateway: Gateway) -> None:
    """sidecar/envoy-file-eds.yaml with the sidecar writing the file: a stop and its event reach Envoy."""
    launched = gateway.launch(2, {"suite": "sidecar"})
    gateway.put("tests", "sidecar", filters=[{"kvPair": {"key": "suite", "value": "sidecar"}}])
    gateway.local.scan()
    out = gateway.workdir / "eds"
    args = [sys.executable, "-m", "sidecar", "--base-url", gateway.local.base, "--out-dir", str(out)]
    args += ["--region", "us-east-1", "--interval", str(REFRESH), "tests/sidecar"]
    once = subprocess.run([*args, "--once"], cwd=stack.PROJECT_DIR, env=envoy_local.no_proxy_environment(), timeout=60)
    assert once.returncode == 0
    config = yaml.safe_load((ROOT / "sidecar" / "envoy-file-eds.yaml").read_text())
    port = stack.free_port()
    config["admin"] = envoy_local.bootstrap(stack.free_port())["admin"]
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "sidecar_tests"
    (cluster,) = config["static_resources"]["clusters"]
    cluster["name"] = cluster["eds_cluster_config"]["service_name"] = "sidecar_tests"
    cluster["eds_cluster_config"]["eds_config"]["path_config_source"]["path"] = str(out / "sidecar_tests.json")
    agent = stack.Process(args, envoy_local.no_proxy_environment(), gateway.workdir / "sidecar.log")
    try:
        with gateway.run(config, port) as envoy:
            envoy_local.wait_for("two hosts", lambda: len(gateway.hosts(envoy, "sidecar_tests")) == 2)
            assert set(gateway.send(envoy, 6)) == {name for name, _, _ in launched}
            gone, _, address = launched[0]
            gateway.local.fleet("stop", gone)
            gateway.event(gone, "state-change")
            envoy_local.wait_for(
                "the stopped host to leave", lambda: address not in gateway.hosts(envoy, "sidecar_tests")
            )
            assert set(gateway.send(envoy, 6)) == {launched[1][0]}
    finally:
        agent.stop()


def test_the_guard_refuses_traffic_while_envoy_holds_a_host_outside_loopback(gateway: Gateway) -> None:
    """A cluster with a public address (moto's 54.x) is loaded but never receives a request."""
    gateway.put("tests", "public", filters=[{"kvPair": {"key": "suite", "value": "eds"}}], publicIp=True)
    gateway.local.scan()
    try:
        cluster = envoy_local.eds_cluster("public_tests", REFRESH)
        with gateway.envoy([cluster], [envoy_local.route("public_tests")]) as envoy:
            envoy_local.wait_for("the public hosts", lambda: gateway.hosts(envoy, "public_tests"))
            assert not any(envoy_local.is_loopback(address) for address in gateway.hosts(envoy, "public_tests"))
            with pytest.raises(envoy_local.NotLoopback):
                gateway.send(envoy, 1)
            assert envoy.admin.probing() == []  # and no health check or outlier probe reaches them either
    finally:
        gateway.delete("tests", "public")


def test_gloo_options_reach_envoy_by_cds_and_envoy_accepts_them(gateway: Gateway) -> None:
    """A real Envoy takes the translated cluster: health checks on loopback hosts, breakers, least request."""
    launched = gateway.launch(2, {"suite": "options"})
    options = {
        "connectionConfig": {"connectTimeout": "0.5s", "maxRequestsPerConnection": 10},
        "loadBalancerConfig": {"leastRequest": {"choiceCount": 2}, "healthyPanicThreshold": 0},
        "circuitBreakers": {"maxConnections": 7, "maxRetries": 1},
        "healthChecks": [
            {
                "timeout": "1s",
                "interval": "0.5s",
                "unhealthyThreshold": 1,
                "healthyThreshold": 1,
                "httpHealthCheck": {"path": "/healthz"},
            }
        ],
        "outlierDetection": {"consecutive5xx": 3, "interval": "1s"},
    }
    block = {"region": "us-east-1", "port": 8080, "filters": [{"kvPair": {"key": "suite", "value": "options"}}]}
    body = {"spec": {"awsEc2": block, **options}}
    answer = requests.put(f"{gateway.local.base}/upstreams/tests/options", json=body, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    gateway.local.scan()
    route = {"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}
    try:
        with gateway.envoy([], [route], cds=True) as envoy:
            envoy_local.wait_for("the hosts", lambda: len(gateway.hosts(envoy, "options_tests")) == 2)
            dump = json.loads(envoy.admin.get("/config_dump?resource=dynamic_active_clusters"))
            (cluster,) = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == "options_tests"]
            assert cluster["lb_policy"] == "LEAST_REQUEST" and cluster["connect_timeout"] == "0.500s"
            assert cluster["circuit_breakers"]["thresholds"][0]["max_connections"] == 7
            assert cluster["health_checks"][0]["http_health_check"]["path"] == "/healthz"
            assert cluster["outlier_detection"]["consecutive_5xx"] == 3
            stats = envoy.admin.get("/stats?filter=cluster_manager.cds.update_rejected")
            assert stats.strip().endswith(": 0"), stats
            # The active health check passes against the instances (loopback only: the guard checks every cluster).
            envoy_local.wait_for(
                "a passed health check",
                lambda: (
                    "options_tests.health_check.success" in envoy.admin.get("/stats?filter=health_check.success")
                    and not envoy.admin.get("/stats?filter=options_tests.health_check.success").strip().endswith(": 0")
                ),
            )
            assert set(gateway.send(envoy, 6, {"x-cluster": "options_tests"})) == {name for name, _, _ in launched}
    finally:
        gateway.delete("tests", "options")
