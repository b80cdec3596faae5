"""Each document's parse and validation, done once: by its text, per schema.

Replaces strawberry's ``ParserCache`` + ``ValidationCache`` (+ ``AddValidationRules``,
``MaxTokensLimiter``) with one extension and one cache owned by the schema. strawberry's
validation cache is keyed by the parsed document, and graphql-core's AST nodes are frozen
dataclasses whose hash and equality walk the whole tree: every lookup re-hashed the document.
Keyed by the text instead, a lookup costs one string hash (cached by Python in the string
object: a persisted document's text, held by ``coregraph.persisted``, is hashed once for
good) and the parsed document object is the same for every request of that text, which is
what a per-document plan can key on.

The rules and the token limit are fixed when the schema is built, so a text's validation
result is a property of the text: cached errors are shared by every request, and
``schema.errors.present`` copies, never mutates, them. Documents of a trusted-documents
manifest are pinned (never evicted); the rest share a bounded LRU, so unique texts cannot grow
memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse, specified_rules
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    document: DocumentNode
    # Empty when the document is valid for the schema.
    errors: list[GraphQLError]


class DocumentCache:
    def __init__(self, rules: tuple[Any, ...], max_tokens: int, maxsize: int = 1024) -> None:
        self.rules = (*specified_rules, *rules)
        self.max_tokens = max_tokens
        self.maxsize = maxsize
        self._recent: OrderedDict[str, PreparedDocument] = OrderedDict()
        self._pinned: dict[str, PreparedDocument] = {}

    def get(self, text: str) -> PreparedDocument | None:
        prepared = self._pinned.get(text)
        if prepared is not None:
            return prepared
        prepared = self._recent.get(text)
        if prepared is not None:
            self._recent.move_to_end(text)
        return prepared

    def parse(self, text: str) -> DocumentNode:
        """Raises ``GraphQLSyntaxError`` (past the token limit too); failures are not cached."""
        return parse(text, max_tokens=self.max_tokens)

    def validate(
        self, schema: GraphQLSchema, text: str, document: DocumentNode
    ) -> PreparedDocument:
        prepared = PreparedDocument(document, validate_document(schema, document, self.rules))
        if text not in self._pinned:
            self._recent[text] = prepared
            if len(self._recent) > self.maxsize:
                self._recent.popitem(last=False)
        return prepared

    def prepare(self, schema: GraphQLSchema, text: str) -> PreparedDocument:
        """Parsed and validated (from the cache when there), e.g. for a manifest at start."""
        return self.get(text) or self.validate(schema, text, self.parse(text))

    def pin(self, schema: GraphQLSchema, text: str) -> PreparedDocument:
        """Prepared and kept for the process's life (a trusted-documents manifest: bounded)."""
        prepared = self.prepare(schema, text)
        self._pinned[text] = prepared
        self._recent.pop(text, None)
        return prepared


class CachedDocuments(SchemaExtension):
    """The extension (one per operation, as strawberry builds them) over the schema's cache."""

    def __init__(self, cache: DocumentCache) -> None:
        self.cache = cache
        self.prepared: PreparedDocument | None = None

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        text = context.query
        if text:  # strawberry refuses a missing query itself (MissingQueryError)
            self.prepared = self.cache.get(text)
            context.graphql_document = (
                self.prepared.document if self.prepared else self.cache.parse(text)
            )
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        prepared = self.prepared
        if prepared is None and context.graphql_document is not None and context.query:
            prepared = self.cache.validate(
                context.schema._schema, context.query, context.graphql_document
            )
        if prepared is not None:
            # Set (even empty): strawberry then skips its own validation.
            context.pre_execution_errors = prepared.errors
        yield
