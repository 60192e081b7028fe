"""sesbeam against DuckDB and Polars on the same job, on a generated SES receipt archive.

    python benchmarks/run.py --events 1000000 --layout sns_gz --repeat 3 --data /tmp/bench-data

1. Generates the data set under DATA (seeded; reused when DATA already holds it):
   ``sesbeam.generate.generate_benchmark_archive``, ~5 KB per SNS-wrapped notification,
   gzipped, ~700 files for 1M notifications (scaled down for smaller sizes).
2. Runs every engine as a separate process, ``--repeat`` times, round robin: ``sesbeam batch``
   (the command line with the runner it chooses, plus ``--sesbeam-args``), then
   ``engine_duckdb.py`` and ``engine_polars.py`` (``--threads`` threads each), and measures
   the wall time and the peak RSS of each process tree (the sum over the tree sampled from
   /proc every 0.05 s, or the largest single process's high-water mark when that is higher).
3. Checks that the outputs agree: every column of every row of ``messages``,
   ``verdict_stats`` and ``sender_stats`` (Parquet, read back with pyarrow), engine by engine
   against sesbeam, plus the counts against the generator's manifest.
4. Prints one table per layout: median wall time, events/s, MB/s (uncompressed JSON), peak
   RSS and their ratios to sesbeam; and writes everything to DATA/results-<layout>-<events>.json.

Exit status: 0 all engines ran and agree; 1 an engine failed; 4 outputs disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

ENGINES = ("sesbeam", "duckdb", "polars")
LAYOUTS = ("sns_gz", "lambda", "firehose")
EXIT_UNSUPPORTED = 3  # an engine script's "cannot read this layout"
#: Bump when the generator's output changes, so old data sets are not reused.
DATASET_VERSION = 1


# -- data set ----------------------------------------------------------------------------------

def default_files(events: int) -> int:
    """700 files for the reference 1,000,000 notifications, proportionally fewer below."""
    return max(1, min(700, round(700 * events / 1_000_000)))


def dataset(data: str, layout: str, events: int, *, files: int, seed: int,
            duplicate_rate: float, processes: int | None = None, log=print) -> dict:
    """The data set's directory and manifest, generated unless DATA already holds it."""
    from sesbeam.generate import generate_benchmark_archive

    name = f"{layout}-{events}-f{files}-s{seed}-d{duplicate_rate:g}"
    root = os.path.join(os.path.abspath(data), name)
    archive, manifest_path = os.path.join(root, "archive"), os.path.join(root, "manifest.json")
    params = {"version": DATASET_VERSION, "layout": layout, "events": events, "files": files,
              "seed": seed, "duplicate_rate": duplicate_rate}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            saved = json.load(f)
        if saved.get("params") == params:
            log(f"reusing data set {root}")
            return {"root": root, "archive": archive, "manifest": saved["manifest"],
                    "generated_s": None}
    shutil.rmtree(root, ignore_errors=True)
    log(f"generating {events:,} {layout} notifications in {files} files under {root} ...")
    start = time.monotonic()
    manifest = generate_benchmark_archive(archive, events, layout=layout, files=files,
                                          seed=seed, duplicate_rate=duplicate_rate,
                                          processes=processes)
    seconds = time.monotonic() - start
    log(f"  generated in {seconds:.1f} s: {manifest['bytes'] / 1e6:,.1f} MB of JSON, "
        f"{manifest['stored_bytes'] / 1e6:,.1f} MB gzipped")
    with open(manifest_path + ".tmp", "w") as f:
        json.dump({"params": params, "manifest": manifest}, f)
    os.replace(manifest_path + ".tmp", manifest_path)  # written last: marks a complete set
    return {"root": root, "archive": archive, "manifest": manifest, "generated_s": seconds}


