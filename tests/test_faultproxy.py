"""The fault-injecting proxy in front of a local moto server, driven by real boto3 clients."""

from __future__ import annotations

import hashlib
import time

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError  # noqa: E402

from tests.conftest import local_aws  # noqa: E402
from tests.faultproxy import (  # noqa: E402
    DROP,
    DROP_AFTER,
    INTERNAL_ERROR,
    SLOW_DOWN,
    FaultProxy,
    delay,
)

RETRYING = {"max_attempts": 10, "mode": "standard"}
#: Three attempts in all. (botocore reads ``max_attempts`` as the number of *retries*, so
#: ``max_attempts=10`` above allows 11 attempts; ``total_max_attempts`` counts them all.)
THREE_ATTEMPTS = {"total_max_attempts": 3, "mode": "standard"}
ONE_ATTEMPT = {"total_max_attempts": 1, "mode": "standard"}


@pytest.fixture(scope="module")
def moto():
    """A moto server on a free loopback port and an AWS environment of test credentials."""
    with local_aws() as url:
        yield url


@pytest.fixture
def proxy(moto, monkeypatch):
    """A proxy in front of the moto server; AWS_ENDPOINT_URL points at the proxy."""
    with FaultProxy(moto, seed=1234) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


def _client(service: str, retries=None, **config):
    config = {"connect_timeout": 2, "read_timeout": 5, **config}
    cfg = Config(retries=retries or RETRYING, **config)
    return boto3.session.Session().client(service, region_name="us-east-1", config=cfg)


def _retries(response) -> int:
    return response["ResponseMetadata"].get("RetryAttempts", 0)


def test_transparent_without_faults(proxy):
    s3 = _client("s3")
    assert s3.meta.endpoint_url == proxy.url
    s3.create_bucket(Bucket="plain")
    big = bytes(range(256)) * 8192  # 2 MiB: boto3 sends Expect: 100-continue
    s3.put_object(Bucket="plain", Key="dir/big.bin", Body=big)
    s3.put_object(Bucket="plain", Key="dir/a b+c.json", Body=b'{"x": 1}',
                  ContentType="application/json", Metadata={"k": "v"})
    assert s3.get_object(Bucket="plain", Key="dir/big.bin")["Body"].read() == big
    head = s3.head_object(Bucket="plain", Key="dir/big.bin")
    assert head["ContentLength"] == len(big)
    obj = s3.get_object(Bucket="plain", Key="dir/a b+c.json")
    assert obj["Body"].read() == b'{"x": 1}' and obj["Metadata"] == {"k": "v"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="plain", Prefix="dir/")["Contents"]]
    assert keys == ["dir/a b+c.json", "dir/big.bin"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="plain", Key="missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    s3.delete_object(Bucket="plain", Key="dir/big.bin")
    c = proxy.counters()
    assert c["injected"] == 0 and c["requests"] == c["forwarded"] == 9


def test_random_faults_are_retried(proxy):
    s3 = _client("s3")
    s3.create_bucket(Bucket="flaky")
    proxy.add_random(SLOW_DOWN, 0.1)
    proxy.add_random(INTERNAL_ERROR, 0.1)
    proxy.add_random(DROP, 0.1)
    bodies = {f"k/{i:02d}": hashlib.sha256(str(i).encode()).digest() * (i + 1)
              for i in range(12)}
    retries = 0
    start = time.monotonic()
    for key, body in bodies.items():
        retries += _retries(s3.put_object(Bucket="flaky", Key=key, Body=body))
    for key, body in bodies.items():
        response = s3.get_object(Bucket="flaky", Key=key)
        assert response["Body"].read() == body
        retries += _retries(response)
    for _ in range(4):
        response = s3.list_objects_v2(Bucket="flaky", Prefix="k/")
        assert [o["Key"] for o in response["Contents"]] == sorted(bodies)
        retries += _retries(response)
    elapsed = time.monotonic() - start
    c = proxy.counters()
    assert c["injected"] > 0
    assert all(c[name] > 0 for name in ("slow_down", "internal_error", "drop")), c
    assert c["injected"] == c["slow_down"] + c["internal_error"] + c["drop"]
    # Every injected fault cost the client exactly one retry, nothing else failed.
    assert retries == c["injected"]
    assert c["requests"] == c["forwarded"] + c["injected"] == 1 + 28 + c["injected"]
    assert elapsed < 20


def test_always_failing_calls_fail(proxy):
    s3 = _client("s3", retries=THREE_ATTEMPTS)
    s3.create_bucket(Bucket="down")
    proxy.add_random(SLOW_DOWN, 1.0)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="down", Key="x", Body=b"1")
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.counters()["slow_down"] == 3

    proxy.clear()
    proxy.add_random(INTERNAL_ERROR, 1.0)
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="down")
    assert e.value.response["Error"]["Code"] == "InternalError"
    assert proxy.counters()["internal_error"] == 3

    proxy.clear()
    proxy.add_random(DROP, 1.0)
    with pytest.raises(ConnectionClosedError):
        s3.get_object(Bucket="down", Key="x")
    c = proxy.counters()
    assert c["drop"] == 3 and c["injected"] == 9
    assert c["forwarded"] == 1  # only create_bucket got through
    proxy.clear()
    assert s3.list_objects_v2(Bucket="down")["KeyCount"] == 0  # the object was never stored


