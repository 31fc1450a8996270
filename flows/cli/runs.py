"""Commands that derive runs from a version: replay (the reference agents) and evaluate (a model)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from personaloom.cli.common import (
    OUT_DEFAULT,
    BaseUrlOpt,
    CacheOpt,
    ConcurrencyOpt,
    JudgeModelOpt,
    L,
    ModelOpt,
    OutOpt,
    UserModelOpt,
    _given,
    _prefect_env,
    _quiet_prefect_tracebacks,
    _run_config,
    _split_spec,
    app,
    flag,
    output_dir,
)
from personaloom.errors import UserError

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
    """Replay a dataset version through the reference agents; results go to DATASET/runs/vN/replay/RUN/."""
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
    # before any server starts: bad input fails in 1 s
    cfg = _run_config(ReplayConfig, fields, llm, out, model_given=model is not None)
    if cache_dir is not None:
        output_dir(cache_dir, "--cache-dir")
    prefect_api = _prefect_env(start_early=True)  # starts while Prefect's client side loads
    from personaloom.runs.replay import replay_dataset

    _quiet_prefect_tracebacks()
    prefect_api.wait()
    run_dir = asyncio.run(
        replay_dataset(cfg, out=str(out), cache_dir=str(cache_dir) if cache_dir else None, checked=True)
    )
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
    """Score a model on a version's probes; results go to DATASET/runs/vN/eval/RUN/, beside chance, the
    blind rules (which never read the history) and an oracle."""
    from personaloom.schemas.config import dataset_name_problem
    from personaloom.schemas.probes import EvalConfig

    name, version = _split_spec(spec)
    if run is not None and (problem := dataset_name_problem(run)):  # a folder in runs/vN/eval/
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
    # before any server starts: bad input fails in 1 s
    cfg = _run_config(EvalConfig, fields, llm, out, model_given=given["model"] is not None)
    if cache_dir is not None:
        output_dir(cache_dir, "--cache-dir")
    prefect_api = _prefect_env(start_early=True)  # starts while Prefect's client side loads
    from personaloom.runs.evaluate import evaluate_dataset

    _quiet_prefect_tracebacks()
    prefect_api.wait()
    run_dir = asyncio.run(
        evaluate_dataset(cfg, out=str(out), cache_dir=str(cache_dir) if cache_dir else None, checked=True)
    )
    typer.echo((Path(run_dir) / "summary.md").read_text())
    typer.echo(f"→ {run_dir}")
