"""The IAM policies and the deployment overlays of every stage, from one definition.

What each Lambda function may do is written down once, here, from what its
code calls (see `DYNAMODB` and `discovery_statements`); the JSON files that
Chalice and CloudFormation read are generated from it:

- `policies/{stage}/{function}.json`: each function's role policy
  (`iam_policy_file` in `.chalice/config.json`, `autogen_policy: false`);
- `policies/member/permissions.json`, `policies/member/trust-{stage}.json`:
  the role a member account lends to discovery (placeholders
  `CENTRAL_ACCOUNT_ID` and `EXTERNAL_ID`, see `member-trust` below);
- `deploy/merge/{stage}.json`: the template `chalice package --merge-template`
  merges in (the tables, the failure queue, fixed function and role names);
- `deploy/member-account.json`: the member-account CloudFormation template.

Table names and the secret prefix come from the stage's variables in
`.chalice/config.json`, so the files always name what the functions use.

    python -m devtools.policies write [--assume-role-arn ARN ...] [--asg-name NAME ...]  # regenerate
    python -m devtools.policies check                               # exit 1 if a file is stale
    python -m devtools.policies member-trust --stage prod \\
        --central-account 111122223333 --external-id ID             # a filled-in trust policy

`tests/deploy/test_policies.py` fails when a committed file differs from
what `write` generates with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chalice.utils import to_cfn_resource_name

from chalicelib.config import stage_environment

from . import tracing_layer

PROJECT_DIR = Path(__file__).resolve().parent.parent
POLICIES_DIR = PROJECT_DIR / "policies"
DEPLOY_DIR = PROJECT_DIR / "deploy"

APP = "ec2-eds"
STAGES = ("dev", "prod")
XRAY_STAGES = frozenset({"prod"})  # "xray": true in .chalice/config.json
TRACING_LAYER = "TracingLayer"  # the stages of XRAY_STAGES get X-Ray's SDK as this layer
TRACING_LAYER_ZIP = tracing_layer.LAYER_ZIP
TRACING_LAYER_RUNTIME = tracing_layer.RUNTIME
API_HANDLER = "api_handler"
FUNCTIONS = (
    API_HANDLER,
    "scheduled_scan",
    "ec2_state_change",
    "ec2_spot_interruption",
    "ec2_tag_change",
    "asg_terminate_lifecycle",
    "ec2_rebalance_recommendation",
    "ec2_scheduled_change",
    "asg_drain_complete",
    "scan_group",
    "ec2_event_batch",
)
# The drain queue's consumer (chalicelib/usecases/lifecycle.py) completes lifecycle actions: no table, no discovery.
DRAIN_FUNCTION = "asg_drain_complete"
# The scan fans out: the schedule plans (tables and the scan queue only, no AWS listing), the scan
# queue's consumer lists and writes one (credentials, region) group per invocation.
PLANNER, SCAN_FUNCTION = "scheduled_scan", "scan_group"
SCAN_FUNCTION_TIMEOUT = 300  # lambda_timeout of scan_group in .chalice/config.json
# The event queue's consumer: EC2 events in batches (chalicelib/usecases/events.py, coalesced by group).
EVENT_FUNCTION = "ec2_event_batch"
EVENT_FUNCTION_TIMEOUT = 120  # lambda_timeout of ec2_event_batch in .chalice/config.json
# Invoked asynchronously by EventBridge (the schedule is a rule too): these get a failure destination.
ASYNC_FUNCTIONS = tuple(f for f in FUNCTIONS if f not in (API_HANDLER, DRAIN_FUNCTION, EVENT_FUNCTION, SCAN_FUNCTION))
DISCOVERY_FUNCTIONS = tuple(f for f in FUNCTIONS if f not in (DRAIN_FUNCTION, PLANNER))
# The EventBridge rules of these functions are disabled by the merge template: their events go through
# the event queue instead (the terminate lifecycle stays direct: it schedules the completion itself).
QUEUED_FUNCTIONS = (
    "ec2_state_change",
    "ec2_spot_interruption",
    "ec2_tag_change",
    "ec2_rebalance_recommendation",
    "ec2_scheduled_change",
)
# The event patterns (EVENT_PATTERNS below) the event queue receives, by the function they replace.
QUEUED_PATTERNS = {
    "ec2_state_change": "StateChange",
    "ec2_spot_interruption": "SpotInterruption",
    "ec2_tag_change": "TagChange",
    "ec2_rebalance_recommendation": "RebalanceRecommendation",
    "ec2_scheduled_change": "ScheduledChange",
}
# The Auto Scaling groups whose terminate lifecycle actions ec2-eds may complete (their names).
DEFAULT_ASG_NAMES = ("*",)
DRAIN_FUNCTION_TIMEOUT = 60  # lambda_timeout of asg_drain_complete in .chalice/config.json
# The roles discovery may assume (an upstream's `roleArn`): member roles are named ec2-eds-*.
DEFAULT_ASSUME_ROLE_ARNS = ("arn:aws:iam::*:role/ec2-eds-*",)
MEMBER_ROLE_NAME = "ec2-eds-discovery"
PLACEHOLDER_ACCOUNT = "CENTRAL_ACCOUNT_ID"
PLACEHOLDER_EXTERNAL_ID = "EXTERNAL_ID"

UPSTREAMS, ENDPOINTS = "UPSTREAMS_TABLE", "ENDPOINTS_TABLE"
_UPSTREAMS_READ_WRITE = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Scan",
    "dynamodb:ConditionCheckItem",
]
_EVENT_ENDPOINTS = [
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
    "dynamodb:UpdateItem",
]
# What each function calls on each table (chalicelib/edges/store.py, by code path):
# - every reader: Scan of upstreams (list), GetItem of `~scan`/`~draining`;
# - scan: UpdateItem (status, draining marks), PutItem (scan marks, endpoint sets and their chunks),
#   Scan of endpoint digests, DeleteItem (replaced chunks, sets of deleted upstreams);
# - events: GetItem + BatchGetItem (a set and its chunks), PutItem/DeleteItem (the new set, old chunks),
#   UpdateItem (status, draining marks), PutItem on upstreams for the first draining mark;
#   GetItem + UpdateItem of membership records `~in/<group>/<instance>` in the endpoints table;
# - discovered upstreams (DISCOVERY_ENABLED, chalicelib/usecases/tag_discovery.py): the scan creates them
#   (PutItem), marks them missing (UpdateItem/PutItem) and deletes them (DeleteItem of the upstream
#   and its set); a tag-change event creates one (PutItem of the upstream and an empty set);
# - guarded set writes (scan, events, API) are transactions: ConditionCheckItem on the upstream
#   (its generation) and on the group's observation log `~seen/<group>`, PutItem of the set, after a
#   GetItem of the set's head; events record observations with UpdateItem on `~seen/<group>`;
#   orphaned sets are deleted in a transaction (ConditionCheckItem upstream, DeleteItem set).
# - API: all of the scan (POST /scan, and a PUT reconciles its groups) plus PUT/DELETE of upstreams
#   and accounts and the reads.
DYNAMODB: dict[str, dict[str, list[str]]] = {
    API_HANDLER: {
        UPSTREAMS: [*_UPSTREAMS_READ_WRITE, "dynamodb:DeleteItem"],
        ENDPOINTS: [
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:Scan",
        ],
    },
    # the planner: reads upstreams, accounts, the scan record and marks; records the scan and
    # statuses; forgets expired drains; deletes orphaned sets (a transaction with the upstream's check)
    PLANNER: {
        UPSTREAMS: ["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"],
        ENDPOINTS: ["dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:Scan"],
    },
    # a group worker: the scan's writes, its members' set heads in one BatchGetItem (and a Scan of the
    # set digests where a worker still reads them all: recorded by the least-privilege test)
    SCAN_FUNCTION: {
        UPSTREAMS: [*_UPSTREAMS_READ_WRITE, "dynamodb:DeleteItem"],
        ENDPOINTS: [
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:Scan",
        ],
    },
    "ec2_state_change": {
        UPSTREAMS: ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Scan", "dynamodb:ConditionCheckItem"],
        ENDPOINTS: _EVENT_ENDPOINTS,
    },
    "ec2_tag_change": {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
    "ec2_spot_interruption": {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
    "asg_terminate_lifecycle": {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
    "ec2_rebalance_recommendation": {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
    "ec2_scheduled_change": {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
    EVENT_FUNCTION: {UPSTREAMS: _UPSTREAMS_READ_WRITE, ENDPOINTS: _EVENT_ENDPOINTS},
}
# The functions that scan (POST /scan and a PUT in the API, the schedule): they alone ask
# DescribeInstanceStatus (instance health and scheduled maintenance); events describe one instance.
SCANNERS = (API_HANDLER, SCAN_FUNCTION)
# The actions the code calls (proven necessary against moto in tests/deploy/test_least_privilege.py);
# logs, X-Ray and SQS are called by Lambda itself on the function's behalf and checked statically.
DISCOVERY_ACTIONS = (
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceStatus",
    "sts:AssumeRole",
    "secretsmanager:GetSecretValue",
)


def function_name(stage: str, function: str) -> str:
    """The Lambda function name, as `chalice deploy` names it (and the merge template pins)."""
    return f"{APP}-{stage}" if function == API_HANDLER else f"{APP}-{stage}-{function}"


def role_name(stage: str, function: str) -> str:
    """The role name, as `chalice deploy` names it with `autogen_policy: false`."""
    return f"{APP}-{stage}-{function}"


def failure_queue_name(stage: str) -> str:
    return f"{APP}-{stage}-failed-invocations"


def drain_queue_name(stage: str) -> str:
    """The SQS delay queue holding lifecycle completions until the drain period is over (DRAIN_QUEUE)."""
    return str(stage_environment(stage, PROJECT_DIR)["DRAIN_QUEUE"])


def scan_queue_name(stage: str) -> str:
    """The SQS queue of the scan's group tasks (SCAN_QUEUE); its dead-letter queue adds `-dead-letters`."""
    return str(stage_environment(stage, PROJECT_DIR)["SCAN_QUEUE"])


