"""One self-contained HTML page over a batch output: charts and tables, no network.

``html_report(OUT)`` reads ``verdict_stats``, ``sender_stats``, ``dead_letters`` and
``summary.json`` (through Beam's filesystems, so ``OUT`` may be ``s3://``) and returns a page
with:

- messages per window and, for each of the five verdicts, the share of messages per
  non-PASS status over time;
- the top sender domains by volume and by FAIL verdicts;
- DMARC failures by sender domain, split by the domain's published policy;
- sender domains new in the last window with a high volume or a high FAIL rate;
- the run's accounting: records, messages, duplicates, skipped by reason, dead letters by
  kind, the tables written.

Charts are inline SVG drawn here (axes with units, legends, a colour-blind-safe palette,
``<title>`` tooltips); styles are inline. The only script is a small check that marks the
page ``data-status="ok"`` once every chart (``[data-chart]``) has rendered marks and no
script error happened; a Content-Security-Policy allows nothing else (no network at all).
All text from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import defaultdict
from datetime import datetime, timezone
from html import escape

import pyarrow as pa
import pyarrow.compute as pc

from sesbeam.pipeline.report import read_output_summary, read_table
from sesbeam.schemas import SCHEMA_VERSION, SENDER_COUNTS, VERDICTS

__all__ = ["MAX_POINTS", "STATUS_COLOURS", "html_report", "legend_height"]

#: At most this many points on a time axis; finer windows are merged into coarser buckets.
MAX_POINTS = 120

# Okabe-Ito palette (distinguishable with the common colour-vision deficiencies).
STATUS_COLOURS = {
    "FAIL": "#D55E00",
    "GRAY": "#7A7A7A",
    "PROCESSING_FAILED": "#E69F00",
    "DISABLED": "#0072B2",
    "(absent)": "#CC79A7",
}
_OTHER_STATUS_COLOURS = ("#56B4E9", "#009E73", "#F0E442", "#000000")
VERDICT_COLOURS = {"spam": "#D55E00", "virus": "#000000", "spf": "#E69F00",
                   "dkim": "#56B4E9", "dmarc": "#0072B2"}
VERDICT_LABELS = {"spam": "spam", "virus": "virus", "spf": "SPF", "dkim": "DKIM",
                  "dmarc": "DMARC"}
POLICY_COLOURS = {"reject": "#B2182B", "quarantine": "#EF8A62", "none": "#67A9CF",
                  "not given": "#BBBBBB"}
_VOLUME_COLOUR = "#0072B2"
# Chart widths (SVG units) matching the page's layout: full width, half, third.
FULL, HALF, THIRD = 1166, 572, 376
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


# -- number and time formatting -----------------------------------------------------------------

def _n(value: float) -> str:
    return f"{int(round(value)):,}"


def _pct(part: float, whole: float, digits: int = 1) -> str:
    return f"{100 * part / whole:.{digits}f}%" if whole else "–"


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _time_label(ms: int, step_s: int) -> str:
    d = _dt(ms)
    if step_s >= 86400:
        return f"{d:%b} {d.day}"
    return f"{d:%b} {d.day} {d:%H:%M}"


def _time_full(ms: int, step_s: int) -> str:
    d = _dt(ms)
    return f"{d:%Y-%m-%d}" if step_s >= 86400 and d.hour == d.minute == 0 else \
        f"{d:%Y-%m-%d %H:%M}"


def _duration(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            k = seconds // size
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{seconds} s"


def _nice_step(span: float, ticks: int, integer: bool) -> float:
    raw = max(span, 1e-12) / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    return max(step, 1.0) if integer else step


def _ticks(vmax: float, ticks: int = 5, integer: bool = False) -> list[float]:
    """Round tick values from 0 to a nice maximum at or above ``vmax``."""
    vmax = vmax if vmax > 0 else 1.0
    step = _nice_step(vmax, ticks, integer)
    top = math.ceil(vmax / step - 1e-9) * step
    return [i * step for i in range(int(round(top / step)) + 1)]


def _tick_text(value: float, step: float, suffix: str = "") -> str:
    """``value`` with as many decimals as the tick step needs (2.5 -> one)."""
    digits = next((d for d in range(4) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-9), 3)
    return f"{value:,.{digits}f}{suffix}"


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * size * 0.58


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- SVG charts -----------------------------------------------------------------------------------

class _Svg:
    """A chart canvas: collects SVG elements, then wraps them with size, role and name."""

    def __init__(self, name: str, title: str, width: int, height: int):
        self.name, self.title, self.width, self.height = name, title, width, height
        self.parts: list[str] = []
        self.marks = 0

    def add(self, element: str) -> None:
        self.parts.append(element)

    def mark(self, tag: str, attrs: str, tip: str | None = None) -> None:
        """A data mark (bar, line, point), counted by the page's render check."""
        self.marks += 1
        title = f"<title>{escape(tip)}</title>" if tip else ""
        self.parts.append(f'<{tag} data-mark="1" {attrs}>{title}</{tag}>')

    def text(self, x: float, y: float, text: str, *, anchor: str = "start", size: int = 12,
             fill: str = "#333", weight: str | None = None, rotate: float | None = None,
             cls: str | None = None) -> None:
        extra = f' font-weight="{weight}"' if weight else ""
        if rotate is not None:
            extra += f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"'
        if cls:
            extra += f' class="{cls}"'
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
                 f'fill="{fill}"{extra}>{escape(text)}</text>')

    def legend(self, items: list[tuple[str, str, str]], x: float, y: float,
               max_width: float) -> float:
        """Legend entries ``(label, colour, shape)`` from (x, y), wrapping; returns the height."""
        self.add('<g class="legend">')
        cx, cy = x, y
        for label, colour, shape in items:
            w = 18 + _text_width(label, 11.5) + 14
            if cx > x and cx + w > x + max_width:
                cx, cy = x, cy + 17
            if shape == "line":
                self.add(f'<line x1="{cx:.1f}" y1="{cy - 4:.1f}" x2="{cx + 14:.1f}" '
                         f'y2="{cy - 4:.1f}" stroke="{colour}" stroke-width="2.5"/>')
            elif shape == "dot":
                self.add(f'<circle cx="{cx + 7:.1f}" cy="{cy - 4:.1f}" r="4.5" '
                         f'fill="{colour}" fill-opacity="0.75" stroke="{colour}"/>')
            elif shape == "dash":
                self.add(f'<line x1="{cx:.1f}" y1="{cy - 4:.1f}" x2="{cx + 14:.1f}" '
                         f'y2="{cy - 4:.1f}" stroke="{colour}" stroke-width="1.5" '
                         'stroke-dasharray="4 3"/>')
            else:
                self.add(f'<rect x="{cx:.1f}" y="{cy - 10:.1f}" width="12" height="12" rx="2" '
                         f'fill="{colour}"/>')
            self.text(cx + 18, cy, label, size=11.5, fill="#333")
            cx += w
        self.add("</g>")
        return cy - y + 17

    def render(self, empty_message: str | None = None) -> str:
        body = list(self.parts)
        empty = self.marks == 0
        if empty:
            message = empty_message or "no data"
            w, cx, cy = _text_width(message, 13) + 24, self.width / 2, self.height / 2
            body.append(f'<rect x="{cx - w / 2:.1f}" y="{cy - 17:.1f}" width="{w:.1f}" '
                        'height="26" rx="5" fill="#fff" stroke="#ddd"/>'
                        f'<text x="{cx:.1f}" y="{cy + 1:.1f}" text-anchor="middle" '
                        f'font-size="13" fill="#666" class="empty">{escape(message)}</text>')
        return (f'<svg xmlns="http://www.w3.org/2000/svg" data-chart="{escape(self.name)}" '
                f'data-marks="{self.marks}" data-empty="{str(empty).lower()}" '
                f'viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
                f'height="{self.height}" role="img" aria-label="{escape(self.title)}" '
                f'font-family="{escape(_FONT)}">'
                f'<title>{escape(self.title)}</title>{"".join(body)}</svg>')


