"""The batch pipeline: archives -> messages, verdict_stats, sender_stats, dead_letters."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import sys
import tempfile
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)

from sesbeam.pipeline import worker
from sesbeam.pipeline.options import BatchOptions, parse_duration
from sesbeam.schemas import SCHEMA_VERSION
from sesbeam.transforms.privacy import PrivacyPolicy, ProtectPersonalData, hash_key_from_env
from sesbeam.transforms.containers import DEFAULT_MAX_RECORD_BYTES
from sesbeam.transforms import progress
from sesbeam.transforms.incremental import DropEarlierMessages, SkipProcessed
from sesbeam.transforms.read import expand_location
from sesbeam.transforms._storage import is_remote
from sesbeam.transforms.write import STAGING_DIR, recover
from sesbeam.transforms.signatures import CertificateStore
from sesbeam.transforms import (
    CommitOutput,
    ComputeSenderStats,
    ComputeVerdictStats,
    DecodeNotifications,
    DeduplicateMessages,
    ReadArchives,
    WriteTable,
)

__all__ = ["DEFAULT_LOCAL_RUNNER", "UsageError", "build_batch", "choose_local_workers",
           "local_runner", "new_run_id", "read_summary", "run_batch",
           "security_from_options"]

_LOG = logging.getLogger(__name__)

#: The runner used when none is given: Beam's in-process portable runner. Naming it skips
#: the DirectRunner's attempt to download and start Prism, which cannot succeed offline.
DEFAULT_LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"

#: Flush period of the FnApiRunner's ``multi_threading`` workers: longer than any bundle.
#: Beam (2.77) starts these workers (threads of this process, talking to the runner over
#: gRPC) with a 1 s periodic flush of each bundle's output streams, run by a thread of its
#: own. That flush sends the stream's bytes, then empties the stream
#: (``data_plane.SizeBasedBufferingClosableOutputStream.flush``: ``get()``, the send,
#: ``_clear()``); only other flushes are locked out, so whatever the bundle writes in
#: between is dropped, whole elements, without an error. Without the periodic flush the
#: streams are flushed by size and at the end of the bundle, by the bundle's own thread,
#: as the in-process and ``multi_processing`` workers always do.
NO_PERIODIC_FLUSH_MS = 2**31 - 1

#: Local runs over at least this many input bytes (as stored: gzip counts compressed) get
#: worker processes by default (``choose_local_workers``): below it, starting them costs
#: about what they save (100k SNS notifications, 126 MB: 13.1 s with two, 13.6 s without).
PARALLEL_MIN_BYTES = 128 << 20
#: At most this many default worker processes: each holds its own decoder and its share
#: of a stage (~300-550 MiB at 1M notifications with two).
MAX_LOCAL_WORKERS = 4
_LOCAL_RUNNERS = ("fnapirunner", "fnapi", "directrunner", "direct")


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: sortable, unique enough for file names."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{secrets.token_hex(3)}"


def build_batch(pipeline: beam.Pipeline, inputs: list[str], output: str, *, window_s: int,
                run_id: str, dedupe_buckets: int = 16,
                certificates: CertificateStore | None = None,
                privacy: PrivacyPolicy | None = None, fail_on_unreadable: bool = False,
                max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, incremental: bool = False,
                shuffle_dir: str | None = None):
    """Add the batch graph to ``pipeline``; returns the PCollection of the run summary.

    ``certificates``: verify SNS signatures with this store. ``privacy``: hash or drop
    personal fields after deduplication (statistics work on the protected rows).
    ``incremental``: skip the objects in OUT's ledger and add to the tables (see
    ``sesbeam.transforms.incremental``); otherwise the run replaces OUT's tables.
    ``shuffle_dir``: local runners only, a folder every worker can read: the shuffled rows
    travel through files there instead of the runner's memory (see ``_arrow.pack``).
    """
    output = output.rstrip("/")
    staging = f"{output}/_staging/{run_id}"
    objects = pipeline | "ReadArchives" >> ReadArchives(inputs)
    extra_tallies = []
    if incremental:
        new = objects | "SkipProcessed" >> SkipProcessed(output)
        objects = new["objects"]
        extra_tallies.append(new["tallies"])
    decoded = objects | DecodeNotifications(certificates, max_record_bytes, fail_on_unreadable)
    deduped = decoded["messages"] | DeduplicateMessages(dedupe_buckets, shuffle_dir)
    messages, dead_letters = deduped["messages"], decoded["dead_letters"]
    if privacy is not None and not privacy.is_noop:
        messages = messages | "ProtectMessages" >> ProtectPersonalData(privacy)
        dead_letters = dead_letters | "ProtectDeadLetters" >> ProtectPersonalData(privacy)
    if incremental:  # after protection: ids compare in the form the table holds
        kept = messages | "DropEarlierMessages" >> DropEarlierMessages(output)
        messages = kept["messages"]
        extra_tallies.append(kept["tallies"])
    tables = {
        "messages": messages,
        "verdict_stats": messages | ComputeVerdictStats(window_s),
        "sender_stats": messages | ComputeSenderStats(window_s),
        "dead_letters": dead_letters,
    }
    written = [pcoll | f"Write_{name}" >> WriteTable(staging, name, run_id, shuffle_dir)
               for name, pcoll in tables.items()]
    tallies = ([decoded["tallies"], deduped["tallies"], *extra_tallies, *written]
               | "AllTallies" >> beam.Flatten())
    context = {"run_id": run_id, "inputs": list(inputs), "window_seconds": window_s,
               "mode": "incremental" if incremental else "replace",
               "schema_version": SCHEMA_VERSION, "max_record_bytes": max_record_bytes,
               "sns_signatures_verified": certificates is not None}
    if privacy is not None:
        context["privacy"] = {"local_parts": privacy.local_parts, "subjects": privacy.subjects,
                              "message_ids": privacy.message_ids,
                              "dead_letter_raw": privacy.dead_letter_raw}
    return tallies | CommitOutput(output, staging, replace=not incremental, **context)


def local_runner(options: PipelineOptions):
    """The runner instance to give ``beam.Pipeline``, or None for the one ``options`` name.

    Only the FnApiRunner with worker threads or processes gets an instance (so does the
    DirectRunner for a batch pipeline, which it would run on the FnApiRunner):

    - ``--direct_running_mode multi_threading``: the same in-process gRPC workers without
      Beam's periodic flush, which loses elements (``NO_PERIODIC_FLUSH_MS``);
    - ``multi_processing``: the same worker processes, started as
      ``python -m sesbeam.pipeline.worker`` (Beam's SDK harness, ending without the
      interpreter's teardown: see ``sesbeam.pipeline.worker``).

    Beam's ``run_pipeline`` replaces the workers' environment whenever a mode is set, so
    the mode is unset here; the number of workers (``--direct_num_workers``) still applies.
    """
    direct = options.view_as(DirectOptions)
    standard = options.view_as(StandardOptions)
    name = _runner_name(options)
    mode = direct.direct_running_mode
    if mode not in ("multi_threading", "multi_processing") or name is None:
        return None
    direct_batch = name in ("directrunner", "direct") and not standard.streaming
    if name not in ("fnapirunner", "fnapi") and not direct_batch:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import (
        EmbeddedPythonGrpcEnvironment,
        SubprocessSDKEnvironment,
        python_sdk_capabilities,
    )

    direct.direct_running_mode = None
    if mode == "multi_processing":
        command = f"{shlex.quote(sys.executable)} -m {worker.COMMAND_MODULE}"
        return FnApiRunner(
            default_environment=SubprocessSDKEnvironment.from_command_string(command))
    return FnApiRunner(default_environment=EmbeddedPythonGrpcEnvironment(
        data_buffer_time_limit_ms=NO_PERIODIC_FLUSH_MS,
        capabilities=python_sdk_capabilities(), artifacts=()))


def _runner_name(options: PipelineOptions) -> str | None:
    """The runner ``options`` name, lower case without its module (None: an instance)."""
    name = options.view_as(StandardOptions).runner
    return name.rsplit(".", 1)[-1].lower() if isinstance(name, str) else None


def _is_local(options: PipelineOptions) -> bool:
    """Whether ``options`` run the batch pipeline on this machine's FnApiRunner."""
    return _runner_name(options) in _LOCAL_RUNNERS


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_local_workers(input_bytes: int, cpus: int) -> int:
    """Worker processes for a local run that names none: one per CPU up to
    ``MAX_LOCAL_WORKERS`` when the input reaches ``PARALLEL_MIN_BYTES``, else 1 (the
    runner's own process)."""
    if input_bytes < PARALLEL_MIN_BYTES or cpus < 2:
        return 1
    return min(cpus, MAX_LOCAL_WORKERS)


def _input_bytes(inputs: list[str], enough: int) -> int:
    """Bytes of the objects under ``inputs``, counted until ``enough``."""
    total = 0
    for location in inputs:
        for _, size, _ in expand_location(location):
            total += size or 0
            if total >= enough:
                return total
    return total


def _given(argv: list[str] | None, *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv or ()
               for flag in flags)


def _default_local_workers(options: PipelineOptions, argv: list[str] | None,
                           inputs: list[str]) -> None:
    """Local runs that name no ``--direct_num_workers``/``--direct_running_mode`` get
    worker processes (``multi_processing``) per ``choose_local_workers``."""
    if _given(argv, "--direct_num_workers", "--direct_running_mode"):
        return
    try:
        workers = choose_local_workers(_input_bytes(inputs, PARALLEL_MIN_BYTES), _cpus())
    except Exception as e:  # noqa: BLE001 - the pipeline's own listing reports it properly
        _LOG.debug("could not size the input (%s): one process", e)
        return
    if workers > 1:
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = workers
        _LOG.info("local run: %d worker processes", workers)


def _make_run_dir(parent: str | None, output: str, run_id: str) -> str:
    """A new folder for a local run's shuffle files and its workers' progress counts:
    under ``parent`` if given, else in the run's staging folder when the output is local
    (so that ``recover`` removes what a crashed run left), else in the system's temporary
    folder."""
    if parent is None and not is_remote(output):
        parent = f"{output.rstrip('/')}/{STAGING_DIR}/{run_id}"
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"shuffle-{run_id}-", dir=parent)