def scan_queue_statements(stage: str, function: str) -> list[dict[str, Any]]:
    """The planner sends one message per group; a worker sends its continuation, and Lambda's SQS
    trigger receives and deletes as the worker's role."""
    actions = {
        PLANNER: ["sqs:GetQueueUrl", "sqs:SendMessage"],
        SCAN_FUNCTION: [
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:GetQueueUrl",
            "sqs:ReceiveMessage",
            "sqs:SendMessage",
        ],
    }.get(function)
    if actions is None:
        return []
    return [
        {
            "Sid": "ScanQueue",
            "Effect": "Allow",
            "Action": actions,
            "Resource": f"arn:aws:sqs:*:*:{scan_queue_name(stage)}",
        }
    ]


def event_queue_name(stage: str) -> str:
    """The SQS queue the EventBridge rules send EC2 events to (EVENT_QUEUE), batched to ec2_event_batch."""
    return f"{APP}-{stage}-events"


def event_dead_letter_queue_name(stage: str) -> str:
    """Where the event queue keeps a message that failed EVENT_RECEIVES times."""
    return f"{APP}-{stage}-events-dlq"


EVENT_RECEIVES = 3


def drain_queue_arn(stage: str) -> str:
    return f"arn:aws:sqs:*:*:{drain_queue_name(stage)}"


