"""boto3 clients: built lazily, cached per (service, region, identity), counted.

An `Identity` is whom a client acts as: its botocore credentials (fixed keys,
or refreshable ones that renew themselves, e.g. an assumed role) and a digest
naming them, so a client is made once per identity and no secret is kept in a
cache key. Retries are botocore's own (`adaptive` by default, see `AWS_RETRY_MODE`);
`AWS_ENDPOINT_URL` (honoured by botocore itself) points every client at an
emulator. Every HTTP request a client sends is counted under
`service:Operation` in the `CallCounter` active in the current context, so a
scan can report exactly what it cost.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, Credentials

from chalicelib.config import Settings

_current: contextvars.ContextVar[CallCounter | None] = contextvars.ContextVar("aws_calls", default=None)


class CallCounter:
    """AWS requests made, by `service:Operation` (pages and retries included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def get(self, name: str) -> int:
        return self.calls.get(name, 0)

    def total(self, prefix: str = "") -> int:
        return sum(count for name, count in self.calls.items() if name.startswith(prefix))

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.calls.items()))


@contextlib.contextmanager
def counting(counter: CallCounter | None = None) -> Iterator[CallCounter]:
    """Count the AWS requests made in this context (threads started with its copy too)."""
    counter = counter or CallCounter()
    token = _current.set(counter)
    try:
        yield counter
    finally:
        _current.reset(token)


def _counter_hook(prefix: str) -> Any:
    def count(operation_name: str | None = None, **_: Any) -> None:
        counter = _current.get()
        if counter is not None and operation_name:
            counter.add(f"{prefix}:{operation_name}")

    return count


@dataclass(frozen=True, eq=False, slots=True)
class Identity:
    """Whom a client acts as: `key` names it (a digest, never a credential), `credentials` sign its requests."""

    key: str
    credentials: Credentials


def digest(*parts: str) -> str:
    """A cache key from credential material: nothing of it can be read back from the key."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def fixed_identity(access_key: str, secret_key: str, token: str | None = None) -> Identity:
    """Keys that never change (a stored secret's): a corrected secret key or token is a new identity."""
    return Identity(digest("keys", access_key, secret_key, token or ""), Credentials(access_key, secret_key, token))


class _Given(CredentialProvider):  # type: ignore[misc]
    """A session's credential chain of one link: the identity's own credentials."""

    METHOD = "ec2-eds-identity"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


_loaders: list[Any] = []  # the first session's data loader, which every later session of the process shares
_loaders_lock = threading.Lock()


_UTC_TIMESTAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z\Z")


def parse_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser (`botocore.utils.parse_timestamp`), with the form AWS's query APIs answer in,
    `2026-12-01T10:20:30.000Z`, read without dateutil's general parser: a DescribeInstances page of 1,000
    instances holds 3,000 such timestamps, and dateutil took a quarter of botocore's parse of it. The same
    datetime, in the same time zone object, as botocore's (tests/aws/test_timestamps.py compares them, recorded
    pages included); any other form, or an impossible date, is botocore's own."""
    found = _UTC_TIMESTAMP.match(value) if isinstance(value, str) else None
    if found is not None:
        year, month, day, hour, minute, second, fraction = found.groups()
        with contextlib.suppress(ValueError):  # botocore's own error, below
            return datetime.datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second),
                int((fraction or "0").ljust(6, "0")),
                tzinfo=_utc(),
            )
    return botocore.utils.parse_timestamp(value)  # type: ignore[no-any-return]


@functools.cache
def _utc() -> datetime.tzinfo | None:
    """The time zone botocore gives a `...Z` timestamp in this process: dateutil's `tzutc`, or its `tzlocal`
    where the local zone is named UTC (as on Lambda); asked of botocore itself, once."""
    return botocore.utils.parse_timestamp("2000-01-01T00:00:00Z").tzinfo


def new_session() -> botocore.session.Session:
    """A botocore session with the process's one data loader: the service models, endpoints and rules
    (megabytes of JSON) are parsed once per process, not once per session (a CLI run, a test, an
    identity); and `parse_timestamp` as its responses' timestamp parser."""
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    with _loaders_lock:
        if _loaders:
            session.register_component("data_loader", _loaders[0])
        else:
            _loaders.append(session.get_component("data_loader"))
    return session


class ClientFactory:
    """One boto3 client per (service, region, identity), made on first use."""

    def __init__(self, conf: Settings) -> None:
        self._conf = conf
        self._lock = threading.Lock()
        self._core: botocore.session.Session | None = None  # the function's own credentials chain
        self._session: boto3.session.Session | None = None
        self._clients: dict[tuple[str, str, str | None], Any] = {}  # (service, region, identity key)
        self._sessions: dict[str, botocore.session.Session] = {}  # by identity key

    def client(self, service: str, region: str | None = None, identity: Identity | None = None) -> Any:
        """A client of `service` in `region` (the home region by default) acting as `identity`
        (None: the function's own role)."""
        region = region or self._conf.home_region
        key = (service, region, identity.key if identity else None)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:  # botocore sessions are not thread-safe while creating clients
            client = self._clients.get(key)
            if client is None:
                client = self._new_client(service, region, identity)
                self._clients[key] = client
        return client

    def _config(self) -> Config:
        conf = self._conf
        return Config(
            # total_max_attempts is AWS_MAX_ATTEMPTS as botocore reads it: attempts, the first included
            # (its `max_attempts` key counts retries, one attempt more than the setting says)
            retries={"mode": conf.retry_mode, "total_max_attempts": conf.max_attempts},
            connect_timeout=conf.connect_timeout,
            read_timeout=conf.read_timeout,
            user_agent_extra="ec2-eds",
        )

    def _new_client(self, service: str, region: str, identity: Identity | None) -> Any:
        if self._core is None:
            self._core = new_session()
            self._session = boto3.session.Session(botocore_session=self._core)
        assert self._session is not None
        if identity is None:
            client = self._session.client(service, region_name=region, config=self._config())
        else:
            client = self._identity_session(identity).create_client(service, region_name=region, config=self._config())
        prefix = client.meta.service_model.signing_name
        # request-created fires once per HTTP attempt: pages and retries both count.
        client.meta.events.register("request-created", _counter_hook(prefix))
        return client

    def _identity_session(self, identity: Identity) -> botocore.session.Session:
        """A botocore session whose credentials are the identity's (botocore takes a credentials
        object only through a session's credential provider); the service models are shared."""
        session = self._sessions.get(identity.key)
        if session is None:
            session = new_session()
            session.register_component("credential_provider", CredentialResolver([_Given(identity.credentials)]))
            self._sessions[identity.key] = session
        return session
