"""What happens after a commit: the outbox relay, the broker and the workers (DESIGN.md, Streams).

One module per concern, as they arrive: ``broker.py`` (one interface; in-process on the embedded
defaults, Redis across processes), ``relay.py`` (committed outbox rows to the broker, in commit
order), ``webhook_delivery.py`` (signed, retried deliveries) and ``worker.py`` (the process that
runs them; ``coregraph serve`` runs them in-process on the embedded defaults). They are fed by
what a unit of work states (``UnitOfWork.emit``) and woken by its ``on_commit`` hooks, never by
resolver code.
"""
