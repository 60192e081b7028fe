"""Read SES receipt notifications from Amazon SQS: a splittable, unbounded Beam source.

``ReadFromSqs`` reads one or more queues with several parallel readers per queue (long
polling, batches of 10) and yields one ``SqsMessage`` per SQS message, timestamped with its
event time. Bodies are passed through untouched (SNS envelopes when raw delivery is off, the
SES JSON when it is on, or anything else); decoding them is the job of ``decode``.

Delivery guarantee: at least once, nothing lost.

- A message is deleted from SQS only in a bundle-finalization callback
  (``DoFn.BundleFinalizerParam``), which the runner calls after the bundle's output has been
  committed; never on receipt. A bundle that fails is never finalized: its messages are made
  visible again (immediately when the failure is seen, else when their visibility timeout
  ends) and are read again.
- While a message is in flight (received, not yet deleted) its visibility timeout is extended
  in the background (``ChangeMessageVisibilityBatch``), for at most ``MAX_LEASE_S``.
- Deletes and visibility changes go in batches of 10 and are retried; a delete that still
  fails only means the message will be read again (a duplicate, never a loss).
- Redeliveries of a message whose data this worker has already committed are deleted and
  not emitted again (best effort, worker-local). Every other duplicate (SQS redeliveries
  elsewhere, SNS retries, SES sending one notification per action) must be removed
  downstream, by ``mail.messageId``.

Event time: ``mail.timestamp`` of the notification, found with a cheap parse of the body
(an SNS envelope holding the SES JSON, the SES JSON itself, or any envelope the batch
decoder unwraps). Without one (WorkMail events, foreign traffic, garbage) the SNS
envelope's ``Timestamp``, else the message's ``SentTimestamp``.

Watermark (per reader; the runner takes the minimum over readers), monotonic:

- while the reader receives messages, the oldest event time it received during the last
  ``HOLD_S`` seconds (a moving minimum, as in Beam's Java SqsIO): messages received
  recently, redeliveries of a failed bundle and a backlog read out of order stay on time;
- when the queue is quiet for the reader (its last long poll came back empty) and nothing
  was received during the last ``HOLD_S`` seconds: now - ``IDLE_SLACK_S``, so windows close
  on a quiet queue. A message that turns up later with an older event time is late data.

Drain mode: with ``idle_timeout_s``, a reader stops once its long polls have found the queue
empty for that long (or once it has read its share of ``max_messages``); the output is then
a bounded PCollection and the pipeline finishes when all readers have stopped. Without it
the readers run until the job is cancelled or drained.

Runners: on Dataflow and Flink bundle finalization follows a durable commit (Flink: a
completed checkpoint). Locally use Beam's ``FnApiRunner`` in drain mode with one worker
(``--direct_num_workers 1``, the default; the readers then take turns): it finalizes each
bundle right after the bundle, re-runs self-checkpointed readers at once, ignores the
reported watermark and runs the stages after a ``GroupByKey`` once the read is finished.
``ReadFromSqs`` refuses two local set-ups that cannot work: the ``BundleBasedDirectRunner``
(it never calls bundle-finalization callbacks and checks a splittable DoFn's restriction
before iterating its output), and the ``FnApiRunner`` with several workers (its
``ParallelBundleManager`` merges the workers' responses without their residual roots, so
self-checkpoints are dropped: every reader would stop after its first round). Caveat: on the
``FnApiRunner`` "committed" means held in the runner's memory; if a later stage of the same
run fails (a sink after a ``GroupByKey``), the messages already deleted are not read again.
Where that matters, write the bodies durably in the reading stage itself (a sink fused with
the read, written in ``finish_bundle``), which happens before the bundle is finalized: the
streaming pipeline's drain mode does so (``sesbeam.transforms.journal``).

AWS: the clients follow the standard environment (``AWS_ENDPOINT_URL_SQS``,
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``/``AWS_REGION``, profiles, the credential chain).
The region of an ``https://sqs.<region>.amazonaws.com/...`` queue URL wins over the
configured one, so queues of several regions can be read together.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import orjson
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker, WatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp

from sesbeam.transforms.normalize import InvalidNotification, parse_time_ms

__all__ = [
    "HOLD_S",
    "IDLE_SLACK_S",
    "MAX_BATCH",
    "MAX_LEASE_S",
    "BatchOutcome",
    "ReadFromSqs",
    "ReaderState",
    "SqsMessage",
    "batch_call",
    "chunked",
    "event_time_ms",
    "next_reader_state",
    "region_of",
]

_LOG = logging.getLogger(__name__)

#: Largest batch SQS accepts for ReceiveMessage, DeleteMessageBatch and
#: ChangeMessageVisibilityBatch.
MAX_BATCH = 10
#: Event times received during this many seconds hold a reader's watermark back.
HOLD_S = 60
#: Width of the buckets of the moving minimum of received event times.
_HOLD_BUCKET_MS = 5_000
#: On a quiet queue the watermark goes to now minus this (SES publishes a notification a few
#: seconds after ``mail.timestamp``; up to 30 s behind a synchronous Lambda action).
IDLE_SLACK_S = 30
#: A reader checkpoints (ends its bundle, letting the runner commit and finalize) after this
#: long or this many messages, and after every empty long poll.
ROUND_MAX_S = 5.0
ROUND_MAX_MESSAGES = 1000
#: In drain mode a long poll waits at most this long: on a local runner the readers take
#: turns, and each one's idle time runs while the others poll.
DRAIN_WAIT_S = 1
#: Visibility is extended while a message is in flight, at most this long after its receipt;
#: after that it is left to reappear (a slower bundle then produces a duplicate).
MAX_LEASE_S = 900
#: Once a reader's bundle is done, its messages are kept invisible this long waiting for the
#: finalization callback; a bundle that is never finalized failed, and its messages reappear.
FINALIZE_GRACE_S = 300
#: Attempts of one batch call (on top of botocore's own retries) and the pause between them.
BATCH_ATTEMPTS = 5
_BACKOFF_S = 0.2
#: Message ids whose data this worker has committed, remembered to drop redeliveries.
_COMMITTED_IDS = 100_000

_AWS_QUEUE_HOST = re.compile(r"""
    ^(?:https?://)?
    (?: sqs(?:-fips)?\.(?P<region>[a-z0-9-]+)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)
      | (?P<legacy>[a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)? )
    (?::\d+)?(?:/|$)""", re.X)
_sleep = time.sleep  # replaced by the tests


class SqsMessage(NamedTuple):
    """One SQS message as received; the element timestamp is its event time."""

    queue_url: str
    message_id: str
    body: str
    sent_timestamp_ms: int
    receipt_handle: str


beam.coders.registry.register_coder(SqsMessage, beam.coders.RowCoder)


# -- event time -------------------------------------------------------------------------------

def event_time_ms(body: str, fallback_ms: int) -> int:
    """Event time of a message body: ``mail.timestamp`` in ms since the epoch (UTC).

    The body may be an SNS envelope (``Message`` holding the SES JSON, as a string or an
    object), the SES JSON itself, or one of the ``Records`` events the batch decoder reads
    (the earliest time of their records). Without a ``mail.timestamp``: the SNS envelope's
    ``Timestamp`` (WorkMail events), else ``fallback_ms`` (the ``SentTimestamp``; also for
    text, invalid JSON and unparseable or out-of-range times).
    """
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return fallback_ms
    found = _time_in(value, 0)
    return fallback_ms if found is None else found


_MIN_MS = MIN_TIMESTAMP.micros // 1000 + 1
_MAX_MS = MAX_TIMESTAMP.micros // 1000 - 1


def _parse_ms(value: Any) -> int | None:
    try:
        ms = parse_time_ms(value)
    except (InvalidNotification, ValueError, OverflowError, TypeError):
        return None
    return ms if _MIN_MS <= ms <= _MAX_MS else None


def _time_in(value: Any, depth: int) -> int | None:
    if depth > 4:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    mail = value.get("mail")
    if isinstance(mail, dict):
        found = _parse_ms(mail.get("timestamp"))
        if found is not None:
            return found
    if "Message" in value and ("Type" in value or "TopicArn" in value):  # SNS envelope
        found = _time_in(value["Message"], depth + 1)
        return found if found is not None else _parse_ms(value.get("Timestamp"))
    records = value.get("Records")
    if isinstance(records, list):
        times = []
        for record in records:
            if not isinstance(record, dict):
                continue
            inner = next((record[k] for k in ("ses", "Sns", "sns", "body") if k in record), None)
            found = _time_in(inner, depth + 1) if inner is not None else None
            if found is not None:
                times.append(found)
        return min(times) if times else None
    return None


# -- AWS helpers ------------------------------------------------------------------------------

def region_of(queue_url: str) -> str | None:
    """The region in an AWS queue URL (``https://sqs.eu-west-1.amazonaws.com/1234/q``, the
    FIPS, dual-stack and China forms, the legacy ``eu-west-1.queue.amazonaws.com``), else
    None (a custom endpoint)."""
    m = _AWS_QUEUE_HOST.match(queue_url)
    if not m:
        return None
    return m.group("region") or m.group("legacy")


def _make_client(region: str | None, read_timeout_s: int):
    """A boto3 SQS client following the standard AWS environment."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    kwargs: dict[str, Any] = {
        "config": Config(retries={"mode": "standard", "max_attempts": 5},
                         connect_timeout=10, read_timeout=read_timeout_s,
                         max_pool_connections=16),
    }
    if region or session.region_name:
        kwargs["region_name"] = region or session.region_name
    # botocore >= 1.31 reads these itself; passing them keeps older versions working too.
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_url"] = endpoint
    return session.client("sqs", **kwargs)


