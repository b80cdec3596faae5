"""GraphQL types per domain, the authorization checks declared on them (``authorization``),
lookups by id (``lookup``), pagination, error presentation and the executor.

Nothing here imports ``coregraph.resolvers``: the schema is assembled above both, in
``coregraph.api``.
"""
