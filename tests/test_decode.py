"""Containers, envelopes, skips and dead letters of sesbeam.transforms.decode."""

from __future__ import annotations

import gzip
import json

import orjson
import pyarrow as pa
import pytest

from sesbeam.schemas import DEAD_LETTERS, MESSAGES
from sesbeam.transforms.decode import SourceFile, decode_source, decompress, split_units


def notification(mid: str = "m1", ts: str = "2024-03-01T10:00:00.000Z", action: str = "SNS",
                 recipients=("r@dest.example",), **receipt) -> dict:
    n = {
        "notificationType": "Received",
        "mail": {"timestamp": ts, "source": "s@src.example", "messageId": mid,
                 "destination": list(recipients),
                 "commonHeaders": {"from": ["S <s@from.example>"], "subject": "x"}},
        "receipt": {"timestamp": ts, "processingTimeMillis": 10,
                    "recipients": list(recipients),
                    "spamVerdict": {"status": "PASS"}, "virusVerdict": {"status": "PASS"},
                    "spfVerdict": {"status": "PASS"}, "dkimVerdict": {"status": "PASS"},
                    "dmarcVerdict": {"status": "PASS"},
                    "action": {"type": action, "topicArn": "arn:aws:sns:us-east-1:1:t"}},
    }
    n["receipt"].update(receipt)
    return n


def sns(message, ts="2024-03-01T10:00:05.000Z", **extra) -> dict:
    body = message if isinstance(message, str) else json.dumps(message)
    env = {"Type": "Notification", "MessageId": "uuid-1", "TopicArn": "arn:t",
           "Subject": "Amazon SES Email Receipt Notification", "Message": body,
           "Timestamp": ts, "SignatureVersion": "1", "Signature": "x",
           "SigningCertURL": "https://sns.us-east-1.amazonaws.com/a.pem",
           "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?u"}
    env.update(extra)
    return env


def workmail(mid="wm-1") -> dict:
    return {"summaryVersion": "2018-10-10",
            "envelope": {"mailFrom": {"address": "a@wm.example"},
                         "recipients": [{"address": "b@org.example"}]},
            "subject": "s", "messageId": mid, "invocationId": "f" * 40,
            "flowDirection": "INBOUND", "truncated": False}


def decode(data: bytes, uri: str = "file:///archive/obj", mtime_ms: int | None = 7_000):
    d = decode_source(SourceFile(uri, data, mtime_ms))
    rows = pa.Table.from_batches(d.messages, schema=MESSAGES).to_pylist() if d.messages else []
    dead = d.dead_letters.to_pylist() if d.dead_letters is not None else []
    return rows, dead, d.tally


def ms(dt) -> int:
    return round(dt.timestamp() * 1000)


def ndjson(*objs, sep=b"\n") -> bytes:
    return sep.join(json.dumps(o).encode() for o in objs) + sep


def assert_balanced(rows, dead, tally):
    assert tally["records"] == len(rows) + sum(tally["skipped"].values()) + len(dead)
    assert tally["notifications"] == len(rows)
    assert sum(tally["dead_letters"].values()) == len(dead)


# -- containers ---------------------------------------------------------------------------
def test_ndjson_with_crlf_bom_and_blank_lines():
    data = b"\xef\xbb\xbf" + ndjson(notification("a"), notification("b"), sep=b"\r\n") \
        + b"\r\n\r\n" + ndjson(notification("c"))
    rows, dead, tally = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b", "c"]
    assert [r["source_record"] for r in rows] == [0, 1, 2]
    assert dead == [] and tally["records"] == 3


def test_single_pretty_printed_document():
    rows, dead, _ = decode(json.dumps(sns(notification("p")), indent=2).encode())
    assert [(r["message_id"], r["envelope"]) for r in rows] == [("p", "sns")]
    assert dead == []


def test_json_array_elements_are_records():
    data = json.dumps([notification("a"), sns(notification("b")), notification("c")],
                      indent=1).encode()
    rows, dead, tally = decode(data)
    assert sorted(r["message_id"] for r in rows) == ["a", "b", "c"]
    assert tally["records"] == 3 and dead == []


def test_firehose_concatenation_without_delimiter():
    objs = [notification(f"f{i}") for i in range(5)]
    data = b"".join(json.dumps(o, separators=(",", ":")).encode() for o in objs)
    assert b"}{" in data and b"\n" not in data
    rows, dead, tally = decode(data)
    assert [r["message_id"] for r in rows] == [f"f{i}" for i in range(5)]
    assert dead == []


