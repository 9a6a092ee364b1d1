"""The clients' timestamp parser (`clients.parse_timestamp`) answers what botocore's own does.

It reads AWS's usual `2026-12-01T10:20:30.000Z` directly instead of through dateutil (a quarter of the
CPU of parsing a DescribeInstances page); for every input, the same datetime in the same time zone
class, or botocore's own failure. Checked on generated timestamps, on hostile strings, and on whole
recorded DescribeInstances and DescribeInstanceStatus pages, parsed both ways.
"""

from __future__ import annotations

import datetime
from typing import Any

import boto3
import botocore.utils
import pytest
from botocore import xform_name
from botocore.parsers import ResponseParserFactory
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chalicelib.edges.clients import new_session, parse_timestamp
from tests.factories import launch
from tests.profiles import examples

UTC = datetime.UTC


def same(ours: Any, theirs: Any) -> bool:
    """Equal, and every datetime in it in the same time zone class with the same offset."""
    if isinstance(theirs, datetime.datetime):
        return (
            isinstance(ours, datetime.datetime)
            and ours == theirs
            and type(ours.tzinfo) is type(theirs.tzinfo)
            and ours.utcoffset() == theirs.utcoffset()
        )
    if isinstance(theirs, dict):
        return (
            isinstance(ours, dict) and ours.keys() == theirs.keys() and all(same(ours[k], v) for k, v in theirs.items())
        )
    if isinstance(theirs, list):
        return isinstance(ours, list) and len(ours) == len(theirs) and all(map(same, ours, theirs))
    return bool(ours == theirs)


def outcome(parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except Exception as err:  # noqa: BLE001 - the failure itself is compared
        return (type(err), str(err))


@settings(max_examples=examples(500))
@given(
    moment=st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31)),
    digits=st.integers(0, 6),
)
def test_aws_timestamps_parse_as_botocore_parses_them(moment: datetime.datetime, digits: int) -> None:
    text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S")  # strftime's %Y does not pad years < 1000
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    text += "Z"
    assert same(parse_timestamp(text), botocore.utils.parse_timestamp(text)), text


near = st.sampled_from(
    [
        "2026-12-01T10:20:30.000Z",
        "2026-12-01T10:20:30Z",
        "2026-02-30T10:20:30Z",
        "2026-13-01T10:20:30Z",
        "0000-01-01T00:00:00Z",
        "2026-12-01T10:20:30.1234567Z",
        "2026-12-01T10:20:30+00:00",
        "2026-12-01T10:20:30.5+01:00",
        "2026-12-01t10:20:30z",
        " 2026-12-01T10:20:30Z",
        "2026-12-01T10:20:30Z\n",
        "2026-12-01T24:00:00Z",
        "1764584430",
        "Mon, 01 Dec 2026 10:20:30 GMT",
    ]
)


@pytest.mark.filterwarnings("ignore::dateutil.parser.UnknownTimezoneWarning")  # dateutil on hostile strings
@settings(max_examples=examples(300))
@given(value=st.one_of(near, st.text(max_size=40), near.map(lambda s: s[:-1]), st.integers(0, 2**31)))
@example(value="2026-12-01T10:20:30.000Z")
def test_any_other_input_is_botocore_s_own_answer_or_failure(value: Any) -> None:
    ours, theirs = outcome(parse_timestamp, value), outcome(botocore.utils.parse_timestamp, value)
    assert same(ours, theirs), (value, ours, theirs)


EVENT = (
    b"<item><eventsSet><item><code>system-reboot</code><description>scheduled reboot</description>"
    b"<notBefore>2026-12-05T03:00:00.000Z</notBefore><notAfter>2026-12-05T05:00:00Z</notAfter></item></eventsSet>"
)


def recorded(client: Any, operation: str, **request: Any) -> bytes:
    """The raw body of one answer, as it came over the wire."""
    bodies: list[bytes] = []
    client.meta.events.register(
        f"after-call.ec2.{operation}", lambda http_response, **_: bodies.append(http_response.content)
    )
    getattr(client, xform_name(operation))(**request)
    return bodies[-1]


@pytest.mark.parametrize(
    ("operation", "request_"), [("DescribeInstances", {}), ("DescribeInstanceStatus", {"IncludeAllInstances": True})]
)
def test_recorded_pages_parse_as_botocore_parses_them(aws: None, operation: str, request_: dict[str, Any]) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    launch(ec2, {"app": "web"}, count=30)
    body = recorded(ec2, operation, **request_)
    if operation == "DescribeInstanceStatus":  # moto schedules no events: one as EC2 answers it, into each item
        body = body.replace(b"<instanceStatusSet><item>", b"<instanceStatusSet>" + EVENT).replace(
            b"</systemStatus></item><item>", b"</systemStatus></item>" + EVENT
        )
    shape = ec2.meta.service_model.operation_model(operation).output_shape
    answer = {"body": body, "headers": {}, "status_code": 200}
    theirs = ResponseParserFactory().create_parser("ec2").parse(answer, shape)
    ours = new_session().get_component("response_parser_factory").create_parser("ec2").parse(answer, shape)
    assert ours == theirs and same(ours, theirs)
    assert body.count(b"Time>") + body.count(b"<notBefore>") >= 30  # timestamps to compare (LaunchTime, ...)
