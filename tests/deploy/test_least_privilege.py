"""Least privilege, proven against moto's server with IAM enforcement on.

moto is started with `INITIAL_NO_AUTH_ACTION_COUNT=3`: its first three
requests (create an admin user, give it `*`, make its keys) go unchecked,
every later one is signed and checked against the caller's IAM policies.
As that admin the test creates the stage's tables (`table_definitions`),
a tagged instance, a secret holding a second user's keys, a member role
(`ec2-eds-discovery`, trusting the function identity with an external id,
holding `policies/member/permissions.json`) and one IAM user standing in
for a function's role. That user holds exactly the policy document of
`policies/prod/{function}.json`; the function's work then runs signed as it
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` of the user, `AWS_ENDPOINT_URL`
at moto, `runtime.reset()`), from the same seeded state every time:

- `scheduled_scan`: `runtime.plan_scan`, the planner (tables and the scan queue only), which
  deletes the orphaned set;
- `scan_group`: `scan.run_tasks` over a plan's tasks, the group workers, over three credentials groups
  (the function's own, a `secretRef`, a `roleArn` with `externalId`), an
  orphaned endpoint set, a set large enough to be stored in chunks, and
  upstreams discovered from tags (`DISCOVERY_ENABLED`): one to create, one
  gone past its grace period to delete;
- the four event functions: `events.deliver` with the matching sample event
  (the tag change also creates the upstream its instance's discovery tag asks for);
- `ec2_event_batch`: `events.handle_batch` with a batch of two events of the
  instance (state change, spot warning), coalesced (the queue trigger's
  ReceiveMessage, DeleteMessage and GetQueueAttributes are checked statically);
- `api_handler`: every `chalicelib.usecases.api` function the routes call, POST /scan
  included;
- `asg_terminate_lifecycle`: the event, then its completion scheduled on the
  drain queue (`DescribeLifecycleHooks` of the seeded group's hook, the
  queue's URL, the message);
- `asg_drain_complete`: a drain-queue message not yet due (sent again), then
  a due one (`CompleteLifecycleAction`, played by `devtools.asg`: moto does
  not emulate it, so its permission is checked statically, as are the SQS
  trigger's ReceiveMessage, DeleteMessage and GetQueueAttributes).

Each must succeed completely (no exception, no error in its summary, every
upstream updated), with no request denied. Every request of the run is
recorded as the IAM actions AWS authorises it by (botocore's
`_make_api_call`, which every client's call passes, botocore's own AssumeRole
of refreshable credentials included): the run must call every action the
policy grants the code, and none it does not grant. So no action in a
policy is spare, in one run per function.

That a called action is a needed one rests on two facts, both shown by
real runs (`test_without_a_used_action_the_work_fails`): moto denies a call
whose action is not granted, and a denied call fails the work (an
AccessDenied exception, errors in the summary, a 4xx/5xx reply, or an
upstream left unchanged). One removal per service and path stands for the
rest: every recorded call goes through the same clients and the same error
handling as the one removed.

Known limits of moto 5.2.5, verified here (see `test_moto_enforces_what_this_test_relies_on`):
- It enforces actions for EC2, STS, DynamoDB and Secrets Manager, and the
  resource ARN for `sts:AssumeRole` (and the role's trust policy, with a
  `sts:ExternalId` StringEquals condition when an id is sent); but it
  authorizes DynamoDB, Secrets Manager and SQS calls against the resource `*`,
  so it denies any statement that names a table, a secret or a queue. For the run,
  the statements of those two services are widened to `*`; the real
  scoping (the stage's two table ARNs, the secret prefix) is checked
  statically in `tests/deploy/test_policies.py`. Which action each function
  needs on which table is shown by recording the requests of the complete
  run: they are exactly the (action, table) pairs its policy grants.
- The CloudWatch Logs, X-Ray and SQS (failure destination) statements are
  used by Lambda itself on the function's behalf, not by the code: they are
  checked statically too.
- It does not deny an AssumeRole that omits the external id the trust
  policy requires, so only a wrong id is shown to fail.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from chalicelib import config, runtime
from chalicelib.config import stage_environment
from chalicelib.domain.accounts import parse_account
from chalicelib.domain.endpoints import Endpoint, EndpointSet
from chalicelib.domain.spec import parse_upstream
from chalicelib.domain.status import MISSING
from chalicelib.edges.store import DynamoStore, table_definitions
from chalicelib.edges.store import chunks as store_chunks
from chalicelib.edges.store.chunks import encode_endpoints
from chalicelib.render import eds
from chalicelib.usecases import admin, api, events, lifecycle, scan, tag_discovery
from chalicelib.usecases.replies import Reply
from devtools import policies as gen
from devtools import stack
from devtools.asg import LifecycleActions
from tests.conftest import load_event
from tests.factories import upstream_document

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

STAGE = "prod"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
NS = "gloo-system"
EXTERNAL_ID = "ec2-eds-test-external-id"
MEMBER_ROLE = gen.MEMBER_ROLE_NAME
FUNCTION_USER = "ec2-eds-function"
CODE_SERVICES = ("dynamodb:", "ec2:", "sts:", "secretsmanager:", "sqs:", "autoscaling:")
WIDENED_SERVICES = ("dynamodb:", "secretsmanager:", "sqs:")
# Used by Lambda on the function's behalf (the failure destination, the drain queue's SQS trigger), or
# not emulated by moto (CompleteLifecycleAction): checked statically in tests/deploy/test_policies.py.
STATIC_ACTIONS = {
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "autoscaling:CompleteLifecycleAction",
}
GROUP, HOOK = "web-asg", "drain-before-terminate"  # as in the lifecycle event sample
EVENT_FIXTURES = {
    "ec2_state_change": "ec2-state-change.json",
    "ec2_spot_interruption": "spot-interruption.json",
    "ec2_tag_change": "tag-change.json",
    "asg_terminate_lifecycle": "asg-terminate-lifecycle.json",
    "ec2_rebalance_recommendation": "rebalance-recommendation.json",
    "ec2_scheduled_change": "aws-health-scheduled-change.json",
}
# Sets past CHUNK_BYTES are stored in several items (BatchGetItem to read, DeleteItem of replaced chunks);
# the threshold is lowered for the run so that a set of a few hundred endpoints takes that path.
SMALL_CHUNK_BYTES = 2048
BIG_SET = 300


class WorkFailed(AssertionError):
    """The function's work did not complete."""


