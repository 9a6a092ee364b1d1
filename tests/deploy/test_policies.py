"""The policies, the Chalice configuration and the generated templates, checked without AWS.

`devtools/policies.py` is the one definition; the committed files must be
exactly what it generates. Here is also the static half of least privilege:
what moto cannot check (resource scoping of DynamoDB and Secrets Manager,
and the statements Lambda itself uses: logs, X-Ray, the failure queue).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chalicelib.config import stage_environment
from chalicelib.edges.store import table_definitions
from devtools import policies as gen

ROOT = gen.PROJECT_DIR
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
CODE_ACTIONS = {
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Scan",
    "dynamodb:BatchGetItem",
    "dynamodb:ConditionCheckItem",  # the guarded writes' transactions
    *gen.DISCOVERY_ACTIONS,
    # the terminate lifecycle path (chalicelib/usecases/lifecycle.py)
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:CompleteLifecycleAction",
    "sqs:GetQueueUrl",
    "sqs:SendMessage",
}
# Lambda's SQS trigger polls the drain queue as the drain function's role.
SQS_TRIGGER_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
LAMBDA_ACTIONS = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "sqs:SendMessage",
    *SQS_TRIGGER_ACTIONS,
}
ENV_BEFORE = {  # every variable .chalice/config.json held before policies were added: none may go
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "SECRET_PREFIX",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "UPSTREAMS_TABLE",
    "ENDPOINTS_TABLE",
    "SCAN_RATE_MINUTES",
    "POWERTOOLS_LOG_LEVEL",
}


def policy(stage: str, function: str) -> dict[str, Any]:
    return json.loads((gen.POLICIES_DIR / stage / f"{function}.json").read_text())


def statements(stage: str, function: str) -> list[dict[str, Any]]:
    return list(policy(stage, function)["Statement"])


def app_handlers() -> dict[str, Any]:
    """The functions Chalice deploys besides the API handler, from app.py itself."""
    import app

    return {source.name: source for source in app.app.event_sources}


# --- generated files ---------------------------------------------------------------------------


def test_committed_files_equal_the_generated_ones() -> None:
    stale = gen.stale(gen.generated())
    assert not stale, f"run `python -m devtools.policies write`: {[str(p.relative_to(ROOT)) for p in stale]}"


def test_check_command_agrees() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devtools.policies", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_no_stray_policy_or_merge_file() -> None:
    produced = set(gen.generated())
    found = set(gen.POLICIES_DIR.rglob("*.json")) | set((gen.DEPLOY_DIR / "merge").glob("*.json"))
    assert found <= produced, f"not generated (stale?): {sorted(str(p) for p in found - produced)}"


def test_functions_are_the_apps() -> None:
    assert set(gen.FUNCTIONS) == {"api_handler", *app_handlers()}
    handlers = app_handlers()
    assert set(gen.ASYNC_FUNCTIONS) == {
        name for name, source in handlers.items() if type(source).__name__ != "SQSEventConfig"
    }
    queued = {source.name: source for source in handlers.values() if type(source).__name__ == "SQSEventConfig"}
    assert set(queued) == {gen.DRAIN_FUNCTION, gen.SCAN_FUNCTION, gen.EVENT_FUNCTION}
    assert queued[gen.DRAIN_FUNCTION].batch_size == 1 and queued[gen.SCAN_FUNCTION].batch_size == 1
    for stage in gen.STAGES:  # the queue the trigger names is the stage's, which the merge template creates
        assert stage_environment(stage, ROOT)["DRAIN_QUEUE"] == gen.drain_queue_name(stage) == f"ec2-eds-{stage}-drain"
        assert stage_environment(stage, ROOT)["SCAN_QUEUE"] == gen.scan_queue_name(stage) == f"ec2-eds-{stage}-scan"
        template = gen.merge_template(stage)["Resources"]
        assert template["ScanQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 3
        assert template["ScanQueue"]["Properties"]["VisibilityTimeout"] >= gen.SCAN_FUNCTION_TIMEOUT
        assert template[gen.cfn_name(gen.SCAN_FUNCTION)]["DependsOn"] == ["ScanQueue"]
        assert stage_environment(stage, ROOT)["EVENT_QUEUE"] == gen.event_queue_name(stage) == f"ec2-eds-{stage}-events"
    # The event queue is read in batches, waiting at most 2 s for one to fill (the latency it adds).
    assert queued[gen.EVENT_FUNCTION].batch_size > 10
    assert 0 < queued[gen.EVENT_FUNCTION].maximum_batching_window_in_seconds <= 2


def test_the_event_queue_takes_the_ec2_events_and_keeps_what_fails() -> None:
    """The merge template: rules for each queued kind target the queue (allowed by its policy, for
    those rules alone), failures go to the dead-letter queue after a few receives, the consumer
    reports failures per message, and the direct rules of the queued kinds are disabled."""
    for stage in gen.STAGES:
        resources = gen.merge_template(stage)["Resources"]
        queue = resources["EventQueue"]["Properties"]
        assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["EventDeadLetterQueue", "Arn"]}
        rules = {name: r for name, r in resources.items() if r.get("Type") == "AWS::Events::Rule"}
        assert sorted(r["Properties"]["EventPattern"]["detail-type"][0] for r in rules.values()) == sorted(
            gen.EVENT_PATTERNS[pattern]["detail-type"][0] for pattern in gen.QUEUED_PATTERNS.values()
        )
        assert all(
            r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["EventQueue", "Arn"]} for r in rules.values()
        )
        (statement,) = resources["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == [{"Fn::GetAtt": [name, "Arn"]} for name in rules]
        consumer = resources[gen.cfn_name(gen.EVENT_FUNCTION)]
        (source,) = consumer["Properties"]["Events"].values()
        assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert consumer["Properties"]["FunctionName"] == gen.function_name(stage, gen.EVENT_FUNCTION)
        for function in gen.QUEUED_FUNCTIONS:
            (direct,) = resources[gen.cfn_name(function)]["Properties"]["Events"].values()
            assert direct["Properties"]["State"] == "DISABLED"


def test_assume_role_pattern_is_configurable() -> None:
    custom = gen.function_policy("prod", "scan_group", ["arn:aws:iam::111122223333:role/eds-reader"])
    statement = next(s for s in custom["Statement"] if s["Action"] == ["sts:AssumeRole"])
    assert statement["Resource"] == ["arn:aws:iam::111122223333:role/eds-reader"]


def test_member_trust_command_fills_the_placeholders() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.policies",
            "member-trust",
            "--stage",
            "prod",
            "--central-account",
            "111122223333",
            "--external-id",
            "my-external-id",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    trust = json.loads(result.stdout)
    text = json.dumps(trust)
    assert gen.PLACEHOLDER_ACCOUNT not in text and gen.PLACEHOLDER_EXTERNAL_ID not in text
    condition = trust["Statement"][0]["Condition"]
    assert condition["StringEquals"] == {"sts:ExternalId": "my-external-id"}
    assert "arn:aws:iam::111122223333:role/ec2-eds-prod-scan_group" in condition["ArnEquals"]["aws:PrincipalArn"]


# --- .chalice/config.json -----------------------------------------------------------------------


def test_config_keeps_both_stages_and_every_variable() -> None:
    assert set(CONFIG["stages"]) == {"dev", "prod"}
    for stage in gen.STAGES:
        env = stage_environment(stage, ROOT)
        assert set(env) >= ENV_BEFORE, ENV_BEFORE - set(env)
        assert env["READ_ROUTES_AUTH"] == "iam"
        assert env["UPSTREAMS_TABLE"] == f"ec2-eds-{stage}-upstreams"
        assert env["ENDPOINTS_TABLE"] == f"ec2-eds-{stage}-endpoints"


@pytest.mark.parametrize("stage", gen.STAGES)
def test_config_gives_every_function_its_policy_file(stage: str) -> None:
    assert CONFIG["autogen_policy"] is False
    functions = CONFIG["stages"][stage]["lambda_functions"]
    assert set(functions) == set(gen.FUNCTIONS)
    for function, settings in functions.items():
        path = (ROOT / ".chalice" / settings["iam_policy_file"]).resolve()
        assert path == gen.POLICIES_DIR / stage / f"{function}.json"
        assert path.exists()


def test_config_sizes_every_function() -> None:
    for function in gen.FUNCTIONS:
        settings = CONFIG["lambda_functions"][function]
        assert 128 <= settings["lambda_memory_size"] <= 10240
        assert 1 <= settings["lambda_timeout"] <= 900
    # API Gateway gives up after 29 s; the scan needs time for slow accounts, events little.
    assert CONFIG["lambda_functions"]["api_handler"]["lambda_timeout"] <= 30
    assert CONFIG["lambda_functions"]["scheduled_scan"]["lambda_timeout"] >= 60


def test_config_traces_prod_only_and_keeps_logs() -> None:
    assert CONFIG["stages"]["prod"]["xray"] is True
    assert not CONFIG["stages"]["dev"].get("xray") and not CONFIG.get("xray")
    for stage in gen.STAGES:
        # The policies grant no logs:CreateLogGroup: the deployment creates the groups (with retention).
        assert CONFIG["stages"][stage]["log_retention_in_days"] > 0


# --- the function policies: scoped, and nothing but what is used --------------------------------


@pytest.mark.parametrize("stage", gen.STAGES)
@pytest.mark.parametrize("function", gen.FUNCTIONS)
def test_policy_is_scoped(stage: str, function: str) -> None:
    env = stage_environment(stage, ROOT)
    other = next(s for s in gen.STAGES if s != stage)
    text = json.dumps(policy(stage, function))
    assert f"ec2-eds-{other}-" not in text, "names another stage's resources"
    for statement in statements(stage, function):
        assert statement["Effect"] == "Allow" and set(statement) == {"Sid", "Effect", "Action", "Resource"}
        actions = statement["Action"]
        assert all("*" not in action for action in actions)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        services = {action.split(":")[0] for action in actions}
        assert len(services) == 1, statement
        service = services.pop()
        if service not in SCOPES:
            pytest.fail(f"unexpected service {service}")
        SCOPES[service](Scoped(stage, function, env, statement["Sid"], actions, resources))


@dataclass(frozen=True)
class Scoped:
    """One statement of a function's policy in a stage: its actions and resources, and what they must be."""

    stage: str
    function: str
    env: dict[str, str]
    sid: str
    actions: list[str]
    resources: list[str]


