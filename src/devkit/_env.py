"""Parsers for environment values. Each error names the variable, the value and what is accepted."""

from __future__ import annotations

from collections.abc import Collection

from devkit.exceptions import ConfigError

__all__ = [
    "parse_bool",
    "parse_choice",
    "parse_float",
    "parse_int",
    "parse_list",
    "parse_path",
]

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_bool(variable: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(variable, raw, "one of true, false, 1, 0, yes, no")


def parse_choice(
    variable: str,
    raw: object,
    choices: Collection[str],
    aliases: dict[str, str] | None = None,
    accepted: str | None = None,
) -> str:
    text = str(raw).strip().lower()
    if aliases and text in aliases:
        text = aliases[text]
    if text in choices:
        return text
    raise ConfigError(variable, raw, accepted or "one of " + ", ".join(choices))


def parse_float(
    variable: str,
    raw: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    accepted = _range_text("a number", minimum, maximum, exclusive_minimum)
    if isinstance(raw, bool):
        raise ConfigError(variable, raw, accepted)
    try:
        value = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
    except ValueError:
        raise ConfigError(variable, raw, accepted) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(variable, raw, accepted)
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        raise ConfigError(variable, raw, accepted)
    if maximum is not None and value > maximum:
        raise ConfigError(variable, raw, accepted)
    return value


def parse_int(
    variable: str, raw: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    accepted = _range_text("an integer", minimum, maximum, False)
    if isinstance(raw, bool):
        raise ConfigError(variable, raw, accepted)
    try:
        value = raw if isinstance(raw, int) else int(str(raw).strip())
    except ValueError:
        raise ConfigError(variable, raw, accepted) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(variable, raw, accepted)
    return value


def parse_list(variable: str, raw: object) -> tuple[str, ...]:
    """A comma-separated list (or a sequence when passed as a keyword); blanks are dropped."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)  # type: ignore[call-overload]
    result = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(variable, raw, "a comma-separated list of names")
        if item.strip():
            result.append(item.strip())
    return tuple(result)


def parse_path(variable: str, raw: object) -> str:
    """A URL path prefix: starts with '/', no trailing '/', no query, no spaces."""
    text = str(raw).strip()
    if (
        not text.startswith("/")
        or len(text) < 2
        or text.endswith("/")
        or any(c in text for c in "?# \t")
        or "//" in text
    ):
        raise ConfigError(variable, raw, "a path such as /metrics (leading '/', no trailing '/')")
    return text


def _range_text(kind: str, lo: float | None, hi: float | None, exclusive_lo: bool) -> str:
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        return f"{kind} {'>' if exclusive_lo else '>='} {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind
