"""Prefect flow `build_dataset`: the declared stages over shards, into a new dataset version.

One generic task runs any stage on a shard (personaloom.pipeline.run_stage): it reads the stage's
inputs from the staging folder and writes its outputs there atomically, so a re-run of the same build
skips finished shards, and the response cache answers every LLM call that had completed. The version
is published by one rename.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict

from personaloom.dataset.audit import audit, broken
from personaloom.dataset.card import dataset_card
from personaloom.dataset.store import (
    DatasetStore,
    link_or_copy,
    read_records,
    read_table,
    shard_infos,
    write_records,
)
from personaloom.errors import UserError
from personaloom.llm.endpoint import NO_KEY, Endpoint, api_key_from_env
from personaloom.pipeline import (
    BY_NAME,
    DATASET_STAGES,
    INTERMEDIATE,
    PUBLISHED,
    REPORTED,
    SHARD_STAGES,
    TABLE_MODELS,
    build_calls,
    new_personas,
    part,
    planned_rows,
    run_shard_stages,
    run_stage,
    shards,
    stage_counts,
)
from personaloom.runtime.progress import progress_sink
from personaloom.runtime.run import LLM_NOT_IDENTITY, Growth, Run, flow_run_namer, open_run
from personaloom.runtime.served import check_served_parameters
from personaloom.schemas.config import BuildConfig, RunPaths
from personaloom.schemas.manifest import JudgeCalibration, Manifest, PersonaSpan, StageUsage, kept_costs
from personaloom.schemas.probes import ProbeItem
from personaloom.schemas.records import DatasetRow, Rejection
from personaloom.stages import probes
from personaloom.stages.calibration import judge_calibration
from personaloom.stages.reveals import conversation_stats, reveal_calibration
from personaloom.stages.scenarios import version_scenarios
from personaloom.text.languages import dataset_languages
from personaloom.version import code_version


@task(name="stage", task_run_name="{stage}-{shard}", cache_policy=NO_CACHE)
async def stage_task(run: Run[BuildConfig], stage: str, shard: int) -> float:
    """Any declared stage on one shard; returns its seconds."""
    return await run_stage(run, BY_NAME[stage], shard)


# ---------------------------------------------------------------- what to build: fresh, grown, rebuilt

# Settings a grown version may change from its parent: how many personas (the growth itself), how they
# are cut into shard tasks, and the LLM's speed, budget and endpoint settings.
GROW_MAY_CHANGE = ("personas", "shard_size", *(f"llm.{k}" for k in LLM_NOT_IDENTITY))
PART = re.compile(r"part-(?:.*-)?(\d+)\.parquet$")


class PreparedBuild(BaseModel):
    """A build checked and planned once (`prepare_build`): what the flow `build_dataset` runs.

    Plain data (a Prefect parameter): the settings, already merged with the latest version for a grow or
    a rebuild, and the build's relation to that version.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: BuildConfig  # personas: the total of the version this build publishes
    mode: Literal["build", "grow", "rebuild"] = "build"
    parent: str | None = None  # the version a grown build continues
    first_persona: int = 0
    first_shard: int = 0
    seeds_dir: str | None = None
    checked: bool = False  # seed tables, locales, budget and the endpoint passed (no second pre-flight)

    @property
    def dataset(self) -> str:  # the flow run's name reads it
        return self.config.dataset

    def identity(self, parent: Manifest | None) -> dict[str, object] | None:
        """What a grown build's identity adds: which version it continues (a grow is never a no-op)."""
        if parent is None:
            return None
        return {"grow": {"parent": f"{parent.version}:{parent.identity}", "from": self.first_persona}}


