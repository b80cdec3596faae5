"""The page an invitation link opens (``GET /invitations/accept?token=...``).

The invitee signs in (``login``) or creates an account (``signUp``), and the page then calls
``acceptInvitation(token:)`` over ``/graphql`` and shows the tenant joined or the error's message
and code. An edge app that renders its own page (``COREGRAPH_INVITATION_URL_TEMPLATE``) follows
the same contract.

The page is one static document: no external assets, inline style and script allowed by their
hashes only. The token never enters the HTML: the script reads it from ``location.search``, and
``Referrer-Policy: no-referrer`` keeps the URL that carries it from leaking to other origins.
"""

from __future__ import annotations

import base64
import hashlib
import json

from fastapi.responses import HTMLResponse

# The documents the page's script sends (the tests drive these very strings).
LOGIN = "mutation Login($input: LoginInput!) { login(input: $input) { accessToken } }"
SIGN_UP = "mutation SignUp($input: SignUpInput!) { signUp(input: $input) { accessToken } }"
ACCEPT = (
    "mutation AcceptInvitation($token: String!) { acceptInvitation(token: $token) "
    "{ membership { role { key name } tenant { id name } } } }"
)
# Relative to the page, so coregraph mounted under a path prefix still finds its endpoint.
GRAPHQL_PATH = "../graphql"

_STYLE = """
:root { color-scheme: light dark; font-family: system-ui, sans-serif; }
body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #f4f5f7; }
main { width: min(26rem, calc(100vw - 2rem)); background: #fff; color: #1d2330;
  border-radius: 12px; padding: 2rem; box-shadow: 0 4px 24px rgba(0, 0, 0, .08); }
h1 { font-size: 1.35rem; margin: 0 0 .5rem; }
p { line-height: 1.45; }
label { display: block; font-size: .9rem; margin: 1rem 0 .3rem; }
input { box-sizing: border-box; width: 100%; padding: .6rem .7rem; font: inherit;
  border: 1px solid #c4c8d0; border-radius: 8px; }
.actions { display: flex; gap: .6rem; margin-top: 1.4rem; }
button { flex: 1; padding: .65rem; font: inherit; border-radius: 8px; cursor: pointer;
  border: 1px solid #3552d8; background: #3552d8; color: #fff; }
button.secondary { background: transparent; color: #3552d8; }
button:disabled { opacity: .6; cursor: default; }
#status { min-height: 1.5rem; margin: 1rem 0 0; }
#status.error { color: #b3261e; }
#status.done { color: #1b6e3a; font-weight: 600; }
code { font-size: .85em; }
@media (prefers-color-scheme: dark) {
  body { background: #15181e; }
  main { background: #20242c; color: #e6e8ec; }
  input { background: #15181e; color: inherit; border-color: #3a404c; }
  #status.error { color: #ff8a80; }
  #status.done { color: #7fd69b; }
}
"""

_SCRIPT = (
    '"use strict";\n'
    f"const LOGIN = {json.dumps(LOGIN)};\n"
    f"const SIGN_UP = {json.dumps(SIGN_UP)};\n"
    f"const ACCEPT = {json.dumps(ACCEPT)};\n"
    f"const ENDPOINT = new URL({json.dumps(GRAPHQL_PATH)}, location.href).href;\n"
    """const token = new URLSearchParams(location.search).get("token") || "";
const form = document.getElementById("join");
const status = document.getElementById("status");

function say(text, kind) {
  status.textContent = text;
  status.className = kind || "";
}

async function call(query, variables, accessToken) {
  const headers = {
    "Content-Type": "application/json",
    "Accept": "application/graphql-response+json, application/json",
  };
  if (accessToken) headers["Authorization"] = "Bearer " + accessToken;
  const response = await fetch(ENDPOINT, {
    method: "POST", headers, credentials: "omit", cache: "no-store",
    body: JSON.stringify({ query, variables }),
  });
  try {
    return await response.json();
  } catch (_) {
    return { errors: [{ message: "The server answered HTTP " + response.status + ".",
                        extensions: { code: "HTTP_" + response.status } }] };
  }
}

function failure(body) {
  const error = (body.errors && body.errors[0]) || { message: "No answer." };
  const code = error.extensions && error.extensions.code;
  return error.message + (code ? " (" + code + ")" : "");
}

async function join(mode) {
  const input = { email: form.email.value, password: form.password.value };
  const signIn = await call(mode === "signUp" ? SIGN_UP : LOGIN, { input });
  const session = signIn.data && signIn.data[mode];
  if (!session) return say(failure(signIn), "error");
  say("Signed in. Accepting the invitation\\u2026");
  const accepted = await call(ACCEPT, { token }, session.accessToken);
  const result = accepted.data && accepted.data.acceptInvitation;
  if (!result) return say(failure(accepted), "error");
  // The token is spent: keep it out of the history from now on.
  history.replaceState(null, "", location.pathname);
  const membership = result.membership || {};
  const tenant = membership.tenant ? membership.tenant.name : "the tenant";
  const role = membership.role ? " as " + membership.role.name : "";
  form.hidden = true;
  say("You joined " + tenant + role + ".", "done");
}

if (!token) {
  form.hidden = true;
  say("This link carries no invitation token. Ask for a new invitation.", "error");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const mode = event.submitter && event.submitter.value === "signUp" ? "signUp" : "login";
  const buttons = form.querySelectorAll("button");
  buttons.forEach((button) => { button.disabled = true; });
  say(mode === "signUp" ? "Creating your account\\u2026" : "Signing in\\u2026");
  try {
    await join(mode);
  } catch (_) {
    say("The server could not be reached. Try again.", "error");
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
});
"""
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex">
<title>Accept your invitation</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Accept your invitation</h1>
<p>Sign in with the address the invitation was sent to, or create an account for it.</p>
<form id="join" method="post" autocomplete="on">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<div class="actions">
<button type="submit" value="login">Sign in and join</button>
<button type="submit" value="signUp" class="secondary">Create account and join</button>
</div>
</form>
<p id="status" role="status" aria-live="polite"></p>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _hash_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_hash_source(_SCRIPT)}",
        f"style-src {_hash_source(_STYLE)}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The token is in the URL: no Referer to any other origin, no copy in any cache.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


async def invitation_page() -> HTMLResponse:
    """``GET /invitations/accept``: the same bytes for every token (the script reads it)."""
    return HTMLResponse(PAGE, headers=HEADERS)
