"""Tag filters: which instances an upstream selects.

The first table is Gloo's own filter matrix (the batcher test of its EC2
plugin, credential set A: instances 1-3); the second holds the rules this
project adds. Every row checks `TagIndex.select` against a plain scan with
`Matcher.matches`, so the index can never select differently from the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.domain.filters import Matcher, TagIndex
from chalicelib.domain.spec import TagFilter
from tests.profiles import examples


@dataclass(frozen=True)
class Box:
    """Anything with tags is an instance to the filters."""

    instance_id: str
    tags: tuple[tuple[str, str], ...]


def key(name: str) -> TagFilter:
    return TagFilter.model_validate({"key": name})


def kv(name: str, value: str) -> TagFilter:
    return TagFilter.model_validate({"kvPair": {"key": name, "value": value}})


def gloo_instance(seed: str) -> Box:
    """Gloo's generateTestInstance."""
    return Box(
        f"i{seed}",
        (
            (f"k{seed}a", f"v{seed}a"),
            (f"k{seed}b", f"v{seed}b"),
            ("common_key_only", f"v{seed}c"),
            ("common_key_and_value", "common_value_d"),
            ("unrelated_key_should_not_match", "unrelated_value_should_not_match"),
        ),
    )


GLOO_FLEET = [gloo_instance("1"), gloo_instance("2"), gloo_instance("3")]

# Tags whose keys differ only in case: EC2 keeps both, and so do we.
TWINS_FLEET = [
    Box("i-twins", (("Env", "a"), ("env", "b"))),
    Box("i-upper", (("ENV", "b"),)),
    Box("i-lower", (("env", "a"),)),
    Box("i-other", (("tier", "web"),)),
    Box("i-bare", ()),
]

DEMO_FLEET = [
    Box("i-g1-v1", (("gloo-id", "1"), ("gloo-tag", "group1"), ("version", "v1.2.3"))),
    Box("i-g1-v2", (("gloo-id", "2"), ("gloo-tag", "group1"), ("version", "v2.0.0"))),
    Box("i-g2", (("gloo-id", "3"), ("gloo-tag", "group2"))),
    Box("i-g1-untracked", (("gloo-tag", "group1"),)),
    Box("i-empty-value", (("gloo-id", ""), ("Gloo-Tag", "group1"))),
    Box("i-untagged", ()),
]

GLOO_MATRIX = [
    pytest.param([], ["i1", "i2", "i3"], id="no-filters-every-instance"),
    pytest.param([key("k1a")], ["i1"], id="single-key"),
    pytest.param([key("no_instances_have_this_tag")], [], id="unused-key-nothing"),
    pytest.param([key("common_key_only")], ["i1", "i2", "i3"], id="key-every-instance-has"),
    pytest.param([key("common_key_and_value")], ["i1", "i2", "i3"], id="key-every-instance-has-same-value"),
    pytest.param([kv("k1a", "v1a")], ["i1"], id="kvPair"),
    pytest.param([kv("k1a", "v1a"), kv("k1b", "v1b")], ["i1"], id="several-kvPairs-anded"),
    pytest.param([kv("k1a", "v1a"), kv("akey", "not_in_use")], [], id="too-restrictive-nothing"),
    pytest.param([key("K1A"), key("k1B")], ["i1"], id="key-case-ignored-for-key-filters"),
    pytest.param([kv("K1A", "v1a"), kv("K1b", "v1b")], ["i1"], id="key-case-ignored-for-kvPair-keys"),
    pytest.param([kv("k1a", "V1A")], [], id="value-case-kept"),
    pytest.param([kv("k2a", "v2a")], ["i2"], id="kvPair-second-instance"),
    pytest.param([kv("k5b", "v5b")], [], id="kvPair-of-an-instance-not-listed"),
    # beyond Gloo's table: AND across instances, and a shared value
    pytest.param([kv("k1a", "v1a"), kv("k2a", "v2a")], [], id="pairs-of-two-instances-anded-nothing"),
    pytest.param([kv("common_key_and_value", "common_value_d")], ["i1", "i2", "i3"], id="kvPair-every-instance-has"),
    pytest.param([kv("common_key_only", "v2c")], ["i2"], id="kvPair-on-common-key"),
    pytest.param([key("k1a"), key("k2a")], [], id="keys-of-two-instances-anded-nothing"),
    pytest.param([kv("k1a", "v1")], [], id="value-prefix-is-not-a-match"),
    pytest.param([kv("k1a", "v1a ")], [], id="value-whitespace-kept"),
]

