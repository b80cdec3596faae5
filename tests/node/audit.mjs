#!/usr/bin/env node
// Run graphql-http's GraphQL-over-HTTP server audits against a running endpoint.
//
// Usage:
//   node audit.mjs [-H "Name: value" ...] http://127.0.0.1:PORT/graphql
//
// -H adds a header to every audit request (e.g. an Authorization header if the
// endpoint refuses anonymous `{ __typename }` queries); it never overrides a header
// the audit itself sets (content-type, accept).
//
// Prints one JSON object to stdout:
//   {"url": "...", "total": n, "ok": n,
//    "warn":   [{id, name, reason, response}],   // failed SHOULD audits
//    "error":  [{id, name, reason, response}],   // failed MUST audits (and fatal failures)
//    "notice": [{id, name, reason, response}]}   // failed MAY audits (informational only)
// where response = {status, contentType, body (first 500 chars)} of the offending reply.
// Exit codes: 0 only if there are no errors AND no warnings (notices are allowed),
//             1 otherwise, 2 bad command line.
//
// Audits run one at a time, each fetch limited to AUDIT_TIMEOUT_MS (default 10000) ms.

import { serverAudits } from "graphql-http";

// Piped stdout is asynchronous in Node: process.exit() right after a large write (a
// supergraph is easily more than a pipe's 64 KiB) would cut it short. Make it blocking.
process.stdout._handle?.setBlocking?.(true);

const USAGE = 'usage: node audit.mjs [-H "Name: value" ...] http://127.0.0.1:PORT/graphql';
const BODY_LIMIT = 500;
const TIMEOUT_MS = Number(process.env.AUDIT_TIMEOUT_MS ?? 10000);

const argv = process.argv.slice(2);
if (argv.includes("-h") || argv.includes("--help")) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const extraHeaders = [];
const positional = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "-H" || argv[i] === "--header") {
    const raw = argv[++i] ?? "";
    const colon = raw.indexOf(":");
    if (colon <= 0) {
      process.stderr.write(`bad header (expected "Name: value"): ${raw}\n${USAGE}\n`);
      process.exit(2);
    }
    extraHeaders.push([raw.slice(0, colon).trim(), raw.slice(colon + 1).trim()]);
  } else {
    positional.push(argv[i]);
  }
}
if (positional.length !== 1) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}
const url = positional[0];
try {
  const parsed = new URL(url);
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new Error();
} catch {
  process.stderr.write(`not an http(s) URL: ${url}\n${USAGE}\n`);
  process.exit(2);
}

// Global fetch with a per-request timeout so a hung server cannot stall the run,
// plus any -H headers (without overriding the audit's own).
const fetchFn = (input, init = {}) => {
  let headers = init.headers;
  if (extraHeaders.length) {
    headers = new Headers(init.headers ?? {});
    for (const [name, value] of extraHeaders) {
      if (!headers.has(name)) headers.set(name, value);
    }
  }
  return fetch(input, {
    ...init,
    ...(headers === undefined ? {} : { headers }),
    signal: init.signal ?? AbortSignal.timeout(TIMEOUT_MS),
  });
};

async function describeResponse(res) {
  if (!res || typeof res.status !== "number") return null;
  let body = null;
  try {
    // The audit may already have read the body; a clone is only possible if not.
    const text = await (res.bodyUsed ? Promise.resolve(null) : res.text());
    if (text !== null) {
      body = text.length > BODY_LIMIT ? `${text.slice(0, BODY_LIMIT)}…` : text;
    }
  } catch (err) {
    body = `<unreadable body: ${err?.message ?? err}>`;
  }
  return {
    status: res.status,
    contentType: res.headers.get("content-type"),
    body,
  };
}

const report = { url, total: 0, ok: 0, warn: [], error: [], notice: [] };

for (const { id, name, fn } of serverAudits({ url, fetchFn })) {
  report.total += 1;
  let result;
  try {
    result = await fn();
  } catch (err) {
    // graphql-http only throws on fatal problems (connection refused, timeout, ...).
    const cause = err?.cause?.message ? ` (${err.cause.message})` : "";
    report.error.push({
      id,
      name,
      reason: `fatal: ${err?.name ?? "Error"}: ${err?.message ?? err}${cause}`,
      response: null,
    });
    continue;
  }
  if (result.status === "ok") {
    report.ok += 1;
    continue;
  }
  const entry = {
    id: result.id,
    name: result.name,
    reason: result.reason,
    response: await describeResponse(result.response),
  };
  if (result.status === "error") report.error.push(entry);
  else if (result.status === "warn") report.warn.push(entry);
  else report.notice.push(entry);
}

process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.exit(report.error.length === 0 && report.warn.length === 0 ? 0 : 1);
