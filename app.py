"""ec2-eds: the whole surface of the service, routes and triggers, on one screen."""

import functools
import os

from botocore.exceptions import ClientError
from chalice import Chalice, IAMAuthorizer, Rate, Response
from chalice.app import Request

from chalicelib import local_gateway, runtime
from chalicelib.observability import flush, logger, start_tracing
from chalicelib.usecases import admin, api, replies

# configure_logs=False: Chalice would set the `ec2-eds` logger, Powertools' own, to ERROR.
app = Chalice(app_name="ec2-eds", configure_logs=False)
YAML_OR_JSON = ["application/json", "application/yaml", "application/x-yaml", "text/yaml"]
# Deployed, admin routes need IAM (SigV4) auth; so do the read routes unless the stage says
# READ_ROUTES_AUTH=none. The EDS route has none: Envoy cannot sign, so it is reached through a
# private API or a custom domain (docs/DEPLOY.md). `chalice local` does not enforce IAM auth.
ADMIN = IAMAuthorizer()
READ = None if os.environ.get("READ_ROUTES_AUTH", "iam") == "none" else ADMIN


def seconds_left(context):
    """What the invocation has left, for a scan to stop cleanly before its timeout."""
    return (lambda: context.get_remaining_time_in_millis() / 1000) if context else None


def respond(reply: replies.Reply) -> Response:
    reply = replies.within_limit(reply)  # never an answer past Lambda's 6 MB, on any route
    return Response(body=reply.text(), status_code=reply.status, headers=dict(reply.headers))


def request() -> Request:
    """The route's request: Chalice sets it before calling any route."""
    current = app.current_request
    if current is None:
        raise RuntimeError("no current request outside a route")
    return current


def query(name: str) -> str | None:
    params = request().query_params
    return params.get(name) if params else None


def header(name: str) -> str | None:
    return request().headers.get(name)


def body() -> bytes:
    raw = request().raw_body or b""
    return raw.encode() if isinstance(raw, str) else raw


def request_id(event) -> str | None:
    """An HTTP request's id from API Gateway (`context` is its requestContext dict; the id a client sees
    in x-amzn-RequestId), else the Lambda invocation's (event handlers, and `chalice local`)."""
    context = getattr(event, "context", None)
    if isinstance(context, dict):
        if context.get("requestId"):
            return context["requestId"]
        context = getattr(event, "lambda_context", None)
    return getattr(context, "aws_request_id", None)


@app.middleware("all")
def observe(event, get_response):
    """Tracing started, request context in every log line, metrics flushed after every invocation."""
    start_tracing()
    logger.append_keys(request_id=request_id(event))
    try:
        return get_response(event)
    finally:
        flush()


@app.middleware("http")
def one_error_format(request, get_response):
    """Chalice's own answers (405, 415, 500: `{"Code", "Message"}`) in the API's `{"error", "field"}`."""
    response = get_response(request)
    route = app.routes.get(request.context.get("resourcePath", ""), {}).get(request.method)
    accepted = route.content_types if route else None
    body = replies.framework_error(response.status_code, response.body, response.headers.get("Allow"), accepted)
    if body is not None:
        response.body = body
        response.headers["Content-Type"] = replies.JSON
    return response


if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # `chalice local` and the test client: unknown path -> 404
    local_gateway.install()


@app.route("/healthz", methods=["GET"])
def healthz():
    return {"status": "ok"}


@app.route("/upstreams", methods=["GET"], authorizer=ADMIN)
def list_upstreams():
    return respond(admin.list_upstreams(runtime.store(), query("after")))


@app.route("/upstreams/{namespace}/{name}", methods=["PUT"], content_types=YAML_OR_JSON, authorizer=ADMIN)
def put_upstream(namespace, name):
    return respond(
        admin.put_upstream(
            runtime.store(),
            namespace,
            name,
            body(),
            header("content-type"),
            runtime.now(),
            runtime.apply_now,
            runtime.settings().max_body_bytes,
        )
    )


@app.route("/upstreams/{namespace}/{name}", methods=["GET"], authorizer=ADMIN)
def get_upstream(namespace, name):
    return respond(admin.get_upstream(runtime.store(), namespace, name))


@app.route("/upstreams/{namespace}/{name}", methods=["DELETE"], authorizer=ADMIN)
def delete_upstream(namespace, name):
    return respond(admin.delete_upstream(runtime.store(), namespace, name))


@app.route("/accounts", methods=["GET"], authorizer=ADMIN)
def list_accounts():
    return respond(admin.list_accounts(runtime.store(), query("after")))


@app.route("/accounts/{name}", methods=["PUT"], content_types=YAML_OR_JSON, authorizer=ADMIN)
def put_account(name):
    return respond(
        admin.put_account(
            runtime.store(), name, body(), header("content-type"), runtime.apply_now, runtime.settings().max_body_bytes
        )
    )


@app.route("/accounts/{name}", methods=["GET"], authorizer=ADMIN)
def get_account(name):
    return respond(admin.get_account(runtime.store(), name))