def test_mixed_containers_in_one_object():
    data = (json.dumps(notification("a")).encode() + b"\n"
            + json.dumps(notification("b"), indent=2).encode()
            + json.dumps(notification("c")).encode() + b"\n")
    rows, dead, _ = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b", "c"]


def test_gzip_detected_by_magic_not_name():
    data = gzip.compress(ndjson(notification("g1"), notification("g2")), mtime=0)
    rows, dead, _ = decode(data, uri="s3://bucket/firehose/ses-1-2024-03-01-00-00-00-abc")
    assert [r["message_id"] for r in rows] == ["g1", "g2"] and dead == []


def test_multi_member_gzip():
    data = gzip.compress(ndjson(notification("a")), mtime=0) + gzip.compress(
        ndjson(notification("b")), mtime=0)
    assert decompress(data) == (ndjson(notification("a"), notification("b")), None)
    rows, _, _ = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b"]


def test_gzip_cut_short_keeps_what_it_can_and_dead_letters_the_object():
    plain = ndjson(*[notification(f"t{i}", subject_pad="x" * 300) for i in range(200)])
    data = gzip.compress(plain, mtime=0)
    cut = data[: len(data) * 2 // 3]
    rows, dead, tally = decode(cut)
    kinds = [d["kind"] for d in dead]
    assert kinds.count("corrupt_compression") == 1
    whole = next(d for d in dead if d["kind"] == "corrupt_compression")
    assert whole["raw"] == cut and whole["offset"] == -1
    assert 0 < len(rows) < 200
    assert_balanced(rows, dead, tally)


def test_empty_object_has_no_records():
    assert decode(b"")[2]["records"] == 0
    assert decode(b"\n \r\n")[2]["records"] == 0


# -- envelopes ----------------------------------------------------------------------------
def test_ses_lambda_event_with_several_records():
    event = {"Records": [{"eventSource": "aws:ses", "eventVersion": "1.0",
                          "ses": {k: v for k, v in notification(m, action="Lambda").items()
                                  if k != "notificationType"}} for m in ("l1", "l2", "l3")]}
    rows, dead, tally = decode(json.dumps(event, indent=2).encode())
    assert [(r["message_id"], r["envelope"], r["actions"]) for r in rows] == [
        ("l1", "lambda", ["Lambda"]), ("l2", "lambda", ["Lambda"]), ("l3", "lambda", ["Lambda"])]
    assert tally["records"] == 3


def test_sns_lambda_style_records_with_url_casing_and_null_subject():
    rec = sns(notification("s1"), Subject=None)
    rec["SigningCertUrl"] = rec.pop("SigningCertURL")
    rec["UnsubscribeUrl"] = rec.pop("UnsubscribeURL")
    event = {"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0",
                          "EventSubscriptionArn": "arn:s", "Sns": rec}]}
    rows, _, _ = decode(json.dumps(event).encode())
    assert [(r["message_id"], r["envelope"]) for r in rows] == [("s1", "sns")]


def test_sns_fifo_envelope_without_signature_fields():
    env = {"Type": "Notification", "MessageId": "u", "SequenceNumber": "1",
           "TopicArn": "arn:t.fifo", "Message": json.dumps(notification("fifo")),
           "Timestamp": "2024-03-01T10:00:00.000Z"}
    rows, _, _ = decode(json.dumps(env).encode())
    assert [r["message_id"] for r in rows] == ["fifo"]


def test_sqs_lambda_event_bodies_sns_and_raw():
    pretty_sns = json.dumps(sns(notification("q1")), indent=2).replace('": ', '" : ')
    event = {"Records": [
        {"messageId": "a", "receiptHandle": "h", "body": pretty_sns,
         "attributes": {"SentTimestamp": "1709287200000"}, "eventSource": "aws:sqs"},
        {"messageId": "b", "receiptHandle": "h", "body": json.dumps(notification("q2")) + "\n",
         "attributes": {"SentTimestamp": "1709287200000"}, "eventSource": "aws:sqs"},
    ]}
    rows, dead, tally = decode(json.dumps(event).encode())
    assert [(r["message_id"], r["envelope"]) for r in rows] == [("q1", "sns"), ("q2", "raw")]
    assert tally["records"] == 2


