#!/usr/bin/env node
// The example edge subgraph of the production shape (docker-compose.yml, service "edge"):
// tests/node/portal.mjs (edge-subgraph.graphql with its resolvers), served on PORT (4001).
// Runs from the gateway image, whose /app holds tests/node's locked packages and files next to
// the scripts of deploy/gateway (deploy/gateway/Dockerfile).

import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { portalSchema } from "./portal.mjs";

const port = Number(process.env.PORT || 4001);
const server = new ApolloServer({ schema: portalSchema() });
const { url } = await startStandaloneServer(server, { listen: { host: "0.0.0.0", port } });
console.error(JSON.stringify({ level: "info", message: "edge subgraph listening", url }));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    await server.stop(); // finishes the requests in flight, then closes
    process.exit(0);
  });
}
