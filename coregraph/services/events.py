"""Business events: the built-in catalog, a tenant's own event types, and emitting them.

Every mutation of tenant data states one built-in event (``BUILTIN_EVENT_TYPES``) through
``uow.emit`` in its own transaction. Edge apps emit their own with ``emit_events`` (one or a
batch, in one transaction): the type must be registered in the tenant with a JSON Schema (draft
2020-12, checked by the ``jsonschema`` library), the payload must satisfy it, and a repeated
idempotency key answers the first event.

Names: lowercase dotted segments (``order.paid``, ``invoice.line_added.v2``). A custom type has
at least two segments and its first segment is none of the built-in namespaces
(``RESERVED_NAMESPACES``), so no tenant can ever shadow an event coregraph emits.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from coregraph import ids
from coregraph.errors import BadUserInput, Conflict
from coregraph.models import Event, EventType
from coregraph.services import quotas, usage, validation
from coregraph.services.json_schema_precheck import Check, compile_precheck
from coregraph.services.uow import StatedEvent, UnitOfWork

# jsonschema (with referencing, rpds and attrs) is imported by the functions that use it, when a
# schema is first checked or compiled, not by every process that imports this module (~2.5 MiB
# of a server's resident set; bench/RESULTS.md, "Files").
if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

MAX_TYPE_LENGTH = 120
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 200
EVENTS_METER = "events.emitted"
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


@dataclass(frozen=True, slots=True)
class BuiltinEventType:
    type: str
    description: str
    schema: dict[str, Any]


def _payload(**properties: Any) -> dict[str, Any]:
    """The schema of a built-in payload: an object carrying at least these properties."""
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
    }


_ID = {"type": "string"}
_TEXT = {"type": "string"}
_OPTIONAL_TEXT = {"type": ["string", "null"]}
_CHANGES = {"type": "object", "description": "The changed fields, before and after."}
_LIST = {"type": "array", "items": {"type": "string"}}

BUILTIN_EVENT_TYPES: dict[str, BuiltinEventType] = {
    t.type: t
    for t in (
        BuiltinEventType(
            "tenant.created",
            "A tenant was created; its creator is its first owner.",
            _payload(tenantId=_ID, name=_TEXT, slug=_TEXT, ownerUserId=_ID, ownerMembershipId=_ID),
        ),
        BuiltinEventType(
            "tenant.updated",
            "The tenant's name or slug changed.",
            _payload(tenantId=_ID, before=_CHANGES, after=_CHANGES),
        ),
        BuiltinEventType(
            "member.invited",
            "Someone was invited to join; invitationUrl is the single-use link to send them.",
            _payload(
                invitationId=_ID, email=_TEXT, role=_TEXT, expiresAt=_TEXT, invitationUrl=_TEXT
            ),
        ),
        BuiltinEventType(
            "invitation.revoked",
            "A pending invitation was revoked, or superseded by a newer one (reason).",
            _payload(invitationId=_ID, email=_TEXT, reason=_OPTIONAL_TEXT),
        ),
        BuiltinEventType(
            "member.joined",
            "An invitee accepted their invitation and became a member.",
            _payload(membershipId=_ID, userId=_ID, role=_TEXT, invitationId=_ID),
        ),
        BuiltinEventType(
            "member.removed",
            "A member was removed from the tenant.",
            _payload(membershipId=_ID, userId=_ID, role=_TEXT),
        ),
        BuiltinEventType(
            "member.role_changed",
            "A member's role changed.",
            _payload(membershipId=_ID, userId=_ID, before=_CHANGES, after=_CHANGES),
        ),
        BuiltinEventType(
            "role.created",
            "A custom role was created.",
            _payload(roleId=_ID, key=_TEXT, name=_TEXT, description=_TEXT, permissions=_LIST),
        ),
        BuiltinEventType(
            "role.updated",
            "A custom role's name, description or permissions changed.",
            _payload(roleId=_ID, key=_TEXT, before=_CHANGES, after=_CHANGES),
        ),
        BuiltinEventType(
            "role.deleted",
            "A custom role was deleted.",
            _payload(roleId=_ID, key=_TEXT),
        ),
        BuiltinEventType(
            "apikey.created",
            "An API key was issued (never its secret).",
            _payload(
                apiKeyId=_ID,
                name=_TEXT,
                environment=_TEXT,
                scopes=_LIST,
                expiresAt=_OPTIONAL_TEXT,
                createdByUserId=_OPTIONAL_TEXT,
                agentId=_OPTIONAL_TEXT,
            ),
        ),
        BuiltinEventType(
            "apikey.revoked",
            "An API key was revoked.",
            _payload(apiKeyId=_ID, name=_TEXT, environment=_TEXT),
        ),
        BuiltinEventType(
            "apikey.rate_limits_changed",
            "An API key's own operation rate limits were set (null: its plan's apply).",
            _payload(apiKeyId=_ID, name=_TEXT, rateLimits={"type": ["object", "null"]}),
        ),
        BuiltinEventType(
            "agent.created",
            "An agent was created: a principal of the tenant with scopes of its own.",
            _payload(agentId=_ID, name=_TEXT, scopes=_LIST, sponsorUserId=_OPTIONAL_TEXT),
        ),
        BuiltinEventType(
            "agent.disabled",
            "An agent was disabled: none of its credentials authenticates until enabled.",
            _payload(agentId=_ID, name=_TEXT),
        ),
        BuiltinEventType(
            "agent.enabled",
            "A disabled agent was enabled again.",
            _payload(agentId=_ID, name=_TEXT),
        ),
        BuiltinEventType(
            "agent.deleted",
            "An agent was deleted and its keys revoked; audit entries keep naming it.",
            _payload(agentId=_ID, name=_TEXT),
        ),
        *(
            BuiltinEventType(
                f"support.{change}",
                f"A platform staff member's support session was {change}{detail}.",
                _payload(
                    supportSessionId=_ID,
                    staffUserId=_ID,
                    reason=_TEXT,
                    mode={"type": "string", "enum": ["READ", "ACT"]},
                    durationSeconds={"type": "integer", "minimum": 1},
                ),
            )
            for change, detail in (
                ("requested", ": the tenant's owners approve or deny it"),
                ("approved", ": the staff member may now take impersonation tokens until endsAt"),
                ("denied", ""),
                ("revoked", ": its tokens stop at their next request"),
                ("started", ": the staff member took an impersonation token"),
            )
        ),
        BuiltinEventType(
            "quota.refused",
            "An operation was refused (QUOTA_EXCEEDED) by a hard limit of the tenant's plan:"
            " kept at most once per meter and minute (minute: its start), by whoever was"
            " refused. limit and current: integers, or decimal strings.",
            _payload(
                meter=_TEXT,
                limit={"type": ["integer", "string", "null"]},
                current={"type": ["integer", "string", "null"]},
                period={"type": ["string", "null"]},
                minute={"type": "string", "format": "date-time"},
            ),
        ),
        BuiltinEventType(
            "event_type.registered",
            "A custom event type was registered with its JSON Schema.",
            _payload(eventTypeId=_ID, type=_TEXT, description=_TEXT),
        ),
        BuiltinEventType(
            "audit.pruned",
            "Retention deleted the oldest audit entries, those created before cutoff: count"
            " of them, positions fromPosition to toPosition (the chain now starts after it).",
            _payload(
                tenantId=_ID,
                count={"type": "integer", "minimum": 1},
                fromPosition={"type": "integer", "minimum": 1},
                toPosition={"type": "integer", "minimum": 1},
                cutoff={"type": "string", "format": "date-time"},
                retentionDays={"type": "integer"},
            ),
        ),
        BuiltinEventType(
            "file.uploaded",
            "A file was stored: through uploadFile, or by completeUpload once its bytes matched.",
            _payload(
                fileId=_ID,
                name=_TEXT,
                contentType=_TEXT,
                size={"type": "integer", "minimum": 0},
                sha256=_TEXT,
                labels={"type": "object", "additionalProperties": {"type": "string"}},
            ),
        ),
        BuiltinEventType(
            "file.deleted",
            "A file was deleted; purged: its bytes were removed at once (else after retention).",
            _payload(fileId=_ID, name=_TEXT, purged={"type": "boolean"}),
        ),
        BuiltinEventType(
            "webhook_endpoint.created",
            "A webhook endpoint was created (never its signing secret; of its URL only the"
            " origin, scheme://host[:port]).",
            _payload(
                endpointId=_ID,
                urlOrigin=_TEXT,
                description=_TEXT,
                eventTypes=_LIST,
                environment=_TEXT,
                enabled={"type": "boolean"},
            ),
        ),
        BuiltinEventType(
            "webhook_endpoint.updated",
            "A webhook endpoint's URL, description or event types changed (urlChanged: the"
            " URL did; before/after show its origin only).",
            _payload(
                endpointId=_ID, before=_CHANGES, after=_CHANGES, urlChanged={"type": "boolean"}
            ),
        ),
        BuiltinEventType(
            "webhook_endpoint.disabled",
            "A webhook endpoint was disabled: by hand (reason 'manual') or by the delivery"
            " worker after failing too long (reason 'failing').",
            _payload(endpointId=_ID, reason=_TEXT),
        ),
        BuiltinEventType(
            "webhook_endpoint.enabled",
            "A disabled webhook endpoint was enabled again; its failure count starts afresh.",
            _payload(endpointId=_ID),
        ),
        BuiltinEventType(
            "webhook_endpoint.deleted",
            "A webhook endpoint was deleted, with its deliveries (of its URL, the origin).",
            _payload(endpointId=_ID, urlOrigin=_TEXT),
        ),
        BuiltinEventType(
            "webhook_endpoint.secret_rotated",
            "A webhook endpoint's signing secret was replaced; the previous one keeps signing"
            " beside it until overlapEndsAt (null: not at all).",
            _payload(endpointId=_ID, overlapEndsAt=_OPTIONAL_TEXT),
        ),
        BuiltinEventType(
            "meter.created",
            "A tenant's own meter was created (createMeter).",
            _payload(meterId=_ID, key=_TEXT, aggregation=_TEXT, dimensions=_LIST),
        ),
        BuiltinEventType(
            "usage.recorded",
            "One recordUsage or recordUsageBatch call recorded usage: records new records in"
            " all, meters their count per meter key; replays of used keys are not counted.",
            _payload(
                records={"type": "integer", "minimum": 1},
                meters={"type": "object", "additionalProperties": {"type": "integer"}},
            ),
        ),
        BuiltinEventType(
            "usage.threshold_reached",
            "A meter's usage reached a threshold (percent: 80 or 100) of a limit of the"
            " tenant's plan (hard or soft) in a period (DAY or MONTH, from periodStart); once"
            " per threshold, limit and period. limit and value: integers, or decimal strings.",
            _payload(
                meter=_TEXT,
                percent={"type": "integer", "enum": [80, 100]},
                limit={"type": ["integer", "string"]},
                value={"type": ["integer", "string"]},
                period={"type": "string", "enum": ["DAY", "MONTH"]},
                periodStart={"type": "string", "format": "date-time"},
                hard={"type": "boolean"},
            ),
        ),
    )
}
# The first segments of built-in types (and coregraph's own): no custom type starts with one.
RESERVED_NAMESPACES = frozenset({t.split(".", 1)[0] for t in BUILTIN_EVENT_TYPES}) | {
    "apikeys",
    "audit",
    "coregraph",
    "event",
    "events",
    "invitation",
    "members",
    "roles",
    "tenants",
    "webhook",  # webhook.test, the body of sendTestWebhook
    "webhooks",
}


def check_type_name(value: str, field: str = "type") -> str:
    """A well-formed event type name (built-in or custom), or BAD_USER_INPUT."""
    if len(value) > MAX_TYPE_LENGTH or not _TYPE_RE.match(value):
        raise BadUserInput(
            f"{field}: lowercase dotted segments of letters, digits and '_', each starting"
            f" with a letter, e.g. 'order.paid' (at most {MAX_TYPE_LENGTH} characters)",
            field=field,
        )
    return value


def _custom_type_name(value: str, field: str = "type") -> str:
    check_type_name(value, field)
    namespace = value.split(".", 1)[0]
    if namespace in RESERVED_NAMESPACES:
        raise BadUserInput(
            f"{field}: '{namespace}.' is coregraph's namespace; name your own types in one of"
            " yours, e.g. 'order.paid'",
            field=field,
        )
    return value


def _walk_strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 64:
        raise BadUserInput("nested too deeply (at most 64 levels)")
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _walk_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item, depth + 1)


def _wide_integer_path(value: Any, path: str = "$", depth: int = 0) -> str | None:
    """The JSON path of the first integer orjson cannot encode (beyond 64 bits), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not -(2**63) <= value < 2**64 else None
    if depth > 64 or not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        inner = f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}"
        found = _wide_integer_path(item, inner, depth + 1)
        if found is not None:
            return found
    return None


