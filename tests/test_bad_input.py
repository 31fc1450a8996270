"""Bad input, a broken machine, an interruption: the real command ends in one plain line (issue 25).

Bad input: exactly one `error: ...` line on stderr naming the option, field or file, exit code 2, no
traceback, within seconds and before any Prefect server starts. A full disk or a damaged file: one line,
exit 1. SIGTERM and Ctrl-C: one `interrupted: ...` line, exit 143 and 130, and the same command resumes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from personaloom.testing.cli import EXE, assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI, spawn_fake

INTERRUPTED = "interrupted: finished shards and LLM answers are kept; re-run the same command to resume"
SMALL = ("--personas", "1", "--scenes-per-persona", "1", "--no-progress")
FAST = 15.0  # seconds a rejected command may take on a busy shared 2-core machine (a Prefect server: 12-22)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def built(prefect_harness: None, fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """--out of one small real build: dataset `d`, version v0001."""
    out = tmp_path_factory.mktemp("built") / "out"
    res = run("build", "--dataset", "d", *SMALL, "--base-url", fake.base_url, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_a_command_asks_the_endpoint_once(prefect_harness: None, tmp_path: Path) -> None:
    """The pre-flight (GET /models) runs once per command: planned once, never asked again by the flow."""
    with FakeOpenAI() as own:
        res = run("build", "--dataset", "once", *SMALL, "--base-url", own.base_url, "--out", str(tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        assert own.stats.by_path["/v1/models"] == 1


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files the cases point at: a file where a folder belongs, a dangling link, broken config files."""
    d = tmp_path_factory.mktemp("places")
    (d / "file").write_text("not a folder")
    (d / "dangling").symlink_to(d / "nowhere" / "x")
    configs = {"llm5": '{"llm": 5}', "llmlist": '{"llm": []}', "toplist": "[1, 2]", "unknown": '{"seeed": 1}'}
    for name, text in configs.items():
        (d / f"{name}.json").write_text(text)
    pl.DataFrame({"text": ["one two three four five"]}).write_parquet(d / "texts.parquet")
    return {"dir": str(d), **{k: str(d / k) for k in ("file", "dangling")}}


BIG = "99999999999999999999999"
# (args, words the one line must hold). {out}: the built dataset's --out; {dir}, {file}, {dangling}: places.
CASES: list[tuple[str, list[str]]] = [
    # settings out of range, checked by the config models
    (f"build --seed {BIG}", ["--seed", "9223372036854775807"]),
    ("build --seed -1", ["--seed", "greater than or equal to 0"]),
    ("build --personas 0", ["--personas"]),
    ("build --scenes-per-persona 0", ["--scenes-per-persona"]),
    ("build --concurrency 5000", ["--concurrency"]),
    ("build --max-cost -1", ["--max-cost"]),
    ("build --quality-min 11", ["--quality-min"]),
    (f"sample --seed {BIG}", ["--seed"]),
    (f"prompts --show personas/synthesize --seed {BIG}", ["--seed"]),
    ("server --port 70000", ["--port"]),
    # config files of the wrong shape
    ("build --config {dir}/llm5.json", ["llm5.json", "llm", "int"]),
    ("build --config {dir}/llmlist.json", ["llmlist.json", "llm", "list"]),
    ("build --config {dir}/toplist.json", ["toplist.json", "object"]),
    ("build --config {dir}/unknown.json", ["unknown.json", "seeed", "not permitted"]),
    ("build --config {dir}", ["cannot read config file"]),
    # where a command writes: a file, /proc, a dangling link, an empty path
    ("build --out {file}", ["--out", "is a file"]),
    ("build --out /proc/personaloom-test", ["--out", "/proc/personaloom-test"]),
    ("build --out {dangling}", ["--out", "symlink"]),
    ("build --out ''", ["--out", "empty path"]),
    ("build --cache-dir {file}", ["--cache-dir", "is a file"]),
    ("serve --cron '0 3 * * *' --out {file}", ["--out", "is a file"]),
    ("export d --format jsonl --out {out} --dest {file}", ["--dest", "is a file"]),
    ("export d --format csv --out {out} --dest ''", ["--dest", "empty path"]),
    ("plot d --out {out} --dest {file}", ["--dest", "is a file"]),
    ("export d --format csv --out {out} --dest {out}/d/v0001/csv", ["--dest", "inside d@v0001"]),
    ("sample --out /proc/personaloom-test.parquet", ["--out", "/proc"]),
    ("sample --out {dangling}", ["--out", "symlink"]),
    ("sample --out ''", ["--out", "empty path"]),
    ("filter {dir}/texts.parquet --out {file}", ["--out", "is a file"]),
    ("filter ''", ["IN.parquet", "empty path"]),
    ("replay d --out {out} --cache-dir {file}", ["--cache-dir", "is a file"]),
    ("versions d --out ''", ["--out", "empty path"]),
    # a dataset name is one folder under --out, for every command
    ("versions .. --out {out}", ["dataset name '..'"]),
    ("versions '' --out {out}", ["dataset name ''"]),
    ("show ../out/d --out {out}", ["dataset name '../out/d'"]),
    ("verify ../out/d --out {out}", ["dataset name"]),
    ("export ../out/d --format jsonl --out {out} --dest {dir}/e", ["dataset name"]),
    ("plot ../out/d --out {out} --dest {dir}/p", ["dataset name"]),
    ("diff ../out/d@v1 ../out/d@v1 --out {out}", ["dataset name"]),
    ("gc ../out/d --keep 1 --out {out}", ["dataset name"]),
    ("replay ../out/d --out {out}", ["dataset name"]),
    ("evaluate ../out/d --out {out}", ["dataset name"]),
    ("build --dataset ..", ["--dataset", "path characters"]),
    ("serve --cron '0 3 * * *' --dataset ../x", ["--dataset", "path characters"]),
    # replay and evaluate: every check before any server starts
    ("replay d --out {out} --k 0", ["--k"]),
    ("replay d@v9 --out {out}", ["no version v9"]),
    ("evaluate d --out {out} --run ../../x", ["--run", "path characters"]),
]


