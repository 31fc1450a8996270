"""Prefect defaults for this project: offline, quiet, and patient with a slow ephemeral server start.

Set before Prefect is imported; each can still be overridden from the environment. Also the files a
`personaloom server` keeps in `$PREFECT_HOME`, readable by this user only: the machine may be shared, and
the API (flow-run parameters, logs) and the database are nobody else's business.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

# where a standing `personaloom server` records its address, and the auth string its clients send
STATE_FILE = "personaloom-server.json"
AUTH_FILE = "personaloom-server.auth"

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # offline: otherwise an error is logged at each server start
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the 20 s default is tight on 2 cores
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def apply_prefect_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def private_home() -> Path:
    """PREFECT_HOME as 0700 and an existing SQLite database (and its -wal/-shm) as 0600.

    Prefect makes a new home 0700 but leaves an existing one as it is, and SQLite creates the database
    with the server's umask (0644 with the usual 022): the servers we start also run with umask 077.
    """
    home = prefect_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    for db in home.glob("prefect.db*"):
        db.chmod(0o600)
    return home


def write_private(path: Path, text: str) -> None:
    """Replace `path` by a 0600 file holding `text`, atomically (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def new_auth_string() -> str:
    """A basic-auth `user:password` for a server we start (Prefect compares the whole string)."""
    return f"personaloom:{secrets.token_urlsafe(32)}"


def recorded_api_url() -> str | None:
    """The API URL a `personaloom server` recorded in this PREFECT_HOME (not checked to answer)."""
    try:
        url = json.loads((prefect_home() / STATE_FILE).read_text()).get("api_url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def recorded_auth_string() -> str | None:
    """The auth string of the `personaloom server` of this PREFECT_HOME, if it has one."""
    try:
        return (prefect_home() / AUTH_FILE).read_text().strip() or None
    except OSError:
        return None


def use_api(api_url: str, auth_string: str | None) -> None:
    """Point this process (and its children) at a server we started, with its auth string.

    A Prefect Cloud key is dropped: our server never needs it, and it must not be sent to a local port.
    """
    os.environ["PREFECT_API_URL"] = api_url
    if auth_string:
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string
    os.environ.pop("PREFECT_API_KEY", None)
    if "prefect.context" in sys.modules:  # Prefect read the environment when imported: read it again
        sys.modules["prefect.context"].refresh_global_settings_context()
