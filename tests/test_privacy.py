"""Pseudonymising and dropping personal fields of message batches."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import re
import time

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from sesbeam.schemas import DEAD_LETTERS, MESSAGES
from sesbeam.transforms.privacy import (
    PrivacyPolicy,
    ProtectPersonalData,
    apply_privacy,
    hash_key_from_env,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
TOKEN = re.compile(r"^h:[0-9a-f]{16}$")


def _row(i: int, **values) -> dict:
    row = {name: None for name in MESSAGES.names}
    row.update(message_id=f"m{i}", event_time=1_700_000_000_000 + i, envelope="sns",
               notifications=1, source_uri="s3://b/k", source_record=i)
    row.update(values)
    return row


ROWS = [
    _row(0, mail_from="alice@example.com", mail_from_domain="example.com",
         header_from="Alice.Smith@Example.COM", header_from_domain="example.com",
         sender_domain="example.com", subject="Quarterly numbers",
         recipients=["bob@corp.test", "carol@corp.test"],
         smtp_message_id="<abc.123@mx.example.com>",
         spam_verdict="PASS"),
    _row(1, mail_from="alice@example.com", mail_from_domain="example.com",
         header_from=None, header_from_domain=None, sender_domain="example.com",
         subject=None, recipients=None, smtp_message_id=None),
    _row(2, mail_from="", header_from="MAILER-DAEMON", subject="",
         recipients=[], smtp_message_id="no-brackets@host"),
    _row(3, mail_from='"a@b"@quoted.example', mail_from_domain="quoted.example",
         sender_domain="quoted.example", subject="Quarterly numbers",
         recipients=["bob@corp.test", "postmaster", "", "x@y@z.test"],
         smtp_message_id="<no-at-sign>"),
]


def _batch(rows=ROWS) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=MESSAGES)


def _hash(key: bytes, context: bytes, value: str) -> str:
    return "h:" + hmac.new(key, context + b"\0" + value.encode(), hashlib.sha256).hexdigest()[:16]


HASH_ALL = PrivacyPolicy(hash_key=KEY, local_parts="hash", subjects="hash", message_ids="hash")


def test_hash_everything():
    out = apply_privacy(_batch(), HASH_ALL).to_pylist()
    h = lambda v: _hash(KEY, b"local", v)  # noqa: E731
    assert out[0]["mail_from"] == h("alice") + "@example.com"
    assert out[0]["header_from"] == h("Alice.Smith") + "@Example.COM"  # domain verbatim
    assert out[0]["recipients"] == [h("bob") + "@corp.test", h("carol") + "@corp.test"]
    assert out[0]["subject"] == _hash(KEY, b"subject", "Quarterly numbers")
    assert out[0]["smtp_message_id"] == f"<{_hash(KEY, b'message-id', 'abc.123')}@mx.example.com>"
    # Nulls and empty values stay; values without @ are hashed whole.
    assert out[1]["header_from"] is None and out[1]["subject"] is None
    assert out[1]["recipients"] is None and out[1]["smtp_message_id"] is None
    assert out[2]["mail_from"] == "" and out[2]["subject"] == "" and out[2]["recipients"] == []
    assert out[2]["header_from"] == h("MAILER-DAEMON")
    assert out[2]["smtp_message_id"] == _hash(KEY, b"message-id", "no-brackets") + "@host"
    # Last @ splits; empty list elements stay empty.
    assert out[3]["mail_from"] == h('"a@b"') + "@quoted.example"
    assert out[3]["recipients"] == [h("bob") + "@corp.test", h("postmaster"), "",
                                    h("x@y") + "@z.test"]
    assert out[3]["smtp_message_id"] == f"<{_hash(KEY, b'message-id', 'no-at-sign')}>"
    # Repeated values map to the same token, inside a column and across columns.
    assert out[0]["mail_from"] == out[1]["mail_from"]
    assert out[0]["recipients"][0] == out[3]["recipients"][0]
    assert out[0]["subject"] == out[3]["subject"]
    for row in out:
        for value in [row["subject"], *(row["recipients"] or [])]:
            assert value in (None, "") or TOKEN.match(value.split("@")[0]), value


def test_untouched_columns_and_schema():
    batch = _batch()
    out = apply_privacy(batch, HASH_ALL)
    assert out.schema.equals(batch.schema, check_metadata=True)
    assert out.schema.equals(MESSAGES, check_metadata=True)
    changed = {"mail_from", "header_from", "recipients", "subject", "smtp_message_id"}
    for name in MESSAGES.names:
        if name not in changed:
            assert out.column(name).equals(batch.column(name)), name
    # Domains (and so every statistic) are unchanged.
    for name in ("mail_from_domain", "header_from_domain", "sender_domain"):
        assert out.column(name).to_pylist() == batch.column(name).to_pylist()
    # Same number of recipients per row, same null rows.
    def lengths(b):
        return [None if r is None else len(r) for r in b.column("recipients").to_pylist()]
    assert lengths(out) == lengths(batch)


def test_stable_across_calls_and_pickling():
    a = apply_privacy(_batch(), HASH_ALL)
    b = apply_privacy(_batch(), PrivacyPolicy(hash_key=KEY, local_parts="hash",
                                              subjects="hash", message_ids="hash"))
    c = apply_privacy(_batch(), pickle.loads(pickle.dumps(HASH_ALL)))
    assert a.equals(b) and a.equals(c)
    # The same value in a different batch (different distinct sets) hashes the same.
    single = apply_privacy(_batch(ROWS[3:]), HASH_ALL)
    assert single.column("recipients")[0].as_py()[0] == a.column("recipients")[0].as_py()[0]


def test_different_keys_differ():
    a = apply_privacy(_batch(), HASH_ALL).to_pylist()
    b = apply_privacy(_batch(), PrivacyPolicy(hash_key=OTHER_KEY, local_parts="hash",
                                              subjects="hash", message_ids="hash")).to_pylist()
    assert a[0]["mail_from"] != b[0]["mail_from"]
    assert a[0]["mail_from"].split("@")[1] == b[0]["mail_from"].split("@")[1] == "example.com"
    assert a[0]["subject"] != b[0]["subject"]
    assert a[0]["recipients"] != b[0]["recipients"]


def test_contexts_separate_fields():
    rows = [_row(0, mail_from="same@x.test", subject="same", smtp_message_id="<same@x.test>")]
    out = apply_privacy(_batch(rows), HASH_ALL).to_pylist()[0]
    local = out["mail_from"].split("@")[0]
    assert local != out["subject"]
    assert local != out["smtp_message_id"][1:].split("@")[0]


def test_drop():
    policy = PrivacyPolicy(local_parts="drop", subjects="drop", message_ids="drop")
    out = apply_privacy(_batch(), policy)
    assert out.schema.equals(MESSAGES, check_metadata=True)
    rows = out.to_pylist()
    assert rows[0]["mail_from"] == "@example.com"
    assert rows[0]["header_from"] == "@Example.COM"
    assert rows[0]["recipients"] == ["@corp.test", "@corp.test"]  # count kept
    assert rows[2]["header_from"] is None  # no domain: nothing left
    assert rows[2]["mail_from"] == ""
    assert rows[3]["recipients"] == ["@corp.test", None, "", "@z.test"]
    assert rows[1]["recipients"] is None
    assert out.column("subject").null_count == len(ROWS)
    assert out.column("smtp_message_id").null_count == len(ROWS)
    assert out.column("sender_domain").equals(_batch().column("sender_domain"))


def test_mixed_modes_and_keep():
    batch = _batch()
    assert apply_privacy(batch, PrivacyPolicy()) is batch
    out = apply_privacy(batch, PrivacyPolicy(hash_key=KEY, local_parts="keep", subjects="hash"))
    assert out.column("mail_from").equals(batch.column("mail_from"))
    assert out.column("recipients").equals(batch.column("recipients"))
    assert out.column("subject")[0].as_py() == _hash(KEY, b"subject", "Quarterly numbers")
    out = apply_privacy(batch, PrivacyPolicy(hash_key=KEY, local_parts="hash", subjects="drop"))
    assert out.column("subject").null_count == len(ROWS)
    assert out.column("smtp_message_id").equals(batch.column("smtp_message_id"))


def test_empty_all_null_and_sliced_batches():
    empty = _batch([])
    assert apply_privacy(empty, HASH_ALL).num_rows == 0
    nulls = _batch([_row(i) for i in range(3)])
    out = apply_privacy(nulls, HASH_ALL)
    assert out.equals(nulls) and out.schema.equals(MESSAGES, check_metadata=True)
    # A sliced batch (offsets not starting at 0) rewrites exactly its own rows.
    whole = _batch(ROWS * 3)
    part = whole.slice(3, 5)
    out = apply_privacy(part, HASH_ALL)
    expected = apply_privacy(_batch((ROWS * 3)[3:8]), HASH_ALL)
    assert out.to_pylist() == expected.to_pylist()


def test_dead_letters():
    dead = pa.RecordBatch.from_pylist([
        {"source_uri": "s3://b/k", "offset": 0, "record": None, "kind": "invalid_json",
         "detail": "x", "raw": b'{"mail": {"source": "alice@example.com"'},
    ], schema=DEAD_LETTERS)
    assert apply_privacy(dead, HASH_ALL) is dead
    out = apply_privacy(dead, PrivacyPolicy(dead_letter_raw="drop"))
    assert out.schema.equals(DEAD_LETTERS, check_metadata=True)
    assert out.column("raw").to_pylist() == [b""]
    assert out.column("kind").to_pylist() == ["invalid_json"]
    with pytest.raises(ValueError):
        apply_privacy(pa.RecordBatch.from_pylist([{"a": 1}]), HASH_ALL)


def test_policy_validation(monkeypatch):
    with pytest.raises(ValueError):
        PrivacyPolicy(local_parts="hash")  # no key
    with pytest.raises(ValueError):
        PrivacyPolicy(hash_key=b"short", subjects="hash")
    with pytest.raises(ValueError):
        PrivacyPolicy(subjects="mask")
    with pytest.raises(ValueError):
        PrivacyPolicy(dead_letter_raw="hash")
    with pytest.raises(ValueError):
        PrivacyPolicy(hash_key=KEY, hash_chars=4)
    with pytest.raises(TypeError):
        PrivacyPolicy(hash_key=12345678901234567890)  # type: ignore[arg-type]
    assert PrivacyPolicy(hash_key=KEY.decode(), local_parts="hash").hash_key == KEY
    assert "kkkk" not in repr(HASH_ALL)
    assert PrivacyPolicy().is_noop and not HASH_ALL.is_noop
    with pytest.raises(AttributeError):
        HASH_ALL.subjects = "keep"  # type: ignore[misc]
    monkeypatch.setenv("SESBEAM_TEST_KEY", "x" * 20)
    assert hash_key_from_env("SESBEAM_TEST_KEY") == b"x" * 20
    monkeypatch.setenv("SESBEAM_TEST_KEY", "short")
    with pytest.raises(ValueError):
        hash_key_from_env("SESBEAM_TEST_KEY")
    monkeypatch.delenv("SESBEAM_TEST_KEY")
    with pytest.raises(ValueError):
        hash_key_from_env("SESBEAM_TEST_KEY")


def test_longer_tokens():
    policy = PrivacyPolicy(hash_key=KEY, subjects="hash", hash_chars=32)
    token = apply_privacy(_batch(), policy).column("subject")[0].as_py()
    assert re.fullmatch(r"h:[0-9a-f]{32}", token)
    assert token.startswith(_hash(KEY, b"subject", "Quarterly numbers"))


def test_beam_transform():
    batches = [_batch(ROWS[:2]), _batch(ROWS[2:])]
    expected = [apply_privacy(b, HASH_ALL).to_pylist() for b in batches]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(batches) | ProtectPersonalData(HASH_ALL)
               | beam.Map(lambda b: (b.schema.equals(MESSAGES, check_metadata=True),
                                     b.to_pylist())))
        assert_that(out, equal_to([(True, rows) for rows in expected]))


def test_speed():
    n = 16_384
    rows = [_row(i, mail_from=f"user{i % 2000}@sender{i % 300}.example",
                 header_from=f"User{i % 2000}@sender{i % 300}.example",
                 subject=f"Invoice {i % 5000}", smtp_message_id=f"<{i}.x@mx.example>",
                 recipients=[f"r{i % 700}@corp.test", f"r{(i * 7) % 700}@corp.test"])
            for i in range(n)]
    batch = _batch(rows)
    start = time.perf_counter()
    out = apply_privacy(batch, HASH_ALL)
    elapsed = time.perf_counter() - start
    assert out.num_rows == n
    assert elapsed < 2.0, f"{elapsed:.2f} s for {n} rows"  # about 0.15 s here