def _dynamodb_scoped(s: Scoped) -> None:
    table = {"UpstreamsTable": s.env["UPSTREAMS_TABLE"], "EndpointsTable": s.env["ENDPOINTS_TABLE"]}[s.sid]
    assert s.resources == [f"arn:aws:dynamodb:*:*:table/{table}"]


def _secretsmanager_scoped(s: Scoped) -> None:
    assert s.actions == ["secretsmanager:GetSecretValue"]
    assert s.resources == [f"arn:aws:secretsmanager:*:*:secret:{s.env['SECRET_PREFIX']}*"]


def _sts_scoped(s: Scoped) -> None:
    assert s.actions == ["sts:AssumeRole"] and s.resources == list(gen.DEFAULT_ASSUME_ROLE_ARNS)


def _ec2_scoped(s: Scoped) -> None:
    scans = ["ec2:DescribeInstanceStatus"] if s.function in gen.SCANNERS else []
    assert s.actions == [*scans, "ec2:DescribeInstances"] and s.resources == ["*"]  # no resource-level ones


def _logs_scoped(s: Scoped) -> None:
    assert s.actions == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert s.resources == [f"arn:aws:logs:*:*:log-group:/aws/lambda/{gen.function_name(s.stage, s.function)}:*"]


def _xray_scoped(s: Scoped) -> None:
    assert s.stage in gen.XRAY_STAGES and s.resources == ["*"]
    assert s.actions == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]