# -- measuring a process tree ------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; VmHWM is its peak RSS since its exec."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def tree_rss(pid: int, hwm: dict | None = None) -> tuple[int, int]:
    """(summed RSS in bytes, number of processes) of `pid` and all its descendants; records
    each process's peak (VmHWM, bytes) in `hwm`."""
    kids, todo, total, count = _children_map(), [pid], 0, 0
    while todo:
        p = todo.pop()
        try:
            rss, peak = _status_kb(p)
        except (OSError, ValueError):
            continue
        total += rss * 1024
        count += 1
        if hwm is not None:
            hwm[p] = max(hwm.get(p, 0), peak * 1024)
        todo.extend(kids.get(p, ()))
    return total, count


def run_measured(cmd: list[str], log_path: str, env: dict | None = None,
                 interval: float = 0.05) -> dict:
    """Run `cmd`, return its exit code, wall time and peak RSS.

    The peak is the largest of: the sampled sum of RSS over the process tree, the largest
    single process's VmHWM seen while sampling, and the child's ``ru_maxrss`` from
    ``wait4``. The last one only when it exceeds this process's own peak: Linux carries the
    parent's high-water mark over into a child's ``ru_maxrss`` at exec, so a smaller value
    may be ours rather than the child's.
    """
    peak = {"rss": 0, "procs": 0}
    hwm: dict[int, int] = {}
    stop = threading.Event()
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(log_path, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

        def sample():
            while not stop.is_set():
                rss, procs = tree_rss(proc.pid, hwm)
                peak["rss"] = max(peak["rss"], rss)
                peak["procs"] = max(peak["procs"], procs)
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss * 1024  # kB on Linux
    maxrss = maxrss if maxrss > own_peak else 0
    largest = max(hwm.values(), default=0)
    return {"rc": proc.returncode, "wall_s": wall,
            "peak_rss": max(peak["rss"], largest, maxrss),
            "sampled_tree_rss": peak["rss"], "max_process_hwm": largest,
            "wait4_maxrss": maxrss or None, "processes": peak["procs"], "log": log_path}


def engine_command(engine: str, archive: str, out: str, layout: str, *, threads: int,
                   window: str, sesbeam_args: str) -> list[str]:
    from sesbeam.pipeline.options import parse_duration

    if engine == "sesbeam":
        return [sys.executable, "-m", "sesbeam", "batch", "--input", archive, "--output", out,
                "--window", window] + shlex.split(sesbeam_args)
    script = os.path.join(HERE, f"engine_{engine}.py")
    return [sys.executable, script, "--input", archive, "--layout", layout, "--output", out,
            "--threads", str(threads), "--window", str(parse_duration(window))]


# -- comparing outputs -------------------------------------------------------------------------

TABLE_KEYS = {
    "messages": ("message_id",),
    "verdict_stats": ("window_start", "verdict", "status"),
    "sender_stats": ("window_start", "sender_domain"),
}


def load_table(out: str, table: str, archive: str):
    """A table of an output directory in sesbeam's schema (plus `date`), sorted by its key;
    `source_uri` relative to the archive."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from sesbeam.schemas import TABLES

    schema = TABLES[table][0]
    part = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    t = ds.dataset(os.path.join(out, table), format="parquet", partitioning=part).to_table()
    columns, fields = [], []
    for f in list(schema) + [pa.field("date", pa.string())]:
        if f.name in ("pane_timing", "pane_index"):
            continue  # streaming pane bookkeeping: one ON_TIME pane per window in batch
        col = t.column(f.name).cast(f.type)  # safe cast: a lossy one raises
        if f.name == "source_uri":
            prefix = os.path.abspath(archive).rstrip("/") + "/"
            col = pc.replace_substring_regex(col, "^(file://)?" + _re_escape(prefix), "")
        columns.append(col)
        fields.append(pa.field(f.name, f.type))
    t = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    return t.sort_by([(k, "ascending") for k in TABLE_KEYS[table]])


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


def diff_tables(ref, other, table: str, limit: int = 3) -> list[str]:
    """Human-readable differences between two tables sorted by the same key (empty: equal)."""
    if ref.equals(other):
        return []
    keys = TABLE_KEYS[table]
    if ref.num_rows != other.num_rows:
        rk = set(zip(*(ref.column(k).to_pylist() for k in keys)))
        ok = set(zip(*(other.column(k).to_pylist() for k in keys)))
        return [f"{table}: {ref.num_rows} rows vs {other.num_rows}; only in sesbeam: "
                f"{sorted(rk - ok, key=repr)[:limit]}, only in the other: "
                f"{sorted(ok - rk, key=repr)[:limit]}"]
    problems = []
    key_rows = list(zip(*(ref.column(k).to_pylist() for k in keys)))
    for name in ref.column_names:
        a, b = ref.column(name), other.column(name)
        if a.equals(b):
            continue
        av, bv = a.to_pylist(), b.to_pylist()
        bad = [i for i, (x, y) in enumerate(zip(av, bv)) if x != y]
        if not bad:
            continue
        examples = "; ".join(f"{key_rows[i]}: sesbeam={av[i]!r} other={bv[i]!r}"
                             for i in bad[:limit])
        problems.append(f"{table}.{name}: {len(bad)} of {len(av)} rows differ, e.g. {examples}")
    return problems


def compare_outputs(ref_out: str, other_out: str, archive: str) -> tuple[list[str], dict]:
    """(differences, rows per table) of another engine's output against sesbeam's."""
    problems, rows = [], {}
    for table in TABLE_KEYS:
        ref = load_table(ref_out, table, archive)
        rows[table] = ref.num_rows
        try:
            other = load_table(other_out, table, archive)
        except Exception as e:  # noqa: BLE001 - a missing or malformed table is a finding
            problems.append(f"{table}: cannot read: {type(e).__name__}: {e}")
            continue
        problems += diff_tables(ref, other, table)
    return problems, rows


# -- the benchmark -----------------------------------------------------------------------------

def run_layout(args, layout: str, log=print) -> dict:
    files = args.files or default_files(args.events)
    ds_info = dataset(args.data, layout, args.events, files=files, seed=args.seed,
                      duplicate_rate=args.duplicate_rate, processes=args.gen_processes, log=log)
    manifest, archive = ds_info["manifest"], ds_info["archive"]
    runs_dir = os.path.join(ds_info["root"], "runs")
    os.makedirs(runs_dir, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    results = {e: {"runs": [], "skipped": None, "failed": None} for e in args.engines}
    for r in range(args.repeat):
        for engine in args.engines:
            res = results[engine]
            if res["skipped"] or res["failed"]:
                continue
            out = os.path.join(runs_dir, engine)
            shutil.rmtree(out, ignore_errors=True)
            cmd = engine_command(engine, archive, out, layout, threads=args.threads,
                                 window=args.window, sesbeam_args=args.sesbeam_args)
            m = run_measured(cmd, os.path.join(runs_dir, f"{engine}-{r}.log"), env=env)
            if m["rc"] == EXIT_UNSUPPORTED and engine != "sesbeam":
                with open(m["log"], errors="replace") as f:
                    res["skipped"] = f.read().strip()
                log(f"  {engine}: skipped: {res['skipped']}")
                continue
            if m["rc"] != 0:
                with open(m["log"], errors="replace") as f:
                    tail = f.read()[-2000:]
                res["failed"] = f"exit status {m['rc']}; see {m['log']}:\n{tail}"
                log(f"  {engine}: FAILED ({res['failed']})")
                continue
            res["runs"].append(m)
            log(f"  run {r + 1}/{args.repeat} {engine:<8} {m['wall_s']:8.2f} s  "
                f"peak RSS {m['peak_rss'] / 2**20:8.1f} MiB  ({m['processes']} processes)")
    check = check_agreement(args.engines, results, runs_dir, archive, manifest)
    summary = summarize(results, manifest)
    return {"layout": layout, "events": args.events, "files": len(manifest["files"]),
            "data_set": ds_info["root"], "generated_s": ds_info["generated_s"],
            "manifest": {k: v for k, v in manifest.items() if k != "files"},
            "repeat": args.repeat, "threads": args.threads, "sesbeam_args": args.sesbeam_args,
            "engines": summary, "agreement": check}


def check_agreement(engines, results, runs_dir, archive, manifest) -> dict:
    """Compare each engine's last output with sesbeam's, and the counts with the manifest."""
    problems, rows, compared = [], {}, []
    expected = {k: manifest[k] for k in ("records", "messages", "duplicates")}
    ref = os.path.join(runs_dir, "sesbeam")
    if not results["sesbeam"]["runs"]:
        problems.append("sesbeam did not run: nothing to compare with")
    for engine in engines:
        if not results[engine]["runs"]:
            continue
        with open(os.path.join(runs_dir, engine, "summary.json")) as f:
            summary = json.load(f)
        got = {k: summary.get(k) for k in expected}
        if got != expected:
            problems.append(f"{engine}: counts {got} != manifest {expected}")
        if engine == "sesbeam":
            if not summary.get("balanced", False):
                problems.append("sesbeam: accounting not balanced")
        elif results["sesbeam"]["runs"]:
            diffs, rows = compare_outputs(ref, os.path.join(runs_dir, engine), archive)
            compared.append(engine)
            problems += [f"sesbeam vs {engine}: {p}" for p in diffs]
    return {"agree": not problems, "problems": problems, "rows": rows, "compared": compared}


def summarize(results, manifest) -> dict:
    out = {}
    sesbeam = None
    for engine, res in results.items():
        if not res["runs"]:
            out[engine] = {"skipped": res["skipped"], "failed": res["failed"]}
            continue
        wall = statistics.median(m["wall_s"] for m in res["runs"])
        rss = statistics.median(m["peak_rss"] for m in res["runs"])
        row = {"wall_s": wall, "events_per_s": manifest["records"] / wall,
               "mb_per_s": manifest["bytes"] / 1e6 / wall, "peak_rss": rss,
               "runs": [{k: m[k] for k in ("wall_s", "peak_rss", "sampled_tree_rss",
                                           "max_process_hwm", "wait4_maxrss", "processes")}
                        for m in res["runs"]]}
        out[engine] = row
        if engine == "sesbeam":
            sesbeam = row
    for engine, row in out.items():
        if sesbeam and "wall_s" in row:
            row["wall_vs_sesbeam"] = row["wall_s"] / sesbeam["wall_s"]
            row["rss_vs_sesbeam"] = row["peak_rss"] / sesbeam["peak_rss"]
    return out


def format_report(result: dict, versions: dict | None = None) -> str:
    m = result["manifest"]
    lines = [f"layout {result['layout']}: {m['records']:,} notifications ({m['messages']:,} "
             f"messages, {m['duplicates']:,} duplicates), {m['bytes'] / 1e6:,.1f} MB of JSON "
             f"({m['stored_bytes'] / 1e6:,.1f} MB gzipped) in {result['files']:,} files; "
             f"median of {result['repeat']}",
             f"{'engine':<10}{'wall s':>9}{'events/s':>11}{'MB/s':>8}{'peak RSS MiB':>14}"
             f"{'wall/sesbeam':>14}{'RSS/sesbeam':>13}"]
    for engine, row in result["engines"].items():
        label = engine + (f" {versions[engine]}" if versions and versions.get(engine) else "")
        if "wall_s" not in row:
            why = row["skipped"] or row["failed"] or "not run"
            lines.append(f"{engine:<10}  {'skipped' if row['skipped'] else 'FAILED'}: "
                         f"{why.splitlines()[0]}")
            continue
        ratio = (f"{row['wall_vs_sesbeam']:>14.2f}{row['rss_vs_sesbeam']:>13.2f}"
                 if "wall_vs_sesbeam" in row else "")
        lines.append(f"{label:<10}{row['wall_s']:>9.2f}{row['events_per_s']:>11,.0f}"
                     f"{row['mb_per_s']:>8.1f}{row['peak_rss'] / 2**20:>14.1f}{ratio}")
    check = result["agreement"]
    if check["agree"]:
        rows = ", ".join(f"{t} {n:,} rows" for t, n in check["rows"].items())
        lines.append(f"agreement: sesbeam = {' = '.join(check['compared']) or '(nothing compared)'}"
                     f" on every column of {rows}; counts match the manifest")
    else:
        lines.append("DISAGREEMENT:")
        lines += [f"  {p}" for p in check["problems"]]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark sesbeam batch against DuckDB and Polars doing the same job.")
    p.add_argument("--events", type=int, default=1_000_000,
                   help="notifications in the data set (default 1,000,000)")
    p.add_argument("--layout", default="sns_gz",
                   help="sns_gz, lambda, firehose, a comma-separated list, or all")
    p.add_argument("--repeat", type=int, default=3, help="runs per engine; medians reported")
    p.add_argument("--data", default="/tmp/sesbeam-bench",
                   help="directory of the data sets and run outputs (default /tmp/sesbeam-bench)")
    p.add_argument("--files", type=int, default=None,
                   help="archive files (default: 700 per million notifications, 1 to 700)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duplicate-rate", type=float, default=0.03,
                   help="share of messages with a second notification (default 0.03)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="comma-separated subset of sesbeam,duckdb,polars")
    p.add_argument("--threads", type=int, default=2, help="DuckDB and Polars threads (2)")
    p.add_argument("--window", default="1d", help="statistics window (sesbeam --window)")
    p.add_argument("--sesbeam-args", default="",
                   help='extra options for sesbeam batch, e.g. "--direct_num_workers 2 '
                        '--direct_running_mode multi_processing"')
    p.add_argument("--gen-processes", type=int, default=None,
                   help="processes generating the data set (default: one per CPU)")
    p.add_argument("--json", default=None,
                   help="write the results here (default DATA/results-<layout>-<events>.json)")
    args = p.parse_args(argv)
    layouts = LAYOUTS if args.layout == "all" else tuple(args.layout.split(","))
    engines = tuple(args.engines.split(","))
    if set(layouts) - set(LAYOUTS) or set(engines) - set(ENGINES) or "sesbeam" not in engines:
        p.error(f"layouts are {LAYOUTS}; engines are {ENGINES} and must include sesbeam")
    if args.repeat < 1 or args.events < 1:
        p.error("--repeat and --events must be >= 1")
    args.layouts, args.engines = layouts, engines
    return args


def engine_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for engine, dist in (("sesbeam", "apache-beam"), ("duckdb", "duckdb"), ("polars", "polars")):
        try:
            out[engine] = md.version(dist)
        except md.PackageNotFoundError:
            out[engine] = None
    return out


def main(argv=None) -> dict:
    """Run the benchmark; returns {"results": [...], "exit": status}."""
    args = parse_args(argv)
    versions = engine_versions()
    print(f"python {sys.version.split()[0]}, apache-beam {versions['sesbeam']}, "
          f"duckdb {versions['duckdb']}, polars {versions['polars']}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    results, status = [], 0
    for layout in args.layouts:
        result = run_layout(args, layout, log=lambda s: print(s, flush=True))
        result["versions"] = versions
        results.append(result)
        print(format_report(result), flush=True)
        print(flush=True)
        path = args.json or os.path.join(args.data, f"results-{layout}-{args.events}.json")
        if args.json and len(args.layouts) > 1:
            path = f"{os.path.splitext(args.json)[0]}-{layout}.json"
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        if any(r.get("failed") for r in result["engines"].values()):
            status = 1
        elif not result["agreement"]["agree"] and status == 0:
            status = 4
    if len(results) > 1:
        print(per_event_summary(results))
    return {"results": results, "exit": status}


def per_event_summary(results) -> str:
    """sesbeam's events/s per layout, relative to sns_gz (issue: Lambda and Firehose archives
    at least as fast per event)."""
    rates = {r["layout"]: r["engines"]["sesbeam"].get("events_per_s") for r in results}
    base = rates.get("sns_gz")
    lines = ["sesbeam events/s by layout:"]
    for layout, rate in rates.items():
        rel = f" ({rate / base:.2f} x sns_gz)" if base and rate else ""
        lines.append(f"  {layout:<9}{rate:>11,.0f}{rel}" if rate else f"  {layout:<9} n/a")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main()["exit"])
