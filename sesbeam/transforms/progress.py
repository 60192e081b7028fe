"""Progress of a batch run on a terminal: files and bytes read, records per second.

The read and decode DoFns call ``note_source(nbytes, records)`` once per source object.
When stderr is a terminal, one line is redrawn in place at most once a second::

    sesbeam: 12 files  34.5 MB  120,345 records  8,210 records/s  2.4 MB/s  0:14

When stderr is not a terminal (a log file, a CI job, a Dataflow or Flink worker) nothing
is printed. ``SESBEAM_PROGRESS`` overrides the detection: ``always`` (or ``1``, ``on``)
forces the line, ``never`` (or ``0``, ``off``) silences it, ``auto`` is the default.

Counters are per process. When a local run starts worker processes, the launching process
sets ``SESBEAM_PROGRESS_DIR`` for them: each worker then writes its counts to a file there
(replaced after every source object) instead of drawing, and the launching process draws
one line with their sums (``follow``). On remote workers stderr is never a terminal, so
they stay quiet.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Callable, TextIO

__all__ = ["DIR_ENV", "ENV", "Progress", "finish", "follow", "note_source", "progress_mode",
           "reporter", "reset"]

#: Environment variable that forces (``always``) or disables (``never``) the progress line.
ENV = "SESBEAM_PROGRESS"
#: Set for worker processes of a local run: the folder where they write their counts.
DIR_ENV = "SESBEAM_PROGRESS_DIR"
_ALWAYS = {"1", "always", "on", "yes", "true", "force"}
_NEVER = {"0", "never", "off", "no", "false"}


def progress_mode(value: str | None = None) -> str:
    """``always``, ``never`` or ``auto`` from ``value`` (default: the ``SESBEAM_PROGRESS`` env)."""
    value = (os.environ.get(ENV, "") if value is None else value).strip().lower()
    if value in _ALWAYS:
        return "always"
    if value in _NEVER:
        return "never"
    return "auto"


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts sources, bytes and records; redraws one status line at most every ``interval``.

    ``stream`` defaults to ``sys.stderr`` (looked up when writing, so test harnesses that
    swap it are honoured); ``enabled`` defaults to the ``SESBEAM_PROGRESS`` mode, and in
    ``auto`` mode to whether the stream is a terminal. Thread-safe.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._enabled = enabled
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self.reset()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def enabled(self) -> bool:
        if self._enabled is not None:
            return self._enabled
        mode = progress_mode()
        return mode == "always" or (mode == "auto" and _is_tty(self.stream))

    def reset(self) -> None:
        """Zero the counters and restart the clock (a new run in the same process)."""
        with self._lock:
            self.files = self.bytes = self.records = 0
            self.started = self._clock()
            self._last_draw: float | None = None
            self._drawn = False

    def note_source(self, nbytes: int, records: int = 0, files: int = 1) -> None:
        """Count one source object (``files``) of ``nbytes`` bytes holding ``records`` records."""
        with self._lock:
            self.files += files
            self.bytes += nbytes
            self.records += records
            shared = os.environ.get(DIR_ENV)
            if shared:  # a worker process: a small file per source object, no drawing
                self._publish(shared)
                return
            now = self._clock()
            if self._last_draw is not None and now - self._last_draw < self.interval:
                return
            if self._last_draw is None and now - self.started < self.interval:
                # Nothing for runs that end within a second; start drawing after that.
                return
            self._last_draw = now
            if self.enabled:
                self._write("\r" + self.line(now) + "\x1b[K")
                self._drawn = True

    def _publish(self, folder: str) -> None:
        """This worker process's counts, to ``folder/<pid>.json`` (replaced whole)."""
        path = os.path.join(folder, f"{os.getpid()}.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump([self.files, self.bytes, self.records], f)
            os.replace(path + ".tmp", path)
        except OSError:  # the run's folder is gone (the run ended): nothing to show
            pass

    def follow(self, folder: str) -> None:
        """Draw, every ``interval``, the sums of the counts worker processes write to
        ``folder`` (see ``DIR_ENV``), until ``unfollow`` or ``finish``."""
        self._stop.clear()

        def run():
            while not self._stop.wait(self.interval):
                totals = [0, 0, 0]
                try:
                    names = [n for n in os.listdir(folder) if n.endswith(".json")]
                except OSError:
                    continue
                for name in names:
                    try:
                        with open(os.path.join(folder, name)) as f:
                            counts = json.load(f)
                    except (OSError, ValueError):
                        continue
                    totals = [t + c for t, c in zip(totals, counts)]
                with self._lock:
                    self.files, self.bytes, self.records = totals
                    if self.files and self.enabled and not self._stop.is_set():
                        self._write("\r" + self.line() + "\x1b[K")
                        self._drawn = True

        self._follower = threading.Thread(target=run, name="sesbeam-progress", daemon=True)
        self._follower.start()

    def unfollow(self) -> None:
        """Stop what ``follow`` started (the line stays until ``finish``)."""
        if self._follower is not None:
            self._stop.set()
            self._follower.join()
            self._follower = None

    def line(self, now: float | None = None) -> str:
        """The status text: files, MB read, records, records/s, MB/s, elapsed time."""
        elapsed = max((self._clock() if now is None else now) - self.started, 1e-9)
        return (f"sesbeam: {self.files:,} files  {self.bytes / 1e6:,.1f} MB  "
                f"{self.records:,} records  {self.records / elapsed:,.0f} records/s  "
                f"{self.bytes / 1e6 / elapsed:,.1f} MB/s  {_duration(elapsed)}")

    def finish(self) -> None:
        """Erase the status line, if one was drawn, so the summary starts on a clean line."""
        self.unfollow()
        with self._lock:
            if self._drawn:
                self._write("\r\x1b[K")
                self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail the run
            pass


_REPORTER: Progress | None = None
_REPORTER_LOCK = threading.Lock()


def reporter() -> Progress:
    """The process-wide reporter the DoFns feed."""
    global _REPORTER
    if _REPORTER is None:
        with _REPORTER_LOCK:
            if _REPORTER is None:
                _REPORTER = Progress()
    return _REPORTER


def note_source(nbytes: int, records: int = 0, files: int = 1) -> None:
    """Count one source object in the process-wide reporter (call from a DoFn)."""
    reporter().note_source(nbytes, records, files)


def follow(folder: str) -> None:
    """Show the sums of the worker processes' counts in ``folder`` (see ``DIR_ENV``)."""
    reporter().follow(folder)


def reset() -> None:
    """Restart the process-wide counters (at the start of a run)."""
    reporter().reset()


def finish() -> None:
    """Erase the process-wide status line (at the end of a run, before the summary)."""
    reporter().finish()
