"""Apply and inspect Alembic migrations from code (CLI, server start, readiness, tests).

Alembic (with Mako and Pygments behind it) is imported only by what applies migrations: a
server never does, and loading it cost every server process ~8 MiB it kept for its life
(bench/RESULTS.md, "Files"). What readiness needs, the database's revision and the newest
script's, is read without it: one ``SELECT`` of the table Alembic keeps, and the
``revision``/``down_revision`` assignments of the scripts, parsed, not executed.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic's default, which env.py keeps.
VERSION_TABLE = "alembic_version"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision: the one no script names as its ``down_revision`` (what Alembic's
    ``ScriptDirectory.get_current_head`` answers; ``tests/test_migrations.py`` checks they
    agree). The scripts do not change while a process runs, so this is read once."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        assigned = _literal_assignments(path, ("revision", "down_revision"))
        if "revision" not in assigned:
            continue
        revisions.add(str(assigned["revision"]))
        down = assigned.get("down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
    heads = revisions - parents
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have more than one head: {sorted(heads)}")
    return next(iter(heads), None)


def _literal_assignments(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            target, value = node.targets[0].id, node.value
        else:
            continue
        if target in names and value is not None:
            found[target] = ast.literal_eval(value)
    return found


async def upgrade(settings: Settings) -> None:
    """Bring the database to the newest revision (idempotent), as the login role: the
    application's own role may not change the schema."""
    from alembic import command

    engine = db.create_engine(settings, as_owner=True)
    config = alembic_config(settings.database_url)
    config.attributes["database_role"] = settings.database_role
    config.attributes["database_worker_role"] = settings.database_worker_role

    def run(connection: object) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, None before the first migration (as Alembic's
    ``MigrationContext.get_current_revision`` answers, without loading Alembic)."""

    def read(sync: sa.Connection) -> str | None:
        if not sa.inspect(sync).has_table(VERSION_TABLE):
            return None
        rows = sync.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(rows) > 1:
            raise RuntimeError(f"the database is at more than one revision: {sorted(rows)}")
        return rows[0] if rows else None

    async with engine.connect() as connection:
        return await connection.run_sync(read)