def chunked(items: Sequence, size: int = MAX_BATCH) -> Iterator[list]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class BatchOutcome(NamedTuple):
    """Entries of a batch call that were not done."""

    #: Refused by SQS (``SenderFault``: an expired receipt handle, ...): retrying is useless.
    refused: list[dict]
    #: Still failing (server errors, exceptions) after every attempt.
    failed: list[dict]


def batch_call(call: Callable[..., dict], queue_url: str, entries: list[dict],
               attempts: int = BATCH_ATTEMPTS, what: str = "batch call") -> BatchOutcome:
    """Run one SQS batch call (``DeleteMessageBatch``, ``ChangeMessageVisibilityBatch``) for
    at most 10 ``entries`` (each with a unique ``Id``), retrying the entries that failed on
    the server side and the whole call when it raised, ``attempts`` times in all."""
    if len(entries) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} entries per batch call, got {len(entries)}")
    pending = {entry["Id"]: entry for entry in entries}
    refused: list[dict] = []
    for attempt in range(attempts):
        if attempt:
            _sleep(min(2.0, _BACKOFF_S * 2 ** (attempt - 1)))
        try:
            response = call(QueueUrl=queue_url, Entries=list(pending.values()))
        except Exception as e:  # noqa: BLE001 - network, throttling after botocore's retries...
            _LOG.warning("%s on %s failed (attempt %d/%d): %s", what, queue_url, attempt + 1,
                         attempts, e)
            continue
        retry = {}
        for failure in response.get("Failed") or ():
            entry = pending.get(failure.get("Id"))
            if entry is None:
                continue
            if failure.get("SenderFault"):  # e.g. the message was deleted or received again
                refused.append(entry)
                _LOG.debug("%s on %s refused for one message: %s %s", what, queue_url,
                           failure.get("Code"), failure.get("Message", ""))
            else:
                retry[entry["Id"]] = entry
        pending = retry
        if not pending:
            break
    return BatchOutcome(refused, list(pending.values()))


