"""Never a wrong endpoint set: a model-based test of scans, events and edits against a model of EC2.

A Hypothesis state machine interleaves fleet changes (launch, stop, start,
terminate, retag, with hostile port and weight tag values), EventBridge events
(delayed, duplicated, reordered, concurrent with scans), overlapping full
scans, upstream and account edits through the API functions, and faults
(throttling and AccessDenied from EC2, a failing store write). Scans and
event handlers run in threads that pause at their first look at EC2 (see
`fakes.py`), so one rule starts work and a later one lets it finish.

An *observation* is what a worker saw of an instance; it is *applied* when
the worker finishes. The invariants (each test below checks one, so each
reports its own shrunk counterexample):

- (a) no set holds an instance whose newest applied observation (made after
  the upstream's spec was last changed) says it is not running or does not
  match the upstream's filters; nor an instance of another account or region;
- (b) no set shrinks unless the newest applied observation says the instance
  left (not running or not matching): never on a failed or skipped listing,
  an unresolved account or a stale observation; a set disappears only with
  its upstream;
- (c) no exception escapes a scan or an event handler (hostile tag values,
  failed listings and failed store writes are one upstream's or one group's
  problem);
- (d) at quiescence (every worker finished, faults cleared, one clean scan)
  every resolved upstream's set equals what the model says, address, port and
  weight included (ports and weights from tags: ASCII decimal in range, else
  the fallback), and its status is Accepted;
- (e) a worker that writes a set writes it from the upstream's current spec:
  each instance it observed is in the set exactly as the current spec gives it;
- (f) no set exists without its upstream.

The cases of issue 11 the random search reaches rarely (a stale event, an
account narrowed, an upstream deleted or changed during a scan, port tags
that `str.isdigit()` accepts) are also fixed sequences of the same machine,
below, checked against all six invariants.

`MODEL_EXAMPLES` (default 25) and `MODEL_STEPS` (default 30) set the number of
runs and steps per run; `MODEL_CHECKS` (default `abcdef`) the invariants
checked, so `MODEL_CHECKS=b` finds and shrinks a counterexample of (b) alone.
Runs are derandomized: a result reproduces.
Counters of what was explored go to `.run/model-stats.json`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chalicelib.domain.spec import Credentials
from chalicelib.domain.status import ACCEPTED
from chalicelib.usecases import admin, events
from chalicelib.usecases.scan import full_scan
from tests.conftest import ROOT, load_event
from tests.model.fakes import (
    HOME,
    OTHER,
    ROLE,
    RUNNING,
    STOPPED,
    TERMINATED,
    WRITES,
    Ec2Instance,
    FlakyStore,
    Fleet,
    ModelLister,
    Observation,
    Worker,
)

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("MODEL_STEPS", "30"))
CHECKS = "".join(sorted(set(os.environ.get("MODEL_CHECKS", "abcdef")) & set("abcdef"))) or "abcdef"
STATS_FILE = ROOT / ".run" / "model-stats.json"
REGIONS = ("us-east-1", "us-west-2")
NAMESPACE = "shop"
NAMES = ("u0", "u1", "u2", "u3")
MAX_INSTANCES = 10
MAX_PAUSED = 3

# Hostile tag values: `str.isdigit()` holds for '²', '٣' and '８０' though none is an ASCII port.
PORT_VALUES = ("8080", "9090", "080", "²", "٣", "８０", "0", "65536", "x", "")
WEIGHT_VALUES = ("5", "10000", "²", "３", "0", "10001")
TAG_VALUES: dict[str, tuple[str, ...]] = {
    "app": ("web", "api"),
    "App": ("web",),  # EC2 keys are case-sensitive; filters compare keys without case
    "env": ("prod", "dev"),
    "port": PORT_VALUES,
    "weight": WEIGHT_VALUES,
}
FILTERS = (("app", None), ("App", None), ("env", None), ("app", "web"), ("app", "api"), ("APP", "web"), ("env", "prod"))
CREDENTIALS = ("home", "role", "role-ext", "account")
ASCII_DECIMAL = re.compile(r"[0-9]+")

tags_strategy = st.fixed_dictionaries({}, optional={key: st.sampled_from(values) for key, values in TAG_VALUES.items()})


def account_of(credentials: Credentials) -> str:
    """Whose instances a group's credentials see (the event handler's `accounts`)."""
    return credentials.account or HOME


# --- the model's own view of upstreams and what they should hold ---------------------------------


@dataclass(frozen=True)
class ModelUpstream:
    name: str
    region: str
    filters: tuple[tuple[str, str | None], ...]
    port: int
    port_tag: str | None
    weight_tag: str | None
    credentials: str
    put_seq: int

    def document(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "region": self.region,
            "port": self.port,
            "filters": [
                {"key": key} if value is None else {"kvPair": {"key": key, "value": value}}
                for key, value in self.filters
            ],
        }
        if self.port_tag:
            block["portTag"] = self.port_tag
        if self.weight_tag:
            block["weightTag"] = self.weight_tag
        if self.credentials in ("role", "role-ext"):
            block["roleArn"] = ROLE
        if self.credentials == "role-ext":
            block["externalId"] = "upstream-own-id"
        if self.credentials == "account":
            block["account"] = "prod"
        return {"metadata": {"name": self.name, "namespace": NAMESPACE}, "spec": {"awsEc2": block}}

    def matches(self, tags: dict[str, str]) -> bool:
        for key, value in self.filters:
            if not any(k.lower() == key.lower() and (value is None or v == value) for k, v in tags.items()):
                return False
        return True

    def endpoint(self, state: str, tags: dict[str, str], address: str) -> tuple[str, int, int] | None:
        """(address, port, weight) this upstream gives the instance, None if it is not a member."""
        if state != RUNNING or not self.matches(tags):
            return None
        port = number(tags.get(self.port_tag) if self.port_tag else None, 1, 65535) or self.port
        weight = number(tags.get(self.weight_tag) if self.weight_tag else None, 1, 10_000) or 1
        return (address, port, weight)


def number(value: str | None, low: int, high: int) -> int | None:
    """A tag's number as docs/extensions.md promises it: ASCII decimal in [low, high], else None."""
    if value is None or not ASCII_DECIMAL.fullmatch(value):
        return None
    return int(value) if low <= int(value) <= high else None


