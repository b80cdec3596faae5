"""The ``coregraph`` command: serve, worker, migrate, create-user, create-tenant, create-staff,
export-schema, generate-webhook-key, rotate-webhook-key, files-cleanup, load-plans,
billing-export."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from coregraph.settings import FILES_MIN_ORPHAN_GRACE_SECONDS, Settings, load_settings

if TYPE_CHECKING:
    from coregraph.models import Tenant, User
    from coregraph.services.uow import UnitOfWork

T = TypeVar("T")
app = typer.Typer(help="coregraph: the durable core as one GraphQL Federation v2 subgraph.")


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "COREGRAPH_" + "_".join(str(p) for p in error["loc"]).upper()
            lines.append(f"  {name or 'settings'}: {error['msg']}")
        typer.echo("coregraph: invalid configuration\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (COREGRAPH_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (COREGRAPH_PORT).")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply migrations before serving.")] = True,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Start the API (GraphQL at /graphql, GraphiQL in a browser outside production)."""
    import uvicorn

    from coregraph import logging as cg_logging, serving

    settings = _settings()
    cg_logging.configure(settings.log_level)
    if settings.trusted_documents is not None:
        _check_trusted_documents(settings)
    if migrate:
        _migrate_before_serving()
    uvicorn.run(
        "coregraph.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_config=None,
        access_log=False,
        # Forwarded headers are the app's call: trusted only from COREGRAPH_TRUSTED_PROXIES.
        proxy_headers=False,
        # SIGTERM: drain HTTP, close WebSockets with 1001 (COREGRAPH_SHUTDOWN_GRACE_SECONDS).
        **serving.uvicorn_options(settings),
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10_000,
            help="Webhook requests this process sends at once "
            "(COREGRAPH_WEBHOOK_WORKER_CONCURRENCY).",
        ),
    ] = None,
) -> None:
    """Run the outbox relay (committed events and audit entries to the broker) and webhook
    delivery until SIGTERM or SIGINT, then finish or release the deliveries in flight.
    Production runs it beside the API; several may run on PostgreSQL."""
    from coregraph import logging as cg_logging
    from coregraph.streams import worker as streams_worker

    settings = _settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"webhook_worker_concurrency": concurrency})
    cg_logging.configure(settings.log_level)
    asyncio.run(streams_worker.run(settings))


async def _migrate(settings: Settings) -> None:
    from coregraph import migrate

    await migrate.upgrade(settings)


def _check_trusted_documents(settings: Settings) -> None:
    """A manifest that cannot be read, or holds a document this schema would refuse, stops
    ``serve`` with the reason (the app's own load would stop it with a traceback)."""
    from coregraph.api import build_schema
    from coregraph.persisted import TrustedDocuments, TrustedDocumentsError

    assert settings.trusted_documents is not None
    try:
        TrustedDocuments(settings.trusted_documents, build_schema(settings))
    except TrustedDocumentsError as exc:
        typer.echo(f"coregraph: COREGRAPH_TRUSTED_DOCUMENTS: {exc}", err=True)
        raise typer.Exit(2) from None


