"""The batch pipeline: archives -> messages, verdict_stats, sender_stats, dead_letters."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from sesbeam.pipeline.options import BatchOptions, parse_duration
from sesbeam.schemas import SCHEMA_VERSION
from sesbeam.transforms import (
    CommitOutput,
    ComputeSenderStats,
    ComputeVerdictStats,
    DecodeNotifications,
    DeduplicateMessages,
    ReadArchives,
    WindowMessages,
    WriteTable,
)

__all__ = ["DEFAULT_LOCAL_RUNNER", "build_batch", "new_run_id", "read_summary", "run_batch"]

_LOG = logging.getLogger(__name__)

#: The runner used when none is given: Beam's in-process portable runner. Naming it skips
#: the DirectRunner's attempt to download and start Prism, which cannot succeed offline.
DEFAULT_LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: sortable, unique enough for file names."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{secrets.token_hex(3)}"


def build_batch(pipeline: beam.Pipeline, inputs: list[str], output: str, *, window_s: int,
                run_id: str, dedupe_buckets: int = 16):
    """Add the batch graph to ``pipeline``; returns the PCollection of the run summary."""
    output = output.rstrip("/")
    staging = f"{output}/_staging/{run_id}"
    decoded = pipeline | "ReadArchives" >> ReadArchives(inputs) | DecodeNotifications()
    deduped = decoded["messages"] | DeduplicateMessages(dedupe_buckets)
    messages = deduped["messages"]
    windowed = messages | WindowMessages(window_s)
    tables = {
        "messages": messages,
        "verdict_stats": windowed | ComputeVerdictStats(),
        "sender_stats": windowed | ComputeSenderStats(),
        "dead_letters": decoded["dead_letters"],
    }
    written = [pcoll | f"Write_{name}" >> WriteTable(staging, name, run_id)
               for name, pcoll in tables.items()]
    tallies = [decoded["tallies"], deduped["tallies"], *written] | "AllTallies" >> beam.Flatten()
    return tallies | CommitOutput(output, staging, run_id=run_id, inputs=list(inputs),
                                  window_seconds=window_s,
                                  schema_version=SCHEMA_VERSION)


def read_summary(output: str) -> dict:
    """The ``summary.json`` of the run committed in ``output``."""
    with FileSystems.open(f"{output.rstrip('/')}/summary.json") as f:
        return json.loads(f.read())


def run_batch(argv: list[str] | None = None) -> dict:
    """Run the batch pipeline with command-line style arguments; returns the summary.

    With ``--dry_run`` (DataflowRunner) the job is only translated: returns ``{}``.
    """
    options = PipelineOptions(argv)
    batch = options.view_as(BatchOptions)
    if not batch.input or not batch.output:
        raise SystemExit("sesbeam batch: --input and --output are required")
    window_s = parse_duration(batch.window)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_LOCAL_RUNNER
    run_id = batch.run_id or new_run_id()
    with beam.Pipeline(options=options) as pipeline:
        build_batch(pipeline, batch.input, batch.output, window_s=window_s, run_id=run_id,
                    dedupe_buckets=batch.dedupe_buckets)
    if options.view_as(TestOptions).dry_run:
        return {}
    summary = read_summary(batch.output)
    if summary.get("run_id") != run_id:
        raise RuntimeError(f"summary.json in {batch.output} is not from run {run_id}")
    return summary
