"""Scheduled builds: the build flow as a Prefect deployment with a cron schedule.

Each scheduled run builds the same dataset: with `grow`, a new version holding `grow` more personas than
the one before (its parent); without, a new version only when something changed (settings, seed
tables, prompts, code), else the run publishes nothing and reports the dataset up to date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personaloom.errors import UserError
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
    from personaloom.build import build_dataset

    check_cron(cron)
    if grow is not None and grow < 1:
        raise UserError(f"--grow {grow}: add at least 1 persona per run")
    # an absolute output root: scheduled runs may start from another working directory
    parameters: dict[str, Any] = {"config": config.model_dump(mode="json"), "out": str(Path(out).resolve())}
    if grow is not None:
        parameters["grow"] = grow
    return build_dataset.to_deployment(
        name=name,
        cron=cron,
        parameters=parameters,
        description=f"scheduled build of dataset {config.dataset!r}",
        tags=["personaloom", config.dataset],
    )


def check_served_parameters(config: BuildConfig, out: str, cache_dir: str | None, seeds_dir: str | None) -> None:
    """A flow run of a deployment runs only the parameters it was served with (see issue 25)."""
    # TODO(issue 25): compare with what `serve` recorded; refuse an override of endpoint, model, folders
