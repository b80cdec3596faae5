"""GraphQL types of the audit trail: a tenant's entries, a user's own security log, and what a
chain check found."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import strawberry
from sqlalchemy import Select, false, select
from strawberry.federation import type as ftype
from strawberry.scalars import JSON

from coregraph import ids, models
from coregraph.auth.principal import Principal
from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.schema.access import Environment
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.pagination import Connection, Cursors, paginate
from coregraph.schema.readable import readable
from coregraph.services import validation
from coregraph.services.audit import ChainCheck

if TYPE_CHECKING:
    from coregraph.schema.support import SupportSession

_POSITION_CURSOR_PREFIX = "pos:"
Entry = TypeVar("Entry")


@strawberry.type
class AuditEntryContent:
    """The fields every audit entry shows, wherever it is read. Not in the schema itself: the
    types below carry these fields under their own authorization."""

    id: strawberry.ID
    action: str = strawberry.field(description="What happened, e.g. member.role_changed.")
    environment: Environment  # type: ignore[valid-type]
    actor_kind: str = strawberry.field(
        description="user, api_key, agent, support (platform staff in a support session),"
        " system (a CLI command) or anonymous."
    )
    actor_id: str | None
    acting_for_user_id: str | None = strawberry.field(
        description="The person an API key acted for (its creator)."
    )
    support_session_id: strawberry.ID | None = strawberry.field(
        description="The support session the change was made under: actorId is then the"
        " platform staff member; the session names the reason."
    )
    target_type: str | None
    target_id: str | None
    changes: JSON = strawberry.field(
        description="{before, after} of the fields that changed; secrets are redacted."
    )
    request_id: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    position: int = strawberry.field(
        description="The entry's place in its chain: 1, 2, 3, ... in commit order, no gaps."
    )
    hash: str = strawberry.field(
        description="SHA-256 (hex) over the entry's canonical content and previousHash."
    )
    previous_hash: str = strawberry.field(
        description="The hash of the entry before it in the chain; empty for the first."
    )
    tenant_id: strawberry.Private[str | None]
    chain_id: strawberry.Private[str]

    @classmethod
    def values_of(cls, row: Any) -> dict[str, Any]:
        return {
            "id": strawberry.ID(row.id),
            "action": row.action,
            "environment": EnvironmentValue(row.environment),
            "actor_kind": row.actor_kind,
            "actor_id": row.actor_id,
            "acting_for_user_id": row.acting_for_user_id,
            "support_session_id": getattr(row, "support_session_id", None),
            "target_type": row.target_type,
            "target_id": row.target_id,
            "changes": row.changes,
            "request_id": row.request_id,
            "ip": row.ip,
            "user_agent": row.user_agent,
            "created_at": row.created_at,
            "position": row.position,
            "hash": row.hash,
            "previous_hash": row.previous_hash,
            "tenant_id": row.tenant_id,
            "chain_id": row.chain_id,
        }


@entity(models.AuditEntry)
@ftype(
    keys=["id"],
    requires_scopes=[["audit:read"]],
    description="One change to production truth: who did what to which object, and when.",
)
class AuditEntry(AuditEntryContent, Node):
    @strawberry.field(
        description="The support session it was made under: who, why (its reason), in which"
        " mode. Null when none."
    )
    async def support_session(
        self, info: strawberry.Info
    ) -> Annotated[SupportSession, strawberry.lazy("coregraph.schema.support")] | None:
        from coregraph.schema.support import support_session_of

        if self.support_session_id is None or self.tenant_id is None:
            return None
        return await support_session_of(info, self.tenant_id, str(self.support_session_id))

    @classmethod
    def from_row(cls, row: Any) -> AuditEntry:
        return cls(**cls.values_of(row))


@ftype(
    authenticated=True,
    policy=[["own_security_log"]],
    description="An entry of your own security log: something done outside any tenant with "
    "your account (sign-up, login, sessions, external sign-in). Only you read it.",
)
class SecurityLogEntry(AuditEntryContent):
    @classmethod
    def from_row(cls, row: Any) -> SecurityLogEntry:
        return cls(**cls.values_of(row))


def security_log(principal: Principal) -> Select[Any]:
    """Where every read of a security log starts: the entries outside any tenant whose chain is
    the principal's own user (no row at all for an API key). Row-level security admits the same
    rows on PostgreSQL (``tenant_id IS NULL AND chain_id = app.user_id``)."""
    entry = models.AuditEntry
    statement = select(entry.__table__)
    if principal.user_id is None:
        return statement.where(false())
    return statement.where(entry.tenant_id.is_(None), entry.chain_id == principal.user_id)


def tenant_chain(principal: Principal, tenant_id: str) -> Select[Any]:
    """Where every read of a tenant's audit trail starts: the entries of its own chain (a
    tenant's chain is named by its id; ``chain_id`` leads the positions' index)."""
    entry = models.AuditEntry
    return readable(principal, entry, tenant_id=tenant_id).where(entry.chain_id == tenant_id)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries a reader of a tenant's audit trail asked for, checked once: the same
    semantics for the ``Tenant.auditLog`` query (as SQL) and the ``auditLog`` subscription (as
    SQL while it replays, then on each live entry before anything is sent)."""

    action_prefix: str | None = None
    target_id: str | None = None
    actor_id: str | None = None
    # The user an API key or agent acted for (an agent's exchanged token: the subject).
    acting_for_user_id: str | None = None
    # The support session the entries were made under.
    support_session_id: str | None = None

    @classmethod
    def checked(
        cls,
        *,
        action: str | None,
        target_id: str | None,
        actor_id: str | None,
        acting_for_user_id: str | None = None,
        support_session_id: str | None = None,
    ) -> AuditFilter:
        if action is not None:
            action = validation.text(action, "action", max_length=80)
        if target_id is not None and ids.type_of(str(target_id)) is None:
            raise BadUserInput("targetId: not a coregraph id", field="targetId")
        if actor_id is not None:
            # A user or an API key id, or a system actor's name (cli:create-tenant).
            actor_id = validation.text(actor_id, "actorId", max_length=30)
        if acting_for_user_id is not None:
            validation.object_id(acting_for_user_id, "usr", "actingForUserId")
        if support_session_id is not None:
            validation.object_id(support_session_id, "sup", "supportSessionId")
        return cls(
            action,
            None if target_id is None else str(target_id),
            actor_id,
            acting_for_user_id,
            support_session_id,
        )

    def where(self, statement: Select[Any]) -> Select[Any]:
        entry = models.AuditEntry
        if self.action_prefix is not None:
            statement = statement.where(
                entry.action.startswith(self.action_prefix, autoescape=True)
            )
        if self.target_id is not None:
            statement = statement.where(entry.target_id == self.target_id)
        if self.actor_id is not None:
            statement = statement.where(entry.actor_id == self.actor_id)
        if self.acting_for_user_id is not None:
            statement = statement.where(entry.acting_for_user_id == self.acting_for_user_id)
        if self.support_session_id is not None:
            statement = statement.where(entry.support_session_id == self.support_session_id)
        return statement

    def matches(self, row: Any) -> bool:
        return (
            (self.action_prefix is None or row.action.startswith(self.action_prefix))
            and (self.target_id is None or row.target_id == self.target_id)
            and (self.actor_id is None or row.actor_id == self.actor_id)
            and (
                self.acting_for_user_id is None or row.acting_for_user_id == self.acting_for_user_id
            )
            and (
                self.support_session_id is None
                or getattr(row, "support_session_id", None) == self.support_session_id
            )
        )