def plan_build(
    store: DatasetStore, config: BuildConfig, grow: int | None, rebuild: bool
) -> tuple[BuildConfig, dict[str, object]]:
    """Fresh build, growth past the latest version (`grow` new personas), or the latest's personas again:
    the config of the version to publish, and the plan's other fields."""
    latest = store.latest()
    if grow is not None:
        if grow < 1:
            raise UserError(f"--grow {grow}: add at least 1 persona")
        if latest is None:  # growth from nothing: the first version holds the first `grow` personas
            return config.model_copy(update={"personas": grow}), {"mode": "build"}
        parent = store.manifest(latest)
        first = parent.config.personas
        numbers = [int(m.group(1)) for s in parent.shards if (m := PART.search(s.path))]
        return config.model_copy(update={"personas": first + grow}), {
            "mode": "grow",
            "parent": latest,
            "first_persona": first,
            "first_shard": max(numbers, default=-1) + 1,
        }
    if rebuild:
        if latest is None:
            raise UserError(f"--rebuild: dataset {store.dataset!r} has no version to rebuild yet")
        m = store.manifest(latest)
        for name in ("seed", "locales"):
            if getattr(config, name) != getattr(m.config, name):
                raise UserError(
                    f"--rebuild keeps the personas of {store.dataset}@{latest}, sampled with {name} "
                    f"{getattr(m.config, name)}: drop --{name} or build without --rebuild"
                )
        return config.model_copy(update={"personas": m.config.personas}), {"mode": "rebuild"}
    return config, {"mode": "build"}


def on_latest_settings(
    config: BuildConfig, store: DatasetStore, personas_given: bool, flag: str
) -> BuildConfig:
    """--grow and --rebuild start from the latest version's settings; the settings given override them.

    Left out: the persona count (the growth decides it) and the LLM's endpoint, speed and budget settings.
    """
    if personas_given:
        raise UserError(f"--personas with {flag}: the latest version decides the personas (--grow N adds N)")
    latest = store.latest()
    if latest is None:
        return config
    base = store.manifest(latest).config.model_dump(
        mode="json", exclude={"personas": True, "llm": set(LLM_NOT_IDENTITY)}
    )
    given = config.model_dump(mode="json", include=config.model_fields_set - {"llm", "personas"})
    llm = {**base.pop("llm"), **config.llm.model_dump(mode="json", include=config.llm.model_fields_set)}
    return BuildConfig.model_validate({**base, **given, "llm": llm})


def _settings(config: BuildConfig | dict[str, object] | None, settings: dict[str, object]) -> BuildConfig:
    """A BuildConfig as given (validated once), or one from a dict and settings by name (BuildConfig's
    fields, `sessions` for scenes_per_persona, LLMConfig's fields)."""
    from pydantic import ValidationError

    from personaloom.schemas.config import LLMConfig

    settings = {k: v for k, v in settings.items() if v is not None}
    if isinstance(config, BuildConfig) and not settings:
        return config
    data = (
        config.model_dump(mode="json", exclude_unset=True)
        if isinstance(config, BuildConfig)
        else dict(config or {})
    )
    if "sessions" in settings:
        settings["scenes_per_persona"] = settings.pop("sessions")
    llm = dict(data.get("llm") or {})  # type: ignore[call-overload]
    llm |= {k: v for k, v in settings.items() if k in LLMConfig.model_fields}
    data |= {k: v for k, v in settings.items() if k not in LLMConfig.model_fields}
    data["llm"] = llm
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "value"
        raise UserError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def prepare_build(
    config: BuildConfig | dict[str, object] | None = None,
    *,
    out: Path,
    grow: int | None = None,
    rebuild: bool = False,
    seeds_dir: Path | None = None,
    cache_dir: Path | None = None,
    personas_given: bool | None = None,
    names: dict[str, str] | None = None,
    check: bool = True,
    model_given: bool = True,
    **settings: object,
) -> PreparedBuild:
    """The one way a build is planned (the CLI, `serve`, a deployment's run, the Python API).

    Settings validated (once), merged with the latest version for grow and rebuild, the folders, seed
    tables, locales, budget and endpoint checked, and the build planned: every bad input fails here in
    one line, before any Prefect server or LLM call. `personas_given`: whether the persona count was asked
    for (refused with grow and rebuild; default: set in `config`); `names`: how errors name a setting
    (e.g. `{"locales": "--locales"}`); `model_given` False: a custom endpoint must serve the default model.
    """
    cfg = _settings(config, dict(settings))
    if grow is not None and rebuild:
        raise UserError("--grow and --rebuild: choose one (grow adds personas, rebuild regenerates them)")
    store = DatasetStore(out, cfg.dataset)
    if grow is not None or rebuild:
        given = "personas" in cfg.model_fields_set if personas_given is None else personas_given
        cfg = on_latest_settings(cfg, store, given, "--grow" if grow is not None else "--rebuild")
    if check:
        _check(cfg, out, cache_dir, seeds_dir, names or {}, model_given)
    planned, plan = plan_build(store, cfg, grow, rebuild)
    return PreparedBuild(
        config=planned,
        seeds_dir=str(seeds_dir) if seeds_dir else None,
        checked=check,
        **plan,  # type: ignore[arg-type]
    )


