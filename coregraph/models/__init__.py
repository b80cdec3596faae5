"""SQLAlchemy tables, one module per domain. Importing this package registers them all."""

from coregraph.models.access import ApiKey, Role
from coregraph.models.agents import Agent
from coregraph.models.approvals import ApprovalDecision, ApprovalPolicy, ApprovalRequest
from coregraph.models.audit import AuditEntry, StreamHead
from coregraph.models.base import Base, Environment
from coregraph.models.billing import Plan, TenantPlan, TenantPlanPeriod, UsageThreshold
from coregraph.models.events import Event, EventType
from coregraph.models.files import File, FileStatus
from coregraph.models.identity import ExternalIdentity, RetiredRefreshToken, Session, User
from coregraph.models.streams import RelayPosition
from coregraph.models.support import SupportSession
from coregraph.models.tenancy import Invitation, Membership, Tenant
from coregraph.models.usage import Meter, UsageRecord, UsageRollup
from coregraph.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "Agent",
    "ApiKey",
    "ApprovalDecision",
    "ApprovalPolicy",
    "ApprovalRequest",
    "AuditEntry",
    "Base",
    "Environment",
    "Event",
    "EventType",
    "ExternalIdentity",
    "File",
    "FileStatus",
    "Invitation",
    "Membership",
    "Meter",
    "Plan",
    "RelayPosition",
    "RetiredRefreshToken",
    "Role",
    "Session",
    "StreamHead",
    "SupportSession",
    "Tenant",
    "TenantPlan",
    "TenantPlanPeriod",
    "UsageRecord",
    "UsageRollup",
    "UsageThreshold",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