def policy_document(function: str) -> dict[str, Any]:
    return json.loads((gen.POLICIES_DIR / STAGE / f"{function}.json").read_text())


def actions_of(document: dict[str, Any]) -> list[str]:
    return sorted({action for statement in document["Statement"] for action in statement["Action"]})


# The scan worker sends a message only to continue a group past one invocation, which the seeded
# fleet never needs: its SQS actions are checked statically (tests/deploy/test_policies.py), and the
# continuation itself on moto by tests/bench/test_scale.py.
# The planner deletes an orphaned set inside a transaction (its Delete needs dynamodb:DeleteItem on
# AWS), which moto does not check action by action; the seeded orphan is not chunked.
STATIC_BY_FUNCTION = {
    "scan_group": {"sqs:GetQueueUrl", "sqs:SendMessage"},
    "scheduled_scan": {"dynamodb:DeleteItem"},
}


def code_actions(function: str) -> list[str]:
    document = policy_document(function)
    lambdas = {a for s in document["Statement"] if s["Sid"] == "FailureDestination" for a in s["Action"]}
    return [
        action
        for action in actions_of(document)
        if action.startswith(CODE_SERVICES)
        and action not in STATIC_ACTIONS | STATIC_BY_FUNCTION.get(function, set())
        and action not in lambdas
    ]