@pytest.fixture(scope="module")
def results(
    built: Path, fake: FakeOpenAI, places: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], float, Path]]:
    """Every case run once, three at a time (each is a second or two of imports)."""

    def one(case: str) -> tuple[subprocess.CompletedProcess[str], float, Path]:
        home = tmp_path_factory.mktemp("prefect-home")  # with no server given, one would start here
        args = shlex.split(case.format(out=built, **places))
        started = time.monotonic()
        env = {"PREFECT_API_URL": "", "PREFECT_HOME": str(home), "OPENAI_BASE_URL": fake.base_url}
        res = run(*args, env=env, timeout=120)
        return res, time.monotonic() - started, home

    with ThreadPoolExecutor(3) as pool:
        return dict(zip([c for c, _ in CASES], pool.map(one, [c for c, _ in CASES]), strict=True))


@pytest.mark.parametrize("case,needles", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_before_any_server(
    case: str, needles: list[str], results: dict[str, tuple[subprocess.CompletedProcess[str], float, Path]]
) -> None:
    res, seconds, home = results[case]
    assert_one_line_error(res, *needles)
    assert seconds < FAST, f"{seconds:.1f} s"
    assert not (home / "prefect.db").exists(), "a Prefect server was started for nothing"


# ---------------------------------------------------------------- a dataset name never leaves --out


def test_gc_of_a_path_removes_nothing_outside_out(built: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim" / "k"
    for v in ("v0001", "v0002"):  # two versions: `gc --keep 1` would remove one
        shutil.copytree(built / "d" / "v0001", victim / v)
    (tmp_path / "out").mkdir()
    assert_one_line_error(
        run("gc", "../victim/k", "--keep", "1", "--out", str(tmp_path / "out")), "dataset name"
    )
    assert sorted(p.name for p in victim.iterdir()) == ["v0001", "v0002"]


# ---------------------------------------------------------------- a stray version folder


def test_a_version_folder_without_manifest_is_skipped_and_its_number_kept(
    built: Path, fake: FakeOpenAI, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(built, out, symlinks=True)
    stray = out / "d" / "v0002"
    (stray / "dataset").mkdir(parents=True)  # half copied: no manifest.json
    warning = f"warning: {stray} has no manifest.json"
    for args in (["versions", "d"], ["verify", "d"], ["show", "d"]):
        res = run(*args, "--out", str(out))
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [warning + " (half copied?): skipped"]
    res = run("build", "--dataset", "d", *SMALL, "--force", "--base-url", fake.base_url, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "d@v0003" in res.stdout and warning in res.stderr  # a new build never takes the stray's number
    assert not (stray / "manifest.json").exists()


# ---------------------------------------------------------------- a damaged shard


def test_a_damaged_shard_is_named_in_one_line(built: Path, fake: FakeOpenAI, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(built, out, symlinks=True)
    shard = out / "d" / "v0001" / "dataset" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\x55" * 64  # bytes overwritten inside the data pages
    shard.write_bytes(bytes(data))
    commands = [
        ["export", "d", "--format", "jsonl", "--dest", str(tmp_path / "e")],
        ["show", "d"],
        ["diff", "d@v1", "d@v1"],
        ["build", "--dataset", "d", "--grow", "1", "--no-progress", "--base-url", fake.base_url],
    ]
    for args in commands:
        res = run(*args, "--out", str(out))
        assert res.returncode == 1 and "Traceback" not in res.stderr, (args, res.stderr[-3000:])
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {shard}: damaged"), (args, res.stderr)
        assert "personaloom verify d@v0001" in lines[0]
    res = run("verify", "d", "--out", str(out))  # the command the line suggests says what is wrong
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "dataset/part-00000.parquet: checksum differs" in res.stderr
    assert [p.name for p in (out / "d").iterdir() if p.name.startswith("v")] == ["v0001"]


# ---------------------------------------------------------------- interrupted builds resume


def _staged(out: Path, table: str) -> list[Path]:
    return list(out.glob(f"slow/.staging/*/{table}/part-*.parquet"))


def test_an_interrupted_build_says_one_line_and_resumes(prefect_harness: None, tmp_path: Path) -> None:
    """SIGTERM mid-run, the same command again, Ctrl-C later in the run, again: each stop is one line
    (143, 130), and the last run publishes the shards finished before each stop as they were."""
    server, base_url = spawn_fake(0.3)  # slow answers: the build is mid-run when the signal comes
    try:
        out = tmp_path / "out"
        args = [*EXE, "build", "--dataset", "slow", "--personas", "1", "--scenes-per-persona", "2"]
        args += ["--no-progress", "--base-url", base_url, "--out", str(out)]
        kept = {}
        for sig, table in ((signal.SIGTERM, "personas"), (signal.SIGINT, "scenes")):
            # its own session, signalled as a group: what a terminal's Ctrl-C or a service manager does
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            deadline = time.monotonic() + 120
            while not _staged(out, table) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()
            os.killpg(proc.pid, sig)
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 128 + sig, stderr
            assert stderr.splitlines() == [INTERRUPTED] and stdout == "", stderr
            assert not (out / "slow" / "v0001").exists()
            [finished] = _staged(out, table)
            kept[f"{table}/{finished.name}"] = finished.stat().st_ino

        again = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "slow@v0001" in again.stdout
        # resumed: what was finished before each stop is published as it was, not written again
        assert {path: (out / "slow" / "v0001" / path).stat().st_ino for path in kept} == kept
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------- a full disk


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    """A private mount namespace (as root, or in a user namespace) where a tiny tmpfs can be mounted."""
    if shutil.which("unshare") is None:
        return False
    mnt = tmp_path / "probe"
    mnt.mkdir()
    script = f"mount -t tmpfs -o size=8k tmpfs {mnt}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_the_rerun_resumes(built: Path, fake: FakeOpenAI, tmp_path: Path) -> None:
    """A real full filesystem: a 100 KB tmpfs as --out (mounted in a private namespace), filled mid-build."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("no tmpfs mount here (needs unshare and user namespaces, or root)")
    mnt, tiny, logs = tmp_path / "small", tmp_path / "tiny", tmp_path / "logs"
    for folder in (mnt, tiny, logs):
        folder.mkdir()
    build = shlex.join(
        [*EXE, "build", "--dataset", "f", *SMALL, "--base-url", fake.base_url, "--out", f"{mnt}/out"]
    )
    export = shlex.join(
        [*EXE, "export", "d", "--format", "jsonl", "--out", str(built), "--dest", f"{tiny}/e"]
    )
    script = "; ".join(
        [
            f"mount -t tmpfs -o size=100k tmpfs {mnt}",  # full after a few shards
            f"mount -t tmpfs -o size=8k tmpfs {tiny}",  # full at the first table
            f"{build} > {logs}/1.out 2> {logs}/1.err; echo $? > {logs}/1.rc",
            f"{export} > {logs}/2.out 2> {logs}/2.err; echo $? > {logs}/2.rc",
            f"ls -A {tiny}/e > {logs}/2.ls",
            f"mount -o remount,size=20m {mnt}",  # space freed: the same command again
            f"{build} > {logs}/3.out 2> {logs}/3.err; echo $? > {logs}/3.rc",
        ]
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=300)

    def log(n: int, kind: str) -> str:
        return (logs / f"{n}.{kind}").read_text()

    for n, folder in ((1, f"{mnt}/out"), (2, f"{tiny}/e")):
        assert log(n, "rc").strip() == "1", log(n, "err")
        # the build's own warnings may come first (the judge's calibration, when it got that far)
        lines = [ln for ln in log(n, "err").splitlines() if not re.match(r"[\d:.]+ \| WARNING \| ", ln)]
        assert lines == [
            f"error: no space left on device writing under {folder}: "
            "free space and re-run the same command to resume"
        ], log(n, "err")
    assert not [name for name in log(2, "ls").split() if name.endswith(".tmp")]  # no half file holds space
    assert log(3, "rc").strip() == "0", log(3, "err")
    assert "f@v0001" in log(3, "out")  # what it resumed from depends on where the disk filled up


# ---------------------------------------------------------------- files private to their owner


def test_run_data_is_private_to_its_owner(built: Path) -> None:
    """umask 077 in main(): the version folder, manifest, parts, cache segments are 0700/0600."""
    version = built / "d" / "v0001"
    paths = [version, version / "manifest.json", *version.glob("*/part-*.parquet")]
    paths += [*(built / ".cache").iterdir()]
    assert len(paths) > 4 and any(p.name.startswith("seg-") for p in paths)
    for path in [*paths, *built.rglob("*")]:
        if not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"
