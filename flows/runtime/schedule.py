"""Scheduled builds: the build flow as a Prefect deployment with a cron schedule.

Each scheduled run builds the same dataset: with `grow`, a new version holding `grow` more personas than
the one before (its parent); without, a new version only when something changed (settings, seed
tables, prompts, code), else the run publishes nothing and reports the dataset up to date.

A run of a deployment runs the parameters the deployment was served with, nothing else: any API client can
create a run with other parameters (another endpoint, model or folder), and the serving process would run
it with its own OPENAI_API_KEY, sending the key to that endpoint.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from personaloom.errors import UserError
from personaloom.runtime.prefect_env import prefect_home, private_home, write_private
from personaloom.schemas.config import BuildConfig

RECORDS = "personaloom-deployments"  # in $PREFECT_HOME: what `serve` was given, by deployment name


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
    from personaloom.pipeline.flow import build_dataset

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


def _record(name: str) -> Path:
    return prefect_home() / RECORDS / f"{quote(name, safe='')}.json"


def _served(deployment_id: str) -> tuple[str, dict[str, Any]]:
    """(the deployment's name, the parameters it was served with): the record `deployment()` wrote, else
    (a prefect.yaml deployment) the parameters stored with the deployment on the server."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment_id)
    try:
        return dep.name, json.loads(_record(dep.name).read_text())
    except FileNotFoundError:
        return dep.name, dict(dep.parameters)


def _complete(parameters: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters with its defaults filled in and `config` validated: two spellings of the same
    run compare equal."""
    from personaloom.pipeline.flow import build_dataset

    sig = inspect.signature(build_dataset.fn).parameters
    full = {k: p.default for k, p in sig.items() if p.default is not inspect.Parameter.empty} | parameters
    given = full.get("config") or {}
    # a deployment serves settings, planned by each run; a plan given to its run is another parameter
    full["config"] = (
        given
        if isinstance(given, BaseModel) and not isinstance(given, BuildConfig)
        else (BuildConfig.model_validate(given))
    )
    return full


def _differences(served: Any, given: Any, name: str) -> list[str]:
    """Dotted names of what differs, field by field through pydantic models (never values: URLs, paths)."""
    if isinstance(served, BaseModel) and type(served) is type(given):
        return [
            d
            for f in type(served).model_fields
            for d in _differences(getattr(served, f), getattr(given, f), f"{name}.{f}")
        ]
    return [] if served == given else [name]


def check_served_parameters(
    config: BaseModel, out: str, cache_dir: str | None, seeds_dir: str | None
) -> None:
    """A flow run of a deployment runs only the parameters it was served with (see issue 25).

    Called first in the flow, before any folder or LLM call: a run with any other value (endpoint, model,
    folders, or anything else) fails, its log naming the parameters that differ.
    """
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return  # a build started by hand runs what its user gave it
    name, served = _served(str(ctx.flow_run.deployment_id))
    given = {**ctx.parameters, "config": config, "out": out, "cache_dir": cache_dir, "seeds_dir": seeds_dir}
    served, given = _complete(served), _complete(given)
    differ = [
        d for k in sorted(served.keys() | given.keys()) for d in _differences(served.get(k), given.get(k), k)
    ]
    if differ:
        message = (
            f"this run of deployment {name!r} overrides {', '.join(differ)}: a deployment runs only the "
            "parameters it was served with (serve it again to change them)"
        )
        get_run_logger().error(message)
        raise UserError(message)
