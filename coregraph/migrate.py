"""Apply and inspect Alembic migrations from code (CLI, server start, readiness, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def upgrade(settings: Settings) -> None:
    """Bring the database to the newest revision (idempotent), as the login role: the
    application's own role may not change the schema."""
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
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
