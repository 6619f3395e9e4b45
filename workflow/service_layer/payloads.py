"""Validates raw trigger payloads into the domain's payload dataclasses (pydantic at the edge)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from workflow.domain.errors import InvalidPayload


@cache
def _adapter(shape: type) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def parse_payload(shape: type, raw: Mapping[str, Any] | None) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidPayload("the payload must be a JSON object")
    try:
        return _adapter(shape).validate_python(dict(raw))
    except ValidationError as exc:
        # Input values are left out: they may be personal data.
        errors = [
            {"loc": ".".join(str(part) for part in err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise InvalidPayload(f"invalid payload for {shape.__name__}", errors) from None
