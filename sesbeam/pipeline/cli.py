"""The ``sesbeam`` command: ``batch``, ``generate``, ``demo``.

``sesbeam batch`` takes its own flags (``--input``, ``--output``, ``--window``, ...) and any
Beam pipeline option (``--runner``, ``--setup_file``, ``--direct_num_workers``, ...).
Exit codes: 0 done; 2 usage error; 3 the run's accounting does not add up.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

__all__ = ["main", "format_summary"]

EXIT_UNBALANCED = 3


def format_summary(summary: dict, seconds: float | None = None) -> str:
    """A short human-readable table of a run summary."""
    rows = [
        ("sources read", f"{summary['sources']:,} ({summary['bytes'] / 1e6:,.1f} MB)"),
        ("records", f"{summary['records']:,}"),
        ("  messages", f"{summary['messages']:,}"),
        ("  duplicates", f"{summary['duplicates']:,}"),
        ("  skipped", f"{summary['skipped']:,}"
         + "".join(f"\n{'':20}{k}: {v:,}" for k, v in summary["skipped_reasons"].items())),
        ("  dead letters", f"{summary['dead_letters']:,}"
         + "".join(f"\n{'':20}{k}: {v:,}" for k, v in summary["dead_letter_kinds"].items())),
        ("accounting", "balanced" if summary["balanced"] else "NOT BALANCED"),
    ]
    for name, info in summary.get("tables", {}).items():
        rows.append((f"table {name}", f"{info['rows']:,} rows in {info['files']:,} files"))
    if seconds is not None:
        rate = summary["records"] / seconds if seconds else 0
        rows.append(("duration", f"{seconds:,.1f} s ({rate:,.0f} records/s)"))
    rows.append(("output", summary["output"]))
    return "\n".join(f"{name:<18}  {value}" for name, value in rows)


def _batch(argv: list[str]) -> int:
    from sesbeam.pipeline.batch import run_batch

    if not argv or argv[0] in ("-h", "--help"):
        from sesbeam.pipeline.options import BatchOptions

        parser = argparse.ArgumentParser(
            prog="sesbeam batch",
            description="Read SES notification archives, write deduplicated messages, "
                        "verdict and sender statistics and dead letters as Parquet. "
                        "Any Apache Beam pipeline option is accepted too.")
        BatchOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    start = time.monotonic()
    summary = run_batch(argv)
    if not summary:
        print("dry run: the pipeline was translated, nothing was executed")
        return 0
    print(format_summary(summary, time.monotonic() - start))
    return 0 if summary["balanced"] else EXIT_UNBALANCED


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
    import os

    from sesbeam.generate import generate_archive
    from sesbeam.pipeline.batch import run_batch

    parser = _generate_parser("sesbeam demo")
    parser.description = "Generate a sample archive, run the batch pipeline on it, summarise."
    parser.add_argument("--dir", default="demo", help="Working directory (default ./demo).")
    args = parser.parse_args(argv)
    archive, output = os.path.join(args.dir, "archive"), os.path.join(args.dir, "output")
    manifest = generate_archive(archive, events=args.events, seed=args.seed, days=args.days,
                                start=args.start, bad_records=args.bad_records or 8)
    print(f"generated {len(manifest['files'])} archive files in {archive}")
    start = time.monotonic()
    summary = run_batch(["--input", archive, "--output", output])
    print(format_summary(summary, time.monotonic() - start))
    from sesbeam.pipeline.report import text_report

    report = text_report(output)
    report_path = os.path.join(args.dir, "report.txt")
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(report)
    print()
    print(report)
    print(f"report written to {report_path}; tables in {output}/")
    expected = {k: manifest[k] for k in ("records", "messages", "duplicates")}
    got = {k: summary[k] for k in expected}
    print("matches the generator's ground truth" if got == expected
          else f"DIFFERS from the generator's ground truth: expected {expected}, got {got}")
    return 0 if summary["balanced"] and got == expected else EXIT_UNBALANCED


COMMANDS = {"batch": _batch, "generate": _generate, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: sesbeam {batch,generate,demo} [options]   (sesbeam COMMAND --help)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
