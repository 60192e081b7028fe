"""Seeded synthetic archive of Amazon SES inbound-mail ("Received") notifications.

`generate_archive` writes files shaped like what piles up in S3 when SES receipt notifications
are archived through the usual routes (SNS HTTP/SQS envelopes, raw delivery, Firehose, Lambda
events, WorkMail flows), mixed with records a reader must skip (sending events, SNS control
messages, setup notifications, unrelated traffic) and, on request, undecodable records. It
returns a manifest with the ground truth. Only `random.Random(seed)` drives the content and gzip
headers carry no name or mtime, so equal arguments give byte-identical files.
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


class _Gen:
    """Random value factory plus the per-format, per-file buckets of placed records."""

    def __init__(self, rng: random.Random, formats, nfiles: int, t0: int, span: int):
        self.rng, self.formats, self.nfiles, self.t0, self.span = rng, formats, nfiles, t0, span
        self.buckets = {f: [[] for _ in range(nfiles)] for f in formats}
        self.bad_lines: list[tuple[str, bytes]] = []  # (preferred format, line) placed at write
        self.counts, self.seq, self.ids = Counter(), 0, set()
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
        while True:
            k = self.rng.choice((28, 40))
            mid = "".join(self.rng.choices("0123456789abcdefghijklmnopqrstuv", k=k))
            if mid not in self.ids:
                self.ids.add(mid)
                return mid

    def status(self, fail: float, gray: float, failed: float = 0.003) -> str:
        r = self.rng.random()
        return ("FAIL" if r < fail else "GRAY" if r < fail + gray else
                "PROCESSING_FAILED" if r < fail + gray + failed else "PASS")

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
        x = 1 if spammy else 0
        v = {"spamVerdict": self.status((0.01, 0.7)[x], 0.02),
             "virusVerdict": self.status((0.002, 0.05)[x], 0.002, 0.001),
             "spfVerdict": self.status((0.02, 0.5)[x], 0.03),
             "dkimVerdict": self.status((0.02, 0.55)[x], 0.05),
             "dmarcVerdict": self.status((0.02, 0.6)[x], 0.04)}
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
        self.buckets[fmt][file_idx].append((ms, self.seq, item))
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
        """Write every non-empty bucket under `out`; return (relative paths, records written)."""
        rng, jobs, written = self.rng, [], 0
        for fmt in self.formats:
            for idx, bucket in enumerate(self.buckets[fmt]):
                if bucket:
                    bucket.sort(key=lambda e: e[:2])
                    items = [e[2] for e in bucket]
                    written += len(items)
                    data = self.lines(fmt, items) if fmt in _NDJSON else items
                    jobs.append((fmt, idx, bucket[0][0], data))
        for fmt, line in self.bad_lines:  # never first or last line of a file
            ok = [j for j in jobs if j[0] in _NDJSON and len(j[3]) >= 2]
            if ok:
                lines = rng.choice([j for j in ok if j[0] == fmt] or ok)[3]
                lines.insert(rng.randint(1, len(lines) - 1), (line, True))
                self.counts["dead", "invalid_json"] += 1
                written += 1
        paths = []
        for fmt, idx, ms, data in jobs:
            d = _EPOCH + timedelta(milliseconds=ms)
            writer = getattr(self, "w_" + fmt, None)
            rel, blob = writer(data, idx, d) if writer else self.w_ndjson(data, idx, d, fmt)
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

    def lines(self, fmt: str, items: list) -> list[tuple[bytes, bool]]:
        """NDJSON lines as (bytes, is_bad); SQS lines are Lambda events of 1-3 records."""
        if fmt == "sqs_lambda_events":
            items = [{"Records": chunk} for chunk in self.batches(items)]
        return [(orjson.dumps(it), False) for it in items]

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
    per_day = Counter()
    for ms in sorted(g.t0 + rng.randrange(g.span) for _ in range(events)):
        _emit_message(g, ms, receipt_fmts, duplicate_rate)
        per_day[_iso(ms)[:10]] += 1
    if "workmail" in formats:  # dated by the SNS Timestamp
        for ms in sorted(g.t0 + rng.randrange(g.span) for _ in range(max(2, events // 50))):
            text = orjson.dumps(g.workmail_event()).decode()
            g.put("workmail", g.envelope(text, WORKMAIL_TOPIC, ms, None), ms, "workmail")
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
            "receipt_messages": c["receipt"], "workmail_messages": c["workmail"],
            "messages": messages, "duplicates": c["duplicate"], "skipped": skipped,
            "dead_letters": dead, "per_day": dict(sorted(per_day.items()))}
