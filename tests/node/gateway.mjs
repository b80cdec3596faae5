#!/usr/bin/env node
// A real federation gateway in front of a running coregraph, for tests/test_gateway.py.
//
// Usage:
//   node gateway.mjs <supergraph.graphql> core=<coregraph /graphql url>
//
// Starts, on 127.0.0.1 and free ports:
//   - the "portal" edge subgraph (portal.mjs: edge-subgraph.graphql with its resolvers,
//     @apollo/subgraph), which extends coregraph's User and Tenant;
//   - Hive Gateway (@graphql-hive/gateway-runtime, The Guild's) on the composed supergraph,
//     routing the "core" subgraph to coregraph and "portal" to the server above, and forwarding
//     the client's Authorization, X-Tenant-Id and X-Request-Id headers to every subgraph (what
//     a deployment's gateway is configured to do).
//
// Not Apollo's JS gateway (@apollo/gateway): it refuses to load a supergraph that links the
// authorization features (@authenticated, @requiresScopes, @policy are `for: SECURITY` and it
// cannot enforce them), by design. Apollo Router does support them.
// Prints one JSON line {"gateway": url, "portal": url} once both listen, and exits when its
// stdin closes (the test holds the pipe), so no server outlives the test.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createGatewayRuntime } from "@graphql-hive/gateway-runtime";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { portalSchema } from "./portal.mjs";

const FORWARDED = ["authorization", "x-tenant-id", "x-request-id"];

// stdout carries the one readiness line; Apollo's own notices go to stderr.
console.log = console.info = (...args) => console.error(...args);

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

const [supergraphPath, ...routes] = process.argv.slice(2);
if (!supergraphPath || routes.length === 0) {
  fail("usage: node gateway.mjs <supergraph.graphql> core=<url>");
}
const urls = {};
for (const route of routes) {
  const eq = route.indexOf("=");
  if (eq <= 0) fail(`expected name=url, got ${route}`);
  urls[route.slice(0, eq)] = route.slice(eq + 1);
}

const portal = new ApolloServer({ schema: portalSchema() });
const { url: portalUrl } = await startStandaloneServer(portal, {
  listen: { host: "127.0.0.1", port: 0 },
});
urls.portal = portalUrl;

// Route each subgraph of the supergraph to its URL (compose.mjs gives placeholders).
let supergraph = readFileSync(supergraphPath, "utf8");
for (const [name, url] of Object.entries(urls)) {
  supergraph = supergraph.replaceAll(`"http://127.0.0.1/${name}"`, JSON.stringify(url));
}
const gateway = createGatewayRuntime({
  supergraph,
  logging: "error",
  propagateHeaders: {
    fromClientToSubgraphs: ({ request }) =>
      Object.fromEntries(
        FORWARDED.map((name) => [name, request.headers.get(name)]).filter(([, value]) => value),
      ),
  },
});
const httpServer = createServer(gateway);
await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
const gatewayUrl = `http://127.0.0.1:${httpServer.address().port}/graphql`;

process.stdout.write(`${JSON.stringify({ gateway: gatewayUrl, portal: portalUrl })}\n`);
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
