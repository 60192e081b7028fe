"""File and object access for the DoFns, with one client per DoFn instance.

Beam's ``FileSystems`` works for every scheme, but its S3 filesystem builds a new boto3
session and client for every call (about 0.3 s each, which dominates a run over many
small objects) and wraps calls in retries of up to ten minutes. ``Storage`` talks to S3
with one boto3 client whose retries are botocore's bounded, jittered "standard" mode
(``S3_MAX_ATTEMPTS`` attempts per request unless ``AWS_MAX_ATTEMPTS`` says otherwise), and
goes through ``FileSystems`` for every other scheme. It honours Beam's ``--s3_*`` options
and otherwise the standard AWS environment (``AWS_ENDPOINT_URL(_S3)``, region, credential
chain). Create it in ``DoFn.setup()``: it is not meant to be pickled.
"""

from __future__ import annotations

import io
import os
import re
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

__all__ = ["Storage", "is_remote", "s3_client"]

_GLOB = re.compile(r"[*?\[]")
#: Attempts per S3 request (botocore "standard" retries: exponential backoff with jitter,
#: capped at 20 s between attempts), so an object that stays unavailable costs about a
#: minute, not Beam's ten.
S3_MAX_ATTEMPTS = 6


def is_remote(path: str) -> bool:
    """True for object-store paths (``scheme://``), which have no directories."""
    return "://" in path


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path[len("s3://"):].partition("/")
    return bucket, key


