"""The operator CLI, `chalicelib.cli.main([...])`, over moto."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "upstreams"
EVENTS = ROOT / "tests" / "fixtures" / "events"

WEB = """\
apiVersion: gloo.solo.io/v1
kind: Upstream
metadata: {name: web, namespace: gloo-system}
spec:
  awsEc2:
    region: us-east-1
    filters: [{key: web}]
    port: 8080
"""


@pytest.fixture(autouse=True)
def _environment(restore_environ: None) -> None:
    """Each `main()` fills os.environ from the stage, as a new process would: undone after each test."""


@pytest.fixture
def moto_only() -> Iterator[None]:
    """moto without the tables: what `bootstrap` starts from."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, Any, str]]:
    """main(argv + `-o json`) -> (exit status, stdout parsed as JSON or None, stderr)."""

    def invoke(*argv: str) -> tuple[int, Any, str]:
        capsys.readouterr()
        code = main([*argv, "-o", "json"])
        captured = capsys.readouterr()
        out = json.loads(captured.out) if captured.out.strip() else None
        return code, out, captured.err

    return invoke


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def table_ids(table: str) -> list[str]:
    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName=table)["Items"]
    return sorted(item["id"]["S"] for item in items if not item["id"]["S"].startswith("~"))


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_bootstrap_creates_the_tables_and_is_idempotent(moto_only: None, run: Any) -> None:
    """Also: point-in-time recovery on, as the CloudFormation path has it; --stage after the command."""
    code, out, _ = run("bootstrap")

    assert code == 0
    assert out == {
        "created": ["ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints"],
        "tables": ["ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints"],
        "pointInTimeRecovery": True,
    }
    db = boto3.client("dynamodb", region_name="us-east-1")
    assert sorted(db.list_tables()["TableNames"]) == ["ec2-eds-dev-endpoints", "ec2-eds-dev-upstreams"]
    for table in out["tables"]:
        backups = db.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"

    code, out, _ = run("bootstrap", "--stage", "dev")

    assert code == 0
    assert out["created"] == []
    assert out["tables"] == ["ec2-eds-dev-upstreams", "ec2-eds-dev-endpoints"]


def test_apply_a_multi_document_file(aws: None, run: Any) -> None:
    code, out, _ = run("apply", "-f", str(EXAMPLES / "demo-extra.yaml"))

    assert code == 0
    assert sorted(out["applied"]) == ["gloo-system/ec2-group2", "gloo-system/ec2-legacy-private"]
    assert table_ids("ec2-eds-dev-upstreams") == ["gloo-system/ec2-group2", "gloo-system/ec2-legacy-private"]


def test_apply_a_json_file_and_replace(aws: None, run: Any, tmp_path: Path) -> None:
    document = {"metadata": {"name": "web", "namespace": "team-a"}, "spec": {"awsEc2": {"region": "us-east-1"}}}
    path = write(tmp_path, "web.json", json.dumps(document))
    assert run("apply", "-f", path)[0] == 0

    document["spec"]["awsEc2"]["port"] = 9090
    write(tmp_path, "web.json", json.dumps(document))
    code, out, _ = run("apply", "-f", path)

    assert (code, out) == (0, {"applied": ["team-a/web"]})
    assert run("get", "upstream", "team-a", "web")[1]["spec"]["awsEc2"]["port"] == 9090


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (WEB.replace("port: 8080", "port: 0"), "spec.awsEc2.port"),
        (WEB.replace("region: us-east-1", "region: nowhere"), "spec.awsEc2.region"),
        ("spec: [unclosed\n  - x", "YAML"),
        (WEB + "---\n" + WEB.replace("name: web", "name: Bad_Name"), "document 2"),
    ],
    ids=["port", "region", "yaml", "second-document"],
)
def test_apply_a_bad_file_fails_with_one_line_and_stores_nothing(
    aws: None, run: Any, tmp_path: Path, text: str, named: str
) -> None:
    code, out, err = run("apply", "-f", write(tmp_path, "bad.yaml", text))

    assert code != 0
    assert out is None
    assert named in one_line_error(err)
    assert table_ids("ec2-eds-dev-upstreams") == []


def test_apply_a_missing_file_fails_with_one_line(aws: None, run: Any, tmp_path: Path) -> None:
    code, _, err = run("apply", "-f", str(tmp_path / "absent.yaml"))

    assert code != 0
    assert "absent.yaml" in one_line_error(err)


