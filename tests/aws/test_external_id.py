"""A member account's role that demands an external id is assumed with it."""

from __future__ import annotations

from typing import Any

from chalicelib import runtime
from chalicelib.domain.spec import Credentials
from chalicelib.edges import clients

ROLE = "arn:aws:iam::111111111111:role/ec2-eds-member"


def test_assume_role_sends_the_external_id_and_caches_per_id(aws: None) -> None:
    sent: list[dict[str, Any]] = []
    sts = runtime.clients().client("sts")
    sts.meta.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: sent.append(dict(params)))
    resolver = runtime.resolver()
    with clients.counting() as calls:
        first = resolver.client_args(Credentials(role_arn=ROLE, external_id="tenant-7"))
        again = resolver.client_args(Credentials(role_arn=ROLE, external_id="tenant-7"))
        other = resolver.client_args(Credentials(role_arn=ROLE, external_id="tenant-8"))
    assert first == again and first != other
    assert calls.get("sts:AssumeRole") == 2  # one per external id, the repeat is cached
    assert [params.get("ExternalId") for params in sent] == ["tenant-7", "tenant-8"]
