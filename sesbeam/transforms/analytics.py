"""Verdict and sender statistics as CombineFns over message RecordBatches.

Each statistic is a pair of plain functions over Arrow: ``*_partial`` aggregates one batch
into a small table with ``pyarrow.compute``, ``*_merge`` re-aggregates such tables. A
``TableCombineFn`` turns the pair into a Beam ``CombineFn`` whose accumulator is a short
list of partial tables, compacted by re-aggregation. Every count is additive, so partial
results (streaming panes, parallel workers) sum to the exact totals.

Windows are fixed, aligned to the epoch in UTC: ``WindowMessages`` splits each batch by
window and stamps each part with its window start, then Beam's ``FixedWindows`` takes over,
so the same graph serves batch and streaming.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms import window as beam_window
from apache_beam.utils.windowed_value import PaneInfoTiming

from sesbeam.schemas import SENDER_COUNTS, SENDER_STATS, TS, VERDICT_STATS, VERDICTS, wire
from sesbeam.transforms._arrow import epoch_ms, partition

__all__ = [
    "ComputeSenderStats",
    "ComputeVerdictStats",
    "TableCombineFn",
    "WindowMessages",
    "sender_merge",
    "sender_partial",
    "verdict_merge",
    "verdict_partial",
    "with_window",
]

#: Partial tables kept in an accumulator before they are re-aggregated into one.
_COMPACT_AT = 32

_VERDICT_PARTIAL = pa.schema([VERDICT_STATS.field(n) for n in ("verdict", "status", "messages")])
_NOT_PARTIAL = ("window_start", "window_end", "pane_timing", "pane_index")
_SENDER_PARTIAL = pa.schema([f for f in SENDER_STATS if f.name not in _NOT_PARTIAL])


def _eq(column: pa.ChunkedArray | pa.Array, value: str) -> pa.Array:
    return pc.cast(pc.fill_null(pc.equal(column, value), False), pa.int64())


def verdict_partial(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Messages per (verdict, status) in ``batch``; WorkMail rows are left out."""
    table = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
    columns = [f"{verdict}_verdict" for verdict in VERDICTS]
    envelope = table.column("envelope")
    table = table.select(columns)  # filter only the columns counted
    if pc.any(pc.equal(envelope, "workmail")).as_py():
        table = table.filter(pc.not_equal(envelope, "workmail"))
    parts = []
    for verdict, column in zip(VERDICTS, columns):
        counts = pc.value_counts(table.column(column))
        parts.append(pa.table({
            "verdict": pa.array([verdict] * len(counts), pa.string()),
            "status": counts.field("values"),
            "messages": counts.field("counts"),
        }, schema=_VERDICT_PARTIAL))
    return pa.concat_tables(parts)


def verdict_merge(tables: list[pa.Table]) -> pa.Table:
    """Re-aggregate verdict partials."""
    table = pa.concat_tables(tables)
    merged = table.group_by(["verdict", "status"]).aggregate([("messages", "sum")])
    return pa.table({
        "verdict": merged.column("verdict"),
        "status": merged.column("status"),
        "messages": merged.column("messages_sum"),
    }, schema=_VERDICT_PARTIAL)


