"""The `personaloom` command, a package by command group: `build` (make data), `read` (a published
version), `runs` (derived runs); `common` holds what they share. Each Makefile target is one subcommand;
Prefect is imported only where used. `main` is the entry point: every failure becomes one line."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from personaloom.cli import build, read, runs  # noqa: F401  (each registers its commands on `app`)
from personaloom.cli.common import DEPRECATED, SIGNALLED, _full_disk, _llm_error, app, fail
from personaloom.errors import EnvironmentFailure, UserError
from personaloom.runtime import collector

INTERRUPTED = "interrupted: finished shards and LLM answers are kept; re-run the same command to resume"
FREE_AND_RESUME = "free space and re-run the same command to resume"
TYPER_INTERRUPTED = 130  # typer turns a KeyboardInterrupt in a command into this exit code, silently


def _on_sigterm(signum: int, frame: Any) -> None:
    """`kill`, a service manager, a scheduler's time limit: stop as Ctrl-C does (exit 143, not 130)."""
    SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _full_folder(e: OSError) -> Path:
    """The folder to free space in: of the file that failed (when the error names one) and the folders this
    command writes in, the one on the fullest filesystem."""
    candidates = [Path(e.filename).parent] if isinstance(e.filename, str) else []
    store = sys.modules.get("personaloom.dataset.store")
    candidates += [*(store.WRITES if store else []), Path.cwd()]

    def free(folder: Path) -> int:
        try:
            st = os.statvfs(folder)
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    return min(candidates, key=free)


def _read_failure(e: Exception) -> str | None:
    """A failed read of a version's Parquet (pyarrow, polars or the OS): the one line naming the damaged
    file, found by decoding each file the command opened; None when none is damaged."""
    if "personaloom.dataset.store" not in sys.modules:
        return None
    if not (isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("pyarrow", "polars")):
        return None
    from personaloom.dataset.store import find_damaged

    found = find_damaged()
    return str(found) if found else None


def main() -> None:
    # Datasets, caches, staging folders and logs hold run data: on a shared machine, this user's only.
    os.umask(os.umask(0) | 0o077)
    signal.signal(signal.SIGTERM, _on_sigterm)
    collector.for_command()
    from personaloom.runtime.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()  # before any command imports Prefect (it reads them once, when imported)
    try:
        code = app(standalone_mode=False)  # without standalone mode click returns typer.Exit's code
        if code == TYPER_INTERRUPTED:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            raise SystemExit(code)
        for note in DEPRECATED:  # after the work, so an error stays the one line a command prints
            typer.echo(note, err=True)
    except UserError as e:
        raise SystemExit(fail(str(e), e.exit_code).exit_code) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except Exception as e:
        if isinstance(e, _llm_error()):
            raise SystemExit(fail(str(e)).exit_code) from None
        # usage errors: typer vendors its own click, so match the ClickException shape, not the class
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            raise SystemExit(_usage_error(e)) from None
        if full := _full_disk(e):
            where = _full_folder(full)
            message = f"no space left on device writing under {where}: {FREE_AND_RESUME}"
            raise SystemExit(fail(message, EnvironmentFailure.exit_code).exit_code) from None
        if damaged := _read_failure(e):
            raise SystemExit(fail(damaged, EnvironmentFailure.exit_code).exit_code) from None
        if isinstance(e, OSError) and e.strerror and e.filename:  # EACCES, EIO, ... on a named file
            message = (
                f"{e.filename}: {e.strerror}: check the file and its folder, then re-run the same command"
            )
            raise SystemExit(fail(message, EnvironmentFailure.exit_code).exit_code) from None
        raise
    except BaseException as e:
        if type(e).__name__ == "TerminationSignal":  # Prefect's own SIGTERM handler, during a flow run
            SIGNALLED.append(signal.SIGTERM)
            _interrupted()
        raise


def _usage_error(e: Any) -> int:
    """click's usage errors in our one-line style: `error: missing argument 'DATASET' (see ... --help)`."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `personaloom` alone: the help, as before
        e.show()
        return e.exit_code
    message = e.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    where = getattr(getattr(e, "ctx", None), "command_path", None)
    typer.echo(f"error: {message}" + (f" (see `{where} --help`)" if where else ""), err=True)
    return e.exit_code


def _interrupted() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C while we exit: no traceback either
        signal.signal(sig, signal.SIG_IGN)
    typer.echo(INTERRUPTED, err=True)
    raise SystemExit(128 + (signal.SIGTERM if SIGNALLED else signal.SIGINT)) from None
