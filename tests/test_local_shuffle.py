"""Local runs: shuffled rows travel as files (``--local_shuffle files``, the default), and
large local runs get worker processes by default (``choose_local_workers``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from sesbeam.generate import generate_archive
from sesbeam.pipeline import batch as batch_module
from sesbeam.pipeline.batch import (
    MAX_LOCAL_WORKERS,
    PARALLEL_MIN_BYTES,
    choose_local_workers,
    run_batch,
)
from sesbeam.transforms import _arrow
from sesbeam.transforms._arrow import PACKED_SUFFIX, pack, unpack
from tests.test_runners import TABLES, table_rows

def test_pack_into_a_folder_round_trips_and_reading_removes_the_file(tmp_path, monkeypatch):
    batch = pa.record_batch({"id": ["a", "b", None], "n": [1, 2, 3],
                             "l": [["x"], [], None]})
    small = pack(batch, str(tmp_path))  # under FILE_MIN_BYTES: packed in memory all the same
    assert isinstance(small, bytes) and not any(tmp_path.iterdir())
    assert unpack(small).equals(pa.Table.from_batches([batch]))
    monkeypatch.setattr(_arrow, "FILE_MIN_BYTES", batch.nbytes)
    path = pack(batch, str(tmp_path))
    assert isinstance(path, str) and path.endswith(PACKED_SUFFIX)
    assert Path(path).parent == tmp_path
    assert Path(path).stat().st_size > len(pack(batch))  # uncompressed, unlike in memory
    table = unpack(path)
    assert table.equals(pa.Table.from_batches([batch]))
    assert all(buf is None or buf.address % 8 == 0  # aligned, as Arrow expects
               for column in table.columns for chunk in column.chunks
               for buf in chunk.buffers())
    assert not Path(path).exists()
    with pytest.raises(FileNotFoundError):  # a part is read once
        unpack(path)


def test_worker_processes_only_for_large_inputs_and_several_cpus():
    assert choose_local_workers(0, 8) == 1
    assert choose_local_workers(PARALLEL_MIN_BYTES - 1, 8) == 1
    assert choose_local_workers(PARALLEL_MIN_BYTES, 1) == 1
    assert choose_local_workers(PARALLEL_MIN_BYTES, 2) == 2
    assert choose_local_workers(10 * PARALLEL_MIN_BYTES, 64) == MAX_LOCAL_WORKERS


@pytest.mark.parametrize("flags,mode,workers", [
    ([], "multi_processing", 2),
    (["--direct_num_workers=1"], "in_memory", 1),
    (["--direct_num_workers", "1"], "in_memory", 1),
    (["--direct_running_mode=in_memory"], "in_memory", 1),
])
def test_default_workers_follow_the_input_size_unless_named(tmp_path, monkeypatch, flags,
                                                            mode, workers):
    archive = tmp_path / "archive"
    generate_archive(str(archive), events=50, seed=3)
    size = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())
    monkeypatch.setattr(batch_module, "PARALLEL_MIN_BYTES", size)  # just large enough
    monkeypatch.setattr(batch_module, "_cpus", lambda: 2)
    argv = ["--input", str(archive), *flags]
    options = PipelineOptions(argv)
    batch_module._default_local_workers(options, argv, [str(archive)])
    direct = options.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == (mode, workers)
    monkeypatch.setattr(batch_module, "PARALLEL_MIN_BYTES", size + 1)
    options = PipelineOptions(argv)
    batch_module._default_local_workers(options, argv, [str(archive)])
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"


def _comparable(summary: dict) -> dict:
    summary = dict(summary)
    run_id = summary.pop("run_id")
    summary.pop("output")
    summary["files"] = [f.replace(run_id, "RUN") for f in summary["files"]]
    return summary


def test_rows_travel_through_the_shuffle_folder_and_it_is_removed(tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    manifest = generate_archive(str(archive), events=400, seed=5, bad_records=4)
    removed: list[str] = []
    remove = os.remove

    def spy(path):
        removed.append(path)
        remove(path)

    monkeypatch.setattr(_arrow.os, "remove", spy)
    monkeypatch.setattr(_arrow, "FILE_MIN_BYTES", 0)  # every part a file, however small
    shuffle = tmp_path / "shuffle"
    files = run_batch(["--input", str(archive), "--output", str(tmp_path / "files"),
                       "--shuffle_dir", str(shuffle)])
    parts = [p for p in removed if p.endswith(PACKED_SUFFIX)]
    assert parts and all(Path(p).parent.parent == shuffle for p in parts)
    assert shuffle.is_dir() and not any(shuffle.iterdir())  # the run's folder is gone
    removed.clear()
    memory = run_batch(["--input", str(archive), "--output", str(tmp_path / "memory"),
                        "--local_shuffle", "memory"])
    assert not [p for p in removed if p.endswith(PACKED_SUFFIX)]
    assert files["balanced"] and files["messages"] == manifest["messages"]
    assert _comparable(files) == _comparable(memory)
    for table in TABLES:
        assert table_rows(tmp_path / "files", table) == table_rows(tmp_path / "memory", table), table
    assert not (tmp_path / "files" / "_staging").exists()


@pytest.mark.slow
def test_worker_processes_with_shuffle_files_match_one_process(tmp_path):
    archive = tmp_path / "archive"
    manifest = generate_archive(str(archive), events=600, seed=8, bad_records=5,
                                files_per_format=3)
    one = run_batch(["--input", str(archive), "--output", str(tmp_path / "one")])
    two = run_batch(["--input", str(archive), "--output", str(tmp_path / "two"),
                     "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert two["balanced"] and two["records"] == manifest["records"]
    assert two["messages"] == manifest["messages"]
    assert _comparable(two) == _comparable(one)
    for table in TABLES:
        assert table_rows(tmp_path / "two", table) == table_rows(tmp_path / "one", table), table
    assert not (tmp_path / "two" / "_staging").exists()


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_the_command_s_worker_processes_match_one_process(tmp_path, start):
    """``sesbeam batch`` as a process of its own (no other thread: it can fork its
    workers) with two worker processes, forked or started afresh."""
    archive = tmp_path / "archive"
    generate_archive(str(archive), events=400, seed=9, bad_records=3, files_per_format=2)
    one = run_batch(["--input", str(archive), "--output", str(tmp_path / "one")])
    done = subprocess.run(
        [sys.executable, "-m", "sesbeam", "batch", "--input", str(archive), "--output",
         str(tmp_path / "two"), "--direct_running_mode=multi_processing",
         "--direct_num_workers=2", f"--local_worker_start={start}", "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert _comparable(two) == _comparable(one)
    for table in TABLES:
        assert table_rows(tmp_path / "two", table) == table_rows(tmp_path / "one", table), table
