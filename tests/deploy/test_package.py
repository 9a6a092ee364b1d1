"""`chalice package` with the merge template, and cfn-lint on everything, as a user runs them.

Slow (each package builds the deployment zip, once per stage: conftest.py's `packaged`): marked
`deploy`, run by `make test`.
cfn-lint is run as a process; any output at all (error, warning or info) fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools import policies as gen

from .packaging import environment, package

# One xdist group: the two modules share the session's packages (tests/deploy/conftest.py) in one worker.
pytestmark = [pytest.mark.deploy, pytest.mark.xdist_group("deploy-packages")]
ROOT = gen.PROJECT_DIR
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
VPCE = "vpce-0123456789abcdef0"


def cfn_lint(*paths: Path) -> None:
    result = subprocess.run(
        [CFN_LINT, *map(str, paths)], env=environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"cfn-lint exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r.get("Type") == kind}


def test_make_package_runs_chalice_package_with_the_merge_template() -> None:
    result = subprocess.run(
        ["make", "-n", "package", "STAGE=prod"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "chalice package --stage prod --merge-template deploy/merge/prod.json build/package/" in result.stdout
    lint = subprocess.run(
        ["make", "-n", "cfn-lint", "STAGE=prod"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0 and "cfn-lint" in lint.stdout, lint.stdout + lint.stderr


def test_prod_template_holds_the_tables(packaged: Callable[[str], tuple[Path, dict[str, Any]]]) -> None:
    _, template = packaged("prod")
    tables = {r["Properties"]["TableName"]: r["Properties"] for r in of_type(template, "AWS::DynamoDB::Table").values()}
    assert set(tables) == {"ec2-eds-prod-upstreams", "ec2-eds-prod-endpoints"}
    for properties in tables.values():
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert properties["SSESpecification"] == {"SSEEnabled": True}


def test_prod_template_holds_the_rules_and_the_schedule(packaged: Callable[[str], tuple[Path, dict[str, Any]]]) -> None:
    _, template = packaged("prod")
    functions = of_type(template, "AWS::Serverless::Function")
    events = [
        (name, event)
        for name, function in functions.items()
        for event in function["Properties"].get("Events", {}).values()
    ]
    rules = [event["Properties"]["Pattern"] for _, event in events if event["Type"] == "CloudWatchEvent"]
    schedules = [event["Properties"]["Schedule"] for _, event in events if event["Type"] == "Schedule"]
    assert len(rules) == 6
    assert {rule["detail-type"][0] for rule in rules} == {
        "EC2 Instance State-change Notification",
        "EC2 Spot Instance Interruption Warning",
        "Tag Change on Resource",
        "EC2 Instance-terminate Lifecycle Action",
        "EC2 Instance Rebalance Recommendation",
        "AWS Health Event",
    }
    assert schedules == ["rate(1 minute)"]  # prod's SCAN_RATE_MINUTES


def test_prod_template_gives_each_function_its_scoped_role(
    packaged: Callable[[str], tuple[Path, dict[str, Any]]],
) -> None:
    _, template = packaged("prod")
    functions = of_type(template, "AWS::Serverless::Function")
    roles = of_type(template, "AWS::IAM::Role")
    assert len(functions) == len(roles) == len(gen.FUNCTIONS)
    assert "DefaultRole" not in roles
    used = set()
    for function in gen.FUNCTIONS:
        properties = functions[gen.cfn_name(function)]["Properties"]
        role_name = properties["Role"]["Fn::GetAtt"][0]
        used.add(role_name)
        role = roles[role_name]["Properties"]
        assert role["RoleName"] == gen.role_name("prod", function)
        (inline,) = role["Policies"]
        assert inline["PolicyDocument"] == json.loads((gen.POLICIES_DIR / "prod" / f"{function}.json").read_text())
        assert properties["FunctionName"] == gen.function_name("prod", function)
        assert properties["Tracing"] == "Active"
        assert properties["MemorySize"] == CONFIG["lambda_functions"][function]["lambda_memory_size"]
        assert properties["Timeout"] == CONFIG["lambda_functions"][function]["lambda_timeout"]
        variables = properties["Environment"]["Variables"]
        assert variables["UPSTREAMS_TABLE"] == "ec2-eds-prod-upstreams"
        assert variables["READ_ROUTES_AUTH"] == "iam"
    assert used == set(roles)


def test_prod_template_sends_failed_events_to_the_queue(
    packaged: Callable[[str], tuple[Path, dict[str, Any]]],
) -> None:
    _, template = packaged("prod")
    configs = of_type(template, "AWS::Lambda::EventInvokeConfig")
    targets = {config["Properties"]["FunctionName"]["Ref"] for config in configs.values()}
    assert targets == {gen.cfn_name(function) for function in gen.ASYNC_FUNCTIONS}
    for config in configs.values():
        destination = config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        assert destination == {"Fn::GetAtt": ["FailedInvocationsQueue", "Arn"]}
    queues = {queue["Properties"]["QueueName"] for queue in of_type(template, "AWS::SQS::Queue").values()}
    assert queues == {
        "ec2-eds-prod-failed-invocations",
        "ec2-eds-prod-drain",
        "ec2-eds-prod-events",  # the EC2 events, batched to ec2_event_batch
        "ec2-eds-prod-events-dlq",  # what failed there 3 times
        "ec2-eds-prod-scan",  # the scan's group tasks, consumed by scan_group
        "ec2-eds-prod-scan-dead-letters",  # what failed there 3 times
    }
    groups = {g["Properties"]["LogGroupName"] for g in of_type(template, "AWS::Logs::LogGroup").values()}
    assert groups == {f"/aws/lambda/{gen.function_name('prod', function)}" for function in gen.FUNCTIONS}


def test_prod_api_signs_admin_and_read_routes(packaged: Callable[[str], tuple[Path, dict[str, Any]]]) -> None:
    _, template = packaged("prod")
    api = template["Resources"]["RestAPI"]["Properties"]
    assert api["EndpointConfiguration"] == "REGIONAL"
    paths = api["DefinitionBody"]["paths"]
    assert paths["/endpoints/{namespace}/{name}"]["get"]["security"] == [{"sigv4": []}]
    assert paths["/prometheus/targets"]["get"]["security"] == [{"sigv4": []}]
    assert paths["/upstreams/{namespace}/{name}"]["put"]["security"] == [{"sigv4": []}]
    assert "security" not in paths["/v3/discovery:endpoints"]["post"]  # Envoy cannot sign


@pytest.mark.parametrize("stage", gen.STAGES)
def test_api_gateways_own_errors_answer_in_the_one_error_shape(
    stage: str, packaged: Callable[[str], tuple[Path, dict[str, Any]]]
) -> None:
    """DEFAULT_4XX/5XX and MISSING_AUTHENTICATION_TOKEN render `{"error", "field"}` (README, "Errors")."""
    _, template = packaged(stage)
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in of_type(template, "AWS::ApiGateway::GatewayResponse").values()
    }

    assert set(responses) == {"DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN"}
    for kind, properties in responses.items():
        assert properties["RestApiId"] == {"Ref": "RestAPI"}
        assert "RestAPI" in template["Resources"]
        text = properties["ResponseTemplates"]["application/json"]
        # API Gateway substitutes $context.error.messageString with the quoted message
        rendered = json.loads(text.replace("$context.error.messageString", json.dumps('Limit "exceeded"')))
        assert set(rendered) == {"error", "field"} and rendered["field"] is None and rendered["error"], kind
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == "403"


def test_every_packaged_and_deploy_template_lints_clean(
    packaged: Callable[[str], tuple[Path, dict[str, Any]]],
) -> None:
    """Each stage's packaged template, the member-account template and the EDS exposure templates, in one
    cfn-lint run as `make cfn-lint` lints (it checks each file on its own and names it in any finding)."""
    templates = sorted(gen.DEPLOY_DIR.glob("*.json"))
    assert len(templates) >= 4, templates
    cfn_lint(*(packaged(stage)[0] for stage in gen.STAGES), *templates)


def test_deploy_holds_the_exposure_and_member_templates() -> None:
    names = {p.name for p in gen.DEPLOY_DIR.glob("*.json")}
    assert {
        "member-account.json",
        "eds-custom-domain.json",
        "eds-private-endpoint.json",
        "eds-private-domain.json",
    } <= names
    custom = json.loads((gen.DEPLOY_DIR / "eds-custom-domain.json").read_text())["Resources"]
    (mapping,) = of_type({"Resources": custom}, "AWS::ApiGateway::BasePathMapping").values()
    assert "BasePath" not in mapping["Properties"]  # the root: Envoy's path is /v3/discovery:endpoints
    private = json.loads((gen.DEPLOY_DIR / "eds-private-domain.json").read_text())["Resources"]
    (mapping,) = of_type({"Resources": private}, "AWS::ApiGateway::BasePathMappingV2").values()
    assert "BasePath" not in mapping["Properties"]
    (domain,) = of_type({"Resources": private}, "AWS::ApiGateway::DomainNameV2").values()
    assert domain["Properties"]["EndpointConfiguration"] == {"Types": ["PRIVATE"]}
    deny = [s for s in domain["Properties"]["Policy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny[0]["Condition"] == {"StringNotEquals": {"aws:SourceVpce": {"Ref": "VpcEndpointId"}}}


def test_private_api_variant_packages_and_lints(tmp_path: Path) -> None:
    """The stage settings DEPLOY.md gives for a private API: only the VPC endpoint may invoke it."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("app.py", "requirements.txt", "requirements-tracing.txt"):
        shutil.copy(ROOT / name, project / name)
    for name in ("chalicelib", "policies", "deploy"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    config["stages"]["prod"].update(api_gateway_endpoint_type="PRIVATE", api_gateway_endpoint_vpce=VPCE)
    config["stages"]["prod"]["environment_variables"]["READ_ROUTES_AUTH"] = "none"
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))
    template = package(project, "prod", tmp_path / "out")
    api = template["Resources"]["RestAPI"]["Properties"]
    assert api["EndpointConfiguration"] == "PRIVATE"
    policy = api["DefinitionBody"]["x-amazon-apigateway-policy"]
    assert [s["Condition"] for s in policy["Statement"]] == [{"StringEquals": {"aws:SourceVpce": VPCE}}]
    paths = api["DefinitionBody"]["paths"]
    assert "security" not in paths["/endpoints/{namespace}/{name}"]["get"]  # READ_ROUTES_AUTH=none
    assert paths["/upstreams/{namespace}/{name}"]["put"]["security"] == [{"sigv4": []}]  # admin stays signed
    cfn_lint(tmp_path / "out" / "sam.json")


