"""Deduplication and the statistics combiners, without a pipeline."""

from __future__ import annotations

import random
import zlib
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from sesbeam.schemas import MESSAGES, SENDER_STATS, VERDICT_STATS
from sesbeam.transforms.analytics import (
    TableCombineFn,
    sender_merge,
    sender_partial,
    sender_partials,
    verdict_merge,
    verdict_partial,
    verdict_partials,
    with_window,
)
from sesbeam.transforms.dedupe import bucket_of, dedupe_table, merge_rows

STATUSES = ["PASS", "FAIL", "GRAY", "PROCESSING_FAILED", None, "DISABLED"]


def make_rows(n: int, seed: int = 0, dup_rate: float = 0.2) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        mid = f"m{rng.randrange(int(n * (1 - dup_rate)) + 1)}"
        rows.append({
            "message_id": mid,
            "event_time": 1_709_251_200_000 + zlib.crc32(mid.encode()) % 86_400_000 * 3,
            "envelope": rng.choice(["sns", "lambda", "raw", "workmail"]),
            "mail_from": "x@y", "mail_from_domain": "y",
            "header_from": None, "header_from_domain": None,
            "sender_domain": rng.choice(["a.example", "b.example", None]),
            "subject": None,
            "recipients": rng.sample(["r1", "r2", "r3", "r4"], rng.randint(0, 3)),
            **{f"{v}_verdict": rng.choice(STATUSES) for v in ("spam", "virus", "spf", "dkim",
                                                              "dmarc")},
            "dmarc_policy": rng.choice(["reject", "quarantine", "none", None]),
            "processing_time_ms": 1,
            "actions": [rng.choice(["S3", "SNS", "Lambda"])],
            "s3_bucket": None, "s3_object_key": None, "headers_truncated": False,
            "receipt_time": None, "smtp_message_id": None, "flow_direction": None,
            "notifications": 1,
            "source_uri": f"file:///{rng.randrange(3)}", "source_record": i,
        })
        if rows[-1]["actions"] == ["S3"]:
            rows[-1]["s3_bucket"], rows[-1]["s3_object_key"] = "b", f"k/{mid}"
    return rows


def table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MESSAGES)


def test_dedupe_merges_into_first_notification():
    rows = make_rows(2000, seed=1)
    out, duplicates = dedupe_table(table(rows))
    assert out.num_rows == len({r["message_id"] for r in rows})
    assert duplicates == len(rows) - out.num_rows
    by_id = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["message_id"], r["source_uri"], r["source_record"])):
        by_id[r["message_id"]].append(r)
    for got in out.to_pylist():
        group = by_id[got["message_id"]]
        first = group[0]
        assert (got["source_uri"], got["source_record"]) == (first["source_uri"],
                                                             first["source_record"])
        assert got["spam_verdict"] == first["spam_verdict"]
        assert got["recipients"] == list(dict.fromkeys(x for r in group for x in r["recipients"]))
        assert got["actions"] == list(dict.fromkeys(x for r in group for x in r["actions"]))
        assert got["notifications"] == len(group)
        s3 = [r["s3_object_key"] for r in group if r["s3_object_key"]]
        assert got["s3_object_key"] == (s3[0] if s3 else None)


def test_dedupe_is_order_independent():
    rows = make_rows(500, seed=2)
    a, _ = dedupe_table(table(rows))
    random.Random(3).shuffle(rows)
    b, _ = dedupe_table(table(rows))
    key = [("message_id", "ascending")]
    assert a.sort_by(key).equals(b.sort_by(key))


def test_dedupe_equals_merging_rows_one_message_at_a_time():
    """The vectorised merge against ``merge_rows``, with awkward lists and S3 fields: null
    and empty lists, null and repeated items, a bucket without a key, several notifications
    in a file."""
    rng = random.Random(11)
    rows = make_rows(3000, seed=12, dup_rate=0.5)
    for r in rows:
        r["recipients"] = rng.choice([None, [], ["r1", None], ["r2", "r2", "r1"],
                                      r["recipients"]])
        r["actions"] = rng.choice([None, [], r["actions"], ["SNS", "S3", "SNS"]])
        r["notifications"] = rng.randint(1, 3)
        if rng.random() < 0.2:
            r["s3_bucket"], r["s3_object_key"] = "only-bucket", None
        r["source_uri"] = f"file:///{rng.randrange(2)}"
        r["source_record"] = rng.randrange(50)
    out, duplicates = dedupe_table(table(rows))
    by_id = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["message_id"], r["source_uri"], r["source_record"])):
        by_id[r["message_id"]].append(r)
    # (a message with one notification keeps its row as it is)
    want = {mid: merge_rows(group) if len(group) > 1 else group[0]
            for mid, group in by_id.items()}
    got = {r["message_id"]: r for r in out.to_pylist()}
    assert duplicates == len(rows) - len(want) and got.keys() == want.keys()
    for mid, r in want.items():
        assert got[mid] == table([r]).to_pylist()[0], mid


