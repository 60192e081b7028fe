"""Fast path for the common case: the JSON text of one SES receipt notification -> a row.

``orjson`` builds a Python dict for every object in a notification, the ~15 ``headers``
included, which the messages table never reads; ``msgspec`` decodes the text straight into
typed structs that hold only what the row needs, about twice as fast. The row is then built
with the same helpers as ``normalize_ses``.

The contract is exactness: ``ses_row`` returns a row only when ``decode`` would have
parsed the text, routed it to ``normalize_ses`` and got this very row; in every other case
it returns None and the caller decodes the text the general way. So it steps aside for
any field it does not know (``forbid_unknown_fields``: a skipped value could hide JSON that
orjson rejects, such as a number beyond the double range), any value of another type than
SES writes (bare-string verdicts, numeric strings, ...), anything that is not a
``Received`` notification with a ``messageId``, and any time or integer that
``normalize_ses`` would reject or take another way.
"""

from __future__ import annotations

from typing import Union

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is a dependency, but optional at run time
    msgspec = None

from sesbeam.transforms.normalize import (
    address_of,
    ascii_lower,
    domain_of,
    parse_time_ms,
)

__all__ = ["AVAILABLE", "DecodedUnit", "bare_notification", "fast_unit", "lambda_event",
           "ses_row"]

AVAILABLE = msgspec is not None
_SETUP = "AMAZON_SES_SETUP_NOTIFICATION"
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1