def _sqs_scoped(s: Scoped) -> None:
    if s.sid == "FailureDestination":
        assert s.function in gen.ASYNC_FUNCTIONS and s.actions == ["sqs:SendMessage"]
        assert s.resources == [f"arn:aws:sqs:*:*:ec2-eds-{s.stage}-failed-invocations"]
        return
    if s.sid == "EventQueue":  # consumed by Lambda's trigger only
        assert s.function == gen.EVENT_FUNCTION and s.actions == sorted(SQS_TRIGGER_ACTIONS)
        assert s.resources == [f"arn:aws:sqs:*:*:ec2-eds-{s.stage}-events"]
        return
    if s.sid == "ScanQueue":  # the planner sends the groups' tasks; a worker consumes them, sends continuations
        assert s.resources == [f"arn:aws:sqs:*:*:ec2-eds-{s.stage}-scan"]
        send = ["sqs:GetQueueUrl", "sqs:SendMessage"]
        expected = {gen.PLANNER: send, gen.SCAN_FUNCTION: sorted({*send, *SQS_TRIGGER_ACTIONS})}
        assert s.actions == expected[s.function], s
        return
    # the drain queue: sent to on a lifecycle event, consumed by the drain function
    assert s.resources == [f"arn:aws:sqs:*:*:ec2-eds-{s.stage}-drain"]
    expected = {
        "asg_terminate_lifecycle": ["sqs:GetQueueUrl", "sqs:SendMessage"],
        gen.DRAIN_FUNCTION: sorted({"sqs:GetQueueUrl", "sqs:SendMessage", *SQS_TRIGGER_ACTIONS}),
    }
    assert s.actions == expected[s.function], s


