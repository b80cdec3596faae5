"""Persisted operations: Apollo's automatic persisted queries (APQ) and trusted documents.

**APQ** (``extensions.persistedQuery {version: 1, sha256Hash}``, in a POST body or a GET's
``extensions`` parameter). A request with the hash alone runs the document registered under
it, or answers ``PersistedQueryNotFound`` (``extensions.code`` ``PERSISTED_QUERY_NOT_FOUND``,
what Apollo's ``PersistedQueryLink`` retries on with the full document). A request with the
hash and the document registers it, once sha256(document) matched the hash (otherwise
``PERSISTED_QUERY_HASH_MISMATCH`` and nothing is stored) and the document parsed and validated
(an invalid one is never stored). Registered texts live in a bounded LRU per process and, with
``COREGRAPH_REDIS_URL``, in Redis for ``COREGRAPH_PERSISTED_QUERIES_TTL_SECONDS``, so every
API process knows a hash one of them learnt. APQ saves bandwidth and makes queries GET-able;
it is not an allow-list: any valid document can be registered.

**Trusted documents** (``COREGRAPH_TRUSTED_DOCUMENTS``: a manifest the client build wrote).
Only the manifest's documents run: by id (``documentId``, the GraphQL-over-HTTP persisted
documents appendix, ``sha256:`` prefix allowed; or the APQ extension's hash), or by sending
exactly a manifest document's text. Anything else is refused with
``PERSISTED_QUERY_NOT_IN_LIST`` (Apollo Router's code for the same refusal), an unknown id
with ``PERSISTED_QUERY_NOT_FOUND``; nothing is registered at run time. Every document is
parsed and validated against the schema when the manifest loads (a bad one refuses the
start), and pinned in the schema's document cache. A federation gateway that carries the
schema reader secret (``X-Coregraph-Schema-Secret``) is exempt: the documents it sends are
its query planner's, not a client's, and it enforces its own operation list at the edge.

Formats read: GraphQL Code Generator's client preset (``persisted-documents.json``) and
Relay's persisted queries (both ``{"<id>": "<document>"}``), and Apollo's persisted query
list (``{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id",
"body", "name", "type"}]}``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from coregraph.api import CoregraphSchema
    from coregraph.settings import Settings

log = logging.getLogger("coregraph.persisted")

APQ_VERSION = 1
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
APOLLO_MANIFEST_FORMAT = "apollo-persisted-query-manifest"


class PersistedQueryRefused(Exception):
    """A persisted-operation request that cannot run: a request error with a code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The status with application/graphql-response+json (application/json: 200).
        self.status = status


def not_found() -> PersistedQueryRefused:
    # The message and code Apollo's clients look for (either one) before retrying with the
    # full document.
    return PersistedQueryRefused("PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound", 404)


class TrustedDocumentsError(ValueError):
    """The manifest cannot be used: the process must not start with it."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Resolved:
    """The document text to run, and the hash to register it under once it validated."""

    query: str
    register: str | None = None
    persisted: bool = False


class RegisteredQueries:
    """APQ's hash -> text: a bounded LRU in this process, in front of Redis when configured."""

    def __init__(
        self, maxsize: int, redis: Any = None, prefix: str = "coregraph", ttl: int = 86400
    ) -> None:
        self.maxsize = maxsize
        self.redis = redis
        self.prefix = f"{prefix}:apq:"
        self.ttl = ttl
        self._texts: OrderedDict[str, str] = OrderedDict()

    async def get(self, digest: str) -> str | None:
        text = self._texts.get(digest)
        if text is not None:
            self._texts.move_to_end(digest)
            return text
        if self.redis is None or not _SHA256_HEX.match(digest):
            return None
        try:
            raw = await self.redis.get(self.prefix + digest)
        except Exception:
            # APQ only saves bandwidth: without Redis the client sends the document again.
            log.warning("persisted query lookup in Redis failed", exc_info=True)
            return None
        if raw is None:
            return None
        text = raw.decode("utf-8")
        if sha256_hex(text) != digest:  # what Redis holds is checked like any input
            return None
        self._remember(digest, text)
        return text

    async def put(self, digest: str, text: str) -> None:
        self._remember(digest, text)
        if self.redis is None:
            return
        try:
            await self.redis.set(self.prefix + digest, text.encode("utf-8"), ex=self.ttl)
        except Exception:
            log.warning("persisted query registration in Redis failed", exc_info=True)

    def _remember(self, digest: str, text: str) -> None:
        self._texts[digest] = text
        self._texts.move_to_end(digest)
        if len(self._texts) > self.maxsize:
            self._texts.popitem(last=False)


