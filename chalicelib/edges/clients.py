"""boto3 clients: built lazily, cached per (service, region, credentials), counted.

Retries are botocore's own (`adaptive` by default, see `AWS_RETRY_MODE`);
`AWS_ENDPOINT_URL` (honoured by botocore itself) points every client at an
emulator. Every HTTP request a client sends is counted under
`service:Operation` in the `CallCounter` active in the current context, so a
scan can report exactly what it cost.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config

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


class ClientFactory:
    """One boto3 client per (service, region, access key), made on first use."""

    def __init__(self, conf: Settings) -> None:
        self._conf = conf
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._clients: dict[tuple[str, str, str | None], Any] = {}  # (service, region, credentials_key)

    def client(self, service: str, region: str | None = None, credentials: dict[str, str] | None = None) -> Any:
        region = region or self._conf.home_region
        credentials = credentials or {}
        key = (service, region, credentials_key(credentials))
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:  # boto3 sessions are not thread-safe while creating clients
            client = self._clients.get(key)
            if client is None:
                client = self._new_client(service, region, credentials)
                self._clients[key] = client
        return client

    def _new_client(self, service: str, region: str, credentials: dict[str, str]) -> Any:
        conf = self._conf
        if self._session is None:
            self._session = boto3.session.Session()
        config = Config(
            retries={"mode": conf.retry_mode, "max_attempts": conf.max_attempts},
            connect_timeout=conf.connect_timeout,
            read_timeout=conf.read_timeout,
            user_agent_extra="ec2-eds",
        )
        client = self._session.client(service, region_name=region, config=config, **credentials)
        prefix = client.meta.service_model.signing_name
        # request-created fires once per HTTP attempt: pages and retries both count.
        client.meta.events.register("request-created", _counter_hook(prefix))
        return client

    def forget(self, credentials: dict[str, str]) -> None:
        """Drop the clients of credentials that expired or were replaced."""
        gone = credentials_key(credentials)
        with self._lock:
            for key in [key for key in self._clients if key[2] == gone]:
                del self._clients[key]


def credentials_key(credentials: dict[str, str]) -> str | None:
    """The cache key of a set of credentials: a digest of all of it, so a corrected secret key
    or session token gets a new client, and no part of a secret is kept in a key."""
    if not credentials:
        return None
    canonical = "\0".join(f"{name}={credentials[name]}" for name in sorted(credentials))
    return hashlib.sha256(canonical.encode()).hexdigest()