def asg_arn(name: str) -> str:
    return f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{name}"


def table_names(stage: str) -> dict[str, str]:
    env = stage_environment(stage, PROJECT_DIR)
    return {UPSTREAMS: env[UPSTREAMS], ENDPOINTS: env[ENDPOINTS]}


def table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:*:*:table/{name}"


def secret_arn_pattern(stage: str) -> str:
    return f"arn:aws:secretsmanager:*:*:secret:{stage_environment(stage, PROJECT_DIR)['SECRET_PREFIX']}*"


def _document(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def discovery_statements(stage: str, assume_role_arns: Sequence[str]) -> list[dict[str, Any]]:
    """Listing instances under an upstream's credentials: the function's role, a secret, an assumed role."""
    return [
        # DescribeInstances supports no resource-level permissions: "*" is the only resource it takes.
        {"Sid": "DescribeInstances", "Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"},
        {
            "Sid": "AssumeDiscoveryRoles",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole"],
            "Resource": list(assume_role_arns),
        },
        {
            "Sid": "ReadUpstreamSecrets",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": secret_arn_pattern(stage),
        },
    ]


def lifecycle_statements(stage: str, function: str, asg_names: Sequence[str]) -> list[dict[str, Any]]:
    """The terminate lifecycle path (chalicelib/usecases/lifecycle.py): schedule on the drain queue, then complete."""
    if function == "asg_terminate_lifecycle":
        return [
            # Describe* of Auto Scaling takes no resource-level permission: "*" is the only resource.
            {
                "Sid": "ReadHookHeartbeat",
                "Effect": "Allow",
                "Action": ["autoscaling:DescribeLifecycleHooks"],
                "Resource": "*",
            },
            {
                "Sid": "ScheduleCompletion",
                "Effect": "Allow",
                "Action": ["sqs:GetQueueUrl", "sqs:SendMessage"],
                "Resource": drain_queue_arn(stage),
            },
        ]
    if function == EVENT_FUNCTION:
        # Lambda's SQS trigger receives and deletes as the function's role; the code sends nothing.
        return [
            {
                "Sid": "EventQueue",
                "Effect": "Allow",
                "Action": ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"],
                "Resource": f"arn:aws:sqs:*:*:{event_queue_name(stage)}",
            }
        ]
    if function == DRAIN_FUNCTION:
        return [
            {
                "Sid": "CompleteLifecycleAction",
                "Effect": "Allow",
                "Action": ["autoscaling:CompleteLifecycleAction"],
                "Resource": [asg_arn(name) for name in asg_names],
            },
            # Lambda's SQS trigger receives and deletes as the function's role; the code sends a
            # message again for a long drain period's next hop and for a retried completion.
            {
                "Sid": "DrainQueue",
                "Effect": "Allow",
                "Action": [
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                    "sqs:ReceiveMessage",
                    "sqs:SendMessage",
                ],
                "Resource": drain_queue_arn(stage),
            },
        ]
    return []


def function_policy(
    stage: str,
    function: str,
    assume_role_arns: Sequence[str] = DEFAULT_ASSUME_ROLE_ARNS,
    asg_names: Sequence[str] = DEFAULT_ASG_NAMES,
) -> dict[str, Any]:
    """The role policy of one function of one stage."""
    tables = table_names(stage)
    log_group = f"arn:aws:logs:*:*:log-group:/aws/lambda/{function_name(stage, function)}"
    statements: list[dict[str, Any]] = [
        # The log group itself is created by the deployment (log_retention_in_days), not by the function.
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{log_group}:*",
        },
    ]
    for key, sid in ((UPSTREAMS, "UpstreamsTable"), (ENDPOINTS, "EndpointsTable")):
        if function not in DYNAMODB:
            break
        statements.append(
            {
                "Sid": sid,
                "Effect": "Allow",
                "Action": sorted(DYNAMODB[function][key]),
                "Resource": table_arn(tables[key]),
            }
        )
    if function in DISCOVERY_FUNCTIONS:
        discovery = discovery_statements(stage, assume_role_arns)
        if function in SCANNERS:  # no resource-level permissions either: "*"
            discovery[0]["Action"] = ["ec2:DescribeInstanceStatus", "ec2:DescribeInstances"]
        statements.extend(discovery)
    statements.extend(lifecycle_statements(stage, function, asg_names))
    statements.extend(scan_queue_statements(stage, function))
    if function in ASYNC_FUNCTIONS:
        # Lambda sends a failed asynchronous invocation to the on-failure destination as the function's role.
        statements.append(
            {
                "Sid": "FailureDestination",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": f"arn:aws:sqs:*:*:{failure_queue_name(stage)}",
            }
        )
    if stage in XRAY_STAGES:
        # X-Ray's segment APIs take no resource: "*" is the only resource they support.
        statements.append(
            {
                "Sid": "XRayTracing",
                "Effect": "Allow",
                "Action": ["xray:PutTelemetryRecords", "xray:PutTraceSegments"],
                "Resource": "*",
            }
        )
    return _document(statements)


