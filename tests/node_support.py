"""Running the Node-side checks in tests/node (composition, graphql-http audits) from pytest.

CI has Node.js 20+; `make test` installs tests/node's packages with `npm ci`. When a developer
runs pytest directly and the packages are missing, they are installed once (under a lock, so
parallel test runs do not race each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TIMEOUT = 180.0
NPM_TIMEOUT = 600.0


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js 20+ is required for the federation and GraphQL-over-HTTP checks but "
            "`node` is not on PATH; install Node.js (and npm), then `npm ci --prefix tests/node`",
            pytrace=False,
        )
    return node


def ensure_node_modules() -> None:
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "tests/node/node_modules is missing and `npm` is not on PATH: "
            "run `npm ci --prefix tests/node`",
            pytrace=False,
        )
    lock_path = Path(tempfile.gettempdir()) / "coregraph-tests-npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another run installed them while we waited
            return
        done = subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci --prefix tests/node` failed ({done.returncode}):\n{done.stderr}",
                pytrace=False,
            )


@dataclass
class NodeRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"node printed no JSON (exit {self.returncode})\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None
        assert isinstance(value, dict), value
        return value


def run_node_script(script: str, *args: str, timeout: float = NODE_TIMEOUT) -> NodeRun:
    """Run ``tests/node/<script>`` with ``args``; bounded by ``timeout`` seconds."""
    node = node_binary()
    ensure_node_modules()
    done = subprocess.run(
        [node, str(NODE_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
        check=False,
    )
    return NodeRun(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def running_node_server(
    script: str, *args: str, startup_timeout: float = 60.0
) -> Iterator[dict[str, Any]]:
    """Run ``tests/node/<script>``, a server that prints one JSON line once it listens and
    exits when its stdin closes. Yields that JSON; stops the process however the block ends."""
    node = node_binary()
    ensure_node_modules()
    process = subprocess.Popen(
        [node, str(NODE_DIR / script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=NODE_DIR,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        ready, _, _ = select.select([process.stdout], [], [], startup_timeout)
        line = process.stdout.readline() if ready else ""
        if not line:
            process.kill()
            raise AssertionError(
                f"{script} did not start within {startup_timeout:.0f} s "
                f"(exit {process.poll()}):\n{process.stderr.read()}"
            )
        yield json.loads(line)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
