"""What the deployment zip and the tracing layer hold (goal: a zip of at most 6 MB).

boto3 and botocore come with the Lambda runtime, so the zip never holds them; X-Ray's SDK (which
pulls botocore in) is a layer, built and attached only for the stages with tracing on. Reuses the
packages conftest.py's `packaged` builds for test_package.py.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools import policies as gen
from devtools import tracing_layer

pytestmark = pytest.mark.deploy
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
