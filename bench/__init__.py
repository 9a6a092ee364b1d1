"""`make bench`: cost and speed of ec2-eds, side by side with Prometheus' ec2_sd (see bench/README.md)."""

from __future__ import annotations

import sys
import time

STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the run started (stdout is for the table)."""
    print(f"{time.monotonic() - STARTED:6.0f}s {message}", file=sys.stderr, flush=True)
