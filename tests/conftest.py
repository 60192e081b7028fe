"""Shared test set-up."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
#: Real sample events from public projects, kept beside the repository (not copied in).
PUBLIC_FIXTURES = Path(os.environ.get("SESBEAM_PUBLIC_FIXTURES",
                                      REPO.parent / "shared" / "fixtures" / "public"))


@pytest.fixture(scope="session")
def public_fixtures() -> Path:
    if not PUBLIC_FIXTURES.is_dir():
        pytest.skip(f"public fixtures not found at {PUBLIC_FIXTURES} (they live in ../shared, "
                    "beside the repository; set SESBEAM_PUBLIC_FIXTURES to point elsewhere)")
    return PUBLIC_FIXTURES


def reset_moto(server) -> None:
    """Empty moto's backends: they live in the process, shared by every server started in
    it, so a module's buckets and queues would otherwise show up in the next module's."""
    import urllib.request

    host, port = server.get_host_and_port()
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset",
                                                  method="POST"), timeout=10).read()


@contextlib.contextmanager
def local_aws():
    """A moto server on a free 127.0.0.1 port, and an AWS environment pointing at it.

    Yields the endpoint URL; the environment is restored and the server stopped afterwards.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    reset_moto(server)
    mp = pytest.MonkeyPatch()
    try:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                     "AWS_ENDPOINT_URL_SQS", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        mp.setenv("AWS_ENDPOINT_URL", url)
        yield url
    finally:
        mp.undo()
        server.stop()