def _check(
    cfg: BuildConfig,
    out: Path,
    cache_dir: Path | None,
    seeds_dir: Path | None,
    names: dict,
    model_given: bool = True,
) -> None:
    """Seed tables, locales, budget, folders and (last: the OpenAI SDK loads, 1.5 s) the endpoint."""
    from personaloom.dataset.store import output_dir
    from personaloom.llm.budget import Budget
    from personaloom.llm.endpoint import check_endpoint
    from personaloom.stages.catalogue import check_languages, check_locales, load_catalogue

    cat = load_catalogue(seeds_dir) if seeds_dir else load_catalogue()
    check_locales(cat, cfg.locales, names.get("locales", "locales"))
    check_languages(cat, cfg.languages, names.get("languages", "languages"), cfg.locales)
    for m in cfg.llm.models():  # every role's model needs a price under max_cost
        Budget.for_model(m, cfg.llm.max_tokens, cfg.llm.max_cost, cfg.llm.prices)
    output_dir(out, "--out")
    if cache_dir is not None:
        output_dir(cache_dir, "--cache-dir")
    check_endpoint(cfg.llm, model_given=model_given)


def run_build(
    prepared: PreparedBuild,
    *,
    out: Path,
    cache_dir: str | Path | None = None,
    force: bool = False,
    runner: Literal["local", "dask", "ray"] = "local",
    task_runner: object | None = None,
) -> str:
    """Run the flow on a prepared build; returns the version it published (or the one up to date)."""
    flow_ = build_dataset.with_options(task_runner=task_runner) if task_runner is not None else build_dataset
    return asyncio.run(
        flow_(
            prepared,
            out=str(out),
            cache_dir=str(cache_dir) if cache_dir else None,
            runner=runner,
            force=force,
        )
    )


def check_growable(run: Run[BuildConfig], parent: Manifest) -> None:
    """A grown version holds one set of settings: the new personas are made as its parent's were."""
    from personaloom.dataset.diff import setting_changes

    changed = list(
        setting_changes(
            parent.config.model_dump(mode="json"), run.config.model_dump(mode="json"), GROW_MAY_CHANGE
        )
    )
    calls = run.call_manifest()
    changed += [
        f"prompt {name}"
        for name, info in parent.calls.items()
        if name in calls and calls[name]["template_hash"] != info.template_hash
    ]
    if parent.seeds_digest is not None and parent.seeds_digest != run.catalogue.digest:
        changed.append("seed tables")
    if changed:
        raise UserError(
            f"--grow continues {parent.dataset}@{parent.version} with its settings, but "
            f"{', '.join(changed[:4])}{' …' if len(changed) > 4 else ''} changed: "
            "use --rebuild to regenerate its personas with new settings"
        )


# ---------------------------------------------------------------- publishing


def inherit(run: Run[BuildConfig], parent: Manifest) -> dict[str, str]:
    """Hard-link every shard of the parent into the staging folder; path → the version that wrote it."""
    assert run.growth is not None
    for shard in parent.shards:
        link_or_copy(run.growth.parent / shard.path, run.staging / shard.path)
    return {s.path: s.inherited_from or parent.version for s in parent.shards}


