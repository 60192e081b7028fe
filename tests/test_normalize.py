"""Plain unit tests of the field rules in sesbeam.transforms.normalize."""

from __future__ import annotations

import copy
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sesbeam.schemas import MESSAGES
from sesbeam.transforms.normalize import (
    InvalidNotification,
    MessageBuilder,
    address_of,
    domain_of,
    normalize_ses,
    normalize_workmail,
    parse_time_ms,
)

COLUMNS = MESSAGES.names


def row_dict(row: tuple) -> dict:
    return dict(zip(COLUMNS, row))


BASE = {
    "notificationType": "Received",
    "mail": {
        "timestamp": "2024-03-01T10:00:00.250Z",
        "source": "bounce+abc@Mailer.Example.NET",
        "messageId": "abc123",
        "destination": ["to@dest.example"],
        "headersTruncated": False,
        "commonHeaders": {"from": ["Alice <alice@example.com>"], "subject": "Hi",
                          "messageId": "<m1@example.com>"},
    },
    "receipt": {
        "timestamp": "2024-03-01T10:00:01.000Z",
        "processingTimeMillis": 512,
        "recipients": ["r1@dest.example", "r2@dest.example"],
        "spamVerdict": {"status": "PASS"},
        "virusVerdict": {"status": "PASS"},
        "spfVerdict": {"status": "FAIL"},
        "dkimVerdict": {"status": "GRAY"},
        "dmarcVerdict": {"status": "FAIL"},
        "dmarcPolicy": "reject",
        "action": {"type": "S3", "topicArn": "arn:t", "bucketName": "mail",
                   "objectKey": "inbox/abc123"},
    },
}


def ses(**changes) -> dict:
    n = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = n
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return n


def normalized(n: dict, envelope: str = "raw") -> dict:
    return row_dict(normalize_ses(n, envelope, "file:///x", 3))


@pytest.mark.parametrize("header, address", [
    ("sender@example.com", "sender@example.com"),
    ("Jane Doe <janedoe@example.com>", "janedoe@example.com"),
    ('"Doe, John" <sender@example.com>', "sender@example.com"),
    ("Norton I., Emperor of the United States <norton@sf.us.example.com>",
     "norton@sf.us.example.com"),
    ("The Service <The Service <hello@theservice.example.com>>", "hello@theservice.example.com"),
    ("=?UTF-8?B?w4lsb2TDqWU=?= <elodee@example.fr>", "elodee@example.fr"),
    ('"a <fake@evil.example>" <real@good.example>', "real@good.example"),
    ("user@example.com (Joe User)", "user@example.com"),
    ("a@x.example, b@y.example", "a@x.example"),
    ("<>", None),
    ("", None),
    (None, None),
    (42, None),
])
def test_address_of(header, address):
    assert address_of(header) == address


def _address_by_regex(value):
    """``address_of`` as first written, with regular expressions only: the reference."""
    if not isinstance(value, str):
        return None
    if "<" in value:
        addr = re.match(r".*<([^>]*)", value, re.S).group(1)
    else:
        addr = re.match(r"[^,]*", re.sub(r"\([^()]*\)", "", value)).group(0)
    return addr.strip(' \t\r\n"') or None


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='ab@<>(),"\\ \t\r\n.Zé', max_size=16))
def test_address_of_equals_the_regex_reference(header):
    assert address_of(header) == _address_by_regex(header)


@settings(max_examples=2000, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.sampled_from(["Z", "+05:30", "-11:00", ""]))
def test_parse_time_ms_floors_like_timedelta_division(moment, offset):
    text = moment.isoformat() + offset
    aware = datetime.fromisoformat(text)
    if aware.tzinfo is None:
        aware = aware.replace(tzinfo=timezone.utc)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert parse_time_ms(text) == (aware - epoch) // timedelta(milliseconds=1)


