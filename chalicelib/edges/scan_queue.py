"""The scan queue: the planner's one message per (credentials, region) group, to the group workers."""

from __future__ import annotations

from typing import Any


class ScanQueue:
    """Send scan tasks to the SQS queue named `name` (its URL looked up once)."""

    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self._name = name
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self._client.get_queue_url(QueueName=self._name)["QueueUrl"]
        return self._url

    def send(self, bodies: list[str]) -> None:
        """One SendMessage per task (what `sqs:SendMessage` allows; a batch would need moto to agree)."""
        for body in bodies:
            self._client.send_message(QueueUrl=self.url, MessageBody=body)
