"""Decode whole source objects into message RecordBatches, dead letters and a tally.

Reading bytes (``read``) and decoding them are separate steps; everything after this one
works on ``pyarrow.RecordBatch``. ``decode_source`` is the plain-function twin of
``DecodeNotifications`` and is what the tests call directly.

Containers: NDJSON, one (pretty-printed) JSON document, JSON arrays, Firehose's
concatenation without delimiter, any mix of those; gzip (one or more members) detected by
its magic bytes; UTF-8 BOM, CRLF and blank lines tolerated.

Envelopes, unwrapped recursively: bare SES notifications, SNS envelopes (HTTP/SQS style and
Lambda ``Records[].Sns`` style), SES Lambda events (``Records[].ses``), Lambda SQS events
(``Records[].body`` holding an SNS envelope or a raw notification), WorkMail events.

Accounting: every *record* (a notification after unwrapping, or an undecodable unit) ends
as exactly one of a message row, a skip (with a reason in ``SKIP_REASONS``) or a dead
letter (with a kind in ``DEAD_LETTER_KINDS``). Duplicates are found later, by ``dedupe``.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import apache_beam as beam
import orjson
import pyarrow as pa

from sesbeam.schemas import DEAD_LETTERS, wire
from sesbeam.transforms import fastses
from sesbeam.transforms._arrow import MAX_BATCH_ROWS
from sesbeam.transforms._storage import Storage, is_remote
from sesbeam.transforms.containers import (
    BLOCK_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    TOO_LARGE,
    Gunzip,
    Prefetch,
    decompress,
    split_units,
    stream_units,
)
from sesbeam.transforms.progress import note_source
from sesbeam.transforms.signatures import sns_signature_failure
from sesbeam.transforms.normalize import (
    MAX_TIME_MS,
    InvalidNotification,
    MessageBuilder,
    normalize_ses,
    normalize_workmail,
    parse_time_ms,
)

__all__ = [
    "DEAD_LETTER_KINDS",
    "SKIP_REASONS",
    "ArchiveObject",
    "DecodeNotifications",
    "DecodedSource",
    "SourceFile",
    "decode_source",
    "decode_stream",
    "decompress",
    "split_units",
]

#: Why a record that is not an email receipt was skipped.
SKIP_REASONS = {
    "sending_event": "SES sending notification or event (Bounce, Complaint, Delivery, Send, ...)",
    "subscription_succeeded": "AmazonSnsSubscriptionSucceeded notification",
    "sns_control": "SNS SubscriptionConfirmation or UnsubscribeConfirmation",
    "plain_text": "SNS message or SQS body that is plain text, not JSON",
    "setup_notification": "AMAZON_SES_SETUP_NOTIFICATION object or notification",
    "not_ses": "JSON of another shape (other SNS/SQS/Lambda traffic)",
}

#: Why a record could not be decoded.
DEAD_LETTER_KINDS = {
    "invalid_json": "bytes that do not parse as JSON (including invalid UTF-8)",
    "too_large": "a top-level JSON value (line, document, array) larger than "
                 "--max_record_bytes; raw holds its first 64 KiB",
    "unexpected_shape": "valid JSON in an impossible place (a number as a record, ...)",
    "invalid_notification": "a receipt notification with a missing or mistyped field",
    "corrupt_compression": "a gzip stream that is corrupt or cut short",
    "unreadable_source": "an object that could not be read",
    "decoder_error": "an object whose decoding failed unexpectedly (a bug: please report it)",
    "invalid_signature": "an SNS envelope whose signature is missing or does not verify "
                         "(only with signature verification on)",
}

_LOG = logging.getLogger(__name__)
_DEAD_WIRE = wire(DEAD_LETTERS)
SETUP_NOTIFICATION = "AMAZON_SES_SETUP_NOTIFICATION"
_SENDING_TYPES = frozenset({
    "Bounce", "Complaint", "Delivery", "Send", "Reject", "Open", "Click",
    "Rendering Failure", "RenderingFailure", "DeliveryDelay", "Subscription",
})
#: Nesting deeper than orjson parses (1,024 levels) with some room: see ``_dumps``.
_JSON_DEPTH = 2000
#: Dead letters are emitted in batches of at most this many rows or raw bytes.
_DEAD_BATCH_ROWS = 4096
_DEAD_BATCH_BYTES = 64 << 20
#: Bare receipt notifications (Firehose, NDJSON) and SES Lambda events decoded by msgspec
#: as they are cut out (``fastses.DecodedUnit``).
_FAST_UNIT = fastses.fast_unit if fastses.AVAILABLE else None


class SourceFile(NamedTuple):
    """One source object held in memory: its URI, bytes (None when unreadable), mtime."""

    uri: str
    data: bytes | None
    mtime_ms: int | None = None
    error: str | None = None


class ArchiveObject(NamedTuple):
    """One source object to be read as a stream by ``DecodeNotifications``."""

    uri: str
    size: int | None = None
    mtime_ms: int | None = None


class DecodedSource(NamedTuple):
    """What one source object decodes to."""

    messages: list[pa.RecordBatch]
    dead_letters: pa.RecordBatch | None
    tally: dict


def _dumps(value: Any) -> bytes:
    """The compact JSON of a nested value, for a dead letter's ``raw``.

    orjson stops at 255 levels of nesting; deeper values (orjson parses up to 1024) go
    through ``json`` with the same compact, non-ASCII-escaping output, with room above the
    recursion limit for that depth.
    """
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        pass
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + _JSON_DEPTH)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError):
        return b""
    finally:
        sys.setrecursionlimit(limit)


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _epoch_ms(value: Any) -> int | None:
    """An SQS ``SentTimestamp`` (epoch milliseconds as ASCII digits) within years 1-9999."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        ms = int(value)
        return ms if ms <= MAX_TIME_MS else None
    return None


