"""devtools/envoy_rest_poll.py as a user runs it: a closed port is one line, and --help says all it does."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "devtools" / "envoy_rest_poll.py"


def poll(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is


def test_a_closed_port_is_one_line_and_a_non_zero_exit() -> None:
    port = closed_port()

    result = poll(f"http://127.0.0.1:{port}", "ec2-demo-upstream_gloo-system")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: cannot reach http://127.0.0.1:{port}/v3/discovery:endpoints: [Errno 111] Connection refused"
    ]


def test_help_describes_the_whole_check_and_every_argument() -> None:
    result = poll("--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "check every answer strictly against Envoy's own protos" in text
    assert "expects 304 with no body" in text and "exits 1 on the first violation" in text
    for argument in ("base_url", "clusters", "--timeout"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(argument))
        assert len(line.split()) > 1 or argument == "--timeout", line
    assert "(default: 10)" in text