def _json_document(value: Any, field: str) -> dict[str, Any]:
    """A JSON object of bounded size that the database stores as given (PostgreSQL refuses a
    NUL character in JSON text)."""
    if not isinstance(value, dict):
        raise BadUserInput(f"{field}: must be a JSON object", field=field)
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        encoded = None
        # The relay, the broker and webhooks encode with orjson: refuse what it cannot encode.
        path = _wide_integer_path(value)
        if path is not None:
            raise BadUserInput(
                f"{field}: {path}: integers must fit in 64 bits (send larger ones as strings)",
                field=field,
                path=path,
            ) from None
    # The common case from one encoding, with what the exact checks below would find: orjson
    # writes a NUL as \u0000, so without that text there is none; no more opening brackets
    # than the depth limit (64) means no deeper nesting; and json.dumps's ASCII-escaped size
    # is at most three times orjson's UTF-8 (a 3-byte character becomes a 6-byte escape).
    # Anything else (a \u0000 that may be a NUL, many brackets, a large document) is checked
    # exactly.
    if (
        encoded is not None
        and b"\\u0000" not in encoded
        and encoded.count(b"{") + encoded.count(b"[") <= 64
        and 3 * len(encoded) <= MAX_DOCUMENT_BYTES
    ):
        return value
    try:
        if any("\x00" in text for text in _walk_strings(value)):
            raise BadUserInput(f"{field}: must not contain NUL characters", field=field)
    except BadUserInput as error:
        raise BadUserInput(f"{field}: {error.message}", field=field) from None
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_DOCUMENT_BYTES:
        raise BadUserInput(f"{field}: at most {MAX_DOCUMENT_BYTES // 1024} KiB", field=field)
    return value