def _wrapper_time(value: Any) -> int | None:
    try:
        return parse_time_ms(value)
    except InvalidNotification:
        return None


class _SourceDecoder:
    """Decoding state of one source object; see ``decode_source``."""

    def __init__(self, uri: str, mtime_ms: int | None, certificates=None):
        self.uri = uri
        self.certificates = certificates  # a CertificateStore: verify SNS signatures
        self.mtime_ms = mtime_ms
        self.builder = MessageBuilder()
        self.batches: list[pa.RecordBatch] = []
        self.dead: list[tuple] = []
        self.records = 0
        self.skipped: dict[str, int] = {}
        self.dead_kinds: dict[str, int] = {}
        self.dead_bytes = 0
        self.notifications = 0  # rows in batches already taken

    # -- outcomes -------------------------------------------------------------------------
    def skip(self, reason: str) -> None:
        self.records += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def dead_letter(self, kind: str, detail: str, raw: bytes, offset: int,
                    record: int | None = None) -> None:
        self.records += 1
        self.dead_kinds[kind] = self.dead_kinds.get(kind, 0) + 1
        self.dead.append((self.uri, offset, record, kind, detail, raw))
        self.dead_bytes += len(raw)

    def message(self, normalize: Callable[[int], tuple], raw: Callable[[], bytes],
                offset: int, record: int | None) -> None:
        try:
            row = normalize(self.records)
        except InvalidNotification as e:
            self.dead_letter("invalid_notification", str(e), raw(), offset, record)
            return
        self.add_row(row)

    def add_row(self, row: tuple) -> None:
        self.records += 1
        self.builder.append(row)

    # -- streaming ------------------------------------------------------------------------
    def checkpoint(self) -> tuple:
        return (len(self.builder), self.records, dict(self.skipped), dict(self.dead_kinds),
                len(self.dead), self.dead_bytes)

    def rollback(self, checkpoint: tuple) -> None:
        """Forget everything since ``checkpoint`` (taken between units)."""
        rows, self.records, self.skipped, self.dead_kinds, dead, self.dead_bytes = checkpoint
        self.builder.truncate(rows)
        del self.dead[dead:]

    def take(self, final: bool = False) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Full batches of messages and dead letters (all of them when ``final``)."""
        if len(self.builder) >= MAX_BATCH_ROWS or final and len(self.builder):
            batch = self.builder.build()
            self.notifications += batch.num_rows
            yield "messages", batch
        if self.dead and (final or len(self.dead) >= _DEAD_BATCH_ROWS
                          or self.dead_bytes >= _DEAD_BATCH_BYTES):
            yield "dead_letters", self._dead_batch()

    def _dead_batch(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(
            [dict(zip(DEAD_LETTERS.names, row)) for row in self.dead], schema=_DEAD_WIRE)
        self.dead, self.dead_bytes = [], 0
        return batch

    def tally(self, nbytes: int) -> dict:
        return {
            "sources": 1,
            "bytes": nbytes,
            "records": self.records,
            "notifications": self.notifications,
            "skipped": dict(self.skipped),
            "dead_letters": dict(self.dead_kinds),
        }

    # -- layers ---------------------------------------------------------------------------
    def unit(self, offset: int, raw: bytes | memoryview, value: Any) -> bool:
        """Decode one top-level unit. True when it was one bare notification (a row)."""
        if type(value) is fastses.DecodedUnit:
            for row in value.rows(self.uri, self.records):
                self.add_row(row)
            return True
        if isinstance(value, list):  # a JSON array container: each element is a unit
            for i, item in enumerate(value):
                self.top(item, offset, i, lambda item=item: _dumps(item))
        else:
            self.top(value, offset, None, lambda: bytes(raw).rstrip(b"\r"))
        return False

    def top(self, value: Any, offset: int, record: int | None, raw: Callable[[], bytes]) -> None:
        if not isinstance(value, dict):
            self.dead_letter("unexpected_shape", f"a JSON {type(value).__name__}, not an object",
                             raw(), offset, record)
        elif "Records" in value:
            self.records_event(value, offset, record, raw)
        else:
            self.object(value, "raw", None, offset, record, raw)

    def records_event(self, event: dict, offset: int, record: int | None,
                      raw: Callable[[], bytes]) -> None:
        """A Lambda event. Its items are numbered from 0; a nested event (an array element
        or a Records item holding Records) keeps its own ``record`` for its dead letter."""
        records = event["Records"]
        if not isinstance(records, list):
            self.dead_letter("unexpected_shape", "Records is not a list", raw(), offset, record)
            return
        for i, rec in enumerate(records):
            rec_raw = lambda rec=rec: _dumps(rec)  # noqa: E731
            if not isinstance(rec, dict):
                self.dead_letter("unexpected_shape", "a Records item is not an object",
                                 rec_raw(), offset, i)
            elif isinstance(rec.get("ses"), dict):
                self.leaf(rec["ses"], "lambda", None, offset, i, rec_raw, "Received")
            elif "Sns" in rec or "sns" in rec:
                self.sns(rec.get("Sns", rec.get("sns")), offset, i, rec_raw)
            elif "body" in rec:
                attrs = rec.get("attributes") if isinstance(rec.get("attributes"), dict) else {}
                sent = attrs.get("SentTimestamp")
                sent_ms = _epoch_ms(sent)
                self.text(rec["body"], "raw", sent_ms, offset, i)
            else:
                self.skip("not_ses")

    def sns(self, env: Any, offset: int, record: int | None, raw: Callable[[], bytes]) -> None:
        if not isinstance(env, dict):
            self.dead_letter("unexpected_shape", "Sns is not an object", raw(), offset, record)
            return
        kind = env.get("Type")
        if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            self.skip("sns_control")
        elif kind != "Notification":
            self.skip("not_ses")
        else:
            if self.certificates is not None:
                failure = sns_signature_failure(env, self.certificates)
                if failure:
                    self.dead_letter("invalid_signature", f"{failure[0]}: {failure[1]}", raw(),
                                     offset, record)
                    return
            if "Message" not in env:
                self.dead_letter("unexpected_shape", "SNS notification without Message", raw(),
                                 offset, record)
                return
            message = env["Message"]
            if isinstance(message, str) and self.fast_text(message, "sns"):
                return
            time_ms = _wrapper_time(env.get("Timestamp"))
            if isinstance(message, dict):
                self.leaf(message, "sns", time_ms, offset, record, lambda: _dumps(message))
            else:
                self.text(message, "sns", time_ms, offset, record, fast=False)

    def fast_sns(self, value: dict) -> bool:
        """``unit(value)`` for an SNS notification envelope whose ``Message`` ``fastses``
        decodes (True: the row was added), without the layers: ``top`` and ``object`` send
        such an object to ``sns``, which (without signature checks) hands its ``Message``
        to ``fast_text``. False: nothing was done, decode it the general way."""
        if value.get("Type") != "Notification" or "Records" in value:
            return False
        message = value.get("Message")
        if type(message) is not str:
            return False
        try:
            return self.fast_text(message, "sns")
        except Exception:  # noqa: BLE001 - the general path rolls back and dead-letters
            return False

    def fast_text(self, body: str, envelope: str) -> bool:
        """The common receipt notification, decoded without building dicts (``fastses``):
        True when it became a row, False when ``text`` must decode it."""
        if not fastses.AVAILABLE:
            return False
        row = fastses.ses_row(body.strip().lstrip("\ufeff"), envelope, self.uri, self.records)
        if row is None:
            return False
        self.add_row(row)
        return True

    def text(self, body: Any, envelope: str, time_ms: int | None, offset: int,
             record: int | None, fast: bool = True) -> None:
        """An SNS ``Message`` or SQS ``body``: a JSON string, or plain text."""
        if not isinstance(body, str):
            self.dead_letter("unexpected_shape", f"message body is {type(body).__name__}",
                             _dumps(body), offset, record)
            return
        raw = lambda: body.encode("utf-8", "surrogatepass")  # noqa: E731
        stripped = body.strip().lstrip("\ufeff")
        if not stripped.startswith(("{", "[")):
            self.skip("plain_text")
            return
        if fast and self.fast_text(stripped, envelope):
            return
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError as e:
            self.dead_letter("invalid_json", f"message body: {e}", raw(), offset, record)
            return
        if isinstance(value, dict):
            self.object(value, envelope, time_ms, offset, record, raw)
        else:
            self.skip("not_ses")

    def object(self, value: dict, envelope: str, time_ms: int | None, offset: int,
               record: int | None, raw: Callable[[], bytes]) -> None:
        """A JSON object that is an SNS envelope, a Records event or a notification."""
        if "Type" in value and "Message" in value:
            self.sns(value, offset, record, raw)
        elif "Records" in value and "mail" not in value:
            self.records_event(value, offset, record, raw)
        else:
            self.leaf(value, envelope, time_ms, offset, record, raw)

    def leaf(self, n: dict, envelope: str, time_ms: int | None, offset: int,
             record: int | None, raw: Callable[[], bytes], default_kind: str | None = None,
             ) -> None:
        """An unwrapped notification: a message, a skip or a dead letter."""
        if "summaryVersion" in n and "envelope" in n:
            when = time_ms if time_ms is not None else self.mtime_ms
            self.message(lambda i: normalize_workmail(n, when, self.uri, i), raw, offset, record)
            return
        kind = n.get("notificationType", n.get("eventType", default_kind))
        if kind is not None and not isinstance(kind, str):
            self.skip("not_ses")
            return
        if kind is None and "mail" in n and "receipt" in n:
            kind = "Received"  # SES Lambda action records carry no notificationType
        if kind == "Received":
            mail = n.get("mail")
            if isinstance(mail, dict) and mail.get("messageId") == SETUP_NOTIFICATION:
                self.skip("setup_notification")
            else:
                self.message(lambda i: normalize_ses(n, envelope, self.uri, i), raw, offset, record)
        elif kind == "AmazonSnsSubscriptionSucceeded":
            self.skip("subscription_succeeded")
        elif kind in _SENDING_TYPES:
            self.skip("sending_event")
        else:
            self.skip("not_ses")

    # -- result ---------------------------------------------------------------------------
    def result(self, nbytes: int) -> DecodedSource:
        """Everything decoded so far, as one ``DecodedSource``."""
        messages, dead = [], []
        for name, batch in self.take(final=True):
            (messages if name == "messages" else dead).append(batch)
        return DecodedSource(messages, _one_batch(dead), self.tally(nbytes))


def _one_batch(batches: list[pa.RecordBatch]) -> pa.RecordBatch | None:
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def decode_source(source: SourceFile, certificates=None,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> DecodedSource:
    """Decode one whole source object held in memory (the plain twin of
    ``DecodeNotifications``).

    With a ``CertificateStore``, every SNS notification envelope must carry a valid
    signature; the others become ``invalid_signature`` dead letters.
    """
    messages, dead, tally = [], [], {}
    chunks = None if source.data is None else [source.data]
    for name, value in decode_stream(source.uri, chunks, source.mtime_ms, certificates,
                                     max_record_bytes, read_error=source.error,
                                     stored_prefix=lambda n: (source.data or b"")[:n]):
        if name == "messages":
            messages.append(value)
        elif name == "dead_letters":
            dead.append(value)
        else:
            tally = value
    return DecodedSource(messages, _one_batch(dead), tally)


class _Reader:
    """The stored blocks of a source, counted; a read error ends them and is kept."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.nbytes = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self.nbytes += len(chunk)
                yield chunk
        except Exception as e:  # noqa: BLE001 - a failed read becomes a dead letter
            self.error = e


