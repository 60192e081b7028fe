"""Seeded synthetic archive of Amazon SES inbound-mail ("Received") notifications.

`generate_archive` writes files shaped like what piles up in S3 when SES receipt notifications
are archived through the usual routes (SNS HTTP/SQS envelopes, raw delivery, Firehose, Lambda
events, WorkMail flows), mixed with records a reader must skip (sending events, SNS control
messages, setup notifications, unrelated traffic) and, on request, undecodable records. It
returns a manifest with the ground truth. Only `random.Random(seed)` drives the content and gzip
headers carry no name or mtime, so equal arguments give byte-identical files. Records are
serialised as they are placed and spilled to a scratch directory inside `output_dir`, so
memory stays bounded by one output file (plus 8 bytes per event for the sorted times).

`generate_benchmark_archive` writes the large, uniform data set of the benchmarks: only SES
receipt notifications (with duplicates), in one layout (SNS envelopes, SES Lambda events or a
Firehose concatenation), gzipped, many files, generated file by file in parallel processes.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
import time
import uuid
from bisect import bisect
from collections import Counter
from datetime import datetime, timedelta, timezone
from itertools import accumulate

import numpy as np
import orjson

ALL_FORMATS = ("sns_ndjson", "sns_ndjson_gz", "json_array", "firehose_concat_gz",
               "lambda_events", "sqs_lambda_events", "raw_ndjson", "workmail")
SKIP_REASONS = ("sending_event", "subscription_succeeded", "sns_control", "plain_text",
                "setup_notification", "not_ses")
DEAD_KINDS = ("invalid_json", "invalid_notification")

_ENVELOPED = ("sns_ndjson", "sns_ndjson_gz", "sqs_lambda_events", "workmail")
_BARE = ("json_array", "firehose_concat_gz", "raw_ndjson")
_NDJSON = ("sns_ndjson", "sns_ndjson_gz", "sqs_lambda_events", "raw_ndjson", "workmail")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_REGION, _ACCOUNT = "us-east-1", "123456789012"
_SNS_HOST = f"https://sns.{_REGION}.amazonaws.com"
_ARN = f"arn:aws:sns:{_REGION}:{_ACCOUNT}:"
SNS_TOPIC, S3_TOPIC = _ARN + "ses-inbound-mail", _ARN + "ses-inbound-s3"
EVENTS_TOPIC, WORKMAIL_TOPIC = _ARN + "ses-sending-events", _ARN + "workmail-inbound-flow"
_LAMBDA_ARN = f"arn:aws:lambda:{_REGION}:{_ACCOUNT}:function:ses-inbound-handler"
_QUEUE_ARN = f"arn:aws:sqs:{_REGION}:{_ACCOUNT}:ses-inbound-queue"
_CERT_URL = f"{_SNS_HOST}/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
_RECEIPT_SUBJECT = "Amazon SES Email Receipt Notification"
_EVENT_SUBJECT = "Amazon SES Email Event Notification"
_SETUP_ID = "AMAZON_SES_SETUP_NOTIFICATION"
_AUTH = {"PASS": "pass", "FAIL": "fail", "GRAY": "none", "PROCESSING_FAILED": "temperror"}
_WDAY = "Mon Tue Wed Thu Fri Sat Sun".split()
_MONTH = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_KNOWN_DOMAINS = ("example.org", "example.net", "example.com", "news.example.com",
                  "mail.example.co.uk", "shop.example.de", "example.io", "billing.example.net",
                  "updates.example.org", "example.fr", "notifications.example.app", "example.edu")
_RECEIVING = ("inbound.example.com", "mail.example.net", "support.example.io",
              "relay.example.org", "mx.example.co")
_FIRST = "alice bob carol dave erin frank grace heidi ivan judy oscar peggy trent walter".split()
_ROLES = "info support billing sales hello team orders noreply news alerts jobs admin".split()
_NAMES = ("Example News", "Jane Roe", "Billing Team", "Customer Care", "Acme Store",
          "Mario Rossi", "The Service", "Security Alerts", "Weekly Digest", "Dr. Ada Lovelace")
_QUOTED = ('"Doe, John"', '"Roe, Jane"', '"Support, Example"', "Norton I., Emperor")
_INTL = ("Zoë Müller", "Łukasz Wąs", "山田太郎", "Renée Faßbender", "Ελένη Παππά")
_TOPICS = ("quarterly report", "team offsite", "your account", "meeting notes", "API limits",
           "password reset", "invoice question", "delivery update", "lunch on Friday")
_SUBJECTS = ("Your order #{n} has shipped", "Invoice {n} is available", "Re: {t}", "Fwd: {t}",
             "RE: {t}", "[ticket-{n}] {t}", "Weekly digest #{n}", "Votre facture n°{n}",
             "Bestätigung Ihrer Bestellung {n}", "🎉 Sale ends tonight – {n}% off",
             "Action required: {t}", "Reminder: {t}", "{t}")


def _iso(ms: int, millis: bool = True) -> str:
    s = (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{s}.{ms % 1000:03d}Z" if millis else s + "Z"


class _Spill:
    """Serialised records by bucket, buffered in memory and appended to one scratch file per
    bucket under `root`; each record is framed as (ms, seq, length) + bytes."""

    _HEAD = struct.Struct("<qqI")
    _FLUSH_ONE, _FLUSH_ALL = 1 << 20, 32 << 20

    def __init__(self, root: str):
        self.root, self.buffers, self.buffered = root, {}, 0
        self.count: Counter = Counter()
        self.first_ms: dict = {}
        self.names: dict = {}

    def add(self, key, ms: int, seq: int, data: bytes) -> None:
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = bytearray()
        buf += self._HEAD.pack(ms, seq, len(data))
        buf += data
        self.buffered += self._HEAD.size + len(data)
        self.count[key] += 1
        if ms < self.first_ms.get(key, ms + 1):
            self.first_ms[key] = ms
        if len(buf) >= self._FLUSH_ONE:
            self._flush(key)
        if self.buffered >= self._FLUSH_ALL:
            for k in list(self.buffers):
                self._flush(k)

    def _path(self, key) -> str:
        if key not in self.names:
            self.names[key] = os.path.join(self.root, f"{len(self.names)}.bin")
        return self.names[key]

    def _flush(self, key) -> None:
        buf = self.buffers.pop(key, None)
        if buf:
            with open(self._path(key), "ab") as fh:
                fh.write(buf)
            self.buffered -= len(buf)

    def read(self, key) -> list[tuple[int, int, bytes]]:
        """Every record of `key` as (ms, seq, bytes), in placement order."""
        self._flush(key)
        with open(self._path(key), "rb") as fh:
            blob = fh.read()
        out, pos, head = [], 0, self._HEAD
        while pos < len(blob):
            ms, seq, n = head.unpack_from(blob, pos)
            pos += head.size
            out.append((ms, seq, blob[pos:pos + n]))
            pos += n
        return out


class _Job:
    """One output file to write: its bucket and the decisions of the first write pass."""

    def __init__(self, fmt: str, idx: int, ms: int, sizes, nlines: int):
        self.fmt, self.idx, self.ms, self.sizes, self.nlines = fmt, idx, ms, sizes, nlines
        self.inserts: list[tuple[int, bytes]] = []  # (position, bad line), applied in order


class _Gen:
    """Random value factory plus the per-format, per-file buckets of placed records."""

    def __init__(self, rng: random.Random, formats, nfiles: int, t0: int, span: int):
        self.rng, self.formats, self.nfiles, self.t0, self.span = rng, formats, nfiles, t0, span
        self.spill: _Spill | None = None  # placed records, by (format, file); set by the caller
        self.bad_lines: list[tuple[str, bytes]] = []  # (preferred format, line) placed at write
        self.counts, self.seq = Counter(), 0
        names = list(_KNOWN_DOMAINS) + [
            f"{rng.choice(('mailer', 'news', 'mail', 'em'))}-{i:03d}.example."
            f"{rng.choice(('com', 'net', 'org'))}" for i in range(288)]
        rng.shuffle(names)  # list order = Zipf rank; a few spammy domains, one of them popular
        spammy = set(rng.sample(range(5, len(names)), 10)) | {2}
        policy = ("none", "quarantine", "reject")
        self.domains = [(d, i in spammy, rng.choice(policy)) for i, d in enumerate(names)]
        self.dom_cum = list(accumulate(1 / (r + 1) ** 1.1 for r in range(len(names))))

    def hexs(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.rng.randbytes(nbytes)).decode()

    def ses_id(self) -> str:
        """28 or 40 random base-32 characters (140+ bits: collisions are not a concern)."""
        k = self.rng.choice((28, 40))
        return "".join(self.rng.choices("0123456789abcdefghijklmnopqrstuv", k=k))

    def status(self, fail: float, gray: float, failed: float = 0.003) -> str:
        r = self.rng.random()
        return ("FAIL" if r < fail else "GRAY" if r < fail + gray else
                "PROCESSING_FAILED" if r < fail + gray + failed else "PASS")

    def verdicts(self, spammy: bool) -> dict[str, str]:
        """The five verdict statuses of one message, skewed for spammy senders."""
        x = 1 if spammy else 0
        return {"spamVerdict": self.status((0.01, 0.7)[x], 0.02),
                "virusVerdict": self.status((0.002, 0.05)[x], 0.002, 0.001),
                "spfVerdict": self.status((0.02, 0.5)[x], 0.03),
                "dkimVerdict": self.status((0.02, 0.55)[x], 0.05),
                "dmarcVerdict": self.status((0.02, 0.6)[x], 0.04)}

    def rfc5322(self, ms: int, utc: bool = False) -> str:
        off = 0 if utc else self.rng.choice((0, 0, -300, -420, -240, 60, 120, 330, 480))
        d = _EPOCH + timedelta(milliseconds=ms, minutes=off)
        day = str(d.day) if self.rng.random() < 0.5 else f"{d.day:02d}"
        sign, off = ("-", -off) if off < 0 else ("+", off)
        return (f"{_WDAY[d.weekday()]}, {day} {_MONTH[d.month - 1]} {d:%Y %H:%M:%S} "
                f"{sign}{off // 60:02d}{off % 60:02d}")

    def rcpt(self) -> str:
        dom = self.rng.choices(_RECEIVING, (50, 25, 12, 8, 5))[0]
        tag = str(self.rng.randrange(100)) if self.rng.random() < 0.2 else ""
        return f"{self.rng.choice(_FIRST + _ROLES)}{tag}@{dom}"

    def subject(self) -> str:
        if self.rng.random() < 0.005:
            return ""
        return self.rng.choice(_SUBJECTS).format(n=self.rng.randrange(10, 99999),
                                                 t=self.rng.choice(_TOPICS))

    # -- one SES message ----------------------------------------------------------------------
    def sender(self) -> tuple:
        """(From header or None, MAIL FROM, From domain, spammy?, DMARC policy), Zipf domain."""
        rng = self.rng
        dom, spammy, policy = self.domains[bisect(self.dom_cum, rng.random() * self.dom_cum[-1])]
        local, name, r = rng.choice(_ROLES + _FIRST), rng.choice(_NAMES), rng.random()
        addr = f"{local}@{dom}"
        frm = (addr if r < 0.3 else f"{rng.choice(_QUOTED)} <{addr}>" if r < 0.41 else
               f"=?UTF-8?B?{base64.b64encode(rng.choice(_INTL).encode()).decode()}?= <{addr}>"
               if r < 0.49 else f"{name} <{local}@{dom.upper()}>" if r < 0.54 else
               f"{name} <{addr}.>" if r < 0.56 else f"{name} <{addr}>")
        r = rng.random()
        source = (addr if r < 0.7 else f"bounces+{rng.randrange(10**6)}@sendgrid.example.net"
                  if r < 0.78 else f"0100018e{self.hexs(8)}-{self.uid()}-000000@amazonses.com"
                  if r < 0.86 else f"SRS0={self.hexs(4)}=K{rng.randrange(10)}={dom}={local}"
                  "@fwd.example.net" if r < 0.92 else f"prvs={self.hexs(9)}={addr}")
        return (None if rng.random() < 0.01 else frm), source, dom, spammy, policy

    def message(self, ms: int) -> dict:
        """One distinct SES message: mail object, receipt fields, raw MIME for `content`."""
        rng, mid = self.rng, self.ses_id()
        frm, source, dom, spammy, policy = self.sender()
        n = rng.choices((1, 2, 3, 4, 5), (70, 15, 8, 4, 3))[0]
        rcpts = list(dict.fromkeys(self.rcpt() for _ in range(n)))
        dest = rcpts if rng.random() < 0.8 else rcpts[:1] + [self.rcpt()]
        v = self.verdicts(spammy)
        auth = {k: _AUTH[s] for k, s in v.items()}
        v = {k: {"status": s} for k, s in v.items()}
        if rng.random() < 0.003:  # scanning disabled on the rule
            v["spamVerdict"] = v["virusVerdict"] = {"status": "DISABLED"}
        if rng.random() < 0.03:
            del v["dmarcVerdict"]
        elif v["dmarcVerdict"]["status"] == "FAIL":
            v["dmarcPolicy"] = {"status": policy} if rng.random() < 0.1 else policy
        ip = ".".join(str(rng.randrange(1, 224)) for _ in range(4))
        helo, subject = f"mta{rng.randrange(1, 40)}.{dom}", self.subject()
        date, msgid = self.rfc5322(ms - rng.randrange(200, 5000)), f"<{self.hexs(24)}@{helo}>"
        cc = dest[1:] if len(dest) > 1 and rng.random() < 0.5 else []
        to = dest[:len(dest) - len(cc)]
        hdr = [("Return-Path", f"<{source}>"),
               ("Received", f"from {helo} ({helo} [{ip}]) by inbound-smtp.{_REGION}.amazonaws.com"
                            f" with SMTP id {mid} for {rcpts[0]}; {self.rfc5322(ms, True)} (UTC)"),
               ("X-SES-Spam-Verdict", v["spamVerdict"]["status"]),
               ("X-SES-Virus-Verdict", v["virusVerdict"]["status"]),
               ("Received-SPF", f"{auth['spfVerdict']} (spfCheck: domain of {source.split('@')[-1]}"
                                f" designates {ip} as permitted sender) client-ip={ip};"
                                f" envelope-from={source}; helo={helo};"),
               ("Authentication-Results", f"amazonses.com; spf={auth['spfVerdict']} smtp.mailfrom="
                                          f"{source}; dkim={auth['dkimVerdict']} header.i=@{dom};"
                                          f" dmarc={auth['dmarcVerdict']} header.from={dom};"),
               ("X-SES-RECEIPT", self.b64(90)),
               ("X-SES-DKIM-SIGNATURE", f"a=rsa-sha256; q=dns/txt; b={self.b64(48)}; c=relaxed/"
                                        f"simple; s=ug7nbtf4gccmlpwj322ax3p6ow6yfsug; d=amazonses"
                                        f".com; t={ms // 1000}; v=1;"),
               ("DKIM-Signature", f"v=1; a=rsa-sha256; d={dom}; s=s1; bh={self.b64(32)}"),
               ("MIME-Version", "1.0")] + ([("From", frm)] if frm else [])
        hdr += [("To", ", ".join(to))] + ([("Cc", ", ".join(cc))] if cc else [])
        hdr += [("Subject", subject), ("Date", date), ("Message-ID", msgid),
                ("Content-Type", "text/plain; charset=UTF-8")]
        common = {"returnPath": source, **({"from": [frm]} if frm else {}), "date": date,
                  "to": to, **({"cc": cc} if cc else {}), "messageId": msgid, "subject": subject}
        cut = rng.random() < 0.002
        mail = {"timestamp": _iso(ms, rng.random() >= 0.05), "source": source, "messageId": mid,
                "destination": dest, "headersTruncated": cut,
                "headers": [{"name": k, "value": s} for k, s in (hdr[:6] if cut else hdr)],
                "commonHeaders": common}
        mime = "\r\n".join(f"{k}: {s}" for k, s in hdr[-7:]) + f"\r\n\r\nHello,\r\n{subject}\r\n"
        ptm = int(rng.lognormvariate(6.2, 0.6))
        ptm = str(ptm) if rng.random() < 0.05 else ptm
        return {"mail": mail, "rcpts": rcpts, "verdicts": v, "mime": mime,
                "head": {"timestamp": _iso(ms), "processingTimeMillis": ptm}}

    def notification(self, msg: dict, kind: str, rcpts=None) -> dict:
        """One notification of `msg` for a receipt action of `kind` (SNS, S3 or Lambda)."""
        action = {"SNS": {"type": "SNS", "topicArn": SNS_TOPIC, "encoding": "UTF8"},
                  "S3": {"type": "S3", "topicArn": S3_TOPIC, "bucketName": "inbound-mail",
                         "objectKey": f"inbox/{msg['mail']['messageId']}",
                         "objectKeyPrefix": "inbox"},
                  "Lambda": {"type": "Lambda", "functionArn": _LAMBDA_ARN,
                             "invocationType": "Event"}}[kind]
        receipt = {**msg["head"], "recipients": rcpts or msg["rcpts"], **msg["verdicts"],
                   "action": action}
        if kind == "Lambda":  # Records[].ses: no notificationType, no content
            return {"mail": msg["mail"], "receipt": receipt}
        note = {"notificationType": "Received", "mail": msg["mail"], "receipt": receipt}
        return {**note, "content": msg["mime"]} if kind == "SNS" else note

    # -- other payloads -----------------------------------------------------------------------
    def workmail_event(self) -> dict:
        rng, names = self.rng, self.rng.sample(_FIRST, self.rng.choice((1, 1, 1, 2, 3)))
        ev = {"summaryVersion": rng.choice(("2018-10-10", "2019-07-28")),
              "envelope": {"mailFrom": {"address": self.sender()[1]},
                           "recipients": [{"address": f"{n}@corp.example.com"} for n in names]}}
        if rng.random() < 0.05:
            ev["sender"] = {"address": f"{rng.choice(_ROLES)}@{self.sender()[2]}"}
        ev.update(subject=self.subject()[:256], messageId=self.uid(), invocationId=self.hexs(40),
                  flowDirection="INBOUND", truncated=False)
        return ev

    def sending_event(self, kind: str, ms: int) -> dict:
        """A sending-side record: identity notification (Bounce/Complaint/Delivery) or event."""
        rcpt, t = f"{self.rng.choice(_FIRST)}@example.com", _iso(ms + 2_000)
        ses_id = f"0100018e{self.hexs(8)}-{self.uid()}-000000"
        mail = {"timestamp": _iso(ms), "source": "notifications@inbound.example.com",
                "sourceArn": f"arn:aws:ses:{_REGION}:{_ACCOUNT}:identity/inbound.example.com",
                "sendingAccountId": _ACCOUNT, "messageId": ses_id,
                "destination": [rcpt]}
        body = {"timestamp": t, "feedbackId": f"0100018e{self.hexs(8)}-{self.uid()}-000000"}
        body = {"Bounce": {"bounceType": "Permanent", "bounceSubType": "General", **body,
                           "bouncedRecipients": [{"emailAddress": rcpt, "status": "5.1.1"}]},
                "Complaint": {"complainedRecipients": [{"emailAddress": rcpt}], **body},
                "Delivery": {"timestamp": t, "processingTimeMillis": 812, "recipients": [rcpt],
                             "smtpResponse": "250 2.6.0 Message received"},
                "Send": {}, "Open": {"ipAddress": "198.51.100.4", "timestamp": t,
                                     "userAgent": "Mozilla/5.0"}}[kind]
        if kind in ("Send", "Open"):
            tags = {"ses:configuration-set": ["outbound"]}
            return {"eventType": kind, "mail": {**mail, "tags": tags}, kind.lower(): body}
        return {"notificationType": kind, kind.lower(): body, "mail": mail}

    def setup_notification(self, ms: int) -> dict:
        action = {"type": "S3", "topicArn": S3_TOPIC, "bucketName": "inbound-mail",
                  "objectKey": f"inbox/{_SETUP_ID}", "objectKeyPrefix": "inbox"}
        return {"notificationType": "Received",
                "receipt": {"timestamp": _iso(ms), "processingTimeMillis": 0, "recipients": [],
                            "action": action},
                "mail": {"timestamp": _iso(ms), "source": "", "messageId": _SETUP_ID,
                         "destination": [], "headersTruncated": False, "headers": [],
                         "commonHeaders": {}}}

    # -- envelopes and placement ----------------------------------------------------------------
    def envelope(self, message: str, topic: str, ms: int, subject=_RECEIPT_SUBJECT,
                 type_="Notification") -> dict:
        """An SNS HTTP/SQS-style envelope (`Subject` omitted when None)."""
        env = {"Type": type_, "MessageId": self.uid(), "TopicArn": topic,
               **({"Subject": subject} if subject else {}), "Message": message,
               "Timestamp": _iso(ms), "SignatureVersion": "1", "Signature": self.b64(256),
               "SigningCertURL": _CERT_URL}
        if type_ == "Notification":
            sub = uuid.uuid5(uuid.NAMESPACE_URL, topic)
            env["UnsubscribeURL"] = f"{_SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={topic}:{sub}"
        else:
            env["SubscribeURL"] = f"{_SNS_HOST}/?Action=ConfirmSubscription&TopicArn={topic}"
            env["Token"] = self.hexs(128)
        return env

    def sqs_record(self, body: str, ms: int) -> dict:
        sent = ms + self.rng.randrange(5, 80)
        attrs = {"ApproximateReceiveCount": "1", "SentTimestamp": str(sent),
                 "SenderId": "AIDAIT2UOQQY3AUEKVGXU",
                 "ApproximateFirstReceiveTimestamp": str(sent + self.rng.randrange(1, 400))}
        return {"messageId": self.uid(), "receiptHandle": "AQEB" + self.b64(120), "body": body,
                "attributes": attrs, "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode()).hexdigest(), "eventSource": "aws:sqs",
                "eventSourceARN": _QUEUE_ARN, "awsRegion": _REGION}

    def wrap(self, fmt: str, payload, ms: int, topic=SNS_TOPIC, subject=_RECEIPT_SUBJECT,
             env=None):
        """A payload (dict, plain text, or a ready SNS envelope `env`) as an item of `fmt`."""
        if fmt == "lambda_events":
            return {"eventSource": "aws:ses", "eventVersion": "1.0", "ses": payload}
        if fmt in _BARE:
            return payload
        raw_ok = env is None and isinstance(payload, dict)
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        if fmt == "sqs_lambda_events" and raw_ok and self.rng.random() < 0.5:
            return self.sqs_record(text, ms)  # raw message delivery: the SES JSON itself
        env = env or self.envelope(text, topic, ms, subject)
        if fmt == "sqs_lambda_events":  # SNS -> SQS pretty-prints the envelope
            return self.sqs_record(json.dumps(env, indent=2, separators=(",", " : "),
                                              ensure_ascii=False), ms)
        return env

    def put(self, fmt: str, item, ms: int, category, file_idx=None) -> int:
        """Place `item` in a file of `fmt` (by time unless `file_idx`), count it, return file."""
        if file_idx is None:
            file_idx = min(self.nfiles - 1, max(0, (ms - self.t0) * self.nfiles // self.span))
        self.seq += 1
        data = orjson.dumps(item)  # items are never changed once placed
        self.spill.add((fmt, file_idx), ms, self.seq, data)
        self.counts[category] += 1
        return file_idx

    def redeliver(self, fmt: str, item, ms: int, file_idx: int) -> None:
        """At-least-once delivery: the same notification again, in this file or a later one."""
        target = self.rng.randrange(file_idx, self.nfiles)
        ms = max(ms, self.t0 + target * self.span // self.nfiles + self.rng.randrange(60_000))
        if fmt == "sqs_lambda_events":  # an SNS retry reaches SQS as a new SQS message
            item = self.sqs_record(item["body"], ms)
        self.put(fmt, item, ms, "duplicate", target)

    # -- writing --------------------------------------------------------------------------------
    def write(self, out: str) -> tuple[list[str], int]:
        """Write every non-empty bucket under `out`; return (relative paths, records written).

        Two passes with the random draws in a fixed order: the first decides the Lambda event
        batches of SQS files and where bad lines go (it needs only line counts), the second
        loads one bucket at a time from the spill, applies those decisions and writes it.
        """
        rng, jobs, written = self.rng, [], 0
        for fmt in self.formats:
            for idx in range(self.nfiles):
                n = self.spill.count.get((fmt, idx), 0)
                if n:
                    written += n
                    sizes = ([len(c) for c in self.batches(range(n))]
                             if fmt == "sqs_lambda_events" else None)
                    jobs.append(_Job(fmt, idx, self.spill.first_ms[fmt, idx], sizes,
                                     len(sizes) if sizes else n))
        for fmt, line in self.bad_lines:  # never first or last line of a file
            ok = [j for j in jobs if j.fmt in _NDJSON and j.nlines >= 2]
            if ok:
                job = rng.choice([j for j in ok if j.fmt == fmt] or ok)
                job.inserts.append((rng.randint(1, job.nlines - 1), line))
                job.nlines += 1
                self.counts["dead", "invalid_json"] += 1
                written += 1
        paths = []
        for job in jobs:
            entries = sorted(self.spill.read((job.fmt, job.idx)), key=lambda e: e[:2])
            items = [e[2] for e in entries]
            del entries
            if job.fmt in _NDJSON:
                data = self.lines(job.fmt, items, job.sizes)
                for pos, line in job.inserts:
                    data.insert(pos, (line, True))
            else:
                data = [orjson.loads(b) for b in items]
            del items
            d = _EPOCH + timedelta(milliseconds=job.ms)
            writer = getattr(self, "w_" + job.fmt, None)
            rel, blob = (writer(data, job.idx, d) if writer
                         else self.w_ndjson(data, job.idx, d, job.fmt))
            del data
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            with open(os.path.join(out, rel), "wb") as fh:
                fh.write(blob)
            paths.append(rel)
        return sorted(paths), written

    def batches(self, items: list) -> list[list]:
        """Consecutive chunks of 1-3 items (Records per Lambda event)."""
        out, i = [], 0
        while i < len(items):
            n = self.rng.choices((1, 2, 3), (6, 3, 1))[0]
            out.append(items[i:i + n])
            i += n
        return out

    @staticmethod
    def lines(fmt: str, items: list[bytes], sizes=None) -> list[tuple[bytes, bool]]:
        """NDJSON lines as (bytes, is_bad) from serialised items; SQS lines are Lambda events
        of `sizes` records each (the compact JSON of {"Records": [...]})."""
        if fmt != "sqs_lambda_events":
            return [(it, False) for it in items]
        out, i = [], 0
        for n in sizes:
            out.append((b'{"Records":[' + b",".join(items[i:i + n]) + b"]}", False))
            i += n
        return out

    @staticmethod
    def _gz(data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=6, mtime=0)

    def w_sns_ndjson(self, lines, idx, d):
        """File 0 starts with a BOM; odd files (or a single file) use CRLF with blank lines."""
        crlf, raw = idx % 2 == 1 or self.nfiles == 1, [ln for ln, _ in lines]
        for _ in range(1 + len(raw) // 40 if crlf else 0):
            raw.insert(self.rng.randint(1, max(1, len(raw) - 1)), b"")
        eol = b"\r\n" if crlf else b"\n"
        bom = b"\xef\xbb\xbf" if idx == 0 else b""
        return f"sns/{d:%Y/%m/%d}/receipts-{idx:02d}.ndjson", bom + eol.join(raw) + eol

    def w_sns_ndjson_gz(self, lines, idx, d):
        """File 0 is two gzip members; the last file is named without `.gz`."""
        raw, cut = [ln for ln, _ in lines], len(lines)
        if idx == 0 and len(lines) >= 2:  # split after a good line, near the middle
            cut = min((k for k in range(1, len(lines)) if not lines[k - 1][1]),
                      key=lambda k: abs(2 * k - len(lines)))
        blob = b"".join(self._gz(b"\n".join(part) + b"\n") for part in (raw[:cut], raw[cut:])
                        if part)
        plain = idx == self.nfiles - 1 and (idx > 0 or self.nfiles == 1)
        return f"sns-gz/{d:%Y/%m/%d}/receipts-{idx:02d}.json{'' if plain else '.gz'}", blob

    def w_json_array(self, items, idx, d):
        blob = orjson.dumps(items, option=orjson.OPT_INDENT_2) + b"\n"
        return f"array/{d:%Y/%m/%d}/receipts-{idx:02d}.json", blob

    def w_firehose_concat_gz(self, items, idx, d):
        """Records concatenated with no delimiter (event-publishing ones end with a newline)."""
        data = b"".join(orjson.dumps(it) + (b"\n" if "eventType" in it else b"") for it in items)
        key = f"ses-receipts-1-{d:%Y-%m-%d-%H-%M-%S}-{self.uid()}"
        return f"firehose/{d:%Y/%m/%d/%H}/{key}", self._gz(data)

    def w_lambda_events(self, items, idx, d):
        events = [orjson.dumps({"Records": c}, option=orjson.OPT_INDENT_2)
                  for c in self.batches(items)]
        return f"lambda/{d:%Y/%m/%d}/events-{idx:02d}.json", b"\n".join(events) + b"\n"

    def w_ndjson(self, lines, idx, d, fmt):
        """Plain LF-delimited NDJSON (SQS Lambda events, raw notifications, WorkMail)."""
        rel = {"sqs_lambda_events": "sqs/{d:%Y/%m/%d}/batch-{i:02d}.ndjson",
               "raw_ndjson": "raw/{d:%Y/%m/%d}/receipts-{i:02d}.jsonl",
               "workmail": "workmail/{d:%Y/%m/%d}/flow-{i:02d}.ndjson"}[fmt].format(d=d, i=idx)
        return rel, b"\n".join(ln for ln, _ in lines) + b"\n"


def _emit_message(g: _Gen, ms: int, fmts: list, duplicate_rate: float) -> None:
    """Place one distinct receipt message and, with probability `duplicate_rate`, one extra."""
    rng, msg = g.rng, g.message(ms)
    fmt = rng.choice(fmts)
    kind = "Lambda" if fmt == "lambda_events" else "SNS" if rng.random() < 0.65 else "S3"
    at = ms + int(msg["head"]["processingTimeMillis"]) + rng.randrange(50, 900)
    item = g.wrap(fmt, g.notification(msg, kind), at, SNS_TOPIC if kind == "SNS" else S3_TOPIC)
    idx = g.put(fmt, item, at, "receipt")
    if rng.random() >= duplicate_rate:
        return
    others = [f for f in fmts if f != "lambda_events"]
    if rng.random() < 0.5 or not others:  # (a) identical redelivery, e.g. an SNS retry
        g.redeliver(fmt, item, at + rng.randrange(1_000, 600_000), idx)
        return
    kind2 = "S3" if kind == "SNS" else "SNS"  # (b) the same mail seen by a second rule action
    rcpts = [r for r in msg["rcpts"] if rng.random() < 0.7] or msg["rcpts"][:1]
    fmt2, at2 = rng.choice(others), at + rng.randrange(5, 2_000)
    note = g.notification(msg, kind2, rcpts)
    g.put(fmt2, g.wrap(fmt2, note, at2, SNS_TOPIC if kind2 == "SNS" else S3_TOPIC), at2,
          "duplicate")


def _emit_noise(g: _Gen, n: int) -> None:
    """Place about `n` records of every skip reason wherever such records can occur."""
    rng, anywhere = g.rng, [f for f in ALL_FORMATS if f != "lambda_events"]

    def place(reason, allowed, payload=None, topic=SNS_TOPIC, subject=None, env=None):
        fmts = [f for f in allowed if f in g.formats]
        if fmts:
            fmt, ms = rng.choice(fmts), g.t0 + rng.randrange(g.span)
            item = g.wrap(fmt, payload, ms, topic, subject, env and env(ms))
            g.put(fmt, item, ms, ("skip", reason))

    for i in range(max(5, n)):
        kind = ("Bounce", "Complaint", "Delivery", "Send", "Open")[i % 5]
        ev = g.sending_event(kind, g.t0 + rng.randrange(g.span))
        if kind not in ("Send", "Open"):
            place("sending_event", _ENVELOPED, ev, EVENTS_TOPIC)
        elif rng.random() < 0.5:  # event publishing: Firehose/raw, or SNS with a trailing \n
            place("sending_event", _BARE, ev)
        else:
            place("sending_event", _ENVELOPED, orjson.dumps(ev).decode() + "\n", EVENTS_TOPIC,
                  _EVENT_SUBJECT)
    confirm = (f"You have chosen to subscribe to the topic {SNS_TOPIC}.\nTo confirm the "
               "subscription, visit the SubscribeURL included in this message.")
    for i in range(n):
        place("subscription_succeeded", anywhere, {
            "notificationType": "AmazonSnsSubscriptionSucceeded",
            "message": f"You have successfully subscribed your Amazon SNS topic '{EVENTS_TOPIC}' "
                       "to receive 'Bounce' notifications from Amazon SES for identity "
                       "'inbound.example.com'."})
        kind = "UnsubscribeConfirmation" if i % 3 == 2 else "SubscriptionConfirmation"
        place("sns_control", _ENVELOPED,
              env=lambda ms, k=kind: g.envelope(confirm, SNS_TOPIC, ms, None, k))
        place("plain_text", _ENVELOPED,
              "Successfully validated SNS topic for Amazon SES event publishing.", EVENTS_TOPIC)
        place("setup_notification", [f for f in anywhere if f != "workmail"],
              g.setup_notification(g.t0 + rng.randrange(g.span)), S3_TOPIC, _RECEIPT_SUBJECT)
        place("not_ses", _ENVELOPED if set(_ENVELOPED) & set(g.formats) else _BARE,
              {"message": "hello world", "username": rng.choice(_FIRST)})


def _emit_bad(g: _Gen, count: int) -> None:
    """Queue `count` undecodable units: cut and garbage NDJSON lines, and receipts whose
    `mail.timestamp` is missing or "not a date" (only the latter without an NDJSON format)."""
    rng, ndjson = g.rng, [f for f in _NDJSON if f in g.formats]
    for i in range(count):
        kind, ms = i % 4 if ndjson else 2 + i % 2, g.t0 + rng.randrange(g.span)
        if kind == 1:  # garbage: invalid UTF-8 and binary, no line breaks
            junk = bytes(b for b in rng.randbytes(rng.randrange(20, 120)) if b not in b"\r\n")
            g.bad_lines.append((rng.choice(ndjson), b"\x80\xffgarbage " + junk))
            continue
        fmt = rng.choice(ndjson if kind == 0 else list(g.formats))
        note = g.notification(g.message(ms), "Lambda" if fmt == "lambda_events" else "S3")
        if kind == 0:  # a line cut in the middle
            item = g.wrap(fmt, note, ms, S3_TOPIC)
            line = orjson.dumps({"Records": [item]} if fmt == "sqs_lambda_events" else item)
            g.bad_lines.append((fmt, line[:rng.randrange(len(line) // 4, 3 * len(line) // 4)]))
            continue
        note["mail"] = {k: s for k, s in note["mail"].items() if k != "timestamp"}
        if kind == 3:
            note["mail"] = {"timestamp": "not a date", **note["mail"]}
        g.put(fmt, g.wrap(fmt, note, ms, S3_TOPIC), ms, ("dead", "invalid_notification"))


def _sorted_times(g: _Gen, n: int):
    """`n` uniform times in the span, drawn in order, yielded sorted (8 bytes each)."""
    times = np.fromiter((g.t0 + g.rng.randrange(g.span) for _ in range(n)), np.int64, count=n)
    times.sort()
    for ms in times:
        yield int(ms)


def generate_archive(output_dir: str, *, events: int = 10_000, seed: int = 0, days: int = 7,
                     start: str = "2024-03-01", duplicate_rate: float = 0.03,
                     bad_records: int = 0, formats: tuple[str, ...] = ALL_FORMATS,
                     files_per_format: int = 2) -> dict:
    """Write a reproducible synthetic archive of SES notifications under `output_dir`.

    `events` distinct SES receipt messages are spread uniformly over `days` days from `start`
    (00:00 UTC) and over `files_per_format` files of each container format in `formats` (see
    `ALL_FORMATS`); "workmail" adds max(2, events // 50) WorkMail flow events. About
    `duplicate_rate` of the messages get a second notification (an identical redelivery or the
    notification of a second rule action), a few records of every skip reason are always
    added, and `bad_records` undecodable units on request. Files whose share is empty are not
    written.

    Returns the JSON-serialisable manifest: seed, events, files (relative to `output_dir`),
    records, receipt_messages, workmail_messages, messages, duplicates, skipped {reason: n},
    dead_letters {kind: n} and per_day {"YYYY-MM-DD": distinct messages that day}.
    """
    formats = tuple(dict.fromkeys(formats))
    if not formats or set(formats) - set(ALL_FORMATS):
        raise ValueError(f"formats must be a non-empty subset of {ALL_FORMATS}")
    if min(events, bad_records) < 0 or min(days, files_per_format) < 1:
        raise ValueError("events and bad_records must be >= 0, days and files_per_format >= 1")
    receipt_fmts = [f for f in formats if f != "workmail"]
    if events and not receipt_fmts:
        raise ValueError("receipt messages need a format other than 'workmail'")
    rng = random.Random(seed)
    t0 = datetime.fromisoformat(start).replace(tzinfo=timezone.utc) - _EPOCH
    g = _Gen(rng, formats, files_per_format, t0 // timedelta(milliseconds=1), days * 86_400_000)
    os.makedirs(output_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".sesbeam-generate-", dir=output_dir)
    try:
        g.spill = _Spill(scratch)
        per_day = Counter()
        for ms in _sorted_times(g, events):
            _emit_message(g, ms, receipt_fmts, duplicate_rate)
            per_day[_iso(ms)[:10]] += 1
        if "workmail" in formats:  # dated by the SNS Timestamp
            for ms in _sorted_times(g, max(2, events // 50)):
                text = orjson.dumps(g.workmail_event()).decode()
                g.put("workmail", g.envelope(text, WORKMAIL_TOPIC, ms, None), ms, "workmail")
                per_day[_iso(ms)[:10]] += 1
        _emit_noise(g, max(2, events // 4000))
        _emit_bad(g, bad_records)
        files, records = g.write(output_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    c = g.counts
    skipped = {r: c["skip", r] for r in SKIP_REASONS}
    dead = {k: c["dead", k] for k in DEAD_KINDS}
    messages = c["receipt"] + c["workmail"]
    assert c["receipt"] == events and messages == sum(per_day.values())
    assert records == messages + c["duplicate"] + sum(skipped.values()) + sum(dead.values())
    return {"seed": seed, "events": events, "files": files, "records": records,
            "receipt_messages": c["receipt"], "workmail_messages": c["workmail"],
            "messages": messages, "duplicates": c["duplicate"], "skipped": skipped,
            "dead_letters": dead, "per_day": dict(sorted(per_day.items()))}


# ---------------------------------------------------------------------------------------------
# The benchmark data set
# ---------------------------------------------------------------------------------------------

#: Layouts of `generate_benchmark_archive`.
BENCH_LAYOUTS = ("sns_gz", "lambda", "firehose")
_GOOGLE_IPS = ("209.85.128.", "209.85.166.", "209.85.208.", "209.85.219.", "209.85.221.")
_B32 = "0123456789abcdefghijklmnopqrstuv"
_SUBSCRIPTIONS = {t: uuid.uuid5(uuid.NAMESPACE_URL, t) for t in (SNS_TOPIC, S3_TOPIC)}


def _iso_fast(ms: int) -> str:
    """`_iso(ms)` without datetime."""
    t = time.gmtime(ms // 1000)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{ms % 1000:03d}Z")


class _BenchGen(_Gen):
    """Canonical SES receipt notifications as SES writes them, with a realistic header block
    (relay hops, DKIM and ARC signatures, list headers): about 5 KB per SNS-wrapped one.

    Every message is a pure function of (seed, message index): its own `random.Random`
    drives it, so any process can rebuild any message (for its duplicates) on its own.
    """

    def __init__(self, seed: int, t0: int, span: int, messages: int):
        # No super().__init__: the domain table is built once per process, from the seed.
        self.seed, self.t0, self.span, self.nmsg = seed, t0, span, messages
        rng = self.rng = random.Random(f"sesbeam-benchmark/{seed}/domains")
        names = list(_KNOWN_DOMAINS) + [
            f"{rng.choice(('mailer', 'news', 'mail', 'em', 'info', 'go'))}-{i:04d}."
            f"{rng.choice(('example.com', 'example.net', 'example.org', 'example.io'))}"
            for i in range(1988)]
        rng.shuffle(names)  # list order = Zipf rank
        spammy = set(rng.sample(range(5, len(names)), 60)) | {2}
        policy = ("none", "quarantine", "reject")
        self.domains = [(d, i in spammy, rng.choice(policy)) for i, d in enumerate(names)]
        self.dom_cum = list(accumulate(1 / (r + 1) ** 1.05 for r in range(len(names))))

    def rfc5322(self, ms: int, utc: bool = False) -> str:
        """Same shape as `_Gen.rfc5322`, without datetime (this runs millions of times)."""
        off = 0 if utc else self.rng.choice((0, 0, -300, -420, -240, 60, 120, 330, 480))
        t = time.gmtime(ms // 1000 + off * 60)
        day = str(t.tm_mday) if self.rng.random() < 0.5 else f"{t.tm_mday:02d}"
        sign, off = ("-", -off) if off < 0 else ("+", off)
        return (f"{_WDAY[t.tm_wday]}, {day} {_MONTH[t.tm_mon - 1]} {t.tm_year} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                f"{sign}{off // 60:02d}{off % 60:02d}")

    def ses_id_of(self, m: int) -> str:
        """Unique by construction: a bijection of the index (odd multiplier modulo 2**40) in
        base 32 (8 digits), then random digits."""
        m, head = m * 0x9E3779B1 % (1 << 40), []
        for _ in range(8):
            m, r = divmod(m, 32)
            head.append(_B32[r])
        tail = self.rng.choices(_B32, k=self.rng.choice((20, 32)))
        return "".join(reversed(head)) + "".join(tail)

    def dkim(self, dom: str, secs: int, selector: str) -> str:
        key = 256 if self.rng.random() < 0.4 else 128  # RSA-2048 or RSA-1024 signature
        return (f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={dom}; s={selector}; t={secs};"
                f" h=from:to:subject:date:message-id:mime-version; bh={self.b64(32)};"
                f" b={self.b64(key)}")

    def bench_message(self, m: int) -> dict:
        """Message `m`: its mail object, receipt fields, action kind and arrival time."""
        rng = self.rng = random.Random(f"sesbeam-benchmark/{self.seed}/{m}")
        ms = self.t0 + m * self.span // self.nmsg + rng.randrange(max(1, self.span // self.nmsg))
        secs, mid = ms // 1000, self.ses_id_of(m)
        frm, source, dom, spammy, policy = self.sender()
        n = rng.choices((1, 2, 3, 4, 5), (70, 15, 8, 4, 3))[0]
        rcpts = list(dict.fromkeys(self.rcpt() for _ in range(n)))
        v = self.verdicts(spammy)
        spf_r, dkim_r, dmarc_r = _AUTH[v["spfVerdict"]], _AUTH[v["dkimVerdict"]], \
            _AUTH[v["dmarcVerdict"]]
        verdicts = {k: {"status": s} for k, s in v.items()}
        if v["dmarcVerdict"] == "FAIL":
            verdicts["dmarcPolicy"] = policy
        google = rng.random() < 0.3
        if google:
            relay = f"mail-{rng.choice('oywlqp')}{rng.choice('bcdf')}1-f{rng.randrange(1, 200)}" \
                    ".google.com"
            ip = rng.choice(_GOOGLE_IPS) + str(rng.randrange(1, 255))
        else:
            relay = f"{rng.choice(('mta', 'out', 'smtp', 'a'))}{rng.randrange(1, 60)}.{dom}"
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}." \
                 f"{rng.randrange(1, 255)}"
        subject, sender_dom = self.subject(), source.rpartition("@")[2]
        date = self.rfc5322(ms - rng.randrange(200, 5000))
        msgid = (f"<{self.hexs(24)}@{relay}>" if rng.random() < 0.7 else
                 f"<0100018e{self.hexs(8)}-{self.uid()}-000000@email.amazonses.com>")
        cc = rcpts[1:] if len(rcpts) > 1 and rng.random() < 0.5 else []
        to = rcpts[:len(rcpts) - len(cc)]
        utc = self.rfc5322(ms, True)
        spf = (f"{spf_r} (spfCheck: domain of {sender_dom} designates {ip} as permitted sender)"
               f" client-ip={ip}; envelope-from={source}; helo={relay};")
        hdr = [("Return-Path", f"<{source}>"),
               ("Received", f"from {relay} ({relay} [{ip}]) by inbound-smtp.{_REGION}."
                            f"amazonaws.com with SMTP id {mid} for {rcpts[0]}; {utc} (UTC)"),
               ("X-SES-Spam-Verdict", v["spamVerdict"]),
               ("X-SES-Virus-Verdict", v["virusVerdict"]),
               ("Received-SPF", spf),
               ("Authentication-Results", f"amazonses.com; spf={spf} dkim={dkim_r} header.i=@"
                                          f"{dom}; dmarc={dmarc_r} header.from={dom};"),
               ("X-SES-RECEIPT", self.b64(180)),
               ("X-SES-DKIM-SIGNATURE", f"a=rsa-sha256; q=dns/txt; b={self.b64(128)}; c=relaxed/"
                                        f"simple; s=ug7nbtf4gccmlpwj322ax3p6ow6yfsug; d=amazonses"
                                        f".com; t={secs}; v=1; bh={self.b64(32)}; h=From:To:Cc:"
                                        f"Bcc:Subject:Message-ID:Date:MIME-Version:Content-Type:"
                                        f"X-SES-RECEIPT;")]
        if google:
            hdr += [("Received", f"by {relay} with SMTP id {self.hexs(12)}so{rng.randrange(10**6)}"
                                 f" for <{rcpts[0]}>; {utc}"),
                    ("DKIM-Signature", self.dkim(dom, secs, "google")),
                    ("X-Google-Smtp-Source", "AGHT+I" + self.b64(66)),
                    ("X-Received", f"by 2002:a05:{self.hexs(4)}:{self.hexs(4)} with SMTP id "
                                   f"{self.hexs(12)}; {utc}")]
            if rng.random() < 0.25:
                hdr.append(("ARC-Seal", f"i=1; a=rsa-sha256; t={secs}; cv=none; d=google.com;"
                                        f" s=arc-20160816; b={self.b64(256)}"))
        else:
            if rng.random() < 0.5:
                hdr.append(("Received", f"from localhost (localhost [127.0.0.1]) by {relay} "
                                        f"(Postfix) with ESMTPSA id {self.hexs(10).upper()}"))
            hdr.append(("DKIM-Signature", self.dkim(dom, secs, f"s{rng.randrange(1, 3)}")))
        hdr += [("MIME-Version", "1.0")] + ([("From", frm)] if frm else [])
        hdr += [("Date", date), ("Message-ID", msgid), ("Subject", subject),
                ("To", ", ".join(to))] + ([("Cc", ", ".join(cc))] if cc else [])
        hdr.append(("Content-Type", f'multipart/alternative; boundary="0000000000'
                                    f'{self.hexs(16)}"'))
        if rng.random() < 0.3:  # bulk mail
            hdr += [("List-Unsubscribe", f"<https://{dom}/u/{self.hexs(24)}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        common = {"returnPath": source, **({"from": [frm]} if frm else {}), "date": date,
                  "to": to, **({"cc": cc} if cc else {}), "messageId": msgid, "subject": subject}
        mail = {"timestamp": _iso_fast(ms), "source": source, "messageId": mid,
                "destination": rcpts, "headersTruncated": False,
                "headers": [{"name": k, "value": s} for k, s in hdr], "commonHeaders": common}
        ptm = int(rng.lognormvariate(6.2, 0.6))
        return {"m": m, "mail": mail, "rcpts": rcpts, "verdicts": verdicts, "hdr": hdr,
                "head": {"timestamp": _iso_fast(ms + ptm), "processingTimeMillis": ptm},
                "at": ms + ptm + rng.randrange(50, 900),
                "kind": "S3" if rng.random() < 0.97 else "SNS"}

    def bench_notification(self, msg: dict, kind: str, rcpts=None, function=_LAMBDA_ARN):
        """The notification of `msg` for an action of `kind`: S3, SNS (with the raw message
        as `content`) or Lambda (a `Records[].ses` record)."""
        receipt = {**msg["head"], "recipients": rcpts or msg["rcpts"], **msg["verdicts"]}
        if kind == "Lambda":
            action = {"type": "Lambda", "functionArn": function, "invocationType": "Event"}
            return {"eventSource": "aws:ses", "eventVersion": "1.0",
                    "ses": {"mail": msg["mail"], "receipt": {**receipt, "action": action}}}
        if kind == "S3":
            action = {"type": "S3", "topicArn": S3_TOPIC, "bucketName": "inbound-mail",
                      "objectKey": f"inbox/{msg['mail']['messageId']}",
                      "objectKeyPrefix": "inbox"}
        else:
            action = {"type": "SNS", "topicArn": SNS_TOPIC, "encoding": "UTF8"}
        note = {"notificationType": "Received", "mail": msg["mail"],
                "receipt": {**receipt, "action": action}}
        if kind == "SNS":
            body = msg["mail"]["commonHeaders"]["subject"]
            note["content"] = ("\r\n".join(f"{k}: {s}" for k, s in msg["hdr"])
                               + f"\r\n\r\nHello,\r\n{body}\r\n")
        return note

    def bench_record(self, msg: dict, layout: str, variant: int) -> bytes:
        """The serialised record of a notification of `msg`, right after `bench_message`
        built it: variant 0 is the first notification (an identical redelivery repeats it
        byte for byte), variant 1 the notification of a second receipt rule's action, for
        some of the recipients."""
        kind, rcpts, function = msg["kind"], None, _LAMBDA_ARN
        if variant:
            self.rng = random.Random(f"sesbeam-benchmark/{self.seed}/{msg['m']}/{variant}")
            kind = "SNS" if kind == "S3" else "S3"
            rcpts = [r for r in msg["rcpts"] if self.rng.random() < 0.7] or msg["rcpts"][:1]
            function = _LAMBDA_ARN + "-archive"
        if layout == "lambda":
            return orjson.dumps(self.bench_notification(msg, "Lambda", rcpts, function))
        note = self.bench_notification(msg, kind, rcpts)
        if layout == "firehose":
            return orjson.dumps(note)
        at = msg["at"] + (self.rng.randrange(5, 2_000) if variant else 0)
        topic = SNS_TOPIC if kind == "SNS" else S3_TOPIC
        env = {"Type": "Notification", "MessageId": self.uid(), "TopicArn": topic,
               "Subject": _RECEIPT_SUBJECT, "Message": orjson.dumps(note).decode(),
               "Timestamp": _iso_fast(at), "SignatureVersion": "1", "Signature": self.b64(256),
               "SigningCertURL": _CERT_URL,
               "UnsubscribeURL": f"{_SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={topic}:"
                                 f"{_SUBSCRIPTIONS[topic]}"}
        return orjson.dumps(env)


def _bench_file_name(layout: str, idx: int, ms: int, rng: random.Random) -> str:
    d = _EPOCH + timedelta(milliseconds=ms)
    if layout == "sns_gz":
        return f"sns/{d:%Y/%m/%d/%H}/ses-inbound-{idx:05d}.json.gz"
    if layout == "lambda":
        return f"lambda/{d:%Y/%m/%d/%H}/ses-lambda-events-{idx:05d}.json.gz"
    return (f"firehose/{d:%Y/%m/%d/%H}/ses-receipts-1-{d:%Y-%m-%d-%H-%M-%S}-"
            f"{uuid.UUID(int=rng.getrandbits(128), version=4)}.gz")


_BENCH_STATE: dict = {}


def _bench_init(state: dict) -> None:
    _BENCH_STATE.clear()
    _BENCH_STATE.update(state)
    _BENCH_STATE["gen"] = _BenchGen(state["seed"], state["t0"], state["span"], state["messages"])


def _bench_file(task) -> dict:
    """Build, compress and write one file of the benchmark archive."""
    idx, first, stop, dups = task
    st = _BENCH_STATE
    g, layout = st["gen"], st["layout"]
    entries, per_day = [], Counter()
    for m in range(first, stop):
        msg = g.bench_message(m)
        per_day[msg["mail"]["timestamp"][:10]] += 1
        entries.append((msg["at"], m, 0, g.bench_record(msg, layout, 0)))
    for m, variant, delay in dups:
        msg = g.bench_message(m)
        entries.append((msg["at"] + delay, m, 1, g.bench_record(msg, layout, variant)))
    entries.sort(key=lambda e: e[:3])
    records = [e[3] for e in entries]
    file_ms = st["t0"] + idx * st["span"] // st["files"]
    rng = random.Random(f"sesbeam-benchmark/{st['seed']}/{layout}/file/{idx}")
    if layout == "lambda":  # SES Lambda events of 1-3 records, one event per line
        lines, i = [], 0
        while i < len(records):
            n = rng.choices((1, 2, 3), (6, 3, 1))[0]
            lines.append(b'{"Records":[' + b",".join(records[i:i + n]) + b"]}")
            i += n
        raw = b"\n".join(lines) + b"\n"
    elif layout == "firehose":
        raw = b"".join(records)
    else:
        raw = b"\n".join(records) + b"\n"
    rel = _bench_file_name(layout, idx, file_ms, rng)
    blob = gzip.compress(raw, compresslevel=st["compresslevel"], mtime=0)
    path = os.path.join(st["output_dir"], rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(blob)
    return {"file": rel, "records": len(records), "bytes": len(raw), "stored_bytes": len(blob),
            "per_day": dict(per_day)}


def generate_benchmark_archive(output_dir: str, events: int = 1_000_000, *,
                               layout: str = "sns_gz", files: int = 700, seed: int = 0,
                               days: int = 7, start: str = "2024-03-01",
                               duplicate_rate: float = 0.03, processes: int | None = None,
                               compresslevel: int = 6) -> dict:
    """Write the benchmark data set: `events` SES receipt notifications in one `layout`.

    Layouts (`BENCH_LAYOUTS`), all gzipped, one gzip member per file:
    - "sns_gz": NDJSON of SNS envelopes (HTTP/SQS style) whose `Message` is the notification;
    - "lambda": NDJSON of SES Lambda action events (`Records[].ses`, 1-3 records per event);
    - "firehose": bare notifications concatenated with no delimiter, as Firehose stores them.

    `events` counts notifications (records). About `duplicate_rate` of the messages get a
    second notification: half of them an identical redelivery (same file or up to two files
    later), half the notification of a second rule action (another action type, a subset of
    the recipients, within two seconds, so sometimes before the first one). The messages are
    spread evenly over `days` days and over `files` time-ordered files (fewer when there are
    fewer messages); the file paths sort in that order. Only the sequence of notifications is
    random, and it is the same for every layout and process count: message i is a function of
    (seed, i) alone, so equal arguments give byte-identical files.

    Files are built in up to `processes` worker processes (default: one per CPU); each holds
    one file's contents at a time. Returns the manifest: layout, seed, events, files, records,
    messages, duplicates, receipt_messages, workmail_messages (0), skipped and dead_letters
    (all 0), per_day, bytes (uncompressed JSON) and stored_bytes.
    """
    if layout not in BENCH_LAYOUTS:
        raise ValueError(f"layout must be one of {BENCH_LAYOUTS}")
    if events < 0 or files < 1 or days < 1 or not 0 <= duplicate_rate <= 1:
        raise ValueError("events >= 0, files >= 1, days >= 1 and 0 <= duplicate_rate <= 1")
    nmsg = round(events / (1 + duplicate_rate))
    ndup = events - nmsg
    nfiles = max(1, min(files, nmsg))
    t0 = (datetime.fromisoformat(start).replace(tzinfo=timezone.utc) - _EPOCH) \
        // timedelta(milliseconds=1)
    span = days * 86_400_000
    firsts = [(f * nmsg + nfiles - 1) // nfiles for f in range(nfiles + 1)]
    plan = random.Random(f"sesbeam-benchmark/{seed}/plan")
    dups: list[list] = [[] for _ in range(nfiles)]
    file_span = span // nfiles
    for m in sorted(plan.sample(range(nmsg), ndup)):
        home = m * nfiles // nmsg
        if plan.random() < 0.5:  # identical redelivery, e.g. an SNS or Lambda retry
            later = plan.choices((0, 1, 2), (70, 20, 10))[0]
            target = min(nfiles - 1, home + later)
            delay = (plan.randrange(1_000, 600_000) if target == home else
                     (target - home) * file_span + plan.randrange(max(1, file_span)))
            dups[target].append((m, 0, delay))
        else:  # a second rule action: same file, up to 2 s before or after
            dups[home].append((m, 1, plan.randrange(-2_000, 2_000)))
    state = {"seed": seed, "layout": layout, "t0": t0, "span": span, "messages": nmsg,
             "files": nfiles, "compresslevel": compresslevel, "output_dir": output_dir}
    tasks = [(f, firsts[f], firsts[f + 1], dups[f]) for f in range(nfiles)] if nmsg else []
    os.makedirs(output_dir, exist_ok=True)
    processes = min(processes or os.cpu_count() or 1, len(tasks))
    if processes > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("fork" if "fork" in
                                          multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(processes, initializer=_bench_init, initargs=(state,)) as pool:
            results = list(pool.imap(_bench_file, tasks))
    else:
        _bench_init(state)
        results = [_bench_file(t) for t in tasks]
        _BENCH_STATE.clear()
    names = [r["file"] for r in results]
    assert names == sorted(names), "benchmark file names must sort in generation order"
    per_day = Counter()
    for r in results:
        per_day.update(r["per_day"])
    records = sum(r["records"] for r in results)
    assert records == events and sum(per_day.values()) == nmsg
    return {"layout": layout, "seed": seed, "events": events, "files": names,
            "records": records, "messages": nmsg, "duplicates": ndup,
            "receipt_messages": nmsg, "workmail_messages": 0,
            "skipped": {r: 0 for r in SKIP_REASONS}, "dead_letters": {k: 0 for k in DEAD_KINDS},
            "per_day": dict(sorted(per_day.items())),
            "bytes": sum(r["bytes"] for r in results),
            "stored_bytes": sum(r["stored_bytes"] for r in results)}
