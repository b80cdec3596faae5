"""Authorization declared in the schema, enforced by one mechanism.

Types and fields declare who may read them with the Federation 2 directives ``@authenticated``,
``@requiresScopes`` and ``@policy`` (strawberry's ``authenticated=``, ``requires_scopes=`` and
``policy=`` arguments), so a gateway reads the same rules from ``_service { sdl }``. After the
schema is built, ``enforce_declarations`` reads those very directive objects back and installs
synchronous checks in the schema itself, so they run on every path that reaches the data:
queries, mutations, ``node``, ``_entities`` and subscriptions alike.

- A field's declaration wraps the field's resolver (and ``subscribe``) with a guard.
- A type's declaration becomes the type's ``IsTypeOf`` check, which graphql-core runs once for
  every object it completes as that type, wherever it was reached, before any of its fields.
  (Root types are never completed as objects: their declaration is applied to each field.)

Semantics (as in Apollo Router): a type's declaration covers each of its fields, and every
declaration on the way must pass (AND); inside ``requiresScopes``/``policy`` the outer list is
OR and each inner list is AND. A denied object is null at its position with one error there, as
the router removes a field whose type is denied. Scope checks are row-relative: a row of tenant
T is judged by the principal's scopes in T (``Principal.scopes_in``), root fields by the
addressed tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLField, GraphQLObjectType, GraphQLSchema, default_field_resolver
from strawberry.federation.schema_directives import Authenticated, Policy, RequiresScopes
from strawberry.types.cast import get_strawberry_type_cast

from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.errors import Forbidden, Unauthenticated

PolicyCheck = Callable[[Principal, Any], bool]
_NOT_A_TENANT_ROW: Any = object()


def _is_self(principal: Principal, obj: Any) -> bool:
    return principal.user_id is not None and getattr(obj, "user_id", None) == principal.user_id


def _is_colleague(principal: Principal, obj: Any) -> bool:
    """The object (a user) was reached through a tenant where the principal may read members."""
    return "members:read" in principal.scopes_in(getattr(obj, "via_tenant_id", None))


def _reads_member_directory(principal: Principal, obj: Any) -> bool:
    """The principal holds members:read in the row's tenant."""
    return "members:read" in principal.scopes_in(getattr(obj, "tenant_id", None))


def _is_own_security_log(principal: Principal, obj: Any) -> bool:
    """The row (an audit entry) belongs to no tenant and sits in the principal's own user
    chain: their sign-up, logins, sessions. Nobody else's, and never an API key's."""
    return (
        principal.user_id is not None
        and getattr(obj, "tenant_id", _NOT_A_TENANT_ROW) is None
        and getattr(obj, "chain_id", None) == principal.user_id
    )


def _is_approval_party(principal: Principal, obj: Any) -> bool:
    """The row (an approval request) is the principal's own, or the principal reviews or
    manages approvals in its tenant."""
    scopes = principal.scopes_in(getattr(obj, "tenant_id", None))
    if "approvals:review" in scopes or "approvals:manage" in scopes:
        return True
    from coregraph.services.approvals import is_requester

    return bool(scopes) and is_requester(principal, getattr(obj, "requester", None) or {})


def _reads_support_session(principal: Principal, obj: Any) -> bool:
    """A support session (or what was done under one) is read by its tenant's owners and
    auditors, and by the staff member who asked for it."""
    scopes = principal.scopes_in(getattr(obj, "tenant_id", None))
    return (
        "support:manage" in scopes
        or "audit:read" in scopes
        or (
            principal.user_id is not None
            and getattr(obj, "staff_user_id", None) == principal.user_id
        )
    )


def _in_support_session(principal: Principal, obj: Any) -> bool:
    """Platform staff inside an approved support session, reading its tenant (the session is
    checked against the database when the request authenticates). Root fields (no row) need
    the session; rows must belong to its tenant."""
    if principal.kind is not PrincipalKind.SUPPORT:
        return False
    tenant_id = getattr(obj, "tenant_id", None)
    return tenant_id is None or tenant_id == principal.tenant_id


# Named row-relative rules for ``@policy``. Synchronous by design: they run per object.
POLICIES: dict[str, PolicyCheck] = {
    "self": _is_self,
    "colleague": _is_colleague,
    "member_directory": _reads_member_directory,
    "own_security_log": _is_own_security_log,
    "approval_party": _is_approval_party,
    "support_session_reader": _reads_support_session,
    "in_support_session": _in_support_session,
}

# What each policy reads of a row, besides the principal (tests/test_request_verdict.py checks
# these against what the functions above really read). A policy group that reads nothing but
# a row's tenant gives one answer for all the rows of that tenant in a request, so compiled
# plans judge it once per tenant (``request_verdict``).
POLICY_READS: dict[str, frozenset[str]] = {
    "self": frozenset({"user_id"}),
    "colleague": frozenset({"via_tenant_id"}),
    "member_directory": frozenset({"tenant_id"}),
    "own_security_log": frozenset({"tenant_id", "chain_id"}),
    "approval_party": frozenset({"tenant_id", "requester"}),
    "support_session_reader": frozenset({"tenant_id", "staff_user_id"}),
    "in_support_session": frozenset({"tenant_id"}),
}
if POLICY_READS.keys() != POLICIES.keys():
    raise RuntimeError("every policy declares what it reads of a row in POLICY_READS")