def _external_refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                if not value.startswith("#"):
                    yield value
            else:
                yield from _external_refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _external_refs(item)


def _check_schema(schema: Any) -> dict[str, Any]:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    document = _json_document(schema, "schema")
    try:
        Draft202012Validator.check_schema(document)
    except SchemaError as error:
        raise BadUserInput(
            f"schema: not a valid JSON Schema (draft 2020-12) at {error.json_path}:"
            f" {error.message}",
            field="schema",
            path=error.json_path,
        ) from None
    # Nothing is fetched while validating: a schema is self-contained.
    for ref in _external_refs(document):
        raise BadUserInput(
            f"schema: refers outside itself ({ref[:100]}); use local references ('#/$defs/…')",
            field="schema",
        )
    return document


async def register_event_type(
    uow: UnitOfWork, tenant_id: str, *, type: str, description: str, schema: Any
) -> EventType:
    """Register a tenant's own event type. A registered type is fixed: a changed payload is a
    new type (``order.paid.v2``), so consumers never meet two shapes under one name."""
    type = _custom_type_name(type)
    description = validation.text(description, "description", max_length=500, min_length=0)
    document = _check_schema(schema)
    taken = Conflict(f"type: '{type}' is already registered in this tenant", field="type")
    if await uow.session.scalar(
        select(EventType.id).where(EventType.tenant_id == tenant_id, EventType.type == type)
    ):
        raise taken
    row = EventType(
        id=ids.new_id("etp"),
        tenant_id=tenant_id,
        type=type,
        description=description,
        schema=document,
    )
    uow.session.add(row)
    await uow.flush_unique(taken)
    uow.record(
        "event_type.registered",
        tenant_id=tenant_id,
        target_type="EventType",
        target_id=row.id,
        after={"type": type, "description": description},
    )
    uow.emit(
        "event_type.registered",
        tenant_id=tenant_id,
        data={"eventTypeId": row.id, "type": type, "description": description},
    )
    return row


