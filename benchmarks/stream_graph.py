"""Messages per second through the streaming graph, without SQS.

Feeds ``--messages`` SQS messages (SNS envelopes and raw notifications, 5% second
notifications of a message, a few bad bodies), read from a local file in rounds of
``--per-bundle`` messages, into ``build_streaming`` on Beam's ``FnApiRunner`` (one worker,
as a drain-mode run) and prints the wall time (pipeline construction included) and
messages/s of the run.

    PYTHONPATH=. python benchmarks/stream_graph.py --messages 5000
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.window import TimestampedValue

from sesbeam.pipeline.streaming import build_streaming
from sesbeam.transforms.sqs import SqsMessage, event_time_ms

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/ses-inbound"
BASE_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def notification(i: int, rng: random.Random) -> dict:
    ms = BASE_MS + i * 7_000
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".000Z"
    domain = rng.choice(["a.example", "b.example", "c.example", "spam.example"])
    status = "FAIL" if domain == "spam.example" else "PASS"
    verdicts = {k: {"status": status} for k in ("spamVerdict", "virusVerdict", "spfVerdict",
                                                  "dkimVerdict", "dmarcVerdict")}
    return {
        "notificationType": "Received",
        "mail": {"timestamp": ts, "source": f"s{i}@{domain}", "messageId": f"m{i:08d}",
                 "destination": ["r@dest.example"],
                 "commonHeaders": {"from": [f"S <s{i}@{domain}>"], "subject": "x"}},
        "receipt": {"timestamp": ts, "processingTimeMillis": 10,
                    "recipients": ["r@dest.example"], **verdicts,
                    "action": {"type": "SNS", "topicArn": "arn:aws:sns:us-east-1:1:t"}},
    }


def sns(message: dict) -> str:
    return json.dumps({"Type": "Notification", "MessageId": "uuid", "TopicArn": "arn:t",
                       "Message": json.dumps(message), "Timestamp": "2024-03-01T10:00:05.000Z",
                       "SignatureVersion": "1", "Signature": "x",
                       "SigningCertURL": "https://sns.us-east-1.amazonaws.com/a.pem"}, indent=2)


def bodies(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        note = notification(i, rng)
        out.append(json.dumps(note) if rng.random() < 0.3 else sns(note))
        if rng.random() < 0.05:
            out.append(sns(note))
    out[::500] = ["{not json"] * len(out[::500])
    return out[:n]


def write_messages(n: int, path: str) -> None:
    """The messages as JSON lines ``[queue, id, body, sent ms, event ms]``."""
    with open(path, "w", encoding="utf-8") as f:
        for i, body in enumerate(bodies(n)):
            sent = BASE_MS + i
            f.write(json.dumps([QUEUE, f"sqs-{i}", body, sent, event_time_ms(body, sent)]) + "\n")


def read_round(index: int, path: str, per_bundle: int):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i // per_bundle == index:
                queue, message_id, body, sent, ms = json.loads(line)
                yield TimestampedValue(SqsMessage(queue, message_id, body, sent, "h"), ms / 1000)


def run(n: int, per_bundle: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data, out = f"{tmp}/messages.jsonl", f"{tmp}/out"
        write_messages(n, data)
        started = time.perf_counter()
        options = PipelineOptions(["--direct_num_workers=1"])
        with beam.Pipeline(runner=FnApiRunner(), options=options) as p:
            source = (p | beam.Create(list(range(-(-n // per_bundle))))
                      | "Rounds" >> beam.FlatMap(read_round, data, per_bundle))
            build_streaming(source, out, window_s=3600, allowed_lateness_s=0, early_s=None,
                            run_id="bench")
        seconds = time.perf_counter() - started
        with open(f"{out}/summary.json", encoding="utf-8") as f:
            summary = json.load(f)
    assert summary["queue_messages"] == n and summary["balanced"], summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--per-bundle", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.repeat):
        seconds = run(args.messages, args.per_bundle)
        print(f"{args.messages} messages in {seconds:.1f} s: "
              f"{args.messages / seconds:.0f} messages/s")


if __name__ == "__main__":
    main()
