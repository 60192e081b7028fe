"""`sesbeam stream` against a real local SQS server gives the totals `sesbeam batch` gives."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

import pyarrow.dataset as ds  # noqa: E402

from sesbeam.pipeline.cli import main  # noqa: E402
from tests.conftest import local_aws  # noqa: E402
from tests.test_decode import notification, sns, workmail  # noqa: E402

pytestmark = pytest.mark.slow
N = 600
DOMAINS = ["a.example", "b.example", "c.example", "spam.example"]


def bodies(n: int, seed: int = 0) -> list[str]:
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
    with local_aws() as url:
        yield boto3.client("sqs", endpoint_url=url)


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


def test_stream_equals_batch_and_empties_the_queues(sqs, tmp_path):
    messages = bodies(N)
    archive = tmp_path / "archive"
    archive.mkdir()
    # The same bodies as an archive of Lambda SQS events, ten records an event.
    events = [{"Records": [{"messageId": f"m{i + j}", "body": b, "eventSource": "aws:sqs",
                            "attributes": {"SentTimestamp": "1709251200000"}}
                           for j, b in enumerate(messages[i:i + 10])]}
              for i in range(0, len(messages), 10)]
    (archive / "events.ndjson").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    urls = [sqs.create_queue(QueueName=f"ses-{i}")["QueueUrl"] for i in range(2)]
    for start in range(0, len(messages), 10):
        url = urls[(start // 10) % 2]
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": b} for i, b in enumerate(messages[start:start + 10])])

    stream_out, batch_out = tmp_path / "stream", tmp_path / "batch"
    args = ["stream", "--output", str(stream_out), "--window", "1d", "--idle-timeout", "3"]
    for url in urls:
        args += ["--queue-url", url]
    assert main(args) == 0
    assert main(["batch", "--input", str(archive), "--output", str(batch_out)]) == 0
    s = json.loads((stream_out / "summary.json").read_text())
    b = json.loads((batch_out / "summary.json").read_text())
    assert s["balanced"] and s["late_dropped"] == 0
    assert s["queue_messages"] == len(messages)
    for key in ("records", "messages", "duplicates", "skipped_reasons", "dead_letter_kinds"):
        assert s[key] == b[key], key
    assert s["dead_letter_kinds"] == {"invalid_json": 1}
    assert totals(stream_out, "verdict_stats", verdict_key) == \
        totals(batch_out, "verdict_stats", verdict_key)
    assert totals(stream_out, "sender_stats", sender_key) == \
        totals(batch_out, "sender_stats", sender_key)
    for url in urls:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["ApproximateNumberOfMessages"] == "0"
        assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
