"""Where the time of a whole ``sesbeam batch`` run goes, measured inside the pipeline.

    python benchmarks/pipeline_profile.py ARCHIVE [--output DIR] [more batch options]

Runs the batch pipeline in this process (the CLI's default runner) with wall-clock timers
around the main steps (the decoder, the split for the dedupe shuffle, deduplication, the
statistics, the split by day and the Parquet writer) and around every fused stage the
runner executes, then prints both. A step's time includes what it yields to the steps
fused after it only when they run inside its generator; ``stage`` lines are the runner's
own accounting of each stage, shuffles included. Unlike ``stages.py`` (plain functions),
this sees Beam's own costs: encoding between stages, the grouping buffers, bundles.
The timers live in this process, so the run keeps to it (``--direct_num_workers 1``,
which a large input would otherwise not get) unless the options say otherwise.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from apache_beam.runners.portability.fn_api_runner import fn_runner  # noqa: E402

from sesbeam.pipeline.batch import run_batch  # noqa: E402
from sesbeam.transforms import analytics, decode, dedupe, write  # noqa: E402

STEPS = [  # (name, owner, attribute)
    ("decode (decode_stream)", decode, "decode_stream"),
    ("split for the dedupe shuffle", dedupe._KeyByBucketDoFn, "process"),
    ("split for the dedupe shuffle (end of bundle)", dedupe._KeyByBucketDoFn,
     "finish_bundle"),
    ("deduplicate (unpack, merge)", dedupe._DedupeBucketDoFn, "process"),
    ("statistics: partials by window", analytics._PartialsByWindowDoFn, "process"),
    ("statistics: add_input", analytics.TableCombineFn, "add_input"),
    ("statistics: compact", analytics.TableCombineFn, "compact"),
    ("statistics: merge", analytics.TableCombineFn, "merge_accumulators"),
    ("statistics: extract", analytics.TableCombineFn, "extract_output"),
    ("split by day, pack", write, "_key_by_day"),
    ("write Parquet (unpack, sort, write)", write._WriteDoFn, "process"),
]


def _timed(name, fn, spent):
    """``fn`` with its time (and, for a generator, the time of each step) added up."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
        if not hasattr(result, "__next__"):
            return result

        def steps():
            while True:
                start = time.perf_counter()
                try:
                    item = next(result)
                except StopIteration:
                    spent[name] += time.perf_counter() - start
                    return
                spent[name] += time.perf_counter() - start
                yield item
        return steps()
    return wrapper


def _timed_stages(stages: list):
    original = fn_runner.FnApiRunner._execute_bundle

    @functools.wraps(original)
    def execute(self, context, bundle_context_manager, bundle_input):
        start = time.perf_counter()
        try:
            return original(self, context, bundle_context_manager, bundle_input)
        finally:
            stages.append((bundle_context_manager.stage.name, time.perf_counter() - start))
    return original, execute


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive")
    p.add_argument("--output", help="output directory (default: a temporary one, removed)")
    args, batch_args = p.parse_known_args(argv)  # the rest goes to `sesbeam batch`
    spent: dict[str, float] = collections.defaultdict(float)
    stages: list[tuple[str, float]] = []
    saved = [(owner, attr, getattr(owner, attr)) for _, owner, attr in STEPS]
    for (name, owner, attr), (_, _, fn) in zip(STEPS, saved):
        setattr(owner, attr, _timed(name, fn, spent))
    original, execute = _timed_stages(stages)
    fn_runner.FnApiRunner._execute_bundle = execute
    output = args.output or tempfile.mkdtemp(prefix="sesbeam-profile-")
    batch_args = [a for a in batch_args if a != "--"]
    if not any(a.startswith(("--direct_num_workers", "--direct_running_mode"))
               for a in batch_args):
        batch_args += ["--direct_num_workers", "1"]
    start = time.perf_counter()
    try:
        summary = run_batch(["--input", args.archive, "--output", output, "--window", "1d",
                             *batch_args])
    finally:
        wall = time.perf_counter() - start
        fn_runner.FnApiRunner._execute_bundle = original
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
        if not args.output:
            shutil.rmtree(output, ignore_errors=True)
    records = summary["records"]
    print(f"{records:,} notifications, {wall:.2f} s in run_batch "
          f"(load average {os.getloadavg()[0]:.2f})")
    for name, _, _ in STEPS:
        print(f"  {name:46} {spent[name]:8.2f} s  {spent[name] / records * 1e6:6.1f} us")
    for name, seconds in stages:
        transforms = [part.strip("()") for part in name.split(")+(")]
        label = ", ".join(t.rsplit("/", 1)[0].replace("ref_AppliedPTransform_", "")
                          for t in transforms[:3])
        more = f" (+{len(transforms) - 3})" if len(transforms) > 3 else ""
        print(f"stage {seconds:8.2f} s  {label[:90]}{more}")
    return {"wall_s": wall, "records": records, "steps": dict(spent),
            "stages": [seconds for _, seconds in stages]}


if __name__ == "__main__":
    main()
