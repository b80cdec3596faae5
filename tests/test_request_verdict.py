"""The compiled plans' authorization verdict (``authorization.request_verdict``) decides what
depends only on a row's tenant once per tenant per request. It must answer exactly what
``first_denial`` answers for every principal and row, and it may only remember a policy's
answer by what the policy really reads: a policy that read more than ``POLICY_READS`` declares
would let one row's verdict stand for another's."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from coregraph.auth.principal import ANONYMOUS, Principal, PrincipalKind
from coregraph.schema.authorization import (
    POLICIES,
    POLICY_READS,
    Declaration,
    first_denial,
    request_verdict,
)

PRINCIPALS = [
    ANONYMOUS,
    Principal(
        kind=PrincipalKind.USER,
        user_id="usr_a",
        tenant_id="ten_1",
        tenant_scopes={"ten_1": frozenset({"members:read", "audit:read"}), "ten_2": frozenset()},
    ),
    Principal(
        kind=PrincipalKind.API_KEY,
        api_key_id="key_1",
        tenant_id="ten_2",
        tenant_scopes={"ten_2": frozenset({"members:read", "approvals:review"})},
    ),
    Principal(
        kind=PrincipalKind.SUPPORT,
        staff_user_id="usr_s",
        tenant_id="ten_1",
        tenant_scopes={"ten_1": frozenset({"tenant:read"})},
    ),
]


class Recorder:
    """A row that answers every attribute and writes down which were asked."""

    def __init__(self, value: Any) -> None:
        self.read: set[str] = set()
        self._value = value

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        if name == "requester":  # an approval request's requester document
            return {"kind": "user", "userId": self._value}
        return self._value


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("value", [None, "ten_1", "usr_a", "usr_s"])
def test_each_policy_reads_only_what_it_declares(name: str, value: Any) -> None:
    for principal in PRINCIPALS:
        row = Recorder(value)
        POLICIES[name](principal, row)
        assert row.read <= POLICY_READS[name], (name, principal.kind, row.read)


def _rows() -> list[SimpleNamespace]:
    values = [None, "ten_1", "ten_2"]
    users = [None, "usr_a", "usr_b"]
    rows = [
        SimpleNamespace(tenant_id=tenant, via_tenant_id=via, user_id=user)
        for tenant, via, user in itertools.product(values, values, users)
    ]
    # Rows without a tenant attribute at all (root values, users reached directly).
    rows += [SimpleNamespace(user_id=user) for user in users]
    return rows


RULE_SETS = [
    (Declaration("A", authenticated=True),),
    (Declaration("A", scopes=(frozenset({"members:read"}),)),),
    (Declaration("A", scopes=(frozenset({"members:read", "audit:read"}), frozenset({"x"}))),),
    (Declaration("A", policies=(("self",), ("member_directory",))),),
    (Declaration("A", policies=(("self",), ("colleague",))),),
    (Declaration("A", policies=(("colleague", "self"),)),),
    (
        Declaration("A", scopes=(frozenset({"members:read"}),)),
        Declaration("A", policies=(("in_support_session",), ("self",))),
    ),
]


@pytest.mark.parametrize("rules", RULE_SETS, ids=lambda rules: repr(rules)[:60])
def test_the_verdict_answers_what_first_denial_answers_row_after_row(rules: Any) -> None:
    verdict = request_verdict(rules)
    for principal in PRINCIPALS:
        memo: dict[Any, bool] = {}  # one request: every row of it shares the memo
        for _ in range(2):  # and the second pass answers from it
            for row in _rows():
                expected = first_denial(rules, principal, row) is None
                assert verdict(principal, row, memo) is expected, (principal.kind, row)
