"""coregraph: identity, tenants, permissions and audit as one Federation v2 subgraph."""

__version__ = "0.1.0"