def test_apply_an_empty_file_fails(aws: None, run: Any, tmp_path: Path) -> None:
    code, _, err = run("apply", "-f", write(tmp_path, "empty.yaml", "# nothing here\n"))

    assert code != 0
    one_line_error(err)


def test_get_upstreams_upstream_and_endpoints(
    aws: None, run: Any, tmp_path: Path, launch: Callable[..., list[str]]
) -> None:
    run("apply", "-f", write(tmp_path, "web.yaml", WEB))
    web = set(launch({"web": "1"}, count=2))

    code, listing, _ = run("get", "upstreams")
    assert code == 0
    assert [u["metadata"]["name"] for u in listing["upstreams"]] == ["web"]

    code, one, _ = run("get", "upstream", "gloo-system", "web")
    assert code == 0
    assert one["spec"]["awsEc2"]["port"] == 8080
    assert one["status"]["state"] == "Accepted"
    assert one["status"]["lastScan"] is not None  # apply reconciled the group at once

    code, endpoints, _ = run("get", "endpoints", "gloo-system", "web")
    assert code == 0 and endpoints["endpoints"] == []  # the instances came after the apply

    assert run("scan")[0] == 0
    code, endpoints, _ = run("get", "endpoints", "gloo-system", "web")
    assert code == 0
    assert endpoints["cluster_name"] == "web_gloo-system"
    assert {e["instance_id"] for e in endpoints["endpoints"]} == web
    assert {e["port"] for e in endpoints["endpoints"]} == {8080}
    assert run("get", "upstream", "gloo-system", "web")[1]["status"]["endpoints"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ("get", "upstream", "gloo-system", "nothing"),
        ("get", "endpoints", "gloo-system", "nothing"),
        ("get", "upstream", "gloo-system"),
        ("get", "upstream", "Gloo", "web"),
        ("delete", "upstream", "gloo-system", "nothing"),
        ("delete", "upstream", "gloo-system", "Bad_Name"),
    ],
    ids=["unknown-upstream", "unknown-endpoints", "one-name", "bad-namespace", "delete-unknown", "delete-bad-name"],
)
def test_get_and_delete_failures_are_one_line(aws: None, run: Any, argv: tuple[str, ...]) -> None:
    code, out, err = run(*argv)

    assert code != 0
    assert out is None
    one_line_error(err)


def test_delete_upstream_removes_it_and_its_endpoints(
    aws: None, run: Any, tmp_path: Path, launch: Callable[..., list[str]]
) -> None:
    run("apply", "-f", write(tmp_path, "web.yaml", WEB))
    launch({"web": "1"})
    run("scan")
    assert table_ids("ec2-eds-dev-endpoints") == ["gloo-system/web"]

    code, out, _ = run("delete", "upstream", "gloo-system", "web")

    assert code == 0
    assert out == {"deleted": "gloo-system/web"}
    assert table_ids("ec2-eds-dev-upstreams") == []
    assert table_ids("ec2-eds-dev-endpoints") == []
    assert run("get", "upstream", "gloo-system", "web")[0] != 0


def test_secret_create_aws_then_update(aws: None, run: Any) -> None:
    sm = boto3.client("secretsmanager", region_name="us-east-1")

    code, out, _ = run(
        "secret",
        "create-aws",
        "--name",
        "gloo-tag-group1",
        "--namespace",
        "default",
        "--access-key",
        "AKIAFIRST00000000000",
        "--secret-key",
        "first-secret",
    )

    assert code == 0
    assert out["created"] == "ec2-eds/default/gloo-tag-group1"
    assert out["secretRef"] == {"name": "gloo-tag-group1", "namespace": "default"}
    assert "first-secret" not in json.dumps(out)
    stored = json.loads(sm.get_secret_value(SecretId="ec2-eds/default/gloo-tag-group1")["SecretString"])
    assert stored == {"access_key": "AKIAFIRST00000000000", "secret_key": "first-secret"}

    code, out, _ = run(
        "secret",
        "create-aws",
        "--name",
        "gloo-tag-group1",
        "--namespace",
        "default",
        "--access-key",
        "AKIASECOND0000000000",
        "--secret-key",
        "second-secret",
        "--session-token",
        "tok",
    )

    assert code == 0
    assert out["updated"] == "ec2-eds/default/gloo-tag-group1"
    stored = json.loads(sm.get_secret_value(SecretId="ec2-eds/default/gloo-tag-group1")["SecretString"])
    assert stored == {"access_key": "AKIASECOND0000000000", "secret_key": "second-secret", "session_token": "tok"}


