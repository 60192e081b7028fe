"""Pipeline options of sesbeam's pipelines (every other flag goes to Beam)."""

from __future__ import annotations

import re

from apache_beam.options.pipeline_options import PipelineOptions

from sesbeam.transforms.containers import DEFAULT_MAX_RECORD_BYTES

__all__ = ["BatchOptions", "StreamOptions", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``1h``, ``1d``, ``1w`` (a bare number is seconds)."""
    m = _DURATION.match(str(text))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 1h, 1d, 1w)")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


class BatchOptions(PipelineOptions):
    """Options of ``sesbeam batch``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input", action="append", default=None,
            help="Archive location: a file, a directory or s3://bucket/prefix (read "
                 "recursively), or a glob (** crosses directories). Repeat for several.")
        parser.add_argument(
            "--output", default=None,
            help="Output root, local or s3://. Tables go to OUT/<table>/, the run's "
                 "accounting to OUT/summary.json. A rerun replaces the previous output.")
        parser.add_argument(
            "--window", default=None,
            help="Fixed UTC window of the statistics tables: 30s, 15m, 1h, 1d, 1w "
                 "(default: 1d for batch, 1h for stream).")
        parser.add_argument(
            "--dedupe_buckets", "--dedupe-buckets", type=int, default=16,
            help="Shuffle buckets for deduplication by message id (parallelism of that step).")
        parser.add_argument(
            "--run_id", "--run-id", default=None,
            help="Identifier of this run, used in file names (default: UTC time + random).")
        parser.add_argument(
            "--fail_on_unreadable", "--fail-on-unreadable", action="store_true",
            help="Fail the run when an archive object cannot be read (default: record it as "
                 "an unreadable_source dead letter, go on, and exit with code 4).")
        parser.add_argument(
            "--incremental", action="store_true",
            help="Process only the archive objects that no earlier run on this output "
                 "recorded in OUT/_ledger/, count messages already in OUT's tables as "
                 "duplicates, and add this run's files to the tables instead of replacing "
                 "them (for scheduled runs over a growing prefix).")
        parser.add_argument(
            "--max_record_bytes", "--max-record-bytes", type=int,
            default=DEFAULT_MAX_RECORD_BYTES,
            help="Largest top-level JSON value (an NDJSON line, a document, a JSON array) "
                 "decoded; a larger one is a too_large dead letter, skipped without being "
                 f"held in memory (default {DEFAULT_MAX_RECORD_BYTES} bytes).")
        parser.add_argument(
            "--local_shuffle", "--local-shuffle", choices=("files", "memory"),
            default="files",
            help="Local runners: pass the shuffled rows between stages as files in "
                 "--shuffle_dir (default; the runner then holds only their paths) or in "
                 "the runner's memory. Other runners use their own shuffle.")
        parser.add_argument(
            "--local_worker_start", "--local-worker-start", choices=("fork", "spawn"),
            default="fork",
            help="Local runs with worker processes: fork them from a copy of this process "
                 "made before the pipeline starts, with everything imported (default, "
                 "Linux; about 2 s sooner at work), or start each as a new Python process "
                 "that imports Beam itself.")
        parser.add_argument(
            "--shuffle_dir", "--shuffle-dir", default=None,
            help="Local runners: folder under which the run's shuffle files are kept, "
                 "in a folder of their own removed when the run ends (default: the run's "
                 "staging folder OUT/_staging/RUN_ID for a local OUT, else the system's "
                 "temporary folder, $TMPDIR).")
        _add_security_args(parser)


class StreamOptions(PipelineOptions):
    """Options of ``sesbeam stream`` besides the shared ones of ``BatchOptions``
    (``--output``, ``--window`` (default 1h here), ``--run_id``, signatures, privacy)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--queue_url", "--queue-url", action="append", default=None,
            help="SQS queue to read (subscribed to the SES topic; raw delivery on or off). "
                 "Repeat for several queues, in any regions.")
        parser.add_argument(
            "--allowed_lateness", "--allowed-lateness", default="15m",
            help="How long after a window's end late notifications still count (late panes); "
                 "0 for none. Later ones are dropped and counted.")
        parser.add_argument(
            "--early_results_every", "--early-results-every", default=None,
            help="Also emit early (partial) results every this much processing time.")
        parser.add_argument(
            "--idle_timeout", "--idle-timeout", type=float, default=None,
            help="Drain mode: stop once the queues have been empty this many seconds, then "
                 "write summary.json. Without it the job runs until cancelled.")
        parser.add_argument(
            "--readers_per_queue", "--readers-per-queue", type=int, default=2,
            help="Parallel readers per queue.")
        parser.add_argument(
            "--visibility_timeout", "--visibility-timeout", type=int, default=120,
            help="Visibility timeout (seconds) requested when receiving and extended while a "
                 "message is in flight: after a crash, unfinished messages reappear this long "
                 "after their last extension.")


def _add_security_args(parser) -> None:
    """Signature verification and personal-data options (batch and streaming)."""
    parser.add_argument(
        "--verify_sns_signatures", "--verify-sns-signatures", action="store_true",
        help="Check the signature of every SNS notification envelope; a missing or bad one "
             "makes the record an invalid_signature dead letter.")
    parser.add_argument(
        "--sns_certificates", "--sns-certificates", default=None,
        help="Directory of SNS signing certificates (*.pem, named as in SigningCertURL), "
             "for archives and offline runs. Expired certificates are accepted.")
    parser.add_argument(
        "--fetch_sns_certificates", "--fetch-sns-certificates", action="store_true",
        help="Fetch certificates missing from --sns_certificates over HTTPS, only from "
             "sns.<region>.amazonaws.com hosts.")
    for name, what in (("local_parts", "recipient and sender address local parts"),
                       ("subjects", "subjects"),
                       ("message_ids", "RFC 5322 Message-IDs (smtp_message_id)")):
        parser.add_argument(
            f"--{name}", f"--{name.replace('_', '-')}", choices=("keep", "hash", "drop"),
            default="keep", help=f"What to write of {what}: keep, hash (keyed HMAC, stable "
                                 "across runs) or drop. Statistics are unaffected.")
    parser.add_argument(
        "--dead_letter_raw", "--dead-letter-raw", choices=("keep", "drop"), default="keep",
        help="Keep or drop the raw bytes of dead letters (they may hold personal data).")
    parser.add_argument(
        "--hash_key_env", "--hash-key-env", default="SESBEAM_HASH_KEY",
        help="Environment variable holding the hashing key (at least 16 bytes) when a field "
             "is hashed. Keep the key secret and the same across runs.")
