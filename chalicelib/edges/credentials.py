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

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.config import settings
from chalicelib.domain.spec import Credentials
from chalicelib.edges.clients import ClientFactory, credentials_key

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


# What AWS accepts in each field (printable ASCII, no blanks): anything else would reach an HTTP
# header and make the client fail with an error that quotes the value.
SECRET_FIELDS = {
    "access_key": (re.compile(r"[A-Za-z0-9]{1,128}"), "letters and digits"),
    "secret_key": (re.compile(r"[\x21-\x7e]{1,256}"), "printable ASCII without blanks"),
    "session_token": (re.compile(r"[\x21-\x7e]{1,8192}"), "printable ASCII without blanks"),
}


def secret_keys(value: Any, where: str) -> dict[str, str]:
    """Client keyword arguments from a secret's JSON, every field checked; errors never quote a value."""
    if not isinstance(value, dict):
        raise CredentialsError(f"{where} must hold a JSON object with access_key and secret_key", "SecretMalformed")
    for key, (pattern, allowed) in SECRET_FIELDS.items():
        field = value.get(key)
        if field is None or (key == "session_token" and field == ""):
            if key in SECRET_KEYS:
                raise CredentialsError(
                    f"{where} has no {key}: it must hold access_key, secret_key and optionally session_token "
                    "(as `glooctl create secret aws` or `cli secret create-aws` store them)",
                    "SecretMalformed",
                )
            continue
        if not isinstance(field, str) or not pattern.fullmatch(field):
            raise CredentialsError(
                f"{where}: {key} is not a valid AWS credential value ({allowed}; the value is not shown); "
                "check it for line breaks or spaces",
                "SecretMalformed",
            )
    keys = {"aws_access_key_id": value["access_key"], "aws_secret_access_key": value["secret_key"]}
    if value.get("session_token"):
        keys["aws_session_token"] = value["session_token"]
    return keys


def aws_message(err: ClientError, scrub: Callable[[str], str]) -> str:
    """': <AWS's message>', only when it is short plain text, with credential values scrubbed."""
    message = " ".join(str(err.response.get("Error", {}).get("Message", "")).split())
    if not message or len(message) > 300 or "<" in message or "canonical" in message.lower():
        return ""  # an HTML page from a proxy or emulator, or a signature report quoting headers
    return ": " + scrub(message)


def transport_problem(err: BaseException) -> str:
    """What kind of transport failure this was, never its text (which may quote header values)."""
    name = type(err).__name__
    url = getattr(err, "kwargs", {}).get("endpoint_url")
    if name == "EndpointConnectionError" and isinstance(url, str):  # an address, never a credential
        return f"could not connect to the endpoint {url}"
    known = {
        "EndpointConnectionError": "the AWS endpoint could not be reached",
        "ConnectTimeoutError": "connecting to AWS timed out",
        "ReadTimeoutError": "AWS did not answer in time",
        "NoCredentialsError": "no credentials were found",
        "ResponseParserError": "AWS answered something that is not an AWS response",
    }
    return known.get(name, f"{name} (details withheld: they can quote credentials)")


class CredentialResolver:
    """Turns `Credentials` into boto3 client keyword arguments."""

    def __init__(self, factory: ClientFactory, clock: Callable[[], float] = time.time) -> None:
        self._factory = factory
        self._clock = clock
        self._lock = threading.Lock()
        self._assumed: dict[tuple[str, str | None, str | None], _Assumed] = {}  # by role, external id, base keys
        self._secrets: parameters.SecretsProvider | None = None
        self._known: set[str] = set()  # credential values seen, scrubbed from any message that quotes AWS

    def client_args(self, credentials: Credentials) -> dict[str, str]:
        """`aws_access_key_id` and friends for these credentials; {} for the function's role."""
        base = self._secret_keys(*credentials.secret) if credentials.secret else {}
        if credentials.role_arn:
            return self._assume(credentials, base)
        return base

    def _secret_keys(self, namespace: str, name: str) -> dict[str, str]:
        sid = secret_id(namespace, name)
        with self._lock:  # one provider (one cache) even when several groups are listed at once
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
        keys = secret_keys(value, f"secret {namespace}/{name} ({sid})")
        self._remember(keys)
        return keys

    def _remember(self, keys: dict[str, str]) -> None:
        with self._lock:
            self._known.update(value for value in keys.values() if len(value) >= 4)

    def scrub(self, text: str) -> str:
        """`text` without any credential value this resolver has handled, for messages that quote AWS."""
        with self._lock:
            known = sorted(self._known, key=len, reverse=True)
        for value in known:
            if value in text:
                text = text.replace(value, "***")
        return text

    def _assume(self, credentials: Credentials, base: dict[str, str]) -> dict[str, str]:
        role_arn = credentials.role_arn
        assert role_arn is not None
        cache_key = (role_arn, credentials.external_id, credentials_key(base))
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
                f"sts:AssumeRole on {role_arn} failed ({code}){aws_message(err, self.scrub)}", code
            ) from err
        except BotoCoreError as err:  # transport errors can quote request headers: name the kind only
            raise CredentialsError(
                f"sts:AssumeRole on {role_arn} failed: {transport_problem(err)}", type(err).__name__
            ) from err
        issued = answer["Credentials"]
        keys = {
            "aws_access_key_id": issued["AccessKeyId"],
            "aws_secret_access_key": issued["SecretAccessKey"],
            "aws_session_token": issued["SessionToken"],
        }
        expires: datetime = issued["Expiration"]
        self._remember(keys)
        with self._lock:
            previous = self._assumed.get(cache_key)
            self._assumed[cache_key] = _Assumed(keys, expires.timestamp())
        if previous is not None:
            self._factory.forget(previous.keys)
        return keys


class AccountResolver:
    """The account an upstream's credentials look into: its role's, else who the keys are (cached)."""

    def __init__(self, resolver: CredentialResolver, factory: ClientFactory) -> None:
        self._resolver = resolver
        self._factory = factory
        self._accounts: dict[Credentials, str] = {}

    def account(self, credentials: Credentials) -> str:
        if credentials.account:
            return credentials.account
        if credentials not in self._accounts:
            sts = self._factory.client("sts", credentials=self._resolver.client_args(credentials))
            self._accounts[credentials] = str(sts.get_caller_identity()["Account"])
        return self._accounts[credentials]
