"""The batch pipeline end to end on local files (FnApiRunner, in process)."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import run_batch
from sesbeam.pipeline.cli import main
from sesbeam.schemas import SCHEMA_VERSION, TABLES
from sesbeam.transforms.write import PLAIN_COLUMNS
from tests.conftest import DATA


def table(out: Path, name: str):
    return ds.dataset(out / name, format="parquet", partitioning="hive").to_table()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hand") / "out"
    summary = run_batch(["--input", str(DATA / "archive"), "--output", str(out)])
    return out, summary


def test_hand_written_archive_summary(hand_run):
    _, s = hand_run
    assert (s["records"], s["messages"], s["duplicates"], s["skipped"], s["dead_letters"]) == \
        (10, 5, 3, 1, 1)
    assert s["skipped_reasons"] == {"sending_event": 1}
    assert s["dead_letter_kinds"] == {"invalid_json": 1}
    assert s["balanced"] and s["sources"] == 3 and s["schema_version"] == SCHEMA_VERSION


def test_hand_written_archive_messages(hand_run):
    out, _ = hand_run
    rows = {r["message_id"]: r for r in table(out, "messages").to_pylist()}
    assert sorted(rows) == ["aaaa0001", "aaaa0002", "aaaa0003", "aaaa0004", "aaaa0005"]
    a = rows["aaaa0001"]
    assert a["recipients"] == ["ops@corp.example", "audit@corp.example"]
    assert a["actions"] == ["Lambda", "SNS"]  # first by source URI: lambda/ sorts before sns/
    assert a["envelope"] == "lambda" and a["notifications"] == 3
    assert a["sender_domain"] == "example.com" and a["header_from"] == "john@Example.COM."
    assert a["date"] == "2024-03-01"
    b = rows["aaaa0002"]
    assert (b["s3_bucket"], b["s3_object_key"]) == ("raw-mail", "inbox/aaaa0002")
    assert b["sender_domain"] == "monitor.example.org" and b["dmarc_verdict"] is None
    assert b["processing_time_ms"] == 100 and b["envelope"] == "raw"  # firehose/ is first
    c = rows["aaaa0003"]
    assert c["sender_domain"] == "phish.example" and c["dmarc_policy"] == "reject"
    assert c["event_time"] == utc("2024-03-01T23:59:59.999")
    assert rows["aaaa0004"]["date"] == "2024-03-02"


def test_hand_written_archive_stats(hand_run):
    out, _ = hand_run
    v = {(r["window_start"].date().isoformat(), r["verdict"], r["status"]): r["messages"]
         for r in table(out, "verdict_stats").to_pylist()}
    assert v[("2024-03-01", "spam", "PASS")] == 2 and v[("2024-03-01", "spam", "FAIL")] == 1
    assert v[("2024-03-01", "dmarc", None)] == 1 and v[("2024-03-01", "dmarc", "FAIL")] == 1
    assert v[("2024-03-02", "dmarc", "GRAY")] == 1 and v[("2024-03-02", "dmarc", "FAIL")] == 1
    assert sum(n for (d, verdict, _), n in v.items() if verdict == "spf") == 5
    s = {(r["window_start"].date().isoformat(), r["sender_domain"]): r
         for r in table(out, "sender_stats").to_pylist()}
    phish = s[("2024-03-01", "phish.example")]
    assert (phish["messages"], phish["spam_fail"], phish["virus_fail"], phish["dmarc_fail"],
            phish["dmarc_fail_reject"]) == (1, 1, 1, 1, 1)
    assert s[("2024-03-01", "example.com")]["recipients"] == 2
    assert s[("2024-03-01", "monitor.example.org")]["spf_gray"] == 1
    shop = s[("2024-03-02", "shop.example")]
    assert (shop["spam_gray"], shop["dmarc_fail_quarantine"]) == (1, 1)
    assert s[("2024-03-01", "example.com")]["window_end"] == utc("2024-03-02T00:00:00")


def test_dead_letter_keeps_exact_bytes(hand_run):
    out, _ = hand_run
    [dl] = table(out, "dead_letters").to_pylist()
    source = (DATA / "archive/sns/2024/03/01/receipts.ndjson").read_bytes()
    assert dl["kind"] == "invalid_json" and len(dl["raw"]) == 150
    assert source[dl["offset"]:dl["offset"] + len(dl["raw"])] == dl["raw"]
    assert dl["source_uri"].endswith("receipts.ndjson")


def test_parquet_files_carry_schema_and_version(hand_run):
    out, _ = hand_run
    for name, (schema, partition) in TABLES.items():
        files = sorted((out / name).rglob("*.parquet"))
        assert files, name
        for f in files:
            meta = pq.read_metadata(f)
            assert meta.metadata[b"sesbeam.schema_version"] == SCHEMA_VERSION.encode()
            assert meta.metadata[b"sesbeam.table"] == name.encode()
            assert pq.read_schema(f).remove_metadata().equals(schema.remove_metadata())
            assert (partition is None) == ("date=" not in str(f))
            encodings = {meta.row_group(0).column(i).path_in_schema:
                         meta.row_group(0).column(i).encodings
                         for i in range(meta.num_columns)} if meta.num_row_groups else {}
            for path, used in encodings.items():  # unique columns skip the dictionary
                if schema.field(path.split(".")[0]).type == "bool":
                    continue  # Parquet has no dictionary for booleans
                assert ("RLE_DICTIONARY" in used) == (path.split(".")[0] not in PLAIN_COLUMNS), \
                    (name, path, used)


def test_duckdb_reads_the_output(hand_run):
    out, _ = hand_run
    con = duckdb.connect()
    n, days = con.execute(
        f"select count(*), count(distinct date) from read_parquet('{out}/messages/**/*.parquet',"
        " hive_partitioning=true)").fetchone()
    assert (n, days) == (5, 2)
    total = con.execute(
        f"select sum(messages) from read_parquet('{out}/sender_stats/**/*.parquet', "
        "hive_partitioning=true)").fetchone()[0]
    assert total == 5


def test_rerun_replaces_output(hand_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(hand_run[0], out)
    before = {p.name for p in out.rglob("*.parquet")}
    summary = run_batch(["--input", str(DATA / "archive"), "--output", str(out)])
    after = {p.name for p in out.rglob("*.parquet")}
    assert not before & after  # every file of the first run is gone
    assert table(out, "messages").num_rows == 5 == summary["messages"]
    assert not (out / "_staging").exists() or not any((out / "_staging").rglob("*.parquet"))


def test_gzip_copies_and_hourly_windows(tmp_path):
    archive = tmp_path / "archive"
    for src in (DATA / "archive").rglob("*"):
        if src.is_file():
            dst = archive / src.relative_to(DATA / "archive")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(gzip.compress(src.read_bytes(), mtime=0))  # same names, gzipped
    out = tmp_path / "out"
    summary = run_batch(["--input", str(archive / "sns"), "--input", str(archive / "lambda"),
                         "--input", str(archive / "firehose") + "/*", "--output", str(out),
                         "--window", "1h"])
    assert (summary["records"], summary["messages"], summary["duplicates"]) == (10, 5, 3)
    starts = {r["window_start"] for r in table(out, "sender_stats").to_pylist()}
    assert utc("2024-03-01T08:00:00") in starts and utc("2024-03-01T23:00:00") in starts
    assert all(r["window_end"] - r["window_start"] == (utc("2024-01-01T01:00:00")
                                                       - utc("2024-01-01T00:00:00"))
               for r in table(out, "verdict_stats").to_pylist())


def test_generated_archive_matches_ground_truth(tmp_path):
    manifest = generate_archive(str(tmp_path / "archive"), events=1500, seed=11, days=3,
                                bad_records=6)
    summary = run_batch(["--input", str(tmp_path / "archive"), "--output", str(tmp_path / "o")])
    for key in ("records", "messages", "duplicates"):
        assert summary[key] == manifest[key], key
    assert summary["skipped_reasons"] == {k: v for k, v in manifest["skipped"].items() if v}
    assert summary["dead_letter_kinds"] == {k: v for k, v in manifest["dead_letters"].items() if v}
    per_day = {}
    for r in table(tmp_path / "o", "messages").select(["date", "envelope"]).to_pylist():
        if r["envelope"] != "workmail":
            per_day[r["date"]] = per_day.get(r["date"], 0) + 1
    assert sum(per_day.values()) == manifest["receipt_messages"]


def test_cli_exit_code_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", "--input", str(DATA / "archive"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "balanced" in printed and "messages" in printed
    assert json.loads((out / "summary.json").read_text())["messages"] == 5
    assert main(["nonsense"]) == 2


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--events", "400", "--days", "2"]) == 0
    printed = capsys.readouterr().out
    assert "matches the generator's ground truth" in printed
    report = (tmp_path / "demo" / "report.txt").read_text()
    assert "Top 10 sender domains" in report and "dmarc" in report
    assert (tmp_path / "demo" / "output" / "summary.json").exists()


def test_a_record_over_max_record_bytes_is_a_too_large_dead_letter(tmp_path):
    """A small notification, one of ~5 KB and a bounce, with a 2 KB limit: the big one is a
    dead letter holding its bytes, the run stays balanced and says which limit it used."""
    from tests.test_decode import notification

    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps(notification("small")).encode(),
             json.dumps({"notificationType": "Received", "padding": "z" * 5000}).encode(),
             b'{"notificationType": "Bounce"}']
    (src / "big.json.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    summary = run_batch(["--input", str(src), "--output", str(tmp_path / "out"),
                         "--max_record_bytes", "2000"])
    assert summary["balanced"] and summary["max_record_bytes"] == 2000
    assert (summary["records"], summary["messages"]) == (3, 1)
    assert summary["dead_letter_kinds"] == {"too_large": 1}
    assert summary["skipped_reasons"] == {"sending_event": 1}
    big, = table(tmp_path / "out", "dead_letters").to_pylist()
    assert big["kind"] == "too_large" and big["raw"] == lines[1]
    assert big["offset"] == len(lines[0]) + 1
    assert f"a record of {len(lines[1])} bytes exceeds the limit of 2000 bytes" in big["detail"]


def test_big_partitions_are_written_in_sorted_row_groups_and_rolled_files(tmp_path,
                                                                           monkeypatch):
    """With tiny limits a day's rows span several files of several row groups, each row
    group sorted by time, and nothing is lost."""
    from sesbeam.transforms import write

    monkeypatch.setattr(write, "ROWS_PER_GROUP", 50)
    monkeypatch.setattr(write, "ROWS_PER_FILE", 120)
    archive = tmp_path / "archive"
    manifest = generate_archive(str(archive), events=600, seed=4, days=1)
    out = tmp_path / "out"
    summary = run_batch(["--input", str(archive), "--output", str(out)])
    assert summary["messages"] == manifest["messages"] and summary["balanced"]
    files = sorted((out / "messages").rglob("*.parquet"))
    assert summary["tables"]["messages"]["files"] == len(files) >= 5
    rows = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows <= 120
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            times = pq.ParquetFile(path).read_row_group(g, columns=["event_time"]).column(0)
            assert times.to_pylist() == sorted(times.to_pylist())
    assert rows == manifest["messages"]


def test_statistics_of_partials_by_window_equal_those_of_windowed_messages():
    """The batch graph windows each batch's partial counts (``ComputeVerdictStats(window_s)``)
    instead of the messages (``WindowMessages`` then ``ComputeVerdictStats()``, as the
    streaming graph does): the same rows, window by window, through the FnApiRunner."""
    from collections import defaultdict

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from sesbeam.pipeline.batch import DEFAULT_LOCAL_RUNNER
    from sesbeam.transforms import ComputeSenderStats, ComputeVerdictStats, WindowMessages
    from tests.test_dedupe_analytics import expected_senders, expected_verdicts, make_rows
    from tests.test_dedupe_analytics import table as messages_table

    hour = 3_600_000
    rows = make_rows(2000, seed=4)
    by_window = defaultdict(list)
    for r in rows:
        by_window[r["event_time"] // hour * hour].append(r)
    assert len(by_window) > 40

    def ms(value: datetime) -> int:
        return round(value.timestamp() * 1000)

    def verdict_rows(batch):
        for r in batch.to_pylist():
            assert ms(r["window_end"]) - ms(r["window_start"]) == hour
            yield ms(r["window_start"]), r["verdict"], r["status"], r["messages"], \
                r["pane_timing"]

    def sender_rows(batch):
        for r in batch.to_pylist():
            counts = {k: v for k, v in r.items() if isinstance(v, int) and v
                      and k != "pane_index"}
            counts.update(first_seen=ms(r["first_seen"]), last_seen=ms(r["last_seen"]))
            yield ms(r["window_start"]), r["sender_domain"], tuple(sorted(counts.items()))

    want_verdicts = [(w, v, s, n, "ON_TIME") for w, rs in by_window.items()
                     for (v, s), n in expected_verdicts(rs).items()]
    want_senders = [(w, d, tuple(sorted({k: v for k, v in c.items() if v}.items())))
                    for w, rs in by_window.items() for d, c in expected_senders(rs).items()]
    options = beam.options.pipeline_options.PipelineOptions(runner=DEFAULT_LOCAL_RUNNER)
    with beam.Pipeline(options=options) as p:
        messages = p | beam.Create(messages_table(rows).to_batches(max_chunksize=300))
        windowed = messages | WindowMessages(3600)
        for label, stats in (("partials", messages | "V1" >> ComputeVerdictStats(3600)),
                             ("windowed", windowed | "V2" >> ComputeVerdictStats())):
            assert_that(stats | f"VRows{label}" >> beam.FlatMap(verdict_rows),
                        equal_to(want_verdicts), label=f"Verdicts{label}")
        for label, stats in (("partials", messages | "S1" >> ComputeSenderStats(3600)),
                             ("windowed", windowed | "S2" >> ComputeSenderStats())):
            assert_that(stats | f"SRows{label}" >> beam.FlatMap(sender_rows),
                        equal_to(want_senders), label=f"Senders{label}")
