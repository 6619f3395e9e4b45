"""Domain events: what happened to a case, as ids and types, never personal data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    event_type: str  # past tense: ReturnApproved
    case_id: str
    case_version: int
    occurred_at: datetime
    data: Mapping[str, object] = field(default_factory=dict)
