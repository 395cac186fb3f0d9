"""Writes the tables of docs/reliability.md from the rows the suite recorded.

    python tests/reliability/report.py          # rewrite the tables in place
    python tests/reliability/report.py --check  # exit 1 when the page is out of date

Each table sits between ``<!-- begin table: <section> -->`` and
``<!-- end table: <section> -->`` in the page; everything outside the markers is prose
and left alone. A section with rows but no place in the page, or a place with no rows,
is an error: a table is never half of a run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAGE = HERE.parent.parent / "docs" / "reliability.md"

_TABLE = re.compile(
    r"(<!-- begin table: (?P<section>[^>]+?) -->\n)(?P<body>.*?)(<!-- end table: (?P=section) -->)",
    re.DOTALL,
)

#: Column titles of figure names that are not self-explanatory once underscores go.
TITLES = {
    "p50_ratio": "p50 x healthy",
    "p99_ratio": "p99 x healthy",
    "extra_rss_mb": "extra RSS MB",
    "rss_mb": "RSS MB",
    "shutdown_s": "shutdown s",
    "devkit_shutdown_s": "devkit's part s",
    "us_per_request": "µs per request",
    "rss_bound_mb": "RSS bound MB",
    "rss_slope_full_kb_per_1k": "RSS slope when full, KB per 1k",
    "rss_slope_kb_per_10k": "RSS slope, KB per 10k",
    "rss_growth_mb": "RSS growth MB",
    "rss_warmup_growth_mb": "RSS warm-up growth MB",
    "fd_growth": "fd growth",
}


class ReportError(Exception):
    """The rows and the page do not fit together."""


def load_rows(results: Path = RESULTS) -> dict[str, list[dict[str, Any]]]:
    """Rows by section, each section's rows in the order of their names."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.json")):
        row = json.loads(path.read_text(encoding="utf-8"))
        missing = {"section", "fault", "done", "figures"} - row.keys()
        if missing:
            raise ReportError(f"{path.name}: missing {', '.join(sorted(missing))}")
        sections.setdefault(row["section"], []).append(row)
    for rows in sections.values():
        rows.sort(key=lambda r: r["fault"].lower())
    return sections


def _title(name: str) -> str:
    return TITLES.get(name) or name.replace("_", " ")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 100:
            return f"{value:.1f}"  # a ratio of exactly 1, not a count
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every figure of the section, those most rows have first (a sparse section's shared
    columns stay on the left), otherwise in the order they first appear."""
    columns: list[str] = []
    counts: dict[str, int] = {}
    for row in rows:
        for name in row["figures"]:
            if name not in counts:
                columns.append(name)
            counts[name] = counts.get(name, 0) + 1
    return sorted(columns, key=lambda c: -counts[c])


def table(rows: list[dict[str, Any]]) -> str:
    """One section's rows as a Markdown table: the fault, what was done, every figure."""
    columns = _columns(rows)
    lines = [
        "| fault | what was done | " + " | ".join(_title(c) for c in columns) + " |",
        "|---|---|" + "--:|" * len(columns),
    ]
    for row in rows:
        figures = row["figures"]
        cells = [_cell(row["fault"]), _cell(row["done"])]
        cells += [_cell(figures.get(c)) if c in figures else "" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(page: str, sections: Mapping[str, list[dict[str, Any]]]) -> str:
    """``page`` with every table rewritten from ``sections``."""
    placed = {m.group("section") for m in _TABLE.finditer(page)}
    unplaced = sorted(set(sections) - placed)
    if unplaced:
        raise ReportError(f"{PAGE.name}: no table for section(s) {', '.join(unplaced)}")
    empty = sorted(placed - set(sections))
    if empty:
        raise ReportError(f"no recorded rows for section(s) {', '.join(empty)}")
    return _TABLE.sub(lambda m: m.group(1) + table(sections[m.group("section")]) + m.group(4), page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    try:
        page = PAGE.read_text(encoding="utf-8")
        new = render(page, load_rows())
    except (ReportError, OSError, json.JSONDecodeError) as exc:
        print(f"reliability report: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != page:
            print(f"{PAGE.name} is out of date: run make reliability", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
