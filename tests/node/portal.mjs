// The "portal": an example edge subgraph, what an edge team would write. It owns a few fields
// on coregraph's User and Tenant (edge-subgraph.graphql) and one root field that returns a
// coregraph User by reference (the gateway then asks coregraph's _entities for that user's
// own fields). Served by tests/node/gateway.mjs for the tests and by the docker-compose
// "edge" service (deploy/gateway/edge.mjs).

import { readFileSync } from "node:fs";
import { buildSubgraphSchema } from "@apollo/subgraph";
import { parse } from "graphql";

const typeDefs = parse(readFileSync(new URL("./edge-subgraph.graphql", import.meta.url), "utf8"));

const resolvers = {
  Query: {
    portalVersion: () => "portal-1",
    portalUser: (_, { id }) => ({ __typename: "User", id }),
  },
  User: {
    __resolveReference: (reference) => reference,
    portalPreferences: (user) => ({ locale: "en", theme: `theme-of-${user.id}`, emailDigest: true }),
  },
  Tenant: {
    __resolveReference: (reference) => reference,
    portalTheme: (tenant) => `theme-of-${tenant.id}`,
  },
};

export function portalSchema() {
  return buildSubgraphSchema([{ typeDefs, resolvers }]);
}