# -- in-flight messages -----------------------------------------------------------------------

class _Lease:
    """The messages one reader received in one bundle, until deleted or released."""

    __slots__ = ("queue_url", "batches", "received_ms", "done_ms")

    def __init__(self, queue_url: str, received_ms: int):
        self.queue_url = queue_url
        #: [[(message_id, receipt_handle), ...], visibility deadline in ms]
        self.batches: list[list] = []
        self.received_ms = received_ms
        self.done_ms: int | None = None

    def handles(self) -> list[tuple[str, str]]:
        return [h for batch, _ in self.batches for h in batch]


class _Leases:
    """Messages received and not yet deleted by one DoFn instance.

    ``finalize`` (the bundle-finalization callback) deletes a bundle's messages; ``abandon``
    (the bundle failed) and ``release_all`` (teardown) make them visible again at once. A
    background thread extends the visibility of the others, and lets a lease go when its
    bundle was not finalized within ``FINALIZE_GRACE_S`` or it is older than ``MAX_LEASE_S``.
    """

    def __init__(self, client_for: Callable[[str], Any], visibility_timeout_s: int,
                 now_ms: Callable[[], int], background: bool = True):
        self._client_for = client_for
        self._visibility_s = visibility_timeout_s
        self._now_ms = now_ms
        self._background = background
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._committed: OrderedDict[str, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: How often the background thread looks for messages to extend.
        self.interval_s = max(0.2, min(10.0, visibility_timeout_s / 4))

    # -- bookkeeping (reader thread) --------------------------------------------------------
    def open(self, queue_url: str) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._leases[key] = _Lease(queue_url, self._now_ms())
        return key

    def add(self, key: str, handles: list[tuple[str, str]], request_ms: int) -> None:
        """Messages received by a request sent at ``request_ms`` (their visibility timeout
        started after that)."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return
            lease.batches.append([handles, request_ms + self._visibility_s * 1000])
            if self._background and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="sqs-visibility",
                                                daemon=True)
                self._thread.start()

    def done(self, key: str) -> None:
        """The reader's part of the bundle finished; the runner will commit and finalize it."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None:
                lease.done_ms = self._now_ms()

    def committed(self, message_id: str) -> bool:
        """Whether this worker has committed (finalized) a message of this id already."""
        with self._lock:
            return message_id in self._committed

    def pending(self) -> int:
        with self._lock:
            return sum(len(lease.handles()) for lease in self._leases.values())

    # -- outcomes ---------------------------------------------------------------------------
    def finalize(self, key: str) -> None:
        """Bundle-finalization callback: the data is committed, delete the messages."""
        with self._lock:
            lease = self._leases.pop(key, None)
            if lease is None:
                return
            handles = lease.handles()
            for message_id, _ in handles:
                self._committed[message_id] = None
                self._committed.move_to_end(message_id)
            while len(self._committed) > _COMMITTED_IDS:
                self._committed.popitem(last=False)
        failed = self._change(lease.queue_url, handles, delete=True)
        if failed:
            _LOG.warning("%d of %d committed messages could not be deleted from %s; they will be "
                         "read again", failed, len(handles), lease.queue_url)

    def abandon(self, key: str) -> None:
        """The bundle failed: make its messages visible again now."""
        with self._lock:
            lease = self._leases.pop(key, None)
        if lease is not None:
            self._release(lease)

    def release_all(self) -> None:
        """Teardown: messages not finalized by now never will be; make them visible now."""
        self._stop.set()
        with self._lock:
            leases = list(self._leases.values())
            self._leases.clear()
        for lease in leases:
            self._release(lease)

    def _release(self, lease: _Lease) -> None:
        handles = lease.handles()
        if handles:
            _LOG.info("returning %d unfinalized messages to %s", len(handles), lease.queue_url)
            self._change(lease.queue_url, handles, visibility_s=0, attempts=2)

    # -- visibility extension ---------------------------------------------------------------
    def tick(self) -> int:
        """Extend the visibility of the messages whose deadline is less than half a visibility
        timeout away; let expired leases go. Returns the number of messages extended."""
        now = self._now_ms()
        margin = self._visibility_s * 500
        work: list[tuple[str, list[tuple[str, str]]]] = []
        with self._lock:
            for key, lease in list(self._leases.items()):
                if lease.done_ms is not None and now - lease.done_ms > FINALIZE_GRACE_S * 1000:
                    reason = f"its bundle was not finalized within {FINALIZE_GRACE_S} s"
                elif now - lease.received_ms > MAX_LEASE_S * 1000:
                    reason = f"it is in flight for more than {MAX_LEASE_S} s"
                else:
                    for batch in lease.batches:
                        if batch[1] - now < margin:
                            batch[1] = now + self._visibility_s * 1000
                            work.append((lease.queue_url, batch[0]))
                    continue
                del self._leases[key]
                _LOG.warning("no longer extending the visibility of %d messages from %s: %s; "
                             "they will be read again", len(lease.handles()), lease.queue_url,
                             reason)
        for queue_url, handles in work:
            self._change(queue_url, handles, visibility_s=self._visibility_s, attempts=2)
        return sum(len(handles) for _, handles in work)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep extending whatever happens
                _LOG.exception("extending SQS visibility timeouts failed")
            with self._lock:
                if not self._leases:
                    self._thread = None
                    return
        with self._lock:
            self._thread = None

    # -- SQS calls --------------------------------------------------------------------------
    def _change(self, queue_url: str, handles: list[tuple[str, str]], *, delete: bool = False,
                visibility_s: int = 0, attempts: int = BATCH_ATTEMPTS) -> int:
        """Delete, or set the visibility of, messages in batches of 10; the number that failed.

        After a batch fails with errors only (SQS unreachable), the rest is not attempted.
        """
        if not handles:
            return 0
        client = self._client_for(queue_url)
        call = client.delete_message_batch if delete else client.change_message_visibility_batch
        what = "DeleteMessageBatch" if delete else "ChangeMessageVisibilityBatch"
        failed = 0
        for done, batch in enumerate(chunked(handles)):
            entries = [{"Id": str(i), "ReceiptHandle": handle} for i, (_, handle) in
                       enumerate(batch)]
            if not delete:
                for entry in entries:
                    entry["VisibilityTimeout"] = visibility_s
            outcome = batch_call(call, queue_url, entries, attempts=attempts, what=what)
            failed += len(outcome.refused) + len(outcome.failed)
            if len(outcome.failed) == len(batch) and len(handles) > (done + 1) * MAX_BATCH:
                failed += len(handles) - (done + 1) * MAX_BATCH  # SQS unreachable: stop
                break
        return failed


# -- restriction: an endless sequence of polls ------------------------------------------------

class _Polls(NamedTuple):
    """Polls ``[start, stop)`` of one reader; ``stop`` None: no end (unbounded)."""

    start: int
    stop: int | None = None


#: Claim this to end a reader's restriction after the polls claimed so far (drain mode).
_FINISH = object()


class _PollTracker(RestrictionTracker):
    """Claims poll numbers. The only splits are checkpoints (``fraction_of_remainder`` 0):
    the polls claimed so far stay in the primary, the rest (with no end) is the residual."""

    def __init__(self, restriction: _Polls):
        self._restriction = restriction
        self._last: int | None = None
        self._stopped = False

    def current_restriction(self) -> _Polls:
        return self._restriction

    def _claimed_end(self) -> int:
        return self._restriction.start if self._last is None else self._last + 1

    def try_claim(self, position) -> bool:
        if self._stopped:
            return False
        if position is _FINISH:
            self._restriction = _Polls(self._restriction.start, self._claimed_end())
            self._stopped = True
            return False
        if position < self._restriction.start or (self._last is not None
                                                  and position <= self._last):
            raise ValueError(f"poll {position} claimed out of order in {self._restriction} "
                             f"(last claimed: {self._last})")
        stop = self._restriction.stop
        if stop is not None and position >= stop:
            self._stopped = True
            return False
        self._last = position
        return True

    def try_split(self, fraction_of_remainder):
        if self._stopped or fraction_of_remainder > 0:
            return None  # polls cannot be divided, only checkpointed
        split = self._claimed_end()
        stop = self._restriction.stop
        if stop is not None and split >= stop:
            return None
        primary = _Polls(self._restriction.start, split)
        self._restriction = primary
        self._stopped = True
        return primary, _Polls(split, stop)

    def check_done(self) -> None:
        if self._restriction.stop is None:
            raise ValueError(f"reader restriction {self._restriction} neither checkpointed nor "
                             "finished")
        if self._claimed_end() < self._restriction.stop:
            raise ValueError(f"polls [{self._claimed_end()}, {self._restriction.stop}) of "
                             f"{self._restriction} were not claimed")

    def current_progress(self) -> RestrictionProgress:
        done = self._claimed_end() - self._restriction.start
        stop = self._restriction.stop
        remaining = 1 if stop is None else max(0, stop - self._claimed_end())
        return RestrictionProgress(completed=done, remaining=remaining)

    def is_bounded(self) -> bool:
        return self._restriction.stop is not None


class _PollProvider(RestrictionProvider):
    def initial_restriction(self, element) -> _Polls:
        return _Polls(0)

    def create_tracker(self, restriction: _Polls) -> _PollTracker:
        return _PollTracker(restriction)

    def restriction_size(self, element, restriction: _Polls) -> float:
        if restriction.stop is None:
            return 1.0
        return float(max(0, restriction.stop - restriction.start))


# -- watermark --------------------------------------------------------------------------------

class ReaderState(NamedTuple):
    """What a reader carries from one bundle to the next (its watermark estimator state)."""

    #: Last reported watermark (ms since the epoch); None before any.
    watermark_ms: int | None = None
    #: Wall time (ms) of the first of the current run of empty long polls; None when the
    #: last poll received messages.
    idle_since_ms: int | None = None
    #: Messages this reader has emitted.
    read: int = 0
    #: ``(bucket start, oldest event time)`` of the messages received in the last ``HOLD_S``
    #: seconds of wall time, oldest bucket first.
    holds: tuple[tuple[int, int], ...] = ()


def next_reader_state(state: ReaderState, request_ms: int, now_ms: int,
                      event_times: Sequence[int], received: int) -> ReaderState:
    """The state after one poll sent at ``request_ms`` and answered at ``now_ms``, which
    received ``received`` messages and emitted those of ``event_times``.

    Watermark: the oldest event time of the last ``HOLD_S`` seconds while there is one; else,
    when the last poll found the queue empty, ``now - IDLE_SLACK_S``; never backwards.
    """
    horizon = now_ms - HOLD_S * 1000
    holds = [h for h in state.holds if h[0] + _HOLD_BUCKET_MS > horizon]
    if event_times:
        bucket = now_ms - now_ms % _HOLD_BUCKET_MS
        oldest = min(event_times)
        if holds and holds[-1][0] == bucket:
            holds[-1] = (bucket, min(holds[-1][1], oldest))
        else:
            holds.append((bucket, oldest))
    if received:
        idle_since = None
    else:
        idle_since = state.idle_since_ms if state.idle_since_ms is not None else request_ms
    if holds:
        candidate: int | None = min(h[1] for h in holds)
    elif idle_since is not None:
        candidate = now_ms - IDLE_SLACK_S * 1000
    else:
        candidate = None
    watermark = state.watermark_ms
    if candidate is not None and (watermark is None or candidate > watermark):
        watermark = candidate
    return ReaderState(watermark, idle_since, state.read + len(event_times), tuple(holds))


class _ReaderClock(WatermarkEstimator):
    """Watermark estimator holding a ``ReaderState``; the reader updates it after each poll."""

    def __init__(self, state: ReaderState | None):
        self._state = state or ReaderState()

    def observe_timestamp(self, timestamp) -> None:
        pass  # the reader reports event times itself, with the wall time of their receipt

    def current_watermark(self) -> Timestamp:
        ms = self._state.watermark_ms
        return MIN_TIMESTAMP if ms is None else Timestamp(micros=ms * 1000)

    def get_estimator_state(self) -> ReaderState:
        return self._state

    def reader_state(self) -> ReaderState:
        return self._state

    def update(self, state: ReaderState) -> None:
        self._state = state


class _ReaderClockProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction) -> ReaderState:
        return ReaderState()

    def create_watermark_estimator(self, estimator_state) -> _ReaderClock:
        return _ReaderClock(estimator_state)


