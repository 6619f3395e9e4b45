"""The unit of work's connection: writes whose outcome nobody reads are held back and sent to
PostgreSQL together, as one statement of data-modifying CTEs, when anything else is sent (a
read, a write whose outcome is read, the commit).

A transition's writes (its case's UPDATE, the changes it records, its history line, its outbox
rows) cost PostgreSQL and the client a statement each, round trip and all: most of a fire
(bench/pipeline.py). Held back and sent as one, they are one round trip. The outcome is the
writes' one by one: the parts of one statement share a snapshot and run in no set order, so a
write joins the held ones only where neither could matter (``Batch._sees_held``), and the
writes after a guarded one (the version-checked UPDATE) write only if it found its row. Errors
(a constraint, a version conflict) surface when the batch is sent, inside the same
transaction, before its commit. SQLite runs each write at once.

A unit of work on PostgreSQL also begins its transaction only when it must (``lazy``): its
connection is in autocommit, plain reads go alone (under READ COMMITTED each statement of a
transaction reads its own snapshot anyway, so they see what they would have seen inside one),
and when the held writes are all there is to commit and one statement can make them all or
none, that statement goes alone: a fire is a SELECT and one statement, without the BEGIN and
COMMIT round trips (a round trip costs the client and the server about as much as a small
statement). Anything else, a write whose outcome is read, a read after held writes, a second
statement of writes, sends BEGIN first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Delete,
    Executable,
    Insert,
    UniqueConstraint,
    Update,
    bindparam,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.visitors import ExternallyTraversible, iterate, replacement_traverse

from workflow.adapters.db import DriverStatement

Params = Mapping[str, Any]
Write = Insert | Update | Delete
# Combined statements kept, one per shape of batch (the statements, the parameters they were given,
# the rows of each): a kind of transition has a few (the columns it changed, the events it made).
_SHAPES_KEPT = 512


@dataclass(frozen=True, slots=True)
class _Held:
    statement: Write
    rows: tuple[Params, ...]
    # Called when the write changed no row (a guarded UPDATE that found its row moved on).
    on_none: Callable[[], None] | None


class Batch:
    def __init__(self, conn: Connection, lazy: bool = False) -> None:
        """``lazy``: ``conn`` is in autocommit and this batch sends BEGIN when a statement
        needs a transaction (PostgreSQL only; the unit of work commits or rolls it back)."""
        self._conn = conn
        self._combine = conn.dialect.name == "postgresql"
        self._held: list[_Held] = []
        self._begun = not (lazy and self._combine)

    def connection(self) -> Connection:
        """The connection, for a statement whose outcome is read: the held writes go first."""
        self._begin()
        self.flush()
        return self._conn

    def reader(self) -> Connection:
        """The connection, for a plain read (no lock taken): the held writes go first, and
        before anything is held or written it reads outside a transaction."""
        if self._held:
            self._begin()
            self.flush()
        return self._conn

    def finish(self) -> None:
        """Sends the held writes before the commit: alone, as the transaction, if nothing
        began one and their one statement makes all or none of them."""
        if not self._begun and self._held and not _all_or_none(self._held):
            self._begin()
        self.flush()

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            self._conn.exec_driver_sql("BEGIN")

    def defer(
        self,
        statement: Write,
        params: Params | Sequence[Params],
        on_none: Callable[[], None] | None = None,
    ) -> None:
        """``statement`` with ``params`` (one row's, or several rows' for an INSERT), sent with
        the batch. ``on_none`` is called if it changed no row, and must raise: the writes held
        after it have not been made."""
        rows = (params,) if isinstance(params, Mapping) else tuple(params)
        if not rows:
            return
        if len(rows) > 1 and not isinstance(statement, Insert):
            raise ValueError("several rows of parameters are for an INSERT only")
        if not self._combine:
            self._run(_Held(statement, rows, on_none))
            return
        if self._sees_held(statement):
            self._begin()  # two statements of writes: one transaction
            self.flush()
        self._held.append(_Held(statement, rows, on_none))

    def flush(self) -> None:
        held, self._held = self._held, []
        if len(held) == 1:
            self._run(held[0])
        elif held:
            shape = _shape(held, self._conn.dialect)
            params = {
                name: row[key]
                for write, names in zip(held, shape.names, strict=True)
                for row, row_names in zip(write.rows, names, strict=True)
                for key, name in zip(write.rows[0], row_names, strict=True)
            }
            if shape.driver is not None:
                counts = shape.driver.run(self._conn, params).one()
            else:
                counts = self._conn.execute(shape.statement, params).one()
            for index, count in zip(shape.checked, counts if shape.checked else (), strict=True):
                if count == 0 and (on_none := held[index].on_none) is not None:
                    _refused(on_none)

    def _run(self, write: _Held) -> None:
        rows = write.rows[0] if len(write.rows) == 1 else list(write.rows)
        result = self._conn.execute(write.statement, rows)
        if write.on_none is not None and result.rowcount == 0:
            _refused(write.on_none)

    def discard(self) -> None:
        """Forgets the held writes (the transaction is rolled back)."""
        self._held = []

    def _sees_held(self, statement: Write) -> bool:
        """Whether ``statement`` must not join the held writes. The parts of one statement see
        one snapshot and run in no set order (PostgreSQL: "the order in which the specified
        updates actually happen is unpredictable"), so it joins only writes of other tables, or
        it is an INSERT after UPDATEs of a table whose only unique key is its primary key,
        which they do not set: they would not have seen its row one by one either, no key they
        free can be the one it takes, and no sequence orders the two."""
        table = statement.table
        held = [h for h in self._held if h.statement.table is table]
        if not held:
            return False
        if not isinstance(statement, Insert) or not all(isinstance(h.statement, Update) for h in held):
            return True
        keys = {column.name for column in table.primary_key}
        return _unique_beyond_primary_key(table) or any(keys & set(h.rows[0]) for h in held)


def _all_or_none(held: Sequence[_Held]) -> bool:
    """Whether the one statement of ``held`` makes all of them or none: one write, or the
    guarded write first and the only one (those after it write only if it found its row)."""
    guards = [i for i, h in enumerate(held) if h.on_none is not None]
    return len(held) == 1 or guards in ([], [0])


def _refused(on_none: Callable[[], None]) -> None:
    on_none()
    raise RuntimeError("a guarded write found no row and its on_none did not raise")


def _unique_beyond_primary_key(table: Any) -> bool:
    constraints = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    return bool(constraints) or any(index.unique for index in table.indexes)


@dataclass(frozen=True, slots=True)
class _Shape:
    statement: Executable
    checked: tuple[int, ...]  # the writes whose count of changed rows the statement returns
    # By write, by row: the names in the statement of the row's parameters (in its keys' order).
    names: tuple[tuple[tuple[str, ...], ...], ...]
    driver: DriverStatement | None = None  # the statement compiled once (no expanding parameters)


_SHAPES: dict[tuple[Any, ...], _Shape] = {}


def _shape(held: Sequence[_Held], dialect: Dialect) -> _Shape:
    """One statement for the batch (built once per shape of batch: the same statements with
    the same parameters): each write a CTE, the statement itself the count of rows each write
    that checks its outcome changed."""
    # The statements themselves (compared by identity), not their id(): a statement built per
    # call and collected could leave its id to another.
    key = tuple((h.statement, tuple(h.rows[0]), len(h.rows), h.on_none is not None) for h in held)
    shape = _SHAPES.get(key)
    if shape is None:
        ctes: list[Any] = []
        names: list[tuple[tuple[str, ...], ...]] = []
        guards: list[Any] = []  # the guarded writes so far: those after them wait on their rows
        for index, write in enumerate(held):
            cte, write_names = _prefixed(write, index, guards)
            ctes.append(cte)
            names.append(write_names)
            if write.on_none is not None:
                guards.append(cte)
        checked = tuple(i for i, h in enumerate(held) if h.on_none is not None)
        counts = [select(func.count()).select_from(ctes[i]).scalar_subquery() for i in checked]
        statement = (select(*counts) if counts else select(literal(1))).add_cte(*ctes)
        try:
            driver: DriverStatement | None = DriverStatement(statement, dialect)
        except ValueError:  # an expanding parameter
            driver = None
        shape = _Shape(statement, checked, tuple(names), driver)
        if len(_SHAPES) >= _SHAPES_KEPT:
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


def _prefixed(write: _Held, index: int, guards: Sequence[Any]) -> tuple[Any, tuple[tuple[str, ...], ...]]:
    """The write as the batch's CTE number ``index``: its parameters named w<index>_..., the
    values of each row bound by name (the table's column types convert them, as they would).
    After a guarded write (``guards``), it writes only if that one changed a row, as it would
    not have run one by one (the guard's on_none raises): a fire's history line would
    otherwise collide with the one of the fire that moved the case on."""
    statement, table = write.statement, write.statement.table
    # The statement's own parameters that the rows give (its WHERE's); a literal's anonymous
    # parameter carries its value and keeps it.
    bound = {b.key for b in iterate(statement) if isinstance(b, BindParameter)} & set(write.rows[0])

    def rename(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in bound:
            return bindparam(f"w{index}_{element.key}", type_=element.type, expanding=element.expanding)
        return None

    renamed: Any = replacement_traverse(cast(ExternallyTraversible, statement), {}, rename)
    columns = [key for key in write.rows[0] if key not in bound]
    went = [select(literal(1)).select_from(guard).exists() for guard in guards]
    if isinstance(statement, Insert):
        values = [
            {key: bindparam(f"w{index}r{r}_{key}", type_=table.c[key].type) for key in columns}
            for r in range(len(write.rows))
        ]
        if went:
            rows = [select(*row.values()).where(*went) for row in values]
            renamed = renamed.from_select(columns, rows[0] if len(rows) == 1 else union_all(*rows))
        else:
            renamed = renamed.values(values if len(values) > 1 else values[0])
    else:
        if columns:
            renamed = renamed.values(
                {key: bindparam(f"w{index}r0_{key}", type_=table.c[key].type) for key in columns}
            )
        if went:
            renamed = renamed.where(*went)
    if write.on_none is not None:
        renamed = renamed.returning(literal(1))
    names = tuple(
        tuple(f"w{index}_{key}" if key in bound else f"w{index}r{r}_{key}" for key in write.rows[0])
        for r in range(len(write.rows))
    )
    return renamed.cte(f"w{index}"), names
