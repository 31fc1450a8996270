"""Commands that make data: build, serve, server, sample, gc, filter, prompts, local-llm."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from personaloom import paths
from personaloom.cli.common import (
    NO_LIMIT,
    OPTION_OF,
    OUT_DEFAULT,
    B,
    BaseUrlOpt,
    CacheOpt,
    ConcurrencyOpt,
    ConfigOpt,
    DatasetOpt,
    GrowOpt,
    JudgeModelOpt,
    L,
    LanguagesOpt,
    LocalesOpt,
    ModelOpt,
    OldScenesOpt,
    OutOpt,
    PersonasOpt,
    SeedsOpt,
    SessionsOpt,
    UserModelOpt,
    _deprecated,
    _full_disk,
    _given,
    _path_parser,
    _prefect_env,
    _priced,
    _quiet_prefect_tracebacks,
    app,
    flag,
    make_config,
    output_dir,
    parse_tokens,
    path_option,
)
from personaloom.errors import UserError


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
        model_given=g["model"] is not None or "model" in cfg.llm.model_fields_set,
        names={
            "locales": "--locales" if locales else f"{config}: locales",
            "languages": "--languages" if languages else f"{config}: languages",
        },
    )
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

    from personaloom.pipeline.schedule import deployment

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
