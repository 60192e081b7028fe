"""Write RecordBatches as partitioned Parquet, then commit the run's output.

``WriteTable`` writes one table into a run's staging directory
(``OUT/_staging/<run_id>/<table>/date=YYYY-MM-DD/part-NNNNN-<run_id>.parquet``, zstd, the
schema version in the key-value metadata) and emits one record per file. ``CommitOutput``
runs once after every file is written: it moves the staged files into ``OUT/<table>/``,
deletes the files of earlier runs from those tables (a rerun replaces, never appends),
writes ``OUT/summary.json`` last, and removes the staging directory. Everything goes
through Beam's ``FileSystems``, so ``OUT`` may be local or ``s3://``.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.transforms import window as beam_window

from sesbeam.schemas import PARTITION_COLUMN, TABLES, parquet_metadata
from sesbeam.transforms._arrow import MS_PER_DAY, epoch_ms, pack, partition, unpack
from sesbeam.transforms._storage import Storage, is_remote
from sesbeam.transforms.summary import build_summary, merge_tallies

__all__ = ["CommitOutput", "WriteTable", "write_parquet"]

_LOG = logging.getLogger(__name__)

#: Rows per Parquet file at most; a larger partition is written as several files.
ROWS_PER_FILE = 1_000_000
#: Rows per Parquet row group: big enough for good compression and zone maps.
ROWS_PER_GROUP = 128 * 1024
_EPOCH_DAY = date(1970, 1, 1)
_NO_PARTITION = -(2**62)


def day_name(day: int) -> str:
    """``YYYY-MM-DD`` of a day number since the epoch."""
    return (_EPOCH_DAY + timedelta(days=day)).isoformat()


def write_parquet(table: pa.Table, path: str, table_name: str,
                  storage: Storage | None = None) -> None:
    """Write ``table`` to ``path`` (any Beam filesystem) as one zstd Parquet file."""
    schema = TABLES[table_name][0]
    schema = schema.with_metadata({**(schema.metadata or {}), **parquet_metadata(table_name)})
    with (storage or Storage()).create(path, mime_type="application/vnd.apache.parquet") as f:
        with pq.ParquetWriter(f, schema, compression="zstd") as writer:
            writer.write_table(table.select(schema.names).cast(schema),
                               row_group_size=ROWS_PER_GROUP)


def _key_by_day(batch: pa.RecordBatch, column: str | None):
    if column is None:
        yield _NO_PARTITION, pack(batch)  # shuffled compressed: see _arrow.pack
    else:
        for day, part in partition(batch, epoch_ms(batch.column(column)) // MS_PER_DAY):
            yield day, pack(part)


class _WriteDoFn(beam.DoFn):
    def __init__(self, staging: str, table: str, run_id: str):
        self._staging = staging
        self._table = table
        self._run_id = run_id

    def setup(self):
        self._storage = Storage()

    def process(self, element):
        day, parts = element
        table = pa.concat_tables([unpack(p) for p in parts])
        column = TABLES[self._table][1]
        if column is not None:
            table = table.take(pc.sort_indices(table, sort_keys=[(column, "ascending")]))
        folder = self._table
        if day != _NO_PARTITION:
            folder = f"{folder}/{PARTITION_COLUMN}={day_name(day)}"
        for i, start in enumerate(range(0, table.num_rows, ROWS_PER_FILE)):
            relative = f"{folder}/part-{i:05d}-{self._run_id}.parquet"
            rows = min(ROWS_PER_FILE, table.num_rows - start)
            write_parquet(table.slice(start, rows), f"{self._staging}/{relative}", self._table,
                          self._storage)
            yield {"files": [relative], "tables": {self._table: {"files": 1, "rows": rows}}}


class WriteTable(beam.PTransform):
    """RecordBatches of one table -> staged Parquet files; emits one tally per file."""

    def __init__(self, staging: str, table: str, run_id: str):
        super().__init__()
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        self._staging = staging.rstrip("/")
        self._table = table
        self._run_id = run_id

    def expand(self, batches):
        return (
            batches
            | "GlobalWindow" >> beam.WindowInto(beam_window.GlobalWindows())
            | "KeyByDay" >> beam.FlatMap(_key_by_day, TABLES[self._table][1])
            | "GroupByDay" >> beam.GroupByKey()
            | "WriteParquet" >> beam.ParDo(_WriteDoFn(self._staging, self._table, self._run_id))
        )


class _CommitDoFn(beam.DoFn):
    def __init__(self, output: str, staging: str, context: dict):
        self._output = output
        self._staging = staging
        self._context = context

    def setup(self):
        self._storage = Storage()

    def _existing(self, folder: str) -> list[str]:
        if not is_remote(folder) and not self._storage.exists(folder):
            return []
        return [path for path, _, _ in self._storage.list(folder + "/**")]

    def process(self, tally: dict):
        tally = dict(tally)
        files = tally.pop("files", [])
        staged = set(self._existing(self._staging))
        keep = set()
        for relative in sorted(files):
            src, dst = f"{self._staging}/{relative}", f"{self._output}/{relative}"
            keep.add(dst)
            if src in staged:  # absent when a retried commit already moved it
                self._storage.rename(src, dst)
        for table in TABLES:
            self._storage.delete(
                [p for p in self._existing(f"{self._output}/{table}") if p not in keep])
        summary = build_summary(tally, output=self._output, **self._context)
        with self._storage.create(f"{self._output}/summary.json", "application/json") as f:
            f.write(json.dumps(summary, indent=2).encode() + b"\n")
        self._storage.delete(self._existing(self._staging))
        if not is_remote(self._staging) and self._storage.exists(self._staging):
            self._storage.delete([self._staging])
        yield summary


class CommitOutput(beam.PTransform):
    """Tallies of the whole run -> files moved into place, ``summary.json`` written.

    Emits the summary dict (one element) once the output is committed.
    """

    def __init__(self, output: str, staging: str, **context):
        super().__init__()
        self._output = output.rstrip("/")
        self._staging = staging.rstrip("/")
        self._context = context

    def expand(self, tallies):
        return (
            tallies
            | "GlobalWindow" >> beam.WindowInto(beam_window.GlobalWindows())
            | "MergeTallies" >> beam.CombineGlobally(merge_tallies)
            | "Commit" >> beam.ParDo(_CommitDoFn(self._output, self._staging, self._context))
        )
