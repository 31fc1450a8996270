"""The `personaloom` command. Each Makefile target is one subcommand; Prefect is imported only where used."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from personaloom import paths
from personaloom.errors import EnvironmentFailure, UserError
from personaloom.runtime import collector
from personaloom.schemas.config import BuildConfig, LLMConfig  # pydantic only: --help stays light

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Synthetic life-long persona datasets.",
    context_settings={"show_default": True},
)
DEPRECATED: list[str] = []  # notes on old option spellings, printed once the command succeeded


def _deprecated(old: str, new: str) -> None:
    DEPRECATED.append(f"note: {old} is deprecated: use {new} (the old spelling still works)")


def _given(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """`values` by parameter name, None for each option left at its default: a config file's setting, or
    the model's own default (the one --help shows), then applies."""
    return {
        k: None if ctx.get_parameter_source(k).name in ("DEFAULT", "DEFAULT_MAP") else v
        for k, v in values.items()
    }


def _path_parser(option: str) -> Callable[[str | Path], Path]:
    """A path option's parser: an empty value is refused here, where it is still '' (Path('') is '.', so
    `--out ''` would otherwise build into the current folder)."""

    def parse(value: str | Path) -> Path:
        if isinstance(value, Path):  # a default
            return value
        if not value.strip():
            raise UserError(f"{option}: empty path: give a name (`.` for the current folder)")
        return Path(value)

    return parse


def path_option(option: str, help: str, *aliases: str, **kw: Any) -> Any:
    return typer.Option(option, *aliases, help=help, parser=_path_parser(option), metavar="PATH", **kw)


def flag(name: str, help: str, **kw: Any) -> Any:
    """A boolean option as `--x/--no-x`, its default in --help (no `<bool>` type column)."""
    return typer.Option(f"--{name}/--no-{name}", help=help, metavar="", **kw)


def _field_default(model: Any, field: str) -> Any:
    return model.model_fields[field].default


# The settings' own defaults, shown in --help; an option left at its default never overrides a config file
# (`_given`): these are the defaults BuildConfig and LLMConfig apply themselves.
B = partial(_field_default, BuildConfig)
L = partial(_field_default, LLMConfig)
NO_LIMIT = "no limit"

