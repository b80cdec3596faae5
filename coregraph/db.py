"""Engine and connections. The one place that knows SQLite from PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import TextClause, TextualSelect, event, exc, text, util
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import greenlet_spawn

from coregraph import telemetry
from coregraph.models.base import RowSecurity
from coregraph.settings import Settings

_TENANTS = "string_to_array(current_setting('app.tenant_ids', true), ',')"
ROW_SECURITY_POLICY = "tenant_wall"
# A pooled PostgreSQL connection is pinged before use when it has sat in the pool this long.
PING_AFTER_IDLE_SECONDS = 1.0


def dialect_insert(dialect_name: str, table: Any) -> Any:
    """``INSERT`` into ``table`` with ``ON CONFLICT`` (``on_conflict_do_nothing``/``_update``,
    ``excluded``): PostgreSQL's construct or SQLite's, which agree on these. The PostgreSQL
    dialect package is imported by the first process that asks for it, not by every process
    that loads coregraph's services: a server on SQLite would carry ~2.5 MiB of it unused
    (bench/RESULTS.md, "Files")."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def create_engine(
    settings: Settings, *, as_owner: bool = False, role: str | None = None
) -> AsyncEngine:
    """The application's engine. On PostgreSQL every connection drops to
    ``COREGRAPH_DATABASE_ROLE`` (which owns no table), so row-level security applies to it;
    ``role`` names another such role instead (``COREGRAPH_DATABASE_WORKER_ROLE`` for the relay,
    which reads across tenants through policies of its own); ``as_owner`` keeps the login
    role, for migrations only."""
    kwargs: dict[str, Any] = {
        "echo": settings.database_echo,
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
    }
    if settings.is_sqlite:
        _ensure_sqlite_dir(settings.database_url)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        role = role or settings.database_role
        if role and not as_owner:
            # The role is a startup parameter of the session, not a `SET ROLE` statement: a
            # statement would run inside the driver's implicit transaction and the pool's
            # rollback-on-return would quietly undo it (and with it row-level security).
            kwargs["connect_args"] = {"server_settings": {"role": role}}
    engine = create_async_engine(settings.database_url, **kwargs)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        _ping_when_idle(engine)
    telemetry.instrument_engine(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that sat idle: what it guards against
    (a server restart, a proxy's idle timeout) happens to a connection while it waits in the
    pool, and a connection back from a request a moment ago has just answered. Under load that
    was one round trip per checkout (two per API-key request); a connection that does fail
    mid-use is a disconnect error, on which SQLAlchemy invalidates the pool as before."""
    dialect = engine.dialect

    def mark(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info["coregraph_idle_since"] = time.monotonic()

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("coregraph_idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # As pool_pre_ping does: this connection and every older one are stale.
                raise exc.InvalidatePoolError() from error
            raise

    event.listen(engine.sync_engine, "connect", mark)
    event.listen(engine.sync_engine, "checkin", mark)
    event.listen(engine.sync_engine, "checkout", ping)


async def scope_transaction(
    conn: AsyncConnection,
    *,
    tenant_ids: Iterable[str],
    user_id: str | None = None,
    api_key_hash: str | None = None,
    invitation_token_hash: str | None = None,
) -> None:
    """Tell PostgreSQL's row-level security what this transaction may see (the second wall
    behind the application's own tenant filters). ``set_config(..., true)`` is local to the
    transaction, so nothing leaks to the next user of a pooled connection. No-op on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    await conn.execute(
        SCOPE_STATEMENT,
        scope_parameters(
            tenant_ids=tenant_ids,
            user_id=user_id,
            api_key_hash=api_key_hash,
            invitation_token_hash=invitation_token_hash,
        ),
    )


SCOPE_STATEMENT = text(
    "SELECT set_config('app.tenant_ids', :tenant_ids, true),"
    " set_config('app.user_id', :user_id, true),"
    " set_config('app.api_key_hash', :api_key_hash, true),"
    " set_config('app.invitation_token_hash', :invitation_token_hash, true)"
)


def scope_parameters(
    *,
    tenant_ids: Iterable[str],
    user_id: str | None = None,
    api_key_hash: str | None = None,
    invitation_token_hash: str | None = None,
) -> dict[str, str]:
    """The settings ``scope_transaction`` gives a transaction, for ``SCOPE_STATEMENT`` or a
    function that scopes its own transaction (migration 0013's ``append_events``)."""
    return {
        "tenant_ids": ",".join(sorted(tenant_ids)),
        "user_id": user_id or "",
        "api_key_hash": api_key_hash or "",
        "invitation_token_hash": invitation_token_hash or "",
    }


def row_security_statements(table: str, security: RowSecurity) -> list[str]:
    """PostgreSQL statements that wall ``table`` as ``security`` declares (idempotent).

    Migrations run them when they create a tenant-owned table or change its declaration. The
    policy's comment records the declaration it was built from, so a test can tell a model
    whose declaration changed without a migration (``tests/test_row_level_security.py``).
    """
    wall = f"{security.tenant_column} = ANY ({_TENANTS})"
    visible = f"{wall} OR {security.also_visible}" if security.also_visible else wall
    writable = f"{wall} OR {security.also_writable}" if security.also_writable else wall
    comment = describe_row_security(security).replace("'", "''")
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        # Owners bypass row-level security unless it is forced.
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {ROW_SECURITY_POLICY} ON {table}",
        f"CREATE POLICY {ROW_SECURITY_POLICY} ON {table} USING ({visible}) WITH CHECK ({writable})",
        f"COMMENT ON POLICY {ROW_SECURITY_POLICY} ON {table} IS '{comment}'",
    ]


def describe_row_security(security: RowSecurity) -> str:
    return (
        f"tenant_column={security.tenant_column}; also_visible={security.also_visible or ''}; "
        f"also_writable={security.also_writable or ''}"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while one writer commits; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _ensure_sqlite_dir(url: str) -> None:
    import os

    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)


async def fetch_autocommitted(
    engine: AsyncEngine, statement: TextClause | TextualSelect, parameters: Mapping[str, Any]
) -> Mapping[Any, Any] | None:
    """PostgreSQL: ``statement``'s first row as a mapping of its columns (or None), run alone in
    its own autocommitted transaction — for a function that scopes its own transaction
    (migrations 0013 and 0022).

    The statement goes to the pooled connection's driver directly: SQLAlchemy's execution
    around it (a ``Connection``, its execution context and result, the isolation level set
    and reset) cost about twice the driver's own work, ~0.2 ms of CPU per call, on the two
    statements of every emitEvent (bench/RESULTS.md, "Event ingest"). What SQLAlchemy adds
    that callers rely on is kept: its checkout (the idle ping), its exceptions (an
    ``IntegrityError`` for a unique violation, ``connection_invalidated`` for a lost
    connection, which invalidates the pool as ``Connection`` does). An engine something
    observes statement by statement (``COREGRAPH_DATABASE_ECHO``, the OpenTelemetry
    instrumentation, an error hook) runs it through SQLAlchemy instead, unchanged."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect
    if (
        sync_engine.echo
        or sync_engine.dispatch.before_cursor_execute
        or sync_engine.dispatch.after_cursor_execute
        or dialect.dispatch.handle_error
    ):
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await autocommit.execute(statement, parameters)).first()
            return None if row is None else row._mapping
    sql, names = _driver_statement(dialect, statement)
    arguments = [parameters[name] for name in names]
    pooled = await engine.raw_connection()
    try:
        record: Mapping[Any, Any] | None = await pooled.driver_connection.fetchrow(  # type: ignore[union-attr]
            sql, *arguments
        )
        return record
    except BaseException as error:
        translated = _translated(sync_engine, pooled, sql, arguments, error)
        if translated is error:
            raise
        raise translated from translated.orig if isinstance(translated, exc.DBAPIError) else error
    finally:
        await greenlet_spawn(pooled.close)


# By dialect and SQL text (the statements are the callers' constants: a handful).
_DRIVER_STATEMENTS: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {}


def _driver_statement(
    dialect: Any, statement: TextClause | TextualSelect
) -> tuple[str, tuple[str, ...]]:
    """``statement`` as the driver takes it ($1, $2, ...) and its parameters' names in that
    order, compiled once."""
    clause = statement if isinstance(statement, TextClause) else statement.element
    key = (dialect.name, dialect.paramstyle, str(getattr(clause, "text", clause)))
    found = _DRIVER_STATEMENTS.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        names = tuple(compiled.positiontup or ())
        found = _DRIVER_STATEMENTS[key] = (str(compiled), names)
    return found


def _translated(
    sync_engine: Any, pooled: Any, sql: str, arguments: list[Any], error: BaseException
) -> BaseException:
    """What ``Connection`` raises for ``error`` from the driver (``_handle_dbapi_exception``):
    the driver's exception as SQLAlchemy's (``IntegrityError``, ``DBAPIError``...), the
    connection invalidated on a disconnect (and the pool with it) or when interrupted."""
    dialect = sync_engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    if isinstance(error, Exception) and not isinstance(error, dbapi_error):
        try:
            type(pooled.dbapi_connection)._handle_exception_no_connection(
                dialect.loaded_dbapi, error
            )
        except Exception as translated:
            error = translated
    interrupted = util.is_exit_exception(error)
    disconnect = interrupted or (
        isinstance(error, dbapi_error)
        and dialect.is_disconnect(error, pooled.dbapi_connection, None)
    )
    if disconnect:
        if not interrupted:
            # Every connection older than this one is suspect too (this also invalidates it).
            sync_engine.pool._invalidate(pooled, error)
        if pooled.is_valid:
            pooled.invalidate(error)
    if not isinstance(error, dbapi_error):
        return error
    return exc.DBAPIError.instance(
        sql,
        arguments,
        error,
        dbapi_error,
        hide_parameters=sync_engine.hide_parameters,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
