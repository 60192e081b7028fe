"""SQL that puts warehouse tables over a batch output, generated from the Arrow schemas.

``sesbeam ddl OUT --dialect athena|bigquery|duckdb|snowflake`` prints, for each table in
``sesbeam.schemas.TABLES``, a statement creating an external table (a view for DuckDB) over
``OUT/<table>/`` with every column of the schema, its type in that dialect, its doc as a
comment, and the ``date`` Hive partition of the partitioned tables:

- **athena**: ``CREATE EXTERNAL TABLE ... PARTITIONED BY (date string) STORED AS PARQUET`` with
  partition projection (new days are visible without ``MSCK REPAIR TABLE``);
- **bigquery**: ``CREATE OR REPLACE EXTERNAL TABLE ... WITH PARTITION COLUMNS (date DATE)``
  (``gs://`` output, or ``s3://`` through a BigQuery Omni connection);
- **duckdb**: ``CREATE OR REPLACE VIEW ... AS SELECT ... FROM read_parquet(...)``;
- **snowflake**: a stage on ``OUT`` and ``CREATE OR REPLACE EXTERNAL TABLE ... PARTITION BY
  (date)``, the partition parsed from ``METADATA$FILENAME``.
"""

from __future__ import annotations

import logging
from typing import Callable

import pyarrow as pa

from sesbeam.schemas import PARTITION_COLUMN, SCHEMA_VERSION, TABLES

__all__ = ["DIALECTS", "column_type", "ddl", "inspect_output"]

_LOG = logging.getLogger(__name__)

DIALECTS = ("athena", "bigquery", "duckdb", "snowflake")
#: First day of Athena's partition projection when the output cannot be listed.
_DEFAULT_FIRST_DATE = "2020-01-01"


# -- types ------------------------------------------------------------------------------------