class _Serial:
    """``Prefetch``'s interface without the thread."""

    def __init__(self, items: Iterable[bytes]):
        self._items = items

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    def close(self) -> None:
        pass


class _Head:
    """The first ``limit`` inflated bytes, kept while they may be needed whole."""

    def __init__(self, blocks: Iterable[bytes], limit: int):
        self._blocks, self._limit = blocks, limit
        self.parts: list[bytes] | None = []
        self._size = 0

    def release(self) -> None:
        self.parts = None

    def __iter__(self) -> Iterator[bytes]:
        for block in self._blocks:
            if self.parts is not None:
                self._size += len(block)
                if self._size > self._limit:
                    self.parts = None
                else:
                    self.parts.append(block)
            yield block


def decode_stream(uri: str, chunks: Iterable[bytes] | None, mtime_ms: int | None = None,
                  certificates=None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, *,
                  read_error: str | None = None, fail_on_unreadable: bool = False,
                  stored_prefix: Callable[[int], bytes] | None = None,
                  prefetch: bool = False) -> Iterator[tuple[str, Any]]:
    """Decode one source read as a stream of stored blocks, in bounded memory.

    Yields ``("messages", RecordBatch)`` and ``("dead_letters", RecordBatch)`` as they fill,
    then one ``("tally", dict)``. ``chunks`` None means the source could not be opened
    (``read_error`` says why). A read that fails part-way ends the source with an
    ``unreadable_source`` dead letter (or raises, with ``fail_on_unreadable``).
    ``stored_prefix(n)`` gives the first ``n`` stored bytes again, for the dead letter of a
    corrupt gzip stream. ``prefetch``: read and inflate in a thread of its own, ahead of the
    decoding (see ``Prefetch``): worth it when reads wait on the network; for local files
    and bytes in memory the GIL hand-overs cost more than the overlap gains (measured: ~4 µs
    per notification more wall time).
    """
    decoder = _SourceDecoder(uri, mtime_ms, certificates)
    if chunks is None:
        decoder.dead_letter("unreadable_source", read_error or "unreadable", b"", -1)
        yield from decoder.take(final=True)
        yield "tally", decoder.tally(0)
        return
    if _basename(uri) == SETUP_NOTIFICATION:
        nbytes = sum(len(c) for c in chunks)
        decoder.skip("setup_notification")
        yield "tally", decoder.tally(nbytes)
        return
    collecting = gc.isenabled()
    gc.disable()  # decoding allocates millions of acyclic objects: GC passes cost ~20%
    reader = _Reader(chunks)
    inflated = Gunzip(reader)
    prefetched = Prefetch(inflated) if prefetch else _Serial(inflated)
    try:
        head = _Head(prefetched, max_record_bytes)
        try:
            units = stream_units(head, max_record_bytes, fast=_FAST_UNIT)
            yield from _decode_units(decoder, units, head)
        except Exception as e:  # noqa: BLE001 - bad input must never stop a run
            prefetched.close()
            if isinstance(e, IOError) and fail_on_unreadable:
                raise
            _LOG.exception("decoding %s failed", uri)
            stored = stored_prefix(max_record_bytes) if stored_prefix else b""
            decoder.dead_letter("decoder_error", f"decoding stopped: {type(e).__name__}: "
                                f"{e}"[:500], stored, -1)
            yield from decoder.take(final=True)
            yield "tally", decoder.tally(reader.nbytes)
            return
        if reader.error is not None:
            if fail_on_unreadable:
                raise IOError(f"cannot read {uri}: {reader.error}") from reader.error
            decoder.dead_letter("unreadable_source", f"read failed after {reader.nbytes} "
                                f"bytes: {type(reader.error).__name__}: {reader.error}", b"", -1)
        elif inflated.error:
            stored = stored_prefix(max_record_bytes) if stored_prefix else b""
            detail = inflated.error
            if reader.nbytes > len(stored):
                detail += f" (raw holds the first {len(stored)} of {reader.nbytes} bytes)"
            decoder.dead_letter("corrupt_compression", detail, stored, -1)
        yield from decoder.take(final=True)
        yield "tally", decoder.tally(reader.nbytes)
    finally:
        prefetched.close()
        if collecting:
            gc.enable()


