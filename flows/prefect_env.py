"""Prefect defaults for this project: offline, quiet, and patient with a slow ephemeral server start.

Set before Prefect is imported; each can still be overridden from the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# where a standing `personaloom server` records its address
STATE_FILE = "personaloom-server.json"

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


def recorded_api_url() -> str | None:
    """The API URL a `personaloom server` recorded in this PREFECT_HOME (not checked to answer)."""
    try:
        url = json.loads((prefect_home() / STATE_FILE).read_text()).get("api_url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None
