"""The async engine: durable SQLite or PostgreSQL, and database errors as our own exceptions."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from linehost.errors import DatabaseUnavailable, LinehostError, StoreError

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT = 5.0  # seconds; an unreachable server must not hang start-up
PG_COMMAND_TIMEOUT = 60.0
PG_PREPARED_STATEMENTS = 2000  # per connection (SQLAlchemy's asyncpg default is 100)

#: SQLSTATEs of a server that cannot serve now but may soon: connection exceptions (08...),
#: admin / crash shutdown and "starting up" (57P01-57P03), too many connections (53300).
PG_UNAVAILABLE_CLASSES = ("08",)
PG_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})

#: The store writer's PostgreSQL session settings (see `create_engine(writer=True)`).
WRITER_SETTINGS = {"enable_seqscan": "off", "plan_cache_mode": "force_generic_plan"}

#: Connection execution option: on SQLite, begin with BEGIN IMMEDIATE (take the write lock).
WRITE_TRANSACTION = "linehost_write_transaction"

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def database_url(url: str) -> URL:
    """Parse `url`, choosing the async driver for plain `sqlite://` and `postgresql://`."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL {url!r}") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.drivername not in _DRIVERS.values():
        raise StoreError(
            f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
            "use sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        )
    return parsed


def create_engine(
    url: str, *, ping: bool = True, writer: bool = False, autocommit: bool = False
) -> AsyncEngine:
    """An engine for `url` set up for durability (SQLite) or resilience (PostgreSQL).

    `ping` (PostgreSQL): test each pooled connection before use, so a reader never meets one
    the server dropped. The store's writer turns it off: a round trip per group commit is
    dear, and it runs a batch again itself when its connection turns out dead.

    `writer` (PostgreSQL): the store writer's connections, whose statements are all lookups
    by key through an index. Their plans are prepared once and kept; one made while a table
    was small (a new line database, before autovacuum's first ANALYZE) scans the whole table
    and keeps doing so as it grows. `enable_seqscan = off` keeps them on their indexes. And
    `plan_cache_mode = force_generic_plan`: PostgreSQL otherwise plans a prepared statement
    anew at every execution while its custom plans look cheaper than the generic one, which
    for the group commit's single statement (pgflush) was 0.77 ms of server time per commit
    (of 1.3 ms), measured with `log_min_duration_statement = 0`.

    `autocommit` (PostgreSQL; ignored for SQLite): every statement its own transaction, for
    readers that need no snapshot across statements: no BEGIN and ROLLBACK round trips, and
    the ping is one round trip instead of three (outside a transaction asyncpg's ping is a
    bare `;`).
    """
    parsed = database_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_async_engine(parsed)
            _setup_sqlite(engine)
        else:
            engine = create_async_engine(
                parsed,
                pool_pre_ping=ping,
                **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
                pool_size=5,
                max_overflow=5,
                connect_args={
                    "timeout": PG_CONNECT_TIMEOUT,
                    "command_timeout": PG_COMMAND_TIMEOUT,
                    # A batch's IN lists differ in length from batch to batch: each length is a
                    # statement of its own to prepare. Keep them all (bytes each) rather than
                    # prepare again, which costs a round trip and server CPU.
                    "prepared_statement_cache_size": PG_PREPARED_STATEMENTS,
                    **({"server_settings": WRITER_SETTINGS} if writer else {}),
                },
            )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(
            f"cannot use database URL {safe_url(parsed)!r}: {_first_line(exc)}"
        ) from exc
    return engine


def safe_url(url: URL | AsyncEngine) -> str:
    """The URL without its password, for messages."""
    if isinstance(url, AsyncEngine):
        url = url.url
    return url.render_as_string(hide_password=True)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database cannot be reached (worth retrying later)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        # SQLAlchemy 2.1 wraps asyncpg's connect errors too: look at the server's answer.
        inner = exc.orig.__cause__ if exc.orig is not None else None
        return inner is not None and _refused_by_server(inner)
    if _refused_by_server(exc):
        return True
    return isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError)


def _refused_by_server(exc: BaseException) -> bool:
    """A PostgreSQL server that is restarting, shutting down or refusing this database.

    asyncpg raises these while connecting; SQLAlchemy 2.0 passes them on unwrapped, 2.1 wraps
    them in a DBAPIError (is_unavailable looks inside).
    """
    state = getattr(exc, "sqlstate", None)
    if not isinstance(state, str):
        return False
    if state.startswith(PG_UNAVAILABLE_CLASSES) or state in PG_UNAVAILABLE_STATES:
        return True
    # 55000 is broad; while connecting it means ALLOW_CONNECTIONS false (maintenance).
    return state == "55000" and "not currently accepting connections" in str(exc)


def translate_error(exc: BaseException, engine: AsyncEngine | URL | None = None) -> LinehostError:
    """Our exception for a database failure: DatabaseUnavailable or StoreError, one line."""
    if isinstance(exc, LinehostError):
        return exc
    where = f" {safe_url(engine)}" if engine is not None else ""
    if is_unavailable(exc):
        return DatabaseUnavailable(f"database{where} unavailable: {_first_line(exc)}")
    return StoreError(f"database{where} error: {_first_line(exc)}")


def violation_text(exc: IntegrityError) -> str:
    """What an IntegrityError says about the rule it broke, lower case: the driver's message,
    plus for asyncpg the constraint name and PostgreSQL's DETAIL (`Key (col)=(...)`), which
    SQLAlchemy 2.1 no longer folds into the message. SQLite names `table.column` itself."""
    driver = exc.orig.__cause__ if exc.orig is not None else None
    parts = [str(exc.orig)]
    for attr in ("constraint_name", "detail"):
        value = getattr(driver, attr, None)
        if isinstance(value, str):
            parts.append(value)
    return " ".join(parts).lower()


def _first_line(exc: BaseException) -> str:
    inner: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        inner = exc.orig
    elif isinstance(exc, SQLAlchemyError) and exc.__cause__ is not None:
        inner = exc.__cause__
    text = str(inner).strip() or type(inner).__name__
    first = text.splitlines()[0].strip()
    # asyncpg wraps its errors as "<class 'asyncpg....'>: message"
    if first.startswith("<class '") and ">: " in first:
        first = first.split(">: ", 1)[1]
    return first


def _setup_sqlite(engine: AsyncEngine) -> None:
    """WAL with synchronous=FULL: a committed assignment survives a power cut."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN is emitted when SQLAlchemy says.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers lock at BEGIN so that what they read stays true until they commit.
        write = conn.get_execution_options().get(WRITE_TRANSACTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
