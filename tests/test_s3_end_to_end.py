"""End to end over S3: a local moto server, a generated archive, the batch pipeline, exact checks.

The archive is uploaded with a real boto3 client; the pipeline reads and writes through
Beam's own S3 filesystem (``apache_beam.io.aws``), pointed at the server only through the
standard AWS environment (``AWS_ENDPOINT_URL`` and credentials). The output is downloaded
and compared with the generator's manifest (counts) and with ``tests/reference.py``, an
independent plain-Python reader (content).

How WorkMail is handled in the comparison: WorkMail events have no verdicts and are left out
of ``verdict_stats``, but they are messages with a sender domain, so the ``sender_stats``
table counts them. The reference reads them too (time = SNS ``Timestamp`` of their
envelope), and the table is compared in full with ``sender_stats_all`` (SES + WorkMail).
Separately, statistics recomputed from the pipeline's own ``messages`` rows with
``envelope != 'workmail'`` are compared with the SES-only ``sender_stats`` of the reference.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from reference import VERDICTS, reference_stats, sender_stats_of  # noqa: E402
from sesbeam.generate import generate_archive  # noqa: E402
from sesbeam.pipeline.batch import run_batch  # noqa: E402
from tests.conftest import local_aws  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ARCHIVE_BUCKET, ARCHIVE_PREFIX = "archive", "ses"
RESULTS_BUCKET = "results"
DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TABLES = ("messages", "verdict_stats", "sender_stats", "dead_letters")


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, the AWS environment pointing at it, and an
    uploaded archive. Yields a namespace dict (client, endpoint, manifest, reference...)."""
    with local_aws() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=ARCHIVE_BUCKET)
        client.create_bucket(Bucket=RESULTS_BUCKET)

        archive = tmp_path_factory.mktemp("archive")
        manifest = generate_archive(str(archive), events=3000, seed=7, bad_records=6)
        for rel in manifest["files"]:
            client.upload_file(str(archive / rel), ARCHIVE_BUCKET, f"{ARCHIVE_PREFIX}/{rel}")
        yield {
            "client": client,
            "endpoint": endpoint,
            "archive": archive,
            "manifest": manifest,
            "reference": reference_stats(str(archive)),
            "input": f"s3://{ARCHIVE_BUCKET}/{ARCHIVE_PREFIX}",
        }


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def get_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def download_output(client, prefix: str) -> dict:
    """Every file of a committed output: {"keys", "summary", table -> [(key, Table, kv)]}."""
    keys = list_keys(client, RESULTS_BUCKET, prefix + "/")
    out = {"keys": keys, "summary": json.loads(get_bytes(client, RESULTS_BUCKET,
                                                         f"{prefix}/summary.json"))}
    for table in TABLES:
        files = []
        for key in keys:
            if key.startswith(f"{prefix}/{table}/") and key.endswith(".parquet"):
                data = get_bytes(client, RESULTS_BUCKET, key)
                kv = pq.read_metadata(io.BytesIO(data)).metadata or {}
                files.append((key, pq.read_table(io.BytesIO(data)), kv))
        out[table] = files
    return out


def rows_of(files) -> list[dict]:
    rows = []
    for _, table, _ in files:
        rows.extend(table.to_pylist())
    return rows


def ms(value) -> int:
    """Epoch milliseconds of a timestamp read from Parquet (a tz-aware datetime)."""
    return (value - EPOCH) // timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def run1(s3):
    prefix = "run1"
    summary = run_batch(["--input", s3["input"], "--output", f"s3://{RESULTS_BUCKET}/{prefix}"])
    out = download_output(s3["client"], prefix)
    out["returned"] = summary
    return out


# -- checks --------------------------------------------------------------------------------------

def check_summary_against_manifest(summary: dict, manifest: dict) -> None:
    assert summary["balanced"] is True
    assert summary["records"] == (summary["messages"] + summary["duplicates"]
                                  + summary["skipped"] + summary["dead_letters"])
    assert summary["records"] == manifest["records"]
    assert summary["messages"] == manifest["messages"]
    assert summary["duplicates"] == manifest["duplicates"]
    expected_skips = {k: v for k, v in manifest["skipped"].items() if v}
    assert summary["skipped_reasons"] == expected_skips
    assert summary["skipped"] == sum(expected_skips.values())
    expected_dead = {k: v for k, v in manifest["dead_letters"].items() if v}
    assert summary["dead_letter_kinds"] == expected_dead
    assert summary["dead_letters"] == sum(expected_dead.values())


def test_summary_matches_manifest(s3, run1):
    manifest, summary = s3["manifest"], run1["summary"]
    assert run1["returned"] == summary
    check_summary_against_manifest(summary, manifest)
    assert summary["sources"] == len(manifest["files"])
    assert summary["tables"]["messages"]["rows"] == manifest["messages"]
    assert summary["tables"]["dead_letters"]["rows"] == sum(manifest["dead_letters"].values())
    for table in TABLES:
        assert summary["tables"][table]["files"] == len(run1[table]), table
        assert summary["tables"][table]["rows"] == sum(t.num_rows for _, t, _ in run1[table])


def test_reference_agrees_with_manifest(s3):
    """The oracle itself is checked against the generator's ground truth."""
    ref, manifest = s3["reference"], s3["manifest"]
    assert ref["records"] == manifest["records"]
    assert len(ref["messages"]) == manifest["receipt_messages"]
    assert len(ref["workmail"]) == manifest["workmail_messages"]
    assert ref["duplicates"] == manifest["duplicates"]
    assert ref["skipped"] == {k: v for k, v in manifest["skipped"].items() if v}
    assert ref["dead_letters"] == {k: v for k, v in manifest["dead_letters"].items() if v}


