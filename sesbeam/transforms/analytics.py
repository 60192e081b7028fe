"""Verdict and sender statistics as CombineFns over message RecordBatches.

Each statistic is a pair of plain functions over Arrow: ``*_partial`` aggregates one batch
into a small table with ``pyarrow.compute`` and numpy (``*_partials``: one such table per
window, for all the windows of a batch in one pass), ``*_merge`` re-aggregates such
tables. A ``TableCombineFn`` turns the pair into a Beam ``CombineFn`` whose accumulator
is a short list of partial tables, compacted by re-aggregation. Every count is additive,
so partial results (streaming panes, parallel workers) sum to the exact totals.

Windows are fixed, aligned to the epoch in UTC, and Beam's: ``FixedWindows`` with the
runner's triggers. The streaming pipeline windows the messages themselves
(``WindowMessages`` splits each batch by window and stamps each part with its window
start), as it deduplicates per window; the batch pipeline windows the partial tables
instead (``ComputeVerdictStats(window_s)``), which gives the same rows for less work.
"""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms import window as beam_window
from apache_beam.utils.windowed_value import PaneInfoTiming

from sesbeam.schemas import SENDER_STATS, TS, VERDICT_STATS, VERDICTS, wire
from sesbeam.transforms._arrow import epoch_ms, partition

__all__ = [
    "ComputeSenderStats",
    "ComputeVerdictStats",
    "TableCombineFn",
    "WindowMessages",
    "sender_merge",
    "sender_partial",
    "sender_partials",
    "verdict_merge",
    "verdict_partial",
    "verdict_partials",
    "with_window",
]

#: Partial tables kept in an accumulator before they are re-aggregated into one.
_COMPACT_AT = 32

_VERDICT_PARTIAL = pa.schema([VERDICT_STATS.field(n) for n in ("verdict", "status", "messages")])
_NOT_PARTIAL = ("window_start", "window_end", "pane_timing", "pane_index")
_SENDER_PARTIAL = pa.schema([f for f in SENDER_STATS if f.name not in _NOT_PARTIAL])


def _eq(column: pa.ChunkedArray | pa.Array, value: str) -> pa.Array:
    return pc.cast(pc.fill_null(pc.equal(column, value), False), pa.int64())


def _windows(table: pa.Table, size_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, index)``: the distinct window starts of ``table``'s rows (ascending) and
    each row's index into them; one window (start 0) for all rows when ``size_ms`` is None."""
    if size_ms is None:
        return np.zeros(1, np.int64), np.zeros(table.num_rows, np.int64)
    starts = epoch_ms(table.column("event_time")) // size_ms * size_ms
    return np.unique(starts, return_inverse=True)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """``(code of each row, distinct values)``: the column dictionary-encoded, null a
    value of its own."""
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _groups(table: pa.Table, window: np.ndarray, column: str):
    """Rows grouped by (window index, value of ``column``, null included): ``(window of
    each group, value of each group, group of each row, number of groups)``, the groups
    ordered by window."""
    codes, values = _codes(table.column(column))
    k = len(values)
    keys, group = np.unique(window * k + codes, return_inverse=True)
    return keys // k, values.take(pa.array(keys % k)), group, len(keys)


def verdict_partials(batch: pa.RecordBatch | pa.Table, size_ms: int | None,
                     ) -> Iterator[tuple[int, pa.Table]]:
    """``(window start, messages per (verdict, status))`` for each fixed window of
    ``size_ms`` that ``batch``'s rows fall in (by ``event_time``), all windows in one pass;
    WorkMail rows are left out. ``size_ms`` None: one table for all rows (start 0)."""
    table = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
    envelope = table.column("envelope")
    if pc.any(pc.equal(envelope, "workmail")).as_py():
        table = table.filter(pc.not_equal(envelope, "workmail"))
    if table.num_rows == 0:
        return
    starts, window = _windows(table, size_ms)
    parts, windows = [], []
    for verdict in VERDICTS:
        group_window, statuses, group, n = _groups(table, window, f"{verdict}_verdict")
        windows.append(group_window)
        parts.append(pa.table({
            "verdict": pa.array([verdict] * n, pa.string()),
            "status": statuses,
            "messages": np.bincount(group, minlength=n).astype(np.int64),
        }, schema=_VERDICT_PARTIAL))
    for index, counts in partition(pa.concat_tables(parts), np.concatenate(windows)):
        yield int(starts[index]), counts