def test_secret_create_aws_defaults_to_gloo_system(aws: None, run: Any) -> None:
    code, out, _ = run("secret", "create-aws", "--name", "creds", "--access-key", "AKIA0", "--secret-key", "s")

    assert code == 0
    assert out["created"] == "ec2-eds/gloo-system/creds"


def test_a_secret_made_by_the_cli_is_found_by_an_upstream(
    aws: None, run: Any, launch: Callable[..., list[str]]
) -> None:
    run(
        "secret",
        "create-aws",
        "--name",
        "gloo-tag-group1",
        "--namespace",
        "default",
        "--access-key",
        "AKIAGROUP10000000000",
        "--secret-key",
        "group1-secret",
    )
    run("apply", "-f", str(EXAMPLES / "seed-ec2-demo-upstream.yaml"))
    [match] = launch({"gloo-id": "1", "gloo-tag": "group1", "version": "v1.2.3"})

    code, summary, _ = run("scan")

    assert code == 0
    assert summary["errors"] == 0
    assert summary["aws_calls"]["secretsmanager:GetSecretValue"] == 1
    assert summary["aws_calls"]["sts:AssumeRole"] == 1
    endpoints = run("get", "endpoints", "gloo-system", "ec2-demo-upstream")[1]["endpoints"]
    assert [e["instance_id"] for e in endpoints] == [match]


def test_scan_prints_the_summary(aws: None, run: Any, tmp_path: Path, launch: Callable[..., list[str]]) -> None:
    run("apply", "-f", write(tmp_path, "web.yaml", WEB))
    launch({"web": "1"}, count=2)
    launch({"other": "1"})

    code, summary, _ = run("scan")

    assert code == 0
    assert (summary["upstreams"], summary["instances"], summary["changed"], summary["errors"]) == (1, 3, 1, 0)
    assert summary["aws_calls"]["ec2:DescribeInstances"] == 1
    assert {"ec2:DescribeInstances", "sts:AssumeRole", "secretsmanager:GetSecretValue"} <= set(summary["aws_calls"])

    assert run("scan")[1]["changed"] == 0


def test_stage_prod_uses_the_prod_tables(moto_only: None, run: Any, tmp_path: Path) -> None:
    code, out, _ = run("--stage", "prod", "bootstrap")
    assert code == 0
    assert out["tables"] == ["ec2-eds-prod-upstreams", "ec2-eds-prod-endpoints"]

    assert run("--stage", "prod", "apply", "-f", write(tmp_path, "web.yaml", WEB))[0] == 0

    assert table_ids("ec2-eds-prod-upstreams") == ["gloo-system/web"]
    tables = boto3.client("dynamodb", region_name="us-east-1").list_tables()["TableNames"]
    assert sorted(tables) == ["ec2-eds-prod-endpoints", "ec2-eds-prod-upstreams"]
    assert [u["metadata"]["name"] for u in run("--stage", "prod", "get", "upstreams")[1]["upstreams"]] == ["web"]