def for_moto(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its DynamoDB and Secrets Manager resources widened to `*` (moto's limit, above)."""
    widened = copy.deepcopy(document)
    for statement in widened["Statement"]:
        if all(action.startswith(WIDENED_SERVICES) for action in statement["Action"]):
            statement["Resource"] = "*"
        # AWS authorises a TransactWriteItems by each item's action (ConditionCheckItem for the
        # checks, PutItem/DeleteItem for the writes); moto by the operation's name alone. The
        # policy grants AWS's actions; moto gets its one name where the checks are granted, so that
        # removing ConditionCheckItem still fails the workloads that need it.
        if "dynamodb:ConditionCheckItem" in statement["Action"]:
            statement["Action"] = [*statement["Action"], "dynamodb:TransactWriteItems"]
    return widened


def without(document: dict[str, Any], action: str) -> dict[str, Any]:
    """The document less one action (statements left empty are dropped)."""
    reduced = copy.deepcopy(document)
    statements = []
    for statement in reduced["Statement"]:
        statement["Action"] = [name for name in statement["Action"] if name != action]
        if statement["Action"]:
            statements.append(statement)
    reduced["Statement"] = statements
    return reduced


@dataclass
class IamMoto:
    endpoint: str
    admin: boto3.session.Session
    user_keys: dict[str, str]
    user_arn: str
    instance_id: str

    def client(self, service: str) -> Any:
        return self.admin.client(service, endpoint_url=self.endpoint, region_name=REGION)

    def grant(self, document: dict[str, Any]) -> None:
        """The function user's only policy becomes `document`."""
        self.client("iam").put_user_policy(
            UserName=FUNCTION_USER, PolicyName="function", PolicyDocument=json.dumps(document)
        )

    def admin_store(self) -> DynamoStore:
        env = stage_environment(STAGE)
        return DynamoStore(self.client("dynamodb"), env["UPSTREAMS_TABLE"], env["ENDPOINTS_TABLE"])

    def reset_tables(self) -> None:
        """The stage's tables, empty, exactly as `bootstrap` creates them."""
        db = self.client("dynamodb")
        env = stage_environment(STAGE)
        for definition in table_definitions(env["UPSTREAMS_TABLE"], env["ENDPOINTS_TABLE"]):
            try:
                db.delete_table(TableName=definition["TableName"])
            except ClientError as err:
                if err.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise
            db.create_table(**definition)


def upstream(name: str, **credentials: Any) -> dict[str, Any]:
    """A `team=web` upstream document in NS; `credentials` are its secretRef or roleArn and externalId."""
    return upstream_document(
        name, NS, region=REGION, filters=[{"kvPair": {"key": "team", "value": "web"}}], **credentials
    )


UPSTREAMS = {
    "web-default": upstream("web-default"),
    "web-secret": upstream("web-secret", secretRef={"name": "member-keys", "namespace": NS}),
    "web-role": upstream("web-role", roleArn=f"arn:aws:iam::{ACCOUNT}:role/{MEMBER_ROLE}", externalId=EXTERNAL_ID),
}


def fake_endpoints(count: int, seed: int) -> list[Endpoint]:
    rng = random.Random(seed)
    return [
        Endpoint(
            address=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            port=80,
            instance_id=f"i-{rng.getrandbits(68):017x}",
            zone="us-east-1a",
            tags=(("serial", f"{rng.getrandbits(32):08x}"), ("team", "web")),
        )
        for _ in range(count)
    ]


ACCOUNT_NAME = "member"
MEMBER_ACCOUNT = {
    "accountId": ACCOUNT,
    "assumeRole": f"role/{MEMBER_ROLE}",
    "externalId": EXTERNAL_ID,
    "regions": [REGION],
}
DISCOVERED = "found"  # the instance's discovery tag asks for gloo-system/found
GONE = "gone"  # a discovered upstream whose instances are gone, missing for long


def seed(moto: IamMoto) -> None:
    """The same starting state for every run: stale sets (one chunked), an orphan, a named account,
    a discovered upstream missing past its grace period; no scan marks."""
    moto.reset_tables()
    store = moto.admin_store()
    for name, document in UPSTREAMS.items():
        store.put_upstream(parse_upstream(copy.deepcopy(document), NS, name), "2026-01-01T00:00:00Z")
    store.put_account(parse_account(MEMBER_ACCOUNT, ACCOUNT_NAME))
    gone = parse_upstream(tag_discovery.document(NS, GONE, ACCOUNT_NAME, REGION))
    store.put_upstream(gone, "2026-01-01T00:00:00Z")
    store.set_mark(MISSING, gone.key, "2026-01-01T00:00:00Z")
    big = EndpointSet.build(NS, "web-default", REGION, fake_endpoints(BIG_SET, 1))
    assert len(encode_endpoints(big.records())) > 2 * store_chunks.CHUNK_BYTES
    assert store.put_endpoint_set(big, None)
    for number, name in enumerate(("web-secret", "web-role", "deleted", GONE), start=2):
        assert store.put_endpoint_set(EndpointSet.build(NS, name, REGION, fake_endpoints(1, number)), None)
    moto.client("sqs").create_queue(QueueName=gen.drain_queue_name(STAGE))  # idempotent: messages may remain
    moto.client("sqs").create_queue(QueueName=gen.scan_queue_name(STAGE))


def seed_group(admin: Any) -> None:
    """The Auto Scaling group of the lifecycle sample, with its terminate hook (moto keeps hooks)."""
    autoscaling = admin.client("autoscaling")
    autoscaling.create_launch_configuration(
        LaunchConfigurationName="web", ImageId="ami-12345678", InstanceType="t3.micro"
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        LaunchConfigurationName="web",
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[REGION + "a"],
    )
    autoscaling.put_lifecycle_hook(
        AutoScalingGroupName=GROUP,
        LifecycleHookName=HOOK,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=300,
        DefaultResult="CONTINUE",
    )


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamMoto]:
    log = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")  # read by the moto process start_moto starts
        process, endpoint = stack.start_moto(stack.free_port(), log)
    try:
        bootstrap = boto3.client(
            "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap", aws_secret_access_key="x"
        )
        # The three unchecked requests.
        bootstrap.create_user(UserName="setup-admin")
        bootstrap.put_user_policy(
            UserName="setup-admin",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        keys = bootstrap.create_access_key(UserName="setup-admin")["AccessKey"]
        admin = boto3.session.Session(
            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"], region_name=REGION
        )
        iam = admin.client("iam", endpoint_url=endpoint)
        user = iam.create_user(UserName=FUNCTION_USER)["User"]
        user_keys = iam.create_access_key(UserName=FUNCTION_USER)["AccessKey"]
        # The keys a `secretRef` holds: another identity, allowed to list instances.
        iam.create_user(UserName="gloo-keys")
        iam.put_user_policy(
            UserName="gloo-keys", PolicyName="describe", PolicyDocument=json.dumps(gen.member_permissions())
        )
        gloo_keys = iam.create_access_key(UserName="gloo-keys")["AccessKey"]
        prefix = stage_environment(STAGE)["SECRET_PREFIX"]
        admin.client("secretsmanager", endpoint_url=endpoint).create_secret(
            Name=f"{prefix}{NS}/member-keys",
            SecretString=json.dumps(
                {"access_key": gloo_keys["AccessKeyId"], "secret_key": gloo_keys["SecretAccessKey"]}
            ),
        )
        # The member role: its permissions as in policies/member; its trust as in policies/member/trust-*.json
        # but naming the function user itself (moto matches principals literally, not by aws:PrincipalArn).
        trust = gen.member_trust(STAGE, ACCOUNT, EXTERNAL_ID)
        trust["Statement"][0]["Principal"] = {"AWS": user["Arn"]}
        del trust["Statement"][0]["Condition"]["ArnEquals"]
        iam.create_role(RoleName=MEMBER_ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName=MEMBER_ROLE,
            PolicyName="describe-instances",
            PolicyDocument=(gen.POLICIES_DIR / "member" / "permissions.json").read_text(),
        )
        # A role the functions may not assume (outside arn:aws:iam::*:role/ec2-eds-*), trusting them all the same.
        iam.create_role(
            RoleName="not-eds",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}],
                }
            ),
        )
        iam.put_role_policy(
            RoleName="not-eds", PolicyName="describe", PolicyDocument=json.dumps(gen.member_permissions())
        )
        seed_group(type("Admin", (), {"client": lambda _, service: admin.client(service, endpoint_url=endpoint)})())
        ec2 = admin.client("ec2", endpoint_url=endpoint, region_name=REGION)
        instance = ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "team", "Value": "web"},
                        {"Key": "ec2-eds/upstream", "Value": f"{NS}/{DISCOVERED}"},
                    ],
                }
            ],
        )["Instances"][0]["InstanceId"]
        yield IamMoto(
            endpoint,
            admin,
            {"AWS_ACCESS_KEY_ID": user_keys["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": user_keys["SecretAccessKey"]},
            user["Arn"],
            instance,
        )
    finally:
        process.stop()


@pytest.fixture
def as_function(iam_moto: IamMoto, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], None]:
    """Seed, grant the document to the function user, and make every client of the code sign as that user."""

    def become(document: dict[str, Any]) -> None:
        monkeypatch.setattr(store_chunks, "CHUNK_BYTES", SMALL_CHUNK_BYTES)
        seed(iam_moto)
        iam_moto.grant(document)
        for key, value in stage_environment(STAGE).items():
            monkeypatch.setenv(key, value)
        for key, value in iam_moto.user_keys.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", iam_moto.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        monkeypatch.setenv("DISCOVERY_ENABLED", "true")
        runtime.reset()

    return become


