"""Times as the store keeps them: UTC, RFC 3339, comparable as strings. Pure."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC, as the API shows times (`lastScan`, marks)."""
    return moment.isoformat().replace("+00:00", "Z")


def stamp(moment: datetime) -> str:
    """A fixed-width UTC time with microseconds: observations are ordered by comparing these."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