@app.route("/accounts/{name}", methods=["DELETE"], authorizer=ADMIN)
def delete_account(name):
    return respond(admin.delete_account(runtime.store(), name))


@app.route("/scan", methods=["POST"], authorizer=ADMIN)
def start_scan():
    summary = runtime.full_scan(seconds_left(app.lambda_context))  # in this invocation, every group
    return respond(admin.scan_summary(summary.as_dict()))


@app.route("/endpoints/{namespace}/{name}", methods=["GET"], authorizer=READ)
def get_endpoints(namespace, name):
    return respond(api.get_endpoints(runtime.store(), namespace, name, header("if-none-match")))


@app.route("/v3/discovery:endpoints", methods=["POST"])
def envoy_eds():
    return respond(api.discovery_endpoints(runtime.store(), body()))


@app.route("/v3/discovery:clusters", methods=["POST"])
def envoy_cds():
    conf = runtime.settings()
    return respond(
        api.discovery_clusters(
            runtime.store(), body(), header("host"), conf.cds_eds_cluster, conf.cds_eds_refresh_seconds
        )
    )


@app.route("/prometheus/targets", methods=["GET"], authorizer=READ)
def prometheus_targets():
    return respond(
        api.prometheus_targets(runtime.store(), query("namespace"), query("name"), query("shard"), query("shards"))
    )


# EventBridge rules, one per event kind; each delivers to the same handler code as `cli event`.
@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]})
def ec2_state_change(event):
    return runtime.deliver(event.to_dict())


@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]})
def ec2_spot_interruption(event):
    return runtime.deliver(event.to_dict())


@app.on_cw_event(
    {
        "source": ["aws.tag"],
        "detail-type": ["Tag Change on Resource"],
        "detail": {"service": ["ec2"], "resource-type": ["instance"]},
    }
)
def ec2_tag_change(event):
    return runtime.deliver(event.to_dict())


@app.on_cw_event({"source": ["aws.autoscaling"], "detail-type": ["EC2 Instance-terminate Lifecycle Action"]})
def asg_terminate_lifecycle(event):
    return runtime.deliver_lifecycle(event.to_dict())  # drain, then schedule CompleteLifecycleAction on the drain queue


# The drain queue (an SQS delay queue): a message is due when the drain period is over; its handler
# completes the lifecycle action (CONTINUE), so the group terminates the instance only then.
@app.on_sqs_message(queue=os.environ.get("DRAIN_QUEUE", "ec2-eds-dev-drain"), batch_size=1)
def asg_drain_complete(event):
    return {"outcomes": runtime.complete_drains([record.body for record in event])}


# The event queue: where the EventBridge rules of the deployment send EC2 events (the merge template's
# rules; the direct rules above stay for `chalice deploy` without it, disabled by the template). A batch
# waits up to EVENT_BATCH_WINDOW_SECONDS (at most 2 s) for up to EVENT_BATCH_SIZE events; the batch is
# coalesced by group, and the failed messages alone are delivered again (then kept by the DLQ).
@app.on_sqs_message(
    queue=os.environ.get("EVENT_QUEUE", "ec2-eds-dev-events"),
    batch_size=int(os.environ.get("EVENT_BATCH_SIZE", "1000")),
    maximum_batching_window_in_seconds=min(2, int(os.environ.get("EVENT_BATCH_WINDOW_SECONDS", "2"))),
)
def ec2_event_batch(event):
    return runtime.deliver_queue(event.to_dict())


@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]})
def ec2_rebalance_recommendation(event):
    return runtime.deliver(event.to_dict())


@app.on_cw_event(
    {
        "source": ["aws.health"],
        "detail-type": ["AWS Health Event"],
        "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]},
    }
)
def ec2_scheduled_change(event):
    return runtime.deliver(event.to_dict())


# The rate is a deployment setting: Chalice loads the app with the stage's variables.
# The scheduled scan fans out: it plans (reads the upstreams, groups them, records the scan) and sends
# one message per (credentials, region) group to the scan queue, whose handler lists and writes that group.
@app.schedule(Rate(int(os.environ.get("SCAN_RATE_MINUTES", "5")), unit=Rate.MINUTES))
def scheduled_scan(event):
    return runtime.plan_scan()


# One group per invocation (a group too large for one continues in another, from its page token);
# a message whose handler keeps failing goes to the scan dead-letter queue (deploy/merge/*.json).
@app.on_sqs_message(queue=os.environ.get("SCAN_QUEUE", "ec2-eds-dev-scan"), batch_size=1)
def scan_group(event):
    return {"groups": runtime.scan_groups([record.body for record in event], seconds_left(event.context))}


# Last, so that it covers every route above.
def answer_missing_tables(view):
    """A route whose DynamoDB table does not exist answers 503 naming it and `bootstrap`, not a bare 500."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except ClientError as err:
            reply = replies.missing_table(err, runtime.missing_table_message)
            if reply is None:
                raise
            return respond(reply)

    return guarded


for _methods in app.routes.values():
    for _entry in _methods.values():
        _entry.view_function = answer_missing_tables(_entry.view_function)
