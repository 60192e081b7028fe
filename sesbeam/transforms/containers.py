"""Containers: gzip and the top-level JSON values of a source, read as a stream.

A source object is read in blocks; ``gunzip`` inflates them (any number of gzip members,
output in bounded blocks, so a gzip bomb costs time, not memory) and ``stream_units``
cuts the result into *units*, the top-level JSON values: NDJSON lines, (pretty-printed)
documents, JSON arrays, Firehose's ``}{`` concatenation. Memory is bounded by a window of
three times ``max_unit`` bytes, whatever the size of the object or of its lines.

A unit longer than ``max_unit`` bytes is not parsed: it comes out as an error unit marked
``TOO_LARGE``, with its first ``TOO_LARGE_RAW_BYTES`` bytes, its length and SHA-256. Where
it ends is known when it fits in the window; otherwise it is taken to run to the end of
its line, or, for a multi-line document, to the end of the source.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator

import orjson

try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency, but optional at run time
    _isal = None

__all__ = ["BLOCK_BYTES", "DEFAULT_MAX_RECORD_BYTES", "TOO_LARGE", "TOO_LARGE_RAW_BYTES",
           "Gunzip", "Prefetch", "decompress", "split_units", "stream_units"]

#: Bytes read from a source, and inflated from gzip, per step.
BLOCK_BYTES = 4 << 20
#: Default for ``--max_record_bytes``: a top-level JSON value larger than this is a
#: ``too_large`` dead letter. SNS messages are at most 256 KiB, Lambda events 6 MB,
#: Firehose records 1,000 KiB, so a real archive never comes near it.
DEFAULT_MAX_RECORD_BYTES = 10 << 20
#: How much of a too-large unit its dead letter keeps in ``raw``.
TOO_LARGE_RAW_BYTES = 64 << 10
#: The error text of a too-large unit starts with this.
TOO_LARGE = "too large"

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_SPACE = re.compile(rb"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
#: What ``_Splitter._line`` returns for a line that is not one JSON value.
_NOT_ONE_VALUE = object()
#: ``}{`` inside strings is rare; after this many false candidates, scan properly instead.
_MAX_BOUNDARY_TRIES = 8


class Gunzip:
    """Iterate over the inflated blocks of a stream of stored blocks.

    Data that does not start with the gzip magic passes through unchanged. After the
    iteration, ``compressed`` says whether it was gzip and ``error`` is None or why the
    stream could not be inflated to its end (everything before that point was yielded).
    """

    def __init__(self, chunks: Iterable[bytes], out_block: int = BLOCK_BYTES):
        self._chunks = iter(chunks)
        self._out = out_block
        self.compressed = False
        self.error: str | None = None

    def _next(self) -> bytes | None:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return None

    def __iter__(self) -> Iterator[bytes]:
        head = b""
        while len(head) < 2:
            chunk = self._next()
            if chunk is None:
                break
            head += chunk
        if not head.startswith(_GZIP_MAGIC):
            if head:
                yield head
            yield from self._chunks
            return
        self.compressed = True
        yield from self._inflate(head)

    def _inflate(self, pending: bytes) -> Iterator[bytes]:
        inflater = _inflater(pending)
        while True:
            if not pending:
                pending = self._next()
                if pending is None:
                    if not inflater.eof:
                        self.error = "gzip stream cut short"
                    return
            try:
                out = inflater.decompress(pending, self._out)
            except Exception as e:  # noqa: BLE001 - zlib.error or ISA-L's IsalError
                self.error = f"corrupt gzip stream: {e}"
                return
            if out:
                yield out
            if not inflater.eof:
                pending = inflater.unconsumed_tail
                continue
            while len(out := inflater.flush()):  # nothing left in practice; be safe
                yield out
            rest = inflater.unused_data
            while len(rest) < 2:
                chunk = self._next()
                if chunk is None:
                    break
                rest += chunk
            if not rest:
                return
            if not rest.startswith(_GZIP_MAGIC):
                self._trailing(rest)
                return
            inflater, pending = _inflater(rest), rest

    def _trailing(self, rest: bytes) -> None:
        size, garbage = len(rest), bool(rest.strip(b"\0"))
        for chunk in self._chunks:
            size += len(chunk)
            garbage = garbage or bool(chunk.strip(b"\0"))
        if garbage:
            self.error = f"{size} bytes of non-gzip data after the stream"


class Prefetch:
    """Iterate over ``items`` in a background thread, at most ``depth`` items ahead.

    Reading a source and inflating it (ISA-L and zlib release the GIL, and so does waiting
    for S3) then overlap with decoding the blocks already inflated. Memory grows by at most
    ``depth`` items. An exception raised by ``items`` is raised again by the iteration;
    ``close()`` (or leaving the ``with`` block) stops the thread early. Attributes that
    ``items`` sets while it runs (``Gunzip.error``) may be read once the iteration ended.
    """

    _END = object()

    def __init__(self, items: Iterable[Any], depth: int = 2):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sesbeam-prefetch",
                                        daemon=True)
        self._started = False

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            self._put((self._END, e))
            return
        self._put((self._END, None))

    def __iter__(self) -> Iterator[Any]:
        if self._started:
            raise RuntimeError("a Prefetch is iterated once")
        self._started = True
        self._thread.start()
        try:
            while True:
                item, error = self._queue.get()
                if item is self._END:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (after the item it is reading) and wait for it."""
        self._stop.set()
        if self._started:
            self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _inflater(member: bytes):
    """An inflater for the gzip member starting ``member``: ISA-L (about twice zlib's
    speed) when installed and the header is plain deflate without reserved flags (which
    ISA-L would ignore and zlib rejects), else zlib."""
    if _isal is not None and len(member) >= 10 and member[2] == 8 and not member[3] & 0xE0:
        return _isal.decompressobj(wbits=31)
    return zlib.decompressobj(wbits=31)