def _decode_units(decoder: _SourceDecoder, units, head: _Head):
    """Decode the units of one source; yields full batches as they fill."""
    bad: list[tuple] = []  # (offset, raw, kind, detail), held back until a unit parses
    holding = True  # no unit parsed yet, and what was seen may still be one dead letter
    fast = fastses.AVAILABLE and decoder.certificates is None
    for offset, raw, value, error in units:
        if not holding and not bad and (
                type(value) is fastses.DecodedUnit and decoder.unit(offset, raw, value)
                or fast and type(value) is dict and decoder.fast_sns(value)):
            # The common units, a bare notification or an SES Lambda event cut out and
            # decoded by ``stream_units``, or an SNS envelope of a notification, without the
            # checkpoint (none can fail half-way) and the layers below (same rows, same
            # counts: see ``fastses.lambda_event`` and ``fast_sns``).
            if len(decoder.builder) >= MAX_BATCH_ROWS:
                yield from decoder.take()
            continue
        if error is None and isinstance(value, (dict, list, fastses.DecodedUnit)):
            holding = False
            head.release()
            _flush_bad(decoder, bad)
            checkpoint = decoder.checkpoint()
            try:
                decoder.unit(offset, raw, value)
            except Exception as e:  # noqa: BLE001 - bad input must never stop a run
                _LOG.exception("decoding a unit of %s failed", decoder.uri)
                decoder.rollback(checkpoint)
                decoder.dead_letter("decoder_error", f"{type(e).__name__}: {e}"[:500],
                                    bytes(raw).rstrip(b"\r"), offset)
            yield from decoder.take()
            continue
        if error is not None and error.startswith(TOO_LARGE):
            bad.append((offset, bytes(raw), "too_large", error))
            holding = False
            head.release()
        elif error is None:
            bad.append((offset, bytes(raw), "unexpected_shape",
                        f"a JSON {type(value).__name__}, not an object"))
        else:
            bad.append((offset, bytes(raw), "invalid_json", error))
        if not holding or head.parts is None:
            holding = False
            _flush_bad(decoder, bad)
            yield from decoder.take()
    if holding and len(bad) > 1:
        # Nothing in the object is JSON (a README, a raw email, a binary file): one dead
        # letter for the whole object rather than one per line.
        decoder.dead_letter("invalid_json", f"no JSON object in this source ({len(bad)} bad "
                            f"units; first: {bad[0][3]})", b"".join(head.parts), 0)
    else:
        _flush_bad(decoder, bad)