_POLLS = _PollProvider()
_CLOCKS = _ReaderClockProvider()


# -- the reader -------------------------------------------------------------------------------

class _Config(NamedTuple):
    queue_urls: tuple[str, ...]
    readers_per_queue: int
    idle_timeout_s: float | None
    max_messages: int | None
    visibility_timeout_s: int
    wait_time_s: int

    @property
    def readers(self) -> int:
        return len(self.queue_urls) * self.readers_per_queue

    def share(self, reader: int) -> int | None:
        """How many messages reader number ``reader`` may emit (``max_messages`` split)."""
        if self.max_messages is None:
            return None
        base, extra = divmod(self.max_messages, self.readers)
        return base + (1 if reader < extra else 0)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@beam.typehints.with_input_types(tuple[str, int])
@beam.typehints.with_output_types(SqsMessage)
class _ReadSqsFn(beam.DoFn):
    """Splittable DoFn: element ``(queue_url, reader number)``, one restriction per reader.

    Each ``process`` call is one round: long polls until a poll comes back empty,
    ``ROUND_MAX_S`` seconds or ``ROUND_MAX_MESSAGES`` messages, then a self-checkpoint
    (``defer_remainder``) so the runner commits the bundle and calls the finalization callback
    registered for the round. In drain mode a reader ends its restriction once idle long
    enough.
    """

    def __init__(self, config: _Config, now_ms: Callable[[], int] = _now_ms,
                 client_factory: Callable[[str | None], Any] | None = None):
        super().__init__()
        self._config = config
        self._now = now_ms
        self._client_factory = client_factory
        self._received = beam.metrics.Metrics.counter("sesbeam.sqs", "messages_received")
        self._redelivered = beam.metrics.Metrics.counter("sesbeam.sqs",
                                                         "redeliveries_of_committed_messages")
        self._empty = beam.metrics.Metrics.counter("sesbeam.sqs", "empty_polls")

    # -- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self._config
        factory = self._client_factory or functools.partial(
            _make_client, read_timeout_s=max(60, cfg.wait_time_s + 30))
        self._clients = {region: factory(region)
                         for region in {region_of(url) for url in cfg.queue_urls}}
        self._leases = _Leases(self._client_for, cfg.visibility_timeout_s, self._now)
        self._system_names = _supports_system_attribute_names(
            next(iter(self._clients.values())))

    def teardown(self) -> None:
        leases = getattr(self, "_leases", None)
        if leases is not None:
            leases.release_all()

    def __getstate__(self):
        state = dict(self.__dict__)
        for runtime in ("_clients", "_leases", "_system_names"):
            state.pop(runtime, None)
        return state

    def _client_for(self, queue_url: str):
        return self._clients[region_of(queue_url)]

    # -- one round --------------------------------------------------------------------------
    def process(self, element: tuple[str, int],
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_POLLS),
                clock=beam.DoFn.WatermarkEstimatorParam(_CLOCKS)) -> Iterator:
        # The finalizer must come first: Beam passes it by position, the other two by name.
        yield from self._round(element, tracker, clock, finalizer)

    def _round(self, element, tracker, clock, finalizer) -> Iterator:
        cfg = self._config
        queue_url, reader = element
        share = cfg.share(reader)
        position = tracker.current_restriction().start
        started = self._now()
        emitted = 0
        key: str | None = None
        delay: Duration | None = None
        finished = False
        try:
            while True:
                now = self._now()
                state: ReaderState = clock.reader_state()
                if self._exhausted(state, share, now):
                    tracker.try_claim(_FINISH)
                    finished = True
                    return
                if not tracker.try_claim(position):
                    finished = True  # checkpointed by the runner
                    return
                position += 1
                count = MAX_BATCH if share is None else min(MAX_BATCH, share - state.read)
                wait = self._wait_s(state, now)
                messages = self._receive(queue_url, count, wait)
                answered = self._now()
                fresh: list[tuple[SqsMessage, int]] = []
                if messages:
                    if key is None:
                        key = self._leases.open(queue_url)
                        finalizer.register(functools.partial(self._leases.finalize, key))
                    self._leases.add(key, [(m["MessageId"], m["ReceiptHandle"])
                                           for m in messages], now)
                    self._received.inc(len(messages))
                    for m in messages:
                        if self._leases.committed(m["MessageId"]):
                            self._redelivered.inc()
                            continue  # deleted again with the round; its data is committed
                        message = _to_message(queue_url, m, answered)
                        fresh.append((message, event_time_ms(message.body,
                                                             message.sent_timestamp_ms)))
                else:
                    self._empty.inc()
                clock.update(next_reader_state(state, now, answered, [t for _, t in fresh],
                                               len(messages)))
                for message, ms in fresh:
                    yield beam.window.TimestampedValue(message, Timestamp(micros=ms * 1000))
                emitted += len(fresh)
                if not messages:
                    if answered - now < 1000:  # short polling: do not spin on an empty queue
                        delay = Duration(seconds=1)
                    break
                if emitted >= ROUND_MAX_MESSAGES or answered - started >= ROUND_MAX_S * 1000:
                    break
            tracker.defer_remainder(delay)
            finished = True
        finally:
            if key is not None:
                if finished:
                    self._leases.done(key)
                else:  # the bundle failed (an exception here or downstream)
                    self._leases.abandon(key)

    def _exhausted(self, state: ReaderState, share: int | None, now: int) -> bool:
        if share is not None and state.read >= share:
            return True
        idle = self._config.idle_timeout_s
        return (idle is not None and state.idle_since_ms is not None
                and now - state.idle_since_ms >= idle * 1000)

    def _wait_s(self, state: ReaderState, now: int) -> int:
        cfg = self._config
        if cfg.wait_time_s <= 0 or cfg.idle_timeout_s is None:
            return cfg.wait_time_s
        idle_for = 0 if state.idle_since_ms is None else now - state.idle_since_ms
        left_s = math.ceil((cfg.idle_timeout_s * 1000 - idle_for) / 1000)
        return max(1, min(cfg.wait_time_s, left_s, DRAIN_WAIT_S))

    def _receive(self, queue_url: str, count: int, wait_s: int) -> list[dict]:
        names = ["SentTimestamp"]
        attributes = ({"MessageSystemAttributeNames": names} if self._system_names
                      else {"AttributeNames": names})
        response = self._client_for(queue_url).receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=count, WaitTimeSeconds=wait_s,
            VisibilityTimeout=self._config.visibility_timeout_s, **attributes)
        return response.get("Messages") or []


