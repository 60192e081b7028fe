"""`sesbeam stream` against a real local SQS server gives the totals `sesbeam batch` gives,
also when a run is killed (SIGKILL) mid-read and started again on the same output.

The pipeline runs as a separate process (`python -m sesbeam stream`), the moto server in
this one (with ``patch_moto_sqs``), so that the test can lose deletes on the server side
(SQS redeliveries) and count receipts.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import NamedTuple

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from sesbeam.pipeline.cli import main  # noqa: E402
from tests.conftest import REPO, local_aws  # noqa: E402
from tests.test_decode import notification, sns, workmail  # noqa: E402

pytestmark = pytest.mark.slow
DOMAINS = ["a.example", "b.example", "c.example", "spam.example"]


def bodies(n: int, seed: int = 0) -> list[str]:
    """``n`` messages as SNS envelopes (raw delivery off) or raw notifications, 5% with a
    second notification, and a few bodies that are not SES notifications."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        domain = rng.choice(DOMAINS)
        status = "FAIL" if domain == "spam.example" and rng.random() < 0.7 else "PASS"
        n_ = notification(f"m{i:05d}", ts=f"2024-03-0{1 + i % 3}T{i % 24:02d}:00:00.000Z",
                          spamVerdict={"status": status}, dmarcVerdict={"status": status})
        n_["mail"]["commonHeaders"]["from"] = [f"Sender <s{i}@{domain}>"]
        raw = rng.random() < 0.3
        out.append(json.dumps(n_) if raw else json.dumps(sns(n_), indent=2))
        if rng.random() < 0.05:  # a second notification of the message (another action)
            out.append(json.dumps(sns(n_)))
    out += ["{not json", "plain text message", json.dumps(sns(workmail("wm-1"))),
            json.dumps(sns({"notificationType": "Bounce", "mail": {}}))]
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def sqs():
    with local_aws(fast_sqs=True) as url:
        yield boto3.client("sqs", endpoint_url=url)


def send(sqs, name: str, messages: list[str], queues: int = 2) -> tuple[list[str], list[str]]:
    """The queue URLs, and the SQS message ids of ``messages`` spread over the queues."""
    urls = [sqs.create_queue(QueueName=f"{name}-{i}")["QueueUrl"] for i in range(queues)]
    ids = []
    for start in range(0, len(messages), 10):
        response = sqs.send_message_batch(QueueUrl=urls[(start // 10) % queues], Entries=[
            {"Id": str(i), "MessageBody": b} for i, b in enumerate(messages[start:start + 10])])
        assert not response.get("Failed")
        ids += [e["MessageId"] for e in response["Successful"]]
    return urls, ids


def run_batch(messages: list[str], tmp_path) -> tuple[dict, object]:
    """``sesbeam batch`` over the same bodies as an archive of Lambda SQS events."""
    archive, out = tmp_path / "archive", tmp_path / "batch"
    archive.mkdir()
    events = [{"Records": [{"messageId": f"m{i + j}", "body": b, "eventSource": "aws:sqs",
                            "attributes": {"SentTimestamp": "1709251200000"}}
                           for j, b in enumerate(messages[i:i + 10])]}
              for i in range(0, len(messages), 10)]
    (archive / "events.ndjson").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert main(["batch", "--input", str(archive), "--output", str(out)]) == 0
    return json.loads((out / "summary.json").read_text()), out


def stream_command(out, urls: list[str], *options: str) -> list[str]:
    args = [sys.executable, "-m", "sesbeam", "stream", "--output", str(out), "--window", "1d",
            *options]
    for url in urls:
        args += ["--queue-url", url]
    return args


def stream_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "SESBEAM_PROGRESS": "never"}