@dataclass(frozen=True, slots=True)
class EmittedEvent:
    # Stated by this call, or read (a replay).
    event: StatedEvent | Event
    # The idempotency key had been used: this is the first event made with it.
    replayed: bool


_idempotency_key = validation.idempotency_key


@dataclass(frozen=True, slots=True)
class EventDraft:
    """One event an edge app asks to emit: a registered type, its payload, and optionally the
    idempotency key that makes asking again harmless."""

    type: str
    data: Any
    idempotency_key: str | None = None


# Compiled validators of registered types, by event type id. A registered type's schema never
# changes (a new shape is a new type), so a validator compiled once stays right.
@dataclass(frozen=True, slots=True)
class _CompiledSchema:
    validator: Draft202012Validator
    # A fast yes for valid payloads (json_schema_precheck); None for a schema it cannot read.
    precheck: Check | None


_VALIDATORS: OrderedDict[str, _CompiledSchema] = OrderedDict()
_VALIDATOR_CACHE_SIZE = 1024


def _validator(registered: _Registered) -> _CompiledSchema:
    compiled = _VALIDATORS.get(registered.id)
    if compiled is None:
        from jsonschema import Draft202012Validator

        compiled = _CompiledSchema(
            Draft202012Validator(registered.schema), compile_precheck(registered.schema)
        )
        _VALIDATORS[registered.id] = compiled
        if len(_VALIDATORS) > _VALIDATOR_CACHE_SIZE:
            _VALIDATORS.popitem(last=False)
    else:
        _VALIDATORS.move_to_end(registered.id)
    return compiled


