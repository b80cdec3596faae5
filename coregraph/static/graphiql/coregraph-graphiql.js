// Boots GraphiQL on coregraph's /graphql: strawberry's template's script, out of line so the
// page's Content-Security-Policy allows scripts from coregraph's own origin and nothing else.
// HTTP requests go to this page's URL; subscriptions to the same URL over WebSocket
// (graphql-transport-ws), with the Headers tab's headers as the connection_init payload, which
// is where coregraph reads a socket's credential (Authorization, X-Tenant-Id, X-Environment).
"use strict";

const EXAMPLE_QUERY = `# Welcome to GraphiQL on coregraph
#
# Most fields need a credential: sign up or log in, then put the access token in the
# Headers tab below, with the tenant you address:
#
#   {"Authorization": "Bearer <accessToken>", "X-Tenant-Id": "<tenant id>"}
#
# Subscriptions send the same headers in the WebSocket's connection_init.
#
# mutation {
#   signUp(input: {email: "ada@example.com", password: "a long passphrase"}) {
#     accessToken
#   }
# }
#
# Keyboard shortcuts:
#   Run Query:      Ctrl-Enter (or press the play button)
#   Auto Complete:  Ctrl-Space (or just start typing)
`;

const parameters = Object.fromEntries(new URLSearchParams(window.location.search));

function updateURL(data) {
  Object.assign(parameters, data);
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(parameters)) {
    if (value) search.set(key, value);
  }
  history.replaceState(null, "", "?" + search.toString());
}

const endpoint = new URL(window.location.href);
endpoint.search = "";
endpoint.hash = "";
const fetchURL = endpoint.toString();
endpoint.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";
const subscriptionUrl = endpoint.toString();

const fetcher = GraphiQL.createFetcher({ url: fetchURL, subscriptionUrl });
const explorer = GraphiQLPluginExplorer.explorerPlugin();

function GraphiQLWithExplorer() {
  const [query, setQuery] = React.useState(parameters.q || EXAMPLE_QUERY);
  const [variables, setVariables] = React.useState(parameters.variables);
  const [headers, setHeaders] = React.useState(parameters.headers);

  return React.createElement(GraphiQL, {
    fetcher,
    defaultEditorToolsVisibility: true,
    plugins: [explorer],
    query,
    variables,
    headers,
    onEditQuery(newQuery) {
      setQuery(newQuery);
      updateURL({ q: newQuery });
    },
    onEditVariables(newVariables) {
      setVariables(newVariables);
      updateURL({ variables: newVariables });
    },
    onEditHeaders: setHeaders,
    inputValueDeprecation: true,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
  });
}

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQLWithExplorer),
);
