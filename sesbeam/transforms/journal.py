"""Crash safety of drain-mode streaming runs: a journal of received messages and a commit.

A drain-mode run (``sesbeam stream --idle-timeout``) keeps everything of its own under
``OUT/_journal/`` until it commits:

1. **Journal.** The stage that reads SQS writes the raw messages of each bundle to
   ``_journal/<run_id>-<random>.parquet`` in ``finish_bundle``. The runner deletes the
   messages from SQS only after that (bundle finalization follows the bundle), so a message
   deleted from SQS is always in a complete journal file. A file cut short by a crash has no
   Parquet footer: it is unreadable, and its messages were never deleted.
2. **Staging.** The tables are written to ``_journal/staging/<run_id>/<table>/...``, never
   straight into ``OUT/<table>/``.
3. **Commit** (once, at the end): a manifest ``_journal/commit-<run_id>.json`` (the staged
   files, the journal files the run consumed, the summary) is written first; then the staged
   files are moved into the tables, ``summary.json`` is written, the consumed journal files
   and the staging folder are deleted, and the manifest last.

``recover`` runs before a drain-mode run starts: it finishes a commit whose manifest exists
(every step is idempotent), deletes the staging of runs that never committed, and returns
the journal files left by runs that crashed. The new run decodes those messages again
together with what it reads, and drops the SQS redeliveries of messages it recovered (by
SQS message id), so a crash at any point loses nothing and counts nothing twice. One run at
a time per output.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import NamedTuple, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from sesbeam.transforms._storage import Storage, is_remote
from sesbeam.transforms.sqs import SqsMessage

__all__ = ["JOURNAL", "Recovery", "ReadJournal", "commit", "journal_path", "read_journal",
           "recover", "staging_root", "write_journal"]

_LOG = logging.getLogger(__name__)

JOURNAL = "_journal"
_SCHEMA = pa.schema([
    ("queue_url", pa.string()),
    ("message_id", pa.string()),
    ("body", pa.large_string()),
    ("sent_timestamp_ms", pa.int64()),
    ("event_time_ms", pa.int64()),
])


def journal_path(output: str, run_id: str) -> str:
    """A new journal file of ``run_id``."""
    return f"{output}/{JOURNAL}/{run_id}-{uuid.uuid4().hex[:16]}.parquet"


def staging_root(output: str, run_id: str) -> str:
    return f"{output}/{JOURNAL}/staging/{run_id}"


def write_journal(storage: Storage, path: str, entries: Sequence[tuple[SqsMessage, int]]) -> None:
    """Write ``(message, event time ms)`` pairs to one journal file."""
    table = pa.table({
        "queue_url": [m.queue_url for m, _ in entries],
        "message_id": [m.message_id for m, _ in entries],
        "body": [m.body for m, _ in entries],
        "sent_timestamp_ms": [m.sent_timestamp_ms for m, _ in entries],
        "event_time_ms": [ms for _, ms in entries],
    }, schema=_SCHEMA)
    with storage.create(path, "application/vnd.apache.parquet") as f:
        pq.write_table(table, f, compression="zstd")


def read_journal(storage: Storage, path: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open(path) as f:
        return pq.read_table(pa.BufferReader(f.read()), columns=columns)


class Recovery(NamedTuple):
    """What ``recover`` found: journal files of crashed runs and their SQS message ids."""

    files: tuple[str, ...] = ()
    message_ids: frozenset = frozenset()
    #: Runs whose interrupted commit was finished.
    committed: tuple[str, ...] = ()
    #: Per file, ids already in an earlier file (a runner retried the bundle that wrote it).
    repeated: dict | None = None


def recover(output: str, storage: Storage | None = None) -> Recovery:
    """Finish interrupted commits, drop uncommitted staging, list the journal to replay."""
    storage = storage or Storage()
    output = output.rstrip("/")
    folder = f"{output}/{JOURNAL}"
    committed = []
    for manifest in storage.files(folder, "commit-*.json"):
        try:
            with storage.open(manifest) as f:
                plan = json.loads(f.read())
        except ValueError:  # cut short: the commit had not started moving files
            _LOG.warning("ignoring the incomplete commit manifest %s", manifest)
            storage.delete([manifest])
            continue
        _apply(storage, output, plan, manifest)
        committed.append(plan["run_id"])
    stale = storage.files(f"{folder}/staging")
    if stale:
        _LOG.info("deleting %d staged files of runs that did not commit", len(stale))
        storage.delete(stale)
    files, ids, repeated = [], set(), {}
    for path in storage.files(folder, "*.parquet"):
        try:
            table = read_journal(storage, path, ["message_id"])
        except Exception as e:  # noqa: BLE001 - cut short by a crash: never finalized
            _LOG.warning("deleting the incomplete journal file %s (%s); its messages were not "
                         "deleted from SQS", path, e)
            storage.delete([path])
            continue
        files.append(path)
        mine = set(table.column("message_id").to_pylist())
        if mine & ids:
            repeated[path] = frozenset(mine & ids)
        ids.update(mine)
    if files:
        _LOG.warning("recovering %d messages from %d journal files of an interrupted run",
                     len(ids), len(files))
    return Recovery(tuple(files), frozenset(ids), tuple(committed), repeated)


def commit(output: str, run_id: str, files: list[str], journal_files: list[str],
           summary: dict, storage: Storage | None = None) -> None:
    """Move a drain-mode run's staged files into the tables (see the module doc)."""
    storage = storage or Storage()
    output = output.rstrip("/")
    folder = f"{output}/{JOURNAL}"
    journal_files = sorted(set(journal_files)
                           | set(storage.files(folder, f"{run_id}-*.parquet")))
    plan = {"run_id": run_id, "files": sorted(files), "journal": journal_files,
            "summary": summary}
    manifest = f"{folder}/commit-{run_id}.json"
    with storage.create(manifest, "application/json") as f:
        f.write(json.dumps(plan).encode())
    _apply(storage, output, plan, manifest)