@strawberry.input(description="Which audit entries to deliver; every given condition must hold.")
class AuditLogFilter:
    actor_id: str | None = strawberry.field(
        default=None,
        description="A user, API key or agent id, or a system actor (cli:create-tenant).",
    )
    action: str | None = strawberry.field(
        default=None, description="An action prefix: 'member.' matches member.invited."
    )
    target_id: strawberry.ID | None = None
    acting_for_user_id: strawberry.ID | None = strawberry.field(
        default=None, description="The user an API key or an agent acted for."
    )
    support_session_id: strawberry.ID | None = strawberry.field(
        default=None, description="What was done under this support session."
    )

    def checked(self) -> AuditFilter:
        return AuditFilter.checked(
            action=self.action,
            target_id=self.target_id,
            actor_id=self.actor_id,
            acting_for_user_id=None
            if self.acting_for_user_id is None
            else str(self.acting_for_user_id),
            support_session_id=None
            if self.support_session_id is None
            else str(self.support_session_id),
        )


def encode_position_cursor(position: int) -> str:
    raw = f"{_POSITION_CURSOR_PREFIX}{position}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_position_cursor(cursor: str, field: str = "after") -> int:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    digits = raw.removeprefix(_POSITION_CURSOR_PREFIX)
    if not raw.startswith(_POSITION_CURSOR_PREFIX) or not digits.isascii() or not digits.isdigit():
        raise BadUserInput(f"{field}: not a cursor from an audit stream", field=field)
    return int(digits)


# Every cursor into an audit chain is a position, never an id (DESIGN.md, Streams): the
# queries' and the subscription's are one kind, and a cursor stays meaningful after retention
# pruned the entry it came from.
POSITION_CURSORS = Cursors(encode_position_cursor, decode_position_cursor)


async def chain_page(
    ctx: Context,
    chain: Select[Any],
    first: int | None,
    after: str | None,
    to_node: Callable[[Any], Entry],
) -> Connection[Entry]:
    """A page of one chain's entries (``chain`` selects them, filtered), newest first by
    position: ``Tenant.auditLog`` and ``viewer.securityLog``."""
    return await paginate(
        ctx,
        chain,
        models.AuditEntry.position,
        first,
        after,
        to_node,
        newest_first=True,
        cursors=POSITION_CURSORS,
    )


@strawberry.type(
    description="An audit entry as the auditLog subscription delivers it, with the cursor to"
    " resume after it (its position in the tenant's chain)."
)
class AuditStreamEdge:
    node: AuditEntry

    @strawberry.field(description="The entry's position, opaque: subscribe again after it.")
    def cursor(self) -> str:
        return encode_position_cursor(self.node.position)


@strawberry.type(description="An entry where an audit chain stops matching.")
class AuditChainBreak:
    id: strawberry.ID | None = strawberry.field(
        description="The entry that does not match; null when the entry is missing."
    )
    position: int


@strawberry.type(description="What recomputing an audit chain found.")
class AuditChainVerification:
    ok: bool = strawberry.field(description="Every entry checked matches its hash and links.")
    checked: int = strawberry.field(description="How many entries matched, in order.")
    broken_at: AuditChainBreak | None = strawberry.field(
        description="The first entry that does not match (null when ok)."
    )
    reason: str | None

    @classmethod
    def from_check(cls, check: ChainCheck) -> AuditChainVerification:
        broken = check.broken_at
        return cls(
            ok=check.ok,
            checked=check.checked,
            broken_at=None
            if broken is None
            else AuditChainBreak(
                id=strawberry.ID(broken["id"]) if broken.get("id") else None,
                position=int(broken["position"]),
            ),
            reason=check.reason,
        )
