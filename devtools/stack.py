"""Real processes for local runs and end-to-end tests: moto's server and `chalice local`.

Both `make run` and the e2e tests start the same things the same way, so
what the tests drive is what a developer sees.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

PROJECT_DIR = Path(__file__).resolve().parent.parent
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until `url` answers at all (any HTTP status), or fail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Process:
    """A child process in its own process group, stopped with everything it started."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path | None = None) -> None:
        self.log: IO[bytes] | None = open(log, "wb") if log else None  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            args,
            cwd=PROJECT_DIR,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log is not None else None,
            start_new_session=True,
        )

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self._terminate(timeout)
        finally:
            if self.log is not None:
                self.log.close()

    def _terminate(self, timeout: float) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        except ProcessLookupError:
            pass


def aws_environment(endpoint: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose AWS clients all talk to the emulator at `endpoint`."""
    env = dict(base if base is not None else os.environ)
    env.update(FAKE_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(key, None)
    return env


def ensure_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} on 127.0.0.1 is in use: stop what serves there or choose another port")


def start_moto(port: int, log: Path | None = None) -> tuple[Process, str]:
    ensure_free(port)
    endpoint = f"http://127.0.0.1:{port}"
    process = Process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log)
    try:
        wait_http(f"{endpoint}/moto-api/", process.popen)
    except BaseException:
        process.stop()  # never left running when it did not come up in time
        raise
    return process, endpoint


def seed_fleet(env: dict[str, str], timeout: float = 300) -> dict[str, str]:
    """`devtools.fleet seed` against the emulator `env` points at (the demo fleet, secrets and
    upstreams): {member name: instance id}. Raises with the tail of its stderr when it fails."""
    seeding = subprocess.run(
        [sys.executable, "-m", "devtools.fleet", "seed"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if seeding.returncode != 0:
        raise RuntimeError(f"devtools.fleet seed failed: {seeding.stderr.strip()[-2000:]}")
    return dict(json.loads(seeding.stdout.strip().splitlines()[-1]))


def start_chalice(port: int, env: dict[str, str], stage: str = "dev", log: Path | None = None) -> tuple[Process, str]:
    ensure_free(port)
    base = f"http://127.0.0.1:{port}"
    chalice = str(Path(sys.executable).with_name("chalice"))
    process = Process(
        [chalice, "local", "--no-autoreload", "--host", "127.0.0.1", "--port", str(port), "--stage", stage], env, log
    )
    try:
        wait_http(f"{base}/healthz", process.popen)
    except BaseException:
        process.stop()
        raise
    return process, base