def s3_client(options: PipelineOptions | None = None):
    """A boto3 S3 client from Beam's ``--s3_*`` options, else the AWS environment."""
    import boto3
    from botocore.config import Config

    s3 = (options or FileSystems._pipeline_options or PipelineOptions()).view_as(S3Options)
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_MAX_ATTEMPTS)
    return boto3.session.Session().client(
        "s3",
        region_name=s3.s3_region_name,
        endpoint_url=s3.s3_endpoint_url,
        use_ssl=not s3.s3_disable_ssl,
        verify=s3.s3_verify,
        aws_access_key_id=s3.s3_access_key_id,
        aws_secret_access_key=s3.s3_secret_access_key,
        aws_session_token=s3.s3_session_token,
        config=Config(retries={"mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                               "total_max_attempts": attempts}),
    )


class _S3Writer(io.BytesIO):
    """Buffers an object and uploads it on close, in one request (objects up to 5 GB;
    output files are far smaller: ``ROWS_PER_FILE`` caps them)."""

    def __init__(self, client, path: str, mime_type: str):
        super().__init__()
        self._client, self._path, self._mime = client, path, mime_type

    def close(self) -> None:
        if not self.closed:
            bucket, key = _split(self._path)
            self._client.put_object(Bucket=bucket, Key=key, Body=self.getvalue(),
                                    ContentType=self._mime)
        super().close()


class _S3Reader(io.RawIOBase):
    """An S3 object read as a stream. A body cut off mid-transfer is requested again from
    where it stopped (``Range``, pinned to the first response's ETag with ``If-Match``):
    botocore retries requests, not the streaming of their bodies."""

    def __init__(self, client, path: str):
        super().__init__()
        self._client, self._path = client, path
        self._bucket, self._key = _split(path)
        self._pos, self._etag, self._body = 0, None, None
        self._size: int | None = None
        self._request()

    def _request(self) -> None:
        args = {"Bucket": self._bucket, "Key": self._key}
        if self._pos:
            args["Range"] = f"bytes={self._pos}-"
        if self._etag:
            args["IfMatch"] = self._etag
        response = self._client.get_object(**args)
        self._etag = self._etag or response.get("ETag")
        if self._size is None:
            self._size = response.get("ContentLength")
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import IncompleteReadError, ResponseStreamingError
        from urllib3.exceptions import HTTPError as Urllib3Error

        if self._size is not None and self._pos >= self._size:
            return b""
        for attempt in range(S3_MAX_ATTEMPTS):
            try:
                if self._body is None:
                    self._request()
                data = self._body.read(None if size is None or size < 0 else size)
                if not data and self._size is not None and self._pos < self._size:
                    raise IncompleteReadError(actual_bytes=self._pos,
                                              expected_bytes=self._size)
                self._pos += len(data)
                return data
            except (BotoConnectionError, IncompleteReadError, ResponseStreamingError,
                    Urllib3Error, ConnectionError):
                self._body = None
                if attempt == S3_MAX_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


class Storage:
    """Open, create, list, rename and delete paths of any Beam filesystem."""

    def __init__(self, options: PipelineOptions | None = None):
        self._options = options
        self._s3 = None

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = s3_client(self._options)
        return self._s3

    @staticmethod
    def _is_s3(path: str) -> bool:
        return path.startswith("s3://")

    def open(self, path: str) -> BinaryIO:
        """The object's bytes as stored (no decompression), read as a stream."""
        if self._is_s3(path):
            return _S3Reader(self.s3, path)
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def create(self, path: str, mime_type: str = "application/octet-stream") -> BinaryIO:
        """A new object at ``path`` (parent directories created locally)."""
        if self._is_s3(path):
            return _S3Writer(self.s3, path, mime_type)
        return FileSystems.create(path, mime_type=mime_type,
                                  compression_type=CompressionTypes.UNCOMPRESSED)

    def exists(self, path: str) -> bool:
        if not self._is_s3(path):
            return FileSystems.exists(path)
        from botocore.exceptions import ClientError

        bucket, key = _split(path)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def files(self, folder: str, pattern: str = "**") -> list[str]:
        """Sorted paths matching ``folder/pattern``; none when a local folder is absent."""
        folder = folder.rstrip("/")
        if not is_remote(folder) and not self.exists(folder):
            return []
        return sorted(path for path, _, _ in self.list(f"{folder}/{pattern}"))

    def list(self, pattern: str) -> Iterator[tuple[str, int, float | None]]:
        """``(path, size, mtime seconds)`` of the objects matching a glob pattern."""
        if not self._is_s3(pattern):
            for result in FileSystems.match([pattern]):
                for m in result.metadata_list:
                    yield m.path, m.size_in_bytes, getattr(m, "last_updated_in_seconds", None)
            return
        glob = _GLOB.search(pattern)
        prefix = pattern[:glob.start()] if glob else pattern
        regex = re.compile(FileSystem.translate_pattern(pattern))
        bucket, key_prefix = _split(prefix)
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=key_prefix)
        for page in pages:
            for obj in page.get("Contents", ()):
                path = f"s3://{bucket}/{obj['Key']}"
                if regex.match(path):
                    yield path, obj["Size"], obj["LastModified"].timestamp()

    def rename(self, src: str, dst: str) -> None:
        if self._is_s3(src) and self._is_s3(dst):
            (sb, sk), (db, dk) = _split(src), _split(dst)
            self.s3.copy_object(CopySource={"Bucket": sb, "Key": sk}, Bucket=db, Key=dk)
            self.s3.delete_object(Bucket=sb, Key=sk)
            return
        if not is_remote(dst):
            parent = dst.rsplit("/", 1)[0]
            if not FileSystems.exists(parent):
                try:
                    FileSystems.mkdirs(parent)
                except IOError:
                    pass  # created concurrently
        FileSystems.rename([src], [dst])

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        s3 = [p for p in paths if self._is_s3(p)]
        other = [p for p in paths if not self._is_s3(p)]
        by_bucket: dict[str, list[str]] = {}
        for path in s3:
            bucket, key = _split(path)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                response = self.s3.delete_objects(Bucket=bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
                if response.get("Errors"):
                    raise IOError(f"could not delete from {bucket}: {response['Errors'][:3]}")
        if other:
            FileSystems.delete(other)