PROJECT_RULES = [
    pytest.param(TWINS_FLEET, [kv("env", "a")], ["i-twins", "i-lower"], id="twins-lower-key-value-a"),
    pytest.param(TWINS_FLEET, [kv("ENV", "b")], ["i-twins", "i-upper"], id="twins-upper-key-value-b"),
    pytest.param(TWINS_FLEET, [kv("Env", "a"), kv("eNv", "b")], ["i-twins"], id="twins-both-values"),
    pytest.param(TWINS_FLEET, [kv("env", "A")], [], id="twins-value-case-kept"),
    pytest.param(TWINS_FLEET, [key("ENV")], ["i-twins", "i-upper", "i-lower"], id="twins-key-any-case"),
    pytest.param(TWINS_FLEET, [kv("env", "c")], [], id="twins-absent-value"),
    pytest.param(
        DEMO_FLEET,
        [key("gloo-tag"), kv("gloo-tag", "group1")],
        ["i-g1-v1", "i-g1-v2", "i-g1-untracked", "i-empty-value"],
        id="key-and-kvPair-same-key",
    ),
    pytest.param(
        DEMO_FLEET,
        [kv("gloo-tag", "group1"), key("GLOO-TAG")],
        ["i-g1-v1", "i-g1-v2", "i-g1-untracked", "i-empty-value"],
        id="kvPair-and-key-same-key-any-case",
    ),
    pytest.param(
        DEMO_FLEET,
        [key("gloo-id"), kv("gloo-tag", "group1"), kv("version", "v1.2.3")],
        ["i-g1-v1"],
        id="seed-ec2-demo-upstream",
    ),
    pytest.param(
        DEMO_FLEET,
        [key("gloo-id"), kv("gloo-tag", "group1")],
        ["i-g1-v1", "i-g1-v2", "i-empty-value"],
        id="demo-legacy-private",
    ),
    pytest.param(DEMO_FLEET, [kv("gloo-tag", "group2")], ["i-g2"], id="demo-group2"),
    pytest.param(DEMO_FLEET, [kv("gloo-id", "")], ["i-empty-value"], id="kvPair-empty-value"),
    pytest.param(
        DEMO_FLEET,
        [key("gloo-id")],
        ["i-g1-v1", "i-g1-v2", "i-g2", "i-empty-value"],
        id="key-with-empty-value-still-present",
    ),
    pytest.param(
        DEMO_FLEET, [kv("gloo-tag", "group1"), kv("gloo-tag", "group2")], [], id="two-values-for-one-key-nothing"
    ),
    pytest.param(
        DEMO_FLEET,
        [key("gloo-id"), key("gloo-id")],
        ["i-g1-v1", "i-g1-v2", "i-g2", "i-empty-value"],
        id="duplicate-filter",
    ),
    pytest.param(DEMO_FLEET, [], [box.instance_id for box in DEMO_FLEET], id="no-filters-includes-untagged"),
    pytest.param([], [key("gloo-id")], [], id="empty-listing-with-filter"),
    pytest.param([], [], [], id="empty-listing-no-filters"),
]


def brute_force(instances: list[Box], matcher: Matcher) -> list[Box]:
    return [instance for instance in instances if matcher.matches(instance.tags)]


def check(instances: list[Box], filters: list[TagFilter], expected: list[str]) -> None:
    matcher = Matcher.compile(filters)
    selected = TagIndex(instances).select(matcher)

    assert [box.instance_id for box in selected] == expected
    assert selected == brute_force(instances, matcher)


@pytest.mark.parametrize(("filters", "expected"), GLOO_MATRIX)
def test_gloo_filter_matrix(filters: list[TagFilter], expected: list[str]) -> None:
    check(GLOO_FLEET, filters, expected)


