"""The fleets and upstreams the benchmarks use, drawn from one tag model (seeded, so every run is the same).

Tags of an instance (8 or 9, as a real account's are): `Name` (unique),
`service` (200 services, Zipf-skewed as real fleets are: a few big services,
a long tail), `env` (prod 60 %, staging 25 %, dev 15 %), `team` and
`cost-center` (from the service, 25 teams), `version` (1 to 4 per service),
`aws:autoscaling:groupName` (service and env), `gloo-id` on 70 % and
`kubernetes.io/cluster/<name>` on 20 %.

An upstream's filters (1 to 3) are taken from one instance chosen at random
(so popular services get more upstreams, and every upstream matches at least
that instance): the service as a `kvPair`, then the env, the version or the
`gloo-id` key; 2 % are team-wide (`team` alone). Filter sets are unique
within a credentials group, as distinct upstreams are (and as Prometheus
would otherwise merge identical `ec2_sd_configs`).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.domain.endpoints import Endpoint, Instance, endpoint_of
from chalicelib.domain.spec import Upstream

SERVICES = 200
TEAMS = 25
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f")
ENVS = (("prod", 0.60), ("staging", 0.25), ("dev", 0.15))
NAMESPACE = "bench"


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


@dataclass(frozen=True)
class TagModel:
    services: tuple[str, ...]
    weights: tuple[float, ...]
    team_of: dict[str, str]
    versions_of: dict[str, tuple[str, ...]]

    @classmethod
    def build(cls, seed: int = 7) -> TagModel:
        rng = random.Random(seed)
        services = tuple(f"svc-{number:03d}" for number in range(SERVICES))
        team_of = {service: f"team-{rng.randrange(TEAMS):02d}" for service in services}
        versions_of = {service: tuple(f"v1.{minor}.0" for minor in range(rng.randint(1, 4))) for service in services}
        return cls(services, tuple(_zipf_weights(SERVICES)), team_of, versions_of)

    def tags(self, rng: random.Random, number: int) -> dict[str, str]:
        service = rng.choices(self.services, self.weights)[0]
        env = rng.choices([e for e, _ in ENVS], [w for _, w in ENVS])[0]
        team = self.team_of[service]
        tags = {
            "Name": f"{service}-{env}-{number:06d}",
            "service": service,
            "env": env,
            "team": team,
            "cost-center": f"cc-{team[-2:]}",
            "version": rng.choice(self.versions_of[service]),
            "aws:autoscaling:groupName": f"{service}-{env}-asg",
        }
        if rng.random() < 0.70:
            tags["gloo-id"] = f"gid-{team[-2:]}"
        if rng.random() < 0.20:
            tags[f"kubernetes.io/cluster/eks-{env}"] = "owned"
        return tags


# The tags filters and events use: the emulator fleet carries only these, because moto takes
# milliseconds to serialise each tag of each instance it lists (the pure core gets all of them).
FILTERED_TAGS = ("Name", "service", "env", "team", "version", "gloo-id")


def fleet_tags(count: int, seed: int = 11, model: TagModel | None = None) -> list[dict[str, str]]:
    """Tags for `count` instances."""
    model = model or TagModel.build()
    rng = random.Random(seed)
    return [model.tags(rng, number) for number in range(count)]


def instances(count: int, seed: int = 11) -> list[Instance]:
    """`count` running instances with the model's tags, private and (most) public addresses, for the pure core."""
    rng = random.Random(seed + 1)
    base_private = int(ipaddress.ip_address("10.0.0.0"))
    base_public = int(ipaddress.ip_address("54.0.0.0"))
    found = []
    for number, tags in enumerate(fleet_tags(count, seed)):
        found.append(
            Instance(
                instance_id=f"i-{number:017x}",
                state="running",
                zone=ZONES[number % len(ZONES)],
                private_ip=str(ipaddress.ip_address(base_private + number + 1)),
                public_ip=str(ipaddress.ip_address(base_public + number + 1)) if rng.random() < 0.8 else None,
                tags=tuple(sorted(tags.items())),
                instance_type="m5.large",
                vpc_id="vpc-0bench",
                subnet_id=f"subnet-0{number % len(ZONES)}",
            )
        )
    return found


def filter_sets(tag_sets: list[dict[str, str]], count: int, seed: int = 13) -> list[list[dict[str, Any]]]:
    """`count` distinct Gloo filter lists drawn from the tags of the given instances."""
    rng = random.Random(seed)
    seen: set[tuple[Any, ...]] = set()
    chosen: list[list[dict[str, Any]]] = []
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > count * 200:
            raise RuntimeError(f"could not draw {count} distinct filter sets from {len(tag_sets)} instances")
        tags = rng.choice(tag_sets)
        if rng.random() < 0.02:
            filters: list[dict[str, Any]] = [{"kvPair": {"key": "team", "value": tags["team"]}}]
        else:
            filters = [{"kvPair": {"key": "service", "value": tags["service"]}}]
            extra = rng.choices((0, 1, 2), (0.30, 0.45, 0.25))[0]
            options: list[dict[str, Any]] = [
                {"kvPair": {"key": "env", "value": tags["env"]}},
                {"kvPair": {"key": "version", "value": tags["version"]}},
            ]
            if "gloo-id" in tags:
                options.append({"key": "gloo-id"})
            filters += rng.sample(options, min(extra, len(options)))
        identity = tuple(sorted(str(sorted(f.items())) for f in filters))
        if identity in seen:
            continue
        seen.add(identity)
        chosen.append(filters)
    return chosen


def endpoints(upstream: Upstream, instances: Sequence[Instance]) -> list[Endpoint]:
    """Each instance's endpoint for the upstream, in order: every bench instance has the address it needs."""
    found: list[Endpoint] = []
    for instance in instances:
        endpoint = endpoint_of(upstream, instance)
        if endpoint is None:
            raise RuntimeError(f"{instance.instance_id} has no address for {upstream.key}")
        found.append(endpoint)
    return found


def upstream_document(
    name: str, filters: list[dict[str, Any]], credentials: dict[str, Any] | None = None, port: int = 8080
) -> dict[str, Any]:
    """A Gloo Upstream in namespace `bench`."""
    spec: dict[str, Any] = {"region": "us-east-1", "filters": filters, "port": port, **(credentials or {})}
    return {
        "apiVersion": "gloo.solo.io/v1",
        "kind": "Upstream",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"awsEc2": spec},
    }
