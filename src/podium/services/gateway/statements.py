"""Statements the store runs for every request, compiled once and run on the DBAPI cursor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam
from sqlalchemy.exc import DBAPIError


class Prepared:
    """A Core statement compiled once per dialect and run straight on the DBAPI cursor.

    For the few small writes every request makes (admission, settlement, its record),
    building, caching and compiling a statement through SQLAlchemy cost the store thread
    several times what the database itself spends. Parameters are bound by name
    (`bindparam`); errors come back as SQLAlchemy's own, as from `conn.execute`.

    Example: TAKE = Prepared(lambda conn: upsert(conn, ...)); TAKE.execute(conn, {...})
    """

    def __init__(self, build: Callable[[Connection], Any]) -> None:
        self.build = build
        # dialect name -> SQL text and, for positional paramstyles, the parameters' order
        self._sql: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _compiled(self, conn: Connection) -> tuple[str, tuple[str, ...] | None]:
        found = self._sql.get(conn.dialect.name)
        if found is None:
            compiled = self.build(conn).compile(dialect=conn.dialect)
            order = compiled.positiontup
            found = self._sql[conn.dialect.name] = (compiled.string,
                                                    tuple(order) if order else None)
        return found

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run with one set of parameters; the DBAPI cursor, to fetch what it returns."""
        sql, order = self._compiled(conn)
        args = params if order is None else tuple(params[name] for name in order)
        return self._run(conn, sql, args, many=False)

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        sql, order = self._compiled(conn)
        args = rows if order is None else [tuple(row[name] for name in order) for row in rows]
        self._run(conn, sql, args, many=True)

    @staticmethod
    def _run(conn: Connection, sql: str, args: Any, *, many: bool) -> Any:
        cursor = conn.connection.cursor()
        try:
            (cursor.executemany if many else cursor.execute)(sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, args, exc, conn.dialect.loaded_dbapi.Error) from exc
        return cursor


def _insert_all(table: Table) -> Prepared:
    """An INSERT of every column but an autoincrement key, parameters named by column."""
    names = [c.name for c in table.columns if c is not table.autoincrement_column]
    return Prepared(lambda conn: table.insert().values({n: bindparam(n) for n in names}))


class RowInsert:
    """An operation inserting one row; the rows of one batch go in as a single executemany.

    Example: store.run(RowInsert(usage_table, {...}, then=lambda conn: ...))
    """

    _inserts: dict[str, Prepared] = {}

    def __init__(self, table: Table, row: dict[str, Any],
                 then: Callable[[Connection], None] | None = None) -> None:
        self.table = table
        self.row = row
        self.then = then

    @classmethod
    def insert(cls, table: Table) -> Prepared:
        found = cls._inserts.get(table.name)
        if found is None:
            found = cls._inserts[table.name] = _insert_all(table)
        return found

    def __call__(self, conn: Connection) -> None:
        self.insert(self.table).executemany(conn, [self.row])
        if self.then is not None:
            self.then(conn)