class _ReadSqsUnboundedFn(_ReadSqsFn):
    """The reader without an idle timeout: its output is an unbounded PCollection."""

    @beam.DoFn.unbounded_per_element()
    def process(self, element: tuple[str, int],
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_POLLS),
                clock=beam.DoFn.WatermarkEstimatorParam(_CLOCKS)) -> Iterator:
        # The finalizer must come first: Beam passes it by position, the other two by name.
        yield from self._round(element, tracker, clock, finalizer)


def _supports_system_attribute_names(client) -> bool:
    try:
        shape = client.meta.service_model.operation_model("ReceiveMessage").input_shape
        return "MessageSystemAttributeNames" in shape.members
    except Exception:  # noqa: BLE001 - a stand-in client in tests
        return True


def _to_message(queue_url: str, m: dict, now_ms: int) -> SqsMessage:
    sent = (m.get("Attributes") or {}).get("SentTimestamp")
    try:
        sent_ms = int(sent)
    except (TypeError, ValueError):
        sent_ms = now_ms
    return SqsMessage(queue_url, m["MessageId"], m.get("Body") or "", sent_ms, m["ReceiptHandle"])


# -- the transform ----------------------------------------------------------------------------

class ReadFromSqs(beam.PTransform):
    """Read SQS queues into ``SqsMessage`` elements timestamped with their event time.

    Args:
        queue_urls: the queues to read (several regions allowed).
        idle_timeout_s: drain mode: each reader stops once its long polls have found the
            queue empty for this long; the output is bounded and the pipeline finishes. None
            (default): read until the job is cancelled or drained (unbounded output).
        readers_per_queue: parallel readers (restrictions) per queue.
        max_messages: stop after at most this many messages in all (split evenly between the
            readers; a reader also stops on its idle timeout). None: no limit.
        visibility_timeout_s: visibility timeout requested on receipt and by each extension.
        wait_time_s: long-poll wait (0-20 s); in drain mode ``DRAIN_WAIT_S`` at most.

    At least once: messages are deleted in bundle finalization, after the runner committed
    the bundle; duplicates must be removed downstream (by ``mail.messageId``).
    """

    def __init__(self, queue_urls: list[str], idle_timeout_s: float | None = None,
                 readers_per_queue: int = 2, max_messages: int | None = None,
                 visibility_timeout_s: int = 120, wait_time_s: int = 20):
        super().__init__()
        if isinstance(queue_urls, str) or not queue_urls:
            raise ValueError("ReadFromSqs needs a list of one or more queue URLs")
        urls = tuple(dict.fromkeys(queue_urls))
        if not all(isinstance(u, str) and u for u in urls):
            raise ValueError(f"queue URLs must be non-empty strings: {queue_urls!r}")
        if idle_timeout_s is not None and not idle_timeout_s >= 0:
            raise ValueError(f"idle_timeout_s must be >= 0 or None, got {idle_timeout_s!r}")
        if not isinstance(readers_per_queue, int) or readers_per_queue < 1:
            raise ValueError(f"readers_per_queue must be >= 1, got {readers_per_queue!r}")
        if max_messages is not None and (not isinstance(max_messages, int) or max_messages < 0):
            raise ValueError(f"max_messages must be >= 0 or None, got {max_messages!r}")
        if not isinstance(visibility_timeout_s, int) or not 1 <= visibility_timeout_s <= 43200:
            raise ValueError("visibility_timeout_s must be an integer from 1 to 43200, got "
                             f"{visibility_timeout_s!r}")
        if not isinstance(wait_time_s, int) or not 0 <= wait_time_s <= 20:
            raise ValueError(f"wait_time_s must be an integer from 0 to 20, got {wait_time_s!r}")
        self._config = _Config(urls, readers_per_queue, idle_timeout_s, max_messages,
                               visibility_timeout_s, wait_time_s)

    @property
    def bounded(self) -> bool:
        return self._config.idle_timeout_s is not None

    def expand(self, pbegin):
        _check_local_runner(pbegin.pipeline, self.bounded)
        cfg = self._config
        readers = [(url, q * cfg.readers_per_queue + i)
                   for q, url in enumerate(cfg.queue_urls) for i in range(cfg.readers_per_queue)]
        fn = _ReadSqsFn(cfg) if self.bounded else _ReadSqsUnboundedFn(cfg)
        return (
            pbegin
            | "Readers" >> beam.Create(readers)
            | "Read" >> beam.ParDo(fn)
        )


def _check_local_runner(pipeline, bounded: bool) -> None:
    """Refuse the local runners that cannot execute the reader correctly (module doc)."""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.direct.direct_runner import (
        BundleBasedDirectRunner,
        SwitchingDirectRunner,
    )
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    runner = getattr(pipeline, "runner", None)
    if isinstance(runner, BundleBasedDirectRunner):
        raise ValueError(
            "ReadFromSqs cannot run on the BundleBasedDirectRunner: it never calls "
            "bundle-finalization callbacks, so no message would ever be deleted. Use "
            "apache_beam.runners.portability.fn_api_runner.FnApiRunner.")
    if isinstance(runner, (FnApiRunner, SwitchingDirectRunner)):
        workers = pipeline.options.view_as(DirectOptions).direct_num_workers
        if workers != 1:
            raise ValueError(
                f"ReadFromSqs needs --direct_num_workers=1 on the local runner (got {workers}): "
                "with several workers the FnApiRunner drops the self-checkpoints of splittable "
                "DoFns, and every reader would stop after its first round.")
        if not bounded:
            _LOG.warning("ReadFromSqs without an idle timeout on the local runner reads until "
                         "the job is cancelled; stages after a GroupByKey never run there")