def test_prod_template_batches_the_event_queue_and_reports_partial_failures(
    packaged: Callable[[str], tuple[Path, dict[str, Any]]],
) -> None:
    """ec2_event_batch reads the event queue in batches (at most 2 s of window) and reports failed
    messages alone (ReportBatchItemFailures, merged into Chalice's SQS event source)."""
    _, template = packaged("prod")
    function = of_type(template, "AWS::Serverless::Function")[gen.cfn_name(gen.EVENT_FUNCTION)]
    (event,) = function["Properties"]["Events"].values()
    assert event["Type"] == "SQS" and event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 0 < event["Properties"]["MaximumBatchingWindowInSeconds"] <= 2 and event["Properties"]["BatchSize"] > 10
    assert "ec2-eds-prod-events" in json.dumps(event["Properties"]["Queue"])
    assert function["Properties"]["Environment"]["Variables"]["EVENT_QUEUE"] == "ec2-eds-prod-events"


def test_prod_template_consumes_the_drain_queue(packaged: Callable[[str], tuple[Path, dict[str, Any]]]) -> None:
    """asg_drain_complete is triggered by the drain queue the merge template creates, one message at a time."""
    _, template = packaged("prod")
    function = of_type(template, "AWS::Serverless::Function")[gen.cfn_name(gen.DRAIN_FUNCTION)]
    (event,) = function["Properties"]["Events"].values()
    assert event["Type"] == "SQS" and event["Properties"]["BatchSize"] == 1
    assert "ec2-eds-prod-drain" in json.dumps(event["Properties"]["Queue"])
    assert function["DependsOn"] == ["DrainQueue"]
    assert function["Properties"]["Environment"]["Variables"]["DRAIN_QUEUE"] == "ec2-eds-prod-drain"
