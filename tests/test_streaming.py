"""Streaming semantics with TestStream: windows, watermark, early/late panes, duplicates."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import apache_beam as beam
import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from sesbeam.pipeline.streaming import build_streaming, decode_message
from sesbeam.transforms.sqs import SqsMessage
from tests.test_decode import notification, sns


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def message(mid: str, when: str, n: int, raw: bool = False, **kw) -> TimestampedValue:
    body = notification(mid, ts=when + ".000Z", **kw)
    text = json.dumps(body) if raw else json.dumps(sns(body), indent=2)
    return TimestampedValue(
        SqsMessage("https://sqs.us-east-1.amazonaws.com/1/q", f"sqs-{n}", text,
                   int(ts(when) * 1000), f"h{n}"), ts(when))


def table(out, name):
    return ds.dataset(out / name, format="parquet", partitioning="hive").to_table().to_pylist()


def test_decode_message_bodies():
    env = message("a", "2024-03-01T10:05:00", 1).value
    d = decode_message(env)
    assert d.tally["records"] == 1 and d.messages[0].column("envelope")[0].as_py() == "sns"
    raw = message("b", "2024-03-01T10:05:00", 2, raw=True).value
    assert decode_message(raw).messages[0].column("envelope")[0].as_py() == "raw"
    bad = raw._replace(body="{not json")
    d = decode_message(bad)
    assert d.tally["dead_letters"] == {"invalid_json": 1}
    assert d.dead_letters.column("raw")[0].as_py() == b"{not json"
    assert d.dead_letters.column("source_uri")[0].as_py().endswith("#sqs-2")


def test_windows_panes_duplicates_and_late_data(tmp_path):
    out = tmp_path / "out"
    stream = (TestStream()
              .advance_watermark_to(ts("2024-03-01T10:00:00"))
              .add_elements([message("a", "2024-03-01T10:05:00", 1, spamVerdict={"status": "FAIL"}),
                             message("a", "2024-03-01T10:05:00", 2, raw=True)])
              .advance_processing_time(61)
              .add_elements([message("b", "2024-03-01T10:20:00", 3)])
              .advance_watermark_to(ts("2024-03-01T11:05:00"))
              .add_elements([message("c", "2024-03-01T10:30:00", 4),      # late, within lateness
                             message("a", "2024-03-01T10:05:00", 5)])     # late duplicate
              .advance_watermark_to(ts("2024-03-01T11:40:00"))
              .add_elements([message("d", "2024-03-01T10:40:00", 6)])     # beyond lateness
              .add_elements([message("e", "2024-03-01T11:50:00", 7)])     # next window
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--allow_unsafe_triggers"])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        build_streaming(p | stream, str(out), window_s=3600, allowed_lateness_s=1800,
                        early_s=60, run_id="t1")
    messages = {r["message_id"]: r for r in table(out, "messages")}
    assert sorted(messages) == ["a", "b", "c", "e"]
    assert messages["a"]["spam_verdict"] == "FAIL"  # the first to arrive gives the row
    senders = table(out, "sender_stats")
    per_window = {}
    for r in senders:
        per_window.setdefault(r["window_start"].hour, []).append(r)
    ten = per_window[10]
    assert sum(r["messages"] for r in ten) == 3 and sum(r["spam_fail"] for r in ten) == 1
    assert sorted((r["pane_index"], r["pane_timing"], r["messages"]) for r in ten) == [
        (0, "EARLY", 1), (1, "ON_TIME", 1), (2, "LATE", 1)]
    assert sum(r["messages"] for r in per_window[11]) == 1
    verdicts = table(out, "verdict_stats")
    assert sum(r["messages"] for r in verdicts if r["verdict"] == "dkim"
               and r["window_start"].hour == 10) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 7 and summary["messages"] == 4
    assert summary["duplicates"] == 2 and summary["late_dropped"] == 1
    assert summary["balanced"]


@pytest.mark.slow
def test_dataflow_dry_run_translates_the_streaming_pipeline():
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient",
                        reason="needs apache-beam[gcp]")
    from sesbeam.transforms.sqs import ReadFromSqs

    options = PipelineOptions([
        "--runner=DataflowRunner", "--dry_run=True", "--streaming",
        "--project=sesbeam-test-123", "--region=us-central1",
        "--temp_location=gs://sesbeam-test-bucket/tmp",
    ])
    pipeline = beam.Pipeline(options=options)
    source = pipeline | "ReadFromSqs" >> ReadFromSqs(
        ["https://sqs.eu-west-1.amazonaws.com/123456789012/ses-inbound"])
    build_streaming(source, "s3://results/live", window_s=3600, allowed_lateness_s=900,
                    early_s=60, run_id="dry", summary=False)
    result = pipeline.run()
    assert result.state == beam.runners.runner.PipelineState.DONE
    job = result.job
    assert job.proto.type_.name == "JOB_TYPE_STREAMING"
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"ReadFromSqs", "DecodeQueueMessages", "WindowMessages", "KeepFirstNotification",
            "ComputeVerdictStats", "ComputeSenderStats", "Write_messages"} <= names


def test_a_bundle_decodes_like_its_messages_one_by_one():
    """``BundleDecoder`` (one builder for a bundle) gives the rows, dead letters and counts
    of a ``_SourceDecoder`` per message."""
    from sesbeam.transforms.decode import _SourceDecoder
    from sesbeam.transforms.queue_decode import BundleDecoder
    from tests.test_decode import workmail

    bodies = [message(f"m{i}", f"2024-03-01T10:0{i}:00", i, raw=i % 2 == 0).value
              for i in range(6)]
    bodies += [bodies[0]._replace(body=b, message_id=f"x{i}") for i, b in enumerate([
        "{not json", "plain text", json.dumps(sns(workmail("wm-1"))),
        json.dumps(sns({"notificationType": "Bounce", "mail": {}})), json.dumps({"mail": 1})])]
    bundle = BundleDecoder()
    dead = [row for m in bodies for row in bundle.add(m)]
    result = bundle.result()
    rows, one_dead, tallies = [], [], []
    for m in bodies:
        d = _SourceDecoder(f"{m.queue_url}#{m.message_id}", m.sent_timestamp_ms)
        d.text(m.body, "raw", m.sent_timestamp_ms, 0, None)
        r = d.result(len(m.body.encode()))
        rows += [row for b in r.messages for row in b.to_pylist()]
        one_dead += r.dead_letters.to_pylist() if r.dead_letters is not None else []
        tallies.append(r.tally)
    assert [row for b in result.messages for row in b.to_pylist()] == rows
    assert dead == one_dead and dead
    for key in ("records", "notifications", "bytes"):
        assert result.tally[key] == sum(t[key] for t in tallies), key
    assert result.tally["queue_messages"] == len(bodies) and result.tally["sources"] == 0
