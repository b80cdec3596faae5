"""The per-request context: who acts, one read connection, dataloaders, the write path.

Built once per HTTP request and once per WebSocket operation (``coregraph.ws``), so no cache,
connection or principal crosses operations, requests, principals or tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Executable
from strawberry.fastapi import BaseContext

from coregraph import db
from coregraph.auth.permissions import effective_scopes
from coregraph.auth.principal import Principal
from coregraph.errors import Forbidden
from coregraph.request import RequestMeta
from coregraph.services import ratelimit
from coregraph.services.uow import UnitOfWork
from coregraph.streams.relay import wake_after_commit

if TYPE_CHECKING:
    from coregraph.app import Runtime
    from coregraph.loaders import Loaders


class Context(BaseContext):
    def __init__(
        self,
        runtime: Runtime,
        principal: Principal,
        meta: RequestMeta,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.settings = runtime.settings
        self.principal = principal
        self.meta = meta
        self.operation_name: str | None = None
        # query, mutation or subscription: what the parsed document says (operation_resolved).
        self.operation_type: str | None = None
        # The request carried the schema reader secret (coregraph.auth.schema_reader).
        self.schema_reader = False
        # Set by the plan limits (schema.rate_limiting): the RateLimit headers of an HTTP
        # answer, and its status when they refused the operation (429).
        self.response_headers: dict[str, str] = {}
        self.refused_status: int | None = None
        # Approval gates (schema.approval_gate): the request's variables as sent, the reason a
        # gated mutation is asked with (X-Approval-Reason), and, while an approved request
        # runs, its id (the gate then lets it through).
        self.request_variables: dict[str, Any] | None = None
        self.approval_reason: str | None = None
        self.approved_request_id: str | None = None
        self._approval_policies: Sequence[Any] | None = None
        self._connection: AsyncConnection | None = None
        self._scoped_for: Principal | None = None
        # Resolvers run concurrently (asyncio.gather); one connection serves them in turn.
        self._lock = asyncio.Lock()

    def operation_resolved(self, operation_type: str, operation_name: str | None) -> None:
        """The document is parsed and holds the operation requested (``schema.errors``)."""
        self.operation_type = operation_type
        self.operation_name = operation_name

    @property
    def request_id(self) -> str | None:
        return self.meta.request_id

    @cached_property
    def loaders(self) -> Loaders:
        from coregraph.loaders import Loaders

        return Loaders(self)

    def grant_for_this_request(self, tenant_id: str, scopes: frozenset[str]) -> None:
        """A write just made the principal a member (createTenant, acceptInvitation): the rest
        of this operation may read the new tenant. Later requests get it from the database."""
        scopes = effective_scopes(scopes, self.principal.scope_limit)
        granted = {**self.principal.tenant_scopes, tenant_id: scopes}
        self.principal = replace(self.principal, tenant_scopes=granted)
        self.__dict__.pop("loaders", None)

    def require_tenant(self) -> str:
        """The addressed tenant, for root fields and writes that act on "this tenant"."""
        tenant_id = self.principal.tenant_id
        if tenant_id is None:
            raise Forbidden("this operation needs a tenant: send the X-Tenant-Id header")
        return tenant_id

    async def read(self, statement: Executable) -> Sequence[Row[Any]]:
        async with self._lock:
            connection = await self._scoped_connection()
            result = await connection.execute(statement)
            return result.all()

    @contextlib.asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session on this request's read connection, for the services whose reads are
        written against a session (billing.current_plan, quotas.quota, invoices): the same
        wall as ``read``, and none of a unit of work's write transaction, commit hooks or
        reset of the request's reads. Held alone, as ``read`` holds the connection."""
        async with self._lock:
            session = AsyncSession(bind=await self._scoped_connection())
            try:
                yield session
            finally:
                await session.close()

    async def approval_policies(self) -> Sequence[Any]:
        """The addressed tenant's approval policies in this environment (read once a request)."""
        if self._approval_policies is None:
            self._approval_policies = await self.runtime.approval_policies.get(
                self.require_tenant(), self.principal.environment
            )
        return self._approval_policies

    async def _scoped_connection(self) -> AsyncConnection:
        if self._connection is None:
            self._connection = await self.runtime.engine.connect()
            self._scoped_for = None
        if self._scoped_for is not self.principal:
            # The principal can change mid-operation (login, createTenant): re-scope.
            await self._scope(self._connection)
            self._scoped_for = self.principal
        return self._connection

    async def limit(self, action: str, account: str | None) -> None:
        """Count one attempt at a rate-limited action (login, refresh, invitation acceptance)."""
        settings = self.settings
        await ratelimit.enforce(
            self.runtime.limiter,
            action,
            account=account,
            ip=self.meta.ip,
            per_account=settings.auth_rate_limit_per_account,
            per_ip=settings.auth_rate_limit_per_ip,
            window_seconds=settings.auth_rate_limit_window_seconds,
        )

    async def _scope(self, connection: AsyncConnection) -> None:
        await db.scope_transaction(
            connection,
            tenant_ids=self.principal.tenant_scopes.keys(),
            user_id=self.principal.user_id,
        )

    def unit_of_work(self) -> UnitOfWork:
        """The write path for this request's principal. Once it commits, later reads in this
        request see the change, not a cached copy (``reset_reads``)."""
        uow = UnitOfWork(self.runtime.engine, self.principal, self.meta)
        uow.on_commit(self.reset_reads)
        uow.on_commit(partial(wake_after_commit, self.runtime.broker, uow))
        return uow

    async def reset_reads(self) -> None:
        """After a write commits: later reads in this request must see it, not a cached copy.
        Also between a subscription's events, so none pins a pooled connection while it waits."""
        async with self._lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
        self.__dict__.pop("loaders", None)

    async def close(self) -> None:
        # The loaders point back at this context: released here, their rows are freed with
        # the request rather than by a later cyclic collection.
        loaders = self.__dict__.pop("loaders", None)
        if loaders is not None:
            loaders.release()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