def sender_partial(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Per-sender-domain counts, first and last seen of ``batch``."""
    t = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
    if t.num_rows == 0:
        return _SENDER_PARTIAL.empty_table()
    # One code per sender domain (null included), then every count is a bincount.
    encoded = pc.dictionary_encode(t.column("sender_domain").combine_chunks(),
                                   null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    k = len(encoded.dictionary)

    def count(mask) -> np.ndarray:
        return np.bincount(codes, weights=mask, minlength=k).astype(np.int64)

    def eq(name: str, value: str) -> np.ndarray:
        return _eq(t.column(name), value).to_numpy()

    dmarc_fail = eq("dmarc_verdict", "FAIL")
    columns = {
        "sender_domain": encoded.dictionary,
        "messages": np.bincount(codes, minlength=k).astype(np.int64),
        "recipients": count(pc.fill_null(pc.list_value_length(
            t.column("recipients")), 0).to_numpy()),
        "spam_fail": count(eq("spam_verdict", "FAIL")),
        "spam_gray": count(eq("spam_verdict", "GRAY")),
        "virus_fail": count(eq("virus_verdict", "FAIL")),
        "spf_fail": count(eq("spf_verdict", "FAIL")),
        "spf_gray": count(eq("spf_verdict", "GRAY")),
        "dkim_fail": count(eq("dkim_verdict", "FAIL")),
        "dkim_gray": count(eq("dkim_verdict", "GRAY")),
        "dmarc_fail": count(dmarc_fail),
        "dmarc_gray": count(eq("dmarc_verdict", "GRAY")),
        "dmarc_fail_reject": count(dmarc_fail * eq("dmarc_policy", "reject")),
        "dmarc_fail_quarantine": count(dmarc_fail * eq("dmarc_policy", "quarantine")),
        "dmarc_fail_none": count(dmarc_fail * eq("dmarc_policy", "none")),
    }
    times = epoch_ms(t.column("event_time"))
    first = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, codes, times)
    np.maximum.at(last, codes, times)
    columns["first_seen"] = pa.array(first).cast(TS)
    columns["last_seen"] = pa.array(last).cast(TS)
    return pa.table(columns, schema=_SENDER_PARTIAL)


def sender_merge(tables: list[pa.Table]) -> pa.Table:
    """Re-aggregate sender partials (sums, min first_seen, max last_seen)."""
    table = pa.concat_tables(tables)
    merged = table.group_by("sender_domain").aggregate(
        [(c, "sum") for c in SENDER_COUNTS] + [("first_seen", "min"), ("last_seen", "max")])
    columns = {"sender_domain": merged.column("sender_domain")}
    columns.update({c: merged.column(f"{c}_sum") for c in SENDER_COUNTS})
    columns["first_seen"] = merged.column("first_seen_min")
    columns["last_seen"] = merged.column("last_seen_max")
    return pa.table(columns, schema=_SENDER_PARTIAL)


class TableCombineFn(beam.CombineFn):
    """A CombineFn over RecordBatches from a ``partial`` and a ``merge`` function."""

    def __init__(self, partial, merge, empty_schema: pa.Schema):
        self._partial = partial
        self._merge = merge
        self._schema = empty_schema

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, batch):
        if batch.num_rows:
            accumulator.append(self._partial(batch))
        return self.compact(accumulator) if len(accumulator) >= _COMPACT_AT else accumulator

    def merge_accumulators(self, accumulators):
        tables = [t for acc in accumulators for t in acc]
        return [self._merge(tables)] if tables else []

    def compact(self, accumulator):
        return [self._merge(accumulator)] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator):
        return self._merge(accumulator) if accumulator else self._schema.empty_table()


def with_window(table: pa.Table, start_ms: int, end_ms: int, schema: pa.Schema,
                timing: str = "ON_TIME", index: int = 0) -> pa.RecordBatch:
    """``table`` with window and pane columns, in ``schema`` order."""
    n = table.num_rows
    columns = {
        "window_start": pa.array(np.full(n, start_ms, dtype=np.int64), pa.int64()).cast(TS),
        "window_end": pa.array(np.full(n, end_ms, dtype=np.int64), pa.int64()).cast(TS),
        "pane_timing": pa.array([timing] * n, pa.string()),
        "pane_index": pa.array(np.full(n, index, dtype=np.int64)),
    }
    columns.update({name: table.column(name) for name in table.column_names})
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)
    return table.combine_chunks().to_batches()[0]


class _AssignWindowsDoFn(beam.DoFn):
    def __init__(self, size_ms: int):
        self._size_ms = size_ms

    def process(self, batch: pa.RecordBatch):
        starts = epoch_ms(batch.column("event_time")) // self._size_ms * self._size_ms
        for start, part in partition(batch, starts):
            # One RecordBatch, as the PCollection is typed (zero-copy: one chunk).
            (part,) = part.combine_chunks().to_batches()
            yield beam_window.TimestampedValue(part, start / 1000.0)


class WindowMessages(beam.PTransform):
    """Message batches -> parts of them in fixed UTC event-time windows of ``size_s``.

    Extra keyword arguments go to ``beam.WindowInto`` (trigger, allowed_lateness, ...).
    """

    def __init__(self, size_s: int, **window_into_kwargs):
        super().__init__()
        self._size_s = int(size_s)
        self._kwargs = window_into_kwargs

    def expand(self, batches):
        return (
            batches
            | "SplitByWindow" >> beam.ParDo(_AssignWindowsDoFn(self._size_s * 1000))
            .with_output_types(pa.RecordBatch)
            | "FixedWindows" >> beam.WindowInto(
                beam_window.FixedWindows(self._size_s), **self._kwargs)
        )


_TIMINGS = {PaneInfoTiming.EARLY: "EARLY", PaneInfoTiming.ON_TIME: "ON_TIME",
            PaneInfoTiming.LATE: "LATE"}


class _AddWindowDoFn(beam.DoFn):
    def __init__(self, schema: pa.Schema):
        self._schema = wire(schema)

    def process(self, table: pa.Table, win=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
        if table.num_rows:
            timing = _TIMINGS.get(pane.timing, "ON_TIME")
            yield with_window(table, win.start.micros // 1000, win.end.micros // 1000,
                              self._schema, timing, pane.index)


class _ComputeStats(beam.PTransform):
    _partial = None
    _merge = None
    _schema: pa.Schema
    _partial_schema: pa.Schema

    def expand(self, windowed_batches):
        fn = TableCombineFn(type(self)._partial, type(self)._merge, self._partial_schema)
        return (
            windowed_batches
            | "Combine" >> beam.CombineGlobally(fn).without_defaults()
            | "AddWindow" >> beam.ParDo(_AddWindowDoFn(self._schema))
        )


class ComputeVerdictStats(_ComputeStats):
    """Windowed message batches -> ``VERDICT_STATS`` RecordBatches, one per window."""

    _partial = staticmethod(verdict_partial)
    _merge = staticmethod(verdict_merge)
    _schema = VERDICT_STATS
    _partial_schema = _VERDICT_PARTIAL


class ComputeSenderStats(_ComputeStats):
    """Windowed message batches -> ``SENDER_STATS`` RecordBatches, one per window."""

    _partial = staticmethod(sender_partial)
    _merge = staticmethod(sender_merge)
    _schema = SENDER_STATS
    _partial_schema = _SENDER_PARTIAL
