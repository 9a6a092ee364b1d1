"""Gloo `Upstream` documents with an `awsEc2` block: loading and validation.

Pure: no AWS, no Chalice. Every rejection is a `SpecError` that names the
path of the offending field in the document the user wrote, so the API can
answer 400 `{"error", "field"}` and store nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from chalicelib.domain import gloo_options

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # all patterns: fullmatch
DNS1123_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
ROLE_ARN = re.compile(r"arn:aws(-[a-z]+)*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
MAX_DEPTH = 64
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
JSON_TYPES = ("application/json",)


class SpecError(ValueError):
    """A document that is not a valid EC2 upstream; `field` is its path or None."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        return {"error": self.message, "field": self.field}


class BodyTooLarge(SpecError):
    """A body over the size limit, refused before it is read (HTTP 413 Content Too Large)."""

    status = 413


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


TagKey = Annotated[str, Field(min_length=1, max_length=128)]


class KvPair(_Strict):
    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=256)


class TagFilter(_Strict):
    """Gloo's filter: exactly one of `key` (the tag is present) or `kvPair`."""

    key: str | None = Field(None, min_length=1, max_length=128)
    kvPair: KvPair | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TagFilter:
        if (self.key is None) == (self.kvPair is None):
            raise ValueError("a filter needs exactly one of key or kvPair")
        return self


class ResourceRef(_Strict):
    name: str
    namespace: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DNS1123_SUBDOMAIN.fullmatch(value):
            raise ValueError("must be a DNS-1123 subdomain (lower case letters, digits, '-' and '.')")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _label(value)