def member_permissions() -> dict[str, Any]:
    """The member account's role: list instances and their status, nothing else."""
    actions = ["ec2:DescribeInstanceStatus", "ec2:DescribeInstances"]
    return _document([{"Sid": "DescribeInstances", "Effect": "Allow", "Action": actions, "Resource": "*"}])


def member_trust(
    stage: str, central_account: str = PLACEHOLDER_ACCOUNT, external_id: str = PLACEHOLDER_EXTERNAL_ID
) -> dict[str, Any]:
    """Trust the central account's discovery roles of this stage, and only with the external id."""
    roles = [f"arn:aws:iam::{central_account}:role/{role_name(stage, function)}" for function in DISCOVERY_FUNCTIONS]
    return _document(
        [
            {
                "Sid": "Ec2EdsDiscovery",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{central_account}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"sts:ExternalId": external_id},
                    "ArnEquals": {"aws:PrincipalArn": roles},
                },
            }
        ]
    )


def table_resources(stage: str) -> dict[str, Any]:
    """The two tables, as `chalicelib.edges.store.table_definitions` creates them, plus PITR and retention."""
    tables = table_names(stage)
    resources = {}
    for logical, key in (("UpstreamsTable", UPSTREAMS), ("EndpointsTable", ENDPOINTS)):
        resources[logical] = {
            "Type": "AWS::DynamoDB::Table",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": tables[key],
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST",
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},
            },
        }
    return resources


