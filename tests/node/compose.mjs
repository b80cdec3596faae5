#!/usr/bin/env node
// Compose Federation v2 subgraph SDL files into a supergraph.
//
// Usage:
//   node compose.mjs --lib apollo|guild name1=path1.graphql name2=path2.graphql ...
//
// Prints one JSON object to stdout:
//   {"ok": bool, "lib": "apollo"|"guild", "errors": [message, ...],
//    "errorCodes": [code|null, ...], "hints": [{code, message}, ...],
//    "supergraphSdl": "..." | null}
// Exit codes: 0 composed, 1 composition (or SDL parse / library) errors,
//             2 bad command line / unreadable file.
//
// Each subgraph gets the routing url http://127.0.0.1/<name>.

import { readFileSync, writeSync } from "node:fs";
import { parse } from "graphql";

// Piped stdout is asynchronous in Node: process.exit() right after a large write (a
// supergraph is easily more than a pipe's 64 KiB) would cut it short. Make it blocking.
process.stdout._handle?.setBlocking?.(true);

const USAGE =
  "usage: node compose.mjs --lib apollo|guild name1=path1.graphql name2=path2.graphql ...";

function usageError(message) {
  process.stderr.write(`${message}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  let lib = null;
  const specs = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg === "--lib") {
      lib = argv[++i];
    } else if (arg.startsWith("--lib=")) {
      lib = arg.slice("--lib=".length);
    } else if (arg.startsWith("--")) {
      usageError(`unknown option: ${arg}`);
    } else {
      const eq = arg.indexOf("=");
      if (eq <= 0 || eq === arg.length - 1) {
        usageError(`expected name=path, got: ${arg}`);
      }
      specs.push({ name: arg.slice(0, eq), path: arg.slice(eq + 1) });
    }
  }
  if (lib !== "apollo" && lib !== "guild") {
    usageError(`--lib must be "apollo" or "guild" (got ${JSON.stringify(lib)})`);
  }
  if (specs.length === 0) {
    usageError("at least one name=path subgraph is required");
  }
  const seen = new Set();
  for (const { name } of specs) {
    if (seen.has(name)) usageError(`duplicate subgraph name: ${name}`);
    seen.add(name);
  }
  return { lib, specs };
}

function errorCode(err) {
  return err?.extensions?.code ?? null;
}

function errorMessage(err) {
  return String(err?.message ?? err);
}

function emit(result, exitCode) {
  // Written synchronously, to the end: process.stdout to a pipe is asynchronous here, and
  // process.exit() right after write() cut a report past 64 KiB (a supergraph SDL) short.
  const bytes = Buffer.from(`${JSON.stringify(result, null, 2)}\n`);
  let written = 0;
  while (written < bytes.length) {
    try {
      written += writeSync(1, bytes, written);
    } catch (err) {
      if (err.code !== "EAGAIN") throw err; // the reader is behind: try again
    }
  }
  process.exit(exitCode);
}

const { lib, specs } = parseArgs(process.argv.slice(2));

const fail = (errors) =>
  emit(
    {
      ok: false,
      lib,
      errors: errors.map(errorMessage),
      errorCodes: errors.map(errorCode),
      hints: [],
      supergraphSdl: null,
    },
    1,
  );

// Read and parse every subgraph SDL first so a syntax error is reported with the file.
const services = [];
const parseErrors = [];
for (const { name, path } of specs) {
  let sdl;
  try {
    sdl = readFileSync(path, "utf8");
  } catch (err) {
    usageError(`cannot read ${path}: ${err.message}`);
  }
  try {
    services.push({ name, url: `http://127.0.0.1/${name}`, typeDefs: parse(sdl) });
  } catch (err) {
    const e = new Error(`[${name}] ${path}: ${errorMessage(err)}`);
    e.extensions = { code: "GRAPHQL_PARSE_FAILED" };
    parseErrors.push(e);
  }
}
if (parseErrors.length) fail(parseErrors);

let result;
try {
  if (lib === "apollo") {
    const { composeServices } = await import("@apollo/composition");
    result = composeServices(services);
  } else {
    const { composeServices } = await import("@theguild/federation-composition");
    result = composeServices(services);
  }
} catch (err) {
  // Some library paths (e.g. an unknown federation version) may throw instead of
  // returning errors: report them as composition errors all the same.
  fail([err]);
}

const errors = result.errors ?? [];
if (errors.length || typeof result.supergraphSdl !== "string") {
  fail(errors.length ? errors : [new Error("composition returned no supergraphSdl")]);
}

// Apollo returns CompositionHint objects; the Guild library returns no hints.
const hints = (result.hints ?? []).map((h) => ({
  code: h?.definition?.code ?? null,
  message: String(h?.message ?? h),
}));

emit(
  {
    ok: true,
    lib,
    errors: [],
    errorCodes: [],
    hints,
    supergraphSdl: result.supergraphSdl,
  },
  0,
);
