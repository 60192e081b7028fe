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

Messages travel as one RecordBatch per bundle (``DecodeQueueMessages``) and are
deduplicated a batch at a time (``KeepFirstNotification``: the ids seen per bucket and
window in Beam state).

Files are named per run, table, day, window and pane (``part-w<window>-p<pane>-<run_id>``),
so a retried pane replaces its file. Without a journal they go straight into the tables: a
reader sees a pane's rows once its file exists. A drain-mode run (``--idle-timeout``)
journals the messages it reads, stages its files and commits them with ``summary.json`` at
the end; the next run recovers an interrupted one (``sesbeam.transforms.journal``).
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import userstate
from apache_beam.transforms import window as beam_window

from sesbeam.pipeline.batch import (
    DEFAULT_LOCAL_RUNNER,
    UsageError,
    local_runner,
    new_run_id,
    read_summary,
    security_from_options,
)
from sesbeam.pipeline.options import BatchOptions, StreamOptions, parse_duration
from sesbeam.schemas import PARTITION_COLUMN, SCHEMA_VERSION, TABLES
from sesbeam.transforms import ComputeSenderStats, ComputeVerdictStats, WindowMessages
from sesbeam.transforms._arrow import MS_PER_DAY, epoch_ms, partition
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.dedupe import DEFAULT_BUCKETS, bucket_of
from sesbeam.transforms.incremental import DropEarlierMessages
from sesbeam.transforms.journal import ReadJournal, Recovery, commit, recover, staging_root
from sesbeam.transforms.privacy import ProtectPersonalData
from sesbeam.transforms.queue_decode import DecodeQueueMessages, decode_message
from sesbeam.transforms.sqs import ReadFromSqs
from sesbeam.transforms.summary import build_summary, merge_tallies
from sesbeam.transforms.write import day_name, write_parquet

__all__ = ["DecodeQueueMessages", "KeepFirstNotification", "WritePanes", "build_streaming",
           "decode_message", "run_stream"]

_LOG = logging.getLogger(__name__)


def _by_bucket(batch: pa.RecordBatch, buckets: int):
    yield from partition(batch, bucket_of(batch.column("message_id"), buckets))


