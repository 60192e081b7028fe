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
import re
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import apache_beam as beam
import orjson
import pyarrow as pa

from sesbeam.schemas import DEAD_LETTERS, wire
from sesbeam.transforms import fastses
from sesbeam.transforms._arrow import MAX_BATCH_ROWS
from sesbeam.transforms._gunzip import gunzip_clean
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
    "DecodeNotifications",
    "DecodedSource",
    "SourceFile",
    "decode_source",
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
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_SPACE = re.compile(rb"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
#: ``}{`` inside strings is rare; after this many false candidates, scan properly instead.
_MAX_BOUNDARY_TRIES = 8


class SourceFile(NamedTuple):
    """One source object as read: its URI, bytes (None when unreadable), mtime."""

    uri: str
    data: bytes | None
    mtime_ms: int | None = None
    error: str | None = None


class DecodedSource(NamedTuple):
    """What one source object decodes to."""

    messages: list[pa.RecordBatch]
    dead_letters: pa.RecordBatch | None
    tally: dict


def decompress(data: bytes) -> tuple[bytes, str | None]:
    """Gunzip ``data`` when it starts with the gzip magic (any number of members).

    Returns the bytes (as much as could be recovered) and an error text or None.
    """
    if not data.startswith(_GZIP_MAGIC):
        return data, None
    fast = gunzip_clean(data)  # ISA-L for clean streams; zlib below words the errors
    if fast is not None:
        return fast, None
    parts: list[bytes] = []
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        try:
            parts.append(inflater.decompress(rest))
        except zlib.error as e:
            return b"".join(parts), f"corrupt gzip stream: {e}"
        if not inflater.eof:
            return b"".join(parts), "gzip stream cut short"
        rest = inflater.unused_data
        if rest and not rest.startswith(_GZIP_MAGIC):
            if rest.strip(b"\0"):
                return b"".join(parts), f"{len(rest)} bytes of non-gzip data after the stream"
            break
    return b"".join(parts), None


def split_units(data: bytes) -> Iterator[tuple[int, bytes | memoryview, Any, str | None]]:
    """Top-level JSON values of a container: ``(offset, raw, value, error)``.

    Fast path: each line parses as one value (NDJSON). Otherwise the value starting at the
    line is delimited with a JSON scanner (pretty-printed documents, Firehose ``}{``
    concatenation). A unit that does not parse yields ``error`` (and value None) with its
    bytes: the line, or, when the broken value spans several lines and the next line is not
    a value of its own, everything up to the line where the scanner failed. ``raw`` is a
    zero-copy view for good units (``bytes(raw)`` when it must be kept).
    """
    view = memoryview(data)
    n = len(data)
    pos = 3 if data.startswith(_BOM) else 0
    prev_end = -1  # where the previous unit ended (its newline included); -1 at the start
    text: str | None = None  # latin-1 view of data: one char per byte, for the scanner
    eol = -1
    memo: dict = {}
    while True:
        pos = _SPACE.match(data, pos).end()
        if pos >= n:
            return
        if eol < pos:  # a long line holds many units (Firehose): find its end once
            eol = _line_end(data, pos)
        if prev_end < 0 or data.find(b"\n", prev_end, pos) >= 0:  # at a line start
            try:
                yield pos, view[pos:eol], orjson.loads(view[pos:eol]), None
                prev_end, pos = eol, eol + 1
                continue
            except orjson.JSONDecodeError:
                pass
        end, value = _concatenated(view, data, pos, eol, memo)
        if end is not None:
            yield pos, view[pos:end], value, None
            prev_end = pos = end
            continue
        if data[pos:pos + 1] not in (b"{", b"["):  # no JSON container starts here
            yield pos, data[pos:eol].rstrip(b"\r"), None, "not JSON"
            pos = eol + 1
            continue
        if text is None:
            text = data.decode("latin-1")
        try:
            end = _DECODER.raw_decode(text, pos)[1]
        except (ValueError, RecursionError) as e:
            error_pos = getattr(e, "pos", eol)
            stop = eol if _next_line_parses(data, eol) else max(eol, _line_end(data, error_pos))
            yield pos, data[pos:stop].rstrip(b"\r"), None, f"{type(e).__name__}: {e}"[:500]
            prev_end, pos = stop, stop + 1
            continue
        try:
            value = orjson.loads(view[pos:end])
        except orjson.JSONDecodeError as e:  # e.g. invalid UTF-8 inside a string
            yield pos, data[pos:end], None, str(e)
        else:
            yield pos, view[pos:end], value, None
        prev_end = pos = end


def _concatenated(view: memoryview, data: bytes, pos: int, eol: int,
                  memo: dict) -> tuple[int | None, Any]:
    """End and value of the object at ``pos`` when another follows with no delimiter.

    Firehose writes records back to back (``}{``): try the candidate boundaries in this
    line, each parse costing only the object's length. ``(None, None)`` when no candidate
    works (the caller then scans with a full JSON scanner). ``memo`` keeps the last search
    so that a long line is searched once, not once per object.
    """
    search = pos
    for _ in range(_MAX_BOUNDARY_TRIES):
        if memo.get("eol") == eol and memo["from"] <= search and (
                memo["at"] < 0 or memo["at"] >= search):
            boundary = memo["at"]
        else:
            boundary = data.find(b"}{", search, eol)
            memo.update(eol=eol, at=boundary)
            memo["from"] = search
        if boundary < 0:
            break
        try:
            return boundary + 1, orjson.loads(view[pos:boundary + 1])
        except orjson.JSONDecodeError:
            search = boundary + 1
    return None, None


def _line_end(data: bytes, pos: int) -> int:
    eol = data.find(b"\n", pos)
    return len(data) if eol < 0 else eol


def _next_line_parses(data: bytes, eol: int) -> bool:
    start = _SPACE.match(data, eol).end()
    if start >= len(data):
        return False
    try:
        orjson.loads(memoryview(data)[start:_line_end(data, start)])
        return True
    except orjson.JSONDecodeError:
        return False


def _dumps(value: Any) -> bytes:
    """The JSON of a nested value, for a dead letter; too deep to serialise: empty."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return b""


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

    # -- outcomes -------------------------------------------------------------------------
    def skip(self, reason: str) -> None:
        self.records += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def dead_letter(self, kind: str, detail: str, raw: bytes, offset: int,
                    record: int | None = None) -> None:
        self.records += 1
        self.dead_kinds[kind] = self.dead_kinds.get(kind, 0) + 1
        self.dead.append((self.uri, offset, record, kind, detail, raw))

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
        if len(self.builder) >= MAX_BATCH_ROWS:
            self.batches.append(self.builder.build())

    # -- layers ---------------------------------------------------------------------------
    def unit(self, offset: int, raw: bytes | memoryview, value: Any) -> None:
        if isinstance(value, list):  # a JSON array container: each element is a unit
            for i, item in enumerate(value):
                self.top(item, offset, i, lambda item=item: _dumps(item))
        else:
            self.top(value, offset, None, lambda: bytes(raw).rstrip(b"\r"))

    def top(self, value: Any, offset: int, record: int | None, raw: Callable[[], bytes]) -> None:
        if not isinstance(value, dict):
            self.dead_letter("unexpected_shape", f"a JSON {type(value).__name__}, not an object",
                             raw(), offset, record)
        elif "Records" in value:
            self.records_event(value, offset, raw)
        else:
            self.object(value, "raw", None, offset, record, raw)

    def records_event(self, event: dict, offset: int, raw: Callable[[], bytes]) -> None:
        records = event["Records"]
        if not isinstance(records, list):
            self.dead_letter("unexpected_shape", "Records is not a list", raw(), offset)
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
            message = env.get("Message")
            if isinstance(message, str) and self.fast_text(message, "sns"):
                return
            time_ms = _wrapper_time(env.get("Timestamp"))
            if isinstance(message, dict):
                self.leaf(message, "sns", time_ms, offset, record, lambda: _dumps(message))
            else:
                self.text(message, "sns", time_ms, offset, record, fast=False)

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
            self.records_event(value, offset, raw)
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
        if len(self.builder):
            self.batches.append(self.builder.build())
        dead = None
        if self.dead:
            dead = pa.RecordBatch.from_pylist(
                [dict(zip(DEAD_LETTERS.names, row)) for row in self.dead], schema=_DEAD_WIRE)
        tally = {
            "sources": 1,
            "bytes": nbytes,
            "records": self.records,
            "notifications": sum(b.num_rows for b in self.batches),
            "skipped": dict(self.skipped),
            "dead_letters": dict(self.dead_kinds),
        }
        return DecodedSource(self.batches, dead, tally)


def decode_source(source: SourceFile, certificates=None) -> DecodedSource:
    """Decode one whole source object (the plain twin of ``DecodeNotifications``).

    With a ``CertificateStore``, every SNS notification envelope must carry a valid
    signature; the others become ``invalid_signature`` dead letters.
    """
    collecting = gc.isenabled()
    gc.disable()  # decoding allocates millions of acyclic objects: GC passes cost ~20%
    try:
        return _decode(source, certificates)
    finally:
        if collecting:
            gc.enable()


def _decode(source: SourceFile, certificates) -> DecodedSource:
    decoder = _SourceDecoder(source.uri, source.mtime_ms, certificates)
    if source.data is None:
        decoder.dead_letter("unreadable_source", source.error or "unreadable", b"", -1)
        return decoder.result(0)
    if _basename(source.uri) == SETUP_NOTIFICATION:
        decoder.skip("setup_notification")
        return decoder.result(len(source.data))
    data, error = decompress(source.data)
    if error:
        decoder.dead_letter("corrupt_compression", error, source.data, -1)
    bad: list[tuple] = []  # (offset, raw, kind, detail), held back until a unit parses
    parsed = False
    for offset, raw, value, parse_error in split_units(data):
        if parse_error is None and isinstance(value, (dict, list)):
            parsed = True
            _flush_bad(decoder, bad)
            decoder.unit(offset, raw, value)
            continue
        if parse_error is None:
            bad.append((offset, bytes(raw), "unexpected_shape",
                        f"a JSON {type(value).__name__}, not an object"))
        else:
            bad.append((offset, bytes(raw), "invalid_json", parse_error))
        if parsed:
            _flush_bad(decoder, bad)
    if not parsed and len(bad) > 1:
        # Nothing in the object is JSON (a README, a raw email, a binary file): one dead
        # letter for the whole object rather than one per line.
        decoder.dead_letter("invalid_json", f"no JSON object in this source ({len(bad)} bad "
                            f"units; first: {bad[0][3]})", data, 0)
    else:
        _flush_bad(decoder, bad)
    return decoder.result(len(source.data))


def _flush_bad(decoder: _SourceDecoder, bad: list) -> None:
    for offset, raw, kind, detail in bad:
        decoder.dead_letter(kind, detail, raw, offset)
    bad.clear()


def _decode_guarded(source: SourceFile, certificates=None) -> DecodedSource:
    """``decode_source``; should it fail unexpectedly, the whole source is one dead letter."""
    try:
        return decode_source(source, certificates)
    except Exception as e:  # noqa: BLE001 - bad input must never stop a run
        _LOG.exception("decoding %s failed", source.uri)
        decoder = _SourceDecoder(source.uri, source.mtime_ms)
        decoder.dead_letter("decoder_error", f"{type(e).__name__}: {e}", source.data or b"", -1)
        return decoder.result(len(source.data or b""))


class _DecodeDoFn(beam.DoFn):
    def __init__(self, certificates=None):
        self._certificates = certificates

    def process(self, source: SourceFile):
        decoded = _decode_guarded(source, self._certificates)
        note_source(decoded.tally["bytes"], decoded.tally["records"])
        yield from decoded.messages
        if decoded.dead_letters is not None:
            yield beam.pvalue.TaggedOutput(DecodeNotifications.DEAD_LETTERS, decoded.dead_letters)
        yield beam.pvalue.TaggedOutput(DecodeNotifications.TALLIES, decoded.tally)


class DecodeNotifications(beam.PTransform):
    """``SourceFile`` -> ``{"messages", "dead_letters", "tallies"}``.

    ``messages`` and ``dead_letters`` are PCollections of ``pyarrow.RecordBatch`` (schemas
    ``MESSAGES`` and ``DEAD_LETTERS``); ``tallies`` holds one accounting dict per source.
    """

    MESSAGES = "messages"
    DEAD_LETTERS = "dead_letters"
    TALLIES = "tallies"

    def __init__(self, certificates=None):
        """``certificates``: a ``CertificateStore`` to verify SNS signatures with."""
        super().__init__()
        self._certificates = certificates

    def expand(self, sources):
        outputs = sources | "Decode" >> beam.ParDo(_DecodeDoFn(self._certificates)).with_outputs(
            self.DEAD_LETTERS, self.TALLIES, main=self.MESSAGES)
        return {name: outputs[name] for name in (self.MESSAGES, self.DEAD_LETTERS, self.TALLIES)}
