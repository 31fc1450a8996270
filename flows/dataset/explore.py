"""Look at a version: lazy Polars frames per table and the figures the notebook and `personaloom plot` share.

Figures are plain `matplotlib.figure.Figure` objects made without pyplot: no global figure registry to leak
from a long-running CLI or notebook, and no backend choice forced on the caller (the CLI picks Agg, the
notebook displays them inline).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from personaloom.dataset.store import DatasetStore, replacing
from personaloom.dataset.version import Version
from personaloom.dataset.version import open_version as read_version
from personaloom.errors import UserError
from personaloom.schemas.config import dataset_name_problem
from personaloom.schemas.manifest import Manifest
from personaloom.text.languages import language_breakdown

if TYPE_CHECKING:
    from personaloom.dataset.diff import VersionDiff

TOP_N = 12  # categories per bar chart; the rest are summed into "other" so labels stay readable
LABEL_CHARS = 30
KIND_COLORS = {"common": "#4C72B0", "specific": "#DD8452", "revisit": "#55A868"}
# Replay metric columns drawn as learning curves, in this order, when present; any other numeric
# column whose name contains "similarity" is added too, so a renamed or new similarity score still shows.
CURVE_METRICS = (
    "persona_similarity",
    "field_similarity",
    "utterances",
    "helpfulness",
    "personalization",
    "user_tokens",
    "corrections",
)
METRIC_LABELS = {
    "persona_similarity": "persona similarity (fields, 0–1)",
    "field_similarity": "persona similarity (fields, 0–1)",
    "utterances": "user utterances to satisfaction ↓",
    "helpfulness": "helpfulness (judge, 0–10)",
    "personalization": "personalization (judge, 0–10)",
    "user_tokens": "user tokens per session ↓",
    "corrections": "answers rejected per session ↓",
}


# ---------------------------------------------------------------- opening a version


@dataclass
class ReplayView:
    """One replay run (output/<dataset>/runs/vNNNN/replay/<run>/): its tables as lazy frames, its summary."""

    name: str
    path: Path
    tables: dict[str, pl.LazyFrame]
    summary_md: str | None


@dataclass
class VersionView:
    dataset: str
    version: str
    path: Path
    manifest: Manifest
    tables: dict[str, pl.LazyFrame]
    replays: dict[str, ReplayView] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.dataset}@{self.version}"


def _scan_tables(root: Path, names: list[str]) -> dict[str, pl.LazyFrame]:
    """Lazy scans of `root/<name>/part-*.parquet`.

    A folder without shards is left out rather than failing the view.
    """
    frames = {}
    for name in names:
        parts = sorted((root / name).glob("part-*.parquet"))
        if parts:
            frames[name] = pl.scan_parquet(parts)
    return frames


def _open_replays(version: Version) -> dict[str, ReplayView]:
    replays = {}
    for run in version.runs("replay", complete=False):
        tables = _scan_tables(run, sorted(p.name for p in run.iterdir() if p.is_dir()))
        summary = run / "summary.md"
        if tables:  # a run still being written (no shard yet) is skipped, not an error
            replays[run.name] = ReplayView(
                run.name, run, tables, summary.read_text() if summary.is_file() else None
            )
    return replays


def default_out() -> Path:
    """`output/` of the working folder, or of its parent: a notebook runs from notebooks/."""
    for candidate in (Path("output"), Path("..") / "output"):
        if candidate.is_dir():
            return candidate
    return Path("output")


def newest_dataset(out: Path) -> str:
    """The dataset whose latest version was written last."""
    found = []
    for root in Path(out).iterdir() if Path(out).is_dir() else []:
        # .cache and other folders that cannot name a dataset are not datasets
        named = root.is_dir() and dataset_name_problem(root.name) is None
        latest = DatasetStore(out, root.name).latest() if named else None
        if latest:
            found.append(((root / latest / "manifest.json").stat().st_mtime, root.name))
    if not found:
        raise UserError(f"no datasets under {out}: run `personaloom build` or set PERSONALOOM_OUT")
    return max(found)[1]


def open_version(out: Path | str, dataset: str | None = None, version: str | None = None) -> VersionView:
    """The version (v3, v0003, 3, latest/None) of `dataset` (None: the newest dataset under `out`)."""
    v = read_version(out, dataset or newest_dataset(Path(out)), version)
    return VersionView(
        v.dataset, v.version, v.path, v.manifest, {t: v.table(t) for t in v.tables()}, _open_replays(v)
    )


def open_from_env() -> VersionView:
    """What the notebook opens: PERSONALOOM_OUT, PERSONALOOM_DATASET, PERSONALOOM_VERSION (each optional)."""
    out = os.environ.get("PERSONALOOM_OUT") or default_out()
    return open_version(
        out, os.environ.get("PERSONALOOM_DATASET") or None, os.environ.get("PERSONALOOM_VERSION") or None
    )


# ---------------------------------------------------------------- tables behind the figures


def _table(view: VersionView, name: str) -> pl.LazyFrame | None:
    return view.tables.get(name)


def stage_counts(view: VersionView) -> pl.DataFrame:
    """Rows in, out, rejected and with fallbacks per stage, from the manifest."""
    rows = [{"stage": s, **c.model_dump()} for s, c in view.manifest.counts.items()]
    return pl.DataFrame(
        rows,
        schema={
            "stage": pl.String,
            "rows_in": pl.Int64,
            "rows_out": pl.Int64,
            "rejected": pl.Int64,
            "fallback_rows": pl.Int64,
        },
    )


def rejection_reasons(view: VersionView) -> pl.DataFrame:
    """Rejected rows per (stage, reason), counted from the rejections table itself, not the manifest."""
    lf = _table(view, "rejections")
    if lf is None:
        return pl.DataFrame(schema={"stage": pl.String, "reason": pl.String, "rows": pl.UInt32})
    return (
        lf.group_by("stage", "reason")
        .agg(pl.len().alias("rows"))
        .sort("rows", "stage", "reason", descending=[True, False, False])
        .collect()
    )


def _mbti(personality: pl.Expr) -> pl.Expr:
    """Four MBTI letters from the persona's spelled-out dichotomies (Intuition is N, not I)."""
    letters = [
        personality.struct.field(f).str.slice(0, 1)
        for f in (
            "Extraversion_or_Introversion",
            "Sensing_or_Intuition",
            "Thinking_or_Feeling",
            "Judging_or_Perceiving",
        )
    ]
    letters[1] = pl.when(letters[1] == "I").then(pl.lit("N")).otherwise(letters[1])
    return pl.concat_str(letters)


