"""Seeded synthetic archive of Amazon SES inbound-mail ("Received") notifications.

`generate_archive` writes files that look like what accumulates in S3 when SES receipt
notifications are archived through the usual routes (SNS HTTP/SQS envelopes, raw delivery,
Firehose, Lambda events, WorkMail flows), mixed with the noise a reader must skip (sending
events, SNS control messages, setup notifications, unrelated traffic) and, on request,
undecodable records. It returns a manifest holding the ground truth. Only `random.Random(seed)`
is used and gzip headers carry no name or mtime, so equal arguments give byte-identical files.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import uuid
from bisect import bisect
from collections import Counter
from datetime import datetime, timedelta, timezone
from itertools import accumulate

import orjson

ALL_FORMATS = ("sns_ndjson", "sns_ndjson_gz", "json_array", "firehose_concat_gz",
               "lambda_events", "sqs_lambda_events", "raw_ndjson", "workmail")
SKIP_REASONS = ("sending_event", "subscription_succeeded", "sns_control", "plain_text",
                "setup_notification", "not_ses")
DEAD_KINDS = ("invalid_json", "invalid_notification")

_ENVELOPED = ("sns_ndjson", "sns_ndjson_gz", "sqs_lambda_events", "workmail")
_BARE = ("json_array", "firehose_concat_gz", "raw_ndjson")
_NDJSON = ("sns_ndjson", "sns_ndjson_gz", "sqs_lambda_events", "raw_ndjson", "workmail")
_AUTH_RESULT = {"PASS": "pass", "FAIL": "fail", "GRAY": "none", "PROCESSING_FAILED": "temperror"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_REGION, _ACCOUNT = "us-east-1", "123456789012"
_ARN = f"arn:aws:sns:{_REGION}:{_ACCOUNT}:"
SNS_TOPIC, S3_TOPIC = _ARN + "ses-inbound-mail", _ARN + "ses-inbound-s3"
EVENTS_TOPIC, WORKMAIL_TOPIC = _ARN + "ses-sending-events", _ARN + "workmail-inbound-flow"
_LAMBDA_ARN = f"arn:aws:lambda:{_REGION}:{_ACCOUNT}:function:ses-inbound-handler"
_QUEUE_ARN = f"arn:aws:sqs:{_REGION}:{_ACCOUNT}:ses-inbound-queue"
_CERT_URL = f"https://sns.{_REGION}.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
_RECEIPT_SUBJECT = "Amazon SES Email Receipt Notification"
_EVENT_SUBJECT = "Amazon SES Email Event Notification"
_SETUP_ID = "AMAZON_SES_SETUP_NOTIFICATION"
_DAYS, _MONTHS = "Mon Tue Wed Thu Fri Sat Sun".split(), "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_KNOWN_DOMAINS = ("example.org", "example.net", "example.com", "news.example.com", "mail.example.co.uk",
                  "shop.example.de", "example.io", "billing.example.net", "updates.example.org",
                  "example.fr", "notifications.example.app", "example.edu", "lists.example.org")
_RECEIVING = (("inbound.example.com", 50), ("mail.example.net", 25), ("support.example.io", 12),
              ("relay.example.org", 8), ("mx.example.co", 5))
_FIRST = "alice bob carol dave erin frank grace heidi ivan judy mallory oscar peggy trent victor walter".split()
_ROLES = "info support billing sales hello team orders noreply news alerts jobs admin".split()
_NAMES = ("Example News", "Jane Roe", "Billing Team", "Customer Care", "Acme Store", "Mario Rossi",
          "The Service", "Security Alerts", "Weekly Digest", "Dr. Ada Lovelace")
_INTL = ("Zoë Müller", "Łukasz Wąs", "山田太郎", "Renée Faßbender", "Ελένη Παππά")
_TOPICS = ("quarterly report", "team offsite", "your account", "meeting notes", "project Falcon",
           "password reset", "invoice question", "delivery update", "lunch on Friday", "API limits")
_SUBJECTS = ("Your order #{n} has shipped", "Invoice {n} is available", "Re: {t}", "Fwd: {t}", "RE: {t}",
             "[ticket-{n}] {t}", "Weekly digest #{n}", "Bestätigung Ihrer Bestellung {n}",
             "Votre facture n°{n}", "🎉 Sale ends tonight – {n}% off", "Action required: {t}",
             "Reminder: {t}", "{t}", "")


def _iso(ms: int, millis: bool = True) -> str:
    s = (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{s}.{ms % 1000:03d}Z" if millis else s + "Z"


class _Gen:
    """Random value factory plus the per-format buckets of placed records."""

    def __init__(self, rng: random.Random, formats, files_per_format: int, t0: int, span: int):
        self.rng, self.formats, self.nfiles, self.t0, self.span = rng, formats, files_per_format, t0, span
        self.buckets = {f: [[] for _ in range(files_per_format)] for f in formats}
        self.bad_lines: list[bytes] = []
        self.counts, self.seq, self.ids = Counter(), 0, set()
        names = list(_KNOWN_DOMAINS) + [f"{rng.choice(('mailer', 'news', 'mail', 'em', 'bounce'))}-{i:03d}."
                                        f"{rng.choice(('example.com', 'example.net', 'example.org'))}"
                                        for i in range(287)]
        rng.shuffle(names)
        spammy = set(rng.sample(range(5, len(names)), 10)) | {2}
        self.domains = [(d, i in spammy, rng.choice(("none", "quarantine", "reject"))) for i, d in enumerate(names)]
        self.dom_cum = list(accumulate(1 / (r + 1) ** 1.1 for r in range(len(names))))

    # -- small random values ----------------------------------------------------------------
    def hexs(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.rng.getrandbits(8 * nbytes).to_bytes(nbytes, "big")).decode()

    def ses_id(self) -> str:
        while True:
            mid = "".join(self.rng.choices("0123456789abcdefghijklmnopqrstuv", k=self.rng.choice((28, 40))))
            if mid not in self.ids:
                self.ids.add(mid)
                return mid

    def status(self, fail: float, gray: float, pf: float = 0.003) -> str:
        r = self.rng.random()
        return "FAIL" if r < fail else "GRAY" if r < fail + gray else \
            "PROCESSING_FAILED" if r < fail + gray + pf else "PASS"

    def rfc5322(self, ms: int, utc: bool = False) -> str:
        off = 0 if utc else self.rng.choice((0, 0, -300, -420, -240, 60, 120, 330, 480))
        d = _EPOCH + timedelta(milliseconds=ms, minutes=off)
        day = str(d.day) if self.rng.random() < 0.5 else f"{d.day:02d}"
        sign, off = ("-", -off) if off < 0 else ("+", off)
        return f"{_DAYS[d.weekday()]}, {day} {_MONTHS[d.month - 1]} {d:%Y %H:%M:%S} {sign}{off // 60:02d}{off % 60:02d}"

    def rcpt(self) -> str:
        dom = self.rng.choices([d for d, _ in _RECEIVING], [w for _, w in _RECEIVING])[0]
        local = self.rng.choice(_FIRST + _ROLES) + (str(self.rng.randrange(100)) if self.rng.random() < 0.2 else "")
        return f"{local}@{dom}"

    # -- the SES message ----------------------------------------------------------------------
    def sender(self):
        """Return (From header value or None, envelope MAIL FROM, sender domain, spammy)."""
        rng = self.rng
        dom, spammy, policy = self.domains[bisect(self.dom_cum, rng.random() * self.dom_cum[-1])]
        local = rng.choice(_ROLES + _FIRST)
        addr, name, r = f"{local}@{dom}", rng.choice(_NAMES), rng.random()
        frm = (addr if r < 0.30 else f"{name} <{addr}>" if r < 0.65 else
               f'"{rng.choice(("Doe, John", "Roe, Jane", "Support, Example"))}" <{addr}>' if r < 0.73 else
               f"Norton I., Emperor <{addr}>" if r < 0.76 else
               f"=?UTF-8?B?{base64.b64encode(rng.choice(_INTL).encode()).decode()}?= <{addr}>" if r < 0.84 else
               f"{name} <{local}@{dom.upper()}>" if r < 0.89 else f"{name} <{addr}.>" if r < 0.91 else
               f"{name} <{addr}>")
        r = rng.random()
        source = (addr if r < 0.70 else f"bounces+{rng.randrange(10**6)}@sendgrid.example.net" if r < 0.78 else
                  f"0100018e{self.hexs(8)}-{self.uid()}-000000@amazonses.com" if r < 0.86 else
                  f"SRS0={self.hexs(4)}={rng.choice('ABCDEFGH')}{rng.randrange(10)}={dom}={local}@fwd.example.net"
                  if r < 0.92 else f"prvs={self.hexs(9)}={addr}")
        return (None if rng.random() < 0.01 else frm), source, dom, spammy, policy

    def message(self, ms: int) -> dict:
        """Build one distinct SES message: mail object, receipt fields, raw MIME for `content`."""
        rng, mid = self.rng, self.ses_id()
        frm, source, dom, spammy, policy = self.sender()
        rcpts = list(dict.fromkeys(self.rcpt() for _ in range(rng.choices((1, 2, 3, 4, 5), (70, 15, 8, 4, 3))[0])))
        dest = rcpts if rng.random() < 0.8 else rcpts[:1] + [self.rcpt()]
        v = {"spamVerdict": self.status(0.7 if spammy else 0.01, 0.05 if spammy else 0.02),
             "virusVerdict": self.status(0.05 if spammy else 0.002, 0.002, 0.001),
             "spfVerdict": self.status(0.5 if spammy else 0.02, 0.03),
             "dkimVerdict": self.status(0.55 if spammy else 0.02, 0.05),
             "dmarcVerdict": self.status(0.6 if spammy else 0.02, 0.04)}
        v = {k: {"status": s} for k, s in v.items()}
        if rng.random() < 0.003:
            v["spamVerdict"] = v["virusVerdict"] = {"status": "DISABLED"}
        if rng.random() < 0.03:
            del v["dmarcVerdict"]
        elif v["dmarcVerdict"]["status"] == "FAIL":
            v["dmarcPolicy"] = {"status": policy} if rng.random() < 0.1 else policy
        ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        helo, subject = f"mta{rng.randrange(1, 40)}.{dom}", rng.choice(_SUBJECTS).format(
            n=rng.randrange(10, 99999), t=rng.choice(_TOPICS))
        date, msgid = self.rfc5322(ms - rng.randrange(200, 5000)), f"<{self.hexs(24)}@{helo}>"
        st = {k: _AUTH_RESULT.get(s["status"], "none") for k, s in v.items() if k != "dmarcPolicy"}
        cc = dest[1:] if len(dest) > 1 and rng.random() < 0.5 else []
        to = dest[: len(dest) - len(cc)]
        hdr = [("Return-Path", f"<{source}>"),
               ("Received", f"from {helo} ({helo} [{ip}]) by inbound-smtp.{_REGION}.amazonaws.com with SMTP id "
                            f"{mid} for {rcpts[0]}; {self.rfc5322(ms, True)} (UTC)"),
               ("X-SES-Spam-Verdict", v["spamVerdict"]["status"]), ("X-SES-Virus-Verdict", v["virusVerdict"]["status"]),
               ("Received-SPF", f"{st['spfVerdict']} (spfCheck: domain of {source.rsplit('@', 1)[1]} designates {ip} "
                                f"as permitted sender) client-ip={ip}; envelope-from={source}; helo={helo};"),
               ("Authentication-Results", f"amazonses.com; spf={st['spfVerdict']} smtp.mailfrom={source}; dkim="
                                          f"{st['dkimVerdict']} header.i=@{dom}; dmarc={st.get('dmarcVerdict', 'none')}"
                                          f" header.from={dom};"),
               ("X-SES-RECEIPT", self.b64(90)),
               ("X-SES-DKIM-SIGNATURE", f"a=rsa-sha256; q=dns/txt; b={self.b64(48)}; c=relaxed/simple; "
                                        f"s=ug7nbtf4gccmlpwj322ax3p6ow6yfsug; d=amazonses.com; t={ms // 1000}; v=1;"),
               ("DKIM-Signature", f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={dom}; s=s1; bh={self.b64(32)}"),
               ("MIME-Version", "1.0")]
        hdr += [("From", frm)] if frm is not None else []
        hdr += [("To", ", ".join(to))] + ([("Cc", ", ".join(cc))] if cc else [])
        hdr += [("Subject", subject), ("Date", date), ("Message-ID", msgid),
                ("Content-Type", "text/plain; charset=UTF-8")]
        common = {"returnPath": source}
        common.update({"from": [frm]} if frm is not None else {})
        common.update(date=date, to=to)
        common.update({"cc": cc} if cc else {})
        common.update(messageId=msgid, subject=subject)
        truncated = rng.random() < 0.002
        mail = {"timestamp": _iso(ms, rng.random() >= 0.05), "source": source, "messageId": mid,
                "destination": dest, "headersTruncated": truncated,
                "headers": [{"name": n, "value": x} for n, x in (hdr[:6] if truncated else hdr)],
                "commonHeaders": common}
        mime = "\r\n".join(f"{n}: {x}" for n, x in hdr[-7:]) + f"\r\n\r\nHello,\r\n\r\n{subject}\r\n"
        ptm = int(rng.lognormvariate(6.2, 0.6))
        return {"id": mid, "ms": ms, "mail": mail, "rcpts": rcpts, "verdicts": v, "mime": mime,
                "head": {"timestamp": _iso(ms), "processingTimeMillis": str(ptm) if rng.random() < 0.05 else ptm}}

    def notification(self, msg: dict, kind: str, rcpts=None) -> dict:
        """One SES notification of `msg` for a receipt action of `kind` (SNS, S3 or Lambda)."""
        if kind == "SNS":
            action = {"type": "SNS", "topicArn": SNS_TOPIC, "encoding": "UTF8"}
        elif kind == "S3":
            action = {"type": "S3", "topicArn": S3_TOPIC, "bucketName": "inbound-mail",
                      "objectKey": f"inbox/{msg['mail']['messageId']}", "objectKeyPrefix": "inbox"}
        else:
            action = {"type": "Lambda", "functionArn": _LAMBDA_ARN, "invocationType": "Event"}
        receipt = {**msg["head"], "recipients": rcpts or msg["rcpts"], **msg["verdicts"], "action": action}
        if kind == "Lambda":
            return {"mail": msg["mail"], "receipt": receipt}
        note = {"notificationType": "Received", "mail": msg["mail"], "receipt": receipt}
        if kind == "SNS":
            note["content"] = msg["mime"]
        return note

    # -- wrapping and placement ---------------------------------------------------------------
    def envelope(self, message: str, topic: str, ms: int, subject=_RECEIPT_SUBJECT, type_="Notification") -> dict:
        env = {"Type": type_, "MessageId": self.uid(), "TopicArn": topic}
        env.update({"Subject": subject} if subject else {})
        env.update(Message=message, Timestamp=_iso(ms), SignatureVersion="1", Signature=self.b64(256),
                   SigningCertURL=_CERT_URL)
        if type_ == "Notification":
            env["UnsubscribeURL"] = (f"https://sns.{_REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
                                     f"{topic}:{uuid.uuid5(uuid.NAMESPACE_URL, topic)}")
        else:
            env["SubscribeURL"] = f"https://sns.{_REGION}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}"
            env["Token"] = self.hexs(128)
        return env

    def sqs_record(self, body: str, ms: int) -> dict:
        sent = ms + self.rng.randrange(5, 80)
        return {"messageId": self.uid(), "receiptHandle": "AQEB" + self.b64(120), "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(sent),
                               "SenderId": "AIDAIT2UOQQY3AUEKVGXU",
                               "ApproximateFirstReceiveTimestamp": str(sent + self.rng.randrange(1, 400))},
                "messageAttributes": {}, "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs", "eventSourceARN": _QUEUE_ARN, "awsRegion": _REGION}

    def wrap(self, fmt: str, payload, ms: int, topic=SNS_TOPIC, subject=_RECEIPT_SUBJECT, env=None):
        """Turn a payload (dict, plain text, or a ready SNS envelope `env`) into one item of `fmt`."""
        if fmt == "lambda_events":
            return {"eventSource": "aws:ses", "eventVersion": "1.0", "ses": payload}
        if fmt in _BARE:
            return payload
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        if fmt == "sqs_lambda_events" and env is None and not isinstance(payload, str) and self.rng.random() < 0.5:
            return self.sqs_record(text, ms)  # raw message delivery
        env = env or self.envelope(text, topic, ms, subject)
        if fmt == "sqs_lambda_events":
            return self.sqs_record(json.dumps(env, indent=2, separators=(",", " : "), ensure_ascii=False), ms)
        return env

    def put(self, fmt: str, item, ms: int, category, file_idx=None) -> int:
        """Place `item` in a file of `fmt` (chosen by time unless given) and count it."""
        if file_idx is None:
            file_idx = min(self.nfiles - 1, max(0, (ms - self.t0) * self.nfiles // self.span))
        self.seq += 1
        self.buckets[fmt][file_idx].append((ms, self.seq, item))
        self.counts[category] += 1
        return file_idx

    def redeliver(self, fmt: str, item, ms: int, file_idx: int) -> None:
        """At-least-once delivery: the same notification again, in this file or a later one."""
        if fmt == "sqs_lambda_events":  # an SNS retry reaches SQS as a new SQS message
            item = self.sqs_record(item["body"], ms)
        self.put(fmt, item, ms, "duplicate", self.rng.randrange(file_idx, self.nfiles))

    # -- records that are not receipt notifications ---------------------------------------------
    def workmail_event(self) -> dict:
        rng = self.rng
        ev = {"summaryVersion": rng.choice(("2018-10-10", "2019-07-28")),
              "envelope": {"mailFrom": {"address": self.sender()[1]},
                           "recipients": [{"address": f"{n}@corp.example.com"}
                                          for n in rng.sample(_FIRST, rng.choice((1, 1, 1, 2, 3)))]}}
        if rng.random() < 0.05:
            ev["sender"] = {"address": f"{rng.choice(_ROLES)}@{self.sender()[2]}"}
        ev.update(subject=rng.choice(_SUBJECTS).format(n=rng.randrange(10, 9999), t=rng.choice(_TOPICS))[:256],
                  messageId=self.uid(), invocationId=self.hexs(40), flowDirection="INBOUND", truncated=False)
        return ev

    def sending_event(self, kind: str, ms: int) -> dict:
        """An SES sending-side record: identity notification (Bounce/Complaint/Delivery) or event."""
        rcpt, t = f"{self.rng.choice(_FIRST)}@example.com", _iso(ms + self.rng.randrange(500, 5000))
        mail = {"timestamp": _iso(ms), "source": "notifications@inbound.example.com",
                "sourceArn": f"arn:aws:ses:{_REGION}:{_ACCOUNT}:identity/inbound.example.com",
                "sendingAccountId": _ACCOUNT, "messageId": f"0100018e{self.hexs(8)}-{self.uid()}-000000",
                "destination": [rcpt]}
        body = {"Bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                           "bouncedRecipients": [{"emailAddress": rcpt, "action": "failed", "status": "5.1.1",
                                                  "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                           "timestamp": t, "feedbackId": f"0100018e{self.hexs(8)}-{self.uid()}-000000",
                           "reportingMTA": "dsn; a8-12.smtp-out.amazonses.com"},
                "Complaint": {"complainedRecipients": [{"emailAddress": rcpt}], "timestamp": t,
                              "feedbackId": f"0100018e{self.hexs(8)}-{self.uid()}-000000",
                              "complaintFeedbackType": "abuse"},
                "Delivery": {"timestamp": t, "processingTimeMillis": 812, "recipients": [rcpt],
                             "smtpResponse": "250 2.6.0 Message received",
                             "reportingMTA": "a8-70.smtp-out.amazonses.com", "remoteMtaIp": "203.0.113.7"},
                "Send": {},
                "Open": {"ipAddress": "198.51.100.4", "timestamp": t, "userAgent": "Mozilla/5.0"}}[kind]
        if kind in ("Send", "Open"):
            return {"eventType": kind, "mail": {**mail, "tags": {"ses:configuration-set": ["outbound"]}},
                    kind.lower(): body}
        return {"notificationType": kind, kind.lower(): body, "mail": mail}

    def setup_notification(self, ms: int) -> dict:
        ts = _iso(ms)
        return {"notificationType": "Received",
                "receipt": {"timestamp": ts, "processingTimeMillis": 0, "recipients": [],
                            "action": {"type": "S3", "topicArn": S3_TOPIC, "bucketName": "inbound-mail",
                                       "objectKey": f"inbox/{_SETUP_ID}", "objectKeyPrefix": "inbox"}},
                "mail": {"timestamp": ts, "source": "", "messageId": _SETUP_ID, "destination": [],
                         "headersTruncated": False, "headers": [], "commonHeaders": {}}}

    # -- writing ------------------------------------------------------------------------------
    def write(self, out: str) -> tuple[list[str], int]:
        """Write every bucket to `out`; returns (relative paths, number of records written)."""
        rng, jobs, written = self.rng, [], 0
        for fmt in self.formats:
            for idx, bucket in enumerate(self.buckets[fmt]):
                if bucket:
                    bucket.sort(key=lambda e: e[:2])
                    items = [e[2] for e in bucket]
                    written += len(items)
                    jobs.append([fmt, idx, bucket[0][0], self.lines(fmt, items) if fmt in _NDJSON else items])
        for fmt, line in self.bad_lines:
            cands = [j for j in jobs if j[0] == fmt and len(j[3]) >= 2] or \
                    [j for j in jobs if j[0] in _NDJSON and len(j[3]) >= 2]
            if cands:
                lines = rng.choice(cands)[3]
                lines.insert(rng.randint(1, len(lines) - 1), (line, True))
                self.counts["dead", "invalid_json"] += 1
                written += 1
        paths = []
        for fmt, idx, ms, data in jobs:
            d = _EPOCH + timedelta(milliseconds=ms)
            rel, blob = getattr(self, "w_" + fmt)(data, idx, d)
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            with open(os.path.join(out, rel), "wb") as fh:
                fh.write(blob)
            paths.append(rel)
        return sorted(paths), written

    def lines(self, fmt: str, items: list) -> list:
        if fmt != "sqs_lambda_events":
            return [(orjson.dumps(it), False) for it in items]
        out, i = [], 0
        while i < len(items):
            n = self.rng.choices((1, 2, 3), (6, 3, 1))[0]
            out.append((orjson.dumps({"Records": items[i:i + n]}), False))
            i += n
        return out

    def _gz(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=6, mtime=0)

    def w_sns_ndjson(self, lines, idx, d):
        crlf = idx % 2 == 1 or self.nfiles == 1
        raw = [ln for ln, _ in lines]
        if crlf:
            for _ in range(1 + len(raw) // 40):
                raw.insert(self.rng.randint(1, max(1, len(raw) - 1)), b"")
        eol = b"\r\n" if crlf else b"\n"
        return f"sns/{d:%Y/%m/%d}/receipts-{idx:02d}.ndjson", (b"\xef\xbb\xbf" if idx == 0 else b"") + \
            eol.join(raw) + eol

    def w_sns_ndjson_gz(self, lines, idx, d):
        raw = [ln for ln, _ in lines]
        blob = self._gz(b"\n".join(raw) + b"\n")
        if idx == 0 and len(lines) >= 2:  # two gzip members, never splitting after a bad line
            k = next(k for k in sorted(range(1, len(lines)), key=lambda k: abs(2 * k - len(lines)))
                     if not lines[k - 1][1])
            blob = self._gz(b"\n".join(raw[:k]) + b"\n") + self._gz(b"\n".join(raw[k:]) + b"\n")
        plain = idx == self.nfiles - 1 and (idx > 0 or self.nfiles == 1)
        return f"sns-gz/{d:%Y/%m/%d}/receipts-{idx:02d}.json{'' if plain else '.gz'}", blob

    def w_json_array(self, items, idx, d):
        return f"array/{d:%Y/%m/%d}/receipts-{idx:02d}.json", orjson.dumps(items, option=orjson.OPT_INDENT_2) + b"\n"

    def w_firehose_concat_gz(self, items, idx, d):
        data = b"".join(orjson.dumps(it) + (b"\n" if "eventType" in it else b"") for it in items)
        return f"firehose/{d:%Y/%m/%d/%H}/ses-receipts-1-{d:%Y-%m-%d-%H-%M-%S}-{self.uid()}", self._gz(data)

    def w_lambda_events(self, items, idx, d):
        events, i = [], 0
        while i < len(items):
            n = self.rng.choices((1, 2, 3), (6, 3, 1))[0]
            events.append(orjson.dumps({"Records": items[i:i + n]}, option=orjson.OPT_INDENT_2))
            i += n
        return f"lambda/{d:%Y/%m/%d}/events-{idx:02d}.json", b"\n".join(events) + b"\n"

    @staticmethod
    def _ndjson(rel: str, lines) -> tuple[str, bytes]:
        return rel, b"\n".join(ln for ln, _ in lines) + b"\n"

    def w_sqs_lambda_events(self, lines, idx, d):
        return self._ndjson(f"sqs/{d:%Y/%m/%d}/batch-{idx:02d}.ndjson", lines)

    def w_raw_ndjson(self, lines, idx, d):
        return self._ndjson(f"raw/{d:%Y/%m/%d}/receipts-{idx:02d}.jsonl", lines)

    def w_workmail(self, lines, idx, d):
        return self._ndjson(f"workmail/{d:%Y/%m/%d}/flow-{idx:02d}.ndjson", lines)


def _emit_message(g: _Gen, ms: int, fmts: list, duplicate_rate: float) -> None:
    """Place one distinct receipt message and, with probability `duplicate_rate`, one extra copy."""
    rng, msg = g.rng, g.message(ms)
    fmt = rng.choice(fmts)
    kind = "Lambda" if fmt == "lambda_events" else "SNS" if rng.random() < 0.65 else "S3"
    at = ms + int(msg["head"]["processingTimeMillis"]) + rng.randrange(50, 900)
    item = g.wrap(fmt, g.notification(msg, kind), at, SNS_TOPIC if kind == "SNS" else S3_TOPIC)
    idx = g.put(fmt, item, at, "receipt")
    if rng.random() >= duplicate_rate:
        return
    others = [f for f in fmts if f != "lambda_events"]
    if rng.random() < 0.5 or not others:  # (a) identical redelivery, e.g. SNS retry
        g.redeliver(fmt, item, at + rng.randrange(1_000, 600_000), idx)
        return
    kind2 = "S3" if kind == "SNS" else "SNS"  # (b) same mail, notification of a second rule action
    rcpts = [r for r in msg["rcpts"] if rng.random() < 0.7] or msg["rcpts"][:1]
    fmt2, at2 = rng.choice(others), at + rng.randrange(5, 2_000)
    g.put(fmt2, g.wrap(fmt2, g.notification(msg, kind2, rcpts), at2, SNS_TOPIC if kind2 == "SNS" else S3_TOPIC),
          at2, "duplicate")


def _emit_noise(g: _Gen, n: int) -> None:
    """Place `n` (at least) records of every skip reason wherever such records can occur."""
    rng, every = g.rng, [f for f in ALL_FORMATS if f != "lambda_events"]

    def place(reason, allowed, payload=None, topic=SNS_TOPIC, subject=None, env=None):
        fmts = [f for f in allowed if f in g.formats]
        if fmts:
            fmt, ms = rng.choice(fmts), g.t0 + rng.randrange(g.span)
            g.put(fmt, g.wrap(fmt, payload, ms, topic, subject, env and env(ms)), ms, ("skip", reason))

    for i in range(max(5, n)):
        kind = ("Bounce", "Complaint", "Delivery", "Send", "Open")[i % 5]
        ev = g.sending_event(kind, g.t0 + rng.randrange(g.span))
        if kind in ("Send", "Open") and rng.random() < 0.5:
            place("sending_event", _BARE, ev)
        elif kind in ("Send", "Open"):
            place("sending_event", _ENVELOPED, orjson.dumps(ev).decode() + "\n", EVENTS_TOPIC, _EVENT_SUBJECT)
        else:
            place("sending_event", _ENVELOPED, ev, EVENTS_TOPIC)
    for i in range(n):
        place("subscription_succeeded", every, {
            "notificationType": "AmazonSnsSubscriptionSucceeded",
            "message": f"You have successfully subscribed your Amazon SNS topic '{EVENTS_TOPIC}' to receive "
                       "'Bounce' notifications from Amazon SES for identity 'inbound.example.com'."})
        type_ = "SubscriptionConfirmation" if i % 3 else "UnsubscribeConfirmation"
        place("sns_control", _ENVELOPED, env=lambda ms, t=type_: g.envelope(
            f"You have chosen to subscribe to the topic {SNS_TOPIC}.\nTo confirm the subscription, visit the "
            "SubscribeURL included in this message.", SNS_TOPIC, ms, None, t))
        place("plain_text", _ENVELOPED, "Successfully validated SNS topic for Amazon SES event publishing.",
              EVENTS_TOPIC)
        place("setup_notification", [f for f in every if f != "workmail"],
              g.setup_notification(g.t0 + rng.randrange(g.span)), S3_TOPIC, _RECEIPT_SUBJECT)
        place("not_ses", _ENVELOPED if set(_ENVELOPED) & set(g.formats) else _BARE,
              {"message": "hello world", "username": rng.choice(_FIRST)})


def _emit_bad(g: _Gen, count: int) -> None:
    """Queue `count` undecodable units: cut/garbage NDJSON lines and receipts with a bad mail.timestamp."""
    rng, ndjson = g.rng, [f for f in _NDJSON if f in g.formats]
    for i in range(count):
        kind, ms = i % 4 if ndjson else 2 + i % 2, g.t0 + rng.randrange(g.span)
        if kind == 1:
            junk = bytes(b for b in rng.randbytes(rng.randrange(20, 120)) if b not in b"\r\n")
            g.bad_lines.append((rng.choice(ndjson), b"\x80\xffgarbage " + junk))
            continue
        fmt = rng.choice(ndjson if kind == 0 else list(g.formats))
        note = g.notification(g.message(ms), "Lambda" if fmt == "lambda_events" else "S3")
        if kind == 0:
            item = g.wrap(fmt, note, ms, S3_TOPIC)
            line = orjson.dumps({"Records": [item]} if fmt == "sqs_lambda_events" else item)
            g.bad_lines.append((fmt, line[: rng.randrange(len(line) // 4, 3 * len(line) // 4)]))
            continue
        note["mail"] = dict(note["mail"])
        if kind == 2:
            del note["mail"]["timestamp"]
        else:
            note["mail"]["timestamp"] = "not a date"
        g.put(fmt, g.wrap(fmt, note, ms, S3_TOPIC), ms, ("dead", "invalid_notification"))


def generate_archive(output_dir: str, *, events: int = 10_000, seed: int = 0, days: int = 7,
                     start: str = "2024-03-01", duplicate_rate: float = 0.03,
                     bad_records: int = 0, formats: tuple[str, ...] = ALL_FORMATS,
                     files_per_format: int = 2) -> dict:
    """Write a reproducible synthetic archive of SES notifications under `output_dir`.

    `events` distinct SES receipt messages are spread uniformly over `days` days from `start`
    (00:00 UTC) and over `files_per_format` files of each container format in `formats`
    (see `ALL_FORMATS`); "workmail" adds max(2, events // 50) WorkMail flow events. About
    `duplicate_rate` of the messages get a second notification, a few records of every skip
    reason are always added, and `bad_records` undecodable units are added on request.

    Returns the JSON-serialisable manifest: seed, events, files (paths relative to
    `output_dir`), records, receipt_messages, workmail_messages, messages, duplicates,
    skipped {reason: n}, dead_letters {kind: n} and per_day {YYYY-MM-DD: distinct messages}.
    """
    formats = tuple(dict.fromkeys(formats))
    if not formats or set(formats) - set(ALL_FORMATS):
        raise ValueError(f"formats must be a non-empty subset of {ALL_FORMATS}")
    if events < 0 or days < 1 or files_per_format < 1 or bad_records < 0:
        raise ValueError("events/bad_records must be >= 0, days/files_per_format >= 1")
    receipt_fmts = [f for f in formats if f != "workmail"]
    if events and not receipt_fmts:
        raise ValueError("receipt events need at least one format other than 'workmail'")
    rng = random.Random(seed)
    t0 = (datetime.fromisoformat(start).replace(tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
    g = _Gen(rng, formats, files_per_format, t0, days * 86_400_000)
    per_day = Counter()
    for ms in sorted(t0 + rng.randrange(g.span) for _ in range(events)):
        _emit_message(g, ms, receipt_fmts, duplicate_rate)
        per_day[_iso(ms)[:10]] += 1
    if "workmail" in formats:
        for ms in sorted(t0 + rng.randrange(g.span) for _ in range(max(2, events // 50))):
            g.put("workmail", g.envelope(orjson.dumps(g.workmail_event()).decode(), WORKMAIL_TOPIC, ms, None),
                  ms, "workmail")
            per_day[_iso(ms)[:10]] += 1
    _emit_noise(g, max(2, events // 4000))
    _emit_bad(g, bad_records)
    files, records = g.write(output_dir)
    c = g.counts
    skipped = {r: c["skip", r] for r in SKIP_REASONS}
    dead = {k: c["dead", k] for k in DEAD_KINDS}
    messages = c["receipt"] + c["workmail"]
    assert c["receipt"] == events and messages == sum(per_day.values())
    assert records == messages + c["duplicate"] + sum(skipped.values()) + sum(dead.values())
    return {"seed": seed, "events": events, "files": files, "records": records,
            "receipt_messages": c["receipt"], "workmail_messages": c["workmail"], "messages": messages,
            "duplicates": c["duplicate"], "skipped": skipped, "dead_letters": dead,
            "per_day": dict(sorted(per_day.items()))}
