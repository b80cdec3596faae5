"""One typed settings object, read from ``COREGRAPH_*`` environment variables.

Nothing is required on the embedded defaults (SQLite, in-process broker, local disk). With
``COREGRAPH_ENV=production`` the process refuses to start on an insecure setting unless
``COREGRAPH_ALLOW_INSECURE=true`` says so explicitly.
"""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "coregraph-development-secret-change-me-0123456789"
# A Fernet key (32 url-safe base64 bytes) for the embedded defaults only: production refuses it.
DEV_WEBHOOK_SECRET_KEY = "Y29yZWdyYXBoLWRldmVsb3BtZW50LWtleS0wMTIzNDU="
# What a webhook claim must outlast its request's deadline by: the time to sign before the
# request and to record its attempt after it.
WEBHOOK_CLAIM_MARGIN_SECONDS = 5.0
# The least age at which stored bytes no file accounts for may be reclaimed as orphans (the
# setting's floor and files-cleanup's): a running upload's bytes must never look orphaned.
FILES_MIN_ORPHAN_GRACE_SECONDS = 60


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COREGRAPH_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    allow_insecure: bool = False

    database_url: str = "sqlite+aiosqlite:///./var/coregraph.sqlite3"
    database_echo: bool = False
    # Connections kept open per process, and how many more it may open under a burst. Those
    # beyond the pool are closed when returned, so a pool smaller than the concurrency a
    # process serves reconnects all the time (a new thread and PRAGMAs on SQLite, a TCP and
    # auth handshake on PostgreSQL). Mind PostgreSQL's max_connections across processes.
    database_pool_size: int = Field(20, ge=1, le=500)
    database_max_overflow: int = Field(10, ge=0, le=500)
    # PostgreSQL: the role every application connection switches to. It owns no table, so
    # row-level security holds for it; migrations keep the login role. Empty: no switch (when
    # the login role already is such a role).
    database_role: str = Field("coregraph_app", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$|^$")
    # PostgreSQL: the role the outbox relay (and later workers) switches to. It reads across
    # tenants through row-level-security policies of its own (migration 0009), owns no table
    # and cannot read what its policies do not name.
    database_worker_role: str = Field("coregraph_worker", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    redis_url: str | None = None
    # Prefix of every Redis key, so deployments (or test runs) can share one Redis.
    redis_prefix: str = Field("coregraph", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    # Streams (coregraph/streams). Where the outbox relay runs: "auto" runs it inside
    # `coregraph serve` on SQLite or when no Redis is set (no other process could hear it);
    # with Redis, `coregraph worker` runs it. "true"/"false" force it on or off in serve.
    run_relay: Literal["auto", "true", "false"] = "auto"
    # The relay also wakes at once after a commit (in-process, and through Redis from other
    # processes); the poll catches what no wake-up announced (another tool's commits).
    relay_poll_seconds: float = Field(0.5, gt=0, le=3600)
    # How often the worker (or serve, where it runs the relay) prunes audit entries past their
    # tenant's retention (tenants.audit_retention_days; none set keeps everything).
    audit_prune_interval_seconds: float = Field(3600, gt=0, le=7 * 86400)
    # How long a process keeps a tenant's approval policies: a policy created or deleted
    # applies at once in the process that wrote it, within this in every other one.
    approval_policy_cache_seconds: float = Field(1.0, ge=0, le=60)
    # How often the worker expires approval requests whose time ran out (services.approvals).
    approval_expiry_interval_seconds: float = Field(30.0, gt=0, le=3600)
    # Messages a subscriber may fall behind by before its subscription ends (SubscriberTooSlow)
    # rather than slowing publishers or growing memory.
    subscriber_buffer: int = Field(1000, ge=1, le=1_000_000)
    # A subscription rechecks its credential at most once a second while items flow; a quiet
    # one checks after this many seconds without an item, so a revoked key or a removed
    # member ends even a subscription that nothing is sent to.
    subscription_idle_recheck_seconds: float = Field(15.0, gt=0, le=3600)

    # Webhooks (coregraph/services/webhooks.py, coregraph/streams/webhooks.py).
    # Fernet keys that encrypt endpoint secrets at rest, comma-separated: the first encrypts,
    # every one decrypts, so a key is rotated by putting a new one first, running
    # `coregraph rotate-webhook-key` (re-encrypts every secret), then dropping the old one.
    # Generate one with `coregraph generate-webhook-key`. Production refuses the dev key.
    webhook_secret_keys: str = DEV_WEBHOOK_SECRET_KEY
    # Deliveries to loopback, private, link-local addresses: default on except in production,
    # where forcing it on is refused (SSRF: a tenant could point an endpoint at the network
    # coregraph runs in).
    webhook_allow_private: bool | None = None
    webhook_timeout_seconds: float = Field(15.0, gt=0, le=120)
    # Seconds to wait before each retry, as a JSON list (the first attempt is immediate): a
    # delivery is attempted len(schedule) + 1 times in all, then marked failed.
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # An endpoint is disabled (and `webhook_endpoint.disabled` emitted) once it has failed at
    # least this many times in a row over at least this long.
    webhook_disable_after_failures: int = Field(20, ge=1)
    webhook_disable_after_seconds: float = Field(5 * 86400, ge=0)
    # How long a rotated secret keeps signing beside the new one.
    webhook_secret_overlap_seconds: float = Field(86400, ge=0, le=30 * 86400)
    # Endpoints a tenant may have per environment (createWebhookEndpoint: QUOTA_EXCEEDED).
    webhook_max_endpoints: int = Field(50, ge=1, le=10_000)
    # Requests in flight per endpoint (across the workers of one process) and per worker process.
    webhook_endpoint_concurrency: int = Field(4, ge=1, le=1000)
    webhook_worker_concurrency: int = Field(32, ge=1, le=10_000)
    # A claimed delivery belongs to its worker this long; a worker that died is retried after.
    # At least webhook_timeout_seconds + WEBHOOK_CLAIM_MARGIN_SECONDS (a shorter claim lets
    # another worker send a delivery whose request is still in flight).
    webhook_claim_seconds: float = Field(60.0, gt=0, le=3600)
    webhook_poll_seconds: float = Field(1.0, gt=0, le=3600)
    # On SIGTERM a worker stops claiming and gives requests in flight this long to finish;
    # the claims of those still unfinished are then released for another worker.
    webhook_shutdown_seconds: float = Field(10.0, ge=0, le=300)
    # Whether `coregraph serve` delivers webhooks itself ("auto": when it runs the relay).
    run_webhook_worker: Literal["auto", "true", "false"] = "auto"

    # Files (coregraph/storage). Unset: bytes on local disk under storage_dir (the embedded
    # default). s3://bucket/prefix: an S3-compatible bucket, reached at s3_endpoint_url (unset:
    # AWS) with these credentials (unset: boto3's own chain: environment, profile, instance role).
    storage_url: str | None = Field(
        None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$"
    )
    storage_dir: str = "./var/files"
    s3_endpoint_url: str | None = Field(None, pattern=r"^https?://[^\s?#]+$")
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    # Files (coregraph/services/files.py). Bytes one file may have (createUploadUrl), and one
    # file sent through GraphQL itself (uploadFile, spooled to a temporary file as it arrives).
    files_max_file_bytes: int = Field(1024**3, ge=1)
    files_multipart_max_file_bytes: int = Field(16 * 1024**2, ge=1)
    # A multipart request's files and parts (operations, map and the files).
    files_multipart_max_files: int = Field(10, ge=1, le=1000)
    files_multipart_max_parts: int = Field(12, ge=3, le=1002)
    # Bytes each tenant may keep (ready files and upload URLs handed out); the plans issue will
    # set it per tenant.
    files_quota_bytes: int = Field(10 * 1024**3, ge=0)
    # How long an upload URL may be used, and the longest downloadUrl(expiresIn) may ask for.
    files_upload_url_ttl_seconds: int = Field(900, ge=10, le=7 * 86400)
    files_download_url_max_seconds: int = Field(3600, ge=10, le=7 * 86400)
    # A deleted file's bytes are kept this long (deleteFile(purge: true) removes them at once).
    files_retention_seconds: int = Field(30 * 86400, ge=0)
    # `coregraph files-cleanup` reclaims bytes no file row accounts for once they are this old
    # (an upload in progress has young bytes), and the bytes of upload URLs this long after they
    # lapsed.
    # At least a minute: a running upload's bytes (or its URL's) must never look orphaned.
    files_orphan_grace_seconds: int = Field(3600, ge=FILES_MIN_ORPHAN_GRACE_SECONDS)
    # How often the worker (or serve, where it runs the relay) does what files-cleanup does.
    files_cleanup_interval_seconds: float = Field(3600, gt=0, le=7 * 86400)
    # Upload bodies coregraph reads (a PUT to its upload URL, a multipart uploadFile): each read
    # waits at most files_upload_idle_seconds, and the whole body must arrive within that plus
    # its size at files_upload_min_bytes_per_second; a slower one (slowloris) is refused, 408.
    files_upload_idle_seconds: float = Field(30.0, gt=0, le=3600)
    files_upload_min_bytes_per_second: int = Field(16 * 1024, ge=1)
    # Upload URLs a tenant may hold at once, handed out and neither completed nor lapsed.
    files_max_pending_uploads: int = Field(100, ge=1)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # On SIGTERM `coregraph serve` stops accepting, closes WebSockets with 1001 (going away:
    # clients reconnect elsewhere) and gives HTTP requests in flight this long to finish
    # (coregraph/serving.py); what still runs then is cancelled.
    shutdown_grace_seconds: float = Field(20.0, ge=0, le=600)
    # /readyz: the deadline of each check, and the relay lag (age of the oldest committed event
    # or audit entry not yet published) past which a process reports itself not ready; 0
    # reports the lag without ever failing on it.
    readyz_timeout_seconds: float = Field(2.0, gt=0, le=30)
    readyz_max_relay_lag_seconds: float = Field(300.0, ge=0)
    # Base of the links coregraph hands out (invitations). Unset: the address each request
    # reached (its scheme and Host), so links work wherever coregraph is served directly. Set it
    # when clients reach coregraph through something that rewrites Host (a gateway, a proxy).
    public_url: str | None = Field(None, pattern=r"^https?://[^\s?#]+$")
    # Browser origins allowed to call the API (portals on another origin), as a JSON list.
    cors_origins: list[str] = Field(default_factory=list)
    # Proxies (load balancers, gateways) whose X-Forwarded-For / X-Forwarded-Proto are believed,
    # as a JSON list of addresses or CIDR ranges. None by default: the client address (per-IP
    # rate limits, audit entries) is the TCP peer, so no client can choose the one it is seen as.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Where an invitation link points: coregraph's own accept page by default
    # (coregraph/invitation_page.py), or an edge app's page that follows the same contract.
    invitation_url_template: str = "{public_url}/invitations/accept?token={token}"

    # coregraph's own tokens: one key, one algorithm (RFC 8725).
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "coregraph"
    jwt_audience: str = "coregraph"
    access_token_ttl_seconds: int = Field(900, ge=30, le=86400)
    refresh_token_ttl_seconds: int = Field(30 * 86400, ge=300)
    invitation_ttl_seconds: int = Field(7 * 86400, ge=1)

    # A company's existing identity provider (optional): RS256/ES256 with a PEM key or a JWKS URL.
    external_jwt_issuer: str | None = None
    external_jwt_audience: str | None = None
    external_jwt_algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"] = "RS256"
    external_jwt_public_key: str | None = None
    external_jwt_jwks_url: str | None = None
    external_jwt_email_claim: str = "email"
    # The issuer only puts addresses it has verified in the email claim (a company directory,
    # e.g. an IdP that never sends `email_verified`): treat an email as verified unless the token
    # says `email_verified: false`. Such an address then links to an existing account.
    external_jwt_emails_verified: bool = False

    # WebSockets whose connection_init carries no credential: refused with 4401 unless allowed
    # (they can only run what an anonymous HTTP request can).
    ws_allow_anonymous: bool = False

    # GraphQL abuse limits.
    introspection: bool | None = None  # default: on, except in production
    field_suggestions: bool | None = None  # default: on, except in production
    max_query_depth: int = Field(12, ge=2, le=100)
    # Queries run on their document's compiled plan (coregraph.schema.compiled); off, every
    # operation takes graphql-core's walk (same answers; a switch for comparing and for
    # ruling the plans out while investigating).
    compiled_plans: bool = True
    max_aliases: int = Field(30, ge=1, le=10_000)
    max_tokens: int = Field(4000, ge=50, le=1_000_000)
    # Field selections per operation, each fragment counted every time it is spread: a few
    # hundred tokens can otherwise ask for the same field millions of times.
    max_fields: int = Field(500, ge=1, le=1_000_000)
    max_page_size: int = Field(200, ge=1, le=1000)
    # A test aid (the test suite turns it on): each query and subscription event also runs on
    # stock graphql-core and the two answers are compared (coregraph.schema.execution_check).
    # It doubles every query's execution: leave it off outside tests.
    execution_check: bool = False
    # Events one emitEvents call may carry (all written in one transaction).
    max_event_batch: int = Field(500, ge=1, le=5000)
    # Usage records one recordUsageBatch call may carry (all written in one transaction).
    max_usage_batch: int = Field(1000, ge=1, le=10_000)
    # How late a usage record may arrive (its occurredAt this far back lands in its period;
    # older is refused), and how far ahead of the server's clock it may be.
    usage_late_window_seconds: int = Field(7 * 86400, ge=0)
    usage_future_skew_seconds: int = Field(300, ge=0, le=86400)
    # Billing (coregraph.services.billing). The plan catalog may be loaded at start from a file
    # (JSON, or TOML by its .toml extension: {"plans": [...]}, each plan upserted by key); the
    # tenant whose billing managers define plans and assign any plan through the API (others
    # may only choose self-serve plans for their own tenant); the plan of tenants without one
    # (unset: unlimited, no features).
    plans_file: Path | None = None
    billing_operator_tenant: str | None = None
    default_plan: str | None = None
    graphiql: bool | None = None  # default: on, except in production
    # Who may read `_service { sdl }` when introspection is off: requests carrying this shared
    # secret in X-Coregraph-Schema-Secret (a federation gateway). Unset: nobody; the gateway
    # then composes its supergraph offline from `coregraph export-schema`.
    schema_reader_secret: str | None = None

    # Persisted operations (coregraph/persisted.py). Apollo's automatic persisted queries:
    # registered texts kept per process (an LRU of this many) and, with Redis, shared by every
    # process for the TTL. A GET of a persisted query answered without errors may be kept by
    # the client for this many seconds (Cache-Control; 0: revalidate every time).
    persisted_queries: bool = True
    persisted_queries_max: int = Field(1024, ge=1, le=1_000_000)
    persisted_queries_ttl_seconds: int = Field(86400, ge=1, le=365 * 86400)
    persisted_queries_max_age: int = Field(0, ge=0, le=86400)
    # Trusted documents: a manifest written by the client build (GraphQL Code Generator's
    # persisted-documents.json, Relay's persisted queries, Apollo's persisted query list).
    # Set, only its documents run (GraphiQL is not served); every one is validated at start.
    trusted_documents: Path | None = None

    # Attempts per window: login, refreshSession, acceptInvitation per account and per address;
    # signUp and logout by refresh token per address.
    auth_rate_limit_per_account: int = Field(10, ge=1)
    auth_rate_limit_per_ip: int = Field(100, ge=1)
    auth_rate_limit_window_seconds: int = Field(60, ge=1, le=86400)
    # Plans' operation rate limits and api.requests cap (services.plan_limits, api_requests):
    # how long a process keeps a tenant's plan limits and its month's recorded api.requests
    # before reading them again, and how often it flushes its api.requests counts (a crash
    # loses at most that much in memory; shutdown flushes).
    plan_limits_cache_seconds: float = Field(5.0, ge=0, le=300)
    api_requests_flush_seconds: float = Field(10.0, gt=0, le=3600)

    password_min_length: int = Field(10, ge=8, le=128)
    # argon2id cost for new hashes (argon2-cffi's defaults, RFC 9106's second recommendation).
    # Production refuses less than OWASP's floor (19 MiB, 2 passes) unless allow_insecure.
    password_hash_time_cost: int = Field(3, ge=1, le=20)
    password_hash_memory_kib: int = Field(65536, ge=8, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(4, ge=1, le=16)
    log_level: str = "INFO"
    # Prometheus metrics (coregraph/metrics.py). /metrics on the API's own port: on, except in
    # production, where that port faces clients. metrics_port: a listener of its own, bound to
    # metrics_host, in the API and in `coregraph worker` (whose webhook metrics it serves).
    metrics_public: bool | None = None
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")):
            raise ValueError(
                "must be sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db"
            )
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        return value

    @field_validator(
        "public_url", "storage_url", "s3_endpoint_url", "trusted_documents", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass `${COREGRAPH_PUBLIC_URL:-}`: empty means "the address served".
        return None if value == "" else value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, values: list[str]) -> list[str]:
        parsed = []
        for value in values:
            try:
                network = ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or CIDR range") from None
            parsed.append(
                str(network.network_address) if network.num_addresses == 1 else str(network)
            )
        return parsed

    @field_validator("webhook_secret_keys")
    @classmethod
    def _fernet_keys(cls, value: str) -> str:
        keys = [key.strip() for key in value.split(",") if key.strip()]
        if not keys:
            raise ValueError("at least one key is needed")
        for key in keys:
            # What Fernet(key) accepts, checked without importing cryptography at startup
            # (coregraph.auth.pyjwt says what it costs): url-safe base64 of 32 bytes.
            try:
                if len(base64.urlsafe_b64decode(key)) != 32:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(
                    "each key must be 32 url-safe base64-encoded bytes "
                    "(coregraph generate-webhook-key)"
                ) from None
        return ",".join(keys)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _delays(cls, values: list[float]) -> list[float]:
        if any(value < 0 for value in values) or len(values) > 50:
            raise ValueError("at most 50 delays, none negative")
        return values

    @model_validator(mode="after")
    def _claims_outlast_requests(self) -> Settings:
        least = self.webhook_timeout_seconds + WEBHOOK_CLAIM_MARGIN_SECONDS
        if self.webhook_claim_seconds < least:
            raise ValueError(
                f"COREGRAPH_WEBHOOK_CLAIM_SECONDS ({self.webhook_claim_seconds:g}) must be at "
                f"least COREGRAPH_WEBHOOK_TIMEOUT_SECONDS ({self.webhook_timeout_seconds:g}) + "
                f"{WEBHOOK_CLAIM_MARGIN_SECONDS:g}: a claim that ends before its request does "
                "lets another worker send the same delivery again"
            )
        return self

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.external_jwt_issuer and not (
            self.external_jwt_public_key or self.external_jwt_jwks_url
        ):
            raise ValueError(
                "COREGRAPH_EXTERNAL_JWT_ISSUER needs COREGRAPH_EXTERNAL_JWT_PUBLIC_KEY "
                "or COREGRAPH_EXTERNAL_JWT_JWKS_URL"
            )
        if self.external_jwt_issuer and not self.external_jwt_audience:
            raise ValueError(
                "COREGRAPH_EXTERNAL_JWT_ISSUER needs COREGRAPH_EXTERNAL_JWT_AUDIENCE: "
                "tokens minted for another application must not pass"
            )
        if self.env != "production" or self.allow_insecure:
            return self
        problems = []
        if self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32:
            problems.append("COREGRAPH_JWT_SECRET is the development default or shorter than 32")
        if self.introspection:
            problems.append("COREGRAPH_INTROSPECTION is forced on")
        if self.field_suggestions:
            problems.append("COREGRAPH_FIELD_SUGGESTIONS is forced on")
        if self.graphiql:
            problems.append("COREGRAPH_GRAPHIQL is forced on")
        if self.schema_reader_secret is not None and len(self.schema_reader_secret) < 32:
            problems.append("COREGRAPH_SCHEMA_READER_SECRET is shorter than 32")
        if self.password_hash_memory_kib < 19456 or self.password_hash_time_cost < 2:
            problems.append(
                "COREGRAPH_PASSWORD_HASH_MEMORY_KIB/TIME_COST are below OWASP's argon2id floor"
            )
        if DEV_WEBHOOK_SECRET_KEY in self.webhook_secret_key_list:
            problems.append("COREGRAPH_WEBHOOK_SECRET_KEYS holds the development key")
        if self.webhook_allow_private:
            problems.append("COREGRAPH_WEBHOOK_ALLOW_PRIVATE is on")
        if problems:
            raise ValueError(
                "refusing to start in production with insecure settings: "
                + "; ".join(problems)
                + " (set COREGRAPH_ALLOW_INSECURE=true to override)"
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def introspection_enabled(self) -> bool:
        return self.introspection if self.introspection is not None else not self.is_production

    @property
    def suggestions_enabled(self) -> bool:
        if self.field_suggestions is not None:
            return self.field_suggestions
        return not self.is_production

    @property
    def graphiql_enabled(self) -> bool:
        if self.trusted_documents is not None:
            return False  # the IDE's documents are not in the manifest: none would run
        return self.graphiql if self.graphiql is not None else not self.is_production

    @property
    def metrics_public_enabled(self) -> bool:
        return self.metrics_public if self.metrics_public is not None else not self.is_production

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def webhook_secret_key_list(self) -> list[str]:
        return self.webhook_secret_keys.split(",")

    @property
    def webhook_private_allowed(self) -> bool:
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return not self.is_production

    @property
    def webhook_worker_in_process(self) -> bool:
        """Whether `coregraph serve` delivers webhooks itself."""
        if self.run_webhook_worker == "auto":
            return self.relay_in_process
        return self.run_webhook_worker == "true"

    @property
    def relay_in_process(self) -> bool:
        """Whether `coregraph serve` runs the outbox relay itself."""
        if self.run_relay == "auto":
            return self.is_sqlite or not self.redis_url
        return self.run_relay == "true"


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value raises ``pydantic.ValidationError`` naming the variable."""
    return Settings(**overrides)  # type: ignore[arg-type]
