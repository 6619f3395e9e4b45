"""Deliveries between deployments: a handover package opens the case at the destination, the
destination's decision comes back to the origin; each acts once, however often it arrives.

The HTTP edge checks the signature; this module trusts the body only as far as the lifecycle
does: the sender acts as its office's automation (the SYSTEM role), so ``may_fire`` decides what
it may do, exactly as for any other caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from workflow.domain.actors import DELIVERY_ACTOR, Actor, Role
from workflow.domain.errors import IdempotencyKeyReused, InvalidPayload, PermissionDenied, VersionConflict
from workflow.service_layer.documents import REFUSED, Decision, Package, parse
from workflow.service_layer.ports import Clock, DuplicateIdempotencyKey, InboundDelivery, UnitOfWork
from workflow.service_layer.transitions import MAX_KEY, TransitionService

log = structlog.get_logger(__name__)

RECEIVE = "receive_handover"
RECEIVE_AGAIN = "receive_handover_again"  # the package of a handover this deployment refused before
DECIDE = {"accepted": "accept_handover", REFUSED: "refuse_handover"}
MEMBER_FIELDS = ("id", "full_name", "date_of_birth", "relationship", "phone", "email")
ATTEMPTS = 3  # a local fire racing the delivery moves the case first: read it again and retry


@dataclass(frozen=True, slots=True)
class Received:
    delivery: InboundDelivery
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The answer, from what was recorded: a redelivery gets the very same one."""
        d = self.delivery
        return {
            "idempotency_key": d.key,
            "kind": d.kind,
            "case_id": d.case_id,
            "from_office": d.from_office,
            "received_at": d.received_at.isoformat(),
        }


def automation(office: str) -> Actor:
    """Another deployment acting for one of its offices: the SYSTEM role, in that office."""
    return Actor(f"{DELIVERY_ACTOR}{office}", office, frozenset({Role.SYSTEM}))


class HandoverInbox:
    def __init__(self, uow: Callable[[], UnitOfWork], transitions: TransitionService, clock: Clock) -> None:
        self._uow, self._transitions, self._clock = uow, transitions, clock

    def receive(self, key: str, body: bytes, request_id: str | None = None) -> Received:
        if not key or len(key) > MAX_KEY:
            raise InvalidPayload(f"an Idempotency-Key of 1 to {MAX_KEY} characters is required")
        digest = hashlib.sha256(body).hexdigest()
        if prior := self._prior(key, digest):
            return prior
        document = parse(body)
        sender = document.origin_office if isinstance(document, Package) else document.from_office
        self._check_offices(sender, document.destination_office if isinstance(document, Package) else None)
        kind = "handover_package" if isinstance(document, Package) else "handover_decision"
        delivery = InboundDelivery(key, kind, document.case_id, sender, digest, self._clock.now())
        trigger, payload = _fire_of(document)
        if trigger == RECEIVE and self._known(document.case_id):
            trigger = RECEIVE_AGAIN
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._transitions.receive(
                    document.case_id, trigger, automation(sender), payload, delivery, request_id
                )
                break
            except (DuplicateIdempotencyKey, VersionConflict):
                if prior := self._prior(key, digest):  # a concurrent delivery of this key won
                    return prior
                if attempt == ATTEMPTS:
                    raise
        log.info("handover.received", kind=kind, case_id=document.case_id, from_office=sender)
        return Received(delivery)

    def _prior(self, key: str, digest: str) -> Received | None:
        with self._uow() as uow:
            prior = uow.inbound.get(key)
        if prior is None:
            return None
        if prior.body_digest != digest:
            raise IdempotencyKeyReused(key)
        return Received(prior, replayed=True)

    def _known(self, case_id: str) -> bool:
        with self._uow() as uow:
            return uow.cases.get(case_id) is not None

    def _check_offices(self, sender: str, addressee: str | None) -> None:
        with self._uow() as uow:
            sender_here = uow.inbound.served_here(sender)
            addressee_here = uow.inbound.served_here(addressee) if addressee else True
        # An office this deployment serves never speaks through the signed channel.
        if sender_here is not False:
            raise PermissionDenied(f"{sender} is not an office of another deployment")
        if addressee_here is not True:
            raise InvalidPayload(f"{addressee} is not an office of this deployment")


def _fire_of(document: Package | Decision) -> tuple[str, Mapping[str, Any]]:
    if isinstance(document, Decision):
        refused = document.decision == REFUSED
        return DECIDE[document.decision], {"reason": document.reason} if refused else {}
    members = [{k: m[k] for k in MEMBER_FIELDS if k in m} for m in document.household]
    return RECEIVE, {
        "origin_office": document.origin_office,
        "destination_office": document.destination_office,
        "language": document.language,
        "members": members,
        "departure_on": document.journey.departure_on,
        "route": document.journey.route,
        "arrived_on": document.arrived_on,
    }