def test_the_environment_overrides_the_stage(moto_only: None, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAMS_TABLE", "custom-upstreams")

    code, out, _ = run("--stage", "prod", "bootstrap")

    assert code == 0
    assert out["tables"] == ["custom-upstreams", "ec2-eds-prod-endpoints"]


def test_an_unknown_stage_fails_with_one_line(moto_only: None, run: Any) -> None:
    code, _, err = run("--stage", "qa", "bootstrap")

    assert code != 0
    assert "qa" in one_line_error(err)


def test_aws_errors_are_one_line(aws: None, run: Any) -> None:
    code, _, err = run("secret", "delete", "--name", "absent", "--now")

    assert code != 0
    assert "ec2-eds/gloo-system/absent not found" in one_line_error(err)


def test_event_delivers_a_state_change_to_the_handler(
    aws: None, run: Any, tmp_path: Path, launch: Callable[..., list[str]], ec2: Any
) -> None:
    run("apply", "-f", write(tmp_path, "web.yaml", WEB))
    keep, stop = launch({"web": "1"}, count=2)
    run("scan")
    ec2.stop_instances(InstanceIds=[stop])
    event = json.loads((EVENTS / "ec2-state-change.json").read_text())
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{stop}"]
    event["detail"] = {"instance-id": stop, "state": "stopped"}

    code, _, err = run("event", write(tmp_path, "event.json", json.dumps(event)))

    assert code == 0, err
    endpoints = run("get", "endpoints", "gloo-system", "web")[1]["endpoints"]
    assert [e["instance_id"] for e in endpoints] == [keep]


# --- what a person sees: tables, lines, help, errors -------------------------------------------------------------


@pytest.fixture
def human(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """main(argv) as typed, no -o: (exit status, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def columns(out: str) -> tuple[list[str], list[list[str]]]:
    """A kubectl-style table: headers and rows, cells split on runs of 3+ spaces."""
    import re

    lines = [line for line in out.splitlines() if line.strip()]
    split = [re.split(r" {3,}", line.strip()) for line in lines]
    return split[0], split[1:]


SECRET_WEB = WEB.replace("port: 8080", "port: 8080\n    secretRef: {name: web-keys, namespace: team-a}")


def test_get_upstreams_is_a_table_of_state_endpoints_credentials_and_reason(
    aws: None, human: Any, tmp_path: Path, launch: Callable[..., list[str]]
) -> None:
    """One Accepted upstream with two endpoints, one in Error because its secret is missing."""
    web = write(tmp_path, "web.yaml", WEB)
    broken = write(tmp_path, "broken.yaml", SECRET_WEB.replace("name: web,", "name: broken,"))
    assert human("apply", "-f", web, "-f", broken)[0] == 0
    launch({"web": "1"}, count=2)
    assert human("scan")[0] == 0

    code, out, err = human("get", "upstreams")

    assert (code, err) == (0, "")
    headers, rows = columns(out)
    assert headers == ["NAMESPACE", "NAME", "STATE", "ENDPOINTS", "REGION", "CREDENTIALS", "LAST SCAN", "REASON"]
    by_name = {row[1]: dict(zip(headers, row, strict=False)) for row in rows}
    assert by_name["web"]["STATE"] == "Accepted"
    assert by_name["web"]["ENDPOINTS"] == "2"
    assert by_name["web"]["REGION"] == "us-east-1"
    assert by_name["web"]["CREDENTIALS"] == "function role"
    assert by_name["web"]["LAST SCAN"].endswith("s")  # an age, as kubectl's AGE
    assert by_name["broken"]["STATE"] == "Error"
    assert by_name["broken"]["CREDENTIALS"] == "secret team-a/web-keys"
    assert by_name["broken"]["LAST SCAN"] == "-"
    assert "team-a/web-keys not found" in by_name["broken"]["REASON"]

    code, out, _ = human("get", "upstream", "gloo-system", "web")
    assert code == 0
    ((one),) = columns(out)[1]
    assert one[:6] == rows[[row[1] for row in rows].index("web")][:6]


def test_get_endpoints_is_a_table_of_address_port_instance_zone_health(
    aws: None, human: Any, tmp_path: Path, launch: Callable[..., list[str]], instance_info: Any
) -> None:
    human("apply", "-f", write(tmp_path, "web.yaml", WEB))
    ids = launch({"web": "1"}, count=2)
    human("scan")

    code, out, _ = human("get", "endpoints", "gloo-system", "web")

    assert code == 0
    headers, rows = columns(out)
    assert headers == ["ADDRESS", "PORT", "INSTANCE", "ZONE", "HEALTH"]
    expected = sorted(
        [
            [info["PrivateIpAddress"], "8080", info["InstanceId"], info["Placement"]["AvailabilityZone"], "HEALTHY"]
            for info in map(instance_info, ids)
        ]
    )
    assert sorted(rows) == expected


@pytest.mark.parametrize(
    "what", [("upstreams",), ("upstream", "gloo-system", "web"), ("endpoints", "gloo-system", "web")]
)
def test_o_json_and_o_yaml_give_the_same_document(
    aws: None, capsys: Any, tmp_path: Path, launch: Callable[..., list[str]], what: tuple[str, ...]
) -> None:
    import yaml

    main(["apply", "-f", write(tmp_path, "web.yaml", WEB)])
    launch({"web": "1"})
    main(["scan"])
    capsys.readouterr()

    assert main(["get", *what, "-o", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["-o", "yaml", "get", *what]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_apply_and_delete_say_what_they_did_one_line_per_object(aws: None, human: Any, tmp_path: Path) -> None:
    path = write(tmp_path, "web.yaml", WEB)

    assert human("apply", "-f", path) == (0, "upstream gloo-system/web created\n", "")
    assert human("apply", "-f", path) == (0, "upstream gloo-system/web unchanged\n", "")  # nothing written
    changed = write(tmp_path, "web.yaml", WEB.replace("port: 8080", "port: 9090"))
    assert human("apply", "-f", changed) == (0, "upstream gloo-system/web configured\n", "")
    assert human("delete", "upstream", "gloo-system", "web") == (0, "upstream gloo-system/web deleted\n", "")


def test_apply_a_directory_and_a_list(aws: None, human: Any, run: Any, tmp_path: Path) -> None:
    """As kubectl: every .yaml/.yml/.json file of the directory; `kind: List` documents give their items."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    write(folder, "a.yaml", WEB)
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"metadata": {"name": f"item-{i}", "namespace": "team-a"}, "spec": {"awsEc2": {"region": "us-east-1"}}}
            for i in range(2)
        ],
    }
    write(folder, "b.json", json.dumps(listing))
    write(folder, "notes.txt", "not a manifest")

    code, out, err = run("apply", "-f", str(folder))

    assert (code, err) == (0, "")
    assert sorted(out["applied"]) == ["gloo-system/web", "team-a/item-0", "team-a/item-1"]
    assert table_ids("ec2-eds-dev-upstreams") == ["gloo-system/web", "team-a/item-0", "team-a/item-1"]


