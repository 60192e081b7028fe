"""Gunzip clean gzip streams with ISA-L (``isal``), about twice as fast as zlib.

``gunzip_clean`` handles only the common case: one or more complete, valid members,
optionally followed by zero padding. Anything else (ISA-L not installed, a corrupt or cut
short member, other bytes after the stream) returns None and the caller decodes with
zlib, which recovers what it can and words the errors; for a clean stream both give the
same bytes.
"""

from __future__ import annotations

try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency, but optional at run time
    _isal = None

__all__ = ["AVAILABLE", "gunzip_clean"]

AVAILABLE = _isal is not None
_GZIP_MAGIC = b"\x1f\x8b"


def gunzip_clean(data: bytes) -> bytes | None:
    """The decompressed members of ``data`` (which starts with the gzip magic), or None."""
    if _isal is None:
        return None
    parts: list[bytes] = []
    rest = data
    while rest:
        if len(rest) < 10 or rest[2] != 8 or rest[3] & 0xE0:
            return None  # not deflate, or reserved flags, which ISA-L ignores and zlib rejects
        inflater = _isal.decompressobj(wbits=31)
        try:
            parts.append(inflater.decompress(rest))
        except Exception:  # noqa: BLE001 - corrupt: zlib says how
            return None
        if not inflater.eof:
            return None
        rest = inflater.unused_data
        if rest and not rest.startswith(_GZIP_MAGIC):
            if rest.strip(b"\0"):
                return None
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)
