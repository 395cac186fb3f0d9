"""The documentation site builds with ``mkdocs build --strict`` and covers every page.

Strict mode turns every warning (a broken relative link, a nav entry naming a missing
file) into a failed build. mkdocs is a dev dependency: without it the tests skip locally
and fail in CI.
"""

from __future__ import annotations

import html
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.config import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _require_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None:
        reason = "mkdocs is not installed (it is a dev dependency: pip install mkdocs)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _nav_files(nav: list[Any]) -> list[str]:
    files: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            files.extend(_nav_files(value))
        else:
            files.append(str(value))
    return files


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return config


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_mkdocs()
    site_dir = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    return site_dir


def test_strict_build_writes_the_home_and_configuration_pages(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "configuration" / "index.html").is_file()
    assert "devkit.init()" in html.unescape((site / "index.html").read_text())


def test_every_nav_page_is_built(site: Path) -> None:
    for name in _nav_files(_config()["nav"]):
        page = Path(name).with_suffix("")
        built = site / "index.html" if page.name == "index" else site / page / "index.html"
        assert built.is_file(), f"{name} is in the nav but {built} was not built"


def test_configuration_page_lists_every_variable(site: Path) -> None:
    text = (site / "configuration" / "index.html").read_text()
    for var in VARIABLES:
        for name in (var.name, *var.fallback):
            assert f"<code>{name}</code>" in text, f"{name} missing from the built reference"


def test_every_docs_page_is_in_the_nav() -> None:
    # Pages left out of the nav only produce an INFO line, which --strict does not catch.
    in_nav = set(_nav_files(_config()["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk <= in_nav, f"docs pages missing from mkdocs.yml nav: {on_disk - in_nav}"


def test_config_uses_the_builtin_theme_and_the_docs_folder() -> None:
    config = _config()
    assert config["site_name"] == "devkit"
    assert config["docs_dir"] == "docs"
    theme = config["theme"]["name"] if isinstance(config["theme"], dict) else config["theme"]
    assert theme in {"mkdocs", "readthedocs"}
    assert config["site_dir"] == "site"