def publish_version(
    run: Run[BuildConfig],
    store: DatasetStore,
    stage_seconds: Counter[str],
    parent_manifest: Manifest | None = None,
    judges: dict[str, JudgeCalibration] | None = None,
    earlier: dict[str, StageUsage] | None = None,
    mode: Literal["build", "grow", "rebuild"] = "build",
) -> str:
    """Manifest and card into the staging folder, then one rename makes it the next version.

    A grown build's staging folder receives its parent's shards as hard links first: the manifest's
    counts, rejection reasons, invariants and checksums are then those of the whole version.
    """
    grown = parent_manifest
    staging, config = run.staging, run.config
    for table in INTERMEDIATE:
        shutil.rmtree(staging / table, ignore_errors=True)
    inherited = inherit(run, grown) if grown is not None else {}
    for table in PUBLISHED:  # every table is published, even with zero rows (a schema-only part)
        if not list((staging / table).glob("part-*.parquet")):
            write_records(part(staging, table, shards(run).start), TABLE_MODELS[table], [])
    reasons = Counter(read_table(staging / "rejections", Rejection, columns=["reason"])["reason"].to_pylist())
    probe_items = read_records(staging / "probes", ProbeItem)
    judged = {i.probe_id: i.blind_judge for i in probe_items if i.blind_judge is not None}
    invariants = audit(staging, run.catalogue)
    if bad := broken(invariants):
        raise UserError(
            f"ground-truth invariant broken ({'; '.join(bad)}): a personaloom bug, nothing was published; "
            f"please report it with the staging folder {staging}"
        )
    infos = shard_infos(staging)
    if grown is not None:
        recorded = {s.path: s.sha256 for s in grown.shards}
        parent_of = f"{config.dataset}@{grown.version}"
        for info in infos:
            if info.path in inherited:
                if info.sha256 != recorded[info.path]:
                    raise UserError(
                        f"{parent_of}: {info.path} differs from its manifest, nothing was published: "
                        f"run `personaloom verify {parent_of}`"
                    )
                info.inherited_from = inherited[info.path]
    with store.lock():
        version, parent = store.next_version()
        if grown is not None and parent != grown.version:
            raise UserError(
                f"{config.dataset}@{parent} was published while this build grew @{grown.version}: "
                "run the same command again to grow the latest version"
            )
        usage = {s: _merged(earlier or {}, run.llm.usage).get(s, StageUsage()) for s in REPORTED}
        manifest = Manifest(
            dataset=config.dataset,
            version=version,
            parent=parent,
            created_at=datetime.now(UTC),
            code_version=code_version(),
            model=config.llm.model,
            endpoint=run.endpoint_label,
            seed=config.seed,
            config=config,
            prompt_hashes=run.llm.prompts.hashes,
            calls=run.call_manifest(),
            counts=stage_counts(staging, config),
            usage=usage,
            per_kept=kept_costs(usage, *_kept_here(staging, probe_items, new_personas(run).start)),
            rejection_reasons=dict(sorted(reasons.items())),
            judges=judges or {},
            probe_baselines=probes.baselines(probe_items, judged),
            probe_yield=probes.yield_by_type(probe_items, read_records(staging / "rejections", Rejection)),
            conversations=conversation_stats(read_records(staging / "dataset", DatasetRow)),
            invariants=invariants,
            scenarios=version_scenarios(staging, run.catalogue, config.dedup.scenario_threshold),
            languages=dataset_languages(staging),
            stage_seconds={s: round(stage_seconds[s], 3) for s in REPORTED},
            timings={k: round(v, 3) for k, v in run.timings.items()},
            shards=infos,
            identity=run.key,
            content_identity=run.content_key,
            seeds_digest=run.catalogue.digest,
            mode=mode,
            built=PersonaSpan(first=new_personas(run).start, end=config.personas),
        )
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        (staging / "README.md").write_text(dataset_card(manifest))
        (staging / USAGE_FILE).unlink(missing_ok=True)  # in the manifest now
        store.publish(staging, version)
    return version