def decompress(data: bytes) -> tuple[bytes, str | None]:
    """Gunzip ``data`` when it starts with the gzip magic (any number of members).

    Returns the bytes (as much as could be recovered) and an error text or None.
    """
    inflated = Gunzip([data])
    out = b"".join(inflated)
    return out, inflated.error


def split_units(data: bytes) -> Iterator[tuple[int, bytes | memoryview, Any, str | None]]:
    """Top-level JSON values of a whole container: ``(offset, raw, value, error)``.

    The in-memory form of ``stream_units`` (no size limit).
    """
    yield from _Splitter(data, final=True, max_unit=len(data) + 1, line_start=True,
                         bom=True).units()


def stream_units(blocks: Iterable[bytes], max_unit: int = DEFAULT_MAX_RECORD_BYTES,
                 fast: Callable[[memoryview], Any] | None = None,
                 ) -> Iterator[tuple[int, bytes | memoryview, Any, str | None]]:
    """Top-level JSON values of a container read in blocks: ``(offset, raw, value, error)``.

    Fast path: each line parses as one value (NDJSON). Otherwise the value starting at the
    line is delimited with a JSON scanner (pretty-printed documents, Firehose ``}{``
    concatenation). A unit that does not parse yields ``error`` (and value None) with its
    bytes: the line, or, when the broken value spans several lines and the next line is not
    a value of its own, everything up to the line where the scanner failed. A unit longer
    than ``max_unit`` yields an error starting with ``TOO_LARGE`` and only its first
    ``TOO_LARGE_RAW_BYTES`` bytes. ``raw`` may be a zero-copy view (``bytes(raw)`` when it
    must be kept). Offsets count from the start of the stream.

    ``fast(raw)``: a decoder to try before the generic JSON parse of a unit whose bounds are
    being checked (a line, or a ``}{`` candidate): what it returns, unless None, is the
    unit's value, and must only be returned for bytes that are one valid JSON value. On
    NDJSON lines it is tried until it first returns None, then left out for the rest.
    """
    if max_unit < 1:
        raise ValueError("max_unit must be positive")
    blocks = iter(blocks)
    window = max(3 * max_unit, BLOCK_BYTES)
    tail, base, line_start, eof, fill = b"", 0, True, False, False
    fast_lines = fast
    while True:
        # A pass takes one more block and yields the whole NDJSON lines it holds, so that
        # decoding keeps pace with reading (see ``Prefetch``). When it finds none, or stops
        # at anything else, the next pass fills the window and cuts as described above.
        parts, size = [tail], len(tail)
        while not eof and size < window and (fill or len(parts) < 2):
            block = next(blocks, None)
            if block is None:
                eof = True
            else:
                parts.append(block)
                size += len(block)
        lines_only = not fill and size < window
        found, start = 0, 0
        if lines_only and len(parts) == 2 and tail and (nl := parts[1].find(b"\n")) >= 0:
            # The line that runs from the tail into the new block, on its own, so that the
            # block need not be copied behind the tail: if that line is one value, the
            # pass goes on over the block itself, from the next line.
            block = parts[1]
            head = tail + block[:nl + 1]
            splitter = _Splitter(head, final=False, max_unit=max_unit,
                                 line_start=line_start, bom=base == 0, base=base,
                                 lines_only=True, fast=fast, fast_lines=fast_lines)
            for unit in splitter.units():
                found += 1
                yield unit
            fast_lines = splitter.fast_lines
            if splitter.stop < len(head):  # it needs more than a line: as without this
                tail, base = head[splitter.stop:] + block[nl + 1:], base + splitter.stop
                line_start, fill = splitter.line_start, not found or splitter.wants_window
                continue
            parts, base, line_start, start = [block], base + len(tail), True, nl + 1
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        splitter = _Splitter(data, final=eof, max_unit=max_unit, line_start=line_start,
                             bom=base == 0, base=base, lines_only=lines_only, start=start,
                             fast=fast, fast_lines=fast_lines)
        for unit in splitter.units():
            found += 1
            yield unit
        fast_lines = splitter.fast_lines
        if eof and splitter.skip is None:
            return
        pos = splitter.stop
        if splitter.skip is None:  # stopped at the horizon: keep the rest for the next pass
            fill = not found or splitter.wants_window
            tail, base, line_start = data[pos:], base + pos, splitter.line_start
            continue
        # A unit too large for the window: skip it, hashing it, to the end of its line
        # (or of the source), without holding it.
        start, mode = base + pos, splitter.skip
        digest, length = hashlib.sha256(), 0
        prefix = data[pos:pos + TOO_LARGE_RAW_BYTES]
        chunk, at = data, pos
        tail = b""
        while True:
            cut = chunk.find(b"\n", at) if mode == "line" else -1
            if cut >= 0:
                digest.update(memoryview(chunk)[at:cut])
                length += cut - at
                tail = chunk[cut:]  # from the newline on: the next pass starts a line
                break
            digest.update(memoryview(chunk)[at:])
            length += len(chunk) - at
            chunk, at = (None if eof else next(blocks, None)), 0
            if chunk is None:
                eof = True
                break
        yield start, prefix, None, _too_large(length, max_unit, digest.hexdigest(), mode)
        if eof and not tail:
            return
        base, line_start, fill = start + length, True, False