def _migrate_before_serving() -> None:
    """``serve``'s migrations: nothing when the database is at the newest revision (read
    without Alembic), else ``coregraph migrate`` in a child process. Either way the server's own
    process never loads Alembic, Mako and Pygments: ~8 MiB it would hold for its life."""
    import subprocess

    from coregraph import db, migrate

    settings = _settings()

    async def at_head() -> bool:
        engine = db.create_engine(settings, as_owner=True)
        try:
            return await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()

    if asyncio.run(at_head()):
        return
    done = subprocess.run(
        [sys.executable, "-m", "coregraph.cli", "migrate"], stdout=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        raise typer.Exit(done.returncode)


@app.command()
def migrate() -> None:
    """Apply database migrations up to the newest revision."""
    settings = _settings()
    asyncio.run(_migrate(settings))
    typer.echo("migrations applied")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        return f"uid {os.getuid()}"


async def _with_uow(
    settings: Settings, command: str, fn: Callable[[UnitOfWork], Awaitable[T]]
) -> T:
    """Run ``fn`` in one unit of work audited as ``system`` ``cli:<command>`` by the OS user."""
    from coregraph import db
    from coregraph.auth import passwords
    from coregraph.auth.principal import system_principal
    from coregraph.request import system_request
    from coregraph.services.uow import UnitOfWork

    passwords.configure(
        settings.password_hash_time_cost,
        settings.password_hash_memory_kib,
        settings.password_hash_parallelism,
    )
    engine = db.create_engine(settings)
    try:
        principal = system_principal(f"cli:{command}")
        async with UnitOfWork(engine, principal, system_request(_os_user())) as uow:
            return await fn(uow)
    finally:
        await engine.dispose()


def _fail(exc: Exception) -> None:
    from coregraph.errors import CoregraphError

    if isinstance(exc, CoregraphError):
        typer.echo(f"coregraph: {exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    raise exc


@app.command("create-user")
def create_user(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
    display_name: Annotated[str, typer.Option("--name")] = "",
) -> None:
    """Create a user (audited like a sign-up)."""
    from coregraph.services import identity

    settings = _settings()

    async def run(uow: UnitOfWork) -> User:
        return await identity.create_user(
            uow, settings, email=email, password=password, display_name=display_name
        )

    try:
        user = asyncio.run(_with_uow(settings, "create-user", run))
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(user.id)


@app.command("create-tenant")
def create_tenant(
    slug: str,
    owner_email: Annotated[str, typer.Option("--owner", help="Email of the owning user.")],
    name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a tenant owned by an existing user."""
    from sqlalchemy import select

    from coregraph.errors import NotFound
    from coregraph.models import User
    from coregraph.services import emails, tenancy

    settings = _settings()

    async def run(uow: UnitOfWork) -> Tenant:
        address = emails.lookup_key(owner_email)
        owner = await uow.session.scalar(select(User).where(User.email == address))
        if owner is None:
            raise NotFound(f"no user with email {owner_email}")
        return await tenancy.create_tenant(uow, name=name or slug, slug=slug, owner_id=owner.id)

    try:
        tenant = asyncio.run(_with_uow(settings, "create-tenant", run))
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(tenant.id)


@app.command("create-staff")
def create_staff(
    email: Annotated[str, typer.Option(help="The staff member's email.")],
    role: Annotated[
        str, typer.Option(help="platform:support or platform:admin; 'none' takes it away.")
    ],
    password: Annotated[
        str | None, typer.Option(help="For a new user (asked when missing).", hide_input=True)
    ] = None,
) -> None:
    """Make a user platform staff (creating the user if nobody has the email): a member of no
    tenant, who reads one only through a support session its owners approve."""
    from coregraph.auth.principal import PlatformRole
    from coregraph.services import support

    settings = _settings()
    if role == "none":
        platform_role = None
    else:
        try:
            platform_role = PlatformRole(role)
        except ValueError:
            typer.echo("coregraph: --role: platform:support, platform:admin or none", err=True)
            raise typer.Exit(2) from None

    def ask() -> str:
        return password or str(typer.prompt("Password", hide_input=True))

    async def run(uow: UnitOfWork) -> User:
        return await support.make_staff(
            uow, settings, email=email, role=platform_role, password=ask
        )

    try:
        user = asyncio.run(_with_uow(settings, "create-staff", run))
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(user.id)


@app.command("generate-webhook-key")
def generate_webhook_key() -> None:
    """Print a new key for COREGRAPH_WEBHOOK_SECRET_KEYS (Fernet: 32 random bytes, base64)."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


async def _reseal_webhook_secrets(settings: Settings) -> int:
    from coregraph import db
    from coregraph.auth.principal import system_principal
    from coregraph.request import system_request
    from coregraph.services import webhooks
    from coregraph.services.uow import UnitOfWork

    box = webhooks.SecretBox(settings.webhook_secret_key_list)
    # The worker role finds every tenant with endpoints; each tenant's secrets are then
    # rewritten through the API's role inside that tenant's wall, audited per tenant.
    worker = db.create_engine(settings, role=settings.database_worker_role)
    engine = worker if settings.is_sqlite else db.create_engine(settings)
    try:
        async with worker.connect() as conn:
            tenants = await webhooks.tenants_with_endpoints(conn)
        principal = system_principal("cli:rotate-webhook-key")
        resealed = 0
        for tenant_id in tenants:
            async with UnitOfWork(engine, principal, system_request(_os_user())) as uow:
                resealed += await webhooks.reseal_secrets(uow, tenant_id, box)
        return resealed
    finally:
        await worker.dispose()
        if engine is not worker:
            await engine.dispose()


@app.command("rotate-webhook-key")
def rotate_webhook_key() -> None:
    """Re-encrypt every webhook endpoint's secrets under the first key of
    COREGRAPH_WEBHOOK_SECRET_KEYS. Rotate a key: put a new one first (keeping the old one
    after it) everywhere, run this, then drop the old key."""
    from coregraph.services.webhooks import UnknownSecretKey

    settings = _settings()
    try:
        count = asyncio.run(_reseal_webhook_secrets(settings))
    except UnknownSecretKey as exc:
        # Tenants done before it keep their new sealing; running again redoes them harmlessly.
        typer.echo(f"coregraph: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"re-encrypted the secrets of {count} webhook endpoint(s) under the first key")


@app.command("files-cleanup")
def files_cleanup(
    orphan_grace_seconds: Annotated[
        int | None,
        typer.Option(
            help="Reclaim unaccounted bytes this old (COREGRAPH_FILES_ORPHAN_GRACE_SECONDS)."
        ),
    ] = None,
) -> None:
    """Remove the bytes of deleted files past their retention and of upload URLs never
    completed, then reclaim orphan bytes (stored, but no file row committed). Safe to run
    at any time and from several places; run it periodically (cron, a scheduled job)."""
    from coregraph import db
    from coregraph.services import files
    from coregraph.storage import create_storage

    settings = _settings()
    grace = (
        settings.files_orphan_grace_seconds
        if orphan_grace_seconds is None
        else orphan_grace_seconds
    )
    if grace < FILES_MIN_ORPHAN_GRACE_SECONDS:
        # The setting's floor: younger bytes may be a running upload's.
        typer.echo(
            f"coregraph: --orphan-grace-seconds must be at least {FILES_MIN_ORPHAN_GRACE_SECONDS}",
            err=True,
        )
        raise typer.Exit(2)

    async def run() -> files.Cleanup:
        # It reads every tenant's files: on PostgreSQL as the worker role (migration 0012).
        engine = db.create_engine(settings, role=settings.database_worker_role)
        storage = create_storage(settings)
        try:
            return await files.cleanup(engine, storage, grace_seconds=grace)
        finally:
            await storage.aclose()
            await engine.dispose()

    done = asyncio.run(run())
    typer.echo(
        f"purged {len(done.purged)} file(s), reclaimed {len(done.orphans)} orphan object(s),"
        f" discarded {done.incomplete} incomplete upload(s)"
    )


@app.command("load-plans")
def load_plans(
    file: Annotated[Path, typer.Argument(help='JSON, or TOML by its suffix: {"plans": [...]}.')],
) -> None:
    """Define or replace the plans of a file in one transaction, all or none (what
    COREGRAPH_PLANS_FILE does at start). Unchanged plans keep their version."""
    from coregraph import db
    from coregraph.services import billing

    settings = _settings()

    async def run() -> list[str]:
        engine = db.create_engine(settings)
        try:
            return [row.key for row in await billing.load_plans(engine, specs)]
        finally:
            await engine.dispose()

    try:
        specs = billing.read_plans_file(file)
        keys = asyncio.run(run())
    except OSError as exc:
        typer.echo(f"coregraph: {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        _fail(exc)
        return
    typer.echo(f"loaded {len(keys)} plan(s): {', '.join(keys)}")


@app.command("billing-export")
def billing_export(
    period: Annotated[str, typer.Option(help="The calendar month (UTC), 'YYYY-MM'.")],
    output: Annotated[
        Path | None, typer.Option(help="Write the JSON document here (default: stdout).")
    ] = None,
) -> None:
    """The JSON document of a month's billable usage per tenant (LIVE environment only),
    priced by each tenant's plan, for an external billing system: every tenant with a plan or
    usage. Amounts in minor units of each tenant's currency, lines rounded half-up."""
    from coregraph import db
    from coregraph.auth.principal import system_principal
    from coregraph.models.base import utcnow
    from coregraph.request import system_request
    from coregraph.services import invoices

    settings = _settings()

    async def run() -> dict[str, object]:
        # The worker role finds every billable tenant; each is then read through the API's
        # role inside that tenant's wall (as rotate-webhook-key does).
        worker = db.create_engine(settings, role=settings.database_worker_role)
        engine = worker if settings.is_sqlite else db.create_engine(settings)
        try:
            return await invoices.billing_export(
                engine,
                worker,
                system_principal("cli:billing-export"),
                system_request(_os_user()),
                period=period,
                default_plan=settings.default_plan,
                generated_at=utcnow(),
            )
        finally:
            await worker.dispose()
            if engine is not worker:
                await engine.dispose()

    try:
        document = asyncio.run(run())
    except Exception as exc:
        _fail(exc)
        return
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    # Whole or not at all: a reader of the file never sees half a document.
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text)
    partial.replace(output)
    typer.echo(f"wrote the {document['period']} export to {output}", err=True)


@app.command("export-schema")
def export_schema() -> None:
    """Print the federation SDL (what a gateway reads from `_service { sdl }`)."""
    from coregraph.api import build_schema

    sys.stdout.write(build_schema(_settings()).as_str() + "\n")


if __name__ == "__main__":
    app()