def _flush_bad(decoder: _SourceDecoder, bad: list) -> None:
    for offset, raw, kind, detail in bad:
        decoder.dead_letter(kind, detail, raw, offset)
    bad.clear()


def _stored_prefix(storage: Storage, uri: str, limit: int) -> bytes:
    try:
        with storage.open(uri) as f:
            return f.read(limit)
    except Exception:  # noqa: BLE001 - only for a dead letter's raw
        return b""


class _DecodeDoFn(beam.DoFn):
    def __init__(self, certificates=None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 fail_on_unreadable: bool = False):
        self._certificates = certificates
        self._max = max_record_bytes
        self._fail = fail_on_unreadable

    def setup(self):
        self._storage = Storage()

    def process(self, source):
        if isinstance(source, ArchiveObject):
            chunks, error = self._open(source.uri)
            if chunks is None and self._fail:
                raise IOError(f"cannot read {source.uri}: {error}")
            decoded = decode_stream(
                source.uri, chunks, source.mtime_ms, self._certificates, self._max,
                read_error=error, fail_on_unreadable=self._fail,
                stored_prefix=lambda n: _stored_prefix(self._storage, source.uri, n),
                prefetch=_over_network(source.uri))
        else:
            chunks = None if source.data is None else [source.data]
            decoded = decode_stream(source.uri, chunks, source.mtime_ms, self._certificates,
                                    self._max, read_error=source.error,
                                    fail_on_unreadable=self._fail,
                                    stored_prefix=lambda n: (source.data or b"")[:n])
        for name, value in decoded:
            if name == "messages":
                yield value
            elif name == "dead_letters":
                yield beam.pvalue.TaggedOutput(DecodeNotifications.DEAD_LETTERS, value)
            else:
                note_source(value["bytes"], value["records"])
                if isinstance(source, ArchiveObject) and \
                        "unreadable_source" not in value["dead_letters"]:
                    # Read to its end: the run's ledger records it (see ``incremental``).
                    value["objects"] = [[source.uri, value["bytes"], source.mtime_ms]]
                yield beam.pvalue.TaggedOutput(DecodeNotifications.TALLIES, value)

    def _open(self, uri: str):
        """The object's stored blocks, or None and why it cannot be opened."""
        try:
            f = self._storage.open(uri)
        except Exception as e:  # noqa: BLE001 - any read failure becomes a dead letter
            _LOG.warning("could not read %s: %s", uri, e)
            return None, f"{type(e).__name__}: {e}"
        return _blocks(f), None


