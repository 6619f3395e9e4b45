"""OpenAPI schemas of the lifecycle's payload classes, so each trigger documents its body."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter

REF = "#/components/schemas/{model}"


@cache
def payload_schemas(classes: tuple[type, ...]) -> dict[str, Any]:
    """Every class's JSON schema (and the schemas it refers to), keyed by class name."""
    schemas: dict[str, Any] = {}
    for cls in classes:
        schema = TypeAdapter(cls).json_schema(ref_template=REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[cls.__name__] = schema
    return schemas


def body(cls: type, required: bool = True) -> dict[str, Any]:
    """An ``openapi_extra`` documenting a JSON body of ``cls``."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=cls.__name__)}}},
        }
    }
