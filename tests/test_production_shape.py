"""docker-compose.yml runs the production shape: PostgreSQL, Redis, a one-shot migration, two
API processes, two workers, and Hive Gateway composing coregraph with an example edge subgraph.

No image is pulled or built here. The file is read as Compose reads it (anchors merged) and
checked service by service; `docker compose config -q` validates it where Compose is
installed; the API processes' environment passes production's own refusal of insecure
settings; and the gateway image's scripts run for real, laid out as its Dockerfile lays them
out, in front of two coregraph processes, one of which is then stopped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coregraph.settings import load_settings
from tests.conftest import TEST_WEBHOOK_KEY, make_settings
from tests.node_support import NODE_DIR, ensure_node_modules, node_binary
from tests.support import GraphQLClient, free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GATEWAY_DOCKERFILE = ROOT / "deploy" / "gateway" / "Dockerfile"
APIS = ("api-1", "api-2")
WORKERS = ("worker-1", "worker-2")
# ${NAME:?message} (required, no default) and ${NAME:-default}.
REQUIRED = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]+\}$")
DEFAULTED = re.compile(r"^\$\{([A-Z0-9_]+):-([^}]*)\}$")
# The only credentials written into the file: the local database's, a development placeholder
# the header says to change.
PLACEHOLDERS = {"POSTGRES_PASSWORD": "coregraph"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def test_every_process_of_the_shape_is_a_service(services: dict[str, Any]) -> None:
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        *APIS,
        *WORKERS,
        "edge",
        "gateway",
    }
    assert services["migrate"]["command"] == ["coregraph", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in (*APIS, *WORKERS):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["restart"] == "unless-stopped"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_processes_serve_the_image_command_and_are_checked_for_readiness(
    services: dict[str, Any],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
    assert '"serve"' in cmd and '"--no-migrate"' in cmd and '"0.0.0.0"' in cmd
    ports = set()
    for name in APIS:
        api = services[name]
        assert "command" not in api, "the image's command: coregraph serve"
        check = " ".join(api["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/readyz" in check, "ready (Redis, relay lag), not only up"
        grace = float(api["environment"]["COREGRAPH_SHUTDOWN_GRACE_SECONDS"])
        # Docker's SIGKILL comes after the drain and the app's own shutdown.
        assert seconds(api["stop_grace_period"]) >= grace + 5
        [port] = api["ports"]
        assert port.startswith("127.0.0.1:") and port.endswith(":8000")
        ports.add(port)
    assert len(ports) == len(APIS)


def test_workers_set_their_concurrency_and_outlast_their_webhook_shutdown(
    services: dict[str, Any],
) -> None:
    for name in WORKERS:
        worker = services[name]
        command = worker["command"]
        assert command[:3] == ["coregraph", "worker", "--concurrency"]
        assert int(command[3]) >= 1
        assert worker["healthcheck"] == {"disable": True}, "no port: the image's check would fail"
        shutdown = float(worker["environment"]["COREGRAPH_WEBHOOK_SHUTDOWN_SECONDS"])
        assert seconds(worker["stop_grace_period"]) >= shutdown + 10


def test_the_gateway_composes_both_subgraphs_and_routes_to_every_api_process(
    services: dict[str, Any],
) -> None:
    gateway, edge = services["gateway"], services["edge"]
    assert gateway["command"] == ["node", "gateway.mjs"]
    assert edge["command"] == ["node", "edge.mjs"]
    for node_service in (gateway, edge):
        assert node_service["build"] == {"context": ".", "dockerfile": "deploy/gateway/Dockerfile"}
    env = gateway["environment"]
    assert env["CORE_URLS"].split(",") == [f"http://{name}:8000/graphql" for name in APIS]
    assert env["EDGE_URL"] == f"http://edge:{edge['environment']['PORT']}/"
    # The same secret the API processes hold, from the same variable.
    assert (
        env["SCHEMA_READER_SECRET"]
        == services["api-1"]["environment"]["COREGRAPH_SCHEMA_READER_SECRET"]
    )
    assert gateway["ports"] == [f"{env['PORT']}:{env['PORT']}"]
    assert {name: dep["condition"] for name, dep in gateway["depends_on"].items()} == {
        "api-1": "service_healthy",
        "api-2": "service_healthy",
        "edge": "service_healthy",
    }
    assert "/readiness" in " ".join(gateway["healthcheck"]["test"])
    assert "http://127.0.0.1:4001/" in " ".join(edge["healthcheck"]["test"])


def test_no_secret_is_written_into_the_file(services: dict[str, Any]) -> None:
    secretive = re.compile(r"SECRET|PASSWORD|KEY|TOKEN")
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if not secretive.search(variable):
                continue
            if variable in PLACEHOLDERS:
                assert value == PLACEHOLDERS[variable], (name, variable)
                continue
            assert REQUIRED.match(str(value)), f"{name}: {variable} must come from outside"
    url = services["api-1"]["environment"]["COREGRAPH_DATABASE_URL"]
    assert url == "postgresql+asyncpg://coregraph:coregraph@postgres:5432/coregraph"


def test_the_api_environment_passes_production_s_refusal_of_insecure_settings(
    services: dict[str, Any],
) -> None:
    """What the operator provides (the required variables) is filled in; the rest is the file's
    own: production refuses to start on an insecure value, so none may be among them."""
    provided = {
        "COREGRAPH_JWT_SECRET": "operator-provided-jwt-secret-0123456789abcdef",
        "COREGRAPH_WEBHOOK_SECRET_KEYS": TEST_WEBHOOK_KEY,
        "COREGRAPH_SCHEMA_READER_SECRET": "operator-provided-schema-secret-0123456789",
    }
    for name in (*APIS, *WORKERS, "migrate"):
        env = {}
        for variable, value in services[name]["environment"].items():
            value = str(value)
            if required := REQUIRED.match(value):
                value = provided[required[1]]
            elif defaulted := DEFAULTED.match(value):
                value = defaulted[2]
            env[variable] = value
        assert env["COREGRAPH_ENV"] == "production"
        overrides = {k.removeprefix("COREGRAPH_").lower(): v for k, v in env.items() if v != ""}
        settings = load_settings(**overrides)
        assert settings.is_production and not settings.allow_insecure
        assert settings.redis_url == "redis://redis:6379/0"


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`), or else v1 (`docker-compose`); skips without either."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed to check the file")


def test_docker_compose_accepts_the_file() -> None:
    compose = compose_command()
    provided = {
        "COREGRAPH_JWT_SECRET": "x" * 40,
        "COREGRAPH_WEBHOOK_SECRET_KEYS": TEST_WEBHOOK_KEY,
        "COREGRAPH_SCHEMA_READER_SECRET": "y" * 40,
    }
    bare = {k: v for k, v in os.environ.items() if not k.startswith("COREGRAPH_")}
    done = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**bare, **provided},
    )
    assert done.returncode == 0, done.stderr
    # Without what the operator must provide, Compose refuses to start anything.
    unset = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=bare,
    )
    assert unset.returncode != 0 and "COREGRAPH_" in unset.stderr, unset.stderr


# --- the gateway image's scripts, run -------------------------------------------------------


def gateway_image_layout(into: Path) -> Path:
    """/app as deploy/gateway/Dockerfile builds it: every COPY'd file side by side, and the
    packages tests/node has installed from the same lock file."""
    app = into / "app"
    app.mkdir()
    for line in GATEWAY_DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, destination = line.split()[1:]
            assert destination == "./"
            for source in sources:
                shutil.copy(ROOT / source, app / Path(source).name)
    ensure_node_modules()
    (app / "node_modules").symlink_to(NODE_DIR / "node_modules")
    return app


@contextmanager
def node_process(app: Path, script: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [node_binary(), script],
        cwd=app,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        assert process.stderr is not None
        process.stderr.close()


async def wait_ready(url: str, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"{what} exited: {process.stderr.read()[-2000:]}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{what} not ready within 90 s"
            await asyncio.sleep(0.2)


def healthy(services: dict[str, Any], name: str, port: int, own_port: int) -> bool:
    """Whether ``name``'s Compose health check passes here, with its port moved to ``port``."""
    test = [
        part.replace(f":{own_port}/", f":{port}/") for part in services[name]["healthcheck"]["test"]
    ]
    assert test[0] == "CMD"
    executable = {"python": sys.executable, "node": node_binary()}[test[1]]
    done = subprocess.run([executable, *test[2:]], capture_output=True, timeout=30)
    return done.returncode == 0


