"""SQLAlchemy tables, one module per domain. Importing this package registers them all."""

from coregraph.models.access import ApiKey, Role
from coregraph.models.audit import AuditEntry
from coregraph.models.base import Base, Environment
from coregraph.models.identity import ExternalIdentity, RetiredRefreshToken, Session, User
from coregraph.models.tenancy import Invitation, Membership, Tenant

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Base",
    "Environment",
    "ExternalIdentity",
    "Invitation",
    "Membership",
    "RetiredRefreshToken",
    "Role",
    "Session",
    "Tenant",
    "User",
]
