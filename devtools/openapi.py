"""The API's OpenAPI 3.1 description, generated from the routes of `app.py`.

Every route Chalice knows (`app.routes`) becomes an operation: its path,
method, path parameters, accepted content types and authorizer come from the
route itself; its summary, statuses and which body it takes and answers are
named below (`ROUTES`). The bodies' schemas are generated from their models
(`chalicelib.domain.models`, `model_json_schema(by_alias=True)`, their $defs
as components), plus the patterns of `chalicelib.domain.spec` where a validator
says more than a type. A route without a description below is an error, so a
new route cannot go undescribed.

    python -m devtools.openapi write    # regenerate docs/openapi.json
    python -m devtools.openapi check    # exit 1 if docs/openapi.json is stale

`tests/reliability/test_openapi.py` fails when the committed file differs
from what `write` generates; schemathesis runs against `chalice local` with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from chalicelib.config import Settings
from chalicelib.domain import models
from chalicelib.domain.envoy import MAX_CLUSTERS
from chalicelib.domain.names import DNS1123_LABEL
from chalicelib.domain.spec import REGION, ROLE_ARN
from chalicelib.edges.store.chunks import MAX_DOCUMENT_BYTES
from chalicelib.usecases import replies

PROJECT_DIR = Path(__file__).resolve().parent.parent
OUTPUT = PROJECT_DIR / "docs" / "openapi.json"
REF = "#/components/schemas/{model}"
# Every body the API answers, and every body it takes, as its model (chalicelib.domain.models).
ANSWERS = (
    models.Error,
    models.Health,
    models.Deleted,
    models.UpstreamDescribed,
    models.UpstreamList,
    models.AccountDescribed,
    models.AccountList,
    models.ScanSummary,
    models.EndpointSet,
    models.DiscoveryResponse,
    models.ClusterDiscoveryResponse,
    models.TargetGroups,
)
REQUESTS = (models.Upstream, models.Account, models.DiscoveryRequest, models.ClusterDiscoveryRequest)


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


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


def _schemas() -> dict[str, Any]:
    """Every model's JSON Schema (answers as serialised, requests as validated), $defs as components."""
    wanted = [(model, "serialization") for model in ANSWERS] + [(model, "validation") for model in REQUESTS]
    _, top = models_json_schema(wanted, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = top["$defs"]
    _validators_say_more(schemas)
    return schemas


def _validators_say_more(schemas: dict[str, Any]) -> None:
    """What domain/spec.py's validators check beyond the models' types (Gloo's fields stay as Gloo names them)."""
    ec2 = schemas["AwsEc2Spec"]["properties"]
    ec2["region"]["pattern"] = anchored(REGION.pattern)
    ec2["roleArn"]["anyOf"][0]["pattern"] = anchored(ROLE_ARN.pattern)
    ec2["account"]["anyOf"][0].update(LABEL)
    schemas["ResourceRef"]["properties"]["name"].update(SUBDOMAIN)
    schemas["ResourceRef"]["properties"]["namespace"].update(LABEL)
    schemas["TagFilter"]["oneOf"] = [{"required": ["key"]}, {"required": ["kvPair"]}]
    account = schemas["Account"]
    account["required"] = [name for name in account["required"] if name != "name"]  # the path names it
    schemas["UpstreamDescribed"]["allOf"] = [ref("Upstream")]  # the document as stored, plus its status


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
BUDGET = replies.RESPONSE_BUDGET
BAD_BODY = (
    "not valid (field names the path): not UTF-8, not JSON/YAML, a key given twice, NaN or Infinity, "
    "an integer outside 64 bits, aliases or tags in YAML; nothing stored"
)
BODY_TOO_LARGE = f"the body is over MAX_BODY_BYTES ({MAX_BODY} bytes by default); nothing stored"
AFTER = {
    "type": "string",
    "description": "the `next` of the previous page: list from after this key",
}


def listing(listed: type[models.Page], key: str) -> dict[str, Any]:
    return json_reply(
        f"the {listed.kind}, in {key} order; when they would pass one answer's budget ({BUDGET} bytes), "
        f"a page of them and `next` (the last {key} of the page: ask again with ?after=NEXT)",
        ref(listed.__name__),
    )


ROUTES: dict[str, dict[str, Any]] = {
    "healthz": {
        "summary": "Liveness",
        "responses": {"200": json_reply("always", ref("Health"))},
    },
    "list_upstreams": {
        "summary": "Every upstream with its status",
        "query": {"after": AFTER},
        "responses": {"200": listing(models.UpstreamList, "namespace/name")},
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
            "200": json_reply("deleted", ref("Deleted")),
            "400": BAD_NAME,
            "404": failure("no such upstream"),
        },
    },
    "list_accounts": {
        "summary": "Every named account",
        "query": {"after": AFTER},
        "responses": {"200": listing(models.AccountList, "name")},
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
            "200": json_reply("deleted", ref("Deleted")),
            "400": failure("the name in the path is not a DNS-1123 label"),
            "404": failure("no such account"),
            "409": failure("upstreams still use it"),
        },
    },
    "start_scan": {
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
                f"not a strict-JSON DiscoveryRequest, no resource_names, or more than {MAX_CLUSTERS} of them"
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
            f"document of at most {MAX_DOCUMENT_BYTES} bytes compressed (413); at most {MAX_CLUSTERS} "
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