def _too_large(length: int, limit: int, sha256: str, to: str | None = None) -> str:
    where = {"line": " (to the end of its line)", "source": " (to the end of the source)"}
    return (f"{TOO_LARGE}: a record of {length} bytes{where.get(to, '')} exceeds the limit "
            f"of {limit} bytes (sha256 {sha256}); raw holds its first "
            f"{min(length, TOO_LARGE_RAW_BYTES)} bytes")


class _Splitter:
    """One pass over a window of the stream; see ``stream_units``.

    Units start before the horizon (``len(data) - max_unit`` unless ``final``); after
    ``units()``, ``stop`` is where the next pass starts, ``line_start`` whether that is
    the start of a line, and ``skip`` ``"line"``/``"source"`` when the unit at ``stop``
    is too large to be delimited in this window. ``start``: where in ``data`` the pass
    begins, at the start of a line (by default, its beginning, after a byte order mark
    when ``bom``).
    """

    def __init__(self, data: bytes, *, final: bool, max_unit: int, line_start: bool,
                 bom: bool, base: int = 0, lines_only: bool = False, start: int = 0,
                 fast: Callable[[memoryview], Any] | None = None,
                 fast_lines: Callable[[memoryview], Any] | None = None):
        self.data, self.final, self.max_unit, self.base = data, final, max_unit, base
        self.fast, self.fast_lines = fast, fast_lines
        self.horizon = len(data) if final else len(data) - max_unit
        # ``lines_only``: a quick pass over part of a window. It yields only what a full
        # pass would yield first (whole lines at a line start that parse as JSON and are
        # within the limit) and stops at anything else, with ``wants_window`` when the
        # unit there needs a full pass.
        self.lines_only = lines_only and not final
        self.wants_window = False
        self.pos = start or (3 if bom and data.startswith(_BOM) else 0)
        self.prev_end = -1 if line_start else 0  # where the previous unit ended
        self.stop, self.line_start, self.skip = len(data), True, None

    def _line(self, raw: memoryview) -> Any:
        """The value of a whole line, or ``_NOT_ONE_VALUE``."""
        if self.fast_lines is not None:
            value = self.fast_lines(raw)
            if value is not None:
                return value
            self.fast_lines = None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _NOT_ONE_VALUE

    def _big(self, pos: int, end: int) -> bool:
        return end - pos > self.max_unit

    def _too_large(self, pos: int, end: int):
        raw = self.data[pos:end]
        return (self.base + pos, raw[:TOO_LARGE_RAW_BYTES], None,
                _too_large(end - pos, self.max_unit, hashlib.sha256(raw).hexdigest()))

    def units(self) -> Iterator[tuple[int, bytes | memoryview, Any, str | None]]:
        data, base = self.data, self.base
        view = memoryview(data)
        n = len(data)
        pos = self.pos
        prev_end = self.prev_end
        text: str | None = None  # latin-1 view of data: one char per byte, for the scanner
        eol = -1
        memo: dict = {}
        while True:
            pos = _SPACE.match(data, pos).end()
            at_line_start = prev_end < 0 or data.find(b"\n", prev_end, pos) >= 0
            if pos >= n:
                self.stop, self.line_start = n, at_line_start
                return
            if eol < pos:  # a long line holds many units (Firehose): find its end once
                eol = _line_end(data, pos)
            if self.lines_only:
                value = _NOT_ONE_VALUE
                if at_line_start and eol < n and not self._big(pos, eol):
                    value = self._line(view[pos:eol])
                if value is _NOT_ONE_VALUE:
                    self.stop, self.line_start = pos, at_line_start
                    self.wants_window = eol < n
                    return
                yield base + pos, view[pos:eol], value, None
                prev_end, pos = eol, eol + 1
                continue
            if pos >= self.horizon:
                self.stop, self.line_start = pos, at_line_start
                return
            open_line = eol == n and not self.final  # the line goes on past the window
            if at_line_start and not open_line:
                value = self._line(view[pos:eol])
                if value is not _NOT_ONE_VALUE:
                    yield (self._too_large(pos, eol) if self._big(pos, eol)
                           else (base + pos, view[pos:eol], value, None))
                    prev_end, pos = eol, eol + 1
                    continue
            end, value = _concatenated(view, data, pos, eol, memo, self.fast)
            if end is not None:
                yield (self._too_large(pos, end) if self._big(pos, end)
                       else (base + pos, view[pos:end], value, None))
                prev_end = pos = end
                continue
            if open_line:  # no unit ends within the window on this line
                self.stop, self.line_start, self.skip = pos, at_line_start, "line"
                return
            if data[pos:pos + 1] not in (b"{", b"["):  # no JSON container starts here
                stop = eol
                yield (self._too_large(pos, stop) if self._big(pos, stop)
                       else (base + pos, data[pos:eol].rstrip(b"\r"), None, "not JSON"))
                prev_end, pos = eol, eol + 1
                continue
            if text is None:
                text = data.decode("latin-1")
            try:
                end = _DECODER.raw_decode(text, pos)[1]
            except (ValueError, RecursionError) as e:
                error_pos = getattr(e, "pos", eol)
                if not self.final and error_pos >= n - 1:  # ran off the window
                    self.stop, self.line_start, self.skip = pos, at_line_start, "source"
                    return
                stop = eol if _next_line_parses(data, eol) else max(eol, _line_end(data,
                                                                                   error_pos))
                if not self.final and stop >= n:
                    self.stop, self.line_start, self.skip = pos, at_line_start, "source"
                    return
                yield (self._too_large(pos, stop) if self._big(pos, stop) else
                       (base + pos, data[pos:stop].rstrip(b"\r"), None,
                        _scan_error(e, pos)))
                prev_end, pos = stop, stop + 1
                continue
            if self._big(pos, end):
                yield self._too_large(pos, end)
            else:
                try:
                    value = orjson.loads(view[pos:end])
                except orjson.JSONDecodeError as e:  # e.g. invalid UTF-8 inside a string
                    yield base + pos, data[pos:end], None, str(e)
                else:
                    yield base + pos, view[pos:end], value, None
            prev_end = pos = end


def _scan_error(e: Exception, start: int) -> str:
    """The scanner's error for the value at ``start``, its position counted within the value
    (the same however the stream was cut into passes)."""
    if isinstance(e, json.JSONDecodeError):
        return f"JSONDecodeError: {e.msg} at byte {e.pos - start} of the record"[:500]
    return f"{type(e).__name__}: {e}"[:500]


def _concatenated(view: memoryview, data: bytes, pos: int, eol: int,
                  memo: dict, fast: Callable[[memoryview], Any] | None = None,
                  ) -> tuple[int | None, Any]:
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
        if fast is not None:
            value = fast(view[pos:boundary + 1])
            if value is not None:
                return boundary + 1, value
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