def test_fail_next_with_a_predicate(proxy):
    s3 = _client("s3")
    s3.create_bucket(Bucket="explicit")
    is_put = lambda r: r.method == "PUT" and r.path.startswith("/explicit/")  # noqa: E731
    proxy.fail_next(2, INTERNAL_ERROR, match=is_put)
    proxy.fail_next(1, DROP_AFTER, match=is_put)
    assert _retries(s3.list_objects_v2(Bucket="explicit")) == 0  # not a PUT: untouched
    response = s3.put_object(Bucket="explicit", Key="a", Body=b"payload")
    assert _retries(response) == 3
    assert s3.get_object(Bucket="explicit", Key="a")["Body"].read() == b"payload"
    c = proxy.counters()
    assert (c["internal_error"], c["drop_after"], c["injected"]) == (2, 1, 3)
    # The PUT whose response was dropped reached the server: forwarded twice.
    assert c["forwarded"] == 1 + 1 + 2 + 1
    assert _retries(s3.put_object(Bucket="explicit", Key="b", Body=b"")) == 0  # schedule used up


def test_delays(proxy):
    s3 = _client("s3")
    s3.create_bucket(Bucket="slow")
    s3.put_object(Bucket="slow", Key="k", Body=b"v")
    proxy.fail_next(1, delay(0.4), match=lambda r: r.method == "GET")
    start = time.monotonic()
    response = s3.get_object(Bucket="slow", Key="k")
    assert response["Body"].read() == b"v" and _retries(response) == 0
    assert time.monotonic() - start >= 0.4
    # Slower than the client's read timeout: retried.
    impatient = _client("s3", read_timeout=0.3)
    proxy.fail_next(1, delay(1.0), match=lambda r: r.method == "GET")
    response = impatient.get_object(Bucket="slow", Key="k")
    assert response["Body"].read() == b"v" and _retries(response) == 1
    no_retry = _client("s3", retries=ONE_ATTEMPT, read_timeout=0.3)
    proxy.fail_next(1, delay(1.0))
    with pytest.raises(ReadTimeoutError):
        no_retry.get_object(Bucket="slow", Key="k")
    assert proxy.counters()["delay"] == 3


def test_sqs_json_protocol(proxy):
    sqs = _client("sqs")
    url = sqs.create_queue(QueueName="faults")["QueueUrl"]
    proxy.fail_next(2, SLOW_DOWN, match=lambda r: r.target.endswith("SendMessage"))
    proxy.fail_next(1, DROP, match=lambda r: r.target.endswith("ReceiveMessage"))
    response = sqs.send_message(QueueUrl=url, MessageBody='{"hello": "world"}')
    assert _retries(response) == 2
    received = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, MaxNumberOfMessages=1)
    assert [m["Body"] for m in received["Messages"]] == ['{"hello": "world"}']
    assert _retries(received) == 1
    proxy.add_random(INTERNAL_ERROR, 1.0)
    failing = _client("sqs", retries={"total_max_attempts": 2, "mode": "standard"})
    with pytest.raises(ClientError) as e:
        failing.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    c = proxy.counters()
    assert (c["slow_down"], c["drop"], c["internal_error"]) == (2, 1, 2)


def test_seeded_schedule_is_reproducible(moto, monkeypatch):
    def pattern(seed: int) -> list[bool]:
        with FaultProxy(moto, seed=seed) as p:
            monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
            s3 = _client("s3", retries=ONE_ATTEMPT)
            p.add_random(INTERNAL_ERROR, 0.5)
            outcome = []
            for _ in range(24):
                try:
                    s3.list_buckets()
                    outcome.append(True)
                except ClientError:
                    outcome.append(False)
            c = p.counters()
            assert c["internal_error"] == outcome.count(False)
            assert c["requests"] == 24
            return outcome

    first = pattern(7)
    assert first == pattern(7)
    assert first != pattern(8)
    assert 0 < first.count(False) < 24


def test_probability_and_upstream_validation(moto):
    with pytest.raises(ValueError):
        FaultProxy("https://127.0.0.1:1")
    p = FaultProxy(moto)
    with pytest.raises(ValueError):
        p.add_random(DROP, 1.5)
    p.stop()  # never started: just closes the socket
