"""Scheduled builds: the build flow as a Prefect deployment with a cron schedule.

Each scheduled run builds a new version of the same dataset; its parent is the version before it.
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


def deployment(config: BuildConfig, out: Path, cron: str, name: str) -> Any:
    """A RunnerDeployment of `build_dataset` (apply it, or serve it)."""
    from personaloom.build import build_dataset

    check_cron(cron)
    return build_dataset.to_deployment(
        name=name,
        cron=cron,
        # an absolute output root: scheduled runs may start from another working directory
        parameters={"config": config.model_dump(mode="json"), "out": str(Path(out).resolve())},
        description=f"scheduled build of dataset {config.dataset!r}",
        tags=["personaloom", config.dataset],
    )