def cfn_name(function: str) -> str:
    """Chalice's CloudFormation logical id of a function (the API handler's is fixed)."""
    return "APIHandler" if function == API_HANDLER else to_cfn_resource_name(function)


def cfn_role_name(function: str) -> str:
    """Chalice's logical id of a function's role (`{function}_role` with `autogen_policy: false`)."""
    return to_cfn_resource_name(f"{function}_role")


# API Gateway answers some requests before the function runs (an unknown path or method, an unsigned
# request to an IAM route, throttling, a timeout): its gateway responses give them the API's one error
# shape. It cannot tell an unknown path from an unsigned request (both MISSING_AUTHENTICATION_TOKEN),
# so that one stays a 403 whose message names both causes.
ERROR_TEMPLATE = '{"error":$context.error.messageString,"field":null}'
NO_ROUTE_MESSAGE = (
    "no such route (the API's OpenAPI document lists them), or a route that needs a SigV4-signed request "
    "got an unsigned one"
)


def gateway_responses() -> dict[str, Any]:
    """API Gateway's own 4xx/5xx answers in `{"error", "field"}` (RestAPI is chalice package's API)."""

    def response(kind: str, template: str, status: str | None = None) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "RestApiId": {"Ref": "RestAPI"},
            "ResponseType": kind,
            "ResponseParameters": {"gatewayresponse.header.Content-Type": "'application/json'"},
            "ResponseTemplates": {"application/json": template},
        }
        if status:
            properties["StatusCode"] = status
        return {"Type": "AWS::ApiGateway::GatewayResponse", "Properties": properties}

    no_route = json.dumps({"error": NO_ROUTE_MESSAGE, "field": None}, separators=(",", ":"))
    return {
        "ErrorShape4xx": response("DEFAULT_4XX", ERROR_TEMPLATE),
        "ErrorShape5xx": response("DEFAULT_5XX", ERROR_TEMPLATE),
        "ErrorShapeNoRoute": response("MISSING_AUTHENTICATION_TOKEN", no_route, "403"),
    }


def scan_queue_resources(stage: str) -> dict[str, Any]:
    """The scan queue and its dead-letter queue: a group task whose worker fails 3 times (an
    exception, a timeout) is kept there 14 days; the next schedule plans the group again anyway."""
    return {
        "ScanDeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": f"{scan_queue_name(stage)}-dead-letters",
                "MessageRetentionPeriod": 1209600,
                "SqsManagedSseEnabled": True,
            },
        },
        "ScanQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": scan_queue_name(stage),
                # Lambda's advice for an SQS trigger: a visibility timeout of 6 x the function's timeout.
                "VisibilityTimeout": 6 * SCAN_FUNCTION_TIMEOUT,
                "MessageRetentionPeriod": 3600,  # a task older than an hour is superseded by newer scans
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["ScanDeadLetterQueue", "Arn"]},
                    "maxReceiveCount": 3,
                },
            },
        },
    }


