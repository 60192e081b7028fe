"""Reports over a batch output: a plain-text summary and a self-contained HTML page.

``text_report`` (printed by ``sesbeam demo``) gives verdict shares and the top sender
domains; ``html_report`` (``sesbeam report``, in ``sesbeam.pipeline.html_report``) draws
charts. Both read the output through Beam's filesystems, so ``OUT`` may be ``s3://``.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sesbeam.schemas import TABLES, VERDICTS

__all__ = ["html_report", "output_is_committing", "read_output_summary", "read_table",
           "text_report", "write_html_report"]


def _storage():
    from sesbeam.transforms._storage import Storage

    return Storage()


def read_table(output: str, name: str, columns: list[str] | None = None,
               storage=None) -> pa.Table:
    """Every Parquet file of table ``name`` under ``output`` (only ``columns``), as one table.

    A table without files gives an empty table with the schema's columns.
    """
    storage = storage or _storage()
    output = output.rstrip("/")
    schema = TABLES[name][0]
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    paths = sorted(p for p, _, _ in storage.list(f"{output}/{name}/**")
                   if p.endswith(".parquet"))
    parts = []
    for path in paths:
        part = _read_parquet(storage, path, wanted.names)
        parts.append(part.cast(wanted) if part.schema != wanted else part)
    if not parts:
        return wanted.empty_table()
    return pa.concat_tables(parts)


def _read_parquet(storage, path: str, columns: list[str]) -> pa.Table:
    with storage.open(path) as f:
        if getattr(f, "seekable", lambda: False)():
            return pq.ParquetFile(f).read(columns=columns)  # only the columns' pages
        data = f.read()
    return pq.read_table(pa.BufferReader(data), columns=columns)


def output_is_committing(output: str, storage=None) -> bool:
    """True while a run's commit is under way, or after it was interrupted: the tables may
    then hold a mix of two runs (see ``sesbeam.transforms.write``)."""
    from sesbeam.transforms.write import COMMIT_MARKER

    return (storage or _storage()).exists(f"{output.rstrip('/')}/{COMMIT_MARKER}")


def read_output_summary(output: str, storage=None) -> dict | None:
    """``OUT/summary.json``, or None when the output has none."""
    storage = storage or _storage()
    path = f"{output.rstrip('/')}/summary.json"
    try:
        if not storage.exists(path):
            return None
        with storage.open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def html_report(output: str, **options) -> str:
    """The self-contained HTML report of ``output`` (see ``sesbeam.pipeline.html_report``)."""
    from sesbeam.pipeline.html_report import html_report as _html_report

    return _html_report(output, **options)


def write_html_report(output: str, path: str, **options) -> str:
    """Write the HTML report of ``output`` to ``path`` (local or any Beam filesystem)."""
    page = html_report(output, **options).encode("utf-8")
    storage = _storage()
    with storage.create(path, mime_type="text/html") as f:
        f.write(page)
    return path


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def text_report(output: str, top: int = 10) -> str:
    """Verdict status shares over the whole output and the ``top`` sender domains."""
    output = output.rstrip("/")
    storage = _storage()
    lines = []
    verdicts = read_table(output, "verdict_stats", storage=storage)
    if verdicts.num_rows:
        totals = verdicts.group_by(["verdict", "status"]).aggregate([("messages", "sum")])
        rows = totals.to_pylist()
        statuses = sorted({r["status"] or "(absent)" for r in rows})
        lines.append("Verdicts (share of SES receipt messages)")
        lines.append(f"  {'':8}" + "".join(f"{s:>20}" for s in statuses))
        for verdict in VERDICTS:
            mine = {(r["status"] or "(absent)"): r["messages_sum"] for r in rows
                    if r["verdict"] == verdict}
            whole = sum(mine.values())
            lines.append(f"  {verdict:8}" + "".join(
                f"{mine.get(s, 0):>12,} {_pct(mine.get(s, 0), whole)}" for s in statuses))
    senders = read_table(output, "sender_stats", storage=storage)
    if senders.num_rows:
        by_domain = senders.group_by("sender_domain").aggregate([
            ("messages", "sum"), ("spam_fail", "sum"), ("spf_fail", "sum"),
            ("dkim_fail", "sum"), ("dmarc_fail", "sum")])
        by_domain = by_domain.sort_by([("messages_sum", "descending")]).slice(0, top)
        lines.append("")
        lines.append(f"Top {top} sender domains")
        lines.append(f"  {'domain':32}{'messages':>10}{'spam':>8}{'spf':>8}{'dkim':>8}"
                     f"{'dmarc':>8}  (FAIL counts)")
        for r in by_domain.to_pylist():
            lines.append(f"  {(r['sender_domain'] or '(none)')[:31]:32}{r['messages_sum']:>10,}"
                         f"{r['spam_fail_sum']:>8,}{r['spf_fail_sum']:>8,}"
                         f"{r['dkim_fail_sum']:>8,}{r['dmarc_fail_sum']:>8,}")
        total = pc.sum(senders.column("messages")).as_py()
        lines.append(f"  {'all domains':32}{total:>10,}")
    return "\n".join(lines) + "\n"