# --- the work of each function ------------------------------------------------------------------


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise WorkFailed(what)


# What a complete run does from the seeded state.
SCAN_DISCOVERS = {"created": 1, "updated": 0, "removed": 1, "refused": 0}


def plan_work(moto: IamMoto) -> None:
    """The schedule's handler: plan (one task per group on the scan queue), the orphan set deleted."""
    planned = runtime.plan_scan()
    admin = moto.admin_store()
    expect(
        planned["errors"] == 0
        and planned["groups"] == 3  # three groups of upstreams (the account's discovery shares its role's)
        and admin.get_scan_record().planned is not None
        and admin.get_endpoint_set(NS, "deleted") is None,
        f"plan: {planned}",
    )


def scan_work(moto: IamMoto) -> None:
    """The scan queue's handler, for every task of a plan (made as the admin)."""
    knobs = runtime.scan_knobs()
    planned = scan.plan(moto.admin_store(), runtime.now, knobs)
    results = scan.run_tasks(runtime.store(), runtime.inventory(), runtime.now, planned.tasks, knobs, None)
    summary = scan.summarize(planned, results, {}, discovering=True).as_dict()
    expect(
        summary["errors"] == 0
        and "health_errors" not in summary  # DescribeInstanceStatus answered for every group
        and summary["changed"] == 4  # the three web-* sets and the new discovered one
        and summary["groups"] == 3
        and summary["discovered"] == SCAN_DISCOVERS,
        f"scan: {summary}",
    )


