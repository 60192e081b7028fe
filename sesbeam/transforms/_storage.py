"""File and object access for the DoFns, with one client per DoFn instance.

Beam's ``FileSystems`` works for every scheme, but its S3 filesystem builds a new boto3
session and client for every call (about 0.3 s each), which dominates a run over many
small objects. ``Storage`` keeps one ``S3IO`` (one boto3 client) for ``s3://`` paths and
goes through ``FileSystems`` for everything else. Create it in ``DoFn.setup()``: it is not
meant to be pickled.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["Storage", "is_remote"]

_GLOB = re.compile(r"[*?\[]")


def is_remote(path: str) -> bool:
    """True for object-store paths (``scheme://``), which have no directories."""
    return "://" in path


class Storage:
    """Open, create, list, rename and delete paths of any Beam filesystem."""

    def __init__(self, options: PipelineOptions | None = None):
        self._options = options
        self._s3 = None

    def _s3io(self):
        if self._s3 is None:
            from apache_beam.io.aws import s3io

            options = self._options or FileSystems._pipeline_options or PipelineOptions()
            self._s3 = s3io.S3IO(options=options)
        return self._s3

    @staticmethod
    def _is_s3(path: str) -> bool:
        return path.startswith("s3://")

    def open(self, path: str) -> BinaryIO:
        """The object's bytes as stored (no decompression)."""
        if self._is_s3(path):
            return self._s3io().open(path, "r")
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def create(self, path: str, mime_type: str = "application/octet-stream") -> BinaryIO:
        """A new object at ``path`` (parent directories created locally)."""
        if self._is_s3(path):
            return self._s3io().open(path, "w", mime_type=mime_type)
        return FileSystems.create(path, mime_type=mime_type,
                                  compression_type=CompressionTypes.UNCOMPRESSED)

    def exists(self, path: str) -> bool:
        if self._is_s3(path):
            return self._s3io().exists(path)
        return FileSystems.exists(path)

    def list(self, pattern: str) -> Iterator[tuple[str, int, float | None]]:
        """``(path, size, mtime seconds)`` of the objects matching a glob pattern."""
        if not self._is_s3(pattern):
            for result in FileSystems.match([pattern]):
                for m in result.metadata_list:
                    yield m.path, m.size_in_bytes, getattr(m, "last_updated_in_seconds", None)
            return
        if not _GLOB.search(pattern):
            if self.exists(pattern):
                io = self._s3io()
                yield pattern, io.size(pattern), io.last_updated(pattern)
            return
        prefix = pattern[:_GLOB.search(pattern).start()]
        regex = re.compile(FileSystem.translate_pattern(pattern))
        for path, (size, updated) in self._s3io().list_files(prefix, with_metadata=True):
            if regex.match(path):
                yield path, size, updated

    def rename(self, src: str, dst: str) -> None:
        if self._is_s3(src) and self._is_s3(dst):
            self._s3io().rename(src, dst)
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
        if s3:
            errors = {p: e for p, e in self._s3io().delete_paths(s3).items() if e is not None}
            if errors:
                raise IOError(f"could not delete {len(errors)} objects: {errors}")
        if other:
            FileSystems.delete(other)