_TENANT_LEVEL = frozenset({"tenant_id", "via_tenant_id"})
_ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class Declaration:
    """One directive occurrence (on a type or a field)."""

    where: str
    authenticated: bool = False
    scopes: tuple[frozenset[str], ...] | None = None
    policies: tuple[tuple[str, ...], ...] | None = None

    def denial(self, principal: Principal, source: Any) -> Exception | None:
        # Runs for every declared field of every object: plain loops, no generators (a third
        # of the cost of any()/all() here, measured in bench/).
        if not principal.is_authenticated:
            return Unauthenticated(f"{self.where} needs a signed-in user or an API key")
        if self.scopes is not None:
            # A tenant's row is judged in its tenant; a row of no tenant (a user's own sign-in
            # audit entry) holds no tenant scope at all. Root fields and objects that are not
            # tenant rows are judged in the addressed tenant.
            tenant_id = getattr(source, "tenant_id", _NOT_A_TENANT_ROW)
            if tenant_id is _NOT_A_TENANT_ROW:
                tenant_id = principal.tenant_id
                if tenant_id is None:
                    return Forbidden(f"{self.where} needs a tenant: send the X-Tenant-Id header")
            held = principal.scopes_in(tenant_id)
            for required in self.scopes:
                if required <= held:
                    break
            else:
                if tenant_id is None:
                    return Forbidden(f"{self.where}: this row belongs to no tenant")
                wanted = " or ".join(" and ".join(sorted(s)) for s in self.scopes)
                return Forbidden(f"{self.where} requires the scope {wanted}")
        if self.policies is not None:
            for group in self.policies:
                for name in group:
                    if not POLICIES[name](principal, source):
                        break
                else:
                    return None
            return Forbidden(f"{self.where} is not available to this principal")
        return None


def declarations_of(directives: Iterable[object], where: str) -> list[Declaration]:
    found = []
    for directive in directives:
        if isinstance(directive, Authenticated):
            found.append(Declaration(where, authenticated=True))
        elif isinstance(directive, RequiresScopes):
            alternatives = tuple(frozenset(group) for group in directive.scopes)
            found.append(Declaration(where, scopes=alternatives))
        elif isinstance(directive, Policy):
            groups = tuple(tuple(group) for group in directive.policies)
            unknown = {name for group in groups for name in group} - POLICIES.keys()
            if unknown:
                raise ValueError(f"{where}: unknown policy {sorted(unknown)}")
            found.append(Declaration(where, policies=groups))
    return found


def own_declarations(graphql_object: Any, where: str) -> list[Declaration]:
    """The declarations written on this one type or field (not inherited from its type)."""
    definition = (graphql_object.extensions or {}).get("strawberry-definition")
    return declarations_of(getattr(definition, "directives", None) or (), where)


def field_declarations(
    parent: GraphQLObjectType, name: str, field: GraphQLField
) -> list[Declaration]:
    """Every declaration covering a field: its type's and its own."""
    coordinate = f"{parent.name}.{name}"
    return own_declarations(parent, coordinate) + own_declarations(field, coordinate)


def first_denial(
    rules: tuple[Declaration, ...], principal: Principal, source: Any
) -> Exception | None:
    """Why ``principal`` may not see ``source`` under ``rules`` (all must pass), or None. The
    one evaluation shared by the field guards, the types' ``IsTypeOf`` checks and the
    executor's leaf shortcut (``schema.execution``)."""
    for rule in rules:
        denial = rule.denial(principal, source)
        if denial is not None:
            return denial
    return None


Verdict = Callable[[Principal, Any, dict[Any, bool]], bool]


def request_verdict(rules: tuple[Declaration, ...]) -> Verdict:
    """``first_denial(rules, principal, source) is None``, for the compiled plans, which ask it
    for every object of a page: what depends on nothing of a row but its tenant (scope rules,
    and policy groups that read only ``tenant_id`` or ``via_tenant_id``) is decided once per
    tenant and kept in ``memo``, a dict that lives as long as one request (one principal).
    Policy groups are OR: the remembered ones are asked first, then the rest per row."""
    steps: list[tuple[object, Declaration, Any, Any]] = []
    for rule in rules:
        if rule.policies is None:
            steps.append((object(), rule, None, None))
            continue
        remembered: list[tuple[object, str, tuple[PolicyCheck, ...]]] = []
        per_row: list[tuple[PolicyCheck, ...]] = []
        for group in rule.policies:
            checks = tuple(POLICIES[name] for name in group)
            reads = frozenset().union(*(POLICY_READS[name] for name in group))
            if len(reads) == 1 and reads <= _TENANT_LEVEL:
                remembered.append((object(), next(iter(reads)), checks))
            else:
                per_row.append(checks)
        steps.append((object(), rule, tuple(remembered), tuple(per_row)))

    def verdict(principal: Principal, source: Any, memo: dict[Any, bool]) -> bool:
        for token, rule, remembered, per_row in steps:
            if remembered is None:
                # Scopes and @authenticated: the principal and the row's tenant.
                key: Any = (token, getattr(source, "tenant_id", _NOT_A_TENANT_ROW))
                allowed = memo.get(key)
                if allowed is None:
                    allowed = memo[key] = rule.denial(principal, source) is None
                if not allowed:
                    return False
                continue
            if not principal.is_authenticated:
                return False
            for group_token, attribute, checks in remembered:
                key = (group_token, getattr(source, attribute, _ABSENT))
                allowed = memo.get(key)
                if allowed is None:
                    allowed = True
                    for check in checks:
                        if not check(principal, source):
                            allowed = False
                            break
                    memo[key] = allowed
                if allowed:
                    break
            else:
                for checks in per_row:
                    for check in checks:
                        if not check(principal, source):
                            break
                    else:
                        break
                else:
                    return False
        return True

    return verdict