def _autoscaling_scoped(s: Scoped) -> None:
    if s.actions == ["autoscaling:CompleteLifecycleAction"]:
        assert s.function == gen.DRAIN_FUNCTION
        assert s.resources == [
            f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{name}" for name in gen.DEFAULT_ASG_NAMES
        ]
        return
    # DescribeLifecycleHooks supports no resource-level permissions: "*" is the only resource.
    assert s.function == "asg_terminate_lifecycle" and s.actions == ["autoscaling:DescribeLifecycleHooks"]
    assert s.resources == ["*"]


SCOPES: dict[str, Callable[[Scoped], None]] = {
    "dynamodb": _dynamodb_scoped,
    "secretsmanager": _secretsmanager_scoped,
    "sts": _sts_scoped,
    "ec2": _ec2_scoped,
    "logs": _logs_scoped,
    "xray": _xray_scoped,
    "sqs": _sqs_scoped,
    "autoscaling": _autoscaling_scoped,
}


@pytest.mark.parametrize("stage", gen.STAGES)
@pytest.mark.parametrize("function", gen.FUNCTIONS)
def test_policy_holds_only_known_actions(stage: str, function: str) -> None:
    actions = {action for statement in statements(stage, function) for action in statement["Action"]}
    assert actions <= CODE_ACTIONS | LAMBDA_ACTIONS
    status = "ec2:DescribeInstanceStatus"  # instance health and scheduled maintenance: the scanners only
    # every function but the drain queue's and the scan's planner lists instances (events, scans, POST /scan)
    assert (set(gen.DISCOVERY_ACTIONS) - {status} <= actions) == (function not in (gen.DRAIN_FUNCTION, gen.PLANNER))
    assert (status in actions) == (function in gen.SCANNERS)
    assert {"logs:CreateLogStream", "logs:PutLogEvents"} <= actions
    senders = (*gen.ASYNC_FUNCTIONS, gen.DRAIN_FUNCTION, gen.SCAN_FUNCTION)
    assert ("sqs:SendMessage" in actions) == (function in senders)
    assert ("autoscaling:CompleteLifecycleAction" in actions) == (function == gen.DRAIN_FUNCTION)
    assert ("xray:PutTraceSegments" in actions) == (stage in gen.XRAY_STAGES)
    if function in gen.DYNAMODB:
        assert "dynamodb:BatchGetItem" not in statements_on(stage, function, "UpstreamsTable")


def statements_on(stage: str, function: str, sid: str) -> list[str]:
    return next(s["Action"] for s in statements(stage, function) if s["Sid"] == sid)


def test_failure_queue_is_the_merge_templates() -> None:
    for stage in gen.STAGES:
        merge = json.loads((gen.DEPLOY_DIR / "merge" / f"{stage}.json").read_text())
        assert merge["Resources"]["FailedInvocationsQueue"]["Properties"]["QueueName"] == gen.failure_queue_name(stage)
        drain = merge["Resources"]["DrainQueue"]["Properties"]
        assert drain["QueueName"] == gen.drain_queue_name(stage)
        timeout = CONFIG["lambda_functions"][gen.DRAIN_FUNCTION]["lambda_timeout"]
        assert timeout == gen.DRAIN_FUNCTION_TIMEOUT and drain["VisibilityTimeout"] >= 6 * timeout
        assert merge["Resources"][gen.cfn_name(gen.DRAIN_FUNCTION)]["DependsOn"] == ["DrainQueue"]