def _over_network(uri: str) -> bool:
    return is_remote(uri) and not uri.startswith("file://")


def _blocks(f) -> Iterator[bytes]:
    with f:
        while chunk := f.read(BLOCK_BYTES):
            yield chunk


class DecodeNotifications(beam.PTransform):
    """``ArchiveObject`` or ``SourceFile`` -> ``{"messages", "dead_letters", "tallies"}``.

    ``messages`` and ``dead_letters`` are PCollections of ``pyarrow.RecordBatch`` (schemas
    ``MESSAGES`` and ``DEAD_LETTERS``); ``tallies`` holds one accounting dict per source.
    An ``ArchiveObject`` is read as a stream, so memory stays bounded whatever its size.
    """

    MESSAGES = "messages"
    DEAD_LETTERS = "dead_letters"
    TALLIES = "tallies"

    def __init__(self, certificates=None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 fail_on_unreadable: bool = False):
        """``certificates``: a ``CertificateStore`` to verify SNS signatures with.
        ``max_record_bytes``: larger top-level JSON values are ``too_large`` dead letters.
        ``fail_on_unreadable``: an object that cannot be read fails the pipeline."""
        super().__init__()
        self._certificates = certificates
        self._max = max_record_bytes
        self._fail = fail_on_unreadable

    def expand(self, sources):
        outputs = sources | "Decode" >> beam.ParDo(
            _DecodeDoFn(self._certificates, self._max, self._fail)).with_output_types(
            pa.RecordBatch).with_outputs(
            self.DEAD_LETTERS, self.TALLIES, main=self.MESSAGES)
        return {name: outputs[name] for name in (self.MESSAGES, self.DEAD_LETTERS, self.TALLIES)}
