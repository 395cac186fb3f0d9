"""``python -m devkit``: the same as the ``devkit`` command."""

from __future__ import annotations

from devkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
