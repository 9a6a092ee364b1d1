"""ec2-eds sidecar: poll `GET /endpoints/{namespace}/{name}`, write Envoy file-based EDS.

For each configured upstream the agent polls the ec2-eds API with
`If-None-Match` set to the last ETag. A 200 is converted to an Envoy
`DiscoveryResponse` holding one `ClusterLoadAssignment` and moved atomically
into `{out_dir}/{cluster_name}.json`, the file Envoy's `path_config_source`
watches. A 304 leaves the file alone. Any error (refused, timeout, 4xx/5xx,
invalid JSON, a body that does not match the contract) leaves the last good
file untouched, logs one line and backs off exponentially with jitter, per
upstream; a success resets the backoff.

Standard library only, as is the renderer it shares with the server's REST
EDS (`chalicelib/render/cla.py`, which imports nothing else of `chalicelib`).
botocore is imported lazily, and only when SigV4 signing (`--sigv4-region`)
is configured.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import enum
import http.client
import ipaddress
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib.render import cla

__version__ = "0.1.0"

log = logging.getLogger("ec2_eds_sidecar")

# envoy.config.core.v3.HealthStatus
HEALTH_STATUSES = frozenset({"UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"})
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_BACKOFF_MAX = 60.0
MAX_BODY_BYTES = 16 * 1024 * 1024

# Always matched with fullmatch: `$` would let a trailing newline through.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label, as the API requires
UINT32_MAX = 2**32 - 1  # load_balancing_weight is a UInt32Value; Envoy requires >= 1


class ConfigError(ValueError):
    """The configuration cannot be run with."""


class PollError(Exception):
    """One poll failed; the message is the one-line reason that gets logged."""


class ShapeError(PollError):
    """The body is JSON but not the documented `GET /endpoints` shape."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Upstream:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Upstream:
        namespace, sep, name = text.strip().partition("/")
        if not sep or not _LABEL.fullmatch(namespace) or not _LABEL.fullmatch(name):
            raise ConfigError(f"upstream {text!r}: expected namespace/name (DNS-1123 labels)")
        return cls(namespace, name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cluster_name(self) -> str:
        """Gloo's cluster name, `{name}_{namespace}`: the only name this upstream's file may have."""
        return f"{self.name}_{self.namespace}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Config:
    base_url: str
    upstreams: tuple[Upstream, ...]
    out_dir: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    backoff_max: float = DEFAULT_BACKOFF_MAX
    region: str | None = None  # locality.region of every endpoint; default: the `region` the API serves
    sigv4_region: str | None = None  # sign requests (API Gateway IAM auth) when set
    sigv4_service: str = "execute-api"

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"base URL {self.base_url!r}: expected http(s)://host[:port][/stage]")
        if parsed.query or parsed.fragment:
            raise ConfigError(f"base URL {self.base_url!r}: no query or fragment, please")
        if not self.upstreams:
            raise ConfigError("no upstreams configured (namespace/name ...)")
        if len(set(self.upstreams)) != len(self.upstreams):
            raise ConfigError("an upstream is listed twice")
        if not self.out_dir:
            raise ConfigError("no output directory configured")
        if not self.interval > 0:
            raise ConfigError("interval must be > 0 seconds")
        if not self.timeout > 0:
            raise ConfigError("timeout must be > 0 seconds")
        if not self.backoff_max > 0:
            raise ConfigError("backoff max must be > 0 seconds")

    def url(self, upstream: Upstream) -> str:
        namespace, name = (urllib.parse.quote(part, safe="") for part in (upstream.namespace, upstream.name))
        return f"{self.base_url.rstrip('/')}/endpoints/{namespace}/{name}"


# --------------------------------------------------------------------------- conversion


