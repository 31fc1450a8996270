"""A run of a deployment runs the parameters the deployment was served with, nothing else.

Any API client can create a run with other parameters (another endpoint, model or folder), and the serving
process would run it with its own OPENAI_API_KEY, sending the key to that endpoint. `serve` records what it
was given (personaloom.pipeline.schedule.deployment), privately; every run of the flow checks it first.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from personaloom.errors import UserError
from personaloom.runtime.prefect_env import prefect_home
from personaloom.schemas.config import BuildConfig

RECORDS = "personaloom-deployments"  # in $PREFECT_HOME: what `serve` was given, by deployment name


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


def _complete(parameters: dict[str, Any], flow_fn: Any) -> dict[str, Any]:
    """The flow's parameters with its defaults filled in and `config` validated: two spellings of the same
    run compare equal."""
    sig = inspect.signature(flow_fn).parameters
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
    flow_fn: Any, config: BaseModel, out: str, cache_dir: str | None, seeds_dir: str | None
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
    served, given = _complete(served, flow_fn), _complete(given, flow_fn)
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
