"""verifyAuditChain: recompute the addressed tenant's audit chain."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.federation import field

from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.schema.audit import AuditChainVerification
from coregraph.services import audit

Info = strawberry.Info[Context, None]


def _position(value: int | None, name: str) -> int | None:
    if value is not None and value < 1:
        raise BadUserInput(f"{name}: positions start at 1", field=name)
    return value


@strawberry.type
class AuditQuery:
    @field(
        requires_scopes=[["audit:read"]],
        description="Recompute this tenant's audit chain between two positions (default: all of "
        "it) and say whether every entry still matches its hash, its predecessor and the "
        "chain's head; if not, the first entry that does not.",
    )
    async def verify_audit_chain(
        self,
        info: Info,
        from_: Annotated[int | None, strawberry.argument(name="from")] = None,
        to: int | None = None,
    ) -> AuditChainVerification | None:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        start = _position(from_, "from") or 1
        end = _position(to, "to")
        if end is not None and end < start:
            raise BadUserInput("to: must not be before from", field="to")
        # A connection of its own: the check reads the chain in batches, which would hold the
        # request's shared read connection (and its lock) for as long as it runs.
        async with audit.tenant_reader(ctx.runtime.engine, tenant_id) as conn:
            check = await audit.verify_chain_to_head(
                conn, tenant_id, from_position=start, to_position=end
            )
        return AuditChainVerification.from_check(check)