def legend_height(labels: list[str], width: int, left: int = 58, right: int = 14) -> float:
    """Height the legend of ``labels`` takes in a line chart ``width`` wide."""
    return _Svg("", "", width, 10).legend([(label, "#000", "line") for label in labels],
                                          left, 16, width - left - right)


def _y_axis(svg: _Svg, ticks: list[float], x0: float, x1: float, y_of, label: str,
            suffix: str = "") -> None:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    for t in ticks:
        y = y_of(t)
        svg.add(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" '
                f'stroke="{"#999" if t == 0 else "#e3e3e3"}" stroke-width="1"/>')
        svg.text(x0 - 6, y + 4, _tick_text(t, step, suffix), anchor="end", size=11, fill="#555")
    top, bottom = y_of(ticks[-1]), y_of(0)
    svg.text(14, (top + bottom) / 2, label, anchor="middle", size=11.5, fill="#444",
             rotate=-90)


def _x_positions(n: int, x0: float, x1: float, band: bool) -> list[float]:
    if band:
        w = (x1 - x0) / max(n, 1)
        return [x0 + w * (i + 0.5) for i in range(n)]
    if n == 1:
        return [(x0 + x1) / 2]
    return [x0 + (x1 - x0) * i / (n - 1) for i in range(n)]


def _x_time_axis(svg: _Svg, xs: list[int], positions: list[float], step_s: int,
                 y: float, x0: float, x1: float, label: str) -> None:
    max_labels = max(2, int((x1 - x0) // (62 if step_s >= 86400 else 92)))
    every = max(1, math.ceil(len(xs) / max_labels))
    svg.add(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#999"/>')
    for i in range(0, len(xs), every):
        px = positions[i]
        svg.add(f'<line x1="{px:.1f}" y1="{y:.1f}" x2="{px:.1f}" y2="{y + 4:.1f}" '
                'stroke="#999"/>')
        svg.text(px, y + 16, _time_label(xs[i], step_s), anchor="middle", size=11, fill="#555")
    svg.text((x0 + x1) / 2, y + 34, label, anchor="middle", size=11.5, fill="#444")


def line_chart(name: str, title: str, xs: list[int], step_s: int,
               series: list[tuple[str, str, list, list]], *, y_label: str,
               y_max: float | None = None, width: int = THIRD, height: int = 250,
               legend_space: float = 0, empty_message: str = "no data") -> str:
    """Lines over time. ``series``: ``(label, colour, values in %, tooltips)``; a None value
    leaves a gap. The y axis is in percent from 0 to ``y_max`` (default: the data's max).
    ``legend_space``: height kept for the legend, so that charts side by side align."""
    svg = _Svg(name, title, width, height)
    left, right, bottom = 58, 14, 50
    legend_h = svg.legend([(s[0], s[1], "line") for s in series], left, 16, width - left - right)
    top = 16 + max(legend_h, legend_space) + 2
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    values = [v for s in series for v in s[2] if v is not None]
    ticks = _ticks(max(y_max or 0, max(values, default=0)), 4)
    span = ticks[-1] or 1

    def y_of(v: float) -> float:
        return y1 - (y1 - y0) * v / span

    _y_axis(svg, ticks, x0, x1, y_of, y_label, "%")
    positions = _x_positions(len(xs), x0 + 6, x1 - 6, band=False)
    if xs:
        _x_time_axis(svg, xs, positions, step_s, y1, x0, x1, "window start (UTC)")
    dots = len(xs) <= 60
    for label, colour, vals, tips in series:
        path, pen = [], False
        for px, v in zip(positions, vals):
            if v is None:
                pen = False
                continue
            path.append(f"{'L' if pen else 'M'}{px:.1f},{y_of(v):.1f}")
            pen = True
        if path and any(p.startswith("L") for p in path):
            svg.mark("path", f'd="{" ".join(path)}" fill="none" stroke="{colour}" '
                     'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"', label)
        for px, v, tip in zip(positions, vals, tips):
            if v is not None and (dots or len(path) == 1):
                svg.mark("circle", f'cx="{px:.1f}" cy="{y_of(v):.1f}" r="2.8" fill="{colour}" '
                         'stroke="#fff" stroke-width="0.8"', tip)
    return svg.render(empty_message)


def column_chart(name: str, title: str, xs: list[int], step_s: int, values: list[int],
                 tips: list[str], *, label: str, y_label: str, colour: str = _VOLUME_COLOUR,
                 width: int = FULL, height: int = 240) -> str:
    """Vertical bars over time (counts)."""
    svg = _Svg(name, title, width, height)
    left, right, bottom = 64, 14, 50
    svg.legend([(label, colour, "box")], left, 16, width - left - right)
    x0, x1, y0, y1 = left, width - right, 34, height - bottom
    ticks = _ticks(max(values, default=0), 4, integer=True)
    span = ticks[-1] or 1

    def y_of(v: float) -> float:
        return y1 - (y1 - y0) * v / span

    _y_axis(svg, ticks, x0, x1, y_of, y_label)
    positions = _x_positions(len(xs), x0, x1, band=True)
    band = (x1 - x0) / max(len(xs), 1)
    bar = max(1.0, min(band * 0.72, 60))
    for px, v, tip in zip(positions, values, tips):
        if v > 0:
            svg.mark("rect", f'x="{px - bar / 2:.1f}" y="{y_of(v):.1f}" width="{bar:.1f}" '
                     f'height="{y1 - y_of(v):.1f}" fill="{colour}" rx="1.5"', tip)
    if xs:
        _x_time_axis(svg, xs, positions, step_s, y1, x0, x1, "window start (UTC)")
    return svg.render()


def hbar_chart(name: str, title: str, categories: list[str],
               series: list[tuple[str, str, list[float]]], *, x_label: str,
               width: int = HALF, row: int = 22, label_width: int = 190,
               totals: list[str] | None = None, empty_message: str = "no data") -> str:
    """Horizontal bars, one row per category; several series are stacked."""
    legend_probe = _Svg(name, title, width, 10)
    legend_h = legend_probe.legend([(s[0], s[1], "box") for s in series], label_width, 16,
                                   width - label_width - 14)
    top = 16 + legend_h + 4
    height = int(top + max(len(categories), 1) * row + 48)
    svg = _Svg(name, title, width, height)
    svg.legend([(s[0], s[1], "box") for s in series], label_width, 16, width - label_width - 14)
    x0, x1 = label_width, width - 56
    sums = [sum(s[2][i] for s in series) for i in range(len(categories))]
    ticks = _ticks(max(sums, default=0), 5, integer=True)
    span = ticks[-1] or 1
    y_end = top + len(categories) * row
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    for t in ticks:
        x = x0 + (x1 - x0) * t / span
        svg.add(f'<line x1="{x:.1f}" y1="{top - 2:.1f}" x2="{x:.1f}" y2="{y_end:.1f}" '
                f'stroke="{"#999" if t == 0 else "#e6e6e6"}"/>')
        svg.text(x, y_end + 15, _tick_text(t, step), anchor="middle", size=11, fill="#555")
    svg.text((x0 + x1) / 2, y_end + 34, x_label, anchor="middle", size=11.5, fill="#444")
    for i, category in enumerate(categories):
        y = top + i * row
        svg.add(f'<text x="{x0 - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" font-size="12" '
                f'fill="#222"><title>{escape(category)}</title>{escape(_short(category))}</text>')
        cx = x0
        for label, colour, values in series:
            v = values[i]
            if v <= 0:
                continue
            w = (x1 - x0) * v / span
            svg.mark("rect", f'x="{cx:.1f}" y="{y + 3:.1f}" width="{max(w, 0.8):.1f}" '
                     f'height="{row - 6}" fill="{colour}"', f"{category} — {label}: {_n(v)}")
            cx += w
        total = totals[i] if totals else _n(sums[i])
        svg.text(cx + 5, y + row / 2 + 4, total, size=11, fill="#444")
    return svg.render(empty_message)


def scatter_chart(name: str, title: str, points: list[dict], *, x_label: str, y_label: str,
                  x_threshold: float, y_threshold: float, width: int = HALF,
                  height: int = 330, empty_message: str = "no data") -> str:
    """Points ``{"x", "y" (0-100), "label", "flagged"}`` with dashed threshold lines."""
    svg = _Svg(name, title, width, height)
    left, right, bottom = 58, 18, 50
    flagged_c, normal_c, line_c = "#D55E00", "#0072B2", "#555"
    legend_h = svg.legend([("new sender domain", normal_c, "dot"),
                           ("flagged: high volume or FAIL rate", flagged_c, "dot"),
                           ("thresholds", line_c, "dash")], left, 16, width - left - right)
    x0, x1, y0, y1 = left, width - right, 16 + legend_h + 6, height - bottom
    xt = _ticks(max([p["x"] for p in points] + [x_threshold * 1.15]), 5, integer=True)
    yt = [0, 25, 50, 75, 100]

    def x_of(v: float) -> float:
        return x0 + (x1 - x0) * v / (xt[-1] or 1)

    def y_of(v: float) -> float:
        return y1 - (y1 - y0) * v / 100

    _y_axis(svg, yt, x0, x1, y_of, y_label, "%")
    step = xt[1] - xt[0] if len(xt) > 1 else 1
    for t in xt:
        svg.add(f'<line x1="{x_of(t):.1f}" y1="{y1:.1f}" x2="{x_of(t):.1f}" y2="{y1 + 4:.1f}" '
                'stroke="#999"/>')
        svg.text(x_of(t), y1 + 16, _tick_text(t, step), anchor="middle", size=11, fill="#555")
    svg.text((x0 + x1) / 2, y1 + 34, x_label, anchor="middle", size=11.5, fill="#444")
    svg.add(f'<line x1="{x_of(x_threshold):.1f}" y1="{y0:.1f}" x2="{x_of(x_threshold):.1f}" '
            f'y2="{y1:.1f}" stroke="{line_c}" stroke-dasharray="4 3"/>')
    svg.add(f'<line x1="{x0:.1f}" y1="{y_of(y_threshold):.1f}" x2="{x1:.1f}" '
            f'y2="{y_of(y_threshold):.1f}" stroke="{line_c}" stroke-dasharray="4 3"/>')
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in points:  # domains at the same spot share one dot, sized by their number
        groups[(p["x"], round(p["y"], 1))].append(p)
    labelled = 0
    for (x, y), members in sorted(groups.items(), key=lambda kv: (kv[1][0]["flagged"], kv[0])):
        flagged = any(p["flagged"] for p in members)
        colour = flagged_c if flagged else normal_c
        cx, cy = x_of(x), y_of(y)
        r = min(4 + 2.2 * math.sqrt(len(members) - 1), 16)
        names = ", ".join(p["label"] for p in members[:6]) + \
            (f" and {len(members) - 6:,} more" if len(members) > 6 else "")
        who = names if len(members) == 1 else f"{len(members):,} domains ({names})"
        svg.mark("circle", f'cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{colour}" '
                 f'fill-opacity="0.5" stroke="{colour}"',
                 f"{who}: {_n(x)} messages, worst FAIL rate {y:.0f}%")
        if len(members) > 1:
            svg.text(cx, cy - r - 3, f"×{len(members)}", anchor="middle", size=10.5,
                     fill="#333")
        elif flagged and labelled < 8:
            labelled += 1
            anchor = "end" if cx > (x0 + x1) / 2 else "start"
            svg.text(cx + (-8 if anchor == "end" else 8), cy - 6, _short(members[0]["label"], 30),
                     anchor=anchor, size=11, fill="#333")
    return svg.render(empty_message)


# -- data ---------------------------------------------------------------------------------------

def _ms(column: pa.ChunkedArray) -> list[int]:
    return pc.cast(column, pa.int64()).to_pylist()


def _window_seconds(summary: dict | None, table: pa.Table) -> int:
    if summary and summary.get("window_seconds"):
        return int(summary["window_seconds"])
    if table.num_rows:
        starts, ends = _ms(table.column("window_start")), _ms(table.column("window_end"))
        return max(1, (ends[0] - starts[0]) // 1000)
    return 86400


def _buckets(starts: list[int], window_s: int) -> tuple[list[int], int]:
    """Every bucket start from the first to the last window, and the bucket size in seconds
    (the window, or a multiple of it when there would be more than ``MAX_POINTS``)."""
    if not starts:
        return [], window_s
    lo, hi = min(starts), max(starts)
    n = (hi - lo) // (window_s * 1000) + 1
    factor = max(1, math.ceil(n / MAX_POINTS))
    step = window_s * factor
    first = lo - lo % (step * 1000)
    return list(range(first, hi + 1, step * 1000)), step


def _verdict_series(verdicts: pa.Table, window_s: int):
    """(bucket starts, step, {verdict: {status: [count per bucket]}}, [messages per bucket])."""
    starts = _ms(verdicts.column("window_start"))
    xs, step = _buckets(starts, window_s)
    index = {x: i for i, x in enumerate(xs)}
    step_ms = step * 1000
    counts: dict[str, dict[str, list[int]]] = {v: defaultdict(lambda: [0] * len(xs))
                                                for v in VERDICTS}
    for start, verdict, status, n in zip(starts, verdicts.column("verdict").to_pylist(),
                                         verdicts.column("status").to_pylist(),
                                         verdicts.column("messages").to_pylist()):
        if verdict in counts:
            counts[verdict][status or "(absent)"][index[start - start % step_ms]] += n
    # Every message has one status per verdict: the spam counts give the volume.
    volume = [sum(col) for col in zip(*counts["spam"].values())] if counts["spam"] else \
        [0] * len(xs)
    return xs, step, counts, volume


def _sum_by_domain(senders: pa.Table) -> list[dict]:
    if not senders.num_rows:
        return []
    grouped = senders.group_by("sender_domain").aggregate(
        [(c, "sum") for c in SENDER_COUNTS])
    rows = grouped.to_pylist()
    for r in rows:
        for c in SENDER_COUNTS:
            r[c] = r.pop(f"{c}_sum")
        r["domain"] = r["sender_domain"] or "(no domain)"
        r["fails"] = sum(r[f"{v}_fail"] for v in VERDICTS)
        r["worst_fail"] = max(r[f"{v}_fail"] for v in VERDICTS)
    return rows


def _new_senders(senders: pa.Table, *, min_messages: int | None, fail_rate: float,
                 min_fail_messages: int) -> dict:
    """Domains whose first window is the last window of the output, and which are flagged."""
    if not senders.num_rows:
        return {"windows": 0, "points": [], "flagged": []}
    starts = _ms(senders.column("window_start"))
    last = max(starts)
    windows = len(set(starts))
    seen_before = {d for d, s in zip(senders.column("sender_domain").to_pylist(), starts)
                   if s < last}
    mask = pc.equal(pc.cast(senders.column("window_start"), pa.int64()), last)
    last_rows = _sum_by_domain(senders.filter(mask))
    window_messages = sum(r["messages"] for r in last_rows)
    threshold = min_messages if min_messages is not None else \
        max(3, math.ceil(0.01 * window_messages))
    points, flagged = [], []
    first_seen = {}
    for d, fs in zip(senders.filter(mask).column("sender_domain").to_pylist(),
                     _ms(senders.filter(mask).column("first_seen"))):
        first_seen[d] = min(fs, first_seen.get(d, fs))
    for r in last_rows:
        if r["sender_domain"] in seen_before or windows < 2:
            continue
        rate = r["worst_fail"] / r["messages"] if r["messages"] else 0.0
        worst = max(VERDICTS, key=lambda v: r[f"{v}_fail"])
        reasons = []
        if r["messages"] >= threshold:
            reasons.append("high volume")
        if rate >= fail_rate and r["messages"] >= min_fail_messages:
            reasons.append(f"{VERDICT_LABELS[worst]} FAIL rate")
        point = {"x": r["messages"], "y": 100 * rate, "label": r["domain"],
                 "flagged": bool(reasons), "row": r, "reasons": reasons,
                 "worst": worst, "first_seen": first_seen.get(r["sender_domain"])}
        points.append(point)
        if reasons:
            flagged.append(point)
    flagged.sort(key=lambda p: (-p["row"]["messages"], -p["y"], p["label"]))
    return {"windows": windows, "last": last, "points": points, "flagged": flagged,
            "threshold": threshold, "fail_rate": fail_rate, "window_messages": window_messages,
            "min_fail_messages": min_fail_messages, "domains_in_last": len(last_rows)}


# -- HTML pieces -----------------------------------------------------------------------------

def _table(headers: list[tuple[str, str]], rows: list[list[str]], cls: str = "") -> str:
    """``headers``: ``(text, "num" | "")``; cells are already-escaped HTML."""
    head = "".join(f'<th class="{k}">{escape(h)}</th>' for h, k in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(h for h, _ in headers) else ""
    body = "".join("<tr>" + "".join(f'<td class="{headers[i][1]}">{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}">{thead}<tbody>{body}</tbody></table></div>'


def _figure(svg: str, caption: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<figure><figcaption>{escape(caption)}</figcaption>{svg}{note_html}</figure>'


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{escape(title)}</h2>'
            f'<p class="intro">{intro}</p>{body}</section>')


def _kpi(label: str, value: str, sub: str = "", tone: str = "") -> str:
    return (f'<div class="kpi {tone}"><div class="kpi-label">{escape(label)}</div>'
            f'<div class="kpi-value">{escape(value)}</div>'
            f'<div class="kpi-sub">{escape(sub)}</div></div>')


_CSS = """
:root{--ink:#1d2430;--muted:#5d6675;--line:#e2e5ea;--bg:#f5f6f8;--card:#fff;--accent:#0072B2}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,
 "Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#17324d;color:#fff;padding:22px 32px 18px}
h3{font-size:14.5px;margin:18px 0 6px}
header h1{margin:0 0 4px;font-size:22px;font-weight:650;letter-spacing:.2px}
header .meta{color:#c7d3e0;font-size:13px}
header .meta code{color:#fff;background:rgba(255,255,255,.08);padding:1px 5px;border-radius:4px}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;position:sticky;top:0;
 z-index:2}
nav a{color:var(--accent);text-decoration:none;margin-right:18px;font-size:13px}
main{max-width:1260px;margin:0 auto;padding:18px 24px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
 padding:18px 22px 20px;margin:18px 0}
h2{margin:0 0 4px;font-size:18px}
.intro{margin:0 0 14px;color:var(--muted);max-width:980px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:4px 0}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.kpi-label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.4px}
.kpi-value{font-size:24px;font-weight:650;margin-top:2px}
.kpi-sub{color:var(--muted);font-size:12px;min-height:16px}
.kpi.bad .kpi-value{color:#B2182B}.kpi.good .kpi-value{color:#00734d}
.grid3{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:16px 18px}
.grid2{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px 22px}
@media (max-width:1000px){.grid3{grid-template-columns:repeat(2,minmax(0,1fr))}
.grid2{grid-template-columns:minmax(0,1fr)}}
figure{margin:0;min-width:0}
.scroll{overflow-x:auto}
details{margin-top:10px}
summary{cursor:pointer;color:var(--accent);font-size:13px}
figcaption{font-weight:600;font-size:13.5px;margin:0 0 4px}
svg{width:100%;height:auto;display:block;overflow:visible}
svg text{font-family:inherit}
.note{color:var(--muted);font-size:12px;margin:4px 0 0}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin-top:10px}
table.facts td:first-child{color:var(--muted);white-space:nowrap;width:1%}
th{text-align:left;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line);
 padding:5px 8px;white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:4px 8px;vertical-align:top}
tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.wrap{word-break:break-all}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:11.5px;font-weight:600;
 margin-right:4px;white-space:nowrap}
.b-bad{background:#fbe3dc;color:#8f2a0b}.b-warn{background:#fdf0d5;color:#7a4d00}
.b-ok{background:#dcf3e8;color:#00573a}.b-info{background:#e3eef8;color:#0b4a7a}
.equation{font-size:15px;margin:6px 0 10px}
.equation b{font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
section.plain{background:none;border:0;padding:0}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
.empty-state{color:var(--muted);font-style:italic}
@media print{nav{display:none}section{break-inside:avoid}}
"""

# Runs first: records script errors for the render check below.
_JS_ERRORS = ("window.__sesbeamErrors=[];window.addEventListener('error',function(e){"
              "window.__sesbeamErrors.push(String(e.message||e.type))});")
# Runs last: every chart must be laid out with visible marks (or say it has no data).
_JS_CHECK = """(function(){
var charts=document.querySelectorAll('[data-chart]'),bad=[],rendered=0,i;
for(i=0;i<charts.length;i++){var c=charts[i],r=c.getBoundingClientRect(),
marks=c.querySelectorAll('[data-mark]'),drawn=0,j;
for(j=0;j<marks.length;j++){var b=marks[j].getBBox();if(b.width>0||b.height>0)drawn++;}
var ok=r.width>0&&r.height>0&&(drawn>0||(c.getAttribute('data-empty')==='true'&&
c.querySelector('text.empty')!==null));
c.setAttribute('data-rendered',ok?'true':'false');
if(ok)rendered++;else bad.push(c.getAttribute('data-chart'));}
var e=window.__sesbeamErrors||[],d=document.body;
d.setAttribute('data-charts',String(charts.length));
d.setAttribute('data-charts-rendered',String(rendered));
d.setAttribute('data-charts-empty',
String(document.querySelectorAll('[data-chart][data-empty="true"]').length));
d.setAttribute('data-errors',
e.concat(bad.map(function(n){return 'chart not rendered: '+n})).join(' | '));
d.setAttribute('data-status',(e.length||bad.length)?'error':'ok');
})();"""


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


# -- the report ----------------------------------------------------------------------------------

def html_report(output: str, *, top: int = 15, new_min_messages: int | None = None,
                new_fail_rate: float = 0.5, new_min_fail_messages: int = 2,
                generated_at: datetime | None = None) -> str:
    """The HTML page of the batch output at ``output``.

    ``top``: domains in the top lists. New senders (first seen in the last window) are
    flagged when they sent at least ``new_min_messages`` (default: 1% of the window's
    messages, at least 3) or when one check failed for at least ``new_fail_rate`` of their
    messages (with at least ``new_min_fail_messages`` messages).
    """
    from sesbeam.pipeline.report import _storage

    output = output.rstrip("/")
    storage = _storage()
    summary = read_output_summary(output, storage)
    verdicts = read_table(output, "verdict_stats", storage=storage)
    senders = read_table(output, "sender_stats", storage=storage)
    dead = read_table(output, "dead_letters", ["source_uri", "offset", "kind", "detail"],
                      storage=storage)
    window_s = _window_seconds(summary, verdicts if verdicts.num_rows else senders)
    generated_at = generated_at or datetime.now(timezone.utc)

    xs, step, counts, volume = _verdict_series(verdicts, window_s)
    domains = _sum_by_domain(senders)
    total_messages = sum(volume)
    sections = [
        _overview(summary, counts, domains, total_messages, dead.num_rows),
        _over_time(xs, step, window_s, counts, volume),
        _top_domains(domains, top),
        _dmarc(domains, top),
        _new_section(_new_senders(senders, min_messages=new_min_messages,
                                  fail_rate=new_fail_rate,
                                  min_fail_messages=new_min_fail_messages), window_s),
        _accounting(summary, dead),
    ]
    if xs:  # whole days shown inclusive (Mar 1 – Mar 7), shorter windows up to their end
        end = xs[-1] + (step - 86400) * 1000 if step >= 86400 else xs[-1] + step * 1000
        period = f"{_time_full(xs[0], step)} – {_time_full(end, step)} UTC"
    else:
        period = "no messages"
    run = summary.get("run_id", "?") if summary else "no summary.json"
    csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
           f"script-src {_csp_hash(_JS_ERRORS)} {_csp_hash(_JS_CHECK)}; "
           "base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in (
        ("overview", "Overview"), ("time", "Over time"), ("senders", "Top senders"),
        ("dmarc", "DMARC"), ("new", "New senders"), ("accounting", "Accounting")))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">
<meta name="generator" content="sesbeam report">
<title>SES inbound mail report · {escape(output)}</title>
<style>{_CSS}</style>
<script>{_JS_ERRORS}</script>
</head>
<body>
<header>
<h1>SES inbound mail report</h1>
<div class="meta">Output <code>{escape(output)}</code> · period {escape(period)} ·
windows of {escape(_duration(window_s))} · run <code>{escape(str(run))}</code> ·
generated {generated_at:%Y-%m-%d %H:%M} UTC</div>
</header>
<nav>{nav}</nav>
<main>
{"".join(sections)}
</main>
<footer>sesbeam report · schema {escape(SCHEMA_VERSION)} · times in UTC · hover a mark for its
exact value</footer>
<script>{_JS_CHECK}</script>
</body>
</html>
"""


def _overview(summary, counts, domains, total, dead_rows) -> str:
    def rate(verdict: str) -> tuple[str, str]:
        c = counts[verdict]
        whole = sum(sum(v) for v in c.values())
        fail = sum(c.get("FAIL", []))
        return _pct(fail, whole), f"{_n(fail)} of {_n(whole)} messages"

    messages = summary.get("messages", total) if summary else total
    kpis = [_kpi("Messages", _n(messages), f"{_n(len(domains))} sender domains")]
    if summary:
        kpis.append(_kpi("Records read", _n(summary.get("records", 0)),
                         f"{_n(summary.get('sources', 0))} sources, "
                         f"{summary.get('bytes', 0) / 1e6:,.1f} MB"))
        kpis.append(_kpi("Duplicates", _n(summary.get("duplicates", 0))))
        dl = summary.get("dead_letters", 0)
        kpis.append(_kpi("Dead letters", _n(dl), f"{_n(summary.get('skipped', 0))} skipped",
                         "bad" if dl else "good"))
    for verdict in ("spam", "dmarc"):
        value, sub = rate(verdict)
        kpis.append(_kpi(f"{VERDICT_LABELS[verdict]} FAIL", value, sub))
    if summary:
        balanced = summary.get("balanced")
        kpis.append(_kpi("Accounting", "balanced" if balanced else "NOT balanced",
                         "every record accounted for",
                         "good" if balanced else "bad"))
    return f'<section id="overview" class="plain"><div class="kpis">{"".join(kpis)}</div></section>'


def _status_colours(statuses: list[str]) -> dict[str, str]:
    colours, extra = {}, iter(_OTHER_STATUS_COLOURS * 4)
    for s in statuses:
        colours[s] = STATUS_COLOURS.get(s) or next(extra)
    return colours


def _status_order(statuses) -> list[str]:
    known = [s for s in STATUS_COLOURS if s in statuses]
    return known + sorted(s for s in statuses if s not in STATUS_COLOURS)


def _over_time(xs, step, window_s, counts, volume) -> str:
    bucket_note = "" if step == window_s else \
        f" Windows are merged into buckets of {_duration(step)} to keep the charts legible."
    vol_tips = [f"{_time_full(x, step)}: {_n(v)} messages" for x, v in zip(xs, volume)]
    volume_svg = column_chart("volume", "Messages per window", xs, step, volume, vol_tips,
                              label="messages (deduplicated, SES receipts)",
                              y_label="messages per window")
    statuses = _status_order({s for c in counts.values() for s in c if s != "PASS"})
    colours = _status_colours(statuses)
    charts, rates = [], {}
    for verdict in VERDICTS:
        c = counts[verdict]
        totals = [sum(col) for col in zip(*c.values())] if c else [0] * len(xs)
        rates[verdict] = []
        for s in statuses:
            vals = c.get(s, [0] * len(xs))
            r = [100 * v / t if t else None for v, t in zip(vals, totals)]
            tips = [f"{VERDICT_LABELS[verdict]} {s}, {_time_full(x, step)}: {ri:.1f}% "
                    f"({_n(v)} of {_n(t)} messages)" if ri is not None else ""
                    for x, v, t, ri in zip(xs, vals, totals, r)]
            rates[verdict].append((s, colours[s], r, tips))
    y_max = max([v for rs in rates.values() for s in rs for v in s[2] if v is not None],
                default=0)
    drawn = {}
    for verdict in VERDICTS:
        # Only statuses this verdict has: a legend entry per drawn line.
        drawn[verdict] = [s for s in rates[verdict] if any(v for v in s[2] if v)] or \
            rates[verdict][:1]
    space = max([legend_height([s[0] for s in d], THIRD) for d in drawn.values()]
                + [legend_height([VERDICT_LABELS[v] for v in VERDICTS], THIRD)])
    for verdict in VERDICTS:
        c = counts[verdict]
        whole = sum(sum(v) for v in c.values())
        passed = sum(c.get("PASS", []))
        svg = line_chart(f"verdict-{verdict}", f"{VERDICT_LABELS[verdict]} verdicts over time",
                         xs, step, drawn[verdict], y_label="% of messages", y_max=y_max,
                         legend_space=space, empty_message="no SES receipt messages")
        charts.append(_figure(svg, f"{VERDICT_LABELS[verdict]} verdict",
                              f"PASS (not drawn): {_pct(passed, whole)} of {_n(whole)} "
                              "messages."))
    fail_series = []
    for verdict in VERDICTS:
        fail = next((r for r in rates[verdict] if r[0] == "FAIL"), None)
        if fail is not None:
            fail_series.append((VERDICT_LABELS[verdict], VERDICT_COLOURS[verdict], fail[2],
                                fail[3]))
    fail_svg = line_chart("verdict-fail-all", "FAIL rate of every check over time", xs, step,
                          fail_series, y_label="% of messages failing", y_max=y_max,
                          legend_space=space, empty_message="no FAIL verdict")
    charts.append(_figure(fail_svg, "FAIL rate, all five checks",
                          "One line per check; the same data as the FAIL lines."))
    body = (_figure(volume_svg, "Messages per window") +
            '<h3>Verdict rates per window</h3>'
            f'<div class="grid3">{"".join(charts)}</div>')
    intro = ("Deduplicated SES receipt messages per window, and for each of the five verdicts "
             "the share of messages with each non-PASS status; all five charts share one "
             f"y scale.{bucket_note}")
    return _section("time", "Over time", escape(intro), body)


def _fail_cells(r: dict) -> list[str]:
    return [f'{_pct(r[f"{v}_fail"], r["messages"])}' for v in VERDICTS]


def _top_domains(domains: list[dict], top: int) -> str:
    by_volume = sorted(domains, key=lambda r: (-r["messages"], r["domain"]))[:top]
    by_fails = sorted((r for r in domains if r["fails"]),
                      key=lambda r: (-r["fails"], -r["messages"], r["domain"]))[:top]
    volume_svg = hbar_chart(
        "top-volume", f"Top {top} sender domains by messages", [r["domain"] for r in by_volume],
        [("messages", _VOLUME_COLOUR, [r["messages"] for r in by_volume])],
        x_label="messages (whole period)")
    fail_svg = hbar_chart(
        "top-failures", f"Top {top} sender domains by FAIL verdicts",
        [r["domain"] for r in by_fails],
        [(f"{VERDICT_LABELS[v]} FAIL", VERDICT_COLOURS[v], [r[f"{v}_fail"] for r in by_fails])
         for v in VERDICTS],
        x_label="FAIL verdicts (a message failing two checks counts twice)",
        empty_message="no FAIL verdict")
    headers = [("sender domain", ""), ("messages", "num"), ("recipients", "num")] + \
        [(f"{VERDICT_LABELS[v]} FAIL", "num") for v in VERDICTS]
    rows = [[escape(r["domain"]), _n(r["messages"]), _n(r["recipients"])] + _fail_cells(r)
            for r in by_volume]
    fail_rows = [[escape(r["domain"]), _n(r["messages"]), _n(r["recipients"])] + _fail_cells(r)
                 for r in by_fails]
    body = (f'<div class="grid2">{_figure(volume_svg, "By volume")}'
            f'{_figure(fail_svg, "By failures")}</div>'
            f'<details><summary>Table: top {len(rows)} by volume, FAIL rate per check'
            f'</summary>{_table(headers, rows)}</details>'
            f'<details><summary>Table: top {len(fail_rows)} by failures, FAIL rate per check'
            f'</summary>{_table(headers, fail_rows)}</details>')
    intro = ("Sender domain: the domain of the From header, else of MAIL FROM. Percentages are "
             "the share of the domain's messages with a FAIL verdict for each check.")
    return _section("senders", "Top sender domains", escape(intro), body)


def _policy_parts(r: dict) -> list[tuple[str, int]]:
    known = [("reject", r["dmarc_fail_reject"]), ("quarantine", r["dmarc_fail_quarantine"]),
             ("none", r["dmarc_fail_none"])]
    rest = r["dmarc_fail"] - sum(v for _, v in known)
    return known + [("not given", max(rest, 0))]


def _dmarc(domains: list[dict], top: int) -> str:
    rows = sorted((r for r in domains if r["dmarc_fail"]),
                  key=lambda r: (-r["dmarc_fail"], -r["messages"], r["domain"]))[:top]
    series = [(f"policy {p}" if p != "not given" else "policy not given", POLICY_COLOURS[p],
               [dict(_policy_parts(r))[p] for r in rows]) for p in POLICY_COLOURS]
    svg = hbar_chart("dmarc-failures", "DMARC failures by sender domain and published policy",
                     [r["domain"] for r in rows], series,
                     x_label="messages with DMARC FAIL (whole period)",
                     totals=[f"{_n(r['dmarc_fail'])} ({_pct(r['dmarc_fail'], r['messages'])})"
                             for r in rows], width=FULL, label_width=210,
                     empty_message="no DMARC failure")
    badge = {"reject": "b-bad", "quarantine": "b-warn", "none": "b-info", "not given": "b-ok"}
    table_rows = []
    for r in rows:
        parts = [(p, v) for p, v in _policy_parts(r) if v]
        policy = " ".join(f'<span class="badge {badge[p]}">{escape(p)}'
                          f'{f" ×{v:,}" if len(parts) > 1 else ""}</span>' for p, v in parts)
        table_rows.append([escape(r["domain"]), _n(r["messages"]), _n(r["dmarc_fail"]),
                           _pct(r["dmarc_fail"], r["messages"]), policy])
    table = _table([("sender domain", ""), ("messages", "num"), ("DMARC FAIL", "num"),
                    ("FAIL rate", "num"), ("published policy (p=)", "")], table_rows)
    intro = ("Messages that failed DMARC, by sender domain, split by the policy the domain "
             "publishes (SES reports it with each failure). <b>reject</b> and "
             "<b>quarantine</b> failures are mail the domain owner asked receivers to refuse "
             "or quarantine.")
    return _section("dmarc", "DMARC failures by domain", intro,
                    f'{_figure(svg, "DMARC FAIL by published policy")}{table}')


def _new_section(new: dict, window_s: int) -> str:
    if new["windows"] < 2:
        why = ("needs at least two windows" if new["windows"] == 1 else "no sender statistics")
        svg = scatter_chart("new-senders", "New sender domains in the last window", [],
                            x_label="messages in the last window",
                            y_label="worst FAIL rate", x_threshold=3, y_threshold=50,
                            empty_message=why)
        return _section("new", "New senders in the last window",
                        escape(f"Sender domains first seen in the last window: {why}."),
                        _figure(svg, "New sender domains"))
    last = new["last"]
    svg = scatter_chart("new-senders", "New sender domains in the last window",
                        new["points"], x_label="messages in the last window",
                        y_label="worst FAIL rate (% of messages)",
                        x_threshold=new["threshold"], y_threshold=100 * new["fail_rate"],
                        empty_message="no sender domain is new in the last window")
    rows = []
    for p in new["flagged"]:
        r = p["row"]
        badges = " ".join(f'<span class="badge {"b-warn" if "volume" in x else "b-bad"}">'
                          f"{escape(x)}</span>" for x in p["reasons"])
        rows.append([escape(p["label"]), _n(r["messages"]),
                     f'{p["y"]:.0f}% ({VERDICT_LABELS[p["worst"]]})' if p["y"] else "0%",
                     badges])
    headers = [("sender domain", ""), ("messages", "num"), ("worst FAIL rate", "num"),
               ("why flagged", "")]
    table = _table(headers, rows) if rows else \
        '<p class="empty-state">No new sender domain above the thresholds.</p>'
    intro = (f"Sender domains whose first message is in the last window "
             f"({escape(_time_full(last, window_s))}, {escape(_duration(window_s))}) and that "
             "were not seen in any earlier window of this output: "
             f"<b>{len(new['points']):,}</b> of {new['domains_in_last']:,} domains in that "
             f"window. Flagged: at least <b>{new['threshold']:,}</b> messages (1% of the "
             f"window's {new['window_messages']:,}, at least 3, unless set), or one check "
             f"failing for at least <b>{100 * new['fail_rate']:.0f}%</b> of their messages "
             f"(with {new['min_fail_messages']}+ messages). Worst FAIL rate: the highest "
             "FAIL share among spam, virus, SPF, DKIM and DMARC.")
    return _section("new", "New senders in the last window", intro,
                    f'<div class="grid2">{_figure(svg, "New sender domains")}'
                    f'<div><h3 style="margin:0 0 4px">Flagged new senders '
                    f'({len(rows):,})</h3>{table}</div></div>')


def _accounting(summary: dict | None, dead: pa.Table) -> str:
    if not summary:
        body = ('<p class="empty-state">No summary.json in this output: the run did not '
                "commit, or this is not a sesbeam batch output.</p>")
        empty = hbar_chart("accounting-records", "Records by outcome", [], [("records", "#999",
                           [])], x_label="records", empty_message="no summary.json")
        return _section("accounting", "Run accounting", "", body + _figure(empty, "Records"))
    s = summary
    outcome = [("messages", s.get("messages", 0), "#009E73"),
               ("duplicates", s.get("duplicates", 0), "#56B4E9"),
               ("skipped", s.get("skipped", 0), "#7A7A7A"),
               ("dead letters", s.get("dead_letters", 0), "#D55E00")]
    records_svg = hbar_chart(
        "accounting-records", "Records by outcome", [o[0] for o in outcome],
        [(o[0], o[2], [o[1] if j == i else 0 for j in range(len(outcome))])
         for i, o in enumerate(outcome)],
        x_label="records", label_width=110,
        totals=[f"{_n(o[1])} ({_pct(o[1], s.get('records', 0))})" for o in outcome])
    skipped = sorted(s.get("skipped_reasons", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    skipped_svg = hbar_chart("accounting-skipped", "Skipped records by reason",
                             [k for k, _ in skipped],
                             [("skipped records", "#7A7A7A", [v for _, v in skipped])],
                             x_label="records", label_width=170,
                             empty_message="nothing skipped")
    kinds = sorted(s.get("dead_letter_kinds", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    dead_svg = hbar_chart("accounting-dead-letters", "Dead letters by kind",
                          [k for k, _ in kinds],
                          [("dead letters", "#D55E00", [v for _, v in kinds])],
                          x_label="records", label_width=170,
                          empty_message="no dead letters")
    balanced = s.get("balanced")
    equation = (f'<p class="equation"><b>{_n(s.get("records", 0))}</b> records = '
                f'<b>{_n(s.get("messages", 0))}</b> messages + '
                f'<b>{_n(s.get("duplicates", 0))}</b> duplicates + '
                f'<b>{_n(s.get("skipped", 0))}</b> skipped + '
                f'<b>{_n(s.get("dead_letters", 0))}</b> dead letters '
                f'<span class="badge {"b-ok" if balanced else "b-bad"}">'
                f'{"balanced" if balanced else "NOT balanced"}</span></p>')
    tables = _table([("table", ""), ("rows", "num"), ("files", "num")],
                    [[f"<code>{escape(name)}</code>", _n(info.get("rows", 0)),
                      _n(info.get("files", 0))] for name, info in s.get("tables", {}).items()])
    inputs = ", ".join(f"<code>{escape(str(i))}</code>" for i in s.get("inputs", []))
    facts = _table([("", ""), ("", "")], [
        ["sources read", f'{_n(s.get("sources", 0))} ({s.get("bytes", 0) / 1e6:,.1f} MB)'],
        ["inputs", inputs or "–"],
        ["output", f'<code>{escape(str(s.get("output", "")))}</code>'],
        ["run id", f'<code>{escape(str(s.get("run_id", "")))}</code>'],
        ["window", escape(_duration(int(s.get("window_seconds") or 0) or 1))],
    ], cls="facts")
    sample = dead.sort_by([("kind", "ascending"), ("source_uri", "ascending"),
                           ("offset", "ascending")]).slice(0, 12).to_pylist()
    dead_rows = [[f'<span class="badge b-bad">{escape(r["kind"])}</span>',
                  escape(r["source_uri"]), _n(r["offset"]) if r["offset"] >= 0 else "whole",
                  escape(_short(r["detail"], 160))] for r in sample]
    dead_table = _table([("kind", ""), ("source", ""), ("offset", "num"), ("detail", "")],
                        dead_rows, cls="dead") if dead_rows else \
        '<p class="empty-state">No dead letters.</p>'
    more = f" (first {len(sample)} of {dead.num_rows:,})" if dead.num_rows > len(sample) else ""
    body = (equation
            + f'<div class="grid2">{_figure(records_svg, "Records by outcome")}'
            f'<div>{facts}{tables}</div></div>'
            f'<div class="grid2">{_figure(skipped_svg, "Skipped, by reason")}'
            f'{_figure(dead_svg, "Dead letters, by kind")}</div>'
            f'<h3>Dead letters{escape(more)}</h3>'
            f'{dead_table}<p class="note">Every dead letter keeps its raw bytes in '
            f'<code>dead_letters/</code>.</p>')
    intro = ("Every record read ends as exactly one of: a message, a duplicate of one, "
             "skipped (not an email receipt) or a dead letter (undecodable).")
    return _section("accounting", "Run accounting", escape(intro), body)
