"""`make run`: ec2-eds on the embedded default, everything on loopback.

Starts moto's server as the AWS, creates the tables, the demo fleet, the
secrets and the seed upstreams, serves the API with `chalice local` and runs
the same full reconcile the schedule runs, every few seconds. Ctrl-C stops
all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import time
from pathlib import Path

import boto3

from chalicelib import runtime
from chalicelib.discovery import full_scan
from chalicelib.observability import logger
from devtools import fleet, stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="API port (8000)")
    parser.add_argument(
        "--aws-port", type=int, default=int(os.environ.get("AWS_PORT", "5000")), help="moto server port (5000)"
    )
    parser.add_argument(
        "--interval", type=float, default=float(os.environ.get("SCAN_INTERVAL", "5")), help="seconds between scans (5)"
    )
    args = parser.parse_args()

    logs = Path(stack.PROJECT_DIR, ".run")
    logs.mkdir(exist_ok=True)
    processes: list[stack.Process] = []

    def stop(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        moto, endpoint = stack.start_moto(args.aws_port, logs / "moto.log")
        processes.append(moto)
        os.environ.update(stack.aws_environment(endpoint))
        os.environ.setdefault("DISCOVERY_ENABLED", "true")  # the demo account's shop/web upstream
        os.environ.setdefault("DISCOVERY_GRACE_SECONDS", "30")
        logger.setLevel(os.environ.get("LOG_LEVEL", "WARNING"))  # the terminal shows changes, not every scan
        print(f"AWS emulator (moto server): {endpoint}   log: .run/moto.log", flush=True)

        with contextlib.redirect_stdout(io.StringIO()):
            ids = fleet.seed(boto3.client("iam"), boto3.client("ec2"))
        print(f"demo fleet: {len(ids)} instances; upstreams applied from examples/upstreams/", flush=True)

        api, base = stack.start_chalice(args.port, dict(os.environ), log=logs / "chalice.log")
        processes.append(api)
        summary = full_scan(runtime.store(), runtime.inventory(), runtime.now)
        print(f"API (chalice local): {base}   log: .run/chalice.log", flush=True)
        print(f"first scan: {summary.as_dict()}", flush=True)
        print(
            "\ntry:\n"
            f"  curl -s {base}/endpoints/gloo-system/ec2-demo-upstream\n"
            f"  curl -s {base}/endpoints/shop/web        (discovered from ec2-eds/upstream tags)\n"
            f"  curl -s {base}/endpoints/gloo-system/ec2-group2   (port from the app-port tag)\n"
            f"  curl -s {base}/upstreams/gloo-system/ec2-demo-upstream\n"
            f"  curl -s -XPOST {base}/scan\n"
            f"  .venv/bin/python devtools/envoy_rest_poll.py {base} ec2-demo-upstream_gloo-system\n"
            f"  curl -s {base}/prometheus/targets\n"
            f"  AWS_ENDPOINT_URL={endpoint} .venv/bin/python -m devtools.fleet stop web-1"
            f"   (the next scan, within {args.interval:g} s, drops it)\n"
            f"  or at once, by its event:\n"
            f"  export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\n"
            f"  .venv/bin/python -m devtools.fleet stop web-2\n"
            f"  .venv/bin/python -m devtools.fleet event web-2 state-change > /tmp/event.json\n"
            f"  .venv/bin/python -m chalicelib.cli event /tmp/event.json\n"
            f"  (kinds: state-change, tag-change, spot-interruption, asg-terminate-lifecycle)\n"
            f"scanning every {args.interval:g} s; Ctrl-C stops everything\n",
            flush=True,
        )
        while True:
            time.sleep(args.interval)
            summary = full_scan(runtime.store(), runtime.inventory(), runtime.now)
            if summary.changed or summary.errors:
                print(f"scan: {summary.changed} sets changed, {summary.errors} errors", flush=True)
            for process in processes:
                if process.popen.poll() is not None:
                    print(f"{process.popen.args[0]} exited with {process.popen.returncode}", file=sys.stderr)
                    return 1
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for process in reversed(processes):
            process.stop()


if __name__ == "__main__":
    sys.exit(main())
