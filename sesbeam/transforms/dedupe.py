"""Merge every notification of one message into one row.

SES publishes one notification per action with a topic, and SNS/SQS redeliver: the same
``message_id`` arrives several times. The *first* notification (smallest
``(source_uri, source_record)``, so the result does not depend on the runner's order) gives
the row; ``recipients`` and ``actions`` become ordered unions, the S3 location comes from
whichever notification had one, and ``notifications`` counts them all.

``dedupe_table`` is the plain twin of ``DeduplicateMessages``.
"""

from __future__ import annotations

import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from sesbeam.transforms._arrow import pack, partition, to_batches, unpack

__all__ = ["DeduplicateMessages", "bucket_of", "dedupe_table", "merge_rows"]

#: Default number of shuffle buckets for deduplication: enough to spread the work over a
#: few hundred workers, few enough that tiny runs stay cheap.
DEFAULT_BUCKETS = 16
#: Rows of one bucket gathered before they are packed for the shuffle.
FLUSH_ROWS = 8192


def bucket_of(message_ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Stable bucket (``crc32 % buckets``) of each message id."""
    return np.fromiter((zlib.crc32(m.encode()) % buckets for m in message_ids.to_pylist()),
                       dtype=np.int64, count=len(message_ids))


def _union(lists) -> list:
    seen: dict = {}
    for values in lists:
        for v in values or ():
            seen.setdefault(v, None)
    return list(seen)


def merge_rows(rows: list[dict]) -> dict:
    """Merge the notifications of one message (given in source order) into one row."""
    merged = dict(rows[0])
    merged["recipients"] = _union(r["recipients"] for r in rows)
    merged["actions"] = _union(r["actions"] for r in rows)
    with_s3 = next((r for r in rows if r["s3_object_key"] is not None), None)
    if with_s3 is not None:
        merged["s3_bucket"] = with_s3["s3_bucket"]
        merged["s3_object_key"] = with_s3["s3_object_key"]
    merged["notifications"] = sum(r["notifications"] for r in rows)
    return merged


def dedupe_table(table: pa.Table) -> tuple[pa.Table, int]:
    """One row per ``message_id``; returns the rows and how many were merged away."""
    n = table.num_rows
    if n == 0:
        return table, 0
    # Most ids occur once: find the repeated ones with a hash count and sort only their rows.
    table = table.combine_chunks()  # the parts of a shuffle: many small chunks
    counts = pc.value_counts(table.column("message_id"))
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return table, 0
    in_repeated = pc.is_in(table.column("message_id"), value_set=repeated)
    unique = table.filter(pc.invert(in_repeated))
    table = table.filter(in_repeated)
    n = table.num_rows
    order = pc.sort_indices(table, sort_keys=[
        ("message_id", "ascending"), ("source_uri", "ascending"), ("source_record", "ascending")])
    table = table.take(order)
    ids = table.column("message_id").combine_chunks()
    starts = np.flatnonzero(np.concatenate(
        ([True], pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False))))
    merged = _merge_groups(table, starts)
    return pa.concat_tables([unique, merged]), n - merged.num_rows


def _merge_groups(table: pa.Table, starts: np.ndarray) -> pa.Table:
    """``merge_rows`` over every group of ``table``, vectorised: the rows of a group are
    consecutive, in source order, and ``starts`` holds where each group starts."""
    n, groups = table.num_rows, len(starts)
    group = np.repeat(np.arange(groups), np.diff(np.append(starts, n)))
    merged = table.take(pa.array(starts))
    schema = merged.schema
    valid = pc.is_valid(table.column("s3_object_key")).to_numpy(zero_copy_only=False)
    first_s3 = np.minimum.reduceat(np.where(valid, np.arange(n), n), starts)
    s3_source = pa.array(np.where(first_s3 < n, first_s3, starts))
    notifications = np.add.reduceat(
        table.column("notifications").to_numpy().astype(np.int64), starts)
    replaced = {
        "recipients": _ordered_union(table.column("recipients"), group, groups),
        "actions": _ordered_union(table.column("actions"), group, groups),
        "s3_bucket": table.column("s3_bucket").take(s3_source),
        "s3_object_key": table.column("s3_object_key").take(s3_source),
        "notifications": pa.array(notifications),
    }
    for name, column in replaced.items():
        i = schema.get_field_index(name)
        merged = merged.set_column(i, schema.field(i), column.cast(schema.field(i).type))
    return merged


def _ordered_union(lists: pa.ChunkedArray, group: np.ndarray, groups: int) -> pa.Array:
    """Per group, the distinct values of its rows' lists in order of first appearance."""
    lists = lists.combine_chunks()
    values = pc.list_flatten(lists)
    owner = group[pc.list_parent_indices(lists).to_numpy()]
    firsts = pa.table({"g": owner, "v": values, "pos": np.arange(len(values))}).group_by(
        ["g", "v"], use_threads=False).aggregate([("pos", "min")])
    order = np.lexsort((firsts.column("pos_min").to_numpy(), firsts.column("g").to_numpy()))
    counts = np.bincount(firsts.column("g").to_numpy(), minlength=groups)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets),
                                    firsts.column("v").take(pa.array(order)).combine_chunks(),
                                    type=lists.type)


