"""Migrations are the schema: they build exactly what the models describe, on SQLite and
PostgreSQL alike, and they walk back down and up again."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from coregraph import db, migrate
from coregraph.models import Base
from tests.conftest import make_settings
from tests.support import create_test_database, drop_test_database, env_database_url


async def test_migrations_match_the_models_and_round_trip(tmp_path: Path) -> None:
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    settings = make_settings(url)
    try:
        await migrate.upgrade(settings)
        engine = db.create_engine(settings, as_owner=True)
        try:
            async with engine.connect() as conn:

                def diff(sync_conn: object) -> list[object]:
                    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                    return list(compare_metadata(context, Base.metadata))

                assert await conn.run_sync(diff) == []

                def downgrade_and_upgrade(sync_conn: object) -> None:
                    config = migrate.alembic_config(url)
                    config.attributes["connection"] = sync_conn
                    command.downgrade(config, "base")
                    command.upgrade(config, "head")

                await conn.run_sync(downgrade_and_upgrade)
                await conn.commit()
            assert await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()
    finally:
        if name and base:
            await drop_test_database(base, name)
