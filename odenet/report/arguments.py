"""The command line `odenet table` and `odenet figures` share: run directories first, then
``key=value`` settings, ``out=`` checked writable before any run is read."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from odenet.config.command_line import SettingsError, settings
from odenet.run.files import check_writable, os_reason


def report_settings(prog: str, argv: list[str], keys: dict[str, str],
                    defaults: dict[str, Any], lists: tuple[str, ...],
                    check: Callable[[dict], None] = lambda args: None) -> dict | None:
    """The settings of ``argv`` (``check`` raises SettingsError for a bad value), or None
    after printing the one-line error of a bad argument or an unwritable ``out``."""
    try:
        args = settings(argv, keys, defaults, lists=lists)
        check(args)
        check_writable(args["out"])
    except SettingsError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return None
    except OSError as e:
        print(f"{prog}: error: out={args['out']}: cannot write there ({os_reason(e)}); "
              "give out= a writable directory", file=sys.stderr)
        return None
    return args
