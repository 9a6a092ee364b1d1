"""full_scan with DynamoStore and the real Ec2Inventory over moto."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import runtime
from chalicelib.domain.spec import iter_upstreams, load_documents, parse_upstream
from chalicelib.domain.status import ACCEPTED, ERROR
from chalicelib.edges.store import DynamoStore
from chalicelib.usecases import admin, api
from chalicelib.usecases.scan import ScanSummary

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "upstreams"
ROLE = "arn:aws:iam::123456789012:role/describe-ec2-demo"
NOW = "2020-01-01T00:00:00Z"  # stored before any scan

Launch = Callable[..., list[str]]
Scan = Callable[[], ScanSummary]


def put(store: DynamoStore, name: str, namespace: str = "gloo-system", **ec2: Any) -> None:
    document = {"metadata": {"name": name, "namespace": namespace}, "spec": {"awsEc2": {"region": "us-east-1", **ec2}}}
    store.put_upstream(parse_upstream(document), NOW)


def apply_file(store: DynamoStore, path: Path) -> list[str]:
    upstreams = list(iter_upstreams(load_documents(path.read_bytes(), "application/yaml", 1 << 20)))
    for upstream in upstreams:
        store.put_upstream(upstream, NOW)
    return [upstream.key for upstream in upstreams]


def calls(summary: ScanSummary) -> dict[str, int]:
    """The `aws_calls` block of the summary as POST /scan answers it."""
    return summary.as_dict()["aws_calls"]


def served(store: DynamoStore, key: str) -> list[tuple[str, int, str]]:
    """(address, port, instance id) of the endpoint set of `namespace/name`."""
    namespace, _, name = key.partition("/")
    endpoint_set = store.get_endpoint_set(namespace, name)
    assert endpoint_set is not None, f"no endpoint set for {key}"
    return [(e.address, e.port, e.instance_id) for e in endpoint_set.endpoints]


def ids(store: DynamoStore, key: str) -> set[str]:
    return {instance_id for _, _, instance_id in served(store, key)}


def status(store: DynamoStore, key: str) -> dict[str, Any]:
    namespace, _, name = key.partition("/")
    reply = admin.get_upstream(store, namespace, name)
    assert reply.status == 200
    return reply.body["status"]


def addresses(instance_info: Callable[..., dict[str, Any]], instance_id: str) -> tuple[str, str | None]:
    info = instance_info(instance_id)
    return info["PrivateIpAddress"], info.get("PublicIpAddress")


def test_seed_upstreams_get_exactly_the_running_instances_matching_their_filters(
    dynamo_store: DynamoStore,
    launch: Launch,
    ec2: Any,
    put_secret: Any,
    scan: Scan,
    instance_info: Callable[..., dict[str, Any]],
) -> None:
    put_secret("default", "gloo-tag-group1", {"access_key": "AKIAGROUP10000000000", "secret_key": "group1-secret"})
    put_secret("default", "my-aws-secret", {"access_key": "AKIAMYSECRET00000000", "secret_key": "my-secret"})
    keys = (
        apply_file(dynamo_store, EXAMPLES / "seed-ec2-demo-upstream.yaml")
        + apply_file(dynamo_store, EXAMPLES / "seed-my-ec2-upstream.yaml")
        + apply_file(dynamo_store, EXAMPLES / "demo-extra.yaml")
    )
    assert sorted(keys) == [
        "gloo-system/ec2-demo-upstream",
        "gloo-system/ec2-group2",
        "gloo-system/ec2-legacy-private",
        "gloo-system/my-ec2-upstream",
    ]
    [a] = launch({"gloo-id": "1", "gloo-tag": "group1", "version": "v1.2.3"})
    [b] = launch({"gloo-id": "2", "gloo-tag": "group1", "version": "v2.0.0"})
    [c] = launch({"gloo-tag": "group1", "version": "v1.2.3"})  # no gloo-id
    [d] = launch({"gloo-tag": "group2"})
    [e] = launch({"some-key": "", "some-other-key": "some-value"})
    [f] = launch({"gloo-id": "3", "gloo-tag": "group1", "version": "v1.2.3"})  # stopped below
    [g] = launch({"some-key": "x", "some-other-key": "other-value"})
    [h] = launch({"GLOO-ID": "4", "gloo-tag": "group1", "version": "v1.2.3"})  # key case differs
    [x] = launch({"gloo-tag": "Group1", "gloo-id": "5", "version": "v1.2.3"})  # value case differs
    ec2.stop_instances(InstanceIds=[f])

    summary = scan()

    assert summary.errors == 0
    assert summary.changed == 4
    public = {i: addresses(instance_info, i)[1] for i in (a, d, e, h)}
    private = {i: addresses(instance_info, i)[0] for i in (a, b, h)}
    assert sorted(served(dynamo_store, "gloo-system/ec2-demo-upstream")) == sorted(
        [(public[a], 80, a), (public[h], 80, h)]
    )
    assert sorted(served(dynamo_store, "gloo-system/ec2-legacy-private")) == sorted(
        [(private[a], 8080, a), (private[b], 8080, b), (private[h], 8080, h)]
    )
    assert served(dynamo_store, "gloo-system/ec2-group2") == [(public[d], 80, d)]
    assert served(dynamo_store, "gloo-system/my-ec2-upstream") == [(public[e], 80, e)]
    for key in keys:
        assert status(dynamo_store, key)["state"] == ACCEPTED
    assert status(dynamo_store, "gloo-system/ec2-legacy-private")["endpoints"] == 3
    assert {c, f, g, x}.isdisjoint(set().union(*(ids(dynamo_store, key) for key in keys)))


def test_the_older_upstreamspec_seed_lists_private_addresses_through_its_secret(
    dynamo_store: DynamoStore,
    launch: Launch,
    put_secret: Any,
    scan: Scan,
    instance_info: Callable[..., dict[str, Any]],
) -> None:
    put_secret("default", "gloo-tag-group1", {"access_key": "AKIAGROUP10000000000", "secret_key": "group1-secret"})
    [key] = apply_file(dynamo_store, EXAMPLES / "seed-legacy-upstreamspec.yaml")
    [a] = launch({"gloo-id": "1", "gloo-tag": "group1", "version": "v1.2.3"})
    launch({"gloo-id": "2", "gloo-tag": "group1", "version": "v9"})

    summary = scan()

    assert calls(summary)["secretsmanager:GetSecretValue"] == 1
    assert calls(summary)["sts:AssumeRole"] == 0
    assert served(dynamo_store, key) == [(addresses(instance_info, a)[0], 80, a)]


def test_ten_upstreams_sharing_credentials_cost_one_listing(
    dynamo_store: DynamoStore, launch: Launch, put_secret: Any, scan: Scan
) -> None:
    put_secret("default", "shared", {"access_key": "AKIASHARED0000000000", "secret_key": "shared-secret"})
    for n in range(10):
        put(
            dynamo_store,
            f"svc-{n}",
            secretRef={"name": "shared", "namespace": "default"},
            roleArn=ROLE,
            filters=[{"kvPair": {"key": "svc", "value": str(n)}}],
        )
    fleet = {n: launch({"svc": str(n)}, count=2) for n in range(10)}

    summary = scan()

    assert summary.upstreams == 10
    assert calls(summary)["ec2:DescribeInstances"] == 1
    assert calls(summary)["sts:AssumeRole"] == 1
    assert calls(summary)["secretsmanager:GetSecretValue"] == 1
    assert summary.instances == 20
    assert summary.changed == 10
    for n in range(10):
        assert ids(dynamo_store, f"gloo-system/svc-{n}") == set(fleet[n])


def test_a_scan_with_no_fleet_change_writes_only_its_scan_record(
    dynamo_store: DynamoStore, launch: Launch, scan: Scan
) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    put(dynamo_store, "api", filters=[{"key": "api"}], roleArn=ROLE)
    launch({"web": "1"}, count=2)
    launch({"api": "1"})
    first = scan()
    assert first.changed == 2
    digests = dynamo_store.endpoint_digests()
    statuses = {key: status(dynamo_store, key) for key in digests}

    second = scan()

    assert second.changed == 0
    assert second.errors == 0
    assert calls(second).get("dynamodb:PutItem", 0) == 0
    assert calls(second).get("dynamodb:UpdateItem", 0) == 1  # the scan record (`planned`), whatever the groups
    assert calls(second).get("dynamodb:DeleteItem", 0) == 0
    assert calls(second).get("dynamodb:TransactWriteItems", 0) == 0
    assert calls(second)["ec2:DescribeInstances"] == 2
    assert calls(second)["sts:AssumeRole"] == 0  # the assumed credentials are still good
    assert dynamo_store.endpoint_digests() == digests
    after = {key: status(dynamo_store, key) for key in digests}
    assert all(after[key]["lastScan"] > statuses[key]["lastScan"] for key in digests)  # the record says so
    assert {key: {**value, "lastScan": None} for key, value in after.items()} == {
        key: {**value, "lastScan": None} for key, value in statuses.items()
    }


def test_a_stopped_instance_is_dropped_on_the_next_scan(
    dynamo_store: DynamoStore, launch: Launch, ec2: Any, scan: Scan
) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    keep, stop = launch({"web": "1"}, count=2)
    scan()
    old_version = dynamo_store.get_endpoint_set("gloo-system", "web").version

    ec2.stop_instances(InstanceIds=[stop])
    summary = scan()

    assert summary.changed == 1
    assert ids(dynamo_store, "gloo-system/web") == {keep}
    assert dynamo_store.get_endpoint_set("gloo-system", "web").version != old_version
    assert status(dynamo_store, "gloo-system/web")["endpoints"] == 1


def test_a_terminated_fleet_leaves_an_empty_set_not_a_stale_one(
    dynamo_store: DynamoStore, launch: Launch, ec2: Any, scan: Scan
) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    fleet = launch({"web": "1"}, count=2)
    scan()

    ec2.terminate_instances(InstanceIds=fleet)
    scan()

    assert served(dynamo_store, "gloo-system/web") == []
    assert status(dynamo_store, "gloo-system/web")["state"] == ACCEPTED
    assert status(dynamo_store, "gloo-system/web")["endpoints"] == 0


def test_retagging_an_instance_moves_it_between_upstreams(
    dynamo_store: DynamoStore, launch: Launch, ec2: Any, scan: Scan
) -> None:
    put(dynamo_store, "blue", filters=[{"kvPair": {"key": "color", "value": "blue"}}])
    put(dynamo_store, "green", filters=[{"kvPair": {"key": "color", "value": "green"}}])
    [mover] = launch({"color": "blue"})
    [stay] = launch({"color": "green"})
    scan()
    assert (ids(dynamo_store, "gloo-system/blue"), ids(dynamo_store, "gloo-system/green")) == ({mover}, {stay})

    ec2.create_tags(Resources=[mover], Tags=[{"Key": "color", "Value": "green"}])
    summary = scan()

    assert summary.changed == 2
    assert ids(dynamo_store, "gloo-system/blue") == set()
    assert ids(dynamo_store, "gloo-system/green") == {mover, stay}


def test_a_missing_secret_errors_only_its_upstream(dynamo_store: DynamoStore, launch: Launch, scan: Scan) -> None:
    put(dynamo_store, "good", filters=[{"key": "web"}])
    put(dynamo_store, "bad", filters=[{"key": "web"}], secretRef={"name": "nowhere", "namespace": "default"})
    [web] = launch({"web": "1"})

    summary = scan()

    assert summary.errors == 1
    assert summary.changed == 1
    bad = status(dynamo_store, "gloo-system/bad")
    assert bad["state"] == ERROR
    assert "default/nowhere" in bad["reason"]
    assert bad["lastScan"] is None
    assert dynamo_store.get_endpoint_set("gloo-system", "bad") is None  # nothing made up
    assert ids(dynamo_store, "gloo-system/good") == {web}
    assert status(dynamo_store, "gloo-system/good")["state"] == ACCEPTED


def test_an_upstream_whose_secret_disappears_keeps_its_last_good_set(
    dynamo_store: DynamoStore, launch: Launch, put_secret: Any, scan: Scan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0")
    runtime.reset()
    store = runtime.store()
    secret_id = put_secret("default", "team-a", {"access_key": "AKIATEAMA00000000000", "secret_key": "team-a-secret"})
    put(store, "plain", filters=[{"key": "web"}])
    put(store, "other", filters=[{"key": "web"}], port=8080)
    put(store, "secured", filters=[{"key": "web"}], secretRef={"name": "team-a", "namespace": "default"})
    [first] = launch({"web": "1"})
    assert scan().changed == 3
    kept = store.get_endpoint_set("gloo-system", "secured")
    assert {e.instance_id for e in kept.endpoints} == {first}

    boto3.client("secretsmanager", region_name="us-east-1").delete_secret(
        SecretId=secret_id, ForceDeleteWithoutRecovery=True
    )
    [second] = launch({"web": "2"})
    summary = scan()

    assert summary.errors == 1
    assert summary.changed == 2
    assert ids(store, "gloo-system/plain") == {first, second}
    assert ids(store, "gloo-system/other") == {first, second}
    assert store.get_endpoint_set("gloo-system", "secured") == kept
    secured = status(store, "gloo-system/secured")
    assert secured["state"] == ERROR
    assert "default/team-a" in secured["reason"]
    assert "team-a-secret" not in secured["reason"]
    assert secured["endpoints"] == 1  # what it still serves
    assert status(store, "gloo-system/plain")["state"] == ACCEPTED
    # served as before over HTTP too
    reply = api.get_endpoints(store, "gloo-system", "secured", None)
    assert reply.status == 200
    assert [e["instance_id"] for e in reply.body["endpoints"]] == [first]


def test_an_upstream_recovers_when_its_secret_comes_back(
    dynamo_store: DynamoStore, launch: Launch, put_secret: Any, scan: Scan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_CACHE_SECONDS", "0")
    runtime.reset()
    store = runtime.store()
    put(store, "secured", filters=[{"key": "web"}], secretRef={"name": "late", "namespace": "default"})
    [web] = launch({"web": "1"})
    scan()
    assert status(store, "gloo-system/secured")["state"] == ERROR

    put_secret("default", "late", {"access_key": "AKIALATE000000000000", "secret_key": "late-secret"})
    scan()

    after = status(store, "gloo-system/secured")
    assert (after["state"], after["endpoints"]) == (ACCEPTED, 1)
    assert ids(store, "gloo-system/secured") == {web}


def test_an_instance_without_a_public_ip_is_skipped_by_a_public_upstream(
    dynamo_store: DynamoStore, launch: Launch, ec2: Any, scan: Scan, instance_info: Callable[..., dict[str, Any]]
) -> None:
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    [hidden] = launch({"web": "1"}, subnet_id=subnet)
    [visible] = launch({"web": "1"})
    put(dynamo_store, "public", filters=[{"key": "web"}], publicIp=True)
    put(dynamo_store, "private", filters=[{"key": "web"}])

    scan()

    assert served(dynamo_store, "gloo-system/public") == [(addresses(instance_info, visible)[1], 80, visible)]
    public = status(dynamo_store, "gloo-system/public")
    assert (public["state"], public["endpoints"], public["skipped"]) == (ACCEPTED, 1, 1)
    assert ids(dynamo_store, "gloo-system/private") == {hidden, visible}
    assert status(dynamo_store, "gloo-system/private")["skipped"] == 0


def test_each_upstream_sees_only_its_own_region(dynamo_store: DynamoStore, launch: Launch, scan: Scan) -> None:
    east = launch({"web": "1"}, count=2, region="us-east-1")
    west = launch({"web": "1"}, region="us-west-2")
    put(dynamo_store, "east", filters=[{"key": "web"}])
    put(dynamo_store, "west", filters=[{"key": "web"}], region="us-west-2")

    summary = scan()

    assert ids(dynamo_store, "gloo-system/east") == set(east)
    assert ids(dynamo_store, "gloo-system/west") == set(west)
    assert calls(summary)["ec2:DescribeInstances"] == 2
    assert summary.instances == 3
    assert dynamo_store.get_endpoint_set("gloo-system", "west").region == "us-west-2"
    assert {e.zone[:-1] for e in dynamo_store.get_endpoint_set("gloo-system", "west").endpoints} == {"us-west-2"}


def test_deleting_an_upstream_deletes_its_set(dynamo_store: DynamoStore, launch: Launch, scan: Scan) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    put(dynamo_store, "api", filters=[{"key": "web"}])
    launch({"web": "1"})
    scan()

    assert dynamo_store.delete_upstream("gloo-system", "web") is True
    summary = scan()

    assert summary.upstreams == 1
    assert dynamo_store.get_endpoint_set("gloo-system", "web") is None
    assert api.get_endpoints(dynamo_store, "gloo-system", "web", None).status == 404
    assert set(dynamo_store.endpoint_digests()) == {"gloo-system/api"}


def test_a_scan_removes_the_set_of_an_upstream_removed_behind_its_back(
    dynamo_store: DynamoStore, launch: Launch, scan: Scan
) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    launch({"web": "1"})
    scan()
    boto3.client("dynamodb", region_name="us-east-1").delete_item(
        TableName=dynamo_store.upstreams_table, Key={"id": {"S": "gloo-system/web"}}
    )

    scan()

    assert dynamo_store.endpoint_digests() == {}


def test_last_scan_is_set_after_a_scan(dynamo_store: DynamoStore, launch: Launch, scan: Scan) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    launch({"web": "1"})
    assert status(dynamo_store, "gloo-system/web")["lastScan"] is None

    before = runtime.now()
    scan()

    last = status(dynamo_store, "gloo-system/web")["lastScan"]
    assert isinstance(last, str) and last.endswith("Z")
    moment = datetime.fromisoformat(last.replace("Z", "+00:00"))
    assert moment >= before.replace(microsecond=0)
    listed = admin.list_upstreams(dynamo_store).body["upstreams"]
    assert [entry["status"]["lastScan"] for entry in listed] == [last]


def test_an_upstream_added_after_a_scan_gets_its_last_scan_on_the_next_one(
    dynamo_store: DynamoStore, launch: Launch, scan: Scan
) -> None:
    put(dynamo_store, "web", filters=[{"key": "web"}])
    launch({"web": "1"})
    scan()
    later = parse_upstream(
        {
            "metadata": {"name": "api", "namespace": "gloo-system"},
            "spec": {"awsEc2": {"region": "us-east-1", "filters": [{"key": "web"}]}},
        }
    )
    dynamo_store.put_upstream(later, runtime.now().isoformat().replace("+00:00", "Z"))
    assert status(dynamo_store, "gloo-system/api")["lastScan"] is None

    scan()

    assert status(dynamo_store, "gloo-system/api")["lastScan"] is not None
    assert status(dynamo_store, "gloo-system/web")["lastScan"] is not None


def test_the_cyclic_collector_is_off_while_a_group_is_listed_and_applied_and_on_again_after(
    dynamo_store: DynamoStore, launch: Launch
) -> None:
    """A large group's pages pile up in memory: the collector's passes over them doubled the listing's CPU."""
    import gc

    from chalicelib.usecases.scan import full_scan

    put(dynamo_store, "web", filters=[{"key": "gloo-id"}])
    launch({"gloo-id": "1"}, count=3)
    seen: list[tuple[str, bool]] = []
    inventory = runtime.inventory()

    class Watching:
        def __getattr__(self, name: str) -> Any:
            found = getattr(inventory, name)
            return lambda *args, **kwargs: seen.append((name, gc.isenabled())) or found(*args, **kwargs)

    write = dynamo_store.write_set
    dynamo_store.write_set = lambda *args: seen.append(("write_set", gc.isenabled())) or write(*args)  # type: ignore[method-assign]

    assert gc.isenabled()
    summary = full_scan(dynamo_store, Watching(), runtime.now, knobs=runtime.scan_knobs())  # type: ignore[arg-type]

    assert summary.changed == 1
    assert ("list_page", False) in seen and ("write_set", False) in seen
    assert all(enabled is False for _, enabled in seen), seen
    assert gc.isenabled()
