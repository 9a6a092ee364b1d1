"""A missing DynamoDB table, said plainly: which table, where, and the command that creates it.

DynamoDB answers a request on a table that does not exist with
`ResourceNotFoundException: Requested resource not found`, naming nothing.
The CLI and the API turn that into one sentence an operator can act on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

# The DynamoDB operations the store and `bootstrap` make: a ResourceNotFoundException from
# one of them is a missing table (Secrets Manager's, for a missing secret, is not).
DYNAMODB_OPERATIONS = frozenset(
    {
        "BatchGetItem",
        "BatchWriteItem",
        "DeleteItem",
        "DescribeContinuousBackups",
        "DescribeTable",
        "GetItem",
        "PutItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "TransactWriteItems",
        "UpdateContinuousBackups",
        "UpdateItem",
    }
)
_STAGE_TABLE = re.compile(r"ec2-eds-([a-z0-9-]+)-(?:upstreams|endpoints)")


def is_missing_table(err: BaseException) -> bool:
    """`err` is DynamoDB saying a table does not exist."""
    return (
        isinstance(err, ClientError)
        and err.response.get("Error", {}).get("Code") == "ResourceNotFoundException"
        and err.operation_name in DYNAMODB_OPERATIONS
    )


@dataclass(frozen=True, slots=True)
class Tables:
    """The stage's two tables and where they are."""

    upstreams: str
    endpoints: str
    region: str

    def missing(self, db: Any) -> list[str] | None:
        """The tables that do not exist; None when that cannot be told (no DescribeTable right)."""
        missing = []
        for table in (self.upstreams, self.endpoints):
            try:
                db.describe_table(TableName=table)
            except ClientError as err:
                if not is_missing_table(err):
                    return None
                missing.append(table)
            except BotoCoreError:
                return None
        return missing

    def where(self) -> str:
        """The region, and the endpoint when an emulator is used."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL")
        return f"region {self.region} at {endpoint}" if endpoint else f"region {self.region}"

    def missing_message(self, stage: str | None = None, missing: list[str] | None = None) -> str:
        """One sentence: the table(s) that do not exist and how to create them."""
        if not missing:  # could not tell which: name both
            tables = f"DynamoDB table {self.upstreams} or {self.endpoints} does not exist"
        elif len(missing) == 1:
            tables = f"DynamoDB table {missing[0]} does not exist"
        else:
            tables = f"DynamoDB tables {' and '.join(missing)} do not exist"
        if stage is None:
            found = _STAGE_TABLE.fullmatch(self.upstreams)
            stage = found.group(1) if found else "STAGE"
        return (
            f"{tables} ({self.where()}): create the tables with "
            f"`python -m chalicelib.cli --stage {stage} bootstrap` against this AWS, "
            "or deploy the CloudFormation stack (docs/DEPLOY.md)"
        )