def merge_template(stage: str) -> dict[str, Any]:
    """What `chalice package --merge-template` adds to the stage's SAM template."""
    resources: dict[str, Any] = table_resources(stage)
    resources["FailedInvocationsQueue"] = {
        "Type": "AWS::SQS::Queue",
        "Properties": {
            "QueueName": failure_queue_name(stage),
            "MessageRetentionPeriod": 1209600,
            "SqsManagedSseEnabled": True,
        },
    }
    resources["DrainQueue"] = {
        "Type": "AWS::SQS::Queue",
        "Properties": {
            "QueueName": drain_queue_name(stage),
            # Lambda's advice for an SQS trigger: a visibility timeout of 6 x the function's timeout.
            "VisibilityTimeout": 6 * DRAIN_FUNCTION_TIMEOUT,
            "MessageRetentionPeriod": 86400,
            "SqsManagedSseEnabled": True,
        },
    }
    resources.update(scan_queue_resources(stage))
    traced = stage in XRAY_STAGES
    if traced:  # X-Ray's SDK, beside the deployment zip (devtools/tracing_layer.py, run by `make package`)
        resources[TRACING_LAYER] = {
            "Type": "AWS::Serverless::LayerVersion",
            "Properties": {
                "LayerName": f"{APP}-{stage}-tracing",
                "Description": "aws-xray-sdk and wrapt for Powertools' Tracer (botocore comes with the runtime)",
                "ContentUri": f"./{TRACING_LAYER_ZIP}",
                "CompatibleRuntimes": [TRACING_LAYER_RUNTIME],
                "RetentionPolicy": "Delete",
            },
        }
    for function in FUNCTIONS:
        logical = cfn_name(function)
        resources[logical] = {"Properties": {"FunctionName": function_name(stage, function)}}
        if traced:
            resources[logical]["Properties"]["Layers"] = [{"Ref": TRACING_LAYER}]
        if function == DRAIN_FUNCTION:  # its SQS trigger names the queue: create the queue first
            resources[logical]["DependsOn"] = ["DrainQueue"]
        if function == SCAN_FUNCTION:
            resources[logical]["DependsOn"] = ["ScanQueue"]
        resources[cfn_role_name(function)] = {"Properties": {"RoleName": role_name(stage, function)}}
        # chalice 1.34 names the API handler's log group after a resource that does not exist
        # (`${ApiHandler}`): every group gets its literal name, which the policies name too.
        resources[to_cfn_resource_name(f"{function}_log_group")] = {
            "Properties": {"LogGroupName": f"/aws/lambda/{function_name(stage, function)}"}
        }
    for function in ASYNC_FUNCTIONS:
        resources[f"{cfn_name(function)}InvokeConfig"] = {
            "Type": "AWS::Lambda::EventInvokeConfig",
            "Properties": {
                "FunctionName": {"Ref": cfn_name(function)},
                "Qualifier": "$LATEST",
                # A missed schedule is made good by the next one; an event is worth two more tries.
                "MaximumRetryAttempts": 0 if function == "scheduled_scan" else 2,
                "MaximumEventAgeInSeconds": 3600,
                "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": ["FailedInvocationsQueue", "Arn"]}}},
            },
        }
    _merge(resources, event_queue_resources(stage))
    resources.update(gateway_responses())
    outputs: dict[str, Any] = {
        "UpstreamsTableName": {"Value": {"Ref": "UpstreamsTable"}},
        "EndpointsTableName": {"Value": {"Ref": "EndpointsTable"}},
        "FailedInvocationsQueueUrl": {"Value": {"Ref": "FailedInvocationsQueue"}},
        "DrainQueueUrl": {"Value": {"Ref": "DrainQueue"}},
        "ScanQueueUrl": {"Value": {"Ref": "ScanQueue"}},
        "ScanDeadLetterQueueUrl": {"Value": {"Ref": "ScanDeadLetterQueue"}},
        "EventQueueUrl": {"Value": {"Ref": "EventQueue"}},
        "EventDeadLetterQueueUrl": {"Value": {"Ref": "EventDeadLetterQueue"}},
    }
    for function in FUNCTIONS:
        outputs[f"{cfn_role_name(function)}Arn"] = {"Value": {"Fn::GetAtt": [cfn_role_name(function), "Arn"]}}
    return {"Resources": resources, "Outputs": outputs}


def event_queue_resources(stage: str) -> dict[str, Any]:
    """The event queue, its dead-letter queue, the rules that fill it (and the policy letting them),
    ReportBatchItemFailures on its consumer, and the direct rules it replaces disabled."""
    rules = {f"EventQueue{name}Rule": QUEUED_PATTERNS[function] for function, name in _queued_names().items()}
    resources: dict[str, Any] = {
        "EventDeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": event_dead_letter_queue_name(stage),
                "MessageRetentionPeriod": 1209600,
                "SqsManagedSseEnabled": True,
            },
        },
        "EventQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": event_queue_name(stage),
                "VisibilityTimeout": 6 * EVENT_FUNCTION_TIMEOUT,  # Lambda's advice for an SQS trigger
                "MessageRetentionPeriod": 3600,  # an event older than an hour: the scans have seen it
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["EventDeadLetterQueue", "Arn"]},
                    "maxReceiveCount": EVENT_RECEIVES,
                },
            },
        },
        "EventQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "EventQueue"}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "EventBridgeRules",
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": {"Fn::GetAtt": ["EventQueue", "Arn"]},
                            "Condition": {
                                "ArnEquals": {"aws:SourceArn": [{"Fn::GetAtt": [rule, "Arn"]} for rule in rules]}
                            },
                        }
                    ],
                },
            },
        },
    }
    for rule, pattern in rules.items():
        resources[rule] = {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "EventPattern": EVENT_PATTERNS[pattern],
                "State": "ENABLED",
                "Targets": [{"Arn": {"Fn::GetAtt": ["EventQueue", "Arn"]}, "Id": "event-queue"}],
            },
        }
    consumer = cfn_name(EVENT_FUNCTION)
    resources[consumer] = {
        "DependsOn": ["EventQueue"],
        "Properties": {
            "Events": {
                f"{consumer}SqsEventSource": {"Properties": {"FunctionResponseTypes": ["ReportBatchItemFailures"]}}
            }
        },
    }
    for function in QUEUED_FUNCTIONS:  # their events come through the queue now
        logical = cfn_name(function)
        resources[logical] = {"Properties": {"Events": {f"{logical}Event": {"Properties": {"State": "DISABLED"}}}}}
    return resources


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge `extra` into `into`, mappings key by key (as `chalice package --merge-template` does)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _queued_names() -> dict[str, str]:
    return {function: cfn_name(function) for function in QUEUED_FUNCTIONS}


