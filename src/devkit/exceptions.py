"""Exceptions devkit raises into application code (only at ``init()``)."""

from __future__ import annotations

__all__ = ["ConfigError", "DevkitError"]


class DevkitError(Exception):
    """Base class of every exception devkit raises."""


class ConfigError(DevkitError, ValueError):
    """Invalid configuration, raised by ``devkit.init()`` before anything is installed.

    The message always names the variable, the value it had and what is accepted.
    """

    def __init__(self, variable: str, value: object, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is invalid: expected {accepted}")
