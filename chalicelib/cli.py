"""Operator CLI: `python -m chalicelib.cli [--stage dev] COMMAND`.

Works against whatever AWS the environment points at (`AWS_ENDPOINT_URL`
for an emulator). The stage's variables come from `.chalice/config.json`;
a variable already set in the environment wins. Exit status 0 on success,
non-zero with a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import api, aws, events, runtime
from .config import ConfigError, settings
from .credentials import secret_document, secret_id
from .discovery import full_scan, iso
from .spec import SpecError, check_label, iter_upstreams, load_documents
from .store import DocumentTooLarge, table_definitions

PROJECT_DIR = Path(__file__).resolve().parent.parent


class CliError(Exception):
    """A failure worth one line to the operator."""


def stage_environment(stage: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The variables Chalice would give a function of this stage."""
    path = project_dir / ".chalice" / "config.json"
    try:
        config = json.loads(path.read_text())
    except OSError:
        return {}
    if stage not in config.get("stages", {}):
        raise CliError(f"stage {stage!r} is not in {path} (stages: {', '.join(sorted(config.get('stages', {})))})")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def use_stage(stage: str) -> None:
    for key, value in stage_environment(stage).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # EMF lines are for Lambda, not a terminal
    runtime.reset()


def emit(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def cmd_bootstrap(_: argparse.Namespace) -> None:
    conf = settings()
    db = aws.clients().client("dynamodb")
    created = []
    for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
        try:
            db.create_table(**definition)
            created.append(definition["TableName"])
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceInUseException":
                raise
    for definition in table_definitions(conf.upstreams_table, conf.endpoints_table):
        db.get_waiter("table_exists").wait(TableName=definition["TableName"], WaiterConfig={"Delay": 1})
        # As the CloudFormation path does: point-in-time recovery on (idempotent).
        db.update_continuous_backups(
            TableName=definition["TableName"],
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    emit({"created": created, "tables": [conf.upstreams_table, conf.endpoints_table], "pointInTimeRecovery": True})


def cmd_apply(args: argparse.Namespace) -> None:
    path = Path(args.file)
    try:
        body = path.read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror}") from None
    content_type = "application/json" if path.suffix == ".json" else "application/yaml"
    upstreams = list(iter_upstreams(load_documents(body, content_type, settings().max_body_bytes)))
    if not upstreams:
        raise CliError(f"{args.file} holds no document")
    store = runtime.store()
    now = iso(runtime.now())
    for upstream in upstreams:
        store.put_upstream(upstream, now)
    emit({"applied": [upstream.key for upstream in upstreams]})


def cmd_get(args: argparse.Namespace) -> None:
    store = runtime.store()
    operands = {
        "upstreams": "",
        "accounts": "",
        "account": "NAME",
        "upstream": "NAMESPACE NAME",
        "endpoints": "NAMESPACE NAME",
    }[args.what]
    if len(args.names) != len(operands.split()):
        raise CliError(f"usage: get {args.what} {operands}".rstrip())
    if args.what == "upstreams":
        reply = api.list_upstreams(store)
    elif args.what == "accounts":
        reply = api.list_accounts(store)
    elif args.what == "account":
        reply = api.get_account(store, args.names[0])
    elif args.what == "upstream":
        reply = api.get_upstream(store, args.names[0], args.names[1])
    else:
        reply = api.get_endpoints(store, args.names[0], args.names[1], None)
    if reply.status >= 400:
        raise CliError(reply.body["error"])
    emit(reply.body)


def cmd_delete(args: argparse.Namespace) -> None:
    store = runtime.store()
    if args.kind == "account":
        if len(args.names) != 1:
            raise CliError("usage: delete account NAME")
        reply = api.delete_account(store, args.names[0])
    else:
        if len(args.names) != 2:
            raise CliError("usage: delete upstream NAMESPACE NAME")
        reply = api.delete_upstream(store, args.names[0], args.names[1])
    if reply.status >= 400:
        raise CliError(reply.body["error"])
    emit(reply.body)


def cmd_account(args: argparse.Namespace) -> None:
    document = {
        "accountId": args.account_id,
        "assumeRole": args.assume_role,
        "regions": [region.strip() for region in args.regions.split(",") if region.strip()],
    }
    if args.external_id:
        document["externalId"] = args.external_id
    reply = api.put_account(runtime.store(), args.name, json.dumps(document), "application/json")
    if reply.status >= 400:
        raise SpecError(reply.body["error"], reply.body["field"])
    emit(reply.body)


def cmd_secret(args: argparse.Namespace) -> None:
    check_label(args.namespace, "--namespace")
    sid = secret_id(args.namespace, args.name)
    value = json.dumps(secret_document(args.access_key, args.secret_key, args.session_token))
    client = aws.clients().client("secretsmanager")
    try:
        client.create_secret(Name=sid, SecretString=value)
        action = "created"
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceExistsException":
            raise
        client.put_secret_value(SecretId=sid, SecretString=value)
        action = "updated"
    emit({action: sid, "secretRef": {"name": args.name, "namespace": args.namespace}})


def cmd_scan(_: argparse.Namespace) -> None:
    emit(full_scan(runtime.store(), runtime.inventory(), runtime.now).as_dict())


def cmd_event(args: argparse.Namespace) -> None:
    try:
        raw = json.loads(Path(args.file).read_text() if args.file != "-" else sys.stdin.read())
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise CliError(f"{args.file} is not JSON: {err}") from None
    result = events.deliver(raw)
    emit(result)
    if result.get("ignored") and not result.get("kind"):
        raise CliError(result["ignored"])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m chalicelib.cli", description="Operate ec2-eds.")
    top.add_argument("--stage", default="dev", help="Chalice stage whose settings to use (default dev)")
    # --stage is accepted after the command too (`cli bootstrap --stage prod`).
    staged = argparse.ArgumentParser(add_help=False)
    staged.add_argument("--stage", default=argparse.SUPPRESS, help="Chalice stage (default dev)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("bootstrap", parents=[staged], help="create the tables (idempotent)").set_defaults(
        run=cmd_bootstrap
    )

    apply = commands.add_parser("apply", parents=[staged], help="create or replace the upstream(s) in a YAML/JSON file")
    apply.add_argument("-f", "--file", required=True, help="file with one or more Upstream documents, - for stdin")
    apply.set_defaults(run=cmd_apply)

    get = commands.add_parser(
        "get", parents=[staged], help="print upstreams, an upstream, its endpoints or accounts as JSON"
    )
    get.add_argument("what", choices=["upstreams", "upstream", "endpoints", "accounts", "account"])
    get.add_argument("names", nargs="*", metavar="NAME", help="NAMESPACE NAME for upstream/endpoints, NAME for account")
    get.set_defaults(run=cmd_get)

    delete = commands.add_parser(
        "delete", parents=[staged], help="remove an upstream (and its endpoint set) or an unused account"
    )
    delete.add_argument("kind", choices=["upstream", "account"])
    delete.add_argument("names", nargs="+", metavar="NAME", help="NAMESPACE NAME for upstream, NAME for account")
    delete.set_defaults(run=cmd_delete)

    account = commands.add_parser(
        "account", parents=[staged], help="named accounts (as `hal config provider aws account`)"
    )
    account_verbs = account.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = account_verbs.add_parser("add", help="create or replace a named account")
    add.add_argument("name")
    add.add_argument("--account-id", required=True, help="the 12-digit AWS account id")
    add.add_argument("--assume-role", required=True, help="role/NAME (in that account) or the role's ARN")
    add.add_argument("--regions", required=True, help="comma-separated regions, e.g. us-east-1,eu-west-1")
    add.add_argument("--external-id", help="the sts:ExternalId the role's trust policy demands")
    add.set_defaults(run=cmd_account)

    secret = commands.add_parser("secret", parents=[staged], help="store credentials where a secretRef finds them")
    secret_kinds = secret.add_subparsers(dest="kind", required=True, metavar="KIND")
    create = secret_kinds.add_parser("create-aws", help="as `glooctl create secret aws` does")
    create.add_argument("--name", required=True)
    create.add_argument("--namespace", default="gloo-system")
    create.add_argument("--access-key", required=True)
    create.add_argument("--secret-key", required=True)
    create.add_argument("--session-token")
    create.set_defaults(run=cmd_secret)

    commands.add_parser("scan", parents=[staged], help="run a full reconcile and print its summary").set_defaults(
        run=cmd_scan
    )

    event = commands.add_parser(
        "event", parents=[staged], help="deliver an EventBridge event (JSON file) to the event handler"
    )
    event.add_argument("file")
    event.set_defaults(run=cmd_event)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        use_stage(args.stage)
        args.run(args)
    except SpecError as err:
        print(
            f"error: {err.field + ': ' if err.field and not err.message.startswith(err.field) else ''}{err.message}",
            file=sys.stderr,
        )
        return 2
    except (CliError, ConfigError, DocumentTooLarge) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ClientError as err:
        error = err.response.get("Error", {})
        print(f"error: AWS {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
        return 1
    except BotoCoreError as err:
        print(f"error: AWS: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