def test_messages_match_reference(s3, run1):
    ref = s3["reference"]
    rows = rows_of(run1["messages"])
    ids = [r["message_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a message id has more than one row"
    assert set(ids) == set(ref["messages"]) | set(ref["workmail"])
    mismatches = []
    for row in rows:
        mid = row["message_id"]
        assert len(row["recipients"]) == len(set(row["recipients"])), mid
        if mid in ref["messages"]:
            want = ref["messages"][mid]
            got = {"recipients": set(row["recipients"]), "sender_domain": row["sender_domain"],
                   "event_time_ms": ms(row["event_time"]), "dmarc_policy": row["dmarc_policy"],
                   **{f"{v}_verdict": row[f"{v}_verdict"] for v in VERDICTS}}
            assert row["envelope"] != "workmail", mid
        else:
            want = ref["workmail"][mid]
            got = {"recipients": set(row["recipients"]), "sender_domain": row["sender_domain"],
                   "event_time_ms": ms(row["event_time"])}
            assert row["envelope"] == "workmail", mid
        if got != want:
            mismatches.append((mid, got, want))
    assert not mismatches, f"{len(mismatches)} messages differ, e.g. {mismatches[:3]}"
    # Each row sits in the partition of its event date.
    for key, table, _ in run1["messages"]:
        dates = {t.date().isoformat() for t in table.column("event_time").to_pylist()}
        assert dates == {key.split("/date=")[1].split("/")[0]}, key


def test_verdict_stats_match_reference(s3, run1):
    got = Counter()
    for row in rows_of(run1["verdict_stats"]):
        start = ms(row["window_start"])
        assert ms(row["window_end"]) == start + DAY_MS
        key = (start, row["verdict"], row["status"])
        assert key not in got, f"duplicate verdict_stats row {key}"
        got[key] = row["messages"]
    assert dict(got) == s3["reference"]["verdict_stats"]


def _sender_rows(files) -> dict:
    got = {}
    for row in rows_of(files):
        start = ms(row["window_start"])
        assert ms(row["window_end"]) == start + DAY_MS
        key = (start, row["sender_domain"])
        assert key not in got, f"duplicate sender_stats row {key}"
        got[key] = {c: row[c] for c in row if c not in (
            "window_start", "window_end", "pane_timing", "pane_index", "sender_domain",
            "first_seen", "last_seen")}
        got[key]["first_seen"] = ms(row["first_seen"])
        got[key]["last_seen"] = ms(row["last_seen"])
    return got


def test_sender_stats_match_reference(s3, run1):
    ref = s3["reference"]
    # The whole table: SES receipt messages plus WorkMail messages.
    assert _sender_rows(run1["sender_stats"]) == ref["sender_stats_all"]
    # SES receipt messages only, recomputed from the pipeline's own messages table.
    ses = {}
    for row in rows_of(run1["messages"]):
        if row["envelope"] == "workmail":
            continue
        ses[row["message_id"]] = {
            "recipients": set(row["recipients"]), "sender_domain": row["sender_domain"],
            "event_time_ms": ms(row["event_time"]), "dmarc_policy": row["dmarc_policy"],
            **{f"{v}_verdict": row[f"{v}_verdict"] for v in VERDICTS}}
    assert sender_stats_of(ses, 86_400) == ref["sender_stats"]


def test_parquet_metadata(run1):
    for table in TABLES:
        assert run1[table], f"no Parquet file for {table}"
        for key, _, kv in run1[table]:
            assert b"sesbeam.schema_version" in kv, key
            assert kv.get(b"sesbeam.table") == table.encode(), key


def test_dead_letters(s3, run1):
    rows = rows_of(run1["dead_letters"])
    manifest = s3["manifest"]
    assert len(rows) == sum(manifest["dead_letters"].values())
    assert Counter(r["kind"] for r in rows) == Counter(
        {k: v for k, v in manifest["dead_letters"].items() if v})
    for row in rows:
        assert row["raw"], row
        assert row["source_uri"].startswith(f"{s3['input']}/"), row["source_uri"]


def test_rerun_replaces_previous_output(s3, run1):
    client, prefix = s3["client"], "run1"
    first_keys = set(run1["keys"]) - {f"{prefix}/summary.json"}
    summary = run_batch(["--input", s3["input"], "--output", f"s3://{RESULTS_BUCKET}/{prefix}"])
    assert summary["run_id"] != run1["summary"]["run_id"]
    check_summary_against_manifest(summary, s3["manifest"])
    out = download_output(client, prefix)
    assert out["summary"] == summary
    assert not first_keys & set(out["keys"]), "files of the first run are still there"
    assert not [k for k in out["keys"] if "/_staging/" in k], "staging files left behind"
    for table in TABLES:
        for key, _, _ in out[table]:
            assert summary["run_id"] in key, key
    ids = [r["message_id"] for r in rows_of(out["messages"])]
    assert len(ids) == len(set(ids)) == s3["manifest"]["messages"]


def test_cli_batch_subprocess(s3):
    env = dict(os.environ)  # carries the AWS_* variables the module fixture set
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    output = f"s3://{RESULTS_BUCKET}/cli"
    proc = subprocess.run(
        [sys.executable, "-m", "sesbeam", "batch", "--input", s3["input"], "--output", output],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "balanced" in proc.stdout
    summary = json.loads(get_bytes(s3["client"], RESULTS_BUCKET, "cli/summary.json"))
    assert summary["output"] == output
    check_summary_against_manifest(summary, s3["manifest"])
