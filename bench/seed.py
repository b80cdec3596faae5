"""Load one real tenant: the owner through the public API, the other members through the
services layer (the same code the API's mutations run, each step in its own UnitOfWork, so
invitations, memberships and audit entries are all written as the API would write them).

Only argon2 is shortcut: every member's password hash is one real argon2id hash of
``PASSWORD`` computed once (~50 ms each would otherwise dominate the setup); every member can
still log in with ``PASSWORD``.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from coregraph import db
from coregraph.auth import passwords
from coregraph.auth.permissions import BUILTIN_ROLES, OWNER_ROLE_KEY
from coregraph.auth.principal import ANONYMOUS, Principal, PrincipalKind
from coregraph.request import RequestMeta
from coregraph.services import identity, tenancy
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings

PASSWORD = "bench-correct-horse-battery-staple"
META = RequestMeta(request_id=None, ip="127.0.0.1", user_agent="coregraph-bench")
# A realistic mix, so the role loader batches several ids.
ROLE_CYCLE = ("member", "member", "viewer", "member", "admin", "member", "billing", "member")


@dataclass
class Tenant:
    id: str
    owner_token: str
    owner_email: str
    emails: list[str]  # every member's email, owner included

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.owner_token}", "X-Tenant-Id": self.id}


async def _graphql(
    http: httpx.AsyncClient, url: str, query: str, variables: dict[str, object], token: str = ""
) -> dict[str, object]:
    headers = {"Accept": "application/graphql-response+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await http.post(url, json={"query": query, "variables": variables}, headers=headers)
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"seeding failed: {response.status_code} {body}")
    return body["data"]  # type: ignore[no-any-return]


async def load_tenant(
    settings: Settings,
    graphql_url: str,
    members: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Tenant:
    """A tenant with ``members`` members in all: its owner and ``members - 1`` invitees.
    ``transport``: an in-process ASGI transport instead of the network (``bench.inprocess``)."""
    owner_email = "owner@bench.example.com"
    async with httpx.AsyncClient(timeout=30, transport=transport) as http:
        data = await _graphql(
            http,
            graphql_url,
            """mutation($input: SignUpInput!) { signUp(input: $input) {
                accessToken user { id } } }""",
            {"input": {"email": owner_email, "password": PASSWORD, "displayName": "Bench Owner"}},
        )
        sign_up: dict[str, object] = data["signUp"]  # type: ignore[assignment]
        token = str(sign_up["accessToken"])
        owner_id = str(sign_up["user"]["id"])  # type: ignore[index]
        data = await _graphql(
            http,
            graphql_url,
            """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
                tenant { id } } }""",
            {"input": {"name": "Bench Tenant", "slug": "bench-tenant"}},
            token,
        )
        tenant_id = str(data["createTenant"]["tenant"]["id"])  # type: ignore[index]

    one_hash = await passwords.hash_password(PASSWORD)

    async def reuse_hash(_: str) -> str:
        return one_hash

    owner = Principal(
        kind=PrincipalKind.USER,
        user_id=owner_id,
        tenant_id=tenant_id,
        # The owner's rights: nobody invites into a role holding more than they do.
        tenant_scopes={tenant_id: BUILTIN_ROLES[OWNER_ROLE_KEY].permissions},
    )
    emails = [owner_email]
    engine = db.create_engine(settings)
    original = passwords.hash_password
    passwords.hash_password = reuse_hash  # type: ignore[assignment]
    try:
        for i in range(1, members):
            email = f"member{i:03d}@bench.example.com"
            async with UnitOfWork(engine, ANONYMOUS, META) as uow:
                user = await identity.create_user(
                    uow, settings, email=email, password=PASSWORD, display_name=f"Member {i:03d}"
                )
            async with UnitOfWork(engine, owner, META) as uow:
                issued = await tenancy.invite_member(
                    uow, settings, tenant_id, email=email, role_key=ROLE_CYCLE[i % len(ROLE_CYCLE)]
                )
            member = Principal(kind=PrincipalKind.USER, user_id=user.id)
            async with UnitOfWork(engine, member, META) as uow:
                await tenancy.accept_invitation(uow, token=issued.token, user_id=user.id)
            emails.append(email)
    finally:
        passwords.hash_password = original  # type: ignore[assignment]
        await engine.dispose()
    return Tenant(tenant_id, token, owner_email, emails)
