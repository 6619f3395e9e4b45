"""The documents two deployments exchange over the signed channel: their types and shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, StringConstraints

from workflow.domain.errors import InvalidPayload
from workflow.service_layer.payloads import parse_payload

PACKAGE, DECISION = "avrr.handover.v1", "avrr.handover.decision.v1"  # each document's ``type``
ACCEPTED, REFUSED = "accepted", "refused"

CaseId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")]
Office = Annotated[str, StringConstraints(min_length=1, max_length=32)]
# The package writes an unknown date as "".
OptionalDate = Annotated[date | None, BeforeValidator(lambda value: value or None)]


@dataclass(frozen=True)
class Journey:
    departure_on: OptionalDate = None
    route: str | None = None


@dataclass(frozen=True)
class Package:
    """What the origin's workers send (workflow/adapters/notices.py: ``handover_package``)."""

    type: Literal["avrr.handover.v1"]
    event_id: str
    case_id: CaseId
    origin_office: Office
    destination_office: Office
    household: list[dict[str, Any]]
    language: str = "en"
    journey: Journey = field(default_factory=Journey)
    arrived_on: OptionalDate = None


@dataclass(frozen=True)
class Decision:
    """The destination's answer to a package (workflow/adapters/notices.py: ``handover_decision``)."""

    type: Literal["avrr.handover.decision.v1"]
    event_id: str
    case_id: CaseId
    from_office: Office
    decision: Literal["accepted", "refused"]
    reason: str | None = None


SHAPES: dict[str, type[Package] | type[Decision]] = {PACKAGE: Package, DECISION: Decision}


def parse(body: bytes) -> Package | Decision:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise InvalidPayload("the body is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidPayload("the body must be a JSON object")
    shape = SHAPES.get(str(document.get("type")))
    if shape is None:
        raise InvalidPayload(f"the document type must be one of {sorted(SHAPES)}")
    parsed: Package | Decision = parse_payload(shape, document)
    return parsed
