"""Named accounts, as Spinnaker's AWS provider names them: an id, a role to assume, regions. Pure.

An upstream may say `account: prod` instead of a raw `roleArn`; the scan
and the event handler resolve it to the account's role (and external id)
before grouping, so it costs nothing more than the equivalent `roleArn`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, ValidationError, field_validator

from chalicelib.domain.names import DNS1123_LABEL
from chalicelib.domain.spec import REGION, SpecError, Upstream, check_label
from chalicelib.domain.wire import Camel, Omit

ACCOUNT_ID = re.compile(r"\d{12}")
ROLE_PATH = re.compile(r"(role/)?([\w+=,.@/-]{1,512})")
LABEL: dict[str, Any] = {"minLength": 1, "maxLength": 63, "pattern": f"^{DNS1123_LABEL.pattern}$"}


ExternalId = Annotated[str, StringConstraints(min_length=2, max_length=1224, pattern=r"^[\w+=,.@:/-]+$")]


class Account(Camel):
    """`PUT /accounts/{name}` body, and the account as stored: what `hal config provider aws account add` takes.

    `name` may be left out of the body (the path gives it) or must equal the path's.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(json_schema_extra=LABEL)
    account_id: str = Field(json_schema_extra={"pattern": f"^{ACCOUNT_ID.pattern}$"})
    assume_role: str = Field(description="role/NAME, NAME or the role's full ARN")
    external_id: Omit[ExternalId] = None
    regions: list[str] = Field(
        min_length=1, max_length=40, json_schema_extra={"items": {"type": "string", "pattern": f"^{REGION.pattern}$"}}
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_label(value, "name")

    @field_validator("account_id")
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

    @field_validator("assume_role")
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
        if self.assume_role.startswith("arn:"):
            return self.assume_role
        match = ROLE_PATH.fullmatch(self.assume_role)
        assert match is not None
        return f"arn:aws:iam::{self.account_id}:role/{match.group(2)}"

    @property
    def accountId(self) -> str:  # noqa: N802  # usecases/events.py reads it (its owner renames it to account_id)
        return self.account_id


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
