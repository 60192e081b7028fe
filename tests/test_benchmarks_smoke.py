"""Smoke test of benchmarks/run.py at a tiny size: the three engines run and agree.

No timing is asserted: the numbers of a 2,000-notification run on a busy test machine mean
nothing. DuckDB and Polars are the benchmark's own dependencies (the ``bench`` extra); the
test is skipped when either is missing.
"""

from __future__ import annotations

import pytest

pytest.importorskip("duckdb", reason="duckdb is not installed (pip install -e '.[bench]')")
pytest.importorskip("polars", reason="polars is not installed (pip install -e '.[bench]')")

from benchmarks import run as bench  # noqa: E402


def _run(tmp_path, layout: str, events: int = 2000) -> dict:
    out = bench.main(["--events", str(events), "--layout", layout, "--repeat", "1",
                      "--files", "3", "--data", str(tmp_path / "data")])
    (result,) = out["results"]
    assert result["agreement"]["agree"], result["agreement"]["problems"]
    assert out["exit"] == 0
    return result


def test_sns_gz_three_engines_agree(tmp_path, capsys):
    result = _run(tmp_path, "sns_gz")
    check, manifest = result["agreement"], result["manifest"]
    assert check["compared"] == ["duckdb", "polars"]
    assert check["rows"]["messages"] == manifest["messages"] == 2000 - manifest["duplicates"]
    assert manifest["duplicates"] > 0 and check["rows"]["sender_stats"] > 0
    for engine in ("sesbeam", "duckdb", "polars"):
        row = result["engines"][engine]
        assert row["wall_s"] > 0 and row["peak_rss"] > 0 and row["events_per_s"] > 0
    printed = capsys.readouterr().out
    assert "events/s" in printed and "agreement: sesbeam = duckdb = polars" in printed
    # the data set is reused by the next run with the same parameters
    again = bench.dataset(str(tmp_path / "data"), "sns_gz", 2000, files=3, seed=0,
                          duplicate_rate=0.03, log=lambda _: None)
    assert again["generated_s"] is None
    assert {k: v for k, v in again["manifest"].items() if k != "files"} == manifest


@pytest.mark.slow
def test_lambda_three_engines_agree(tmp_path):
    result = _run(tmp_path, "lambda")
    assert result["agreement"]["compared"] == ["duckdb", "polars"]


@pytest.mark.slow
def test_firehose_duckdb_agrees_polars_skipped(tmp_path):
    result = _run(tmp_path, "firehose")
    assert result["agreement"]["compared"] == ["duckdb"]
    assert "not supported" in result["engines"]["polars"]["skipped"]


def test_disagreement_is_reported(tmp_path):
    """The comparison names the table, column, row count and examples of a difference."""
    import pyarrow as pa

    ref = pa.table({"message_id": ["a", "b"], "subject": ["x", "y"]})
    other = pa.table({"message_id": ["a", "b"], "subject": ["x", "z"]})
    (problem,) = bench.diff_tables(ref, other, "messages")
    assert problem.startswith("messages.subject: 1 of 2 rows differ") and "'z'" in problem
    assert bench.diff_tables(ref, ref, "messages") == []
    shorter = bench.diff_tables(ref, ref.slice(0, 1), "messages")
    assert "2 rows vs 1" in shorter[0] and "('b',)" in shorter[0]


FROM_HEADERS = [
    '"Doe, John" <john@Example.COM>', "Norton I., Emperor <emperor@sf.example.org>",
    "=?UTF-8?B?WsO2ZQ==?= <zoe@mail.example.de.>", "The Service <The Service <svc@x.example>>",
    "bob@example.net (Bob), carol@example.org", "  plain@Example.IO.  ", "no address here",
    "<>", '"quoted@example.com"', "cut@example.com>", "Open <open@example.com", "",
    "\tTabbed <t@Tab.Example>\t", "a@b@c.example", "Trailing <x@dots.example..>",
]


def test_sender_domain_rules_match_sesbeam():
    """The SQL and DataFrame versions of address_of/domain_of give sesbeam's results."""
    import duckdb
    import polars as pl

    from benchmarks import engine_duckdb, engine_polars
    from sesbeam.transforms.normalize import address_of, domain_of

    expected = [(address_of(v), domain_of(address_of(v))) for v in FROM_HEADERS]
    con = duckdb.connect()
    con.execute(engine_duckdb.MACROS)
    got = con.execute("SELECT address_of(v), domain_of(address_of(v)) FROM "
                      "unnest(?) WITH ORDINALITY AS t(v, i) ORDER BY i",
                      [FROM_HEADERS]).fetchall()
    assert got == expected
    df = pl.DataFrame({"v": FROM_HEADERS}).select(
        a=engine_polars.address_of(pl, pl.col("v"))).with_columns(
        d=engine_polars.domain_of(pl, pl.col("a")))
    assert list(zip(df["a"], df["d"])) == expected
