"""The memory limit and usage of the process's cgroup (its container), read from /sys.

A canary rolls back when memory nears the container's limit; Kubernetes does not export
the limit next to the service's own metrics without a cluster add-on, so devkit reads it
where the kernel publishes it: cgroup v2 (``memory.max``, ``memory.current``) or v1
(``memory.limit_in_bytes``, ``memory.usage_in_bytes``). No limit is None, as is anything
unreadable: the gauge is then simply absent.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["memory"]

#: cgroup v1 writes "no limit" as a page-aligned near-maximum 64-bit number.
_UNLIMITED_V1 = 1 << 60


def memory(
    root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup"
) -> tuple[float | None, float | None]:
    """``(limit, usage)`` in bytes of this process's memory cgroup."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None, None
    base = Path(root)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":  # the v2 hierarchy (a hybrid host keeps memory on v1)
            directory = _existing(base / relative, base)
            if (directory / "memory.max").exists():
                usage = _value(directory / "memory.current", None)
                return _value(directory / "memory.max", None), usage
        elif "memory" in controllers.split(","):
            directory = _existing(base / "memory" / relative, base / "memory")
            limit = _value(directory / "memory.limit_in_bytes", _UNLIMITED_V1)
            return limit, _value(directory / "memory.usage_in_bytes", None)
    return None, None


def _existing(directory: Path, fallback: Path) -> Path:
    # Inside a container's cgroup namespace the path reads "/" while the files are at the
    # root; on hosts without one the path is relative to the root.
    return directory if directory.is_dir() else fallback


def _value(path: Path, unlimited_from: int | None) -> float | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit
    value = int(text)
    if unlimited_from is not None and value >= unlimited_from:
        return None
    return float(value)
