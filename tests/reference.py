"""A small, independent reader of SES notification archives, used by tests as an oracle.

Written from the payload digest (``shared/spec/formats.md``) and the table contract, not
from the ``sesbeam`` code, and deliberately naive: plain ``json``, plain dicts, one file at a
time. ``reference_stats(archive_dir)`` returns what the pipeline's tables must contain.

What is read:

* every file under the directory; gzip (one or more members) is recognised by its magic
  bytes, whatever the file name;
* containers: NDJSON, pretty-printed documents, JSON arrays (each element is a unit) and
  concatenations without delimiter (Firehose), all split with ``JSONDecoder.raw_decode``;
  a unit that does not parse is dropped up to the end of its line;
* envelopes, unwrapped recursively: SNS envelopes (``Type`` + ``Message`` string), SES
  Lambda events (``Records[].ses``), SNS-to-Lambda events (``Records[].Sns``), Lambda SQS
  events (``Records[].body`` holding an SNS envelope or a raw notification), WorkMail
  Run-Lambda events (``summaryVersion``);
* SES receipt notifications: ``notificationType == "Received"``, or a Lambda ``ses``
  record with ``mail`` and ``receipt``. ``AMAZON_SES_SETUP_NOTIFICATION`` is skipped.

Rules (from the table contract):

* one message per ``mail.messageId``; ``recipients`` is the union of ``receipt.recipients``
  (else ``mail.destination``) over every notification of the id; the other fields are the
  same in every copy the generator writes, and are taken from the first notification in
  (relative path, position in file) order;
* event time = ``mail.timestamp`` as ISO 8601 (``Z`` or an offset; naive = UTC);
  a notification whose ``mail.timestamp`` is missing or not a time is a dead letter;
* sender domain: the address of the first ``commonHeaders.from`` entry is the content of
  its LAST ``<...>`` if it has one, else its first comma-separated item; the domain is the
  text after the last ``@``, stripped, lowercased, trailing dot removed; when that gives
  nothing, the same rule applied to ``mail.source``; None if neither has one;
* windows are fixed and aligned to the epoch: ``start = floor(ms / size) * size``.

WorkMail events are collected apart (``workmail``): their id is ``messageId`` (else
``invocationId``), their time the nearest wrapper's time (SNS ``Timestamp``, SQS
``SentTimestamp``), their sender domain the domain of ``envelope.mailFrom.address`` and
their recipients ``envelope.recipients[].address``. They have no verdicts, so they do not
enter ``verdict_stats``; ``sender_stats`` covers SES receipt messages only, while
``sender_stats_all`` adds the WorkMail messages (what the pipeline's ``sender_stats`` table
holds, since that table is keyed by sender domain whatever the route).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections import Counter
from datetime import datetime, timezone

__all__ = [
    "SENDER_COUNTS",
    "VERDICTS",
    "read_archive",
    "reference_stats",
    "sender_domain",
    "sender_stats_of",
    "verdict_stats_of",
    "window_start",
]

VERDICTS = ("spam", "virus", "spf", "dkim", "dmarc")
SENDER_COUNTS = ("messages", "recipients", "spam_fail", "spam_gray", "virus_fail", "spf_fail",
                 "spf_gray", "dkim_fail", "dkim_gray", "dmarc_fail", "dmarc_gray",
                 "dmarc_fail_reject", "dmarc_fail_quarantine", "dmarc_fail_none")
SETUP_ID = "AMAZON_SES_SETUP_NOTIFICATION"
SENDING_TYPES = {"Bounce", "Complaint", "Delivery", "Send", "Reject", "Open", "Click",
                 "Rendering Failure", "DeliveryDelay", "Subscription"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DECODER = json.JSONDecoder()


class _BadTime(Exception):
    pass


def parse_iso_ms(text) -> int:
    """Milliseconds since the epoch of an ISO 8601 string (naive = UTC)."""
    if not isinstance(text, str):
        raise _BadTime(repr(text))
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _BadTime(text) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def window_start(ms: int, size_ms: int) -> int:
    return ms // size_ms * size_ms


def _domain(address):
    if not isinstance(address, str) or "@" not in address:
        return None
    domain = address[address.rindex("@") + 1:].strip().lower()
    while domain.endswith("."):
        domain = domain[:-1]
    return domain or None


def _address(entry):
    if not isinstance(entry, str):
        return None
    if "<" in entry:
        inner = entry[entry.rindex("<") + 1:]
        return inner.split(">", 1)[0].strip()
    return entry.split(",", 1)[0].strip()


def sender_domain(mail: dict):
    """Sender domain of a ``mail`` object (From header first, then MAIL FROM)."""
    froms = (mail.get("commonHeaders") or {}).get("from")
    if isinstance(froms, str):
        froms = [froms]
    first = froms[0] if froms else None
    return _domain(_address(first)) or _domain(_address(mail.get("source")))


def _status(value):
    if isinstance(value, dict):
        value = value.get("status")
    return value


# -- reading -----------------------------------------------------------------------------------

def _gunzip(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)  # every member
    except (OSError, EOFError, zlib.error):
        return b""


def _units(data: bytes):
    """Top-level JSON values of a container; ``None`` for each undecodable line."""
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            return
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            nl = text.find("\n", pos)
            pos = n if nl < 0 else nl + 1
            yield None
            continue
        yield value


class _Reader:
    def __init__(self):
        self.notifications = []  # (order, kind, payload, wrapper_ms)
        self.skipped = Counter()
        self.dead = Counter()
        self.records = 0

    # outcomes
    def skip(self, reason):
        self.records += 1
        self.skipped[reason] += 1

    def bad(self, kind):
        self.records += 1
        self.dead[kind] += 1

    def keep(self, kind, payload, wrapper_ms):
        self.records += 1
        self.notifications.append((len(self.notifications), kind, payload, wrapper_ms))

    # layers
    def top(self, value):
        if value is None:
            self.bad("invalid_json")
        elif isinstance(value, list):
            for item in value:
                self.unwrap(item, None)
        else:
            self.unwrap(value, None)

    def unwrap(self, obj, wrapper_ms):
        if not isinstance(obj, dict):
            self.bad("unexpected_shape")
        elif isinstance(obj.get("Records"), list) and "mail" not in obj:
            for rec in obj["Records"]:
                self.lambda_record(rec)
        elif "Type" in obj and "Message" in obj:
            self.sns(obj)
        else:
            self.leaf(obj, wrapper_ms)

    def lambda_record(self, rec):
        if not isinstance(rec, dict):
            self.bad("unexpected_shape")
        elif isinstance(rec.get("ses"), dict):
            self.leaf(rec["ses"], None)
        elif isinstance(rec.get("Sns"), dict):
            self.sns(rec["Sns"])
        elif "body" in rec:
            sent = (rec.get("attributes") or {}).get("SentTimestamp")
            self.text(rec["body"], int(sent) if isinstance(sent, str) and sent.isdigit() else None)
        else:
            self.skip("not_ses")

    def sns(self, env):
        if env.get("Type") in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            self.skip("sns_control")
        elif env.get("Type") != "Notification":
            self.skip("not_ses")
        else:
            try:
                ms = parse_iso_ms(env.get("Timestamp"))
            except _BadTime:
                ms = None
            self.text(env.get("Message"), ms)

    def text(self, body, wrapper_ms):
        if not isinstance(body, str):
            self.bad("unexpected_shape")
            return
        body = body.strip().lstrip("\ufeff")
        try:
            value = json.loads(body)
        except ValueError:
            if body.startswith(("{", "[")):
                self.bad("invalid_json")
            else:
                self.skip("plain_text")
            return
        if isinstance(value, dict):
            self.unwrap(value, wrapper_ms)
        else:
            self.skip("not_ses")

    def leaf(self, n, wrapper_ms):
        if "summaryVersion" in n:
            self.keep("workmail", n, wrapper_ms)
            return
        kind = n.get("notificationType", n.get("eventType"))
        if kind is None and "mail" in n and "receipt" in n:
            kind = "Received"
        if kind == "Received":
            if (n.get("mail") or {}).get("messageId") == SETUP_ID:
                self.skip("setup_notification")
                return
            try:
                parse_iso_ms((n.get("mail") or {}).get("timestamp"))
            except _BadTime:
                self.bad("invalid_notification")
                return
            self.keep("ses", n, wrapper_ms)
        elif kind == "AmazonSnsSubscriptionSucceeded":
            self.skip("subscription_succeeded")
        elif kind in SENDING_TYPES:
            self.skip("sending_event")
        else:
            self.skip("not_ses")


def read_archive(archive_dir: str) -> _Reader:
    """Classify every record of every file under ``archive_dir``."""
    reader = _Reader()
    paths = []
    for dirpath, _, names in os.walk(archive_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            paths.append(os.path.relpath(full, archive_dir).replace(os.sep, "/"))
    for rel in sorted(paths):
        if rel.rsplit("/", 1)[-1] == SETUP_ID:
            reader.skip("setup_notification")
            continue
        with open(os.path.join(archive_dir, rel), "rb") as f:
            data = _gunzip(f.read())
        for unit in _units(data):
            reader.top(unit)
    return reader


# -- messages and statistics -------------------------------------------------------------------

def _ses_message(n: dict) -> dict:
    mail, receipt = n.get("mail") or {}, n.get("receipt") or {}
    recipients = receipt.get("recipients")
    if recipients is None:
        recipients = mail.get("destination") or []
    policy = _status(receipt.get("dmarcPolicy"))
    out = {
        "recipients": set(recipients),
        "sender_domain": sender_domain(mail),
        "event_time_ms": parse_iso_ms(mail.get("timestamp")),
        "dmarc_policy": policy.lower() if isinstance(policy, str) else None,
    }
    for v in VERDICTS:
        out[f"{v}_verdict"] = _status(receipt.get(f"{v}Verdict"))
    return out


def _workmail_message(e: dict, wrapper_ms) -> dict:
    env = e.get("envelope") or {}
    return {
        "recipients": {r.get("address") for r in env.get("recipients") or [] if r.get("address")},
        "sender_domain": _domain(_address((env.get("mailFrom") or {}).get("address"))),
        "event_time_ms": wrapper_ms,
    }


def verdict_stats_of(messages: dict, window_s: int) -> dict:
    size = window_s * 1000
    out = Counter()
    for m in messages.values():
        start = window_start(m["event_time_ms"], size)
        for v in VERDICTS:
            out[(start, v, m[f"{v}_verdict"])] += 1
    return dict(out)


def sender_stats_of(messages: dict, window_s: int) -> dict:
    size = window_s * 1000
    out: dict = {}
    for m in messages.values():
        key = (window_start(m["event_time_ms"], size), m["sender_domain"])
        row = out.get(key)
        if row is None:
            row = out[key] = {c: 0 for c in SENDER_COUNTS}
            row["first_seen"] = row["last_seen"] = m["event_time_ms"]
        status = {v: m.get(f"{v}_verdict") for v in VERDICTS}
        dmarc_fail = status["dmarc"] == "FAIL"
        row["messages"] += 1
        row["recipients"] += len(m["recipients"])
        row["spam_fail"] += status["spam"] == "FAIL"
        row["spam_gray"] += status["spam"] == "GRAY"
        row["virus_fail"] += status["virus"] == "FAIL"
        row["spf_fail"] += status["spf"] == "FAIL"
        row["spf_gray"] += status["spf"] == "GRAY"
        row["dkim_fail"] += status["dkim"] == "FAIL"
        row["dkim_gray"] += status["dkim"] == "GRAY"
        row["dmarc_fail"] += dmarc_fail
        row["dmarc_gray"] += status["dmarc"] == "GRAY"
        for policy in ("reject", "quarantine", "none"):
            row[f"dmarc_fail_{policy}"] += dmarc_fail and m.get("dmarc_policy") == policy
        row["first_seen"] = min(row["first_seen"], m["event_time_ms"])
        row["last_seen"] = max(row["last_seen"], m["event_time_ms"])
    return out


def reference_stats(archive_dir: str, window_s: int = 86_400) -> dict:
    """Expected content of the pipeline's output for the archive in ``archive_dir``.

    Keys: ``messages`` {id: {recipients (set), sender_domain, <verdict>_verdict...,
    dmarc_policy, event_time_ms}} for SES receipt messages; ``workmail`` {id: {recipients,
    sender_domain, event_time_ms}}; ``verdict_stats`` {(window_start_ms, verdict, status):
    messages} (SES only); ``sender_stats`` {(window_start_ms, sender_domain): {count...,
    first_seen, last_seen}} over SES receipt messages; ``sender_stats_all`` the same over
    SES and WorkMail messages; and the accounting ``records``, ``notifications``,
    ``duplicates``, ``skipped`` {reason: n}, ``dead_letters`` {kind: n}.
    """
    reader = read_archive(archive_dir)
    messages: dict = {}
    workmail: dict = {}
    for _, kind, payload, wrapper_ms in reader.notifications:
        if kind == "ses":
            mid = payload["mail"].get("messageId")
            row = _ses_message(payload)
            if mid in messages:
                messages[mid]["recipients"] |= row["recipients"]
            else:
                messages[mid] = row
        else:
            mid = payload.get("messageId") or payload.get("invocationId")
            row = _workmail_message(payload, wrapper_ms)
            if mid in workmail:
                workmail[mid]["recipients"] |= row["recipients"]
            else:
                workmail[mid] = row
    everything = {**messages, **{("workmail", k): v for k, v in workmail.items()}}
    return {
        "messages": messages,
        "workmail": workmail,
        "verdict_stats": verdict_stats_of(messages, window_s),
        "sender_stats": sender_stats_of(messages, window_s),
        "sender_stats_all": sender_stats_of(everything, window_s),
        "records": reader.records,
        "notifications": len(reader.notifications),
        "duplicates": len(reader.notifications) - len(messages) - len(workmail),
        "skipped": dict(reader.skipped),
        "dead_letters": dict(reader.dead),
    }
