"""``sesbeam ddl``: warehouse DDL generated from the Arrow schemas; DuckDB run for real."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import duckdb
import pyarrow as pa
import pytest

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import run_batch
from sesbeam.pipeline.cli import main
from sesbeam.pipeline.ddl import DIALECTS, column_type, ddl, inspect_output
from sesbeam.pipeline.report import read_table
from sesbeam.schemas import PARTITION_COLUMN, SCHEMA_VERSION, TABLES

#: DuckDB's DESCRIBE names of the types the views must expose.
DUCKDB_DESCRIBE = {"VARCHAR": "VARCHAR", "BIGINT": "BIGINT", "INTEGER": "INTEGER",
                   "BOOLEAN": "BOOLEAN", "BLOB": "BLOB",
                   "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE", "VARCHAR[]": "VARCHAR[]"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddl")
    generate_archive(str(root / "archive"), events=1000, seed=5, bad_records=4)
    out = root / "out"
    summary = run_batch(["--input", str(root / "archive"), "--output", str(out)])
    return out, summary


def _duckdb(sql: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(sql)
    return con


def test_duckdb_views_have_the_schema_types_and_the_data(run):
    out, summary = run
    con = _duckdb(ddl(str(out), "duckdb", **inspect_output(str(out))))
    for table, (schema, partition) in TABLES.items():
        described = con.execute(f'DESCRIBE "{table}"').fetchall()
        names = [r[0] for r in described]
        expected = schema.names + ([PARTITION_COLUMN] if partition else [])
        assert names == expected, table
        types = {r[0]: r[1] for r in described}
        for field in schema:
            assert types[field.name] == DUCKDB_DESCRIBE[column_type("duckdb", field.type)], \
                (table, field.name)
        if partition:
            assert types[PARTITION_COLUMN] == "DATE"
        rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        assert rows == summary["tables"][table]["rows"], table
    assert con.execute("SELECT count(DISTINCT message_id) FROM messages").fetchone()[0] == \
        summary["messages"]
    kinds = dict(con.execute("SELECT kind, count(*) FROM dead_letters GROUP BY ALL").fetchall())
    assert kinds == summary["dead_letter_kinds"]


def test_duckdb_partition_column_matches_the_rows(run):
    out, _ = run
    con = _duckdb(ddl(str(out), "duckdb"))
    # Every row sits in the partition of its UTC day, and filtering on it prunes correctly.
    assert con.execute("SELECT count(*) FROM messages WHERE "
                       "CAST(timezone('UTC', event_time) AS DATE) <> date").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM sender_stats WHERE "
                       "CAST(timezone('UTC', window_start) AS DATE) <> date").fetchone()[0] == 0
    per_day = Counter(r["event_time"].date() for r in
                      read_table(str(out), "messages", ["event_time"]).to_pylist())
    day = date(2024, 3, 2)
    n = con.execute("SELECT count(*) FROM messages WHERE date = DATE '2024-03-02'").fetchone()[0]
    assert n == per_day[day] > 0
    # The same answers as the statistics tables: sums over views agree (verdict_stats
    # leaves WorkMail messages out, sender_stats does not).
    by_domain = con.execute("SELECT sum(messages) FROM sender_stats").fetchone()[0]
    assert by_domain == con.execute("SELECT count(*) FROM messages").fetchone()[0]
    receipts = con.execute("SELECT count(*) FROM messages WHERE envelope <> 'workmail'"
                           ).fetchone()[0]
    spam = con.execute("SELECT sum(messages) FROM verdict_stats WHERE verdict = 'spam'"
                       ).fetchone()[0]
    assert spam == receipts
    recipients = con.execute("SELECT recipients FROM messages WHERE len(recipients) > 1 LIMIT 1"
                             ).fetchone()[0]
    assert isinstance(recipients, list) and all(isinstance(r, str) for r in recipients)


def test_duckdb_comments_come_from_the_schema_docs(run):
    out, _ = run
    con = _duckdb(ddl(str(out), "duckdb"))
    doc = TABLES["messages"][0].field("event_time").metadata[b"doc"].decode()
    got = con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'messages' "
                      "AND column_name = 'event_time'").fetchone()[0]
    assert got == " ".join(doc.split()) and "'" in got  # quotes survive the quoting
    views = dict(con.execute("SELECT view_name, comment FROM duckdb_views() "
                             "WHERE NOT internal").fetchall())
    assert set(views) == set(TABLES) and all(views.values())


def test_duckdb_schema_and_missing_tables(run, tmp_path):
    out, _ = run
    # An output without dead letters has no dead_letters/ folder: an empty, typed view.
    con = _duckdb(ddl(str(out), "duckdb", database="ses",
                      present={**{t: True for t in TABLES}, "dead_letters": False}))
    assert con.execute("SELECT count(*) FROM ses.dead_letters").fetchone()[0] == 0
    types = {r[0]: r[1] for r in con.execute("DESCRIBE ses.dead_letters").fetchall()}
    assert types["raw"] == "BLOB" and types["offset"] == "BIGINT"
    assert con.execute("SELECT count(*) FROM ses.messages").fetchone()[0] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    info = inspect_output(str(empty))
    assert info == {"present": {t: False for t in TABLES}, "first_date": None}
    con = _duckdb(ddl(str(empty), "duckdb", **info))
    for table in TABLES:
        assert con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == 0


def test_cli_ddl_duckdb_runs(run, capsys):
    out, summary = run
    assert main(["ddl", str(out), "--dialect", "duckdb"]) == 0
    sql = capsys.readouterr().out
    con = _duckdb(sql)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == summary["messages"]
    with pytest.raises(SystemExit):
        main(["ddl", str(out), "--dialect", "oracle"])


def test_inspect_finds_the_first_day(run):
    out, _ = run
    info = inspect_output(str(out))
    assert info["present"] == {t: True for t in TABLES}
    assert info["first_date"] == "2024-03-01"


# -- the other dialects: generated text ----------------------------------------------------

def _statement(sql: str, table: str) -> str:
    """The CREATE statement of ``table`` (up to its terminating semicolon)."""
    m = re.search(rf"CREATE (?:OR REPLACE )?(?:EXTERNAL TABLE|VIEW)[^\n]*\b{table}\b.*?;\n",
                  sql, re.S)
    assert m, table
    return m.group(0)


@pytest.mark.parametrize("dialect", ["athena", "bigquery", "snowflake"])
def test_every_column_with_its_type(dialect):
    sql = ddl("s3://lake/ses/", dialect, first_date="2024-03-01")
    assert sql.startswith(f"-- sesbeam tables over s3://lake/ses ({dialect})")
    assert SCHEMA_VERSION in sql
    for table, (schema, partition) in TABLES.items():
        stmt = _statement(sql, table)
        for field in schema:
            t = column_type(dialect, field.type)
            name = {"athena": f"`{field.name}`", "bigquery": f"`{field.name}`",
                    "snowflake": field.name}[dialect]
            assert re.search(rf"^  {re.escape(name)} {re.escape(t)}( |$|,)", stmt, re.M), \
                (table, field.name)
        has_partition = {"athena": "PARTITIONED BY (`date` string",
                         "bigquery": "WITH PARTITION COLUMNS (`date` DATE)",
                         "snowflake": "PARTITION BY (date)"}[dialect]
        assert (has_partition in stmt) == bool(partition), table


def test_athena_partition_projection():
    sql = ddl("s3://lake/ses", "athena", database="mail", first_date="2024-02-27")
    stmt = _statement(sql, "sender_stats")
    assert "CREATE EXTERNAL TABLE IF NOT EXISTS `mail`.`sender_stats`" in stmt
    assert "STORED AS PARQUET" in stmt and "LOCATION 's3://lake/ses/sender_stats/'" in stmt
    assert "'projection.enabled' = 'true'" in stmt
    assert "'projection.date.range' = '2024-02-27,NOW'" in stmt
    assert "'projection.date.format' = 'yyyy-MM-dd'" in stmt
    assert "'storage.location.template' = 's3://lake/ses/sender_stats/date=${date}/'" in stmt
    dead = _statement(sql, "dead_letters")
    assert "PARTITIONED BY" not in dead and "projection" not in dead
    assert "`raw` binary" in dead and "`offset` bigint" in dead
    # Hive string literals escape quotes with a backslash.
    assert "wrapper\\'s time" in _statement(sql, "messages")
    assert "not one" not in sql  # s3:// needs no warning
    assert "Athena reads s3:// locations only" in ddl("/tmp/out", "athena")


def test_bigquery_external_tables():
    sql = ddl("gs://lake/ses", "bigquery", database="mail")
    stmt = _statement(sql, "messages")
    assert "CREATE OR REPLACE EXTERNAL TABLE `mail.messages`" in stmt
    assert 'uris = ["gs://lake/ses/messages/*"]' in stmt
    assert 'hive_partition_uri_prefix = "gs://lake/ses/messages"' in stmt
    assert "enable_list_inference = TRUE" in stmt and 'format = "PARQUET"' in stmt
    assert "`recipients` ARRAY<STRING>" in stmt and "`event_time` TIMESTAMP" in stmt
    assert "hive_partition_uri_prefix" not in _statement(sql, "dead_letters")
    assert "Omni" not in sql
    omni = ddl("s3://lake/ses", "bigquery", connection="aws-us-east-1.s3conn")
    assert "WITH CONNECTION `aws-us-east-1.s3conn`" in _statement(omni, "messages")
    assert "Omni" in ddl("s3://lake/ses", "bigquery")


def test_snowflake_external_tables():
    sql = ddl("s3://lake/ses", "snowflake", stage="lake_stage")
    assert "CREATE STAGE IF NOT EXISTS sesbeam.lake_stage\n  URL = 's3://lake/ses/'" in sql
    stmt = _statement(sql, "verdict_stats")
    assert "LOCATION = @sesbeam.lake_stage/verdict_stats/" in stmt
    assert ("date DATE AS (TO_DATE(SPLIT_PART(SPLIT_PART(METADATA$FILENAME, 'date=', 2), '/', "
            "1), 'YYYY-MM-DD'))") in stmt
    assert "window_start TIMESTAMP_TZ AS (VALUE:window_start::TIMESTAMP_TZ)" in stmt
    assert "USE_LOGICAL_TYPE = TRUE" in stmt
    assert "ALTER EXTERNAL TABLE sesbeam.verdict_stats REFRESH;" in sql
    assert "wrapper''s time" in _statement(sql, "messages")


def test_type_mapping():
    ts = pa.timestamp("ms", tz="UTC")
    expected = {
        pa.string(): ("string", "STRING", "VARCHAR", "VARCHAR"),
        pa.int64(): ("bigint", "INT64", "BIGINT", "NUMBER(19, 0)"),
        pa.int32(): ("int", "INT64", "INTEGER", "NUMBER(10, 0)"),
        pa.bool_(): ("boolean", "BOOL", "BOOLEAN", "BOOLEAN"),
        pa.binary(): ("binary", "BYTES", "BLOB", "BINARY"),
        ts: ("timestamp", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP_TZ"),
        pa.list_(pa.string()): ("array<string>", "ARRAY<STRING>", "VARCHAR[]", "ARRAY"),
    }
    for arrow, names in expected.items():
        assert tuple(column_type(d, arrow) for d in DIALECTS) == names, arrow
    used = {f.type for schema, _ in TABLES.values() for f in schema}
    assert used <= set(expected)  # every type the schemas use is mapped
    with pytest.raises(ValueError):
        column_type("duckdb", pa.timestamp("ms"))  # naive timestamps are not ours
    with pytest.raises(ValueError):
        column_type("athena", pa.float64())
    with pytest.raises(ValueError):
        ddl("s3://x", "oracle")
