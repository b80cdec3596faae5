"""signUp, login, refreshSession, logout, viewer."""

from __future__ import annotations

from dataclasses import replace

import strawberry
from strawberry.federation import field

from coregraph.auth import secrets
from coregraph.context import Context
from coregraph.schema.identity import AuthPayload, LogoutPayload, User
from coregraph.services import emails, identity
from coregraph.services.identity import IssuedSession

Info = strawberry.Info[Context, None]


@strawberry.input
class SignUpInput:
    email: str
    password: str
    display_name: str | None = None


@strawberry.input
class LoginInput:
    email: str
    password: str


async def _signed_in(info: Info, issued: IssuedSession) -> AuthPayload | None:
    # The rest of this operation reads as the user who just signed in (`user { email }`), with
    # the tenants they belong to (`user { memberships }`), as their next request will.
    # The session was live when this operation's write committed; a concurrent replay may have
    # ended it since, which the next request finds out. This answer is the committed one.
    ctx = info.context
    principal = await ctx.runtime.authenticator.user_principal(issued.user.id, None)
    ctx.principal = replace(principal, session_id=issued.session.id)
    return AuthPayload(
        access_token=issued.access_token,
        access_token_expires_at=issued.access_token_expires_at,
        refresh_token=issued.refresh_token,
        user=User.from_row(issued.user, via_tenant_id=None),
    )


@strawberry.type
class IdentityQuery:
    @field(authenticated=True, description="The signed-in user; null for an API key.")
    async def viewer(self, info: Info) -> User | None:
        user_id = info.context.principal.user_id
        if user_id is None:
            return None
        row = await info.context.loaders.user.load(user_id)
        return User.from_row(row, via_tenant_id=info.context.principal.tenant_id) if row else None


@strawberry.type
class IdentityMutation:
    @field(description="Create an account and sign in.")
    async def sign_up(self, info: Info, input: SignUpInput) -> AuthPayload | None:
        ctx = info.context
        await ctx.limit("sign_up", account=None)
        async with ctx.unit_of_work() as uow:
            issued = await identity.sign_up(
                uow,
                ctx.settings,
                ctx.runtime.tokens,
                email=input.email,
                password=input.password,
                display_name=input.display_name,
            )
        return await _signed_in(info, issued)

    @field(description="Sign in with email and password.")
    async def login(self, info: Info, input: LoginInput) -> AuthPayload | None:
        ctx = info.context
        await ctx.limit("login", account=emails.lookup_key(input.email))
        async with ctx.unit_of_work() as uow:
            issued = await identity.login(
                uow, ctx.settings, ctx.runtime.tokens, email=input.email, password=input.password
            )
        return await _signed_in(info, issued)

    @field(description="Trade a refresh token for a new access token and a new refresh token.")
    async def refresh_session(self, info: Info, refresh_token: str) -> AuthPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            owner = await identity.refresh_token_owner(uow, refresh_token)
            await ctx.limit("refresh", account=owner or secrets.digest(refresh_token))
            issued = await identity.refresh_session(
                uow, ctx.settings, ctx.runtime.tokens, refresh_token=refresh_token
            )
        return await _signed_in(info, issued)

    @field(description="End the current session, or the one a refresh token belongs to.")
    async def logout(self, info: Info, refresh_token: str | None = None) -> LogoutPayload | None:
        ctx = info.context
        if refresh_token is not None:
            # Anyone may present a refresh token: guessing them costs like refreshing.
            await ctx.limit("logout", account=None)
        async with ctx.unit_of_work() as uow:
            ended = await identity.logout(
                uow, session_id=ctx.principal.session_id, refresh_token=refresh_token
            )
        return LogoutPayload(ended=ended)
