"""Operator CLI: `python -m chalicelib.cli [--stage dev] [-o json|yaml] COMMAND`.

Works against whatever AWS the environment points at (`AWS_ENDPOINT_URL`
for an emulator). The stage's variables come from `.chalice/config.json`;
a variable already set in the environment wins. Output reads as kubectl's
and glooctl's do: tables and one line per object for people, the documents
with `-o json` or `-o yaml` for programs. Exit status 0 on success,
non-zero with a one-line error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import runtime
from chalicelib.config import ConfigError, settings, stage_environment
from chalicelib.domain.spec import SpecError, Upstream, check_label, iter_upstreams, load_documents
from chalicelib.domain.times import iso
from chalicelib.edges import tables
from chalicelib.edges.credentials import secret_document, secret_id
from chalicelib.edges.store import DocumentTooLarge, table_definitions
from chalicelib.observability import logger
from chalicelib.usecases import admin, api, replies
from chalicelib.usecases.scan import full_scan

PROJECT_DIR = Path(__file__).resolve().parent.parent
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
REASON_WIDTH = 80  # a longer reason is cut in the table; `-o yaml` shows it whole
PROGRESS_AFTER = 1.0  # seconds before a long scan or event starts showing progress on a terminal


class CliError(Exception):
    """A failure worth one line to the operator."""


def use_stage(stage: str) -> None:
    for key, value in stage_environment(stage).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # EMF lines are for Lambda, not a terminal
    runtime.reset()


# --- output ------------------------------------------------------------------------------------------------------


def emit(value: Any, output: str | None = "json") -> None:
    """A document as JSON or YAML."""
    if output == "yaml":
        print(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True), end="")
    else:
        print(json.dumps(value, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Columns as kubectl prints them: upper-case headers, left-aligned, three spaces apart."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def age(stamp: str | None, now: datetime | None = None) -> str:
    """`2026-12-01T20:00:00Z` as kubectl's AGE: 45s, 3m, 5h, 2d; `-` for never."""
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def clip(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def ec2_block(document: dict[str, Any]) -> dict[str, Any]:
    spec = document.get("spec") or {}
    block = spec.get("awsEc2") or (spec.get("upstreamSpec") or {}).get("awsEc2") or {}
    return block if isinstance(block, dict) else {}


def credentials_column(block: dict[str, Any]) -> str:
    """Whose eyes the upstream looks through, short: secret NS/NAME, role ACCOUNT/NAME, account NAME."""
    parts = []
    ref = block.get("secretRef")
    if isinstance(ref, dict):
        parts.append(f"secret {ref.get('namespace', '?')}/{ref.get('name', '?')}")
    role = block.get("roleArn")
    if isinstance(role, str):
        account, _, name = role.removeprefix("arn:aws:iam::").partition(":role/")
        parts.append(f"role {account}/{name}" if name else f"role {role}")
    if block.get("account"):
        parts.append(f"account {block['account']}")
    return " + ".join(parts) or "function role"


UPSTREAM_COLUMNS = ("NAMESPACE", "NAME", "STATE", "ENDPOINTS", "REGION", "CREDENTIALS", "LAST SCAN", "REASON")


def upstream_row(document: dict[str, Any], now: datetime) -> list[Any]:
    metadata, status, block = document.get("metadata") or {}, document.get("status") or {}, ec2_block(document)
    return [
        metadata.get("namespace", ""),
        metadata.get("name", ""),
        status.get("state", ""),
        status.get("endpoints", 0),
        block.get("region", ""),
        credentials_column(block),
        age(status.get("lastScan"), now),
        clip(status.get("reason", "")),
    ]


def print_upstreams(documents: list[dict[str, Any]]) -> None:
    if not documents:
        print("No upstreams found.", file=sys.stderr)
        return
    now = runtime.now()
    table(UPSTREAM_COLUMNS, [upstream_row(document, now) for document in documents])


def print_endpoints(body: dict[str, Any]) -> None:
    endpoints = body.get("endpoints", [])
    if not endpoints:
        print(f"No endpoints in {body['namespace']}/{body['name']} (version {body.get('version')}).", file=sys.stderr)
        return
    weighted = any("weight" in endpoint for endpoint in endpoints)
    headers = ["ADDRESS", "PORT", "INSTANCE", "ZONE", "HEALTH", *(["WEIGHT"] if weighted else [])]
    rows = [
        [e["address"], e["port"], e["instance_id"], e["zone"], e["health"], *([e.get("weight", 1)] if weighted else [])]
        for e in endpoints
    ]
    table(headers, rows)


ACCOUNT_COLUMNS = ("NAME", "ACCOUNT ID", "ROLE", "REGIONS", "EXTERNAL ID")


def print_accounts(accounts: list[dict[str, Any]]) -> None:
    if not accounts:
        print("No accounts found.", file=sys.stderr)
        return
    rows = [
        [a["name"], a["accountId"], a["roleArn"], ",".join(a["regions"]), "set" if a.get("externalId") else "-"]
        for a in accounts
    ]
    table(ACCOUNT_COLUMNS, rows)


def print_summary(title: str, summary: dict[str, Any], notes: dict[str, str] | None = None) -> None:
    """A scan's or event's summary, one `key  value` line each; dicts as `name count` lists."""
    notes = notes or {}
    keys = [key for key in summary if key != "aws_calls"] + (["aws_calls"] if "aws_calls" in summary else [])
    width = max(len(key) for key in keys)
    print(title)
    for key in keys:
        value = summary[key]
        if isinstance(value, dict):
            shown = ", ".join(f"{name} {count}" for name, count in value.items() if count) or "none"
        elif isinstance(value, list):
            shown = ", ".join(map(str, value)) or "none"
        else:
            shown = str(value)
        note = f"   ({notes[key]})" if key in notes else ""
        print(f"  {key.ljust(width)}   {shown}{note}")


@contextlib.contextmanager
def progress(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """On a terminal (stderr a TTY), a line that counts the seconds of a long step; nothing otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()
    shown = False

    def tick() -> None:
        nonlocal shown
        if done.wait(PROGRESS_AFTER):
            return
        while not done.is_set():
            stream.write(f"\r{label}… {time.monotonic() - started:.0f} s")
            stream.flush()
            shown = True
            done.wait(0.5)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if shown:
            stream.write("\r\x1b[K")  # erase the progress line: the result follows on stdout
            stream.flush()


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_bootstrap(args: argparse.Namespace) -> None:
    conf = settings()
    db = runtime.clients().client("dynamodb")
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
    names = [conf.upstreams_table, conf.endpoints_table]
    if args.output:
        emit({"created": created, "tables": names, "pointInTimeRecovery": True}, args.output)
        return
    for name in names:
        print(f"table {name} {'created' if name in created else 'exists'} (point-in-time recovery on)")


def manifest_files(given: str) -> list[Path]:
    """A file, or every .yaml/.yml/.json file of a directory (not its subdirectories), as `kubectl apply -f`."""
    path = Path(given)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        if not files:
            raise CliError(f"{given} holds no {'/'.join(MANIFEST_SUFFIXES)} file")
        return files
    return [path]


def expand_lists(documents: list[Any]) -> list[Any]:
    """`kind: List` (or `UpstreamList`) documents replaced by their `items`, as kubectl reads them."""
    expanded: list[Any] = []
    for document in documents:
        kind = document.get("kind") if isinstance(document, dict) else None
        if isinstance(kind, str) and kind.endswith("List"):
            items = document.get("items")
            if not isinstance(items, list):
                raise SpecError(f"a {kind} needs `items`, a list of Upstream documents", "items")
            expanded.extend(items)
        else:
            expanded.append(document)
    return expanded


def read_upstreams(given: str) -> list[Upstream]:
    """Every upstream in a file, directory or stdin (`-`); a bad one names its file and document."""
    upstreams: list[Upstream] = []
    sources: list[tuple[str, bytes, str]] = []
    if given == "-":
        sources.append(("stdin", sys.stdin.buffer.read(), "application/yaml"))
    else:
        for path in manifest_files(given):
            try:
                body = path.read_bytes()
            except OSError as err:
                raise CliError(f"cannot read {path}: {err.strerror}") from None
            sources.append((str(path), body, "application/json" if path.suffix == ".json" else "application/yaml"))
    for name, body, content_type in sources:
        try:
            upstreams.extend(
                iter_upstreams(expand_lists(load_documents(body, content_type, settings().max_body_bytes)))
            )
        except SpecError as err:
            raise SpecError(f"{name}: {err.message}" if len(sources) > 1 else err.message, err.field) from None
    return upstreams


def cmd_apply(args: argparse.Namespace) -> None:
    upstreams = [upstream for given in args.file for upstream in read_upstreams(given)]
    if not upstreams:
        raise CliError(f"{', '.join(args.file)} holds no document")
    store = runtime.store()
    now = iso(runtime.now())
    actions = {}
    for upstream in upstreams:
        existing = store.get_upstream(upstream.namespace, upstream.name)
        if existing is not None and existing.document == upstream.document:
            actions[upstream.key] = "unchanged"  # nothing written: status and set stay as they are
            continue
        store.put_upstream(upstream, now)
        actions[upstream.key] = "configured" if existing else "created"
    changed = {key for key, action in actions.items() if action != "unchanged"}
    if changed:
        runtime.apply_now(changed)  # served at once, as a PUT is
    if args.output:
        emit({"applied": list(actions)}, args.output)
        return
    for key, action in actions.items():
        print(f"upstream {key} {action}")


@dataclass(frozen=True)
class Getter:
    """What `get KIND` takes, asks the API and prints as a table."""

    operands: str
    fetch: Callable[[Any, list[str]], replies.Reply]
    table: Callable[[Any], None]


GETTERS = {
    "upstreams": Getter(
        "", lambda store, _: admin.list_upstreams(store), lambda body: print_upstreams(body["upstreams"])
    ),
    "accounts": Getter("", lambda store, _: admin.list_accounts(store), lambda body: print_accounts(body["accounts"])),
    "account": Getter("NAME", lambda store, n: admin.get_account(store, n[0]), lambda body: print_accounts([body])),
    "upstream": Getter(
        "NAMESPACE NAME", lambda store, n: admin.get_upstream(store, n[0], n[1]), lambda body: print_upstreams([body])
    ),
    "endpoints": Getter(
        "NAMESPACE NAME",
        lambda store, n: api.get_endpoints(store, n[0], n[1], None),
        lambda body: print_endpoints(body),
    ),
}


def cmd_get(args: argparse.Namespace) -> None:
    getter = GETTERS[args.what]
    if len(args.names) != len(getter.operands.split()):
        raise CliError(f"usage: get {args.what} {getter.operands}".rstrip())
    reply = getter.fetch(runtime.store(), args.names)
    if reply.status >= 400:
        raise CliError(reply.body["error"])
    if args.output:
        emit(reply.body, args.output)
    else:
        getter.table(reply.body)


def cmd_delete(args: argparse.Namespace) -> None:
    store = runtime.store()
    if args.kind == "account":
        if len(args.names) != 1:
            raise CliError("usage: delete account NAME")
        reply = admin.delete_account(store, args.names[0])
    else:
        if len(args.names) != 2:
            raise CliError("usage: delete upstream NAMESPACE NAME")
        reply = admin.delete_upstream(store, args.names[0], args.names[1])
    if reply.status >= 400:
        raise CliError(reply.body["error"])
    if args.output:
        emit(reply.body, args.output)
    else:
        print(f"{args.kind} {'/'.join(args.names)} deleted")


def cmd_account(args: argparse.Namespace) -> None:
    document = {
        "accountId": args.account_id,
        "assumeRole": args.assume_role,
        "regions": [region.strip() for region in args.regions.split(",") if region.strip()],
    }
    if args.external_id:
        document["externalId"] = args.external_id
    reply = admin.put_account(runtime.store(), args.name, json.dumps(document), "application/json", runtime.apply_now)
    if reply.status >= 400:
        raise SpecError(reply.body["error"], reply.body["field"])
    if args.output:
        emit(reply.body, args.output)
    else:
        action = "created" if reply.status == 201 else "configured"
        print(f"account {args.name} {action} (role {reply.body['roleArn']}, regions {','.join(reply.body['regions'])})")


def cmd_secret_create(args: argparse.Namespace) -> None:
    check_label(args.namespace, "--namespace")
    check_label(args.name, "--name")  # a secretRef's name is a DNS-1123 label: no upstream could name another
    sid = secret_id(settings().secret_prefix, args.namespace, args.name)
    value = json.dumps(secret_document(args.access_key, args.secret_key, args.session_token))
    client = runtime.clients().client("secretsmanager")
    try:
        client.create_secret(Name=sid, SecretString=value)
        action = "created"
    except ClientError as err:
        # It exists (AWS says InvalidRequestException when it is scheduled for deletion).
        if err.response["Error"]["Code"] not in ("ResourceExistsException", "InvalidRequestException"):
            raise
        if "DeletedDate" in client.describe_secret(SecretId=sid):
            client.restore_secret(SecretId=sid)  # scheduled for deletion: `create-aws` brings it back
        client.put_secret_value(SecretId=sid, SecretString=value)
        action = "updated"
    if args.output:
        emit({action: sid, "secretRef": {"name": args.name, "namespace": args.namespace}}, args.output)
    else:
        print(f"secret {sid} {action} (secretRef: {{name: {args.name}, namespace: {args.namespace}}})")


def secret_refs_in_use() -> dict[tuple[str, str], list[str]]:
    """(namespace, name) of each secretRef -> the upstreams naming it."""
    used: dict[tuple[str, str], list[str]] = {}
    for entry in runtime.store().list_upstreams():
        if entry.upstream is not None and entry.upstream.credentials.secret:
            used.setdefault(entry.upstream.credentials.secret, []).append(entry.key)
    return used


def cmd_secret_list(args: argparse.Namespace) -> None:
    prefix = settings().secret_prefix
    client = runtime.clients().client("secretsmanager")
    found = []
    for page in client.get_paginator("list_secrets").paginate(Filters=[{"Key": "name", "Values": [prefix]}]):
        for secret in page["SecretList"]:
            namespace, _, name = secret["Name"].removeprefix(prefix).partition("/")
            if not secret["Name"].startswith(prefix) or not name or "/" in name:
                continue
            changed = secret.get("LastChangedDate") or secret.get("CreatedDate")
            found.append(
                {
                    "namespace": namespace,
                    "name": name,
                    "secretId": secret["Name"],
                    "lastChanged": changed.astimezone(UTC).isoformat().replace("+00:00", "Z") if changed else None,
                }
            )
    used = secret_refs_in_use()
    for secret in found:
        secret["usedBy"] = used.get((secret["namespace"], secret["name"]), [])
    found.sort(key=lambda s: (s["namespace"], s["name"]))
    if args.output:
        emit({"secrets": found}, args.output)  # never a value: only names
        return
    if not found:
        print(f"No secrets found under {prefix}.", file=sys.stderr)
        return
    now = runtime.now()
    rows = [
        [s["namespace"], s["name"], s["secretId"], age(s["lastChanged"], now), ",".join(s["usedBy"]) or "-"]
        for s in found
    ]
    table(("NAMESPACE", "NAME", "SECRET ID", "CHANGED", "USED BY"), rows)


def cmd_secret_delete(args: argparse.Namespace) -> None:
    check_label(args.namespace, "--namespace")
    check_label(args.name, "--name")
    sid = secret_id(settings().secret_prefix, args.namespace, args.name)
    users = secret_refs_in_use().get((args.namespace, args.name), [])
    client = runtime.clients().client("secretsmanager")
    try:
        client.describe_secret(SecretId=sid)  # a forced delete of an absent secret would "succeed"
        if args.now:
            client.delete_secret(SecretId=sid, ForceDeleteWithoutRecovery=True)
        else:
            client.delete_secret(SecretId=sid, RecoveryWindowInDays=args.recovery_days)
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceNotFoundException":
            raise CliError(f"secret {sid} not found") from None
        raise
    result: dict[str, Any] = {"deleted": sid, "recoveryWindowInDays": 0 if args.now else args.recovery_days}
    if users:
        result["usedBy"] = users
    if args.output:
        emit(result, args.output)
        return
    if args.now:
        print(f"secret {sid} deleted")
    else:
        print(f"secret {sid} scheduled for deletion in {args.recovery_days} days (`create-aws` restores it)")
    if users:
        print(f"warning: still named by {', '.join(users)}: they go to Error at the next scan", file=sys.stderr)


ERROR_NOTE = "see STATE and REASON in `get upstreams`"
SCAN_NOTES = {
    "instances": "running instances in all listings: one counted once per group that lists it",
    "errors": ERROR_NOTE,
}


def cmd_scan(args: argparse.Namespace) -> None:
    with progress("scanning"):
        summary = full_scan(runtime.store(), runtime.inventory(), runtime.now, knobs=runtime.scan_knobs()).as_dict()
    if args.output:
        emit(summary, args.output)
    else:
        print_summary(
            "scan finished", summary, SCAN_NOTES if summary["errors"] else {"instances": SCAN_NOTES["instances"]}
        )


def cmd_event(args: argparse.Namespace) -> None:
    try:
        raw = json.loads(Path(args.file).read_text() if args.file != "-" else sys.stdin.read())
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise CliError(f"{args.file} is not JSON: {err}") from None
    with progress("delivering the event"):
        result = runtime.deliver(raw)
    if result.get("ignored") and not result.get("kind"):
        raise CliError(f"event ignored: {result['ignored']}")
    if args.output:
        emit(result, args.output)
    else:
        print_summary("event handled", result)


# --- the parser --------------------------------------------------------------------------------------------------


class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and every option's default shown."""


def common_options(defaults: bool) -> argparse.ArgumentParser:
    """--stage and -o, accepted before the command and after it (`account add --stage prod …`)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--stage",
        default="dev" if defaults else argparse.SUPPRESS,
        help="Chalice stage whose settings (table names, prefixes) to use; from .chalice/config.json"
        + ("" if defaults else " (default: dev)"),
    )
    options.add_argument(
        "-o",
        "--output",
        choices=["json", "yaml"],
        default=None if defaults else argparse.SUPPRESS,
        help="print the document(s) as JSON or YAML instead of a table or one line per object"
        + ("" if defaults else " (default: the table or lines)"),
    )
    options.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="also show the service's own log lines (JSON) on stderr",
    )
    return options


def parser() -> argparse.ArgumentParser:
    common = common_options(defaults=False)
    top = argparse.ArgumentParser(
        prog="python -m chalicelib.cli",
        description="Operate ec2-eds: upstreams, their endpoints, accounts, secrets, scans and events.",
        epilog="Options --stage, -o and -v go before or after the command. `COMMAND --help` describes each.",
        parents=[common_options(defaults=True)],
        formatter_class=Help,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=summary, description=description or summary, formatter_class=Help
        )

    command(
        "bootstrap",
        "create the DynamoDB tables (idempotent)",
        "Create the stage's two DynamoDB tables (UPSTREAMS_TABLE, ENDPOINTS_TABLE) with point-in-time\n"
        "recovery on. Tables that exist are left as they are.",
    ).set_defaults(run=cmd_bootstrap)

    apply = command(
        "apply",
        "create or replace the upstreams in files or a directory",
        "Create or replace every Upstream document in the given YAML/JSON files: multi-document YAML,\n"
        "`kind: List` with `items`, a directory (its .yaml/.yml/.json files), or - for stdin.\n"
        "Every document is checked before any is stored: one bad document stores nothing.",
    )
    apply.add_argument(
        "-f",
        "--file",
        required=True,
        action="append",
        metavar="PATH",
        help="file, directory or - (stdin); repeat for more",
    )
    apply.set_defaults(run=cmd_apply)

    get = command(
        "get",
        "show upstreams, an upstream, its endpoints, or accounts",
        "get upstreams | get upstream NAMESPACE NAME | get endpoints NAMESPACE NAME |\n"
        "get accounts | get account NAME\n\n"
        "A table by default (upstreams: NAMESPACE NAME STATE ENDPOINTS REGION CREDENTIALS LAST SCAN REASON;\n"
        "endpoints: ADDRESS PORT INSTANCE ZONE HEALTH); -o json|yaml prints the API's documents.",
    )
    get.add_argument("what", choices=["upstreams", "upstream", "endpoints", "accounts", "account"], help="what to show")
    get.add_argument("names", nargs="*", metavar="NAME", help="NAMESPACE NAME for upstream/endpoints, NAME for account")
    get.set_defaults(run=cmd_get)

    delete = command(
        "delete",
        "remove an upstream (and its endpoint set) or an unused account",
        "delete upstream NAMESPACE NAME | delete account NAME\n\nAn account still named by an upstream is not deleted.",
    )
    delete.add_argument("kind", choices=["upstream", "account"], help="what to delete")
    delete.add_argument("names", nargs="+", metavar="NAME", help="NAMESPACE NAME for upstream, NAME for account")
    delete.set_defaults(run=cmd_delete)

    account = command("account", "named accounts (as `hal config provider aws account`)")
    account_verbs = account.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = account_verbs.add_parser(
        "add",
        parents=[common],
        help="create or replace a named account",
        description="Create or replace a named account; an upstream names it with `account: NAME`.",
        formatter_class=Help,
    )
    add.add_argument("name", help="the account's name, a DNS-1123 label (lower case letters, digits, '-')")
    add.add_argument("--account-id", required=True, help="the 12-digit AWS account id")
    add.add_argument("--assume-role", required=True, help="role/NAME (in that account) or the role's ARN")
    add.add_argument("--regions", required=True, help="comma-separated regions, e.g. us-east-1,eu-west-1")
    add.add_argument("--external-id", help="the sts:ExternalId the role's trust policy demands (default: none)")
    add.set_defaults(run=cmd_account)

    secret = command(
        "secret",
        "AWS keys where a secretRef finds them (Secrets Manager)",
        "Secrets Manager secrets named {SECRET_PREFIX}{namespace}/{name}, which an upstream's\n"
        "`secretRef: {name, namespace}` resolves to. Values are never printed.",
    )
    secret_verbs = secret.add_subparsers(dest="verb", required=True, metavar="VERB")

    def secret_verb(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        verb = secret_verbs.add_parser(
            name, parents=[common], help=summary, description=description, formatter_class=Help
        )
        verb.add_argument("--name", required=True, help="the secretRef's name, a DNS-1123 label")
        verb.add_argument("--namespace", default="gloo-system", help="the secretRef's namespace, a DNS-1123 label")
        return verb

    create = secret_verb(
        "create-aws",
        "store AWS keys (as `glooctl create secret aws`)",
        "Store AWS keys as `glooctl create secret aws` does: created, or updated if it exists\n"
        "(restored first if it was scheduled for deletion).",
    )
    create.add_argument("--access-key", required=True, help="the AWS access key id")
    create.add_argument("--secret-key", required=True, help="the AWS secret access key")
    create.add_argument("--session-token", help="a session token, for temporary keys (default: none)")
    create.set_defaults(run=cmd_secret_create)

    listing = secret_verbs.add_parser(
        "list",
        parents=[common],
        help="list the stored secrets and the upstreams naming each",
        description="The secrets under SECRET_PREFIX, with the upstreams whose secretRef names each (never values).",
        formatter_class=Help,
    )
    listing.set_defaults(run=cmd_secret_list)

    remove = secret_verb(
        "delete",
        "delete a secret",
        "Delete a secret. Secrets Manager keeps it for a recovery window first (`create-aws` brings\n"
        "it back); --now deletes it without one. Upstreams still naming it go to Error at the next scan.",
    )
    remove.add_argument(
        "--recovery-days",
        type=int,
        default=7,
        choices=range(7, 31),
        metavar="7-30",
        help="days Secrets Manager keeps the secret recoverable",
    )
    remove.add_argument("--now", action="store_true", help="delete at once, without a recovery window")
    remove.set_defaults(run=cmd_secret_delete)

    command(
        "scan",
        "run a full reconcile now and print its summary",
        "List every (credentials, region) group once, recompute every upstream and write what changed,\n"
        "as the schedule does. `instances` counts each group's listing: an instance listed by two\n"
        "groups counts twice.",
    ).set_defaults(run=cmd_scan)

    event = command(
        "event",
        "deliver an EventBridge event (a JSON file) to the event handler",
        "Deliver an EventBridge event, JSON as EventBridge sends it (`python -m devtools.fleet event`\n"
        "builds one), to the handler code the Lambda functions run.",
    )
    event.add_argument("file", help="the event's JSON file, or - for stdin")
    event.set_defaults(run=cmd_event)
    return top


def one_line(err: SpecError) -> str:
    """The message, with the field's path in front unless the message names it already."""
    if err.field and err.field not in err.message:
        return f"{err.field}: {err.message}"
    return err.message


def failure(err: BaseException, stage: str) -> tuple[str, int]:
    """The one line and the exit status for an error."""
    if isinstance(err, SpecError):
        return one_line(err), 2
    if tables.is_missing_table(err):
        return runtime.missing_table_message(stage), 1
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"AWS {error.get('Code')}: {error.get('Message')}", 1
    if isinstance(err, BotoCoreError):
        return f"AWS: {err}", 1
    return str(err), 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = logger.log_level
    logger.setLevel("INFO" if args.verbose else "ERROR")  # a terminal shows the result, not the log lines
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        use_stage(args.stage)
        run(args)
    except (SpecError, CliError, ConfigError, DocumentTooLarge, ClientError, BotoCoreError) as err:
        message, status = failure(err, args.stage)
        print(f"error: {message}", file=sys.stderr)
        return status
    finally:
        logger.setLevel(previous)  # `make run` calls main() in-process and keeps its own level
    return 0


if __name__ == "__main__":
    sys.exit(main())