def persona_attributes(view: VersionView) -> pl.DataFrame:
    """One row per synthesized persona; locale and the short occupation label come from its seed row."""
    personas = _table(view, "personas")
    if personas is None:
        return pl.DataFrame()
    p = pl.col("persona")
    comm = p.struct.field("Communication")
    frame = personas.select(
        "persona_id",
        p.struct.field("Demographics").struct.field("Age").alias("age"),
        p.struct.field("Demographics").struct.field("Gender").alias("gender"),
        p.struct.field("Demographics").struct.field("Nationality").alias("nationality"),
        _mbti(p.struct.field("Personality")).alias("mbti"),
        *(comm.struct.field(f).alias(f) for f in ("formality", "verbosity", "proactivity", "emotional_tone")),
    )
    seeds = _table(view, "seeds")
    if seeds is not None:
        frame = frame.join(seeds.select("persona_id", "locale", "occupation"), on="persona_id", how="left")
    return frame.collect()


def scene_kinds(view: VersionView) -> pl.DataFrame:
    """Scenes per (session_index, kind): mix of common, persona-specific and revisit sessions over time."""
    lf = _table(view, "scenes")
    if lf is None:
        return pl.DataFrame(schema={"session_index": pl.Int64, "kind": pl.String, "scenes": pl.UInt32})
    return (
        lf.group_by("session_index", "kind")
        .agg(pl.len().alias("scenes"))
        .sort("session_index", "kind")
        .collect()
    )


