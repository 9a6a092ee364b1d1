"""What the deployment zip and the tracing layer hold (goal: a zip of at most 6 MB).

boto3 and botocore come with the Lambda runtime, so the zip never holds them; X-Ray's SDK (which
pulls botocore in) is a layer, built and attached only for the stages with tracing on. Reuses the
packages conftest.py's `packaged` builds for test_package.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore
import pytest

from devtools import policies as gen
from devtools import tracing_layer

from .packaging import environment

# One xdist group: the two modules share the session's packages (tests/deploy/conftest.py) in one worker.
pytestmark = [pytest.mark.deploy, pytest.mark.xdist_group("deploy-packages")]
ZIP_LIMIT = 6_000_000
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "dateutil", "urllib3"}
TRACING_ONLY = {"aws_xray_sdk", "wrapt"}
Packaged = Callable[[str], tuple[Path, dict[str, Any]]]


def top_level(archive: Path) -> set[str]:
    with zipfile.ZipFile(archive) as content:
        return {name.split("/")[0] for name in content.namelist()}


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource.get("Type") == "AWS::Serverless::Function"
    }


def test_the_stages_with_tracing_are_those_of_the_chalice_config() -> None:
    assert {stage for stage in gen.STAGES if tracing_layer.traced(stage)} == set(gen.XRAY_STAGES)


@pytest.mark.parametrize("stage", gen.STAGES)
def test_the_zip_holds_the_app_and_its_requirements_but_not_the_runtimes_sdk(stage: str, packaged: Packaged) -> None:
    sam, _ = packaged(stage)
    archive = sam.parent / "deployment.zip"
    names = top_level(archive)
    assert {"app.py", "chalicelib", "aws_lambda_powertools", "pydantic", "pydantic_core", "yaml"} <= names
    assert not names & (RUNTIME_PROVIDED | TRACING_ONLY), sorted(names & (RUNTIME_PROVIDED | TRACING_ONLY))
    assert archive.stat().st_size <= ZIP_LIMIT, f"{archive.stat().st_size} bytes"


@pytest.mark.parametrize("stage", gen.STAGES)
def test_only_a_stage_with_tracing_gets_the_tracing_layer(stage: str, packaged: Packaged) -> None:
    sam, template = packaged(stage)
    layer = sam.parent / tracing_layer.LAYER_ZIP
    layers = {name: properties.get("Layers") for name, properties in functions(template).items()}
    assert len(layers) == len(gen.FUNCTIONS)
    if stage not in gen.XRAY_STAGES:
        assert not layer.exists()
        assert gen.TRACING_LAYER not in template["Resources"]
        assert set(layers.values()) == {None}
        return
    resource = template["Resources"][gen.TRACING_LAYER]
    assert resource["Type"] == "AWS::Serverless::LayerVersion"
    assert resource["Properties"]["ContentUri"] == f"./{layer.name}"  # beside sam.json, as built
    assert (
        resource["Properties"]["CompatibleRuntimes"]
        == [properties["Runtime"] for properties in functions(template).values()][:1]
    )
    assert all(value == [{"Ref": gen.TRACING_LAYER}] for value in layers.values()), layers
    with zipfile.ZipFile(layer) as content:
        names = {name.split("/")[1] for name in content.namelist() if name.count("/") >= 2}
        assert all(name.startswith("python/") for name in content.namelist())  # Lambda's path for Python layers
    assert {"aws_xray_sdk", "wrapt"} <= names
    assert not names & RUNTIME_PROVIDED, sorted(names & RUNTIME_PROVIDED)


# What the Lambda Python runtime puts on the path after the function's code and its layers.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")
PROBE = """
import json, sys, uuid
import app
event = {
    "resource": "/healthz", "path": "/healthz", "httpMethod": "GET", "headers": {}, "multiValueHeaders": {},
    "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
    "stageVariables": None, "body": None, "isBase64Encoded": False,
    "requestContext": {"resourcePath": "/healthz", "httpMethod": "GET", "requestId": str(uuid.uuid4())},
}
class Context:
    aws_request_id = str(uuid.uuid4())
    function_name = "ec2-eds-dev"
answer = app.app(event, Context())
from chalicelib import observability
print(json.dumps({
    "status": answer["statusCode"],
    "body": json.loads(answer["body"]),
    "tracing": observability._tracer is not None,
    "xray_loaded": "aws_xray_sdk" in sys.modules,
    "paths": {name: getattr(sys.modules[name], "__file__", "") for name in ("app", "pydantic_core", "botocore")},
}))
"""


def run_as_lambda(tmp: Path, sam: Path, layer: bool) -> dict[str, Any]:
    """The unzipped package (and layer), on the runtime's boto3 only, invoked as Lambda invokes it."""
    site = Path(botocore.__file__).resolve().parent.parent
    task, opt, runtime = tmp / "task", tmp / "opt", tmp / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PACKAGES:
        (runtime / name).symlink_to(site / name)
    with zipfile.ZipFile(sam.parent / "deployment.zip") as content:
        content.extractall(task)
    paths = [task]
    if layer:
        with zipfile.ZipFile(sam.parent / tracing_layer.LAYER_ZIP) as content:
            content.extractall(opt)
        paths.append(opt / "python")
    paths.append(runtime)
    env = {
        **environment(),
        "PYTHONPATH": os.pathsep.join(map(str, paths)),
        "AWS_LAMBDA_FUNCTION_NAME": "ec2-eds-dev",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    answer = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],  # -S: no site-packages, only the paths above and the stdlib
        cwd=task,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    result = dict(json.loads(answer.stdout.strip().splitlines()[-1]))
    assert result["paths"]["app"].startswith(str(task)) and result["paths"]["pydantic_core"].startswith(str(task))
    assert result["paths"]["botocore"].startswith(str(runtime))
    return result


def test_the_zip_runs_on_the_runtimes_boto3_without_tracing(packaged: Packaged, tmp_path: Path) -> None:
    sam, _ = packaged("dev")
    result = run_as_lambda(tmp_path, sam, layer=False)
    assert (result["status"], result["body"]) == (200, {"status": "ok"})
    assert not result["tracing"] and not result["xray_loaded"]


def test_with_the_tracing_layer_the_function_traces(packaged: Packaged, tmp_path: Path) -> None:
    (stage,) = sorted(gen.XRAY_STAGES)
    sam, _ = packaged(stage)
    result = run_as_lambda(tmp_path, sam, layer=True)
    assert (result["status"], result["body"]) == (200, {"status": "ok"})
    assert result["tracing"] and result["xray_loaded"]
