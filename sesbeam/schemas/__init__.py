"""Arrow schemas of every table sesbeam writes: the contract with warehouses.

Each field carries its documentation in the field metadata (key ``doc``); the README's
table reference is generated from these schemas (``markdown_table``) and a test checks it.
``SCHEMA_VERSION`` is written into every Parquet file's key-value metadata; bump it on any
change that is not a pure addition of a nullable column.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "MESSAGES",
    "VERDICT_STATS",
    "SENDER_STATS",
    "DEAD_LETTERS",
    "TABLES",
    "VERDICTS",
    "PARTITION_COLUMN",
    "markdown_table",
    "readme_tables",
    "update_readme",
    "SENDER_COUNTS",
    "TS",
    "parquet_metadata",
    "wire",
]

SCHEMA_VERSION = "1.1"

#: Hive partition column of the partitioned tables (``date=YYYY-MM-DD``, UTC). It lives in
#: the directory names, not inside the Parquet files.
PARTITION_COLUMN = "date"

#: The five SES receipt verdicts, in the order used by every table.
VERDICTS = ("spam", "virus", "spf", "dkim", "dmarc")

TS = pa.timestamp("ms", tz="UTC")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


MESSAGES = pa.schema(
    [
        _f("message_id", pa.string(),
           "`mail.messageId` (WorkMail: `messageId`). When a notification has none, "
           "`sesbeam:` + SHA-1 of the notification JSON, so identical copies still "
           "deduplicate.", nullable=False),
        _f("event_time", TS,
           "`mail.timestamp` in UTC (offsets converted, naive times taken as UTC). "
           "WorkMail: the nearest wrapper's time (SNS `Timestamp`, SQS `SentTimestamp`), "
           "else the source object's modification time.", nullable=False),
        _f("envelope", pa.string(),
           "How the notification was delivered: `sns` (SNS envelope, HTTP/SQS or Lambda "
           "style), `lambda` (SES Lambda action `Records[].ses`), `raw` (bare notification, "
           "e.g. SNS raw delivery), `workmail` (WorkMail Run-Lambda event).", nullable=False),
        _f("mail_from", pa.string(), "Envelope MAIL FROM (`mail.source`)."),
        _f("mail_from_domain", pa.string(),
           "Domain of `mail_from`, lowercased, trailing dot removed."),
        _f("header_from", pa.string(),
           "Address of the first `commonHeaders.from` entry (the last `<...>` when present)."),
        _f("header_from_domain", pa.string(),
           "Domain of `header_from`, lowercased, trailing dot removed."),
        _f("sender_domain", pa.string(),
           "`header_from_domain`, else `mail_from_domain`; null when neither has one. "
           "The key of `sender_stats`."),
        _f("subject", pa.string(), "`commonHeaders.subject` (WorkMail: `subject`)."),
        _f("recipients", pa.list_(pa.string()),
           "Envelope recipients (`receipt.recipients`, else `mail.destination`; WorkMail: "
           "`envelope.recipients`). Union over duplicates, first-seen order."),
        _f("spam_verdict", pa.string(), "`receipt.spamVerdict.status` as given; null when absent."),
        _f("virus_verdict", pa.string(), "`receipt.virusVerdict.status`; null when absent."),
        _f("spf_verdict", pa.string(), "`receipt.spfVerdict.status`; null when absent."),
        _f("dkim_verdict", pa.string(), "`receipt.dkimVerdict.status`; null when absent."),
        _f("dmarc_verdict", pa.string(), "`receipt.dmarcVerdict.status`; null when absent."),
        _f("dmarc_policy", pa.string(),
           "`receipt.dmarcPolicy` (string or `{status}` form), lowercased; SES sends it "
           "when DMARC fails."),
        _f("processing_time_ms", pa.int64(),
           "`receipt.processingTimeMillis` (number or numeric string)."),
        _f("actions", pa.list_(pa.string()),
           "`receipt.action.type` of every notification of this message (union)."),
        _f("s3_bucket", pa.string(),
           "Bucket of the raw email, from an S3 action (any notification of the message)."),
        _f("s3_object_key", pa.string(), "Object key of the raw email, from an S3 action."),
        _f("headers_truncated", pa.bool_(), "`mail.headersTruncated`."),
        _f("receipt_time", TS, "`receipt.timestamp` in UTC (when the action fired)."),
        _f("smtp_message_id", pa.string(), "The RFC 5322 Message-ID (`commonHeaders.messageId`)."),
        _f("flow_direction", pa.string(), "WorkMail `flowDirection` (INBOUND/OUTBOUND)."),
        _f("notifications", pa.int32(),
           "How many notifications (actions, redeliveries) were merged into this row.",
           nullable=False),
        _f("source_uri", pa.string(),
           "File or object the first notification was read from.", nullable=False),
        _f("source_record", pa.int64(),
           "Index of that notification among the records of `source_uri` (0-based).",
           nullable=False),
    ],
    metadata={"doc": "One row per distinct message (`mail.messageId`). Partitioned by "
                     "`date` of `event_time`."},
)

_WINDOW = [
    _f("window_start", TS, "Start of the fixed UTC window (aligned to the epoch).",
       nullable=False),
    _f("window_end", TS, "End of the window (exclusive).", nullable=False),
]
_PANE = [
    _f("pane_timing", pa.string(),
       "When the row was emitted: ON_TIME (batch, and streaming at the watermark), EARLY "
       "(streaming, before the window closed) or LATE (streaming, late data within the "
       "allowed lateness). Rows of one window and key add up to the total."),
    _f("pane_index", pa.int64(), "Index of the pane among the window's results (0 first)."),
]

VERDICT_STATS = pa.schema(
    _WINDOW + [
        _f("verdict", pa.string(), "One of spam, virus, spf, dkim, dmarc.", nullable=False),
        _f("status", pa.string(), "Verdict status as given (PASS, FAIL, GRAY, "
                                  "PROCESSING_FAILED, ...); null when absent."),
        _f("messages", pa.int64(), "Distinct messages with this status in the window.",
           nullable=False),
    ] + _PANE,
    metadata={"doc": "Messages per verdict status and window; SES receipt messages only "
                     "(no WorkMail). Partitioned by `date` of `window_start`."},
)

_COUNT_DOCS = {
    "messages": "Distinct messages.",
    "recipients": "Sum of the messages' recipient counts.",
    "spam_fail": "Messages with spam verdict FAIL.",
    "spam_gray": "Messages with spam verdict GRAY.",
    "virus_fail": "Messages with virus verdict FAIL.",
    "spf_fail": "Messages with SPF verdict FAIL.",
    "spf_gray": "Messages with SPF verdict GRAY (no SPF policy).",
    "dkim_fail": "Messages with DKIM verdict FAIL.",
    "dkim_gray": "Messages with DKIM verdict GRAY (not signed).",
    "dmarc_fail": "Messages with DMARC verdict FAIL.",
    "dmarc_gray": "Messages with DMARC verdict GRAY (no DMARC policy).",
    "dmarc_fail_reject": "DMARC FAIL with published policy reject.",
    "dmarc_fail_quarantine": "DMARC FAIL with published policy quarantine.",
    "dmarc_fail_none": "DMARC FAIL with published policy none.",
}

#: Additive count columns of sender_stats, in schema order.
SENDER_COUNTS = tuple(_COUNT_DOCS)

SENDER_STATS = pa.schema(
    _WINDOW
    + [_f("sender_domain", pa.string(), "Sender domain (see messages.sender_domain); null "
                                        "for messages without one.")]
    + [_f(name, pa.int64(), doc, nullable=False) for name, doc in _COUNT_DOCS.items()]
    + [
        _f("first_seen", TS, "Earliest event_time in the window.", nullable=False),
        _f("last_seen", TS, "Latest event_time in the window.", nullable=False),
    ] + _PANE,
    metadata={"doc": "Per sender domain and window; every count is additive over rows. "
                     "Partitioned by `date` of `window_start`."},
)

DEAD_LETTERS = pa.schema(
    [
        _f("source_uri", pa.string(), "File or object the record came from.", nullable=False),
        _f("offset", pa.int64(),
           "Byte offset of the undecodable unit in the (decompressed) source; -1 when the "
           "whole source is concerned.", nullable=False),
        _f("record", pa.int64(),
           "Index of the record inside the unit (Lambda/SQS `Records[]`, JSON array "
           "element); null for a whole unit."),
        _f("kind", pa.string(),
           "Error kind: invalid_json, too_large, unexpected_shape, invalid_notification, "
           "corrupt_compression, unreadable_source, decoder_error, invalid_signature.",
           nullable=False),
        _f("detail", pa.string(), "Human-readable reason.", nullable=False),
        _f("raw", pa.binary(),
           "The bytes that could not be decoded: the unit itself, the inner body or "
           "element, the first 64 KiB of a too-large unit, or the stored source object "
           "for compression errors.",
           nullable=False),
    ],
    metadata={"doc": "Every record that could not be turned into a message, with its raw "
                     "bytes. Not partitioned."},
)

#: Table name -> (schema, column whose UTC date partitions it, or None).
TABLES = {
    "messages": (MESSAGES, "event_time"),
    "verdict_stats": (VERDICT_STATS, "window_start"),
    "sender_stats": (SENDER_STATS, "window_start"),
    "dead_letters": (DEAD_LETTERS, None),
}


def wire(schema: pa.Schema) -> pa.Schema:
    """``schema`` without its docs: the form batches travel in between stages.

    Beam pickles every element it shuffles, schema included; the field docs would make a
    small batch several times larger. Files get the documented schema back when written.
    """
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])


def parquet_metadata(table: str) -> dict[bytes, bytes]:
    """Key-value metadata written into every Parquet file of ``table``."""
    return {b"sesbeam.table": table.encode(), b"sesbeam.schema_version": SCHEMA_VERSION.encode()}


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, {t.tz}]"
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def markdown_table(name: str) -> str:
    """The README reference of one table: its doc line, then a column table."""
    schema, partition = TABLES[name]
    lines = [f"#### `{name}`", "", schema.metadata[b"doc"].decode(), "",
             "| column | type | null | meaning |", "|---|---|---|---|"]
    for field in schema:
        doc = field.metadata[b"doc"].decode()
        lines.append(f"| `{field.name}` | {_type_name(field.type)} | "
                     f"{'yes' if field.nullable else 'no'} | {doc} |")
    if partition:
        lines.append(f"| `{PARTITION_COLUMN}` | partition | no | "
                     f"`YYYY-MM-DD` of `{partition}` (directory name). |")
    return "\n".join(lines) + "\n"


README_START = "<!-- tables:start (generated by `python -m sesbeam.schemas --update README.md`) -->"
README_END = "<!-- tables:end -->"


def readme_tables() -> str:
    """The README's table reference, generated from the schemas."""
    parts = [f"Schema version `{SCHEMA_VERSION}` (Parquet key-value metadata "
             "`sesbeam.schema_version`; the table name is in `sesbeam.table`).\n"]
    parts += [markdown_table(name) for name in TABLES]
    return "\n".join(parts)


def update_readme(path: str) -> bool:
    """Rewrite the generated section of the README at ``path``; True when it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_tables()}{README_END}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text
