"""Tests for the synthetic SES archive generator, checked with a small independent reader."""
import gzip
import hashlib
import json
import os
import re
import zlib
from collections import Counter

import pytest

from sesbeam.generate import ALL_FORMATS, generate_archive

SETUP_ID = "AMAZON_SES_SETUP_NOTIFICATION"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")
SENDING = ("Bounce", "Complaint", "Delivery")
BAD = object()


def file_hashes(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def read_units(blob):
    """Top-level JSON values of a file in order, with BAD for each undecodable line."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)  # handles concatenated members
    text = blob.decode("utf-8", "replace").lstrip("\ufeff")
    dec, pos = json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return
        try:
            obj, pos = dec.raw_decode(text, pos)
            yield obj
        except ValueError:
            nl = text.find("\n", pos)
            pos = len(text) if nl < 0 else nl + 1
            yield BAD


def gzip_members(blob):
    n = 0
    while blob:
        d = zlib.decompressobj(31)
        d.decompress(blob)
        blob, n = d.unused_data, n + 1
    return n


class Tally:
    """Classify every record found in an archive the way a reader is expected to."""

    def __init__(self):
        self.counts, self.per_day = Counter(), Counter()
        self.receipts, self.workmail, self.leaves = set(), set(), []

    def add(self, obj, sns_ts=None):
        c = self.counts
        if obj is BAD:
            c["dead:invalid_json"] += 1
        elif isinstance(obj, list):
            for o in obj:
                self.add(o)
        elif "Records" in obj:
            for r in obj["Records"]:
                self.add(r["ses"]) if "ses" in r else self.add(json.loads(r["body"]))
        elif "Type" in obj and "TopicArn" in obj:
            if obj["Type"] != "Notification":
                c["skip:sns_control"] += 1
                return
            try:
                inner = json.loads(obj["Message"])
            except ValueError:
                c["skip:plain_text"] += 1
                return
            self.add(inner, obj["Timestamp"])
        elif "summaryVersion" in obj:
            self.message(self.workmail, obj["messageId"], sns_ts)
        elif "eventType" in obj or obj.get("notificationType") in SENDING:
            c["skip:sending_event"] += 1
        elif obj.get("notificationType") == "AmazonSnsSubscriptionSucceeded":
            c["skip:subscription_succeeded"] += 1
        elif "mail" in obj and "receipt" in obj:
            ts = obj["mail"].get("timestamp")
            if obj["mail"]["messageId"] == SETUP_ID:
                c["skip:setup_notification"] += 1
            elif not isinstance(ts, str) or not ISO.match(ts):
                c["dead:invalid_notification"] += 1
            else:
                self.leaves.append(obj)
                self.message(self.receipts, obj["mail"]["messageId"], ts)
        else:
            c["skip:not_ses"] += 1

    def message(self, seen, mid, ts):
        if mid in seen:
            self.counts["duplicate"] += 1
        else:
            seen.add(mid)
            self.per_day[ts[:10]] += 1

    @property
    def records(self):
        return sum(self.counts.values()) + len(self.receipts) + len(self.workmail)


def tally(root, manifest):
    t = Tally()
    for rel in manifest["files"]:
        with open(os.path.join(root, rel), "rb") as fh:
            for unit in read_units(fh.read()):
                t.add(unit)
    return t


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("archive"))
    return root, generate_archive(root, events=1500, seed=7, bad_records=12)


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    kw = dict(events=150, bad_records=5, days=3)
    m1 = generate_archive(str(tmp_path / "a"), seed=1, **kw)
    m2 = generate_archive(str(tmp_path / "b"), seed=1, **kw)
    generate_archive(str(tmp_path / "c"), seed=2, **kw)
    h1, h2, h3 = (file_hashes(tmp_path / d) for d in "abc")
    assert m1 == m2 and h1 == h2 and len(h1) == len(m1["files"])
    assert set(h1.values()).isdisjoint(h3.values())
    assert json.loads(json.dumps(m1)) == m1


def test_manifest_equation(archive):
    _, m = archive
    assert m["receipt_messages"] == m["events"] == 1500
    assert m["workmail_messages"] == 1500 // 50
    assert m["messages"] == m["receipt_messages"] + m["workmail_messages"]
    assert m["records"] == (m["messages"] + m["duplicates"] + sum(m["skipped"].values())
                            + sum(m["dead_letters"].values()))
    assert set(m["skipped"]) == {"sending_event", "subscription_succeeded", "sns_control",
                                 "plain_text", "setup_notification", "not_ses"}
    assert all(v > 0 for v in m["skipped"].values())
    assert m["dead_letters"] == {"invalid_json": 6, "invalid_notification": 6}
    assert 0 < m["duplicates"] < 0.1 * m["events"]
    assert sorted(m["per_day"]) == [f"2024-03-0{d}" for d in range(1, 8)]
    assert sum(m["per_day"].values()) == m["messages"]


def test_independent_reader_agrees_with_manifest(archive):
    root, m = archive
    t = tally(root, m)
    assert len(t.receipts) == m["receipt_messages"]
    assert len(t.workmail) == m["workmail_messages"]
    assert t.counts["duplicate"] == m["duplicates"]
    assert {k: t.counts["skip:" + k] for k in m["skipped"]} == m["skipped"]
    assert {k: t.counts["dead:" + k] for k in m["dead_letters"]} == m["dead_letters"]
    assert t.records == m["records"]
    assert dict(t.per_day) == m["per_day"]


def test_all_formats_and_container_quirks(archive):
    root, m = archive
    files = m["files"]
    prefixes = ("sns/", "sns-gz/", "array/", "firehose/", "lambda/", "sqs/", "raw/", "workmail/")
    assert sorted(Counter(f.split("/")[0] + "/" for f in files).items()) == \
        sorted((p, 2) for p in prefixes)
    assert len(files) == 2 * len(ALL_FORMATS)
    assert all(re.match(r"[a-z-]+/\d{4}/\d\d/\d\d/", f) for f in files)
    blobs = {}
    for f in files:
        with open(os.path.join(root, f), "rb") as fh:
            blobs[f] = fh.read()
    sns = [b for f, b in blobs.items() if f.startswith("sns/")]
    assert any(b.startswith(b"\xef\xbb\xbf") for b in sns)
    assert any(b"\r\n\r\n" in b for b in sns)
    gz = {f: b for f, b in blobs.items() if f.startswith("sns-gz/")}
    assert all(b[:2] == b"\x1f\x8b" for b in gz.values())
    assert any(not f.endswith(".gz") for f in gz) and any(f.endswith(".json.gz") for f in gz)
    assert any(gzip_members(b) == 2 for b in gz.values())
    hose = [f for f in files if f.startswith("firehose/")]
    assert all(re.search(r"/\d\d/ses-receipts-1-\d{4}(-\d\d){5}-[0-9a-f-]{36}\Z", f) for f in hose)
    assert all(b"}{" in gzip.decompress(blobs[f]) for f in hose)
    arrays = [b for f, b in blobs.items() if f.startswith("array/")]
    assert all(b.startswith(b"[\n  {") and isinstance(json.loads(b), list) for b in arrays)
    bodies = [r["body"] for f, b in blobs.items() if f.startswith("sqs/")
              for line in b.splitlines() if line.startswith(b'{"Records"')
              for r in json.loads(line)["Records"]]
    assert any(b.startswith('{\n  "Type" : "Notification",') for b in bodies)
    assert any(b.startswith('{"notificationType":"Received"') for b in bodies)


def test_bad_lines_sit_between_good_ones(archive):
    root, m = archive
    for rel in m["files"]:
        with open(os.path.join(root, rel), "rb") as fh:
            blob = fh.read()
        units = list(read_units(blob))
        assert units[0] is not BAD and units[-1] is not BAD, rel
        if blob[:2] == b"\x1f\x8b" and gzip_members(blob) > 1:
            first = zlib.decompressobj(31).decompress(blob)
            assert list(read_units(first))[-1] is not BAD, rel


def test_notification_shapes(archive):
    root, m = archive
    notes = tally(root, m).leaves
    ids = [n["mail"]["messageId"] for n in notes]
    assert all(re.fullmatch(r"[0-9a-z]{28}|[0-9a-z]{40}", i) for i in ids)
    by_action = {}
    for n in notes:
        by_action.setdefault(n["receipt"]["action"]["type"], []).append(n)
    assert set(by_action) == {"Lambda", "SNS", "S3"}
    assert all("content" not in n and "notificationType" not in n for n in by_action["Lambda"])
    assert all(n["content"] and n["receipt"]["action"]["encoding"] == "UTF8"
               for n in by_action["SNS"])
    assert all("content" not in n and n["receipt"]["action"]["objectKey"] ==
               "inbox/" + n["mail"]["messageId"] for n in by_action["S3"])
    receipts = [n["receipt"] for n in notes]
    assert any("." not in n["mail"]["timestamp"] for n in notes)
    assert any(isinstance(r["processingTimeMillis"], str) for r in receipts)
    assert any("dmarcVerdict" not in r for r in receipts)
    policies = [r["dmarcPolicy"] for r in receipts if "dmarcPolicy" in r]
    assert any(isinstance(p, dict) for p in policies)
    assert any(p in ("none", "quarantine", "reject") for p in policies)
    assert all(r["dmarcVerdict"]["status"] == "FAIL" for r in receipts if "dmarcPolicy" in r)
    common = [n["mail"]["commonHeaders"] for n in notes]
    assert any("from" not in c for c in common)
    froms = [c["from"][0] for c in common if "from" in c]
    assert any(f.startswith("=?UTF-8?B?") for f in froms)
    assert any(f.startswith('"') for f in froms)
    statuses = Counter(r["spamVerdict"]["status"] for r in receipts)
    assert statuses["PASS"] > statuses["FAIL"] > 0
    assert max(len(r["recipients"]) for r in receipts) > 1


def test_no_bad_records_means_no_dead_letters(tmp_path):
    m = generate_archive(str(tmp_path), events=200, seed=3, bad_records=0)
    assert m["dead_letters"] == {"invalid_json": 0, "invalid_notification": 0}
    t = tally(str(tmp_path), m)
    assert not any(k.startswith("dead:") for k in t.counts)
    assert len(t.receipts) == m["receipt_messages"] == 200


@pytest.mark.parametrize("formats", [("json_array",), ("lambda_events",),
                                     ("firehose_concat_gz", "raw_ndjson")])
def test_format_subsets(tmp_path, formats):
    m = generate_archive(str(tmp_path), events=100, seed=5, bad_records=4, formats=formats,
                         files_per_format=1)
    t = tally(str(tmp_path), m)
    assert len(m["files"]) == len(formats)
    assert len(t.receipts) == m["receipt_messages"] == 100
    assert m["workmail_messages"] == 0
    assert t.records == m["records"]


def test_spilling_to_disk_changes_no_byte(tmp_path, monkeypatch):
    """Records go through the scratch spill; flushing after every record gives the same
    archive as buffering everything, and the scratch directory is removed."""
    from sesbeam import generate

    kw = dict(events=300, seed=4, bad_records=6, files_per_format=3)
    m1 = generate_archive(str(tmp_path / "a"), **kw)
    monkeypatch.setattr(generate._Spill, "_FLUSH_ONE", 1)
    monkeypatch.setattr(generate._Spill, "_FLUSH_ALL", 1)
    m2 = generate_archive(str(tmp_path / "b"), **kw)
    assert m1 == m2 and file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert not [n for n in os.listdir(tmp_path / "b") if n.startswith(".")]


# -- the benchmark data set ----------------------------------------------------------------------

from sesbeam.generate import BENCH_LAYOUTS, generate_benchmark_archive  # noqa: E402 (section)


def bench_tally(root, manifest):
    t = tally(root, manifest)
    assert not t.counts.keys() - {"duplicate"}, t.counts  # only receipts and duplicates
    return t


@pytest.mark.parametrize("layout", BENCH_LAYOUTS)
def test_benchmark_archive_reads_back(tmp_path, layout):
    m = generate_benchmark_archive(str(tmp_path), 1200, layout=layout, files=5, seed=3,
                                   processes=1)
    t = bench_tally(str(tmp_path), m)
    assert m["records"] == m["events"] == t.records == 1200
    assert len(t.receipts) == m["messages"] == m["receipt_messages"]
    assert t.counts["duplicate"] == m["duplicates"] == 1200 - m["messages"] > 20
    assert dict(t.per_day) == m["per_day"] and len(m["per_day"]) == 7
    assert len(m["files"]) == 5 and m["files"] == sorted(m["files"])
    raw = stored = 0
    for rel in m["files"]:
        with open(os.path.join(tmp_path, rel), "rb") as fh:
            blob = fh.read()
        assert gzip_members(blob) == 1
        raw, stored = raw + len(gzip.decompress(blob)), stored + len(blob)
    assert (raw, stored) == (m["bytes"], m["stored_bytes"])
    with open(os.path.join(tmp_path, m["files"][0]), "rb") as fh:
        first = gzip.decompress(fh.read())
    if layout == "firehose":
        assert b"}{" in first and b"\n" not in first
    else:
        assert first.count(b"\n") == len(first.splitlines())
    # canonical SES shapes only
    receipts = [n["receipt"] for n in t.leaves]
    assert all(isinstance(r["processingTimeMillis"], int) for r in receipts)
    assert all(isinstance(r["spamVerdict"], dict) for r in receipts)
    assert all(r["dmarcVerdict"]["status"] == "FAIL" and isinstance(r["dmarcPolicy"], str)
               for r in receipts if "dmarcPolicy" in r)
    assert any("dmarcPolicy" in r for r in receipts)
    assert all(ISO.match(n["mail"]["timestamp"]) for n in t.leaves)


def test_benchmark_archive_deterministic_and_process_independent(tmp_path):
    kw = dict(layout="sns_gz", files=4, seed=1)
    m1 = generate_benchmark_archive(str(tmp_path / "a"), 500, processes=1, **kw)
    m2 = generate_benchmark_archive(str(tmp_path / "b"), 500, processes=2, **kw)
    generate_benchmark_archive(str(tmp_path / "c"), 500, processes=1, **{**kw, "seed": 2})
    h1, h2, h3 = (file_hashes(tmp_path / d) for d in "abc")
    assert m1 == m2 and h1 == h2 and len(h1) == 4
    assert set(h1.values()).isdisjoint(h3.values())
    assert json.loads(json.dumps(m1)) == m1


def test_benchmark_layouts_hold_the_same_messages(tmp_path):
    ids = {}
    for layout in BENCH_LAYOUTS:
        m = generate_benchmark_archive(str(tmp_path / layout), 400, layout=layout, files=3,
                                       processes=1)
        ids[layout] = bench_tally(str(tmp_path / layout), m).receipts
    assert ids["sns_gz"] == ids["lambda"] == ids["firehose"] and len(ids["sns_gz"]) > 350


def test_benchmark_duplicates(tmp_path):
    """Identical redeliveries (byte for byte, some in a later file) and second rule actions
    (another action, a subset of the recipients, sometimes ahead of the first one)."""
    m = generate_benchmark_archive(str(tmp_path), 3000, layout="sns_gz", files=6, seed=5,
                                   processes=1)
    seen, identical, later_file, other_action, ahead = {}, 0, 0, 0, 0
    for f, rel in enumerate(m["files"]):
        with open(os.path.join(tmp_path, rel), "rb") as fh:
            for line in gzip.decompress(fh.read()).splitlines():
                note = json.loads(json.loads(line)["Message"])
                mid = note["mail"]["messageId"]
                if mid not in seen:
                    seen[mid] = (f, line, note)
                    continue
                f0, line0, note0 = seen[mid]
                if line == line0:
                    identical += 1
                    later_file += f > f0
                else:
                    other_action += 1
                    a0, a1 = note0["receipt"]["action"]["type"], note["receipt"]["action"]["type"]
                    assert {a0, a1} == {"SNS", "S3"}
                    assert set(note["receipt"]["recipients"]) <= set(note0["mail"]["destination"])
                    ahead += (a0, a1) == ("SNS", "S3")  # first actions are mostly S3
    assert identical + other_action == m["duplicates"]
    assert identical > 10 and later_file > 0 and other_action > 10 and ahead > 0
    assert len(set(seen)) == m["messages"]


def test_benchmark_record_size_is_realistic(tmp_path):
    """~5 KB per SNS-wrapped notification, like the reference archive (5.1 GB for 1M)."""
    m = generate_benchmark_archive(str(tmp_path), 1000, files=2, processes=1)
    assert 4_800 < m["bytes"] / m["records"] < 5_800
    assert 0.15 < m["stored_bytes"] / m["bytes"] < 0.4


def test_benchmark_archive_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_benchmark_archive(str(tmp_path), 10, layout="csv")
    with pytest.raises(ValueError):
        generate_benchmark_archive(str(tmp_path), 10, duplicate_rate=1.5)
    m = generate_benchmark_archive(str(tmp_path / "tiny"), 3, files=700, processes=1)
    assert m["records"] == 3 and len(m["files"]) == m["messages"] == 3
    empty = generate_benchmark_archive(str(tmp_path / "empty"), 0)
    assert empty["files"] == [] and empty["records"] == 0
