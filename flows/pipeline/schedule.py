"""Scheduled builds: the build flow as a Prefect deployment with a cron schedule.

Each scheduled run builds the same dataset: with `grow`, a new version holding `grow` more personas than
the one before (its parent); without, a new version only when something changed (settings, seed
tables, prompts, code), else the run publishes nothing and reports the dataset up to date. What `serve` was
given is recorded privately, and a run with any other parameters fails (personaloom.runtime.served).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personaloom.errors import UserError
from personaloom.pipeline.flow import build_dataset
from personaloom.runtime.prefect_env import private_home, write_private
from personaloom.runtime.served import RECORDS, _record
from personaloom.schemas.config import BuildConfig


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise UserError(
            f'--cron {cron!r} is not a cron expression: e.g. "0 3 * * *" is every day at 03:00'
        ) from None


def deployment(config: BuildConfig, out: Path, cron: str, name: str, grow: int | None = None) -> Any:
    """A RunnerDeployment of `build_dataset` (apply it, or serve it); `grow`: personas added per run."""
    check_cron(cron)
    if grow is not None and grow < 1:
        raise UserError(f"--grow {grow}: add at least 1 persona per run")
    # an absolute output root: scheduled runs may start from another working directory
    # the settings given (not their defaults): a grown run merges them with the then latest version
    parameters: dict[str, Any] = {
        "config": config.model_dump(mode="json", exclude_unset=True),
        "out": str(Path(out).resolve()),
    }
    if grow is not None:
        parameters["grow"] = grow
    # written by this user only (0600 in a 0700 folder): the API cannot change what runs (a deployment's name
    # cannot change either)
    (private_home() / RECORDS).mkdir(mode=0o700, exist_ok=True)
    write_private(_record(name), json.dumps(parameters, sort_keys=True))
    return build_dataset.to_deployment(
        name=name,
        cron=cron,
        parameters=parameters,
        description=f"scheduled build of dataset {config.dataset!r}",
        tags=["personaloom", config.dataset],
    )
