"""One pydantic model per wire shape: the API's bodies, the items the store writes, an upstream's status.

Python names are snake_case; on the wire Gloo's shapes (status, accounts) are camelCase through the
alias generator, and Envoy's, the endpoint set's and the scan summary's are snake_case as they
always were. Dump with `wire(model)`: the JSON the API answers. Every model is built on first use
(`defer_build`), so loading this module costs little more than loading pydantic.

Admin routes build their bodies from these models. The read path (EDS, CDS, `GET /endpoints`,
Prometheus) never imports this module: its renderers are plain dict builders (`chalicelib.render`,
`EndpointSet.public`), and the tests prove every body they build is exactly the model's
(`tests/unit/test_models.py`). `devtools/openapi.py` generates the API's schemas from these models.

Upstream documents themselves are Gloo documents, parsed by `chalicelib.domain.spec`; `Upstream`
below describes them for the OpenAPI document only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    RootModel,
    StringConstraints,
    computed_field,
    field_serializer,
    field_validator,
    model_serializer,
)
from pydantic.functional_serializers import SerializerFunctionWrapHandler

from chalicelib.domain.accounts import LABEL, Account
from chalicelib.domain.envoy import CLA_TYPE, CLUSTER_TYPE, MAX_CLUSTERS, MAX_NAMES
from chalicelib.domain.spec import AwsEc2Spec
from chalicelib.domain.status import PENDING, Status
from chalicelib.domain.wire import Camel, Omit, Snake, wire

__all__ = ["Account", "Camel", "Omit", "Snake", "wire"]  # the account's model and the bases, from here too


# --- errors and small answers ---------------------------------------------------------------------


class Error(Snake):
    """Every error the API answers: the routes', Chalice's own (405, 415, 500) and, deployed, API
    Gateway's (through the gateway responses of the stage's merge template)."""

    model_config = ConfigDict(extra="forbid")

    error: str
    field: str | None = Field(description="the path of the offending field, or null")


class Deleted(Snake):
    deleted: str = Field(description="the key of what was deleted")


class Health(Snake):
    status: Literal["ok"] = "ok"


# --- an upstream's status: stored, and served ------------------------------------------------------

_OMITTED_WHEN_EMPTY = ("code", "port_fallbacks", "weight_fallbacks", "unhealthy", "draining")


class StatusItem(Camel):
    """An upstream's status as stored (JSON in its item's `status`): zero counts and no code are left out."""

    state: Literal["Accepted", "Rejected", "Error"]
    reason: str = ""
    endpoints: NonNegativeInt = 0
    skipped: NonNegativeInt = 0
    code: Omit[str] = Field(None, description="the AWS error code of the last failure")
    port_fallbacks: Omit[NonNegativeInt] = Field(None, description="instances whose portTag fell back")
    weight_fallbacks: Omit[NonNegativeInt] = Field(None, description="instances whose weightTag fell back")
    unhealthy: Omit[PositiveInt] = Field(None, description="endpoints served UNHEALTHY (absent: none)")
    draining: Omit[PositiveInt] = Field(None, description="endpoints served DRAINING (absent: none)")

    @classmethod
    def of(cls, status: Status) -> StatusItem:
        """What is stored of a status: zero counts and an empty code are left out."""
        kept = {name: getattr(status, name) for name in ("state", "reason", "endpoints", "skipped")}
        omitted = {name: getattr(status, name) or None for name in _OMITTED_WHEN_EMPTY}
        return cls.model_validate({**kept, **omitted})

    def status(self) -> Status:
        return Status(**self.model_dump(exclude_none=True))

    def stored(self) -> str:
        """The JSON text an item holds, as the previous versions wrote it."""
        return json.dumps(wire(self))


class UpstreamStatus(StatusItem):
    """An upstream's status as served: as stored, plus when its group was last listed after it was stored."""

    last_scan: str | None = Field(json_schema_extra={"format": "date-time"})  # null: not listed since stored


