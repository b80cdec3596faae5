"""The permission catalog and scope arithmetic: the vocabulary of every ``@requiresScopes``
declaration in the schema, the built-in roles drawn from it, and how a role's permissions, a
credential's own limit and what each permission includes combine into effective scopes.

Pure data and functions (no database): authentication, the context, services and the schema
all lean on this one module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Permission:
    key: str
    description: str


PERMISSIONS: tuple[Permission, ...] = (
    Permission("tenant:read", "See the tenant's name, slug and environments."),
    Permission(
        "tenant:manage", "Rename the tenant and change its settings (includes tenant:read)."
    ),
    Permission("members:read", "List members, their users and roles."),
    Permission("members:manage", "Invite, remove and re-role members (includes members:read)."),
    Permission("roles:manage", "Create, change and delete custom roles."),
    Permission("apikeys:manage", "Issue, list and revoke API keys."),
    Permission("audit:read", "Read the audit trail."),
    Permission("events:read", "Read and subscribe to business events."),
    Permission("events:write", "Publish business events."),
    Permission("webhooks:read", "See webhook endpoints, their deliveries and every attempt."),
    Permission(
        "webhooks:manage",
        "Configure webhook endpoints, rotate their secrets, retry and replay deliveries"
        " (includes webhooks:read).",
    ),
    Permission("files:read", "Read files."),
    Permission("files:write", "Upload and delete files."),
    Permission("usage:read", "Read usage records."),
    Permission("usage:write", "Record usage."),
    Permission("meters:manage", "Define the tenant's own usage meters."),
    Permission("billing:read", "See plans, entitlements and invoices."),
    Permission("billing:manage", "Change the plan and billing details (includes billing:read)."),
    Permission("approvals:review", "Approve or reject sensitive actions."),
    Permission(
        "approvals:manage",
        "Define which actions need approval, by whom (includes approvals:review's reading of"
        " requests, not their approval).",
    ),
    Permission(
        "agents:manage",
        "Create, list, disable and delete the tenant's agents, issue their keys and tokens.",
    ),
    Permission(
        "support:manage",
        "Approve, deny and revoke platform staff's support sessions in the tenant.",
    ),
)
PERMISSION_KEYS: frozenset[str] = frozenset(p.key for p in PERMISSIONS)
# Managing a thing includes seeing it: a credential that may change a member's role may read
# the membership it changed (the mutation's payload). Write permissions on data (events:write,
# files:write, usage:write) do not include reading it: write-only keys are a use of their own.
IMPLIED: dict[str, str] = {
    "tenant:manage": "tenant:read",
    "members:manage": "members:read",
    "billing:manage": "billing:read",
    "webhooks:manage": "webhooks:read",
}


def with_implied(permissions: frozenset[str]) -> frozenset[str]:
    """``permissions`` and the ones they include (``IMPLIED``)."""
    return permissions | {IMPLIED[p] for p in permissions if p in IMPLIED}


def effective_scopes(permissions: frozenset[str], limit: frozenset[str] | None) -> frozenset[str]:
    """What a credential may do in a tenant: the role's (or key creator's) ``permissions``,
    narrowed by the credential's own ``limit`` (a token's scope claim, a key's scopes) when it
    has one, each with what it includes."""
    granted = with_implied(permissions)
    return granted if limit is None else with_implied(granted & limit)


@dataclass(frozen=True, slots=True)
class BuiltinRole:
    key: str
    name: str
    description: str
    permissions: frozenset[str]


_ALL = PERMISSION_KEYS
BUILTIN_ROLES: dict[str, BuiltinRole] = {
    r.key: r
    for r in (
        BuiltinRole("owner", "Owner", "Everything, including billing and ownership.", _ALL),
        BuiltinRole(
            "admin",
            "Admin",
            "Everything except billing management and letting platform support in.",
            _ALL - {"billing:manage", "support:manage"},
        ),
        BuiltinRole(
            "member",
            "Member",
            "Works with the tenant's data.",
            frozenset(
                {
                    "tenant:read",
                    "members:read",
                    "events:read",
                    "events:write",
                    "files:read",
                    "files:write",
                    "usage:read",
                }
            ),
        ),
        BuiltinRole(
            "viewer",
            "Viewer",
            "Reads the tenant's data.",
            frozenset({"tenant:read", "members:read", "events:read", "files:read", "usage:read"}),
        ),
        BuiltinRole(
            "billing",
            "Billing",
            "Manages plans and billing.",
            frozenset(
                {"tenant:read", "members:read", "usage:read", "billing:read", "billing:manage"}
            ),
        ),
    )
}
OWNER_ROLE_KEY = "owner"


# What a support session lets platform staff do in a tenant (coregraph.services.support).
# READ: every read permission of the catalog, no write. ACT: also work on the tenant's data
# (events, files, usage, meters, webhooks: replay a delivery, fix a record) — but never change
# who can get in or what they may do (members, roles, API keys, agents), the tenant's settings
# (audit retention among them: support must not be able to shorten the trail of its own
# actions), billing, approvals or support access itself: nothing done under a session outlives
# it or widens anyone's rights.
SUPPORT_READ_SCOPES: frozenset[str] = frozenset(
    p.key for p in PERMISSIONS if p.key.endswith(":read")
)
SUPPORT_ACT_SCOPES: frozenset[str] = SUPPORT_READ_SCOPES | frozenset(
    {
        "events:write",
        "files:write",
        "usage:write",
        "meters:manage",
        "webhooks:manage",
    }
)