def read_manifest(path: Path) -> dict[str, str]:
    """A manifest's documents by id, from any of the formats above."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrustedDocumentsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TrustedDocumentsError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TrustedDocumentsError(f"{path}: a manifest is a JSON object")
    documents: dict[str, str] = {}
    if data.get("format") == APOLLO_MANIFEST_FORMAT:
        if data.get("version") != 1:
            raise TrustedDocumentsError(
                f"{path}: {APOLLO_MANIFEST_FORMAT} version {data.get('version')!r} "
                "is not supported (only 1)"
            )
        operations = data.get("operations")
        if not isinstance(operations, list):
            raise TrustedDocumentsError(f"{path}: operations must be a list")
        for index, operation in enumerate(operations):
            if not isinstance(operation, dict) or not (
                isinstance(operation.get("id"), str) and isinstance(operation.get("body"), str)
            ):
                raise TrustedDocumentsError(
                    f"{path}: operations[{index}] needs a string id and a string body"
                )
            _add(path, documents, operation["id"], operation["body"])
    else:
        for key, text in data.items():
            if not isinstance(text, str):
                raise TrustedDocumentsError(
                    f"{path}: {key!r} must map to a document's text, as "
                    '{"<id>": "<document>"} (GraphQL Code Generator, Relay) or '
                    f'{{"format": "{APOLLO_MANIFEST_FORMAT}", ...}} (Apollo)'
                )
            _add(path, documents, key, text)
    if not documents:
        raise TrustedDocumentsError(f"{path} holds no documents")
    return documents


def _add(path: Path, documents: dict[str, str], key: str, text: str) -> None:
    if not key or not text.strip():
        raise TrustedDocumentsError(f"{path}: empty id or document ({key!r})")
    if documents.get(key, text) != text:
        raise TrustedDocumentsError(f"{path}: id {key!r} names two different documents")
    documents[key] = text


class TrustedDocuments:
    """A loaded manifest: its texts by id, each parsed, validated and pinned in the schema."""

    def __init__(self, path: Path, schema: CoregraphSchema) -> None:
        self.path = path
        self.by_id = read_manifest(path)
        self.texts = frozenset(self.by_id.values())
        problems = []
        for key, text in self.by_id.items():
            try:
                prepared = schema.documents.pin(schema._schema, text)
            except Exception as exc:  # a syntax error, or past the token limit
                problems.append(f"{key}: {exc}")
                continue
            problems.extend(f"{key}: {error.message}" for error in prepared.errors)
        if problems:
            shown = "; ".join(problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise TrustedDocumentsError(
                f"{path}: documents that could never run against this schema and its limits: "
                f"{shown}{more}"
            )

    def get(self, key: str) -> str | None:
        text = self.by_id.get(key)
        if text is None and key.startswith("sha256:"):
            text = self.by_id.get(key.removeprefix("sha256:"))
        return text


class PersistedOperations:
    """What the HTTP layer asks: which text a request runs, and what to register after."""

    def __init__(self, settings: Settings, schema: CoregraphSchema, redis: Any = None) -> None:
        self.trusted = (
            TrustedDocuments(settings.trusted_documents, schema)
            if settings.trusted_documents is not None
            else None
        )
        self.apq_enabled = settings.persisted_queries and self.trusted is None
        self.registered = RegisteredQueries(
            settings.persisted_queries_max,
            redis,
            settings.redis_prefix,
            settings.persisted_queries_ttl_seconds,
        )

    async def resolve(
        self, query: str | None, extensions: dict[str, Any] | None, document_id: Any, exempt: bool
    ) -> Resolved:
        """The text to run. ``exempt``: the request carried the schema reader secret (a
        gateway), which trusted-documents mode does not restrict."""
        persisted = extensions.get("persistedQuery") if extensions else None
        key: str | None = None
        if document_id is not None:
            if not isinstance(document_id, str) or not document_id:
                raise PersistedQueryRefused("BAD_REQUEST", "documentId must be a non-empty string")
            key = document_id
        if persisted is not None:
            if not isinstance(persisted, dict) or not isinstance(persisted.get("sha256Hash"), str):
                raise PersistedQueryRefused(
                    "BAD_REQUEST", "extensions.persistedQuery needs a sha256Hash string"
                )
            if persisted.get("version") != APQ_VERSION:
                raise PersistedQueryRefused(
                    "BAD_REQUEST", "unsupported persisted query version (only 1)"
                )
            key = key or persisted["sha256Hash"]
        if self.trusted is not None:
            if not exempt:
                return self._trusted(self.trusted, query, key)
            if key is not None:  # the gateway naming a manifest document
                return self._trusted(self.trusted, query, key)
        if key is None:
            if query is None:
                raise PersistedQueryRefused("BAD_REQUEST", "query must be a string")
            return Resolved(query)
        if not self.apq_enabled:
            raise PersistedQueryRefused(
                "PERSISTED_QUERY_NOT_SUPPORTED", "PersistedQueryNotSupported"
            )
        key = key.removeprefix("sha256:")
        if query is None:
            text = await self.registered.get(key)
            if text is None:
                raise not_found()
            return Resolved(text, persisted=True)
        if persisted is None:
            raise PersistedQueryRefused(
                "BAD_REQUEST", "send documentId without a query, or the APQ extension with one"
            )
        if sha256_hex(query) != key:
            # Otherwise anyone could attach their document to a hash others' clients send.
            raise PersistedQueryRefused(
                "PERSISTED_QUERY_HASH_MISMATCH",
                "provided sha256Hash does not match the query (sha256 of its UTF-8 text, hex)",
            )
        return Resolved(query, register=key, persisted=True)

    @staticmethod
    def _trusted(trusted: TrustedDocuments, query: str | None, key: str | None) -> Resolved:
        if key is not None:
            text = trusted.get(key)
            if text is None and query is None:
                raise not_found()
            if query is not None and query != text:
                # (APQ's registration attempt included: nothing is registered here.)
                raise PersistedQueryRefused(
                    "PERSISTED_QUERY_NOT_IN_LIST",
                    "the query sent is not the trusted document of that id",
                    403,
                )
            assert text is not None
            return Resolved(text, persisted=True)
        if query is None:
            raise PersistedQueryRefused("BAD_REQUEST", "send a documentId (or a query)")
        if query not in trusted.texts:
            raise PersistedQueryRefused(
                "PERSISTED_QUERY_NOT_IN_LIST",
                "only the trusted documents of this deployment run here; send a documentId",
                403,
            )
        return Resolved(query, persisted=True)

    async def register(self, digest: str, text: str) -> None:
        await self.registered.put(digest, text)
