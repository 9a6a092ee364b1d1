"""A counting reverse proxy on loopback, between AWS clients and the emulator.

Every request that passes is counted by `service:Operation` (service from
the SigV4 credential scope, operation from `X-Amz-Target` or the query
`Action`), with the bytes of the answers, independently of botocore's own
hooks: so ec2-eds' `aws_calls` can be cross-checked, and Prometheus (which
has no such counter) can be measured at all. For `ec2:DescribeInstances`
it also records the filter names and `MaxResults` each request carried.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Traffic:
    """What passed the proxy since the last reset."""

    calls: Counter[str] = field(default_factory=Counter)
    response_bytes: Counter[str] = field(default_factory=Counter)
    describe_filters: Counter[str] = field(default_factory=Counter)  # filter name -> requests carrying it
    describe_max_results: Counter[str] = field(default_factory=Counter)  # MaxResults value ("absent") -> requests
    continuation_pages: int = 0  # DescribeInstances requests that carried a NextToken

    def total(self, prefix: str = "") -> int:
        return sum(count for name, count in self.calls.items() if name.startswith(prefix))

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": dict(sorted(self.calls.items())),
            "response_bytes": dict(sorted(self.response_bytes.items())),
            "describe_instances_filters": dict(sorted(self.describe_filters.items())),
            "describe_instances_max_results": dict(sorted(self.describe_max_results.items())),
            "describe_instances_continuation_pages": self.continuation_pages,
        }


def operation(headers: Any, path: str, body: bytes) -> tuple[str, dict[str, list[str]]]:
    """`service:Operation` of one signed AWS request, and its query parameters (query protocol)."""
    scope = SCOPE.search(headers.get("Authorization", ""))
    service = scope.group(1) if scope else "unsigned"
    target = headers.get("X-Amz-Target")
    if target:
        return f"{service}:{target.rpartition('.')[2]}", {}
    params = parse_qs(urlsplit(path).query)
    if "form-urlencoded" in headers.get("Content-Type", ""):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    action = params.get("Action", [""])[0]
    return f"{service}:{action or 'unknown'}", params


class CountingProxy:
    """`http://127.0.0.1:{port}` forwards to `upstream` and counts; start(), reset(), snapshot(), stop()."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._traffic = Traffic()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            local = threading.local()

            def log_message(self, *_: Any) -> None:  # quiet
                return

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in one write, and without Nagle's delay: no 40 ms delayed-ACK stalls.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _connection(self) -> http.client.HTTPConnection:
                conn = getattr(self.local, "conn", None)
                if conn is None:
                    conn = http.client.HTTPConnection(*proxy._target, timeout=300)
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.local.conn = conn
                return conn

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                name, params = operation(self.headers, self.path, body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                for attempt in range(2):
                    conn = self._connection()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        answer = conn.getresponse()
                        data = answer.read()
                        break
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        self.local.conn = None
                        if attempt:
                            raise
                proxy._record(name, params, len(data))
                head = [f"HTTP/1.1 {answer.status} {answer.reason}"]
                head += [
                    f"{key}: {value}"
                    for key, value in answer.getheaders()
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length"
                ]
                head.append(f"Content-Length: {len(data)}")
                try:
                    self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): counted all the same
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    def _record(self, name: str, params: dict[str, list[str]], size: int) -> None:
        with self._lock:
            traffic = self._traffic
            traffic.calls[name] += 1
            traffic.response_bytes[name] += size
            if name == "ec2:DescribeInstances":
                names = {values[0] for key, values in params.items() if re.fullmatch(r"Filter\.\d+\.Name", key)}
                for filter_name in names:
                    traffic.describe_filters[filter_name] += 1
                traffic.describe_max_results[params.get("MaxResults", ["absent"])[0]] += 1
                traffic.continuation_pages += "NextToken" in params

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def reset(self) -> Traffic:
        """What passed since the last reset; counting starts again from zero."""
        with self._lock:
            traffic, self._traffic = self._traffic, Traffic()
        return traffic

    def snapshot(self) -> Traffic:
        with self._lock:
            t = self._traffic
            return Traffic(
                Counter(t.calls),
                Counter(t.response_bytes),
                Counter(t.describe_filters),
                Counter(t.describe_max_results),
                t.continuation_pages,
            )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
