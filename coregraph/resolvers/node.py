"""node(id:): fetch any object by its global id, under the same rules as every other path."""

from __future__ import annotations

import strawberry
from strawberry.federation import field

from coregraph import ids
from coregraph.context import Context
from coregraph.errors import BadUserInput, NotFound
from coregraph.schema import lookup
from coregraph.schema.node import Node

Info = strawberry.Info[Context, None]


@strawberry.type
class NodeQuery:
    @field(authenticated=True)
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        if ids.type_of(str(id)) is None:
            raise BadUserInput("id: not a coregraph id", field="id")
        found = await lookup.node(info.context, str(id))
        if found is None:
            raise NotFound("no object with this id", field="id")
        return found