def _schema_violation(compiled: _CompiledSchema, data: dict[str, Any]) -> BadUserInput | None:
    """The most relevant way ``data`` fails its type's schema (jsonschema's ``best_match``), as
    an error naming its JSON path; a missing required property is named as that property."""
    if compiled.precheck is not None and compiled.precheck(data):
        return None
    from jsonschema.exceptions import best_match
    from referencing.exceptions import Unresolvable

    try:
        error = best_match(compiled.validator.iter_errors(data))
    except Unresolvable as unresolvable:
        return BadUserInput(
            f"data: the type's schema refers to something it does not contain ({unresolvable})",
            field="data",
        )
    if error is None:
        return None
    path = error.json_path
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next(
            (name for name in error.validator_value or () if name not in error.instance), None
        )
        if isinstance(missing, str):
            path = f"{path}.{missing}"
    return BadUserInput(f"data: {path}: {error.message}", field="data", path=path)


def _custom_event_type(value: str) -> str:
    type = check_type_name(value)
    if type in BUILTIN_EVENT_TYPES or type.split(".", 1)[0] in RESERVED_NAMESPACES:
        raise BadUserInput(f"type: '{type}' is emitted by coregraph itself", field="type")
    return type


def _item_error(index: int | None, error: BadUserInput) -> BadUserInput:
    """``error`` about one item of a batch, naming its index (in the message and as
    ``extensions.index``); a single emit's errors stay as they are."""
    if index is None:
        return error
    return BadUserInput(
        f"inputs[{index}].{error.message}", field=error.field, index=index, **error.extra
    )


