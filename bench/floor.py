"""``python -m bench.floor``: what graphql-core alone costs for the benchmark's selection.

The same shape as the members query (a tenant, 200 edges, each a membership with its user and
role) executed by graphql-core over plain dicts with the default resolver: no strawberry, no
authorization, no database. Whatever coregraph does on top, executing that selection cannot
cost less than this on the machine, so it bounds the GraphQL/plain ratio from above.
"""

from __future__ import annotations

import argparse
import time

from graphql import build_schema, execute_sync, parse, validate

from bench.__main__ import MEMBERS_QUERY

SDL = """
type Query { tenant: Tenant }
type Tenant { id: ID! name: String! members(first: Int): MembershipConnection }
type MembershipConnection { edges: [MembershipEdge!]! }
type MembershipEdge { node: Membership! }
type Membership { id: ID! createdAt: String! user: User role: Role }
type User { id: ID! displayName: String! email: String }
type Role { id: ID! key: String! name: String! permissions: [String!]! }
"""


def data(members: int) -> dict[str, object]:
    roles = [
        {"id": f"rol_{k}", "key": k, "name": k.title(), "permissions": [f"p{i}" for i in range(15)]}
        for k in ("owner", "admin", "member", "viewer", "billing")
    ]
    edges = [
        {
            "node": {
                "id": f"mem_{i:026d}",
                "createdAt": "2026-01-01T00:00:00.000000+00:00",
                "user": {"id": f"usr_{i:026d}", "displayName": f"Member {i}", "email": f"m{i}@x"},
                "role": roles[i % len(roles)],
            }
        }
        for i in range(members)
    ]
    return {"tenant": {"id": "ten_1", "name": "Tenant", "members": {"edges": edges}}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    schema = build_schema(SDL)
    document = parse(MEMBERS_QUERY)
    assert not validate(schema, document)
    root = data(args.members)
    times = []
    for _ in range(args.runs):
        started = time.process_time()
        result = execute_sync(schema, document, root)
        times.append(time.process_time() - started)
        assert not result.errors, result.errors
    times.sort()
    print(
        f"graphql-core {args.members}-member selection over dicts, CPU per execution: "
        f"min {times[0] * 1000:.2f} ms, p10 {times[len(times) // 10] * 1000:.2f} ms, "
        f"median {times[len(times) // 2] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
