#!/usr/bin/env node
// Hive Gateway (@graphql-hive/gateway-runtime, The Guild's) in front of the production shape
// (docker-compose.yml, service "gateway"). At start it reads each subgraph's SDL through
// `_service { sdl }` (coregraph's with X-Coregraph-Schema-Secret: introspection is off in
// production), composes the supergraph (@theguild/federation-composition, as
// tests/node/compose.mjs does) and serves it on PORT (4000) at /graphql, with /healthcheck and
// /readiness.
//
// Environment:
//   CORE_URLS             coregraph's /graphql URLs, comma-separated: one per API process.
//                         Requests to the "core" subgraph take them in turn, and go to the
//                         next when one cannot be reached (stopped, restarting).
//   EDGE_URL              the edge subgraph's URL (the "portal" subgraph).
//   SCHEMA_READER_SECRET  COREGRAPH_SCHEMA_READER_SECRET of the API processes.
//   PORT                  where the gateway listens (4000).
// Runs from the gateway image, whose /app holds tests/node's locked packages and files next to
// the scripts of deploy/gateway (deploy/gateway/Dockerfile).

import { createServer } from "node:http";
import { createGatewayRuntime } from "@graphql-hive/gateway-runtime";
import { composeServices } from "@theguild/federation-composition";
import { parse } from "graphql";

// What the client sends that every subgraph must see: coregraph authenticates each request.
const FORWARDED = ["authorization", "x-tenant-id", "x-environment", "x-request-id"];
const STARTUP_ATTEMPTS = 120; // one a second: the API processes may still be migrating
const log = (level, message, extra = {}) =>
  console.error(JSON.stringify({ level, message, ...extra }));

function required(name) {
  const value = process.env[name];
  if (!value) {
    log("error", `${name} is not set`);
    process.exit(2);
  }
  return value;
}

const coreUrls = required("CORE_URLS")
  .split(",")
  .map((url) => url.trim())
  .filter(Boolean);
const edgeUrl = required("EDGE_URL");
const schemaSecret = required("SCHEMA_READER_SECRET");
const port = Number(process.env.PORT || 4000);

async function sdlOf(url, headers = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json", ...headers },
    body: JSON.stringify({ query: "{ _service { sdl } }" }),
    signal: AbortSignal.timeout(5000),
  });
  const body = await response.json();
  const sdl = body?.data?._service?.sdl;
  if (typeof sdl !== "string") throw new Error(`no SDL from ${url}: ${JSON.stringify(body)}`);
  return sdl;
}

async function firstAnswer(what, read) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await read();
    } catch (error) {
      if (attempt >= STARTUP_ATTEMPTS) throw error;
      log("info", `waiting for ${what}`, { attempt, error: String(error?.message ?? error) });
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

const coreSdl = await firstAnswer("coregraph", async () => {
  let last;
  for (const url of coreUrls) {
    try {
      return await sdlOf(url, { "x-coregraph-schema-secret": schemaSecret });
    } catch (error) {
      last = error;
    }
  }
  throw last;
});
const edgeSdl = await firstAnswer("the edge subgraph", () => sdlOf(edgeUrl));
const composed = composeServices([
  { name: "core", url: coreUrls[0], typeDefs: parse(coreSdl) },
  { name: "portal", url: edgeUrl, typeDefs: parse(edgeSdl) },
]);
if (composed.errors?.length || typeof composed.supergraphSdl !== "string") {
  log("error", "the supergraph does not compose", {
    errors: (composed.errors ?? []).map((error) => String(error.message)),
  });
  process.exit(1);
}

// Round robin over the API processes: the supergraph names the first; each request to it goes
// to the next in turn. One that cannot be reached is sent to the others: any operation when
// the connection was refused (nothing was sent), a query on any network error (a mutation may
// have run).
let turn = 0;
const isRefused = (error) => (error?.cause?.code ?? error?.code) === "ECONNREFUSED";
const roundRobin = {
  onFetch({ url, fetchFn, setFetchFn, executionRequest }) {
    if (url !== coreUrls[0]) return;
    const first = turn++;
    const query = executionRequest?.operationType === "query";
    setFetchFn(async (_url, ...rest) => {
      let failure;
      for (let i = 0; i < coreUrls.length; i++) {
        try {
          return await fetchFn(coreUrls[(first + i) % coreUrls.length], ...rest);
        } catch (error) {
          failure = error;
          if (!query && !isRefused(error)) break;
        }
      }
      throw failure;
    });
  },
};

const gateway = createGatewayRuntime({
  supergraph: composed.supergraphSdl,
  logging: "info",
  plugins: () => [roundRobin],
  propagateHeaders: {
    fromClientToSubgraphs: ({ request }) =>
      Object.fromEntries(
        FORWARDED.map((name) => [name, request.headers.get(name)]).filter(([, value]) => value),
      ),
  },
});
const server = createServer(gateway);
server.listen(port, "0.0.0.0", () =>
  log("info", "gateway listening", { port, subgraphs: { core: coreUrls, portal: edgeUrl } }),
);

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    // Stop accepting, let the requests in flight finish, then leave.
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 10_000).unref();
  });
}
