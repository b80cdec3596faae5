"""Typed failures. Each carries a stable ``extensions.code`` a client can branch on.

Services raise these; the GraphQL layer turns them into errors with the code, and anything else
into a masked ``INTERNAL_SERVER_ERROR``.
"""

from __future__ import annotations

from typing import Any


class CoregraphError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    @property
    def extensions(self) -> dict[str, Any]:
        ext: dict[str, Any] = {"code": self.code}
        if self.field:
            ext["field"] = self.field
        ext.update(self.extra)
        return ext


class Unauthenticated(CoregraphError):
    code = "UNAUTHENTICATED"


class Forbidden(CoregraphError):
    code = "FORBIDDEN"


class NotFound(CoregraphError):
    """Same answer for "does not exist" and "not yours"."""

    code = "NOT_FOUND"


class BadUserInput(CoregraphError):
    code = "BAD_USER_INPUT"


class Conflict(CoregraphError):
    code = "CONFLICT"


class QuotaExceeded(CoregraphError):
    code = "QUOTA_EXCEEDED"


class RateLimited(CoregraphError):
    code = "RATE_LIMITED"


class ServiceUnavailable(CoregraphError):
    """Not the request's fault: a dependency (the database) could not serve it; retry."""

    code = "SERVICE_UNAVAILABLE"
