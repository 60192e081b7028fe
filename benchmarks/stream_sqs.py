"""Wall time of `sesbeam stream --idle-timeout 6` over 2,523 messages from a local moto SQS
server (the end-to-end test's data: SNS envelopes and raw notifications, 5% second
notifications, four bodies that are not SES notifications, over two queues).

The server runs in this process with the test suite's moto patch (``tests.conftest``); the
pipeline runs as ``python -m sesbeam`` from a temporary directory with ``PYTHONPATH`` set to
the given source tree, so two versions can be compared on the same data:

    PYTHONPATH=. python benchmarks/stream_sqs.py [SOURCE_TREE]   # default: this repository
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from tests.conftest import local_aws  # noqa: E402
from tests.test_stream_end_to_end import bodies, send  # noqa: E402


def main() -> None:
    code = sys.argv[1] if len(sys.argv) > 1 else str(REPO)
    with local_aws(fast_sqs=True) as url, tempfile.TemporaryDirectory() as tmp:
        sqs = boto3.client("sqs", endpoint_url=url)
        messages = bodies(2400)
        urls, _ = send(sqs, "bench", messages)
        args = [sys.executable, "-m", "sesbeam", "stream", "--output", f"{tmp}/out",
                "--window", "1d", "--idle-timeout", "6"]
        for queue in urls:
            args += ["--queue-url", queue]
        started = time.monotonic()
        done = subprocess.run(args, capture_output=True, text=True, cwd=tmp, env={
            **os.environ, "PYTHONPATH": code, "SESBEAM_PROGRESS": "never"})
        seconds = time.monotonic() - started
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        with open(f"{tmp}/out/summary.json", encoding="utf-8") as f:
            summary = json.load(f)
    print(f"{code}: {len(messages)} messages in {seconds:.1f} s: "
          f"{len(messages) / seconds:.0f} messages/s (records {summary['records']}, "
          f"messages {summary['messages']}, duplicates {summary['duplicates']})")


if __name__ == "__main__":
    main()
