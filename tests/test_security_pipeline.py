"""SNS signature verification and personal-data protection in the batch pipeline."""

from __future__ import annotations

import json
import shutil

import pyarrow.dataset as ds
import pytest

from sesbeam.pipeline.batch import run_batch
from sesbeam.pipeline.cli import main
from tests.conftest import DATA


def table(out, name):
    return ds.dataset(out / name, format="parquet", partitioning="hive").to_table()


@pytest.fixture()
def signed_archive(tmp_path, public_fixtures):
    derived = public_fixtures / "sns-envelope" / "derived"
    archive = tmp_path / "archive"
    archive.mkdir()
    signed = sorted(derived.glob("*.json"))
    lines = [json.dumps(json.loads(p.read_text())) for p in signed]
    tampered = json.loads(signed[0].read_text())
    tampered["Message"] += " (edited)"
    lines.append(json.dumps(tampered))
    (archive / "signed.ndjson").write_text("\n".join(lines) + "\n")
    return archive, derived, len(signed)


def test_valid_signatures_pass_and_tampered_ones_are_dead_letters(signed_archive, tmp_path):
    archive, certificates, n = signed_archive
    plain = run_batch(["--input", str(archive), "--output", str(tmp_path / "plain")])
    assert plain["skipped_reasons"] == {"plain_text": n + 1} and not plain["dead_letters"]
    out = tmp_path / "verified"
    verified = run_batch(["--input", str(archive), "--output", str(out),
                          "--verify_sns_signatures", "--sns_certificates", str(certificates)])
    assert verified["skipped_reasons"] == {"plain_text": n}
    assert verified["dead_letter_kinds"] == {"invalid_signature": 1}
    assert verified["balanced"] and verified["sns_signatures_verified"]
    [dl] = table(out, "dead_letters").to_pylist()
    assert dl["detail"].startswith("bad_signature") and b"(edited)" in dl["raw"]


def test_unsigned_archive_fails_verification_without_certificates(tmp_path):
    s = run_batch(["--input", str(DATA / "archive" / "sns"), "--output", str(tmp_path / "o"),
                   "--verify_sns_signatures"])
    # 5 complete SNS envelopes with made-up signatures; the truncated line stays invalid_json.
    assert s["dead_letter_kinds"] == {"invalid_json": 1, "invalid_signature": 5}
    assert s["messages"] == 0 and s["balanced"]


def test_privacy_hashes_and_drops_but_keeps_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("SESBEAM_HASH_KEY", "a-secret-key-of-enough-length")
    base = run_batch(["--input", str(DATA / "archive"), "--output", str(tmp_path / "base")])
    out = tmp_path / "private"
    private = run_batch(["--input", str(DATA / "archive"), "--output", str(out),
                         "--local_parts", "hash", "--subjects", "drop",
                         "--dead_letter_raw", "drop"])
    assert private["privacy"]["local_parts"] == "hash"
    rows = {r["message_id"]: r for r in table(out, "messages").to_pylist()}
    a = rows["aaaa0001"]
    assert a["header_from"].startswith("h:") and a["header_from"].endswith("@Example.COM.")
    assert all(r.startswith("h:") and r.endswith("@corp.example") for r in a["recipients"])
    assert len(a["recipients"]) == 2 and a["subject"] is None
    assert a["sender_domain"] == "example.com"
    assert table(out, "dead_letters").column("raw").to_pylist() == [b""]
    for name in ("sender_stats", "verdict_stats"):
        assert sorted(map(str, table(out, name).to_pylist())) == sorted(
            map(str, table(tmp_path / "base", name).to_pylist()))
    again = tmp_path / "again"
    run_batch(["--input", str(DATA / "archive"), "--output", str(again), "--local_parts", "hash"])
    assert {r["header_from"] for r in table(again, "messages").to_pylist()} == {
        r["header_from"] for r in rows.values()}  # stable across runs
    assert base["messages"] == private["messages"]


def test_hashing_without_a_key_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SESBEAM_HASH_KEY", raising=False)
    code = main(["batch", "--input", str(DATA / "archive"), "--output", str(tmp_path / "o"),
                 "--local_parts", "hash"])
    assert code == 2 and "SESBEAM_HASH_KEY" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
