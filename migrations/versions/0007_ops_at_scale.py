"""ops at scale: case counts kept by the database, jobs by start time, running jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Measured with bench/scale.py at 1,000,000 cases: counting cases by state and owner office took
an index-only scan of every case (about 0.3 s); the running jobs and the latest jobs each a scan
of every job. The counts now live in ``case_counts``, which triggers on ``cases`` keep exact in
the transaction that changes a case.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# 16 rows per (state, owner office), one per shard: the fires of one office into one state (every
# new inquiry of an office, say) would otherwise all update one row and wait on its lock. The
# shard is a hash of the case id, so a case's -1 and +1 land in the same shard. Deferred to COMMIT, so
# the row lock is held for the commit only, not for the rest of the fire; and both rows in one
# statement in key order, so two fires moving cases in opposite directions cannot deadlock.
PG_COUNTS = """
CREATE FUNCTION case_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO case_counts AS k (state, office, shard, cases)
    SELECT d.state, d.office, hashtext(COALESCE(NEW.id, OLD.id)) & 15, d.delta
    FROM (
        SELECT OLD.state, OLD.owner_office, -1 WHERE TG_OP <> 'INSERT'
        UNION ALL
        SELECT NEW.state, NEW.owner_office, 1 WHERE TG_OP <> 'DELETE'
    ) AS d (state, office, delta)
    ORDER BY d.state, d.office
    ON CONFLICT (state, office, shard) DO UPDATE SET cases = k.cases + EXCLUDED.cases;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER case_counts_on_insert AFTER INSERT ON cases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION case_counts_follow();
CREATE CONSTRAINT TRIGGER case_counts_on_update AFTER UPDATE OF state, owner_office ON cases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.owner_office IS DISTINCT FROM NEW.owner_office)
    EXECUTE FUNCTION case_counts_follow();
CREATE CONSTRAINT TRIGGER case_counts_on_delete AFTER DELETE ON cases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION case_counts_follow();
"""
PG_BACKFILL = """
INSERT INTO case_counts (state, office, shard, cases)
SELECT state, owner_office, hashtext(id) & 15, count(*) FROM cases GROUP BY 1, 2, 3
"""

# SQLite has one writer at a time: one row per (state, office), shard 0, no contention.
# A batch_alter_table of ``cases`` rebuilds the table without its triggers: create them again.
_SQLITE_ADD = (
    "INSERT INTO case_counts (state, office, shard, cases) VALUES ({row}.state, {row}.owner_office, 0, {n}) "
    "ON CONFLICT (state, office, shard) DO UPDATE SET cases = cases + {n};"
)
SQLITE_COUNTS = (
    "CREATE TRIGGER case_counts_on_insert AFTER INSERT ON cases BEGIN "
    + _SQLITE_ADD.format(row="NEW", n=1)
    + " END",
    "CREATE TRIGGER case_counts_on_update AFTER UPDATE OF state, owner_office ON cases "
    "WHEN OLD.state IS NOT NEW.state OR OLD.owner_office IS NOT NEW.owner_office BEGIN "
    + _SQLITE_ADD.format(row="OLD", n=-1)
    + " "
    + _SQLITE_ADD.format(row="NEW", n=1)
    + " END",
    "CREATE TRIGGER case_counts_on_delete AFTER DELETE ON cases BEGIN "
    + _SQLITE_ADD.format(row="OLD", n=-1)
    + " END",
)
SQLITE_BACKFILL = """
INSERT INTO case_counts (state, office, shard, cases)
SELECT state, owner_office, 0, count(*) FROM cases GROUP BY state, owner_office
"""


def upgrade() -> None:
    op.create_table(
        "case_counts",
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("office", sa.String(length=32), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("cases", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("state", "office", "shard", name=op.f("pk_case_counts")),
    )
    # Triggers first, then the backfill: on PostgreSQL creating a trigger locks out writers of
    # ``cases`` until this migration commits, so no change falls between the two.
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_COUNTS)
        op.execute(PG_BACKFILL)
    else:
        for statement in SQLITE_COUNTS:
            op.execute(statement)
        op.execute(SQLITE_BACKFILL)

    # `avrr ops` and the dashboard: the latest jobs, and how many run now.
    op.create_index("ix_jobs_started_at", "jobs", ["started_at"])
    op.create_index(
        "ix_jobs_running",
        "jobs",
        ["started_at"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_running", table_name="jobs")
    op.drop_index("ix_jobs_started_at", table_name="jobs")
    if op.get_context().dialect.name == "postgresql":
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER case_counts_on_{event} ON cases")
        op.execute("DROP FUNCTION case_counts_follow()")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER case_counts_on_{event}")
    op.drop_table("case_counts")
