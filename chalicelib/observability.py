"""The one home of the logger, tracer and metrics (Powertools).

Logs are structured JSON (service `ec2-eds` unless POWERTOOLS_SERVICE_NAME
says otherwise); metrics are CloudWatch EMF in namespace `ec2-eds`
(POWERTOOLS_METRICS_NAMESPACE), flushed by the app middleware after each
Lambda invocation.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
import warnings
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ec2-eds")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ec2-eds")

logger = Logger(service=SERVICE, stream=sys.stderr)  # stdout stays free for the CLI's JSON
_tracer: Any = None  # Powertools' Tracer, once tracing has started


def tracing_available() -> bool:
    """Whether this process traces: in Lambda, with X-Ray's SDK there, and not turned off.

    The SDK is not in the deployment package (it pulls botocore in, which the runtime already
    has): the stages with tracing get it as the tracing layer (devtools/tracing_layer.py), so
    its presence is the stage's choice. Off Lambda (tests, the CLI, `chalice local`) Powertools
    would disable the tracer anyway.
    """
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return False
    if resolve_truthy_env_var_choice(env=os.environ.get("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    return importlib.util.find_spec("aws_xray_sdk") is not None


def start_tracing() -> None:
    """X-Ray subsegments for every AWS call, where tracing is on (built on the first invocation).

    Built lazily and only there: the X-Ray SDK costs a cold start about 0.2 s of imports.
    """
    global _tracer
    if _tracer is None and tracing_available():
        from aws_lambda_powertools import Tracer

        _tracer = Tracer(service=SERVICE)


metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def count(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    """A metric with the service dimension only."""
    metrics.add_metric(name=name, unit=unit, value=value)


def count_with(name: str, value: float, dimensions: Mapping[str, str], unit: MetricUnit = MetricUnit.Count) -> None:
    """A metric with its own dimensions (per group, per upstream), emitted at once.

    Every distinct dimension value is a CloudWatch metric of its own, so keep
    these for rare events (errors), not for every upstream on every scan.
    """
    metric = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    for key, dim in dimensions.items():
        metric.add_dimension(name=key, value=dim[:250])
    metric.add_metric(name=name, unit=unit, value=value)
    metric.flush_metrics()


def distribution(name: str, values: list[float], unit: MetricUnit = MetricUnit.Count) -> None:
    """Many values of one metric (say, endpoints per upstream) as one CloudWatch metric."""
    if is_metrics_disabled():
        return  # past 100 values Powertools prints a batch itself, ignoring the setting
    for value in values:
        metrics.add_metric(name=name, unit=unit, value=value)


def record_aws_calls(calls: Mapping[str, int]) -> None:
    for operation, number in calls.items():
        count_with("AwsCalls", number, {"operation": operation})


def flush(**_: Any) -> None:
    """Publish the metrics gathered so far (the middleware calls this after each invocation)."""
    with warnings.catch_warnings():  # an invocation without metrics is normal here (say, /healthz)
        warnings.simplefilter("ignore", UserWarning)
        metrics.flush_metrics(raise_on_empty_metrics=False)


def log_unexpected(message: str, err: BaseException, **context: str) -> None:
    """An unexpected error, logged with its type and stack but never its text: the text of a
    transport or parsing error can quote credentials (a header value, say)."""
    stack = "".join(traceback.format_tb(err.__traceback__)[-8:])
    logger.error(message, extra={**context, "error_type": type(err).__name__, "stack": stack})
