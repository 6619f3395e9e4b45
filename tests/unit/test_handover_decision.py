"""The destination's decision on a handover goes back to the origin only when the origin office
is in another deployment, signed like the package and under the job's idempotency key."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.test_effect_runner import Channel, FactSource, Store, job, runner
from workflow.domain.effects import DELIVER_ACK, effects_of
from workflow.service_layer.effects import Job
from workflow.service_layer.notifications import EMAIL, WEBHOOK

ORIGIN_INBOUND = "https://tallinn.example.org/handover/inbound"


@dataclass
class Facts(FactSource):
    def handover_decision(self, job: Job) -> dict[str, Any]:
        return {"type": "avrr.handover.decision.v1", "case_id": job.case_id, "event": job.event_type}


@pytest.mark.parametrize("event_type", ["HandoverAccepted", "HandoverRefused"])
def test_a_decision_goes_to_an_origin_office_in_another_deployment(event_type: str) -> None:
    (effect,) = [e for e in effects_of(event_type) if e.kind == DELIVER_ACK]
    store, webhook, email = Store(), Channel(), Channel()
    run = runner(store, {WEBHOOK: webhook, EMAIL: email}, Facts(webhook=ORIGIN_INBOUND))

    assert run.run(job(event_type, effect.name)) == "done"
    store.status = "running"  # a redelivery of a job that died after the send: no second send
    assert run.run(job(event_type, effect.name)) == "done"

    (message,) = webhook.sent
    assert (message.recipient, message.subject) == (ORIGIN_INBOUND, event_type)
    assert message.idempotency_key == f"event-1/{effect.name}"
    assert json.loads(message.body) == {
        "type": "avrr.handover.decision.v1",
        "case_id": "case-1",
        "event": event_type,
    }
    assert email.sent == [] and store.deliveries == {WEBHOOK}


def test_a_decision_within_the_deployment_sends_nothing() -> None:
    (effect,) = [e for e in effects_of("HandoverAccepted") if e.kind == DELIVER_ACK]
    store, webhook = Store(), Channel()

    assert runner(store, {WEBHOOK: webhook}, Facts(webhook=None)).run(
        job("HandoverAccepted", effect.name)
    ) == ("done")
    assert webhook.sent == [] and store.deliveries == set()