OutOpt = Annotated[Path, path_option("--out", "output root holding datasets")]
CacheOpt = Annotated[Path | None, path_option("--cache-dir", "LLM response cache", show_default="OUT/.cache")]
# Options that `build` and `serve` share: one declaration, one help text.
DatasetOpt = Annotated[str, typer.Option(help="dataset name")]
PersonasOpt = Annotated[int, typer.Option(help="number of personas")]
SessionsOpt = Annotated[int, typer.Option("--sessions", help="sessions per persona")]
# The old spelling of --sessions: still read (scripts, Makefiles), hidden, with a note once the command ends
OldScenesOpt = Annotated[int | None, typer.Option("--scenes-per-persona", hidden=True)]
ModelOpt = Annotated[
    str, typer.Option(help="model name at the endpoint (needed with --base-url; the embedded: its own)")
]
UserModelOpt = Annotated[
    str | None,
    typer.Option(help="model of the user simulator, same endpoint", show_default="--model"),
]
JudgeModelOpt = Annotated[
    str | None,
    typer.Option(help="model of the judges and checks, same endpoint", show_default="--model"),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="OpenAI-compatible URL; give --model with it",
        show_default="$OPENAI_BASE_URL, else the embedded model",
    ),
]
ConcurrencyOpt = Annotated[int, typer.Option(help="LLM calls in flight")]
ConfigOpt = Annotated[Path | None, path_option("--config", "JSON or TOML file of build settings")]
LocalesOpt = Annotated[
    str | None,
    typer.Option(help="comma list of locales to sample, e.g. en_US,de_DE", show_default="all"),
]
LanguagesOpt = Annotated[
    str | None,
    typer.Option(
        help="comma list of ISO 639-1 codes: only personas writing in these, e.g. en,zh", show_default="all"
    ),
]
SeedsOpt = Annotated[
    Path | None, path_option("--seeds", "seed tables folder", show_default="the shipped seeds/")
]
GrowOpt = Annotated[
    int | None,
    typer.Option(help="add N personas past the latest version (its settings; only the new ones are built)"),
]
OUT_DEFAULT = Path("output")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _validation_line(e: ValidationError, source: str | None) -> str:
    """`--personas: ...` for an option, `FILE: llm.rpm: ...` for a config file; no pydantic prefixes."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    msg = err["msg"].removeprefix("Value error, ")
    if source is None:
        field = where.split(".")[-1]
        return f"--{OPTION_OF.get(field, field).replace('_', '-')}: {msg}"
    return f"{source}: {where}: {msg}"


OPTION_OF = {"ks": "k", "scenes_per_persona": "sessions"}  # config fields whose option has another name


# Prefect's log lines that only repeat, with a traceback, what main() says in one line.
_REPEATS = re.compile(
    r"Crash detected!|in state Crashed\(|UserError|BudgetExceeded|EnvironmentFailure|LLMError|No space left"
)
_INTERRUPTS = ("KeyboardInterrupt", "CancelledError", "TerminationSignal")


def _said_by_main(exc: BaseException | None) -> bool:
    """Whether main() turns `exc` into its own one line: our errors, a full disk, an interruption."""
    if exc is None:
        return False
    return (
        isinstance(exc, UserError | _llm_error())
        or type(exc).__name__ in _INTERRUPTS
        or bool(_full_disk(exc))
    )


def _quiet_prefect_tracebacks() -> None:
    """Our own errors, a full disk and an interruption already get one line from main(); Prefect would log
    them again (the engine's "Crash detected!" and "Finished in state Crashed" for an interruption) with a
    traceback. Idempotent."""
    import logging

    def one_line(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith("prefect"):
            return True
        if _said_by_main(record.exc_info[1] if record.exc_info else None):
            return False
        # the engine logs a crash inside its `except BaseException` (no exc_info on the record)
        return not (_REPEATS.search(str(record.msg)) or _said_by_main(sys.exc_info()[1]) or SIGNALLED)

    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:  # console: root
        if not any(getattr(f, "__name__", "") == "one_line" for f in handler.filters):
            handler.addFilter(one_line)


def _prefect_env(*, start_early: bool = False) -> Any:
    """Prefect's settings for this process, and its API: a standing `personaloom server` if one runs,
    else (with `start_early`) a temporary server starting now, while Prefect's client side loads;
    `.wait()` on the returned object before the first flow run. Called once every check passed."""
    from personaloom.runtime.prefect_env import apply_prefect_defaults
    from personaloom.runtime.prefect_server import EarlyServer, use_standing_server

    apply_prefect_defaults()
    use_standing_server()  # a running `personaloom server` saves each command its own 12–22 s start
    return EarlyServer() if start_early else None


def _run_config(model: Any, fields: dict[str, Any], llm: dict[str, Any], out: Path) -> Any:
    """A replay's or evaluation's config from the flags given, checked before Prefect starts.

    Bad values, a missing dataset or version and an unreachable endpoint each fail in one line.
    """
    from personaloom.dataset.store import DatasetStore
    from personaloom.schemas.config import LLMConfig

    given = {f: v for f, v in fields.items() if v is not None}
    DatasetStore(out, str(given.get("dataset", "")))  # a name that leaves --out fails first, in one line
    try:
        cfg = model.model_validate(
            {**given, "llm": LLMConfig(**{k: v for k, v in llm.items() if v is not None})}
        )
    except ValidationError as e:
        raise UserError(_validation_line(e, None)) from None
    DatasetStore(out, cfg.dataset).resolve(cfg.version)
    output_dir(out, "--out")  # runs are written under the version
    from personaloom.llm.endpoint import check_endpoint  # the OpenAI SDK: 1.5 s, only past every other check

    check_endpoint(cfg.llm)
    return cfg


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, _, version = spec.partition("@")
    return name, version or None


# ---------------------------------------------------------------- build


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text.decode())
        return orjson.loads(text)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UserError(f"config file {path} is not valid {kind}: {str(e).splitlines()[0]}") from None


def parse_tokens(text: str | None, flag_name: str) -> int | None:
    """`32k`, `128k`, `1.5m` or `32000` → tokens."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if m is None:
        raise UserError(f"{flag_name} {text!r}: give tokens, e.g. 32k, 128k or 32000")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def make_config(
    file: Path | None,
    overrides: dict[str, Any],
    llm_overrides: dict[str, Any],
    conversation_overrides: dict[str, Any] | None = None,
) -> Any:
    from personaloom.schemas.config import BuildConfig

    data = load_config_file(file) if file else {}
    if not isinstance(data, dict):
        raise UserError(f"config file {file} must hold an object of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if given := {k: v for k, v in (conversation_overrides or {}).items() if v is not None}:
        conversation = data.get("conversation", {})
        if not isinstance(conversation, dict):
            raise UserError(
                f"{file}: conversation: must be a table of settings, e.g. conversation.user_turns"
            )
        data["conversation"] = {**conversation, **given}
    llm = data.get("llm", {})
    if not isinstance(llm, dict):  # else `dict(5)`: a TypeError traceback, or `[]` silently dropped
        raise UserError(
            f"{file}: llm: must be a table of LLM settings, e.g. llm.model, not {type(llm).__name__}"
        )
    llm = dict(llm)
    llm.update({k: v for k, v in llm_overrides.items() if v is not None})
    data["llm"] = llm
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(
            _validation_line(
                e, str(file) if file and overrides.get(e.errors()[0]["loc"][0]) is None else None
            )
        ) from None


@app.command()
def build(
    ctx: typer.Context,
    dataset: DatasetOpt = B("dataset"),
    personas: PersonasOpt = B("personas"),
    sessions: SessionsOpt = B("scenes_per_persona"),
    scenes_per_persona: OldScenesOpt = None,
    model: ModelOpt = L("model"),
    user_model: UserModelOpt = None,
    judge_model: JudgeModelOpt = None,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = L("concurrency"),
    rpm: Annotated[int | None, typer.Option(help="requests per minute limit", show_default=NO_LIMIT)] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute limit", show_default=NO_LIMIT)] = None,
    seed: Annotated[int, typer.Option(help="sampler seed")] = B("seed"),
    redraws: Annotated[
        int,
        typer.Option(help="redraw an answer stage 5 would drop (copied example, wrong language) N times"),
    ] = L("redraws"),
    locales: LocalesOpt = None,
    languages: LanguagesOpt = None,
    shard_size: Annotated[int, typer.Option(help="personas per shard task")] = B("shard_size"),
    expand_hints: Annotated[bool, flag("expand-hints", "LLM seed-hint expansion (stage 1)")] = B(
        "expand_hints"
    ),
    answerability: Annotated[bool, flag("answerability", "LLM answerability check (stage 5)")] = B(
        "answerability"
    ),
    probes: Annotated[bool, flag("probes", "evaluation items (probes/) after stage 5")] = B("probes"),
    quality_min: Annotated[
        int | None,
        typer.Option(help="LLM quality score 1-10 (stage 5): reject below this", show_default="off"),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="stop cleanly once this run spent this many tokens", show_default=NO_LIMIT),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(help="stop cleanly once this run spent this many USD", show_default=NO_LIMIT),
    ] = None,
    license: Annotated[
        str | None,
        typer.Option(
            help="the card's licence, an SPDX id or HF licence tag (e.g. cc-by-4.0); "
            "none is chosen for you: choose one before sharing",
            show_default="not chosen",
        ),
    ] = None,
    card_endpoint: Annotated[
        bool, flag("card-endpoint", "name the endpoint's host in the card (it is always in manifest.json)")
    ] = False,
    config: ConfigOpt = None,
    seeds: SeedsOpt = None,
    runner: Annotated[str, typer.Option(help="local | dask | ray: where shard tasks run")] = "local",
    address: Annotated[
        str | None, typer.Option(help="address of an existing Dask scheduler or Ray cluster")
    ] = None,
    out: OutOpt = OUT_DEFAULT,
    cache_dir: CacheOpt = None,
    progress: Annotated[
        bool, flag("progress", "live progress on a terminal (else a plain line every 10 s)")
    ] = True,
    grow: GrowOpt = None,
    user_turns: Annotated[
        int | None,
        typer.Option(help="user messages per session, each answered by a plain assistant", show_default="2"),
    ] = None,
    context_target: Annotated[
        str | None,
        typer.Option(
            help="tokens of each persona's own history to reach, e.g. 32k or 128k: more sessions and "
            "longer conversations (Gemma 3's tokenizer with the local extra, else 4 characters a token)",
            show_default="off",
        ),
    ] = None,
    explicit_share: Annotated[
        float | None,
        typer.Option(help="share of planned reveals the user may state outright", show_default="0"),
    ] = None,
    fine_preferences: Annotated[
        int | None,
        typer.Option(
            help="fine-grained preferences per persona (seeds/fine_preferences.csv: travel, food, work "
            "habits...; as many as fit the person), 0 for none",
            show_default="20",
        ),
    ] = None,
    rebuild: Annotated[
        bool,
        flag("rebuild", "regenerate the latest version's personas (same indices, seed) with new settings"),
    ] = False,
    force: Annotated[
        bool, flag("force", "publish even when nothing changed since the latest version")
    ] = False,
) -> None:
    """Build a new dataset version through the five stages (nothing when the latest is up to date)."""
    g = _given(
        ctx,
        dataset=dataset,
        personas=personas,
        sessions=sessions,
        model=model,
        concurrency=concurrency,
        seed=seed,
        redraws=redraws,
        shard_size=shard_size,
        expand_hints=expand_hints,
        answerability=answerability,
        probes=probes,
    )
    sessions_given = _sessions(g["sessions"], scenes_per_persona)
    cfg = make_config(
        config,
        dict(
            dataset=g["dataset"],
            personas=g["personas"],
            scenes_per_persona=sessions_given,
            seed=g["seed"],
            locales=_locale_list(locales),
            languages=_locale_list(languages, "--languages", "en,zh"),
            shard_size=g["shard_size"],
            expand_hints=g["expand_hints"],
            answerability=g["answerability"],
            probes=g["probes"],
            quality_min=quality_min,
            fine_preferences=fine_preferences,
        ),
        dict(
            model=g["model"],
            user_model=user_model,
            judge_model=judge_model,
            base_url=base_url,
            concurrency=g["concurrency"],
            rpm=rpm,
            tpm=tpm,
            max_tokens=max_tokens,
            max_cost=max_cost,
            redraws=g["redraws"],
        ),
        dict(
            user_turns=user_turns,
            context_target=parse_tokens(context_target, "--context-target"),
            explicit_share=explicit_share,
        ),
    )
    from personaloom.dataset.card import card_settings

    card_settings(license=license, endpoint=card_endpoint)  # checked here, used when the card is written
    if runner not in ("local", "dask", "ray"):
        raise UserError(f"--runner {runner!r} is not one of local, dask, ray")
    from personaloom.pipeline.flow import prepare_build, run_build

    # Every check first (settings, grow/rebuild, seed tables, locales, paths, endpoint), and only then a
    # Prefect server: bad input fails in one line in about a second, with no server started for nothing.
    prepared = prepare_build(
        cfg,
        out=out,
        grow=grow,
        rebuild=rebuild,
        seeds_dir=seeds,
        cache_dir=cache_dir,
        personas_given=g["personas"] is not None,  # a config file's count is overridden by the growth
        names={
            "locales": "--locales" if locales else f"{config}: locales",
            "languages": "--languages" if languages else f"{config}: languages",
        },
    )
    _model_for_endpoint(cfg.llm, model_given=g["model"] is not None or "model" in cfg.llm.model_fields_set)
    from personaloom.dataset.store import DatasetStore
    from personaloom.runtime.display import live_progress

    store = DatasetStore(out, cfg.dataset)
    prefect_api = _prefect_env(start_early=True)  # starts while Prefect's client side loads
    before = set(store.versions())
    _quiet_prefect_tracebacks()
    prefect_api.wait()
    with live_progress(enabled=progress and runner == "local", priced=_priced(cfg.llm)):
        version = run_build(
            prepared,
            out=out,
            cache_dir=cache_dir,
            force=force,
            runner=runner,  # type: ignore[arg-type]
            task_runner=task_runner(runner, address) if runner != "local" else None,
        )
    if version in before:  # the latest version was built with this very identity: nothing to publish
        typer.echo(f"up to date: {cfg.dataset}@{version} (--force publishes anyway)")
        return
    _print_summary(out, cfg.dataset, version)


def _sessions(sessions: int | None, old: int | None) -> int | None:
    """--sessions, or its old spelling --scenes-per-persona (a note once the command succeeded)."""
    if old is None:
        return sessions
    if sessions is not None and sessions != old:
        raise UserError(f"--sessions {sessions} and --scenes-per-persona {old}: give --sessions only")
    _deprecated("--scenes-per-persona", "--sessions")
    OPTION_OF["scenes_per_persona"] = "scenes-per-persona"  # an error names the spelling given
    return old


def _priced(llm: Any) -> bool:
    """Whether every model the run may call has a price (else its cost is unknown, never $0)."""
    from personaloom.llm.budget import DEFAULT_PRICES

    table = {**DEFAULT_PRICES, **llm.prices}
    return all(m in table for m in llm.models())


def _model_for_endpoint(llm: Any, *, model_given: bool) -> None:
    """A custom endpoint without --model: refused, unless it lists the default model itself (else the
    default, gpt-4o-mini, would be sent there, and recorded and priced as if it answered)."""
    import httpx

    from personaloom.llm.endpoint import OPENAI_URL, api_key_from_env

    url = llm.base_url or os.environ.get("OPENAI_BASE_URL")
    if model_given or not url or url.rstrip("/") == OPENAI_URL:
        return
    from personaloom.llm.client import endpoint_label

    try:
        r = httpx.get(
            f"{url.rstrip('/')}/models",
            headers={"Authorization": f"Bearer {api_key_from_env() or 'none'}"},
            timeout=5,
            verify=not url.startswith("http://"),
        )
        served = [m["id"] for m in r.json()["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        served = None
    if served is not None and llm.model in served:
        return
    where = "--base-url" if llm.base_url else "OPENAI_BASE_URL"
    lists = (
        f"it serves {', '.join(served[:5])}{' …' if len(served) > 5 else ''}"
        if served
        else "its /models lists none"
    )
    raise UserError(
        f"{where} {endpoint_label(url)} without --model: {lists}, not the default {llm.model}: "
        "choose one with --model"
    )


def task_runner(runner: str, address: str | None) -> Any:
    """Prefect's Dask or Ray task runner (optional extras), on an existing cluster when `address` is given."""
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise UserError(f"--runner dask needs prefect-dask: {paths.install_hint('dask')}") from None
        import logging

        # a local cluster's teardown logs closed-connection tracebacks that mean nothing to the user
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return DaskTaskRunner(address=address) if address else DaskTaskRunner()
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise UserError(f"--runner ray needs prefect-ray: {paths.install_hint('ray')}") from None
    if address:
        return RayTaskRunner(address=address)
    # a local instance for this build: no dashboard (it triples Ray's start-up here), quiet logs
    return RayTaskRunner(init_kwargs={"include_dashboard": False, "logging_level": "WARNING"})


def _print_summary(out: Path, dataset: str, version: str) -> None:
    from personaloom.dataset.card import cost_text
    from personaloom.dataset.store import DatasetStore

    m = DatasetStore(out, dataset).manifest(version)
    report = m.stage_report()
    typer.echo(
        f"{dataset}@{version}: {m.rows} rows, {sum(m.rejection_reasons.values())} rejected; "
        f"{sum(r.llm_calls for r in report)} LLM calls, {sum(r.cache_hits for r in report)} cache hits, "
        f"{sum(r.tokens for r in report)} tokens, cost {cost_text(m)} → {out / dataset / version}"
    )
    if m.probe_yield:
        kept = sum(t.get("kept", 0) for t in m.probe_yield.values())
        planned = sum(t.get("planned", 0) for t in m.probe_yield.values())
        typer.echo(f"probes: {kept} kept of {planned} planned (`personaloom show` gives the reasons)")


@app.command()
def serve(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help='cron schedule, e.g. "0 3 * * *" (03:00 daily)')],
    dataset: DatasetOpt = B("dataset"),
    personas: PersonasOpt = B("personas"),
    sessions: SessionsOpt = B("scenes_per_persona"),
    scenes_per_persona: OldScenesOpt = None,
    model: ModelOpt = L("model"),
    base_url: BaseUrlOpt = None,
    config: ConfigOpt = None,
    name: Annotated[str | None, typer.Option(help="deployment name", show_default="the dataset name")] = None,
    out: OutOpt = OUT_DEFAULT,
    grow: GrowOpt = None,
) -> None:
    """Serve the build flow as a Prefect deployment on a cron schedule.

    Each run publishes a new version when something changed (settings, seed tables, prompts, code), or,
    with --grow N, a version holding N more personas than the one before.
    """
    g = _given(ctx, dataset=dataset, personas=personas, sessions=sessions, model=model)
    cfg = make_config(
        config,
        dict(
            dataset=g["dataset"],
            personas=g["personas"],
            scenes_per_persona=_sessions(g["sessions"], scenes_per_persona),
        ),
        dict(model=g["model"], base_url=base_url),
    )
    from personaloom.pipeline.flow import prepare_build

    # checked and planned now (a bad --grow fails here, in one line); each run plans again on the then
    # latest version, with the same prepare_build
    prepare_build(cfg, out=out, grow=grow, personas_given=g["personas"] is not None)
    prefect_api = _prefect_env(start_early=True)  # an authenticated temporary server unless one runs
    from prefect import serve as prefect_serve

    from personaloom.runtime.schedule import deployment

    _quiet_prefect_tracebacks()
    prefect_api.wait()
    prefect_serve(deployment(cfg, out, cron, name or cfg.dataset, grow=grow))


@app.command()
def server(
    host: Annotated[str, typer.Option(help="interface to listen on (loopback only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 4200,
) -> None:
    """Keep one Prefect server running: every personaloom command (any shell) uses it and starts in seconds.

    Without it each command starts a temporary Prefect server of its own (12–22 s on 2 cores). Stop with
    Ctrl-C. The address is recorded in $PREFECT_HOME;
    PREFECT_API_URL, when set, still takes precedence.
    """
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: choose a TCP port from 1 to 65535, e.g. 4200")
    from personaloom.runtime.prefect_env import apply_prefect_defaults
    from personaloom.runtime.prefect_server import serve_forever

    apply_prefect_defaults()

    def ready(api_url: str) -> None:
        typer.echo(f"Prefect server at {api_url}: personaloom commands now use it (Ctrl-C stops it)")
        from personaloom.runtime.prefect_env import AUTH_FILE, prefect_home

        typer.echo(
            f"other Prefect clients: export PREFECT_API_URL={api_url} "
            f'PREFECT_API_AUTH_STRING="$(cat {prefect_home() / AUTH_FILE})"'
        )

    try:
        serve_forever(host, port, ready=ready)
    except KeyboardInterrupt:
        typer.echo("Prefect server stopped")


# ---------------------------------------------------------------- skeletons only


def _locale_list(
    text: str | None, option: str = "--locales", example: str = "en_US,de_DE"
) -> list[str] | None:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"{option}: give codes separated by commas, e.g. {example}")
    return items


def output_dir(path: Path, option: str) -> Path:
    """personaloom.dataset.store.output_dir, imported when used: `personaloom --help` loads no pyarrow."""
    from personaloom.dataset.store import output_dir as checked

    return checked(path, option)


def _writable_file(path: Path, option: str) -> None:
    """Fail before any work when `path` cannot become a file (a folder, a dangling symlink, an unwritable
    place)."""
    from personaloom.dataset.store import WRITES, not_a_dangling_link, probe

    if path.is_dir():
        raise UserError(f"{option} {path} is a folder: give a file name such as {path / 'sample.parquet'}")
    not_a_dangling_link(path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{option} {path}: cannot create {path.parent} ({e.strerror}): choose another path"
        ) from None
    probe(path.parent, option, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: not writable here: choose a path you can write to")
    WRITES.append(path.parent)


@app.command()
def sample(
    ctx: typer.Context,
    personas: PersonasOpt = B("personas"),
    seed: Annotated[int, typer.Option(help="sampler seed, as in build")] = B("seed"),
    dest: Annotated[Path, path_option("--dest", "Parquet file to write (the seeds table schema)")] = Path(
        "sample.parquet"
    ),
    old_out: Annotated[Path | None, path_option("--out", "", hidden=True)] = None,
    locales: LocalesOpt = None,
    languages: LanguagesOpt = None,
    sessions: Annotated[int, typer.Option(help="sessions per persona, as in build")] = B(
        "scenes_per_persona"
    ),
    config: ConfigOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """Sample persona skeletons only (no LLM): the build's stage-1 sampler, then a short audit of the mix."""
    import time

    from personaloom.dataset.store import write_records
    from personaloom.schemas.records import SeedRow
    from personaloom.stages.catalogue import check_languages, check_locales, load_catalogue
    from personaloom.stages.seed import audit_summary, sample_skeletons

    g = _given(ctx, personas=personas, seed=seed, sessions=sessions)
    label = "--dest"
    if old_out is not None:  # `--out FILE`, before --out meant the output root everywhere
        _deprecated("sample --out FILE", "--dest FILE")
        dest, label = old_out, "--out"
    out = dest
    cfg = make_config(
        config,
        dict(
            personas=g["personas"],
            seed=g["seed"],
            scenes_per_persona=g["sessions"],
            locales=_locale_list(locales),
            languages=_locale_list(languages, "--languages", "en,zh"),
        ),
        {},
    )
    cat = load_catalogue(seeds) if seeds else load_catalogue()
    check_locales(cat, cfg.locales, "--locales" if locales else f"{config}: locales")
    check_languages(cat, cfg.languages, "--languages" if languages else f"{config}: languages", cfg.locales)
    _writable_file(out, label)
    start = time.perf_counter()
    rows = sample_skeletons(
        cat,
        range(cfg.personas),
        cfg.seed,
        n_sessions=cfg.scenes_per_persona,
        n_changes=cfg.changes_per_persona,
        locales=cfg.locales,
        languages=cfg.languages,
        n_fine=cfg.fine_preferences,
        n_fine_changes=cfg.fine_changes_per_persona,
    )
    sampled = time.perf_counter() - start
    try:
        write_records(out, SeedRow, rows)
    except OSError as e:
        if _full_disk(e):  # the machine's problem, not the path's: main() says so
            raise
        raise UserError(f"{label} {out}: cannot write ({e.strerror}): choose a writable path") from None
    took = time.perf_counter() - start
    typer.echo(
        f"{len(rows):,} skeletons (seed {cfg.seed}) → {out}: sampled in {sampled:.2f} s, written in "
        f"{took - sampled:.2f} s ({len(rows) / took:,.0f} rows/s)"
    )
    for line in audit_summary(rows, cat):
        typer.echo(line)


# ---------------------------------------------------------------- reading datasets


@app.command()
def versions(dataset: Annotated[str, typer.Argument(metavar="DATASET")], out: OutOpt = OUT_DEFAULT) -> None:
    """List the versions of a dataset."""
    from personaloom.dataset.store import DatasetStore

    store = DatasetStore(out, dataset)
    if not store.versions():
        raise UserError(f"dataset {dataset!r} has no versions under {out}")
    latest = store.latest()
    for v in store.versions():
        m = store.manifest(v)
        mark = " (latest)" if v == latest else ""
        grown = f"  {m.mode} +{m.built.count} personas" if m.mode == "grow" and m.built else ""
        typer.echo(
            f"{v}{mark}  {m.created_at:%Y-%m-%d %H:%M}  rows={m.rows}  model={m.model}  "
            f"parent={m.parent or '-'}  personas={m.config.personas}{grown or ('  ' + m.mode)}"
        )


@app.command()
def show(spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")], out: OutOpt = OUT_DEFAULT) -> None:
    """Summarize one version: counts per stage, LLM usage, rejection reasons."""
    from personaloom.dataset.store import DatasetStore

    name, version = _split_spec(spec)
    store = DatasetStore(out, name)
    path = store.resolve(version)
    m = store.manifest(path.name)
    typer.echo(
        f"{name}@{m.version}  {path}\ncreated {m.created_at:%Y-%m-%d %H:%M} UTC  "
        f"model {m.model} at {m.endpoint}  seed {m.seed}  parent {m.parent or '-'}  code {m.code_version}"
    )
    from personaloom.dataset.card import cost_text, priced

    known = priced(m)
    columns = ("stage", "in", "out", "rejected", "fallback", "calls", "cached", "tokens", "USD", "sec")
    typer.echo(f"{columns[0]:<10}" + "".join(f"{c:>10}" for c in columns[1:]))
    for r in m.stage_report():
        cells = (r.rows_in, r.rows_out, r.rejected, r.fallback_rows, r.llm_calls, r.cache_hits, r.tokens)
        usd = f"{r.cost_usd:.4f}" if known else "unknown"
        typer.echo(f"{r.stage:<10}" + "".join(f"{c:>10}" for c in cells) + f"{usd:>10}{r.seconds:>10.1f}")
    retries = sum(u.retries for u in m.usage.values())
    typer.echo(
        f"LLM cost {cost_text(m)}"
        + ("" if known else " (no price for the model: add it as [llm.prices] in the config)")
        + f", {retries} retries"
    )
    _show_per_kept(m, known)
    redrawn = [f"{s} {u.redraws} ({u.flagged} still flagged)" for s, u in m.usage.items() if u.redraws]
    if redrawn:
        typer.echo("redrawn (a check of stage 5 flagged the answer): " + ", ".join(redrawn))
    for judge in m.judges.values():
        typer.echo(judge.summary())
    if m.rejection_reasons:
        typer.echo("rejections: " + ", ".join(f"{r}={n}" for r, n in m.rejection_reasons.items()))
    _show_languages(path, m.languages)
    from personaloom.dataset.card import scenario_summary

    typer.echo("\n".join(scenario_summary(m)) or "scenarios: not counted in this version")
    from personaloom.dataset.card import conversation_lines

    typer.echo("\n".join(conversation_lines(m)) or "conversations: a version before them (one turn each)")
    _show_probes(m)


def _show_per_kept(m: Any, known: bool) -> None:
    """Calls, tokens and USD per kept session and per kept item (manifest.per_kept)."""

    def figures(kind: str) -> str | None:
        c = m.per_kept.get(kind)
        if c is None or c.calls is None:
            return None
        usd = f"${c.cost_usd:.4f}" if known else "USD unknown"
        return f"{c.calls:.2f} calls, {c.tokens:.0f} tokens, {usd}"

    if (session := figures("session")) is not None:
        typer.echo(f"per kept session ({m.per_kept['session'].kept}): {session}")
    if (item := figures("item")) is not None:
        typer.echo(
            f"per kept item ({m.per_kept['item'].kept}): {item} (probes stage); "
            f"{figures('item_whole_build')} (every stage)"
        )


def _show_probes(m: Any) -> None:
    """The probes' yield per type and their blind baselines (rules that never read the history)."""
    from personaloom.dataset.card import baseline_lines, yield_lines

    if m.probe_yield:
        typer.echo("probes per type:")
        for line in yield_lines(m):
            typer.echo("  " + line.removeprefix("- "))
    if m.probe_baselines:
        typer.echo("blind baselines (never read the history; each should be near chance):")
        for line in baseline_lines(m):
            if not line.startswith("|---"):
                typer.echo("  " + " ".join(line.strip("|").split()))


def _show_languages(path: Path, found: dict[str, int]) -> None:
    """Counts per interaction language (the persona's) and the languages language ID found."""
    from personaloom.text.languages import language_breakdown

    table = language_breakdown(path)
    if table.height:
        counts = table.columns[2:]
        typer.echo(f"{'language':<18}" + "".join(f"{c:>10}" for c in counts))
        for row in table.iter_rows(named=True):
            typer.echo(
                f"{row['language'] + ' ' + row['name']:<18}" + "".join(f"{row[c]:>10}" for c in counts)
            )
    if found:
        typer.echo("language ID of dataset rows: " + ", ".join(f"{code}={n}" for code, n in found.items()))


@app.command()
def verify(
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    out: OutOpt = OUT_DEFAULT,
    seeds: Annotated[
        Path | None, path_option("--seeds", "the seed tables the version was built with")
    ] = None,
) -> None:
    """Recheck a version: shard checksums and row counts, then every ground-truth invariant."""
    from personaloom.dataset.store import DatasetStore
    from personaloom.dataset.verify import verify_invariants, verify_version
    from personaloom.stages.catalogue import load_catalogue

    name, version = _split_spec(spec)
    store = DatasetStore(out, name)
    folder = store.resolve(version)
    manifest = store.manifest(folder.name)
    problems = verify_version(folder, manifest)
    if not problems:  # invariants read the tables: only worth it once they are intact
        problems = verify_invariants(folder, manifest, load_catalogue(seeds) if seeds else load_catalogue())
    for p in problems:
        typer.echo(f"{name}@{folder.name}: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    shared = sum(1 for s in manifest.shards if s.inherited_from)
    typer.echo(
        f"{name}@{folder.name}: {len(manifest.shards)} shards intact"
        + (f" ({shared} inherited from earlier versions)" if shared else "")
        + f", {len(manifest.invariants) or 'no'} invariants hold"
    )


@app.command()
def diff(
    a: Annotated[str, typer.Argument(metavar="DATASET@vA")],
    b: Annotated[str, typer.Argument(metavar="DATASET@vB")],
    fmt: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    out: OutOpt = OUT_DEFAULT,
) -> None:
    """What changed between two versions: rows per table, settings, model, prompts, code, distributions."""
    from personaloom.dataset.diff import diff_versions

    if fmt not in ("text", "json"):
        raise UserError(f"--format {fmt!r}: choose text or json")
    (name, va), (name_b, vb) = _split_spec(a), _split_spec(b)
    if name != name_b:
        raise UserError(f"diff compares two versions of one dataset: {name!r} and {name_b!r} differ")
    result = diff_versions(out, name, va, vb)
    if fmt == "json":
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo("\n".join(result.lines()))


@app.command()
def gc(
    dataset: Annotated[str, typer.Argument(metavar="DATASET")],
    keep: Annotated[int, typer.Option(help="versions to keep, newest first (latest is always kept)")] = 5,
    out: OutOpt = OUT_DEFAULT,
) -> None:
    """Remove old versions of a dataset; files a kept version shares with them (hard links) stay."""
    from personaloom.dataset.store import DatasetStore

    store = DatasetStore(out, dataset)
    store.resolve(None)  # a missing dataset fails in one line
    removed = store.remove_old(keep)
    for version, freed in removed.items():
        typer.echo(f"removed {dataset}@{version} ({freed / 1e6:.1f} MB freed)")
    typer.echo(f"{dataset}: kept {', '.join(store.versions())}; removed {len(removed)}")


# ---------------------------------------------------------------- filter any Parquet


@app.command(name="filter")
def filter_cmd(
    input: Annotated[
        Path,
        typer.Argument(
            metavar="IN.parquet",
            help="Parquet file (or folder of parts) with text",
            parser=_path_parser("IN.parquet"),
        ),
    ],
    column: Annotated[str, typer.Option(help="the text column")] = "text",
    dest: Annotated[Path, path_option("--dest", "folder for kept.parquet and rejections.parquet")] = Path(
        "filtered"
    ),
    old_out: Annotated[Path | None, path_option("--out", "", hidden=True)] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="near-duplicate similarity (rapidfuzz ratio 0–100)", show_default="85"),
    ] = None,
    min_words: Annotated[
        int | None, typer.Option(help="drop texts with fewer words", show_default="the filter's rule")
    ] = None,
    max_words: Annotated[
        int | None, typer.Option(help="drop texts with more words", show_default="the filter's rule")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="column naming rows in dup_of", show_default="row number")
    ] = None,
    lang: Annotated[
        str | None,
        typer.Option(help="keep only these languages, e.g. en,de (enables language ID)", show_default="all"),
    ] = None,
    lang_column: Annotated[
        str | None,
        typer.Option(help="column of each row's intended language (ISO 639-1): others → wrong_language"),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="filter the rows in this many slices, spilling to OUT/.spill-*: bounded memory, "
            "duplicates across slices still found, same result",
            show_default="one slice",
        ),
    ] = None,
) -> None:
    """Run stage 5's filter (rules, exact and near-duplicate removal) on any Parquet of texts (IN: a
    file, or a folder of Parquet parts read in name order)."""
    from personaloom.stages.filter import file as filter_file

    label = "--dest"
    if old_out is not None:  # `--out FOLDER`, before --out meant the output root everywhere
        _deprecated("filter --out FOLDER", "--dest FOLDER")
        dest, label = old_out, "--out"
    output_dir(dest, label)  # one line naming the option given, before any row is read
    # plain lines, never `\r`, when stderr is not a terminal (a log file, CI)
    filter_file.filter_parquet(
        input,
        column=column,
        out=dest,
        threshold=threshold,
        min_words=min_words,
        max_words=max_words,
        id_column=id_column,
        lang=lang,
        lang_column=lang_column,
        shards=shards,
    )


# ---------------------------------------------------------------- declared LLM calls


@app.command()
def prompts(
    show: Annotated[
        str | None, typer.Option("--show", metavar="NAME", help="render this call for a sample row")
    ] = None,
    prompt_set: Annotated[str, typer.Option(help="default | small (the embedded model's set)")] = "default",
    schema: Annotated[bool, flag("schema", "with --show: also print the response JSON schema")] = False,
    seed: Annotated[int, typer.Option(help="with --show: the sample persona's build seed")] = 0,
) -> None:
    """List every declared LLM call, or render one (--show NAME) for a sample row, without any LLM."""
    from personaloom.llm.calls import by_name
    from personaloom.llm.prompts import PromptLibrary
    from personaloom.pipeline import all_calls
    from personaloom.schemas.config import MAX_SEED
    from personaloom.stages.catalogue import load_catalogue

    if prompt_set not in ("default", "small"):
        raise UserError(f"--prompt-set {prompt_set!r}: choose default or small")
    if not 0 <= seed <= MAX_SEED:  # the range `build --seed` takes
        raise UserError(f"--seed {seed}: a build seed is from 0 to {MAX_SEED}")
    calls = by_name(all_calls())
    library = PromptLibrary(prompt_set=prompt_set)
    library.check(calls.values())
    if show is None:
        typer.echo(
            f"{'call':<34}{'role':<11}{'max tokens':>11}{'temp':>6}  {'response':<26}{'template hash':<18}"
            "check (redrawn when it fails)"
        )
        for name, call in sorted(calls.items()):
            d = call.describe(library.hashes)
            tokens = d["max_tokens"] if d["max_tokens"] is not None else "per input"
            temp = "run" if d["temperature"] is None else d["temperature"]
            typer.echo(
                f"{name:<34}{d['role']:<11}{tokens:>11}{temp:>6}  {d['response']:<26}{d['template_hash']:<18}"
                f"{d['check'] or '-'}"
            )
        return
    if show not in calls:
        raise UserError(f"--show: no LLM call {show!r}; `personaloom prompts` lists them")
    from personaloom.stages.samples import sample_records

    call = calls[show]
    item = call.sample(sample_records(load_catalogue(), seed=seed))  # type: ignore[misc]
    rendered = library.render(call.name, **call.variables_for(item))
    d = call.describe(library.hashes)
    typer.echo(
        f"# {call.name} ({prompt_set} set, template {d['template_hash']}): role {d['role']}, "
        f"max tokens {call.tokens_for(item)}, response {d['response']}, check {d['check'] or '-'}"
    )
    for message in rendered.messages:
        typer.echo(f"\n--- {message['role']}\n{message['content']}")
    response = call.response_for(item)
    if schema and response is not None:
        typer.echo(
            "\n--- response schema\n"
            + orjson.dumps(response.model_json_schema(), option=orjson.OPT_INDENT_2).decode()
        )


# ---------------------------------------------------------------- the embedded model


@app.command(name="local-llm")
def local_llm() -> None:
    """Serve the embedded model on loopback; prints its base URL and model name, stops on Ctrl-C."""
    from personaloom.llm.local import LocalServer

    stop = threading.Event()
    with LocalServer() as server:
        typer.echo(f"OPENAI_BASE_URL={server.base_url}\nMODEL={server.model}", color=False)
        sys.stdout.flush()
        try:
            while not stop.wait(1.0) and server.proc is not None and server.proc.poll() is None:
                pass
        except KeyboardInterrupt:
            pass


# ---------------------------------------------------------------- replay through the reference agents


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option}: expected integers separated by commas, got {text!r}") from None


@app.command()
def replay(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    agents: Annotated[
        str,
        typer.Option(
            help="comma list of none, golden, learned, rag, demographics-only, learned-rag, persona-agent, "
            "vars"
        ),
    ] = "none,golden,learned",
    k: Annotated[
        str, typer.Option("--k", help="learned persona update every k sessions; a list sweeps, e.g. 1,3,5")
    ] = "3",
    personas: Annotated[
        int | None, typer.Option(help="replay only the first N personas", show_default="all")
    ] = None,
    model: ModelOpt = L("model"),
    user_model: UserModelOpt = None,
    judge_model: JudgeModelOpt = None,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = L("concurrency"),
    shard_size: Annotated[
        int | None, typer.Option(help="personas per shard task", show_default="as in build")
    ] = None,
    judge: Annotated[bool, flag("judge", "LLM judge ratings and persona similarity")] = True,
    judge_mode: Annotated[
        str,
        typer.Option(
            "--judge-mode",
            help="paper: AI Persona's rating prompt (persona, query, answer); reference: the judge also sees "
            "the scene's reference answer",
        ),
    ] = "paper",
    pairwise: Annotated[
        str | None,
        typer.Option(
            help="agent pairs A:B the judge compares on every session, both orders (Fig. 4), e.g. "
            "learned-k3:golden,vars:golden; none for no comparison",
            show_default="each learned-kK against golden",
        ),
    ] = None,
    embedding_model: Annotated[
        str | None,
        typer.Option(
            help="embed agent memories with this model of the endpoint's /embeddings API",
            show_default="no embeddings",
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="run folder name", show_default="derived from the settings")
    ] = None,
    out: OutOpt = OUT_DEFAULT,
    cache_dir: CacheOpt = None,
) -> None:
    """Replay a dataset version through the reference agents; results go to DATASET/vN/replay/RUN/."""
    from personaloom.schemas.replay import ReplayConfig

    name, version = _split_spec(spec)
    model = _given(ctx, model=model)["model"]
    llm = dict(
        model=model,
        user_model=user_model,
        judge_model=judge_model,
        base_url=base_url,
        concurrency=concurrency,
    )
    fields = dict(
        dataset=name,
        version=version,
        agents=[a.strip() for a in agents.split(",") if a.strip()],
        ks=_int_list(k, "--k"),
        personas=personas,
        shard_size=shard_size,
        judge=judge,
        judge_mode=judge_mode,
        pairwise=None
        if pairwise is None
        else []
        if pairwise.strip() == "none"
        else [p.strip() for p in pairwise.split(",") if p.strip()],
        run=run,
        embedding_model=embedding_model,
    )
    cfg = _run_config(ReplayConfig, fields, llm, out)  # before any server starts: bad input fails in 1 s
    _model_for_endpoint(cfg.llm, model_given=model is not None)
    if cache_dir is not None:
        output_dir(cache_dir, "--cache-dir")
    prefect_api = _prefect_env(start_early=True)  # starts while Prefect's client side loads
    from personaloom.runs.replay import replay_dataset

    _quiet_prefect_tracebacks()
    prefect_api.wait()
    run_dir = asyncio.run(replay_dataset(cfg, out=str(out), cache_dir=str(cache_dir) if cache_dir else None))
    typer.echo((Path(run_dir) / "summary.md").read_text())
    typer.echo(f"→ {run_dir}")


@app.command()
def evaluate(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    model: ModelOpt = L("model"),
    base_url: BaseUrlOpt = None,
    temperature: Annotated[
        float, typer.Option(help="sampling temperature of the answers (0: the model's best answer)")
    ] = 0.0,
    mode: Annotated[
        str, typer.Option(help="mcq: pick one of four replies; open: answer freely, judged")
    ] = "mcq",
    judge_model: Annotated[
        str | None, typer.Option(help="model that grades open answers", show_default="--model")
    ] = None,
    context_tokens: Annotated[
        int | None, typer.Option(help="cap or pad each item's history (tokens)", show_default="as built")
    ] = None,
    context: Annotated[
        str,
        typer.Option(
            help="history: the user's sessions; none: question and options only (a blind reader); "
            "base-persona: the persona before any change (a stale memory)"
        ),
    ] = "history",
    personas: Annotated[
        int | None, typer.Option(help="only the first N personas' items", show_default="all")
    ] = None,
    concurrency: ConcurrencyOpt = L("concurrency"),
    run: Annotated[
        str | None,
        typer.Option("--run", help="run folder name", show_default="e-MODEL-MODE-CONTEXT-HASH"),
    ] = None,
    out: OutOpt = OUT_DEFAULT,
    cache_dir: CacheOpt = None,
) -> None:
    """Score a model on a version's probes; results go to vN/eval/RUN/, beside chance, the blind rules
    (which never read the history) and an oracle."""
    from personaloom.schemas.config import dataset_name_problem
    from personaloom.schemas.probes import EvalConfig

    name, version = _split_spec(spec)
    if run is not None and (problem := dataset_name_problem(run)):  # a folder under vN/eval/, never outside
        raise UserError(f"--run: {problem}")
    given = _given(ctx, model=model)
    llm = dict(
        model=given["model"],
        base_url=base_url,
        concurrency=concurrency,
        judge_model=judge_model,
        temperature=temperature,
    )
    fields = dict(
        dataset=name,
        version=version,
        mode=mode,
        context_tokens=context_tokens,
        context=context,
        personas=personas,
        run=run,
    )
    cfg = _run_config(EvalConfig, fields, llm, out)  # before any server starts: bad input fails in 1 s
    _model_for_endpoint(cfg.llm, model_given=given["model"] is not None)
    if cache_dir is not None:
        output_dir(cache_dir, "--cache-dir")
    prefect_api = _prefect_env(start_early=True)  # starts while Prefect's client side loads
    from personaloom.runs.evaluate import evaluate_dataset

    _quiet_prefect_tracebacks()
    prefect_api.wait()
    run_dir = asyncio.run(
        evaluate_dataset(cfg, out=str(out), cache_dir=str(cache_dir) if cache_dir else None)
    )
    typer.echo((Path(run_dir) / "summary.md").read_text())
    typer.echo(f"→ {run_dir}")


# ---------------------------------------------------------------- plots and exports of a version

DestOpt = Annotated[Path | None, path_option("--dest", "folder to write to")]


def _outside_version(dest: Path, version: Path, label: str) -> None:
    """A version never changes after it is published: nothing is written into it."""
    if dest.resolve().is_relative_to(version.resolve()):
        raise UserError(
            f"--dest {dest} is inside {label}, and a version never changes: choose a folder outside"
        )


@app.command()
def plot(
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    out: OutOpt = OUT_DEFAULT,
    dest: DestOpt = None,
) -> None:
    """Draw the explore notebook's figures as PNG files (default --dest: plots/DATASET-vN/)."""
    try:
        import matplotlib  # here, not at the top: `personaloom --help` stays fast
    except ImportError:
        raise UserError("plot needs matplotlib: pip install 'personaloom[notebook]'") from None
    matplotlib.use("Agg")  # no display needed, works over SSH and in cron
    from personaloom.dataset.explore import open_version, write_pngs

    name, version = _split_spec(spec)
    view = open_version(out, name, version)
    target = dest or Path("plots") / f"{name}-{view.version}"  # versions are immutable: plots go outside them
    _outside_version(target, view.path, view.label)
    paths = write_pngs(view, output_dir(target, "--dest"))
    typer.echo(f"{view.label}: {len(paths)} figures → {target}")


@app.command()
def export(
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="jsonl or csv: every table (nested columns become JSON strings in CSV); sft or dpo: the "
            "probes as TRL training JSONL; persona-mem: questions.csv + shared_contexts.jsonl for PersonaMem;"
            " longmemeval, locomo: the probes as LongMemEval's or LoCoMo's JSON",
        ),
    ] = None,
    out: OutOpt = OUT_DEFAULT,
    dest: DestOpt = None,
    context_tokens: Annotated[
        int | None,
        typer.Option(
            help="sft, dpo, persona-mem, longmemeval: cap or pad each history to about N tokens",
            show_default="all",
        ),
    ] = None,
    splits: Annotated[
        str,
        typer.Option(help="sft, dpo: shares of train,validation,test by persona (1: train only)"),
    ] = "0.8,0.1,0.1",
    split_seed: Annotated[int, typer.Option(help="sft, dpo: seed of the persona hash that splits")] = 0,
) -> None:
    """Write every table of a version (replay runs included), or its probes as training or benchmark files.

    Default --dest: exports/DATASET-vN-FORMAT/.
    """
    from personaloom.dataset.export import FORMATS, ITEM_FORMATS, export_items, export_version
    from personaloom.dataset.store import DatasetStore

    name, version = _split_spec(spec)
    choices = (*FORMATS, *ITEM_FORMATS)
    if fmt not in choices:  # checked here, not by click, so a missing or bad value is one plain line
        raise UserError(
            f"--format: {'unknown format ' + repr(fmt) if fmt else 'required'}: choose {', '.join(choices)}"
        )
    if context_tokens is not None and fmt in FORMATS:
        raise UserError(
            f"--context-tokens: only for {', '.join(ITEM_FORMATS)} ({fmt} copies the tables as is)"
        )
    if context_tokens is not None and fmt == "locomo":
        raise UserError("--context-tokens: not for locomo (a LoCoMo sample is the whole conversation)")
    from personaloom.dataset.export import parse_splits

    shares = parse_splits(splits)
    if fmt not in ("sft", "dpo") and splits != "0.8,0.1,0.1":
        raise UserError(f"--splits: only for sft and dpo ({fmt} keeps every item together)")
    folder = DatasetStore(out, name).resolve(version)
    target = dest or Path("exports") / f"{name}-{folder.name}-{fmt}"
    _outside_version(target, folder, f"{name}@{folder.name}")
    if context_tokens is not None and context_tokens < 1:
        raise UserError(f"--context-tokens: must be at least 1, got {context_tokens}")
    if fmt in ITEM_FORMATS and not _has_rows(folder / "probes"):
        from personaloom.stages.probes import no_probes_message  # before any folder is made for nothing

        raise UserError(no_probes_message(name, folder) + f" (nothing to export as {fmt})")
    output_dir(target, "--dest")
    if fmt in ITEM_FORMATS:
        files = export_items(
            out,
            name,
            folder.name,
            fmt,
            target,
            context_tokens,
            shares,
            split_seed,  # type: ignore[arg-type]
        )
        rows = ", ".join(f"{f} ({n} rows)" for f, n in files.items())
        typer.echo(f"{name}@{folder.name}: probes as {fmt}: {rows} → {target}")
        return
    written = export_version(out, name, folder.name, fmt, target)  # type: ignore[arg-type]  # checked above
    typer.echo(f"{name}@{folder.name}: {len(written)} tables as {fmt} → {target}")