class UpstreamDescribed(Camel):
    """The document as stored plus its status; never a secret value (none is ever stored)."""

    model_config = ConfigDict(extra="allow")

    status: UpstreamStatus

    @classmethod
    def of(cls, document: dict[str, Any], status: Status, last_scan: str | None) -> UpstreamDescribed:
        served = UpstreamStatus(**StatusItem.of(status).model_dump(exclude_none=True), last_scan=last_scan)
        return cls.model_validate({**document, "status": served})

    # No return annotation: the schema stays the model's (pydantic would describe an annotated return).
    @model_serializer(mode="wrap")
    def _document_first(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data: dict[str, Any] = handler(self)
        status = data.pop("status")
        return {**data, "status": status}


# --- named accounts: the answer (the body and the item are `Account`, chalicelib.domain.accounts) ------


class AccountDescribed(Account):
    """A named account as stored, with the role ARN it resolves to."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def role_arn(self) -> str:
        return Account.role_arn.fget(self)  # type: ignore[attr-defined]

    @classmethod
    def of(cls, account: Account) -> AccountDescribed:
        return cls.model_validate(account.model_dump())


# --- lists: as many as fit one answer, and where the next page starts ------------------------------


class Page(Snake):
    kind: ClassVar[str]
    next: Omit[str] = Field(None, description="the last key of this page; absent on the last page")


class UpstreamList(Page):
    kind: ClassVar[str] = "upstreams"
    upstreams: list[UpstreamDescribed]


class AccountList(Page):
    kind: ClassVar[str] = "accounts"
    accounts: list[AccountDescribed]


# --- the scan's summary ----------------------------------------------------------------------------


class AwsCalls(Snake):
    """AWS calls the scan made, by `service:Action`; these three always, others when made."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, NonNegativeInt]

    describe_instances: NonNegativeInt = Field(alias="ec2:DescribeInstances")
    assume_role: NonNegativeInt = Field(alias="sts:AssumeRole")
    get_secret_value: NonNegativeInt = Field(alias="secretsmanager:GetSecretValue")


class ScanSummary(Snake):
    """What one scan did (`POST /scan`, and the scheduled scan's result)."""

    model_config = ConfigDict(extra="allow")  # counts a newer scan reports pass through

    upstreams: NonNegativeInt
    instances: NonNegativeInt
    changed: NonNegativeInt
    errors: NonNegativeInt
    groups: Omit[NonNegativeInt] = None
    conflicts: Omit[NonNegativeInt] = None
    deferred: Omit[NonNegativeInt] = None
    health_errors: Omit[PositiveInt] = Field(None, description="groups whose DescribeInstanceStatus failed")
    discovered: Omit[dict[str, NonNegativeInt]] = None
    aws_calls: AwsCalls


# --- GET /endpoints/{namespace}/{name} (rendered by EndpointSet.public on the read path) -----------

HealthStatus = Literal["HEALTHY", "DRAINING", "UNHEALTHY"]


class Endpoint(Snake):
    address: str
    port: int = Field(ge=1, le=65535)
    instance_id: str
    zone: str
    health: HealthStatus
    weight: Omit[PositiveInt] = Field(None, description="absent: 1")
    metadata: Omit[dict[str, str]] = Field(None, description="subset metadata from metadataTags")


class EndpointSet(Snake):
    """An upstream's endpoint set as `GET /endpoints` and the sidecar see it."""

    cluster_name: str
    namespace: str
    name: str
    region: str
    version: str
    endpoints: list[Endpoint]


# --- Envoy REST-JSON EDS and CDS (rendered by chalicelib.render.eds / cds) ------------------------


class DiscoveryRequest(Snake):
    """Envoy's REST-JSON DiscoveryRequest (snake_case; lowerCamelCase is accepted too)."""

    version_info: Omit[str] = None
    resource_names: list[str] = Field(
        min_length=1,
        max_length=MAX_CLUSTERS,
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "description": "a cluster name, name_namespace"}
        },
    )
    type_url: Omit[Literal[CLA_TYPE]] = None  # type: ignore[valid-type]
    node: Omit[dict[str, Any]] = None
    response_nonce: Omit[str] = None


class SocketAddress(Snake):
    address: str
    port_value: int = Field(ge=1, le=65535)


class Address(Snake):
    socket_address: SocketAddress


class EndpointAddress(Snake):
    address: Address


class LbEndpoint(Snake):
    endpoint: EndpointAddress
    health_status: HealthStatus
    metadata: dict[str, Any]  # filter_metadata["envoy.lb"]: subset metadata and the instance id
    load_balancing_weight: Omit[PositiveInt] = None  # absent: 1


class Locality(Snake):
    region: str
    zone: str


class LocalityLbEndpoints(Snake):
    locality: Locality
    lb_endpoints: list[LbEndpoint]


