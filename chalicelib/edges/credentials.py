"""Credentials of an upstream: the function's role, a stored secret, an assumed role.

A `secretRef` names the Secrets Manager secret `{SECRET_PREFIX}{namespace}/{name}`
whose JSON holds Gloo's keys `access_key`, `secret_key` and optionally
`session_token`. A `roleArn` is assumed with those keys when a secret is
given, else with the function's role (with `ExternalId` when the upstream names one).
Secret values are cached for `SECRET_CACHE_SECONDS` (Powertools' parameters cache).
An assumed role is botocore's refreshable credentials, made once per (role, external
id, base credentials) and kept across warm invocations: botocore renews them itself
from `CREDENTIALS_REFRESH_MARGIN_SECONDS` before they expire (a failed renewal keeps
the current ones until half that margin is left; then it fails the call that needed
them), so a client made for an assumed role is made once.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities import parameters
from botocore.credentials import DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.config import Settings
from chalicelib.domain.spec import Credentials
from chalicelib.edges.clients import ClientFactory, Identity, digest, fixed_identity

SECRET_KEYS = ("access_key", "secret_key")
SESSION_NAME = "ec2-eds"


class CredentialsError(Exception):
    """Credentials could not be had; `code` is the AWS error code when there is one."""

    def __init__(self, message: str, code: str = "CredentialsError") -> None:
        super().__init__(message)
        self.code = code


def secret_id(prefix: str, namespace: str, name: str) -> str:
    """The Secrets Manager id a `secretRef` resolves to (`prefix` is SECRET_PREFIX)."""
    return f"{prefix}{namespace}/{name}"


def secret_document(access_key: str, secret_key: str, session_token: str | None = None) -> dict[str, str]:
    """The JSON a secret holds, with Gloo's key names."""
    document = {"access_key": access_key, "secret_key": secret_key}
    if session_token:
        document["session_token"] = session_token
    return document


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


class AssumedRoleCredentials(DeferredRefreshableCredentials):  # type: ignore[misc]
    """An assumed role's credentials: fetched on first use, renewed by botocore before they expire.

    From `margin` seconds before expiry a renewal is tried (botocore's advisory refresh: a failure
    keeps the current credentials); from `margin / 2` it must succeed (mandatory: a failure fails
    the call being signed).
    """

    def __init__(self, refresh: Callable[[], dict[str, str]], margin: float, now: Callable[[], datetime]) -> None:
        super().__init__(refresh_using=refresh, method="sts-assume-role", time_fetcher=now)
        self._advisory_refresh_timeout = margin
        self._mandatory_refresh_timeout = margin / 2


class CredentialResolver:
    """Turns `Credentials` into the `Identity` a client acts as (None: the function's role)."""

    def __init__(self, factory: ClientFactory, conf: Settings, clock: Callable[[], float] = time.time) -> None:
        self._factory = factory
        self._prefix = conf.secret_prefix
        self._secret_max_age = conf.secret_cache_seconds
        self._margin = conf.credentials_refresh_margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._assumed: dict[str, Identity] = {}  # by a digest of (role, external id, base identity)
        self._secrets: parameters.SecretsProvider | None = None
        self._known: set[str] = set()  # credential values seen, scrubbed from any message that quotes AWS

    def identity(self, credentials: Credentials) -> Identity | None:
        """Whom to act as for these credentials; reads the secret (unless cached), assumes nothing yet."""
        base = self._secret_identity(*credentials.secret) if credentials.secret else None
        if credentials.role_arn:
            return self._assumed_identity(credentials.role_arn, credentials.external_id, base)
        return base

    def secret_id(self, namespace: str, name: str) -> str:
        return secret_id(self._prefix, namespace, name)

    def _secret_identity(self, namespace: str, name: str) -> Identity:
        keys = secret_keys(
            self._read_secret(namespace, name), f"secret {namespace}/{name} ({self.secret_id(namespace, name)})"
        )
        self._remember(*keys.values())
        return fixed_identity(keys["aws_access_key_id"], keys["aws_secret_access_key"], keys.get("aws_session_token"))

    def _read_secret(self, namespace: str, name: str) -> Any:
        sid = self.secret_id(namespace, name)
        with self._lock:  # one provider (one cache) even when several groups are listed at once
            if self._secrets is None:
                self._secrets = parameters.SecretsProvider(boto3_client=self._factory.client("secretsmanager"))
        try:
            return self._secrets.get(sid, max_age=self._secret_max_age, transform="json")
        except parameters.TransformParameterError:
            raise CredentialsError(f"secret {namespace}/{name} ({sid}) does not hold JSON", "SecretMalformed") from None
        except parameters.GetParameterError as err:
            code = error_code(err)
            if code == "ResourceNotFoundException":
                message = f"secret {namespace}/{name} not found (Secrets Manager id {sid})"
            else:
                message = f"secret {namespace}/{name} could not be read ({code})"
            raise CredentialsError(message, code) from err

    def _remember(self, *values: str | None) -> None:
        with self._lock:
            self._known.update(value for value in values if value and len(value) >= 4)

    def scrub(self, text: str) -> str:
        """`text` without any credential value this resolver has handled, for messages that quote AWS."""
        with self._lock:
            known = sorted(self._known, key=len, reverse=True)
        for value in known:
            if value in text:
                text = text.replace(value, "***")
        return text

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _assumed_identity(self, role_arn: str, external_id: str | None, base: Identity | None) -> Identity:
        key = digest("assume-role", role_arn, external_id or "", base.key if base else "")
        with self._lock:
            identity = self._assumed.get(key)
            if identity is None:
                refresh = functools.partial(self._assume_role, role_arn, external_id, base)
                identity = Identity(key, AssumedRoleCredentials(refresh, self._margin, self._now))
                self._assumed[key] = identity
        return identity

    def _assume_role(self, role_arn: str, external_id: str | None, base: Identity | None) -> dict[str, str]:
        """sts:AssumeRole, as botocore's refresh function: the metadata botocore's credentials take.

        Its errors name the role and the code, never a credential; they are raised without their
        cause, since botocore logs a failed refresh with its traceback."""
        sts = self._factory.client("sts", identity=base)
        extra = {"ExternalId": external_id} if external_id else {}
        try:
            answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=SESSION_NAME, **extra)
        except ClientError as err:
            code = error_code(err)
            message = f"sts:AssumeRole on {role_arn} failed ({code}){aws_message(err, self.scrub)}"
            raise CredentialsError(message, code) from None
        except BotoCoreError as err:  # transport errors can quote request headers: name the kind only
            message = f"sts:AssumeRole on {role_arn} failed: {transport_problem(err)}"
            raise CredentialsError(message, type(err).__name__) from None
        issued = answer["Credentials"]
        self._remember(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])
        expires: datetime = issued["Expiration"]
        return {
            "access_key": issued["AccessKeyId"],
            "secret_key": issued["SecretAccessKey"],
            "token": issued["SessionToken"],
            "expiry_time": expires.isoformat(),
        }


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
            sts = self._factory.client("sts", identity=self._resolver.identity(credentials))
            self._accounts[credentials] = str(sts.get_caller_identity()["Account"])
        return self._accounts[credentials]
