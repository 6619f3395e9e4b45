"""Who fires a transition: a person or machine client with roles in one office."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    CASEWORKER = "caseworker"
    APPROVER = "approver"
    TRAVEL_OFFICER = "travel_officer"
    FINANCE_OFFICER = "finance_officer"
    OPS = "ops"
    SYSTEM = "system"  # timers and the other office's automation


@dataclass(frozen=True, slots=True)
class Actor:
    id: str
    office: str | None
    roles: frozenset[Role]

    @classmethod
    def of(cls, actor_id: str, office: str | None, *roles: Role | str) -> Actor:
        return cls(actor_id, office, frozenset(Role(r) for r in roles))


SYSTEM_ACTOR = Actor("system:timers", None, frozenset({Role.SYSTEM}))


# The id prefix of another deployment acting for one of its offices (its handover deliveries).
DELIVERY_ACTOR = "system:handover:"
