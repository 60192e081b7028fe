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


def partition(batch: pa.RecordBatch | pa.Table, keys: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """Split ``batch`` by an integer key per row; yields ``(key, rows with that key)``.

    One stable sort, then contiguous slices: O(n log n) whatever the number of keys.
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    if n == 0:
        return
    keys = np.asarray(keys, dtype=np.int64)
    first = keys[0]
    if (keys == first).all():
        yield int(first), table
        return
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    taken = table.take(pa.array(order))
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [n]))
    for s, e in zip(starts, ends):
        yield int(sorted_keys[s]), taken.slice(int(s), int(e - s))


def to_batches(table: pa.Table, max_rows: int = MAX_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The rows of ``table`` as RecordBatches of at most ``max_rows`` rows."""
    for batch in table.combine_chunks().to_batches(max_chunksize=max_rows):
        if batch.num_rows:
            yield batch
