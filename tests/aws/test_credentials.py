"""CredentialResolver against moto: the function's role, a stored secret, an assumed role."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from chalicelib import config
from chalicelib.domain.spec import Credentials
from chalicelib.edges import clients
from chalicelib.edges.clients import ClientFactory
from chalicelib.edges.credentials import CredentialResolver, CredentialsError

ROLE = "arn:aws:iam::123456789012:role/describe-ec2-demo"
OTHER_ROLE = "arn:aws:iam::123456789012:role/another"
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIASECRETREF0000001"


class Recording(ClientFactory):
    """A ClientFactory that records, for each AssumeRole request, the access key that signed it."""

    def __init__(self) -> None:
        super().__init__(config.settings())
        self.assume_role_signers: list[str] = []
        self.expirations: list[float] = []
        self._hooked: set[int] = set()

    def client(self, service: str, region: str | None = None, credentials: dict[str, str] | None = None) -> Any:
        client = super().client(service, region, credentials)
        if service == "sts" and id(client) not in self._hooked:
            self._hooked.add(id(client))
            # first, so that it runs before moto answers the request
            client.meta.events.register_first("before-send.sts.AssumeRole", self._signed)
            client.meta.events.register("after-call.sts.AssumeRole", self._answered)
        return client

    def _signed(self, request: Any, **_: Any) -> None:
        authorization = request.headers["Authorization"]
        authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
        self.assume_role_signers.append(authorization.split("Credential=")[1].split("/")[0])

    def _answered(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Credentials" in parsed:
            self.expirations.append(parsed["Credentials"]["Expiration"].timestamp())


def own_access_key() -> str:
    """The function's own access key, as the default chain finds it (moto sets its own)."""
    return boto3.session.Session().get_credentials().access_key


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factory(aws: None) -> Recording:
    return Recording()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def resolver(factory: Recording, clock: Clock) -> CredentialResolver:
    return CredentialResolver(factory, clock=clock)


@pytest.fixture
def secret(aws: None) -> Callable[[str, str, Any], str]:
    def create(namespace: str, name: str, value: Any) -> str:
        secret_id = f"ec2-eds/{namespace}/{name}"
        text = value if isinstance(value, str) else json.dumps(value)
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(Name=secret_id, SecretString=text)
        return secret_id

    return create


def test_no_secret_and_no_role_means_the_functions_own_role(resolver: CredentialResolver) -> None:
    with clients.counting() as calls:
        assert resolver.client_args(Credentials()) == {}
    assert calls.total() == 0


def test_secret_ref_reads_gloo_keys_from_secrets_manager(resolver: CredentialResolver, secret: Any) -> None:
    secret("default", "gloo-tag-group1", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})

    with clients.counting() as calls:
        args = resolver.client_args(Credentials(secret=("default", "gloo-tag-group1")))

    assert args == {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_VALUE}
    assert calls.get("secretsmanager:GetSecretValue") == 1
    assert calls.get("sts:AssumeRole") == 0


def test_secret_ref_passes_the_session_token(resolver: CredentialResolver, secret: Any) -> None:
    secret("default", "temp", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE, "session_token": "tok-123"})

    args = resolver.client_args(Credentials(secret=("default", "temp")))

    assert args == {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_VALUE,
        "aws_session_token": "tok-123",
    }


