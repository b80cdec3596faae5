"""One identity per mailbox: every spelling of an address (case, fullwidth characters, a Unicode
or IDNA domain) is the same account for sign-up, login and invitations, and is stored in one
canonical form; migration 0005 brings addresses stored before it to that form."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from coregraph import db, migrate
from tests.conftest import make_settings
from tests.support import (
    PASSWORD,
    GraphQLClient,
    create_test_database,
    drop_test_database,
    env_database_url,
    unique,
)
from tests.test_cli_and_deploy import cli_env_for, coregraph

SIGN_UP = """mutation($i: SignUpInput!) { signUp(input: $i) { user { id email } } }"""
LOGIN = """mutation($i: LoginInput!) { login(input: $i) { user { id email } } }"""
INVITE = """mutation($e: String!) { inviteMember(input: {email: $e, role: "member"}) {
    token invitation { email } } }"""
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }"


def fullwidth(text: str) -> str:
    """The same characters from the fullwidth block (``a`` -> U+FF41), as East Asian input
    methods type them. NFKC maps them back."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def spellings(local: str, domain: str = "example.com") -> list[str]:
    """Other ways to write ``local@domain`` that reach the same mailbox."""
    return [
        f"{local.upper()}@{domain.upper()}",
        f"{local}@{fullwidth(domain.upper())}",
        f"{fullwidth(local.upper())}@{domain}",
        fullwidth(f"{local}@{domain}"),
        f"  {local.capitalize()}@{domain}  ",
    ]


async def sign_up(client: GraphQLClient, email: str) -> Any:
    return await client.execute(SIGN_UP, {"i": {"email": email, "password": PASSWORD}})


async def test_no_spelling_of_an_address_signs_up_a_second_account(
    client: GraphQLClient,
) -> None:
    local = unique("ada")
    first = (await sign_up(client, f"{local}@example.com")).ok()["signUp"]["user"]
    assert first["email"] == f"{local}@example.com"
    for variant in spellings(local):
        r = await sign_up(client, variant)
        assert r.codes == ["CONFLICT"], (variant, r.body)
        assert r.data == {"signUp": None}


async def test_every_spelling_logs_into_the_same_account(client: GraphQLClient) -> None:
    local = unique("ada")
    user = (await sign_up(client, f"{local}@example.com")).ok()["signUp"]["user"]
    for variant in spellings(local):
        r = await client.execute(LOGIN, {"i": {"email": variant, "password": PASSWORD}})
        assert r.ok()["login"]["user"] == user, variant


async def test_an_international_domain_is_stored_in_its_ascii_form(
    client: GraphQLClient,
) -> None:
    local = unique("user")
    r = await sign_up(client, f"{local}@Bücher.example")
    user = r.ok()["signUp"]["user"]
    assert user["email"] == f"{local}@xn--bcher-kva.example"
    # The A-label spelling is the same mailbox, and either spelling signs in.
    r = await sign_up(client, f"{local}@XN--BCHER-KVA.example")
    assert r.codes == ["CONFLICT"], r.body
    for variant in (f"{local}@BÜCHER.example", f"{local}@xn--bcher-kva.example"):
        r = await client.execute(LOGIN, {"i": {"email": variant, "password": PASSWORD}})
        assert r.ok()["login"]["user"]["id"] == user["id"], variant


@pytest.mark.parametrize(
    ("invited", "signed_up"),
    [
        ("Grace{tag}@Example.COM", "grace{tag}@example.com"),
        (fullwidth("GRACE") + "{tag}@Example.COM", "grace{tag}@example.com"),
        ("grace{tag}@BÜCHER.example", "grace{tag}@xn--bcher-kva.example"),
    ],
)
async def test_an_invitation_is_accepted_by_any_spelling_of_its_address(
    client: GraphQLClient, invited: str, signed_up: str
) -> None:
    tag = unique("")
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        INVITE, {"e": invited.format(tag=tag)}, actor=owner, tenant_id=tenant_id
    )
    payload = r.ok()["inviteMember"]
    grace = await client.sign_up(email=signed_up.format(tag=tag))
    assert payload["invitation"]["email"] == grace.email
    r = await client.execute(ACCEPT, {"t": payload["token"]}, actor=grace)
    assert r.ok()["acceptInvitation"]["membership"]["id"]


