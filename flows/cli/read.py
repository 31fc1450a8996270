"""Commands that read a published version: versions, show, verify, diff, plot, export, push."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from personaloom.cli.common import (
    OUT_DEFAULT,
    DestOpt,
    OutOpt,
    _split_spec,
    app,
    flag,
    output_dir,
    path_option,
)
from personaloom.errors import UserError

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
    from personaloom.dataset.version import open_version

    name, version = _split_spec(spec)
    v = open_version(out, name, version)
    path, m = v.path, v.manifest
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
    from personaloom.dataset.verify import verify_invariants, verify_version
    from personaloom.dataset.version import open_version
    from personaloom.stages.catalogue import load_catalogue

    name, version = _split_spec(spec)
    v = open_version(out, name, version)
    folder, manifest = v.path, v.manifest
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


def _has_rows(table: Path) -> bool:
    import pyarrow.parquet as pq

    return any(pq.read_metadata(p).num_rows for p in table.glob("part-*.parquet"))
