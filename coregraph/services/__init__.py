"""Domain logic shared by resolvers, the CLI and (later) the worker. One module per domain."""
