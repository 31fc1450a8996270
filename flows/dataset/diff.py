"""What changed between two versions of a dataset: `personaloom diff DATASET@vA DATASET@vB`.

Rows added, removed and changed per table (rows matched by their id column), changes of settings, model,
prompts (per declared call's template hash) and code, and the shift of the main attribute distributions
(locale, age band, employment, occupation group, scene kind, query length, rejection reasons). The
notebook shows the same for two versions (`personaloom.dataset.explore.compare_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from personaloom.dataset.store import TABLES
from personaloom.dataset.version import open_version
from personaloom.schemas.manifest import Manifest

AGE_BANDS = ((0, 17, "under 18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"))
AGE_BANDS += ((45, 54, "45-54"), (55, 64, "55-64"), (65, 74, "65-74"), (75, 200, "75+"))
QUERY_WORDS = ((0, 0, "0 words"), (1, 5, "1-5 words"), (6, 10, "6-10 words"), (11, 20, "11-20 words"))
QUERY_WORDS += ((21, 40, "21-40 words"), (41, 80, "41-80 words"), (81, 10**9, "81+ words"))
_TABLE_ORDER = TABLES
SHOWN = 5  # categories listed per attribute in the text report (largest shifts first)


def _bands(col: pl.Expr, bands: tuple[tuple[int, int, str], ...]) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for lo, hi, label in reversed(bands):
        expr = pl.when(col.is_between(lo, hi)).then(pl.lit(label)).otherwise(expr)
    return expr


# attribute → (table, columns it needs, the category of each row)
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...], pl.Expr]] = {
    "locale": ("seeds", ("locale",), pl.col("locale")),
    "age band": ("seeds", ("age",), _bands(pl.col("age"), AGE_BANDS)),
    "employment": ("seeds", ("employment",), pl.col("employment")),
    "occupation group": ("seeds", ("sector",), pl.col("sector")),
    "scene kind": ("scenes", ("kind",), pl.col("kind")),
    "query length": (
        "queries",
        ("personalized_query",),
        _bands(pl.col("personalized_query").str.count_matches(r"\S+"), QUERY_WORDS),
    ),
    "rejection reason": ("rejections", ("reason",), pl.col("reason")),
}


class TableDiff(BaseModel):
    table: str
    rows_a: int
    rows_b: int
    added: int
    removed: int
    changed: int  # same id, other content
    key: str | None  # the id column rows are matched by (None: whole rows)


class Change(BaseModel):
    a: Any
    b: Any


class Category(BaseModel):
    value: str
    a: int
    b: int
    share_a: float
    share_b: float


class Shift(BaseModel):
    attribute: str
    table: str
    tvd: float  # total variation distance of the two distributions: 0 the same, 1 disjoint
    categories: list[Category]  # largest change of share first


class VersionDiff(BaseModel):
    dataset: str
    a: str
    b: str
    b_parent: str | None
    b_mode: str
    personas_a: int
    personas_b: int
    tables: list[TableDiff]
    config: dict[str, Change]  # dotted setting → (a, b), only those that differ
    model: Change
    prompts: dict[str, Change]  # declared call → template hash (None: the call is not in that version)
    call_models: dict[str, Change]
    code: Change
    seeds: Change
    identity: Change
    shifts: list[Shift]

    def table(self, name: str) -> TableDiff | None:
        return next((t for t in self.tables if t.table == name), None)

    def lines(self) -> list[str]:
        """The text report `personaloom diff` prints."""
        a, b = self.a, self.b
        head = f"{self.dataset}@{a} → {self.dataset}@{b}"
        if self.b_mode != "build" or self.b_parent:
            head += f" ({b}: {self.b_mode}, parent {self.b_parent or '-'})"
        out = [head, f"personas: {self.personas_a} → {self.personas_b}"]
        out.append(f"{'table':<12}{a:>9}{b:>9}{'added':>9}{'removed':>9}{'changed':>9}")
        for t in self.tables:
            cells = (t.rows_a, t.rows_b, t.added, t.removed, t.changed)
            out.append(f"{t.table:<12}" + "".join(f"{c:>9}" for c in cells))

        def changes(title: str, found: Mapping[str, Change]) -> None:
            if not found:
                out.append(f"{title}: same")
                return
            out.append(f"{title}: {len(found)} changed")
            out.extend(f"  {k}: {_short(c.a)} → {_short(c.b)}" for k, c in found.items())

        changes("settings", self.config)
        for title, c in (("model", self.model), ("code", self.code), ("seed tables", self.seeds)):
            out.append(f"{title}: " + (f"{c.a} (same)" if c.a == c.b else f"{c.a} → {c.b}"))
        changes("prompts (template hash per call)", self.prompts)
        changes("models per call", self.call_models)
        out.append("distribution shift (total variation distance: 0 the same, 1 disjoint):")
        for s in self.shifts:
            shown = [
                f"{c.value} {c.share_a:.1%} → {c.share_b:.1%}"
                for c in s.categories[:SHOWN]
                if c.share_a != c.share_b
            ]
            out.append(f"  {s.attribute:<18}{s.tvd:6.3f}  " + ("; ".join(shown) or "no change"))
        return out


def _short(value: Any, width: int = 60) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"llm": {"model": m}} → {"llm.model": m}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def setting_changes(
    a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple[str, ...] = ()
) -> dict[str, Change]:
    """Dotted settings whose values differ, skipping any key equal to or under one in `ignore`."""
    fa, fb = flatten(a), flatten(b)
    skip = tuple(ignore)
    return {
        k: Change(a=fa.get(k), b=fb.get(k))
        for k in sorted(fa.keys() | fb.keys())
        if fa.get(k) != fb.get(k) and not any(k == i or k.startswith(f"{i}.") for i in skip)
    }


def _parts(folder: Path, m: Manifest, table: str) -> list[Path]:
    return sorted(folder / s.path for s in m.shards if s.path.split("/", 1)[0] == table)


def _read(parts: list[Path], columns: list[str] | None = None) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(p, columns=columns) for p in parts], how="diagonal_relaxed")


def _table_diff(table: str, fa: Path, ma: Manifest, fb: Path, mb: Manifest) -> TableDiff:
    da, db = _read(_parts(fa, ma, table)), _read(_parts(fb, mb, table))
    same = TableDiff(table=table, rows_a=da.height, rows_b=db.height, added=0, removed=0, changed=0, key=None)
    files = [sorted(s.sha256 for s in m.shards if s.path.split("/", 1)[0] == table) for m in (ma, mb)]
    if files[0] == files[1]:  # the very same files (inherited or identical): nothing changed
        return same
    common = [c for c in da.columns if c in db.columns]
    if not common:
        return same.model_copy(update={"added": db.height, "removed": da.height})
    ha, hb = (
        d.select(common).hash_rows(seed=0) if d.height else pl.Series(dtype=pl.UInt64) for d in (da, db)
    )
    unique = (c for c in common if c.endswith("_id") and da[c].n_unique() == da.height)
    key = next((c for c in unique if db[c].n_unique() == db.height), None)
    if key is None:  # no id column: a row is its content
        both = ha.value_counts(name="n").join(
            hb.value_counts(name="n"), on=ha.name, how="full", coalesce=True, suffix="_b"
        )
        both = both.fill_null(0)
        return same.model_copy(
            update={
                "added": int((both["n_b"] - both["n"]).clip(lower_bound=0).sum()),
                "removed": int((both["n"] - both["n_b"]).clip(lower_bound=0).sum()),
            }
        )
    ka = pl.DataFrame({"k": da[key].cast(pl.String), "h": ha})
    kb = pl.DataFrame({"k": db[key].cast(pl.String), "h": hb})
    joined = ka.join(kb, on="k", how="inner", suffix="_b")
    return same.model_copy(
        update={
            "added": db.height - joined.height,
            "removed": da.height - joined.height,
            "changed": int((joined["h"] != joined["h_b"]).sum()),
            "key": key,
        }
    )


def _distribution(
    folder: Path, m: Manifest, table: str, cols: tuple[str, ...], expr: pl.Expr
) -> pl.DataFrame:
    parts = _parts(folder, m, table)
    frame = _read(parts, list(cols)) if parts else pl.DataFrame()
    if frame.height == 0 or any(c not in frame.columns for c in cols):
        return pl.DataFrame(schema={"value": pl.String, "n": pl.UInt32})
    return frame.select(expr.cast(pl.String).fill_null("(missing)").alias("value")).group_by("value").len("n")


def _shift(attribute: str, fa: Path, ma: Manifest, fb: Path, mb: Manifest) -> Shift:
    table, cols, expr = ATTRIBUTES[attribute]
    da, db = (_distribution(f, m, table, cols, expr) for f, m in ((fa, ma), (fb, mb)))
    both = da.join(db, on="value", how="full", coalesce=True, suffix="_b").fill_null(0)
    na, nb = int(both["n"].sum()), int(both["n_b"].sum())
    cats = [
        Category(value=v, a=x, b=y, share_a=x / na if na else 0.0, share_b=y / nb if nb else 0.0)
        for v, x, y in zip(both["value"], both["n"], both["n_b"], strict=True)
    ]
    cats.sort(key=lambda c: (-abs(c.share_b - c.share_a), -(c.b + c.a), c.value))
    tvd = 0.5 * sum(abs(c.share_b - c.share_a) for c in cats) if na and nb else float(na != nb)
    return Shift(attribute=attribute, table=table, tvd=round(tvd, 4), categories=cats)


def _calls(m: Manifest, field: str) -> dict[str, Any]:
    return {name: getattr(c, field) for name, c in m.calls.items()}


def _dict_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Change]:
    return {k: Change(a=a.get(k), b=b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def diff_versions(out: Path | str, dataset: str, a: str | None, b: str | None) -> VersionDiff:
    """Compare version `a` with version `b` of `dataset` (v3, v0003, 3 or latest)."""
    va, vb = open_version(out, dataset, a), open_version(out, dataset, b)
    fa, fb, ma, mb = va.path, vb.path, va.manifest, vb.manifest
    tables = sorted(
        {s.path.split("/", 1)[0] for s in [*ma.shards, *mb.shards]},
        key=lambda t: (list(_TABLE_ORDER).index(t) if t in _TABLE_ORDER else len(_TABLE_ORDER), t),
    )
    return VersionDiff(
        dataset=dataset,
        a=fa.name,
        b=fb.name,
        b_parent=mb.parent,
        b_mode=mb.mode,
        personas_a=ma.config.personas,
        personas_b=mb.config.personas,
        tables=[_table_diff(t, fa, ma, fb, mb) for t in tables],
        config=setting_changes(ma.config.model_dump(mode="json"), mb.config.model_dump(mode="json")),
        model=Change(a=ma.model, b=mb.model),
        prompts=_dict_changes(_calls(ma, "template_hash"), _calls(mb, "template_hash")),
        call_models=_dict_changes(_calls(ma, "model"), _calls(mb, "model")),
        code=Change(a=ma.code_version, b=mb.code_version),
        seeds=Change(a=ma.seeds_digest, b=mb.seeds_digest),
        identity=Change(a=ma.identity, b=mb.identity),
        shifts=[_shift(attr, fa, ma, fb, mb) for attr in ATTRIBUTES],
    )
