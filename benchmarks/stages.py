"""CPU per notification of each stage of the batch pipeline, as plain functions (no Beam).

    python benchmarks/stages.py ARCHIVE [--files 20] [--repeat 3]

ARCHIVE is an ``sns_gz`` data set's ``archive`` directory (see ``run.py``). Every stage runs
``--repeat`` times on the same input and the best time is kept (the least disturbed by
other load); lines starting with two spaces are parts of ``decode_source``.
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from sesbeam.transforms import fastses  # noqa: E402
from sesbeam.transforms._arrow import (  # noqa: E402
    MS_PER_DAY,
    epoch_ms,
    pack,
    partition,
    to_batches,
    unpack,
)
from sesbeam.transforms.analytics import sender_partials, verdict_partials  # noqa: E402
from sesbeam.transforms.decode import SourceFile, decode_source, decompress, split_units  # noqa: E402
from sesbeam.transforms.dedupe import _bucket_parts, dedupe_table  # noqa: E402
from sesbeam.transforms.write import write_parquet  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive")
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.archive, "**", "*.gz"), recursive=True))
    sources = [SourceFile(f, open(f, "rb").read()) for f in files[:args.files]]
    best: dict[str, float] = {}

    def clock(name, fn):
        out = None
        for _ in range(args.repeat):
            start = time.process_time()
            out = fn()
            best[name] = min(best.get(name, 1e9), time.process_time() - start)
        return out

    def each(fn, items):  # no result kept, no GC passes: as inside decode_source
        gc.disable()
        try:
            for item in items:
                fn(item)
        finally:
            gc.enable()

    plain = clock("  gunzip", lambda: [decompress(s.data)[0] for s in sources])
    clock("  find lines + orjson of the envelope",
          lambda: each(lambda data: [None for _ in split_units(data)], plain))
    texts = [unit[2]["Message"] for data in plain for unit in split_units(data)]
    clock("  msgspec decode of the notification", lambda: each(fastses._DECODER.decode, texts))
    clock("  msgspec decode + row tuple",
          lambda: each(lambda t: fastses.ses_row(t, "sns", "u", 0), texts))
    decoded = clock("decode_source (all of the above + Arrow)",
                    lambda: [decode_source(s) for s in sources])
    n = sum(d.tally["records"] for d in decoded)
    batches = [b for d in decoded for b in d.messages]
    # as DeduplicateMessages' first step: decoded batches gathered, then split at once
    # (the step splits every 131,072 rows; 20 files hold fewer)
    parts = clock("split by dedupe bucket",
                  lambda: list(_bucket_parts(pa.Table.from_batches(batches), 16)))
    buckets: dict = {}
    for key, part in parts:
        buckets.setdefault(key, []).append(part)
    packed = clock("pack for the shuffle", lambda: [pack(p) for _, p in parts])
    clock("unpack", lambda: [unpack(v) for v in packed])
    deduped = clock("dedupe_table", lambda: [dedupe_table(pa.concat_tables(v))[0]
                                             for v in buckets.values()])
    out = clock("to_batches", lambda: [b for t in deduped for b in to_batches(t)])
    day = MS_PER_DAY
    # as the batch pipeline's statistics: each batch's partial counts, all its windows at once
    clock("verdict_partials", lambda: [p for b in out for p in verdict_partials(b, day)])
    clock("sender_partials", lambda: [p for b in out for p in sender_partials(b, day)])
    days = clock("split by day + pack", lambda: [
        (k, pack(p)) for b in out
        for k, p in partition(b, epoch_ms(b.column("event_time")) // day)])
    by_day: dict = {}
    for key, part in days:
        by_day.setdefault(key, []).append(part)
    folder = tempfile.mkdtemp(prefix="sesbeam-stages-")

    def write():
        for key, values in by_day.items():
            t = pa.concat_tables([unpack(v) for v in values])
            t = t.take(pc.sort_indices(t, sort_keys=[("event_time", "ascending")]))
            write_parquet(t, f"{folder}/{key}.parquet", "messages")

    clock("unpack + sort + write Parquet", write)
    for name, seconds in best.items():
        print(f"{name:44} {seconds / n * 1e6:7.1f} us/notification")
    total = sum(v for k, v in best.items() if not k.startswith("  "))
    print(f"{'total':44} {total / n * 1e6:7.1f} us/notification ({n:,} notifications, "
          f"{len(sources)} files, best of {args.repeat}, load average {os.getloadavg()[0]:.2f})")
    return {k: v / n * 1e6 for k, v in best.items()}


if __name__ == "__main__":
    main()