def _before_canonical_emails() -> str:
    """The revision just before the one that canonicalises stored addresses."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config(""))
    revision = scripts.get_revision("0005")
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


async def test_the_cli_finds_an_owner_by_any_spelling(
    client: GraphQLClient, database_url: str
) -> None:
    local = unique("ops")
    owner = await client.sign_up(email=f"{local}@example.com")
    made = await asyncio.to_thread(
        coregraph,
        "create-tenant",
        unique("cli-"),
        "--owner",
        f"{fullwidth(local.upper())}@EXAMPLE.com",
        env=cli_env_for(database_url),
    )
    assert made.returncode == 0, made.stderr
    r = await client.execute("{ tenant { id } }", actor=owner, tenant_id=made.stdout.strip())
    assert r.ok()["tenant"]["id"] == made.stdout.strip()


async def _at_revision(url: str, revision: str) -> None:
    settings = make_settings(url)
    engine = db.create_engine(settings, as_owner=True)
    config = migrate.alembic_config(url)

    def run(connection: object) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def _sql(url: str, statement: str, **params: object) -> list[dict[str, Any]]:
    """Raw SQL as the owner: a database from before migration 0005 has no models to go through."""
    engine = db.create_engine(make_settings(url), as_owner=True)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return [dict(row._mapping) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def _old_user(url: str, user_id: str, email: str) -> None:
    await _sql(
        url,
        "INSERT INTO users (id, email, display_name, created_at) "
        "VALUES (:id, :email, '', CURRENT_TIMESTAMP)",
        id=user_id,
        email=email,
    )


async def test_migration_stores_existing_addresses_canonically(tmp_path: Path) -> None:
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    try:
        await _at_revision(url, _before_canonical_emails())
        # As the code before 0005 stored them: lower-cased, NFC, Unicode domains.
        await _old_user(url, "usr_0000000000000000000000000a", fullwidth("ada") + "@example.com")
        await _old_user(url, "usr_0000000000000000000000000b", "bob@bücher.example")
        await _old_user(url, "usr_0000000000000000000000000c", "sub|1@ext_x.external.invalid")
        await _sql(
            url,
            "INSERT INTO tenants (id, slug, name, created_at) "
            "VALUES ('ten_0000000000000000000000000a', 'acme', 'Acme', CURRENT_TIMESTAMP)",
        )
        await _sql(
            url,
            "INSERT INTO roles (id, tenant_id, key, name, description, permissions, builtin,"
            " created_at) VALUES ('rol_0000000000000000000000000a',"
            " 'ten_0000000000000000000000000a', 'member', 'Member', '', '[]', false,"
            " CURRENT_TIMESTAMP)",
        )
        await _sql(
            url,
            "INSERT INTO invitations (id, tenant_id, email, role_id, token_hash, expires_at,"
            " created_at) VALUES ('inv_0000000000000000000000000a',"
            " 'ten_0000000000000000000000000a', :email,"
            " 'rol_0000000000000000000000000a', 'h1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
            email=fullwidth("grace") + "@bücher.example",
        )
        await _at_revision(url, "head")
        users = await _sql(url, "SELECT id, email FROM users ORDER BY id")
        assert [row["email"] for row in users] == [
            "ada@example.com",
            "bob@xn--bcher-kva.example",
            # Not an address anyone can type (an external identity's placeholder): unchanged.
            "sub|1@ext_x.external.invalid",
        ]
        invitations = await _sql(url, "SELECT email FROM invitations")
        assert invitations == [{"email": "grace@xn--bcher-kva.example"}]
    finally:
        if name and base:
            await drop_test_database(base, name)


async def test_migration_refuses_two_accounts_of_one_mailbox(tmp_path: Path) -> None:
    """Two accounts that turn out to share a mailbox are not merged or renamed behind anyone's
    back: the migration stops and names them, and changes nothing."""
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    try:
        await _at_revision(url, _before_canonical_emails())
        await _old_user(url, "usr_0000000000000000000000000a", "ada@example.com")
        await _old_user(url, "usr_0000000000000000000000000b", fullwidth("ada") + "@example.com")
        with pytest.raises(Exception, match="usr_0000000000000000000000000b"):
            await _at_revision(url, "head")
        users = await _sql(url, "SELECT email FROM users ORDER BY id")
        assert [row["email"] for row in users] == [
            "ada@example.com",
            fullwidth("ada") + "@example.com",
        ]
    finally:
        if name and base:
            await drop_test_database(base, name)
