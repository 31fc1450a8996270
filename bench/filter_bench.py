"""Benchmark of the stage-5 filter engine on templated text with planted duplicates.

Run (from the repo root):
    .venv/bin/python bench/filter_bench.py                        # 100k, 300k, 1M in memory
    .venv/bin/python bench/filter_bench.py --rows 1000000         # one size
    .venv/bin/python bench/filter_bench.py --rows 1000000 --cheap --langid   # + rules/exact alone, lang ID
    .venv/bin/python bench/filter_bench.py --rows 10000000 --shards 10        # sharded: bounded memory
    .venv/bin/python bench/filter_bench.py --rows 10000000 --shards 10 --max-df-share 0,5e-5
        # one run each, beside each other: the absolute max_df of 50 (share 0) and the default share

The generator builds ~25-word user queries from a few hundred templates x slot fillers, so
siblings of one template share most of their words and must be KEPT; then it plants
near-duplicates of random rows (1-3 word edits: substitute/insert/delete, plus case,
whitespace and punctuation changes) and exact copies, and shuffles all rows: with --shards N,
(N-1)/N of the planted pairs are split across shards. Every row carries its ground-truth group
(the base row it was made from), so recall and wrong drops are counted exactly, and so is the
recall of pairs split across shards.

Rows are generated once per size into bench/results/filter_rows<N>_seed7.parquet (in a child
process; 10M rows take ~6 min). The filter then runs in its own child process through the function
`personaloom filter` runs (the equivalent command is printed), so its wall time, CPU time and peak
RSS (os.wait4's ru_maxrss of that child) are the filter's own; the quality is computed afterwards
from its rejections.parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.filter import filter_texts
from personaloom.stages.filter.normalize import normalize_expr

WORDS = (
    "the a to and of for in on with my our your this that what how can could would should please "
    "help me find best way plan make get need want know tell show explain give write some good "
    "new next week today tomorrow trip budget list ideas tips steps guide simple quick easy cheap "
    "local family friends kids team work home office school project meeting report schedule "
    "dinner lunch recipe healthy weekend holiday birthday gift party event course class study "
    "exam review summary email letter message note question answer problem issue fix improve "
    "learn practice start finish keep track manage compare choose recommend suggest create "
    "organize prepare book order buy sell rent move visit travel drive walk run train fly stay "
    "hotel flight car bike bus city town park museum beach mountain river lake garden kitchen "
    "room house apartment price cost money time hours days months year morning evening night "
    "long short small large few many more less first last other same different important "
    "useful possible available right wrong sure really also just still already about around "
    "before after during between without under over near far into from through against"
).split()
# Slot vocabularies: P values each (P prime), so sibling slot values can follow a code (below).
P = 1009
_SYL = "ka lo mi ra ne to su vi den bar mor lin tes gal ron pel fa zu".split()
FIRST = [f"{a}{b}{c}".capitalize() for a in _SYL for b in _SYL for c in _SYL[:4]][:P]
CITIES = [f"{a}{b}{c}".capitalize() for a in _SYL for b in _SYL for c in ("ton", "burg", "ville", "port")][:P]
ADJ = (
    "red blue green small quiet modern vintage electric wooden portable smart organic spicy fresh warm "
    "cozy bright silent heavy light cheap premium classic compact foldable digital manual outdoor indoor "
    "rustic sleek sturdy"
).split()
NOUN = (
    "laptop bicycle kettle camera backpack sofa garden tent guitar printer blender jacket lamp desk "
    "stroller drone scooter oven heater router monitor keyboard mattress chair toaster speaker watch "
    "phone tablet fridge vacuum grill"
).split()
TOPIC = (
    "history chemistry statistics marketing pottery photography nutrition astronomy economics poetry "
    "biology physics geology painting music dance law medicine finance design coding robotics "
    "gardening cooking sailing chess yoga writing drawing theater linguistics philosophy"
).split()
ASPECT = (
    "basics projects exams careers tools methods trends theory practice research homework history "
    "software courses books podcasts clubs events competitions jobs internships grants ethics labs "
    "workshops tutors apps videos forums journals conferences habits"
).split()
SLOT_VALUES: dict[str, list[str]] = {
    "name": FIRST,
    "city": CITIES,
    "product": [f"{a} {n}" for a in ADJ for n in NOUN][:P],
    "topic": [f"{t} {a}" for t in TOPIC for a in ASPECT][:P],
    "number": [str(11 + 7 * i) for i in range(P)],
}
SLOTS = tuple(SLOT_VALUES)
CONNECT = ("?", ".", "?", "?")


def make_templates(n_templates: int, rng: np.random.Generator) -> list[list[str]]:
    """Templates: 14-19 fixed words + 5 slots (1-2 words each) -> ~22-27 words."""
    templates = []
    for _ in range(n_templates):
        n_fixed = int(rng.integers(14, 20))
        parts = [str(w) for w in rng.choice(WORDS, n_fixed)]
        slots = rng.permutation(np.array(SLOTS))
        for slot, at in zip(
            slots, np.sort(rng.choice(np.arange(1, n_fixed), 5, replace=False))[::-1], strict=True
        ):
            parts.insert(int(at), "{" + str(slot) + "}")
        if rng.random() < 0.5:
            parts[int(rng.integers(2, len(parts) - 2))] += ","
        parts[0] = parts[0].capitalize()
        parts[-1] += CONNECT[int(rng.integers(len(CONNECT)))]
        templates.append(parts)
    return templates


def sibling_slots(j: int) -> list[int]:
    """Slot values of the j-th sibling of a template: a Reed-Solomon codeword over GF(P).

    Values are m0 + m1*x at x = 1..5 for the message (m1, m0) = divmod(j, P): two distinct
    degree-1 polynomials agree on at most one point, so two siblings share at most 1 of 5 slots
    and differ in >= 4 slot values (>= 4 words). That keeps the ground truth unambiguous: a
    sibling is never a 1-3 word edit of another. Supports P^2 (~1M) siblings per template.
    """
    m1, m0 = divmod(j, P)
    return [(m0 + m1 * x) % P for x in range(1, len(SLOTS) + 1)]


def _fill(template: list[str], j: int, perm: np.ndarray) -> str:
    values = sibling_slots(j)
    out = []
    for part in template:
        if part.startswith("{"):
            end = part.index("}")
            slot = part[1:end]
            k = SLOTS.index(slot)
            out.append(SLOT_VALUES[slot][perm[k, values[k]]] + part[end + 1 :])
        else:
            out.append(part)
    return " ".join(out)


def word_edit(text: str, n_edits: int, rng: np.random.Generator) -> str:
    """1-3 random word edits (substitute / insert / delete), never touching the last word."""
    words = text.split(" ")
    for _ in range(n_edits):
        at = int(rng.integers(0, max(len(words) - 1, 1)))
        op = int(rng.integers(3))
        new = str(WORDS[rng.integers(len(WORDS))])
        if op == 0:
            words[at] = new if new != words[at].lower() else new + "s"
        elif op == 1:
            words.insert(at, new)
        elif len(words) > 4:
            del words[at]
    return " ".join(words)


def surface_noise(text: str, kind: str, rng: np.random.Generator) -> str:
    if kind == "case":
        return text.upper() if rng.random() < 0.5 else text.lower()
    if kind == "whitespace":
        return "  " + text.replace(" ", "   ", 3) + " \n"
    # punctuation: drop or add marks
    return text.replace(",", "").rstrip("?.") + ("!!" if rng.random() < 0.5 else " ...")


def generate(n_rows: int, seed: int = 7, n_templates: int = 400) -> pl.DataFrame:
    """Rows with ground truth: `group` = index of the base row, `kind` = how the row was made."""
    rng = np.random.default_rng(seed)
    templates = make_templates(n_templates, rng)
    n_near = int(n_rows * 0.05)
    n_exact = int(n_rows * 0.02)
    n_base = n_rows - n_near - n_exact
    # Oversample then drop accidental collisions so base rows are truly unique after normalizing.
    tpl_idx = rng.integers(n_templates, size=int(n_base * 1.02) + 10)
    perms = [np.stack([rng.permutation(P) for _ in SLOTS]) for _ in range(n_templates)]
    sibling = np.zeros(n_templates, dtype=np.int64)
    rows = []
    for t in tpl_idx:
        rows.append(_fill(templates[t], int(sibling[t]), perms[t]))
        sibling[t] += 1
    if sibling.max() > P * P:
        raise ValueError(f"too many rows per template for the sibling code (> {P * P}): raise n_templates")
    base = pl.DataFrame({"text": rows})
    base = base.with_columns(normalize_expr(pl.col("text")).alias("n")).unique(
        "n", keep="first", maintain_order=True
    )
    base = base.head(n_base).drop("n")
    n_base = base.height
    texts = base["text"].to_list()

    kinds = ["base"] * n_base
    groups = list(range(n_base))
    near_kinds = ("edit1", "edit2", "edit3", "edit1+case", "edit2+punct", "case", "whitespace", "punct")
    for src, k in zip(
        rng.integers(n_base, size=n_near), rng.integers(len(near_kinds), size=n_near), strict=True
    ):
        kind = near_kinds[k]
        text = texts[src]
        if kind.startswith("edit"):
            text = word_edit(text, int(kind[4]), rng)
            if "+" in kind:
                text = surface_noise(text, kind.split("+")[1], rng)
        else:
            text = surface_noise(text, kind, rng)
        texts.append(text)
        kinds.append(kind)
        groups.append(int(src))
    for src in rng.integers(n_base, size=n_exact):
        texts.append(texts[src])
        kinds.append("exact")
        groups.append(int(src))
    order = rng.permutation(len(texts))
    return pl.DataFrame(
        {
            "row_id": np.arange(len(texts)).astype(str),
            "text": [texts[i] for i in order],
            "group": np.asarray(groups)[order],
            "kind": [kinds[i] for i in order],
        }
    )


RESULTS = Path(__file__).resolve().parent / "results"
SEED = 7


def dataset(n_rows: int) -> tuple[Path, float | None]:
    """The generated rows of this size (made by a child process the first time): path, seconds to make."""
    path = RESULTS / f"filter_rows{n_rows}_seed{SEED}.parquet"
    if path.exists():
        return path, None
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate", "--rows", str(n_rows)], check=True)
    return path, time.perf_counter() - t


def write_dataset(n_rows: int) -> None:
    path = RESULTS / f"filter_rows{n_rows}_seed{SEED}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    generate(n_rows, seed=SEED).write_parquet(tmp)
    tmp.replace(path)


def evaluate(truth: pl.DataFrame, rejected: pl.DataFrame, shards: int = 0) -> dict[str, object]:
    """Recall of planted duplicates and unique rows wrongly dropped, against ground truth.

    A group (base row + its planted copies) should keep exactly one row (its earliest); a drop is
    correct when dup_of names a row of the same group. `row_id` is the row's position (as text), so with
    `shards` the pairs split across shards are counted too.
    """
    n = truth.height
    rows = truth.select("row_id", "group", "kind").with_row_index("at")
    rows = rows.join(rows.group_by("group").agg(pl.col("at").min().alias("first")), on="group")
    target = rows.select(
        pl.col("row_id").alias("dup_of"), pl.col("group").alias("dup_group"), pl.col("at").alias("dup_at")
    )
    rej = rejected.select("row_id", "dup_of").join(rows, on="row_id").join(target, on="dup_of", how="left")
    dups = rej.filter(pl.col("dup_of").is_not_null()).with_columns(
        (pl.col("group") == pl.col("dup_group")).alias("ok")
    )
    correct = int(dups["ok"].sum())
    expected = n - rows["group"].n_unique()
    by_kind = (
        dups.group_by("kind")
        .agg(pl.col("ok").sum().alias("found"))
        .join(rows.group_by("kind").len(), on="kind", how="right")
        .sort("kind")
    )
    out: dict[str, object] = {
        "expected_dup_drops": expected,
        "correct_dup_drops": correct,
        "recall_all_planted": correct / max(expected, 1),
        "wrong_drops": dups.height - correct,
        "wrong_drop_rate": (dups.height - correct) / n,
        "rule_drops": rej.height - dups.height,
        "by_kind": {r["kind"]: [r["found"] or 0, r["len"]] for r in by_kind.iter_rows(named=True)},
    }
    if shards > 1:

        def shard(c: str) -> pl.Expr:
            return pl.col(c) * shards // n

        split = rows.filter((pl.col("at") != pl.col("first")) & (shard("at") != shard("first"))).height
        found = dups.filter(pl.col("ok") & (shard("at") != shard("dup_at"))).height
        out.update(
            cross_shard_expected=split, cross_shard_found=found, cross_shard_recall=found / max(split, 1)
        )
    return out


def out_dir(n_rows: int, shards: int) -> Path:
    return RESULTS / (f"filtered-{n_rows}" + (f"-{shards}shards" if shards else ""))


def config_for(share: float | None) -> FilterConfig:
    """The default filter settings, or with near_dup.max_df_share set (0: the absolute max_df only)."""
    return FilterConfig() if share is None else FilterConfig(near_dup={"max_df_share": share})


def run_child(
    n_rows: int, shards: int, out: Path, cheap: bool, langid: bool, share: float | None
) -> dict[str, object]:
    """In the child: filter the dataset as `personaloom filter` does; stats as JSON."""
    from personaloom.stages.filter.file import filter_parquet

    path = RESULTS / f"filter_rows{n_rows}_seed{SEED}.parquet"
    t = time.perf_counter()
    outcome = filter_parquet(
        path, column="text", out=out, id_column="row_id", shards=shards or None, config=config_for(share)
    )
    res: dict[str, object] = {"filter_wall_s": round(time.perf_counter() - t, 2), "counts": outcome.counts}
    res["stats"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in outcome.stats.items()}
    res["peak_rss_mb_after_filter"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if cheap:  # rules + exact only: the cheap path's throughput
        df = pl.read_parquet(path)
        t = time.perf_counter()
        filter_texts(df, "text", FilterConfig(near_dup={"enabled": False}), id_column="row_id")
        res["rules_exact_s"] = round(time.perf_counter() - t, 2)
        res["rules_exact_rows_per_s"] = round(df.height / res["rules_exact_s"])  # type: ignore[operator]
    if langid:
        from personaloom.stages.filter.langid import detect_languages, load_model

        load_model()
        sample = pl.read_parquet(path, n_rows=200_000)["text"]
        t = time.perf_counter()
        langs, _ = detect_languages(sample)
        res["langid_rows_per_s"] = round(sample.len() / (time.perf_counter() - t))
        res["langid_share_en"] = round(float(np.mean(langs == "en")), 4)
    return res


def measure(n_rows: int, args: argparse.Namespace, share: float | None) -> None:
    path, made = dataset(n_rows)
    out = out_dir(n_rows, args.shards)
    flags = ["--cheap"] * args.cheap + ["--langid"] * args.langid
    flags += [] if share is None else ["--max-df-share", repr(share)]
    cmd = [sys.executable, __file__, "--child", "--rows", str(n_rows), "--shards", str(args.shards), *flags]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    res = json.loads(stdout.strip().splitlines()[-1])
    truth = pl.read_parquet(path, columns=["row_id", "group", "kind"])
    q = evaluate(truth, pl.read_parquet(out / "rejections.parquet"), args.shards)
    s = res["stats"]
    rel, out = shown(path), shown(out)
    same = f"personaloom filter {rel} --column text --id-column row_id --out {out}" + (
        f" --shards {args.shards}" if args.shards else ""
    )
    print(
        f"\n== {truth.height:,} rows, {args.shards or 'no'} shards, "
        f"max_df {s.get('max_df', s.get('near_max_df'))} (share {config_for(share).near_dup.max_df_share:g}) "
        f"(rows {'generated in ' + format(made, '.0f') + ' s' if made else 'cached'}: {rel})\n"
        f"filter wall: {res['filter_wall_s']} s (process {wall:.1f} s incl. start-up; "
        f"CPU user+sys {usage.ru_utime + usage.ru_stime:.1f} s)   "
        f"peak RSS: {usage.ru_maxrss / 1024:,.0f} MB\n"
        f"same as: {same}\n"
        f"phases: {phases(s)}\n"
        f"candidate pairs: {s.get('candidate_pairs', s.get('near_candidate_pairs', 0)):,} "
        f"verified: {s.get('verified_pairs', s.get('near_verified_pairs', 0)):,}\n"
        f"recall (all planted dups, exact+near): {q['recall_all_planted']:.5f} "
        f"({q['correct_dup_drops']:,}/{q['expected_dup_drops']:,})"
        + (
            f"; pairs split across shards: {q['cross_shard_recall']:.5f} "
            f"({q['cross_shard_found']:,}/{q['cross_shard_expected']:,})"
            if "cross_shard_recall" in q
            else ""
        )
        + f"\nwrong drops: {q['wrong_drops']} ({q['wrong_drop_rate'] * 1e5:.2f} per 100k rows), "
        f"rule drops: {q['rule_drops']}\n"
        f"found/planted by kind: {q['by_kind']}\n"
        f"counts: {res['counts']}"
    )
    if "rules_exact_s" in res:
        print(f"rules+exact only: {res['rules_exact_s']} s = {res['rules_exact_rows_per_s']:,} rows/s")
    if "langid_rows_per_s" in res:
        print(f"langid: {res['langid_rows_per_s']:,} rows/s (en share {res['langid_share_en']})")


def shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def phases(s: dict[str, float]) -> str:
    """Seconds per phase, as the in-memory or the sharded filter reports them."""
    names = (
        ("rules", "exact", "near", "near_shingle", "near_df_prune", "near_minhash", "near_lsh", "near_verify")
        if "rules_s" in s
        else ("screen", "df", "minhash", "lsh", "verify", "write")
    )
    return " ".join(
        f"{name.removeprefix('near_')} {s[name + '_s']:.1f}" for name in names if name + "_s" in s
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=None, help="one size (default: 100k, 300k, 1M)")
    parser.add_argument(
        "--shards", type=int, default=0, help="filter in this many shards (personaloom --shards)"
    )
    parser.add_argument("--cheap", action="store_true", help="also measure rules + exact dedup alone")
    parser.add_argument("--langid", action="store_true", help="also measure language ID rows/s")
    parser.add_argument(
        "--max-df-share",
        default=None,
        help="near_dup.max_df_share, or several comma-separated (each a run, in this order); "
        "0 = the absolute max_df only (default: the configured default)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        write_dataset(args.rows)
        return
    shares = [None] if args.max_df_share is None else [float(x) for x in args.max_df_share.split(",")]
    if args.child:
        out = out_dir(args.rows, args.shards)
        print(json.dumps(run_child(args.rows, args.shards, out, args.cheap, args.langid, shares[0])))
        return
    print("command:", " ".join([".venv/bin/python", *sys.argv]))
    for n in [args.rows] if args.rows else [100_000, 300_000, 1_000_000]:
        for share in shares:
            measure(n, args, share)


if __name__ == "__main__":
    main()
