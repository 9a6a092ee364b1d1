"""The scale simulation, small: the scheduled scan fanned out over the scan queue, on moto in-process.

13 groups, 300 instances, 26 upstreams: one group's secret is missing (its listing fails), one
group's worker is killed at every try as a Lambda timeout would (SQS hands its message to the
dead-letter queue after 3 receives) while another group of its region, under a role, is served
as usual, one group is half the fleet and continues from its page
token over several invocations (5 reservations of 10 instances a page on moto, one page per
invocation). Behaviour only: no time is asserted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bench import fastmoto, scale, workload
from chalicelib.domain.filters import Matcher
from chalicelib.domain.spec import parse_upstream


def test_the_scan_fans_out_by_group_continues_big_groups_isolates_failures_and_steady_writes_one_item(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fastmoto.patch()  # moto's tag lookup in constant time: the same answers, faster
    monkeypatch.setenv("SCAN_PAGE_SIZE", "5")  # restored after the test
    shape = scale.Shape(groups=13, instances=300, upstreams=26, big_share=0.5, page_size=5, pages_per_invocation=1)
    result = scale.simulate(shape)
    every_group_is_written_but_the_failing_and_the_timed_out_one(result)
    the_big_group_continues_from_its_page_token_and_writes_only_once_complete(result)
    a_timed_out_group_goes_to_the_dead_letter_queue_and_delays_no_other(result)
    a_scan_that_changes_nothing_writes_one_item(result)


def every_group_is_written_but_the_failing_and_the_timed_out_one(result: dict[str, Any]) -> None:
    written = result["written"]
    regions = scale.group_regions(scale.Shape())
    for n, group in enumerate(result["seeded"]["groups"]):
        mine = {key: value for key, value in written.items() if key.startswith(f"org/g{n}-")}
        assert len(mine) == 2, n
        if n == 1:  # the missing secret: Error, nothing made up
            assert all(v["state"] == "Error" and v["code"] == "ResourceNotFoundException" for v in mine.values())
            assert all(v["served"] is None for v in mine.values())
        elif n == 2:  # killed at every try: nothing written, still waiting for its first scan
            assert all(v["served"] is None for v in mine.values())
        else:  # every instance of the group served by exactly one of its upstreams
            assert all(v["state"] == "Accepted" for v in mine.values())
            assert sum(v["served"] for v in mine.values()) == group["instances"], n
    assert regions[2] in {group["region"] for group in result["seeded"]["groups"]}


def the_big_group_continues_from_its_page_token_and_writes_only_once_complete(result: dict[str, Any]) -> None:
    big = [i for i in result["invocations"] if i["group"] == group(0)]
    # 150 instances, 50 a page, one page per invocation: two continuations, then the listing is applied.
    assert [i["outcome"] for i in big] == ["continued", "continued", "ok"]
    served = {key: v["served"] for key, v in result["written"].items() if key.startswith("org/g0-")}
    assert sum(served.values()) == result["seeded"]["groups"][0]["instances"] == 150


def a_timed_out_group_goes_to_the_dead_letter_queue_and_delays_no_other(result: dict[str, Any]) -> None:
    outcomes = [(i["group"], i["outcome"]) for i in result["invocations"]]
    assert [o for key, o in outcomes if key == group(2)] == ["timed out"] * 3
    assert result["dead_letters"] == [group(2)]
    # group 12 lists the same region under a role: its worker is not the one killed
    assert [o for key, o in outcomes if key == group(12)] == ["ok"]
    assert all(
        v["state"] == "Accepted" and v["served"] for k, v in result["written"].items() if k.startswith("org/g12-")
    )
    failed = [o for key, o in outcomes if key == group(1)]
    assert failed == ["failed"]  # recorded once, not retried: the next scan tries again


def group(n: int) -> str:
    """Group `n`'s key as the scan queue's messages name it."""
    return str(scale.group_key(n))


def a_scan_that_changes_nothing_writes_one_item(result: dict[str, Any]) -> None:
    steady = result["steady"]
    assert steady["writes"] == 1, steady["calls"]  # the planner's scan record
    assert steady["calls"]["dynamodb:UpdateItem"] == 1


def test_the_first_scan_bench_serves_every_upstream_its_matching_instances(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench's first full scan (issue 14 goal 2), small: one group, the tag model's filters; every
    upstream Accepted, and served as many endpoints as instances its filters match (counted here from
    the tag sets the instances were launched with)."""
    fastmoto.patch()
    for name in ("SCAN_PAGE_SIZE", "SCAN_PAGES_PER_INVOCATION"):
        monkeypatch.setenv(name, "")  # set by first_scan; restored after the test
    shape = replace(scale.FIRST_SCAN_SHAPE, instances=600, upstreams=20, batch=20, page_size=5)
    result = scale.first_scan(shape)
    assert result["instances"] == 600 and result["upstreams"] == 20
    assert result["upstreams_accepted"] == 20
    assert result["pages"] == 6  # 30 reservations, 5 a page: every page listed once
    tag_sets = scale.workload_tags(30, seed=0)
    expected = 0
    for filters in workload.filter_sets(tag_sets, 20):
        matcher = Matcher.compile(parse_upstream(workload.upstream_document("probe", filters)).ec2.filters)
        expected += sum(20 for tags in tag_sets if matcher.matches(tuple(tags.items())))
    assert result["endpoints_served"] == expected > 0
    assert result["cpu_s"] >= result["listing_cpu_s"] > 0
