"""Beam's FnApiRunner in ``multi_threading`` mode drops elements (Beam 2.77; no sesbeam code).

The multi_threading workers (``EmbeddedGrpcWorkerHandler``, worker_handlers.py) get a
1,000 ms ``data_buffer_time_limit_ms``, so each bundle's output stream is a
``TimeBasedBufferingClosableOutputStream`` (runners/worker/data_plane.py) whose
``PeriodicThread`` calls ``flush()`` every second: ``self._flush_callback(self.get())`` then
``self._clear()``. The lock it takes only excludes other flushes; the bundle thread keeps
writing elements into the stream (``DataOutputOperation.process``, bundle_processor.py),
and whatever it writes between the ``get()`` and the ``_clear()`` is discarded without an
error. A flush callback that waits (the send queue's lock, a full queue) or a thread switch
in that window loses whole elements.

This pipeline writes many small elements from long bundles while doing GIL-free work
(hashing), groups them and counts them. A short thread switch interval makes the race
likely; it happens at the default interval too, less often.

    PYTHONPATH=. python benchmarks/mt_flush_race.py                 # Beam's workers: loses
    PYTHONPATH=. python benchmarks/mt_flush_race.py --workaround    # sesbeam.local_runner

Exit status 1 when elements were lost.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from sesbeam.pipeline.batch import DEFAULT_LOCAL_RUNNER, local_runner

_WORK = bytes(16 << 10)


def _emit(source: int, per_source: int):
    for i in range(per_source):
        hashlib.sha256(_WORK).digest()  # releases the GIL
        yield i % 7, b"x" * 100


def _count(kv):
    Metrics.counter("mt_flush_race", "elements").inc(sum(1 for _ in kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--per-source", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--switch-interval", type=float, default=1e-6,
                        help="sys.setswitchinterval (Python's default is 0.005)")
    parser.add_argument("--workaround", action="store_true",
                        help="the runner of sesbeam.pipeline.batch.local_runner")
    args = parser.parse_args(argv)
    sys.setswitchinterval(args.switch_interval)
    options = PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}",
                               f"--direct_num_workers={args.workers}",
                               "--direct_running_mode=multi_threading"])
    runner = local_runner(options) if args.workaround else FnApiRunner()
    start = time.time()
    p = beam.Pipeline(runner=runner, options=options)
    (p | beam.Create(list(range(args.sources))) | beam.Reshuffle()
       | beam.FlatMap(_emit, args.per_source) | beam.GroupByKey() | beam.Map(_count))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("elements"))["counters"]
    got = sum(c.committed for c in counters)
    expected = args.sources * args.per_source
    print(f"{'workaround' if args.workaround else 'beam multi_threading'}: "
          f"expected {expected:,}, grouped {got:,}, lost {expected - got:,} "
          f"({time.time() - start:.1f} s)")
    return 1 if got != expected else 0


if __name__ == "__main__":
    sys.exit(main())