@dataclass(frozen=True, slots=True)
class _Registered:
    id: str
    schema: dict[str, Any]


# Registered types by (tenant id, type), as committed transactions read them. A registration
# never changes and is never removed (a new shape is a new type), so what was read stays true.
_REGISTERED: OrderedDict[tuple[str, str], _Registered] = OrderedDict()
_REGISTERED_CACHE_SIZE = 4096
_REGISTERED_TYPES = select(EventType.id, EventType.type, EventType.schema).where(
    EventType.tenant_id == bindparam("tenant_id"),
    EventType.type.in_(bindparam("types", expanding=True)),
)
_USED_KEYS = select(Event).where(
    Event.tenant_id == bindparam("tenant_id"),
    Event.environment == bindparam("environment"),
    Event.idempotency_key.in_(bindparam("keys", expanding=True)),
)


async def _registered_types(
    uow: UnitOfWork, tenant_id: str, types: set[str]
) -> dict[str, _Registered]:
    """The tenant's registrations of ``types`` (those it has)."""
    found: dict[str, _Registered] = {}
    missing: list[str] = []
    for type in types:
        known = _REGISTERED.get((tenant_id, type))
        if known is None:
            missing.append(type)
        else:
            _REGISTERED.move_to_end((tenant_id, type))
            found[type] = known
    if not missing:
        return found
    read = {
        row.type: _Registered(row.id, row.schema)
        for row in await uow.session.execute(
            _REGISTERED_TYPES, {"tenant_id": tenant_id, "types": missing}
        )
    }
    found.update(read)

    def remember() -> None:
        # Only once committed: a registration this very unit of work made (and might still
        # roll back) is never remembered before it is certain.
        for type, registration in read.items():
            _REGISTERED[(tenant_id, type)] = registration
        while len(_REGISTERED) > _REGISTERED_CACHE_SIZE:
            _REGISTERED.popitem(last=False)

    uow.on_commit(remember)
    return found


async def emit_events(
    uow: UnitOfWork,
    tenant_id: str,
    drafts: Sequence[EventDraft],
    *,
    batch: bool = True,
    look_up_keys: bool = True,
    default_plan: str | None = None,
) -> list[EmittedEvent]:
    """Emit registered custom events in the principal's environment, in order, all in this
    unit of work: every item is checked before anything is stated, so one bad item refuses
    the whole batch (BAD_USER_INPUT naming its index and path) and nothing is written.

    An idempotency key already used answers its first event (``replayed``); a key repeated
    within ``drafts`` answers the first item that carried it. ``batch=False``: a single emit,
    whose errors name no index. ``look_up_keys=False`` skips reading the used keys: a key
    already used then fails the commit on the unique key (IntegrityError). Use
    ``emit_events_once``, which relies on that, to also settle a concurrent emit with the
    same key."""
    checked: list[tuple[str, str | None]] = []
    for index, draft in enumerate(drafts):
        try:
            checked.append(
                (_custom_event_type(draft.type), _idempotency_key(draft.idempotency_key))
            )
        except BadUserInput as error:
            raise _item_error(None if not batch else index, error) from None
    types = {type for type, _key in checked}
    keys = {key for _type, key in checked if key is not None}
    registered = await _registered_types(uow, tenant_id, types)
    replays: dict[str, StatedEvent | Event] = {}
    if keys and look_up_keys:
        found_events = await uow.session.scalars(
            _USED_KEYS,
            {
                "tenant_id": tenant_id,
                "environment": uow.principal.environment,
                "keys": list(keys),
            },
        )
        replays = {event.idempotency_key: event for event in found_events if event.idempotency_key}

    # Check every item before stating any event: a refusal leaves the unit of work clean.
    planned: list[tuple[str, str | None, dict[str, Any]] | None] = []
    pending: set[str] = set()
    for index, (draft, (type, key)) in enumerate(zip(drafts, checked, strict=True)):
        try:
            row = registered.get(type)
            if row is None:
                raise BadUserInput(
                    f"type: '{type}' is not registered in this tenant; registerEventType first",
                    field="type",
                )
            if key is not None and (key in replays or key in pending):
                planned.append(None)  # answered by the key's first event
                continue
            payload = _json_document(draft.data, "data")
            violation = _schema_violation(_validator(row), payload)
            if violation is not None:
                raise violation
        except BadUserInput as error:
            raise _item_error(None if not batch else index, error) from None
        if key is not None:
            pending.add(key)
        planned.append((type, key, payload))

    emitted: list[EmittedEvent] = []
    for plan, (_type, key) in zip(planned, checked, strict=True):
        if plan is None:
            assert key is not None
            emitted.append(EmittedEvent(replays[key], replayed=True))
            continue
        type, key, payload = plan
        event = uow.emit(type, tenant_id=tenant_id, data=payload, idempotency_key=key)
        if key is not None:
            replays[key] = event
        emitted.append(EmittedEvent(event, replayed=False))
    stated = sum(not item.replayed for item in emitted)
    if stated:
        # One record per call (not per event), no event of its own: the events are the news.
        record = [
            usage.usage_row(tenant_id, uow.principal.environment, EVENTS_METER, Decimal(stated))
        ]
        limited = quotas.remembered_limited_meters(tenant_id, default_plan)
        if limited is None:
            # (uow.session makes the unit of work's session: only when the cache is cold)
            limited = await quotas.limited_meters(uow.session, tenant_id, default_plan)
        if EVENTS_METER in limited:
            # The thresholds are checked against the period's sum, this record included.
            await uow.insert_usage(record)
            await quotas.after_change(
                uow, tenant_id, uow.principal.environment, EVENTS_METER, default_plan=default_plan
            )
        else:
            # Written with the commit: on PostgreSQL in the one statement that appends the
            # events, so the tenant's head row is not held across a round trip (uow).
            uow.record_usage(record)
    return emitted


