"""Smoke test of benchmarks/stages.py (the per-stage profile) on a tiny generated archive.

It keeps the script in step with the transforms it calls; no timing is asserted.
"""

from __future__ import annotations

from benchmarks import run as bench
from benchmarks import stages


def test_stage_profile_runs_on_a_tiny_archive(tmp_path, capsys):
    ds = bench.dataset(str(tmp_path / "data"), "sns_gz", 600, files=3, seed=1, duplicate_rate=0.05,
                       log=lambda _: None)
    per_notification = stages.main([ds["archive"], "--files", "3", "--repeat", "1"])
    for step in ("split by dedupe bucket", "pack for the shuffle", "unpack", "dedupe_table",
                 "unpack + sort + write Parquet"):
        assert per_notification[step] >= 0
    assert "us/notification (600 notifications, 3 files" in capsys.readouterr().out


def test_pipeline_profile_times_every_step(tmp_path, capsys):
    from benchmarks import pipeline_profile

    ds = bench.dataset(str(tmp_path / "data"), "sns_gz", 600, files=3, seed=1,
                       duplicate_rate=0.05, log=lambda _: None)
    out = pipeline_profile.main([ds["archive"], "--output", str(tmp_path / "out"),
                                 "--no-progress"])
    assert out["records"] == 600 and out["stages"]
    for name, _, _ in pipeline_profile.STEPS:
        if "merge" not in name:  # one bundle per stage here: nothing to merge
            assert out["steps"][name] > 0, name
    assert (tmp_path / "out" / "summary.json").exists()
    assert "600 notifications" in capsys.readouterr().out
    # the wrappers are removed again
    from sesbeam.transforms import decode
    assert not hasattr(decode.decode_stream, "__wrapped__")
