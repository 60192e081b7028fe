"""The ``sesbeam`` command: ``batch``, ``generate``, ``demo``, ``report``, ``ddl``.

``sesbeam batch`` takes its own flags (``--input``, ``--output``, ``--window``, ...) and any
Beam pipeline option (``--runner``, ``--setup_file``, ``--direct_num_workers``, ...).
``--progress`` / ``--no-progress`` force or silence the progress line (shown by default
only when stderr is a terminal). ``sesbeam report OUT`` writes the HTML report of an output;
``sesbeam ddl OUT --dialect ...`` prints the SQL that creates warehouse tables over it.
Exit codes: 0 done; 1 the pipeline failed; 2 usage error; 3 the run's accounting does not
add up; 4 done, but some archive objects could not be read (see the dead letters).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

__all__ = ["main", "format_summary"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNBALANCED = 3
EXIT_UNREADABLE = 4


def exit_code(summary: dict) -> int:
    """0 done; 3 the accounting does not add up; 4 done, but some objects were unreadable."""
    if not summary["balanced"]:
        return EXIT_UNBALANCED
    if summary["dead_letter_kinds"].get("unreadable_source"):
        return EXIT_UNREADABLE
    return 0


def format_summary(summary: dict, seconds: float | None = None) -> str:
    """A short human-readable table of a run summary."""
    rows = [
        ("sources read", f"{summary['sources']:,} ({summary['bytes'] / 1e6:,.1f} MB)"),
        ("records", f"{summary['records']:,}"),
        ("  messages", f"{summary['messages']:,}"),
        ("  duplicates", f"{summary['duplicates']:,}"),
        ("  skipped", f"{summary['skipped']:,}"
         + "".join(f"\n{'':22}{k}: {v:,}" for k, v in summary["skipped_reasons"].items())),
        ("  dead letters", f"{summary['dead_letters']:,}"
         + "".join(f"\n{'':22}{k}: {v:,}" for k, v in summary["dead_letter_kinds"].items())),
        ("accounting", "balanced" if summary["balanced"] else "NOT BALANCED"),
    ]
    if summary.get("mode") == "incremental":
        ledger = summary.get("ledger", {})
        rows.insert(0, ("incremental", f"{ledger.get('already_processed', 0):,} objects read "
                        f"by earlier runs skipped; {ledger.get('earlier_run_duplicates', 0):,} "
                        "duplicates of earlier runs' messages"))
    for name, info in summary.get("tables", {}).items():
        rows.append((f"table {name}", f"{info['rows']:,} rows in {info['files']:,} files"))
    if seconds is not None:
        rows.append(("duration", f"{seconds:,.1f} s"))
        if seconds > 0:
            rows.append(("throughput", f"{summary['records'] / seconds:,.0f} records/s, "
                                       f"{summary['bytes'] / 1e6 / seconds:,.2f} MB/s"))
    rows.append(("output", summary["output"]))
    return "\n".join(f"{name:<20}  {value}" for name, value in rows)


def _progress_flags(argv: list[str]) -> list[str]:
    """Take ``--progress`` / ``--no-progress`` out of ``argv`` (they set ``SESBEAM_PROGRESS``)."""
    from sesbeam.transforms.progress import ENV

    rest = []
    for arg in argv:
        if arg in ("--progress", "--no-progress", "--no_progress"):
            os.environ[ENV] = "always" if arg == "--progress" else "never"
        else:
            rest.append(arg)
    return rest


def _with_progress(run, argv: list[str]) -> tuple[dict, float]:
    """``run(argv)`` with the progress line; returns the summary and the duration."""
    from sesbeam.transforms import progress

    progress.reset()
    start = time.monotonic()
    try:
        summary = run(argv)
    finally:
        progress.finish()
    return summary, time.monotonic() - start


def _run_batch(argv: list[str]) -> tuple[dict, float]:
    from sesbeam.pipeline.batch import run_batch

    return _with_progress(run_batch, argv)


def _batch(argv: list[str]) -> int:
    argv = _progress_flags(argv)

    if not argv or argv[0] in ("-h", "--help"):
        from sesbeam.pipeline.options import BatchOptions

        parser = argparse.ArgumentParser(
            prog="sesbeam batch",
            description="Read SES notification archives, write deduplicated messages, "
                        "verdict and sender statistics and dead letters as Parquet. "
                        "Any Apache Beam pipeline option is accepted too.")
        BatchOptions._add_argparse_args(parser)
        parser.add_argument("--progress", action="store_true",
                            help="Show the progress line even when stderr is not a terminal.")
        parser.add_argument("--no-progress", action="store_true",
                            help="Never show the progress line (default: only on a terminal; "
                                 "the SESBEAM_PROGRESS environment variable does the same).")
        parser.print_help()
        return 0
    summary, seconds = _run_batch(argv)
    if not summary:
        print("dry run: the pipeline was translated, nothing was executed")
        return 0
    print(format_summary(summary, seconds))
    return exit_code(summary)


def _stream(argv: list[str]) -> int:
    argv = _progress_flags(argv)
    if not argv or argv[0] in ("-h", "--help"):
        from sesbeam.pipeline.options import BatchOptions, StreamOptions

        parser = argparse.ArgumentParser(
            prog="sesbeam stream",
            description="Read SES notifications from SQS queues (SNS subscriptions), write the "
                        "same tables as batch per event-time window and pane. Any Apache Beam "
                        "pipeline option is accepted too; --input does not apply.")
        StreamOptions._add_argparse_args(parser)
        BatchOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    from sesbeam.pipeline.streaming import run_stream

    summary, seconds = _with_progress(run_stream, argv)
    if not summary:
        return 0
    print(format_summary(summary, seconds))
    print(f"{'late, dropped':<20}  {summary['late_dropped']:,}")
    if summary.get("recovered_messages") or summary.get("redeliveries_dropped"):
        print(f"{'recovered':<20}  {summary.get('recovered_messages', 0):,} messages from the "
              f"journal of an interrupted run, {summary.get('redeliveries_dropped', 0):,} "
              "SQS redeliveries dropped")
    return exit_code(summary)


def _generate_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Write a realistic synthetic archive of SES notifications "
                               "(seeded, reproducible).")
    parser.add_argument("--output", required=prog.endswith("generate"),
                        help="Directory to write the archive into.")
    parser.add_argument("--events", type=int, default=10_000,
                        help="Distinct SES receipt messages (default 10000).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--days", type=int, default=7, help="Days spanned (default 7).")
    parser.add_argument("--start", default="2024-03-01", help="First day (default 2024-03-01).")
    parser.add_argument("--bad-records", type=int, default=0,
                        help="Broken records to include, each one dead letter (default 0).")
    parser.add_argument("--manifest", default=None,
                        help="Write the ground truth (expected counts) to this JSON file.")
    return parser


def _generate(argv: list[str]) -> int:
    from sesbeam.generate import generate_archive

    args = _generate_parser("sesbeam generate").parse_args(argv)
    manifest = generate_archive(args.output, events=args.events, seed=args.seed, days=args.days,
                                start=args.start, bad_records=args.bad_records)
    if args.manifest:
        with open(args.manifest, "w") as f:
            json.dump(manifest, f, indent=2)
    print(f"wrote {len(manifest['files'])} files to {args.output}: {manifest['records']:,} "
          f"records, {manifest['messages']:,} messages, {manifest['duplicates']:,} duplicates")
    return 0


def _demo(argv: list[str]) -> int:
    from sesbeam.generate import generate_archive

    argv = _progress_flags(argv)
    parser = _generate_parser("sesbeam demo")
    parser.description = "Generate a sample archive, run the batch pipeline on it, summarise."
    parser.add_argument("--dir", default="demo", help="Working directory (default ./demo).")
    args = parser.parse_args(argv)
    archive, output = os.path.join(args.dir, "archive"), os.path.join(args.dir, "output")
    manifest = generate_archive(archive, events=args.events, seed=args.seed, days=args.days,
                                start=args.start, bad_records=args.bad_records or 8)
    print(f"generated {len(manifest['files'])} archive files in {archive}")
    summary, seconds = _run_batch(["--input", archive, "--output", output])
    print(format_summary(summary, seconds))
    from sesbeam.pipeline.report import text_report, write_html_report

    report = text_report(output)
    report_path = os.path.join(args.dir, "report.txt")
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(report)
    print()
    print(report)
    html_path = write_html_report(output, os.path.join(args.dir, "report.html"))
    print(f"report written to {report_path}; tables in {output}/")
    print(f"HTML report: {os.path.abspath(html_path)}")
    expected = {k: manifest[k] for k in ("records", "messages", "duplicates")}
    got = {k: summary[k] for k in expected}
    print("matches the generator's ground truth" if got == expected
          else f"DIFFERS from the generator's ground truth: expected {expected}, got {got}")
    return 0 if summary["balanced"] and got == expected else EXIT_UNBALANCED


def _report(argv: list[str]) -> int:
    from sesbeam.pipeline.report import (html_report, output_is_committing,
                                         read_output_summary, read_table, text_report,
                                         write_html_report)

    parser = argparse.ArgumentParser(
        prog="sesbeam report",
        description="Turn a batch output into one self-contained HTML page (charts of verdict "
                    "rates, top and new sender domains, DMARC failures, the run's accounting). "
                    "No server and no network: open the file in any browser.")
    parser.add_argument("output", metavar="OUT",
                        help="Output of `sesbeam batch` (local or s3://).")
    parser.add_argument("--html", default="report.html", metavar="FILE",
                        help="Where to write the page (default ./report.html; local or s3://; "
                             "- for stdout).")
    parser.add_argument("--text", action="store_true",
                        help="Also print the plain-text report.")
    parser.add_argument("--top", type=int, default=15,
                        help="Sender domains in the top lists (default 15).")
    args = parser.parse_args(argv)
    out = args.output.rstrip("/")
    if output_is_committing(out):
        print(f"sesbeam report: {out} is incomplete: a run's commit is under way or was "
              "interrupted (_commit.json); the next `sesbeam batch` on it finishes it",
              file=sys.stderr)
        return 3
    if read_output_summary(out) is None and not read_table(out, "verdict_stats",
                                                           ["verdict"]).num_rows:
        print(f"sesbeam report: no sesbeam output in {out} (no summary.json, no tables)",
              file=sys.stderr)
        return 2
    if args.html == "-":
        sys.stdout.write(html_report(out, top=args.top))
        return 0
    if args.text:
        print(text_report(out))
    path = write_html_report(out, args.html, top=args.top)
    print(path if "://" in path else os.path.abspath(path))
    return 0


def _ddl(argv: list[str]) -> int:
    from sesbeam.pipeline.ddl import DIALECTS, ddl, inspect_output

    parser = argparse.ArgumentParser(
        prog="sesbeam ddl",
        description="Print the SQL that creates tables over a batch output's Parquet files "
                    "(types and partitions from sesbeam's Arrow schemas).")
    parser.add_argument("output", metavar="OUT",
                        help="Output of `sesbeam batch` as the warehouse sees it (s3://, "
                             "gs://, a local path for DuckDB).")
    parser.add_argument("--dialect", required=True, choices=DIALECTS)
    parser.add_argument("--database", default=None,
                        help="Athena database, BigQuery dataset, Snowflake or DuckDB schema "
                             "(default sesbeam; DuckDB: the current schema).")
    parser.add_argument("--connection", default=None,
                        help="BigQuery: the BigQuery Omni connection for s3:// output.")
    parser.add_argument("--stage", default=None,
                        help="Snowflake: name of the stage on OUT (default sesbeam_output).")
    inspect = parser.add_mutually_exclusive_group()
    inspect.add_argument("--inspect", action="store_true", default=None,
                         help="List OUT to see which tables have files and the first day "
                              "(default for a local OUT; remote listing needs credentials).")
    inspect.add_argument("--no-inspect", dest="inspect", action="store_false",
                         help="Do not list OUT: assume every table has files.")
    args = parser.parse_args(argv)
    out = args.output.rstrip("/")
    if "://" not in out:
        out = os.path.abspath(out)
    info: dict = {}
    if args.inspect or (args.inspect is None and "://" not in out):
        try:
            info = inspect_output(out)
        except Exception as e:  # noqa: BLE001 - listing is a refinement, not a requirement
            logging.getLogger(__name__).warning("could not list %s (%s): assuming every "
                                                "table has files", out, e)
    sys.stdout.write(ddl(out, args.dialect, database=args.database,
                         connection=args.connection, stage=args.stage, **info))
    return 0


COMMANDS = {"batch": _batch, "stream": _stream, "generate": _generate, "demo": _demo,
            "report": _report, "ddl": _ddl}


#: Where Beam's local runner re-logs what its worker processes log.
_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"


def _quiet_worker_start(record: logging.LogRecord) -> bool:
    """Drop the warning every local worker process logs as it starts (it has no
    ``semi_persistent_directory``, which only container workers have); keep the rest."""
    return "No semi_persistent_directory found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: sesbeam {batch,stream,generate,demo,report,ddl} [options]   "
              "(sesbeam COMMAND --help)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(_WORKER_LOGGER).addFilter(_quiet_worker_start)
    from sesbeam.pipeline.batch import UsageError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except UsageError as e:
        print(f"sesbeam {argv[0]}: {e}", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    """The ``sesbeam`` command: ``main`` with this process's arguments, then the process
    ends with its exit code without the interpreter's teardown (``exit_now``: about a
    second saved)."""
    from sesbeam.pipeline._exit import exit_now

    exit_now(main())


if __name__ == "__main__":
    run()
