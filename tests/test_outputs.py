"""Inspecting a built version.

The explore notebook headless, `plot` and `export`, five readers, the dataset card.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from personaloom.dataset.store import TABLES
from personaloom.pipeline.flow import build_dataset
from personaloom.runs.replay import replay_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.replay import ReplayConfig
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.judge_model import calibrated
from personaloom.testing.probe_model import probe_confirmer

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
EXE = [sys.executable, "-m", "personaloom"]
BASE_FIGURES = {"stages", "personas", "communication", "scene_kinds", "query_lengths", "languages"}
RUN = "r1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """output/ holding demo@v0001 with one small replay run (two agents), built once for the module."""
    out = tmp_path_factory.mktemp("outputs") / "output"
    with FakeOpenAI(latency=0.0, responder=calibrated(probe_confirmer())) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        # en_US: the fake writes English, so the rows (and the probes built from them) survive language ID
        cfg = BuildConfig(
            dataset="demo", personas=5, scenes_per_persona=6, shard_size=2, locales=["en_US"], llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
        replay = ReplayConfig(dataset="demo", agents=["none", "golden"], personas=2, run=RUN, llm=llm)
        asyncio.run(replay_dataset(replay, out=str(out)))
    return out


@pytest.fixture(scope="module")
def version_dir(built: Path) -> Path:
    return built / "demo" / "v0001"


def parquet_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # cwd is a temp folder: the project must stay importable
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


# ---------------------------------------------------------------- the notebook


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`python3` from this interpreter.

    A spec is written to a temp Jupyter data dir when the machine has none.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        spec = tmp_path / "jupyter" / "kernels" / "python3"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
        )
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    yield "python3"


def test_notebook_is_stored_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_headless(built: Path, kernel_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbclient
    import nbformat

    # the kernel inherits these;
    # PERSONALOOM_DATASET/VERSION left unset exercises the defaults (newest, latest)
    monkeypatch.setenv("PERSONALOOM_OUT", str(built))
    monkeypatch.delenv("PERSONALOOM_DATASET", raising=False)
    monkeypatch.delenv("PERSONALOOM_VERSION", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (
        sum("image/png" in o.get("data", {}) for o in outputs) == len(BASE_FIGURES) + 1
    )  # + the replay curves
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "demo@v0001" in text and f"run {RUN}" in text  # the replay's summary.md is shown


# ---------------------------------------------------------------- plot and export


def test_plot_writes_every_figure_as_png(built: Path, tmp_path: Path) -> None:
    from PIL import Image

    res = cli("plot", "demo", "--out", str(built), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "plots" / "demo-v0001"  # the default: outside the immutable version folder
    pngs = {p.stem: p for p in dest.glob("*.png")}
    assert set(pngs) == BASE_FIGURES | {f"replay-{RUN}-learning_curves"}
    for path in pngs.values():
        with Image.open(path) as img:
            lo, hi = img.convert("L").getextrema()
            assert img.format == "PNG" and img.width >= 600 and img.height >= 300 and hi - lo > 100, (
                path
            )  # drawn, not blank


def test_plot_without_replay_and_named_version(version_dir: Path, tmp_path: Path) -> None:
    """A version with no replay/ folder gets the base figures only.

    The replay part is skipped, not an error.
    """
    out = tmp_path / "output"
    shutil.copytree(version_dir, out / "other" / "v0001", ignore=shutil.ignore_patterns("replay"))
    res = cli("plot", "other@1", "--out", str(out), "--dest", str(tmp_path / "png"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert {p.stem for p in (tmp_path / "png").glob("*.png")} == BASE_FIGURES


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_row_counts_match_parquet(version_dir: Path, built: Path, tmp_path: Path, fmt: str) -> None:
    res = cli(
        "export",
        "demo@v0001",
        "--format",
        fmt,
        "--out",
        str(built),
        "--dest",
        str(tmp_path / "x"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    run = built / "demo" / "runs" / "v0001" / "replay" / RUN  # beside the version, never inside
    replay_tables = [f"replay/{RUN}/{p.name}" for p in run.iterdir() if p.is_dir()]
    assert not (version_dir / "replay").exists()
    assert "replay/r1/metrics" in replay_tables
    for table in [*TABLES, *replay_tables]:
        path = tmp_path / "x" / f"{table}.{fmt}"
        if fmt == "jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        else:
            rows = pl.read_csv(
                path, infer_schema=False
            ).to_dicts()  # quoted newlines inside fields must not split rows
        source = run.parent.parent / table if table.startswith("replay/") else version_dir / table
        assert len(rows) == parquet_rows(source), table
    assert (tmp_path / "x" / "manifest.json").is_file()
    dataset = pl.read_csv(tmp_path / "x" / "dataset.csv", infer_schema=False) if fmt == "csv" else None
    if dataset is not None and dataset.height:  # nested columns are JSON strings that parse back
        assert json.loads(dataset["persona"][0])["Demographics"]["Age"] > 0
        assert isinstance(json.loads(dataset["apis"][0]), list)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plot", "missing"], "has no versions"),
        (["plot", "demo@v9"], "has no version v9"),
        (["export", "demo", "--format", "xml"], "unknown format 'xml'"),
        (["export", "demo"], "--format: required"),
        (["export", "demo@12", "--format", "csv"], "has no version 12"),
    ],
)
def test_inspect_commands_fail_in_one_line(built: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    res = cli(*args, "--out", str(built), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "plots").exists() and not (tmp_path / "exports").exists()


def test_help_does_not_import_matplotlib() -> None:
    probe = "import personaloom.cli, sys; print('matplotlib' in sys.modules or 'polars' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        == "False"
    )


# ---------------------------------------------------------------- readers and the dataset card


@pytest.mark.parametrize("table", TABLES)
def test_five_readers_agree(
    version_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import pandas as pd

    files = str(version_dir / table / "part-*.parquet")
    n = parquet_rows(version_dir / table)
    assert n > 0 or table == "rejections"  # the fake model may reject nothing
    assert duckdb.sql(f"select count(*) from read_parquet('{files}')").fetchall()[0][0] == n
    assert len(pd.read_parquet(version_dir / table)) == n
    assert pl.scan_parquet(files).select(pl.len()).collect().item() == n
    assert pq.read_table(version_dir / table).num_rows == n
    # zero-row shards (rejections of a stage that rejected nothing) are written with no row group,
    # which `datasets` skips; one zero-row group would fail its whole load
    # ("BatchSize must be greater than 0")
    assert all(
        pq.ParquetFile(p).metadata.num_row_groups == 0
        for p in (version_dir / table).glob("part-*.parquet")
        if pq.ParquetFile(p).metadata.num_rows == 0
    )
    hf = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == n


def test_dataset_card_yaml_points_at_existing_tables(version_dir: Path) -> None:
    text = (version_dir / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == set(TABLES)
    assert [name for name, c in configs.items() if c.get("default")] == ["dataset"]
    for name, c in configs.items():
        for entry in c["data_files"]:
            assert list(version_dir.glob(entry["path"])), f"{name}: {entry['path']} matches no file"
