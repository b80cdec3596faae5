"""What a server process on the embedded defaults loads at startup (bench/RESULTS.md, "Files":
the idle server's resident set is most of the peak during an upload), and the readiness
check's revisions, which are read without Alembic for that reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from alembic.script import ScriptDirectory

from coregraph import db, migrate
from tests.conftest import make_settings
from tests.support import create_test_database, drop_test_database, env_database_url, free_port
from tests.test_cli_and_deploy import cli_env, wait_until_ready

# Libraries a server on the embedded defaults (local files, no Redis, no S3) does not use until
# a feature asks for them; each cost its resident set 2-8 MiB for the life of the process.
LAZY = (
    "boto3",
    "botocore",
    "redis",
    "alembic",
    "mako",
    "pygments",
    "rich",
    "httpx",
    "jsonschema",
    # PyJWT signs coregraph's HMAC tokens without it; only an external issuer's RSA/EC keys,
    # webhook secrets (Fernet) and the CLI load it (coregraph.auth.pyjwt).
    "cryptography",
    # The PostgreSQL dialect and its driver, on SQLite (coregraph.db.dialect_insert, the JSONB
    # of models.base.JSONDocument).
    "sqlalchemy.dialects.postgresql",
    "asyncpg",
    # Tracing is off without OTEL_EXPORTER_OTLP_ENDPOINT (coregraph.telemetry). (FastAPI
    # itself imports the OpenTelemetry API, a few hundred KiB.)
    "opentelemetry.sdk",
    "opentelemetry.instrumentation",
    "opentelemetry.exporter",
    # Webhook sending (coregraph.outbound, httpcore): with the first delivery or endpoint saved.
    "coregraph.outbound",
    "httpcore",
    # FastAPI imports it to check the type of a route's declared parameter or returned model:
    # coregraph's routes declare none (coregraph.files_http, graphiql, healthz).
    "pydantic.v1",
    # uvicorn's command line loads it for --reload whenever it is installed; coregraph does not
    # install it (pyproject.toml: uvicorn without its "standard" extra's watchfiles).
    "watchfiles",
)

PROBE = """
import json, sys
# What `python -m uvicorn` and `coregraph serve` (through `import uvicorn`) load first.
import uvicorn.main
import coregraph.app

coregraph.app.create_app()
status = {}
try:
    with open("/proc/self/status", encoding="ascii") as fh:
        status = dict(line.split(":", 1) for line in fh if ":" in line)
except OSError:
    pass
print(json.dumps({
    "loaded": [name for name in sys.argv[1:] if name in sys.modules],
    "rss_kib": int(status["VmRSS"].split()[0]) if status else None,
    "hwm_kib": int(status["VmHWM"].split()[0]) if status else None,
}))
"""


def run_probe(code: str, *args: str, **environ: str) -> Any:
    """What ``code``, run by a fresh interpreter with no COREGRAPH_/OTEL_ settings but
    ``environ``, printed last (JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COREGRAPH_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env | environ,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_server_on_the_embedded_defaults_starts_without_the_libraries_it_does_not_use(
    tmp_path: Path,
) -> None:
    probe = run_probe(
        PROBE,
        *LAZY,
        COREGRAPH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/startup.sqlite3",
        COREGRAPH_STORAGE_DIR=str(tmp_path / "files"),
        # The production cost of a password hash (64 MiB), which startup must not pay.
        COREGRAPH_PASSWORD_HASH_MEMORY_KIB="65536",
    )
    assert probe["loaded"] == []
    if probe["hwm_kib"] is not None:
        # No argon2 hash at import or startup: one would have peaked ~64 MiB above the
        # resident set the process keeps.
        assert probe["hwm_kib"] - probe["rss_kib"] < 32 * 1024, probe


TOKENS_PROBE = """
import asyncio, json, sys
from coregraph.auth.tokens import TokenService
from coregraph.settings import Settings

own = TokenService(Settings())
token, _ = own.issue_access_token("usr_probe", "ses_probe")
before = asyncio.run(own.verify(token))
hmac_only = "cryptography" not in sys.modules

# Later in the same process, a token service for an external issuer (RS256).
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = private.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
external = TokenService(Settings(
    external_jwt_issuer="https://idp.example", external_jwt_audience="cg-probe",
    external_jwt_public_key=pem,
))
claims = {"iss": "https://idp.example", "aud": "cg-probe", "sub": "idp-user",
          "iat": 1_700_000_000, "exp": 4_000_000_000}
theirs = asyncio.run(external.verify(jwt.encode(claims, private, algorithm="RS256")))
forged = jwt.encode({**claims, "sub": "forged"}, "x" * 32, algorithm="HS256")
try:
    asyncio.run(external.verify(forged))
    refused = None
except Exception as exc:
    refused = getattr(exc, "code", type(exc).__name__)
print(json.dumps({
    "hmac_only": hmac_only,
    "own": [before.subject, before.external],
    "external": [theirs.subject, theirs.external],
    "own_after": asyncio.run(own.verify(token)).subject,
    "forged": refused,
}))
"""


def test_own_tokens_need_no_cryptography_and_an_external_issuer_still_verifies_later() -> None:
    assert run_probe(TOKENS_PROBE) == {
        "hmac_only": True,
        "own": ["usr_probe", False],
        "external": ["idp-user", True],
        "own_after": "usr_probe",
        "forged": "UNAUTHENTICATED",
    }


async def test_readiness_reads_the_revisions_as_alembic_does(tmp_path: Path) -> None:
    assert migrate.head_revision() == (
        ScriptDirectory.from_config(migrate.alembic_config("")).get_current_head()
    )
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    settings = make_settings(url)
    try:
        engine = db.create_engine(settings, as_owner=True)
        try:
            assert await migrate.current_revision(engine) is None
            await migrate.upgrade(settings)
            assert await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()
    finally:
        if name and base:
            await drop_test_database(base, name)


def test_serve_migrates_a_fresh_database_in_a_child_process_then_serves(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coregraph.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(timeout=10) as http:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(http, url, server)
            assert http.get(f"{url}/readyz").json()["checks"]["migrations"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=20)