class _KeepFirstDoFn(beam.DoFn):
    """Per bucket of message ids and window: rows of ids not seen yet go on (the first of
    each), the others are counted as duplicates."""

    # Each entry is the JSON list of the ids one element added: one bytes object, cheap
    # for the SDK's state cache to size (it walks every object of a cached value).
    SEEN = userstate.BagStateSpec("seen", BytesCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        _, table = element
        known: set = set()
        for ids in seen.read():
            known.update(orjson.loads(ids))
        keep, new = [], []
        for i, message_id in enumerate(table.column("message_id").to_pylist()):
            if message_id not in known:
                known.add(message_id)
                keep.append(i)
                new.append(message_id)
        if new:
            seen.add(orjson.dumps(new))
        if len(keep) < table.num_rows:
            yield beam.pvalue.TaggedOutput("tallies",
                                           {"duplicates": table.num_rows - len(keep)})
        if len(keep) == table.num_rows:
            yield table
        elif keep:
            yield table.take(pa.array(keep))


class KeepFirstNotification(beam.PTransform):
    """Windowed message batches -> ``{"messages": first per id and window, "tallies"}``.

    Batches are split into ``buckets`` by message id; the ids seen per bucket and window are
    kept in state, which expires with the window (end + allowed lateness).
    """

    def __init__(self, buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        self._buckets = buckets

    def expand(self, batches):
        out = (batches
               | "KeyByBucket" >> beam.FlatMap(_by_bucket, self._buckets)
               | "KeepFirst" >> beam.ParDo(_KeepFirstDoFn()).with_outputs(
                   "tallies", main="messages"))
        return {"messages": out["messages"], "tallies": out["tallies"]}


def _key_by_day(batch: pa.RecordBatch, column: str | None):
    if column is None:
        yield -1, batch
    else:
        yield from partition(batch, epoch_ms(batch.column(column)) // MS_PER_DAY)


class _WritePaneDoFn(beam.DoFn):
    def __init__(self, output: str, table: str, run_id: str, staging: bool):
        self._output = output
        self._table = table
        self._run_id = run_id
        self._staging = staging

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
        folder = self._table
        if day >= 0 or column is not None:
            folder += f"/{PARTITION_COLUMN}={day_name(day)}"
        start = getattr(win, "start", None)
        window = f"w{start.micros // 1000}" if start is not None else "wglobal"
        # One name per run, table, day, window and pane: a retried write replaces its file.
        relative = f"{folder}/part-{window}-p{pane.index}-{self._run_id}.parquet"
        root = staging_root(self._output, self._run_id) if self._staging else self._output
        write_parquet(table, f"{root}/{relative}", self._table, self._storage)
        tally = {"tables": {self._table: {"files": 1, "rows": table.num_rows}}}
        if self._staging:
            tally["files"] = [relative]
        yield tally


class WritePanes(beam.PTransform):
    """Windowed, triggered RecordBatches of one table -> one Parquet file per day and pane.

    Files go straight into ``OUT/<table>/`` (a streaming job has no end to commit at), or
    with ``staging`` into the run's staging folder, for ``journal.commit`` (drain mode).
    """

    def __init__(self, output: str, table: str, run_id: str, staging: bool = False):
        super().__init__()
        self._output = output.rstrip("/")
        self._table = table
        self._run_id = run_id
        self._staging = staging

    def expand(self, batches):
        return (batches
                | "KeyByDay" >> beam.FlatMap(_key_by_day, TABLES[self._table][1])
                | "GroupByDay" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WritePaneDoFn(self._output, self._table,
                                                       self._run_id, self._staging)))


class _WriteSummaryDoFn(beam.DoFn):
    def __init__(self, output: str, context: dict, journal_files: tuple | None):
        self._output = output
        self._context = context
        self._journal_files = journal_files  # None: no journal, tables written in place

    def setup(self):
        self._storage = Storage()

    def process(self, tally: dict):
        tally = dict(tally)
        files = tally.pop("files", [])
        decoded = tally.get("notifications", 0)
        written = tally.get("tables", {}).get("messages", {}).get("rows", 0)
        late = decoded - written - tally.get("duplicates", 0)
        summary = build_summary(tally, output=self._output, **self._context)
        summary["queue_messages"] = tally.get("queue_messages", 0)
        summary["recovered_messages"] = tally.get("recovered_messages", 0)
        summary["redeliveries_dropped"] = tally.get("redeliveries_dropped", 0)
        summary["late_dropped"] = late
        summary["balanced"] = (summary["records"] == summary["messages"] + summary["duplicates"]
                               + summary["skipped"] + summary["dead_letters"] + late
                               and late >= 0)
        if self._journal_files is None:
            with self._storage.create(f"{self._output}/summary.json", "application/json") as f:
                f.write(json.dumps(summary, indent=2).encode() + b"\n")
        else:
            commit(self._output, self._context["run_id"], files, list(self._journal_files),
                   summary, self._storage)
        yield summary


def trigger_for(early_s: int | None):
    """The on-time pane at the watermark, early panes every ``early_s`` (processing time)
    when given, and a late pane for every late element."""
    early = beam_trigger.AfterProcessingTime(early_s) if early_s else None
    return beam_trigger.AfterWatermark(early=early, late=beam_trigger.AfterCount(1))


def build_streaming(messages, output: str, *, window_s: int, allowed_lateness_s: int,
                    early_s: int | None, run_id: str, certificates=None, privacy=None,
                    summary: bool = True, buckets: int = DEFAULT_BUCKETS,
                    journal: bool = False, recovery: Recovery | None = None):
    """Add the streaming graph to a PCollection of ``SqsMessage`` (or any source of them).

    ``journal`` (drain mode, with ``summary``): journal the messages as they are read, stage
    the tables and commit them at the end (``sesbeam.transforms.journal``); ``recovery``:
    the journal of interrupted runs to decode again (from ``journal.recover``).
    """
    output = output.rstrip("/")
    recovery = recovery or Recovery()
    staged = journal and summary
    decoded = messages | DecodeQueueMessages(
        certificates, journal=output if staged else None, run_id=run_id,
        skip_ids=recovery.message_ids)
    if recovery.files:
        again = (messages.pipeline
                 | "Recovered" >> ReadJournal(recovery.files, recovery.repeated)
                 | "DecodeRecovered" >> DecodeQueueMessages(certificates, recovered=True))
        decoded = {name: (decoded[name], again[name]) | f"With{name.title()}" >> beam.Flatten()
                   for name in decoded}
    windowing = {"trigger": trigger_for(early_s),
                 "accumulation_mode": beam_trigger.AccumulationMode.DISCARDING,
                 "allowed_lateness": allowed_lateness_s}
    windowed = decoded["messages"] | WindowMessages(window_s, **windowing)
    firsts = windowed | KeepFirstNotification(buckets)
    kept = firsts["messages"]
    dead_letters = decoded["dead_letters"]
    if privacy is not None and not privacy.is_noop:
        kept = kept | "ProtectMessages" >> ProtectPersonalData(privacy)
        dead_letters = dead_letters | "ProtectDeadLetters" >> ProtectPersonalData(privacy)
    earlier = []
    if staged:  # a message an earlier drain run committed is a duplicate, not a new row
        fresh = kept | "DropEarlierMessages" >> DropEarlierMessages(output)
        kept = fresh["messages"]
        earlier.append(fresh["tallies"])
    dead_letters = dead_letters | "WindowDeadLetters" >> beam.WindowInto(
        beam_window.FixedWindows(window_s), **windowing)
    tables = {
        "messages": kept,
        "verdict_stats": kept | ComputeVerdictStats(),
        "sender_stats": kept | ComputeSenderStats(),
        "dead_letters": dead_letters,
    }
    written = [pcoll | f"Write_{name}" >> WritePanes(output, name, run_id, staged)
               for name, pcoll in tables.items()]
    if not summary:
        return None
    context = {"run_id": run_id, "inputs": [], "window_seconds": window_s,
               "schema_version": SCHEMA_VERSION, "mode": "streaming",
               "sns_signatures_verified": certificates is not None}
    tallies = [decoded["tallies"], firsts["tallies"], *earlier, *written]
    # Back to the global window one by one, then as plain values (no pane of their own),
    # before the Flatten: runners disagree on flattening differently triggered inputs.
    tallies = [t | f"Global{i}" >> beam.WindowInto(beam_window.GlobalWindows())
               | f"Plain{i}" >> beam.Map(lambda tally: (None, tally))
               for i, t in enumerate(tallies)]
    return (tallies
            | "AllTallies" >> beam.Flatten()
            | "GroupTallies" >> beam.GroupByKey()
            | "MergeTallies" >> beam.MapTuple(lambda _, tallies: merge_tallies(tallies))
            | "WriteSummary" >> beam.ParDo(_WriteSummaryDoFn(
                output, context, recovery.files if staged else None)))


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
    recovery = recover(shared.output) if drain else None
    with beam.Pipeline(runner=local_runner(options), options=options) as pipeline:
        source = pipeline | "ReadFromSqs" >> ReadFromSqs(
            list(opts.queue_url), idle_timeout_s=opts.idle_timeout,
            readers_per_queue=opts.readers_per_queue,
            visibility_timeout_s=opts.visibility_timeout)
        build_streaming(source, shared.output, window_s=window_s, allowed_lateness_s=lateness_s,
                        early_s=early_s, run_id=run_id, certificates=certificates,
                        privacy=privacy, summary=drain, buckets=shared.dedupe_buckets,
                        journal=drain, recovery=recovery)
    if not drain:
        return {}
    summary = read_summary(shared.output)
    if summary.get("run_id") != run_id:
        raise RuntimeError(f"summary.json in {shared.output} is not from run {run_id}")
    return summary