@pytest.mark.parametrize("address, domain", [
    ("a@Example.COM", "example.com"),
    ("a@example.com.", "example.com"),
    ("prvs=144d0cba7=sender@Sub.Example.org", "sub.example.org"),
    ("no-at-sign", None),
    ("a@", None),
    (None, None),
])
def test_domain_of(address, domain):
    assert domain_of(address) == domain


@pytest.mark.parametrize("text, ms", [
    ("2015-09-11T20:32:33.936Z", 1442003553936),
    ("2015-09-11T20:32:33Z", 1442003553000),
    ("2015-09-11T20:32:33", 1442003553000),
    ("2015-09-11T22:32:33.936+02:00", 1442003553936),
    ("1859-09-17T11:33:12-07:00", -3480384408000),
    ("1970-01-01T00:00:00.123Z", 123),
    ("1970-01-01T00:00:00.1239999Z", 123),  # digits beyond microseconds: truncated
    ("2015-09-11T20:32:33.936+00:00", 1442003553936),
    ("0001-01-01T00:00:00Z", -62135596800000),
    ("9999-12-31T23:59:59.999999Z", 253402300799999),
    ("2018-10-08T14:05:45 +0000", 1539007545000),
    ("Mon, 5 Dec 2016 18:40:08 -0800", 1480992008000),
])
def test_parse_time_ms(text, ms):
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize("bad", [None, "", "not a date", 1442003553, ["2015-09-11"]])
def test_parse_time_rejects(bad):
    with pytest.raises(InvalidNotification):
        parse_time_ms(bad)


def test_full_row():
    r = normalized(BASE, "sns")
    assert r["message_id"] == "abc123"
    assert r["event_time"] == 1709287200250
    assert r["envelope"] == "sns"
    assert r["mail_from"] == "bounce+abc@Mailer.Example.NET"
    assert r["mail_from_domain"] == "mailer.example.net"
    assert r["header_from"] == "alice@example.com"
    assert r["header_from_domain"] == r["sender_domain"] == "example.com"
    assert r["subject"] == "Hi"
    assert r["recipients"] == ["r1@dest.example", "r2@dest.example"]
    assert (r["spam_verdict"], r["virus_verdict"], r["spf_verdict"], r["dkim_verdict"],
            r["dmarc_verdict"]) == ("PASS", "PASS", "FAIL", "GRAY", "FAIL")
    assert r["dmarc_policy"] == "reject"
    assert r["processing_time_ms"] == 512
    assert r["actions"] == ["S3"]
    assert (r["s3_bucket"], r["s3_object_key"]) == ("mail", "inbox/abc123")
    assert r["headers_truncated"] is False
    assert r["receipt_time"] == 1709287201000
    assert r["smtp_message_id"] == "<m1@example.com>"
    assert r["notifications"] == 1
    assert (r["source_uri"], r["source_record"]) == ("file:///x", 3)


def test_missing_from_falls_back_to_mail_source():
    r = normalized(ses(mail__commonHeaders={"subject": "no from"}))
    assert r["header_from"] is None and r["header_from_domain"] is None
    assert r["sender_domain"] == "mailer.example.net"


def test_from_without_domain_falls_back_and_none_when_neither():
    r = normalized(ses(mail__commonHeaders={"from": ["undisclosed"]}, mail__source="<>"))
    assert r["sender_domain"] is None
    r = normalized(ses(mail__commonHeaders={"from": ["=?utf-8?q?Caf=C3=A9?="]}))
    assert r["sender_domain"] == "mailer.example.net"


def test_from_as_single_string_is_accepted():
    assert normalized(ses(mail__commonHeaders={"from": "Bob <b@Bob.Example.>"}))["sender_domain"] \
        == "bob.example"


def test_missing_dmarc_verdict_and_policy():
    r = normalized(ses(receipt__dmarcVerdict=KeyError, receipt__dmarcPolicy=KeyError))
    assert r["dmarc_verdict"] is None and r["dmarc_policy"] is None


