"""Decode SQS messages with the batch decoder, a bundle at a time.

Each message body (an SNS envelope, a raw notification, anything else) is one source for
``_SourceDecoder``: its rows have ``source_uri`` ``<queue url>#<SQS message id>`` and
``source_record`` 0, its dead letters the message's event time. ``DecodeQueueMessages``
collects the rows of a whole bundle and emits them when the bundle finishes, as one
RecordBatch per window (a one-row batch per message would cost a pickling and a state
access each downstream), with one tally for the bundle.

With a journal (drain mode, ``sesbeam.transforms.journal``) the bundle's raw messages are
written to a journal file in ``finish_bundle``, before the runner finalizes the bundle, and
so before the reader deletes them from SQS.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from sesbeam.transforms._arrow import MAX_BATCH_ROWS
from sesbeam.transforms._storage import Storage
from sesbeam.transforms.decode import _DEAD_WIRE, DecodedSource, _SourceDecoder
from sesbeam.transforms.journal import journal_path, write_journal
from sesbeam.transforms.progress import note_source
from sesbeam.transforms.sqs import SqsMessage
from sesbeam.transforms.summary import merge_tallies

__all__ = ["BundleDecoder", "DecodeQueueMessages", "decode_message"]


def decode_message(message: SqsMessage, certificates=None) -> DecodedSource:
    """One SQS message body decoded (the plain twin of ``DecodeQueueMessages``)."""
    decoder = BundleDecoder(certificates)
    dead = decoder.add(message)
    result = decoder.result()
    batch = None if not dead else pa.RecordBatch.from_pylist(dead, schema=_DEAD_WIRE)
    return result._replace(dead_letters=batch)


class BundleDecoder:
    """Decodes many messages into one builder: rows come out together in ``result``."""

    def __init__(self, certificates=None):
        self._decoder = _SourceDecoder("", None, certificates)
        self._records = 0
        self._bytes = 0
        self._messages = 0

    def add(self, message: SqsMessage) -> list[dict]:
        """Decode one message; returns its dead letters (as row dicts)."""
        d = self._decoder
        d.uri = f"{message.queue_url}#{message.message_id}"
        d.mtime_ms = message.sent_timestamp_ms
        d.records = 0  # source_record counts within the message
        dead_before = len(d.dead)
        d.text(message.body, "raw", message.sent_timestamp_ms, 0, None)
        nbytes = len(message.body.encode("utf-8", "surrogatepass"))
        note_source(nbytes, d.records)
        self._records += d.records
        self._bytes += nbytes
        self._messages += 1
        dead = d.dead[dead_before:]
        del d.dead[dead_before:]
        return [dict(zip(_DEAD_WIRE.names, row)) for row in dead]

    def result(self) -> DecodedSource:
        """The rows so far (``dead_letters`` None: ``add`` returned them)."""
        d = self._decoder
        d.records = self._records
        result = d.result(self._bytes)
        return result._replace(tally={**result.tally, "sources": 0,
                                      "queue_messages": self._messages})


class _DecodeBundleDoFn(beam.DoFn):
    """See ``DecodeQueueMessages``."""

    def __init__(self, certificates=None, journal: str | None = None, run_id: str = "",
                 skip_ids: frozenset = frozenset(), recovered: bool = False):
        self._certificates = certificates
        self._journal = journal
        self._run_id = run_id
        self._skip_ids = skip_ids
        self._recovered = recovered

    def setup(self):
        self._storage = Storage() if self._journal else None

    def start_bundle(self):
        self._decoders: dict = {}  # window -> BundleDecoder
        self._times: dict = {}     # window -> earliest timestamp
        self._dead: list = []      # (rows, timestamp, window)
        self._entries: list = []   # (SqsMessage, event ms) for the journal
        self._ids: set = set()
        self._dropped = 0
        self._earliest = None

    def process(self, message: SqsMessage, timestamp=beam.DoFn.TimestampParam,
                win=beam.DoFn.WindowParam):
        if self._earliest is None or timestamp < self._earliest:
            self._earliest = timestamp
        if message.message_id in self._skip_ids or message.message_id in self._ids:
            self._dropped += 1
            return
        self._ids.add(message.message_id)
        if self._journal:
            self._entries.append((message, timestamp.micros // 1000))
        decoder = self._decoders.get(win)
        if decoder is None:
            decoder = self._decoders[win] = BundleDecoder(self._certificates)
            self._times[win] = timestamp
        self._times[win] = min(self._times[win], timestamp)
        dead = decoder.add(message)
        if dead:
            self._dead.append((dead, timestamp, win))

    def finish_bundle(self):
        if self._entries:
            write_journal(self._storage, journal_path(self._journal, self._run_id),
                          self._entries)
        tallies = []
        for win, decoder in self._decoders.items():
            result = decoder.result()
            tallies.append(result.tally)
            if result.messages:
                table = pa.Table.from_batches(result.messages).combine_chunks()
                for batch in table.to_batches(max_chunksize=MAX_BATCH_ROWS):
                    yield WindowedValue(batch, self._times[win], (win,))
        for rows, timestamp, win in self._dead:
            yield beam.pvalue.TaggedOutput("dead_letters", WindowedValue(
                pa.RecordBatch.from_pylist(rows, schema=_DEAD_WIRE), timestamp, (win,)))
        if self._dropped:
            tallies.append({"redeliveries_dropped": self._dropped})
        if tallies:
            tally = merge_tallies(tallies)
            if self._recovered:
                tally["recovered_messages"] = tally.get("queue_messages", 0)
            yield beam.pvalue.TaggedOutput(
                "tallies", WindowedValue(tally, self._earliest, (GlobalWindow(),)))
        self.start_bundle()


class DecodeQueueMessages(beam.PTransform):
    """``SqsMessage`` -> ``{"messages", "dead_letters", "tallies"}`` like ``DecodeNotifications``.

    Args:
        certificates: verify SNS signatures with this ``CertificateStore``.
        journal: an output root: write each bundle's messages to its journal first.
        run_id: names the journal files.
        skip_ids: SQS message ids to drop as redeliveries (recovered from a journal); a
            message id seen twice in a bundle is dropped too. Counted as
            ``redeliveries_dropped``.
        recovered: the messages come from the journal of an interrupted run (counted as
            ``recovered_messages``).
    """

    def __init__(self, certificates=None, *, journal: str | None = None, run_id: str = "",
                 skip_ids=frozenset(), recovered: bool = False):
        super().__init__()
        self._fn = _DecodeBundleDoFn(certificates, journal, run_id, frozenset(skip_ids),
                                     recovered)

    def expand(self, messages):
        out = messages | "Decode" >> beam.ParDo(self._fn).with_outputs(
            "dead_letters", "tallies", main="messages")
        return {name: out[name] for name in ("messages", "dead_letters", "tallies")}
