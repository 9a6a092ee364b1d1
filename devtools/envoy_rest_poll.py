#!/usr/bin/env python3
"""Poll an EDS server the way Envoy's REST-JSON subscription does, and check
every answer strictly against Envoy's own protos (the `xds-protos` package).

    python devtools/envoy_rest_poll.py http://127.0.0.1:8000 ec2-demo-upstream_gloo-system [more clusters]

For each cluster it sends a first DiscoveryRequest (no version_info), checks
the DiscoveryResponse, then polls again with the version it was given and
expects 304 with no body, as an unchanged Envoy poll should. It prints one
JSON line per cluster with the endpoints it saw, and exits 1 on the first
violation, naming it, or 2 with one line when the server cannot be reached.

Needs: pip install xds-protos (it brings protobuf and grpcio).
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401  registers the CLA type
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
PATH = "/v3/discovery:endpoints"


class Violation(Exception):
    pass


def post(base, body, timeout):
    req = urllib.request.Request(
        base.rstrip("/") + PATH,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def request_body(cluster, version=None):
    body = {
        "node": {"id": "conformance-sidecar", "cluster": "conformance"},
        "resource_names": [cluster],
        "type_url": CLA_TYPE,
    }
    if version is not None:
        body["version_info"] = version
    return body


def check_assignment(cla, cluster):
    if cla.cluster_name != cluster:
        raise Violation(f"cluster_name {cla.cluster_name!r} != requested {cluster!r}")
    priorities = sorted({loc.priority for loc in cla.endpoints})
    if priorities and priorities != list(range(len(priorities))):
        raise Violation(f"priorities must run 0..N without gaps, got {priorities}")
    endpoints = []
    for loc in cla.endpoints:
        if loc.HasField("load_balancing_weight") and loc.load_balancing_weight.value < 1:
            raise Violation("locality load_balancing_weight must be >= 1")
        for lb in loc.lb_endpoints:
            sock = lb.endpoint.address.socket_address
            if not sock.address:
                raise Violation("endpoint without an address")
            if not 1 <= sock.port_value <= 65535:
                raise Violation(f"port {sock.port_value} out of range")
            if lb.HasField("load_balancing_weight") and lb.load_balancing_weight.value < 1:
                raise Violation("lb_endpoint load_balancing_weight must be >= 1")
            endpoints.append(
                {
                    "address": sock.address,
                    "port": sock.port_value,
                    "zone": loc.locality.zone,
                    "health": health_check_pb2.HealthStatus.Name(lb.health_status),
                }
            )
    return endpoints


def poll(base, cluster, timeout):
    status, raw = post(base, request_body(cluster), timeout)
    if status != 200:
        raise Violation(f"first poll: HTTP {status}: {raw[:200]!r}")
    try:
        resp = json_format.Parse(raw, discovery_pb2.DiscoveryResponse())
    except json_format.ParseError as err:
        raise Violation(f"DiscoveryResponse does not parse strictly: {err}") from err
    if not resp.version_info:
        raise Violation("DiscoveryResponse has no version_info")
    if resp.type_url and resp.type_url != CLA_TYPE:
        raise Violation(f"type_url {resp.type_url!r}")
    if len(resp.resources) != 1:
        raise Violation(f"expected exactly 1 resource for one requested cluster, got {len(resp.resources)}")
    cla = endpoint_pb2.ClusterLoadAssignment()
    if not resp.resources[0].Unpack(cla):
        raise Violation(f"resource is a {resp.resources[0].type_url}, not a ClusterLoadAssignment")
    endpoints = check_assignment(cla, cluster)
    status, raw = post(base, request_body(cluster, resp.version_info), timeout)
    if status != 304:
        raise Violation(f"poll with the current version_info: expected 304, got HTTP {status}")
    if raw.strip():
        raise Violation("304 answer carries a body")
    return {"cluster": cluster, "version": resp.version_info, "endpoints": endpoints}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="envoy_rest_poll.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("base_url", help="the EDS server's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("clusters", nargs="+", help="cluster names to poll, {name}_{namespace}")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    args = parser.parse_args(argv)
    for cluster in args.clusters:
        try:
            print(json.dumps(poll(args.base_url, cluster, args.timeout), sort_keys=True))
        except Violation as err:
            print(f"VIOLATION {cluster}: {err}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            print(f"error: cannot reach {args.base_url.rstrip('/') + PATH}: {reason}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