def query_lengths(view: VersionView) -> pl.DataFrame:
    """Words per personalized and neutralized query."""
    lf = _table(view, "queries")
    if lf is None:
        return pl.DataFrame(schema={"personalized": pl.UInt32, "neutralized": pl.UInt32})
    return lf.select(
        pl.col("personalized_query").str.count_matches(r"\S+").alias("personalized"),
        pl.col("neutralized_query").str.count_matches(r"\S+").alias("neutralized"),
    ).collect()


def language_counts(view: VersionView) -> pl.DataFrame:
    """Rows of each table per interaction language (the persona's ISO 639-1 code), most personas first."""
    return language_breakdown(view.path)


def metric_columns(metrics: pl.LazyFrame) -> list[str]:
    """The learning-curve metrics this replay actually wrote.

    Numeric, in CURVE_METRICS order, similarity scores first.
    """
    schema = metrics.collect_schema()
    numeric = [c for c, t in schema.items() if t.is_numeric()]
    extra = [c for c in numeric if "similarity" in c and c not in CURVE_METRICS]
    return [c for c in CURVE_METRICS if c in numeric] + extra


def _replay_metrics(run: ReplayView) -> pl.LazyFrame | None:
    """The per persona × session × agent metric table: `metrics`, else any table with those keys."""
    for name in ["metrics", *run.tables]:
        lf = run.tables.get(name)
        if (
            lf is not None
            and {"agent", "session_index"} <= set(lf.collect_schema().names())
            and metric_columns(lf)
        ):
            return lf
    return None


def _agent_rank(metrics: pl.LazyFrame) -> pl.Expr:
    """Agents in the order the replay wrote them (none, golden, learned-k…), not alphabetically."""
    order = metrics.select(pl.col("agent").unique(maintain_order=True)).collect()["agent"].to_list()
    return pl.col("agent").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64)


def learning_curves(run: ReplayView) -> pl.DataFrame:
    """Mean of each metric per (agent, session_index), over personas."""
    lf = _replay_metrics(run)
    if lf is None:
        return pl.DataFrame()
    cols = metric_columns(lf)
    table = (
        lf.group_by("agent", "session_index").agg(pl.col(cols).mean(), pl.len().alias("personas")).collect()
    )
    return table.sort(_agent_rank(lf), "session_index")


def replay_summary(run: ReplayView) -> pl.DataFrame:
    """Table-1 style: one row per agent, each metric averaged over every persona and session."""
    lf = _replay_metrics(run)
    if lf is None:
        return pl.DataFrame()
    names = lf.collect_schema().names()
    extra = [pl.col(c).cast(pl.Float64).mean() for c in ("satisfied", "timeout") if c in names]
    table = (
        lf.group_by("agent")
        .agg(pl.col(metric_columns(lf)).mean(), *extra, pl.len().alias("sessions"))
        .collect()
    )
    return table.sort(_agent_rank(lf))


# ---------------------------------------------------------------- drawing


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _short(label: object) -> str:
    text = "(missing)" if label is None else str(label)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def scale_orders() -> dict[str, list[str]]:
    """The ordinal scales of the persona's communication style (lowest → highest), by column name."""
    from personaloom.stages.catalogue import load_catalogue
    from personaloom.stages.drift import SCALES

    attributes = load_catalogue().attributes
    return {path.split(".")[-1]: list(attributes[key]) for path, key in SCALES.items() if key in attributes}


