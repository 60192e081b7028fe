"""``--direct_running_mode multi_threading`` on the FnApiRunner loses no element.

Beam's multi_threading workers flush each bundle's output streams every second from a
thread of their own, and an element the bundle writes while that flush sends the stream's
bytes is dropped (``sesbeam.pipeline.batch.NO_PERIODIC_FLUSH_MS``). ``local_runner`` gives
the pipelines the same workers without that periodic flush.
"""

from __future__ import annotations

import hashlib
import sys
import threading

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import DEFAULT_LOCAL_RUNNER, local_runner, run_batch

SOURCES = 4
PER_SOURCE = 3000
#: Hashed before each element (~0.3 ms, without the GIL): a source takes about a second,
#: so each worker's bundle (two sources) outlasts Beam's first periodic flushes.
_WORK = bytes(256 << 10)


def _emit(source: int):
    """PER_SOURCE elements, each tagged with the worker thread that wrote it."""
    worker = threading.get_ident()
    for i in range(PER_SOURCE):
        hashlib.sha256(_WORK).digest()
        yield i % 3, (worker, b"x" * 200)


def _options(*extra: str) -> PipelineOptions:
    return PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}", "--direct_num_workers=2",
                            "--direct_running_mode=multi_threading", *extra])


@pytest.fixture
def periodic_flushes(monkeypatch):
    """Sizes of the output streams flushed by Beam's periodic flush thread during the test;
    the thread switch interval is shortened so that a racing flush really drops data."""
    sizes: list[int] = []
    flush = data_plane.TimeBasedBufferingClosableOutputStream.flush

    def spy(self):
        if isinstance(threading.current_thread(), data_plane.PeriodicThread):
            sizes.append(self.size())
        flush(self)

    monkeypatch.setattr(data_plane.TimeBasedBufferingClosableOutputStream, "flush", spy)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield sizes
    finally:
        sys.setswitchinterval(interval)


def test_multi_threading_workers_lose_no_element(periodic_flushes):
    options = _options()
    runner = local_runner(options)
    assert isinstance(runner, FnApiRunner)
    with beam.Pipeline(runner=runner, options=options) as p:
        values = (p | beam.Create(list(range(SOURCES))) | beam.Reshuffle()
                  | beam.FlatMap(_emit) | beam.GroupByKey()
                  | beam.FlatMapTuple(lambda key, values: [(key, w) for w, _ in values]))
        counts = (values | beam.MapTuple(lambda key, worker: key)
                  | beam.combiners.Count.PerElement())
        workers = (values | beam.MapTuple(lambda key, worker: worker) | beam.Distinct()
                   | beam.combiners.Count.Globally())
        assert_that(counts, equal_to([(k, SOURCES * PER_SOURCE // 3) for k in range(3)]),
                    label="NoElementLost")
        assert_that(workers, equal_to([2]), label="TwoWorkers")
    assert periodic_flushes == []


def test_local_runner_only_replaces_fn_api_runner_worker_modes():
    assert local_runner(PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}"])) is None
    assert local_runner(PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}",
                                         "--direct_running_mode=in_memory"])) is None
    assert local_runner(PipelineOptions(["--runner=PortableRunner",
                                         "--direct_running_mode=multi_processing"])) is None
    assert local_runner(PipelineOptions(["--runner=PortableRunner",
                                         "--direct_running_mode=multi_threading"])) is None
    assert local_runner(PipelineOptions(["--runner=DirectRunner", "--streaming",
                                         "--direct_running_mode=multi_threading"])) is None
    assert isinstance(local_runner(PipelineOptions(
        ["--runner=DirectRunner", "--direct_running_mode=multi_threading"])), FnApiRunner)
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=2",
                               "--direct_running_mode=multi_threading"])
    runner = local_runner(options)
    assert isinstance(runner, FnApiRunner)
    # Beam would put back its own workers (periodic flush included) in multi_threading mode.
    assert options.view_as(DirectOptions).direct_running_mode is None
    assert options.view_as(DirectOptions).direct_num_workers == 2


def test_batch_pipeline_multi_threading_balanced(tmp_path):
    archive = tmp_path / "archive"
    manifest = generate_archive(str(archive), events=300, seed=5)
    summary = run_batch(["--input", str(archive), "--output", str(tmp_path / "out"),
                         "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert summary["balanced"]
    assert summary["records"] == manifest["records"]
    assert summary["messages"] == manifest["messages"]