def _require(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ShapeError(f"{where}{key}: missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ShapeError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    """One validated endpoint of a `GET /endpoints` body, as the renderer takes it."""

    address: str
    port: int
    instance_id: str
    zone: str
    health: str
    weight: int = 1
    metadata: tuple[tuple[str, str], ...] = ()


def to_discovery_response(body: Any, region: str | None = None, expect: Upstream | None = None) -> dict[str, Any]:
    """The `GET /endpoints` body as an Envoy DiscoveryResponse (proto3 JSON) with one ClusterLoadAssignment.

    Raises ShapeError when the body does not match the contract, so that
    nothing half-understood ever reaches Envoy. The rendering is the server's
    own (`chalicelib.render.cla`), so the file holds what REST EDS would serve.
    """
    if not isinstance(body, dict):
        raise ShapeError(f"body: expected a JSON object, got {type(body).__name__}")
    cluster_name, version = _identity(body, expect)
    endpoints = _require(body, "endpoints", list, "")
    entries = [_entry(entry, index) for index, entry in enumerate(endpoints)]
    served_region = body.get("region")
    if served_region is not None and not isinstance(served_region, str):
        raise ShapeError("region: expected a string")
    assignment = cla.assignment(cluster_name, region or served_region or None, entries)
    return cla.discovery_response(version, [assignment])


def _identity(body: dict[str, Any], expect: Upstream | None) -> tuple[str, str]:
    """The reply's cluster name and version, once it is known to answer for the upstream asked for."""
    cluster_name = _require(body, "cluster_name", str, "")
    version = _require(body, "version", str, "")
    if not version or not version.isprintable():
        raise ShapeError(f"version: {version[:80]!r} is not a version")
    namespace, name = _require(body, "namespace", str, ""), _require(body, "name", str, "")
    if not _LABEL.fullmatch(namespace) or not _LABEL.fullmatch(name):
        raise ShapeError(f"namespace/name: {namespace[:80]!r}/{name[:80]!r} are not DNS-1123 labels")
    if expect is not None and (namespace, name) != (expect.namespace, expect.name):
        raise ShapeError(f"namespace/name: the API answered {namespace[:80]!r}/{name[:80]!r} for {expect.key}")
    # The cluster (and so the file) is named by the upstream, never by the reply alone.
    if cluster_name != f"{name}_{namespace}":
        raise ShapeError(f"cluster_name: {cluster_name[:80]!r} is not {name}_{namespace}")
    return cluster_name, version


def _entry(entry: Any, index: int) -> Entry:
    """One endpoint of the reply, checked against the contract and Envoy's ranges."""
    where = f"endpoints[{index}]."
    if not isinstance(entry, dict):
        raise ShapeError(f"endpoints[{index}]: expected an object")
    address = _require(entry, "address", str, where)
    try:  # Envoy's socket_address takes an IP literal unless a resolver is named
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ShapeError(f"{where}address: {address[:80]!r} is not an IP address") from None
    port = _require(entry, "port", int, where)
    if not 1 <= port <= 65535:
        raise ShapeError(f"{where}port: {port} is outside 1-65535")
    instance_id = _text(entry, "instance_id", where)
    zone = _text(entry, "zone", where)
    health = _require(entry, "health", str, where).upper()
    if health not in HEALTH_STATUSES:
        raise ShapeError(f"{where}health: {health!r} is not an Envoy health status")
    return Entry(address, port, instance_id, zone, health, _weight(entry, where), _metadata(entry, where))


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    text: str = _require(entry, key, str, where)
    if not text.isprintable() or len(text) > 255:
        raise ShapeError(f"{where}{key}: {text[:80]!r} is not printable text of at most 255 characters")
    return text


def _weight(entry: dict[str, Any], where: str) -> int:
    weight = entry.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= UINT32_MAX:
        raise ShapeError(f"{where}weight: {str(weight)[:40]} is not an integer from 1 to {UINT32_MAX}")
    return weight


def _metadata(entry: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ShapeError(f"{where}metadata: expected an object of strings")
    return tuple(metadata.items())


def render(response: dict[str, Any]) -> bytes:
    """Stable bytes: equal content, equal file."""
    return (json.dumps(response, indent=2, ensure_ascii=False) + "\n").encode()


# --------------------------------------------------------------------------- files


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part.

    A temp file in the same directory, fsync, os.replace (a rename, which
    Envoy's watcher sees as a move into place), then fsync of the directory.
    On any failure the temp file is removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; Envoy may run as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # durability of the rename; not every platform can
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- HTTP


class SigV4Signer:
    """Signs requests with botocore's SigV4 (API Gateway IAM auth); credentials from the default chain."""

    def __init__(self, region: str, service: str = "execute-api") -> None:
        try:
            import botocore.session  # noqa: PLC0415 - lazily, only when signing is configured
        except ImportError as err:
            raise ConfigError("SigV4 signing needs botocore: pip install botocore") from err
        self.region = region
        self.service = service
        self._session = botocore.session.get_session()
        self._credentials: Any = None

    def headers(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        if self._credentials is None:
            self._credentials = self._session.get_credentials()
        if self._credentials is None:
            raise PollError("SigV4: no AWS credentials found (botocore default chain)")
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        SigV4Auth(self._credentials.get_frozen_credentials(), self.service, self.region).add_auth(request)
        return {key: value for key, value in request.headers.items()}


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would drop the signature and hide a wrong base URL: report it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http_get(url: str, headers: dict[str, str], timeout: float) -> HttpResult:
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
            return HttpResult(response.status, {k.lower(): v for k, v in response.headers.items()}, body)
    except urllib.error.HTTPError as err:
        with err:
            body = err.read(MAX_BODY_BYTES + 1) if err.fp is not None else b""
            return HttpResult(err.code, {k.lower(): v for k, v in (err.headers or {}).items()}, body)
    except urllib.error.URLError as err:
        raise PollError(_describe(err.reason, timeout)) from err
    except (OSError, http.client.HTTPException, ValueError) as err:  # timeouts, resets, broken responses
        raise PollError(_describe(err, timeout)) from err


def _describe(reason: Any, timeout: float) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
        return f"{type(reason).__name__}: {text}" if type(reason).__name__ not in text else text
    return str(reason)


def _error_detail(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(body).get("error")
        if isinstance(message, str):
            return f": {message[:200]}"
    return ""


# --------------------------------------------------------------------------- backoff


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": failure n waits in [d/2, d], d = min(cap, base * 2**n).

    With the defaults (base = the 5 s interval, cap 60 s): about 10, 20, 40,
    60, 60 ... seconds, never sooner than the normal interval after the
    first failure. A success resets it.
    """

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def ceiling(self, failures: int | None = None) -> float:
        n = self.failures if failures is None else failures
        cap = max(self.cap, self.base)  # a long interval is never shortened by the cap
        return min(cap, self.base * 2 ** min(n, 32))

    def fail(self) -> float:
        self.failures += 1
        ceiling = self.ceiling()
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


# --------------------------------------------------------------------------- the agent


class Outcome(enum.Enum):
    WRITTEN = "written"  # 200, new content moved into place
    UNCHANGED = "unchanged"  # 200, the file already held exactly these bytes
    NOT_MODIFIED = "not-modified"  # 304
    ERROR = "error"  # file untouched, backing off

    @property
    def ok(self) -> bool:
        return self is not Outcome.ERROR


@dataclass
class UpstreamState:
    upstream: Upstream
    backoff: Backoff
    etag: str | None = None
    path: str | None = None  # the file last written for it
    next_due: float = 0.0
    last_error: str | None = None


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        get: Callable[[str, dict[str, str], float], HttpResult] = http_get,
        once: bool = False,
    ) -> None:
        self.config = config
        self.once = once  # a single pass: no "retry in" in the error lines
        self.clock = clock
        self.get = get
        rng = rng or random.Random()
        self.signer = SigV4Signer(config.sigv4_region, config.sigv4_service) if config.sigv4_region else None
        self.states = {
            upstream: UpstreamState(upstream, Backoff(config.interval, config.backoff_max, rng))
            for upstream in config.upstreams
        }

    # one upstream, one request ------------------------------------------------------------

    def path_of(self, upstream: Upstream) -> str:
        """The one file this upstream may write: `{out_dir}/{name}_{namespace}.json`, from the configuration."""
        return os.path.join(self.config.out_dir, f"{upstream.cluster_name}.json")

    def poll(self, upstream: Upstream) -> Outcome:
        """Fetch one upstream and update its file; never raises for a failed poll."""
        state = self.states[upstream]
        try:
            outcome = self._poll(state)
        except PollError as err:
            return self._failed(state, str(err))
        except OSError as err:  # writing the file
            return self._failed(state, f"cannot write the file: {_describe(err, self.config.timeout)}")
        if state.backoff.failures:
            log.info("%s: recovered after %d failed polls", upstream, state.backoff.failures)
        state.backoff.reset()
        state.last_error = None
        state.next_due = self.clock() + self.config.interval
        return outcome

    def _failed(self, state: UpstreamState, reason: str) -> Outcome:
        delay = state.backoff.fail()
        state.last_error = reason
        state.next_due = self.clock() + delay
        path = self.path_of(state.upstream)
        kept = f"keeping {path}" if os.path.exists(path) else "no file written yet"
        if self.once:
            log.warning("%s: %s; %s", state.upstream, reason, kept)
        else:
            log.warning(
                "%s: %s; %s; retry in %.1f s (failure %d)", state.upstream, reason, kept, delay, state.backoff.failures
            )
        return Outcome.ERROR

    def _poll(self, state: UpstreamState) -> Outcome:
        url = self.config.url(state.upstream)
        headers = {"Accept": "application/json", "User-Agent": f"ec2-eds-sidecar/{__version__}"}
        # Only ask for a 304 while the file it would keep is still there.
        if state.etag and state.path and os.path.exists(state.path):
            headers["If-None-Match"] = state.etag
        if self.signer is not None:
            headers = self.signer.headers("GET", url, headers)
        result = self.get(url, headers, self.config.timeout)

        if result.status == 304:
            if "If-None-Match" not in headers:
                raise PollError("HTTP 304 to a request without If-None-Match")
            log.debug("%s: not modified (%s)", state.upstream, state.etag)
            return Outcome.NOT_MODIFIED
        if result.status != 200:
            raise PollError(f"HTTP {result.status}{_error_detail(result.body)}")
        if len(result.body) > MAX_BODY_BYTES:
            raise PollError(f"body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(result.body)
        except (ValueError, UnicodeDecodeError) as err:
            raise PollError(f"invalid JSON: {err}") from err
        response = to_discovery_response(body, self.config.region, state.upstream)
        path = self.path_of(state.upstream)  # the configured file, whatever the reply says
        data = render(response)

        if read_bytes(path) == data:
            outcome = Outcome.UNCHANGED
        else:
            os.makedirs(self.config.out_dir, exist_ok=True)
            write_atomic(path, data)
            outcome = Outcome.WRITTEN
            count = len(body["endpoints"])
            log.info("%s: wrote %s (version %s, %d endpoints)", state.upstream, path, response["version_info"], count)
        # Only now, with the file in place, is the ETag ours: a failed write must not earn a 304 later.
        state.etag = result.headers.get("etag")
        state.path = path
        return outcome

    # all upstreams ------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """One pass over every upstream; True when every poll succeeded (and none was skipped by `stop`)."""
        ok = True
        for upstream in self.config.upstreams:
            if stop is not None and stop.is_set():
                return False
            ok = self.poll(upstream).ok and ok
        return ok

    def run(self, stop: threading.Event) -> None:
        """Poll each upstream when it is due until `stop` is set."""
        while not stop.is_set():
            for upstream, state in self.states.items():
                if stop.is_set():
                    return
                if state.next_due <= self.clock():
                    self.poll(upstream)
            next_due = min(state.next_due for state in self.states.values())
            stop.wait(max(0.0, next_due - self.clock()))


# --------------------------------------------------------------------------- command line


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    return [item for item in re.split(r"[\s,]+", str(value)) if item]


# Settings a config file and a flag can both give (the flag wins); a file may also list `upstreams`.
SETTINGS = (
    "base_url",
    "out_dir",
    "interval",
    "timeout",
    "backoff_max",
    "region",
    "sigv4_region",
    "sigv4_service",
    "log_level",
)


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON object, or an INI file with a [sidecar] section; keys as the long flags, with _ for -."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(f"config {path}: {err.strerror or err}") from err
    if path.endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"config {path}: invalid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a JSON object")
    else:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text, source=path)
        except configparser.Error as err:
            raise ConfigError(f"config {path}: {err}") from err
        if not parser.has_section("sidecar"):
            raise ConfigError(f"config {path}: no [sidecar] section")
        data = dict(parser.items("sidecar"))
    data = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(data) - {"upstreams", *SETTINGS})
    if unknown:
        raise ConfigError(f"config {path}: unknown key(s) {', '.join(unknown)}")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar",
        description="Poll ec2-eds GET /endpoints/{namespace}/{name} and write Envoy file-based EDS "
        "(DiscoveryResponse JSON) to OUT_DIR/{cluster_name}.json, atomically.",
    )
    parser.add_argument("upstreams", nargs="*", metavar="NAMESPACE/NAME", help="upstreams to follow")
    parser.add_argument("-c", "--config", help="JSON or INI ([sidecar] section) file; flags override it")
    parser.add_argument("--base-url", help="the ec2-eds API, e.g. https://abc.execute-api.us-east-1.amazonaws.com/api")
    parser.add_argument("--out-dir", help="where {cluster_name}.json files are written")
    parser.add_argument("--interval", type=float, help=f"seconds between polls ({DEFAULT_INTERVAL:g})")
    parser.add_argument("--timeout", type=float, help=f"seconds per HTTP request ({DEFAULT_TIMEOUT:g})")
    parser.add_argument(
        "--backoff-max", type=float, help=f"cap of the error backoff in seconds ({DEFAULT_BACKOFF_MAX:g})"
    )
    parser.add_argument("--region", help="locality.region of every endpoint (default: the region the API serves)")
    parser.add_argument("--sigv4-region", help="sign requests with SigV4 for this region (API Gateway IAM auth)")
    parser.add_argument("--sigv4-service", help="SigV4 service name (execute-api)")
    parser.add_argument("--once", action="store_true", help="one pass, exit 0 if every upstream succeeded, else 1")
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("--version", action="version", version=f"ec2-eds-sidecar {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[Config, str]:
    data = load_config_file(args.config) if args.config else {}
    for key in SETTINGS:
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    upstreams = list(args.upstreams) or _split(data.get("upstreams", []))

    def number(key: str, default: float) -> float:
        try:
            return float(data.get(key, default))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: {data[key]!r} is not a number") from err

    if not data.get("base_url"):
        raise ConfigError("no base URL configured (--base-url)")
    config = Config(
        base_url=str(data["base_url"]),
        upstreams=tuple(Upstream.parse(text) for text in upstreams),
        out_dir=str(data.get("out_dir") or ""),
        interval=number("interval", DEFAULT_INTERVAL),
        timeout=number("timeout", DEFAULT_TIMEOUT),
        backoff_max=number("backoff_max", DEFAULT_BACKOFF_MAX),
        region=str(data["region"]) if data.get("region") else None,
        sigv4_region=str(data["sigv4_region"]) if data.get("sigv4_region") else None,
        sigv4_service=str(data.get("sigv4_service") or "execute-api"),
    )
    return config, str(data.get("log_level") or "INFO").upper()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, level = config_from_args(args)
    except ConfigError as err:
        parser.error(str(err))
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s ec2-eds-sidecar: %(message)s",
    )
    try:
        agent = Agent(config, once=args.once)
    except ConfigError as err:
        parser.error(str(err))

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)  # no logging inside a signal handler
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.once:
            status = 0 if agent.run_once(stop) else 1
        else:
            log.info(
                "following %s at %s every %g s, writing to %s",
                ", ".join(map(str, config.upstreams)),
                config.base_url,
                config.interval,
                config.out_dir,
            )
            agent.run(stop)
            status = 0
        if received:
            log.info("%s received: stopped", received[0])
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
