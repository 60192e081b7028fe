"""Streaming containers: blocks, the record size limit, gzip in bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sesbeam.transforms.containers import (
    TOO_LARGE,
    TOO_LARGE_RAW_BYTES,
    Gunzip,
    Prefetch,
    split_units,
    stream_units,
)
from sesbeam.transforms import fastses
from sesbeam.transforms.decode import SourceFile, decode_source, decode_stream
from tests.test_decode import ndjson, notification


def rechunk(data: bytes, sizes: list[int]):
    """``data`` in blocks of the given sizes (cycled)."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos:pos + size]
        pos, i = pos + size, i + 1


def units_of(iterable):
    return [(o, bytes(r), v, e) for o, r, v, e in iterable]


def mixed_container() -> bytes:
    """NDJSON, a pretty-printed document, Firehose concatenation, an array, garbage."""
    compact = [json.dumps(notification(f"f{i}"), separators=(",", ":")).encode()
               for i in range(40)]
    return b"".join([
        ndjson(*[notification(f"n{i}") for i in range(30)]),
        json.dumps(notification("pretty"), indent=2).encode(), b"\n",
        b"".join(compact), b"\n",
        json.dumps([notification("a0"), notification("a1")]).encode(), b"\n",
        b"not json at all\n", b'{"broken": \n', b"42\n",
        ndjson(notification("last")),
    ])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=6))
def test_any_block_split_gives_the_units_of_the_whole(sizes):
    data = mixed_container()
    limit = max(len(line) for line in data.splitlines()) + 1  # a small window, many passes
    assert units_of(stream_units(rechunk(data, sizes), limit)) == units_of(split_units(data))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=8), st.booleans(),
       st.sampled_from([b"\n", b"\r\n", b"\n\n", b" \n\t"]))
def test_lines_across_block_boundaries_give_the_units_of_the_whole(sizes, bom, sep):
    """NDJSON whose lines straddle the blocks (the line from one block into the next is
    decoded on its own, then the pass goes on in the new block), with a byte order mark,
    CRLF or blank lines, and a Firehose run and a broken line among them."""
    lines = [json.dumps(notification(f"n{i}")).encode() for i in range(25)]
    lines[7] = lines[7] + lines[8]  # Firehose: two values on one line
    lines[12] = b'{"broken": '
    data = (b"\xef\xbb\xbf" if bom else b"") + sep.join(lines) + sep
    limit = max(len(line) for line in lines) * 2
    assert units_of(stream_units(rechunk(data, sizes), limit)) == units_of(split_units(data))


def test_ndjson_units_come_out_as_the_blocks_arrive():
    """Whole lines are decoded while later blocks are still being read (and inflated, in
    the prefetch thread): the window is filled only for what needs it."""
    lines = ndjson(*[notification(f"n{i}") for i in range(400)])
    pulled = []

    def blocks():
        for i, block in enumerate(rechunk(lines, [4096])):
            pulled.append(i)
            yield block

    units = stream_units(blocks(), 1 << 20)
    first = next(units)
    assert first[2]["mail"]["messageId"] == "n0" and len(pulled) == 1
    assert len(list(units)) == 399


