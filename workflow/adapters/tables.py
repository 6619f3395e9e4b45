"""The database schema as SQLAlchemy Core tables; Alembic migrations are generated from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnClause,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
ID_LENGTH = 36  # a UUID in text form
Id = String(ID_LENGTH)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, UTC out, on every backend: SQLite drops offsets and PostgreSQL
    answers in the session's time zone, so values are converted both ways."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # PostgreSQL sessions run in UTC (make_engine sets TimeZone) and psycopg keeps offsets:
    # no per-value work there, which the hot path of every fire would otherwise pay.
    def bind_processor(self, dialect: Dialect) -> Any:
        return None if dialect.name == "postgresql" else super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return None if dialect.name == "postgresql" else super().result_processor(dialect, coltype)


Stamp = UtcDateTime()

offices = Table(
    "offices",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("country", String(2), nullable=False),
    Column("webhook_url", String(500)),  # another deployment's handover endpoint
    Column("email", String(254)),  # where staff notices for this office go
)

cases = Table(
    "cases",
    metadata,
    Column("id", Id, primary_key=True),
    Column("state", String(40), nullable=False),
    Column("version", Integer, nullable=False),
    Column("lifecycle_version", String(16), nullable=False),
    Column("origin_office", ForeignKey("offices.code"), nullable=False),
    Column("destination_office", ForeignKey("offices.code"), nullable=False),
    Column("owner_office", ForeignKey("offices.code"), nullable=False),
    Column("language", String(5), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
    Column("state_entered_at", Stamp, nullable=False),
    # Null until the destination office may see the case (lifecycle ``Transition.shares``).
    Column("shared_at", Stamp),
    Column("nationality", String(2)),
    Column("expulsion_order", Boolean),
    Column("consent_signed_on", Date),
    Column("travel_document", String(16)),
    Column("asylum_status", String(16)),
    Column("return_chosen_while_pending", Boolean),
    Column("document_kind", String(24)),
    Column("departure_on", Date),
    Column("route", String(64)),
    Column("carrier", String(64)),
    Column("arrived_on", Date),
    Column("last_contact_on", Date),
    Column("last_visit_on", Date),
    Column("outcome", String(32)),
    CheckConstraint("version >= 1", name="version_positive"),
    Index(None, "owner_office", "state"),
    Index(None, "state", "state_entered_at"),
    Index(None, "destination_office", "state"),
    Index(None, "origin_office", "state"),  # the cases an office handed over
    Index(None, "updated_at"),
    Index(None, "state", "updated_at"),  # stuck cases: per state, unchanged since before a limit
)

# Cases per state and owner office, kept exact by triggers on ``cases`` (migration 0007) in the
# transaction that changes a case: the ops status reads these few rows instead of counting every
# case. PostgreSQL spreads each (state, office) over 16 shards by a hash of the case id, so
# concurrent fires seldom wait on one row; sum over the shards, and skip sums of zero.
case_counts = Table(
    "case_counts",
    metadata,
    Column("state", String(40), primary_key=True),
    Column("office", String(32), primary_key=True),
    Column("shard", SmallInteger, primary_key=True),
    Column("cases", BigInteger, nullable=False),
)

household_members = Table(
    "household_members",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("full_name", String(200), nullable=False),
    Column("date_of_birth", Date, nullable=False),
    Column("relationship", String(16), nullable=False),
    Column("phone", String(40)),
    Column("email", String(254)),
)

case_history = Table(
    "case_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("trigger", String(48), nullable=False),
    Column("from_state", String(40)),
    Column("to_state", String(40), nullable=False),
    Column("actor_id", String(120), nullable=False),
    Column("actor_office", String(32)),
    Column("reason", Text),
    Column("payload", Json, nullable=False),
    Column("request_id", String(64)),
    Column("lifecycle_version", String(16), nullable=False),
    Column("occurred_at", Stamp, nullable=False),
    UniqueConstraint("case_id", "version"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", Id, nullable=False, unique=True),
    Column("case_id", Id, nullable=False),
    Column("case_version", Integer, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("payload", Json, nullable=False),
    Column("occurred_at", Stamp, nullable=False),
    Column("sent_at", Stamp),
    Column("attempts", Integer, nullable=False, server_default=text("0")),  # times sent
    # Every job of the event finished (or filed in the dead letters): the relay's search for
    # lost messages looks at it no more.
    Column("settled_at", Stamp),
    # A case's events in their order: a task's job asks which came between two of them
    # (workflow/adapters/jobs.py, settleable and first_settler); every look-up by case.
    Index("ix_outbox_case_events", "case_id", "id"),
    # The relay's query: unsent rows in commit order.
    Index(
        "ix_outbox_unsent",
        "id",
        postgresql_where=text("sent_at IS NULL"),
        sqlite_where=text("sent_at IS NULL"),
    ),
    # The relay's search for events whose message was lost: sent rows not yet settled.
    Index(
        "ix_outbox_unsettled",
        "sent_at",
        postgresql_where=text("sent_at IS NOT NULL AND settled_at IS NULL"),
        sqlite_where=text("sent_at IS NOT NULL AND settled_at IS NULL"),
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("actor_id", String(120), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("case_id", Id, nullable=False),
    Column("response", Json, nullable=False),
    Column("created_at", Stamp, nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, unique=True),
    Column("currency", String(3), nullable=False),
    Column("drafted_by", String(120), nullable=False),
    Column("drafted_at", Stamp, nullable=False),
    Column("approved_by", String(120)),
    Column("approved_at", Stamp),
)

budget_lines = Table(
    "budget_lines",
    metadata,
    Column("id", Id, primary_key=True),
    Column("plan_id", ForeignKey("plans.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # the order the plan lists its lines in
    Column("case_id", Id, nullable=False),
    Column("member_id", ForeignKey("household_members.id"), nullable=False),
    Column("category", String(24), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("allocated_minor", BigInteger, nullable=False),
    Column("disbursed_minor", BigInteger, nullable=False, server_default=text("0")),
    Column("purpose", String(200), nullable=False, server_default=""),
    # The database, not Python, makes overspending impossible: a concurrent
    # increment that would pass the allocation fails this check.
    CheckConstraint("disbursed_minor <= allocated_minor", name="within_allocation"),
    CheckConstraint("disbursed_minor >= 0", name="disbursed_not_negative"),
    CheckConstraint("allocated_minor > 0", name="allocated_positive"),
    UniqueConstraint("plan_id", "member_id", "category"),
)

disbursements = Table(
    "disbursements",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("budget_line_id", ForeignKey("budget_lines.id"), nullable=False, index=True),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("vendor", String(200), nullable=False),
    Column("receipt_ref", String(120)),  # recorded after the approval
    # The finance officer who approved the request, and when: the money moved then.
    Column("disbursed_by", String(120)),
    Column("disbursed_at", Stamp),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
    CheckConstraint("kind IN ('in_kind', 'cash')", name="kind_known"),
    # Requests (migration 0005): requested, then approved or rejected; receipted once its receipt is in.
    Column("status", String(16), nullable=False),
    Column("position", Integer, nullable=False),  # the order the case's requests were made in
    Column("requested_by", String(120)),  # none on tranches disbursed in one step before 0005
    Column("requested_at", Stamp, nullable=False),
    Column("receipt_recorded_by", String(120)),
    Column("receipt_recorded_at", Stamp),
    Column("rejected_by", String(120)),
    Column("rejected_at", Stamp),
    CheckConstraint("status IN ('requested', 'approved', 'rejected', 'receipted')", name="status_known"),
    CheckConstraint(
        "status IN ('requested', 'rejected') OR (disbursed_by IS NOT NULL AND disbursed_at IS NOT NULL)",
        name="approval_recorded",
    ),
    CheckConstraint("status <> 'receipted' OR receipt_ref IS NOT NULL", name="receipt_recorded"),
    CheckConstraint("status <> 'rejected' OR rejected_by IS NOT NULL", name="rejection_recorded"),
    # Four eyes, in the database too: the approver is never the requester.
    CheckConstraint("disbursed_by <> requested_by", name="four_eyes"),
    UniqueConstraint("case_id", "position"),
)

contributions = Table(
    "contributions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("purpose", String(200), nullable=False),
    Column("recorded_by", String(120), nullable=False),
    Column("recorded_at", Stamp, nullable=False),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
)

monitoring_visits = Table(
    "monitoring_visits",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("visited_on", Date, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("plan_on_track", Boolean, nullable=False),
    Column("notes", Text),
    Column("recorded_by", String(120), nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("kind", String(48), nullable=False),
    Column("status", String(16), nullable=False),
    Column("office", String(32), nullable=False),
    Column("due_on", Date),
    Column("source_event_id", Id),
    Column("created_at", Stamp, nullable=False),
    Column("completed_at", Stamp),  # done by staff, or cancelled when the journey was called off
    Column("completed_by", String(120)),  # the actor who completed it; null when cancelled
    UniqueConstraint("source_event_id", "kind"),
    Index(None, "office", "status", "due_on"),
    # A case's open tasks of a kind, which a new one replaces or an event settles (migration 0013).
    Index(
        "ix_tasks_case_kind_open",
        "case_id",
        "kind",
        postgresql_where=text("status = 'open'"),
        sqlite_where=text("status = 'open'"),
    ),
)

# Literals, not bound parameters, where a query must use a partial index on status: a prepared
# statement's generic plan (psycopg prepares a statement after its fifth run on a connection) can
# prove the index's predicate (status = 'pending') only from a constant, and otherwise scans.
PENDING: ColumnClause[str] = literal_column("'pending'")
RUNNING: ColumnClause[str] = literal_column("'running'")
OPEN_TASK: ColumnClause[str] = literal_column("'open'")

timers = Table(
    "timers",
    metadata,
    Column("id", Id, primary_key=True),
    # Looked up by ix_timers_case_created, which leads with it (migration 0015).
    Column("case_id", ForeignKey("cases.id"), nullable=False),
    Column("name", String(48), nullable=False),
    Column("state", String(40), nullable=False),
    Column("due_at", Stamp, nullable=False),
    Column("fires_trigger", String(48), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Stamp, nullable=False),
    Column("fired_at", Stamp),
    Column("claimed_at", Stamp),  # a beat run is firing it; claimed again once the lease runs out
    # Beat's query: pending timers by due time.
    Index(
        "ix_timers_due",
        "due_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    # A case's pending timers: what a transition cancels and what a notice's dates come from. A
    # case keeps every timer it ever had (each visit or rebooking cancels one and starts one), so
    # an index on case_id alone read the whole history (migration 0009).
    Index(
        "ix_timers_case_pending",
        "case_id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    # A notice's deadline as of its event: the timer its transition started, or the one that
    # fired it (workflow/adapters/notices.py; migration 0011). Every other look-up by case, the
    # foreign key's included (migration 0015).
    Index("ix_timers_case_created", "case_id", "created_at"),
    Index(
        "ix_timers_case_fired",
        "case_id",
        "fired_at",
        postgresql_where=text("fired_at IS NOT NULL"),
        sqlite_where=text("fired_at IS NOT NULL"),
    ),
)

# One row per (event, effect): the workers' inbox, attempt counter and outcome. An effect's
# own database write and its ``status = 'done'`` commit together, so a redelivered event
# finds it done and does nothing twice.
jobs = Table(
    "jobs",
    metadata,
    Column("event_id", Id, primary_key=True),
    Column("effect", String(96), primary_key=True),
    Column("case_id", Id, nullable=False, index=True),
    Column("event_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # running, done, dead
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("started_at", Stamp, nullable=False),
    Column("finished_at", Stamp),
    Index(
        "ix_jobs_dead",
        "started_at",
        postgresql_where=text("status = 'dead'"),
        sqlite_where=text("status = 'dead'"),
    ),
    Index(None, "started_at"),  # the latest jobs (ops)
    Index(
        "ix_jobs_running",
        "started_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
)

# One row per external send that went out (channel: email, sms, webhook, local): a retried
# job skips the channels already done. The address is not stored, only that it was sent.
deliveries = Table(
    "deliveries",
    metadata,
    Column("event_id", Id, primary_key=True),
    Column("effect", String(96), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("delivered_at", Stamp, nullable=False),
)

# Jobs that spent their attempts: the error and the attempts, until ops replay them.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", Id, nullable=False),
    Column("effect", String(96), nullable=False),
    Column("case_id", Id, nullable=False, index=True),
    Column("event_type", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_at", Stamp, nullable=False),
    Column("replayed_at", Stamp),
    Index(
        "ix_dead_letters_open",
        "dead_at",
        postgresql_where=text("replayed_at IS NULL"),
        sqlite_where=text("replayed_at IS NULL"),
    ),
)

# API tokens for people and machine clients: shown once, stored as a SHA-256 digest (the
# token is 256 random bits, so a plain digest cannot be reversed), bound to roles and an office.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True),
    Column("prefix", String(16), nullable=False, unique=True),  # the public part, for lookup
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(120), nullable=False),
    Column("actor_id", String(120), nullable=False),
    Column("office", ForeignKey("offices.code")),
    Column("roles", String(200), nullable=False),  # comma-separated Role values
    Column("created_at", Stamp, nullable=False),
    Column("expires_at", Stamp, nullable=False),
    Column("revoked_at", Stamp),
    Column("last_used_at", Stamp),
)

# Every refused attempt and every read of a case's personal data (who, what, outcome).
access_log = Table(
    "access_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Stamp, nullable=False),
    Column("actor_id", String(120)),  # none when the credentials were missing or bad
    Column("office", String(32)),
    Column("case_id", Id),
    Column("action", String(64), nullable=False),
    Column("request_id", String(64)),
    Column("outcome", String(48), nullable=False),  # "ok" or the refusal's error code
    Index(None, "case_id", "at"),
    Index(None, "at"),
)

# Signed deliveries received from another deployment (a handover package, an acceptance):
# the idempotency key makes a redelivery answer as the first one did and change nothing.
inbound_deliveries = Table(
    "inbound_deliveries",
    metadata,
    Column("idempotency_key", String(200), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("case_id", Id, nullable=False),
    Column("from_office", String(32), nullable=False),
    Column("body_digest", String(64), nullable=False),
    Column("received_at", Stamp, nullable=False),
)
