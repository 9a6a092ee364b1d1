"""The operator CLI, `chalicelib.cli.main([...])`, over moto."""

from __future__ import annotations

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
    """main(argv) -> (exit status, stdout parsed as JSON or None, stderr)."""

    def invoke(*argv: str) -> tuple[int, Any, str]:
        capsys.readouterr()
        code = main(list(argv))
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
    assert one["status"]["lastScan"] is None

    code, _, err = run("get", "endpoints", "gloo-system", "web")
    assert code != 0  # no scan yet
    one_line_error(err)

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


def test_aws_errors_are_one_line(moto_only: None, run: Any, tmp_path: Path) -> None:
    code, _, err = run("apply", "-f", write(tmp_path, "web.yaml", WEB))  # no tables: not bootstrapped

    assert code != 0
    assert "ResourceNotFoundException" in one_line_error(err)


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
