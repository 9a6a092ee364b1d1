"""moto's server with one speed fix, for the benchmarks: `python -m bench.fastmoto -H 127.0.0.1 -p PORT`.

moto looks up an EC2 resource's tags by scanning every tag of every resource
(`TaggedEC2Resource.get_tags` -> `describe_tags(resource-id=...)`), so
describing N instances, or filtering them by tag, costs N x (all tags): on a
fleet of 1,300 instances a tag-filtered DescribeInstances took about 3 s and a
full listing about 10 s. Here the lookup reads the backend's own
`tags[resource_id]` mapping instead: the same tags, in the same order and
shape, in constant time. Two more lookups moto makes once per launched
instance scan everything launched before (so seeding N instances cost N^2):
`get_instance` walks every instance of every reservation, and
`describe_volumes(volume_ids=[one])` every volume; here both read an index
(moto never removes an instance or volume from those collections; terminating
only changes its state). Nothing else changes: requests, pagination
(`MaxResults`, 100 reservations per page when absent), filters and answers are
moto's own, so every count the benchmarks take is what plain moto would give
(`python -m bench.run --plain-moto` runs them on `moto.server` unchanged, slower).
"""

from __future__ import annotations

from typing import Any


def patch() -> None:
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self: Any) -> list[dict[str, str]]:
        if not self.id:
            return []
        tags = self.ec2_backend.tags.get(self.id)
        if not tags:
            return []
        resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        return [
            {"resource_id": self.id, "key": key, "value": value, "resource_type": resource_type}
            for key, value in tags.items()
        ]

    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]
    _index_instances()
    _index_volumes()


def _index_instances() -> None:
    from moto.ec2.models.instances import InstanceBackend

    scan = InstanceBackend.get_instance

    def get_instance(self: Any, instance_id: str) -> Any:
        index = self.__dict__.setdefault("_bench_instance_index", {})
        if instance_id in index:
            return index[instance_id]
        for reservation in reversed(self.reservations.values()):  # the newest first: launches look up their own
            index.update((instance.id, instance) for instance in reservation.instances)
            if instance_id in index:
                return index[instance_id]
        return scan(self, instance_id)  # moto's own error for an unknown id

    InstanceBackend.get_instance = get_instance  # type: ignore[method-assign]


def _index_volumes() -> None:
    from moto.ec2.models.elastic_block_store import EBSBackend

    scan = EBSBackend.describe_volumes

    def describe_volumes(self: Any, volume_ids: list[str] | None = None, filters: Any = None) -> Any:
        if volume_ids and len(volume_ids) == 1 and not filters and volume_ids[0] in self.volumes:
            return [self.volumes[volume_ids[0]]]
        return scan(self, volume_ids, filters)

    EBSBackend.describe_volumes = describe_volumes  # type: ignore[method-assign]


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