class ClusterLoadAssignment(Snake):
    at_type: Literal[CLA_TYPE] = Field(alias="@type")  # type: ignore[valid-type]
    cluster_name: str
    endpoints: Omit[list[LocalityLbEndpoints]] = None


class DiscoveryResponse(Snake):
    version_info: str
    resources: list[ClusterLoadAssignment]
    type_url: Literal[CLA_TYPE]  # type: ignore[valid-type]


class ClusterDiscoveryRequest(Snake):
    """Envoy's REST-JSON DiscoveryRequest for clusters: resource_names empty asks for all."""

    version_info: Omit[str] = None
    resource_names: Omit[list[str]] = Field(None, max_length=MAX_NAMES)
    type_url: Omit[Literal[CLUSTER_TYPE]] = None  # type: ignore[valid-type]
    node: Omit[dict[str, Any]] = None
    response_nonce: Omit[str] = None


class Cluster(Snake):
    """One EDS cluster (envoy.config.cluster.v3.Cluster) per upstream, named name_namespace; Gloo's
    upstream options add their fields."""

    model_config = ConfigDict(extra="allow")

    at_type: Literal[CLUSTER_TYPE] = Field(alias="@type")  # type: ignore[valid-type]
    name: str
    type: Literal["EDS"]
    connect_timeout: str
    eds_cluster_config: dict[str, Any]


class ClusterDiscoveryResponse(Snake):
    version_info: str
    resources: list[Cluster]
    type_url: Literal[CLUSTER_TYPE]  # type: ignore[valid-type]


# --- Prometheus HTTP SD (rendered by chalicelib.render.prometheus) ---------------------------------


class TargetGroup(Snake):
    targets: list[str] = Field(min_length=1, max_length=1)
    labels: dict[str, str] = Field(json_schema_extra={"propertyNames": {"pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}})


class TargetGroups(RootModel[list[TargetGroup]]):
    """Prometheus HTTP SD: one target group per endpoint."""

    model_config = ConfigDict(defer_build=True)


# --- PUT /upstreams/{namespace}/{name}: a Gloo Upstream document (parsed by domain/spec.py) ---------

Label = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=LABEL["pattern"])]


class Metadata(Camel):
    """Kubernetes-style metadata; name and namespace default to the path's and must equal them."""

    model_config = ConfigDict(extra="allow")

    name: Omit[Label] = None
    namespace: Omit[Label] = None


class Ec2Spec(Camel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"not": {"required": ["upstreamSpec"]}})

    aws_ec2: AwsEc2Spec


class UpstreamSpec(Camel):
    aws_ec2: AwsEc2Spec


class LegacySpec(Camel):
    """The older `upstreamSpec.awsEc2`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"not": {"required": ["awsEc2"]}})

    upstream_spec: UpstreamSpec


class Upstream(Camel):
    """A Gloo `Upstream` document with an `awsEc2` block (or the older `upstreamSpec.awsEc2`)."""

    model_config = ConfigDict(extra="allow")

    api_version: Omit[Literal["gloo.solo.io/v1"]] = None
    kind: Omit[Literal["Upstream"]] = None
    metadata: Omit[Metadata] = None
    spec: Ec2Spec | LegacySpec


# --- stored items (the upstreams table) -------------------------------------------------------------


class UpstreamItem(Camel):
    """An upstream's item: the document zlib-compressed (plain JSON text when written before
    compression), its status as JSON text, when it was stored and its generation (absent before
    generations: its updatedAt stands for it)."""

    id: str
    namespace: str
    name: str
    document: bytes | str
    status: StatusItem | None = None
    updated_at: str = ""
    generation: str = ""

    @field_validator("status", mode="before")
    @classmethod
    def _from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_serializer("status")
    def _as_json(self, status: StatusItem | None) -> str | None:
        return None if status is None else status.stored()

    def stored_status(self) -> Status:
        return PENDING if self.status is None else self.status.status()


class AccountItem(Snake):
    """A named account's item: `~account/NAME`, the account as JSON text."""

    id: str
    account: Account

    @field_validator("account", mode="before")
    @classmethod
    def _from_json(cls, value: Any) -> Any:
        return Account.model_validate_json(value) if isinstance(value, str) else value

    @field_serializer("account")
    def _as_json(self, account: Account) -> str:
        return json.dumps(wire(account), separators=(",", ":"))
