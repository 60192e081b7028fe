"""The schemas are the contract: documented, versioned, and the README cannot drift."""

from __future__ import annotations

from sesbeam.schemas import README_END, README_START, TABLES, readme_tables
from tests.conftest import REPO


def test_every_field_is_documented():
    for name, (schema, partition) in TABLES.items():
        assert schema.metadata[b"doc"], name
        for field in schema:
            assert field.metadata and field.metadata[b"doc"].strip(), f"{name}.{field.name}"
        assert partition is None or partition in schema.names


def test_readme_table_reference_is_generated_from_schemas():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert section == "\n" + readme_tables(), (
        "README table reference is stale: run `python -m sesbeam.schemas --update README.md`")
