"""The batch pipeline on other Beam runners, offline.

* ``PortableRunner`` with an embedded job server (``--job_endpoint=embed``) and workers in
  this process (``--environment_type=LOOPBACK``; the default DOCKER environment would need
  a Docker daemon and the SDK image): same summary and same tables as the default runner.
* ``DataflowRunner`` with ``--dry_run=True``: the graph is translated into a Dataflow job
  (runner API proto, Docker environment, staged worker package from ``setup.py``) and not
  submitted, so no Google Cloud credentials or network are needed.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import build_batch, run_batch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TABLES = ("messages", "verdict_stats", "sender_stats", "dead_letters")


def table_rows(output: Path, table: str) -> list:
    """Every row of one output table, in a canonical order."""
    rows = []
    for path in sorted((output / table).rglob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=repr)


def test_portable_runner_matches_default_runner(tmp_path):
    archive = tmp_path / "archive"
    manifest = generate_archive(str(archive), events=300, seed=11, bad_records=4)
    default = run_batch(["--input", str(archive), "--output", str(tmp_path / "default")])
    portable = run_batch(["--input", str(archive), "--output", str(tmp_path / "portable"),
                          "--runner=PortableRunner", "--job_endpoint=embed",
                          "--environment_type=LOOPBACK"])
    assert portable["balanced"] and default["balanced"]
    assert portable["records"] == manifest["records"]
    assert portable["messages"] == manifest["messages"]
    assert portable["run_id"] != default["run_id"]
    for summary in (default, portable):
        run_id = summary.pop("run_id")
        summary.pop("output")
        summary["files"] = [f.replace(run_id, "RUN") for f in summary["files"]]
    assert portable == default
    for table in TABLES:
        assert table_rows(tmp_path / "portable", table) == table_rows(tmp_path / "default", table), table


def _worker_package(tmp_path: Path) -> Path:
    """A copy of the package and its setup.py, so that building the sdist leaves the
    repository untouched (``setup.py sdist`` writes an egg-info beside setup.py)."""
    root = tmp_path / "pkg"
    root.mkdir()
    shutil.copy2(REPO / "setup.py", root / "setup.py")
    if (REPO / "README.md").exists():
        shutil.copy2(REPO / "README.md", root / "README.md")
    shutil.copytree(REPO / "sesbeam", root / "sesbeam",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root / "setup.py"


def test_dataflow_runner_dry_run_translates(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient",
                        reason="needs apache-beam[gcp]")
    from apache_beam.portability.api import beam_runner_api_pb2

    setup_file = _worker_package(tmp_path)
    options = PipelineOptions([
        "--runner=DataflowRunner",
        "--dry_run=True",
        "--project=sesbeam-test-123",
        "--region=us-central1",
        "--temp_location=gs://sesbeam-test-bucket/tmp",
        f"--setup_file={setup_file}",
    ])
    pipeline = beam.Pipeline(options=options)
    build_batch(pipeline, ["s3://archive/ses", "s3://archive/more/**"], "s3://results/dataflow",
                window_s=3600, run_id="dryrun")
    result = pipeline.run()
    assert result.state == beam.runners.runner.PipelineState.DONE

    job = result.job
    assert job.proto.type_.name == "JOB_TYPE_BATCH"
    transforms = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    expected = {
        "ReadArchives", "ReadArchives/List", "ReadArchives/Distribute",
        "DecodeNotifications", "DecodeNotifications/Decode",
        "DeduplicateMessages", "DeduplicateMessages/GroupByBucket",
        "ComputeVerdictStats", "ComputeVerdictStats/PartialsByWindow", "ComputeSenderStats",
        "Write_messages", "Write_verdict_stats", "Write_sender_stats", "Write_dead_letters",
        "Write_messages/WriteParquet", "AllTallies", "CommitOutput", "CommitOutput/Commit",
    }
    assert expected <= transforms, sorted(expected - transforms)

    environments = list(job.proto_pipeline.components.environments.values())
    assert environments and all(e.urn == "beam:env:docker:v1" for e in environments)
    staged = {}
    for env in environments:
        for dep in env.dependencies:
            role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload)
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
            staged[role.staged_name] = path
    try:
        assert "workflow.tar.gz" in staged, staged  # the worker package built from setup.py
        if os.path.exists(staged["workflow.tar.gz"]):
            with tarfile.open(staged["workflow.tar.gz"]) as sdist:
                names = sdist.getnames()
            assert any(n.endswith("sesbeam/pipeline/batch.py") for n in names), names
            assert any(n.endswith("sesbeam/transforms/decode.py") for n in names), names
    finally:
        # The stager leaves its temporary directory behind on a dry run; remove it.
        for folder in {os.path.dirname(p) for p in staged.values()}:
            if Path(folder).parent == Path(tempfile.gettempdir()):
                shutil.rmtree(folder, ignore_errors=True)
