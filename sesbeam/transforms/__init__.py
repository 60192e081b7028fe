"""Composable PTransforms: read, decode, dedupe, analytics, write.

Each module also exposes the plain functions its transforms wrap, for tests and reuse.
"""

from sesbeam.transforms.analytics import (
    ComputeSenderStats,
    ComputeVerdictStats,
    WindowMessages,
)
from sesbeam.transforms.decode import DecodeNotifications, SourceFile, decode_source
from sesbeam.transforms.dedupe import DeduplicateMessages, dedupe_table
from sesbeam.transforms.read import ReadArchives
from sesbeam.transforms.write import CommitOutput, WriteTable

__all__ = [
    "CommitOutput",
    "ComputeSenderStats",
    "ComputeVerdictStats",
    "DecodeNotifications",
    "DeduplicateMessages",
    "ReadArchives",
    "SourceFile",
    "WindowMessages",
    "WriteTable",
    "decode_source",
    "dedupe_table",
]
