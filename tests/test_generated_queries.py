"""Generated queries over the real schema answer the same on coregraph's executor and on stock
graphql-core: queries nobody wrote by hand, from hypothesis-graphql (the strategies schemathesis
uses for GraphQL), against a seeded tenant, as several kinds of principal.

Derandomized, with a bounded number of examples, so CI runs the same queries every time in a
few seconds. Argument values that name things (IDs, entity representations) are drawn from the
seeded tenant's real ids most of the time, so lookups find rows rather than only NOT_FOUND.
"""

from __future__ import annotations

import graphql
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis_graphql import queries

from tests.equivalence import RealSchema, SeededTenant

EXAMPLES = 50


def string(value: str) -> graphql.StringValueNode:
    return graphql.StringValueNode(value=value)


def scalars(seeded: SeededTenant) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    ids = [
        *seeded.ids.values(),
        seeded.other_tenant_id,
        "usr_00000000000000000000000000",
    ]
    representations = [
        graphql.ObjectValueNode(
            fields=(
                graphql.ObjectFieldNode(name=graphql.NameNode(value="__typename"), value=string(t)),
                graphql.ObjectFieldNode(name=graphql.NameNode(value="id"), value=string(i)),
            )
        )
        for t, i in [
            *seeded.ids.items(),
            ("Tenant", seeded.other_tenant_id),
            ("Nope", "x"),
        ]
    ]
    return {
        "ID": st.one_of(st.sampled_from(ids), st.text(max_size=8)).map(string),
        "_Any": st.sampled_from(representations),
        "DateTime": st.sampled_from(["2026-01-01T00:00:00Z", "2027-06-30T12:00:00+02:00"]).map(
            string
        ),
        "Decimal": st.sampled_from(["1.5", "0", "-3"]).map(string),
        "JSON": st.sampled_from(
            [string("x"), graphql.IntValueNode(value="1"), graphql.ObjectValueNode(fields=())]
        ),
        "Upload": st.just(graphql.NullValueNode()),
    }


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
async def test_generated_queries_answer_as_stock_graphql_core(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    actors = {
        "owner": seeded_tenant.owner,
        "member": seeded_tenant.member,
        "auditor": seeded_tenant.auditor,
        "key": seeded_tenant.key,
        "anonymous": None,
    }
    drawn: list[tuple[str, str]] = []

    # Hypothesis draws the examples (synchronously); the test then runs each on both executors
    # in its own event loop, where the runtime's connections live.
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        query=queries(
            real_schema.schema._schema, custom_scalars=scalars(seeded_tenant), allow_x00=False
        ),
        actor=st.sampled_from(sorted(actors)),
    )
    def draw(query: str, actor: str) -> None:
        drawn.append((query, actor))

    draw()
    asked: set[str] = set()
    answered: set[str] = set()
    errors = 0
    for query, actor in drawn:
        result = await real_schema.assert_equivalent(
            query, actor=actors[actor], tenant_id=seeded_tenant.tenant_id
        )
        errors += len(result.errors or [])
        asked.update((result.data or {}).keys())
        answered.update(key for key, value in (result.data or {}).items() if value)
    # The examples reached well beyond one corner of the schema, with answers and errors.
    assert len(drawn) == EXAMPLES
    assert len(asked) >= 15 and len(answered) >= 5 and errors > 0, (asked, answered, errors)
