"""The run's accounting: tallies from every stage merged into ``summary.json``.

Every stage emits small dicts (``decode``: records, skips, dead letters per source;
``dedupe``: duplicates; ``write``: files and rows per table). ``merge_tallies`` adds them
up; ``build_summary`` checks the equation
``records == messages + duplicates + skipped + dead_letters``.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["build_summary", "merge_tallies"]


def merge_tallies(tallies: Iterable[dict]) -> dict:
    """Sum nested dicts of counts; lists are concatenated."""
    total: dict = {}
    for tally in tallies:
        _add(total, tally)
    return total


def _add(into: dict, tally: dict) -> None:
    for key, value in tally.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = into.get(key, 0) + value


def build_summary(tally: dict, **context) -> dict:
    """The summary document of a run from its merged tally (``files`` left out)."""
    tables = tally.get("tables", {})
    skipped = dict(sorted(tally.get("skipped", {}).items()))
    dead = dict(sorted(tally.get("dead_letters", {}).items()))
    summary = dict(context)
    summary.update({
        "sources": tally.get("sources", 0),
        "bytes": tally.get("bytes", 0),
        "records": tally.get("records", 0),
        "messages": tables.get("messages", {}).get("rows", 0),
        "duplicates": tally.get("duplicates", 0),
        "skipped": sum(skipped.values()),
        "dead_letters": sum(dead.values()),
        "skipped_reasons": skipped,
        "dead_letter_kinds": dead,
        "tables": {name: tables[name] for name in sorted(tables)},
    })
    summary["balanced"] = (
        summary["records"] == summary["messages"] + summary["duplicates"]
        + summary["skipped"] + summary["dead_letters"]
        and tally.get("notifications", 0) == summary["messages"] + summary["duplicates"]
        and tables.get("dead_letters", {}).get("rows", 0) == summary["dead_letters"]
    )
    return summary
