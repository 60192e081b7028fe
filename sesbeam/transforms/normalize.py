"""Turn one unwrapped notification into one row of the messages table.

Pure functions, no Beam: ``normalize_ses`` and ``normalize_workmail`` return a row tuple in
``MESSAGES`` column order or raise ``InvalidNotification``; ``MessageBuilder`` collects rows
column by column and emits ``pyarrow.RecordBatch``es.

Type rules (a field of another JSON type makes the notification a dead letter, kind
``invalid_notification``; nothing is half-kept):
- ``mail.timestamp``: ISO 8601 string (with or without milliseconds, ``Z``, an offset, or
  naive = UTC), or an RFC 5322 date. Required.
- verdicts: ``{"status": str}`` or a bare string; any string kept verbatim; null/absent -> null.
- ``dmarcPolicy``: string or ``{"status": str}``; lowercased.
- ``processingTimeMillis``: integer, integral float, or a string of digits.
- ``headersTruncated``: boolean or the strings ``"true"``/``"false"``.
- ``commonHeaders.from``: list of strings, or a single string.
- recipient lists: lists of strings.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pyarrow as pa

from sesbeam.schemas import MESSAGES, wire

__all__ = [
    "InvalidNotification",
    "MessageBuilder",
    "address_of",
    "ascii_lower",
    "domain_of",
    "normalize_ses",
    "normalize_workmail",
    "parse_time_ms",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat
_MS = timedelta(milliseconds=1)
#: Times must fall within years 1-9999 in UTC (what Python, and so readers, can represent).
MIN_TIME_MS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // _MS
MAX_TIME_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - _EPOCH) // _MS
_COMMENT = re.compile(r"\([^()]*\)")
_FIRST_ITEM = re.compile(r"[^,]*")
_ADDRESS_TRIM = ' \t\r\n"'
_DOMAIN_TRIM = ' \t\r\n">'
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: ``2018-10-08T14:05:45 +0000``: a space before the offset, seen in one AWS doc example.
_SPACED_OFFSET = re.compile(r"^(.*\d)\s+([+-]\d{2}:?\d{2}|Z)$")


class InvalidNotification(ValueError):
    """The notification cannot become a row (missing or mistyped required field)."""


def parse_time_ms(value: Any, field: str = "timestamp") -> int:
    """Milliseconds since the epoch (UTC) of an ISO 8601 or RFC 5322 time string."""
    if type(value) is str:  # the usual form first: ``2024-03-01T10:00:00.123Z``
        try:
            dt = _fromisoformat(value)
        except ValueError:
            pass
        else:
            # Read as it is (``fromisoformat`` refuses surrounding spaces, so ``strip``
            # below would change nothing) and in UTC, which years 1-9999 bound: the steps
            # below would give this very value, and ~40% slower.
            if dt.tzinfo is _UTC:
                delta = dt - _EPOCH
                return delta.days * 86_400_000 + delta.seconds * 1000 \
                    + delta.microseconds // 1000
    if not isinstance(value, str) or not value:
        raise InvalidNotification(f"{field} is {_describe(value)}, not a time string")
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        dt = _parse_lenient(text)
        if dt is None:
            raise InvalidNotification(f"{field} {value[:64]!r} is not a time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # ``(dt - _EPOCH) // _MS`` without the timedelta division (a normalised timedelta's
    # seconds and microseconds are not negative, so this floors the same way).
    delta = dt - _EPOCH
    ms = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise InvalidNotification(f"{field} {value[:64]!r} is outside years 1-9999 in UTC")
    return ms


def _parse_lenient(text: str) -> datetime | None:
    m = _SPACED_OFFSET.match(text)
    if m:
        try:
            return datetime.fromisoformat(m.group(1) + m.group(2))
        except ValueError:
            pass
    try:
        return parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError):
        return None


def address_of(value: Any) -> str | None:
    """The address in one From-style header entry.

    ``"Doe, John" <a@b.c>``, ``Norton I., Emperor <a@b.c>``, ``=?UTF-8?B?...?= <a@b.c>``
    and ``The Service <The Service <a@b.c>>`` all give ``a@b.c``: with a ``<``, the text
    after the last one up to the next ``>``; without, the first comma-separated item once
    parenthesised comments are removed. Spaces and double quotes around it are trimmed.
    """
    if not isinstance(value, str):
        return None
    if "<" in value:  # what `.*<([^>]*)` (re.S) matches: after the last `<`, up to a `>`
        start = value.rfind("<") + 1
        end = value.find(">", start)
        addr = value[start:end] if end >= 0 else value[start:]
    elif "(" in value or "," in value:
        addr = _FIRST_ITEM.match(_COMMENT.sub("", value)).group(0)
    else:
        addr = value
    addr = addr.strip(_ADDRESS_TRIM)
    return addr or None


def ascii_lower(text: str) -> str:
    """``text`` with ``A``-``Z`` lowercased and nothing else changed (``str.lower`` when
    it is all ASCII: ten times quicker than the ``translate`` it equals then)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def domain_of(address: str | None) -> str | None:
    """Domain of an address: after the last ``@``, trimmed, trailing dots removed,
    ASCII-lowercased; None without one."""
    if not address:
        return None
    at = address.rfind("@")
    if at < 0:
        return None
    domain = ascii_lower(address[at + 1:].strip(_DOMAIN_TRIM).rstrip("."))
    return domain or None