_SCALARS = {
    #            athena      bigquery     duckdb                      snowflake
    "string": ("string", "STRING", "VARCHAR", "VARCHAR"),
    "int64": ("bigint", "INT64", "BIGINT", "NUMBER(19, 0)"),
    "int32": ("int", "INT64", "INTEGER", "NUMBER(10, 0)"),
    "bool": ("boolean", "BOOL", "BOOLEAN", "BOOLEAN"),
    "binary": ("binary", "BYTES", "BLOB", "BINARY"),
    "timestamp": ("timestamp", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP_TZ"),
    "date": ("string", "DATE", "DATE", "DATE"),
}


def _scalar_key(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_int64(t):
        return "int64"
    if pa.types.is_int32(t) or pa.types.is_int16(t) or pa.types.is_int8(t):
        return "int32"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_timestamp(t):
        if t.tz is None or t.tz.upper() not in ("UTC", "+00:00", "ETC/UTC"):
            raise ValueError(f"only UTC timestamps are mapped, not {t}")
        return "timestamp"
    raise ValueError(f"no SQL mapping for Arrow type {t}")


def column_type(dialect: str, t: pa.DataType) -> str:
    """The column type of Arrow type ``t`` in ``dialect``."""
    i = DIALECTS.index(dialect)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = column_type(dialect, t.value_type)
        return {"athena": f"array<{inner}>", "bigquery": f"ARRAY<{inner}>",
                "duckdb": f"{inner}[]", "snowflake": "ARRAY"}[dialect]
    return _SCALARS[_scalar_key(t)][i]


# -- quoting ----------------------------------------------------------------------------------

def _sq(text: str) -> str:
    """A standard SQL string literal (quotes doubled): DuckDB, Snowflake, paths."""
    return "'" + text.replace("'", "''") + "'"


def _hive_str(text: str) -> str:
    """A Hive (Athena DDL) string literal: backslash escapes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bq_str(text: str) -> str:
    """A GoogleSQL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _doc(field_or_schema) -> str:
    meta = field_or_schema.metadata or {}
    return " ".join(meta.get(b"doc", b"").decode().split())


def _partition_doc(table: str) -> str:
    column = TABLES[table][1]
    return f"YYYY-MM-DD (UTC) of {column}; the date=... directory of the file."


# -- listing ----------------------------------------------------------------------------------

def inspect_output(output: str) -> dict:
    """What ``output`` holds: ``{"present": {table: has files}, "first_date": "YYYY-MM-DD"}``.

    Raises when the output cannot be listed (no credentials, no such bucket...).
    """
    from sesbeam.transforms._storage import Storage

    storage = Storage()
    output = output.rstrip("/")
    present, dates = {}, []
    for table, (_, column) in TABLES.items():
        paths = [p for p, _, _ in storage.list(f"{output}/{table}/**")
                 if p.endswith(".parquet")]
        present[table] = bool(paths)
        if column:
            key = f"/{PARTITION_COLUMN}="
            dates += [p.split(key, 1)[1][:10] for p in paths if key in p]
    return {"present": present, "first_date": min(dates) if dates else None}


# -- dialects ---------------------------------------------------------------------------------

def _athena(output: str, database: str | None, ctx: dict) -> list[str]:
    db = database or "sesbeam"
    first = ctx.get("first_date") or _DEFAULT_FIRST_DATE
    out = [f"CREATE DATABASE IF NOT EXISTS `{db}`;"]
    if not output.startswith("s3://"):
        out.insert(0, f"-- Athena reads s3:// locations only; {output} is not one.")
    for table, (schema, column) in TABLES.items():
        cols = ",\n".join(f"  `{f.name}` {column_type('athena', f.type)} "
                          f"COMMENT {_hive_str(_doc(f))}" for f in schema)
        location = f"{output}/{table}/"
        stmt = [f"CREATE EXTERNAL TABLE IF NOT EXISTS `{db}`.`{table}` (", cols, ")",
                f"COMMENT {_hive_str(_doc(schema))}"]
        props = [("classification", "parquet"), ("sesbeam.schema_version", SCHEMA_VERSION)]
        if column:
            stmt.append(f"PARTITIONED BY (`{PARTITION_COLUMN}` string COMMENT "
                        f"{_hive_str(_partition_doc(table))})")
            p = f"projection.{PARTITION_COLUMN}"
            props += [("projection.enabled", "true"), (f"{p}.type", "date"),
                      (f"{p}.format", "yyyy-MM-dd"), (f"{p}.range", f"{first},NOW"),
                      (f"{p}.interval", "1"), (f"{p}.interval.unit", "DAYS"),
                      ("storage.location.template",
                       f"{location}{PARTITION_COLUMN}=${{{PARTITION_COLUMN}}}/")]
        stmt += ["STORED AS PARQUET", f"LOCATION {_hive_str(location)}", "TBLPROPERTIES (\n"
                 + ",\n".join(f"  {_hive_str(k)} = {_hive_str(v)}" for k, v in props) + "\n);"]
        out.append("\n".join(stmt))
    out.append("-- Partitions are projected from the date=YYYY-MM-DD folders: no MSCK REPAIR "
               "TABLE needed.\n-- Quote the partition column in queries: "
               f"WHERE \"{PARTITION_COLUMN}\" >= '2024-03-01'.")
    return out


def _bigquery(output: str, database: str | None, ctx: dict) -> list[str]:
    ds = database or "sesbeam"
    connection = ctx.get("connection")
    out = [f"CREATE SCHEMA IF NOT EXISTS `{ds}`;"]
    if not output.startswith("gs://") and not connection:
        out.insert(0, f"-- {output} is not in Cloud Storage: BigQuery reads s3:// through a "
                      "BigQuery Omni connection (sesbeam ddl --connection REGION.NAME).")
    for table, (schema, column) in TABLES.items():
        cols = ",\n".join(f"  `{f.name}` {column_type('bigquery', f.type)} "
                          f"OPTIONS (description = {_bq_str(_doc(f))})" for f in schema)
        stmt = [f"CREATE OR REPLACE EXTERNAL TABLE `{ds}.{table}` (", cols, ")"]
        if column:
            stmt.append(f"WITH PARTITION COLUMNS (`{PARTITION_COLUMN}` DATE)")
        if connection:
            stmt.append(f"WITH CONNECTION `{connection}`")
        options = [("format", _bq_str("PARQUET")),
                   ("uris", f"[{_bq_str(f'{output}/{table}/*')}]"),
                   ("enable_list_inference", "TRUE")]
        if column:
            options += [("hive_partition_uri_prefix", _bq_str(f"{output}/{table}")),
                        ("require_hive_partition_filter", "FALSE")]
        options.append(("description", _bq_str(f"{_doc(schema)} sesbeam schema "
                                               f"{SCHEMA_VERSION}.")))
        stmt.append("OPTIONS (\n" + ",\n".join(f"  {k} = {v}" for k, v in options) + "\n);")
        out.append("\n".join(stmt))
    return out


def _duckdb(output: str, database: str | None, ctx: dict) -> list[str]:
    present = ctx.get("present") or {}
    prefix = f'"{database}".' if database else ""
    out = []
    if "://" in output:
        out.append("-- Remote output: INSTALL httpfs; LOAD httpfs; and a secret, e.g.\n"
                   "-- CREATE SECRET (TYPE s3, PROVIDER credential_chain);")
    if database:
        out.append(f'CREATE SCHEMA IF NOT EXISTS "{database}";')
    for table, (schema, column) in TABLES.items():
        name = f'{prefix}"{table}"'
        cols = [f'  CAST("{f.name}" AS {column_type("duckdb", f.type)}) AS "{f.name}"'
                for f in schema]
        if column:
            cols.append(f'  "{PARTITION_COLUMN}"')
        if present.get(table, True):
            glob = f"{output}/{table}/{PARTITION_COLUMN}=*/*.parquet" if column else \
                f"{output}/{table}/*.parquet"
            opts = "union_by_name = true"
            if column:
                opts = f"hive_partitioning = true, hive_types = {{'{PARTITION_COLUMN}': DATE}}, " \
                       + opts
            source = f"FROM read_parquet({_sq(glob)}, {opts})"
        else:
            # No file yet (a run without dead letters writes none): an empty view of the
            # same shape, so queries work; rerun `sesbeam ddl` once files exist.
            cols = [f'  CAST(NULL AS {column_type("duckdb", f.type)}) AS "{f.name}"'
                    for f in schema]
            if column:
                cols.append(f'  CAST(NULL AS DATE) AS "{PARTITION_COLUMN}"')
            source = "WHERE false"
            out.append(f"-- {output}/{table}/ has no Parquet file yet: an empty view.")
        out.append(f"CREATE OR REPLACE VIEW {name} AS\nSELECT\n" + ",\n".join(cols)
                   + f"\n{source};")
        out.append(f"COMMENT ON VIEW {name} IS {_sq(_doc(schema))};")
        out.append("\n".join(f'COMMENT ON COLUMN {name}."{f.name}" IS {_sq(_doc(f))};'
                             for f in schema))
    return out


def _snowflake(output: str, database: str | None, ctx: dict) -> list[str]:
    schema_name = database or "sesbeam"
    stage = f"{schema_name}.{ctx.get('stage') or 'sesbeam_output'}"
    file_format = "(TYPE = PARQUET USE_LOGICAL_TYPE = TRUE)"
    out = [f"CREATE SCHEMA IF NOT EXISTS {schema_name};",
           f"CREATE STAGE IF NOT EXISTS {stage}\n  URL = {_sq(output + '/')}\n"
           "  -- STORAGE_INTEGRATION = <your storage integration>\n"
           f"  FILE_FORMAT = {file_format};"]
    for table, (schema, column) in TABLES.items():
        cols = []
        if column:
            cols.append(f"  {PARTITION_COLUMN} DATE AS (TO_DATE(SPLIT_PART(SPLIT_PART("
                        f"METADATA$FILENAME, '{PARTITION_COLUMN}=', 2), '/', 1), 'YYYY-MM-DD')) "
                        f"COMMENT {_sq(_partition_doc(table))}")
        for f in schema:
            t = column_type("snowflake", f.type)
            cols.append(f"  {f.name} {t} AS (VALUE:{f.name}::{t}) COMMENT {_sq(_doc(f))}")
        stmt = [f"CREATE OR REPLACE EXTERNAL TABLE {schema_name}.{table} (", ",\n".join(cols),
                ")"]
        if column:
            stmt.append(f"PARTITION BY ({PARTITION_COLUMN})")
        stmt += [f"LOCATION = @{stage}/{table}/", f"FILE_FORMAT = {file_format}",
                 "PATTERN = '.*[.]parquet'", "AUTO_REFRESH = FALSE",
                 f"COMMENT = {_sq(f'{_doc(schema)} sesbeam schema {SCHEMA_VERSION}.')};"]
        out.append("\n".join(stmt))
        out.append(f"ALTER EXTERNAL TABLE {schema_name}.{table} REFRESH;")
    out.append("-- After each batch run: ALTER EXTERNAL TABLE ... REFRESH (or AUTO_REFRESH with "
               "S3 event notifications).")
    return out


_GENERATORS: dict[str, Callable[[str, str | None, dict], list[str]]] = {
    "athena": _athena, "bigquery": _bigquery, "duckdb": _duckdb, "snowflake": _snowflake}


def ddl(output: str, dialect: str, *, database: str | None = None,
        present: dict[str, bool] | None = None, first_date: str | None = None,
        connection: str | None = None, stage: str | None = None) -> str:
    """The statements creating the tables over ``output`` in ``dialect``.

    ``database``: Athena database, BigQuery dataset, Snowflake or DuckDB schema (default
    ``sesbeam``; DuckDB: the current schema). ``present``: which tables have files (DuckDB
    makes an empty view for the others); ``first_date``: first day of Athena's partition
    projection (both from ``inspect_output``). ``connection``: BigQuery Omni connection for
    ``s3://`` output; ``stage``: Snowflake stage name (default ``sesbeam_output``).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; use one of {', '.join(DIALECTS)}")
    output = output.rstrip("/")
    ctx = {"present": present, "first_date": first_date, "connection": connection,
           "stage": stage}
    head = (f"-- sesbeam tables over {output} ({dialect}), schema version {SCHEMA_VERSION}.\n"
            f"-- Generated by `sesbeam ddl` from the Arrow schemas; rerun it after upgrades.")
    return "\n\n".join([head] + _GENERATORS[dialect](output, database, ctx)) + "\n"
