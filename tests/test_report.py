"""What users see: the HTML and text reports, the run summary table, the progress line."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sesbeam.generate import generate_archive
from sesbeam.pipeline import html_report as hr
from sesbeam.transforms import progress
from sesbeam.pipeline.batch import run_batch
from sesbeam.pipeline.cli import format_summary, main
from sesbeam.pipeline.report import html_report, read_table, text_report, write_html_report
from sesbeam.schemas import SENDER_STATS, TABLES, VERDICT_STATS, VERDICTS
from sesbeam.transforms.write import write_parquet

#: Charts every report has: volume, 5 verdicts + all FAIL rates, top by volume and by
#: failures, DMARC, new senders, records / skipped / dead letters.
CHARTS = {"volume", *(f"verdict-{v}" for v in VERDICTS), "verdict-fail-all", "top-volume",
          "top-failures", "dmarc-failures", "new-senders", "accounting-records",
          "accounting-skipped", "accounting-dead-letters"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    generate_archive(str(root / "archive"), events=1000, seed=3, bad_records=5)
    out = root / "out"
    summary = run_batch(["--input", str(root / "archive"), "--output", str(out)])
    return out, summary


@pytest.fixture(scope="module")
def page(run):
    return html_report(str(run[0]), generated_at=datetime(2024, 3, 9, tzinfo=timezone.utc))


class _Page(HTMLParser):
    """Tags with their attributes, SVG charts with their marks, texts, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.charts: dict[str, dict] = {}
        self.scripts: list[str] = []
        self.texts: list[str] = []
        self._chart: str | None = None
        self._script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "svg" and "data-chart" in a:
            self._chart = a["data-chart"]
            self.charts[self._chart] = {"attrs": a, "marks": 0, "texts": [], "legend": False}
        elif self._chart:
            chart = self.charts[self._chart]
            chart["marks"] += "data-mark" in a
            chart["legend"] |= a.get("class") == "legend"
        self._script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        self._script = False

    def handle_data(self, data):
        if self._script:
            self.scripts.append(data)
        elif self._chart:
            self.charts[self._chart]["texts"].append(data)
        self.texts.append(data)