@dataclass(frozen=True)
class ModelAccount:
    regions: tuple[str, ...]
    external_id: str


STATS: dict[str, Any] = {}


def bump(name: str, by: int = 1) -> None:
    STATS[name] = STATS.get(name, 0) + by


class Violation(AssertionError):
    pass


class EdsMachine(RuleBasedStateMachine):
    CHECKS: frozenset[str] = frozenset("abcdef")

    def __init__(self) -> None:
        super().__init__()
        bump("examples")
        self.fleet = Fleet()
        self.store = FlakyStore()
        self.lister = ModelLister(self.fleet, account_of)
        self.upstreams: dict[str, ModelUpstream] = {}
        self.account: ModelAccount | None = None
        self.account_seq = 0
        self.workers: list[Worker] = []
        self.obligations: dict[str, Observation] = {}  # newest applied observation of a clean worker
        self.justifiers: dict[str, Observation] = {}  # newest applied observation of any worker
        self.prev_sets: dict[str, dict[str, tuple[str, int, int]]] = {}
        self.touched: set[str] = set()  # upstreams whose spec or account changed in this step
        self.finished: list[Worker] = []  # workers that finished in this step
        self.log: list[str] = []
        self.healthy = True
        self._now = datetime(2026, 1, 1, tzinfo=UTC)
        self._events = 0

    # -- plumbing --------------------------------------------------------------------------------

    def clock(self) -> datetime:
        self._now += timedelta(seconds=1)
        return self._now

    def note(self, line: str) -> None:
        self.log.append(f"[seq {self.fleet.seq}] {line}")

    def fail(self, invariant: str, message: str) -> None:
        self.healthy = False
        trace = "\n  ".join(self.log[-40:])
        raise Violation(f"({invariant}) {message}\n steps so far:\n  {trace}")

    def key(self, name: str) -> str:
        return f"{NAMESPACE}/{name}"

    def group_of(self, upstream: ModelUpstream) -> tuple[str, str] | None:
        """(account, region) an upstream looks into, None while its account does not resolve."""
        if upstream.credentials == "home":
            return (HOME, upstream.region)
        if upstream.credentials == "account" and (self.account is None or upstream.region not in self.account.regions):
            return None
        return (OTHER, upstream.region)

    def spec_seq(self, upstream: ModelUpstream) -> int:
        return max(upstream.put_seq, self.account_seq if upstream.credentials == "account" else 0)

    def sets(self) -> dict[str, dict[str, tuple[str, int, int]]]:
        return {
            s.key: {e.instance_id: (e.address, e.port, e.weight) for e in s.endpoints}
            for s in self.store.list_endpoint_sets()
        }

    def paused(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.paused]

    def run(self, label: str, target: Any, pause: bool) -> Worker:
        worker = Worker(len(self.workers) + 1, f"{label}#{len(self.workers) + 1}", target)
        self.workers.append(worker)
        self.lister.fallback = worker
        bump("workers")
        worker.start()
        if pause and worker.paused:
            self.note(f"{worker.label} started, paused at EC2 (observes seq {self.fleet.seq})")
            STATS["max_paused"] = max(STATS.get("max_paused", 0), len(self.paused()))
        else:
            self.finish(worker)
        return worker

    def scan_target(self) -> Any:
        return lambda: full_scan(self.store, self.lister, self.clock)

    def finish(self, worker: Worker) -> None:
        if worker.paused:
            if len(self.paused()) > 1:
                bump("overlapping_releases")
            self.lister.fallback = worker
            worker.release()
        faults = f", store fault: {worker.store_faulted}" if worker.store_faulted else ""
        self.note(f"{worker.label} finished (observed seq {worker.snapshot.seq if worker.snapshot else '-'}{faults})")
        for instance_id, seen in worker.observations.items():
            if instance_id not in self.justifiers or seen.order > self.justifiers[instance_id].order:
                self.justifiers[instance_id] = seen
            clean = not worker.store_faulted and worker.error is None
            if clean and (instance_id not in self.obligations or seen.order > self.obligations[instance_id].order):
                self.obligations[instance_id] = seen
        self.finished.append(worker)
        # An event whose draining mark could not be written fails as a whole, on purpose: Lambda
        # retries a failed asynchronous invocation (then its failure queue keeps it), and a drain
        # warning must not be lost. Every other failure must stay inside its upstream or group.
        retried = isinstance(worker.error, ClientError) and worker.error.operation_name == "set_mark"
        if worker.error is not None and not retried:
            bump("escaped_exceptions")
            if "c" in self.CHECKS:
                self.fail("c", f"{worker.label} raised {worker.error!r}\n{worker.trace}")

    def release_all(self) -> None:
        for worker in self.paused():
            self.finish(worker)

    # -- the fleet -------------------------------------------------------------------------------

    def pick(self, index: int, alive: bool = True) -> Ec2Instance | None:
        pool = [i for i in self.fleet.instances.values() if not alive or i.state != TERMINATED]
        return pool[index % len(pool)] if pool else None

    @initialize(fleet=st.lists(st.tuples(st.sampled_from((HOME, OTHER)), tags_strategy), min_size=2, max_size=4))
    def seed_fleet(self, fleet: list[tuple[str, dict[str, str]]]) -> None:
        """A few running instances in the first region to start from (more come by `launch`)."""
        for account, tags in fleet:
            self.launch(account, REGIONS[0], tags)

    @initialize(
        filters=st.lists(st.sampled_from(FILTERS), max_size=1),
        port_tag=st.sampled_from((None, "port")),
        weight_tag=st.sampled_from((None, "weight")),
        credentials=st.sampled_from(CREDENTIALS),
    )
    def seed_upstream(
        self, filters: list[tuple[str, str | None]], port_tag: str | None, weight_tag: str | None, credentials: str
    ) -> None:
        """One upstream in the first region, and the named account it may use, to start from."""
        self.put_account([REGIONS[0]], "prod-ext-1")
        self.put_upstream(NAMES[0], REGIONS[0], filters, 80, port_tag, weight_tag, credentials)

    @precondition(lambda self: len(self.fleet.instances) < MAX_INSTANCES)
    @rule(account=st.sampled_from((HOME, OTHER)), region=st.sampled_from(REGIONS), tags=tags_strategy)
    def launch(self, account: str, region: str, tags: dict[str, str]) -> None:
        number_ = len(self.fleet.instances) + 1
        instance = Ec2Instance(f"i-{number_:017x}", account, region, RUNNING, dict(tags), f"10.0.{number_}.{number_}")
        self.fleet.instances[instance.instance_id] = instance
        self.fleet.tick()
        self.note(f"launch {instance.instance_id} in {account}/{region} tags={tags}")

    @rule(index=st.integers(0, MAX_INSTANCES), state=st.sampled_from((RUNNING, STOPPED, TERMINATED)))
    def set_state(self, index: int, state: str) -> None:
        instance = self.pick(index)
        if instance is None or instance.state == state:
            return
        instance.state = state
        self.fleet.tick()
        self.note(f"{instance.instance_id} -> {state}")

    @rule(index=st.integers(0, MAX_INSTANCES), key=st.sampled_from(sorted(TAG_VALUES)), data=st.data())
    def retag(self, index: int, key: str, data: st.DataObject) -> None:
        instance = self.pick(index)
        if instance is None:
            return
        value = data.draw(st.none() | st.sampled_from(TAG_VALUES[key]), label="value")
        if value is None:
            instance.tags.pop(key, None)
        else:
            instance.tags[key] = value
        self.fleet.tick()
        self.note(f"retag {instance.instance_id} {key}={value!r} -> {instance.tags}")

    # -- EC2's answers -------------------------------------------------------------------------

    @rule(
        account=st.sampled_from((HOME, OTHER)),
        region=st.sampled_from(REGIONS),
        code=st.sampled_from((None, "ThrottlingException", "UnauthorizedOperation")),
    )
    def lister_fault(self, account: str, region: str, code: str | None) -> None:
        if code is None:
            self.fleet.faults.pop((account, region), None)
        else:
            self.fleet.faults[(account, region)] = code
        self.note(f"EC2 in {account}/{region} answers {code or 'normally'}")

    @rule(method=st.sampled_from(WRITES))
    def store_fault(self, method: str) -> None:
        self.store.armed[method] = self.store.armed.get(method, 0) + 1
        self.note(f"the next store.{method} by a worker fails")

    # -- the API ---------------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(NAMES),
        region=st.sampled_from(REGIONS),
        filters=st.lists(st.sampled_from(FILTERS), max_size=2, unique=True),
        port=st.sampled_from((80, 8443)),
        port_tag=st.sampled_from((None, "port")),
        weight_tag=st.sampled_from((None, "weight")),
        credentials=st.sampled_from(CREDENTIALS),
    )
    def put_upstream(
        self,
        name: str,
        region: str,
        filters: list[tuple[str, str | None]],
        port: int,
        port_tag: str | None,
        weight_tag: str | None,
        credentials: str,
    ) -> None:
        seq = self.fleet.tick()
        upstream = ModelUpstream(name, region, tuple(filters), port, port_tag, weight_tag, credentials, seq)
        body = json.dumps(upstream.document())
        reply = admin.put_upstream(self.store, NAMESPACE, name, body, "application/json", self.clock())
        assert reply.status in (200, 201), reply.body
        self.upstreams[name] = upstream
        self.touched.add(self.key(name))
        self.note(f"PUT {name} {upstream.document()['spec']['awsEc2']}")

    @rule(name=st.sampled_from(NAMES))
    def delete_upstream(self, name: str) -> None:
        reply = admin.delete_upstream(self.store, NAMESPACE, name)
        assert reply.status == (200 if name in self.upstreams else 404), reply.body
        self.upstreams.pop(name, None)
        self.fleet.tick()
        self.touched.add(self.key(name))
        self.note(f"DELETE {name}: {reply.status}")

    def users(self) -> list[str]:
        return [self.key(u.name) for u in self.upstreams.values() if u.credentials == "account"]

    @rule(
        regions=st.lists(st.sampled_from(REGIONS), min_size=1, unique=True),
        external_id=st.sampled_from(("prod-ext-1", "prod-ext-2")),
    )
    def put_account(self, regions: list[str], external_id: str) -> None:
        body = {"accountId": OTHER, "assumeRole": "role/reader", "externalId": external_id, "regions": regions}
        reply = admin.put_account(self.store, "prod", json.dumps(body), "application/json")
        self.note(f"PUT /accounts/prod regions={sorted(regions)} externalId={external_id}: {reply.status}")
        if reply.status == 409:  # refused: it would strand its users (issue 11, case 3)
            return
        assert reply.status in (200, 201), reply.body
        self.account = ModelAccount(tuple(sorted(regions)), external_id)
        self.account_seq = self.fleet.tick()
        self.touched.update(self.users())

    @rule()
    def delete_account(self) -> None:
        reply = admin.delete_account(self.store, "prod")
        self.note(f"DELETE /accounts/prod: {reply.status}")
        if self.users():
            assert reply.status == 409, reply.body
            return
        assert reply.status == (200 if self.account else 404), reply.body
        self.account = None
        self.account_seq = self.fleet.tick()

    # -- scans and events ------------------------------------------------------------------------

    @precondition(lambda self: len(self.paused()) < MAX_PAUSED)
    @rule(pause=st.booleans())
    def scan(self, pause: bool) -> None:
        bump("scans")
        self.run("scan", self.scan_target(), pause)

    @precondition(lambda self: len(self.paused()) < MAX_PAUSED and bool(self.fleet.instances))
    @rule(
        index=st.integers(0, MAX_INSTANCES),
        kind=st.sampled_from(("state", "tag")),
        pause=st.booleans(),
        copies=st.integers(1, 2),
    )
    def event(self, index: int, kind: str, pause: bool, copies: int) -> None:
        instance = self.pick(index, alive=False)
        assert instance is not None
        for _ in range(min(copies, MAX_PAUSED - len(self.paused()))):  # EventBridge delivers at least once
            self._events += 1
            raw = self.event_for(instance, kind)
            bump("events")

            def handle(raw: dict[str, Any] = raw) -> Any:
                return events.handle(raw, self.store, self.lister, account_of, self.clock)

            self.run(f"{kind}-event({instance.instance_id[-2:]})", handle, pause)

    def event_for(self, instance: Ec2Instance, kind: str) -> dict[str, Any]:
        """The event AWS sends now about this instance, from the real-shape samples."""
        if kind == "state":
            raw = load_event("ec2-state-change.json")
            raw["detail"].update({"instance-id": instance.instance_id, "state": instance.state})
        else:
            raw = load_event("tag-change.json")
            raw["detail"]["tags"] = dict(instance.tags)
            raw["detail"]["changed-tag-keys"] = sorted(instance.tags)
        raw.update(
            id=f"model-{self._events}",
            account=instance.account,
            region=instance.region,
            resources=[f"arn:aws:ec2:{instance.region}:{instance.account}:instance/{instance.instance_id}"],
        )
        return raw

    @precondition(lambda self: bool(self.paused()))
    @rule(index=st.integers(0, MAX_PAUSED))
    def release(self, index: int) -> None:
        paused = self.paused()
        worker = paused[index % len(paused)]
        if worker is not paused[0]:
            bump("reordered_releases")
        self.finish(worker)

    @rule()
    def quiesce(self) -> None:
        self.settle()

    def settle(self) -> None:
        """Everything finishes, faults clear, one clean scan: then every set is what the model says."""
        self.release_all()
        self.fleet.faults.clear()
        self.store.armed.clear()
        self.note("quiescence: faults cleared, one clean scan")
        self.run("clean-scan", self.scan_target(), pause=False)
        bump("quiescence_checks")
        if "d" not in self.CHECKS:
            return
        sets = self.sets()
        for upstream in self.upstreams.values():
            group = self.group_of(upstream)
            if group is None:
                continue
            key = self.key(upstream.name)
            expected = {}
            for instance in self.fleet.instances.values():
                if (instance.account, instance.region) == group:
                    endpoint = upstream.endpoint(instance.state, instance.tags, instance.private_ip)
                    if endpoint is not None:
                        expected[instance.instance_id] = endpoint
            actual = sets.get(key)
            if actual != expected:
                self.fail("d", f"after a clean scan {key} holds {actual}, the model says {expected}")
            entry = self.store.get_upstream(NAMESPACE, upstream.name)
            assert entry is not None
            if entry.status.state != ACCEPTED:
                self.fail("d", f"after a clean scan {key} is {entry.status}")

    # -- the invariants, after every step --------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        bump("steps")
        self.healthy = False
        sets = self.sets()
        if "f" in self.CHECKS:
            for key in sets:
                if key.partition("/")[2] not in self.upstreams:
                    self.fail("f", f"{key} has an endpoint set but no upstream")
        for upstream in self.upstreams.values():
            key = self.key(upstream.name)
            group = self.group_of(upstream)
            held = sets.get(key, {})
            if "a" in self.CHECKS and group is not None:
                self.check_members(upstream, group, held, written=sets.get(key) != self.prev_sets.get(key))
            if "b" in self.CHECKS and key in self.prev_sets and key not in self.touched:
                self.check_no_shrink(upstream, group, self.prev_sets[key], sets.get(key))
            if "e" in self.CHECKS and group is not None and sets.get(key) != self.prev_sets.get(key):
                self.check_written_from_current_spec(upstream, group, held)
        self.prev_sets = sets
        self.touched = set()
        self.finished = []
        self.healthy = True

    def check_members(
        self, upstream: ModelUpstream, group: tuple[str, str], held: dict[str, Any], written: bool
    ) -> None:
        key = self.key(upstream.name)
        for instance_id in held:
            home = self.fleet.instances.get(instance_id)
            if home is None or (home.account, home.region) != group:
                if written and key not in self.touched:
                    self.fail("a", f"{key} (looks into {group}) holds {instance_id} of another account or region")
                continue  # a set not rewritten since its upstream moved: the next scan's to fix
            seen = self.obligations.get(instance_id)
            if seen is None or seen.seq < self.spec_seq(upstream):
                continue
            if seen.state != RUNNING:
                self.fail(
                    "a",
                    f"{key} holds {instance_id}, whose newest applied observation (seq {seen.seq}) says {seen.state}",
                )
            if not upstream.matches(dict(seen.tags)):
                self.fail(
                    "a",
                    f"{key} holds {instance_id}, whose newest applied observation (seq {seen.seq}, "
                    f"tags {dict(seen.tags)}) does not match {upstream.filters}",
                )

    def check_no_shrink(
        self,
        upstream: ModelUpstream,
        group: tuple[str, str] | None,
        before: dict[str, Any],
        after: dict[str, Any] | None,
    ) -> None:
        key = self.key(upstream.name)
        if after is None:
            self.fail("b", f"the endpoint set of {key} disappeared though the upstream exists")
        for instance_id in sorted(set(before) - set(after)):
            seen = self.justifiers.get(instance_id)
            home = self.fleet.instances[instance_id]
            if group is not None and (home.account, home.region) != group:
                continue  # the upstream now looks elsewhere: it was never this instance's upstream
            if group is None:
                self.fail("b", f"{key}, whose account does not resolve, lost {instance_id}")
            if seen is None or seen.seq < self.spec_seq(upstream):
                self.fail(
                    "b",
                    f"{key} lost {instance_id} with no applied observation since its spec "
                    "(a failed or skipped listing)",
                )
            if seen.state == RUNNING and upstream.matches(dict(seen.tags)):
                self.fail(
                    "b",
                    f"{key} lost {instance_id}, though its newest applied observation (seq {seen.seq}) "
                    "says running and matching: a stale observation removed it",
                )

    def check_written_from_current_spec(
        self, upstream: ModelUpstream, group: tuple[str, str], held: dict[str, Any]
    ) -> None:
        key = self.key(upstream.name)
        for worker in self.finished:
            for instance_id, seen in worker.observations.items():
                home = self.fleet.instances[instance_id]
                if (home.account, home.region) != group or self.obligations.get(instance_id) != seen:
                    continue
                wanted = upstream.endpoint(seen.state, dict(seen.tags), seen.private_ip)
                if held.get(instance_id) != wanted:
                    self.fail(
                        "e",
                        f"{worker.label} wrote {key} with {instance_id} as {held.get(instance_id)}; its observation "
                        f"(seq {seen.seq}, {seen.state}, tags {dict(seen.tags)}) and the current spec give {wanted}",
                    )

    def teardown(self) -> None:
        if self.healthy:
            self.settle()  # (c) and (d) once more at the end of every run
        else:
            for worker in self.paused():
                worker.release()


