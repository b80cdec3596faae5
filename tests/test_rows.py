"""``coregraph.rows``: columns read by position answer what reading them by name answers, for
every result shape a statement can give (columns in another order, a join, a missing or
ambiguous column) and for objects that are not rows at all."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text

from coregraph.rows import Columns, column_of


@pytest.fixture(scope="module")
def connection():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE a (id TEXT, name TEXT, size INTEGER)"))
        conn.execute(text("CREATE TABLE b (id TEXT, a_id TEXT, name TEXT)"))
        conn.execute(text("INSERT INTO a VALUES ('a1', 'one', 1), ('a2', 'two', 2)"))
        conn.execute(text("INSERT INTO b VALUES ('b1', 'a1', 'bee')"))
        yield conn
    engine.dispose()


def test_columns_read_by_position_what_attributes_read(connection) -> None:  # type: ignore[no-untyped-def]
    read = Columns("name", "id")
    shapes = [
        "SELECT id, name, size FROM a ORDER BY id",
        "SELECT size, name, id FROM a ORDER BY id",  # another order: other positions
        "SELECT name, id FROM a ORDER BY id",
    ]
    for _ in range(2):  # the second time from the remembered shapes
        for statement in shapes:
            rows = connection.execute(text(statement)).all()
            assert [read(row) for row in rows] == [(row.name, row.id) for row in rows]
            assert [read(row) for row in rows] == [("one", "a1"), ("two", "a2")]
            assert column_of(rows, "size" if "size" in statement else "id") == [
                getattr(row, "size" if "size" in statement else "id") for row in rows
            ]


def _by_name(row, names):  # type: ignore[no-untyped-def]
    try:
        return tuple(getattr(row, name) for name in names)
    except Exception as exc:
        return type(exc)


def _by_position(row, names):  # type: ignore[no-untyped-def]
    try:
        return Columns(*names)(row)
    except Exception as exc:
        return type(exc)


def test_a_missing_or_ambiguous_column_answers_as_the_attribute_does(connection) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import column, select, table

    a = table("a", column("id"), column("name"))
    b = table("b", column("id"), column("a_id"), column("name"))
    results = [
        connection.execute(text("SELECT id, name FROM a")).all(),
        # Two columns named "name", in text and in a Core join (where SQLAlchemy refuses).
        connection.execute(
            text("SELECT a.id, a.name, b.name FROM a JOIN b ON b.a_id = a.id")
        ).all(),
        connection.execute(
            select(a.c.id, a.c.name, b.c.name).join_from(a, b, a.c.id == b.c.a_id)
        ).all(),
    ]
    for rows in results:
        for names in (("id", "size"), ("id", "name"), ("name", "id")):
            assert _by_position(rows[0], names) == _by_name(rows[0], names)
    assert _by_position(results[0][0], ("id", "size")) is AttributeError


def test_objects_that_are_not_rows_are_read_by_attribute() -> None:
    objects = [SimpleNamespace(id="x1", name="x"), SimpleNamespace(id="y1", name="y")]
    assert [Columns("id", "name")(o) for o in objects] == [("x1", "x"), ("y1", "y")]
    assert column_of(objects, "name") == ["x", "y"]
    assert column_of([], "name") == []


def test_many_result_shapes_do_not_grow_the_memory_of_a_reader(connection) -> None:  # type: ignore[no-untyped-def]
    read = Columns("id", "name")
    for index in range(200):
        # A distinct statement each time: a result shape of its own.
        row = connection.execute(text(f"SELECT id, name, {index} AS n FROM a")).first()
        assert read(row) == ("a1", "one") or read(row) == ("a2", "two")
    assert len(read._by_shape) <= 64
