"""Shared test set-up."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
#: Real sample events from public projects, kept beside the repository (not copied in).
PUBLIC_FIXTURES = Path(os.environ.get("SESBEAM_PUBLIC_FIXTURES",
                                      REPO.parent / "shared" / "fixtures" / "public"))


@pytest.fixture(scope="session", autouse=True)
def _remove_unrun_pipelines_temp_dirs():
    """Every ``beam.Pipeline`` makes a ``beam-pipeline-temp*`` folder that only ``run``
    removes: tests that build a pipeline without running it would leave theirs behind.
    Those this process made are removed at the end of the session."""
    import shutil

    import apache_beam.pipeline as beam_pipeline

    made: list[str] = []
    mkdtemp = beam_pipeline.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        path = mkdtemp(*args, **kwargs)
        made.append(path)
        return path

    class _Tempfile:  # ``tempfile`` as ``apache_beam.pipeline`` sees it, recording
        def __getattr__(self, name):
            return recording_mkdtemp if name == "mkdtemp" else getattr(tempfile, name)

    import tempfile

    beam_pipeline.tempfile = _Tempfile()
    try:
        yield
    finally:
        beam_pipeline.tempfile = tempfile
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


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
def local_aws(fast_sqs: bool = False):
    """A moto server on a free 127.0.0.1 port, and an AWS environment pointing at it.

    Yields the endpoint URL; the environment is restored and the server stopped afterwards.
    ``fast_sqs``: with ``patch_moto_sqs`` (for thousands of SQS messages).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    reset_moto(server)
    mp = pytest.MonkeyPatch()
    try:
        if fast_sqs:
            patch_moto_sqs(mp)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                     "AWS_ENDPOINT_URL_SQS", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # No shared config or credentials file of the machine may leak in.
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        mp.setenv("AWS_ENDPOINT_URL", url)
        yield url
    finally:
        mp.undo()
        server.stop()


def patch_moto_sqs(mp: pytest.MonkeyPatch) -> None:
    """Cheap and serialized equivalents of moto's SQS operations, for a moto server in this
    process: moto recomputes every queue attribute, each a scan of all messages through a
    datetime-based clock, for each message sent and received (these equivalents make a few
    thousand messages take seconds instead of minutes); and it is not thread-safe
    (concurrent receives and deletes on one queue fail with "Set changed size during
    iteration" or lose updates), so its operations are serialized, long polls waiting
    outside the lock."""
    try:
        import moto.sqs.models as models
        from moto.sqs.exceptions import ReceiptHandleIsInvalid
    except ImportError:
        return

    def now_ms() -> float:
        return time.time() * 1000.0

    def unix_time(dt=None, _original=models.unix_time):
        return time.time() if dt is None else _original(dt)

    def unix_time_millis(dt=None, _original=models.unix_time_millis):
        return now_ms() if dt is None else _original(dt)

    def retained(self, queue_name, message):
        queue = self.get_queue(queue_name)
        return int(queue.message_retention_period) + message.sent_timestamp / 1000 > time.time()

    def delete_message(self, receipt_handle):
        if receipt_handle in self.deleted_messages:
            return
        for i, message in enumerate(self._messages):
            if message.had_receipt_handle(receipt_handle):
                self._messages = self._messages[:i] + self._messages[i + 1:]
                self.pending_messages.discard(message)
                self.deleted_messages.update(message.all_receipt_handles)
                return
        raise ReceiptHandleIsInvalid()

    def visible(self):
        now = now_ms()
        return [m for m in self._messages if m.visible_at < now and not now < m.delayed_until]

    def count(predicate):
        return property(lambda self: (lambda now: sum(1 for m in self._messages
                                                      if predicate(m, now)))(now_ms()))

    lock = threading.RLock()

    def serialized(method):
        def locked(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)
        return locked

    def receive_message(self, queue_name, count, wait_seconds_timeout, *args,
                        _original=models.SQSBackend.receive_message):
        deadline = time.monotonic() + int(wait_seconds_timeout or 0)
        while True:
            with lock:
                received = _original(self, queue_name, count, 0, *args)
            if received or time.monotonic() >= deadline:
                return received
            time.sleep(0.05)

    patches = [(models.SQSBackend, name, serialized(getattr(models.SQSBackend, name)))
               for name in ("get_queue_attributes", "send_message", "send_message_batch",
                            "delete_message", "delete_message_batch", "change_message_visibility",
                            "change_message_visibility_batch", "purge_queue")
               if hasattr(models.SQSBackend, name)]
    patches += [
        (models.SQSBackend, "receive_message", receive_message),
        (models, "unix_time", unix_time),
        (models, "unix_time_millis", unix_time_millis),
        (models.SQSBackend, "is_message_valid_based_on_retention_period", retained),
        (models.Queue, "delete_message", delete_message),
        (models.Queue, "messages", property(visible)),
        (models.Queue, "approximate_number_of_messages_delayed",
         count(lambda m, now: now < m.delayed_until)),
        (models.Queue, "approximate_number_of_messages_not_visible",
         count(lambda m, now: not m.visible_at < now)),
    ]
    for owner, name, value in patches:
        if hasattr(owner, name):
            mp.setattr(owner, name, value)
