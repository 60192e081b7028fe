"""Pseudonymise or drop personal data before it reaches the warehouse.

``apply_privacy(batch, policy)`` rewrites a ``MESSAGES`` (or ``DEAD_LETTERS``) record batch
according to a ``PrivacyPolicy``; ``ProtectPersonalData(policy)`` is the same as a Beam
transform over a PCollection of such batches. The schema never changes.

Hashing is keyed and stable: ``"h:" + HMAC-SHA256(key, context + value)`` truncated to
``hash_chars`` hex characters, so the same value gives the same token in every run that
uses the same key (joins and distinct counts keep working), different keys give unrelated
tokens, and nobody without the key can test guesses. Values are hashed exactly as they are
(``John`` and ``john`` stay distinct, as in the raw data); each kind of field has its own
context, so a subject never hashes like a local part.

- ``local_parts`` (``mail_from``, ``header_from``, every element of ``recipients``): the
  part before the last ``@`` is replaced (``h:1a2b3c4d5e6f7a8b@example.com``; ``drop``:
  ``@example.com``); the domain is kept verbatim. A value without ``@`` is hashed whole
  (``drop``: null). ``mail_from_domain``, ``header_from_domain`` and ``sender_domain`` are
  never touched, so every statistic stays the same, and the number of recipients too.
- ``subjects`` (``subject``): hashed whole or set to null.
- ``message_ids`` (``smtp_message_id``, the RFC 5322 Message-ID, whose left part often
  embeds a user name or a tracking id): ``<h:...@host>`` or null.
- ``dead_letter_raw``: dead letters keep the undecodable bytes, personal data included;
  ``drop`` empties ``raw`` (kind, detail and location stay).

Empty strings and nulls are kept as they are in every mode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from typing import Callable, Literal

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from sesbeam.schemas import DEAD_LETTERS, MESSAGES

__all__ = [
    "HASH_PREFIX",
    "MODES",
    "PrivacyPolicy",
    "ProtectPersonalData",
    "apply_privacy",
    "hash_key_from_env",
]

Mode = Literal["keep", "hash", "drop"]
MODES = ("keep", "hash", "drop")
#: Prefix of every hashed value, so pseudonyms are recognisable.
HASH_PREFIX = "h:"
#: Shortest accepted key, in bytes.
MIN_KEY_BYTES = 16
_ADDRESS_COLUMNS = ("mail_from", "header_from")


@dataclasses.dataclass(frozen=True)
class PrivacyPolicy:
    """What to do with each kind of personal field: ``keep``, ``hash`` or ``drop``.

    ``hash_key`` (at least 16 bytes) is required when any mode is ``hash``; it is left out of
    ``repr`` so it does not end up in logs or pipeline graphs' display data.
    """

    hash_key: bytes | None = dataclasses.field(default=None, repr=False)
    local_parts: Mode = "keep"
    subjects: Mode = "keep"
    message_ids: Mode = "keep"
    dead_letter_raw: Literal["keep", "drop"] = "keep"
    hash_chars: int = 16

    def __post_init__(self):
        for name in ("local_parts", "subjects", "message_ids"):
            if getattr(self, name) not in MODES:
                raise ValueError(f"{name} must be one of {', '.join(MODES)}, "
                                 f"not {getattr(self, name)!r}")
        if self.dead_letter_raw not in ("keep", "drop"):
            raise ValueError(f"dead_letter_raw must be keep or drop, not {self.dead_letter_raw!r}")
        if not 8 <= self.hash_chars <= 64:
            raise ValueError("hash_chars must be between 8 and 64")
        if self.hash_key is not None:
            if isinstance(self.hash_key, str):
                object.__setattr__(self, "hash_key", self.hash_key.encode("utf-8"))
            if not isinstance(self.hash_key, bytes):
                raise TypeError("hash_key must be bytes")
            if len(self.hash_key) < MIN_KEY_BYTES:
                raise ValueError(f"hash_key must be at least {MIN_KEY_BYTES} bytes")
        if self.hashes and self.hash_key is None:
            raise ValueError("a hash_key is required to hash personal fields")

    @property
    def hashes(self) -> bool:
        return "hash" in (self.local_parts, self.subjects, self.message_ids)

    @property
    def is_noop(self) -> bool:
        """True when the policy changes nothing."""
        return (self.local_parts == self.subjects == self.message_ids == "keep"
                and self.dead_letter_raw == "keep")


def hash_key_from_env(name: str) -> bytes:
    """The hash key held in environment variable ``name`` (UTF-8), checked for length."""
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} holding the hash key is not set")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the hash key in {name} must be at least {MIN_KEY_BYTES} bytes")
    return key


# -- value rewriters ---------------------------------------------------------------------

class _Hasher:
    """Keyed hash of strings within one context (``b"local"``, ``b"subject"``, ...)."""

    def __init__(self, key: bytes, context: bytes, chars: int):
        self._base = hmac.new(key, context + b"\0", hashlib.sha256)
        self._chars = chars

    def __call__(self, value: str) -> str:
        h = self._base.copy()
        h.update(value.encode("utf-8", "surrogatepass"))
        return HASH_PREFIX + h.hexdigest()[:self._chars]


def _address_rewriter(policy: PrivacyPolicy) -> Callable[[str], str | None]:
    if policy.local_parts == "hash":
        hasher = _Hasher(policy.hash_key, b"local", policy.hash_chars)

        def rewrite(value: str) -> str | None:
            at = value.rfind("@")
            return hasher(value) if at < 0 else hasher(value[:at]) + value[at:]
    else:
        def rewrite(value: str) -> str | None:
            at = value.rfind("@")
            return None if at < 0 else value[at:]
    return rewrite


def _message_id_rewriter(policy: PrivacyPolicy) -> Callable[[str], str | None]:
    hasher = _Hasher(policy.hash_key, b"message-id", policy.hash_chars)

    def rewrite(value: str) -> str | None:
        text = value.strip()
        bracketed = text.startswith("<") and text.endswith(">")
        inner = text[1:-1] if bracketed else text
        at = inner.rfind("@")
        token = hasher(inner) if at < 0 else hasher(inner[:at]) + inner[at:]
        return f"<{token}>" if bracketed else token
    return rewrite


def _map_strings(array: pa.Array, rewrite: Callable[[str], str | None]) -> pa.Array:
    """``rewrite`` applied to each distinct non-empty string of ``array`` once.

    Nulls and empty strings are kept. The distinct values are found by Arrow (dictionary
    encoding); only those go through Python.
    """
    if len(array) == 0 or array.null_count == len(array):
        return array
    encoded = pc.dictionary_encode(array)
    dictionary = encoded.dictionary.to_pylist()
    mapped = pa.array([v if v == "" else rewrite(v) for v in dictionary], type=array.type)
    return pc.take(mapped, encoded.indices)


def _map_list(array: pa.ListArray, rewrite: Callable[[str], str | None]) -> pa.Array:
    """``rewrite`` applied to every string element of a ``list<string>`` array."""
    if len(array) == 0 or array.null_count == len(array):
        return array
    start = array.offsets[0].as_py()
    stop = array.offsets[-1].as_py()
    values = array.values.slice(start, stop - start)
    offsets = pc.subtract(array.offsets, pa.scalar(start, pa.int32()))
    return pa.ListArray.from_arrays(offsets, _map_strings(values, rewrite), type=array.type,
                                    mask=array.is_null() if array.null_count else None)


def _null_like(array: pa.Array) -> pa.Array:
    return pa.nulls(len(array), type=array.type)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    return batch.column(batch.schema.get_field_index(name))


# -- batches -----------------------------------------------------------------------------

def apply_privacy(batch: pa.RecordBatch, policy: PrivacyPolicy) -> pa.RecordBatch:
    """``batch`` (schema ``MESSAGES`` or ``DEAD_LETTERS``) with ``policy`` applied.

    The result has exactly the schema of the input; a policy that changes nothing returns
    the batch itself.
    """
    names = batch.schema.names
    if names == MESSAGES.names:
        return _protect_messages(batch, policy)
    if names == DEAD_LETTERS.names:
        return _protect_dead_letters(batch, policy)
    raise ValueError(f"apply_privacy expects a messages or dead_letters batch, got columns "
                     f"{names}")


def _protect_messages(batch: pa.RecordBatch, policy: PrivacyPolicy) -> pa.RecordBatch:
    replaced: dict[str, pa.Array] = {}
    if policy.local_parts != "keep":
        rewrite = _address_rewriter(policy)
        for name in _ADDRESS_COLUMNS:
            replaced[name] = _map_strings(_column(batch, name), rewrite)
        replaced["recipients"] = _map_list(_column(batch, "recipients"), rewrite)
    if policy.subjects == "hash":
        hasher = _Hasher(policy.hash_key, b"subject", policy.hash_chars)
        replaced["subject"] = _map_strings(_column(batch, "subject"), hasher)
    elif policy.subjects == "drop":
        replaced["subject"] = _null_like(_column(batch, "subject"))
    if policy.message_ids == "hash":
        replaced["smtp_message_id"] = _map_strings(_column(batch, "smtp_message_id"),
                                                   _message_id_rewriter(policy))
    elif policy.message_ids == "drop":
        replaced["smtp_message_id"] = _null_like(_column(batch, "smtp_message_id"))
    if not replaced:
        return batch
    columns = [replaced.get(name, batch.column(i)) for i, name in enumerate(batch.schema.names)]
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _protect_dead_letters(batch: pa.RecordBatch, policy: PrivacyPolicy) -> pa.RecordBatch:
    if policy.dead_letter_raw == "keep" or batch.num_rows == 0:
        return batch
    i = batch.schema.get_field_index("raw")
    empty = pa.array([b""] * batch.num_rows, type=batch.schema.field(i).type)
    return batch.set_column(i, batch.schema.field(i), empty)


class ProtectPersonalData(beam.PTransform):
    """PCollection of ``MESSAGES`` (or ``DEAD_LETTERS``) batches -> the same, protected.

    Apply it to the deduplicated messages, just before they are written (after
    deduplication: with ``local_parts="drop"`` two recipients of one domain become equal,
    and the recipient union of deduplication would merge them), and, with
    ``dead_letter_raw="drop"``, to the dead letters. A policy that changes nothing leaves the
    batches untouched.
    """

    def __init__(self, policy: PrivacyPolicy, label: str | None = None):
        super().__init__(label)
        self.policy = policy

    def expand(self, batches):
        return batches | "ApplyPrivacy" >> beam.Map(apply_privacy, self.policy)
