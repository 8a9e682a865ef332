"""One line for the user from an exception of Hydra's composition or a ConfigError (no
Hydra import: it reads Hydra's messages, so tests and the other commands can use it)."""

from __future__ import annotations

import itertools
import re

from odenet.config.schema import ConfigError, unknown_key_line


class Refused(BaseException):
    """A command line that stops before anything is written: one line, an exit status.
    A BaseException because Hydra turns a callback's Exception into a warning and goes on."""

    def __init__(self, line: str, code: int = 2):
        super().__init__(line)
        self.line, self.code = line, code


def error_line(exc: BaseException) -> str:
    """One line for the user from a ConfigError or an exception of Hydra's composition."""
    if isinstance(exc, (ConfigError, Refused)):
        return str(exc)
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines()]
    first = lines[0] if lines else type(exc).__name__
    hint = _quoting_hint(text.splitlines(), exc.__cause__)
    if hint:
        return first + hint
    if "Available options in" in text:  # e.g. model=nope
        after = text.split("Available options in", 1)[1].splitlines()[1:]
        block = itertools.takewhile(lambda ln: ln.startswith("\t") or not ln.strip(), after)
        opts = [ln.strip() for ln in block if ln.strip()]
        first = first.removeprefix("In 'config': ")
        return f"{first} (available: {', '.join(opts)})" if opts else first
    cause = exc.__cause__
    if cause is not None and "not in struct" in str(cause):
        return unknown_key_line(getattr(cause, "full_key", "") or "")
    if cause is not None and str(cause):
        return f"{first.rstrip('.')}: {str(cause).splitlines()[0].strip()}"
    if first.startswith("Ambiguous value") and len(lines) > 3:
        return f"{first}: sweeping needs -m (--multirun); a list is key=[a,b]"
    return first


# Hydra's errors for an override its grammar does not take unquoted: a character its lexer
# refuses (a caret under it on the next line), or a parse error with no other cause
LEXER_ERROR = "LexerNoViableAltException: "
PARSE_ERROR = re.compile(r"Error parsing override '(.+=.*)'")


def _quoting_hint(lines: list[str], cause: BaseException | None) -> str:
    """How to quote the override of Hydra's error ``lines`` ("" for another error), as it
    pastes into a shell."""
    from odenet.run.directory import command_line, hydra_value

    parsed = PARSE_ERROR.fullmatch(lines[0]) if lines and cause is None else None
    if parsed:
        override, at = parsed.group(1), ""
    elif lines and lines[0].startswith(LEXER_ERROR) and "=" in lines[0]:
        override = lines[0][len(LEXER_ERROR):]
        col = lines[1].find("^") - len(LEXER_ERROR) if len(lines) > 1 else -1
        at = f"{override[col]!r} " if 0 <= col < len(override) else ""
    else:
        return ""
    key, value = override.split("=", 1)
    quoted = command_line([f"{key}={hydra_value(value)}"])
    return (f" ({at}needs quotes: non-ASCII letters, quotes, #, ! and parentheses are taken "
            f"only in a quoted value; write {quoted})")