def _sha256(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


# -- the HTML report over a real run ----------------------------------------------------------

def test_every_chart_has_marks_axes_and_legend(page):
    parsed = _Page(page)
    assert set(parsed.charts) == CHARTS
    for name, chart in parsed.charts.items():
        attrs = chart["attrs"]
        assert chart["marks"] > 0 and attrs["data-empty"] == "false", name
        assert int(attrs["data-marks"]) == chart["marks"], name
        assert chart["legend"], f"{name} has no legend"
        assert attrs.get("role") == "img" and attrs.get("aria-label"), name
        texts = " ".join(chart["texts"])
        assert re.search(r"\d", texts), f"{name} has no tick labels"
    time_axis = " ".join(parsed.charts["verdict-spam"]["texts"])
    assert "window start (UTC)" in time_axis and "% of messages" in time_axis
    assert "Mar 1" in time_axis
    assert "messages per window" in " ".join(parsed.charts["volume"]["texts"])
    assert "records" in " ".join(parsed.charts["accounting-dead-letters"]["texts"])


def test_page_is_self_contained(page):
    parsed = _Page(page)
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert not [t for t, _ in parsed.tags if t in ("link", "iframe", "img", "object", "embed")]
    # The only URL is the SVG namespace name; the CSP forbids loading anything at all.
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}
    csp = next(a["content"] for t, a in parsed.tags
               if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "connect-src" not in csp
    assert len(parsed.scripts) == 2
    for script in parsed.scripts:  # each inline script is allowed by its hash, nothing else
        assert f"'sha256-{_sha256(script)}'" in csp
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_numbers_match_the_tables(run, page):
    out, summary = run
    text = " ".join(" ".join(_Page(page).texts).split())
    s = summary
    assert (f"{s['records']:,} records = {s['messages']:,} messages + {s['duplicates']:,} "
            f"duplicates + {s['skipped']:,} skipped + {s['dead_letters']:,} dead letters") in text
    for kind in s["dead_letter_kinds"]:
        assert kind in text
    # The top domain by volume and by DMARC failures, recomputed from sender_stats.
    senders = read_table(str(out), "sender_stats")
    by = senders.group_by("sender_domain").aggregate([("messages", "sum"), ("dmarc_fail", "sum"),
                                                      ("dmarc_fail_reject", "sum")])
    top = by.sort_by([("messages_sum", "descending")]).to_pylist()[0]
    assert f"{top['sender_domain']} — messages: {top['messages_sum']:,}" in page
    worst = by.sort_by([("dmarc_fail_sum", "descending"), ("messages_sum", "descending")])
    worst = worst.to_pylist()[0]
    assert worst["dmarc_fail_sum"] > 0
    section = page[page.index('id="dmarc"'):page.index('id="new"')]
    assert worst["sender_domain"] in section
    # Verdict FAIL share over the whole period, as the overview card shows it.
    v = read_table(str(out), "verdict_stats").to_pylist()
    spam = [r for r in v if r["verdict"] == "spam"]
    fail = sum(r["messages"] for r in spam if r["status"] == "FAIL")
    whole = sum(r["messages"] for r in spam)
    assert f"{100 * fail / whole:.1f}%" in text and f"{fail:,} of {whole:,} messages" in text


def test_volume_chart_counts_every_message(run, page):
    out, _ = run
    verdicts = read_table(str(out), "verdict_stats")
    spam = verdicts.filter(pc.equal(verdicts.column("verdict"), "spam"))
    total = pc.sum(spam.column("messages")).as_py()
    volume = re.search(r'data-chart="volume".*?</svg>', page, re.S).group(0)
    bars = [int(n.replace(",", "")) for n in re.findall(r": ([\d,]+) messages</title>", volume)]
    assert sum(bars) == total and len(bars) == 7  # one bar per day of the archive


def test_text_report_still_works(run):
    text = text_report(str(run[0]))
    assert "Top 10 sender domains" in text and "dmarc" in text


def test_cli_report_writes_the_page_and_prints_its_path(run, tmp_path, capsys):
    target = tmp_path / "r" / "report.html"
    assert main(["report", str(run[0]), "--html", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert 'data-chart="volume"' in target.read_text()
    assert main(["report", str(run[0]), "--html", "-", "--top", "5"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


# -- synthetic outputs: edge cases -------------------------------------------------------------

def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _write(out: Path, name: str, rows: list[dict], day: str | None = None) -> None:
    schema = TABLES[name][0]
    table = pa.Table.from_pylist(rows, schema=schema)
    folder = out / name / f"date={day}" if day else out / name
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table, str(folder / "part-00000-test.parquet"), name)


def _sender(day: str, domain: str, messages: int, **fails) -> dict:
    row = {c: 0 for c in SENDER_STATS.names}
    row.update(pane_timing="ON_TIME", pane_index=0)
    row.update(window_start=_ms(day), window_end=_ms(day) + 86_400_000, sender_domain=domain,
               messages=messages, recipients=messages, first_seen=_ms(day) + 3_600_000,
               last_seen=_ms(day) + 7_200_000, **fails)
    return row


def _summary(out: Path, **extra) -> None:
    summary = {"output": str(out), "run_id": "test", "inputs": ["in"], "window_seconds": 86400,
               "sources": 1, "bytes": 10, "records": 3, "messages": 3, "duplicates": 0,
               "skipped": 0, "dead_letters": 0, "skipped_reasons": {},
               "dead_letter_kinds": {}, "tables": {}, "balanced": True}
    summary.update(extra)
    (out / "summary.json").write_text(json.dumps(summary))


def test_text_from_the_data_is_escaped(tmp_path):
    out = tmp_path / "out"
    evil = '<script>alert("x")</script>.example'
    _write(out, "sender_stats", [_sender("2024-03-01", evil, 5, dmarc_fail=2,
                                         dmarc_fail_reject=2)], "2024-03-01")
    _write(out, "sender_stats", [_sender("2024-03-02", "<b>new</b>", 9)], "2024-03-02")
    _write(out, "dead_letters", [{"source_uri": "s3://b/<img src=x onerror=alert(1)>",
                                  "offset": 0, "record": None, "kind": "invalid_json",
                                  "detail": "<svg onload=alert(2)>", "raw": b"x"}])
    _summary(out, dead_letters=1, dead_letter_kinds={"invalid_json": 1})
    page = html_report(str(out))
    assert "<script>alert" not in page and "<img" not in page and "<svg onload" not in page
    assert "<b>new</b>" not in page and "&lt;b&gt;new&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.example" in page
    assert len(_Page(page).scripts) == 2


def test_empty_output_renders_empty_charts(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _summary(out, records=0, messages=0)
    parsed = _Page(html_report(str(out)))
    assert set(parsed.charts) == CHARTS
    for name, chart in parsed.charts.items():
        if chart["marks"] == 0:
            assert chart["attrs"]["data-empty"] == "true", name
            assert any(t.strip() for t in chart["texts"]), name  # says why it is empty
    assert parsed.charts["accounting-records"]["marks"] == 0  # zero records: no bar
    # A folder with neither tables nor summary.json still gives a page, not a traceback.
    assert "no summary.json" in html_report(str(tmp_path / "absent"))


def test_new_senders_flags_volume_and_failure(tmp_path):
    out = tmp_path / "out"
    _write(out, "sender_stats", [_sender("2024-03-01", "old.example", 50),
                                 _sender("2024-03-01", "old-spammy.example", 4, spam_fail=4)],
           "2024-03-01")
    _write(out, "sender_stats", [
        _sender("2024-03-02", "old.example", 40),
        _sender("2024-03-02", "old-spammy.example", 40, spam_fail=40),  # not new
        _sender("2024-03-02", "bulk.example", 12),                      # new, high volume
        _sender("2024-03-02", "phish.example", 2, dmarc_fail=2, dmarc_fail_reject=2),
        _sender("2024-03-02", "one-off.example", 1, spf_fail=1),        # one message: too few
        _sender("2024-03-02", "quiet.example", 2),                      # new, unremarkable
    ], "2024-03-02")
    senders = read_table(str(out), "sender_stats")
    new = hr._new_senders(senders, min_messages=None, fail_rate=0.5, min_fail_messages=2)
    assert sorted(p["label"] for p in new["points"]) == \
        ["bulk.example", "one-off.example", "phish.example", "quiet.example"]
    flagged = {p["label"]: p["reasons"] for p in new["flagged"]}
    assert flagged == {"bulk.example": ["high volume"], "phish.example": ["DMARC FAIL rate"]}
    assert new["threshold"] == 3  # 1% of 97 messages is under the floor of 3
    page = html_report(str(out))
    section = page[page.index('id="new"'):page.index('id="accounting"')]
    assert "bulk.example" in section and "phish.example" in section
    assert "Flagged new senders (2)" in section


def test_fine_windows_are_bucketed(tmp_path):
    out = tmp_path / "out"
    start = _ms("2024-03-01")
    rows = [{"window_start": start + i * 30_000, "window_end": start + (i + 1) * 30_000,
             "verdict": v, "status": "FAIL" if i % 10 == 0 else "PASS", "messages": 1}
            for i in range(2 * 2880) for v in VERDICTS]  # two days of 30 s windows
    for day in ("2024-03-01", "2024-03-02"):
        lo = _ms(day)
        _write(out, "verdict_stats", [r for r in rows if lo <= r["window_start"] < lo + 86_400_000],
               day)
    _summary(out, window_seconds=30, records=5760, messages=5760)
    verdicts = read_table(str(out), "verdict_stats")
    xs, step, counts, volume = hr._verdict_series(verdicts, 30)
    assert len(xs) <= hr.MAX_POINTS and step % 30 == 0 and step > 30
    assert sum(volume) == 5760 and sum(counts["dmarc"]["FAIL"]) == 576
    page = html_report(str(out))
    assert "merged into buckets of" in page
    assert _Page(page).charts["verdict-dmarc"]["marks"] > 0


def test_ticks_are_round_numbers():
    assert hr._ticks(216, 5, integer=True) == [0, 50, 100, 150, 200, 250]
    assert hr._ticks(3, 5, integer=True) == [0, 1, 2, 3]
    assert hr._ticks(8.8, 4) == [0, 2.5, 5.0, 7.5, 10.0]
    assert hr._ticks(0, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert hr._tick_text(2.5, 2.5, "%") == "2.5%" and hr._tick_text(10, 5, "%") == "10%"


def test_report_writes_through_filesystems(run, tmp_path):
    path = write_html_report(str(run[0]), str(tmp_path / "deep" / "dir" / "r.html"))
    assert Path(path).read_text(encoding="utf-8").count("data-chart=") == len(CHARTS)


def test_read_table_projects_columns(run):
    dead = read_table(str(run[0]), "dead_letters", ["kind", "detail"])
    assert dead.column_names == ["kind", "detail"] and dead.num_rows == 5
    assert read_table(str(run[0]), "verdict_stats").schema == VERDICT_STATS


# -- the summary table and the demo ------------------------------------------------------------

def test_summary_table_has_counts_duration_throughput_and_output(run):
    _, summary = run
    text = format_summary(summary, 2.0)
    assert f"{summary['records']:,}" in text and "balanced" in text
    assert re.search(r"^duration\s+2\.0 s$", text, re.M)
    rate = summary["records"] / 2.0
    mb = summary["bytes"] / 1e6 / 2.0
    assert re.search(rf"^throughput\s+{rate:,.0f} records/s, {mb:,.2f} MB/s$", text, re.M)
    assert text.splitlines()[-1].split() == ["output", summary["output"]]
    assert "throughput" not in format_summary(summary) and "duration" not in format_summary(summary)


def test_demo_writes_the_html_report(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert main(["demo", "--dir", str(tmp_path / "d"), "--events", "300", "--days", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr()
    path = tmp_path / "d" / "report.html"
    assert f"HTML report: {path}" in printed.out
    assert 'data-chart="dmarc-failures"' in path.read_text()
    assert "throughput" in printed.out and "records/s" in printed.out
    assert "\r" not in printed.err  # --no-progress


# -- the progress line -------------------------------------------------------------------------

class _Tty(io.StringIO):
    def __init__(self, tty: bool = True):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_draws_on_a_terminal_at_most_once_a_second(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    stream, clock = _Tty(), _Clock()
    p = progress.Progress(stream, clock=clock)
    p.note_source(1_000_000, 100)
    assert stream.getvalue() == ""  # nothing during the first second
    clock.now += 1.5
    p.note_source(2_000_000, 200)
    first = stream.getvalue()
    assert first.startswith("\r") and first.endswith("\x1b[K")
    assert "2 files" in first and "3.0 MB" in first and "300 records" in first
    assert "200 records/s" in first and "2.0 MB/s" in first and "0:01" in first
    clock.now += 0.5
    p.note_source(1_000_000, 100)
    assert stream.getvalue() == first  # rate limited
    clock.now += 0.6
    p.note_source(0, 0)
    assert stream.getvalue().count("\r") == 2 and "4 files" in stream.getvalue()
    p.finish()
    assert stream.getvalue().endswith("\r\x1b[K")
    p.finish()
    assert stream.getvalue().count("\r") == 3  # nothing more to erase


def test_progress_is_quiet_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    stream, clock = _Tty(tty=False), _Clock()
    p = progress.Progress(stream, clock=clock)
    for _ in range(5):
        clock.now += 2
        p.note_source(10, 1)
    p.finish()
    assert stream.getvalue() == "" and p.files == 5 and p.records == 5


@pytest.mark.parametrize("value,tty,shown", [
    ("always", False, True), ("1", False, True), ("never", True, False), ("off", True, False),
    ("auto", True, True), ("", False, False)])
def test_progress_environment_override(monkeypatch, value, tty, shown):
    monkeypatch.setenv(progress.ENV, value)
    stream, clock = _Tty(tty), _Clock()
    p = progress.Progress(stream, clock=clock)
    clock.now += 2
    p.note_source(10, 1)
    assert bool(stream.getvalue()) is shown


def test_progress_module_reporter_and_cli_flags(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.reset()
    progress.note_source(5, 2)
    progress.note_source(5, 3)
    r = progress.reporter()
    assert (r.files, r.bytes, r.records) == (2, 10, 5)
    progress.reset()
    assert (r.files, r.bytes, r.records) == (0, 0, 0)
    from sesbeam.pipeline.cli import _progress_flags

    assert _progress_flags(["--input", "x", "--progress"]) == ["--input", "x"]
    assert progress.progress_mode() == "always"
    assert _progress_flags(["--no-progress"]) == [] and progress.progress_mode() == "never"


def test_progress_of_worker_processes_is_drawn_summed_by_the_launching_process(
        tmp_path, monkeypatch):
    import time

    monkeypatch.setenv(progress.DIR_ENV, str(tmp_path))
    clock = _Clock()
    worker = progress.Progress(_Tty(), clock=clock)
    clock.now += 2
    worker.note_source(1_000_000, 100)
    assert worker.stream.getvalue() == ""  # a worker writes its counts, it does not draw
    assert (tmp_path / f"{os.getpid()}.json").exists()
    (tmp_path / "12345.json").write_text("[2, 3000000, 300]")  # another worker's
    (tmp_path / "12346.json.tmp").write_text("[")  # one being written
    monkeypatch.delenv(progress.DIR_ENV)
    stream = _Tty()
    launcher = progress.Progress(stream, enabled=True, interval=0.01)
    launcher.follow(str(tmp_path))
    deadline = time.monotonic() + 10
    while "400 records" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    launcher.finish()
    line = stream.getvalue()
    assert "3 files" in line and "4.0 MB" in line and "400 records" in line
    assert line.endswith("\r\x1b[K")
    drawn = len(line)
    time.sleep(0.05)
    assert len(stream.getvalue()) == drawn  # finished: no more drawing


def test_progress_survives_a_closed_stream():
    stream, clock = _Tty(), _Clock()
    p = progress.Progress(stream, enabled=True, clock=clock)
    stream.close()
    clock.now += 2
    p.note_source(1, 1)  # no exception
    p.finish()


# -- an output on S3 -------------------------------------------------------------------------

@pytest.mark.slow
def test_report_and_ddl_over_s3(run, tmp_path, monkeypatch):
    """The report and ``ddl --inspect`` read an output in S3 (a local moto server) through
    Beam's filesystems; the page is written back to S3."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    from sesbeam.pipeline.ddl import inspect_output

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        empty = tmp_path / "no-aws-config"
        empty.write_text("")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_CONFIG_FILE", str(empty)),
                            ("AWS_SHARED_CREDENTIALS_FILE", str(empty))):
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="lake")
        out, summary = run
        for path in out.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), "lake", f"ses/{path.relative_to(out)}")
        when = datetime(2024, 3, 9, tzinfo=timezone.utc)
        remote = html_report("s3://lake/ses/", generated_at=when)
        local = html_report(str(out), generated_at=when)
        assert remote.replace("s3://lake/ses", str(out)) == local
        assert main(["report", "s3://lake/ses", "--html", "s3://lake/reports/r.html"]) == 0
        body = client.get_object(Bucket="lake", Key="reports/r.html")["Body"].read().decode()
        assert body.count("data-chart=") == len(CHARTS)
        assert inspect_output("s3://lake/ses") == {"present": {t: True for t in TABLES},
                                                   "first_date": "2024-03-01"}
    finally:
        server.stop()
