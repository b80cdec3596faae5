"""Input rules shared by every entry point (GraphQL, CLI). Each failure names the field."""

from __future__ import annotations

import re
from datetime import datetime

from coregraph import ids
from coregraph.errors import BadUserInput, NotFound
from coregraph.services import emails

_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{1,62}$")
# C0 controls other than tab and line breaks, and DEL: never meant in a name, and PostgreSQL
# refuses NUL in text outright (which would surface as an internal error, not a typed one).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_COMMON_PASSWORDS = frozenset(
    {
        "password",
        "password1",
        "password123",
        "passw0rd",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "iloveyou123",
        "letmein123",
        "welcome123",
        "administrator",
        "changeme123",
    }
)


def email(value: str, field: str = "email") -> str:
    """The address in its canonical form (``coregraph.services.emails``): what is stored and
    compared."""
    return emails.canonical(value, field)


def password(value: str, min_length: int, field: str = "password") -> str:
    if len(value) < min_length:
        raise BadUserInput(f"{field}: at least {min_length} characters", field=field)
    if len(value) > 256:
        raise BadUserInput(f"{field}: at most 256 characters", field=field)
    if value.lower() in _COMMON_PASSWORDS or len(set(value)) < 4:
        raise BadUserInput(f"{field}: too easy to guess", field=field)
    return value


def text(value: str, field: str, *, max_length: int, min_length: int = 1) -> str:
    value = value.strip()
    if len(value) < min_length:
        raise BadUserInput(f"{field}: must not be empty", field=field)
    if len(value) > max_length:
        raise BadUserInput(f"{field}: at most {max_length} characters", field=field)
    if _CONTROL_RE.search(value):
        raise BadUserInput(f"{field}: must not contain control characters", field=field)
    return value


def slug(value: str, field: str = "slug") -> str:
    if len(value) > 63 or not _SLUG_RE.match(value):
        raise BadUserInput(
            f"{field}: 1-63 lowercase letters, digits or hyphens, not starting or ending with "
            "a hyphen",
            field=field,
        )
    return value


def is_key(value: str) -> bool:
    return _KEY_RE.match(value) is not None


def key(value: str, field: str = "key") -> str:
    if not is_key(value):
        raise BadUserInput(
            f"{field}: 2-63 characters, lowercase letters, digits, '-' or '_', starting with a "
            "letter",
            field=field,
        )
    return value


MAX_IDEMPOTENCY_KEY_LENGTH = 200


def idempotency_key(value: str | None, field: str = "idempotencyKey") -> str | None:
    """An idempotency key (events, usage): 1-200 printable characters, or none."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH or not value.isprintable():
        raise BadUserInput(
            f"{field}: 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable characters", field=field
        )
    return value


def object_id(value: str, prefix: str, field: str) -> str:
    """A malformed id is bad input; a well-formed one that is not visible is NOT_FOUND later."""
    if not ids.is_valid(value, prefix):
        raise BadUserInput(f"{field}: not a valid {ids.prefixes()[prefix]} id", field=field)
    return value


def not_found(kind: str, field: str | None = None) -> NotFound:
    return NotFound(f"{kind} not found", field=field)


def time_range(
    start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """``from`` (inclusive) and ``to`` (exclusive) of a query: times with an offset, in order."""
    for value, field in ((start, "from"), (end, "to")):
        if value is not None and value.tzinfo is None:
            raise BadUserInput(
                f"{field}: give a time with its offset, e.g. 2026-12-02T08:00:00Z", field=field
            )
    if start is not None and end is not None and end < start:
        raise BadUserInput("to: must not be before from", field="to")
    return start, end