def test_asg_names_are_configurable() -> None:
    custom = gen.function_policy("prod", gen.DRAIN_FUNCTION, asg_names=["web-*", "api"])
    statement = next(s for s in custom["Statement"] if s["Sid"] == "CompleteLifecycleAction")
    assert statement["Resource"] == [
        "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/web-*",
        "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/api",
    ]


# --- the merge template: the tables as bootstrap creates them -------------------------------------


@pytest.mark.parametrize("stage", gen.STAGES)
def test_merge_tables_match_table_definitions(stage: str) -> None:
    merge = json.loads((gen.DEPLOY_DIR / "merge" / f"{stage}.json").read_text())
    env = stage_environment(stage, ROOT)
    tables = {
        resource["Properties"]["TableName"]: resource
        for resource in merge["Resources"].values()
        if resource.get("Type") == "AWS::DynamoDB::Table"
    }
    definitions = table_definitions(env["UPSTREAMS_TABLE"], env["ENDPOINTS_TABLE"])
    assert set(tables) == {definition["TableName"] for definition in definitions}
    for definition in definitions:
        table = tables[definition["TableName"]]
        properties = table["Properties"]
        assert properties["AttributeDefinitions"] == definition["AttributeDefinitions"]
        assert properties["KeySchema"] == definition["KeySchema"]
        assert properties["BillingMode"] == definition["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["SSESpecification"] == {"SSEEnabled": definition["SSESpecification"]["Enabled"]}
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"


# --- the member account ------------------------------------------------------------------------


def test_member_permissions_list_instances_only() -> None:
    document = json.loads((gen.POLICIES_DIR / "member" / "permissions.json").read_text())
    assert document["Statement"] == [
        {
            "Sid": "DescribeInstances",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstanceStatus", "ec2:DescribeInstances"],
            "Resource": "*",
        }
    ]


@pytest.mark.parametrize("stage", gen.STAGES)
def test_member_trust_needs_the_external_id_and_a_discovery_role(stage: str) -> None:
    trust = json.loads((gen.POLICIES_DIR / "member" / f"trust-{stage}.json").read_text())
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRole" and statement["Effect"] == "Allow"
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{gen.PLACEHOLDER_ACCOUNT}:root"}
    assert statement["Condition"]["StringEquals"] == {"sts:ExternalId": gen.PLACEHOLDER_EXTERNAL_ID}
    assert statement["Condition"]["ArnEquals"]["aws:PrincipalArn"] == [
        f"arn:aws:iam::{gen.PLACEHOLDER_ACCOUNT}:role/ec2-eds-{stage}-{function}"
        for function in gen.DISCOVERY_FUNCTIONS
    ]


def test_member_template_matches_the_policies_and_the_app() -> None:
    template = json.loads((gen.DEPLOY_DIR / "member-account.json").read_text())
    resources = template["Resources"]
    role = resources["DiscoveryRole"]["Properties"]
    assert [p["PolicyDocument"] for p in role["Policies"]] == [gen.member_permissions()]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Condition"]["StringEquals"] == {"sts:ExternalId": {"Ref": "ExternalId"}}
    principals = [entry["Fn::Sub"] for entry in statement["Condition"]["ArnEquals"]["aws:PrincipalArn"]]
    assert principals == [
        "arn:${AWS::Partition}:iam::${CentralAccountId}:role/ec2-eds-${Stage}-" + function
        for function in gen.DISCOVERY_FUNCTIONS
    ]
    rules = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    app_patterns = [
        source.event_pattern for source in app_handlers().values() if getattr(source, "event_pattern", None)
    ]
    assert len(rules) == len(gen.EVENT_PATTERNS) == 6
    assert sorted(json.dumps(r["EventPattern"], sort_keys=True) for r in rules) == sorted(
        json.dumps(p, sort_keys=True) for p in app_patterns
    )
    for rule in rules:
        assert rule["Targets"][0]["Arn"] == {"Ref": "CentralBusArn"}


def test_member_role_name_is_assumable_by_default() -> None:
    import re

    pattern = gen.DEFAULT_ASSUME_ROLE_ARNS[0].replace("*", ".*")
    assert re.fullmatch(pattern, f"arn:aws:iam::210987654321:role/{gen.MEMBER_ROLE_NAME}")
