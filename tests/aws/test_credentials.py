"""CredentialResolver against moto: the function's role, a stored secret, an assumed role.

An assumed role is botocore's refreshable credentials: assumed on first use, renewed by botocore
inside the call that needs it (time is faked through botocore's time fetcher), one client per identity.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.credentials import ReadOnlyCredentials
from botocore.stub import Stubber

from chalicelib import config
from chalicelib.domain.spec import Credentials
from chalicelib.edges import clients
from chalicelib.edges.clients import ClientFactory, Identity
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

    def client(self, service: str, region: str | None = None, identity: Identity | None = None) -> Any:
        client = super().client(service, region, identity)
        if service == "sts" and id(client) not in self._hooked:
            self._hooked.add(id(client))
            # first, so that it runs before moto answers the request
            client.meta.events.register_first("before-send.sts.AssumeRole", self._signed)
            client.meta.events.register("after-call.sts.AssumeRole", self._answered)
        return client

    def _signed(self, request: Any, **_: Any) -> None:
        self.assume_role_signers.append(signer(request))

    def _answered(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Credentials" in parsed:
            self.expirations.append(parsed["Credentials"]["Expiration"].timestamp())


def signer(request: Any) -> str:
    """The access key that signed a request."""
    authorization = request.headers["Authorization"]
    authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
    return str(authorization.split("Credential=")[1].split("/")[0])


def keys(identity: Identity | None) -> ReadOnlyCredentials:
    """The keys an identity signs with now (an assumed role is assumed or renewed here if it must be)."""
    assert identity is not None
    return identity.credentials.get_frozen_credentials()


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
    return CredentialResolver(factory, config.settings(), clock=clock)


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
        assert resolver.identity(Credentials()) is None
    assert calls.total() == 0


def test_secret_ref_reads_gloo_keys_from_secrets_manager(resolver: CredentialResolver, secret: Any) -> None:
    secret("default", "gloo-tag-group1", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})

    with clients.counting() as calls:
        found = keys(resolver.identity(Credentials(secret=("default", "gloo-tag-group1"))))

    assert (found.access_key, found.secret_key, found.token) == (ACCESS_KEY, SECRET_VALUE, None)
    assert calls.get("secretsmanager:GetSecretValue") == 1
    assert calls.get("sts:AssumeRole") == 0


def test_secret_ref_passes_the_session_token(resolver: CredentialResolver, secret: Any) -> None:
    secret("default", "temp", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE, "session_token": "tok-123"})

    found = keys(resolver.identity(Credentials(secret=("default", "temp"))))

    assert (found.access_key, found.secret_key, found.token) == (ACCESS_KEY, SECRET_VALUE, "tok-123")


def test_a_secrets_identity_is_named_by_a_digest_of_all_its_keys(resolver: CredentialResolver, secret: Any) -> None:
    secret("default", "a", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})
    secret("default", "b", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE + "x"})

    a = resolver.identity(Credentials(secret=("default", "a")))
    again = resolver.identity(Credentials(secret=("default", "a")))
    b = resolver.identity(Credentials(secret=("default", "b")))

    assert a is not None and again is not None and b is not None
    assert a.key == again.key != b.key  # a corrected secret key is a new identity (and a new client)
    assert ACCESS_KEY not in a.key and SECRET_VALUE not in a.key


def test_secret_id_uses_the_configured_prefix(factory: Recording) -> None:
    resolver = CredentialResolver(factory, config.settings().model_copy(update={"secret_prefix": "team-a/"}))
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="team-a/default/creds", SecretString=json.dumps({"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})
    )

    found = keys(resolver.identity(Credentials(secret=("default", "creds"))))

    assert found.access_key == ACCESS_KEY


def test_a_missing_secret_is_a_credentials_error_naming_it(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolver.identity(Credentials(secret=("default", "nope")))

    assert "default/nope" in str(caught.value)


def test_a_missing_secret_reports_not_found_with_the_aws_code(resolver: CredentialResolver) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolver.identity(Credentials(secret=("default", "nope")))

    assert caught.value.code == "ResourceNotFoundException"
    assert "not found" in str(caught.value)
    assert "ec2-eds/default/nope" in str(caught.value)


def test_a_secret_that_is_not_json_is_a_credentials_error_without_its_value(
    resolver: CredentialResolver, secret: Any
) -> None:
    secret("default", "garbled", f"access={ACCESS_KEY} secret={SECRET_VALUE}")

    with pytest.raises(CredentialsError) as caught:
        resolver.identity(Credentials(secret=("default", "garbled")))

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
        resolver.identity(Credentials(secret=("default", "partial")))

    message = str(caught.value)
    assert "default/partial" in message
    assert "secret_key" in message
    assert SECRET_VALUE not in message and ACCESS_KEY not in message


def test_role_arn_is_assumed_through_sts_on_first_use(resolver: CredentialResolver, factory: Recording) -> None:
    with clients.counting() as calls:
        identity = resolver.identity(Credentials(role_arn=ROLE))
    assert calls.total() == 0  # nothing is asked until a client signs with it

    with clients.counting() as calls:
        answer = factory.client("sts", identity=identity).get_caller_identity()

    assert calls.get("sts:AssumeRole") == 1
    assert calls.get("secretsmanager:GetSecretValue") == 0
    assert factory.assume_role_signers == [own_access_key()]  # asked as the function's role
    assert answer["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/describe-ec2-demo/")
    assert keys(identity).access_key != own_access_key() and keys(identity).token


def test_an_assumed_role_is_one_identity_one_client_and_one_assume_role(
    resolver: CredentialResolver, factory: Recording
) -> None:
    first = resolver.identity(Credentials(role_arn=ROLE))
    factory.client("ec2", "us-east-1", first).describe_instances()

    with clients.counting() as calls:
        again = resolver.identity(Credentials(role_arn=ROLE))
        client = factory.client("ec2", "us-east-1", again)
        client.describe_instances()

    assert again is first
    assert client is factory.client("ec2", "us-east-1", first)
    assert calls.get("sts:AssumeRole") == 0
    assert calls.get("ec2:DescribeInstances") == 1


def test_a_role_used_by_several_groups_at_once_is_assumed_once(
    resolver: CredentialResolver, factory: Recording
) -> None:
    identity = resolver.identity(Credentials(role_arn=ROLE))
    regions = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"]

    def list_in(region: str) -> None:
        factory.client("ec2", region, identity).describe_instances()

    with clients.counting() as calls, ThreadPoolExecutor(max_workers=len(regions)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, list_in, region) for region in regions]
        for future in futures:
            future.result()

    assert calls.get("sts:AssumeRole") == 1  # the others wait for botocore's refresh, then use its keys
    assert calls.get("ec2:DescribeInstances") == len(regions)


def test_each_role_is_assumed_on_its_own(resolver: CredentialResolver, factory: Recording) -> None:
    keys(resolver.identity(Credentials(role_arn=ROLE)))

    with clients.counting() as calls:
        other = resolver.identity(Credentials(role_arn=OTHER_ROLE))
        answer = factory.client("sts", identity=other).get_caller_identity()

    assert calls.get("sts:AssumeRole") == 1
    assert "assumed-role/another/" in answer["Arn"]


def signers_of(client: Any) -> list[str]:
    seen: list[str] = []
    client.meta.events.register_first("before-send", lambda request, **_: seen.append(signer(request)))
    return seen


def test_an_assumed_roles_client_renews_its_keys_shortly_before_they_expire(
    resolver: CredentialResolver, factory: Recording, clock: Clock
) -> None:
    """CREDENTIALS_REFRESH_MARGIN_SECONDS (300 by default) before expiry, the same client renews them."""
    identity = resolver.identity(Credentials(role_arn=ROLE))
    client = factory.client("ec2", "us-east-1", identity)
    signed = signers_of(client)
    client.describe_instances()
    expires_at = factory.expirations[0]

    clock.now = expires_at - 300 - 5  # still outside the margin
    with clients.counting() as calls:
        client.describe_instances()
    assert calls.get("sts:AssumeRole") == 0

    clock.now = expires_at - 300 + 5  # inside the margin, not yet expired
    with clients.counting() as calls:
        factory.client("ec2", "us-east-1", resolver.identity(Credentials(role_arn=ROLE))).describe_instances()
    assert calls.get("sts:AssumeRole") == 1
    assert signed[0] == signed[1] != signed[2]  # the same client, signing with the renewed keys
    assert factory.client("ec2", "us-east-1", identity) is client


def deny_assume_role(factory: Recording) -> Stubber:
    stub = Stubber(factory.client("sts"))
    stub.add_client_error(
        "assume_role",
        service_error_code="AccessDenied",
        service_message="not authorized to perform sts:AssumeRole",
        http_status_code=403,
    )
    return stub


def test_a_failed_renewal_keeps_the_current_keys_until_half_the_margin_is_left(
    resolver: CredentialResolver, factory: Recording, clock: Clock
) -> None:
    identity = resolver.identity(Credentials(role_arn=ROLE))
    current = keys(identity)
    expires_at = factory.expirations[0]

    clock.now = expires_at - 200  # inside the margin (300), outside its half: botocore's advisory refresh
    with deny_assume_role(factory):
        assert keys(identity) == current  # the renewal failed; the keys still valid are kept

    clock.now = expires_at - 100  # inside half the margin: the renewal must succeed
    with deny_assume_role(factory), pytest.raises(CredentialsError) as caught:
        keys(identity)
    assert caught.value.code == "AccessDenied"
    assert ROLE in str(caught.value)

    assert keys(identity) != current  # the next call renews them


def test_secret_and_role_assume_the_role_with_the_secrets_keys(
    resolver: CredentialResolver, factory: Recording, secret: Any
) -> None:
    secret("default", "gloo-tag-group1", {"access_key": ACCESS_KEY, "secret_key": SECRET_VALUE})

    with clients.counting() as calls:
        found = keys(resolver.identity(Credentials(secret=("default", "gloo-tag-group1"), role_arn=ROLE)))

    assert calls.get("secretsmanager:GetSecretValue") == 1
    assert calls.get("sts:AssumeRole") == 1
    assert factory.assume_role_signers == [ACCESS_KEY]
    assert found.access_key not in (ACCESS_KEY, own_access_key())
    assert found.token


def test_the_same_role_through_different_secrets_is_assumed_per_secret(
    resolver: CredentialResolver, factory: Recording, secret: Any
) -> None:
    secret("default", "a", {"access_key": "AKIASECRETAAAAAAAAAA", "secret_key": SECRET_VALUE})
    secret("default", "b", {"access_key": "AKIASECRETBBBBBBBBBB", "secret_key": SECRET_VALUE})

    via_a = keys(resolver.identity(Credentials(secret=("default", "a"), role_arn=ROLE)))
    via_b = keys(resolver.identity(Credentials(secret=("default", "b"), role_arn=ROLE)))

    assert factory.assume_role_signers == ["AKIASECRETAAAAAAAAAA", "AKIASECRETBBBBBBBBBB"]
    assert via_a != via_b


def test_a_failed_assume_role_is_a_credentials_error_naming_the_role(
    resolver: CredentialResolver, factory: Recording
) -> None:
    identity = resolver.identity(Credentials(role_arn=ROLE))
    with deny_assume_role(factory), pytest.raises(CredentialsError) as caught:
        factory.client("ec2", "us-east-1", identity).describe_instances()

    assert caught.value.code == "AccessDenied"
    assert ROLE in str(caught.value)
    assert caught.value.__cause__ is None  # botocore logs a failed refresh with its traceback: no AWS text in it


def test_the_assumed_keys_are_scrubbed_from_messages(resolver: CredentialResolver) -> None:
    issued = keys(resolver.identity(Credentials(role_arn=ROLE)))

    text = resolver.scrub(f"signed with {issued.access_key} and {issued.secret_key} and {issued.token}")

    assert issued.secret_key not in text and issued.token not in text and issued.access_key not in text