def run_stream(out, urls: list[str], *options: str) -> dict:
    done = subprocess.run(stream_command(out, urls, *options), env=stream_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def totals(out, name: str, key) -> Counter:
    c = Counter()
    for r in ds.dataset(out / name, format="parquet", partitioning="hive").to_table().to_pylist():
        for k, v in key(r).items():
            c[k] += v
    return c


def verdict_key(r):
    return {(r["window_start"], r["verdict"], r["status"]): r["messages"]}


def sender_key(r):
    return {(r["window_start"], r["sender_domain"], c): r[c]
            for c in ("messages", "recipients", "spam_fail", "dmarc_fail")}


def message_ids(out) -> list[str]:
    return ds.dataset(out / "messages", format="parquet", partitioning="hive").to_table(
        columns=["message_id"]).column("message_id").to_pylist()


def depth(sqs, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def assert_same_as_batch(s: dict, b: dict, stream_out, batch_out, sent: int) -> None:
    assert s["balanced"] and s["late_dropped"] == 0
    assert s["queue_messages"] == sent
    for key in ("records", "messages", "duplicates", "skipped_reasons", "dead_letter_kinds"):
        assert s[key] == b[key], key
    assert s["dead_letter_kinds"] == {"invalid_json": 1}
    ids = message_ids(stream_out)
    assert len(ids) == len(set(ids)), "a message row was written twice"
    assert sorted(ids) == sorted(message_ids(batch_out))
    assert totals(stream_out, "verdict_stats", verdict_key) == \
        totals(batch_out, "verdict_stats", verdict_key)
    assert totals(stream_out, "sender_stats", sender_key) == \
        totals(batch_out, "sender_stats", sender_key)
    assert not glob.glob(str(stream_out / "_journal" / "**" / "*.*"), recursive=True)


class ServerSide(NamedTuple):
    lose: list       # [n]: lose the first n deletes
    lost: list       # SQS message ids whose delete was lost
    receipts: Counter  # receipts per SQS message id
    deleted: list    # [messages deleted]


@pytest.fixture
def server_side(monkeypatch):
    """Loses the first ``lose[0]`` deletes (acknowledged, not done: the messages are visible
    again at once, an SQS redelivery), counts receipts per SQS message id and deletes."""
    import moto.sqs.models as models

    side = ServerSide([0], [], Counter(), [0])
    delete = models.Queue.delete_message
    receive = models.SQSBackend.receive_message

    def delete_message(self, receipt_handle):
        if len(side.lost) < side.lose[0]:
            for m in self._messages:
                if m.had_receipt_handle(receipt_handle) and m.id not in side.lost:
                    side.lost.append(m.id)
                    m.change_visibility(0)
                    return
        before = len(self._messages)
        delete(self, receipt_handle)
        side.deleted[0] += before - len(self._messages)

    def receive_message(self, *args, **kwargs):
        received = receive(self, *args, **kwargs)
        side.receipts.update(m.id for m in received)
        return received

    monkeypatch.setattr(models.Queue, "delete_message", delete_message)
    monkeypatch.setattr(models.SQSBackend, "receive_message", receive_message)
    return side


def test_stream_equals_batch_and_empties_the_queues(sqs, server_side, tmp_path):
    messages = bodies(2400)
    urls, _ = send(sqs, "e2e", messages)
    server_side.lose[0] = 20

    started = time.monotonic()
    s = run_stream(tmp_path / "stream", urls, "--idle-timeout", "6", "--visibility-timeout", "3")
    seconds = time.monotonic() - started
    b, batch_out = run_batch(messages, tmp_path)
    lost, receipts = server_side.lost, server_side.receipts
    assert len(lost) == 20
    assert {i for i, n in receipts.items() if n > 1} >= set(lost)  # redelivered, read again
    assert_same_as_batch(s, b, tmp_path / "stream", batch_out, len(messages))
    for url in urls:
        assert depth(sqs, url) == (0, 0)
    print(f"\n{len(messages)} SQS messages through `sesbeam stream` in {seconds:.1f} s "
          f"({len(messages) / seconds:.0f} messages/s, process start and 6 s idle included)")


def journaled(out) -> tuple[int, int]:
    """Complete journal files and the messages in them."""
    files = rows = 0
    for path in glob.glob(str(out / "_journal" / "*.parquet")):
        try:
            rows += pq.ParquetFile(path).metadata.num_rows
            files += 1
        except Exception:  # noqa: BLE001 - being written
            pass
    return files, rows


@pytest.mark.parametrize("when", ["while-deleting", "after-deleting", "after-reading"])
def test_killed_run_is_recovered_by_the_next_one(sqs, server_side, tmp_path, when):
    """Killed while the journaled messages of the first bundle are being deleted from SQS,
    once they all are and the next ones are in flight (more messages than one bundle
    takes: two readers, ``ROUND_MAX_MESSAGES`` each), or once every message is deleted
    (only the journal has them) before the run committed."""
    messages = bodies(2000, seed=7)
    urls, _ = send(sqs, f"kill-{when}", messages)
    out = tmp_path / "stream"
    options = ("--idle-timeout", "4", "--visibility-timeout", "4", "--readers-per-queue", "1")
    process = subprocess.Popen(stream_command(out, urls, *options), env=stream_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Kill once messages were journaled and deleted from SQS (nothing is committed
        # before the end) while others are in flight (received, not deleted).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            files, rows = journaled(out)
            deleted, received = server_side.deleted[0], len(server_side.receipts)
            if when == "while-deleting" and 0 < deleted < rows:
                break
            if when == "after-deleting" and 0 < rows <= deleted < received:
                break
            if when == "after-reading" and deleted == len(messages):
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        assert files
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        process.stderr.close()
    assert not (out / "summary.json").exists()
    left = len(messages) - server_side.deleted[0]
    in_flight = len(server_side.receipts) - server_side.deleted[0]
    if when == "after-reading":
        assert left == 0 and not list(out.glob("messages/**/*.parquet"))
    else:
        assert 0 < left < len(messages) and in_flight > 0
    deadline = time.monotonic() + 30  # the in-flight messages come back
    while any(depth(sqs, url)[1] for url in urls) and time.monotonic() < deadline:
        time.sleep(0.2)

    s = run_stream(out, urls, *options)
    b, batch_out = run_batch(messages, tmp_path)
    assert_same_as_batch(s, b, out, batch_out, len(messages))
    assert s["recovered_messages"] > 0
    # Every message was decoded once: from the journal, or from SQS. (A journaled message
    # can be received more than once in the rerun when its visibility runs out on a slow
    # machine: each receipt is a dropped redelivery, so this is a lower bound.)
    assert s["recovered_messages"] + left - s["redeliveries_dropped"] <= len(messages)
    for url in urls:
        assert depth(sqs, url) == (0, 0)
    print(f"\nkilled with {files} journal files, {left} of {len(messages)} messages "
          f"in SQS ({in_flight} in flight); the next run recovered {s['recovered_messages']} "
          f"and dropped {s['redeliveries_dropped']} redeliveries")


def test_transient_sqs_errors_do_not_change_the_result(sqs, tmp_path):
    """Throttling, 500s and dropped connections on every kind of SQS call (receive, delete,
    visibility changes), from a fault-injecting proxy in front of the server."""
    from tests.faultproxy import DROP, INTERNAL_ERROR, SLOW_DOWN, FaultProxy

    messages = bodies(600, seed=3)
    urls, _ = send(sqs, "faults", messages)
    endpoint = sqs.meta.endpoint_url
    with FaultProxy(endpoint, seed=17) as proxy:
        for fault in (SLOW_DOWN, INTERNAL_ERROR, DROP):
            proxy.add_random(fault, 0.05, match=lambda r: r.target.startswith("AmazonSQS."))
        proxy_urls = [u.replace(endpoint, proxy.url) for u in urls]
        env = {**stream_env(), "AWS_ENDPOINT_URL": proxy.url}
        done = subprocess.run(stream_command(tmp_path / "stream", proxy_urls,
                                             "--idle-timeout", "6", "--visibility-timeout", "5"),
                              env=env, capture_output=True, text=True, timeout=300)
        counters = proxy.counters()
    assert done.returncode == 0, done.stderr[-3000:]
    assert counters["injected"] > 0, counters
    s = json.loads((tmp_path / "stream" / "summary.json").read_text())
    b, batch_out = run_batch(messages, tmp_path)
    assert_same_as_batch(s, b, tmp_path / "stream", batch_out, len(messages))
    for url in urls:
        assert depth(sqs, url) == (0, 0)


def test_a_later_drain_run_counts_notifications_of_committed_messages_as_duplicates(
        sqs, tmp_path):
    """Consecutive drain runs on one output: a notification of a message an earlier run
    committed (SES retried it, a delete was lost) is a duplicate, never a second row."""
    first = [json.dumps(sns(notification(f"x{i:03d}"))) for i in range(50)]
    again = first[:20] + [json.dumps(notification(f"y{i:03d}")) for i in range(10)]
    out = tmp_path / "stream"
    urls, _ = send(sqs, "later-1", first, queues=1)
    one = run_stream(out, urls, "--idle-timeout", "3")
    urls, _ = send(sqs, "later-2", again, queues=1)
    two = run_stream(out, urls, "--idle-timeout", "3")
    assert (one["messages"], one["duplicates"]) == (50, 0)
    assert (two["messages"], two["duplicates"], two["balanced"]) == (10, 20, True)
    ids = message_ids(out)
    assert len(ids) == len(set(ids)) == 60