def bar_counts(values: pl.Series, order: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Labels and counts of a bar chart, top first: most frequent first, or an ordinal scale in its own
    order (lowest first; values off the scale after it, by count), the tail folded into "other"."""
    counts = values.value_counts(sort=True, name="n")
    if order is not None:
        rank = {v: i for i, v in enumerate(order)}
        counts = counts.with_columns(
            pl.col(values.name).replace_strict(rank, default=len(order), return_dtype=pl.Int64).alias("_rank")
        )
        counts = counts.sort(["_rank", "n"], descending=[False, True], maintain_order=True).drop("_rank")
    labels, sizes = [_short(v) for v in counts[values.name][:TOP_N]], counts["n"][:TOP_N].to_list()
    if counts.height > TOP_N:
        labels.append(f"other ({counts.height - TOP_N})")
        sizes.append(int(counts["n"][TOP_N:].sum()))
    return labels, sizes


def _bar_counts(ax: Axes, values: pl.Series, title: str, order: list[str] | None = None) -> None:
    """Horizontal bars of value counts, most frequent on top (an ordinal scale in its order), the tail
    folded into "other"."""
    ax.set_title(title)
    if values.len() == 0:
        _no_data(ax, "rows")
        return
    labels, sizes = bar_counts(values, order)
    ax.barh(labels[::-1], sizes[::-1], color="#4C72B0")
    ax.tick_params(axis="y", labelsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)


def stages_figure(view: VersionView) -> Figure:
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    counts = stage_counts(view)
    x = list(range(counts.height))
    for i, (col, color) in enumerate(
        (("rows_in", "#8C8C8C"), ("rows_out", "#4C72B0"), ("rejected", "#C44E52"))
    ):
        left.bar(
            [v + (i - 1) * 0.27 for v in x],
            counts[col].to_list(),
            width=0.27,
            label=col.replace("_", " "),
            color=color,
        )
    left.set_xticks(x, counts["stage"].to_list())
    left.set_ylabel("rows")
    left.set_title("rows per stage")
    left.legend(fontsize=8)
    reasons = rejection_reasons(view)
    right.set_title("rejection reasons")
    if reasons.height == 0:
        _no_data(right, "rejections")
    else:
        labels = [_short(f"{s}: {r}") for s, r in zip(reasons["stage"], reasons["reason"], strict=True)]
        right.barh(labels[::-1], reasons["rows"].to_list()[::-1], color="#C44E52")
        right.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{view.label}: pipeline")
    return fig


def personas_figure(view: VersionView) -> Figure:
    fig = Figure(figsize=(14, 8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    attrs = persona_attributes(view)
    age_ax = axes[0]
    age_ax.set_title("age")
    if attrs.height and "age" in attrs.columns:
        age_ax.hist(
            attrs["age"].drop_nulls().to_list(), bins=min(20, max(5, attrs.height // 2)), color="#4C72B0"
        )
        age_ax.set_xlabel("years")
    else:
        _no_data(age_ax, "personas")
    for ax, col in zip(axes[1:], ("nationality", "locale", "mbti", "occupation", "gender"), strict=True):
        if col in attrs.columns:
            _bar_counts(ax, attrs[col], col)
        else:
            ax.set_title(col)
            _no_data(ax, col)
    fig.suptitle(f"{view.label}: {attrs.height} personas")
    return fig


def communication_figure(view: VersionView) -> Figure:
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    attrs = persona_attributes(view)
    orders = scale_orders()
    for ax, col in zip(
        fig.subplots(1, 4), ("formality", "verbosity", "proactivity", "emotional_tone"), strict=True
    ):
        if col in attrs.columns:
            _bar_counts(ax, attrs[col], col.replace("_", " "), orders.get(col))
        else:
            ax.set_title(col)
            _no_data(ax, col)
    fig.suptitle(f"{view.label}: communication style")
    return fig


def scene_kinds_figure(view: VersionView) -> Figure:
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    kinds = scene_kinds(view)
    ax.set_title(f"{view.label}: scene kinds per session index")
    if kinds.height == 0:
        _no_data(ax, "scenes")
        return fig
    wide = kinds.pivot(on="kind", index="session_index", values="scenes").sort("session_index").fill_null(0)
    present = [c for c in wide.columns if c != "session_index"]
    order = [k for k in KIND_COLORS if k in present] + sorted(k for k in present if k not in KIND_COLORS)
    bottom = [0] * wide.height
    for kind in order:  # stacked: each bar's height is the number of personas that reached that session
        values = wide[kind].to_list()
        ax.bar(
            wide["session_index"].to_list(), values, bottom=bottom, label=kind, color=KIND_COLORS.get(kind)
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("session index")
    ax.set_ylabel("scenes")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(loc="outside right center", title="kind")
    return fig


def query_lengths_figure(view: VersionView) -> Figure:
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    lengths = query_lengths(view)
    ax.set_title(f"{view.label}: query length")
    if lengths.height == 0:
        _no_data(ax, "queries")
        return fig
    top = max(int(lengths.max().max_horizontal().item() or 0), 1)
    bins = list(range(0, top + 2, max(1, (top + 1) // 30)))
    for col, color in (("personalized", "#4C72B0"), ("neutralized", "#DD8452")):
        ax.hist(
            lengths[col].to_list(),
            bins=bins,
            alpha=0.6,
            label=f"{col} (median {lengths[col].median():.0f})",
            color=color,
        )
    ax.set_xlabel("words")
    ax.set_ylabel("queries")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return fig


def languages_figure(view: VersionView) -> Figure:
    """Dataset rows and rejected rows per interaction language, and what language ID found."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    counts = language_counts(view)
    left.set_title(f"{view.label}: rows per persona language")
    if counts.height == 0 or "dataset" not in counts.columns:
        _no_data(left, "dataset rows")
    else:
        labels = [f"{c} {n}" for c, n in zip(counts["language"], counts["name"], strict=True)][::-1]
        y = list(range(len(labels)))
        kept = counts["dataset"].to_list()[::-1]
        left.barh(y, kept, color="#4C72B0", label="dataset")
        if "rejected" in counts.columns:
            left.barh(y, counts["rejected"].to_list()[::-1], left=kept, color="#C44E52", label="rejected")
        left.set_yticks(y, labels)
        left.set_xlabel("rows")
        left.legend()
    found = view.manifest.languages
    codes = pl.Series("language", [code for code, n in found.items() for _ in range(n)], dtype=pl.String)
    _bar_counts(right, codes, "language ID of the dataset rows")
    return fig


def learning_curves_figure(view: VersionView, run: ReplayView) -> Figure | None:
    """One panel per metric, x = session index, one line per agent; None when the run wrote no metrics."""
    curves = learning_curves(run)
    if curves.height == 0:
        return None
    cols = [c for c in curves.columns if c not in ("agent", "session_index", "personas")]
    agents = curves["agent"].unique(maintain_order=True).to_list()
    # One fixed colour, marker and dash per agent across panels: baselines often tie exactly, and
    # distinct markers and dashes keep overlapping lines visible.
    styles = {
        a: dict(color=f"C{i % 10}", marker="os^Dvx*P"[i % 8], linestyle=("-", "--", ":", "-.")[i % 4])
        for i, a in enumerate(agents)
    }
    ncols = min(2, len(cols))
    fig = Figure(figsize=(6.2 * ncols, 3.8 * -(-len(cols) // ncols)), layout="constrained")
    axes = fig.subplots(-(-len(cols) // ncols), ncols, squeeze=False).ravel()
    for ax, col in zip(axes, cols, strict=False):
        for agent in agents:
            part = curves.filter((pl.col("agent") == agent) & pl.col(col).is_not_null())
            if part.height:
                ax.plot(
                    part["session_index"].to_list(),
                    part[col].to_list(),
                    label=agent,
                    alpha=0.85,
                    **styles[agent],
                )
        ax.set_title(METRIC_LABELS.get(col, col.replace("_", " ")))
        ax.set_xlabel("session index")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if not ax.lines:
            _no_data(ax, "scores")
    for ax in axes[len(cols) :]:
        ax.set_axis_off()
    handles = [Line2D([], [], label=a, **styles[a]) for a in agents]
    fig.legend(handles=handles, loc="outside right center", title="agent")
    fig.suptitle(f"{view.label}: replay {run.name} — learning curves (mean over personas)")
    return fig


def eval_accuracy(view: VersionView) -> pl.DataFrame:
    """Accuracy per evaluation run, model and distance (sessions from evidence to question)."""
    runs = Version(view.path, view.dataset, view.version).runs("eval")  # complete ones only
    parts = sorted(p for run in runs for p in (run / "results").glob("part-*.parquet"))
    if not parts:
        return pl.DataFrame()
    return (
        pl.scan_parquet(parts)
        .group_by("run", "model", "distance_sessions")
        .agg(pl.col("correct").mean().alias("accuracy"), pl.len().alias("items"))
        .sort("run", "model", "distance_sessions")
        .collect()
    )


def eval_figure(view: VersionView) -> Figure | None:
    """Accuracy against distance, one line per model of each `personaloom evaluate` run."""
    acc = eval_accuracy(view)
    if acc.height == 0:
        return None
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for (run, model), part in acc.group_by("run", "model", maintain_order=True):
        ax.plot(
            part["distance_sessions"].to_list(),
            part["accuracy"].to_list(),
            marker="o",
            label=f"{run}: {model}",
        )
    ax.set_title(f"{view.label}: probe accuracy against distance")
    ax.set_xlabel("sessions between the evidence and the question")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    return fig


FIGURES: dict[str, Callable[[VersionView], Figure]] = {
    "stages": stages_figure,
    "personas": personas_figure,
    "communication": communication_figure,
    "scene_kinds": scene_kinds_figure,
    "query_lengths": query_lengths_figure,
    "languages": languages_figure,
}


def figures(view: VersionView) -> dict[str, Figure]:
    """Every figure of the version, keyed by a file-name-safe name; replay curves only when a run exists."""
    figs = {name: draw(view) for name, draw in FIGURES.items()}
    if (accuracy := eval_figure(view)) is not None:
        figs["eval-accuracy_by_distance"] = accuracy
    for run in view.replays.values():
        fig = learning_curves_figure(view, run)
        if fig is not None:
            figs[f"replay-{run.name}-learning_curves"] = fig
    return figs


def write_pngs(view: VersionView, dest: Path | str, dpi: int = 110) -> list[Path]:
    """Every figure as `dest/<name>.png`; returns the paths written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(view).items():
        path = dest / f"{name}.png"
        with replacing(path) as tmp:  # a full disk leaves no half-drawn figure
            fig.savefig(tmp, dpi=dpi, format="png")
        paths.append(path)
    return paths


# ---------------------------------------------------------------- two versions (`personaloom diff`)


def open_compare(view: VersionView) -> VersionView | None:
    """The version to compare `view` with: PERSONALOOM_COMPARE (v3, 3, ...), else its parent, else None."""
    out, chosen = view.path.parent.parent, os.environ.get("PERSONALOOM_COMPARE")
    if chosen:
        return open_version(out, view.dataset, chosen)
    parent = view.manifest.parent
    if parent is None or parent not in DatasetStore(out, view.dataset).versions():
        return None  # a first version, or its parent was removed (`personaloom gc`)
    return open_version(out, view.dataset, parent)


def compare(a: VersionView, b: VersionView) -> VersionDiff:
    """What changed from `a` to `b`: the same report as `personaloom diff` (`.lines()` prints it)."""
    from personaloom.dataset.diff import diff_versions

    return diff_versions(b.path.parent.parent, b.dataset, a.version, b.version)


def shift_table(diff: VersionDiff) -> pl.DataFrame:
    """One row per (attribute, category): counts and shares in both versions, the change in points."""
    rows = [
        {"attribute": s.attribute, "tvd": s.tvd, **c.model_dump(), "delta_pp": 100 * (c.share_b - c.share_a)}
        for s in diff.shifts
        for c in s.categories
    ]
    schema = {"attribute": pl.String, "tvd": pl.Float64, "value": pl.String, "a": pl.Int64, "b": pl.Int64}
    schema |= {"share_a": pl.Float64, "share_b": pl.Float64, "delta_pp": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def compare_figure(diff: VersionDiff) -> Figure:
    """Per attribute, the share of each category in both versions (largest shifts first)."""
    shifts = [s for s in diff.shifts if s.categories]
    ncols = 2
    nrows = max(1, -(-len(shifts) // ncols))
    fig = Figure(figsize=(13, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, s in zip(axes, shifts, strict=False):
        cats = s.categories[:8]
        y = list(range(len(cats)))[::-1]
        ax.barh([v + 0.2 for v in y], [c.share_a for c in cats], height=0.4, label=diff.a, color="#8C8C8C")
        ax.barh([v - 0.2 for v in y], [c.share_b for c in cats], height=0.4, label=diff.b, color="#4C72B0")
        ax.set_yticks(y, [_short(c.value) for c in cats])
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"{s.attribute} (TVD {s.tvd:.3f})")
        ax.set_xlabel("share")
    for ax in axes[len(shifts) :]:
        ax.set_axis_off()
    if shifts:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{diff.dataset}: {diff.a} → {diff.b}")
    return fig