def _describe(value: Any) -> str:
    return "absent" if value is None else f"a {type(value).__name__}"


def _status(value: Any, field: str) -> str | None:
    if isinstance(value, dict):
        value = value.get("status")
    if value is None or isinstance(value, str):
        return value
    raise InvalidNotification(f"{field} status is {_describe(value)}")


def _int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidNotification(f"{field} is a bool")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif (isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()
          and len(value.strip()) <= 19):
        number = int(value.strip())
    else:
        raise InvalidNotification(f"{field} is {value!r:.40}, not an integer")
    if not -(2**63) <= number < 2**63:
        raise InvalidNotification(f"{field} {value!r:.40} is out of range")
    return number


def _bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidNotification(f"{field} is {_describe(value)}, not a boolean")


def _str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidNotification(f"{field} is {_describe(value)}, not a string")


def _strings(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidNotification(f"{field} is not a list of strings")


def _object(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise InvalidNotification(f"{field} is {_describe(value)}, not an object")


def synthetic_id(notification: dict) -> str:
    """Stable id for a notification without ``mail.messageId``."""
    try:
        text = orjson.dumps(notification, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        raise InvalidNotification("no mail.messageId, and too deeply nested to derive one") \
            from None
    digest = hashlib.sha1(text).hexdigest()
    return "sesbeam:" + digest


def normalize_ses(n: dict, envelope: str, source_uri: str, source_record: int) -> tuple:
    """One SES receipt notification (``mail`` + ``receipt``) as a messages row."""
    mail = _object(n.get("mail"), "mail")
    if not mail:
        raise InvalidNotification("mail is absent")
    receipt = _object(n.get("receipt"), "receipt")
    headers = _object(mail.get("commonHeaders"), "mail.commonHeaders")
    action = _object(receipt.get("action"), "receipt.action")

    event_time = parse_time_ms(mail.get("timestamp"), "mail.timestamp")
    message_id = _str(mail.get("messageId"), "mail.messageId") or synthetic_id(n)
    mail_from = _str(mail.get("source"), "mail.source")
    froms = headers.get("from")
    if isinstance(froms, str):
        froms = [froms]
    froms = _strings(froms, "commonHeaders.from")
    header_from = address_of(froms[0]) if froms else None
    header_from_domain = domain_of(header_from)
    mail_from_domain = domain_of(address_of(mail_from))
    recipients = _strings(receipt.get("recipients"), "receipt.recipients")
    if recipients is None:
        recipients = _strings(mail.get("destination"), "mail.destination")
    action_type = _str(action.get("type"), "receipt.action.type")
    s3 = action_type == "S3"
    policy = _status(receipt.get("dmarcPolicy"), "receipt.dmarcPolicy")
    receipt_ts = receipt.get("timestamp")
    return (
        message_id,
        event_time,
        envelope,
        mail_from,
        mail_from_domain,
        header_from,
        header_from_domain,
        header_from_domain or mail_from_domain,
        _str(headers.get("subject"), "commonHeaders.subject"),
        recipients,
        _status(receipt.get("spamVerdict"), "receipt.spamVerdict"),
        _status(receipt.get("virusVerdict"), "receipt.virusVerdict"),
        _status(receipt.get("spfVerdict"), "receipt.spfVerdict"),
        _status(receipt.get("dkimVerdict"), "receipt.dkimVerdict"),
        _status(receipt.get("dmarcVerdict"), "receipt.dmarcVerdict"),
        ascii_lower(policy) if policy else policy,
        _int(receipt.get("processingTimeMillis"), "receipt.processingTimeMillis"),
        [action_type] if action_type else [],
        _str(action.get("bucketName"), "receipt.action.bucketName") if s3 else None,
        _str(action.get("objectKey"), "receipt.action.objectKey") if s3 else None,
        _bool(mail.get("headersTruncated"), "mail.headersTruncated"),
        parse_time_ms(receipt_ts, "receipt.timestamp") if receipt_ts is not None else None,
        _str(headers.get("messageId"), "commonHeaders.messageId"),
        None,
        1,
        source_uri,
        source_record,
    )


def _address_field(value: Any, field: str) -> str | None:
    return _str(_object(value, field).get("address"), field + ".address")


def normalize_workmail(e: dict, time_ms: int | None, source_uri: str, source_record: int) -> tuple:
    """One WorkMail Run-Lambda event as a messages row (no verdicts)."""
    if time_ms is None:
        raise InvalidNotification("WorkMail event without a wrapper or source time")
    if not MIN_TIME_MS <= time_ms <= MAX_TIME_MS:
        raise InvalidNotification(f"WorkMail event time {time_ms} is outside years 1-9999")
    env = _object(e.get("envelope"), "envelope")
    mail_from = _address_field(env.get("mailFrom"), "envelope.mailFrom")
    domain = domain_of(address_of(mail_from))
    rcpts = env.get("recipients")
    if rcpts is not None and not isinstance(rcpts, list):
        raise InvalidNotification("envelope.recipients is not a list")
    recipients = [_address_field(r, "envelope.recipients[]") for r in rcpts or []]
    message_id = (_str(e.get("messageId"), "messageId") or _str(e.get("invocationId"), "invocationId")
                  or synthetic_id(e))
    return (
        message_id, time_ms, "workmail", mail_from, domain, None, None, domain,
        _str(e.get("subject"), "subject"), [r for r in recipients if r],
        None, None, None, None, None, None, None, [], None, None,
        None, None, None,
        _str(e.get("flowDirection"), "flowDirection"), 1, source_uri, source_record,
    )


_WIRE = wire(MESSAGES)
_ROW = pa.struct(list(_WIRE))


class MessageBuilder:
    """Collects message rows and builds ``MESSAGES`` RecordBatches: Arrow converts the row
    tuples as one struct array, in one pass over the rows."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self.append = self._rows.append  # one C call per row; columns are built in build()

    def __len__(self) -> int:
        return len(self._rows)

    def truncate(self, rows: int) -> None:
        """Forget the rows after the first ``rows``."""
        del self._rows[rows:]

    def build(self) -> pa.RecordBatch:
        """The collected rows as one batch; the builder is empty afterwards."""
        rows = pa.array(self._rows, type=_ROW)
        self._rows.clear()
        return pa.RecordBatch.from_struct_array(rows)
