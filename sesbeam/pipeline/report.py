"""A short plain-text report over a batch output: verdict rates and top sender domains."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from apache_beam.io.filesystems import FileSystems

from sesbeam.schemas import VERDICTS

__all__ = ["text_report"]


def _table(output: str, name: str) -> pa.Table:
    paths = [m.path for r in FileSystems.match([f"{output}/{name}/**.parquet"])
             for m in r.metadata_list]
    if not paths:
        return pa.table({})
    return ds.dataset(paths, format="parquet").to_table()


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def text_report(output: str, top: int = 10) -> str:
    """Verdict status shares over the whole output and the ``top`` sender domains."""
    output = output.rstrip("/")
    lines = []
    verdicts = _table(output, "verdict_stats")
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
    senders = _table(output, "sender_stats")
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
