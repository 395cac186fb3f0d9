"""The report script and docs/reliability.md: the page's tables are the recorded rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import report


def _row(section: str, fault: str, **figures: object) -> dict[str, object]:
    return {"section": section, "fault": fault, "done": "did it", "figures": figures}


PAGE = """# Title

Prose stays.

<!-- begin table: A -->
stale
<!-- end table: A -->

More prose.
"""


def test_render_writes_each_table_between_its_markers() -> None:
    rows = {"A": [_row("A", "x", p50_ratio=1.04, requests=12345, lost=None)]}
    out = report.render(PAGE, rows)
    assert out.startswith("# Title\n\nProse stays.\n\n<!-- begin table: A -->\n")
    assert "stale" not in out and out.endswith("<!-- end table: A -->\n\nMore prose.\n")
    assert "| fault | what was done | p50 x healthy | requests | lost |" in out
    assert "| x | did it | 1.04 | 12,345 | — |" in out


def test_rows_with_other_figures_leave_their_cells_empty() -> None:
    text = report.table([_row("A", "x", a=1), _row("A", "y", b=2.5)])
    assert text.splitlines()[2:] == ["| x | did it | 1 |  |", "| y | did it |  | 2.5 |"]


def test_a_section_without_a_table_or_a_table_without_rows_is_an_error() -> None:
    with pytest.raises(report.ReportError, match="no table for section"):
        report.render(PAGE, {"A": [_row("A", "x")], "B": [_row("B", "y")]})
    with pytest.raises(report.ReportError, match="no recorded rows"):
        report.render(PAGE, {})


def test_a_row_missing_a_field_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"section": "A", "fault": "x"}))
    with pytest.raises(report.ReportError, match="missing done, figures"):
        report.load_rows(tmp_path)


def test_docs_reliability_holds_the_recorded_rows() -> None:
    page = report.PAGE.read_text(encoding="utf-8")
    assert report.render(page, report.load_rows()) == page, "run make reliability"
