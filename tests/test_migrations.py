"""Migrations are the schema: they build exactly what the models describe, on SQLite and
PostgreSQL alike, and they walk back down and up again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


async def test_the_rollup_migration_adds_up_the_records_already_written(tmp_path: Path) -> None:
    """0020 fills usage_rollups from the usage records of before: per tenant, environment,
    meter, UTC hour and dimension set (keys in any order are one set), sum, count and max."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from sqlalchemy import insert, select

    from coregraph.models import Tenant, UsageRecord, UsageRollup

    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    settings = make_settings(url)
    engine = db.create_engine(settings, as_owner=True)
    hour = datetime(2026, 11, 3, 14, tzinfo=UTC)
    try:
        async with engine.connect() as conn:

            def to(revision: str) -> Any:
                def run(sync_conn: object) -> None:
                    config = migrate.alembic_config(url)
                    config.attributes["connection"] = sync_conn
                    command.upgrade(config, revision)

                return run

            await conn.run_sync(to("0019"))
            await conn.execute(
                insert(Tenant), [{"id": "ten_rollup", "slug": "rollup", "name": "R"}]
            )
            records = [
                (hour.replace(minute=5), "1.5", {"model": "a", "region": "eu"}),
                (hour.replace(minute=55), "2.25", {"region": "eu", "model": "a"}),
                (hour.replace(minute=30), "7", {"model": "b"}),
                (hour.replace(hour=15), "0.000001", {"model": "a", "region": "eu"}),
            ]
            await conn.execute(
                insert(UsageRecord),
                [
                    {
                        "id": f"usg_{i}",
                        "tenant_id": "ten_rollup",
                        "environment": "live",
                        "meter": "m",
                        "quantity": Decimal(q),
                        "occurred_at": at,
                        "dimensions": dims,
                        "recorded_at": at,
                    }
                    for i, (at, q, dims) in enumerate(records)
                ],
            )
            await conn.run_sync(to("head"))
            await conn.commit()
            rows = (
                await conn.execute(
                    select(
                        UsageRollup.hour,
                        UsageRollup.dimensions_key,
                        UsageRollup.quantity_sum,
                        UsageRollup.record_count,
                        UsageRollup.quantity_max,
                    ).order_by(UsageRollup.hour, UsageRollup.dimensions_key)
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            (hour, '{"model":"a","region":"eu"}', Decimal("3.75"), 2, Decimal("2.25")),
            (hour, '{"model":"b"}', Decimal("7"), 1, Decimal("7")),
            (
                hour.replace(hour=15),
                '{"model":"a","region":"eu"}',
                Decimal("0.000001"),
                1,
                Decimal("0.000001"),
            ),
        ]
    finally:
        await engine.dispose()
        if name and base:
            await drop_test_database(base, name)
