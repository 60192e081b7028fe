"""Every real sample event in ../shared/fixtures/public decodes to the right outcome."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from sesbeam.schemas import MESSAGES
from tests.conftest import PUBLIC_FIXTURES
from sesbeam.transforms.decode import SourceFile, decode_source

# Outcome of every JSON fixture, by folder; exceptions by file name below.
EXPECTED_BY_FOLDER = {
    "ses-lambda": "message",
    "ses-sns-notification": "message",
    "ses-sending-events": "skipped:sending_event",
    "workmail": "message",
}
EXPECTED_BY_FILE = {
    # WorkMail synchronous *responses*, not events.
    "awsdocs-admin-guide-sync-response-add-recipients-example.json": "skipped:not_ses",
    "awsdocs-admin-guide-sync-response-drop-example.json": "skipped:not_ses",
    # Generic SNS/SQS samples whose message is plain text or other JSON.
    "go-sns-event.json": "skipped:plain_text",
    "powertools-python-snsEvent.json": "skipped:plain_text",
    "rust-example-sns-event.json": "skipped:plain_text",
    "rust-example-sns-event-pascal-case.json": "skipped:plain_text",
    "java-sns_event.json": "skipped:not_ses",
    "rust-example-sns-event-obj.json": "skipped:not_ses",
    "mozilla-subscription_confirmation_invalid_sns_body.json": "skipped:sns_control",
    "go-sqs-event.json": "skipped:plain_text",
    "powertools-python-snsSqsEvent.json": "skipped:not_ses",
    "powertools-python-snsSqsFifoEvent.json": "skipped:not_ses",
    "powertools-ts-sns-body.json": "skipped:not_ses",
    "powertools-python-sqsEvent.json": "skipped:not_ses+plain_text",
    # SAM CLI templates with an unrendered "{{{message}}}" body: corrupt JSON.
    "sam-cli-Sns.json": "dead:invalid_json",
    "sam-cli-Sqs.json": "dead:invalid_json",
}


def _fixtures() -> list[Path]:
    if not PUBLIC_FIXTURES.is_dir():
        return []
    return sorted(PUBLIC_FIXTURES.rglob("*.json"))


def _expected(path: Path) -> str:
    if path.name in EXPECTED_BY_FILE:
        return EXPECTED_BY_FILE[path.name]
    if "derived" in path.parts:
        return "skipped:plain_text"  # signed SNS test messages with a text body
    return EXPECTED_BY_FOLDER[path.parent.name]


def _outcome(path: Path) -> tuple[str, list[dict]]:
    d = decode_source(SourceFile(str(path), path.read_bytes(), 1_700_000_000_000))
    rows = pa.Table.from_batches(d.messages, schema=MESSAGES).to_pylist() if d.messages else []
    t = d.tally
    if t["dead_letters"]:
        return "dead:" + "+".join(sorted(t["dead_letters"])), rows
    if rows:
        assert t["records"] == len(rows) and not t["skipped"]
        return "message", rows
    return "skipped:" + "+".join(sorted(t["skipped"])), rows


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.name)
def test_fixture_outcome(path, public_fixtures):
    outcome, rows = _outcome(path)
    assert outcome == _expected(path)
    for row in rows:
        assert row["message_id"] and row["event_time"] is not None
        assert row["envelope"] in ("sns", "lambda", "raw", "workmail")


def test_every_receipt_sample_is_a_message(public_fixtures):
    receipts = [p for p in _fixtures() if p.parent.name in ("ses-lambda", "ses-sns-notification")]
    assert len(receipts) >= 20
    for path in receipts:
        outcome, rows = _outcome(path)
        assert outcome == "message" and len(rows) == 1, path.name


def _row(name: str) -> dict:
    [path] = [p for p in _fixtures() if p.name == name]
    outcome, rows = _outcome(path)
    assert outcome == "message"
    return rows[0]


def test_dmarc_failed_sns_notification(public_fixtures):
    r = _row("mozilla-dmarc_failed_email_sns_body.json")
    assert r["envelope"] == "sns"
    assert r["dmarc_verdict"] == "FAIL" and r["dmarc_policy"] == "reject"
    assert r["sender_domain"] == "sender.com"


def test_emperor_norton_comma_display_name_offset_time_and_null_id(public_fixtures):
    r = _row("mozilla-emperor_norton_email_sns_body.json")
    assert r["header_from"] == "norton@sf.us.example.com"
    assert r["sender_domain"] == "sf.us.example.com"
    assert r["event_time"].isoformat() == "1859-09-17T18:33:12+00:00"
    assert r["message_id"].startswith("sesbeam:")
    assert r["actions"] == ["SNS"]


def test_nested_brackets_and_naive_time(public_fixtures):
    r = _row("mozilla-nested_brackets_service_email_sns_body.json")
    assert r["header_from"] == "hello@theservice.example.com"
    assert r["event_time"].isoformat() == "2023-10-04T12:16:22+00:00"


def test_quoted_comma_display_name_in_lambda_event(public_fixtures):
    r = _row("java-ses_event.json")
    assert r["envelope"] == "lambda" and r["sender_domain"] == "example.com"
    assert r["actions"] == ["Lambda"]


def test_bom_prefixed_dotnet_event_without_dmarc(public_fixtures):
    r = _row("dotnet-simple-email-event-s3.json")
    assert r["dmarc_verdict"] is None
    assert r["s3_bucket"] and r["s3_object_key"]


def test_no_headers_notification_falls_back_to_mail_source(public_fixtures):
    r = _row("mozilla-received_notification_action_no_headers_ses_body.json")
    assert r["header_from"] is None
    assert r["sender_domain"] == r["mail_from_domain"]


def test_workmail_event_uses_source_time(public_fixtures):
    r = _row("templates-hello-world-event.json")
    assert r["envelope"] == "workmail" and r["sender_domain"] == "domain.test"
    assert r["event_time"].timestamp() == 1_700_000_000
