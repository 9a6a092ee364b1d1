"""Named accounts, as Spinnaker's AWS provider names them: an id, a role to assume, regions. Pure.

An upstream may say `account: prod` instead of a raw `roleArn`; the scan
and the event handler resolve it to the account's role (and external id)
before grouping, so it costs nothing more than the equivalent `roleArn`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.domain.spec import REGION, SpecError, Upstream, check_label

ACCOUNT_ID = re.compile(r"\d{12}")
ROLE_PATH = re.compile(r"(role/)?([\w+=,.@/-]{1,512})")


class Account(BaseModel):
    """`PUT /accounts/{name}` body: what `hal config provider aws account add` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    accountId: str
    assumeRole: str = Field(description="role/NAME, NAME or the role's full ARN")
    externalId: str | None = Field(None, min_length=2, max_length=1224, pattern=r"^[\w+=,.@:/-]+$")
    regions: list[str] = Field(min_length=1, max_length=40)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_label(value, "name")

    @field_validator("accountId")
    @classmethod
    def _account_id(cls, value: str) -> str:
        if not ACCOUNT_ID.fullmatch(value):
            raise ValueError("must be a 12-digit AWS account id")
        return value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if not REGION.fullmatch(region):
                raise ValueError(f"{region!r} is not an AWS region name such as us-east-1")
        return sorted(set(value))

    @field_validator("assumeRole")
    @classmethod
    def _role(cls, value: str) -> str:
        if value.startswith("arn:"):
            if not re.fullmatch(r"arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", value):
                raise ValueError("must be role/NAME or an IAM role ARN")
        elif not ROLE_PATH.fullmatch(value):
            raise ValueError("must be role/NAME or an IAM role ARN")
        return value

    @property
    def role_arn(self) -> str:
        if self.assumeRole.startswith("arn:"):
            return self.assumeRole
        match = ROLE_PATH.fullmatch(self.assumeRole)
        assert match is not None
        return f"arn:aws:iam::{self.accountId}:role/{match.group(2)}"

    def describe(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_none=True), "roleArn": self.role_arn}


def parse_account(document: Any, name: str) -> Account:
    """Validate an account body for `name`; SpecError names the offending field."""
    if not isinstance(document, dict):
        raise SpecError("the account must be a mapping")
    given = document.get("name", name)
    if given != name:
        raise SpecError(f"name {given!r} differs from the name in the path {name!r}", "name")
    try:
        account = Account.model_validate({**document, "name": name})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SpecError(f"{field}: {first['msg'].removeprefix('Value error, ')}", field) from None
    if account.role_arn.split(":")[4] != account.accountId:
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
    ec2 = upstream.ec2.model_copy(update={"roleArn": account.role_arn, "externalId": account.externalId})
    return dataclasses.replace(upstream, ec2=ec2)
