"""ec2-eds sidecar: follows `GET /endpoints/{namespace}/{name}` and writes Envoy file-based EDS.

Runs beside a gateway, not in the Lambda package. See README.md.
"""

from sidecar.agent import Agent, Config, Outcome, Upstream, main, to_discovery_response, write_atomic

__all__ = ["Agent", "Config", "Outcome", "Upstream", "main", "to_discovery_response", "write_atomic"]