def test_prefetch_keeps_order_hands_over_errors_and_stops_early():
    assert list(Prefetch(iter(range(1000)), depth=3)) == list(range(1000))

    def failing():
        yield 1
        raise ValueError("read failed")

    got = []
    with pytest.raises(ValueError, match="read failed"):
        for item in Prefetch(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    prefetch = Prefetch(endless(), depth=2)
    assert next(iter(prefetch)) == 0
    prefetch.close()
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count <= 5  # stopped, at most depth + a few ahead
    assert not any(t.name == "sesbeam-prefetch" for t in threading.enumerate())


def test_a_line_over_the_limit_is_one_too_large_unit_and_its_neighbours_survive():
    big = json.dumps(notification("big", subject_pad="x" * 50_000)).encode()
    data = ndjson(notification("a")) + big + b"\n" + ndjson(notification("b"))
    for sizes in ([len(data)], [1000], [7, 4096]):
        units = units_of(stream_units(rechunk(data, sizes), 20_000))
        assert [u[2]["mail"]["messageId"] for u in units if u[3] is None] == ["a", "b"]
        (offset, raw, _, error), = [u for u in units if u[3] is not None]
        assert offset == data.index(big) and error.startswith(TOO_LARGE)
        assert raw == big[:TOO_LARGE_RAW_BYTES] and hashlib.sha256(big).hexdigest() in error
        assert f"a record of {len(big)} bytes" in error


def test_a_firehose_line_far_longer_than_the_limit_is_not_too_large():
    records = [json.dumps(notification(f"f{i}"), separators=(",", ":")).encode()
               for i in range(2000)]
    data = b"".join(records)  # one line of ~2 MB, records of ~1 KB
    units = units_of(stream_units(rechunk(data, [65536]), 8192))
    assert all(e is None for *_, e in units) and len(units) == 2000
    assert [u[0] for u in units] == [data.index(r) for r in records[:1]] + [
        sum(map(len, records[:i])) for i in range(1, 2000)]


@pytest.mark.parametrize("records, reach", [(200, ""), (6000, " (to the end of the source)")])
def test_a_pretty_document_over_the_limit_is_too_large(records, reach):
    """Within the window (4 MiB here) its end is known; past it, the rest of the source
    is taken as the record."""
    doc = json.dumps({"Records": [{"ses": notification(f"p{i}")} for i in range(records)]},
                     indent=2).encode()
    data = ndjson(notification("a")) + doc + b"\n" + ndjson(notification("b"))
    units = units_of(stream_units(rechunk(data, [65536]), 10_000))
    assert units[0][3] is None and units[1][3].startswith(TOO_LARGE)
    size = len(doc) if not reach else len(data) - data.index(doc)
    assert f"a record of {size} bytes{reach} exceeds" in units[1][3]
    assert len(units) == (3 if not reach else 2)


@pytest.mark.parametrize("cut", [False, True])
def test_decoding_with_the_prefetch_thread_gives_the_same_result(cut):
    data = gzip.compress(mixed_container())
    data = data[:len(data) // 2] if cut else data  # a cut gzip stream: corrupt_compression
    results = []
    for prefetch in (False, True):
        out = list(decode_stream("s3://b/k.gz", rechunk(data, [1000]), prefetch=prefetch,
                                 stored_prefix=lambda n: data[:n]))
        results.append([(name, value if name == "tally" else value.to_pylist())
                        for name, value in out])
    assert results[0] == results[1]
    tally = results[0][-1][1]
    assert tally["records"] > 3 and ("corrupt_compression" in tally["dead_letters"]) == cut


def test_bare_notifications_decoded_as_they_are_cut_out_equal_the_general_decoder(
        monkeypatch):
    """Firehose ``}{`` records and NDJSON lines of bare notifications go to msgspec in the
    splitter (``fastses.bare_notification``); the result is the general decoder's."""
    from sesbeam.transforms import decode as decode_module

    odd = notification("odd")
    odd["mail"]["unknownField"] = 1  # msgspec refuses it: the general decoder takes it
    def firehose(prefix: str) -> bytes:
        return b"".join(json.dumps(notification(f"{prefix}{i}")).encode() for i in range(30))

    data = (firehose("f") + json.dumps(odd).encode() + firehose("g") + b"\n"
            + ndjson(*[notification(f"n{i}") for i in range(5)]) + mixed_container())
    decoded = []

    def bare(raw):
        value = fastses.bare_notification(raw)
        decoded.append(value is not None)
        return value

    results = []
    for fast in (None, bare):
        monkeypatch.setattr(decode_module, "_FAST_UNIT", fast)
        d = decode_source(SourceFile("file:///x.json.gz", gzip.compress(data)))
        results.append(([b.to_pylist() for b in d.messages], d.dead_letters.to_pylist(),
                         d.tally))
    assert results[0] == results[1]
    assert results[1][2]["notifications"] == 30 + 1 + 30 + 5 + 74
    # every record followed by "}{" (the first line's NDJSON attempt failing, lines are
    # left to orjson for the rest of the source)
    assert sum(decoded) == 30 + 29 + 39


def test_decode_counts_a_too_large_record_as_one_dead_letter():
    big = json.dumps(notification("big", subject_pad="y" * 30_000)).encode()
    data = gzip.compress(ndjson(notification("a")) + big + b"\n" + ndjson(notification("b")))
    d = decode_source(SourceFile("file:///x.gz", data), max_record_bytes=10_000)
    assert d.tally["records"] == 3 and d.tally["notifications"] == 2
    assert d.tally["dead_letters"] == {"too_large": 1}
    letter = d.dead_letters.to_pylist()[0]
    assert letter["kind"] == "too_large" and letter["raw"] == big[:TOO_LARGE_RAW_BYTES]


def test_gunzip_yields_bounded_blocks_and_reports_a_cut():
    plain = b"\n" * (5 << 20)
    packed = gzip.compress(plain)
    inflated = Gunzip(rechunk(packed, [1000]), out_block=1 << 20)
    sizes = [len(b) for b in inflated]
    assert sum(sizes) == len(plain) and max(sizes) <= 1 << 20 and inflated.error is None
    cut = Gunzip([packed[:len(packed) // 2]])
    list(cut)
    assert cut.error == "gzip stream cut short"
    members = Gunzip(rechunk(gzip.compress(b"a\n") + gzip.compress(b"b\n") + b"\0\0", [3]))
    assert b"".join(members) == b"a\nb\n" and members.error is None
    trailing = Gunzip([gzip.compress(b"a\n") + b"junk"])
    assert b"".join(trailing) == b"a\n" and trailing.error == \
        "4 bytes of non-gzip data after the stream"
    corrupt = Gunzip([packed[:20] + b"\xff" * 50 + packed[70:]])
    list(corrupt)
    assert corrupt.error.startswith("corrupt gzip stream")


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, zlib
    from sesbeam.transforms.decode import decode_stream

    def peak_rss_mib():
        # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) >> 10

    GIB, BLOCK = int(sys.argv[1]), 4 << 20
    good = json.dumps({"notificationType": "Received",
        "mail": {"messageId": "ok", "timestamp": "2024-03-01T10:00:00.000Z",
                 "source": "a@b.example", "destination": ["r@c.example"]},
        "receipt": {"timestamp": "2024-03-01T10:00:00.000Z", "recipients": ["r@c.example"],
                    "spamVerdict": {"status": "PASS"}, "virusVerdict": {"status": "PASS"},
                    "spfVerdict": {"status": "PASS"}, "dkimVerdict": {"status": "PASS"},
                    "dmarcVerdict": {"status": "PASS"}, "action": {"type": "SNS"}}}).encode()

    def huge_line():
        yield good + b"\\n" + b'{"a": "'
        filler = b"x" * BLOCK
        for _ in range(GIB * 256):
            yield filler
        yield b'"}\\n' + good + b"\\n"

    def bomb():
        deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
        yield deflate.compress(good + b"\\n")
        zeros = b" " * BLOCK
        for _ in range(GIB * 256):
            yield deflate.compress(zeros)
        yield deflate.compress(b"\\n" + good + b"\\n") + deflate.flush()

    source = huge_line() if sys.argv[2] == "line" else bomb()
    out = list(decode_stream("file:///huge", source))
    tally = out[-1][1]
    dead = [b for name, b in out if name == "dead_letters"]
    print(json.dumps({"tally": tally,
                      "kinds": [k for b in dead for k in b.column("kind").to_pylist()],
                      "maxrss_mib": peak_rss_mib()}))
""")


def _run_memory_script(gib: int, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(gib), mode],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_multi_gigabyte_line_is_dead_lettered_in_bounded_memory():
    result = _run_memory_script(2, "line")
    assert result["tally"]["records"] == 3 and result["tally"]["notifications"] == 2
    assert result["kinds"] == ["too_large"]
    assert result["tally"]["bytes"] > 2 << 30
    assert result["maxrss_mib"] < 400, result  # Python, pyarrow and a ~40 MiB window


@pytest.mark.slow
def test_a_gzip_bomb_inflates_in_bounded_memory():
    result = _run_memory_script(1, "bomb")
    assert result["tally"]["records"] == 2 and result["tally"]["notifications"] == 2
    assert result["kinds"] == []
    assert result["maxrss_mib"] < 400, result
