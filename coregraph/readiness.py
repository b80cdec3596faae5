"""``GET /readyz``: whether this process should be sent traffic, and why not.

Every check runs at once, each within ``COREGRAPH_READYZ_TIMEOUT_SECONDS``, so a probe answers
within about that long whatever is down (a black-holed Redis or database included):

- ``database``: reachable; ``migrations``: at the newest revision.
- ``redis`` (when configured): answers PING. Without it this process neither hears other
  processes' events nor shares rate limits with them.
- ``relay``: the outbox relays (``coregraph worker``, or this process on the embedded defaults)
  are at most ``COREGRAPH_READYZ_MAX_RELAY_LAG_SECONDS`` behind the commits: the oldest event or
  audit entry committed and not yet published is younger than that (0: no such check, the lag
  is only reported). The body's ``relay_lag`` says how many rows wait and the age of the
  oldest (or, unchecked, why it could not be read).

The lag is read across tenants, so on PostgreSQL as the worker role, through an engine of its
own holding at most one connection: probes arriving together queue on it, never adding load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, migrate
from coregraph.models.base import utcnow
from coregraph.streams.relay_lag import RelayLag, measure_lag

if TYPE_CHECKING:
    from coregraph.app import Runtime

OK = "ok"


class Readiness:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._lag_engine: AsyncEngine | None = None

    async def report(self) -> tuple[bool, dict[str, Any]]:
        """Whether ready, and the body: ``status``, ``checks`` (each ``ok`` or why not) and
        ``relay_lag`` when it could be measured."""
        checks: dict[str, str] = {}
        # With no limit the lag is reported, not checked: not even a failure to read it (a
        # login that may not take the worker role) takes the process out of rotation.
        checked = bool(self.settings.readyz_max_relay_lag_seconds)
        relay = checks if checked else {}
        lag: list[RelayLag] = []
        work = [self._bounded("database", self._database(checks), checks)]
        if self.runtime.redis is not None:
            work.append(self._bounded("redis", self._redis(), checks))
        work.append(self._bounded("relay", self._relay(lag), relay))
        await asyncio.gather(*work)
        ready = all(value == OK for value in checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
        if lag:
            body["relay_lag"] = {
                "events": lag[0].events,
                "audit_entries": lag[0].audit_entries,
                "seconds": round(lag[0].seconds, 3),
            }
        elif not checked and relay.get("relay", OK) != OK:
            body["relay_lag"] = {"unknown": relay["relay"]}
        return ready, body

    async def aclose(self) -> None:
        if self._lag_engine is not None:
            await self._lag_engine.dispose()
            self._lag_engine = None

    async def _bounded(self, name: str, check: Awaitable[str], checks: dict[str, str]) -> None:
        timeout = self.settings.readyz_timeout_seconds
        try:
            checks[name] = await asyncio.wait_for(check, timeout)
        except TimeoutError:
            checks[name] = f"unreachable: no answer within {timeout:g} s"
        except Exception as exc:  # readiness reports any failure rather than raising it
            checks[name] = f"unreachable: {type(exc).__name__}"

    async def _database(self, checks: dict[str, str]) -> str:
        current = await migrate.current_revision(self.runtime.engine)
        head = migrate.head_revision()
        checks["migrations"] = (
            OK if current == head else f"at {current}, expected {head}: run coregraph migrate"
        )
        return OK

    async def _redis(self) -> str:
        await self.runtime.redis.ping()
        return OK

    async def _relay(self, lag: list[RelayLag]) -> str:
        async with self._engine().connect() as conn:
            measured = await measure_lag(conn, utcnow())
        lag.append(measured)
        limit = self.settings.readyz_max_relay_lag_seconds
        if limit and measured.seconds > limit:
            return f"lagging: {measured.seconds:.0f} s behind the commits (limit {limit:g} s)"
        return OK

    def _engine(self) -> AsyncEngine:
        if self._lag_engine is None:
            one = self.settings.model_copy(
                update={"database_pool_size": 1, "database_max_overflow": 0}
            )
            self._lag_engine = db.create_engine(one, role=self.settings.database_worker_role)
        return self._lag_engine
