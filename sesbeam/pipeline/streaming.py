"""The streaming pipeline: SQS queues -> the same tables as batch, per event-time window.

Only the source and the trigger differ from batch: queue messages are decoded by the same
decoder (``_SourceDecoder.text``), windowed by ``WindowMessages`` with a trigger, and fed to
the same ``ComputeVerdictStats``/``ComputeSenderStats`` combiners. Per window:

- the on-time result fires when the watermark passes the window's end; optional early
  results every ``early_s`` of processing time; late data within ``allowed_lateness_s``
  fires extra (late) panes. Panes are DISCARDING, so stats rows are additive deltas: summing
  the counts per ``(window_start, key)`` over all rows gives the exact totals.
- a message id is kept once per window (``mail.timestamp`` decides the window, so every
  notification of a message falls in the same one): the first notification to arrive gives
  the row, the later ones are counted as duplicates. Unlike batch, later notifications are
  not merged into a row already written (their recipients and actions are not added).
- data later than the allowed lateness is dropped by the windowing; a drain-mode run counts
  it in ``summary.json`` as ``late_dropped``.

Files are written per pane straight into the tables (``part-w<window>-p<pane>-<id>``), so a
reader sees a pane's rows once its file exists. A drain-mode run (``--idle-timeout``)
ends with ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import BooleanCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import userstate
from apache_beam.transforms import window as beam_window

from sesbeam.pipeline.batch import (
    DEFAULT_LOCAL_RUNNER,
    UsageError,
    new_run_id,
    read_summary,
    security_from_options,
)
from sesbeam.pipeline.options import BatchOptions, StreamOptions, parse_duration
from sesbeam.schemas import PARTITION_COLUMN, SCHEMA_VERSION, TABLES
from sesbeam.transforms import ComputeSenderStats, ComputeVerdictStats, WindowMessages
from sesbeam.transforms._arrow import MS_PER_DAY, compact, epoch_ms, partition
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.decode import DecodedSource, _SourceDecoder
from sesbeam.transforms.privacy import ProtectPersonalData
from sesbeam.transforms.progress import note_source
from sesbeam.transforms.sqs import ReadFromSqs, SqsMessage
from sesbeam.transforms.summary import build_summary, merge_tallies
from sesbeam.transforms.write import day_name, write_parquet

__all__ = ["DecodeQueueMessages", "KeepFirstNotification", "WritePanes", "build_streaming",
           "decode_message", "run_stream"]

_LOG = logging.getLogger(__name__)


def decode_message(message: SqsMessage, certificates=None) -> DecodedSource:
    """One SQS message body (an SNS envelope, a raw notification, ...) decoded."""
    decoder = _SourceDecoder(f"{message.queue_url}#{message.message_id}",
                             message.sent_timestamp_ms, certificates)
    decoder.text(message.body, "raw", message.sent_timestamp_ms, 0, None)
    result = decoder.result(len(message.body.encode("utf-8", "surrogatepass")))
    return result._replace(tally={**result.tally, "sources": 0, "queue_messages": 1})


class _DecodeMessageDoFn(beam.DoFn):
    def __init__(self, certificates=None):
        self._certificates = certificates

    def process(self, message: SqsMessage):
        decoded = decode_message(message, self._certificates)
        note_source(decoded.tally["bytes"], decoded.tally["records"])
        yield from decoded.messages
        if decoded.dead_letters is not None:
            yield beam.pvalue.TaggedOutput("dead_letters", decoded.dead_letters)
        yield beam.pvalue.TaggedOutput("tallies", decoded.tally)


class DecodeQueueMessages(beam.PTransform):
    """``SqsMessage`` -> ``{"messages", "dead_letters", "tallies"}`` like ``DecodeNotifications``."""

    def __init__(self, certificates=None):
        super().__init__()
        self._certificates = certificates

    def expand(self, messages):
        out = messages | "Decode" >> beam.ParDo(_DecodeMessageDoFn(self._certificates)) \
            .with_outputs("dead_letters", "tallies", main="messages")
        return {name: out[name] for name in ("messages", "dead_letters", "tallies")}


def _by_message_id(batch: pa.RecordBatch):
    if batch.num_rows == 1:
        yield batch.column("message_id")[0].as_py(), batch
        return
    for i, message_id in enumerate(batch.column("message_id").to_pylist()):
        yield message_id, compact(batch.slice(i, 1))


class _KeepFirstDoFn(beam.DoFn):
    """Per message id and window: the first row goes on, later ones are duplicates."""

    SEEN = userstate.ReadModifyWriteStateSpec("seen", BooleanCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        _, row = element
        if seen.read():
            yield beam.pvalue.TaggedOutput("tallies", {"duplicates": 1})
        else:
            seen.write(True)
            yield row


class KeepFirstNotification(beam.PTransform):
    """Windowed message batches -> ``{"messages": first per id and window, "tallies"}``.

    Window state expires with the window (end + allowed lateness), so it stays bounded.
    """

    def expand(self, batches):
        out = (batches
               | "KeyByMessageId" >> beam.FlatMap(_by_message_id)
               | "KeepFirst" >> beam.ParDo(_KeepFirstDoFn()).with_outputs(
                   "tallies", main="messages"))
        return {"messages": out["messages"], "tallies": out["tallies"]}


def _key_by_day(batch: pa.RecordBatch, column: str | None):
    if column is None:
        yield -1, batch
    else:
        yield from partition(batch, epoch_ms(batch.column(column)) // MS_PER_DAY)


class _WritePaneDoFn(beam.DoFn):
    def __init__(self, output: str, table: str):
        self._output = output
        self._table = table

    def setup(self):
        self._storage = Storage()

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        day, parts = element
        parts = [pa.table(p) for p in parts]
        if not parts or not sum(p.num_rows for p in parts):
            return  # a pane that fired with nothing new
        table = pa.concat_tables(parts)
        column = TABLES[self._table][1]
        if column is not None:
            table = table.take(pc.sort_indices(table, sort_keys=[(column, "ascending")]))
        folder = f"{self._output}/{self._table}"
        if day >= 0 or column is not None:
            folder += f"/{PARTITION_COLUMN}={day_name(day)}"
        start = getattr(win, "start", None)
        window = f"w{start.micros // 1000}" if start is not None else "wglobal"
        name = f"part-{window}-p{pane.index}-{uuid.uuid4().hex[:12]}.parquet"
        write_parquet(table, f"{folder}/{name}", self._table, self._storage)
        yield {"tables": {self._table: {"files": 1, "rows": table.num_rows}}}


class WritePanes(beam.PTransform):
    """Windowed, triggered RecordBatches of one table -> one Parquet file per day and pane.

    Files go straight into ``OUT/<table>/``: a streaming run has no end to commit at.
    """

    def __init__(self, output: str, table: str):
        super().__init__()
        self._output = output.rstrip("/")
        self._table = table

    def expand(self, batches):
        return (batches
                | "KeyByDay" >> beam.FlatMap(_key_by_day, TABLES[self._table][1])
                | "GroupByDay" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WritePaneDoFn(self._output, self._table)))


class _WriteSummaryDoFn(beam.DoFn):
    def __init__(self, output: str, context: dict):
        self._output = output
        self._context = context

    def setup(self):
        self._storage = Storage()

    def process(self, tally: dict):
        tally = dict(tally)
        decoded = tally.get("notifications", 0)
        written = tally.get("tables", {}).get("messages", {}).get("rows", 0)
        late = decoded - written - tally.get("duplicates", 0)
        summary = build_summary(tally, output=self._output, **self._context)
        summary["queue_messages"] = tally.get("queue_messages", 0)
        summary["late_dropped"] = late
        summary["balanced"] = (summary["records"] == summary["messages"] + summary["duplicates"]
                               + summary["skipped"] + summary["dead_letters"] + late
                               and late >= 0)
        with self._storage.create(f"{self._output}/summary.json", "application/json") as f:
            f.write(json.dumps(summary, indent=2).encode() + b"\n")
        yield summary


def trigger_for(early_s: int | None):
    """The on-time pane at the watermark, early panes every ``early_s`` (processing time)
    when given, and a late pane for every late element."""
    early = beam_trigger.AfterProcessingTime(early_s) if early_s else None
    return beam_trigger.AfterWatermark(early=early, late=beam_trigger.AfterCount(1))


def build_streaming(messages, output: str, *, window_s: int, allowed_lateness_s: int,
                    early_s: int | None, run_id: str, certificates=None, privacy=None,
                    summary: bool = True):
    """Add the streaming graph to a PCollection of ``SqsMessage`` (or any source of them)."""
    output = output.rstrip("/")
    decoded = messages | DecodeQueueMessages(certificates)
    windowing = {"trigger": trigger_for(early_s),
                 "accumulation_mode": beam_trigger.AccumulationMode.DISCARDING,
                 "allowed_lateness": allowed_lateness_s}
    windowed = decoded["messages"] | WindowMessages(window_s, **windowing)
    firsts = windowed | KeepFirstNotification()
    kept = firsts["messages"]
    dead_letters = decoded["dead_letters"]
    if privacy is not None and not privacy.is_noop:
        kept = kept | "ProtectMessages" >> ProtectPersonalData(privacy)
        dead_letters = dead_letters | "ProtectDeadLetters" >> ProtectPersonalData(privacy)
    dead_letters = dead_letters | "WindowDeadLetters" >> beam.WindowInto(
        beam_window.FixedWindows(window_s), **windowing)
    tables = {
        "messages": kept,
        "verdict_stats": kept | ComputeVerdictStats(),
        "sender_stats": kept | ComputeSenderStats(),
        "dead_letters": dead_letters,
    }
    written = [pcoll | f"Write_{name}" >> WritePanes(output, name)
               for name, pcoll in tables.items()]
    if not summary:
        return None
    context = {"run_id": run_id, "inputs": [], "window_seconds": window_s,
               "schema_version": SCHEMA_VERSION, "mode": "streaming",
               "sns_signatures_verified": certificates is not None}
    tallies = [decoded["tallies"], firsts["tallies"], *written]
    # Back to the global window one by one, then as plain values (no pane of their own),
    # before the Flatten: runners disagree on flattening differently triggered inputs.
    tallies = [t | f"Global{i}" >> beam.WindowInto(beam_window.GlobalWindows())
               | f"Plain{i}" >> beam.Map(lambda tally: (None, tally))
               for i, t in enumerate(tallies)]
    return (tallies
            | "AllTallies" >> beam.Flatten()
            | "GroupTallies" >> beam.GroupByKey()
            | "MergeTallies" >> beam.MapTuple(lambda _, tallies: merge_tallies(tallies))
            | "WriteSummary" >> beam.ParDo(_WriteSummaryDoFn(output, context)))


def run_stream(argv: list[str] | None = None) -> dict:
    """Run the streaming pipeline; in drain mode returns the summary, else ``{}``."""
    options = PipelineOptions(argv)
    opts = options.view_as(StreamOptions)
    shared = options.view_as(BatchOptions)
    if not opts.queue_url or not shared.output:
        raise UsageError("--queue-url and --output are required")
    try:
        window_s = parse_duration(shared.window or "1h")
        lateness_s = parse_duration(opts.allowed_lateness) if opts.allowed_lateness != "0" else 0
        early_s = parse_duration(opts.early_results_every) if opts.early_results_every else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    standard = options.view_as(StandardOptions)
    drain = opts.idle_timeout is not None
    if not standard.runner:
        if not drain:
            raise UsageError("without --idle-timeout the job runs until cancelled: give a "
                             "streaming runner (--runner DataflowRunner or FlinkRunner)")
        standard.runner = DEFAULT_LOCAL_RUNNER
    if not drain:
        standard.streaming = True
    run_id = shared.run_id or new_run_id()
    certificates, privacy = security_from_options(shared)
    with beam.Pipeline(options=options) as pipeline:
        source = pipeline | "ReadFromSqs" >> ReadFromSqs(
            list(opts.queue_url), idle_timeout_s=opts.idle_timeout,
            readers_per_queue=opts.readers_per_queue)
        build_streaming(source, shared.output, window_s=window_s, allowed_lateness_s=lateness_s,
                        early_s=early_s, run_id=run_id, certificates=certificates,
                        privacy=privacy, summary=drain)
    if not drain:
        return {}
    summary = read_summary(shared.output)
    if summary.get("run_id") != run_id:
        raise RuntimeError(f"summary.json in {shared.output} is not from run {run_id}")
    return summary
