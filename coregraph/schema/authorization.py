"""Authorization declared in the schema, enforced by one mechanism.

Types and fields declare who may read them with the Federation 2 directives ``@authenticated``,
``@requiresScopes`` and ``@policy`` (strawberry's ``authenticated=``, ``requires_scopes=`` and
``policy=`` arguments), so a gateway reads the same rules from ``_service { sdl }``. After the
schema is built, ``enforce_declarations`` reads those very directive objects back and wraps the
resolver of every covered field with a synchronous guard. Because the guard sits on the field's
resolver, it runs on every path that reaches the field: queries, mutations, ``node``,
``_entities`` and subscriptions alike.

Semantics (as in Apollo Router): a type's declaration applies to each of its fields, and every
declaration on the way must pass (AND); inside ``requiresScopes``/``policy`` the outer list is
OR and each inner list is AND. Scope checks are row-relative: a row of tenant T is judged by the
principal's scopes in T (``Principal.scopes_in``), root fields by the addressed tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLField, GraphQLObjectType, GraphQLSchema, default_field_resolver
from strawberry.federation.schema_directives import Authenticated, Policy, RequiresScopes

from coregraph.auth.principal import Principal
from coregraph.errors import Forbidden, Unauthenticated

PolicyCheck = Callable[[Principal, Any], bool]


def _is_self(principal: Principal, obj: Any) -> bool:
    return principal.user_id is not None and getattr(obj, "user_id", None) == principal.user_id


def _is_colleague(principal: Principal, obj: Any) -> bool:
    """The object (a user) was reached through a tenant where the principal may read members."""
    return "members:read" in principal.scopes_in(getattr(obj, "via_tenant_id", None))


def _reads_member_directory(principal: Principal, obj: Any) -> bool:
    """The principal holds members:read in the row's tenant."""
    return "members:read" in principal.scopes_in(getattr(obj, "tenant_id", None))


# Named row-relative rules for ``@policy``. Synchronous by design: they run per object.
POLICIES: dict[str, PolicyCheck] = {
    "self": _is_self,
    "colleague": _is_colleague,
    "member_directory": _reads_member_directory,
}


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
            tenant_id = getattr(source, "tenant_id", None) or principal.tenant_id
            held = principal.scopes_in(tenant_id)
            for required in self.scopes:
                if required <= held:
                    break
            else:
                if tenant_id is None:
                    return Forbidden(
                        f"{self.where} needs a tenant: send the X-Tenant-Id header",
                    )
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


def _strawberry_directives(graphql_object: Any) -> list[object]:
    definition = (graphql_object.extensions or {}).get("strawberry-definition")
    return list(getattr(definition, "directives", None) or ())


def field_declarations(
    parent: GraphQLObjectType, name: str, field: GraphQLField
) -> list[Declaration]:
    coordinate = f"{parent.name}.{name}"
    return declarations_of(_strawberry_directives(parent), coordinate) + declarations_of(
        _strawberry_directives(field), coordinate
    )


def _guard(resolve: Callable[..., Any], rules: tuple[Declaration, ...]) -> Callable[..., Any]:
    def guarded(source: Any, info: Any, **kwargs: Any) -> Any:
        principal = info.context.principal
        for rule in rules:
            denial = rule.denial(principal, source)
            if denial is not None:
                raise denial
        return resolve(source, info, **kwargs)

    guarded.__wrapped__ = resolve  # type: ignore[attr-defined]
    return guarded


def _essential(rules: tuple[Declaration, ...]) -> tuple[Declaration, ...]:
    """The rules worth running: every check starts by requiring a credential, so a bare
    ``@authenticated`` beside a scope or policy rule adds nothing but a call per field."""
    specific = tuple(rule for rule in rules if rule.scopes is not None or rule.policies is not None)
    return specific or rules[:1]


def enforce_declarations(schema: GraphQLSchema) -> dict[str, tuple[Declaration, ...]]:
    """Wrap every declared field's resolver; returns the coordinates it guarded."""
    guarded: dict[str, tuple[Declaration, ...]] = {}
    for type_ in schema.type_map.values():
        if not isinstance(type_, GraphQLObjectType) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            rules = tuple(field_declarations(type_, name, field))
            if not rules:
                continue
            guarded[f"{type_.name}.{name}"] = rules
            checks = _essential(rules)
            field.resolve = _guard(field.resolve or default_field_resolver, checks)
            if field.subscribe is not None:
                field.subscribe = _guard(field.subscribe, checks)
    return guarded
