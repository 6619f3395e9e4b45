"""Validates raw trigger payloads into the domain's payload dataclasses (pydantic at the edge)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from workflow.domain.errors import InvalidPayload

DEFAULT_MAX_LENGTH = 200


@cache
def _adapter(shape: type) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def require_object(raw: object) -> Mapping[str, Any]:
    """A payload is a JSON object: a mapping with string keys (None stands for an empty one)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(key, str) for key in raw):
        raise InvalidPayload("the payload must be a JSON object")
    return raw


def parse_payload(shape: type, raw: Mapping[str, Any] | None) -> Any:
    raw = require_object(raw)
    nul = sorted(_nul_strings(raw), key=lambda error: str(error["loc"]))
    if nul:
        raise InvalidPayload(f"invalid payload for {shape.__name__}", nul)
    try:
        parsed = _adapter(shape).validate_python(dict(raw))
    except ValidationError as exc:
        # Input values are left out: they may be personal data.
        errors = [
            {"loc": ".".join(str(part) for part in err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise InvalidPayload(f"invalid payload for {shape.__name__}", errors) from None
    too_long = list(_too_long(parsed))
    if too_long:
        raise InvalidPayload(f"invalid payload for {shape.__name__}", too_long)
    return parsed


_Node = tuple[Any, object] | None  # (parent node, key or index); None is the payload itself


MAX_NUL_ERRORS = 20  # a payload with more names the first of them


def _nul_strings(raw: Mapping[str, Any]) -> Iterator[dict[str, object]]:
    """Strings (keys too) holding NUL: PostgreSQL refuses it in text, so both databases refuse it
    here. Walked with a stack, not recursion (a deeply nested document must not overflow it),
    each value with a link to its parent: a location is spelled out only for a NUL found, so a
    document deep and wide at once costs its size, not its depth times its width."""
    stack: list[tuple[Any, _Node]] = [(raw, None)]
    found = 0
    while stack:
        value, node = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                yield {"loc": _location(node), "msg": "String holds a NUL character", "type": "string_nul"}
                found += 1
                if found == MAX_NUL_ERRORS:
                    return
        elif isinstance(value, Mapping):
            for key, item in value.items():
                child = (node, key)
                stack += [(key, child), (item, child)]
        elif isinstance(value, list | tuple):
            stack += [(item, (node, i)) for i, item in enumerate(value)]


def _location(node: _Node) -> str:
    parts: list[str] = []
    while node is not None:
        node, key = node
        parts.append(str(key).replace("\x00", "\\0"))
    return ".".join(reversed(parts))


def _too_long(value: Any, loc: str = "") -> Iterator[dict[str, object]]:
    """Strings longer than their column (field metadata ``max_length``, else 200) are refused
    here, so both databases answer alike instead of one truncating and one failing."""
    for f in fields(value):
        item = getattr(value, f.name)
        where = f"{loc}{f.name}"
        if isinstance(item, str) and len(item) > f.metadata.get("max_length", DEFAULT_MAX_LENGTH):
            yield {"loc": where, "msg": "String is too long", "type": "string_too_long"}
        elif isinstance(item, list):
            for i, element in enumerate(item):
                if is_dataclass(element):
                    yield from _too_long(element, f"{where}.{i}.")