def _guard(resolve: Callable[..., Any], rules: tuple[Declaration, ...]) -> Callable[..., Any]:
    def guarded(source: Any, info: Any, **kwargs: Any) -> Any:
        denial = first_denial(rules, info.context.principal, source)
        if denial is not None:
            raise denial
        return resolve(source, info, **kwargs)

    guarded.__wrapped__ = resolve  # type: ignore[attr-defined]
    guarded.rules = rules  # type: ignore[attr-defined]
    return guarded


def _essential(rules: tuple[Declaration, ...]) -> tuple[Declaration, ...]:
    """The rules worth running: every check starts by requiring a credential, so a bare
    ``@authenticated`` beside a scope or policy rule adds nothing but a call per field."""
    specific = tuple(rule for rule in rules if rule.scopes is not None or rule.policies is not None)
    return specific or rules[:1]


def _type_guard(
    type_: GraphQLObjectType, rules: tuple[Declaration, ...]
) -> Callable[[Any, Any], bool]:
    """``IsTypeOf`` for a type with declarations: graphql-core asks it once for every object
    it completes as this type, on every path (a field returning it, a list item, ``node``,
    ``_entities``, a subscription event), before executing any of the object's fields. It first
    answers the question it is asked ("is this value of this type?", strawberry's own check, or
    an instance check), then raises the denial when the principal may not see this object."""
    original = type_.is_type_of
    definition = (type_.extensions or {}).get("strawberry-definition")
    origin = getattr(definition, "origin", None)
    if original is None and origin is None:
        raise ValueError(f"{type_.name}: cannot tell its objects apart to authorize them")

    def matches(value: Any, info: Any) -> bool:
        if original is not None:
            return bool(original(value, info))
        return isinstance(value, origin) or get_strawberry_type_cast(value) is origin  # type: ignore[arg-type]

    def is_type_of(value: Any, info: Any) -> bool:
        if not matches(value, info):
            return False
        denial = first_denial(rules, info.context.principal, value)
        if denial is not None:
            raise denial
        return True

    # The two halves, for the compiled plans (``schema.compiled``).
    is_type_of.rules = rules  # type: ignore[attr-defined]
    is_type_of.matches = matches  # type: ignore[attr-defined]
    # Whose instances match without asking (``matches`` is true for an instance of exactly
    # this class that no ``strawberry.cast`` marked as another type).
    is_type_of.origin = origin  # type: ignore[attr-defined]
    return is_type_of


def enforce_declarations(schema: GraphQLSchema) -> None:
    """Install the checks.

    A type's declaration becomes its ``IsTypeOf`` check (once per object rather than once per
    field of it); a field's own declaration a guard on its resolver. The root types are
    never completed as objects, so a declaration on a root type is applied to each of its
    fields instead.
    """
    roots = {schema.query_type, schema.mutation_type, schema.subscription_type}
    for type_ in schema.type_map.values():
        if type_.name.startswith("__"):
            continue
        if not isinstance(type_, GraphQLObjectType):
            # Interfaces, unions, enums and scalars can carry these directives in the SDL, but
            # nothing here would enforce them: refuse the schema rather than publish a rule
            # that only a gateway might apply. Declare the object types or fields instead.
            members = (getattr(type_, "fields", None) or {}).items()
            for where, item in [(type_.name, type_)] + [
                (f"{type_.name}.{name}", member) for name, member in members
            ]:
                if own_declarations(item, where):
                    raise ValueError(
                        f"{where}: authorization is declared on object types and fields only"
                    )
            continue
        type_rules = tuple(own_declarations(type_, type_.name))
        per_object = type_rules and type_ not in roots
        if per_object:
            type_.is_type_of = _type_guard(type_, _essential(type_rules))
        for name, field in type_.fields.items():
            own = tuple(own_declarations(field, f"{type_.name}.{name}"))
            checks = own if per_object else type_rules + own
            if not checks:
                continue
            checks = _essential(checks)
            field.resolve = _guard(field.resolve or default_field_resolver, checks)
            if field.subscribe is not None:
                field.subscribe = _guard(field.subscribe, checks)
