"""Crash safety of drain-mode streaming runs: journal, staged commit and recovery
(``sesbeam.transforms.journal``), without SQS."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow.dataset as ds
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from sesbeam.pipeline.streaming import build_streaming
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.journal import (
    JOURNAL,
    commit,
    journal_path,
    read_journal,
    recover,
    staging_root,
    write_journal,
)
from tests.test_streaming import message


def entries(numbers) -> list:
    out = []
    for n in numbers:
        tv = message(f"mail-{n}", f"2024-03-01T10:{n:02d}:00", n, raw=n % 2 == 0)
        out.append((tv.value, tv.timestamp.micros // 1000))
    return out


def test_journal_round_trip_and_recovery_of_complete_files_only(tmp_path):
    out, storage = str(tmp_path), Storage()
    path = journal_path(out, "run1")
    write_journal(storage, path, entries(range(3)))
    table = read_journal(storage, path)
    assert table.column("message_id").to_pylist() == ["sqs-0", "sqs-1", "sqs-2"]
    assert table.column("body").to_pylist()[1] == entries([1])[0][0].body
    cut = journal_path(out, "run1")  # a crash while writing: no Parquet footer
    with open(path, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    recovery = recover(out)
    assert recovery.files == (path,)
    assert recovery.message_ids == {"sqs-0", "sqs-1", "sqs-2"}
    assert not (tmp_path / JOURNAL / cut.rsplit("/", 1)[1]).exists()
    assert sorted(p.name for p in (tmp_path / JOURNAL).iterdir()) == [path.rsplit("/", 1)[1]]


def staged(out: str, run_id: str, names: list[str]) -> list[str]:
    storage = Storage()
    for name in names:
        with storage.create(f"{staging_root(out, run_id)}/{name}") as f:
            f.write(name.encode())
    return names


def test_commit_moves_staged_files_and_consumes_the_journal(tmp_path):
    out, storage = str(tmp_path), Storage()
    old = journal_path(out, "crashed")
    write_journal(storage, old, entries([1]))
    mine = journal_path(out, "run2")
    write_journal(storage, mine, entries([2]))
    files = staged(out, "run2", ["messages/date=2024-03-01/a.parquet", "dead_letters/b.parquet"])
    commit(out, "run2", files, [old], {"run_id": "run2", "records": 2})
    assert (tmp_path / "messages/date=2024-03-01/a.parquet").read_text() == files[0]
    assert (tmp_path / "dead_letters/b.parquet").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["records"] == 2
    assert json.loads((tmp_path / "_summaries/run2.json").read_text())["run_id"] == "run2"
    assert list((tmp_path / JOURNAL).rglob("*.*")) == []


def test_an_interrupted_commit_is_finished_before_the_next_run(tmp_path):
    out, storage = str(tmp_path), Storage()
    journal = journal_path(out, "run1")
    write_journal(storage, journal, entries([1, 2]))
    files = staged(out, "run1", ["messages/x.parquet", "sender_stats/y.parquet"])
    plan = {"run_id": "run1", "files": files, "journal": [journal],
            "summary": {"run_id": "run1", "records": 2}}
    (tmp_path / JOURNAL / "commit-run1.json").write_text(json.dumps(plan))
    storage.rename(f"{staging_root(out, 'run1')}/{files[0]}", f"{out}/{files[0]}")  # then killed
    staged(out, "run0", ["messages/never-committed.parquet"])

    recovery = recover(out)
    assert recovery.committed == ("run1",) and recovery.files == ()
    assert (tmp_path / files[0]).exists() and (tmp_path / files[1]).exists()
    assert json.loads((tmp_path / "summary.json").read_text())["run_id"] == "run1"
    assert list((tmp_path / JOURNAL).rglob("*.*")) == []
    assert not (tmp_path / "messages/never-committed.parquet").exists()


def test_a_manifest_cut_short_means_the_commit_never_started(tmp_path):
    out, storage = str(tmp_path), Storage()
    journal = journal_path(out, "run1")
    write_journal(storage, journal, entries([1]))
    staged(out, "run1", ["messages/x.parquet"])
    (tmp_path / JOURNAL / "commit-run1.json").write_text('{"run_id": "run1", "fil')
    recovery = recover(out)
    assert recovery.files == (journal,) and recovery.committed == ()
    assert not (tmp_path / "messages").exists()
    assert not (tmp_path / JOURNAL / "staging").exists() or \
        list((tmp_path / JOURNAL / "staging").rglob("*.*")) == []


def test_recovered_messages_count_once_with_their_redeliveries(tmp_path):
    """A crashed run journaled messages 0-9 and deleted 0-4 from SQS: the next run reads
    5-14 from SQS and the journal again; 5-9 are redeliveries."""
    out = str(tmp_path / "out")
    write_journal(Storage(), journal_path(out, "crashed"), entries(range(10)))
    write_journal(Storage(), journal_path(out, "crashed"), entries(range(3)))  # a retried bundle
    recovery = recover(out)
    assert len(recovery.files) == 2 and sum(map(len, recovery.repeated.values())) == 3
    live = [message(f"mail-{n}", f"2024-03-01T10:{n:02d}:00", n, raw=n % 2 == 0)
            for n in range(5, 15)]
    with beam.Pipeline(runner=FnApiRunner(),
                       options=PipelineOptions(["--direct_num_workers=1"])) as p:
        build_streaming(p | beam.Create(live), out, window_s=3600, allowed_lateness_s=0,
                        early_s=None, run_id="run2", journal=True, recovery=recovery)
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["queue_messages"] == 15 and summary["recovered_messages"] == 10
    assert summary["redeliveries_dropped"] == 5 and summary["messages"] == 15
    assert summary["balanced"]
    ids = ds.dataset(tmp_path / "out/messages", format="parquet", partitioning="hive") \
        .to_table().column("message_id").to_pylist()
    assert sorted(ids) == sorted(f"mail-{n}" for n in range(15))
    assert list((tmp_path / "out" / JOURNAL).rglob("*.*")) == []
    assert recover(out).files == ()