def event_work(fixture: str) -> Callable[[IamMoto], None]:
    def deliver(moto: IamMoto) -> None:
        raw = json.loads(json.dumps(load_event(fixture)).replace("i-abcd1111", moto.instance_id))
        if fixture == EVENT_FIXTURES["ec2_scheduled_change"]:  # starting now: drained at once
            raw["detail"]["startTime"] = format_datetime(datetime.now(UTC), usegmt=True)
            raw["detail"].pop("endTime", None)
        result = runtime.deliver(raw)
        if "instances" in result:  # an AWS Health event: one result per instance it names
            (result,) = result["instances"]
        tag_change = fixture == EVENT_FIXTURES["ec2_tag_change"]
        expect(
            not result.get("ignored")
            and result["errors"] == 0
            and result["groups"] == 3
            and result["changed"] == (4 if tag_change else 3)
            and result.get("discovered") == ([f"{NS}/{DISCOVERED}"] if tag_change else None),
            f"event: {result}",
        )

    return deliver


def terminate_lifecycle_work(moto: IamMoto) -> None:
    """The lifecycle handler: drained as every warning, then its completion queued on the drain queue."""
    event_work(EVENT_FIXTURES["asg_terminate_lifecycle"])(moto)  # the drain, as before: every check of it
    raw = json.loads(
        json.dumps(load_event(EVENT_FIXTURES["asg_terminate_lifecycle"])).replace("i-abcd1111", moto.instance_id)
    )
    runtime.reset()
    scheduled = runtime.drains().schedule(raw)
    expect(scheduled is not None and scheduled["group"] == GROUP, f"scheduled: {scheduled}")


