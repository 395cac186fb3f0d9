from __future__ import annotations

import re
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


def _slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text).strip("-")


def test_links_from_code_into_the_docs_land_on_a_heading() -> None:
    """Code comments link to the figures in the docs instead of quoting them; every such
    link must name a section that exists."""
    root = DOCS.parent
    links = set()
    for path in [*root.joinpath("src").rglob("*.py"), *root.joinpath("benchmarks").rglob("*.py")]:
        for page, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", path.read_text()):
            links.add((page, anchor, path.relative_to(root).as_posix()))
    assert links, "the code links into the docs (docs/benchmarks.md#...)"
    missing = []
    for page, anchor, source in sorted(links):
        headings = re.findall(r"^#+ (.+)$", (DOCS / page).read_text(), re.M)
        if anchor not in {_slug(h) for h in headings}:
            missing.append(f"{source}: docs/{page}#{anchor}")
    assert missing == []