def test_dmarc_policy_object_form_and_case():
    assert normalized(ses(receipt__dmarcPolicy={"status": "QUARANTINE"}))["dmarc_policy"] \
        == "quarantine"


def test_processing_time_as_string_and_float():
    assert normalized(ses(receipt__processingTimeMillis="574"))["processing_time_ms"] == 574
    assert normalized(ses(receipt__processingTimeMillis=574.0))["processing_time_ms"] == 574


def test_unknown_verdict_values_are_kept_verbatim():
    r = normalized(ses(receipt__spamVerdict={"status": "DISABLED"},
                       receipt__virusVerdict="PROCESSING_FAILED"))
    assert (r["spam_verdict"], r["virus_verdict"]) == ("DISABLED", "PROCESSING_FAILED")


def test_headers_truncated_string_form():
    assert normalized(ses(mail__headersTruncated="true"))["headers_truncated"] is True


def test_missing_message_id_gets_stable_synthetic_id():
    a = normalized(ses(mail__messageId=None))["message_id"]
    b = normalized(ses(mail__messageId=KeyError))["message_id"]
    assert a.startswith("sesbeam:") and len(a) == len("sesbeam:") + 40
    assert a == normalized(ses(mail__messageId=None))["message_id"]
    assert a != b  # the notifications differ (explicit null vs absent key)


def test_recipients_fall_back_to_destination():
    assert normalized(ses(receipt__recipients=KeyError))["recipients"] == ["to@dest.example"]


def test_non_s3_action_has_no_location():
    r = normalized(ses(receipt__action={"type": "SNS", "topicArn": "t", "encoding": "UTF8"}))
    assert r["actions"] == ["SNS"] and r["s3_bucket"] is None and r["s3_object_key"] is None


@pytest.mark.parametrize("changes", [
    {"mail__timestamp": KeyError},
    {"mail__timestamp": "yesterday"},
    {"mail": "a string"},
    {"mail": None},
    {"receipt__spamVerdict": {"status": 3}},
    {"receipt__processingTimeMillis": "fast"},
    {"receipt__processingTimeMillis": True},
    {"receipt__recipients": "r1@dest.example"},
    {"receipt__recipients": ["ok@x", 5]},
    {"mail__headersTruncated": "maybe"},
    {"mail__commonHeaders": ["not", "an", "object"]},
    {"mail__commonHeaders__subject": ["list"]},
    {"mail__messageId": 12345},
])
def test_wrong_types_are_rejected_whole(changes):
    with pytest.raises(InvalidNotification):
        normalize_ses(ses(**changes), "raw", "u", 0)


def test_workmail_row():
    event = {"summaryVersion": "2019-07-28",
             "envelope": {"mailFrom": {"address": "From@Domain.Test"},
                          "recipients": [{"address": "r1@x.test"}, {"address": "r2@x.test"}]},
             "subject": "Hello", "messageId": "00000000-0000-0000-0000-000000000001",
             "invocationId": "ab" * 20, "flowDirection": "INBOUND", "truncated": False}
    r = row_dict(normalize_workmail(event, 1000, "u", 0))
    assert r["envelope"] == "workmail"
    assert r["message_id"] == "00000000-0000-0000-0000-000000000001"
    assert r["event_time"] == 1000
    assert r["sender_domain"] == r["mail_from_domain"] == "domain.test"
    assert r["recipients"] == ["r1@x.test", "r2@x.test"]
    assert r["flow_direction"] == "INBOUND"
    assert r["spam_verdict"] is None and r["actions"] == []
    with pytest.raises(InvalidNotification):
        normalize_workmail(event, None, "u", 0)


def test_builder_produces_schema_batches():
    b = MessageBuilder()
    b.append(normalize_ses(BASE, "raw", "u", 0))
    b.append(normalize_ses(ses(mail__messageId="other"), "lambda", "u", 1))
    batch = b.build()
    assert batch.schema == MESSAGES
    assert batch.num_rows == 2 and len(b) == 0
    assert batch.column("event_time").type.tz == "UTC"