# The EventBridge rules of app.py, as a member account forwards them.
EVENT_PATTERNS: dict[str, dict[str, Any]] = {
    "StateChange": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "SpotInterruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "TagChange": {
        "source": ["aws.tag"],
        "detail-type": ["Tag Change on Resource"],
        "detail": {"service": ["ec2"], "resource-type": ["instance"]},
    },
    "TerminateLifecycle": {
        "source": ["aws.autoscaling"],
        "detail-type": ["EC2 Instance-terminate Lifecycle Action"],
    },
    "RebalanceRecommendation": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "ScheduledChange": {
        "source": ["aws.health"],
        "detail-type": ["AWS Health Event"],
        "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]},
    },
}


def member_template() -> dict[str, Any]:
    """The member-account stack: the discovery role and the rules forwarding EC2 events to the central bus."""
    central_role = "arn:${AWS::Partition}:iam::${CentralAccountId}:role/" + APP + "-${Stage}-"
    resources: dict[str, Any] = {
        "DiscoveryRole": {
            "Type": "AWS::IAM::Role",
            "Condition": "CreateRole",
            "Properties": {
                "RoleName": {"Ref": "RoleName"},
                "Description": "Lets ec2-eds in the central account list this account's instances",
                "MaxSessionDuration": 3600,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "Ec2EdsDiscovery",
                            "Effect": "Allow",
                            "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${CentralAccountId}:root"}},
                            "Action": "sts:AssumeRole",
                            "Condition": {
                                "StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}},
                                "ArnEquals": {
                                    "aws:PrincipalArn": [
                                        {"Fn::Sub": central_role + function} for function in DISCOVERY_FUNCTIONS
                                    ]
                                },
                            },
                        }
                    ],
                },
                "Policies": [{"PolicyName": "describe-instances", "PolicyDocument": member_permissions()}],
            },
        },
        "ForwardRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "Lets EventBridge put this region's EC2 events on the central account's bus",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [
                    {
                        "PolicyName": "put-events-on-central-bus",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": "events:PutEvents",
                                    "Resource": {"Ref": "CentralBusArn"},
                                }
                            ],
                        },
                    }
                ],
            },
        },
    }
    for kind, pattern in EVENT_PATTERNS.items():
        resources[f"Forward{kind}"] = {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": f"ec2-eds: forward {pattern['detail-type'][0]} to the central bus",
                "EventPattern": pattern,
                "State": "ENABLED",
                "Targets": [
                    {
                        "Id": "central-bus",
                        "Arn": {"Ref": "CentralBusArn"},
                        "RoleArn": {"Fn::GetAtt": ["ForwardRole", "Arn"]},
                    }
                ],
            },
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "ec2-eds member account: a role that only lists EC2 instances, trusted by the central account's "
            "discovery functions with an external id, and EventBridge rules forwarding the four EC2 event "
            "kinds of this region to the central event bus. Deploy once per member account and region "
            "(CreateRole=false in every region but the first)."
        ),
        "Parameters": {
            "CentralAccountId": {
                "Type": "String",
                "AllowedPattern": "^\\d{12}$",
                "Description": "The account ec2-eds runs in",
            },
            "Stage": {
                "Type": "String",
                "Default": "prod",
                "AllowedValues": list(STAGES),
                "Description": "The Chalice stage whose functions may assume the role",
            },
            "ExternalId": {
                "Type": "String",
                "MinLength": 2,
                "MaxLength": 1224,
                "AllowedPattern": "^[\\w+=,.@:/-]+$",
                "NoEcho": True,
                "Description": "The externalId the upstreams (or the named account) send with AssumeRole",
            },
            "RoleName": {
                "Type": "String",
                "Default": MEMBER_ROLE_NAME,
                "AllowedPattern": "^ec2-eds-[\\w+=,.@-]+$",
                "Description": "Must match the functions' sts:AssumeRole resource (arn:aws:iam::*:role/ec2-eds-*)",
            },
            "CentralBusArn": {
                "Type": "String",
                "AllowedPattern": "^arn:aws[a-z-]*:events:[a-z0-9-]+:\\d{12}:event-bus/.+$",
                "Description": "The central event bus, e.g. arn:aws:events:us-east-1:111122223333:event-bus/default",
            },
            "CreateRole": {
                "Type": "String",
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "IAM is global: create the role in one region of the account only",
            },
        },
        "Conditions": {"CreateRole": {"Fn::Equals": [{"Ref": "CreateRole"}, "true"]}},
        "Resources": resources,
        "Outputs": {
            "DiscoveryRoleArn": {
                "Condition": "CreateRole",
                "Description": "The roleArn of this account's upstreams (or `account add --assume-role`)",
                "Value": {"Fn::GetAtt": ["DiscoveryRole", "Arn"]},
            }
        },
    }


