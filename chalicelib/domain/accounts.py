"""Named accounts, as Spinnaker's AWS provider names them: an id, a role to assume, regions. Pure.

An upstream may say `account: prod` instead of a raw `roleArn`; the scan
and the event handler resolve it to the account's role (and external id)
before grouping, so it costs nothing more than the equivalent `roleArn`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ValidationError

from chalicelib.domain.models import Account as Account  # the account's model: body, item and value
from chalicelib.domain.spec import SpecError, Upstream


def parse_account(document: Any, name: str) -> Account:
    """Validate an account body for `name`; SpecError names the offending field."""
    if not isinstance(document, dict):
        raise SpecError("the account must be a mapping")
    given = document.get("name", name)
    if given != name:
        raise SpecError(f"name {given!r} differs from the name in the path {name!r}", "name")
    try:
        account = Account.model_validate({**document, "name": name}, by_alias=True, by_name=False)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SpecError(f"{field}: {first['msg'].removeprefix('Value error, ')}", field) from None
    if account.role_arn.split(":")[4] != account.account_id:
        raise SpecError("assumeRole names a role in another account than accountId", "assumeRole")
    return account


def resolve(upstream: Upstream, accounts: dict[str, Account]) -> Upstream:
    """The upstream with its account's role in place of `account`; SpecError if that cannot be."""
    name = upstream.ec2.account
    if name is None:
        return upstream
    account = accounts.get(name)
    if account is None:
        raise SpecError(f"account {name!r} is not defined (PUT /accounts/{name})", "spec.awsEc2.account")
    if upstream.ec2.region not in account.regions:
        raise SpecError(
            f"region {upstream.ec2.region} is not one of account {name}'s regions ({', '.join(account.regions)})",
            "spec.awsEc2.region",
        )
    ec2 = upstream.ec2.model_copy(update={"roleArn": account.role_arn, "externalId": account.external_id})
    return dataclasses.replace(upstream, ec2=ec2)