@pytest.mark.parametrize(("instances", "filters", "expected"), PROJECT_RULES)
def test_project_filter_rules(instances: list[Box], filters: list[TagFilter], expected: list[str]) -> None:
    check(instances, filters, expected)


def test_one_index_serves_many_upstreams() -> None:
    """A listing is indexed once per (credentials, region) group and asked once per upstream."""
    index = TagIndex(DEMO_FLEET)
    asked = [
        ([kv("gloo-tag", "group2")], ["i-g2"]),
        ([], [box.instance_id for box in DEMO_FLEET]),
        ([key("gloo-id"), kv("version", "v2.0.0")], ["i-g1-v2"]),
        ([kv("gloo-tag", "group2")], ["i-g2"]),
    ]
    for filters, expected in asked:
        assert [box.instance_id for box in index.select(Matcher.compile(filters))] == expected


def test_selecting_does_not_let_the_caller_change_the_index() -> None:
    index = TagIndex(DEMO_FLEET)
    index.select(Matcher.compile([])).clear()
    index.select(Matcher.compile([key("gloo-id")])).clear()
    assert len(index.select(Matcher.compile([]))) == len(DEMO_FLEET)
    assert len(index.select(Matcher.compile([key("gloo-id")]))) == 4


# --- properties -----------------------------------------------------------------

# Few names in several cases, few values, so filters often hit and twins are common.
KEYS = st.sampled_from(["env", "Env", "ENV", "tier", "Tier", "app", "gloo-id", "x"])
TAG_VALUES = st.sampled_from(["a", "b", "A", "", "web", "v1.2.3"])
TAGS = st.lists(st.tuples(KEYS, TAG_VALUES), max_size=5, unique_by=lambda tag: tag[0]).map(tuple)
FLEETS = st.lists(TAGS, max_size=12).map(lambda all_tags: [Box(f"i-{n}", tags) for n, tags in enumerate(all_tags)])
FILTERS = st.one_of(KEYS.map(key), st.builds(kv, KEYS, TAG_VALUES))
FILTER_LISTS = st.lists(FILTERS, max_size=4)
PROPERTY = settings(max_examples=examples(200), deadline=None)


def ids(boxes: list[Box]) -> list[str]:
    return [box.instance_id for box in boxes]


@PROPERTY
@given(fleet=FLEETS, filters=FILTER_LISTS)
def test_index_selects_what_brute_force_selects(fleet: list[Box], filters: list[TagFilter]) -> None:
    matcher = Matcher.compile(filters)
    assert TagIndex(fleet).select(matcher) == brute_force(fleet, matcher)


@PROPERTY
@given(fleet=FLEETS, filters=FILTER_LISTS, extra=FILTERS)
def test_adding_a_filter_never_widens_the_match(fleet: list[Box], filters: list[TagFilter], extra: TagFilter) -> None:
    index = TagIndex(fleet)
    before = set(ids(index.select(Matcher.compile(filters))))
    after = set(ids(index.select(Matcher.compile([*filters, extra]))))
    assert after <= before


@PROPERTY
@given(fleet=FLEETS, filters=FILTER_LISTS, data=st.data())
def test_filter_order_is_irrelevant(fleet: list[Box], filters: list[TagFilter], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(filters))
    index = TagIndex(fleet)
    assert index.select(Matcher.compile(shuffled)) == index.select(Matcher.compile(filters))


@PROPERTY
@given(fleet=FLEETS, filters=FILTER_LISTS)
def test_filter_key_case_is_irrelevant(fleet: list[Box], filters: list[TagFilter]) -> None:
    def recased(tag_filter: TagFilter) -> TagFilter:
        if tag_filter.kvPair is not None:
            return kv(tag_filter.kvPair.key.swapcase(), tag_filter.kvPair.value)
        assert tag_filter.key is not None
        return key(tag_filter.key.upper())

    index = TagIndex(fleet)
    assert index.select(Matcher.compile([recased(f) for f in filters])) == index.select(Matcher.compile(filters))
