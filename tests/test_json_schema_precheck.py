"""The precheck that lets valid payloads skip jsonschema must agree with jsonschema on every
schema it accepts to compile: compared here on generated schemas and instances (a fixed seed,
so a failure reproduces)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from coregraph.services.json_schema_precheck import DRAFT_2020_12, compile_precheck

TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"]
WORDS = ["a", "b", "id", "EUR", "", "ü", "x" * 5]


def _schema(rng: random.Random, depth: int = 0) -> Any:
    if rng.random() < 0.08:
        return rng.choice([True, False])
    schema: dict[str, Any] = {}
    if rng.random() < 0.6:
        schema["type"] = (
            rng.choice(TYPES) if rng.random() < 0.7 else rng.sample(TYPES, rng.randint(1, 3))
        )
    if depth < 3 and rng.random() < 0.5:
        names = rng.sample(WORDS[:4], rng.randint(0, 3))
        schema["properties"] = {name: _schema(rng, depth + 1) for name in names}
        if rng.random() < 0.5:
            schema["required"] = rng.sample(WORDS[:4], rng.randint(0, 2))
        if rng.random() < 0.3:
            schema["additionalProperties"] = (
                rng.choice([True, False]) if rng.random() < 0.6 else _schema(rng, depth + 1)
            )
    if depth < 3 and rng.random() < 0.3:
        schema["items"] = _schema(rng, depth + 1)
    for keyword in ("minItems", "maxItems", "minLength", "maxLength"):
        if rng.random() < 0.15:
            schema[keyword] = rng.randint(0, 3)
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if rng.random() < 0.15:
            schema[keyword] = rng.choice([0, 1, -1.5, 2.0, 10])
    if rng.random() < 0.1:
        schema["enum"] = rng.sample(WORDS, rng.randint(1, 3))
    if rng.random() < 0.05:
        schema["const"] = rng.choice(WORDS)
    if rng.random() < 0.1:
        schema["format"] = "email"
    if rng.random() < 0.1:
        schema["description"] = "annotations change nothing"
    return schema


def _instance(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 2, -1, 10, 11, 3])
    if kind == 3:
        return rng.choice([0.0, 1.0, 2.5, -1.5, 2.0, 10.0, 1e300])
    if kind in (4, 5, 6):
        return rng.choice(WORDS)
    if kind == 7:
        return [_instance(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {name: _instance(rng, depth + 1) for name in rng.sample(WORDS, rng.randint(0, 4))}


def test_the_precheck_agrees_with_jsonschema_on_generated_schemas() -> None:
    rng = random.Random(20261202)
    compared = valid = 0
    for _ in range(3000):
        schema = _schema(rng)
        if isinstance(schema, dict) and rng.random() < 0.2:
            schema["$schema"] = DRAFT_2020_12
        precheck = compile_precheck(schema)
        assert precheck is not None, schema
        validator = Draft202012Validator(schema)
        for _ in range(10):
            instance = _instance(rng)
            expected = validator.is_valid(instance)
            assert precheck(instance) == expected, (schema, instance)
            compared += 1
            valid += expected
    # Both answers were well represented.
    assert compared * 0.2 < valid < compared * 0.8


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"prefixItems": [{"type": "string"}], "items": False},
        {"enum": [1, 2]},
        {"const": {"a": 1}},
        {"anyOf": [{"type": "string"}]},
        {"$schema": "http://json-schema.org/draft-07/schema#"},
        {"properties": {"a": {"multipleOf": 2}}},
        {"unknownKeyword": 1},
        {"minLength": -1},
        {"minimum": True},
    ],
)
def test_anything_else_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_precheck(schema) is None
