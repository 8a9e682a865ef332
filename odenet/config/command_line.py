"""Command lines of the commands that are not Hydra apps (`odenet table|figures|data`):
run directories first (table, figures), then ``key=value`` settings, as every odenet command
takes them (docs/commands.md).
Also argparse with one-line errors, for the scripts that keep flags (report.regression)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class SettingsError(ValueError):
    """A bad command line: its one line names the argument and the accepted keys."""


def settings(argv: list[str], keys: dict[str, str], defaults: dict[str, Any],
             lists: tuple[str, ...] = (), takes_paths: bool = True) -> dict[str, Any]:
    """``defaults`` updated by ``argv``: leading paths are ``run_dirs``, then ``key=value``
    for the keys of ``keys`` (name: meaning); a key of ``lists`` takes one value or a list
    ``[a,b]``; ``takes_paths=False``: a command without run directories. SettingsError for a
    flag, an unknown or repeated key, a stray path."""
    accepted = ", ".join(keys)
    where = ", after the run directories" if takes_paths else ""
    out, given, paths = dict(defaults), set(), []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if arg.startswith("-"):
            raise SettingsError(f"unknown flag {arg!r}: settings are key=value "
                                f"(keys: {accepted}){where}")
        if not eq:
            if not takes_paths:
                raise SettingsError(f"bad argument {arg!r}: expected key=value settings "
                                    f"(keys: {accepted})")
            if given:
                raise SettingsError(f"bad argument {arg!r}: run directories come first, then "
                                    f"key=value settings (keys: {accepted})")
            paths.append(arg)
            continue
        if key not in keys:
            raise SettingsError(f"unknown key {key!r} in {arg!r} (keys: {accepted})")
        if key in given or (key == "run_dirs" and paths):
            raise SettingsError(f"{key} given twice; several values go in one list: "
                                f"{key}=[a,b]")
        given.add(key)
        out[key] = _list(value) if key in lists else value
    if paths:
        out["run_dirs"] = paths
    return out


def _list(value: str) -> list[str]:
    """``a`` or ``[a,b]`` (Hydra's way of writing a list), as a list of strings."""
    if value.startswith("[") and value.endswith("]"):
        items = [v.strip().strip("'\"") for v in value[1:-1].split(",")]
        return [v for v in items if v]
    return [value]


def usage(prog: str, what: str, keys: dict[str, str], example: str,
          takes_paths: bool = True) -> str:
    """The text of ``PROG --help``."""
    paths = " [RUN_DIR ...]" if takes_paths else ""
    lines = [f"usage: {prog}{paths} [key=value ...]", "", what, "",
             "settings (key=value; docs/commands.md):"]
    lines += [f"  {k:<10} {meaning}" for k, meaning in keys.items()]
    return "\n".join([*lines, "", f"example: {example}"])


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr naming the problem, exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)
