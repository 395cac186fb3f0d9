from __future__ import annotations

import pytest

from devkit import _env
from devkit.exceptions import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("YES", True), (" no ", False), ("0", False), (False, False)],
)
def test_parse_bool(raw: object, expected: bool) -> None:
    assert _env.parse_bool("X", raw) is expected


@pytest.mark.parametrize("raw", ["on", "", "2", "truee"])
def test_parse_bool_rejects(raw: str) -> None:
    with pytest.raises(ConfigError, match="true, false, 1, 0, yes, no"):
        _env.parse_bool("X", raw)


def test_parse_float_bounds() -> None:
    assert _env.parse_float("X", "0.5", minimum=0, maximum=1) == 0.5
    assert _env.parse_float("X", 1, minimum=0, maximum=1) == 1.0
    with pytest.raises(ConfigError, match="from 0 to 1"):
        _env.parse_float("X", "1.01", minimum=0, maximum=1)
    with pytest.raises(ConfigError, match="> 0"):
        _env.parse_float("X", "0", minimum=0, exclusive_minimum=True)
    with pytest.raises(ConfigError):
        _env.parse_float("X", True)
    with pytest.raises(ConfigError):
        _env.parse_float("X", "inf")


def test_parse_int() -> None:
    assert _env.parse_int("P", " 8080 ", minimum=1, maximum=65535) == 8080
    for bad in ("8080.5", "-1", "65536", True):
        with pytest.raises(ConfigError, match="P="):
            _env.parse_int("P", bad, minimum=1, maximum=65535)


def test_parse_list_and_path() -> None:
    assert _env.parse_list("K", " a, b ,,c ") == ("a", "b", "c")
    assert _env.parse_list("K", ["x", " y "]) == ("x", "y")
    with pytest.raises(ConfigError):
        _env.parse_list("K", [1])
    assert _env.parse_path("P", "/metrics") == "/metrics"
    for bad in ("metrics", "/", "/m/", "/m?x", "//m"):
        with pytest.raises(ConfigError):
            _env.parse_path("P", bad)
