"""The API's OpenAPI 3.1 description, generated from the routes of `app.py`.

Every route Chalice knows (`app.routes`) becomes an operation: its path,
method, path parameters, accepted content types and authorizer come from the
route itself; what its bodies look like is described here by hand, with the
pydantic models of `chalicelib` (`model_json_schema()`) where the request is
one, and the validation patterns of `chalicelib.domain.spec` where a validator says
more than the model. A route without a description below is an error, so a
new route cannot go undescribed.

    python -m devtools.openapi write    # regenerate docs/openapi.json
    python -m devtools.openapi check    # exit 1 if docs/openapi.json is stale

`tests/reliability/test_openapi.py` fails when the committed file differs
from what `write` generates; schemathesis runs against `chalice local` with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chalicelib.config import Settings
from chalicelib.domain.accounts import ACCOUNT_ID, Account
from chalicelib.domain.spec import DNS1123_LABEL, REGION, ROLE_ARN, AwsEc2Spec
from chalicelib.edges.store.chunks import MAX_DOCUMENT_BYTES
from chalicelib.render import cds, eds
from chalicelib.usecases import api

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT = PROJECT_DIR / "docs" / "openapi.json"
REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def anchored(pattern: str) -> str:
    return f"^{pattern}$"


LABEL = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": anchored(DNS1123_LABEL.pattern)}
# DNS1123_SUBDOMAIN's length look-ahead is Python-only; the length goes to maxLength instead.
SUBDOMAIN = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
NULLABLE_STRING = {"type": ["string", "null"]}


def _model_schemas() -> dict[str, Any]:
    """AwsEc2Spec and Account as pydantic sees them, plus what their validators check."""
    schemas: dict[str, Any] = {}
    ec2 = AwsEc2Spec.model_json_schema(ref_template=REF)
    schemas.update(ec2.pop("$defs", {}))
    properties = ec2["properties"]
    properties["region"]["pattern"] = anchored(REGION.pattern)
    properties["roleArn"]["anyOf"][0]["pattern"] = anchored(ROLE_ARN.pattern)
    properties["account"]["anyOf"][0].update(LABEL)
    schemas["AwsEc2"] = ec2
    schemas["ResourceRef"]["properties"]["name"].update(SUBDOMAIN)
    schemas["ResourceRef"]["properties"]["namespace"].update(LABEL)
    schemas["TagFilter"]["oneOf"] = [{"required": ["key"]}, {"required": ["kvPair"]}]

    account = Account.model_json_schema(ref_template=REF)
    account["properties"]["name"].update(LABEL)
    account["properties"]["accountId"]["pattern"] = anchored(ACCOUNT_ID.pattern)
    account["properties"]["regions"]["items"]["pattern"] = anchored(REGION.pattern)
    described = copy.deepcopy(account)
    account["required"] = [name for name in account["required"] if name != "name"]  # the path names it
    account["description"] = "A named account; `name` may be left out (the path gives it) or must equal the path's."
    described["properties"]["roleArn"] = {"type": "string"}
    described["required"] = [*described["required"], "roleArn"]
    described["description"] = "A named account as stored, with the role ARN it resolves to."
    schemas["Account"] = account
    schemas["AccountDescribed"] = described
    return schemas


def _schemas() -> dict[str, Any]:
    metadata = {
        "type": "object",
        "description": "Kubernetes-style metadata; name and namespace default to the path's and must equal them.",
        "properties": {"name": LABEL, "namespace": LABEL},
    }
    upstream = {
        "type": "object",
        "description": "A Gloo `Upstream` document with an `awsEc2` block (or the older `upstreamSpec.awsEc2`).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["gloo.solo.io/v1"]},
            "kind": {"type": "string", "enum": ["Upstream"]},
            "metadata": metadata,
            "spec": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["awsEc2"],
                        "properties": {"awsEc2": ref("AwsEc2")},
                        "not": {"required": ["upstreamSpec"]},
                    },
                    {
                        "type": "object",
                        "required": ["upstreamSpec"],
                        "properties": {
                            "upstreamSpec": {
                                "type": "object",
                                "required": ["awsEc2"],
                                "properties": {"awsEc2": ref("AwsEc2")},
                            }
                        },
                        "not": {"required": ["awsEc2"]},
                    },
                ]
            },
        },
    }
    status = {
        "type": "object",
        "required": ["state", "reason", "endpoints", "skipped", "lastScan"],
        "properties": {
            "state": {"type": "string", "enum": ["Accepted", "Rejected", "Error"]},
            "reason": {"type": "string"},
            "endpoints": {"type": "integer", "minimum": 0},
            "skipped": {"type": "integer", "minimum": 0},
            "lastScan": {"type": ["string", "null"], "format": "date-time"},
            "code": {"type": "string", "description": "the AWS error code of the last failure"},
            "portFallbacks": {"type": "integer", "minimum": 0},
            "weightFallbacks": {"type": "integer", "minimum": 0},
            "unhealthy": {"type": "integer", "minimum": 1, "description": "endpoints served UNHEALTHY (absent: none)"},
            "draining": {"type": "integer", "minimum": 1, "description": "endpoints served DRAINING (absent: none)"},
        },
    }
    endpoint = {
        "type": "object",
        "required": ["address", "port", "instance_id", "zone", "health"],
        "properties": {
            "address": {"type": "string"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "instance_id": {"type": "string"},
            "zone": {"type": "string"},
            "health": {"type": "string", "enum": ["HEALTHY", "DRAINING", "UNHEALTHY"]},
            "weight": {"type": "integer", "minimum": 1},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    lb_endpoint = {
        "type": "object",
        "required": ["endpoint", "health_status", "metadata"],
        "properties": {
            "endpoint": {
                "type": "object",
                "required": ["address"],
                "properties": {
                    "address": {
                        "type": "object",
                        "required": ["socket_address"],
                        "properties": {
                            "socket_address": {
                                "type": "object",
                                "required": ["address", "port_value"],
                                "properties": {
                                    "address": {"type": "string"},
                                    "port_value": {"type": "integer", "minimum": 1, "maximum": 65535},
                                },
                            }
                        },
                    }
                },
            },
            "health_status": {"type": "string", "enum": ["HEALTHY", "DRAINING", "UNHEALTHY"]},
            "load_balancing_weight": {"type": "integer", "minimum": 1},
            "metadata": {"type": "object"},
        },
    }
    assignment = {
        "type": "object",
        "required": ["@type", "cluster_name"],
        "properties": {
            "@type": {"type": "string", "enum": [eds.CLA_TYPE]},
            "cluster_name": {"type": "string"},
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["locality", "lb_endpoints"],
                    "properties": {
                        "locality": {
                            "type": "object",
                            "properties": {"region": {"type": "string"}, "zone": {"type": "string"}},
                        },
                        "lb_endpoints": {"type": "array", "items": lb_endpoint},
                    },
                },
            },
        },
    }
    count = {"type": "integer", "minimum": 0}
    return {
        "Error": {
            "type": "object",
            "description": "Every error the API answers: the routes', Chalice's own (405, 415, 500) and, "
            "deployed, API Gateway's (through the gateway responses of the stage's merge template).",
            "required": ["error", "field"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string"},
                "field": {**NULLABLE_STRING, "description": "the path of the offending field, or null"},
            },
        },
        **_model_schemas(),
        "Upstream": upstream,
        "UpstreamStatus": status,
        "UpstreamDescribed": {
            "description": "The document as stored plus its status; never a secret value.",
            "allOf": [ref("Upstream"), {"type": "object", "required": ["status"], "properties": {"status": status}}],
        },
        "EndpointSet": {
            "type": "object",
            "required": ["cluster_name", "namespace", "name", "version", "endpoints"],
            "properties": {
                "cluster_name": {"type": "string"},
                "namespace": {"type": "string"},
                "name": {"type": "string"},
                "region": {"type": "string"},
                "version": {"type": "string"},
                "endpoints": {"type": "array", "items": endpoint},
            },
        },
        "ScanSummary": {
            "type": "object",
            "required": ["upstreams", "instances", "changed", "errors", "aws_calls"],
            "properties": {
                "upstreams": count,
                "instances": count,
                "changed": count,
                "errors": count,
                "groups": count,
                "conflicts": count,
                "deferred": count,
                "discovered": {"type": "object", "additionalProperties": count},
                "aws_calls": {
                    "type": "object",
                    "required": ["ec2:DescribeInstances", "sts:AssumeRole", "secretsmanager:GetSecretValue"],
                    "additionalProperties": count,
                },
            },
        },
        "DiscoveryRequest": {
            "type": "object",
            "description": "Envoy's REST-JSON DiscoveryRequest (snake_case; lowerCamelCase is accepted too).",
            "required": ["resource_names"],
            "properties": {
                "version_info": {"type": "string"},
                "resource_names": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": eds.MAX_CLUSTERS,
                    "items": {"type": "string", "minLength": 1, "description": "a cluster name, name_namespace"},
                },
                "type_url": {"type": "string", "enum": [eds.CLA_TYPE]},
                "node": {"type": "object"},
                "response_nonce": {"type": "string"},
            },
        },
        "DiscoveryResponse": {
            "type": "object",
            "required": ["version_info", "resources", "type_url"],
            "properties": {
                "version_info": {"type": "string"},
                "resources": {"type": "array", "items": assignment},
                "type_url": {"type": "string", "enum": [eds.CLA_TYPE]},
            },
        },
        "ClusterDiscoveryRequest": {
            "type": "object",
            "description": "Envoy's REST-JSON DiscoveryRequest for clusters: resource_names empty asks for all.",
            "properties": {
                "version_info": {"type": "string"},
                "resource_names": {"type": "array", "maxItems": cds.MAX_NAMES, "items": {"type": "string"}},
                "type_url": {"type": "string", "enum": [cds.CLUSTER_TYPE]},
                "node": {"type": "object"},
                "response_nonce": {"type": "string"},
            },
        },
        "ClusterDiscoveryResponse": {
            "type": "object",
            "required": ["version_info", "resources", "type_url"],
            "properties": {
                "version_info": {"type": "string"},
                "resources": {
                    "type": "array",
                    "description": "one EDS cluster (envoy.config.cluster.v3.Cluster) per upstream: name_namespace",
                    "items": {
                        "type": "object",
                        "required": ["@type", "name", "type", "eds_cluster_config"],
                        "properties": {
                            "@type": {"const": cds.CLUSTER_TYPE},
                            "name": {"type": "string"},
                            "type": {"const": "EDS"},
                        },
                    },
                },
                "type_url": {"type": "string", "enum": [cds.CLUSTER_TYPE]},
            },
        },
        "TargetGroups": {
            "type": "array",
            "description": "Prometheus HTTP SD: one target group per endpoint.",
            "items": {
                "type": "object",
                "required": ["targets", "labels"],
                "properties": {
                    "targets": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                    "labels": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
        },
    }


# --- what each route answers, by view name -------------------------------------------------------


def json_reply(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        reply["headers"] = headers
    return reply


def failure(description: str) -> dict[str, Any]:
    return json_reply(description, ref("Error"))


BAD_NAME = failure("a namespace or name in the path is not a DNS-1123 label")
ETAG = {"ETag": {"schema": {"type": "string"}, "description": "the set's version, quoted"}}
QUERY_LABEL = {"type": "string"}
MAX_BODY = Settings.model_fields["max_body_bytes"].default
BUDGET = api.RESPONSE_BUDGET
BAD_BODY = (
    "not valid (field names the path): not UTF-8, not JSON/YAML, a key given twice, NaN or Infinity, "
    "an integer outside 64 bits, aliases or tags in YAML; nothing stored"
)
BODY_TOO_LARGE = f"the body is over MAX_BODY_BYTES ({MAX_BODY} bytes by default); nothing stored"
AFTER = {
    "type": "string",
    "description": "the `next` of the previous page: list from after this key",
}


def listing(kind: str, item: str, key: str) -> dict[str, Any]:
    return json_reply(
        f"the {kind}, in {key} order; when they would pass one answer's budget ({BUDGET} bytes), "
        f"a page of them and `next` (ask again with ?after=NEXT)",
        {
            "type": "object",
            "required": [kind],
            "properties": {
                kind: {"type": "array", "items": ref(item)},
                "next": {"type": "string", "description": f"the last {key} of this page; absent on the last page"},
            },
        },
    )


ROUTES: dict[str, dict[str, Any]] = {
    "healthz": {
        "summary": "Liveness",
        "responses": {"200": json_reply("always", {"type": "object", "properties": {"status": {"const": "ok"}}})},
    },
    "list_upstreams": {
        "summary": "Every upstream with its status",
        "query": {"after": AFTER},
        "responses": {"200": listing("upstreams", "UpstreamDescribed", "namespace/name")},
    },
    "put_upstream": {
        "summary": "Create or replace an upstream (a Gloo Upstream document, JSON or YAML)",
        "body": ref("Upstream"),
        "responses": {
            "200": json_reply("replaced", ref("UpstreamDescribed")),
            "201": json_reply("created", ref("UpstreamDescribed")),
            "400": failure(f"a name in the path or the document is {BAD_BODY}"),
            "413": failure(
                f"{BODY_TOO_LARGE}; or the document compresses past {MAX_DOCUMENT_BYTES} bytes "
                "(what one DynamoDB item holds)"
            ),
        },
    },
    "get_upstream": {
        "summary": "One upstream with its status",
        "responses": {
            "200": json_reply("the upstream", ref("UpstreamDescribed")),
            "400": BAD_NAME,
            "404": failure("no such upstream"),
        },
    },
    "delete_upstream": {
        "summary": "Remove an upstream and its endpoint set",
        "responses": {
            "200": json_reply("deleted", {"type": "object", "properties": {"deleted": {"type": "string"}}}),
            "400": BAD_NAME,
            "404": failure("no such upstream"),
        },
    },
    "list_accounts": {
        "summary": "Every named account",
        "query": {"after": AFTER},
        "responses": {"200": listing("accounts", "AccountDescribed", "name")},
    },
    "put_account": {
        "summary": "Create or replace a named account",
        "body": ref("Account"),
        "responses": {
            "200": json_reply("replaced", ref("AccountDescribed")),
            "201": json_reply("created", ref("AccountDescribed")),
            "400": failure(f"the name in the path or the document is {BAD_BODY}"),
            "409": failure("the edit drops a region that upstreams using the account are in (they are named)"),
            "413": failure(BODY_TOO_LARGE),
        },
    },
    "get_account": {
        "summary": "One named account",
        "responses": {
            "200": json_reply("the account", ref("AccountDescribed")),
            "400": failure("the name in the path is not a DNS-1123 label"),
            "404": failure("no such account"),
        },
    },
    "delete_account": {
        "summary": "Remove a named account no upstream uses",
        "responses": {
            "200": json_reply("deleted", {"type": "object", "properties": {"deleted": {"type": "string"}}}),
            "400": failure("the name in the path is not a DNS-1123 label"),
            "404": failure("no such account"),
            "409": failure("upstreams still use it"),
        },
    },
    "scan": {
        "summary": "Run a full reconcile now",
        "responses": {"200": json_reply("the scan's summary", ref("ScanSummary"))},
    },
    "get_endpoints": {
        "summary": "An upstream's endpoint set, with ETag",
        "headers": {"If-None-Match": {"type": "string"}},
        "responses": {
            "200": json_reply("the set", ref("EndpointSet"), ETAG),
            "304": {"description": "If-None-Match holds the current ETag", "headers": ETAG},
            "400": BAD_NAME,
            "404": failure(
                "no such upstream, or no endpoint set yet: the error gives the upstream's status reason and what to do"
            ),
            "413": failure(
                f"the set would pass one answer's budget ({BUDGET} bytes, about 31,000 endpoints): "
                "the error names how many endpoints an upstream may hold and the Prometheus shards that can read it"
            ),
        },
    },
    "envoy_eds": {
        "summary": "Envoy REST-JSON EDS",
        "body": ref("DiscoveryRequest"),
        "responses": {
            "200": json_reply("one ClusterLoadAssignment per requested cluster", ref("DiscoveryResponse")),
            "304": {"description": "the request's version_info is current"},
            "400": failure(
                f"not a strict-JSON DiscoveryRequest, no resource_names, or more than {eds.MAX_CLUSTERS} of them"
            ),
            "413": failure(
                f"the answer would pass one answer's budget ({BUDGET} bytes): the error names the slices of "
                "resource_names to ask for in separate requests, or, for one cluster alone, how far to split "
                "its upstream"
            ),
        },
    },
    "envoy_cds": {
        "summary": "Envoy REST-JSON CDS: one EDS cluster per upstream, polling the API cluster Envoy named as Host",
        "body": ref("ClusterDiscoveryRequest"),
        "responses": {
            "200": json_reply("every upstream's cluster", ref("ClusterDiscoveryResponse")),
            "304": {"description": "the request's version_info is current"},
            "400": failure("not a DiscoveryRequest for clusters, or no Host to name the API cluster"),
        },
    },
    "prometheus_targets": {
        "summary": "Prometheus HTTP SD target groups (never 304)",
        "query": {
            "namespace": {**QUERY_LABEL, "description": "only the upstreams of this namespace"},
            "name": {**QUERY_LABEL, "description": "only the upstreams of this name"},
            "shards": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1000,
                "description": "split the targets into this many shards by a hash of each endpoint (default 1)",
            },
            "shard": {
                "type": "integer",
                "minimum": 0,
                "maximum": 999,
                "description": "which shard to answer, 0 to shards-1 (default 0)",
            },
        },
        "responses": {
            "200": json_reply("the target groups", ref("TargetGroups")),
            "400": failure("shards or shard out of range"),
            "413": failure(
                f"the shard would pass one answer's budget ({BUDGET} bytes): the error names the shard count"
            ),
        },
    },
}


def _operation(path: str, method: str, entry: Any) -> dict[str, Any]:
    described = ROUTES.get(entry.view_name)
    if described is None:
        raise KeyError(f"{method} {path} ({entry.view_name}) has no description in devtools/openapi.py ROUTES")
    operation: dict[str, Any] = {"operationId": entry.view_name, "summary": described["summary"]}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in entry.view_args
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in described.get("query", {}).items()
    ]
    parameters += [
        {"name": name, "in": "header", "required": False, "schema": schema}
        for name, schema in described.get("headers", {}).items()
    ]
    if parameters:
        operation["parameters"] = parameters
    if "body" in described:
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": described["body"]} for media in entry.content_types},
        }
    responses = dict(described["responses"])
    if method in ("PUT", "POST") and "body" in described:
        responses["415"] = failure(
            f"a Content-Type the route does not take (it takes {', '.join(entry.content_types)})"
        )
    operation["responses"] = responses
    operation["security"] = [{"sigv4": []}] if entry.authorizer is not None else []
    return operation


def generate(app: Any = None) -> dict[str, Any]:
    """The OpenAPI document of `app` (default: the one in app.py)."""
    if app is None:
        from app import app
    paths: dict[str, dict[str, Any]] = {}
    for path, methods in sorted(app.routes.items()):
        for method, entry in sorted(methods.items()):
            paths.setdefault(path, {})[method.lower()] = _operation(path, method, entry)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ec2-eds",
            "version": "1",
            "description": "EC2 instances of Gloo EC2 upstreams as Envoy EDS, JSON and Prometheus HTTP SD. "
            "Generated by `python -m devtools.openapi write` from app.py; see the README. "
            f"Limits: a request body of at most {MAX_BODY} bytes (MAX_BODY_BYTES; 413 past it); a stored "
            f"document of at most {MAX_DOCUMENT_BYTES} bytes compressed (413); at most {eds.MAX_CLUSTERS} "
            f"clusters per EDS request (400); one answer of at most {BUDGET} bytes as Lambda carries it "
            "(EDS, /endpoints and Prometheus answer 413 naming how to split; the lists page).",
        },
        "servers": [{"url": "http://127.0.0.1:8000", "description": "make run (chalice local)"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "description": "AWS SigV4 (API Gateway IAM authorization); not enforced by chalice local",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                }
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.openapi", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(generate())
    if args.command == "write":
        args.output.write_text(text)
        print(f"wrote {args.output}")
        return 0
    if not args.output.exists() or args.output.read_text() != text:
        print(f"{args.output} is stale: run python -m devtools.openapi write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