async def emit_event(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    type: str,
    data: Any,
    idempotency_key: str | None = None,
    default_plan: str | None = None,
) -> EmittedEvent:
    """Emit one registered custom event (``emit_events`` with one item)."""
    [emitted] = await emit_events(
        uow,
        tenant_id,
        [EventDraft(type, data, idempotency_key)],
        batch=False,
        default_plan=default_plan,
    )
    return emitted


async def emit_events_once(
    open_unit_of_work: Callable[[], UnitOfWork],
    tenant_id: str,
    drafts: Sequence[EventDraft],
    *,
    batch: bool = True,
    default_plan: str | None = None,
) -> list[EmittedEvent]:
    """``emit_events`` in a unit of work of its own.

    The first attempt does not look its keys up: most keys are new, and the unique key on
    (tenant, environment, key) refuses the commit of one that is not. A refused attempt runs
    again looking the keys up and answers the first events (so does an emit that raced
    another with the same key: only one of them commits, the other runs again and answers
    the event that won)."""
    for attempt in range(3):
        try:
            async with open_unit_of_work() as uow:
                return await emit_events(
                    uow,
                    tenant_id,
                    drafts,
                    batch=batch,
                    look_up_keys=attempt > 0,
                    default_plan=default_plan,
                )
        except IntegrityError:
            if not any(draft.idempotency_key is not None for draft in drafts):
                raise
    raise Conflict(
        "idempotencyKey: a concurrent emit with this key did not settle; retry",
        field="idempotencyKey",
    )


async def emit_once(
    open_unit_of_work: Callable[[], UnitOfWork],
    tenant_id: str,
    *,
    type: str,
    data: Any,
    idempotency_key: str | None = None,
    default_plan: str | None = None,
) -> EmittedEvent:
    """``emit_event`` in a unit of work of its own (``emit_events_once`` with one item)."""
    [emitted] = await emit_events_once(
        open_unit_of_work,
        tenant_id,
        [EventDraft(type, data, idempotency_key)],
        batch=False,
        default_plan=default_plan,
    )
    return emitted
