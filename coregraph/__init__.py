"""coregraph: identity, tenants, permissions and audit as one Federation v2 subgraph."""

import sys as _sys


def _import_structlog_without_rich() -> None:
    """structlog renders console tracebacks with rich (and pygments) whenever they are
    installed, and they are (typer's dependencies); every process of ours imports structlog for
    its JSON lines, which never use them, so it would carry ~4 MiB of them for nothing
    (tests/test_startup_memory.py). Hidden while structlog loads, rich stays importable for the
    CLI afterwards."""
    if "structlog" in _sys.modules or "rich" in _sys.modules:
        return
    _sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]


_import_structlog_without_rich()

__version__ = "0.1.0"
