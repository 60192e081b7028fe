"""The fast paths give exactly what the general code gives, or step aside."""

from __future__ import annotations

import gzip
import zlib

import pytest

from sesbeam.transforms import _gunzip, decode
from sesbeam.transforms.decode import decompress


def _zlib_only(data: bytes, monkeypatch) -> tuple[bytes, str | None]:
    with monkeypatch.context() as m:
        m.setattr(decode, "gunzip_clean", lambda _data: None)
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


@pytest.mark.skipif(not _gunzip.AVAILABLE, reason="isal not installed")
@pytest.mark.parametrize("name", sorted(_CASES))
def test_isal_gunzip_equals_zlib(name, monkeypatch):
    data = _CASES[name]
    assert decompress(data) == _zlib_only(data, monkeypatch)


@pytest.mark.skipif(not _gunzip.AVAILABLE, reason="isal not installed")
def test_isal_only_takes_clean_streams():
    assert _gunzip.gunzip_clean(_GOOD) == _PLAIN
    assert _gunzip.gunzip_clean(bytes(_CRC)) is None
    assert _gunzip.gunzip_clean(_GOOD[:-3]) is None
    assert _gunzip.gunzip_clean(_GOOD + b"garbage") is None
    assert zlib.decompress(_GOOD, 31) == _PLAIN


@pytest.mark.skipif(not _gunzip.AVAILABLE, reason="isal not installed")
def test_isal_gunzip_equals_zlib_under_every_bit_flip_and_cut(monkeypatch):
    data = _member(b"".join(b'{"a":%d}\n' % i for i in range(300))) + _member(b"x" * 100, 1)
    variants = [data[:cut] for cut in range(len(data))]
    for pos in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            variants.append(bytes(flipped))
    for variant in variants:
        assert decompress(variant) == _zlib_only(variant, monkeypatch)


def test_arrow_pickles_as_ipc_and_round_trips_exactly():
    import pickle

    import pyarrow as pa

    from sesbeam.schemas import MESSAGES, wire
    from sesbeam.transforms import _arrow

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
