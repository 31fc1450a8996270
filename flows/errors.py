"""Errors that reach the user as one line: what is wrong and what to do, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment; the CLI prints `error: <message>` and exits 2."""
