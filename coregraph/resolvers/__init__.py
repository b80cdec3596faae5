"""Root operations, one module per domain. Thin: read input, call a service, map the result."""
