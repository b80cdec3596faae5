"""The one write path (DESIGN.md, "The one rule").

Every change to production truth runs inside a ``UnitOfWork``: one database transaction that
applies the change and appends its audit entries (``record``) and its domain events (``emit``),
so they commit or roll back with the change itself. What must happen only once the change is
durable — wake the outbox relay, drop a request's cached reads — is registered with
``on_commit`` and runs after the commit, never after a rollback. The GraphQL context, the CLI
and external-login provisioning all write through this one class.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from coregraph import db, ids
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.errors import CoregraphError
from coregraph.models import AuditEntry
from coregraph.models.base import Environment
from coregraph.request import RequestMeta

log = logging.getLogger("coregraph.uow")

REDACTED = "[redacted]"
SECRET_FIELDS = frozenset(
    {
        "password",
        "password_hash",
        "secret",
        "secret_hash",
        "token",
        "token_hash",
        "refresh_token",
        "refresh_token_hash",
    }
)


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """Before/after of the fields that changed, secrets redacted."""
    before = before or {}
    after = after or {}
    changed: dict[str, Any] = {"before": {}, "after": {}}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new and key in before and key in after:
            continue
        if key in SECRET_FIELDS:
            old = REDACTED if old is not None else None
            new = REDACTED if new is not None else None
        if key in before:
            changed["before"][key] = _jsonable(old)
        if key in after:
            changed["after"][key] = _jsonable(new)
    return changed


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value)
    return value


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A business fact a unit of work states (``member.invited``), for subscribers and
    webhooks. The outbox (the streams issue) stores it in the same transaction."""

    type: str
    tenant_id: str | None
    environment: Environment
    data: Mapping[str, Any] = field(default_factory=dict)


AfterCommit = Callable[[], Awaitable[None] | None]


class UnitOfWork:
    """``async with UnitOfWork(...) as uow:`` — commit on success, roll back on any exception."""

    def __init__(self, engine: AsyncEngine, principal: Principal, meta: RequestMeta) -> None:
        self.engine = engine
        self.principal = principal
        self.meta = meta
        self.session: AsyncSession = AsyncSession(engine, expire_on_commit=False)
        self.audit_entries: list[AuditEntry] = []
        self.events: list[DomainEvent] = []
        self._after_commit: list[AfterCommit] = []
        self._keep_on_failure = False

    async def __aenter__(self) -> UnitOfWork:
        await self.session.begin()
        self._tenant_ids = set(self.principal.tenant_scopes)
        self._invitation_token_hash: str | None = None
        await self._scope()
        return self

    async def _scope(self) -> None:
        await db.scope_transaction(
            await self.session.connection(),
            tenant_ids=self._tenant_ids,
            user_id=self.principal.user_id,
            invitation_token_hash=self._invitation_token_hash,
        )

    async def allow_tenant(self, tenant_id: str) -> None:
        """This transaction creates or joins ``tenant_id``: let row-level security admit it."""
        self._tenant_ids.add(tenant_id)
        await self._scope()

    async def reveal_invitation(self, token_hash: str) -> None:
        """Let this transaction find the invitation whose token the caller holds."""
        self._invitation_token_hash = token_hash
        await self._scope()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        committed = False
        try:
            if exc_type is None or self._keep_on_failure:
                await self.session.commit()
                committed = True
            else:
                await self.session.rollback()
        finally:
            await self.session.close()
        if committed:
            await self._run_after_commit()

    def on_commit(self, hook: AfterCommit) -> None:
        """Run ``hook`` (plain or async) once this unit of work has committed; hooks run in the
        order they were registered, and not at all when it rolls back."""
        self._after_commit.append(hook)

    async def _run_after_commit(self) -> None:
        for hook in self._after_commit:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The change is committed: a failing follow-up must neither undo it nor turn
                # the caller's success into an error. It is logged with its stack instead.
                log.exception("after-commit hook failed", extra={"hook": repr(hook)})

    def emit(
        self,
        type: str,
        *,
        tenant_id: str | None,
        data: Mapping[str, Any] | None = None,
        environment: Environment | None = None,
    ) -> DomainEvent:
        """State a domain event in this transaction: it exists if and only if the change
        commits (``self.events``; written to the outbox by the streams issue)."""
        event = DomainEvent(
            type=type,
            tenant_id=tenant_id,
            environment=environment or self.principal.environment,
            data=dict(data or {}),
        )
        self.events.append(event)
        return event

    async def flush_unique(self, conflict: CoregraphError) -> None:
        """Flush now; if a concurrent request won a unique constraint first (the check before
        it raced), answer ``conflict`` rather than an internal error."""
        try:
            await self.session.flush()
        except IntegrityError:
            raise conflict from None

    def keep_on_failure(self) -> None:
        """Commit what was written even though the operation then fails.

        Only for security reactions that must stick while the caller still gets an error
        (revoking a session whose rotated refresh token was replayed).
        """
        self._keep_on_failure = True

    def record(
        self,
        action: str,
        *,
        tenant_id: str | None,
        target_type: str | None = None,
        target_id: str | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        environment: Environment | None = None,
        actor_id: str | None = None,
    ) -> AuditEntry:
        """Append an audit entry to this transaction: it commits with the change or not at all.

        ``actor_id`` names the acting user when the request itself carries no principal but the
        action proves who acts (a password, a refresh token, an external identity token). A
        system principal (a CLI command) always names itself: ``system``, ``cli:create-user``,
        and the OS user in ``user_agent`` (``coregraph.request.system_request``).
        """
        principal = self.principal
        actor_kind, actor = principal.kind.value, principal.actor_id
        if actor_id is not None and principal.kind is not PrincipalKind.SYSTEM:
            if actor is None:
                actor_kind = PrincipalKind.USER.value
            actor = actor_id
        entry = AuditEntry(
            id=ids.new_id("aud"),
            tenant_id=tenant_id,
            environment=environment or principal.environment,
            actor_kind=actor_kind,
            actor_id=actor,
            acting_for_user_id=principal.acting_for_user_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            changes=diff(before, after),
            request_id=self.meta.request_id,
            ip=self.meta.ip,
            user_agent=self.meta.user_agent,
        )
        self.session.add(entry)
        self.audit_entries.append(entry)
        return entry
