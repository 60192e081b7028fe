"""Hostile and broken input (issue #5): ``decode_source`` and ``dedupe_table`` never fail.

Every case, generated (hypothesis) or derived from a real file (the public fixtures in
``../shared/fixtures/public`` and the hand-written archive in ``tests/data/archive``), goes
through ``check``, which asserts:

- no exception escapes ``decode_source`` or ``dedupe_table``, and both finish within
  ``CASE_SECONDS``;
- the accounting: ``records == messages + skipped + dead_letters``,
  ``notifications == messages``, and after deduplication
  ``records == unique + duplicates + skipped + dead_letters``;
- message batches conform to ``MESSAGES`` (the wire schema: no docs, non-null columns, valid
  UTF-8, distinct ``source_record`` within the record count), dead letters to
  ``DEAD_LETTERS``, and the tally's counts match the batches;
- every dead letter's ``raw`` relates to the input: the stored object for the whole-source
  kinds (``offset == -1``); the exact bytes at ``offset`` of the (gunzipped) source for a
  whole unit; otherwise a string or value nested inside the unit found at ``offset``: a
  body string's UTF-8 or the JSON of a nested value (README, "Accounting"), which without
  a ``record`` index is only possible for an object unit (an SNS envelope's ``Message``).

Every bug this suite found is fixed, so no generated case is left out.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sesbeam.schemas import DEAD_LETTERS, MESSAGES, wire
from sesbeam.transforms._arrow import MAX_BATCH_ROWS
from sesbeam.transforms.decode import (
    DEAD_LETTER_KINDS,
    SKIP_REASONS,
    SourceFile,
    decode_source,
)
from sesbeam.transforms.dedupe import dedupe_table
from tests.conftest import DATA, PUBLIC_FIXTURES

#: Wall-clock bound of one decode + dedupe, generous for two loaded cores.
CASE_SECONDS = 10.0
URI = "s3://fuzz-bucket/archive/2024/03/01/object"
MTIME_MS = 1_709_287_200_000
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, Python's datetime.max
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
WHOLE_SOURCE_KINDS = {"corrupt_compression", "unreadable_source", "decoder_error"}
ENVELOPES = {"sns", "lambda", "raw", "workmail"}
ARCHIVE = DATA / "archive"
SKIP_PUBLIC = (f"public fixtures not found at {PUBLIC_FIXTURES} (they live in ../shared, beside "
               "the repository; set SESBEAM_PUBLIC_FIXTURES to point elsewhere)")

FUZZ = settings(deadline=None, max_examples=60, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- the oracle ----------------------------------------------------------------------------
def gunzip(data: bytes) -> tuple[bytes, bool]:
    """What the decoder should see, and whether the compression is broken.

    Gzip only when the object starts with the magic; any number of members; after a
    complete member, NUL padding ends the stream and anything else is an error; a member
    that is cut short or corrupt loses its own output and ends the stream.
    """
    if not data.startswith(GZIP_MAGIC):
        return data, False
    out: list[bytes] = []
    rest = data
    while rest:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = member.decompress(rest)
        except zlib.error:
            return b"".join(out), True
        out.append(chunk)
        if not member.eof:
            return b"".join(out), True
        rest = member.unused_data
        if rest and not rest.startswith(GZIP_MAGIC):
            return b"".join(out), bool(rest.strip(b"\0"))
    return b"".join(out), False


_UNKNOWN = object()


def _json_in_string(text: str) -> Any:
    """The object or array a string holds (an SNS ``Message``, an SQS ``body``), or None."""
    stripped = text.strip().lstrip("\ufeff")
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, (dict, list)) else None


class _Source:
    """The decompressed input, with the units found at dead-letter offsets (cached)."""

    def __init__(self, data: bytes):
        self.data = data
        self._latin: str | None = None
        self._units: dict[int, Any] = {}
        self._nested: dict[int, Any] = {}

    def unit(self, offset: int) -> Any:
        """The JSON value that starts at ``offset``; ``_UNKNOWN`` when it cannot be parsed."""
        if offset not in self._units:
            self._units[offset] = self._parse(offset)
        return self._units[offset]

    def _parse(self, offset: int) -> Any:
        eol = self.data.find(b"\n", offset)
        line = self.data[offset:len(self.data) if eol < 0 else eol]
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        if self._latin is None:
            self._latin = self.data.decode("latin-1")
        try:  # delimit the value (pretty-printed, or followed by another one on its line)
            end = json.JSONDecoder().raw_decode(self._latin, offset)[1]
            return orjson.loads(self.data[offset:end])
        except (ValueError, RecursionError):
            return _UNKNOWN

    def nested(self, offset: int) -> set[bytes] | None:
        """Every ``raw`` a nested record of the unit at ``offset`` may carry: the JSON of
        each value below the unit's root and the UTF-8 of each string, descending into
        strings that hold JSON. None when the unit cannot be parsed here."""
        if offset not in self._nested:
            unit = self.unit(offset)
            if unit is _UNKNOWN:
                self._nested[offset] = None
            else:
                found: set[bytes] = set()
                _collect(unit, found, root=True)
                self._nested[offset] = found
        return self._nested[offset]


def _collect(value: Any, found: set[bytes], root: bool = False) -> None:
    stack = [(value, root)]
    while stack:
        node, is_root = stack.pop()
        if not is_root:
            try:
                found.add(orjson.dumps(node))
            except orjson.JSONEncodeError:  # deeper than orjson serialises
                limit = sys.getrecursionlimit()
                sys.setrecursionlimit(limit + 2000)  # orjson parses up to 1,024 levels
                try:
                    found.add(json.dumps(node, ensure_ascii=False, separators=(",", ":"))
                              .encode("utf-8", "surrogatepass"))
                finally:
                    sys.setrecursionlimit(limit)
        if isinstance(node, dict):
            stack.extend((v, False) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, False) for v in node)
        elif isinstance(node, str):
            found.add(node.encode("utf-8", "surrogatepass"))
            inner = _json_in_string(node)
            if inner is not None:
                stack.append((inner, True))


@dataclass
class Outcome:
    tally: dict
    messages: pa.Table
    dead: list[dict]
    unique: pa.Table
    duplicates: int
    seconds: float

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.dead]


def check(data: bytes | None, uri: str = URI, mtime_ms: int | None = MTIME_MS,
          error: str | None = None, raw_checks: bool = True) -> Outcome:
    """Decode and deduplicate ``data``; assert every property in the module docstring."""
    start = time.monotonic()
    decoded = decode_source(SourceFile(uri, data, mtime_ms, error))
    table = pa.Table.from_batches(decoded.messages, schema=wire(MESSAGES))
    unique, duplicates = dedupe_table(table)
    seconds = time.monotonic() - start
    assert seconds < CASE_SECONDS, f"decoding took {seconds:.1f} s"

    tally = decoded.tally
    stored = data if data is not None else b""
    assert tally["sources"] == 1 and tally["bytes"] == len(stored)
    assert set(tally["skipped"]) <= set(SKIP_REASONS) and all(tally["skipped"].values())
    assert set(tally["dead_letters"]) <= set(DEAD_LETTER_KINDS)
    assert all(tally["dead_letters"].values())

    # messages
    for batch in decoded.messages:
        assert isinstance(batch, pa.RecordBatch)
        assert batch.schema.equals(wire(MESSAGES), check_metadata=True)
        assert 0 < batch.num_rows <= MAX_BATCH_ROWS
        batch.validate(full=True)
        for field, column in zip(MESSAGES, batch.columns):
            if not field.nullable:
                assert column.null_count == 0, field.name
    rows = table.num_rows
    skipped = sum(tally["skipped"].values())
    dead_count = sum(tally["dead_letters"].values())
    assert tally["notifications"] == rows
    assert tally["records"] == rows + skipped + dead_count
    if rows:
        assert set(table.column("source_uri").to_pylist()) == {uri}
        assert set(table.column("envelope").to_pylist()) <= ENVELOPES
        assert set(table.column("notifications").to_pylist()) == {1}
        assert all(table.column("message_id").to_pylist())
        records = table.column("source_record").to_pylist()
        assert len(set(records)) == rows and 0 <= min(records) and max(records) < tally["records"]

    # deduplication
    assert unique.schema.equals(wire(MESSAGES), check_metadata=True)
    ids = unique.column("message_id").to_pylist()
    assert len(set(ids)) == len(ids) == unique.num_rows
    assert set(ids) == set(table.column("message_id").to_pylist())
    assert unique.num_rows + duplicates == rows
    assert sum(unique.column("notifications").to_pylist()) == rows
    assert tally["records"] == unique.num_rows + duplicates + skipped + dead_count

    # dead letters
    dead: list[dict] = []
    if decoded.dead_letters is not None:
        batch = decoded.dead_letters
        assert batch.schema.equals(wire(DEAD_LETTERS), check_metadata=True)
        batch.validate(full=True)
        dead = batch.to_pylist()
    assert len(dead) == dead_count
    assert {k: [d["kind"] for d in dead].count(k) for k in tally["dead_letters"]} \
        == tally["dead_letters"]
    _check_dead_letters(dead, data, uri, raw_checks)
    return Outcome(tally, table, dead, unique, duplicates, seconds)


def _check_dead_letters(dead: list[dict], data: bytes | None, uri: str, raw_checks: bool):
    stored = data if data is not None else b""
    plain, broken = gunzip(stored)
    kinds = [d["kind"] for d in dead]
    assert kinds.count("unreadable_source") == (data is None)
    if data is not None and uri.rstrip("/").rsplit("/", 1)[-1] != "AMAZON_SES_SETUP_NOTIFICATION":
        assert kinds.count("corrupt_compression") == broken
    assert "invalid_signature" not in kinds  # no certificate store given
    source = _Source(plain)
    units: list[tuple[int, int]] = []
    for d in dead:
        assert d["source_uri"] == uri
        assert isinstance(d["detail"], str) and d["detail"]
        assert isinstance(d["raw"], bytes)
        kind, offset, record, raw = d["kind"], d["offset"], d["record"], d["raw"]
        if kind in WHOLE_SOURCE_KINDS or offset == -1:
            assert kind in WHOLE_SOURCE_KINDS and offset == -1 and record is None, d
            assert raw == stored
            continue
        assert 0 <= offset < len(plain), d
        assert raw, d
        if record is None and plain[offset:offset + len(raw)] == raw:
            units.append((offset, offset + len(raw)))
            continue
        # Not the unit itself: the README's body string or nested value of the unit. With no
        # record index, that is only possible for an object unit (an SNS envelope's Message,
        # a Records event that is not a list): an array's elements carry their index.
        assert record is None or record >= 0
        if not raw_checks:
            continue
        raw.decode("utf-8")  # body strings and orjson output are valid UTF-8
        nested = source.nested(offset)
        if nested is not None:
            unit = source.unit(offset)
            assert isinstance(unit, dict if record is None else (dict, list)), d
            assert raw in nested, f"raw of {d['kind']} dead letter at {offset} " \
                                  f"(record {record}) is not inside its unit: {raw[:200]!r}"
    units.sort()
    for (_, end), (start, _) in zip(units, units[1:]):
        assert end <= start, f"whole-unit dead letters overlap: {units}"


# -- inputs --------------------------------------------------------------------------------
def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SOURCES.md")


PUBLIC_FILES = _files(PUBLIC_FIXTURES) if PUBLIC_FIXTURES.is_dir() else []
ARCHIVE_FILES = _files(ARCHIVE)


def _file_params() -> list:
    params = [pytest.param(p, id=f"archive/{p.relative_to(ARCHIVE)}") for p in ARCHIVE_FILES]
    if PUBLIC_FILES:
        params += [pytest.param(p, id=str(p.relative_to(PUBLIC_FIXTURES))) for p in PUBLIC_FILES]
    else:
        params.append(pytest.param(None, id="public", marks=pytest.mark.skip(reason=SKIP_PUBLIC)))
    return params


@lru_cache(maxsize=None)
def _read(path: Path) -> bytes:
    return path.read_bytes()


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def notification(mid: str | None = "fuzz-1", **receipt) -> dict:
    n = {
        "notificationType": "Received",
        "mail": {"timestamp": "2024-03-01T10:00:00.000Z", "source": "s@src.example",
                 "messageId": mid, "destination": ["r@dest.example"], "headersTruncated": False,
                 "commonHeaders": {"from": ["S <s@from.example>"], "subject": "x",
                                   "messageId": "<1@src.example>"}},
        "receipt": {"timestamp": "2024-03-01T10:00:01.000Z", "processingTimeMillis": 10,
                    "recipients": ["r@dest.example"], "spamVerdict": {"status": "PASS"},
                    "virusVerdict": {"status": "PASS"}, "spfVerdict": {"status": "PASS"},
                    "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "FAIL"},
                    "dmarcPolicy": "REJECT",
                    "action": {"type": "S3", "bucketName": "b", "objectKey": "k/1"}},
    }
    n["receipt"].update(receipt)
    return n


def workmail(mid: str = "wm-1") -> dict:
    return {"summaryVersion": "2018-10-10", "flowDirection": "INBOUND", "messageId": mid,
            "envelope": {"mailFrom": {"address": "a@wm.example"},
                         "recipients": [{"address": "b@org.example"}]},
            "subject": "s", "invocationId": "f" * 40, "truncated": False}


def sns_envelope(message: Any, timestamp: Any = "2024-03-01T10:00:05.000Z") -> dict:
    return {"Type": "Notification", "MessageId": "uuid-1", "TopicArn": "arn:aws:sns:t",
            "Subject": None, "Timestamp": timestamp,
            "Message": message if isinstance(message, str) else json.dumps(message)}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


# -- JSON paths ----------------------------------------------------------------------------
#: A path step into the JSON held by a string (an SNS ``Message``, an SQS ``body``).
IN_STRING = "<json in string>"
#: The six wrong types of the issue, and the key removed altogether.
REPLACEMENTS = [None, 42, "wrong", [42], {"wrong": 42}, True]
REMOVED = object()


def field_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from field_paths(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from field_paths(item, path + (i,))
    elif isinstance(value, str):
        inner = _json_in_string(value)
        if inner is not None:
            yield from field_paths(inner, path + (IN_STRING,))


def replaced(value: Any, path: tuple, new: Any) -> Any:
    """A copy of ``value`` with the value at ``path`` replaced by ``new`` (or removed)."""
    if not path:
        return new
    step, rest = path[0], path[1:]
    if step == IN_STRING:
        return json.dumps(replaced(_json_in_string(value), rest, new), ensure_ascii=False)
    if isinstance(value, dict):
        copy = dict(value)
        if new is REMOVED and not rest:
            del copy[step]
        else:
            copy[step] = replaced(value[step], rest, new)
        return copy
    copy = list(value)
    copy[step] = replaced(value[step], rest, new)
    return copy


def json_units(data: bytes) -> list[tuple[int, int, Any]]:
    """``(start, end, value)`` of each top-level JSON value of a (plain) file, in order."""
    text = data.decode("utf-8-sig") if data.startswith(BOM) else data.decode("utf-8")
    decoder, units, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return units
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:  # a broken line: leave it as it is
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
        else:
            units.append((pos, end, value))
        pos = end


def type_variants(data: bytes) -> Iterator[tuple[int, str, bytes]]:
    """``(unit, label, line)``: every JSON value of the file with one value replaced by each
    wrong type, or one key removed, for every field path; each variant is that one value
    re-serialised on one line (decoding a unit does not depend on its neighbours)."""
    for unit, (start, _, value) in enumerate(json_units(data)):
        for path in field_paths(value):
            news = REPLACEMENTS + ([REMOVED] if path and isinstance(path[-1], str)
                                   and path[-1] != IN_STRING else [])
            for new in news:
                variant = replaced(value, path, new)
                label = (f"{start}:{'/'.join(map(str, path))}="
                         f"{'<removed>' if new is REMOVED else json.dumps(new)}")
                yield unit, label, orjson.dumps(variant)


# -- byte mutations ------------------------------------------------------------------------
#: Bytes worth inserting: JSON structure, whitespace, NUL, invalid UTF-8, a BOM, gzip magic.
SPICE = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\n", b"\r\n", b"\0", b"\xff",
         b"\xc3", b"\xed\xa0\x80", BOM, GZIP_MAGIC, b"}{", b"null", b"-", b"1e999", b" "]


def flip(data: bytes, pos: int, bit: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:] if data else data


def insert(data: bytes, pos: int, chunk: bytes) -> bytes:
    return data[:pos] + chunk + data[pos:]


def delete(data: bytes, pos: int, length: int) -> bytes:
    return data[:pos] + data[pos + length:]


def gzip_members(data: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return b"".join(gz(data[a:b]) for a, b in zip(bounds, bounds[1:]))


def byte_variants(data: bytes, seed: str) -> Iterator[tuple[str, bytes]]:
    """Seeded mutations of one file: truncations, bit flips, insertions, deletions, line-end
    and BOM changes, gzip (several members, cut short, corrupt, followed by junk)."""
    rng = random.Random(zlib.crc32(seed.encode()))
    n = len(data)
    pos = lambda: rng.randrange(max(n, 1))  # noqa: E731
    yield "original", data
    yield "empty", b""
    for cut in sorted({0, 1, n // 2, max(n - 1, 0), *(pos() for _ in range(6))}):
        yield f"truncate@{cut}", data[:cut]
    for _ in range(8):
        p, bit = pos(), rng.randrange(8)
        yield f"flip@{p}.{bit}", flip(data, p, bit)
    for _ in range(6):
        p, chunk = pos(), rng.choice(SPICE)
        yield f"insert@{p}:{chunk!r}", insert(data, p, chunk)
    for _ in range(2):
        p, chunk = pos(), rng.randbytes(rng.randrange(1, 16))
        yield f"insert@{p}:{chunk!r}", insert(data, p, chunk)
    for _ in range(4):
        p, k = pos(), rng.choice([1, 1, 2, 7, 64, 1000])
        yield f"delete@{p}+{k}", delete(data, p, k)
    yield "twice", data + data
    yield "twice-newline", data + b"\n" + data
    yield "bom", BOM + data
    yield "double-bom", BOM + BOM + data
    yield "crlf", data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    yield "cr-only", data.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    yield "nul-padded", data + b"\0" * 64
    yield "nul-lines", data.replace(b"\n", b"\n\0\n")
    yield "blank-lines", b"\n \t\n" + data.replace(b"\n", b"\n\n  \n") + b"\n\n"
    packed = gz(data)
    yield "gzip", packed
    yield "gzip-bom-inside", gz(BOM + data)
    yield "bom-before-gzip", BOM + packed
    yield "gzip-members", gzip_members(data, [pos(), pos()])
    yield "gzip-empty-members", gz(b"") + packed + gz(b"")
    yield "gzip-nul-padded", packed + b"\0" * 512
    yield "gzip-junk", packed + b"junk"
    yield "gzip-then-plain", packed + data
    yield "gzip-twice-truncated-second", packed + packed[:len(packed) // 2]
    for cut in sorted({1, 2, 10, 18, len(packed) - 8, len(packed) - 1,
                       *(rng.randrange(len(packed)) for _ in range(2))}):
        yield f"gzip-truncate@{cut}", packed[:cut]
    for p in sorted({3, 9, 10, len(packed) - 8, len(packed) - 4, len(packed) - 1,
                     *(rng.randrange(10, len(packed)) for _ in range(3))}):
        yield f"gzip-flip@{p}", flip(packed, p, rng.randrange(8))
    yield "gzip-nested", gz(packed)


# -- fixture-based tests ---------------------------------------------------------------------
@pytest.mark.parametrize("path", _file_params())
def test_byte_mutations_of_every_fixture(path: Path):
    data = _read(path)
    original = check(data, uri="s3://fuzz-bucket/original")
    for label, variant in byte_variants(data, path.name):
        try:
            outcome = check(variant)
            # Deduplicating with the original: nothing lost, nothing counted twice.
            both = pa.concat_tables([original.messages, outcome.messages])
            unique, duplicates = dedupe_table(both)
            assert unique.num_rows + duplicates == both.num_rows
            assert len(set(unique.column("message_id").to_pylist())) == unique.num_rows
        except AssertionError as e:
            raise AssertionError(f"{path.name} [{label}]: {e}") from e


@pytest.mark.parametrize("path", _file_params())
def test_wrong_types_at_every_field_path(path: Path):
    """Each value of every notification replaced in turn by null, a number, a string, a list,
    an object and true (and each key removed), inside envelopes and JSON strings too."""
    data = _read(path)
    try:
        units = json_units(data)
    except UnicodeDecodeError:
        pytest.skip("not UTF-8 text")
    if not units:
        pytest.skip("no JSON value in this file")
    by_unit: dict[int, list[tuple[str, bytes]]] = {}
    for unit, label, line in type_variants(data):
        by_unit.setdefault(unit, []).append((label, line))
    for unit, variants in by_unit.items():
        single = check(_dumps(units[unit][2])).tally["records"] == 1
        # The variants as the lines of one NDJSON object; when the original value is one
        # record, so is each variant (one unit in, one record out).
        for chunk in range(0, len(variants), 500):
            part = variants[chunk:chunk + 500]
            try:
                outcome = check(b"\n".join(line for _, line in part) + b"\n")
                if single:
                    assert outcome.tally["records"] == len(part)
            except AssertionError as e:
                raise AssertionError(f"{path.name}, variants {part[0][0]} .. {part[-1][0]}: "
                                     f"{e}") from e


# -- generated input (hypothesis) -------------------------------------------------------------
KEYS = st.sampled_from([
    "Records", "Type", "Message", "Timestamp", "Subject", "mail", "receipt", "notificationType",
    "eventType", "summaryVersion", "envelope", "Sns", "sns", "ses", "body", "attributes",
    "SentTimestamp", "messageId", "timestamp", "source", "recipients", "destination", "from",
    "commonHeaders", "subject", "status", "spamVerdict", "dmarcPolicy", "processingTimeMillis",
    "headersTruncated", "action", "type", "objectKey", "mailFrom", "address", "eventSource",
])
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
WORDS = st.sampled_from([
    "Received", "Notification", "Bounce", "Open", "SubscriptionConfirmation", "S3", "",
    "AMAZON_SES_SETUP_NOTIFICATION", "AmazonSnsSubscriptionSucceeded", "PASS", "FAIL", "true",
    "2024-03-01T10:00:00Z", "2024-03-01T10:00:00.000+02:00", "Fri, 01 Mar 2024 10:00:00 +0000",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00", "12", " 7 ", "1.5", "a@b.c", "<x@y.z>",
    "Doe, John <j@d.example>", "{", "[]", '{"Records": 1}', "\ufeff{}", "\u0000", "\u2028",
])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT | WORDS)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(KEYS | TEXT, inner, max_size=4), max_leaves=12)
BASES = [
    notification(), notification(None), notification("fuzz-2", dmarcPolicy={"status": "none"}),
    workmail(),
    {"notificationType": "Bounce", "mail": {"messageId": "b"}},
    {"eventType": "Open", "mail": {"messageId": "o"}},
    {"notificationType": "Received", "mail": {"messageId": "AMAZON_SES_SETUP_NOTIFICATION"}},
    {"Type": "SubscriptionConfirmation", "Message": "You have chosen to subscribe"},
    {"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"},
    {"Records": []},
]


def _wrap_sns_text(doc, draw):
    return sns_envelope(json.dumps(doc, indent=draw(st.sampled_from([None, 2]))),
                        draw(st.sampled_from(["2024-03-01T10:00:05Z", None, 5, "soon"])))


def _wrap_sns_object(doc, draw):
    return {**sns_envelope(""), "Message": doc}


def _wrap_lambda_sns(doc, draw):
    return {"Records": [{"EventSource": "aws:sns", draw(st.sampled_from(["Sns", "sns"])):
                         _wrap_sns_text(doc, draw)}]}


def _wrap_ses_lambda(doc, draw):
    return {"Records": [{"eventSource": "aws:ses", "ses": doc}]}


def _wrap_sqs(doc, draw):
    sent = draw(st.sampled_from(["1709287200000", "", "x", None])
                | st.from_regex(r"\A[0-9]{1,15}\Z"))
    return {"Records": [{"messageId": "q", "body": json.dumps(doc),
                         "attributes": {"SentTimestamp": sent}}]}


def _wrap_array(doc, draw):
    return [doc] * draw(st.integers(1, 3))


WRAPPERS = [_wrap_sns_text, _wrap_sns_object, _wrap_lambda_sns, _wrap_ses_lambda, _wrap_sqs,
            _wrap_array]


@st.composite
def documents(draw) -> Any:
    """A notification, event or other JSON with random values put at random field paths
    (or keys removed), wrapped in up to three random envelopes."""
    doc = draw(st.sampled_from(BASES) | JSON_VALUES)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(field_paths(doc))))
        removable = bool(path) and isinstance(path[-1], str) and path[-1] != IN_STRING
        new = draw(JSON_VALUES | (st.just(REMOVED) if removable else JSON_VALUES))
        doc = replaced(doc, path, new)
    for _ in range(draw(st.integers(0, 3))):
        doc = draw(st.sampled_from(WRAPPERS))(doc, draw)
    return doc


@st.composite
def containers(draw) -> bytes:
    """Documents in a random container and encoding: NDJSON (LF or CRLF, blank lines),
    pretty-printed, concatenated without delimiter, one array, with a BOM, gzip members,
    trailing NUL padding or junk."""
    docs = draw(st.lists(documents(), min_size=1, max_size=4))
    layout = draw(st.sampled_from(["ndjson", "crlf", "pretty", "firehose", "array", "mixed"]))
    if layout == "array":
        data = _dumps(docs)
    elif layout == "pretty":
        data = b"\n".join(json.dumps(d, indent=2).encode() for d in docs)
    elif layout == "firehose":
        data = b"".join(json.dumps(d, separators=(",", ":")).encode() for d in docs)
    elif layout == "mixed":
        seps = draw(st.lists(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n", b" ", b"\t"]),
                             min_size=len(docs), max_size=len(docs)))
        data = b"".join(_dumps(d) + s for d, s in zip(docs, seps))
    else:
        end = b"\r\n" if layout == "crlf" else b"\n"
        data = b"".join(_dumps(d) + end for d in docs)
    if draw(st.booleans()):
        data = BOM + data
    if draw(st.booleans()):
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=3))
        data = gzip_members(data, cuts)
        data += draw(st.sampled_from([b"", b"", b"\0" * 8, b"junk", GZIP_MAGIC]))
    return data


@FUZZ
@given(containers())
def test_generated_documents(data: bytes):
    check(data)


@FUZZ
@given(st.binary(max_size=2048),
       st.sampled_from([b"", b"", GZIP_MAGIC, BOM, b"{", b"[", b'{"Records":[', b"\n"]))
def test_random_bytes(data: bytes, prefix: bytes):
    check(prefix + data)


@FUZZ
@given(containers(), st.data())
def test_corrupt_gzip(data: bytes, draw):
    """A gzip stream (one or more members) cut short or with corrupted bytes: the whole
    stored object is one ``corrupt_compression`` dead letter, the rest is still decoded."""
    packed = data if data.startswith(GZIP_MAGIC) else gz(data)
    if draw.draw(st.booleans()):
        packed = packed[:draw.draw(st.integers(0, len(packed) - 1))]
    else:
        at = draw.draw(st.integers(0, len(packed) - 1))
        mask = draw.draw(st.integers(1, 255))
        packed = packed[:at] + bytes([packed[at] ^ mask]) + packed[at + 1:]
    outcome = check(packed)
    _, broken = gunzip(packed)
    assert outcome.kinds().count("corrupt_compression") == broken


MUTATIONS = st.lists(st.tuples(
    st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate"]),
    st.floats(0, 1), st.integers(0, 7), st.sampled_from(SPICE) | st.binary(min_size=1, max_size=8),
), min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    for op, where, k, chunk in ops:
        at = min(int(where * len(data)), max(len(data) - 1, 0))
        if op == "truncate":
            data = data[:at]
        elif op == "flip":
            data = flip(data, at, k)
        elif op == "insert":
            data = insert(data, at, chunk)
        elif op == "delete":
            data = delete(data, at, 1 << k)
        else:
            data = data[:at] + data[at:at + (1 << (2 * k))] + data[at:]
    return data


@FUZZ
@given(st.sampled_from(ARCHIVE_FILES + PUBLIC_FILES), MUTATIONS, st.booleans())
def test_mutated_fixtures(path: Path, ops, compress: bool):
    data = mutate(_read(path), ops)
    check(gz(data) if compress else data)


# -- hostile cases, one by one ----------------------------------------------------------------
def _line(doc: Any) -> bytes:
    return json.dumps(doc).encode() + b"\n"


GOOD = _line(notification())
MB = 1 << 20


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


HOSTILE: dict[str, Any] = {
    # empty, whitespace, BOMs, line ends
    "empty": lambda: b"",
    "one-space": lambda: b" ",
    "whitespace-only": lambda: b" \t\r\n" * 1000,
    "newlines-only": lambda: b"\n" * 100_000,
    "form-feed-and-vertical-tab": lambda: b"\x0c\x0b\n\x0c",
    "nbsp-only": lambda: "\u00a0\u2028\n".encode(),
    "bom-only": lambda: BOM,
    "bom-and-whitespace": lambda: BOM + b"\r\n \n",
    "double-bom": lambda: BOM + BOM + GOOD,
    "bom-mid-file": lambda: GOOD + BOM + GOOD,
    "bom-every-line": lambda: (BOM + GOOD) * 3,
    "utf16-le-with-bom": lambda: "\ufeff".encode("utf-16-le") + GOOD.decode().encode("utf-16-le"),
    "utf16-be-with-bom": lambda: GOOD.decode().encode("utf-16"),
    "utf32": lambda: GOOD.decode().encode("utf-32"),
    "crlf": lambda: GOOD.replace(b"\n", b"\r\n") * 3,
    "cr-only": lambda: GOOD.replace(b"\n", b"\r") * 3,
    "mixed-line-ends": lambda: GOOD.replace(b"\n", b"\r\n") + GOOD + GOOD.replace(b"\n", b"\r"),
    "lf-cr": lambda: GOOD.replace(b"\n", b"\n\r") * 3,
    "pretty-crlf": lambda: json.dumps(notification(), indent=2).replace("\n", "\r\n").encode(),
    # NUL bytes
    "nul": lambda: b"\0",
    "nuls": lambda: b"\0" * 4096,
    "nul-lines": lambda: GOOD + b"\0\n" + GOOD + b"\0" * 10,
    "nul-before-json": lambda: b"\0" + GOOD,
    "nul-inside-string": lambda: GOOD.replace(b'"x"', b'"a\0b"'),
    "escaped-nul-inside-string": lambda: GOOD.replace(b'"x"', b'"a\\u0000b"'),
    "control-chars": lambda: bytes(range(32)) + b"\n" + GOOD,
    # invalid UTF-8
    "invalid-utf8-in-subject": lambda: GOOD.replace(b'"x"', b'"\xff\xfe"'),
    "overlong-utf8": lambda: GOOD.replace(b'"x"', b'"\xc0\xaf"'),
    "encoded-surrogate": lambda: GOOD.replace(b'"x"', b'"\xed\xa0\x80"'),
    "cut-multibyte-at-eof": lambda: GOOD.rstrip(b"\n") + "é".encode()[:1],
    "invalid-utf8-in-key": lambda: GOOD.replace(b'"subject"', b'"sub\xffject"'),
    "invalid-utf8-line-between": lambda: GOOD + b"\xff\xff\xff\n" + GOOD,
    "latin1-file": lambda: GOOD.replace(b'"x"', "\"caf\u00e9\"".encode("latin-1")),
    "invalid-utf8-pretty": lambda: json.dumps(notification(), indent=2).encode().replace(
        b'"x"', b'"\xff"'),
    "lone-surrogate-escape": lambda: GOOD.replace(b'"x"', b'"\\ud800"'),
    "lone-surrogate-escape-in-message": lambda: _line(sns_envelope(
        json.dumps(notification()).replace('"x"', '"\\ud800"'))),
    "surrogate-pair-escape": lambda: GOOD.replace(b'"x"', b'"\\ud83d\\ude00"'),
    "invalid-utf8-everywhere": lambda: bytes(range(128, 256)) * 64,
    # numbers and tokens orjson rejects or maps oddly
    "nan-infinity": lambda: b'NaN\nInfinity\n-Infinity\n{"a": NaN}\n' + GOOD,
    "huge-exponent": lambda: GOOD.replace(b'Millis": 10', b'Millis": 1e400'),
    "big-integer": lambda: GOOD.replace(b'Millis": 10', b'Millis": ' + b"9" * 30),
    "float-milliseconds": lambda: GOOD.replace(b'Millis": 10', b'Millis": 1e300'),
    "negative-zero": lambda: GOOD.replace(b'Millis": 10', b'Millis": -0.0'),
    "duplicate-keys": lambda: GOOD.replace(b'{"notificationType": "Received",',
                                           b'{"notificationType": "Bounce", '
                                           b'"notificationType": "Received",'),
    "scalars": lambda: b'1\n"a"\ntrue\nnull\n[]\n{}\n[1, [2], {"Records": [3]}]\n{"Records": 3}\n',
    "trailing-comma": lambda: GOOD.replace(b"}}\n", b"},}\n"),
    "unclosed-pretty": lambda: json.dumps(notification(), indent=2).encode()[:-40] + b"\n" + GOOD,
    "template-placeholder": lambda: b'{"Records": [{"Sns": {"Type": "Notification", '
                                    b'"Message": {{{message}}}}}]}',
    # huge strings, long lines, many lines
    "huge-subject": lambda: _line(notification()).replace(b'"x"', b'"' + b"x" * (4 * MB) + b'"'),
    "huge-message-id": lambda: _line(notification("m" * (3 * MB))),
    "huge-plain-sns-message": lambda: _line(sns_envelope("y" * (4 * MB))),
    "huge-escaped-sns-message": lambda: _line(sns_envelope(notification("\\" * MB))),
    "huge-unterminated-string": lambda: b'{"a": "' + b"x" * (4 * MB) + b"\n" + GOOD,
    "huge-garbage-line": lambda: b"z" * (8 * MB) + b"\n" + GOOD,
    "huge-whitespace-line": lambda: b" " * (8 * MB) + GOOD,
    "huge-line-of-braces": lambda: b"}{" * (2 * MB),
    "long-firehose-line": lambda: b"".join(
        json.dumps(notification(f"f{i}"), separators=(",", ":")).encode() for i in range(3000)),
    "many-short-lines": lambda: b"{}\n" * 50_000,
    "many-bad-lines": lambda: b"{\n" * 20_000 + GOOD,
    "many-records": lambda: _line({"Records": [
        {"eventSource": "aws:ses", "ses": notification(f"r{i}")} for i in range(5000)]}),
    "many-duplicates": lambda: GOOD * 5000,
    # nesting
    "deep-arrays-200": lambda: _deep(200, "array"),
    "deep-arrays-200-in-records": lambda: b'{"Records": [' + _deep(200, "array") + b"]}",
    "deep-objects-1000": lambda: _deep(1000, "object"),
    "deep-objects-900-pretty": lambda: _deep(900, "object").replace(b":", b":\n"),
    "deep-value-without-message-id": lambda: GOOD.replace(
        b'"messageId": "fuzz-1"', b'"messageId": null, "x": ' + _deep(200, "array")),
    "deep-sns-chain": lambda: _line(sns_envelope(sns_envelope(sns_envelope(sns_envelope(
        sns_envelope(notification())))))),
    "sqs-sns-lambda-chain": lambda: _line(_wrap_sqs_plain(_wrap_sqs_plain({"Records": [
        {"Sns": sns_envelope(notification())}]}))),
    # gzip
    "gzip-empty": lambda: gz(b""),
    "gzip-magic-only": lambda: GZIP_MAGIC,
    "gzip-header-only": lambda: gz(GOOD)[:10],
    "gzip-of-whitespace": lambda: gz(b" " * (16 * MB), 9),
    "gzip-many-members": lambda: b"".join(gz(GOOD) for _ in range(500)),
    "gzip-bad-crc": lambda: (lambda p: p[:-8] + bytes(4) + p[-4:])(gz(GOOD * 3)),
    "gzip-bad-size": lambda: (lambda p: p[:-4] + b"\xff\xff\xff\xff")(gz(GOOD * 3)),
    "gzip-flags-fname": lambda: (lambda p: p[:3] + b"\x08" + p[4:])(gz(GOOD)),
    "gzip-then-nul": lambda: gz(GOOD) + b"\0" * 4096,
    "gzip-then-nul-then-junk": lambda: gz(GOOD) + b"\0\0junk",
    "gzip-then-gzip-magic-only": lambda: gz(GOOD) + GZIP_MAGIC,
    "gzip-in-gzip": lambda: gz(gz(GOOD)),
    "gzip-after-text": lambda: GOOD + gz(GOOD),
    "deflate-not-gzip": lambda: zlib.compress(GOOD),
    "gzip-cut-in-second-member": lambda: (lambda p: p + p[:len(p) // 2])(gz(GOOD * 50)),
    # source-level
    "unreadable": lambda: None,
}


def _wrap_sqs_plain(doc: Any) -> dict:
    return {"Records": [{"body": json.dumps(doc),
                         "attributes": {"SentTimestamp": "1709287200000"}}]}


#: Outcomes that are certain for some hostile cases: (records, messages, skipped, dead kinds).
EXPECTED = {
    "empty": (0, 0, 0, []),
    "one-space": (0, 0, 0, []),
    "whitespace-only": (0, 0, 0, []),
    "newlines-only": (0, 0, 0, []),
    "bom-only": (0, 0, 0, []),
    "bom-and-whitespace": (0, 0, 0, []),
    "crlf": (3, 3, 0, []),
    "pretty-crlf": (1, 1, 0, []),
    "nuls": (1, 0, 0, ["invalid_json"]),
    "escaped-nul-inside-string": (1, 1, 0, []),
    "invalid-utf8-in-subject": (1, 0, 0, ["invalid_json"]),
    "invalid-utf8-line-between": (3, 2, 0, ["invalid_json"]),
    "lone-surrogate-escape": (1, 0, 0, ["invalid_json"]),
    "surrogate-pair-escape": (1, 1, 0, []),
    "huge-subject": (1, 1, 0, []),
    "huge-message-id": (1, 1, 0, []),
    "huge-plain-sns-message": (1, 0, 1, []),
    "huge-garbage-line": (2, 1, 0, ["invalid_json"]),
    "huge-whitespace-line": (1, 1, 0, []),
    "long-firehose-line": (3000, 3000, 0, []),
    "many-short-lines": (50_000, 0, 50_000, []),
    "many-records": (5000, 5000, 0, []),
    "many-duplicates": (5000, 5000, 0, []),
    "deep-objects-1000": (1, 0, 1, []),
    "deep-value-without-message-id": (1, 1, 0, []),
    "deep-sns-chain": (1, 1, 0, []),
    "sqs-sns-lambda-chain": (1, 1, 0, []),
    "gzip-empty": (0, 0, 0, []),
    "gzip-magic-only": (1, 0, 0, ["corrupt_compression"]),
    "gzip-of-whitespace": (0, 0, 0, []),
    "gzip-many-members": (500, 500, 0, []),
    "gzip-then-nul": (1, 1, 0, []),
    "unreadable": (1, 0, 0, ["unreadable_source"]),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input(name: str):
    outcome = check(HOSTILE[name](), error="read failed" if name == "unreadable" else None)
    if name in EXPECTED:
        records, messages, skipped, dead = EXPECTED[name]
        assert (outcome.tally["records"], outcome.messages.num_rows,
                sum(outcome.tally["skipped"].values()), sorted(outcome.kinds())) \
            == (records, messages, skipped, sorted(dead))


def test_setup_notification_object_is_one_skip():
    outcome = check(GOOD, uri="s3://bucket/ses/AMAZON_SES_SETUP_NOTIFICATION")
    assert outcome.tally["records"] == 1 and outcome.tally["skipped"] == {"setup_notification": 1}


def test_many_duplicates_collapse_to_one_row():
    outcome = check(GOOD * 3000 + GOOD.replace(b"fuzz-1", b"fuzz-2") * 2)
    assert outcome.unique.num_rows == 2 and outcome.duplicates == 3000


# -- heavier variants ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in ARCHIVE_FILES])
def test_every_truncation_and_gzip_cut_of_the_archive(path: Path):
    data = _read(path)
    for cut in range(len(data) + 1):
        check(data[:cut], raw_checks=cut % 7 == 0)
    packed = gz(data)
    for cut in range(len(packed) + 1):
        check(packed[:cut], raw_checks=False)


@pytest.mark.slow
@settings(FUZZ, max_examples=1500)
@given(containers())
def test_generated_documents_heavy(data: bytes):
    check(data)


@pytest.mark.slow
@settings(FUZZ, max_examples=1500)
@given(st.sampled_from(ARCHIVE_FILES + PUBLIC_FILES), MUTATIONS, st.booleans())
def test_mutated_fixtures_heavy(path: Path, ops, compress: bool):
    data = mutate(_read(path), ops)
    check(gz(data) if compress else data)
