"""The Relay ``Node`` interface: any object with a global id can be fetched with ``node(id:)``."""

from __future__ import annotations

import strawberry


@strawberry.interface(description="An object with a globally unique, opaque id.")
class Node:
    id: strawberry.ID
