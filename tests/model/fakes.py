"""The parts the model-based test drives the service with: an EC2 model, a pausable lister, a flaky store.

- `Fleet`: instances in (account, region) pairs, each running, stopped or
  terminated, with tags; every change bumps `seq`, the model's clock.
- `Worker`: a full scan or an event handler run in its own thread. Its first
  lister call takes a snapshot of the fleet (its *observation*, at `seq`) and
  blocks until the test releases it; every later lister call of the same
  worker answers from that snapshot. So a worker reads the store, looks at
  EC2 at one moment and writes later, as a delayed Lambda does.
- `ModelLister`: the `InstanceLister` over the fleet, answering from the
  calling worker's snapshot, raising `DiscoveryError` for the (account,
  region) pairs given a fault, and recording what each call observed.
- `FlakyStore`: `MemoryStore` whose next call of a chosen write method,
  made by a worker, raises botocore's `ClientError`.
"""

from __future__ import annotations

import contextvars
import copy
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.domain.endpoints import Instance
from chalicelib.domain.spec import Credentials
from chalicelib.edges.inventory import DiscoveryError
from chalicelib.edges.store import MemoryStore

HOME = "123456789012"  # the function's own account
OTHER = "210987654321"  # a member account, reached by a role
ROLE = f"arn:aws:iam::{OTHER}:role/reader"
RUNNING, STOPPED, TERMINATED = "running", "stopped", "terminated"
RELEASE_TIMEOUT = 60.0  # seconds a paused worker waits before it gives up (a hung test, not a result)


@dataclass
class Ec2Instance:
    instance_id: str
    account: str
    region: str
    state: str
    tags: dict[str, str]
    private_ip: str

    def as_instance(self) -> Instance:
        return Instance(
            instance_id=self.instance_id,
            state=self.state,
            zone=f"{self.region}a",
            private_ip=self.private_ip,
            tags=tuple(sorted(self.tags.items())),
            instance_type="t3.micro",
        )


@dataclass(frozen=True)
class Observation:
    """What one worker saw of one instance: at model time `seq`, worker `worker` (ties: same fleet)."""

    seq: int
    worker: int
    state: str
    tags: tuple[tuple[str, str], ...]
    private_ip: str

    @property
    def order(self) -> tuple[int, int]:
        return (self.seq, self.worker)


@dataclass
class Snapshot:
    seq: int
    instances: dict[str, Ec2Instance]
    faults: dict[tuple[str, str], str]


@dataclass
class Fleet:
    instances: dict[str, Ec2Instance] = field(default_factory=dict)
    faults: dict[tuple[str, str], str] = field(default_factory=dict)  # (account, region) -> error code
    seq: int = 0

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def snapshot(self) -> Snapshot:
        return Snapshot(self.seq, copy.deepcopy(self.instances), dict(self.faults))


CURRENT: contextvars.ContextVar[Worker | None] = contextvars.ContextVar("model_worker", default=None)


class Worker:
    """One scan or event handler, in a thread, paused at its first look at EC2."""

    def __init__(self, number: int, label: str, target: Callable[[], Any]) -> None:
        self.number = number
        self.label = label
        self._target = target
        self.gate = threading.Event()
        self.signal = threading.Event()  # arrived at the first lister call, or finished
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.snapshot: Snapshot | None = None
        self.observations: dict[str, Observation] = {}
        self.error: BaseException | None = None
        self.trace = ""
        self.store_faulted = False
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, name=f"model-{label}", daemon=True)

    def _run(self) -> None:
        CURRENT.set(self)
        try:
            self.result = self._target()
        except BaseException as err:  # noqa: BLE001 - recorded; the test decides
            self.error = err
            self.trace = traceback.format_exc()
        finally:
            self.done.set()
            self.signal.set()

    def start(self) -> None:
        self.thread.start()
        if not self.signal.wait(RELEASE_TIMEOUT):
            raise AssertionError(f"{self.label} neither reached EC2 nor finished")

    def release(self) -> None:
        self.gate.set()
        self.thread.join(RELEASE_TIMEOUT)
        if self.thread.is_alive():
            raise AssertionError(f"{self.label} did not finish after its release")

    @property
    def paused(self) -> bool:
        return not self.done.is_set()


class ModelLister:
    """`InstanceLister` over the fleet, as seen by the calling worker's snapshot."""

    def __init__(self, fleet: Fleet, account_of: Callable[[Credentials], str]) -> None:
        self.fleet = fleet
        self.account_of = account_of
        self.fallback: Worker | None = None  # when a thread does not carry the worker's context
        self.calls = 0

    def _enter(self) -> tuple[Worker, Snapshot]:
        worker = CURRENT.get() or self.fallback
        assert worker is not None, "a lister call outside any worker"
        with worker.lock:
            self.calls += 1
            if worker.snapshot is None:
                worker.snapshot = self.fleet.snapshot()
                worker.signal.set()
        if not worker.gate.wait(RELEASE_TIMEOUT):
            raise RuntimeError(f"{worker.label} was never released")
        assert worker.snapshot is not None
        return worker, worker.snapshot

    def _where(self, snap: Snapshot, credentials: Credentials, region: str) -> str:
        account = self.account_of(credentials)
        code = snap.faults.get((account, region))
        if code is not None:
            raise DiscoveryError(f"ec2:DescribeInstances in {region} failed ({code}): injected", code)
        return account

    @staticmethod
    def _observe(worker: Worker, snap: Snapshot, instance: Ec2Instance) -> None:
        seen = Observation(
            snap.seq, worker.number, instance.state, tuple(sorted(instance.tags.items())), instance.private_ip
        )
        with worker.lock:
            worker.observations[instance.instance_id] = seen

    def list_running(self, credentials: Credentials, region: str) -> list[Instance]:
        worker, snap = self._enter()
        account = self._where(snap, credentials, region)
        found = []
        for instance in snap.instances.values():
            if (instance.account, instance.region) != (account, region):
                continue
            self._observe(worker, snap, instance)  # absent from a good listing: seen not running
            if instance.state == RUNNING:
                found.append(instance.as_instance())
        return found

    def describe(self, credentials: Credentials, region: str, instance_ids: Iterable[str]) -> list[Instance]:
        worker, snap = self._enter()
        account = self._where(snap, credentials, region)
        found = []
        for instance_id in sorted(set(instance_ids)):
            instance = snap.instances.get(instance_id)
            if instance is None or (instance.account, instance.region) != (account, region):
                continue
            self._observe(worker, snap, instance)
            found.append(instance.as_instance())
        return found


WRITES = (
    "write_set",
    "put_status",
    "observe",
    "delete_orphan_set",
    "plan_scan",
    "fall_behind",
    "catch_up",
    "mark_listed",
    "set_mark",
    "forget_marks",
)


class FlakyStore(MemoryStore):
    """A MemoryStore whose next call of an armed write method (by a worker) raises ClientError."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: dict[str, int] = {}
        self.fired: list[str] = []

    def _maybe_fail(self, method: str) -> None:
        worker = CURRENT.get()
        if worker is None or not self.armed.get(method):
            return
        self.armed[method] -= 1
        worker.store_faulted = True
        self.fired.append(f"{method} in {worker.label}")
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected write failure"}},
            method,
        )


def _flaky(method: str) -> Callable[..., Any]:
    original = getattr(MemoryStore, method)

    def call(self: FlakyStore, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail(method)
        return original(self, *args, **kwargs)

    call.__name__ = method
    return call


for _method in WRITES:
    setattr(FlakyStore, _method, _flaky(_method))
