"""Find and read archive objects through Beam's filesystems (local paths, ``s3://``, ...).

``ReadArchives`` yields one ``SourceFile`` per object, with its bytes as stored (gzip is
detected later, by its magic bytes, in ``decode``). Listing happens on the workers, after
a ``Create`` of the input locations, so nothing is listed on the launching machine.

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
from sesbeam.transforms.decode import SourceFile

__all__ = ["ReadArchives", "expand_location", "read_source"]

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


def read_source(path: str, mtime_ms: int | None = None,
                storage: Storage | None = None) -> SourceFile:
    """The whole object at ``path``, or a ``SourceFile`` carrying the read error."""
    try:
        with (storage or Storage()).open(path) as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 - any read failure becomes a dead letter
        _LOG.warning("could not read %s: %s", path, e)
        return SourceFile(path, None, mtime_ms, f"{type(e).__name__}: {e}")
    return SourceFile(path, data, mtime_ms)


class _ExpandDoFn(beam.DoFn):
    def setup(self):
        self._storage = Storage()

    def process(self, location: str):
        found = 0
        for path, _, mtime in expand_location(location, self._storage):
            found += 1
            yield path, mtime
        if not found:
            _LOG.warning("input %s matched no objects", location)


class _ReadDoFn(beam.DoFn):
    def __init__(self, fail_on_unreadable: bool):
        self._fail = fail_on_unreadable

    def setup(self):
        self._storage = Storage()

    def process(self, element):
        path, mtime_ms = element
        source = read_source(path, mtime_ms, self._storage)
        if source.data is None and self._fail:
            raise IOError(f"cannot read {path}: {source.error}")
        yield source


class ReadArchives(beam.PTransform):
    """Locations -> one ``SourceFile`` per archive object found under them.

    An object that cannot be read (after the client's retries) becomes a ``SourceFile``
    without data, which decodes to an ``unreadable_source`` dead letter; with
    ``fail_on_unreadable`` the read fails the pipeline instead.
    """

    def __init__(self, locations: list[str], fail_on_unreadable: bool = False):
        super().__init__()
        if not locations:
            raise ValueError("ReadArchives needs at least one location")
        self._locations = list(locations)
        self._fail = fail_on_unreadable

    def expand(self, pbegin):
        return (
            pbegin
            | "Locations" >> beam.Create(self._locations)
            | "List" >> beam.ParDo(_ExpandDoFn())
            | "Distribute" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadDoFn(self._fail))
        )
