"""Deliveries received from another deployment, on the unit of work's connection."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.service_layer.ports import DuplicateIdempotencyKey, InboundDelivery

d, o = tb.inbound_deliveries.c, tb.offices.c
_SELECT = select(d.idempotency_key, d.kind, d.case_id, d.from_office, d.body_digest, d.received_at)


class SqlInboundStore:
    def __init__(self, conn: Connection | Batch) -> None:
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)

    def get(self, key: str) -> InboundDelivery | None:
        row = self._conn.reader().execute(_SELECT.where(d.idempotency_key == key)).first()
        return InboundDelivery(*row) if row else None

    def add(self, delivery: InboundDelivery) -> None:
        values = {
            "idempotency_key": delivery.key,
            "kind": delivery.kind,
            "case_id": delivery.case_id,
            "from_office": delivery.from_office,
            "body_digest": delivery.body_digest,
            "received_at": delivery.received_at,
        }
        conn = self._conn.connection()  # the held writes first: their errors are not this one's
        try:
            conn.execute(insert(tb.inbound_deliveries), values)
        except IntegrityError as exc:
            if "inbound_deliveries" not in str(exc.orig):  # PostgreSQL and SQLite both name it
                raise
            raise DuplicateIdempotencyKey(delivery.key) from None

    def served_here(self, office: str) -> bool | None:
        row = self._conn.reader().execute(select(o.webhook_url).where(o.code == office)).first()
        return None if row is None else not row.webhook_url