def test_a_bad_file_in_a_directory_stores_nothing_and_is_named(aws: None, human: Any, tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    write(folder, "a.yaml", WEB)
    write(folder, "b.yaml", WEB.replace("port: 8080", "port: 0"))

    code, out, err = human("apply", "-f", str(folder))

    assert code == 2 and out == ""
    line = one_line_error(err)
    assert "b.yaml" in line and "spec.awsEc2.port" in line
    assert table_ids("ec2-eds-dev-upstreams") == []


def test_multi_document_errors_name_the_field_path_once(aws: None, human: Any, tmp_path: Path) -> None:
    text = WEB + "---\n" + WEB.replace("name: web", "name: Bad_Name")

    code, _, err = human("apply", "-f", write(tmp_path, "two.yaml", text))

    assert code == 2
    line = one_line_error(err)
    assert line.count("metadata.name") == 1, line
    assert line.startswith("error: document 2: metadata.name")


@pytest.mark.parametrize(
    ("value", "hint"),
    [("8080", "put it in quotes, '8080'"), ("1.5", "put it in quotes, '1.5'"), ("yes", "as a boolean")],
)
def test_an_unquoted_yaml_number_says_to_quote_it(aws: None, human: Any, tmp_path: Path, value: str, hint: str) -> None:
    text = WEB.replace("filters: [{key: web}]", f"filters: [{{kvPair: {{key: port, value: {value}}}}}]")

    code, _, err = human("apply", "-f", write(tmp_path, "web.yaml", text))

    assert code == 2
    line = one_line_error(err)
    assert "spec.awsEc2.filters[0].kvPair.value" in line and hint in line


def test_secret_list_shows_names_and_users_never_values_and_delete_removes(
    aws: None, human: Any, run: Any, tmp_path: Path
) -> None:
    for name, namespace in (("web-keys", "team-a"), ("spare", "gloo-system")):
        run(
            "secret",
            "create-aws",
            "--name",
            name,
            "--namespace",
            namespace,
            "--access-key",
            "AKIAX",
            "--secret-key",
            "very-secret-value",
        )
    human("apply", "-f", write(tmp_path, "web.yaml", SECRET_WEB))

    code, out, err = human("secret", "list")

    assert (code, err) == (0, "")
    assert "very-secret-value" not in out and "AKIAX" not in out
    headers, rows = columns(out)
    assert headers == ["NAMESPACE", "NAME", "SECRET ID", "CHANGED", "USED BY"]
    assert [(row[0], row[1], row[2], row[4]) for row in rows] == [
        ("gloo-system", "spare", "ec2-eds/gloo-system/spare", "-"),
        ("team-a", "web-keys", "ec2-eds/team-a/web-keys", "gloo-system/web"),
    ]

    code, out, err = human("secret", "delete", "--name", "web-keys", "--namespace", "team-a")
    assert code == 0
    assert out == "secret ec2-eds/team-a/web-keys scheduled for deletion in 7 days (`create-aws` restores it)\n"
    assert "still named by gloo-system/web" in err
    assert human("secret", "delete", "--name", "spare", "--now") == (
        0,
        "secret ec2-eds/gloo-system/spare deleted\n",
        "",
    )
    assert run("secret", "list")[1] == {"secrets": []}

    # create-aws brings back a secret scheduled for deletion
    code, out, _ = run(
        "secret",
        "create-aws",
        "--name",
        "web-keys",
        "--namespace",
        "team-a",
        "--access-key",
        "AKIAY",
        "--secret-key",
        "new",
    )
    assert (code, out["updated"]) == (0, "ec2-eds/team-a/web-keys")
    assert [s["name"] for s in run("secret", "list")[1]["secrets"]] == ["web-keys"]


def test_secret_create_aws_refuses_a_name_no_secretref_could_hold(aws: None, human: Any) -> None:
    code, out, err = human("secret", "create-aws", "--name", "Bad_Name", "--access-key", "A", "--secret-key", "S")

    assert (code, out) == (2, "")
    assert "--name must be a DNS-1123 label" in one_line_error(err)
    assert boto3.client("secretsmanager", region_name="us-east-1").list_secrets()["SecretList"] == []


def leaf_commands() -> list[list[str]]:
    """Every runnable command line prefix: `get`, `account add`, `secret create-aws`, …"""
    from chalicelib.cli import parser

    found = []

    def walk(p: Any, prefix: list[str]) -> None:
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            found.append(prefix)
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*prefix, name])

    walk(parser(), [])
    return found


