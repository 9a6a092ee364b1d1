"""Settings read from the environment, once, on first use.

Nothing here runs at import time, so tests and stages can set the
environment first (the pattern of Chalice's own samples). `reset()` drops
the cached value after a test changed the environment.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError


class Settings(BaseModel):
    """The project's own variables; the standard AWS ones are read by botocore."""

    upstreams_table: str = Field("ec2-eds-dev-upstreams", alias="UPSTREAMS_TABLE")
    endpoints_table: str = Field("ec2-eds-dev-endpoints", alias="ENDPOINTS_TABLE")
    secret_prefix: str = Field("ec2-eds/", alias="SECRET_PREFIX")
    secret_cache_seconds: int = Field(300, ge=0, alias="SECRET_CACHE_SECONDS")
    credentials_refresh_margin_seconds: int = Field(300, ge=0, alias="CREDENTIALS_REFRESH_MARGIN_SECONDS")
    draining_ttl_seconds: int = Field(7200, ge=60, alias="DRAINING_TTL_SECONDS")
    # how long before a scheduled maintenance (NotBefore) its instance starts DRAINING
    drain_lead_seconds: int = Field(600, ge=0, alias="DRAIN_LEAD_SECONDS")
    scan_deadline_margin_seconds: float = Field(15.0, ge=0, alias="SCAN_DEADLINE_MARGIN_SECONDS")
    # how long a PUT (upstream or account) may spend reconciling its groups in the request
    apply_seconds: float = Field(10.0, ge=0, alias="APPLY_SECONDS")
    discovery_enabled: bool = Field(False, alias="DISCOVERY_ENABLED")
    discovery_tag_key: str = Field("ec2-eds/upstream", min_length=1, max_length=128, alias="DISCOVERY_TAG_KEY")
    discovery_port_tag_key: str = Field("ec2-eds/port", min_length=1, max_length=128, alias="DISCOVERY_PORT_TAG_KEY")
    discovery_grace_seconds: int = Field(300, ge=0, alias="DISCOVERY_GRACE_SECONDS")
    scan_concurrency: int = Field(8, ge=1, le=64, alias="SCAN_CONCURRENCY")
    # the scan fan-out (chalicelib/usecases/scan.py): one message per group on the scan queue; a group's
    # worker lists SCAN_PAGE_SIZE instances a page and continues in another invocation past its time
    # (or past SCAN_PAGES_PER_INVOCATION pages, when that is not 0)
    scan_queue: str = Field("ec2-eds-dev-scan", min_length=1, max_length=80, alias="SCAN_QUEUE")
    scan_page_size: int = Field(1000, ge=5, le=1000, alias="SCAN_PAGE_SIZE")
    scan_pages_per_invocation: int = Field(0, ge=0, alias="SCAN_PAGES_PER_INVOCATION")
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field("adaptive", alias="AWS_RETRY_MODE")
    max_attempts: int = Field(5, ge=1, le=20, alias="AWS_MAX_ATTEMPTS")
    connect_timeout: float = Field(5.0, gt=0, alias="AWS_CONNECT_TIMEOUT")
    read_timeout: float = Field(10.0, gt=0, alias="AWS_READ_TIMEOUT")
    home_region: str = Field("us-east-1", alias="AWS_REGION")
    max_body_bytes: int = Field(1024 * 1024, ge=1, alias="MAX_BODY_BYTES")
    # REST CDS: the static cluster the served clusters poll for EDS (default: the Host of the CDS request,
    # which Envoy sets to its API cluster's name) and how often they poll.
    cds_eds_cluster: str | None = Field(None, min_length=1, max_length=253, alias="CDS_EDS_CLUSTER")
    cds_eds_refresh_seconds: float = Field(5.0, ge=0.05, le=3600, alias="CDS_EDS_REFRESH_SECONDS")
    # ASG terminate lifecycle (chalicelib/usecases/lifecycle.py): how long an instance stays DRAINING before ec2-eds
    # completes the hook (default 2 x CDS_EDS_REFRESH_SECONDS), and the SQS delay queue that holds the wait.
    drain_seconds: float | None = Field(None, ge=0, le=7200, alias="DRAIN_SECONDS")
    drain_queue: str = Field("ec2-eds-dev-drain", min_length=1, max_length=80, alias="DRAIN_QUEUE")

    model_config = {"populate_by_name": True, "frozen": True}


class ConfigError(RuntimeError):
    """The environment holds a value the service cannot run with."""


@functools.cache
def settings() -> Settings:
    """The settings of this process, validated on first use."""
    env = {key: value for key, value in os.environ.items() if value != ""}
    if "AWS_REGION" not in env and "AWS_DEFAULT_REGION" in env:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    try:
        return Settings.model_validate(env)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"bad setting {first['loc'][0]}: {first['msg']}") from err


def reset() -> None:
    """Forget the cached settings (tests that change the environment call this)."""
    settings.cache_clear()


PROJECT_DIR = Path(__file__).resolve().parent.parent


def stage_environment(stage: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The variables Chalice would give a function of this stage."""
    path = project_dir / ".chalice" / "config.json"
    try:
        config = json.loads(path.read_text())
    except OSError:
        return {}
    if stage not in config.get("stages", {}):
        raise ConfigError(f"stage {stage!r} is not in {path} (stages: {', '.join(sorted(config.get('stages', {})))})")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}
