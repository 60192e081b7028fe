"""Property: every record ends exactly once as a message, duplicate, skip or dead letter."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sesbeam.schemas import MESSAGES
from sesbeam.transforms.decode import SourceFile, decode_source
from sesbeam.transforms.dedupe import dedupe_table
from tests.test_decode import notification, sns, workmail

# Each kind: (builder of one JSON-able top-level record or raw bytes, expected outcome).
GOOD = "message"


def _receipt(mid):
    return notification(mid), GOOD


def _sns_receipt(mid):
    return sns(notification(mid)), GOOD


def _lambda_event(mid):
    ses = {k: v for k, v in notification(mid).items() if k != "notificationType"}
    return {"Records": [{"eventSource": "aws:ses", "ses": ses}]}, GOOD


def _sqs_raw(mid):
    return {"Records": [{"messageId": "q", "body": json.dumps(notification(mid)),
                         "attributes": {"SentTimestamp": "1709287200000"}}]}, GOOD


def _workmail(mid):
    return sns(workmail("wm-" + mid)), GOOD


SKIPS = [
    (sns({"notificationType": "Bounce", "mail": {}}), "sending_event"),
    (sns("Successfully validated SNS topic for Amazon SES event publishing."), "plain_text"),
    ({"Type": "SubscriptionConfirmation", "Message": "m", "Token": "t"}, "sns_control"),
    (sns({"notificationType": "AmazonSnsSubscriptionSucceeded"}), "subscription_succeeded"),
    (notification("AMAZON_SES_SETUP_NOTIFICATION"), "setup_notification"),
    (sns({"message": "hello"}), "not_ses"),
]
BAD = [
    (b'{"notificationType": "Received", "mail": {"timest', "invalid_json"),
    (b"\xff\xfe garbage \x00", "invalid_json"),
    (notification("x", ts="not a date"), "invalid_notification"),
    (sns(json.dumps({"notificationType": "Received", "receipt": {}})), "invalid_notification"),
    (12345, "unexpected_shape"),
]

record = st.one_of(
    st.tuples(st.sampled_from([_receipt, _sns_receipt, _lambda_event, _sqs_raw, _workmail]),
              st.integers(0, 12)).map(lambda t: t[0](f"id{t[1]}")),
    st.sampled_from(SKIPS),
    st.sampled_from(BAD),
)


def _serialise(obj) -> bytes:
    return obj if isinstance(obj, bytes) else json.dumps(obj).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record, min_size=1, max_size=25),
       separator=st.sampled_from([b"\n", b"\r\n", b"\n\n"]),
       compress=st.booleans())
def test_accounting_equation(records, separator, compress):
    # A good unit must follow every bad one so the object is not wholly undecodable.
    records = records + [_receipt("tail")]
    data = separator.join(_serialise(obj) for obj, _ in records) + separator
    if compress:
        data = gzip.compress(data, mtime=0)
    decoded = decode_source(SourceFile("file:///p", data, 0))
    messages = pa.Table.from_batches(decoded.messages, schema=MESSAGES)
    unique, duplicates = dedupe_table(messages)
    tally = decoded.tally

    skipped = sum(tally["skipped"].values())
    dead = sum(tally["dead_letters"].values())
    assert tally["records"] == len(records)
    assert tally["records"] == unique.num_rows + duplicates + skipped + dead

    want_skips, want_dead = {}, {}
    for _, outcome in records:
        if outcome in {r for _, r in SKIPS}:
            want_skips[outcome] = want_skips.get(outcome, 0) + 1
        elif outcome != GOOD:
            want_dead[outcome] = want_dead.get(outcome, 0) + 1
    assert tally["skipped"] == want_skips
    assert tally["dead_letters"] == want_dead
    good_ids = {(_serialise(o)) for o, k in records if k == GOOD}
    assert unique.num_rows == len(set(unique.column("message_id").to_pylist()))
    assert unique.num_rows <= len(good_ids)
    raws = decoded.dead_letters.column("raw").to_pylist() if decoded.dead_letters else []
    for raw in raws:
        assert raw  # every dead letter keeps its bytes