def test_dedupe_without_duplicates_is_identity():
    rows = make_rows(300, seed=4, dup_rate=0.0)
    rows = list({r["message_id"]: r for r in rows}.values())
    out, duplicates = dedupe_table(table(rows))
    assert duplicates == 0 and out.num_rows == len(rows)


def test_buckets_are_stable():
    ids = pa.array(["a", "b", "a", "zz"])
    assert list(bucket_of(ids, 16)) == list(bucket_of(ids, 16))
    assert bucket_of(ids, 16)[0] == bucket_of(ids, 16)[2]


# -- statistics -----------------------------------------------------------------------------
def expected_verdicts(rows) -> Counter:
    c = Counter()
    for r in rows:
        if r["envelope"] != "workmail":
            for v in ("spam", "virus", "spf", "dkim", "dmarc"):
                c[(v, r[f"{v}_verdict"])] += 1
    return c


def expected_senders(rows) -> dict:
    out = {}
    for r in rows:
        s = out.setdefault(r["sender_domain"], Counter())
        s["messages"] += 1
        s["recipients"] += len(r["recipients"])
        for v in ("spam", "virus", "spf", "dkim", "dmarc"):
            s[f"{v}_fail"] += r[f"{v}_verdict"] == "FAIL"
        for v in ("spam", "spf", "dkim", "dmarc"):
            s[f"{v}_gray"] += r[f"{v}_verdict"] == "GRAY"
        for p in ("reject", "quarantine", "none"):
            s[f"dmarc_fail_{p}"] += r["dmarc_verdict"] == "FAIL" and r["dmarc_policy"] == p
        s["first_seen"] = min(s.get("first_seen", 2**62), r["event_time"])
        s["last_seen"] = max(s.get("last_seen", -(2**62)), r["event_time"])
    return out


def as_verdicts(t: pa.Table) -> Counter:
    return Counter({(r["verdict"], r["status"]): r["messages"] for r in t.to_pylist()})


def as_senders(t: pa.Table) -> dict:
    out = {}
    for r in t.to_pylist():
        d = {k: v for k, v in r.items() if k not in ("sender_domain", "window_start",
                                                     "window_end", "pane_timing",
                                                     "pane_index") and v}
        d["first_seen"] = round(r["first_seen"].timestamp() * 1000)
        d["last_seen"] = round(r["last_seen"].timestamp() * 1000)
        out[r["sender_domain"]] = Counter(d)
    return out


def run_combine(fn: TableCombineFn, batches, splits: int):
    """Feed batches to ``splits`` accumulators, merge them, compact, extract."""
    accs = [fn.create_accumulator() for _ in range(splits)]
    for i, b in enumerate(batches):
        accs[i % splits] = fn.add_input(accs[i % splits], b)
    accs = [fn.compact(a) for a in accs]
    return fn.extract_output(fn.merge_accumulators(accs))


@pytest.mark.parametrize("splits", [1, 2, 7])
def test_combiners_merge_equals_sequential(splits):
    rows = make_rows(3000, seed=5)
    batches = table(rows).to_batches(max_chunksize=47)
    assert len(batches) > 33  # crosses the compaction threshold
    verdict_fn = TableCombineFn(verdict_partial, verdict_merge,
                                pa.schema([VERDICT_STATS.field(n) for n in
                                           ("verdict", "status", "messages")]))
    sender_fn = TableCombineFn(sender_partial, sender_merge,
                               pa.schema([f for f in SENDER_STATS
                                          if f.name not in ("window_start", "window_end",
                                                            "pane_timing", "pane_index")]))
    assert as_verdicts(run_combine(verdict_fn, batches, splits)) == expected_verdicts(rows)
    got = as_senders(run_combine(sender_fn, batches, splits))
    want = {k: Counter({kk: vv for kk, vv in v.items() if vv}) for k, v in
            expected_senders(rows).items()}
    assert got == want


def _sorted(t: pa.Table, keys) -> pa.Table:
    return t.sort_by([(k, "ascending") for k in keys])