def generated(
    assume_role_arns: Sequence[str] = DEFAULT_ASSUME_ROLE_ARNS, asg_names: Sequence[str] = DEFAULT_ASG_NAMES
) -> dict[Path, Any]:
    """Every generated file and its content."""
    files: dict[Path, Any] = {}
    for stage in STAGES:
        for function in FUNCTIONS:
            files[POLICIES_DIR / stage / f"{function}.json"] = function_policy(
                stage, function, assume_role_arns, asg_names
            )
        files[POLICIES_DIR / "member" / f"trust-{stage}.json"] = member_trust(stage)
        files[DEPLOY_DIR / "merge" / f"{stage}.json"] = merge_template(stage)
    files[POLICIES_DIR / "member" / "permissions.json"] = member_permissions()
    files[DEPLOY_DIR / "member-account.json"] = member_template()
    return files


def render(content: Any) -> str:
    return json.dumps(content, indent=2) + "\n"


def stale(files: dict[Path, Any]) -> list[Path]:
    """Files whose committed text differs from the generated one, or that are missing."""
    return [path for path, content in files.items() if not path.exists() or path.read_text() != render(content)]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m devtools.policies", description=(__doc__ or "").split("\n")[0])
    verbs = top.add_subparsers(dest="verb", required=True)
    write = verbs.add_parser("write", help="regenerate policies/ and the generated templates of deploy/")
    write.add_argument(
        "--assume-role-arn",
        action="append",
        help=f"a role ARN (pattern) discovery may assume; repeatable (default {DEFAULT_ASSUME_ROLE_ARNS[0]})",
    )
    write.add_argument(
        "--asg-name",
        action="append",
        help="an Auto Scaling group name (pattern) whose terminate lifecycle actions ec2-eds may complete; "
        f"repeatable (default {DEFAULT_ASG_NAMES[0]})",
    )
    verbs.add_parser("check", help="exit 1 if a generated file is missing or differs")
    trust = verbs.add_parser("member-trust", help="print the member role's trust policy, filled in")
    trust.add_argument("--stage", default="prod", choices=STAGES)
    trust.add_argument("--central-account", required=True)
    trust.add_argument("--external-id", required=True)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb == "member-trust":
        print(render(member_trust(args.stage, args.central_account, args.external_id)), end="")
        return 0
    files = (
        generated(tuple(args.assume_role_arn or DEFAULT_ASSUME_ROLE_ARNS), tuple(args.asg_name or DEFAULT_ASG_NAMES))
        if args.verb == "write"
        else generated()
    )
    if args.verb == "check":
        out_of_date = stale(files)
        for path in out_of_date:
            print(f"stale: {path.relative_to(PROJECT_DIR)}", file=sys.stderr)
        if out_of_date:
            print("run: python -m devtools.policies write", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(content))
        print(path.relative_to(PROJECT_DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
