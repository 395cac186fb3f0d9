"""What each reliability test proved, as one row of docs/reliability.md's tables.

A test calls :func:`record` once its assertions passed, with the figures it measured;
``make reliability`` runs the whole suite with recording on and then
``tests/reliability/report.py``, which turns every recorded row into the tables (no
figure in docs/reliability.md is typed by hand). A test that fails records nothing, so a
failed row is a failed test, never a footnote.

Rows are written to ``tests/reliability/results/`` only when
``DEVKIT_RELIABILITY_RECORD=1`` (``make reliability``); other runs (``make test``, CI)
check that the row can be written and leave the committed results alone, so the tables
always come from one complete run of the suite.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["RECORDING", "RESULTS", "record"]

#: Where rows are written: one JSON file per row (``DEVKIT_RELIABILITY_RESULTS`` moves it).
RESULTS = Path(
    os.environ.get("DEVKIT_RELIABILITY_RESULTS", Path(__file__).resolve().parent / "results")
)
RECORDING = os.environ.get("DEVKIT_RELIABILITY_RECORD") == "1"


def record(section: str, fault: str, done: str, **figures: Any) -> None:
    """Record one row: ``section`` (the table), ``fault`` (the row's name), ``done`` (what
    the test did, in a few words) and the measured ``figures`` (column -> value: numbers,
    short strings; None for "not applicable")."""
    name = re.sub(r"[^a-z0-9]+", "-", f"{section}-{fault}".lower()).strip("-")
    row = {"section": section, "fault": fault, "done": done, "figures": figures}
    text = json.dumps(row, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if RECORDING:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(text, encoding="utf-8")