async def test_the_gateway_image_composes_at_start_and_survives_an_api_process_leaving(
    database_url: str, tmp_path: Path, http: httpx.AsyncClient, services: dict[str, Any]
) -> None:
    secret = "schema-reader-secret-for-the-gateway-0123"
    # No relay runs beside these servers: the events earlier tests left unpublished in the
    # suite's database age past any lag limit (readiness reports the lag, unchecked: 0).
    settings = make_settings(
        database_url, schema_reader_secret=secret, readyz_max_relay_lag_seconds=0
    )
    app = gateway_image_layout(tmp_path)
    edge_port, gateway_port = free_port(), free_port()
    with ExitStack() as stack:
        first = stack.enter_context(running_server(settings))
        second = stack.enter_context(running_server(settings, migrate_first=False))
        edge = stack.enter_context(node_process(app, "edge.mjs", {"PORT": str(edge_port)}))
        gateway = stack.enter_context(
            node_process(
                app,
                "gateway.mjs",
                {
                    "CORE_URLS": f"{first.url},{second.url}",
                    "EDGE_URL": f"http://127.0.0.1:{edge_port}/",
                    "SCHEMA_READER_SECRET": secret,
                    "PORT": str(gateway_port),
                },
            )
        )
        await wait_ready(f"http://127.0.0.1:{gateway_port}/readiness", gateway, "the gateway")
        assert edge.poll() is None
        # The file's health checks, run against these processes, pass.
        readyz = await http.get(f"{first.base_url}/readyz")
        assert await asyncio.to_thread(healthy, services, "api-1", first.port, 8000), readyz.text
        assert await asyncio.to_thread(healthy, services, "edge", edge_port, 4001)
        assert await asyncio.to_thread(healthy, services, "gateway", gateway_port, 4000)
        through = GraphQLClient(http, f"http://127.0.0.1:{gateway_port}/graphql")
        owner = await through.sign_up()
        query = "{ portalVersion viewer { email portalPreferences { locale } } }"
        expected = {
            "portalVersion": "portal-1",
            "viewer": {"email": owner.email, "portalPreferences": {"locale": "en"}},
        }
        for _ in range(4):  # both processes in turn
            r = await through.execute(query, actor=owner, accept="application/json")
            assert r.body == {"data": expected}, r.body
        first.uvicorn_server.should_exit = True  # one API process leaves, as on SIGTERM
        await asyncio.to_thread(first.thread.join, 30)
        assert not first.thread.is_alive()
        assert not await asyncio.to_thread(healthy, services, "api-1", first.port, 8000)
        for _ in range(4):  # every one answered, by the process still there
            r = await through.execute(query, actor=owner, accept="application/json")
            assert r.body == {"data": expected}, r.body
