"""The Python API: build a version, open one, read its tables, evaluate a model on its probes.

```python
import personaloom

v = personaloom.build(dataset="demo", personas=20, sessions=5, out="output", model="gpt-4o-mini")
v = personaloom.open("output/demo@v1")          # or "output/demo" (latest), or open("output", "demo", "v1")
v.table("dataset").filter(pl.col("session_index") == 0).collect()
v.manifest.probe_baselines["all"]                # blind baselines of the probes
ds = v.to_datasets()                             # datasets.DatasetDict, one split per published table
run = personaloom.evaluate(v, model="gpt-4o-mini", base_url="http://localhost:8000/v1")
```

A `Version` is immutable, like the folder it reads; derived runs (evaluate, replay) are their own folders
beside it (`Version.runs`). `build` plans, checks and runs the same flow as `personaloom build` (grow and
rebuild included), under a temporary Prefect server unless one is configured.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from personaloom.dataset.version import Version, open_version

__all__ = ["Version", "build", "evaluate", "open"]


def open(spec: str | Path, dataset: str | None = None, version: str | None = None) -> Version:  # noqa: A001
    """`open("OUT/DATASET@vN")`, `open("OUT/DATASET")` (latest), `open("OUT", "DATASET", "vN")`, or a
    version folder itself (`open("OUT/DATASET/v0003")`)."""
    text = str(spec)
    folder = Path(text)
    if dataset is None and (folder / "manifest.json").is_file() and folder.name.startswith("v"):
        out, dataset, version = folder.parent.parent, folder.parent.name, folder.name
    elif dataset is None:
        where, _, ver = text.rpartition("@") if "@" in Path(text).name else (text, "", None)
        root = Path(where)
        out, dataset = root.parent, root.name
        version = version or ver or None
    else:
        out = Path(text)
    return open_version(out, dataset, version)


def build(
    config: Any = None,
    *,
    out: str | Path = "output",
    cache_dir: str | Path | None = None,
    grow: int | None = None,
    rebuild: bool = False,
    force: bool = False,
    **settings: Any,
) -> Version:
    """Build a version (or find it up to date) and open it. `config`: a BuildConfig, a dict, or None;
    `settings` override it (`dataset`, `personas`, `sessions`, `seed`, ... and the LLM's `model`,
    `base_url`, `concurrency`, ... by name)."""
    _quiet_defaults()
    from personaloom.pipeline.flow import prepare_build, run_build

    llm = config.get("llm") or {} if isinstance(config, dict) else getattr(config, "llm", None)
    named = "model" in llm if isinstance(llm, dict) else "model" in getattr(llm, "model_fields_set", ())
    # a custom endpoint with no model named must serve the default one (as `personaloom build` checks)
    model_given = "model" in settings or named
    plan = prepare_build(
        config, out=Path(out), grow=grow, rebuild=rebuild, model_given=model_given, **settings
    )
    version = _with_prefect(lambda: run_build(plan, out=Path(out), cache_dir=cache_dir, force=force))
    return open(Path(out), plan.config.dataset, version)


def evaluate(version: Version, *, model: str, base_url: str | None = None, **settings: Any) -> Path:
    """Score `model` on the version's probes (`personaloom evaluate`); returns the run folder."""
    _quiet_defaults()
    from personaloom.llm.endpoint import check_endpoint
    from personaloom.runs.evaluate import evaluate_dataset
    from personaloom.schemas.config import LLMConfig
    from personaloom.schemas.probes import EvalConfig

    llm_keys = set(LLMConfig.model_fields)
    llm = {k: settings.pop(k) for k in list(settings) if k in llm_keys}
    cfg = EvalConfig.model_validate(
        {
            "dataset": version.dataset,
            "version": version.version,
            "llm": {"model": model, "base_url": base_url, **llm},
            **settings,
        }
    )
    check_endpoint(cfg.llm)
    out = version.path.parent.parent
    return Path(_with_prefect(lambda: asyncio.run(evaluate_dataset(cfg, out=str(out), checked=True))))


def _quiet_defaults() -> None:
    """The CLI's Prefect defaults (offline, quiet), before Prefect is first imported."""
    from personaloom.runtime.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()


def _with_prefect(work: Any) -> Any:
    """Run `work` against Prefect: the configured API, a standing `personaloom server`, else a temporary
    one (started once per process, stopped at exit)."""
    from personaloom.runtime.prefect_server import EarlyServer, use_standing_server

    if not os.environ.get("PREFECT_API_URL"):
        use_standing_server()
    server = EarlyServer()
    server.wait()
    return work()
