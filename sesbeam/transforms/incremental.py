"""Incremental runs: process only the archive objects that no earlier run processed.

Every batch run records the objects it read to the end in a ledger kept with the output
(``OUT/_ledger/<run_id>.jsonl``, one JSON line per object: ``uri``, ``size``,
``mtime_ms``), committed together with its tables (see ``write``). An incremental run
(``sesbeam batch --incremental``):

- lists its inputs as usual, then drops the objects named in the ledger (``SkipProcessed``).
  An object that arrives while a run is going on is either listed by that run (and then
  recorded by it) or left for the next run: it is never counted twice, never missed. An
  object that could not be read is not recorded, so the next run tries it again.
- drops the messages whose id already has a row in the committed ``messages`` table
  (``DropEarlierMessages``): a notification delivered again in a later object counts as a
  duplicate, not as a second message. The earlier row is kept as it is.
- adds its files to the tables instead of replacing them. Stats rows of different runs for
  the same ``(window_start, key)`` are then additive deltas, as in streaming.

The ledger is keyed by URI: an object rewritten under the same key is not read again.
"""

from __future__ import annotations

import io
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sesbeam.schemas import PARTITION_COLUMN
from sesbeam.transforms._arrow import MS_PER_DAY, epoch_ms
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.write import LEDGER_DIR, day_name

__all__ = ["DropEarlierMessages", "SkipProcessed", "read_ledger"]


def read_ledger(output: str, storage: Storage | None = None):
    """Every URI recorded in ``OUT/_ledger/``."""
    storage = storage or Storage()
    for path in storage.files(f"{output.rstrip('/')}/{LEDGER_DIR}"):
        with storage.open(path) as f:
            for line in f.read().splitlines():
                if line.strip():
                    yield json.loads(line)["uri"]


class _ReadLedgerDoFn(beam.DoFn):
    def setup(self):
        self._storage = Storage()

    def process(self, output: str):
        for uri in read_ledger(output, self._storage):
            yield uri, None


class _KeepNewDoFn(beam.DoFn):
    def process(self, element):
        _, grouped = element
        objects = list(grouped["objects"])
        if not objects:
            return
        if list(grouped["done"]):
            yield beam.pvalue.TaggedOutput(
                SkipProcessed.TALLIES, {"ledger": {"already_processed": len(objects)}})
        else:
            yield objects[0]


class SkipProcessed(beam.PTransform):
    """``ArchiveObject``s -> ``{"objects": those not in OUT's ledger, "tallies"}``."""

    OBJECTS = "objects"
    TALLIES = "tallies"

    def __init__(self, output: str):
        super().__init__()
        self._output = output.rstrip("/")

    def expand(self, objects):
        done = (objects.pipeline
                | "LedgerLocation" >> beam.Create([self._output])
                | "ReadLedger" >> beam.ParDo(_ReadLedgerDoFn()))
        listed = objects | "KeyByUri" >> beam.Map(lambda o: (o.uri, o))
        outputs = ({"objects": listed, "done": done}
                   | "JoinLedger" >> beam.CoGroupByKey()
                   | "KeepNew" >> beam.ParDo(_KeepNewDoFn()).with_outputs(
                       self.TALLIES, main=self.OBJECTS))
        return {self.OBJECTS: outputs[self.OBJECTS], self.TALLIES: outputs[self.TALLIES]}


class _DropEarlierDoFn(beam.DoFn):
    """Keeps, per worker, the message ids of each day's committed partition it needed."""

    _CACHED_DAYS = 8

    def __init__(self, output: str):
        self._output = output

    def setup(self):
        self._storage = Storage()
        self._ids: dict[int, pa.Array] = {}

    def _committed_ids(self, day: int) -> pa.Array:
        if day not in self._ids:
            if len(self._ids) >= self._CACHED_DAYS:
                self._ids.pop(next(iter(self._ids)))
            folder = f"{self._output}/messages/{PARTITION_COLUMN}={day_name(day)}"
            chunks = []
            for path in self._storage.files(folder):
                if path.endswith(".parquet"):
                    with self._storage.open(path) as f:
                        table = pq.read_table(io.BytesIO(f.read()), columns=["message_id"])
                    chunks.append(table.column("message_id").combine_chunks())
            ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
            self._ids[day] = pc.unique(ids)
        return self._ids[day]

    def process(self, batch: pa.RecordBatch):
        days = epoch_ms(batch.column("event_time")) // MS_PER_DAY
        earlier = np.zeros(batch.num_rows, dtype=bool)
        for day in np.unique(days).tolist():
            ids = self._committed_ids(day)
            if len(ids):
                known = pc.is_in(batch.column("message_id"), value_set=ids, skip_nulls=True)
                earlier |= (days == day) & known.to_numpy(zero_copy_only=False)
        dropped = int(earlier.sum())
        if dropped:
            batch = batch.filter(pa.array(~earlier))
            yield beam.pvalue.TaggedOutput(DropEarlierMessages.TALLIES, {
                "duplicates": dropped, "ledger": {"earlier_run_duplicates": dropped}})
        if batch.num_rows:
            yield batch


class DropEarlierMessages(beam.PTransform):
    """Message batches -> ``{"messages": those whose id OUT's messages table lacks,
    "tallies": the others, counted as duplicates}``."""

    MESSAGES = "messages"
    TALLIES = "tallies"

    def __init__(self, output: str):
        super().__init__()
        self._output = output.rstrip("/")

    def expand(self, batches):
        outputs = batches | "DropEarlier" >> beam.ParDo(
            _DropEarlierDoFn(self._output)).with_outputs(self.TALLIES, main=self.MESSAGES)
        return {self.MESSAGES: outputs[self.MESSAGES], self.TALLIES: outputs[self.TALLIES]}
