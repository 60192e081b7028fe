"""Small Arrow helpers shared by the transforms."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Most rows in one RecordBatch element. Large enough that Beam's per-element overhead
#: (tens of microseconds) is negligible, small enough that a batch of messages stays in the
#: low megabytes when it is pickled between stages.
MAX_BATCH_ROWS = 16_384

MS_PER_DAY = 86_400_000


def epoch_ms(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Milliseconds since the epoch of a ``timestamp[ms]`` column, as int64 numpy."""
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def compact(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """``data`` with buffers of its own when it is a small view of larger ones.

    A slice keeps its parent's buffers alive, and pickling it (what Beam does to elements
    it shuffles) serialises the whole parent: sixteen slices of a batch cost sixteen
    batches. Views are copied; compact data is returned as is.
    """
    if data.num_rows and data.get_total_buffer_size() > 2 * data.nbytes + 65_536:
        return data.take(pa.array(np.arange(data.num_rows)))
    return data


def partition(batch: pa.RecordBatch | pa.Table, keys: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """Split ``batch`` by an integer key per row; yields ``(key, rows with that key)``.

    One stable sort, then one ``take`` per key: O(n log n) whatever the number of keys.
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    if n == 0:
        return
    keys = np.asarray(keys, dtype=np.int64)
    first = keys[0]
    if (keys == first).all():
        yield int(first), compact(table)
        return
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [n]))
    for s, e in zip(starts, ends):  # one take per key: each part owns its buffers
        yield int(sorted_keys[s]), table.take(pa.array(order[s:e]))


def to_batches(table: pa.Table, max_rows: int = MAX_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The rows of ``table`` as compact RecordBatches of at most ``max_rows`` rows."""
    for batch in table.combine_chunks().to_batches(max_chunksize=max_rows):
        if batch.num_rows:
            yield compact(batch)