def drain_complete_work(moto: IamMoto) -> None:
    """The drain queue's handler: a message not yet due is sent again; a due one completes the action.

    moto has no CompleteLifecycleAction: devtools.asg plays it (and its permission is checked statically)."""
    factory = runtime.clients()
    actions = LifecycleActions(factory.client("autoscaling"))
    event = actions.start(GROUP, HOOK, moto.instance_id)
    now = 1_000_000.0
    pending = lifecycle.pending_of(event, now, 60.0, "us-east-1")
    assert pending is not None
    handler = lifecycle.Lifecycle(factory.client("sqs"), lambda region: actions, config.settings(), clock=lambda: now)
    outcomes = [handler.complete(pending.body())]
    now += 60.0
    outcomes.append(handler.complete(pending.body()))
    expect(outcomes == ["waiting", "completed"] and actions.calls == [(moto.instance_id, "CONTINUE")], f"{outcomes}")


def api_work(moto: IamMoto) -> None:
    store = runtime.store()

    def reply(answer: Reply, status: int, what: str) -> Any:
        expect(answer.status == status, f"{what}: {answer.status} {answer.body}")
        return answer.body

    extra = json.dumps(upstream("extra"))
    reply(admin.put_upstream(store, NS, "extra", extra, "application/json", runtime.now()), 201, "PUT /upstreams")
    reply(admin.get_upstream(store, NS, "web-default"), 200, "GET /upstreams/{ns}/{name}")
    reply(admin.list_upstreams(store), 200, "GET /upstreams")
    account = {"accountId": ACCOUNT, "assumeRole": f"role/{MEMBER_ROLE}", "regions": [REGION]}
    reply(admin.put_account(store, "other", json.dumps(account), "application/json"), 201, "PUT /accounts")
    reply(admin.get_account(store, "other"), 200, "GET /accounts/{name}")
    reply(admin.list_accounts(store), 200, "GET /accounts")
    reply(admin.delete_account(store, "other"), 200, "DELETE /accounts/{name}")
    body = reply(api.get_endpoints(store, NS, "web-default", None), 200, "GET /endpoints (chunked)")
    expect(len(body["endpoints"]) == BIG_SET, "GET /endpoints: the chunked set was not read whole")
    request = {"resource_names": ["web-secret_gloo-system"], "type_url": eds.CLA_TYPE}
    reply(api.discovery_endpoints(store, json.dumps(request).encode()), 200, "POST /v3/discovery:endpoints")
    reply(api.prometheus_targets(store, NS, "web-role"), 200, "GET /prometheus/targets")
    summary = reply(admin.scan_summary(runtime.full_scan().as_dict()), 200, "POST /scan")
    expect(  # extra's set is new too
        summary["errors"] == 0
        and "health_errors" not in summary
        and summary["changed"] == 5
        and summary["discovered"] == SCAN_DISCOVERS,
        f"POST /scan: {summary}",
    )
    reply(admin.delete_upstream(store, NS, "extra"), 200, "DELETE /upstreams")


def event_batch_work(moto: IamMoto) -> None:
    """The event queue's consumer: a batch (a state change and a spot warning of the instance),
    coalesced: one DescribeInstances per group, every group's sets updated."""
    raws = [
        json.loads(json.dumps(load_event(EVENT_FIXTURES[kind])).replace("i-abcd1111", moto.instance_id))
        for kind in ("ec2_state_change", "ec2_spot_interruption")
    ]
    outcome = events.handle_batch(raws, runtime.event_deps())
    expect(
        outcome.failed == []
        and all(s.errors == 0 and s.groups == 3 and s.changed == 3 for s in outcome.summaries)
        and outcome.aws_calls.get("ec2:DescribeInstances") == 3,
        f"event batch: {[s.as_dict() for s in outcome.summaries]} {outcome.aws_calls}",
    )


WORK: dict[str, Callable[[IamMoto], None]] = {
    "api_handler": api_work,
    "scheduled_scan": plan_work,
    "scan_group": scan_work,
    **{function: event_work(fixture) for function, fixture in EVENT_FIXTURES.items()},
    "asg_terminate_lifecycle": terminate_lifecycle_work,
    "asg_drain_complete": drain_complete_work,
    gen.EVENT_FUNCTION: event_batch_work,
}