def run_model(checks: str) -> None:
    machine = type(f"Machine_{checks}", (EdsMachine,), {"CHECKS": frozenset(checks)})
    STATS.clear()
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        record(checks)


def record(checks: str) -> None:
    STATS_FILE.parent.mkdir(exist_ok=True)
    try:
        everything = json.loads(STATS_FILE.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[checks] = {"examples_setting": EXAMPLES, "steps_setting": STEPS, **STATS}
    STATS_FILE.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
    print(f"model ({checks}): {json.dumps(STATS, sort_keys=True)}")


@pytest.fixture(autouse=True)
def quiet_service_logs(request: pytest.FixtureRequest) -> None:
    """Thousands of scans: the service's log lines would drown the report."""
    from chalicelib import observability

    level = observability.logger.log_level
    observability.logger.setLevel("CRITICAL")
    request.addfinalizer(lambda: observability.logger.setLevel(level))


@pytest.mark.timeout(1800)  # passing, well under a minute; failing, Hypothesis shrinks the counterexample
def test_every_set_follows_the_rules_through_any_interleaving() -> None:
    """All six invariants by default; `MODEL_CHECKS=b` checks only (b), to see its own counterexample."""
    run_model(CHECKS)


# --- the cases of issue 11, as fixed sequences of the same machine -------------------------------


def machine() -> EdsMachine:
    """A fresh machine with every invariant, driven by hand; one upstream over `app=web` in HOME."""
    state = EdsMachine()
    state.launch(HOME, REGIONS[0], {"app": "web"})
    state.put_upstream(NAMES[0], REGIONS[0], [("app", "web")], 80, None, None, "home")
    state.rules_hold()
    state.scan(pause=False)
    state.rules_hold()
    return state


def steps(state: EdsMachine, *moves: tuple[str, tuple[Any, ...]]) -> None:
    """Each move, then the invariants; at the end, quiescence, as Hypothesis' teardown would."""
    try:
        for name, args in moves:
            getattr(state, name)(*args)
            state.rules_hold()
        state.teardown()
    finally:
        for worker in state.paused():
            worker.release()


def test_a_stale_tag_event_does_not_bring_back_a_stopped_instance() -> None:
    """Case 5: a tag event describes web-1 running, finishes after web-1's stop was applied."""
    steps(
        machine(),
        ("event", (0, "tag", True, 1)),  # describes web-1 running, then waits
        ("set_state", (0, STOPPED)),
        ("event", (0, "state", False, 1)),  # the stop event removes web-1
        ("release", (0,)),  # the stale tag event finishes
    )


def test_narrowing_an_account_keeps_the_sets_of_its_users() -> None:
    """Case 3: PUT /accounts/prod without the region its upstream uses (or a 409 naming it)."""
    state = machine()
    steps(
        state,
        ("put_account", ([REGIONS[0]], "prod-ext-1")),
        ("put_upstream", (NAMES[1], REGIONS[0], [], 80, None, None, "account")),
        ("scan", (False,)),
        ("put_account", ([REGIONS[1]], "prod-ext-1")),
        ("scan", (False,)),
    )


def test_an_upstream_deleted_during_a_scan_has_no_set_after_it() -> None:
    """Case 7: the scan read the upstream, the user deleted it, the scan writes."""
    state = machine()
    steps(
        state,
        ("put_upstream", (NAMES[1], REGIONS[0], [], 80, None, None, "home")),
        ("scan", (True,)),
        ("delete_upstream", (NAMES[1],)),
        ("release", (0,)),
    )


def test_an_upstream_changed_during_a_scan_is_written_with_its_new_spec() -> None:
    """Case 7: the scan read a new upstream with port 80, the user put port 8443, the scan writes."""
    steps(
        machine(),
        ("put_upstream", (NAMES[1], REGIONS[0], [("app", "web")], 80, None, None, "home")),
        ("scan", (True,)),
        ("put_upstream", (NAMES[1], REGIONS[0], [("app", "web")], 8443, None, None, "home")),
        ("release", (0,)),
    )


@pytest.mark.parametrize("value", ["²", "٣", "８０", "65536", "0"])
def test_a_port_tag_that_is_not_an_ascii_port_falls_back_and_stops_nothing(value: str) -> None:
    """Case 1: `str.isdigit()` holds for some of these; none is a port. Other upstreams still update."""
    state = machine()
    state.put_upstream(NAMES[1], REGIONS[0], [("app", "web")], 8443, "port", None, "home")
    state.rules_hold()
    next(iter(state.fleet.instances.values())).tags["port"] = value
    state.fleet.tick()
    steps(state, ("scan", (False,)))
