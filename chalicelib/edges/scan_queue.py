"""The scan queue: the planner's one message per (credentials, region) group, to the group workers."""

from __future__ import annotations

from typing import Any

BATCH = 10  # SendMessageBatch's limit


class ScanQueueError(RuntimeError):
    """SQS refused some messages of a batch."""


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
        for start in range(0, len(bodies), BATCH):
            entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[start : start + BATCH])]
            answer = self._client.send_message_batch(QueueUrl=self.url, Entries=entries)
            if answer.get("Failed"):
                codes = sorted({failed.get("Code", "?") for failed in answer["Failed"]})
                raise ScanQueueError(f"{len(answer['Failed'])} scan tasks not sent ({', '.join(codes)})")