def attempt(work: Callable[[IamMoto], None], moto: IamMoto) -> str | None:
    """None when the work completed; else what went wrong."""
    try:
        work(moto)
    except WorkFailed as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - AccessDenied surfaces as ClientError or a wrapped error
        return f"{type(err).__name__}: {err}"
    return None


# --- the tests -----------------------------------------------------------------------------------


def test_every_function_has_work_and_policy() -> None:
    assert set(WORK) == set(gen.FUNCTIONS)
    for function in gen.FUNCTIONS:
        assert code_actions(function), function


@dataclass
class Recorded:
    """What the code asked of AWS during a run, as IAM authorises it."""

    actions: set[str] = field(default_factory=set)  # e.g. "ec2:DescribeInstances"
    tables: set[tuple[str, str]] = field(default_factory=set)  # (DynamoDB action, table variable)
    denied: list[str] = field(default_factory=list)  # "action: code" of every call refused for want of a grant


# AWS authorises no action for these: "No permissions are required to perform this operation" (STS API
# reference, GetCallerIdentity); a policy never grants them.
NEEDS_NO_GRANT = {"sts:GetCallerIdentity"}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}


def iam_actions(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The IAM actions AWS checks for one request, each with the tables it names (DynamoDB)."""
    if operation == "TransactWriteItems":  # authorised by AWS item by item
        actions = []
        for item in params.get("TransactItems", []):
            (kind, request), *_ = item.items()
            action = "ConditionCheckItem" if kind == "ConditionCheck" else f"{kind}Item"
            actions.append((f"dynamodb:{action}", [request["TableName"]]))
        return actions
    tables = [params["TableName"]] if "TableName" in params else list(params.get("RequestItems", {}))
    return [(f"{service}:{operation}", tables)]


@contextlib.contextmanager
def recording() -> Iterator[Recorded]:
    """Every request any botocore client of this process makes meanwhile (the code's, and botocore's own
    AssumeRole of refreshable credentials), recorded at the one place each passes: `_make_api_call`."""
    recorded = Recorded()
    names = {value: key for key, value in gen.table_names(STAGE).items()}
    original = BaseClient._make_api_call

    def call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        service = client.meta.service_model.signing_name
        actions = iam_actions(service, operation, params)
        for action, tables in actions:
            recorded.actions.add(action)
            if service == "dynamodb":
                recorded.tables.update((action, names[table]) for table in tables)
        try:
            return original(client, operation, params)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in DENIED_CODES:
                recorded.denied.extend(f"{action}: {code}" for action, _ in actions)
            raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseClient, "_make_api_call", call)
        yield recorded


@pytest.mark.parametrize("function", gen.FUNCTIONS)
def test_policy_is_enough_and_no_action_is_spare(
    function: str, iam_moto: IamMoto, as_function: Callable[[dict[str, Any]], None]
) -> None:
    """The work succeeds under its policy, no request of it is denied, and it calls every action the
    policy grants the code: none is spare. On each table it uses exactly the actions granted there.

    moto cannot tell tables apart (see above); the requests themselves can: every (action, table) the
    policy names is made by the work, and every one made is named.
    """
    document = policy_document(function)
    as_function(for_moto(document))
    with recording() as recorded:
        failure = attempt(WORK[function], iam_moto)
    assert failure is None, failure
    assert not recorded.denied, f"denied: {recorded.denied}"
    code = {action for action in recorded.actions if action.startswith(CODE_SERVICES)} - NEEDS_NO_GRANT
    assert code, "no request was recorded: the recorder is blind"
    assert code <= set(actions_of(document)), f"used but not granted: {sorted(code - set(actions_of(document)))}"
    assert set(code_actions(function)) <= code, (
        f"spare (granted, never used): {sorted(set(code_actions(function)) - code)}"
    )
    granted = {(action, table) for table, actions in gen.DYNAMODB.get(function, {}).items() for action in actions}
    assert recorded.tables == granted, (
        f"used but not granted: {recorded.tables - granted}; granted but not used: {granted - recorded.tables}"
    )


# A recorded call is a needed one only if moto refuses it without its grant and the work then fails.
# These runs show both, once for each service and path the policies grant: the action removed, the
# same work fails on the very call that needs it.
REMOVALS = [
    ("scan_group", "ec2:DescribeInstances"),
    ("scan_group", "ec2:DescribeInstanceStatus"),
    ("scan_group", "sts:AssumeRole"),
    ("scan_group", "secretsmanager:GetSecretValue"),
    ("ec2_state_change", "dynamodb:ConditionCheckItem"),
    ("api_handler", "dynamodb:BatchGetItem"),
    ("asg_terminate_lifecycle", "autoscaling:DescribeLifecycleHooks"),
    ("asg_drain_complete", "sqs:SendMessage"),
]


def test_removals_cover_every_service() -> None:
    assert {action.split(":")[0] + ":" for _, action in REMOVALS} == set(CODE_SERVICES)
    for function, action in REMOVALS:
        assert action in code_actions(function), (function, action)


@pytest.mark.parametrize(("function", "action"), REMOVALS)
def test_without_a_used_action_the_work_fails(
    function: str, action: str, iam_moto: IamMoto, as_function: Callable[[dict[str, Any]], None]
) -> None:
    as_function(for_moto(without(policy_document(function), action)))
    failure = attempt(WORK[function], iam_moto)
    assert failure is not None, f"{function} still works without {action}: the action is spare"
    if failure.startswith("ClientError"):  # denied on the very call that needs the action
        operation = "TransactWriteItems" if action == "dynamodb:ConditionCheckItem" else action.split(":")[1]
        assert f"calling the {operation} operation" in failure, failure


def test_assume_role_is_scoped(
    iam_moto: IamMoto, as_function: Callable[[dict[str, Any]], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role outside arn:aws:iam::*:role/ec2-eds-* cannot be assumed, though it trusts the function."""
    as_function(for_moto(policy_document("scan_group")))
    document = upstream("other-role", roleArn=f"arn:aws:iam::{ACCOUNT}:role/not-eds")
    iam_moto.admin_store().put_upstream(parse_upstream(document, NS, "other-role"), "2026-01-01T00:00:00Z")
    summary = scan.full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    assert summary.errors == 1
    status = iam_moto.admin_store().get_upstream(NS, "other-role")
    assert status is not None and status.status.code == "AccessDenied", status


def test_wrong_external_id_is_refused(iam_moto: IamMoto, as_function: Callable[[dict[str, Any]], None]) -> None:
    """The member role's trust policy demands the external id: a wrong one fails the role's group only."""
    as_function(for_moto(policy_document("scan_group")))
    document = upstream("wrong-id", roleArn=f"arn:aws:iam::{ACCOUNT}:role/{MEMBER_ROLE}", externalId="not-the-id")
    iam_moto.admin_store().put_upstream(parse_upstream(document, NS, "wrong-id"), "2026-01-01T00:00:00Z")
    summary = scan.full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs())
    assert summary.errors == 1 and summary.changed == 4


