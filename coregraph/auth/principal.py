"""The acting subject of a request, as a type rather than a dict."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from coregraph.models.base import Environment

NO_SCOPES: frozenset[str] = frozenset()


class PrincipalKind(enum.StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    API_KEY = "api_key"
    # An agent of a tenant (coregraph.services.agents): by its own key or token, or on behalf
    # of a user through a token exchange (``user_id`` is then that user).
    AGENT = "agent"
    # coregraph itself (a CLI command): never produced by authentication, so it never reaches
    # GraphQL; it holds no tenant scopes and passes no schema check.
    SYSTEM = "system"
    # Platform staff inside one tenant through an approved support session
    # (coregraph.services.support): ``staff_user_id`` is the person, ``support_session_id`` the
    # session. Never ``user_id``: nothing done under it acts on the staff member's own account.
    SUPPORT = "support"


class PlatformRole(enum.StrEnum):
    """The role of a platform staff member (``coregraph create-staff``): outside every tenant."""

    SUPPORT = "platform:support"
    ADMIN = "platform:admin"


class SupportMode(enum.StrEnum):
    """What an approved support session allows: reading the tenant, or acting in it too."""

    READ = "read"
    ACT = "act"


_CREDENTIALED = frozenset(
    {PrincipalKind.USER, PrincipalKind.API_KEY, PrincipalKind.AGENT, PrincipalKind.SUPPORT}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who acts, in which tenant and environment, with which effective scopes.

    ``tenant_scopes`` maps every tenant the principal can act in to its effective scopes there
    (role permissions, narrowed by the token's or key's own scopes). Checks are row-relative:
    a row of tenant T is judged by ``scopes_in(T)``, so a user who belongs to several tenants
    never carries one tenant's rights into another. ``tenant_id`` is the tenant the request
    addresses (``X-Tenant-Id`` or the API key's tenant): the default for root fields and writes.
    """

    kind: PrincipalKind
    user_id: str | None = None
    api_key_id: str | None = None
    session_id: str | None = None
    # The person an API key or an agent acts for: a key's creator, or the user whose token an
    # agent exchanged for one of its own (then also ``user_id``).
    acting_for_user_id: str | None = None
    agent_id: str | None = None
    tenant_id: str | None = None
    environment: Environment = Environment.LIVE
    tenant_scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The credential's own limit on every tenant's permissions (a token's scope claim), kept
    # so that a tenant granted during a request is narrowed the same way.
    scope_limit: frozenset[str] | None = None
    # What a SYSTEM principal is, as audit entries name it: ``cli:create-tenant``.
    system_name: str | None = None
    # An API key's own operation rate limits (``perSecond``, ``perMinute``, ``costPerMinute``),
    # replacing its tenant plan's values of the kinds it names (services.plan_limits).
    rate_limits: Mapping[str, int] | None = None
    # A platform staff member's role: set on their own user principal and on a SUPPORT one.
    platform_role: PlatformRole | None = None
    # SUPPORT only: the staff member, their session and what it allows.
    staff_user_id: str | None = None
    support_session_id: str | None = None
    support_mode: SupportMode | None = None

    def __post_init__(self) -> None:
        if self.kind is PrincipalKind.SYSTEM and (self.tenant_scopes or self.user_id):
            raise ValueError("a system principal acts for no user and holds no tenant scopes")

    @property
    def is_authenticated(self) -> bool:
        """A user, an API key or an agent, authenticated by a credential (never SYSTEM)."""
        return self.kind in _CREDENTIALED

    @property
    def actor_id(self) -> str | None:
        if self.kind is PrincipalKind.API_KEY:
            return self.api_key_id
        if self.kind is PrincipalKind.AGENT:
            return self.agent_id
        if self.kind is PrincipalKind.SYSTEM:
            return self.system_name
        if self.kind is PrincipalKind.SUPPORT:
            return self.staff_user_id
        return self.user_id

    @property
    def read_only(self) -> bool:
        """A READ support session: every write is refused, whatever its scopes say."""
        return self.kind is PrincipalKind.SUPPORT and self.support_mode is not SupportMode.ACT

    @property
    def scopes(self) -> frozenset[str]:
        """Effective scopes in the addressed tenant."""
        return self.scopes_in(self.tenant_id)

    def scopes_in(self, tenant_id: str | None) -> frozenset[str]:
        if tenant_id is None:
            return NO_SCOPES
        return self.tenant_scopes.get(tenant_id, NO_SCOPES)

    def is_member_of(self, tenant_id: str) -> bool:
        return tenant_id in self.tenant_scopes


ANONYMOUS = Principal(kind=PrincipalKind.ANONYMOUS)


def system_principal(name: str) -> Principal:
    """coregraph itself acting, e.g. ``system_principal("cli:create-tenant")``."""
    return Principal(kind=PrincipalKind.SYSTEM, system_name=name)