if AVAILABLE:
    _Str = Union[str, None]
    _Strs = Union[list[str], None]
    _Addresses = Union[list[str], str, None]

    class _Struct(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        pass

    class _Status(_Struct):
        status: _Str = None

    _Verdict = Union[_Status, None]

    class _Header(_Struct):
        name: _Str = None
        value: _Str = None

    class _CommonHeaders(_Struct, rename={"from_": "from"}):
        from_: _Addresses = None
        subject: _Str = None
        messageId: _Str = None
        returnPath: _Str = None
        sender: _Addresses = None
        replyTo: _Addresses = None
        date: _Str = None
        to: _Addresses = None
        cc: _Addresses = None
        bcc: _Addresses = None

    class _Mail(_Struct):
        timestamp: _Str = None
        source: _Str = None
        messageId: _Str = None
        destination: _Strs = None
        headersTruncated: Union[bool, None] = None
        commonHeaders: Union[_CommonHeaders, None] = None
        headers: Union[list[_Header], None] = None
        sourceArn: _Str = None
        sourceIp: _Str = None
        callerIdentity: _Str = None
        sendingAccountId: _Str = None

    class _Action(_Struct):
        type: _Str = None
        bucketName: _Str = None
        objectKey: _Str = None
        objectKeyPrefix: _Str = None
        topicArn: _Str = None
        encoding: _Str = None
        functionArn: _Str = None
        invocationType: _Str = None
        organizationArn: _Str = None
        kmsKeyArn: _Str = None
        smtpReplyCode: _Str = None
        statusCode: _Str = None
        message: _Str = None
        sender: _Str = None
        scope: _Str = None
        headerName: _Str = None
        headerValue: _Str = None
        iamRoleArn: _Str = None

    class _Receipt(_Struct):
        timestamp: _Str = None
        processingTimeMillis: Union[int, None] = None
        recipients: _Strs = None
        spamVerdict: _Verdict = None
        virusVerdict: _Verdict = None
        spfVerdict: _Verdict = None
        dkimVerdict: _Verdict = None
        dmarcVerdict: _Verdict = None
        dmarcPolicy: Union[_Status, str, None] = None
        action: Union[_Action, None] = None

    class _Notification(_Struct):
        notificationType: str
        mail: _Mail
        receipt: Union[_Receipt, None] = None
        content: _Str = None

    _DECODER = msgspec.json.Decoder(_Notification)

    class _LambdaSes(_Struct):  # the ``ses`` object of an SES Lambda action record
        mail: _Mail
        receipt: Union[_Receipt, None] = None

    class _LambdaRecord(_Struct):
        ses: _LambdaSes
        eventSource: _Str = None
        eventVersion: _Str = None

    class _LambdaEvent(_Struct):
        Records: list[_LambdaRecord]

    _LAMBDA_DECODER = msgspec.json.Decoder(_LambdaEvent)

_NO_RECEIPT = _Receipt() if AVAILABLE else None
_NO_STATUS = _Status() if AVAILABLE else None
_NO_HEADERS = _CommonHeaders() if AVAILABLE else None
_NO_ACTION = _Action() if AVAILABLE else None


#: Entries of the caches below before they are emptied (senders and domains repeat).
_CACHE_ENTRIES = 1 << 16
_FROMS: dict[str, tuple[str | None, str | None]] = {}
_DOMAINS: dict[str, str | None] = {}


def _remember(cache: dict, key, value):
    if len(cache) >= _CACHE_ENTRIES:
        cache.clear()
    cache[key] = value
    return value


def _domain_after(tail: str) -> str | None:
    """``domain_of`` of an address whose text after its last ``@`` is ``tail``: that
    text is all ``domain_of`` reads."""
    domain = _DOMAINS.get(tail, _DOMAINS)
    if domain is _DOMAINS:
        domain = _remember(_DOMAINS, tail, domain_of("@" + tail))
    return domain


def _header_from(entry: str) -> tuple[str | None, str | None]:
    """``(address_of(entry), domain_of(that))``."""
    hit = _FROMS.get(entry)
    if hit is None:
        address = address_of(entry)
        at = address.rfind("@") if address else -1
        hit = _remember(_FROMS, entry, (address, _domain_after(address[at + 1:])
                                        if at >= 0 else None))
    return hit


def _domain_of_source(source: str | None) -> str | None:
    """``domain_of(address_of(source))``. Without ``<``, ``(`` or ``,``, ``address_of``
    only trims spaces and quotes, which leaves the text after the last ``@`` as it is but
    for trailing ones, and ``domain_of`` trims those too: the domain depends on that
    text alone."""
    at = source.rfind("@") if source else -1
    if at < 0:  # no address in it has a domain
        return None
    if "<" in source or "(" in source or "," in source:
        return domain_of(address_of(source))
    return _domain_after(source[at + 1:])


def ses_row(text: str, envelope: str, source_uri: str, source_record: int) -> tuple | None:
    """The messages row of the notification JSON ``text``, or None (decode it generally)."""
    try:
        n = _DECODER.decode(text)
    except Exception:  # noqa: BLE001 - malformed, mistyped, lone surrogates...: the general
        return None    # path decides (and words the dead letter)
    if n.notificationType != "Received":
        return None
    return _row(n.mail, n.receipt, envelope, source_uri, source_record)


def _row(mail, receipt, envelope: str, source_uri: str, source_record: int) -> tuple | None:
    """The messages row of a decoded receipt notification's ``mail`` and ``receipt`` (the
    row ``normalize_ses`` gives), or None: a setup notification, no ``messageId``, or a
    value ``normalize_ses`` would reject or take another way."""
    try:
        if not mail.messageId or mail.messageId == _SETUP:
            return None
        event_time = parse_time_ms(mail.timestamp, "mail.timestamp")
        receipt = receipt or _NO_RECEIPT
        receipt_ts = receipt.timestamp
        receipt_time = parse_time_ms(receipt_ts, "receipt.timestamp") \
            if receipt_ts is not None else None
    except Exception:  # noqa: BLE001 - the general path decides
        return None
    millis = receipt.processingTimeMillis
    if millis is not None and not _MIN_INT <= millis <= _MAX_INT:
        return None
    headers = mail.commonHeaders or _NO_HEADERS
    action = receipt.action or _NO_ACTION
    froms = headers.from_
    if isinstance(froms, str):
        froms = [froms]
    header_from, header_from_domain = _header_from(froms[0]) if froms else (None, None)
    mail_from = mail.source
    mail_from_domain = _domain_of_source(mail_from)
    recipients = receipt.recipients
    if recipients is None:
        recipients = mail.destination
    action_type = action.type
    s3 = action_type == "S3"
    policy = receipt.dmarcPolicy
    if policy is not None and not isinstance(policy, str):
        policy = policy.status
    return (
        mail.messageId,
        event_time,
        envelope,
        mail_from,
        mail_from_domain,
        header_from,
        header_from_domain,
        header_from_domain or mail_from_domain,
        headers.subject,
        recipients,
        (receipt.spamVerdict or _NO_STATUS).status,
        (receipt.virusVerdict or _NO_STATUS).status,
        (receipt.spfVerdict or _NO_STATUS).status,
        (receipt.dkimVerdict or _NO_STATUS).status,
        (receipt.dmarcVerdict or _NO_STATUS).status,
        ascii_lower(policy) if policy else policy,
        millis,
        [action_type] if action_type else [],
        action.bucketName if s3 else None,
        action.objectKey if s3 else None,
        mail.headersTruncated,
        receipt_time,
        headers.messageId,
        None,
        1,
        source_uri,
        source_record,
    )


class DecodedUnit:
    """A container unit decoded by msgspec as it was cut out (``fast_unit``): one bare
    notification or one SES Lambda event. ``rows(uri, record)`` are its messages rows,
    numbered on from ``record``."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple]):
        self._rows = rows

    def rows(self, source_uri: str, first_record: int) -> list[tuple]:
        return [row[:-2] + (source_uri, first_record + i) for i, row in enumerate(self._rows)]


def bare_notification(raw) -> DecodedUnit | None:
    """The unit ``raw`` (bytes) as a ``DecodedUnit`` when it is a receipt notification
    that ``ses_row`` decodes, else None. As a top-level unit such an object goes to
    ``normalize_ses`` with envelope ``raw`` (it has no ``Records``, ``Type``/``Message``,
    ``summaryVersion`` or ``eventType`` key: ``ses_row`` refuses unknown keys), so the row is
    the general decoder's; and msgspec accepted all of ``raw``, which is one JSON object."""
    row = ses_row(raw, "raw", "", 0)
    return None if row is None else DecodedUnit([row])


def lambda_event(raw) -> DecodedUnit | None:
    """The unit ``raw`` (bytes) as a ``DecodedUnit`` when it is an SES Lambda event whose
    every record ``_row`` decodes, else None. As a top-level unit such an object (only
    ``Records``, a non-empty list of objects with only ``eventSource``, ``eventVersion``
    and a ``ses`` object of ``mail`` and ``receipt``) goes to ``records_event``, each
    record to ``leaf`` as a ``Received`` notification with envelope ``lambda``, and so to
    ``normalize_ses``, one record after the other: the rows are the general decoder's."""
    try:
        event = _LAMBDA_DECODER.decode(raw)
    except Exception:  # noqa: BLE001 - the general path decides
        return None
    rows = []
    for record in event.Records:
        row = _row(record.ses.mail, record.ses.receipt, "lambda", "", 0)
        if row is None:
            return None
        rows.append(row)
    return DecodedUnit(rows) if rows else None


def fast_unit(raw) -> DecodedUnit | None:
    """A top-level unit decoded by msgspec: a bare receipt notification
    (``bare_notification``) or an SES Lambda event (``lambda_event``); else None."""
    return bare_notification(raw) or lambda_event(raw)