@pytest.mark.parametrize("size_ms", [900_000, 3_600_000, 86_400_000, 7 * 86_400_000])
def test_partials_of_all_windows_at_once_equal_each_window_alone(size_ms):
    """``*_partials`` over a batch equal ``*_partial`` of each window's rows alone, for
    every window its rows fall in (times before the epoch and null keys included)."""
    rows = make_rows(3000, seed=11)
    rows[0]["event_time"], rows[1]["event_time"] = -1, -size_ms - 5
    rows[2]["envelope"], rows[2]["event_time"] = "workmail", 10 * 365 * 86_400_000  # alone
    by_window = defaultdict(list)
    for r in rows:
        by_window[r["event_time"] // size_ms * size_ms].append(r)
    assert len(by_window) > 2
    verdicts = dict(verdict_partials(table(rows), size_ms))
    senders = dict(sender_partials(table(rows).to_batches(max_chunksize=10**6)[0], size_ms))
    assert set(senders) == set(by_window)
    assert set(verdicts) == {w for w, rs in by_window.items()
                             if any(r["envelope"] != "workmail" for r in rs)}
    for start, window_rows in by_window.items():
        alone = table(window_rows)
        want = {k: Counter({kk: vv for kk, vv in v.items() if vv}) for k, v in
                expected_senders(window_rows).items()}
        assert as_senders(senders[start]) == want
        assert _sorted(senders[start], ["sender_domain"]).equals(
            _sorted(sender_partial(alone), ["sender_domain"]))
        if start in verdicts:
            assert as_verdicts(verdicts[start]) == expected_verdicts(window_rows)
            assert _sorted(verdicts[start], ["verdict", "status"]).equals(
                _sorted(verdict_partial(alone), ["verdict", "status"]))
    assert list(verdict_partials(table([]), size_ms)) == []
    assert list(sender_partials(table([]), size_ms)) == []
    assert verdict_partial(table([rows[2]])).num_rows == 0  # WorkMail rows only


def test_combine_of_ready_partials():
    """``TableCombineFn(None, merge)`` takes partial tables as they come."""
    rows = make_rows(500, seed=3)
    fn = TableCombineFn(None, sender_merge, sender_partial(table(rows[:0])).schema)
    parts = [sender_partial(table(rows[i:i + 50])) for i in range(0, 500, 50)]
    got = as_senders(run_combine(fn, parts, 3))
    assert got == {k: Counter({kk: vv for kk, vv in v.items() if vv}) for k, v in
                   expected_senders(rows).items()}
    empty = verdict_partial(table([]))
    assert verdict_merge([empty, empty]).equals(empty) and sender_merge([parts[0]]).equals(
        parts[0].sort_by("sender_domain").combine_chunks()) is not None


def test_empty_combine_and_window_columns():
    fn = TableCombineFn(verdict_partial, verdict_merge, pa.schema(
        [VERDICT_STATS.field(n) for n in ("verdict", "status", "messages")]))
    assert fn.extract_output(fn.create_accumulator()).num_rows == 0
    out = fn.extract_output(fn.add_input(fn.create_accumulator(),
                                         table(make_rows(10)).to_batches()[0]))
    batch = with_window(out, 0, 86_400_000, VERDICT_STATS)
    assert batch.schema == VERDICT_STATS
    assert batch.column("window_end")[0].value == 86_400_000


def test_parts_sent_through_a_shuffle_do_not_drag_their_parent_along():
    import pickle

    import numpy as np

    from sesbeam.transforms._arrow import partition, to_batches

    big = table(make_rows(20000, seed=6, dup_rate=0.0))
    whole = len(pickle.dumps(big))
    parts = list(partition(big, np.arange(big.num_rows) % 16))
    assert len(parts) == 16
    assert sum(len(pickle.dumps(t)) for _, t in parts) < 1.5 * whole
    batches = list(to_batches(big, max_rows=1000))
    assert sum(len(pickle.dumps(b)) for b in batches) < 1.5 * whole


def test_key_by_bucket_keeps_every_row_once_in_its_bucket():
    from sesbeam.transforms._arrow import unpack
    from sesbeam.transforms.dedupe import _KeyByBucketDoFn

    rows = make_rows(2000, seed=9)
    batches = [b for i in range(0, 2000, 70) for b in table(rows[i:i + 70]).to_batches()]
    fn = _KeyByBucketDoFn(buckets=4, flush_rows=100)  # a split every 400 rows or more
    fn.start_bundle()
    during = [out for b in batches for out in fn.process(b)]
    after = [wv.value for wv in fn.finish_bundle()]
    assert during and after and len(during) % 4 == 0
    seen = []
    for bucket, packed in during + after:
        part = unpack(packed)
        assert part.column("message_id").num_chunks == 1  # one contiguous part per bucket
        assert set(bucket_of(part.column("message_id"), 4)) == {bucket}
        seen += part.to_pylist()
    key = lambda r: r["source_record"]  # noqa: E731
    assert sorted(seen, key=key) == sorted(table(rows).to_pylist(), key=key)


def test_partition_of_rows_in_key_order_slices_them_as_they_are():
    """Keys already in order skip the sort and its copy: same parts as for shuffled rows."""
    import numpy as np

    from sesbeam.transforms._arrow import partition

    t = table(make_rows(500, seed=9))
    keys = np.random.default_rng(1).integers(0, 7, t.num_rows)
    order = np.argsort(keys, kind="stable")
    in_order = t.take(pa.array(order))
    shuffled = [(k, p.to_pylist()) for k, p in partition(t, keys)]
    ordered = list(partition(in_order, keys[order]))
    assert [(k, p.to_pylist()) for k, p in ordered] == shuffled
    assert all(p.column(0).chunks[0].buffers()[-1].address ==  # views, not copies
               in_order.column(0).chunks[0].buffers()[-1].address for _, p in ordered)
