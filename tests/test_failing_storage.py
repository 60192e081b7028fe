"""The batch pipeline over S3 that fails now and then gives the same result as a clean run."""

from __future__ import annotations

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from sesbeam.generate import generate_archive  # noqa: E402
from sesbeam.pipeline.batch import run_batch  # noqa: E402
from tests.conftest import local_aws  # noqa: E402
from tests.faultproxy import CUT_BODY, DROP, INTERNAL_ERROR, SLOW_DOWN, FaultProxy  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with local_aws() as url:
        s3 = boto3.client("s3", endpoint_url=url)
        for bucket in ("archive", "clean", "faulty"):
            s3.create_bucket(Bucket=bucket)
        archive = tmp_path_factory.mktemp("archive")
        manifest = generate_archive(str(archive), events=800, seed=3, days=2, bad_records=4,
                                    files_per_format=2)
        for path in archive.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "archive", f"ses/{path.relative_to(archive)}")
        yield url, manifest


def _tables(url: str, bucket: str) -> dict:
    import io

    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=url)
    rows = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if obj["Key"].endswith(".parquet"):
            table = obj["Key"].split("/")[1]
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            rows.setdefault(table, []).extend(
                sorted(map(str, pq.read_table(io.BytesIO(body)).to_pylist())))
    return {k: sorted(v) for k, v in rows.items()}


def test_transient_errors_do_not_change_the_result(moto, monkeypatch):
    url, manifest = moto
    clean = run_batch(["--input", "s3://archive/ses", "--output", "s3://clean/out"])
    with FaultProxy(url, seed=99) as proxy:
        for fault in (SLOW_DOWN, INTERNAL_ERROR, DROP):
            proxy.add_random(fault, 0.04)
        # Object bodies cut off mid-transfer: the reader asks for the rest with a Range.
        ranges = []
        proxy.add_random(CUT_BODY, 0.2, match=lambda r: r.method == "GET" and "/ses/" in r.path
                         and not ranges.append(r.headers.get("range")))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_RETRY_MODE", "standard")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
        faulty = run_batch(["--input", "s3://archive/ses", "--output", "s3://faulty/out"])
        counters = proxy.counters()
    assert counters["injected"] > 0 and counters["cut_body"] > 0
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges), ranges
    for key in ("records", "messages", "duplicates", "skipped_reasons", "dead_letter_kinds",
                "balanced"):
        assert faulty[key] == clean[key], key
    assert clean["messages"] == manifest["messages"]
    assert _tables(url, "faulty") == _tables(url, "clean")


def test_object_that_stays_unreadable(moto, monkeypatch, tmp_path):
    from sesbeam.pipeline.cli import main

    url, manifest = moto
    s3 = boto3.client("s3", endpoint_url=url)
    s3.put_object(Bucket="archive", Key="broken/a.json", Body=b'{"x": 1}\n')
    s3.put_object(Bucket="archive", Key="broken/b.json", Body=b'{"y": 2}\n')
    with FaultProxy(url, seed=5) as proxy:
        proxy.add_random(INTERNAL_ERROR, 1.0,
                         match=lambda r: r.method == "GET" and r.path.endswith("/broken/b.json"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
        code = main(["batch", "--input", "s3://archive/broken", "--output", "s3://faulty/broken"])
        assert code == 4
        summary = run_batch(["--input", "s3://archive/broken", "--output", "s3://faulty/b2"])
        assert summary["dead_letter_kinds"] == {"unreadable_source": 1}
        assert summary["skipped_reasons"] == {"not_ses": 1} and summary["balanced"]
        with pytest.raises(Exception, match="broken/b.json"):
            run_batch(["--input", "s3://archive/broken", "--output", "s3://faulty/b3",
                       "--fail_on_unreadable"])