class AwsEc2Spec(_Strict):
    """The `awsEc2` block, Gloo's fields exactly."""

    region: str
    filters: list[TagFilter] = Field(default_factory=list, max_length=50)
    publicIp: bool = False
    port: int = Field(80, ge=1, le=65535)
    secretRef: ResourceRef | None = None
    roleArn: str | None = None
    # ec2-eds extensions, all optional, so Gloo documents keep working unchanged:
    # the sts:ExternalId a member account's role trust policy demands;
    externalId: str | None = Field(None, min_length=2, max_length=1224, pattern=r"^[\w+=,.@:/-]+$")
    # a named account (PUT /accounts/{name}) instead of a raw roleArn;
    account: str | None = None
    # an instance's port, weight and subset metadata from its tags.
    portTag: TagKey | None = None
    weightTag: TagKey | None = None
    metadataTags: list[TagKey] = Field(default_factory=list, max_length=20)
    # the instance's primary IPv6 address instead of its IPv4 one.
    ipv6: bool = False

    @field_validator("ipv6")
    @classmethod
    def _one_family(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("publicIp"):
            raise ValueError("choose one address: publicIp (public IPv4) or ipv6 (primary IPv6), not both")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION.fullmatch(value):
            raise ValueError("must be an AWS region name such as us-east-1")
        return value

    @field_validator("roleArn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_ARN.fullmatch(value):
            raise ValueError("must be an IAM role ARN: arn:aws:iam::<12-digit account>:role/<name>")
        return value

    @field_validator("account")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        return None if value is None else _label(value)

    @model_validator(mode="after")
    def _credentials_are_consistent(self) -> AwsEc2Spec:
        if self.account is not None and self.roleArn is not None:
            raise ValueError("give either account or roleArn, not both")
        if self.externalId is not None and self.roleArn is None:
            raise ValueError("externalId is only used with roleArn (an account carries its own)")
        return self


@dataclass(frozen=True, slots=True)
class Credentials:
    """Whose eyes an upstream looks through: the function's role, a secret, a role."""

    secret: tuple[str, str] | None = None  # (namespace, name)
    role_arn: str | None = None
    external_id: str | None = None

    @property
    def account(self) -> str | None:
        """The account the role lives in, when a role is named."""
        match = ROLE_ARN.fullmatch(self.role_arn or "")
        return match.group(2) if match else None

    def describe(self) -> str:
        parts = []
        if self.secret:
            parts.append(f"secret {self.secret[0]}/{self.secret[1]}")
        if self.role_arn:
            parts.append(f"role {self.role_arn}" + (" (with an external id)" if self.external_id else ""))
        return " + ".join(parts) or "the function's role"


@dataclass(frozen=True, slots=True)
class GroupKey:
    """Upstreams that share credentials and region share one listing."""

    credentials: Credentials
    region: str

    @property
    def id(self) -> str:
        """A short stable key for the group's stored items."""
        return fingerprint(str(self))

    def __str__(self) -> str:
        """A readable, stable name for logs, metrics and stored marks: never the external id itself."""
        secret = "/".join(self.credentials.secret) if self.credentials.secret else "-"
        external = f"|ext:{fingerprint(self.credentials.external_id)}" if self.credentials.external_id else ""
        return f"{self.region}|{secret}|{self.credentials.role_arn or '-'}{external}"


def fingerprint(value: str) -> str:
    """A short digest that groups equal values without revealing them (external ids, credentials)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Upstream:
    namespace: str
    name: str
    ec2: AwsEc2Spec
    document: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cluster_name(self) -> str:
        return cluster_name(self.namespace, self.name)

    @property
    def credentials(self) -> Credentials:
        ref = self.ec2.secretRef
        return Credentials(
            secret=(ref.namespace, ref.name) if ref else None,
            role_arn=self.ec2.roleArn,
            external_id=self.ec2.externalId,
        )

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.credentials, self.ec2.region)


def cluster_name(namespace: str, name: str) -> str:
    """Gloo's cluster name for an upstream: `{name}_{namespace}`."""
    return f"{name}_{namespace}"


def parse_cluster_name(cluster: str) -> tuple[str, str] | None:
    """(namespace, name) of a cluster name, or None when it cannot be one of ours."""
    name, sep, namespace = cluster.rpartition("_")
    if not sep or not DNS1123_LABEL.fullmatch(name) or not DNS1123_LABEL.fullmatch(namespace):
        return None
    return namespace, name


def _label(value: str) -> str:
    if not DNS1123_LABEL.fullmatch(value):
        raise ValueError("must be a DNS-1123 label: at most 63 lower case letters, digits and '-'")
    return value


def check_label(value: str, field: str) -> str:
    """`value` if it is a DNS-1123 label, else a SpecError for `field`."""
    try:
        return _label(value)
    except ValueError as err:
        raise SpecError(f"{field} {str(err)}", field) from None


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _quote_hint(error: Any) -> str:
    """What to do when YAML read an unquoted number or boolean where a string belongs."""
    given = error.get("input")
    if error.get("type") != "string_type" or not isinstance(given, (bool, int, float)):
        return ""
    if isinstance(given, bool):  # YAML 1.1: true, yes, on, ... unquoted
        return " (YAML read an unquoted true/false/yes/no/on/off as a boolean: put the value in quotes)"
    return f" (YAML read the unquoted number {given}: put it in quotes, '{given}')"


def _expect_mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{field} must be a mapping", field)
    return value


def parse_upstream(document: Any, namespace: str | None = None, name: str | None = None) -> Upstream:
    """Validate a Gloo Upstream document; `namespace`/`name` come from the URL when given."""
    doc = _check_kind(document)
    metadata = _expect_mapping(doc.get("metadata") or {}, "metadata")
    ns, nm = _names(metadata, namespace, name)
    ec2 = _ec2_block(_expect_mapping(doc.get("spec"), "spec"))
    try:
        gloo_options.translate_document(doc)  # an option Envoy's cluster would not get is refused, not dropped
    except gloo_options.OptionError as err:
        raise SpecError(err.message, err.field) from None
    canonical = dict(doc)
    canonical.setdefault("apiVersion", "gloo.solo.io/v1")
    canonical.setdefault("kind", "Upstream")
    canonical["metadata"] = {**metadata, "name": nm, "namespace": ns}
    return Upstream(namespace=ns, name=nm, ec2=ec2, document=canonical)


def _check_kind(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise SpecError("the document must be a mapping (a Gloo Upstream)")
    if document.get("apiVersion", "gloo.solo.io/v1") != "gloo.solo.io/v1":
        raise SpecError("apiVersion must be gloo.solo.io/v1", "apiVersion")
    if document.get("kind", "Upstream") != "Upstream":
        raise SpecError("kind must be Upstream", "kind")
    return document


def _names(metadata: dict[str, Any], namespace: str | None, name: str | None) -> tuple[str, str]:
    """The upstream's namespace and name: from metadata, else the URL; both must agree when both are given."""
    for field, from_url in (("name", name), ("namespace", namespace)):
        _check_name_field(metadata.get(field), field, from_url)
    ns = metadata.get("namespace") or namespace
    nm = metadata.get("name") or name
    if not ns:
        raise SpecError("metadata.namespace is required", "metadata.namespace")
    if not nm:
        raise SpecError("metadata.name is required", "metadata.name")
    check_label(ns, "metadata.namespace")
    check_label(nm, "metadata.name")
    return ns, nm


def _check_name_field(given: Any, field: str, from_url: str | None) -> None:
    if given is not None and not isinstance(given, str):
        hint = _quote_hint({"type": "string_type", "input": given})
        raise SpecError(f"metadata.{field} must be a string{hint}", f"metadata.{field}")
    if given is not None and from_url is not None and given != from_url:
        raise SpecError(
            f"metadata.{field} {given!r} differs from the {field} in the path {from_url!r}",
            f"metadata.{field}",
        )


def _ec2_block(spec: dict[str, Any]) -> AwsEc2Spec:
    """`spec.awsEc2` (or Gloo's older `spec.upstreamSpec.awsEc2`), validated."""
    if "awsEc2" in spec and "upstreamSpec" in spec:
        raise SpecError("give either spec.awsEc2 or spec.upstreamSpec.awsEc2, not both", "spec")
    if "upstreamSpec" in spec:
        prefix = "spec.upstreamSpec.awsEc2"
        block = _expect_mapping(spec["upstreamSpec"], "spec.upstreamSpec").get("awsEc2")
    else:
        prefix = "spec.awsEc2"
        block = spec.get("awsEc2")
    if block is None:
        raise SpecError(f"{prefix} is required: this is not an EC2 upstream", prefix)
    _expect_mapping(block, prefix)
    try:
        # As in Gloo (proto JSON), an explicit null means the field's default.
        return AwsEc2Spec.model_validate({key: value for key, value in block.items() if value is not None})
    except ValidationError as err:
        first = err.errors()[0]
        field = _path(prefix, tuple(part for part in first["loc"] if part != "tagged-union"))
        message = first["msg"].removeprefix("Value error, ") + _quote_hint(first)
        raise SpecError(f"{field}: {message}", field) from None


# --- loading YAML and JSON bodies safely ------------------------------------


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader without aliases (no alias bombs), timestamps or deep nesting."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not accepted", event.start_mark)
        nested = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        self._depth += nested
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= nested


def _no_duplicate_keys(loader: _SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A key given twice is a typo waiting to happen (which `port:` wins?): refuse it."""
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_SafeLoader.add_constructor("tag:yaml.org,2002:map", _no_duplicate_keys)


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise SpecError(f"the document nests deeper than {MAX_DEPTH} levels")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _check_depth(child, depth + 1)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


# --- one rule for what a document may hold, whichever syntax it came in -----------------------
#
# What is stored and echoed is JSON, so a document may hold only what strict JSON (RFC 8259)
# and a protobuf field (Gloo's Upstream is one) can carry: string keys, each given once; finite
# numbers; integers within 64 bits. The parsers' hooks turn anything else into a `_Refused`
# marker instead of raising (or, for huge integers, instead of Python's own 4300-digit limit
# raising a bare ValueError), and `_check_json_safe` refuses the first marker it meets with the
# path where it stands: one walk, one message shape for JSON and YAML alike.

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # proto3 int64 .. uint64
_MAX_INT_LITERAL = 100  # characters: any integer literal longer is out of range in every base


class _Refused:
    """A value the document may not hold, found by a parser; refused with its path after parsing."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _DuplicateKeys(dict[str, Any]):
    """A JSON object that gave `key` more than once (the parser keeps the last; we refuse it)."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _DuplicateKeys(pairs, key)
        seen.add(key)
    return dict(pairs)


def _json_int(text: str) -> int | _Refused:
    if len(text) > _MAX_INT_LITERAL:
        return _Refused(f"the integer of {len(text.lstrip('-'))} digits is out of range ({INT_MIN} to {INT_MAX})")
    return int(text)


def _json_float(text: str) -> float | _Refused:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        return _Refused(f"the number {text[:40]} is too large for a double")
    return value


def _json_constant(text: str) -> _Refused:
    return _Refused(f"{text} is not JSON: numbers must be finite")


def _yaml_int(loader: _SafeLoader, node: yaml.ScalarNode) -> int | _Refused:
    text = str(node.value).replace("_", "")
    if len(text) > _MAX_INT_LITERAL:
        return _Refused(f"the integer of {len(text)} characters is out of range ({INT_MIN} to {INT_MAX})")
    return int(yaml.SafeLoader.construct_yaml_int(loader, node))


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def load_json(text: str | bytes) -> Any:
    """Strict JSON: duplicate keys, NaN/Infinity and integers past 64 bits are a SpecError naming their path."""
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_json_object,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
    except (json.JSONDecodeError, RecursionError) as err:
        raise SpecError(f"the body is not valid JSON: {err}") from None
    except (ValueError, UnicodeDecodeError):  # bytes that are not UTF-8/16/32 JSON text
        raise SpecError("the body is not valid JSON") from None
    _check_depth(doc)
    _check_json_safe(doc)
    return doc


def load_documents(body: bytes | str, content_type: str | None, max_bytes: int) -> list[Any]:
    """Every document in a JSON or (multi-document) YAML body."""
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"the body is {len(raw)} bytes, larger than {max_bytes} bytes (MAX_BODY_BYTES)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("the body is not UTF-8 text") from None
    media = _media_type(content_type)
    if media in JSON_TYPES:
        return [load_json(text)]
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_SafeLoader) if doc is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"the body is not valid YAML: {_yaml_message(err)}") from None
    except RecursionError:
        raise SpecError(f"the document nests deeper than {MAX_DEPTH} levels") from None
    for doc in docs:
        _check_json_safe(doc)
    return docs


def _yaml_message(err: yaml.YAMLError) -> str:
    return " ".join(str(err).split())


def _check_text(text: str, where: str | None) -> None:
    """Unicode text only: an escaped lone surrogate (`"\\ud800"`) is no character (RFC 8259 section 8.2)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError("a string holds a lone surrogate (\\ud800-\\udfff escape): not Unicode text", where) from None


def _check_json_safe(value: Any, path: str = "") -> None:
    """Refuse what JSON cannot hold: markers left by the parsers, non-finite floats, huge integers,
    binary values and keys that are not strings (YAML can say all of these)."""
    where = path or None
    if isinstance(value, _DuplicateKeys):
        field = f"{path}.{value.key}" if path else value.key
        raise SpecError(f"the key {value.key!r} is given twice", field)
    if isinstance(value, dict):
        _check_mapping(value, path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_json_safe(child, f"{path}[{index}]")
    else:
        _check_scalar(value, where)


def _check_mapping(value: dict[Any, Any], path: str) -> None:
    for key, child in value.items():
        if not isinstance(key, str):
            raise SpecError(f"mapping keys must be strings, got {str(key)[:40]!r}", path or None)
        _check_text(key, path or None)
        _check_json_safe(child, f"{path}.{key}" if path else key)


def _check_scalar(value: Any, where: str | None) -> None:
    if isinstance(value, _Refused):
        raise SpecError(value.why, where)
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{value} is not a JSON number: numbers must be finite", where)
    elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        raise SpecError(f"the integer is out of range ({INT_MIN} to {INT_MAX})", where)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise SpecError(f"{type(value).__name__} values are not accepted (JSON cannot hold them)", where)


def load_one(body: bytes | str, content_type: str | None, max_bytes: int) -> Any:
    """The single document of a PUT body."""
    docs = load_documents(body, content_type, max_bytes)
    if len(docs) != 1:
        raise SpecError(f"expected exactly one document, got {len(docs)}")
    return docs[0]


def iter_upstreams(docs: list[Any]) -> Iterator[Upstream]:
    """Parse each document, naming its position in a multi-document file on error."""
    for index, doc in enumerate(docs):
        try:
            yield parse_upstream(doc)
        except SpecError as err:
            if len(docs) == 1:
                raise
            raise SpecError(f"document {index + 1}: {err.message}", err.field) from None