def _one_table(partials, batch, schema: pa.Schema) -> pa.Table:
    """The single table of ``partials(batch, None)`` (an empty one when there is none)."""
    tables = [table for _, table in partials(batch, None)]
    return tables[0] if tables else schema.empty_table()


def verdict_partial(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Messages per (verdict, status) in ``batch``; WorkMail rows are left out."""
    return _one_table(verdict_partials, batch, _VERDICT_PARTIAL)


def _merge(tables: list[pa.Table], keys: list[str], schema: pa.Schema,
           mins: tuple[str, ...] = (), maxs: tuple[str, ...] = ()) -> pa.Table:
    """``tables`` (partials of ``schema``) re-aggregated by ``keys`` (nulls included):
    every other column summed, but ``mins``/``maxs``. With numpy over the key codes: the
    tables are small, where Acero's ``group_by`` costs ~1 ms a call whatever their size."""
    table = pa.concat_tables(tables).combine_chunks()
    codes = np.zeros(table.num_rows, np.int64)
    for key in keys:
        key_codes, values = _codes(table.column(key))
        codes = codes * len(values) + key_codes
    _, first, group = np.unique(codes, return_index=True, return_inverse=True)
    n = len(first)
    columns = {key: table.column(key).take(pa.array(first)) for key in keys}
    for field in schema:
        if field.name in columns:
            continue
        values = epoch_ms(table.column(field.name)) if field.type == TS else \
            table.column(field.name).to_numpy()
        if field.name in mins:
            out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(out, group, values)
        elif field.name in maxs:
            out = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(out, group, values)
        else:
            out = np.zeros(n, np.int64)
            np.add.at(out, group, values)
        columns[field.name] = pa.array(out).cast(field.type)
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def verdict_merge(tables: list[pa.Table]) -> pa.Table:
    """Re-aggregate verdict partials."""
    return _merge(tables, ["verdict", "status"], _VERDICT_PARTIAL)


def sender_partials(batch: pa.RecordBatch | pa.Table, size_ms: int | None,
                    ) -> Iterator[tuple[int, pa.Table]]:
    """``(window start, per-sender-domain counts, first and last seen)`` for each fixed
    window of ``size_ms`` that ``batch``'s rows fall in, all windows in one pass (every
    count a bincount over the (window, domain) groups). ``size_ms`` None: one table."""
    t = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
    if t.num_rows == 0:
        return
    starts, window = _windows(t, size_ms)
    group_window, domains, group, k = _groups(t, window, "sender_domain")

    def count(mask) -> np.ndarray:
        return np.bincount(group, weights=mask, minlength=k).astype(np.int64)

    def eq(name: str, value: str) -> np.ndarray:
        return _eq(t.column(name), value).to_numpy()

    dmarc_fail = eq("dmarc_verdict", "FAIL")
    columns = {
        "sender_domain": domains,
        "messages": np.bincount(group, minlength=k).astype(np.int64),
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
    np.minimum.at(first, group, times)
    np.maximum.at(last, group, times)
    columns["first_seen"] = pa.array(first).cast(TS)
    columns["last_seen"] = pa.array(last).cast(TS)
    for index, counts in partition(pa.table(columns, schema=_SENDER_PARTIAL), group_window):
        yield int(starts[index]), counts


def sender_partial(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Per-sender-domain counts, first and last seen of ``batch``."""
    return _one_table(sender_partials, batch, _SENDER_PARTIAL)


def sender_merge(tables: list[pa.Table]) -> pa.Table:
    """Re-aggregate sender partials (sums, min first_seen, max last_seen)."""
    return _merge(tables, ["sender_domain"], _SENDER_PARTIAL, mins=("first_seen",),
                  maxs=("last_seen",))


class TableCombineFn(beam.CombineFn):
    """A CombineFn over RecordBatches from a ``partial`` and a ``merge`` function.

    ``partial`` None: the inputs are partial tables already (``_PartialsByWindowDoFn``)."""

    def __init__(self, partial, merge, empty_schema: pa.Schema):
        self._partial = partial
        self._merge = merge
        self._schema = empty_schema

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, batch):
        if batch.num_rows:
            accumulator.append(batch if self._partial is None else self._partial(batch))
        return self.compact(accumulator) if len(accumulator) >= _COMPACT_AT else accumulator

    def merge_accumulators(self, accumulators):
        tables = [t for acc in accumulators for t in acc]
        return [self._merge(tables)] if len(tables) > 1 else tables

    def compact(self, accumulator):
        return [self._merge(accumulator)] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator):
        if not accumulator:
            return self._schema.empty_table()
        # One table is a partial or a merge: one row per key already.
        return accumulator[0] if len(accumulator) == 1 else self._merge(accumulator)


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


class _PartialsByWindowDoFn(beam.DoFn):
    def __init__(self, partials, size_ms: int):
        self._partials = partials
        self._size_ms = size_ms

    def process(self, batch):
        for start, partial in self._partials(batch, self._size_ms):
            yield beam_window.TimestampedValue(partial, start / 1000.0)


class _ComputeStats(beam.PTransform):
    """Messages -> statistics RecordBatches, one per window.

    Without ``window_s`` the input is windowed message batches (``WindowMessages``): each
    element's partial counts are computed, then combined per window. With ``window_s`` the
    input is messages in any window: each batch's partial counts are computed for all the
    fixed windows of ``window_s`` its rows fall in at once (``*_partials``), stamped with
    their window's start and windowed (``beam.WindowInto`` takes ``window_into_kwargs``),
    then combined. Same rows either way; the second never splits the messages by window,
    which costs ~30 Arrow calls per window and batch (with hourly windows over a week,
    a 16k-row batch falls in ~170 windows).
    """

    _partial = None
    _partials = None
    _merge = None
    _schema: pa.Schema
    _partial_schema: pa.Schema

    def __init__(self, window_s: int | None = None, **window_into_kwargs):
        super().__init__()
        if window_s is None and window_into_kwargs:
            raise ValueError("windowing arguments need window_s")
        self._window_s = None if window_s is None else int(window_s)
        self._kwargs = window_into_kwargs

    def expand(self, batches):
        if self._window_s is None:
            fn = TableCombineFn(type(self)._partial, type(self)._merge, self._partial_schema)
        else:
            fn = TableCombineFn(None, type(self)._merge, self._partial_schema)
            batches = (
                batches
                | "PartialsByWindow" >> beam.ParDo(_PartialsByWindowDoFn(
                    type(self)._partials, self._window_s * 1000)).with_output_types(pa.Table)
                | "FixedWindows" >> beam.WindowInto(
                    beam_window.FixedWindows(self._window_s), **self._kwargs)
            )
        return (
            batches
            | "Combine" >> beam.CombineGlobally(fn).without_defaults()
            | "AddWindow" >> beam.ParDo(_AddWindowDoFn(self._schema))
        )


class ComputeVerdictStats(_ComputeStats):
    """Message batches -> ``VERDICT_STATS`` RecordBatches, one per window (see
    ``_ComputeStats``: windowed batches, or any batches and ``window_s``)."""

    _partial = staticmethod(verdict_partial)
    _partials = staticmethod(verdict_partials)
    _merge = staticmethod(verdict_merge)
    _schema = VERDICT_STATS
    _partial_schema = _VERDICT_PARTIAL


class ComputeSenderStats(_ComputeStats):
    """Message batches -> ``SENDER_STATS`` RecordBatches, one per window (see
    ``_ComputeStats``: windowed batches, or any batches and ``window_s``)."""

    _partial = staticmethod(sender_partial)
    _partials = staticmethod(sender_partials)
    _merge = staticmethod(sender_merge)
    _schema = SENDER_STATS
    _partial_schema = _SENDER_PARTIAL
