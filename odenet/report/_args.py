"""argparse with one-line errors, for the report commands (`odenet table|figures`)."""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr naming the problem, exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)
