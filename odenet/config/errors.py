"""The error a user's setting raises, and the two checks every schema uses.

Imports nothing: every layer may raise ``ConfigError``, and the command layer turns it
into one line on stderr and exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A setting that cannot be run; its message is one line meant for the user."""


def need(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def one_of(key: str, value: Any, options: Sequence[str]) -> None:
    need(value in options, f"{key}={value!r} is not one of: {', '.join(options)}")
