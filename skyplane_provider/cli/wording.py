"""How the command line talks: help layout (defaults and examples shown), plurals, prices."""

from __future__ import annotations

import argparse

from planner.errors import BadOptionError


class UsageError(BadOptionError):
    """Arguments that parse but do not fit together; the CLI exits with the usage status, 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and example epilogs as written, and appends ``(default: X)`` to every
    option whose default means something and whose help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings
                or isinstance(default, list)):
            return text
        return f"{text} (default: %(default)s)"


def examples(*lines: str) -> str:
    """An epilog listing example command lines, one per line."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 object``, ``2 objects``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def usd(amount: float, unpriced: list[str]) -> str:
    """A predicted price, or why there is none: a region outside the price grid is not free."""
    if unpriced:
        return f"unpriced ({', '.join(unpriced)} not in the price grid)"
    return f"${amount:.4f}"
