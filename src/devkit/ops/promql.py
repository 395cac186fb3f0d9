"""PromQL text, built safely: label matchers parsed and checked, selectors composed.

Generated rules, dashboards and canary queries put user input (a selector such as
``job="checkout"``, route templates) into PromQL. Everything here either validates that
input or escapes it, so a typo is an error naming the matcher rather than a query that
silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from devkit.exceptions import DevkitError

__all__ = [
    "Matcher",
    "MatcherError",
    "label_matcher",
    "parse_matchers",
    "quote",
    "regex_alternatives",
    "selector",
]

_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


class MatcherError(DevkitError, ValueError):
    """Label matchers that are not PromQL's ``name op "value"`` list."""


@dataclass(frozen=True)
class Matcher:
    """``name op "value"``: ``value`` as written between the quotes (still escaped)."""

    name: str
    op: str
    value: str

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'

    @property
    def literal(self) -> str:
        """The value with PromQL's string escapes undone."""
        return _unescape(self.value)


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """``job="checkout", env!="dev"`` -> matchers; braces around the list are allowed."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    matchers: list[Matcher] = []
    position = 0
    body = body.strip().rstrip(",")
    while position < len(body):
        match = _MATCHER.match(body, position)
        if match is None:
            raise MatcherError(
                f"{text!r} is not a list of PromQL label matchers such as "
                f'job="checkout", version="1.4.0" (at character {position + 1})'
            )
        name, op, value = match.groups()
        if op in ("=~", "!~"):
            try:
                re.compile(_unescape(value))
            except re.error as exc:
                raise MatcherError(
                    f"{name}{op}: {value!r} is not a regular expression: {exc}"
                ) from None
        matchers.append(Matcher(name, op, value))
        position = match.end()
    if not matchers:
        raise MatcherError(f"{text!r} holds no label matcher")
    return tuple(matchers)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def quote(value: str) -> str:
    """``value`` as a PromQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def regex_alternatives(values: Sequence[str]) -> str:
    """An RE2 regex matching exactly ``values`` (PromQL regex matchers are anchored)."""
    return "|".join(_RE2_SPECIAL.sub(r"\\\1", value) for value in values)


def selector(metric: str, *parts: str | Iterable[str]) -> str:
    """``metric{m1, m2, ...}`` from matcher strings and lists of them (empty ones dropped)."""
    flat: list[str] = []
    for part in parts:
        if isinstance(part, str):
            flat.append(part)
        else:
            flat.extend(part)
    inner = ",".join(p.strip().strip("{}").strip() for p in flat if p and p.strip("{} "))
    return f"{metric}{{{inner}}}" if inner else metric


def label_matcher(name: str, values: Sequence[str]) -> str:
    """``name="v"`` for one value, ``name=~"a|b"`` for several, "" for none."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{name}={quote(values[0])}"
    return f"{name}=~{quote(regex_alternatives(values))}"
