"""Credentials of an upstream: the function's role, a stored secret, an assumed role.

A `secretRef` names the Secrets Manager secret `{SECRET_PREFIX}{namespace}/{name}`
whose JSON holds Gloo's keys `access_key`, `secret_key` and optionally
`session_token`. A `roleArn` is assumed with those keys when a secret is
given, else with the function's role. Secret values are cached for
`SECRET_CACHE_SECONDS` (Powertools' parameters cache) and assumed
credentials until `CREDENTIALS_REFRESH_MARGIN_SECONDS` before they expire,
across warm invocations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import BotoCoreError, ClientError

from .aws import ClientFactory
from .config import settings
from .spec import Credentials

SECRET_KEYS = ("access_key", "secret_key")
SESSION_NAME = "ec2-eds"


class CredentialsError(Exception):
    """Credentials could not be had; `code` is the AWS error code when there is one."""

    def __init__(self, message: str, code: str = "CredentialsError") -> None:
        super().__init__(message)
        self.code = code


def secret_id(namespace: str, name: str) -> str:
    """The Secrets Manager id a `secretRef` resolves to."""
    return f"{settings().secret_prefix}{namespace}/{name}"


def secret_document(access_key: str, secret_key: str, session_token: str | None = None) -> dict[str, str]:
    """The JSON a secret holds, with Gloo's key names."""
    document = {"access_key": access_key, "secret_key": secret_key}
    if session_token:
        document["session_token"] = session_token
    return document


@dataclass(frozen=True, slots=True)
class _Assumed:
    keys: dict[str, str]
    expires_at: float


def error_code(err: BaseException) -> str:
    """The AWS error code behind an exception, or its class name."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code", "ClientError"))
        if isinstance(seen, CredentialsError):
            return seen.code
        seen = seen.__cause__ or seen.__context__  # Powertools re-raises without `from`
    return type(err).__name__


class CredentialResolver:
    """Turns `Credentials` into boto3 client keyword arguments."""

    def __init__(self, factory: ClientFactory, clock: Callable[[], float] = time.time) -> None:
        self._factory = factory
        self._clock = clock
        self._lock = threading.Lock()
        self._assumed: dict[tuple[str, str | None, str | None], _Assumed] = {}
        self._secrets: parameters.SecretsProvider | None = None

    def client_args(self, credentials: Credentials) -> dict[str, str]:
        """`aws_access_key_id` and friends for these credentials; {} for the function's role."""
        base = self._secret_keys(*credentials.secret) if credentials.secret else {}
        if credentials.role_arn:
            return self._assume(credentials, base)
        return base

    def _secret_keys(self, namespace: str, name: str) -> dict[str, str]:
        sid = secret_id(namespace, name)
        if self._secrets is None:
            self._secrets = parameters.SecretsProvider(boto3_client=self._factory.client("secretsmanager"))
        try:
            value: Any = self._secrets.get(sid, max_age=settings().secret_cache_seconds, transform="json")
        except parameters.TransformParameterError:
            raise CredentialsError(f"secret {namespace}/{name} ({sid}) does not hold JSON", "SecretMalformed") from None
        except parameters.GetParameterError as err:
            code = error_code(err)
            if code == "ResourceNotFoundException":
                message = f"secret {namespace}/{name} not found (Secrets Manager id {sid})"
            else:
                message = f"secret {namespace}/{name} could not be read ({code})"
            raise CredentialsError(message, code) from err
        if not isinstance(value, dict) or not all(
            isinstance(value.get(key), str) and value[key] for key in SECRET_KEYS
        ):
            raise CredentialsError(
                f"secret {namespace}/{name} ({sid}) must hold JSON with access_key and secret_key",
                "SecretMalformed",
            )
        keys = {"aws_access_key_id": value["access_key"], "aws_secret_access_key": value["secret_key"]}
        if value.get("session_token"):
            keys["aws_session_token"] = str(value["session_token"])
        return keys

    def _assume(self, credentials: Credentials, base: dict[str, str]) -> dict[str, str]:
        role_arn = credentials.role_arn
        assert role_arn is not None
        cache_key = (role_arn, credentials.external_id, base.get("aws_access_key_id"))
        margin = settings().credentials_refresh_margin_seconds
        with self._lock:
            cached = self._assumed.get(cache_key)
        if cached is not None and cached.expires_at - margin > self._clock():
            return cached.keys
        sts = self._factory.client("sts", credentials=base)
        try:
            extra = {"ExternalId": credentials.external_id} if credentials.external_id else {}
            answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=SESSION_NAME, **extra)
        except ClientError as err:
            code = error_code(err)
            raise CredentialsError(
                f"sts:AssumeRole on {role_arn} failed ({code}): {err.response['Error'].get('Message', '')}",
                code,
            ) from err
        except BotoCoreError as err:
            raise CredentialsError(f"sts:AssumeRole on {role_arn} failed: {err}", type(err).__name__) from err
        issued = answer["Credentials"]
        keys = {
            "aws_access_key_id": issued["AccessKeyId"],
            "aws_secret_access_key": issued["SecretAccessKey"],
            "aws_session_token": issued["SessionToken"],
        }
        expires: datetime = issued["Expiration"]
        with self._lock:
            previous = self._assumed.get(cache_key)
            self._assumed[cache_key] = _Assumed(keys, expires.timestamp())
        if previous is not None:
            self._factory.forget(previous.keys["aws_access_key_id"])
        return keys
