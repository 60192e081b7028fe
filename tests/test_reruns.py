"""Safe reruns: an interrupted commit, a killed run, incremental runs over a growing prefix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import read_summary, run_batch
from sesbeam.pipeline.cli import main
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.write import COMMIT_MARKER, recover

COUNTS = ("records", "messages", "duplicates", "skipped", "dead_letters")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    manifest = generate_archive(str(root), events=1200, seed=21, days=3, bad_records=3,
                                files_per_format=3)
    return root, manifest


def copy_files(archive: Path, files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive / name, target)


def table_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet")
            if not str(p.relative_to(out)).startswith("_")}


def totals(out: Path, sql: str) -> list[tuple]:
    return duckdb.sql(sql.format(out=out)).fetchall()


VERDICTS = ("SELECT window_start, verdict, status, sum(messages) FROM "
            "read_parquet('{out}/verdict_stats/**/*.parquet') GROUP BY ALL ORDER BY ALL")
SENDERS = ("SELECT window_start, sender_domain, sum(messages), sum(spam_fail), sum(dmarc_fail), "
           "min(first_seen), max(last_seen) FROM read_parquet('{out}/sender_stats/**/*.parquet') "
           "GROUP BY ALL ORDER BY ALL")
IDS = "SELECT message_id FROM read_parquet('{out}/messages/**/*.parquet') ORDER BY ALL"


def test_incremental_runs_over_a_growing_prefix_count_every_object_once(archive, tmp_path):
    root, manifest = archive
    files = sorted(manifest["files"])
    parts = [files[0::3], files[1::3], files[2::3]]
    src, out = tmp_path / "in", tmp_path / "out"
    summaries = []
    for i, part in enumerate(parts):
        copy_files(root, part, src)
        summaries.append(run_batch(["--input", str(src), "--output", str(out),
                                    "--incremental", "--run_id", f"inc{i}"]))
        if i == 1:  # nothing new arrived: a run that reads nothing and changes nothing
            before = table_files(out)
            idle = run_batch(["--input", str(src), "--output", str(out), "--incremental",
                              "--run_id", "idle"])
            assert idle["records"] == 0 and idle["balanced"] and idle["sources"] == 0
            assert idle["ledger"]["already_processed"] == len(parts[0]) + len(parts[1])
            assert table_files(out) == before
    full = run_batch(["--input", str(src), "--output", str(tmp_path / "full")])
    assert all(s["balanced"] and s["mode"] == "incremental" for s in summaries)
    assert [s["sources"] for s in summaries] == [len(p) for p in parts]
    for key in COUNTS:
        assert sum(s[key] for s in summaries) == full[key], key
    assert sum(s["ledger"]["earlier_run_duplicates"] for s in summaries) > 0
    assert full["messages"] == manifest["messages"]
    for sql in (IDS, VERDICTS, SENDERS):
        assert totals(out, sql) == totals(tmp_path / "full", sql)
    ledger = [json.loads(line)["uri"] for p in (out / "_ledger").glob("*.jsonl")
              for line in p.read_text().splitlines()]
    assert sorted(ledger) == sorted(str(src / f) for f in files)
    assert not (out / "_staging").exists() and not (out / COMMIT_MARKER).exists()
    # A replace run over the same output starts the ledger afresh.
    again = run_batch(["--input", str(src), "--output", str(out)])
    assert again["mode"] == "replace" and again["messages"] == full["messages"]
    assert [p.name for p in (out / "_ledger").glob("*.jsonl")] == [f"{again['run_id']}.jsonl"]


def test_an_interrupted_commit_is_never_taken_for_complete_and_is_finished_next(
        archive, tmp_path, monkeypatch):
    root, manifest = archive
    out = str(tmp_path / "out")
    first = run_batch(["--input", str(root / "sns"), "--output", out, "--run_id", "first"])
    real_rename = Storage.rename
    renames = []

    def dies_after_three(self, src, dst):
        if len(renames) == 3:
            raise RuntimeError("killed during the commit")
        renames.append(dst)
        return real_rename(self, src, dst)

    monkeypatch.setattr(Storage, "rename", dies_after_three)
    with pytest.raises(Exception, match="killed during the commit"):
        run_batch(["--input", str(root), "--output", out, "--run_id", "second"])
    monkeypatch.setattr(Storage, "rename", real_rename)
    # The tables now mix both runs: nothing says they are complete.
    assert not os.path.exists(f"{out}/summary.json") and os.path.exists(f"{out}/{COMMIT_MARKER}")
    assert main(["report", out, "--html", str(tmp_path / "r.html")]) == 3
    # The next run (here: its first step alone) finishes the interrupted commit.
    assert recover(out) == "second"
    second = read_summary(out)
    assert second["run_id"] == "second" and second["balanced"]
    assert second["messages"] == manifest["messages"] != first["messages"]
    assert table_files(Path(out)) == {f for f in second["files"] if f.endswith(".parquet")}
    run_batch(["--input", str(root), "--output", str(tmp_path / "clean")])
    for sql in (IDS, VERDICTS, SENDERS):
        assert totals(Path(out), sql) == totals(tmp_path / "clean", sql)
    assert recover(out) is None


@pytest.mark.slow
def test_a_run_killed_before_its_commit_leaves_the_previous_output_whole(tmp_path):
    archive = tmp_path / "archive"
    generate_archive(str(archive), events=30_000, seed=5, days=2, files_per_format=4)
    out = tmp_path / "out"
    first = run_batch(["--input", str(archive / "lambda"), "--output", str(out),
                       "--run_id", "first"])
    before = table_files(out)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "sesbeam", "batch", "--input", str(archive),
                             "--output", str(out), "--run_id", "killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / "_staging" / "killed"
    deadline = time.monotonic() + 300
    while not any(staging.rglob("*.parquet")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    if not (out / COMMIT_MARKER).exists():  # killed while writing: the old output is whole
        assert read_summary(str(out))["run_id"] == "first"
        assert table_files(out) == before
    rerun = run_batch(["--input", str(archive), "--output", str(out), "--run_id", "rerun"])
    assert rerun["balanced"] and rerun["messages"] > first["messages"]
    assert not (out / "_staging").exists() and not (out / COMMIT_MARKER).exists()
    assert table_files(out) == {f for f in rerun["files"] if f.endswith(".parquet")}