def test_secret_id_uses_the_configured_prefix(resolver: CredentialResolver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_PREFIX", "team-a/")
    config.reset()
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="team-a/default/creds", SecretString=json.dumps({"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})
    )

    args = resolver.client_args(Credentials(secret=("default", "creds")))

    assert args["aws_access_key_id"] == ACCESS_KEY


def test_a_missing_secret_is_a_credentials_error_naming_it(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolver.client_args(Credentials(secret=("default", "nope")))

    assert "default/nope" in str(caught.value)


def test_a_missing_secret_reports_not_found_with_the_aws_code(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolver.client_args(Credentials(secret=("default", "nope")))

    assert caught.value.code == "ResourceNotFoundException"
    assert "not found" in str(caught.value)
    assert "ec2-eds/default/nope" in str(caught.value)


def test_a_secret_that_is_not_json_is_a_credentials_error_without_its_value(
    resolver: CredentialResolver, secret: Any
) -> None:
    secret("default", "garbled", f"access={ACCESS_KEY} secret={SECRET_VALUE}")

    with pytest.raises(CredentialsError) as caught:
        resolver.client_args(Credentials(secret=("default", "garbled")))

    message = str(caught.value)
    assert "default/garbled" in message
    assert SECRET_VALUE not in message and ACCESS_KEY not in message


@pytest.mark.parametrize(
    "value",
    [
        {"access_key": ACCESS_KEY},
        {"access_key": ACCESS_KEY, "secret_key": ""},
        {"access_key": ACCESS_KEY, "secretKey": SECRET_VALUE},
        {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_VALUE},
        [ACCESS_KEY, SECRET_VALUE],
    ],
    ids=["no-secret-key", "empty-secret-key", "camel-case", "boto-names", "a-list"],
)
def test_a_secret_without_gloo_keys_is_a_credentials_error_without_its_value(
    resolver: CredentialResolver, secret: Any, value: Any
) -> None:
    secret("default", "partial", value)

    with pytest.raises(CredentialsError) as caught:
        resolver.client_args(Credentials(secret=("default", "partial")))

    message = str(caught.value)
    assert "default/partial" in message
    assert "secret_key" in message
    assert SECRET_VALUE not in message and ACCESS_KEY not in message


def test_role_arn_is_assumed_through_sts(resolver: CredentialResolver, factory: Recording) -> None:
    with clients.counting() as calls:
        args = resolver.client_args(Credentials(role_arn=ROLE))

    assert calls.get("sts:AssumeRole") == 1
    assert calls.get("secretsmanager:GetSecretValue") == 0
    assert set(args) == {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
    assert args["aws_access_key_id"] != own_access_key()
    assert factory.assume_role_signers == [own_access_key()]  # asked as the function's role
    identity = boto3.client("sts", region_name="us-east-1", **args).get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/describe-ec2-demo/")


def test_assumed_credentials_are_cached(resolver: CredentialResolver) -> None:
    first = resolver.client_args(Credentials(role_arn=ROLE))

    with clients.counting() as calls:
        second = resolver.client_args(Credentials(role_arn=ROLE))

    assert calls.get("sts:AssumeRole") == 0
    assert second == first


def test_each_role_is_assumed_on_its_own(resolver: CredentialResolver) -> None:
    resolver.client_args(Credentials(role_arn=ROLE))

    with clients.counting() as calls:
        other = resolver.client_args(Credentials(role_arn=OTHER_ROLE))

    assert calls.get("sts:AssumeRole") == 1
    identity = boto3.client("sts", region_name="us-east-1", **other).get_caller_identity()
    assert "assumed-role/another/" in identity["Arn"]


def test_assumed_credentials_are_renewed_shortly_before_they_expire(
    resolver: CredentialResolver, factory: Recording, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_REFRESH_MARGIN_SECONDS", "300")
    config.reset()
    first = resolver.client_args(Credentials(role_arn=ROLE))
    expires_at = factory.expirations[0]

    clock.now = expires_at - 300 - 5  # still outside the margin
    with clients.counting() as calls:
        assert resolver.client_args(Credentials(role_arn=ROLE)) == first
    assert calls.get("sts:AssumeRole") == 0

    clock.now = expires_at - 300 + 5  # inside the margin, not yet expired
    with clients.counting() as calls:
        renewed = resolver.client_args(Credentials(role_arn=ROLE))
    assert calls.get("sts:AssumeRole") == 1
    assert renewed["aws_access_key_id"] != first["aws_access_key_id"]


def test_secret_and_role_assume_the_role_with_the_secrets_keys(
    resolver: CredentialResolver, factory: Recording, secret: Any
) -> None:
    secret("default", "gloo-tag-group1", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})

    with clients.counting() as calls:
        args = resolver.client_args(Credentials(secret=("default", "gloo-tag-group1"), role_arn=ROLE))

    assert calls.get("secretsmanager:GetSecretValue") == 1
    assert calls.get("sts:AssumeRole") == 1
    assert factory.assume_role_signers == [ACCESS_KEY]
    assert args["aws_access_key_id"] not in (ACCESS_KEY, own_access_key())
    assert "aws_session_token" in args


def test_the_same_role_through_different_secrets_is_assumed_per_secret(
    resolver: CredentialResolver, factory: Recording, secret: Any
) -> None:
    secret("default", "a", {"access_key": "AKIASECRETAAAAAAAAAA", "secret_key": SECRET_VALUE})
    secret("default", "b", {"access_key": "AKIASECRETBBBBBBBBBB", "secret_key": SECRET_VALUE})

    via_a = resolver.client_args(Credentials(secret=("default", "a"), role_arn=ROLE))
    via_b = resolver.client_args(Credentials(secret=("default", "b"), role_arn=ROLE))

    assert factory.assume_role_signers == ["AKIASECRETAAAAAAAAAA", "AKIASECRETBBBBBBBBBB"]
    assert via_a != via_b


def test_a_failed_assume_role_is_a_credentials_error_naming_the_role(
    resolver: CredentialResolver, factory: Recording
) -> None:
    from botocore.stub import Stubber

    sts = factory.client("sts")
    with Stubber(sts) as stub:
        stub.add_client_error(
            "assume_role",
            service_error_code="AccessDenied",
            service_message="not authorized to perform sts:AssumeRole",
            http_status_code=403,
        )
        with pytest.raises(CredentialsError) as caught:
            resolver.client_args(Credentials(role_arn=ROLE))

    assert caught.value.code == "AccessDenied"
    assert ROLE in str(caught.value)