def _apply(storage: Storage, output: str, plan: dict, manifest: str) -> None:
    run_id = plan["run_id"]
    staging = staging_root(output, run_id)
    for relative in plan["files"]:
        src = f"{staging}/{relative}"
        if storage.exists(src):  # absent when an interrupted commit moved it already
            storage.rename(src, f"{output}/{relative}")
    body = json.dumps(plan["summary"], indent=2).encode() + b"\n"
    for path in (f"{output}/summary.json", f"{output}/_summaries/{run_id}.json"):
        with storage.create(path, "application/json") as f:
            f.write(body)
    storage.delete([p for p in plan["journal"] if storage.exists(p)])
    leftovers = storage.files(staging)
    storage.delete(leftovers)
    if not is_remote(staging) and storage.exists(staging):
        storage.delete([staging])
    storage.delete([manifest])


class _ReadJournalDoFn(beam.DoFn):
    def __init__(self, repeated: dict):
        self._repeated = repeated

    def setup(self):
        self._storage = Storage()

    def process(self, path: str):
        table = read_journal(self._storage, path)
        repeated = self._repeated.get(path, ())
        for row in table.to_pylist():
            if row["message_id"] in repeated:
                continue
            message = SqsMessage(row["queue_url"], row["message_id"], row["body"],
                                 row["sent_timestamp_ms"], "")
            yield beam.window.TimestampedValue(message, row["event_time_ms"] / 1000.0)


class ReadJournal(beam.PTransform):
    """Journal files -> the ``SqsMessage`` elements they hold, at their event times, each
    SQS message once (``repeated``: ids to leave out per file, from ``Recovery``)."""

    def __init__(self, files: Sequence[str], repeated: dict | None = None):
        super().__init__()
        self._files = list(files)
        self._repeated = dict(repeated or {})

    def expand(self, pbegin):
        return (pbegin
                | "JournalFiles" >> beam.Create(self._files)
                | "ReadJournal" >> beam.ParDo(_ReadJournalDoFn(self._repeated)))
