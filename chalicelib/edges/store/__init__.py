"""Where upstreams, their status, their endpoint sets, observation logs, marks and accounts live.

`base` names each kind of data's protocol; `dynamo` and `memory` implement all of them;
`chunks` encodes what DynamoDB holds.
"""

from chalicelib.edges.store.base import (
    ANY,
    Conflict,
    EndpointSets,
    Guard,
    Holding,
    Marks,
    MembershipIndex,
    ObservationLog,
    Observations,
    Outcome,
    Store,
    Upstreams,
)
from chalicelib.edges.store.chunks import DocumentTooLarge
from chalicelib.edges.store.dynamo import DynamoStore, table_definitions
from chalicelib.edges.store.memory import MemoryStore

__all__ = [
    "ANY",
    "Conflict",
    "DocumentTooLarge",
    "DynamoStore",
    "EndpointSets",
    "Guard",
    "Holding",
    "Marks",
    "MembershipIndex",
    "MemoryStore",
    "ObservationLog",
    "Observations",
    "Outcome",
    "Store",
    "Upstreams",
    "table_definitions",
]
