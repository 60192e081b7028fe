"""Find archive objects through Beam's filesystems (local paths, ``s3://``, ...).

``ReadArchives`` yields one ``ArchiveObject`` (path, size, mtime) per object; ``decode``
streams its bytes (gzip is detected there, by its magic bytes). Listing happens on the
workers, after a ``Create`` of the input locations, so nothing is listed on the launching
machine (but for local runs, where ``run_batch`` sums the sizes up to 128 MiB to choose
its worker processes: the launching machine is then the worker).

S3 goes through ``apache_beam.io.aws``; its boto3 client honours the standard AWS
environment (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION``, the
credential chain) unless the ``--s3_*`` pipeline options say otherwise.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import apache_beam as beam

from sesbeam.transforms._storage import Storage, is_remote
from sesbeam.transforms.decode import ArchiveObject

__all__ = ["ReadArchives", "expand_location"]

_LOG = logging.getLogger(__name__)
_GLOB_CHARS = "*?["


def expand_location(location: str, storage: Storage | None = None,
                    ) -> Iterator[tuple[str, int, int | None]]:
    """``(path, size, mtime_ms)`` of every object a location names.

    A location is a file or object, a glob (``**`` crosses directories), or a directory
    or ``s3://bucket/prefix`` read recursively. Directory markers (keys ending in ``/``)
    are left out.
    """
    storage = storage or Storage()
    if any(c in location for c in _GLOB_CHARS):
        pattern = location
    elif not is_remote(location) and os.path.isdir(location):
        pattern = location.rstrip("/") + "/**"
    elif not location.endswith("/") and storage.exists(location):
        pattern = location
    else:
        pattern = location.rstrip("/") + "/**"
    seen = set()
    for path, size, mtime in storage.list(pattern):
        if path.endswith("/") or path in seen:
            continue
        seen.add(path)
        yield path, size, int(mtime * 1000) if mtime else None


class _ExpandDoFn(beam.DoFn):
    def setup(self):
        self._storage = Storage()

    def process(self, location: str):
        found = 0
        for path, size, mtime in expand_location(location, self._storage):
            found += 1
            yield ArchiveObject(path, size, mtime)
        if not found:
            _LOG.warning("input %s matched no objects", location)


class ReadArchives(beam.PTransform):
    """Locations -> one ``ArchiveObject`` per archive object found under them.

    Listing runs on the workers; the objects are then spread over them. Their bytes are
    read as a stream by ``DecodeNotifications``, so no object is ever held whole.
    """

    def __init__(self, locations: list[str]):
        super().__init__()
        if not locations:
            raise ValueError("ReadArchives needs at least one location")
        self._locations = list(locations)

    def expand(self, pbegin):
        return (
            pbegin
            | "Locations" >> beam.Create(self._locations)
            | "List" >> beam.ParDo(_ExpandDoFn())
            | "Distribute" >> beam.Reshuffle()
        )