def _bucket_parts(table: pa.Table, buckets: int):
    """``(bucket, rows)`` for each bucket of ``table``'s rows, each part contiguous."""
    for bucket, part in partition(table, bucket_of(table.column("message_id"), buckets)):
        yield bucket, part.combine_chunks()


class _KeyByBucketDoFn(beam.DoFn):
    """Batches -> ``(bucket, packed rows)``, the rows of a bucket gathered over a bundle.

    A source's batch holds ~1,400 rows, so one part per bucket and source would be ~90
    rows: the per-part costs (splitting, packing, shuffle records) would dominate. Whole
    batches are therefore held until ``flush_rows`` rows per bucket on average
    (``flush_rows * buckets`` in all), then split by bucket at once (one sort and one
    ``take``) and each bucket's rows packed as one contiguous part (zstd Arrow IPC, see
    ``_arrow.pack``); the rest goes at the end of the bundle. Batch pipelines only (the
    global window). With ``shuffle_dir`` the parts are files there (``pack``).
    """

    def __init__(self, buckets: int, flush_rows: int = FLUSH_ROWS,
                 shuffle_dir: str | None = None):
        self._buckets = buckets
        self._flush_rows = flush_rows
        self._shuffle_dir = shuffle_dir

    def start_bundle(self):
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def process(self, batch: pa.RecordBatch):
        if batch.num_rows:
            self._pending.append(batch)
            self._rows += batch.num_rows
        if self._rows >= self._flush_rows * self._buckets:
            yield from self._split()

    def finish_bundle(self):
        for bucket, packed in self._split():
            yield WindowedValue((bucket, packed), MIN_TIMESTAMP, [GlobalWindow()])

    def _split(self):
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending)
        self._pending, self._rows = [], 0
        for bucket, part in _bucket_parts(table, self._buckets):
            yield bucket, pack(part, self._shuffle_dir)


class _DedupeBucketDoFn(beam.DoFn):
    def process(self, element):
        _, parts = element
        table, duplicates = dedupe_table(pa.concat_tables([unpack(p) for p in parts]))
        yield from to_batches(table)
        yield beam.pvalue.TaggedOutput(DeduplicateMessages.TALLIES, {"duplicates": duplicates})


class DeduplicateMessages(beam.PTransform):
    """Message RecordBatches -> ``{"messages": one row per message_id, "tallies"}``.

    ``tallies`` carries ``{"duplicates": n}`` dicts for the run's accounting.
    ``shuffle_dir``: a local folder all workers share, through which the rows travel
    (local runners; see ``_arrow.pack``); by default they travel in the shuffle itself.
    """

    MESSAGES = "messages"
    TALLIES = "tallies"

    def __init__(self, buckets: int = DEFAULT_BUCKETS, shuffle_dir: str | None = None):
        super().__init__()
        self._buckets = buckets
        self._shuffle_dir = shuffle_dir

    def expand(self, batches):
        outputs = (
            batches
            | "KeyByBucket" >> beam.ParDo(_KeyByBucketDoFn(self._buckets,
                                                          shuffle_dir=self._shuffle_dir))
            | "GroupByBucket" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_DedupeBucketDoFn()).with_output_types(
                pa.RecordBatch).with_outputs(
                self.TALLIES, main=self.MESSAGES)
        )
        return {self.MESSAGES: outputs[self.MESSAGES], self.TALLIES: outputs[self.TALLIES]}
