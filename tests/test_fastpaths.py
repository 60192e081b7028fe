"""The fast paths give exactly what the general code gives, or step aside."""

from __future__ import annotations

import copy
import gzip
import json
import pickle

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sesbeam.schemas import MESSAGES, wire
from sesbeam.transforms import _arrow, containers, fastses
from sesbeam.transforms._arrow import pack, unpack
from sesbeam.transforms.decode import SourceFile, decode_source, decompress
from sesbeam.transforms.normalize import address_of, ascii_lower, domain_of


def _zlib_only(data: bytes, monkeypatch) -> tuple[bytes, str | None]:
    with monkeypatch.context() as m:
        m.setattr(containers, "_isal", None)
        return decompress(data)


def _member(payload: bytes, level: int = 6) -> bytes:
    return gzip.compress(payload, compresslevel=level, mtime=0)


_PLAIN = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 97)) for i in range(3000))
_GOOD = _member(_PLAIN)
_CRC = bytearray(_GOOD)
_CRC[-6] ^= 1
_CASES = {
    "one member": _GOOD,
    "two members": _GOOD + _member(b"second\n", 1),
    "zero padding": _GOOD + b"\0" * 17,
    "cut short": _GOOD[: len(_GOOD) // 2],
    "trailer cut": _GOOD[:-3],
    "bad crc": bytes(_CRC),
    "garbage after": _GOOD + b"garbage",
    "corrupt block": _GOOD[:40] + bytes(200) + _GOOD[240:],
    "empty member": _member(b""),
}


_ISAL = pytest.mark.skipif(containers._isal is None, reason="isal not installed")


@_ISAL
@pytest.mark.parametrize("name", sorted(_CASES))
def test_isal_gunzip_agrees_with_zlib(name, monkeypatch):
    """Clean streams: the same bytes. Broken ones: both say so, and what ISA-L recovers is
    a prefix of the data, as zlib's is (the two may stop at different points)."""
    data = _CASES[name]
    fast, fast_error = decompress(data)
    slow, slow_error = _zlib_only(data, monkeypatch)
    assert (fast_error is None) == (slow_error is None), (fast_error, slow_error)
    if slow_error is None:
        assert fast == slow
    else:
        truth = _PLAIN + b"second\n"
        assert truth.startswith(fast) or fast == slow


@_ISAL
def test_isal_gunzip_agrees_with_zlib_under_every_bit_flip_and_cut(monkeypatch):
    plain = b"".join(b'{"a":%d}\n' % i for i in range(300)) + b"x" * 100
    data = _member(b"".join(b'{"a":%d}\n' % i for i in range(300))) + _member(b"x" * 100, 1)
    variants = [data[:cut] for cut in range(len(data))]
    for pos in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            variants.append(bytes(flipped))
    for variant in variants:
        fast, fast_error = decompress(variant)
        slow, slow_error = _zlib_only(variant, monkeypatch)
        assert (fast_error is None) == (slow_error is None), (fast_error, slow_error)
        if slow_error is None:
            assert fast == slow
        elif fast != slow:  # both stopped early, perhaps at different points
            assert len(fast) <= len(plain) and len(slow) <= len(plain)


def test_arrow_pickles_as_ipc_and_round_trips_exactly():
    schema = pa.schema([pa.field("a", pa.int64(), nullable=False, metadata={"doc": "x"}),
                        pa.field("b", pa.list_(pa.string())),
                        pa.field("t", pa.timestamp("ms", tz="UTC"))],
                       metadata={"k": "v"})
    batch = pa.RecordBatch.from_pydict(
        {"a": list(range(1000)), "b": [["x", None], None] * 500, "t": [1, None] * 500},
        schema=schema)
    table = pa.Table.from_batches([batch, batch.slice(10, 5)])
    for value in (batch, batch.slice(100, 3), table, table.slice(990, 20),
                  schema.empty_table(), pa.Table.from_batches([], schema=schema),
                  batch.slice(0, 0), wire(MESSAGES).empty_table()):
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            back = pickle.loads(pickle.dumps(value, protocol))
            assert type(back) is type(value)
            assert back.schema.equals(value.schema, check_metadata=True)
            assert back.equals(value)
            if isinstance(value, pa.Table):
                assert [len(c) for c in back.column(0).chunks] == \
                    [len(c) for c in value.column(0).chunks if len(c)]  # empty chunks go
    assert len(pickle.dumps(batch.slice(100, 3))) < len(pickle.dumps(batch)) / 20
    assert pickle.dumps(batch) == pickle.dumps(pickle.loads(pickle.dumps(batch)))
    assert _arrow.table_from_ipc(_arrow._ipc(table)).equals(table)


def test_batch_pcollections_have_a_coder_that_sizes_without_encoding(monkeypatch):
    """Beam samples elements of every PCollection for their byte size by encoding them;
    the batches' coder reads the size off the buffers instead, and round-trips exactly."""
    import apache_beam as beam
    from apache_beam.utils.windowed_value import WindowedValue

    from sesbeam.transforms.decode import DecodeNotifications
    from sesbeam.transforms.analytics import WindowMessages
    from sesbeam.transforms.dedupe import DeduplicateMessages

    batch = pa.RecordBatch.from_pydict({"a": list(range(500)), "b": ["x" * 20] * 500},
                                       schema=pa.schema([("a", pa.int64()), ("b", pa.string())],
                                                        metadata={"k": "v"}))
    coder = beam.coders.registry.get_coder(pa.RecordBatch)
    assert isinstance(coder, _arrow.RecordBatchCoder)
    for value in (batch, batch.slice(7, 3), batch.slice(0, 0)):
        back = coder.decode(coder.encode(value))
        assert back.equals(value) and back.schema.equals(value.schema, check_metadata=True)
    nested = beam.coders.TupleCoder([beam.coders.VarIntCoder(), coder])
    assert nested.decode(nested.encode((3, batch)))[1].equals(batch)

    sized = beam.coders.WindowedValueCoder(coder).get_impl()
    value = WindowedValue(batch, 0, [beam.transforms.window.GlobalWindow()])
    monkeypatch.setattr(_arrow, "_ipc", lambda data: pytest.fail("encoded to size it"))
    size, _ = sized.get_estimated_size_and_observables(value)
    assert size >= batch.nbytes

    pipeline = beam.Pipeline()  # built, not run: the transforms' batch outputs are typed
    decoded = (pipeline | beam.Create([SourceFile("u", b"")]) | DecodeNotifications())
    deduped = decoded["messages"] | DeduplicateMessages()
    windowed = deduped["messages"] | WindowMessages(3600)
    for pcoll in (decoded["messages"], deduped["messages"], windowed):
        assert pcoll.element_type is pa.RecordBatch


# -- receipt notifications: msgspec fast path against the general decoder ---------------------
_BASE = {
    "notificationType": "Received",
    "mail": {
        "timestamp": "2024-03-01T10:00:00.123Z", "source": "Bounce <b@Src.Example.>",
        "messageId": "m-1", "destination": ["r@dest.example", "s@dest.example"],
        "headersTruncated": False,
        "headers": [{"name": "From", "value": "x"}, {"name": "To", "value": "y"}],
        "commonHeaders": {"returnPath": "b@src.example", "from": ["Ann <a@FROM.example>"],
                          "date": "Fri, 01 Mar 2024 10:00:00 +0000", "to": ["r@dest.example"],
                          "messageId": "<id@src.example>", "subject": "Hi \u00e9\U0001f600"},
        "sourceArn": "arn:x", "sourceIp": "192.0.2.1", "sendingAccountId": "1",
    },
    "receipt": {
        "timestamp": "2024-03-01T10:00:01.000Z", "processingTimeMillis": 512,
        "recipients": ["r@dest.example"], "spamVerdict": {"status": "PASS"},
        "virusVerdict": {"status": "PASS"}, "spfVerdict": {"status": "GRAY"},
        "dkimVerdict": {"status": "FAIL"}, "dmarcVerdict": {"status": "FAIL"},
        "dmarcPolicy": "REJECT",
        "action": {"type": "S3", "topicArn": "arn:t", "bucketName": "bk",
                   "objectKey": "k/1", "objectKeyPrefix": "k"},
    },
}
_ABSENT = object()
_VALUES = [_ABSENT, None, "", "x", "S3", "Received", "true", "12", " 7 ", 0, -1, 7, 1.0, 1.5,
           2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, True, False, [], ["a@b.c"],
           ["A <a@B.c>", "b@c.d"], [1], [None], {}, {"status": "FAIL"}, {"status": None},
           {"status": 3}, {"x": 1}, "2024-03-01T10:00:00Z", "2024-03-01 10:00:00 +0000",
           "Fri, 01 Mar 2024 10:00:00 +0000", "0000-01-01T00:00:00Z",
           "9999-12-31T23:59:59.999-01:00", "AMAZON_SES_SETUP_NOTIFICATION"]


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for key, sub in value.items():
            yield prefix + (key,)
            yield from _paths(sub, prefix + (key,))


def _variants():
    paths = list(_paths(_BASE)) + [("eventType",), ("Type",), ("Message",), ("Records",),
                                   ("summaryVersion",), ("content",), ("mail", "unknown"),
                                   ("receipt", "action", "unknown"), ("mail", "commonHeaders",
                                                                      "sender")]
    for path in paths:
        for value in _VALUES:
            n = copy.deepcopy(_BASE)
            parent = n
            for key in path[:-1]:
                parent = parent[key] if isinstance(parent.get(key), dict) else None
                if parent is None:
                    break
            if parent is None:
                continue
            if value is _ABSENT:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
            yield json.dumps(n, ensure_ascii=False)
    text = json.dumps(_BASE)
    yield text.replace('"sourceIp"', '"x": 1e400, "sourceIp"')  # orjson rejects, msgspec skips
    yield text.replace('"sourceIp"', '"sourceIp": 1, "sourceIp"')  # duplicate key
    yield text.replace('"m-1"', '"m-1", "messageId": "m-2"')
    yield text.replace('"x"', '"\\ud800"')  # lone surrogate
    yield text.replace('"x"', '"\\udc00\\ud800"')
    yield text.replace('"m-1"', '"m\\u002d1"')
    yield text.replace('"mail"', '"m\\u0061il"')
    yield text.replace('"processingTimeMillis": 512', '"processingTimeMillis": 512.0')
    yield text.replace('"processingTimeMillis": 512', '"processingTimeMillis": 5e2')
    yield text.replace('"processingTimeMillis": 512', '"processingTimeMillis": -0')
    yield text + " x"
    yield text[:-1]
    yield "  \t" + text + "\r\n "
    yield "\ufeff" + text
    yield "[" + text + "]"


def _decode_all(texts, monkeypatch, fast: bool):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(fastses, "AVAILABLE", False)
        lines = [json.dumps({"Type": "Notification", "Message": t,
                             "Timestamp": "2024-03-01T10:00:05.000Z"}) for t in texts]
        lines.append(json.dumps({"Records": [{"body": t} for t in texts[:50]]}))
        d = decode_source(SourceFile("s3://b/k", "\n".join(lines).encode(), 1))
    rows = [r for b in d.messages for r in b.to_pylist()]
    dead = d.dead_letters.to_pylist() if d.dead_letters is not None else []
    return rows, dead, d.tally


@pytest.mark.skipif(not fastses.AVAILABLE, reason="msgspec not installed")
def test_fast_notification_rows_equal_the_general_decoder(monkeypatch):
    texts = list(_variants())
    fast = _decode_all(texts, monkeypatch, fast=True)
    general = _decode_all(texts, monkeypatch, fast=False)
    assert fast[2] == general[2]
    assert fast[1] == general[1]
    assert len(fast[0]) == len(general[0])
    for a, b in zip(*[[json.dumps(r, default=str, sort_keys=True) for r in x[0]]
                      for x in (fast, general)]):
        assert a == b
    taken = sum(fastses.ses_row(t.strip().lstrip("\ufeff"), "sns", "u", 0) is not None
                for t in texts)
    assert 0.1 * len(texts) < taken < len(texts)  # both paths were exercised


def test_pack_round_trips_batches_and_tables():
    schema = pa.schema([pa.field("a", pa.int64(), nullable=False, metadata={"doc": "x"}),
                        pa.field("s", pa.string()), pa.field("b", pa.binary())],
                       metadata={"k": "v"})
    batch = pa.RecordBatch.from_pydict(
        {"a": list(range(500)), "s": ["x" * (i % 7) if i % 5 else None for i in range(500)],
         "b": [bytes([i % 256]) * 3 for i in range(500)]}, schema=schema)
    for value in (batch, batch.slice(7, 9), pa.Table.from_batches([batch, batch]),
                  schema.empty_table(), batch.slice(0, 0)):
        packed = pack(value)
        assert isinstance(packed, bytes)
        back = unpack(packed)
        assert isinstance(back, pa.Table)
        assert back.schema.equals(schema, check_metadata=True)
        assert back.equals(pa.table(value) if isinstance(value, pa.RecordBatch) else value)
    assert len(pack(batch.slice(7, 9))) < len(pack(batch)) / 4
    assert unpack(batch).equals(pa.table(batch))
    with pytest.raises(ValueError):
        unpack(b"not packed")


# -- sender domains: fastses' caches against normalize's functions ---------------------------
_ADDRESS_CHARS = 'ab@<>(),"\\ \t\r\n.Zé\u212aİ'


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=_ADDRESS_CHARS, max_size=16))
def test_cached_sender_domains_equal_normalize(value):
    fastses._DOMAINS.clear()
    fastses._FROMS.clear()
    for _ in range(2):  # computed, then from the caches
        assert fastses._domain_of_source(value) == domain_of(address_of(value))
        address = address_of(value)
        assert fastses._header_from(value) == (address, domain_of(address))