def test_workmail_time_from_sns_then_sqs_then_mtime():
    via_sns = sns(workmail("w1"), ts="2024-03-02T00:00:00.000Z")
    via_sqs = {"Records": [{"messageId": "x", "body": json.dumps(workmail("w2")),
                            "attributes": {"SentTimestamp": "1709337600123"}}]}
    bare = workmail("w3")
    rows, dead, _ = decode(ndjson(via_sns, via_sqs, bare), mtime_ms=42)
    times = {r["message_id"]: (ms(r["event_time"]), r["envelope"]) for r in rows}
    assert times == {"w1": (1709337600000, "workmail"), "w2": (1709337600123, "workmail"),
                     "w3": (42, "workmail")}


# -- skips --------------------------------------------------------------------------------
@pytest.mark.parametrize("record, reason", [
    (sns({"notificationType": "Bounce", "mail": {"messageId": "x"}, "bounce": {}}),
     "sending_event"),
    ({"eventType": "Rendering Failure", "mail": {}}, "sending_event"),
    ({"eventType": "Open", "mail": {}, "open": {}}, "sending_event"),
    (sns({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"}),
     "subscription_succeeded"),
    ({"Type": "SubscriptionConfirmation", "Message": "You have chosen...", "Token": "t",
      "SubscribeURL": "https://x"}, "sns_control"),
    (sns("Successfully validated SNS topic for Amazon SES event publishing."), "plain_text"),
    (notification("AMAZON_SES_SETUP_NOTIFICATION"), "setup_notification"),
    (sns({"message": "hello world"}), "not_ses"),
    ({"Records": [{"eventSource": "aws:s3", "s3": {}}]}, "not_ses"),
    ({"actions": [{"action": {"type": "DROP"}, "allRecipients": True}]}, "not_ses"),
])
def test_skips(record, reason):
    rows, dead, tally = decode(ndjson(record))
    assert rows == [] and dead == []
    assert tally["skipped"] == {reason: 1} and tally["records"] == 1


def test_setup_object_by_name():
    _, _, tally = decode(b"This is a test", uri="s3://b/inbox/AMAZON_SES_SETUP_NOTIFICATION")
    assert tally["skipped"] == {"setup_notification": 1} and tally["records"] == 1


# -- dead letters -------------------------------------------------------------------------
def test_bad_line_among_good_lines_is_one_dead_letter_with_exact_bytes():
    good1, good2 = json.dumps(notification("a")).encode(), json.dumps(notification("b")).encode()
    truncated = good1[:57]
    garbage = b"\xff\xfe\x00garbage"
    data = good1 + b"\n" + truncated + b"\n" + garbage + b"\n" + good2 + b"\n"
    rows, dead, tally = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b"]
    assert [(d["kind"], d["raw"], d["offset"]) for d in dead] == [
        ("invalid_json", truncated, len(good1) + 1),
        ("invalid_json", garbage, len(good1) + len(truncated) + 2)]
    assert_balanced(rows, dead, tally)


def test_truncated_tail_of_pretty_document():
    good = json.dumps(notification("a"), indent=2).encode()
    tail = json.dumps(notification("b"), indent=2).encode()[:200]
    rows, dead, tally = decode(good + b"\n" + tail)
    assert [r["message_id"] for r in rows] == ["a"]
    assert [(d["kind"], d["raw"]) for d in dead] == [("invalid_json", tail)]


def test_object_that_is_not_json_at_all_is_one_dead_letter():
    data = b"Return-Path: <a@b>\r\nSubject: raw email\r\n\r\nbody\r\n"
    rows, dead, tally = decode(data)
    assert rows == [] and len(dead) == 1 and dead[0]["raw"] == data
    assert tally["records"] == 1


def test_invalid_notification_keeps_the_notification_bytes():
    bad = notification("x")
    del bad["mail"]["timestamp"]
    line = json.dumps(bad).encode()
    rows, dead, _ = decode(line + b"\n")
    assert rows == [] and dead[0]["kind"] == "invalid_notification"
    assert dead[0]["raw"] == line and "mail.timestamp" in dead[0]["detail"]


def test_invalid_notification_inside_sns_keeps_the_message():
    bad = notification("x", ts="not a date")
    env = sns(bad)
    rows, dead, _ = decode(ndjson(env))
    assert dead[0]["kind"] == "invalid_notification"
    assert dead[0]["raw"] == env["Message"].encode() and dead[0]["record"] is None


def test_unparseable_sqs_body_and_wrong_shapes():
    event = {"Records": [{"body": "{{{body}}}"}, 5, {"body": 7},
                         {"ses": {"mail": {"messageId": "m"}}}]}
    rows, dead, tally = decode(ndjson(event, [1, 2], {"Records": "nope"}))
    kinds = [(d["kind"], d["record"]) for d in dead]
    assert ("invalid_json", 0) in kinds and ("unexpected_shape", 1) in kinds
    assert ("unexpected_shape", 2) in kinds and ("invalid_notification", 3) in kinds
    assert dead[0]["raw"] == b"{{{body}}}"
    assert_balanced(rows, dead, tally)


def test_unreadable_source():
    d = decode_source(SourceFile("s3://b/k", None, None, "AccessDenied"))
    assert d.tally["records"] == 1 and d.tally["dead_letters"] == {"unreadable_source": 1}
    assert d.dead_letters.schema == DEAD_LETTERS


def test_split_units_offsets():
    data = b'{"a":1}\n  {"b":\n 2}{"c":3}\n'
    units = [(o, bytes(r), v) for o, r, v, e in split_units(data)]
    assert units == [(0, b'{"a":1}', {"a": 1}), (10, b'{"b":\n 2}', {"b": 2}),
                     (19, b'{"c":3}', {"c": 3})]


def test_unexpected_failure_in_a_unit_dead_letters_that_unit_only(monkeypatch):
    from sesbeam.transforms import decode as decode_module

    original = decode_module._SourceDecoder.records_event

    def boom(self, event, *args):
        original(self, event, *args)  # rows appended before the failure are rolled back
        if event.get("boom"):
            raise RuntimeError("bug")

    monkeypatch.setattr(decode_module._SourceDecoder, "records_event", boom)
    bad = json.dumps({"boom": 1, "Records": [{"ses": notification("r1")},
                                             {"ses": notification("r2")}]}).encode()
    data = ndjson(notification("a")) + bad + b"\n" + ndjson(notification("b"))
    rows, dead, tally = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b"]
    assert [(d["kind"], d["raw"]) for d in dead] == [("decoder_error", bad)]
    assert tally["records"] == 3 and tally["dead_letters"] == {"decoder_error": 1}


def test_unexpected_failure_of_the_splitter_dead_letters_the_rest(monkeypatch):
    from sesbeam.transforms import decode as decode_module

    def broken(blocks, max_unit, fast=None):
        for block in blocks:
            yield 0, block, orjson.loads(block.split(b"\n")[0]), None
            raise RuntimeError("bug")

    monkeypatch.setattr(decode_module, "stream_units", broken)
    data = ndjson(notification("a"), notification("b"))
    rows, dead, tally = decode(data)
    assert [r["message_id"] for r in rows] == ["a"]
    assert [(d["kind"], d["offset"], d["raw"]) for d in dead] == [("decoder_error", -1, data)]
    assert tally["records"] == 2


def test_out_of_range_integer_is_a_dead_letter_not_a_crash():
    rows, dead, tally = decode(ndjson(notification("big", processingTimeMillis=10**30)))
    assert rows == [] and dead[0]["kind"] == "invalid_notification"


def test_long_firehose_line_is_split_in_linear_time(monkeypatch):
    from sesbeam.transforms import containers

    parsed = []

    class CountingOrjson:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(buf):
            parsed.append(len(buf))
            return orjson.loads(buf)

    monkeypatch.setattr(containers, "orjson", CountingOrjson)
    objs = [notification(f"f{i}") for i in range(3000)]
    data = b"".join(json.dumps(o, separators=(",", ":")).encode() for o in objs)
    units = list(split_units(data))
    assert len(units) == 3000 and all(e is None for *_, e in units)
    # Each object is parsed about once; re-parsing the rest of the line per object would
    # hand the parser ~1500 times the data.
    assert sum(parsed) < 3 * len(data)


def test_brace_pair_inside_a_string_does_not_split_an_object():
    a = notification("a", subject="}{ tricky }{")
    a["mail"]["commonHeaders"]["subject"] = "x}{y}{z}{"
    data = json.dumps(a, separators=(",", ":")).encode() + json.dumps(notification("b")).encode()
    rows, dead, _ = decode(data)
    assert [r["message_id"] for r in rows] == ["a", "b"] and dead == []
    assert rows[0]["subject"] == "x}{y}{z}{"


def test_long_firehose_line_is_scanned_for_its_end_once(monkeypatch):
    from sesbeam.transforms import containers

    calls = []
    real = containers._line_end
    monkeypatch.setattr(containers, "_line_end",
                        lambda data, pos: calls.append(pos) or real(data, pos))
    data = b"".join(json.dumps(notification(f"f{i}"), separators=(",", ":")).encode()
                    for i in range(500))
    assert len(list(split_units(data))) == 500
    assert len(calls) == 1  # each search for the line end scans the rest of the object
