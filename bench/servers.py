"""uvicorn subprocesses on 127.0.0.1: started with a deadline, stopped by their own pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from cryptography.fernet import Fernet

from coregraph.settings import Settings

HOST = "127.0.0.1"


def bench_env(tmp: str) -> dict[str, str]:
    """The ``COREGRAPH_*`` environment both servers run with: the embedded defaults (a SQLite
    file in ``tmp``, no Redis) in production mode, with random secrets and tokens that
    outlive any run."""
    return {
        "COREGRAPH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/coregraph-bench.sqlite3",
        "COREGRAPH_ENV": "production",
        "COREGRAPH_JWT_SECRET": secrets.token_urlsafe(48),
        "COREGRAPH_ACCESS_TOKEN_TTL_SECONDS": "86400",
        "COREGRAPH_LOG_LEVEL": "WARNING",
        "COREGRAPH_REDIS_URL": "",
        # Production refuses the development key that encrypts webhook secrets.
        "COREGRAPH_WEBHOOK_SECRET_KEYS": Fernet.generate_key().decode(),
    }


def bench_settings(environ: dict[str, str], **overrides: object) -> Settings:
    """The settings the bench itself uses to reach the servers' database (seeding, migrating),
    read from ``bench_env``'s environment."""
    values: dict[str, object] = {
        "env": environ["COREGRAPH_ENV"],
        "database_url": environ["COREGRAPH_DATABASE_URL"],
        "jwt_secret": environ["COREGRAPH_JWT_SECRET"],
        "webhook_secret_keys": environ["COREGRAPH_WEBHOOK_SECRET_KEYS"],
        "access_token_ttl_seconds": 86400,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def uvicorn_server(
    name: str,
    factory: str,
    env: dict[str, str],
    log_dir: str,
    health_path: str,
    start_timeout: float = 30.0,
    workers: int = 1,
) -> Iterator[Server]:
    """``python -m uvicorn <factory> --factory`` on a free loopback port, ``workers``
    processes (one by default)."""
    port = free_port()
    log_path = os.path.join(log_dir, f"{name}.log")
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *(["--workers", str(workers)] if workers > 1 else []),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name, port, process, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode} while starting:\n{server.log_tail()}"
                )
            try:
                if httpx.get(server.base_url + health_path, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {start_timeout:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        stop(process)


@contextlib.contextmanager
def worker_process(env: dict[str, str], log_dir: str) -> Iterator[subprocess.Popen[bytes]]:
    """``coregraph worker`` (the outbox relay and webhook delivery) as a subprocess."""
    with open(os.path.join(log_dir, "worker.log"), "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "coregraph.cli", "worker"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)
