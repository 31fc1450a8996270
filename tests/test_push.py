"""`personaloom push`: a version to a Hugging Face Hub dataset repo, against a fake Hub on loopback.

The real `huggingface_hub` client runs in the CLI's process (`HF_ENDPOINT` points it at the fake), so
its routes, payloads, Authorization header and error handling are exercised end to end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from personaloom.dataset.hub import push_version
from personaloom.errors import UserError
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.testing.cli import EXE, assert_one_line_error
from personaloom.testing.fake_hub import FakeHub
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")

HF_TOKEN = "hf_test_SECRET_0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """output/ holding demo@v0001, built once for the module."""
    out = tmp_path_factory.mktemp("push") / "output"
    with FakeOpenAI(latency=0.0) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(
            dataset="demo", personas=2, scenes_per_persona=3, shard_size=2, locales=["en_US"], llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out


def hub_env(hub: FakeHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: the fake Hub (read when huggingface_hub is imported), a token, no login."""
    return {
        "HF_ENDPOINT": hub.base_url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # never a real login of this machine
        "HF_TOKEN": HF_TOKEN,
        **extra,
    }


def push(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`personaloom push ARGS`, online whatever this process has set (test_outputs sets HF_HUB_OFFLINE)."""
    full = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    return subprocess.run(
        [*EXE, "push", *args], capture_output=True, text=True, env={**full, **env}, timeout=120
    )


def test_push_uploads_every_file_byte_identical(built: Path, tmp_path: Path) -> None:
    version = built / "demo" / "v0001"
    local = {p.relative_to(version).as_posix(): p.read_bytes() for p in version.rglob("*") if p.is_file()}
    assert "README.md" in local and "manifest.json" in local
    assert any(p.endswith(".parquet") for p in local)
    with FakeHub() as hub:
        res = push("demo@v1", "--repo", "me/demo", "--out", str(built), env=hub_env(hub, tmp_path))
        assert res.returncode == 0, res.stderr
        repo = hub.repos["me/demo"]
        assert repo.repo_type == "dataset" and repo.private  # private unless --no-private
        assert repo.branches["main"] == local  # every file, same relative path, same bytes
        commit = repo.commits[-1]
        assert commit["summary"] == "personaloom demo@v0001"
        # the token went to the Hub as a Bearer token, on every request that needs one
        writes = [a for (m, p), a in zip(hub.requests, hub.authorizations, strict=True) if m == "POST"]
        assert writes and all(a == f"Bearer {HF_TOKEN}" for a in writes)
        assert ("POST", "/api/datasets/me/demo/commit/main") in hub.requests
    card = local["README.md"].decode()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["configs"] and all(c["data_files"] for c in header["configs"])
    assert f"{hub.base_url}/datasets/me/demo" in res.stdout
    assert f"commit {commit['oid']}" in res.stdout
    assert HF_TOKEN not in res.stdout + res.stderr


def test_push_public_to_a_branch(built: Path, tmp_path: Path) -> None:
    with FakeHub(token=HF_TOKEN) as hub:
        args = ("demo", "--repo", "team/demo-set", "--out", str(built), "--no-private", "--revision", "dev")
        res = push(*args, env=hub_env(hub, tmp_path))
        assert res.returncode == 0, res.stderr
        repo = hub.repos["team/demo-set"]
        assert not repo.private
        assert repo.commits[-1]["revision"] == "dev" and "README.md" in repo.branches["dev"]
        assert repo.branches["main"] == {}  # the branch got the files, main did not


def test_missing_version_is_one_line(built: Path, tmp_path: Path) -> None:
    with FakeHub() as hub:
        res = push("demo@v9", "--repo", "me/demo", "--out", str(built), env=hub_env(hub, tmp_path))
        assert_one_line_error(res, "no version v9", "v0001")
        assert hub.requests == []  # nothing reached the Hub


def test_unpublished_folder_is_refused(built: Path, tmp_path: Path) -> None:
    half = tmp_path / "demo" / "v0002"
    half.mkdir(parents=True)
    (half / "README.md").write_text("---\n---\n")
    with pytest.raises(UserError, match="no manifest.json: not a published version") as e:
        push_version(half, "me/demo", token=HF_TOKEN, private=True, revision=None)
    assert "\n" not in str(e.value)
    with FakeHub() as hub:  # through the CLI: the store skips it (warns) and names the published ones
        res = push("demo@v2", "--repo", "me/demo", "--out", str(tmp_path), env=hub_env(hub, tmp_path))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "error: dataset 'demo' has no versions" in res.stderr
        assert hub.requests == []


@pytest.mark.parametrize(("fail_on", "status"), [("", 500), ("/api/repos/create", 503)])
def test_hub_failure_is_one_line_without_token(
    built: Path, tmp_path: Path, fail_on: str, status: int
) -> None:
    with FakeHub(fail=status, fail_on=fail_on) as hub:
        res = push("demo@v1", "--repo", "me/demo", "--out", str(built), env=hub_env(hub, tmp_path))
        assert res.returncode == 1, res.stderr  # the Hub failed, not the command: re-run it later
        assert "Traceback" not in res.stderr + res.stdout
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "me/demo" in lines[0] and f"answered {status}" in lines[0] and "re-run" in lines[0]
        assert HF_TOKEN not in res.stdout + res.stderr
        assert hub.authorizations[0] == f"Bearer {HF_TOKEN}"  # it was sent, just never shown
        assert hub.repos == {}


def test_wrong_token_and_no_hub(built: Path, tmp_path: Path) -> None:
    with FakeHub(token="hf_the_right_one") as hub:
        res = push("demo", "--repo", "me/demo", "--out", str(built), env=hub_env(hub, tmp_path))
        assert_one_line_error(res, "refused the token for me/demo (401", "HF_TOKEN")
        assert HF_TOKEN not in res.stdout + res.stderr
        closed = hub.base_url
    res = push("demo", "--repo", "me/demo", "--out", str(built), env={**hub_env(hub, tmp_path)})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert f"cannot reach the Hub at {closed} to push me/demo" in lines[0]
    env = hub_env(hub, tmp_path, HF_TOKEN="")
    res = push("demo", "--repo", "me/demo", "--out", str(built), env=env)
    assert_one_line_error(res, "no Hugging Face token", "HF_TOKEN")
