from __future__ import annotations

from pathlib import Path

from devkit.config import VARIABLES, reference_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_is_generated_from_settings() -> None:
    text = (DOCS / "configuration.md").read_text()
    begin = "<!-- BEGIN GENERATED: devkit.config.reference_table() -->\n"
    start = text.index(begin) + len(begin)
    end = text.index("<!-- END GENERATED -->")
    assert text[start:end] == reference_table(), "regenerate docs/configuration.md's table"
    for var in VARIABLES:
        assert f"`{var.name}`" in text