def leaf_parser(words: list[str]) -> Any:
    from chalicelib.cli import parser

    current = parser()
    for word in words:
        (sub,) = [a for a in current._actions if a.__class__.__name__ == "_SubParsersAction"]
        current = sub.choices[word]
    return current


def test_the_commands_are_the_documented_ones() -> None:
    assert sorted(" ".join(words) for words in leaf_commands()) == [
        "account add",
        "apply",
        "bootstrap",
        "delete",
        "event",
        "get",
        "scan",
        "secret create-aws",
        "secret delete",
        "secret list",
    ]


@pytest.mark.parametrize("words", leaf_commands(), ids=" ".join)
def test_stage_and_output_are_accepted_after_every_command(words: list[str]) -> None:
    from chalicelib.cli import parser

    required = {
        "apply": ["-f", "x.yaml"],
        "get": ["upstreams"],
        "delete": ["upstream", "a", "b"],
        "event": ["e.json"],
        "account add": ["n", "--account-id", "1", "--assume-role", "r", "--regions", "us-east-1"],
        "secret create-aws": ["--name", "n", "--access-key", "a", "--secret-key", "s"],
        "secret delete": ["--name", "n"],
    }.get(" ".join(words), [])

    after = parser().parse_args([*words, *required, "--stage", "prod", "-o", "yaml"])
    before = parser().parse_args(["--stage", "prod", "-o", "yaml", *words, *required])
    plain = parser().parse_args([*words, *required])

    assert (after.stage, after.output) == (before.stage, before.output) == ("prod", "yaml")
    assert (plain.stage, plain.output) == ("dev", None)


@pytest.mark.parametrize("words", leaf_commands(), ids=" ".join)
def test_every_commands_help_describes_each_option_and_its_default(words: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in leaf_parser(words)._actions:
        assert action.help, f"{' '.join(words)}: {action.dest} has no help"
        if action.option_strings:
            assert action.option_strings[-1] in text
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
            assert f"default: {default}" in text, f"{' '.join(words)} --help hides {action.dest}'s default"
    assert "--stage" in text and "(default: dev)" in text


def test_secret_create_aws_help_shows_the_gloo_system_default(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["secret", "create-aws", "--help"])
    assert "default: gloo-system" in " ".join(capsys.readouterr().out.split())


def test_account_add_with_stage_after_it_uses_that_stages_table(moto_only: None, human: Any) -> None:
    assert human("bootstrap", "--stage", "prod")[0] == 0

    code, out, err = human(
        "account",
        "add",
        "member",
        "--account-id",
        "123456789012",
        "--assume-role",
        "role/r",
        "--regions",
        "us-east-1",
        "--stage",
        "prod",
    )

    assert (code, err) == (0, "")
    assert out == "account member created (role arn:aws:iam::123456789012:role/r, regions us-east-1)\n"
    assert table_ids("ec2-eds-prod-upstreams") == []  # accounts are `~account/…` items
    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName="ec2-eds-prod-upstreams")["Items"]
    assert [item["id"]["S"] for item in items] == ["~account/member"]