def test_sender_domain_caches_stay_bounded(monkeypatch):
    monkeypatch.setattr(fastses, "_CACHE_ENTRIES", 8)
    fastses._DOMAINS.clear()
    for i in range(50):
        assert fastses._domain_of_source(f"u@D{i}.Example") == f"d{i}.example"
        assert len(fastses._DOMAINS) <= 8


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=12))
def test_ascii_lower_changes_only_ascii_capitals(text):
    expected = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    assert ascii_lower(text) == expected


def _lambda_events(texts):
    """SES Lambda events made of the variants: the ``ses`` object as Lambda gives it (no
    ``notificationType``) and as is, one to three records, a setup notification among
    them, and events of other shapes."""
    objects = []
    for text in texts:
        try:
            n = json.loads(text)
        except ValueError:
            continue
        if isinstance(n, dict):
            objects.append(n)
    events = []
    for i, n in enumerate(objects):
        lambda_form = {k: v for k, v in n.items() if k != "notificationType"}
        records = [lambda_form, n, objects[(i + 1) % len(objects)]][: 1 + i % 3]
        events.append({"Records": [{"eventSource": "aws:ses", "eventVersion": "1.0",
                                    "ses": ses} for ses in records]})
    setup = copy.deepcopy(_BASE)
    setup["mail"]["messageId"] = "AMAZON_SES_SETUP_NOTIFICATION"
    plain = {k: v for k, v in _BASE.items() if k != "notificationType"}
    events += [
        {"Records": [{"eventSource": "aws:ses", "ses": plain}, {"ses": setup}]},
        {"Records": []},
        {"Records": [{"eventSource": 1, "ses": plain}]},
        {"Records": [{"ses": plain, "Sns": {}}]},
        {"Records": [{"ses": plain}], "extra": 1},
        {"Records": [plain]},
    ]
    lines = [json.dumps(e, ensure_ascii=False) for e in events]
    lines.append('{"Records": [{"ses": %s}], "Records": []}' % json.dumps(plain))  # duplicate
    lines.append('{"Records": [{"ses": %s, "x": 1e400}]}' % json.dumps(plain))
    return lines


@pytest.mark.skipif(not fastses.AVAILABLE, reason="msgspec not installed")
def test_lambda_event_rows_equal_the_general_decoder(monkeypatch):
    from sesbeam.transforms import decode as decode_module

    lines = _lambda_events(list(_variants()))
    # one source per event (a fast path turns off for the rest of a source where it
    # first steps aside), and all of them in one source
    sources = [line.encode("utf-8", "surrogatepass") for line in lines]
    sources.append(b"\n".join(sources))
    results = []
    for fast in (False, True):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(fastses, "AVAILABLE", False)
                m.setattr(decode_module, "_FAST_UNIT", None)
            decoded = [decode_source(SourceFile(f"s3://b/k{i}", data, 1))
                       for i, data in enumerate(sources)]
        results.append([([r for b in d.messages for r in b.to_pylist()],
                         d.dead_letters.to_pylist() if d.dead_letters is not None else [],
                         d.tally) for d in decoded])
    assert results[0] == results[1]
    taken = sum(fastses.lambda_event(data) is not None for data in sources[:-1])
    assert 100 < taken < len(lines)  # both paths were exercised