@app.command()
def push(
    spec: Annotated[str, typer.Argument(metavar="DATASET[@vN]")],
    repo: Annotated[str, typer.Option(help="Hub dataset repo, OWNER/NAME (created if missing)")],
    out: OutOpt = OUT_DEFAULT,
    private: Annotated[bool, flag("private", "a new repo is private (an existing one keeps its own)")] = True,
    revision: Annotated[
        str | None, typer.Option(help="branch to commit to (created if missing)", show_default="main")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="HF_TOKEN", help="Hub write token", show_default="$HF_TOKEN, else `hf auth login`'s"
        ),
    ] = None,
) -> None:
    """Upload a version to the Hugging Face Hub: its card (README.md), Parquet tables and manifest.json."""
    from personaloom.dataset.hub import push_version
    from personaloom.dataset.store import DatasetStore

    name, version = _split_spec(spec)
    folder = DatasetStore(out, name).resolve(version)
    commit = push_version(folder, repo, token=token, private=private, revision=revision)
    repo_url, _, oid = commit.rpartition("/commit/")
    typer.echo(f"{name}@{folder.name} → {repo_url}\ncommit {oid}")


INTERRUPTED = "interrupted: finished shards and LLM answers are kept; re-run the same command to resume"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
FREE_AND_RESUME = "free space and re-run the same command to resume"
TYPER_INTERRUPTED = 130  # typer turns a KeyboardInterrupt in a command into this exit code, silently
SIGNALLED: list[int] = []  # SIGTERM, once received: the exit code says which signal stopped the command


def _on_sigterm(signum: int, frame: Any) -> None:
    """`kill`, a service manager, a scheduler's time limit: stop as Ctrl-C does (exit 143, not 130)."""
    SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e` and every exception behind it (causes, contexts, members of a group)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [c for c in (x.__cause__, x.__context__) if c is not None]
        if isinstance(x, BaseExceptionGroup):
            todo += list(x.exceptions)


def _full_disk(e: BaseException) -> OSError | None:
    """The out-of-space error behind `e`, if any: pyarrow and Python set errno, polars only says
    "(os error 28)"."""
    for x in _chain(e):
        if isinstance(x, OSError) and (x.errno in FULL_DISK or re.search(r"os error (28|122)\b", str(x))):
            return x
    return None


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


def _has_rows(table: Path) -> bool:
    import pyarrow.parquet as pq

    return any(pq.read_metadata(p).num_rows for p in table.glob("part-*.parquet"))


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


def _llm_error() -> type[Exception]:
    from personaloom.llm.client import LLMError

    return LLMError
