"""Errors that reach the user as one line: what is wrong and what to do, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (or a setting the user can change); the CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class EnvironmentFailure(UserError):
    """The machine or the data on it failed, not the input: a full disk, a damaged file. Exit code 1, so a
    script can tell "fix the command" (2) from "fix the machine, then re-run it" (1)."""

    exit_code = 1