def _worker_processes(options: PipelineOptions) -> int:
    """How many worker processes of their own a local run starts (0: none)."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 0
    return direct.direct_num_workers or 1


def _share_progress(folder: str) -> None:
    """Worker processes write their progress counts to ``folder/progress`` (set in the
    environment they inherit); this process draws the sums (``progress.follow``)."""
    shared = os.path.join(folder, "progress")
    os.makedirs(shared, exist_ok=True)
    os.environ[progress.DIR_ENV] = shared
    progress.follow(shared)


def security_from_options(opts) -> tuple[CertificateStore | None, PrivacyPolicy | None]:
    """The certificate store and privacy policy the options ask for (usage errors exit 2)."""
    certificates = None
    if opts.verify_sns_signatures:
        certificates = CertificateStore(opts.sns_certificates,
                                        allow_fetch=opts.fetch_sns_certificates)
    elif opts.sns_certificates or opts.fetch_sns_certificates:
        raise UsageError("--sns_certificates and --fetch_sns_certificates need "
                         "--verify_sns_signatures")
    modes = {"local_parts": opts.local_parts, "subjects": opts.subjects,
             "message_ids": opts.message_ids, "dead_letter_raw": opts.dead_letter_raw}
    if all(m == "keep" for m in modes.values()):
        return certificates, None
    key = None
    if "hash" in modes.values():
        try:
            key = hash_key_from_env(opts.hash_key_env)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        return certificates, PrivacyPolicy(hash_key=key, **modes)
    except ValueError as e:
        raise UsageError(str(e)) from None


class UsageError(ValueError):
    """A command-line mistake: the CLI prints it and exits with code 2."""


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
        raise UsageError("--input and --output are required")
    try:
        window_s = parse_duration(batch.window or "1d")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if batch.max_record_bytes < 1:
        raise UsageError("--max_record_bytes must be positive")
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_LOCAL_RUNNER
    run_id = batch.run_id or new_run_id()
    certificates, privacy = security_from_options(batch)
    dry_run = options.view_as(TestOptions).dry_run
    local = _is_local(options) and not standard.streaming and not dry_run
    if local:
        _default_local_workers(options, argv, batch.input)
    if not dry_run:
        recover(batch.output)  # finish a commit a crash interrupted; drop abandoned staging
    files = local and batch.local_shuffle == "files"
    workers = _worker_processes(options) if local else 0
    run_dir = _make_run_dir(batch.shuffle_dir, batch.output, run_id) \
        if files or workers else None
    shuffle_dir = run_dir if files else None
    forks = worker.ForkServer(workers) \
        if workers and batch.local_worker_start == "fork" and worker.can_fork() else None
    try:
        if forks is not None:
            forks.start()  # before any thread of this process starts (see ForkServer)
        if workers:
            _share_progress(run_dir)
        with beam.Pipeline(runner=local_runner(options), options=options) as pipeline:
            build_batch(pipeline, batch.input, batch.output, window_s=window_s, run_id=run_id,
                        dedupe_buckets=batch.dedupe_buckets, certificates=certificates,
                        privacy=privacy, fail_on_unreadable=batch.fail_on_unreadable,
                        max_record_bytes=batch.max_record_bytes,
                        incremental=batch.incremental, shuffle_dir=shuffle_dir)
    finally:
        if forks is not None:
            forks.stop()
        if workers:
            progress.reporter().unfollow()
            os.environ.pop(progress.DIR_ENV, None)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    if dry_run:
        return {}
    summary = read_summary(batch.output)
    if summary.get("run_id") != run_id:
        raise RuntimeError(f"summary.json in {batch.output} is not from run {run_id}")
    return summary