def test_event_prints_its_result_once(
    aws: None, human: Any, tmp_path: Path, launch: Callable[..., list[str]], ec2: Any
) -> None:
    """Not also as a log line on stderr: a terminal shows stdout and stderr together."""
    human("apply", "-f", write(tmp_path, "web.yaml", WEB))
    _, stop = launch({"web": "1"}, count=2)
    human("scan")
    ec2.stop_instances(InstanceIds=[stop])
    event = json.loads((EVENTS / "ec2-state-change.json").read_text())
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{stop}"]
    event["detail"] = {"instance-id": stop, "state": "stopped"}

    code, out, err = human("event", write(tmp_path, "event.json", json.dumps(event)))

    assert (code, err) == (0, "")
    assert (out + err).count("changed") == 1
    assert out.startswith("event ")
    assert "  changed      1" in out or " changed " in out and " 1" in out


def test_scan_explains_the_instances_figure(aws: None, human: Any, tmp_path: Path) -> None:
    human("apply", "-f", write(tmp_path, "web.yaml", WEB))

    code, out, err = human("scan")

    assert (code, err) == (0, "")
    assert out.startswith("scan finished\n")
    (instances,) = [line for line in out.splitlines() if line.split()[0] == "instances"]
    assert "counted once per group that lists it" in instances


class FakeTerminal:
    """stderr as a terminal: isatty() is True, writes are kept."""

    def __init__(self) -> None:
        self.text = ""
        self.lock = __import__("threading").Lock()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("terminal", [True, False], ids=["tty", "pipe"])
def test_a_long_scan_shows_progress_on_a_terminal_only(
    aws: None, human: Any, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    import threading

    from chalicelib import cli

    fake = FakeTerminal()
    if not terminal:
        fake.isatty = lambda: False  # type: ignore[method-assign]
    monkeypatch.setattr(cli, "PROGRESS_AFTER", 0.0)
    real_scan = cli.full_scan
    shown = threading.Event()

    def slow_scan(*args: Any, **kwargs: Any) -> Any:
        # A scan that lasts until the progress line has been drawn (on a terminal), or a moment (elsewhere).
        for _ in range(200):
            if "scanning…" in fake.text:
                shown.set()
                break
            threading.Event().wait(0.01)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(cli, "full_scan", slow_scan)
    monkeypatch.setattr(cli.sys, "stderr", fake)

    code, out, _ = human("scan")

    assert code == 0 and out.startswith("scan finished")
    if terminal:
        assert shown.is_set()
        assert fake.text.endswith("\r\x1b[K")  # the progress line is erased before the result
    else:
        assert fake.text == ""


def test_a_missing_table_names_it_and_the_bootstrap_command(moto_only: None, human: Any, tmp_path: Path) -> None:
    code, out, err = human("get", "upstreams", "--stage", "prod")

    assert (code, out) == (1, "")
    line = one_line_error(err)
    assert "ec2-eds-prod-upstreams and ec2-eds-prod-endpoints do not exist" in line
    assert "python -m chalicelib.cli --stage prod bootstrap" in line

    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="ec2-eds-prod-upstreams",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert human("apply", "-f", write(tmp_path, "web.yaml", WEB), "--stage", "prod")[0] == 0
    code, _, err = human("get", "endpoints", "gloo-system", "web", "--stage", "prod")
    assert code == 1
    assert "DynamoDB table ec2-eds-prod-endpoints does not exist" in one_line_error(err)


def test_the_api_answers_a_missing_table_with_503_naming_it(moto_only: None) -> None:
    from chalice.test import Client

    from app import app

    with Client(app, project_dir=str(ROOT)) as client:
        for method, path in (("GET", "/upstreams"), ("GET", "/endpoints/gloo-system/web"), ("POST", "/scan")):
            answer = getattr(client.http, method.lower())(path)
            assert answer.status_code == 503, (path, answer.body)
            body = json.loads(answer.body)
            assert body["field"] is None
            assert "ec2-eds-dev-upstreams" in body["error"] and "bootstrap" in body["error"], body