def test_moto_enforces_what_this_test_relies_on(iam_moto: IamMoto) -> None:
    """The behaviour the docstring describes, checked on the running moto, so a moto upgrade shows."""
    user = boto3.session.Session(
        aws_access_key_id=iam_moto.user_keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=iam_moto.user_keys["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    iam_moto.reset_tables()
    table = stage_environment(STAGE)["UPSTREAMS_TABLE"]
    db = user.client("dynamodb", endpoint_url=iam_moto.endpoint)

    def get_item() -> bool:
        try:
            db.get_item(TableName=table, Key={"id": {"S": "x"}})
            return True
        except ClientError:
            return False

    named = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["dynamodb:GetItem"]}]}
    named["Statement"][0]["Resource"] = gen.table_arn(table)
    iam_moto.grant(named)
    assert not get_item(), "moto now authorizes DynamoDB by table ARN: drop the widening in for_moto"
    named["Statement"][0]["Resource"] = "*"
    iam_moto.grant(named)
    assert get_item()
    named["Statement"][0]["Action"] = ["dynamodb:Scan"]
    iam_moto.grant(named)
    assert not get_item(), "moto does not enforce DynamoDB actions"
    # The unchecked-request budget is spent: unknown keys are refused.
    stranger = boto3.client(
        "dynamodb", endpoint_url=iam_moto.endpoint, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
    )
    with pytest.raises(ClientError):
        stranger.list_tables()
