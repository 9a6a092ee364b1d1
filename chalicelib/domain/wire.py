"""How the wire models are declared: Gloo's camelCase or Envoy's snake_case on the wire, snake_case in
Python, optional fields left out rather than null. Shared by `models` and `accounts`."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

T = TypeVar("T")


def _is_none(value: Any) -> bool:
    return value is None


def _no_null_default(schema: dict[str, Any]) -> None:
    if "default" in schema and schema["default"] is None:
        del schema["default"]


# An optional field: left out of the answer when None (never null), and described without null.
Omit = Annotated[T | SkipJsonSchema[None], Field(exclude_if=_is_none, json_schema_extra=_no_null_default)]


class Camel(BaseModel):
    """Gloo's shapes: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, defer_build=True)


class Snake(BaseModel):
    """Envoy's and ec2-eds' own snake_case shapes."""

    model_config = ConfigDict(frozen=True, defer_build=True)


def wire(model: BaseModel) -> Any:
    """The model as the API answers it: by alias, in JSON types, `Omit` fields left out when None."""
    return model.model_dump(mode="json", by_alias=True)