async def publish_artifacts(store: DatasetStore, version: str) -> None:
    """The version's card and per-stage table in Prefect's UI, keyed by dataset (history = versions)."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    m = store.manifest(version)
    key = re.sub(r"[^a-z0-9-]", "-", f"personaloom-{m.dataset}".lower())
    card = (store.resolve(version) / "README.md").read_text().split("---", 2)[-1]
    await acreate_markdown_artifact(key=key, markdown=card, description=f"{m.dataset}@{version}")
    await acreate_table_artifact(
        key=f"{key}-stages",
        table=[row.model_dump() for row in m.stage_report()],
        description=f"{m.dataset}@{version} per stage",
    )


# ---------------------------------------------------------------- the flow


@flow(name="build_dataset", flow_run_name=flow_run_namer("build"), validate_parameters=True)
async def build_dataset(
    config: PreparedBuild | BuildConfig,
    out: str = "output",
    cache_dir: str | None = None,
    seeds_dir: str | None = None,
    runner: Literal["local", "dask", "ray"] = "local",
    grow: int | None = None,
    rebuild: bool = False,
    force: bool = False,
) -> str:
    """Build a new version of the dataset under `out`; returns the version name (e.g. v0003).

    `config`: a build planned by `prepare_build` (the CLI, `serve` and the Python API plan before they
    start Prefect), or settings — a deployment's run, a direct call — which this flow plans with the same
    `prepare_build` (`grow`, `rebuild` and `seeds_dir` apply to settings only; a plan holds them).

    A build whose identity (content settings, seeds, prompts of the declared calls, code) equals the
    latest version's publishes nothing and returns that version, unless `force`. `grow=N` adds N personas
    past the latest version (`config.personas` is ignored): persona indices continue, only the new
    personas run through the stages, their rows are deduplicated against every earlier row, and the
    version is the parent's shards (hard links) plus the new ones. `rebuild` regenerates the latest
    version's personas (same indices and seed) with this config, e.g. another model or prompt set.

    runner="local" runs the shards as concurrent tasks in this process, sharing one LLM client and its
    limits; "dask"/"ray" submit one task per shard to the flow's task runner (set it with
    `build_dataset.with_options(task_runner=...)`), each with its own client: limits apply per shard task.
    """
    logger = get_run_logger()
    entered = time.perf_counter()
    # a deployment's run: only what was served
    check_served_parameters(build_dataset.fn, config, out, cache_dir, seeds_dir)
    if isinstance(config, BuildConfig):
        plan = prepare_build(
            config,
            out=Path(out),
            grow=grow,
            rebuild=rebuild,
            seeds_dir=Path(seeds_dir) if seeds_dir else None,
            cache_dir=Path(cache_dir) if cache_dir else None,
            personas_given=False,  # settings given with grow or rebuild: their persona count is ignored
        )
    else:
        plan = config
    cfg = plan.config
    paths = RunPaths(out=Path(out), cache_dir=Path(cache_dir) if cache_dir else None)
    seeds = Path(plan.seeds_dir) if plan.seeds_dir else None
    store = DatasetStore(paths.out, cfg.dataset)
    parent = store.manifest(plan.parent) if plan.parent is not None else None
    async with open_run(
        cfg,
        calls=build_calls(),
        cache=paths.cache,
        seeds_dir=seeds,
        identity=plan.identity(parent),
        preflight=not plan.checked,
    ) as run:
        latest = store.latest()
        if latest is not None and not force and _same_build(store.manifest(latest), run, parent):
            logger.info("up to date: %s@%s", cfg.dataset, latest)
            return latest
        if parent is not None:
            check_growable(run, parent)
            run.growth = Growth(store.resolve(parent.version), plan.first_persona, plan.first_shard)
        run.staging = store.staging(run.key)
        with store.claim(run.staging):
            run.timings["endpoint_start"] = time.perf_counter() - entered
            logger.info("building %s with %s into %s", cfg.dataset, run.endpoint, run.staging)
            started = time.perf_counter()
            earlier = _earlier_usage(run.staging)  # what interrupted runs of this build already spent
            try:
                if runner == "local":
                    seconds = await _generate(run)
                else:
                    seconds = await _generate_remote(run, str(paths.cache), plan.seeds_dir)
                run.timings["generate"] = time.perf_counter() - started
                judges = await _judges(run)
                version = publish_version(run, store, seconds, parent, judges, earlier, mode=plan.mode)
            finally:
                _save_usage(run.staging, _merged(earlier, run.llm.usage))
    await publish_artifacts(store, version)
    logger.info("published %s/%s", cfg.dataset, version)
    return version


def _kept_here(staging: Path, items: list[ProbeItem], first: int) -> tuple[int, int]:
    """Kept sessions (dataset rows) and items (probes) of the personas this build generated (persona
    index `first` on; a grown version inherits the rest, whose cost its parent's manifest holds)."""
    rows = read_table(staging / "dataset", DatasetRow, columns=["persona_id"])["persona_id"].to_pylist()
    return (
        sum(1 for p in rows if int(p[1:]) >= first),
        sum(1 for i in items if int(i.persona_id[1:]) >= first),
    )


def _same_build(latest: Manifest, run: Run[BuildConfig], parent: Manifest | None) -> bool:
    """The latest version is what this build would publish: the same run, or (a plain build) the same
    personas and settings as a grown version, whose content key is that of a fresh build of its personas
    (`build --grow 5` then `build --personas 35` is up to date)."""
    if latest.identity == run.key:
        return True
    return parent is None and latest.content_identity is not None and latest.content_identity == run.key


USAGE_FILE = ".usage.json"  # in a staging folder: the LLM usage of this build's interrupted runs


def _earlier_usage(staging: Path) -> dict[str, StageUsage]:
    try:
        data = orjson.loads((staging / USAGE_FILE).read_bytes())
        return {s: StageUsage.model_validate(u) for s, u in data.items()}
    except (OSError, ValueError):
        return {}


def _save_usage(staging: Path, usage: dict[str, StageUsage]) -> None:
    """Kept for the next run of an interrupted build (a published one's staging is gone)."""
    if staging.is_dir():
        try:
            (staging / USAGE_FILE).write_bytes(orjson.dumps({s: u.model_dump() for s, u in usage.items()}))
        except OSError:
            pass  # a full disk: the manifest then counts this run's spend only


def _merged(a: dict[str, StageUsage], b: dict[str, StageUsage]) -> dict[str, StageUsage]:
    out = {}
    for s in {*a, *b}:
        x, y = a.get(s, StageUsage()), b.get(s, StageUsage())
        out[s] = StageUsage(**{k: getattr(x, k) + getattr(y, k) for k in StageUsage.model_fields})
    return out


async def _judges(run: Run[BuildConfig]) -> dict[str, JudgeCalibration]:
    """The run's judge calibration for the manifest (asked once; a remote run's workers asked it
    already, so it comes from the response cache here)."""
    cfg = run.config
    found = [await reveal_calibration(run.llm, cfg.conversation.reveal_min_accuracy)]
    if cfg.answerability:
        found.append(await judge_calibration(run.llm, cfg.judge_min_accuracy))
    for cal in found:
        if cal is not None and not cal.trusted:
            get_run_logger().warning("%s", cal.summary())
    return {cal.call: cal for cal in found if cal is not None}


async def _generate(run: Run[BuildConfig]) -> Counter[str]:
    """Every stage into the staging folder; shards run concurrently and share the LLM's limits."""
    llm = run.llm
    progress_sink.usage = lambda: dict(llm.usage)
    progress_sink.llm = llm  # calls in flight, for the display
    progress_sink.plan(planned_rows(run.config.model_copy(update={"personas": len(new_personas(run))})))
    seconds: Counter[str] = Counter()

    async def shard_chain(shard: int) -> None:
        for stage in SHARD_STAGES:
            seconds[stage.reports_as] += await stage_task(quote(run), stage.name, shard)

    await asyncio.gather(*(shard_chain(s) for s in shards(run)))
    await _dataset_stages(run, seconds)
    return seconds


async def _dataset_stages(run: Run[BuildConfig], seconds: Counter[str]) -> None:
    for stage in DATASET_STAGES:  # over every shard this run wrote, into the first one's part
        seconds[stage.reports_as] += await stage_task(quote(run), stage.name, shards(run).start)


# ---------------------------------------------------------------- remote runners (Dask, Ray)


@dataclass(frozen=True)
class ShardJob:
    """What a remote worker needs to run one shard alone: picklable, and without the API key."""

    config_json: str  # the effective config
    base_url: str
    embedded: bool
    cache: str
    staging: str
    seeds_dir: str | None
    shard: int
    parent: str | None = (
        None  # a grown build's parent version folder and offsets (personaloom.runtime.run.Growth)
    )
    first_persona: int = 0
    first_shard: int = 0


@dataclass(frozen=True)
class ShardReport:
    """What a shard task sends back: LLM usage and seconds, per stage."""

    usage: dict[str, dict[str, float]]
    seconds: dict[str, float]


@task(name="shard", cache_policy=NO_CACHE)
async def remote_shard_task(job: ShardJob) -> ShardReport:
    """Every shard stage of one shard on a Dask/Ray worker."""
    # Resolved on the worker: Dask pickles this function by value, and a reference to this module's
    # globals (the progress sink's lock, the other tasks) would not pickle.
    from personaloom.pipeline.flow import run_shard

    return await run_shard(job)


async def run_shard(job: ShardJob) -> ShardReport:
    config = BuildConfig.model_validate_json(job.config_json)
    # the key comes from the worker's own environment, never from a task parameter
    endpoint = Endpoint(job.base_url, api_key_from_env() or NO_KEY, config.llm, embedded=job.embedded)
    seeds = Path(job.seeds_dir) if job.seeds_dir else None
    async with open_run(
        config, calls=build_calls(), cache=Path(job.cache), seeds_dir=seeds, endpoint=endpoint
    ) as run:
        run.staging = Path(job.staging)
        if job.parent is not None:
            run.growth = Growth(Path(job.parent), job.first_persona, job.first_shard)
        seconds = await run_shard_stages(run, job.shard)
        usage = {stage: u.model_dump() for stage, u in run.llm.usage.items()}
    return ShardReport(usage=usage, seconds=dict(seconds))


@contextmanager
def _workers_use_this_server() -> Iterator[None]:
    """Tasks submitted in this block report to the Prefect server this flow run talks to.

    A remote task gets the flow's Prefect settings, not the address of the temporary server Prefect
    started when PREFECT_API_URL is unset: each Dask or Ray worker would then start one of its own
    (12–22 s each) before its first shard.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ctx = FlowRunContext.get()
    if PREFECT_API_URL.value() or ctx is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(ctx.client.api_url).rstrip("/")}):
        yield


async def _generate_remote(run: Run[BuildConfig], cache: str, seeds_dir: str | None) -> Counter[str]:
    ep, growth = run.endpoint, run.growth
    with _workers_use_this_server():  # the settings go with each task when it is submitted
        futures = [
            remote_shard_task.submit(
                ShardJob(
                    run.config.model_dump_json(),
                    ep.base_url,
                    ep.embedded,
                    cache,
                    str(run.staging),
                    seeds_dir,
                    s,
                    *((str(growth.parent), growth.first_persona, growth.first_shard) if growth else ()),
                )
            )
            for s in shards(run)
        ]
    seconds: Counter[str] = Counter()
    for report in await asyncio.gather(*(asyncio.to_thread(f.result) for f in futures)):
        seconds.update(report.seconds)
        for stage, u in report.usage.items():
            total = run.llm.usage[stage]
            for key, value in u.items():
                setattr(total, key, getattr(total, key) + value)
    await _dataset_stages(run, seconds)
    return seconds
